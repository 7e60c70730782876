//! Why a server could not be started, reached or used.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use crate::binaries::BIN_ENV;
use crate::server::HOST;

/// Why a PostgreSQL server could not be started, reached or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgError {
    /// No PostgreSQL server binaries on this machine.
    #[error(
        "PostgreSQL server binaries not found (looked for initdb in {searched}); install Debian's \
         `postgresql` package (scripts/setup.sh does it) or set {BIN_ENV} to the directory that \
         holds initdb, pg_ctl, postgres and psql"
    )]
    NotInstalled {
        /// Where initdb was looked for.
        searched: String,
    },
    /// The chosen binary directory lacks one of the binaries.
    #[error(
        "{dir} has no {missing}; {BIN_ENV} must name a directory with initdb, pg_ctl, postgres \
         and psql, such as /usr/lib/postgresql/15/bin"
    )]
    IncompleteBinDir {
        /// The directory.
        dir: PathBuf,
        /// The binary it lacks.
        missing: &'static str,
    },
    /// Running as root with no `postgres` user to run the server as.
    #[error(
        "running as root, which PostgreSQL refuses, and there is no `postgres` system user to run \
         it as; install Debian's `postgresql` package (scripts/setup.sh does it; it creates the \
         user) or run as an unprivileged user"
    )]
    NoPostgresUser,
    /// The `postgres` user cannot traverse a directory above the server files.
    #[error(
        "the `postgres` user cannot reach {path}: {blocker} is not searchable by others; put the \
         directory under /tmp or /var/lib, or run `chmod o+x {blocker}`"
    )]
    Inaccessible {
        /// The directory the server needs.
        path: PathBuf,
        /// The ancestor that blocks it.
        blocker: PathBuf,
    },
    /// A database name outside `[a-z0-9_]{1,63}`.
    #[error("invalid database name {name:?}: use 1 to 63 characters from a-z, 0-9 and _")]
    InvalidName {
        /// The rejected name.
        name: String,
    },
    /// A password PostgreSQL or initdb's password file cannot hold.
    #[error("invalid PostgreSQL password: {reason}")]
    InvalidPassword {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A file system or process operation failed.
    #[error("{action}: {source}")]
    Io {
        /// What was being done.
        action: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A PostgreSQL tool exited with an error.
    #[error("{what} failed ({status}): {output}")]
    Command {
        /// The command, e.g. `initdb -D /tmp/x/data`.
        what: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its stderr and stdout.
        output: String,
    },
    /// `pg_ctl start` failed.
    #[error(
        "PostgreSQL in {data_dir} on {HOST}:{port} failed to start: {detail}\n--- last lines of \
         {log} ---\n{log_tail}"
    )]
    Start {
        /// The data directory.
        data_dir: PathBuf,
        /// The port it was to listen on.
        port: u16,
        /// What pg_ctl said.
        detail: String,
        /// The server log.
        log: PathBuf,
        /// Its last lines.
        log_tail: String,
    },
    /// The server started but did not accept connections in time.
    #[error(
        "PostgreSQL on {HOST}:{port} did not accept connections within {waited:?}: {last_error}\n\
         --- last lines of {log} ---\n{log_tail}"
    )]
    NotReady {
        /// The port.
        port: u16,
        /// How long it was given.
        waited: Duration,
        /// The last connection error.
        last_error: String,
        /// The server log.
        log: PathBuf,
        /// Its last lines.
        log_tail: String,
    },
    /// A kept data directory is already in use by a running server.
    #[error(
        "a PostgreSQL server is already running in {data_dir}; stop it (pg_ctl stop -D \
         {data_dir}) or use another data directory"
    )]
    AlreadyRunning {
        /// The data directory.
        data_dir: PathBuf,
    },
    /// `psql` reported an SQL or connection error.
    #[error("SQL on database {db} failed: {stderr}")]
    Sql {
        /// The database.
        db: String,
        /// What psql said.
        stderr: String,
    },
}

impl PgError {
    /// For `map_err` on a file system or process operation: an
    /// [`PgError::Io`] that says what was being done.
    pub(crate) fn io(action: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let action = action.into();
        move |source| Self::Io { action, source }
    }
}
