//! How a service binary runs and ends: the async runtime, the signals, a
//! bounded exit, and one line on stderr for a failure, with an exit code.

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Command;

use crate::health::HealthSettings;
use crate::settings::{Cli, LogSettings, ServiceSettings, CHECK_HEALTH};
use crate::shutdown::{self, SignalError, SignalHandles};
use crate::{health, telemetry};

/// How long the runtime's leftover blocking tasks may hold up the exit.
///
/// Dropping a runtime waits for every blocking task without limit (a system
/// DNS lookup of a site that never answers, a librdkafka call that never
/// returns): once the work is done, the process ends within a bounded time
/// instead of being killed by its supervisor.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(2);

/// What keeps a service from running at all.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The tokio runtime could not start (out of threads or memory).
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The signal handlers could not be installed.
    #[error(transparent)]
    Signals(#[from] SignalError),
}

/// How every service starts: parses the command line (clap exits with code
/// 2 on a bad flag), answers `--check-health`, reads and validates the
/// settings (code 2 when one is bad), then starts logging. `Err` is the
/// code to exit with at once.
pub fn start<S: ServiceSettings>(name: &str, command: Command) -> Result<(Cli, S), ExitCode> {
    let cli = Cli::parse(command);
    if cli.flag(CHECK_HEALTH) {
        // Read in layers like every setting, so that an endpoint or a file
        // named only in the config file is the one asked.
        let health: HealthSettings = cli.read().map_err(|err| fail(name, 2, &err))?;
        return Err(check_health(
            name,
            health.http_listen.as_deref(),
            health.health_file.as_deref(),
        ));
    }
    let settings = S::load(&cli).map_err(|err| fail(name, 2, &err))?;
    // Every service has the `log` group; read on its own, it needs no accessor.
    let log: LogSettings = cli.read().map_err(|err| fail(name, 2, &err))?;
    telemetry::init(log.format, &log.level).map_err(|err| fail(name, 2, &err))?;
    Ok((cli, settings))
}

/// Runs `service` on a multi-threaded runtime with the shutdown and reload
/// signals installed, ends the runtime within [`EXIT_TIMEOUT`], and gives the
/// exit code: the service's own, or for a failure (printed as by [`fail`])
/// the code `code_of` gives it; 1 when the runtime or the signals fail.
pub fn serve<E, F, Fut>(name: &str, service: F, code_of: fn(&E) -> u8) -> ExitCode
where
    E: std::error::Error + 'static,
    F: FnOnce(SignalHandles) -> Fut,
    Fut: Future<Output = Result<ExitCode, E>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(name, 1, &ProcessError::Runtime(err)),
    };
    let code = runtime.block_on(async {
        match shutdown::listen() {
            Ok(signals) => match service(signals).await {
                Ok(code) => code,
                Err(err) => fail(name, code_of(&err), &err),
            },
            Err(err) => fail(name, 1, &ProcessError::from(err)),
        }
    });
    runtime.shutdown_timeout(EXIT_TIMEOUT);
    code
}

/// The answer of `--check-health` (a container health check): 0 when the
/// service is ready, 1 with the reason when it is not, 2 with neither an
/// endpoint to ask nor a health file to read. The service's `/readyz` at
/// `listen` answers when it is set, else the verdict it beats into `file`.
pub fn check_health(name: &str, listen: Option<&str>, file: Option<&Path>) -> ExitCode {
    let verdict = match (listen, file) {
        (Some(listen), _) => Some(health::ask_ready(listen)),
        (None, file) => file.map(health::check),
    };
    match verdict {
        Some(Ok(())) => ExitCode::SUCCESS,
        Some(Err(why)) => {
            eprintln!("{name}: unhealthy: {why}");
            ExitCode::from(1)
        }
        None => {
            eprintln!("{name}: --check-health needs the HTTP endpoint (--http-listen) or the health file (--health-file)");
            ExitCode::from(2)
        }
    }
}

/// Prints `err` and its causes on one line and gives `code` to exit with.
pub fn fail(name: &str, code: u8, err: &(dyn std::error::Error + 'static)) -> ExitCode {
    eprintln!("{name}: error: {}", telemetry::error_chain(err));
    ExitCode::from(code)
}
