//! Rebuilds when a migration is added: refinery embeds the folder's files at
//! compile time, and cargo does not watch a folder's new files on its own.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
