//! The workspace's binaries as children of a test: started with output to
//! read, signalled by name, and their `--help` checked.

use std::ffi::OsStr;
use std::process::{Child, Command, Stdio};

/// `cmd` set up for a test to read what it says: no input, stdout and stderr
/// piped, and no `RUST_LOG` from the test's environment to change its logging.
pub fn piped(cmd: &mut Command) -> &mut Command {
    cmd.env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
}

/// Sends `child` the signal `name` (TERM, HUP, KILL) with `kill`; panics when that fails.
pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name} {} failed", child.id());
}

/// Runs `program --help`; panics unless it succeeds and names every one of `flags`.
pub fn assert_help_names(program: impl AsRef<OsStr>, flags: &[&str]) {
    let help = Command::new(program)
        .arg("--help")
        .output()
        .expect("--help runs");
    let text = String::from_utf8_lossy(&help.stdout);
    let missing: Vec<&str> = flags
        .iter()
        .copied()
        .filter(|flag| !text.contains(flag))
        .collect();
    assert!(
        help.status.success() && missing.is_empty(),
        "--help exited with {} and lacks {missing:?}:\n{text}",
        help.status
    );
}
