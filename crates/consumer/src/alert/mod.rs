//! Telling people when a site goes down or comes back up: webhooks, fed
//! through an outbox in PostgreSQL.
//!
//! A transition writes one `alert_outbox` row per configured webhook in the
//! transaction that moves the site's state ([`outbox`]), so a crash between
//! the state change and the send loses nothing; [`send`] delivers the rows,
//! each consumer of the group taking only rows no other has locked, a site's
//! rows in order. Every notification carries an idempotency key (incident
//! and transition), the same on every attempt, so a receiver can recognise
//! a retry after an answer that never arrived.

pub mod outbox;
pub mod send;
mod webhook;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sitewatch_service::settings::TimeSpan;
use sitewatch_service::{ExposeSecret, SecretString};
use uuid::Uuid;

pub use self::webhook::{Webhook, WebhookKind, Webhooks};

/// Where notifications go and how hard to try, each setting declared once.
#[derive(Debug, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct AlertSettings {
    /// Webhooks told when a site goes down or comes back up, comma-separated KIND:URL (KIND: json, slack, discord or teams); never printed, as such a URL is a credential
    #[arg(
        id = "alert.webhooks",
        long = "alert-webhooks",
        env = "CONSUMER_ALERT_WEBHOOKS",
        value_name = "KIND:URL,...",
        hide_env_values = true
    )]
    // Kept as written and parsed by `webhooks()`: a parse error of clap's
    // would quote the value, URLs and their tokens included.
    pub webhooks: Option<SecretString>,
    /// Address of the status page, linked from each notification as ADDRESS/sites/ID; empty for none
    #[arg(
        id = "alert.status_page_url",
        long = "alert-status-page-url",
        env = "CONSUMER_ALERT_STATUS_PAGE_URL",
        value_name = "ADDRESS"
    )]
    pub status_page_url: Option<String>,
    /// Longest one delivery may take before it counts as failed and is retried
    #[arg(
        id = "alert.timeout",
        long = "alert-timeout",
        env = "CONSUMER_ALERT_TIMEOUT",
        value_name = "DURATION",
        default_value = "10s"
    )]
    pub timeout: TimeSpan,
    /// Longest wait between two attempts at a notification; the wait doubles from one second up to this, with jitter
    #[arg(
        id = "alert.retry_max",
        long = "alert-retry-max",
        env = "CONSUMER_ALERT_RETRY_MAX",
        value_name = "DURATION",
        default_value = "60s"
    )]
    pub retry_max: TimeSpan,
    /// Attempts at a notification that a webhook refuses (4xx) before it is given up, logged and counted as failed
    #[arg(
        id = "alert.refused_attempts",
        long = "alert-refused-attempts",
        env = "CONSUMER_ALERT_REFUSED_ATTEMPTS",
        value_name = "N",
        default_value = "5"
    )]
    pub refused_attempts: u32,
}

impl AlertSettings {
    /// The webhooks configured (none when the setting is absent or empty);
    /// the error names a bad one by its position, never by its URL.
    pub fn webhooks(&self) -> Result<Webhooks, String> {
        match &self.webhooks {
            Some(text) => text.expose_secret().parse(),
            None => Ok(Webhooks::default()),
        }
    }

    /// The status page's address, if one is set (empty counts as none).
    pub fn status_page(&self) -> Result<Option<url::Url>, String> {
        match self.status_page_url.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(text) => match url::Url::parse(text) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(Some(url)),
                Ok(_) => Err(format!("{text:?} is not an http:// or https:// address")),
                Err(err) => Err(format!("{text:?} does not parse: {err}")),
            },
        }
    }
}

/// Where a site went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// It reached its failure threshold: an incident opened.
    Down,
    /// It reached its success threshold again: the incident resolved.
    Up,
}

impl Status {
    /// The name in payloads and in `alert_outbox.transition`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Down => "down",
            Status::Up => "up",
        }
    }
}

/// What every webhook is told of one transition: the `json` kind's payload
/// as it is, and what the other kinds' messages are made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// `incident-ID-STATE`: the same for every attempt at this notification.
    pub idempotency_key: String,
    /// The incident opened or resolved.
    pub incident_id: i64,
    /// The site's URL as listed.
    pub site: String,
    /// Where the site went.
    pub state: Status,
    /// When the probe that moved it started.
    pub since: DateTime<Utc>,
    /// When the incident opened (for `up`, how long the site was down).
    pub down_since: DateTime<Utc>,
    /// The incident's first failed condition.
    pub failed_condition: String,
    /// What that condition found.
    pub failed_message: String,
    /// The probe that moved the state.
    pub probe_id: Uuid,
    /// The site's page on the status page, when one is configured.
    pub status_page: Option<String>,
}

impl Notification {
    /// The idempotency key of `incident_id` going `state`.
    pub fn key(incident_id: i64, state: Status) -> String {
        format!("incident-{incident_id}-{}", state.as_str())
    }

    /// One line for people: what happened, why, and where to look.
    pub fn summary(&self) -> String {
        let mut text = match self.state {
            Status::Down => format!(
                "DOWN: {} since {}: {}: {}",
                self.site,
                self.since.format("%Y-%m-%d %H:%M:%S UTC"),
                self.failed_condition,
                self.failed_message
            ),
            Status::Up => {
                let down_for = (self.since - self.down_since).to_std().unwrap_or_default();
                format!(
                    "UP: {} again since {}, after {} down ({}: {})",
                    self.site,
                    self.since.format("%Y-%m-%d %H:%M:%S UTC"),
                    humantime::format_duration(std::time::Duration::from_secs(down_for.as_secs())),
                    self.failed_condition,
                    self.failed_message
                )
            }
        };
        if let Some(page) = &self.status_page {
            text.push_str(" - ");
            text.push_str(page);
        }
        text
    }
}
