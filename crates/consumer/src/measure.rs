//! What the consumer tells Prometheus: every metric it records, named and
//! described here. Counters of the data path are plain atomics in
//! [`Totals`], set at each scrape; the rest is recorded per batch or per
//! rebalance, far rarer than per message.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use crate::sink::{DeadLetter, CONFLICT};
use crate::write::Totals;

const READ: &str = "sitewatch_consumer_messages_read_total";
const INSERTED: &str = "sitewatch_consumer_rows_inserted_total";
const DUPLICATES: &str = "sitewatch_consumer_duplicates_total";
const RETRIES: &str = "sitewatch_consumer_write_retries_total";
const DEAD_LETTERS: &str = "sitewatch_consumer_dead_letters_total";
const BATCH_ROWS: &str = "sitewatch_consumer_batch_rows";
const WRITE_DURATION: &str = "sitewatch_consumer_write_duration_seconds";
const REBALANCES: &str = "sitewatch_consumer_rebalances_total";
const ASSIGNED: &str = "sitewatch_consumer_partitions_assigned";
const PAUSED: &str = "sitewatch_consumer_partitions_paused";
const POOL: &str = "sitewatch_consumer_pool_connections";
const POOL_WAITING: &str = "sitewatch_consumer_pool_waiting";
const TRANSITIONS: &str = "sitewatch_consumer_site_transitions_total";
const NOTIFICATIONS: &str = "sitewatch_consumer_notifications_total";
const RETENTION_PASSES: &str = "sitewatch_consumer_retention_passes_total";
const PARTITIONS_DROPPED: &str = "sitewatch_consumer_partitions_dropped_total";
const RETENTION_DURATION: &str = "sitewatch_consumer_retention_pass_duration_seconds";
const ROLLED_UNTIL: &str = "sitewatch_consumer_rollups_rolled_until_timestamp_seconds";
const GUARD_SINCE: &str = "sitewatch_consumer_rollups_guard_since_timestamp_seconds";

/// Describes every metric, once at start.
pub fn describe() {
    for (name, help) in [
        (READ, "Messages taken from Kafka into batches."),
        (INSERTED, "New rows in the metrics table."),
        (DUPLICATES, "Redelivered messages already stored, skipped."),
        (RETRIES, "Failed writes retried."),
        (DEAD_LETTERS, "Messages stored as dead letters, by reason: empty, not_json, unknown_version, invalid, out_of_range (the decoder's), refused (by PostgreSQL), conflict (a probe id stored with other content)."),
        (REBALANCES, "Group rebalances this member took part in: partitions assigned, revoked, or lost (taken without a revoke)."),
        (TRANSITIONS, "Sites that went down or came back up, in batches this member wrote, by state: down or up."),
        (RETENTION_PASSES, "Maintenance passes this member tried, by outcome: done, skipped (another member's was running) or failed."),
        (PARTITIONS_DROPPED, "Days of metrics dropped past the retention by this member's passes."),
        (NOTIFICATIONS, "Attempts at delivering notifications, by webhook kind and outcome: sent, retried (no answer, 5xx, 408, 429), refused (4xx, to be tried again), failed (given up)."),
    ] {
        metrics::describe_counter!(name, help);
    }
    metrics::describe_histogram!(
        BATCH_ROWS,
        metrics::Unit::Count,
        "Messages in each batch written (rows and dead letters)."
    );
    metrics::describe_histogram!(
        RETENTION_DURATION,
        metrics::Unit::Seconds,
        "How long each maintenance pass this member ran took: days ahead, rollups and drops."
    );
    metrics::describe_histogram!(
        WRITE_DURATION,
        metrics::Unit::Seconds,
        "How long each successful batch write took, its transaction included."
    );
    for (name, help) in [
        (ASSIGNED, "Partitions this member owns."),
        (PAUSED, "Partitions paused because the writers are behind."),
        (
            POOL,
            "PostgreSQL connections in the pool, by state: in_use or idle.",
        ),
        (POOL_WAITING, "Writes waiting for a PostgreSQL connection."),
        (ROLLED_UNTIL, "The end of the hours rolled up, as of this member's last pass; the newest of all members' is the rollups' progress."),
        (GUARD_SINCE, "When this member's passes first saw the oldest transaction holding an id still open in the PostgreSQL cluster (absent after a pass that did not run): metrics stored after it began are rolled up again only once it ends; the oldest of all members' says how long one has been open."),
    ] {
        metrics::describe_gauge!(name, help);
    }
}

/// Sets the data path's counters to `totals`, and the rollups' progress and guard, before a scrape.
pub fn totals(totals: &Totals) {
    for (name, value) in [
        (READ, &totals.read),
        (INSERTED, &totals.inserted),
        (DUPLICATES, &totals.duplicates),
        (RETRIES, &totals.retries),
    ] {
        metrics::counter!(name).absolute(value.load(Ordering::Relaxed));
    }
    for (name, at) in [
        (ROLLED_UNTIL, &ROLLED_UNTIL_AT),
        (GUARD_SINCE, &GUARD_SINCE_AT),
    ] {
        let at = at.load(Ordering::Relaxed);
        if at > 0 {
            metrics::gauge!(name).set(at as f64);
        }
    }
}

/// Records a batch written: `messages` in it, `took` for the write, `dead`
/// the dead letters it held, and `stored` dead letters in all (the sink
/// adds those it found in conflict).
pub fn written(messages: usize, took: Duration, dead: &[DeadLetter], stored: u64) {
    metrics::histogram!(BATCH_ROWS).record(messages as f64);
    metrics::histogram!(WRITE_DURATION).record(took.as_secs_f64());
    for letter in dead {
        metrics::counter!(DEAD_LETTERS, "reason" => letter.cause).increment(1);
    }
    let conflicts = stored.saturating_sub(dead.len() as u64);
    if conflicts > 0 {
        metrics::counter!(DEAD_LETTERS, "reason" => CONFLICT).increment(conflicts);
    }
}

/// Counts a rebalance: `kind` is assign, revoke or lost.
pub fn rebalanced(kind: &'static str) {
    metrics::counter!(REBALANCES, "kind" => kind).increment(1);
}

/// Sets the partition gauges, before a scrape.
pub fn partitions(assigned: usize, paused: bool) {
    metrics::gauge!(ASSIGNED).set(assigned as f64);
    metrics::gauge!(PAUSED).set(if paused { assigned as f64 } else { 0.0 });
}

/// Sets the pool gauges, before a scrape: connections open, of which idle,
/// and writes waiting for one.
pub fn pool(open: usize, idle: usize, waiting: usize) {
    metrics::gauge!(POOL, "state" => "in_use").set(open.saturating_sub(idle) as f64);
    metrics::gauge!(POOL, "state" => "idle").set(idle as f64);
    metrics::gauge!(POOL_WAITING).set(waiting as f64);
}

/// Counts the sites a batch moved.
pub fn transitions(down: u64, up: u64) {
    metrics::counter!(TRANSITIONS, "state" => "down").increment(down);
    metrics::counter!(TRANSITIONS, "state" => "up").increment(up);
}

/// Counts one attempt at a notification.
pub fn notification(kind: &'static str, outcome: &'static str) {
    metrics::counter!(NOTIFICATIONS, "kind" => kind, "outcome" => outcome).increment(1);
}

/// Records a maintenance pass: its outcome, and for one that ran, how long
/// it took, the partitions it dropped and how far the rollups came.
pub fn retention_pass(
    outcome: &'static str,
    took: Duration,
    dropped: usize,
    rolled_until: Option<i64>,
) {
    metrics::counter!(RETENTION_PASSES, "outcome" => outcome).increment(1);
    if outcome == "done" {
        metrics::histogram!(RETENTION_DURATION).record(took.as_secs_f64());
        metrics::counter!(PARTITIONS_DROPPED).increment(dropped as u64);
    }
    if let Some(at) = rolled_until {
        ROLLED_UNTIL_AT.store(at, Ordering::Relaxed);
    }
}

/// The rollups' progress as of this member's last pass (0: none yet), set
/// again at each scrape: passes are minutes apart, longer than a gauge not
/// set stays on `/metrics`.
static ROLLED_UNTIL_AT: AtomicI64 = AtomicI64::new(0);

/// Records when this member's passes first saw the rollups' guard (the
/// oldest transaction holding an id) at the value it has now, in seconds
/// since 1970; none after a pass that did not run, so that the gauge ages
/// off instead of repeating a time the member no longer checks.
pub fn rollups_guard_since(at: Option<i64>) {
    GUARD_SINCE_AT.store(at.unwrap_or(0), Ordering::Relaxed);
}

/// As of this member's last pass (0: none, or it did not run), set again at each scrape.
static GUARD_SINCE_AT: AtomicI64 = AtomicI64::new(0);
