//! The sender: delivers `alert_outbox` rows to their webhooks, one at a
//! time, each inside a transaction that holds the row locked while it is
//! sent, so that no other consumer sends it meanwhile and a sender that dies
//! mid-send leaves it for the next (a crash after the receiver took it but
//! before the row was marked sent makes one repeat, with the same key).
//!
//! It has its own connection, not one of the writers' pool: a webhook that
//! hangs holds this connection only, never a write of metrics.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sitewatch_db::Connector;
use sitewatch_service::telemetry::error_chain;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{AlertSettings, Notification, Webhook, Webhooks};
use crate::measure;

const CLAIM: &str = include_str!("../../sql/claim_alert.sql");
const SETTLE: &str = include_str!("../../sql/settle_alert.sql");
const UNKNOWN: &str = include_str!("../../sql/unknown_webhooks.sql");

/// Longest `Retry-After` taken at its word.
const MAX_RETRY_AFTER_SECS: u64 = 3600;

/// How often the outbox is looked at when it had nothing due.
const POLL_EVERY: Duration = Duration::from_millis(500);

/// First wait after a failed attempt; it doubles with each attempt.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// Why the sender could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    /// A webhook of the setting is bad (named by position, not URL).
    #[error("setting `alert.webhooks`: {0}")]
    Settings(String),
    /// rustls or reqwest refused the configuration.
    #[error("cannot build the HTTP client for webhooks: {0}")]
    Client(String),
}

/// Delivers the outbox's notifications until shut down.
#[derive(Debug)]
pub struct Sender {
    connector: Connector,
    webhooks: Webhooks,
    http: reqwest::Client,
    timeout: Duration,
    retry_max: Duration,
    refused_attempts: u32,
    /// Each webhook's failures in a row, and until when to leave it be: a
    /// down webhook would otherwise cost a timeout per pending row, and
    /// hold up the notifications of every other webhook.
    resting: HashMap<String, (u32, Instant)>,
}

/// What one attempt came to.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The webhook took it (2xx).
    Sent,
    /// Worth trying again: no answer, a 5xx, 408 or 429; at least after the
    /// time the webhook asked for (`Retry-After`), if it did.
    Retry(String, Option<Duration>),
    /// The webhook refused it (another 4xx, or a redirect): tried a bounded
    /// number of times.
    Refused(String),
}

/// A row claimed for sending.
struct Claimed {
    id: i64,
    webhook: String,
    payload: serde_json::Value,
    refusals: u32,
}

impl Sender {
    /// A sender over its own connection from `connector`.
    pub fn new(connector: Connector, settings: &AlertSettings) -> Result<Sender, SenderError> {
        let webhooks = settings.webhooks().map_err(SenderError::Settings)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| SenderError::Client(e.to_string()))?
            .with_root_certificates(sitewatch_service::tls::system_roots())
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(settings.timeout.get())
            // A POST redirected becomes a GET without its body, whose 200
            // would count as delivered; and the new address would be logged.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("sitewatch-consumer/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SenderError::Client(e.to_string()))?;
        Ok(Sender {
            connector,
            webhooks,
            http,
            timeout: settings.timeout.get(),
            retry_max: settings.retry_max.get().max(FIRST_RETRY),
            refused_attempts: settings.refused_attempts.max(1),
            resting: HashMap::new(),
        })
    }

    /// Sends until `shutdown`; a send under way when it comes is finished.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut db: Option<tokio_postgres::Client> = None;
        let mut told_unknown = false;
        while !shutdown.is_cancelled() {
            let client = match &mut db {
                Some(client) if !client.is_closed() => client,
                _ => match self.connect().await {
                    Ok(client) => db.insert(client),
                    Err(err) => {
                        tracing::warn!(error = %sitewatch_db::describe_error(&err), "alerts: cannot reach PostgreSQL to read the outbox; notifications wait until it answers");
                        pause(&shutdown, Duration::from_secs(5)).await;
                        continue;
                    }
                },
            };
            if !told_unknown {
                told_unknown = self.tell_unknown(client).await.is_ok();
            }
            match self.deliver_one(client).await {
                Ok(true) => {}
                Ok(false) => pause(&shutdown, POLL_EVERY).await,
                Err(err) => {
                    tracing::warn!(error = %sitewatch_db::describe_error(&err), "alerts: reading or updating the outbox failed; trying again");
                    db = None;
                    pause(&shutdown, Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// A connection whose session ends a transaction left open longer than
    /// a send can take: a sender whose host vanished (no FIN, no RST) would
    /// otherwise hold its row, and its site's later rows, for hours.
    async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let client = self.connector.connect().await?;
        let limit = (self.timeout + Duration::from_secs(30)).as_millis();
        client
            .batch_execute(&format!(
                "SET idle_in_transaction_session_timeout = {limit}"
            ))
            .await?;
        Ok(client)
    }

    /// Warns of notifications owed to webhooks this consumer does not have:
    /// they wait for a consumer that does.
    async fn tell_unknown(
        &self,
        client: &tokio_postgres::Client,
    ) -> Result<(), tokio_postgres::Error> {
        let known: Vec<&str> = self.webhooks.as_slice().iter().map(Webhook::id).collect();
        for row in client.query(UNKNOWN, &[&known]).await? {
            let webhook: String = row.try_get(0)?;
            let pending: i64 = row.try_get(1)?;
            tracing::warn!(webhook, pending, "alerts: notifications wait for a webhook this consumer does not have in alert.webhooks; give every consumer the same webhooks, or give these up with UPDATE alert_outbox SET failed_at = now() WHERE webhook = '...' AND sent_at IS NULL");
        }
        Ok(())
    }

    /// Claims the next due row, sends it and records the outcome; false
    /// when nothing was due.
    async fn deliver_one(
        &mut self,
        client: &mut tokio_postgres::Client,
    ) -> Result<bool, tokio_postgres::Error> {
        let now = Instant::now();
        let known: Vec<&str> = self.webhooks.as_slice().iter().map(Webhook::id).collect();
        let resting: Vec<&str> = self
            .resting
            .iter()
            .filter(|(_, (_, until))| *until > now)
            .map(|(id, _)| id.as_str())
            .collect();
        let tx = client.transaction().await?;
        let Some(row) = tx.query_opt(CLAIM, &[&known, &resting]).await? else {
            tx.commit().await?;
            return Ok(false);
        };
        let claimed = Claimed {
            id: row.try_get("id")?,
            webhook: row.try_get("webhook")?,
            payload: row.try_get("payload")?,
            refusals: u32::try_from(row.try_get::<_, i32>("refusals")?).unwrap_or_default(),
        };
        let Some(webhook) = self
            .webhooks
            .as_slice()
            .iter()
            .find(|w| w.id() == claimed.webhook)
            .cloned()
        else {
            // The claim asks only for this sender's webhooks.
            tx.commit().await?;
            return Ok(false);
        };
        let notification: Option<Notification> =
            serde_json::from_value(claimed.payload.clone()).ok();
        let outcome = match &notification {
            Some(notification) => self.send(&webhook, notification).await,
            None => Outcome::Refused("the stored payload is not a notification".into()),
        };
        let key = notification
            .as_ref()
            .map_or("", |n| n.idempotency_key.as_str());
        let webhook_id = claimed.webhook.as_str();
        let (settled, counted) = match &outcome {
            Outcome::Sent => {
                tracing::info!(webhook = webhook_id, key, "alerts: notification sent");
                let _ = self.resting.remove(webhook_id);
                (Settle::sent(), "sent")
            }
            Outcome::Retry(why, asked) => {
                let failures = self.resting.get(webhook_id).map_or(0, |r| r.0) + 1;
                let wait = self.backoff(failures).max(asked.unwrap_or_default());
                let _ = self
                    .resting
                    .insert(claimed.webhook.clone(), (failures, Instant::now() + wait));
                tracing::warn!(webhook = webhook_id, key, failures, error = %why, retry_in = ?wait, "alerts: webhook did not take the notification; retrying");
                (Settle::again(wait, false, why), "retried")
            }
            Outcome::Refused(why) if claimed.refusals + 1 >= self.refused_attempts => {
                tracing::error!(webhook = webhook_id, key, refusals = claimed.refusals + 1, error = %why, "alerts: notification given up; the webhook refuses it (check its URL and what it accepts)");
                (Settle::given_up(why), "failed")
            }
            Outcome::Refused(why) => {
                let wait = self.backoff(claimed.refusals + 1);
                tracing::warn!(webhook = webhook_id, key, refusals = claimed.refusals + 1, error = %why, retry_in = ?wait, "alerts: webhook refused the notification; retrying");
                (Settle::again(wait, true, why), "refused")
            }
        };
        let _ = tx
            .execute(
                SETTLE,
                &[
                    &claimed.id,
                    &settled.sent,
                    &settled.failed,
                    &settled.wait.as_secs_f64(),
                    &settled.refused,
                    &settled.error,
                ],
            )
            .await?;
        tx.commit().await?;
        measure::notification(webhook.kind().as_str(), counted);
        Ok(true)
    }

    /// One attempt at `notification` to `webhook`.
    async fn send(&self, webhook: &Webhook, notification: &Notification) -> Outcome {
        let sent = self
            .http
            .post(webhook.url())
            .header("Idempotency-Key", &notification.idempotency_key)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(webhook.body(notification).to_string())
            .send()
            .await;
        match sent {
            Ok(response) => {
                let status = response.status();
                if status.is_success() {
                    Outcome::Sent
                } else if status.is_server_error()
                    || status == reqwest::StatusCode::REQUEST_TIMEOUT
                    || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                {
                    let asked = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(|secs| Duration::from_secs(secs.min(MAX_RETRY_AFTER_SECS)));
                    Outcome::Retry(format!("answered {status}"), asked)
                } else if status.is_redirection() {
                    Outcome::Refused(format!(
                        "answered {status}: redirects are not followed; give alert.webhooks the final address"
                    ))
                } else {
                    Outcome::Refused(format!("answered {status}"))
                }
            }
            // The URL is a credential: the error goes without it.
            Err(err) => Outcome::Retry(error_chain(&err.without_url()), None),
        }
    }

    /// The wait after `failures` failures in a row: doubling from
    /// [`FIRST_RETRY`] up to `retry_max`, jittered so that consumers
    /// retrying one webhook spread out.
    fn backoff(&self, failures: u32) -> Duration {
        let doubled = FIRST_RETRY.saturating_mul(1 << failures.saturating_sub(1).min(20));
        crate::write::jittered(doubled.min(self.retry_max))
    }
}

/// How an attempt leaves its row.
struct Settle<'a> {
    sent: bool,
    failed: bool,
    refused: bool,
    wait: Duration,
    error: Option<&'a str>,
}

impl<'a> Settle<'a> {
    fn sent() -> Settle<'a> {
        Settle {
            sent: true,
            failed: false,
            refused: false,
            wait: Duration::ZERO,
            error: None,
        }
    }

    fn again(wait: Duration, refused: bool, why: &'a str) -> Settle<'a> {
        Settle {
            sent: false,
            failed: false,
            refused,
            wait,
            error: Some(why),
        }
    }

    fn given_up(why: &'a str) -> Settle<'a> {
        Settle {
            sent: false,
            failed: true,
            refused: true,
            wait: Duration::ZERO,
            error: Some(why),
        }
    }
}

/// Waits `wait`, or less if shut down meanwhile.
async fn pause(shutdown: &CancellationToken, wait: Duration) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(wait) => {}
    }
}
