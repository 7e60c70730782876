//! The `consumer` binary: flags, logging, signals; the work is in the library.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use sitewatch_consumer::settings::{Cli, Settings};
use sitewatch_service::{health, shutdown, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.check_health {
        return match cli.health_file.as_deref().map(health::check) {
            Some(Ok(())) => ExitCode::SUCCESS,
            Some(Err(why)) => {
                eprintln!("consumer: unhealthy: {why}");
                ExitCode::from(1)
            }
            None => ExitCode::from(2),
        };
    }
    let settings = match Settings::load(cli) {
        Ok(settings) => settings,
        Err(err) => return fail(2, &anyhow::Error::new(err)),
    };
    if let Err(err) = telemetry::init(settings.log.format, &settings.log.level) {
        return fail(2, &anyhow::Error::new(err));
    }
    match serve(settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(1, &err),
    }
}

fn serve(settings: Settings) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        let signals = shutdown::listen()?;
        let _ = sitewatch_consumer::run(settings, signals.shutdown).await?;
        Ok(())
    });
    // Dropping a runtime waits for every blocking task without limit (a DNS
    // lookup or a librdkafka call that never returns): what mattered is done,
    // so the process ends within a bounded time instead of being killed.
    runtime.shutdown_timeout(EXIT_TIMEOUT);
    result
}

/// How long the runtime's leftover blocking tasks may hold up the exit.
const EXIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

fn fail(code: u8, err: &anyhow::Error) -> ExitCode {
    eprintln!(
        "consumer: error: {}",
        sitewatch_service::telemetry::error_chain(err.as_ref())
    );
    ExitCode::from(code)
}
