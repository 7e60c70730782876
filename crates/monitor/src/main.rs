//! The `monitor` binary: flags, logging, signals; the work is in the library.

use std::process::ExitCode;

use sitewatch_monitor::settings::{self, Settings, CHECK};
use sitewatch_monitor::source::TargetSource;
use sitewatch_monitor::MonitorError;
use sitewatch_service::process::{self, ProcessError};

const NAME: &str = "monitor";

fn main() -> ExitCode {
    let (cli, settings) = match process::start::<Settings>(NAME, settings::command()) {
        Ok(started) => started,
        Err(code) => return code,
    };
    if cli.flag(CHECK) {
        return check(&settings);
    }
    process::serve(
        NAME,
        |signals| async move {
            let summary =
                sitewatch_monitor::run(settings, signals.shutdown, signals.reload).await?;
            if let Some(fatal) = &summary.fatal {
                tracing::error!(%fatal, "stopped by a fatal Kafka producer error");
                return Ok(ExitCode::from(1));
            }
            if summary.lost() > 0 {
                tracing::error!(
                    lost = summary.lost(),
                    "some metrics were not confirmed by Kafka"
                );
                return Ok(ExitCode::from(1));
            }
            Ok(ExitCode::SUCCESS)
        },
        |err| match err {
            MonitorError::Targets(_) => 2,
            _ => 1,
        },
    )
}

fn check(settings: &Settings) -> ExitCode {
    let Some(spec) = &settings.targets else {
        return ExitCode::from(2);
    };
    let source = TargetSource::from_spec(spec);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return process::fail(NAME, 1, &ProcessError::Runtime(err)),
    };
    match runtime.block_on(source.load()) {
        Ok(list) => {
            eprintln!(
                "{}: {} sites, settings valid",
                source.describe(),
                list.len()
            );
            ExitCode::SUCCESS
        }
        Err(err) => process::fail(NAME, 2, &err),
    }
}
