//! Making sure a server never outlives the process that started it, even
//! when that process dies without dropping its [`Postgres`](crate::Postgres).

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::command::prepare;
use crate::PgError;

// The watchdog script tests for this file by name, too.
const STARTED: &str = "started";

/// A shell that waits for this process to die (its stdin closes) and
/// then stops the server and removes the temp directory. On a normal drop
/// it finds nothing left to do.
#[derive(Debug)]
pub(crate) struct Watchdog(Child);

impl Watchdog {
    /// Watches the server in `data_dir`, stopping it with `pg_ctl` (whose
    /// program and arguments are all that is used) and removing `scratch`.
    pub(crate) fn spawn(
        data_dir: &Path,
        scratch: &Path,
        pg_ctl: &Command,
    ) -> Result<Self, PgError> {
        const SCRIPT: &str = r#"
trap '' HUP INT TERM PIPE
data=$1; scratch=$2; shift 2
cat >/dev/null 2>&1
if [ -f "$scratch/started" ] && [ -f "$data/postmaster.pid" ]; then
  "$@" stop -D "$data" -m immediate -w -t 30 >/dev/null 2>&1
fi
rm -rf -- "$scratch"
"#;
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", SCRIPT, "sitewatch-pg-watchdog"])
            .arg(data_dir)
            .arg(scratch)
            .arg(pg_ctl.get_program())
            .args(pg_ctl.get_args());
        prepare(&mut cmd, scratch);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so the Ctrl-C or the test runner's
            // signal that kills this process spares the watchdog.
            .process_group(0);
        cmd.spawn()
            .map(Self)
            .map_err(PgError::io("cannot start the watchdog shell /bin/sh"))
    }

    /// Lets it act now, while this process lives, and waits until it has.
    pub(crate) fn finish(mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

/// Marks the server of `scratch` as started by this process.
pub(crate) fn mark_started(scratch: &Path) -> Result<(), PgError> {
    let marker = scratch.join(STARTED);
    fs::write(&marker, b"").map_err(PgError::io(format!("cannot write {}", marker.display())))
}

/// Whether this process started the server of `scratch`, so that a failed
/// start on a kept data directory never stops someone else's server there.
pub(crate) fn started_here(scratch: &Path) -> bool {
    scratch.join(STARTED).exists()
}
