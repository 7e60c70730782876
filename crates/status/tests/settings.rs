//! Every setting of the status service, found in its command line so that a
//! new one is checked too: set by its file key, its environment variable and
//! its flag; the default `--help` shows is the real one; secrets load but are
//! never printed; the README's table is the declarations'.
//!
//! After adding or changing a setting, rewrite the README's table with
//! `UPDATE_README=1 cargo nextest run -p sitewatch-status --test settings`.

use sitewatch_service::settings::check;
use sitewatch_service::ExposeSecret;
use sitewatch_status::settings::{self, Settings};

/// The secrets `Debug` redacts, in the clear.
fn expose(s: &Settings) -> String {
    let secrets = [&s.postgres.url, &s.postgres.password];
    let secrets: Vec<_> = secrets
        .iter()
        .map(|secret| secret.as_ref().map(ExposeSecret::expose_secret))
        .collect();
    format!("{secrets:?}")
}

#[test]
fn every_setting_is_set_three_ways_shown_and_documented() {
    check::service(settings::command, expose, "status").unwrap_or_else(|problems| {
        panic!("{problems}");
    });
}
