//! A real PostgreSQL server for integration tests and the local demo, started
//! from the system binaries (Debian's `postgresql` package) in a temporary
//! directory, or in a kept data directory that survives across runs.
//!
//! ```no_run
//! let pg = sitewatch_pgtest::Postgres::start_temp()?;
//! let url = pg.create_database("consumer_test")?;
//! pg.psql("consumer_test", "CREATE TABLE t (x int); INSERT INTO t VALUES (1)")?;
//! assert_eq!(pg.psql("consumer_test", "SELECT x FROM t")?, "1");
//! # let _ = url;
//! # Ok::<(), sitewatch_pgtest::PgError>(())
//! ```
//!
//! PostgreSQL refuses to run as root, and this project's machines run
//! everything as root: then the server files belong to the `postgres` system
//! user and `initdb`/`pg_ctl` run through `runuser -u postgres`. The clients
//! (`psql`, the consumer) connect over TCP with a password, so they may run as
//! anyone.
//!
//! A server never outlives its owner: [`Postgres`] stops it on drop, and a
//! small watchdog shell process stops it (and removes the temp directory) when
//! the owning process dies without dropping it, e.g. killed by a test runner's
//! timeout or holding the server in a `static`.

use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The superuser's password when [`PgOptions::password`] is left at its default.
pub const DEFAULT_PASSWORD: &str = "sitewatch-test-password";

/// Environment variable naming the directory that holds `initdb`, `pg_ctl`, `postgres` and `psql`.
pub const BIN_ENV: &str = "SITEWATCH_PG_BIN";

const HOST: &str = "127.0.0.1";
const SUPERUSER: &str = "postgres";
const LOG_FILE: &str = "server.log";
const PG_CTL_TIMEOUT_SECS: u32 = 60;
const READY_TIMEOUT: Duration = Duration::from_secs(60);
// A free port picked by binding port 0 can be taken by a parallel test before
// the server binds it; a fresh pick almost always succeeds.
const PORT_ATTEMPTS: u32 = 5;
const REQUIRED_BINARIES: [&str; 4] = ["initdb", "pg_ctl", "postgres", "psql"];

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

/// A certificate and private key for the server, in PEM.
#[derive(Clone)]
pub struct TlsFiles {
    /// The server certificate (chain), PEM.
    pub cert_pem: String,
    /// The server's private key, PEM.
    pub key_pem: String,
}

impl fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsFiles")
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// How to start a server; `PgOptions::default()` is a fast throwaway server.
#[derive(Clone)]
pub struct PgOptions {
    /// `None`: a fresh temp directory removed on drop; `Some`: kept, initialised only when it has no `PG_VERSION`.
    pub data_dir: Option<PathBuf>,
    /// `None`: a free port on 127.0.0.1.
    pub port: Option<u16>,
    /// Trade durability for speed (`fsync`, `synchronous_commit`, `full_page_writes` off); false for benchmarks.
    pub fast: bool,
    /// Serve TLS (`ssl=on`) with these files; clients may still connect without TLS.
    pub tls: Option<TlsFiles>,
    /// The password of the superuser `postgres`.
    pub password: String,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            data_dir: None,
            port: None,
            fast: true,
            tls: None,
            password: DEFAULT_PASSWORD.to_owned(),
        }
    }
}

impl fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgOptions")
            .field("data_dir", &self.data_dir)
            .field("port", &self.port)
            .field("fast", &self.fast)
            .field("tls", &self.tls)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Who the server files belong to and who runs `initdb`/`pg_ctl`.
#[derive(Debug, Clone, Copy)]
enum RunAs {
    CurrentUser,
    // PostgreSQL refuses to run as root, so root hands the server to this user.
    PostgresUser { uid: u32, gid: u32 },
}

impl RunAs {
    fn detect() -> Result<Self, PgError> {
        if !rustix::process::geteuid().is_root() {
            return Ok(Self::CurrentUser);
        }
        let passwd = fs::read_to_string("/etc/passwd").map_err(|source| PgError::Io {
            action: "cannot read /etc/passwd to find the `postgres` user".to_owned(),
            source,
        })?;
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

    fn command(self, program: &Path) -> Command {
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
    fn own(self, path: &Path) -> Result<(), PgError> {
        match self {
            Self::CurrentUser => Ok(()),
            Self::PostgresUser { uid, gid } => std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(|source| PgError::Io {
                    action: format!("cannot give {} to the `postgres` user", path.display()),
                    source,
                }),
        }
    }

    /// Fails clearly when the server user could not even reach `path`,
    /// instead of letting initdb or postgres fail with a bare EACCES.
    fn check_reachable(self, path: &Path) -> Result<(), PgError> {
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
}

fn runuser() -> &'static Path {
    ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .unwrap_or(Path::new("runuser"))
}

/// A running PostgreSQL server; dropping it stops the server and removes its temp files.
pub struct Postgres {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_file: PathBuf,
    port: u16,
    password: String,
    fast: bool,
    tls: bool,
    persistent: bool,
    run_as: RunAs,
    watchdog: Option<Child>,
    // Declared last so it is removed after the server has stopped.
    scratch: TempDir,
}

impl fmt::Debug for Postgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Postgres")
            .field("bin_dir", &self.bin_dir)
            .field("data_dir", &self.data_dir)
            .field("port", &self.port)
            .field("persistent", &self.persistent)
            .field("fast", &self.fast)
            .field("tls", &self.tls)
            .field("run_as", &self.run_as)
            .finish_non_exhaustive()
    }
}

impl Postgres {
    /// Starts a fast throwaway server in a temp directory on a free port.
    pub fn start_temp() -> Result<Self, PgError> {
        Self::start(PgOptions::default())
    }

    /// Starts a server as `options` say and waits until it accepts connections.
    pub fn start(options: PgOptions) -> Result<Self, PgError> {
        validate_password(&options.password)?;
        let bin_dir = find_bin_dir()?;
        let run_as = RunAs::detect()?;

        let scratch = tempfile::Builder::new()
            .prefix("sitewatch-pg-")
            .tempdir()
            .map_err(|source| PgError::Io {
                action: "cannot create a temp directory for PostgreSQL".to_owned(),
                source,
            })?;
        run_as.check_reachable(scratch.path())?;
        run_as.own(scratch.path())?;

        let (data_dir, persistent) = match &options.data_dir {
            None => (scratch.path().join("data"), false),
            Some(dir) => (prepare_kept_data_dir(dir, run_as)?, true),
        };
        let socket_dir = scratch.path().join("socket");
        create_dir(&socket_dir)?;
        run_as.own(&socket_dir)?;

        let mut pg = Self {
            log_file: data_dir.join(LOG_FILE),
            bin_dir,
            data_dir,
            socket_dir,
            port: options.port.unwrap_or(0),
            password: options.password,
            fast: options.fast,
            tls: options.tls.is_some(),
            persistent,
            run_as,
            watchdog: None,
            scratch,
        };
        // From here on a crash of this process must not leave a server behind.
        pg.watchdog = Some(pg.spawn_watchdog()?);

        if pg.persistent && pg.is_running() {
            return Err(PgError::AlreadyRunning {
                data_dir: pg.data_dir.clone(),
            });
        }

        if !pg.data_dir.join("PG_VERSION").exists() {
            pg.initdb()?;
        }
        if let Some(tls) = &options.tls {
            pg.write_server_file("server.crt", &tls.cert_pem)?;
            pg.write_server_file("server.key", &tls.key_pem)?;
        }

        let mut attempt = 1;
        loop {
            if options.port.is_none() {
                pg.port = free_port()?;
            }
            match pg.launch() {
                Ok(()) => break,
                Err(PgError::Start { log_tail, .. })
                    if options.port.is_none()
                        && attempt < PORT_ATTEMPTS
                        && log_tail.contains("could not bind") =>
                {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(pg)
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host the server listens on: always `127.0.0.1`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The superuser name: `postgres`.
    pub fn user(&self) -> &str {
        SUPERUSER
    }

    /// The superuser's password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The URL of the `postgres` database as the superuser.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// The URL of database `db` as the superuser.
    pub fn url_for(&self, db: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@{HOST}:{}/{}",
            percent_encode(&self.password),
            self.port,
            percent_encode(db)
        )
    }

    /// The directory holding `initdb`, `pg_ctl`, `postgres` and `psql`.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The server's data directory (which also holds its log, `server.log`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The last `lines` lines of the server log, for test failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tail_file(&self.log_file, lines)
    }

    /// Creates database `name` (`[a-z0-9_]{1,63}`) and returns its URL.
    pub fn create_database(&self, name: &str) -> Result<String, PgError> {
        validate_name(name)?;
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))?;
        Ok(self.url_for(name))
    }

    /// Drops database `name` if it exists, disconnecting its clients.
    pub fn drop_database(&self, name: &str) -> Result<(), PgError> {
        validate_name(name)?;
        self.psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
        )?;
        Ok(())
    }

    /// Runs `sql` (one or more statements, or psql meta-commands) on database `db` and returns the trimmed output, unaligned, rows only.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, PgError> {
        validate_name(db)?;
        let mut cmd = self.psql_command(db, HOST);
        cmd.env("PGPASSWORD", &self.password);
        run_psql(cmd, db, sql)
    }

    /// Stops the server (`pg_ctl stop -m fast`) and waits; a no-op when it is not running.
    pub fn stop(&self) -> Result<(), PgError> {
        if !self.is_running() {
            return Ok(());
        }
        self.pg_ctl_stop("fast")
    }

    /// Starts the server again on the same data directory and port, after [`Postgres::stop`], and waits until it accepts connections.
    pub fn start_again(&self) -> Result<(), PgError> {
        if self.is_running() {
            return Ok(());
        }
        self.launch()
    }

    /// Whether the server process is alive (`pg_ctl status`).
    pub fn is_running(&self) -> bool {
        let mut cmd = self.pg_ctl();
        cmd.arg("status").arg("-D").arg(&self.data_dir);
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        cmd.status().is_ok_and(|s| s.success())
    }

    fn initdb(&self) -> Result<(), PgError> {
        let pwfile = self.scratch.path().join("pwfile");
        self.write_private(&pwfile, &format!("{}\n", self.password))?;
        let mut result = Ok(());
        // C.UTF-8 classifies non-ASCII letters; plain C is the fallback on
        // systems that lack that locale.
        for locale in ["C.UTF-8", "C"] {
            let mut cmd = self.run_as.command(&self.bin_dir.join("initdb"));
            self.prepare(&mut cmd);
            cmd.arg("-D")
                .arg(&self.data_dir)
                .args(["-U", SUPERUSER, "-E", "UTF8"])
                .arg(format!("--locale={locale}"))
                .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
                .arg("--pwfile")
                .arg(&pwfile);
            if self.fast {
                cmd.arg("--no-sync");
            }
            let what = format!("initdb -D {}", self.data_dir.display());
            result = run(cmd, &what).map(drop);
            match &result {
                Err(PgError::Command { output, .. }) if output.contains("locale") => continue,
                _ => break,
            }
        }
        let _ = fs::remove_file(&pwfile);
        result
    }

    /// `pg_ctl start`, then waits until a client can log in with the password and run a query.
    fn launch(&self) -> Result<(), PgError> {
        // Before pg_ctl forks, so that a server of ours is never unmarked.
        let marker = self.started_marker();
        fs::write(&marker, b"").map_err(|source| PgError::Io {
            action: format!("cannot write {}", marker.display()),
            source,
        })?;
        let mut cmd = self.pg_ctl();
        cmd.arg("start")
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_file)
            .arg("-o")
            .arg(self.server_options())
            .args(["-w", "-t", &PG_CTL_TIMEOUT_SECS.to_string()]);
        let start_error = |detail: String| PgError::Start {
            data_dir: self.data_dir.clone(),
            port: self.port,
            detail,
            log: self.log_file.clone(),
            log_tail: self.log_tail(20),
        };
        let output = cmd.output().map_err(|e| start_error(e.to_string()))?;
        if !output.status.success() {
            return Err(start_error(format!(
                "pg_ctl start: {}: {}",
                output.status,
                combined_output(&output)
            )));
        }
        self.wait_ready()?;
        if self.persistent {
            // A kept data directory has the password of the run that created it.
            self.set_password_over_socket()?;
        }
        self.psql("postgres", "select 1").map(drop)
    }

    // pg_ctl hands `-o` to /bin/sh, hence the quoting.
    fn server_options(&self) -> String {
        let mut settings = vec![
            format!("listen_addresses={HOST}"),
            format!("port={}", self.port),
            format!("unix_socket_directories={}", self.socket_dir.display()),
            "max_connections=200".to_owned(),
            "logging_collector=off".to_owned(),
        ];
        if self.fast {
            settings.extend(
                [
                    "fsync=off",
                    "synchronous_commit=off",
                    "full_page_writes=off",
                ]
                .map(String::from),
            );
        }
        if self.tls {
            // server.crt and server.key in the data directory are the defaults.
            settings.push("ssl=on".to_owned());
        }
        settings
            .iter()
            .map(|s| format!("-c {}", shell_quote(s)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn wait_ready(&self) -> Result<(), PgError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        loop {
            let last_error = match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Err(e) => format!("TCP connect to {addr}: {e}"),
                // Over the socket, which needs no password: a kept data
                // directory may still have an old one.
                Ok(_) => match self.psql_over_socket("select 1") {
                    Ok(_) => return Ok(()),
                    Err(e) => e.to_string(),
                },
            };
            if Instant::now() >= deadline {
                return Err(PgError::NotReady {
                    port: self.port,
                    waited: READY_TIMEOUT,
                    last_error,
                    log: self.log_file.clone(),
                    log_tail: self.log_tail(20),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn set_password_over_socket(&self) -> Result<(), PgError> {
        self.psql_over_socket("ALTER ROLE postgres PASSWORD :'pw'")
            .map(drop)
    }

    /// Runs `sql` on database `postgres` over the unix socket, which trusts
    /// local clients; psql variable `pw` holds the password.
    fn psql_over_socket(&self, sql: &str) -> Result<String, PgError> {
        let socket_dir = self.socket_dir.to_string_lossy().into_owned();
        let mut cmd = self.psql_command("postgres", &socket_dir);
        cmd.args(["-v", &format!("pw={}", self.password)]);
        run_psql(cmd, "postgres", sql)
    }

    fn pg_ctl(&self) -> Command {
        let mut cmd = self.run_as.command(&self.bin_dir.join("pg_ctl"));
        self.prepare(&mut cmd);
        cmd
    }

    fn pg_ctl_stop(&self, mode: &str) -> Result<(), PgError> {
        let mut cmd = self.pg_ctl();
        cmd.arg("stop").arg("-D").arg(&self.data_dir).args([
            "-m",
            mode,
            "-w",
            "-t",
            &PG_CTL_TIMEOUT_SECS.to_string(),
        ]);
        let what = format!("pg_ctl stop -m {mode} -D {}", self.data_dir.display());
        run(cmd, &what).map(drop)
    }

    fn psql_command(&self, db: &str, host: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join("psql"));
        self.prepare(&mut cmd);
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", host, "-p", &self.port.to_string(), "-U", SUPERUSER])
            .args(["-d", db, "-f", "-"])
            .env("PGCONNECT_TIMEOUT", "10");
        cmd
    }

    /// The environment every PostgreSQL tool runs in.
    fn prepare(&self, cmd: &mut Command) {
        // The caller's PGHOST, PGSSLMODE, PGPASSFILE and friends would
        // silently redirect or break the tools.
        for (key, _) in std::env::vars_os() {
            if key.as_encoded_bytes().starts_with(b"PG") {
                cmd.env_remove(key);
            }
        }
        // The server user may be unable to enter the caller's directory.
        cmd.current_dir(self.scratch.path());
        cmd.stdin(Stdio::null());
    }

    fn write_server_file(&self, name: &str, contents: &str) -> Result<(), PgError> {
        self.write_private(&self.data_dir.join(name), contents)
    }

    /// Writes a file only the server user may read, as PostgreSQL demands of keys.
    fn write_private(&self, path: &Path, contents: &str) -> Result<(), PgError> {
        let io_err = |source| PgError::Io {
            action: format!("cannot write {}", path.display()),
            source,
        };
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(io_err)?;
        file.write_all(contents.as_bytes()).map_err(io_err)?;
        // `mode` applies only to a new file.
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io_err)?;
        self.run_as.own(path)
    }

    /// A shell that waits for this process to die (its stdin closes) and
    /// then stops the server and removes the temp directory. On a normal drop
    /// it finds nothing left to do.
    fn spawn_watchdog(&self) -> Result<Child, PgError> {
        const SCRIPT: &str = r#"
trap '' HUP INT TERM PIPE
data=$1; scratch=$2; shift 2
cat >/dev/null 2>&1
if [ -f "$scratch/started" ] && [ -f "$data/postmaster.pid" ]; then
  "$@" stop -D "$data" -m immediate -w -t 30 >/dev/null 2>&1
fi
rm -rf -- "$scratch"
"#;
        let pg_ctl = self.run_as.command(&self.bin_dir.join("pg_ctl"));
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", SCRIPT, "sitewatch-pg-watchdog"])
            .arg(&self.data_dir)
            .arg(self.scratch.path())
            .arg(pg_ctl.get_program())
            .args(pg_ctl.get_args());
        self.prepare(&mut cmd);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so the Ctrl-C or the test runner's
            // signal that kills this process spares the watchdog.
            .process_group(0);
        cmd.spawn().map_err(|source| PgError::Io {
            action: "cannot start the watchdog shell /bin/sh".to_owned(),
            source,
        })
    }

    /// Exists once this value has started a server, so that a failed start
    /// on a kept data directory never stops someone else's server there.
    fn started_marker(&self) -> PathBuf {
        self.scratch.path().join("started")
    }

    fn kill_postmaster(&self) {
        let Ok(pidfile) = fs::read_to_string(self.data_dir.join("postmaster.pid")) else {
            return;
        };
        let pid = pidfile.lines().next().and_then(|l| l.trim().parse().ok());
        if let Some(pid) = pid.and_then(rustix::process::Pid::from_raw) {
            // Its backends exit on their own once they notice it died.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let ours = self.started_marker().exists();
        if ours && self.data_dir.join("postmaster.pid").exists() {
            // A kept data directory deserves a clean shutdown; a throwaway
            // one is not worth waiting for.
            let mode = if self.persistent { "fast" } else { "immediate" };
            let stopped = self.pg_ctl_stop(mode).is_ok()
                || (mode != "immediate" && self.pg_ctl_stop("immediate").is_ok());
            if !stopped {
                self.kill_postmaster();
            }
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            drop(watchdog.stdin.take());
            let _ = watchdog.wait();
        }
    }
}

fn prepare_kept_data_dir(dir: &Path, run_as: RunAs) -> Result<PathBuf, PgError> {
    let dir = std::path::absolute(dir).map_err(|source| PgError::Io {
        action: format!("cannot resolve data directory {}", dir.display()),
        source,
    })?;
    if !dir.exists() {
        fs::create_dir_all(&dir).map_err(|source| PgError::Io {
            action: format!("cannot create data directory {}", dir.display()),
            source,
        })?;
    }
    run_as.check_reachable(&dir)?;
    if !dir.join("PG_VERSION").exists() {
        // initdb, running as the server user, cannot take the directory over itself.
        run_as.own(&dir)?;
    }
    Ok(dir)
}

fn create_dir(path: &Path) -> Result<(), PgError> {
    fs::create_dir(path).map_err(|source| PgError::Io {
        action: format!("cannot create {}", path.display()),
        source,
    })
}

/// `SITEWATCH_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`, else `initdb` on PATH.
fn find_bin_dir() -> Result<PathBuf, PgError> {
    if let Some(dir) = std::env::var_os(BIN_ENV).filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        check_bin_dir(&dir)?;
        return Ok(dir);
    }
    let debian = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir(debian)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let version = name
                .to_str()?
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<Vec<u32>>>()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        check_bin_dir(&dir)?;
        return Ok(dir);
    }
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|dir| dir.join("initdb").is_file());
    if let Some(dir) = on_path {
        check_bin_dir(&dir)?;
        return Ok(dir);
    }
    Err(PgError::NotInstalled {
        searched: format!("${BIN_ENV}, /usr/lib/postgresql/*/bin and PATH"),
    })
}

fn check_bin_dir(dir: &Path) -> Result<(), PgError> {
    match REQUIRED_BINARIES
        .into_iter()
        .find(|b| !dir.join(b).is_file())
    {
        Some(missing) => Err(PgError::IncompleteBinDir {
            dir: dir.to_owned(),
            missing,
        }),
        None => Ok(()),
    }
}

fn free_port() -> Result<u16, PgError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| PgError::Io {
            action: "cannot find a free TCP port on 127.0.0.1".to_owned(),
            source,
        })
}

fn run(mut cmd: Command, what: &str) -> Result<Output, PgError> {
    let output = cmd.output().map_err(|source| PgError::Io {
        action: format!("cannot run {}", program_name(&cmd)),
        source,
    })?;
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

fn run_psql(mut cmd: Command, db: &str, sql: &str) -> Result<String, PgError> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| PgError::Io {
        action: format!("cannot run {}", program_name(&cmd)),
        source,
    })?;
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
    .map_err(|source| PgError::Io {
        action: "cannot read psql's output".to_owned(),
        source,
    })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(PgError::Sql {
            db: db.to_owned(),
            stderr: combined_output(&output),
        })
    }
}

fn program_name(cmd: &Command) -> String {
    let program = cmd.get_program();
    if program == runuser().as_os_str() {
        let args: Vec<&OsStr> = cmd.get_args().collect();
        if let Some(real) = args.get(3) {
            return format!("{} as user postgres via runuser", Path::new(real).display());
        }
    }
    Path::new(program).display().to_string()
}

fn combined_output(output: &Output) -> String {
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

fn tail_file(path: &Path, lines: usize) -> String {
    // Only the end matters, and a kept data directory's log grows across runs.
    const MAX_BYTES: u64 = 256 * 1024;
    let read = || -> io::Result<String> {
        let mut file = fs::File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(MAX_BYTES)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

fn validate_name(name: &str) -> Result<(), PgError> {
    // Longer names would be silently truncated by PostgreSQL (NAMEDATALEN).
    let valid = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(PgError::InvalidName {
            name: name.to_owned(),
        })
    }
}

fn validate_password(password: &str) -> Result<(), PgError> {
    let reason = if password.is_empty() {
        "it is empty, and PostgreSQL never accepts an empty password"
    } else if password.contains(['\n', '\r', '\0']) {
        "it contains a line break or NUL, which initdb's password file cannot hold"
    } else {
        return Ok(());
    };
    Err(PgError::InvalidPassword { reason })
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_restricted_to_plain_identifiers() {
        for ok in ["postgres", "consumer_test_1", "a", &"x".repeat(63)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Upper",
            "with-dash",
            "a b",
            "x\"y",
            "host=evil",
            &"x".repeat(64),
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords_are_percent_encoded_in_urls() {
        assert_eq!(percent_encode("p@ss:w/rd%"), "p%40ss%3Aw%2Frd%25");
        assert_eq!(percent_encode(DEFAULT_PASSWORD), DEFAULT_PASSWORD);
    }

    #[test]
    fn shell_quoting_survives_single_quotes() {
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
    }

    #[test]
    fn bad_passwords_are_rejected() {
        assert!(validate_password("").is_err());
        assert!(validate_password("a\nb").is_err());
        assert!(validate_password(DEFAULT_PASSWORD).is_ok());
    }

    #[test]
    fn debug_hides_secrets() {
        let options = PgOptions {
            password: "hunter2".to_owned(),
            tls: Some(TlsFiles {
                cert_pem: "CERT".to_owned(),
                key_pem: "SECRET KEY".to_owned(),
            }),
            ..PgOptions::default()
        };
        let shown = format!("{options:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("SECRET"),
            "{shown}"
        );
    }
}
