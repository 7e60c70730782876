//! Bounded storage: the partitions of `metrics` older than the retention dropped
//! whole (a DROP of their partition, not a DELETE of their rows) once they
//! are rolled up, the rollups made and kept for their own retention, and the
//! partitions ahead made before they come, by one consumer at a time.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Deserialize;
use sitewatch_db::Connector;
use sitewatch_service::settings::TimeSpan;
use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;

use crate::rollup::Rolled;
use crate::store::partitions::ensure;

const EXPIRED_PARTITIONS: &str = include_str!("../sql/expired_partitions.sql");

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
    /// How long metrics, and notifications sent, are kept: a partition is dropped once all of it is older than this (and its days are rolled up)
    #[arg(
        id = "retention.metrics",
        long = "retention-metrics",
        env = "CONSUMER_RETENTION_METRICS",
        value_name = "DURATION",
        default_value = "14days"
    )]
    pub metrics: TimeSpan,
    /// How long the hourly and daily rollups of metrics, and resolved incidents, are kept
    #[arg(
        id = "retention.rollups",
        long = "retention-rollups",
        env = "CONSUMER_RETENTION_ROLLUPS",
        value_name = "DURATION",
        default_value = "400days"
    )]
    pub rollups: TimeSpan,
    /// How much time one partition of metrics holds, in whole hours: made ahead, and dropped whole once all of it is past retention.metrics; a change applies to partitions made after it
    #[arg(
        id = "retention.partition",
        long = "retention-partition",
        env = "CONSUMER_RETENTION_PARTITION",
        value_name = "DURATION",
        default_value = "1day"
    )]
    pub partition: TimeSpan,
    /// Partitions of metrics made ahead of the one now is in
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
    /// The days ahead exist, the rollups are made, and these partitions were dropped.
    Done {
        /// How far the rollups came.
        rolled: Rolled,
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

    /// A pass every `retention.every` until `shutdown`, or at once while
    /// the rollups are catching up; a pass under way when it comes is
    /// finished (each of its steps is one transaction).
    pub async fn run(self, shutdown: CancellationToken) {
        let mut guard = GuardWatch::default();
        while !shutdown.is_cancelled() {
            let mut behind = false;
            let began = std::time::Instant::now();
            match self.pass().await {
                Ok(Pass::Done {
                    rolled,
                    dropped,
                    left,
                    ..
                }) => {
                    crate::measure::retention_pass(
                        "done",
                        began.elapsed(),
                        dropped.len(),
                        Some(rolled.until.timestamp()),
                    );
                    if !dropped.is_empty() {
                        tracing::info!(
                            ?dropped,
                            "retention: metrics partitions past the retention dropped"
                        );
                    }
                    if !left.is_empty() {
                        tracing::warn!(?left, "retention: expired partitions left for the next pass; writes held them past the lock timeout");
                    }
                    if rolled.rerolled > 0 {
                        tracing::info!(
                            rerolled = rolled.rerolled,
                            "rollups: hours and days rolled again for metrics that came late"
                        );
                    }
                    let now = Utc::now();
                    let since = guard.seen(rolled.guard, now);
                    crate::measure::rollups_guard_since(Some(since.timestamp()));
                    if now - since > GUARD_WARN_AFTER {
                        // pg_stat_activity shows the 32-bit id, without the epoch.
                        tracing::warn!(%since, backend_xid = rolled.guard & 0xFFFF_FFFF, "rollups: a transaction holding a transaction id has been open in the PostgreSQL cluster since at least then; metrics stored after it began are not rolled up again until it ends: find it with SELECT pid, usename, application_name, xact_start, state FROM pg_stat_activity WHERE backend_xid IS NOT NULL ORDER BY age(backend_xid) DESC (or in pg_prepared_xacts) and end it if nothing needs it");
                    }
                    if !rolled.caught_up {
                        tracing::info!(until = %rolled.until, "rollups: catching up; the next pass follows at once");
                        behind = true;
                    }
                }
                Ok(Pass::Skipped) => {
                    crate::measure::retention_pass("skipped", began.elapsed(), 0, None);
                    // What this member saw last is stale; the member whose pass ran says.
                    crate::measure::rollups_guard_since(None);
                    tracing::debug!("retention: another consumer's pass is running");
                }
                Err(err) => {
                    crate::measure::retention_pass("failed", began.elapsed(), 0, None);
                    crate::measure::rollups_guard_since(None);
                    tracing::warn!(error = %err, "retention: the pass failed; the next one tries again");
                }
            }
            if behind {
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(self.settings.every.get()) => {}
            }
        }
    }

    /// One pass, if no other consumer's is running: makes the days ahead,
    /// rolls up the hours closed (and those that got late metrics), deletes
    /// the rollups past their retention, then drops each partition whose
    /// days are all past the retention and rolled up.
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
        // As the bounds were written, whatever the server's defaults; and
        // without the writes' statement timeout: rolling up a day of a
        // large installation takes minutes, and a step cut short is retried
        // whole by every pass after.
        client
            .batch_execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO'; SET statement_timeout = 0")
            .await?;
        let now = chrono::Utc::now();
        let mut at = now;
        for _ in 0..=self.settings.partitions_ahead {
            let made = ensure(&client, at, self.settings.partition.get()).await?;
            match made.upper {
                Some(upper) => at = upper,
                None => break,
            }
        }
        let cutoff = before(now, &self.settings.metrics);
        let rollups_cutoff = before(now, &self.settings.rollups);
        let rolled = crate::rollup::roll(&mut client, now, rollups_cutoff).await?;
        // Notifications delivered (or given up) are kept as long as the raw
        // metrics, incidents resolved as long as the rollups.
        let _ = client
            .execute(
                "DELETE FROM alert_outbox WHERE coalesce(sent_at, failed_at) < $1",
                &[&cutoff],
            )
            .await?;
        let _ = client
            .execute(
                "DELETE FROM incidents WHERE resolved_at < $1",
                &[&rollups_cutoff],
            )
            .await?;
        let (mut dropped, mut left, mut failed) = (Vec::new(), Vec::new(), Vec::new());
        // Raw rows are dropped only once their day is rolled up (a day's
        // rollup is made from its raw rows, once all its hours are).
        let rolled_days = crate::rollup::day_of(rolled.until);
        let expired: Vec<(String, DateTime<Utc>)> = client
            .query(EXPIRED_PARTITIONS, &[&cutoff.min(rolled_days)])
            .await?
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<_, tokio_postgres::Error>>()?;
        for (name, upper) in expired {
            let tx = client.transaction().await?;
            tx.batch_execute(DROP_LOCK_TIMEOUT).await?;
            // The name comes quoted and qualified as needed (a regclass).
            match tx.batch_execute(&format!("DROP TABLE {name}")).await {
                Ok(()) => {
                    let _ = tx
                        .execute(crate::rollup::RAW_DROPPED_UNTIL, &[&upper])
                        .await?;
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
            rolled,
            dropped,
            left,
            failed,
        })
    }
}

/// How long the rollups' guard may stay put before the passes warn. Each
/// pass records the guard it read in a transaction of its own, which takes
/// an id, so even an idle installation moves it from pass to pass: only a
/// transaction left open holds it.
const GUARD_WARN_AFTER: TimeDelta = TimeDelta::hours(2);

/// When the passes first saw the rollups' guard (the oldest transaction
/// holding an id) at its current value.
#[derive(Debug, Default)]
struct GuardWatch(Option<(i64, DateTime<Utc>)>);

impl GuardWatch {
    /// Since when `guard` has been the guard, as of `now`: `now` for a new one.
    fn seen(&mut self, guard: i64, now: DateTime<Utc>) -> DateTime<Utc> {
        match self.0 {
            Some((seen, since)) if seen == guard => since,
            _ => {
                self.0 = Some((guard, now));
                now
            }
        }
    }
}

/// The time `keep` before `now`, or the first day of the Common Era for a
/// retention reaching before it (settings bound it well within).
fn before(now: DateTime<Utc>, keep: &TimeSpan) -> DateTime<Utc> {
    chrono::TimeDelta::from_std(keep.get())
        .ok()
        .and_then(|keep| now.checked_sub_signed(keep))
        .map_or(crate::rollup::common_era(), |at| {
            at.max(crate::rollup::common_era())
        })
}

/// How long the task may take to finish its pass at shutdown; a pass cut
/// short leaves each step done or not (one transaction each).
pub(crate) const RETENTION_EXIT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_is_dated_from_the_first_pass_that_saw_it() {
        let at = |s: &str| s.parse::<DateTime<Utc>>().expect("a time");
        let mut watch = GuardWatch::default();
        // (the guard a pass read, when, since when it is dated), in order.
        let passes = [
            (100, "2026-12-07T10:00:00Z", "2026-12-07T10:00:00Z"),
            (100, "2026-12-07T10:10:00Z", "2026-12-07T10:00:00Z"),
            (100, "2026-12-07T13:00:00Z", "2026-12-07T10:00:00Z"),
            (180, "2026-12-07T13:10:00Z", "2026-12-07T13:10:00Z"),
            // Behind (a restore into another cluster) is another guard too.
            (5, "2026-12-07T13:20:00Z", "2026-12-07T13:20:00Z"),
        ];
        for (guard, now, since) in passes {
            assert_eq!(
                watch.seen(guard, at(now)),
                at(since),
                "guard {guard} at {now}"
            );
        }
    }
}
