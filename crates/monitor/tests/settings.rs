//! Every setting of the monitor, found in its command line so that a new one
//! is checked too: set by its file key, its environment variable and its
//! flag; the default `--help` shows is the real one; secrets load but are
//! never printed; the README's table is the declarations'.
//!
//! After adding or changing a setting, rewrite the README's table with
//! `UPDATE_README=1 cargo nextest run -p sitewatch-monitor --test settings`.

use sitewatch_monitor::settings::{self, Settings};
use sitewatch_monitor::source::TargetSource;
use sitewatch_service::settings::check;
use sitewatch_service::ExposeSecret;

/// The secrets `Debug` redacts, in the clear.
fn expose(s: &Settings) -> String {
    let database = match s.targets.as_ref().map(TargetSource::from_spec) {
        Some(TargetSource::Postgres(pg)) => pg.url.map(|url| url.expose_secret().to_owned()),
        _ => None,
    };
    let password = s.kafka.ssl_key_password.as_ref();
    let properties: Vec<_> = s.kafka.properties.iter().collect();
    format!(
        "{database:?} {:?} {properties:?}",
        password.map(ExposeSecret::expose_secret)
    )
}

#[test]
fn every_setting_is_set_three_ways_shown_and_documented() {
    if let Err(problems) = check::service(settings::command, expose, "monitor") {
        panic!("{problems}");
    }
}
