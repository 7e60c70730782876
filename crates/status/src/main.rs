//! The `status` binary: flags, logging, signals; the work is in the library.

use std::process::ExitCode;

use sitewatch_service::process;
use sitewatch_status::settings::{self, Settings};
use sitewatch_status::{Server, StatusError};

const NAME: &str = "status";

fn main() -> ExitCode {
    let settings = match process::start::<Settings>(NAME, settings::command()) {
        Ok((_, settings)) => settings,
        Err(code) => return code,
    };
    process::serve(
        NAME,
        |signals| async move {
            Server::bind(settings).await?.run(signals.shutdown).await?;
            Ok(ExitCode::SUCCESS)
        },
        |_: &StatusError| 1,
    )
}
