//! The `consumer` binary: flags, logging, signals; the work is in the library.

use std::process::ExitCode;

use clap::Parser;
use sitewatch_consumer::settings::{Cli, Settings};
use sitewatch_consumer::ConsumerError;
use sitewatch_service::process;
use sitewatch_service::telemetry;

const NAME: &str = "consumer";

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.check_health {
        return process::check_health(NAME, cli.health_file.as_deref());
    }
    let settings = match Settings::load(cli) {
        Ok(settings) => settings,
        Err(err) => return process::fail(NAME, 2, &err),
    };
    if let Err(err) = telemetry::init(settings.log.format, &settings.log.level) {
        return process::fail(NAME, 2, &err);
    }
    process::serve(
        NAME,
        |signals| async move {
            let _ = sitewatch_consumer::run(settings, signals.shutdown).await?;
            Ok(ExitCode::SUCCESS)
        },
        |_: &ConsumerError| 1,
    )
}
