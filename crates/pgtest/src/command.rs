//! Running PostgreSQL's programs and reporting how they failed.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::run_as::program_name;
use crate::PgError;

/// The environment every PostgreSQL tool runs in; `dir` is one the server
/// user can enter.
pub(crate) fn prepare(cmd: &mut Command, dir: &Path) {
    // The caller's PGHOST, PGSSLMODE, PGPASSFILE and friends would
    // silently redirect or break the tools.
    for (key, _) in std::env::vars_os() {
        if key.as_encoded_bytes().starts_with(b"PG") {
            cmd.env_remove(key);
        }
    }
    // The server user may be unable to enter the caller's directory.
    cmd.current_dir(dir);
    cmd.stdin(Stdio::null());
}

/// Runs `cmd` to the end; `what` names it in the error when it fails.
pub(crate) fn run(mut cmd: Command, what: &str) -> Result<Output, PgError> {
    let output = cmd.output().map_err(cannot_run(&cmd))?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(PgError::Command {
            what: what.to_owned(),
            status: output.status,
            output: combined_output(&output),
        })
    }
}

pub(crate) fn cannot_run(cmd: &Command) -> impl FnOnce(std::io::Error) -> PgError {
    PgError::io(format!("cannot run {}", program_name(cmd)))
}

/// Both streams, as the tools split their complaints between them.
pub(crate) fn combined_output(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let text = format!("{}\n{}", stderr.trim(), stdout.trim());
    let text = text.trim();
    if text.is_empty() {
        "(no output)".to_owned()
    } else {
        text.to_owned()
    }
}
