//! Every setting of the status service, each declared once (flag,
//! environment variable, default, config-file key and help) and read in
//! layers, as the other services' (see `sitewatch_service::settings`).

use std::time::Duration;

use clap::Command;
use serde::Deserialize;
use sitewatch_db::PgSettings;
use sitewatch_service::health::HealthSettings;
pub use sitewatch_service::settings::Cli;
use sitewatch_service::settings::{
    self as layers, About, LogSettings, ServiceSettings, SettingsError, TimeSpan,
};

/// Every setting of the status service.
#[derive(Debug, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address the status page, its JSON API and badges are served on (IP:PORT)
    #[arg(
        long,
        env = "STATUS_LISTEN",
        value_name = "IP:PORT",
        default_value = "0.0.0.0:8080"
    )]
    pub listen: String,
    /// How often the overview of every site is read from PostgreSQL; pages and the API's site list serve the last read
    #[arg(
        long,
        env = "STATUS_REFRESH",
        value_name = "DURATION",
        default_value = "30s"
    )]
    pub refresh: TimeSpan,
    /// Sites per page of the overview (and the API's largest page)
    #[arg(
        long,
        env = "STATUS_PAGE_SIZE",
        value_name = "N",
        default_value = "100"
    )]
    pub page_size: usize,
    /// Title of the status page
    #[arg(
        long,
        env = "STATUS_TITLE",
        value_name = "TEXT",
        default_value = "Status"
    )]
    pub title: String,
    /// The role every database session takes on (SET ROLE): it may only read, and only what the page shows (the migrations make it)
    #[arg(
        long,
        env = "STATUS_READ_ROLE",
        value_name = "NAME",
        default_value = "sitewatch_read"
    )]
    pub read_role: String,
    /// Longest a request may take before it is answered 503
    #[arg(
        long,
        env = "STATUS_REQUEST_TIMEOUT",
        value_name = "DURATION",
        default_value = "10s"
    )]
    pub request_timeout: TimeSpan,
    /// Where the service says whether it is ready, and when it is not.
    #[command(flatten)]
    #[serde(flatten)]
    pub health: HealthSettings,
    /// The database.
    #[command(flatten)]
    pub postgres: PgSettings,
    /// Logging.
    #[command(flatten)]
    pub log: LogSettings,
}

impl Default for Settings {
    fn default() -> Self {
        layers::defaults()
    }
}

/// What `--help` says of the status service.
const ABOUT: About = About {
    name: "status",
    version: env!("CARGO_PKG_VERSION"),
    summary: "Serves every site's state, uptime, latency and incidents as a status page,\n\
        a JSON API (/api/sites, /api/incidents) and SVG badges, reading PostgreSQL\n\
        through a role that can only read.",
    lifecycle: "Any number can run side by\n\
        side. SIGTERM or SIGINT stops accepting connections, answers the requests\n\
        under way and exits 0.",
    exit_codes: "0 stopped cleanly; 1 a failure at run time; 2 bad settings.",
    example: "monitor-data/status.example.toml",
};

/// The status service's command line: every setting, `--config` and `--check-health`.
pub fn command() -> Command {
    layers::command::<Settings>(ABOUT.command(), "STATUS_CONFIG")
}

/// The longest refresh: an overview older than this is not worth serving.
const REFRESH_MAX: Duration = Duration::from_secs(3600);

/// The largest page: a page of the overview is rendered whole.
const PAGE_SIZE_MAX: usize = 1000;

impl ServiceSettings for Settings {
    fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |setting, reason: &str| Err(SettingsError::invalid(setting, reason));
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return invalid("listen", "must be IP:PORT, e.g. 0.0.0.0:8080");
        }
        let refresh = self.refresh.get();
        if refresh < Duration::from_secs(1) || refresh > REFRESH_MAX {
            return invalid("refresh", "must be between 1s and 1h");
        }
        if self.page_size == 0 || self.page_size > PAGE_SIZE_MAX {
            return invalid("page_size", "must be between 1 and 1000");
        }
        if self.read_role.is_empty()
            || !self
                .read_role
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return invalid(
                "read_role",
                "must be a role name (letters, digits and _): the service reads through a role that cannot write",
            );
        }
        if self.request_timeout.is_zero() {
            return invalid("request_timeout", "must be longer than zero");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use sitewatch_service::settings::check;

    use super::*;

    #[test]
    fn layers_and_validation() {
        let (_dir, config) = check::config_file("page_size = 50\n[postgres]\nhost = \"db\"\n");
        let s = Settings::load(&check::cli(
            command(),
            &["--config", &config, "--refresh", "5s"],
        ))
        .expect("valid settings");
        assert_eq!((s.page_size, s.refresh.get()), (50, Duration::from_secs(5)));
        assert_eq!(s.postgres.host, "db");
        for (args, setting) in [
            (&["--listen", "8080"][..], "listen"),
            (&["--refresh", "0s"], "refresh"),
            (&["--refresh", "2h"], "refresh"),
            (&["--page-size", "0"], "page_size"),
            (&["--page-size", "1001"], "page_size"),
            (&["--read-role", " "], "read_role"),
            (&["--request-timeout", "0s"], "request_timeout"),
        ] {
            let err = Settings::load(&check::cli(command(), args))
                .expect_err("invalid settings")
                .to_string();
            assert!(err.contains(setting), "{args:?}: {err}");
        }
    }
}
