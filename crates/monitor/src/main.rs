//! The `monitor` binary: flags, logging, signals; the work is in the library.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use sitewatch_monitor::settings::{Cli, Settings};
use sitewatch_monitor::source::TargetSource;
use sitewatch_monitor::MonitorError;
use sitewatch_service::{health, shutdown, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.check_health {
        return health_check(cli.health_file.as_deref());
    }
    let check_only = cli.check;
    let settings = match Settings::load(cli) {
        Ok(settings) => settings,
        Err(err) => return fail(2, &anyhow::Error::new(err)),
    };
    if let Err(err) = telemetry::init(settings.log.format, &settings.log.level) {
        return fail(2, &anyhow::Error::new(err));
    }
    if check_only {
        return check(&settings);
    }
    match serve(settings) {
        Ok(code) => code,
        Err(err) => {
            let code = match err.downcast_ref::<MonitorError>() {
                Some(MonitorError::Targets(_)) => 2,
                _ => 1,
            };
            fail(code, &err)
        }
    }
}

fn serve(settings: Settings) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        let signals = shutdown::listen()?;
        let summary = sitewatch_monitor::run(settings, signals.shutdown, signals.reload).await?;
        if summary.lost() > 0 {
            tracing::error!(
                lost = summary.lost(),
                "some metrics were not confirmed by Kafka"
            );
            return Ok(ExitCode::from(1));
        }
        Ok(ExitCode::SUCCESS)
    });
    // Dropping a runtime waits for every blocking task without limit (a
    // system DNS lookup of a site that never answers): what mattered is done,
    // so the process ends within a bounded time instead of being killed.
    runtime.shutdown_timeout(EXIT_TIMEOUT);
    result
}

/// How long the runtime's leftover blocking tasks may hold up the exit.
const EXIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

fn check(settings: &Settings) -> ExitCode {
    let Some(spec) = &settings.targets else {
        return ExitCode::from(2);
    };
    let source = TargetSource::from_spec(spec);
    let loaded = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|rt| Ok(rt.block_on(source.load())?));
    match loaded {
        Ok(list) => {
            eprintln!(
                "{}: {} sites, settings valid",
                source.describe(),
                list.len()
            );
            ExitCode::SUCCESS
        }
        Err(err) => fail(2, &err),
    }
}

fn health_check(file: Option<&std::path::Path>) -> ExitCode {
    match file.map(health::check) {
        Some(Ok(())) => ExitCode::SUCCESS,
        Some(Err(why)) => {
            eprintln!("monitor: unhealthy: {why}");
            ExitCode::from(1)
        }
        None => ExitCode::from(2),
    }
}

fn fail(code: u8, err: &anyhow::Error) -> ExitCode {
    eprintln!(
        "monitor: error: {}",
        sitewatch_service::telemetry::error_chain(err.as_ref())
    );
    ExitCode::from(code)
}
