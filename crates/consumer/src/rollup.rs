//! Rollups: each site's probes summed per UTC hour and day
//! (`metrics_hourly`, `metrics_daily`, V5__rollups.sql) once the hour has
//! closed, rolled again when late metrics of an hour still kept raw arrive
//! (found by the transaction that stored them), and kept for
//! `retention.rollups`. Run by the retention pass, which holds the lock that
//! keeps two consumers from rolling at once.

use std::sync::LazyLock;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use tokio_postgres::Client;

const ROLL_UP: &str = include_str!("../sql/roll_up.sql");
const LATE_BUCKETS: &str = include_str!("../sql/late_buckets.sql");
const FIRST_PROBE: &str = include_str!("../sql/first_probe.sql");
const CUMULATE_DAYS: &str = include_str!("../sql/cumulate_days.sql");

/// The running totals of every site's days from `$1` on.
static CUMULATE_ALL: LazyLock<String> = LazyLock::new(|| CUMULATE_DAYS.replace("{sites}", ""));

/// The running totals of the days from `$1` on of the sites that got late rows.
static CUMULATE_LATE: LazyLock<String> = LazyLock::new(|| {
    CUMULATE_DAYS.replace(
        "{sites}",
        "AND x.website_id IN (SELECT website_id FROM late_hours)",
    )
});

/// Each closed span's hours, and each closed day, from all their raw rows.
static HOURS_OF_SPAN: LazyLock<String> = LazyLock::new(|| Bucket::Hour.statement(SPAN));
static DAY_OF_SPAN: LazyLock<String> = LazyLock::new(|| Bucket::Day.statement(SPAN));
/// The hours, and closed days, that got late rows, from all their raw rows.
static LATE_HOURS: LazyLock<String> = LazyLock::new(|| Bucket::Hour.statement(LATE));
static LATE_DAYS: LazyLock<String> = LazyLock::new(|| Bucket::Day.statement(LATE));

/// Every transaction below this one has ended: the rows it stored are all
/// committed (or gone) and visible to any snapshot taken after.
const XID_GUARD: &str = "SELECT txid_snapshot_xmin(txid_current_snapshot())";

/// The raw rows of every site in `[$1, $2)` of `started_at`.
const SPAN: &str = "metrics m WHERE m.started_at >= $1 AND m.started_at < $2";

/// Every raw row of each site and {unit} that `late_hours` names.
const LATE: &str = "(SELECT DISTINCT website_id, date_trunc('{unit}', bucket, 'UTC') AS bucket FROM late_hours) late \
     JOIN metrics m ON m.website_id = late.website_id \
     AND m.started_at >= late.bucket AND m.started_at < late.bucket + interval '{width}'";

/// How many steps (an hour's roll, or a day's when catching up) one pass
/// takes at most, so that a pass catching up on months ends in bounded time
/// and the next one goes on.
const MAX_STEPS: u32 = 200;

/// How long after an hour closes it is rolled up: the probes of its last
/// minutes are still on their way (in flight, in Kafka, in a batch), and
/// each that comes after the roll makes the hour and its day roll again.
const CLOSE_GRACE: TimeDelta = TimeDelta::minutes(5);

/// What the rollups reached in one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rolled {
    /// Every hour before this is rolled up; the raw partitions of days
    /// after it are kept until it passes them.
    pub until: DateTime<Utc>,
    /// Hours and days rolled again for metrics that came after them.
    pub rerolled: u64,
    /// Whether every hour closed (for a few minutes) is rolled up; false
    /// when the pass stopped at its bound of steps.
    pub caught_up: bool,
    /// The oldest transaction holding an id open in the cluster when the
    /// pass began (its 64-bit id, the epoch in the high half):
    /// rows stored by it and after it are checked for late hours by a
    /// later pass, once it has ended.
    pub guard: i64,
}

/// A bucket of rollups: the table, its unit and its width.
#[derive(Debug, Clone, Copy)]
enum Bucket {
    Hour,
    Day,
}

impl Bucket {
    fn statement(self, rows: &str) -> String {
        let (table, unit, width) = match self {
            Bucket::Hour => ("metrics_hourly", "hour", "1 hour"),
            Bucket::Day => ("metrics_daily", "day", "24 hours"),
        };
        ROLL_UP
            .replace("{rows}", rows)
            .replace("{table}", table)
            .replace("{unit}", unit)
            .replace("{width}", width)
    }
}

/// The UTC day `at` falls in.
pub(crate) fn day_of(at: DateTime<Utc>) -> DateTime<Utc> {
    at.duration_trunc(TimeDelta::days(1)).unwrap_or(at)
}

/// The UTC hour `at` falls in.
fn hour_of(at: DateTime<Utc>) -> DateTime<Utc> {
    at.duration_trunc(TimeDelta::hours(1)).unwrap_or(at)
}

/// Where the rollups stand (`rollup_progress`).
#[derive(Debug, Clone, Copy)]
struct Progress {
    rolled_until: DateTime<Utc>,
    xid_before: i64,
    raw_complete_since: DateTime<Utc>,
}

/// Rolls up what is due: first the hours (and days) already rolled that
/// got raw rows since the last pass, if their raw rows are all still kept,
/// then each hour closed and not yet rolled; rollups from before
/// `keep_since`'s day are deleted. Each step is one transaction that moves
/// the progress with it, so a pass cut short leaves no step half-done.
pub(crate) async fn roll(
    client: &mut Client,
    now: DateTime<Utc>,
    keep_since: DateTime<Utc>,
) -> Result<Rolled, tokio_postgres::Error> {
    let guard: i64 = client.query_one(XID_GUARD, &[]).await?.try_get(0)?;
    let mut progress = progress(client, guard, now, keep_since).await?;
    let mut until = progress.rolled_until;
    // The rows the old cluster stored after its last pass, when the ids
    // started again.
    let mut moved_from: Option<i64> = None;
    if guard < progress.xid_before {
        // Transaction ids started again: the database was restored from a
        // dump, or moved by logical replication, into another cluster. Every
        // row stored in this cluster may be late, and so may the restored
        // rows the old cluster stored after its last pass (they keep its ids).
        tracing::warn!(
            xid_before = progress.xid_before,
            guard,
            "rollups: the database's transaction ids are behind those the rollups last saw (a restore or a move to another cluster?); every row stored here is checked for late hours"
        );
        moved_from = Some(progress.xid_before);
        progress.xid_before = 0;
    }

    let mut rerolled = 0;
    if progress.xid_before < guard {
        let tx = client.transaction().await?;
        tx.batch_execute(
            "CREATE TEMP TABLE late_hours (website_id bigint, bucket timestamptz) ON COMMIT DROP",
        )
        .await?;
        let late = tx
            .execute(
                LATE_BUCKETS,
                &[
                    &progress.xid_before,
                    &guard,
                    &progress.raw_complete_since,
                    &until,
                    &moved_from,
                ],
            )
            .await?;
        if late > 0 {
            rerolled += tx.execute(LATE_HOURS.as_str(), &[]).await?;
            // A day is rolled once all of it is, and from its raw rows.
            let _ = tx
                .execute(
                    "DELETE FROM late_hours WHERE bucket >= $1",
                    &[&day_of(until)],
                )
                .await?;
            rerolled += tx.execute(LATE_DAYS.as_str(), &[]).await?;
            let first: Option<DateTime<Utc>> = tx
                .query_one(
                    "SELECT min(date_trunc('day', bucket, 'UTC')) FROM late_hours",
                    &[],
                )
                .await?
                .try_get(0)?;
            if let Some(first) = first {
                let _ = tx.execute(CUMULATE_LATE.as_str(), &[&first]).await?;
            }
        }
        let _ = tx
            .execute("UPDATE rollup_progress SET xid_before = $1", &[&guard])
            .await?;
        tx.commit().await?;
    }

    let closed = hour_of(now - CLOSE_GRACE);
    let mut steps = 0;
    while until < closed && steps < MAX_STEPS {
        // An hour at a time once caught up; a whole day at a time (one
        // statement) when catching up, which empty days make cheap.
        let day = day_of(until);
        let end = (day + TimeDelta::days(1)).min(closed);
        let tx = client.transaction().await?;
        let _ = tx.execute(HOURS_OF_SPAN.as_str(), &[&until, &end]).await?;
        if end == day + TimeDelta::days(1) {
            let _ = tx.execute(DAY_OF_SPAN.as_str(), &[&day, &end]).await?;
            let _ = tx.execute(CUMULATE_ALL.as_str(), &[&day]).await?;
        }
        let _ = tx
            .execute("UPDATE rollup_progress SET rolled_until = $1", &[&end])
            .await?;
        tx.commit().await?;
        until = end;
        steps += 1;
    }

    // Whole days, both at once, so that a day is never kept in hours but
    // not as a day.
    let keep_since = day_of(keep_since);
    let tx = client.transaction().await?;
    let _ = tx
        .execute("DELETE FROM metrics_hourly WHERE hour < $1", &[&keep_since])
        .await?;
    let _ = tx
        .execute("DELETE FROM metrics_daily WHERE day < $1", &[&keep_since])
        .await?;
    tx.commit().await?;
    Ok(Rolled {
        until,
        rerolled,
        caught_up: until >= closed,
        guard,
    })
}

/// Where the rollups stand; when they never ran, they start at the first
/// raw row's day (or today, or the oldest day kept), and the rows of
/// transactions from `guard` on in hours before it are late.
async fn progress(
    client: &Client,
    guard: i64,
    now: DateTime<Utc>,
    keep_since: DateTime<Utc>,
) -> Result<Progress, tokio_postgres::Error> {
    const READ: &str = "SELECT rolled_until, xid_before, raw_complete_since FROM rollup_progress";
    if let Some(row) = client.query_opt(READ, &[]).await? {
        return Ok(Progress {
            rolled_until: row.try_get(0)?,
            xid_before: row.try_get(1)?,
            raw_complete_since: row.try_get(2)?,
        });
    }
    let first: Option<DateTime<Utc>> = client.query_one(FIRST_PROBE, &[]).await?.try_get(0)?;
    // From a day's start, so that the day's hours are rolled as its day is
    // (from all its raw rows); rows dated ahead of now wait for their hour.
    let start = day_of(first.unwrap_or(now).min(now).max(keep_since));
    // Days dropped before the rollups ever ran have none to spoil: a late
    // row of them is rolled up with what its day has.
    let raw_complete_since = common_era();
    let _ = client
        .execute(
            "INSERT INTO rollup_progress (rolled_until, xid_before, raw_complete_since) VALUES ($1, $2, $3)",
            &[&start, &guard, &raw_complete_since],
        )
        .await?;
    Ok(Progress {
        rolled_until: start,
        xid_before: guard,
        raw_complete_since,
    })
}

/// The earliest time PostgreSQL and chrono both hold with room to spare:
/// the first day of the Common Era.
pub(crate) fn common_era() -> DateTime<Utc> {
    DateTime::from_timestamp(-62_135_596_800, 0).unwrap_or(DateTime::UNIX_EPOCH)
}

/// Records, in the transaction that drops a partition, that raw rows of the
/// days up to its end are no longer complete (a partition may end inside a
/// day): a late row of those days (which makes their partition again) is not
/// rolled up alone over what was rolled.
pub(crate) const RAW_DROPPED_UNTIL: &str = "UPDATE rollup_progress SET raw_complete_since = \
     greatest(raw_complete_since, date_trunc('day', $1::timestamptz - interval '1 microsecond', 'UTC') + interval '1 day')";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_utc_hours_and_days() {
        let at: DateTime<Utc> = "2026-03-29T01:59:59.999Z".parse().expect("time");
        assert_eq!(hour_of(at).to_rfc3339(), "2026-03-29T01:00:00+00:00");
        assert_eq!(day_of(at).to_rfc3339(), "2026-03-29T00:00:00+00:00");
    }

    #[test]
    fn the_running_totals_leave_nothing_to_fill() {
        for sql in [&*CUMULATE_ALL, &*CUMULATE_LATE] {
            assert!(!sql.contains('{'), "a placeholder left: {sql}");
        }
    }

    #[test]
    fn each_statement_names_its_table_and_unit_and_nothing_is_left_to_fill() {
        for (bucket, table) in [
            (Bucket::Hour, "metrics_hourly"),
            (Bucket::Day, "metrics_daily"),
        ] {
            for rows in [SPAN, LATE] {
                let sql = bucket.statement(rows);
                assert!(sql.contains(table), "{sql}");
                assert!(!sql.contains('{'), "a placeholder left: {sql}");
            }
        }
    }
}
