//! Running SQL through `psql`, PostgreSQL's command-line client.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::command::{cannot_run, combined_output, prepare};
use crate::server::SUPERUSER;
use crate::PgError;

/// A psql that reads its script from stdin and prints rows only, unaligned,
/// stopping at the first error; `dir` is one the server user can enter.
pub(crate) fn command(bin_dir: &Path, dir: &Path, host: &str, port: u16, db: &str) -> Command {
    let mut cmd = Command::new(bin_dir.join("psql"));
    prepare(&mut cmd, dir);
    cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", host, "-p", &port.to_string(), "-U", SUPERUSER])
        .args(["-d", db, "-f", "-"])
        .env("PGCONNECT_TIMEOUT", "10");
    cmd
}

/// Feeds `sql` to the psql `cmd` and returns its trimmed output.
pub(crate) fn run(mut cmd: Command, db: &str, sql: &str) -> Result<String, PgError> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(cannot_run(&cmd))?;
    let stdin = child.stdin.take();
    // Fed from another thread: psql may fill the stdout pipe before it has
    // read all of a large script.
    let output = std::thread::scope(|scope| {
        if let Some(mut stdin) = stdin {
            scope.spawn(move || {
                // A write error means psql quit early; its stderr says why.
                let _ = stdin.write_all(sql.as_bytes());
            });
        }
        child.wait_with_output()
    })
    .map_err(PgError::io("cannot read psql's output"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(PgError::Sql {
            db: db.to_owned(),
            stderr: combined_output(&output),
        })
    }
}
