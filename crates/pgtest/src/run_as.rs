//! Running the server as the unprivileged `postgres` user when this process
//! is root, which PostgreSQL refuses to run as.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use crate::server::SUPERUSER;
use crate::PgError;

/// Who the server files belong to and who runs `initdb`/`pg_ctl`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RunAs {
    CurrentUser,
    // PostgreSQL refuses to run as root, so root hands the server to this user.
    PostgresUser { uid: u32, gid: u32 },
}

impl RunAs {
    pub(crate) fn detect() -> Result<Self, PgError> {
        if !rustix::process::geteuid().is_root() {
            return Ok(Self::CurrentUser);
        }
        let passwd = fs::read_to_string("/etc/passwd").map_err(PgError::io(
            "cannot read /etc/passwd to find the `postgres` user",
        ))?;
        passwd
            .lines()
            .find_map(|line| {
                let mut fields = line.split(':');
                if fields.next()? != SUPERUSER {
                    return None;
                }
                let _password = fields.next()?;
                let uid = fields.next()?.parse().ok()?;
                let gid = fields.next()?.parse().ok()?;
                Some(Self::PostgresUser { uid, gid })
            })
            .ok_or(PgError::NoPostgresUser)
    }

    pub(crate) fn command(self, program: &Path) -> Command {
        match self {
            Self::CurrentUser => Command::new(program),
            Self::PostgresUser { .. } => {
                let mut cmd = Command::new(runuser());
                cmd.args(["-u", SUPERUSER, "--"]).arg(program);
                cmd
            }
        }
    }

    /// Hands `path` to the server user, so the server can use it.
    pub(crate) fn own(self, path: &Path) -> Result<(), PgError> {
        match self {
            Self::CurrentUser => Ok(()),
            Self::PostgresUser { uid, gid } => std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(PgError::io(format!(
                    "cannot give {} to the `postgres` user",
                    path.display()
                ))),
        }
    }

    /// Fails clearly when the server user could not even reach `path`,
    /// instead of letting initdb or postgres fail with a bare EACCES.
    pub(crate) fn check_reachable(self, path: &Path) -> Result<(), PgError> {
        let Self::PostgresUser { uid, .. } = self else {
            return Ok(());
        };
        for ancestor in path.ancestors().skip(1) {
            let Ok(meta) = fs::metadata(ancestor) else {
                continue;
            };
            let mode = meta.permissions().mode();
            let searchable = mode & 0o001 != 0 || (meta.uid() == uid && mode & 0o100 != 0);
            if !searchable {
                return Err(PgError::Inaccessible {
                    path: path.to_owned(),
                    blocker: ancestor.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Writes a file only the server user may read, as PostgreSQL demands of keys.
    pub(crate) fn write_private(self, path: &Path, contents: &str) -> Result<(), PgError> {
        let write = || -> io::Result<()> {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(path)?;
            file.write_all(contents.as_bytes())?;
            // `mode` applies only to a new file.
            fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        };
        write().map_err(PgError::io(format!("cannot write {}", path.display())))?;
        self.own(path)
    }
}

fn runuser() -> &'static Path {
    ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .unwrap_or(Path::new("runuser"))
}

/// The program `cmd` really runs, for error messages: a failure to start
/// the server tool matters more than the `runuser` wrapped around it.
pub(crate) fn program_name(cmd: &Command) -> String {
    let program = cmd.get_program();
    if program == runuser().as_os_str() {
        let args: Vec<&OsStr> = cmd.get_args().collect();
        // After `-u postgres --`, as `RunAs::command` puts them.
        if let Some(real) = args.get(3) {
            return format!("{} as user postgres via runuser", Path::new(real).display());
        }
    }
    Path::new(program).display().to_string()
}
