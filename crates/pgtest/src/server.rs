//! A server's lifecycle: initdb, start, stop, start again, and stopping it
//! for good when its owner drops it.

use std::fmt;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::binaries::find_bin_dir;
use crate::command::{combined_output, prepare, run};
use crate::names::{percent_encode, shell_quote, validate_name, validate_password};
use crate::run_as::RunAs;
use crate::watchdog::{self, Watchdog};
use crate::{psql, PgError, PgOptions};

/// The only address the server listens on.
pub(crate) const HOST: &str = "127.0.0.1";
/// The superuser role, and the system user the server runs as under root.
pub(crate) const SUPERUSER: &str = "postgres";
const LOG_FILE: &str = "server.log";
// Start and stop wait until done, so that the next step sees their result;
// 60 s at most.
const PG_CTL_WAIT: [&str; 3] = ["-w", "-t", "60"];
const READY_TIMEOUT: Duration = Duration::from_secs(60);
// A free port picked by binding port 0 can be taken by a parallel test before
// the server binds it; a fresh pick almost always succeeds.
const PORT_ATTEMPTS: u32 = 5;

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
    watchdog: Option<Watchdog>,
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
            .map_err(PgError::io("cannot create a temp directory for PostgreSQL"))?;
        run_as.check_reachable(scratch.path())?;
        run_as.own(scratch.path())?;

        let (data_dir, persistent) = match &options.data_dir {
            None => (scratch.path().join("data"), false),
            Some(dir) => (prepare_kept_data_dir(dir, run_as)?, true),
        };
        let socket_dir = scratch.path().join("socket");
        fs::create_dir(&socket_dir).map_err(PgError::io(format!(
            "cannot create {}",
            socket_dir.display()
        )))?;
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
        pg.watchdog = Some(Watchdog::spawn(
            &pg.data_dir,
            pg.scratch.path(),
            &pg.tool("pg_ctl"),
        )?);

        if pg.persistent && pg.is_running() {
            return Err(PgError::AlreadyRunning {
                data_dir: pg.data_dir.clone(),
            });
        }

        if !pg.data_dir.join("PG_VERSION").exists() {
            pg.initdb()?;
        }
        if let Some(tls) = &options.tls {
            tls.install(&pg.data_dir, pg.run_as)?;
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
        let mut cmd = psql::command(&self.bin_dir, self.scratch.path(), HOST, self.port, db);
        cmd.env("PGPASSWORD", &self.password);
        psql::run(cmd, db, sql)
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
        let mut cmd = self.pg_ctl("status");
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        cmd.status().is_ok_and(|s| s.success())
    }

    fn initdb(&self) -> Result<(), PgError> {
        let pwfile = self.scratch.path().join("pwfile");
        self.run_as
            .write_private(&pwfile, &format!("{}\n", self.password))?;
        let mut result = Ok(());
        // C.UTF-8 classifies non-ASCII letters; plain C is the fallback on
        // systems that lack that locale.
        for locale in ["C.UTF-8", "C"] {
            let mut cmd = self.tool("initdb");
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
        watchdog::mark_started(self.scratch.path())?;
        let mut cmd = self.pg_ctl("start");
        cmd.arg("-l")
            .arg(&self.log_file)
            .arg("-o")
            .arg(self.server_options())
            .args(PG_CTL_WAIT);
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
            self.psql_over_socket("ALTER ROLE postgres PASSWORD :'pw'")?;
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

    /// Runs `sql` on database `postgres` over the unix socket, which trusts
    /// local clients; psql variable `pw` holds the password.
    fn psql_over_socket(&self, sql: &str) -> Result<String, PgError> {
        let socket_dir = self.socket_dir.to_string_lossy();
        let mut cmd = psql::command(
            &self.bin_dir,
            self.scratch.path(),
            &socket_dir,
            self.port,
            "postgres",
        );
        cmd.args(["-v", &format!("pw={}", self.password)]);
        psql::run(cmd, "postgres", sql)
    }

    /// One of the server binaries, run as the server user.
    fn tool(&self, name: &str) -> Command {
        let mut cmd = self.run_as.command(&self.bin_dir.join(name));
        prepare(&mut cmd, self.scratch.path());
        cmd
    }

    fn pg_ctl(&self, action: &str) -> Command {
        let mut cmd = self.tool("pg_ctl");
        cmd.arg(action).arg("-D").arg(&self.data_dir);
        cmd
    }

    fn pg_ctl_stop(&self, mode: &str) -> Result<(), PgError> {
        let mut cmd = self.pg_ctl("stop");
        cmd.args(["-m", mode]).args(PG_CTL_WAIT);
        let what = format!("pg_ctl stop -m {mode} -D {}", self.data_dir.display());
        run(cmd, &what).map(drop)
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
        let ours = watchdog::started_here(self.scratch.path());
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
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.finish();
        }
    }
}

fn prepare_kept_data_dir(dir: &Path, run_as: RunAs) -> Result<PathBuf, PgError> {
    let dir = std::path::absolute(dir).map_err(PgError::io(format!(
        "cannot resolve data directory {}",
        dir.display()
    )))?;
    if !dir.exists() {
        fs::create_dir_all(&dir).map_err(PgError::io(format!(
            "cannot create data directory {}",
            dir.display()
        )))?;
    }
    run_as.check_reachable(&dir)?;
    if !dir.join("PG_VERSION").exists() {
        // initdb, running as the server user, cannot take the directory over itself.
        run_as.own(&dir)?;
    }
    Ok(dir)
}

fn free_port() -> Result<u16, PgError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(PgError::io("cannot find a free TCP port on 127.0.0.1"))
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
