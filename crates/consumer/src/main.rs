//! The `consumer` binary: flags, logging, signals; the work is in the library.

use std::process::ExitCode;

use sitewatch_consumer::settings::{self, Settings};
use sitewatch_consumer::ConsumerError;
use sitewatch_service::process;

const NAME: &str = "consumer";

fn main() -> ExitCode {
    let settings = match process::start::<Settings>(NAME, settings::command()) {
        Ok((_, settings)) => settings,
        Err(code) => return code,
    };
    process::serve(
        NAME,
        |signals| async move {
            let _ = sitewatch_consumer::run(settings, signals.shutdown).await?;
            Ok(ExitCode::SUCCESS)
        },
        |_: &ConsumerError| 1,
    )
}
