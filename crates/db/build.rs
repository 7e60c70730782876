//! Rebuilds the crate when a migration is added or changed: the migrations
//! are embedded at compile time, and cargo does not watch the folder by itself.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
