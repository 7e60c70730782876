//! Bounded storage: the days of `metrics` older than the retention dropped
//! whole (a DROP of their partition, not a DELETE of their rows), and the
//! days ahead made before they come, by one consumer at a time.

use std::time::Duration;

use serde::Deserialize;
use sitewatch_db::Connector;
use sitewatch_service::settings::TimeSpan;
use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;

const EXPIRED_PARTITIONS: &str = include_str!("../sql/expired_partitions.sql");
const ENSURE_PARTITION: &str = include_str!("../sql/ensure_partition.sql");

/// Any number that no other advisory lock of sitewatch uses: held by the
/// consumer whose pass runs, so that two never run one at once.
pub const RETENTION_LOCK: i64 = 0x5173_7761_7463_6802;

/// How long a DROP may wait for the writes under way: it blocks the
/// writes queued behind it, so it gives way and the next pass tries again.
const DROP_LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '2s'";

/// What is kept and made ahead, each setting declared once.
#[derive(Debug, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// How long metrics are kept: a day's partition is dropped once all of it is older than this
    #[arg(
        id = "retention.metrics",
        long = "retention-metrics",
        env = "CONSUMER_RETENTION_METRICS",
        value_name = "DURATION",
        default_value = "14days"
    )]
    pub metrics: TimeSpan,
    /// Days of metrics partitions made ahead of today
    #[arg(
        id = "retention.partitions_ahead",
        long = "retention-partitions-ahead",
        env = "CONSUMER_RETENTION_PARTITIONS_AHEAD",
        value_name = "N",
        default_value = "3"
    )]
    pub partitions_ahead: u32,
    /// How often a consumer tries a pass (only one of all the consumers runs it at a time)
    #[arg(
        id = "retention.every",
        long = "retention-every",
        env = "CONSUMER_RETENTION_EVERY",
        value_name = "DURATION",
        default_value = "10m"
    )]
    pub every: TimeSpan,
}

/// A pass failed; the next one tries again.
#[derive(Debug, thiserror::Error)]
#[error("retention: PostgreSQL: {}", sitewatch_db::describe_error(.0))]
pub struct RetentionError(#[from] tokio_postgres::Error);

/// What one pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pass {
    /// Another consumer's pass was running: this one did nothing.
    Skipped,
    /// The days ahead exist, and these partitions were dropped.
    Done {
        /// The partitions dropped, oldest first.
        dropped: Vec<String>,
        /// Expired partitions left for the next pass (writes held them).
        left: Vec<String>,
        /// Expired partitions PostgreSQL refused to drop (something depends on them).
        failed: Vec<String>,
    },
}

/// Runs passes on its own connection.
#[derive(Debug, Clone)]
pub struct Retention {
    connector: Connector,
    settings: RetentionSettings,
}

impl Retention {
    /// Passes over the database `connector` reaches, as `settings` say.
    pub fn new(connector: Connector, settings: RetentionSettings) -> Retention {
        Retention {
            connector,
            settings,
        }
    }

    /// A pass every `retention.every` until `shutdown`; a pass under way
    /// when it comes is finished (each of its steps is one transaction).
    pub async fn run(self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            match self.pass().await {
                Ok(Pass::Done { dropped, left, .. }) => {
                    if !dropped.is_empty() {
                        tracing::info!(
                            ?dropped,
                            "retention: metrics partitions past the retention dropped"
                        );
                    }
                    if !left.is_empty() {
                        tracing::warn!(?left, "retention: expired partitions left for the next pass; writes held them past the lock timeout");
                    }
                }
                Ok(Pass::Skipped) => {
                    tracing::debug!("retention: another consumer's pass is running");
                }
                Err(err) => {
                    tracing::warn!(error = %err, "retention: the pass failed; the next one tries again");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(self.settings.every.get()) => {}
            }
        }
    }

    /// One pass, if no other consumer's is running: makes the days ahead,
    /// then drops each partition whose days are all past the retention.
    pub async fn pass(&self) -> Result<Pass, RetentionError> {
        // Its own session: the lock goes with it, even if the process is killed.
        let mut client = self.connector.connect().await?;
        let held: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&RETENTION_LOCK])
            .await?
            .try_get(0)?;
        if !held {
            return Ok(Pass::Skipped);
        }
        // As the bounds were written, whatever the server's defaults.
        client
            .batch_execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO'")
            .await?;
        let ensure = client.prepare(ENSURE_PARTITION).await?;
        let now = chrono::Utc::now();
        for day in 0..=i64::from(self.settings.partitions_ahead) {
            let at = now + chrono::TimeDelta::days(day);
            let _ = client.execute(&ensure, &[&at]).await?;
        }
        let (mut dropped, mut left, mut failed) = (Vec::new(), Vec::new(), Vec::new());
        // A retention reaching before any time there is keeps everything.
        let Some(cutoff) = chrono::TimeDelta::from_std(self.settings.metrics.get())
            .ok()
            .and_then(|keep| now.checked_sub_signed(keep))
        else {
            return Ok(Pass::Done {
                dropped,
                left,
                failed,
            });
        };
        let expired: Vec<String> = client
            .query(EXPIRED_PARTITIONS, &[&cutoff])
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?;
        for name in expired {
            let tx = client.transaction().await?;
            tx.batch_execute(DROP_LOCK_TIMEOUT).await?;
            // The name comes quoted and qualified as needed (a regclass).
            match tx.batch_execute(&format!("DROP TABLE {name}")).await {
                Ok(()) => {
                    tx.commit().await?;
                    dropped.push(name);
                }
                Err(err) if err.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                    drop(tx);
                    left.push(name);
                }
                // One that cannot be dropped (an operator's view on it) holds
                // up neither the others nor the next pass.
                Err(err) if err.code().is_some() => {
                    drop(tx);
                    tracing::warn!(partition = %name, error = %sitewatch_db::describe_error(&err), "retention: a partition past the retention cannot be dropped; drop what depends on it, or the partition, by hand");
                    failed.push(name);
                }
                Err(err) => return Err(err.into()),
            }
        }
        Ok(Pass::Done {
            dropped,
            left,
            failed,
        })
    }
}

/// How long the task may take to finish its pass at shutdown; a pass cut
/// short leaves each step done or not (one transaction each).
pub(crate) const RETENTION_EXIT: Duration = Duration::from_secs(10);
