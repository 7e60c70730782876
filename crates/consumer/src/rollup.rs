//! Rollups: each site's probes summed per UTC hour and day
//! (`metrics_hourly`, `metrics_daily`, V5__rollups.sql) once the hour has
//! closed, rolled again when late metrics of an hour still kept raw arrive,
//! and kept for `retention.rollups`. Run by the retention pass, which holds
//! the lock that keeps two consumers from rolling at once.

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use tokio_postgres::Client;

const ROLL_UP: &str = include_str!("../sql/roll_up.sql");
const ROLL_GUARD: &str = include_str!("../sql/roll_guard.sql");
const FIRST_PROBE: &str = include_str!("../sql/first_probe.sql");

/// The raw rows of every site in `[$1, $2)` of `started_at`.
const SPAN: &str = "metrics m WHERE m.started_at >= $1 AND m.started_at < $2";

/// Every raw row of each site and bucket that a row stored in `[$1, $2)`
/// falls in, among the buckets from `$3` to before `$4`.
const LATE: &str = "(SELECT DISTINCT website_id, date_trunc('{unit}', started_at, 'UTC') AS bucket \
     FROM metrics WHERE stored_at >= $1 AND stored_at < $2 AND started_at >= $3 AND started_at < $4) late \
     JOIN metrics m ON m.website_id = late.website_id \
     AND m.started_at >= late.bucket AND m.started_at < late.bucket + interval '{width}'";

/// How many steps (an hour's roll, or a day's when catching up) one pass
/// takes at most, so that a pass catching up on months ends in bounded time
/// and the next one goes on.
const MAX_STEPS: u32 = 200;

/// What the rollups reached in one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rolled {
    /// Every hour before this is rolled up; the raw partitions of days
    /// after it are kept until it passes them.
    pub until: DateTime<Utc>,
    /// Hours (and days) rolled again for metrics that came after them.
    pub rerolled: u64,
    /// Whether every closed hour is rolled up (or the pass stopped at its bound).
    pub caught_up: bool,
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
fn day_of(at: DateTime<Utc>) -> DateTime<Utc> {
    at.duration_trunc(TimeDelta::days(1)).unwrap_or(at)
}

/// The UTC hour `at` falls in.
fn hour_of(at: DateTime<Utc>) -> DateTime<Utc> {
    at.duration_trunc(TimeDelta::hours(1)).unwrap_or(at)
}

/// Rolls up what is due: first the hours (and days) already rolled that
/// got raw rows since the last pass, if they are still kept raw (from
/// `raw_since`), then each closed hour not yet rolled; rollups older than
/// `keep_since` are deleted. Each step is one transaction that moves the
/// progress with it, so a pass cut short leaves no step half-done.
pub(crate) async fn roll(
    client: &mut Client,
    now: DateTime<Utc>,
    raw_since: DateTime<Utc>,
    keep_since: DateTime<Utc>,
) -> Result<Rolled, tokio_postgres::Error> {
    let guard: DateTime<Utc> = client.query_one(ROLL_GUARD, &[]).await?.try_get(0)?;
    let (mut until, stored_before) = progress(client, guard, keep_since).await?;

    let mut rerolled = 0;
    if stored_before < guard {
        let raw_since = day_of(raw_since);
        let tx = client.transaction().await?;
        for (bucket, before) in [(Bucket::Hour, until), (Bucket::Day, day_of(until))] {
            if raw_since < before {
                rerolled += tx
                    .execute(
                        &bucket.statement(LATE),
                        &[&stored_before, &guard, &raw_since, &before],
                    )
                    .await?;
            }
        }
        let _ = tx
            .execute("UPDATE rollup_progress SET stored_before = $1", &[&guard])
            .await?;
        tx.commit().await?;
    }

    let closed = hour_of(now);
    let mut steps = 0;
    while until < closed && steps < MAX_STEPS {
        // An hour at a time once caught up; a whole day at a time (one
        // statement) when catching up, which empty days make cheap.
        let day = day_of(until);
        let end = (day + TimeDelta::days(1)).min(closed);
        let tx = client.transaction().await?;
        let _ = tx
            .execute(&Bucket::Hour.statement(SPAN), &[&until, &end])
            .await?;
        if end == day + TimeDelta::days(1) {
            let _ = tx
                .execute(&Bucket::Day.statement(SPAN), &[&day, &end])
                .await?;
        }
        let _ = tx
            .execute("UPDATE rollup_progress SET rolled_until = $1", &[&end])
            .await?;
        tx.commit().await?;
        until = end;
        steps += 1;
    }

    let _ = client
        .execute("DELETE FROM metrics_hourly WHERE hour < $1", &[&keep_since])
        .await?;
    let _ = client
        .execute("DELETE FROM metrics_daily WHERE day < $1", &[&keep_since])
        .await?;
    Ok(Rolled {
        until,
        rerolled,
        caught_up: until >= closed,
    })
}

/// Where the rollups stand, started at the first raw row's hour (or now's,
/// or the oldest hour kept) when they never ran.
async fn progress(
    client: &Client,
    guard: DateTime<Utc>,
    keep_since: DateTime<Utc>,
) -> Result<(DateTime<Utc>, DateTime<Utc>), tokio_postgres::Error> {
    if let Some(row) = client
        .query_opt(
            "SELECT rolled_until, stored_before FROM rollup_progress",
            &[],
        )
        .await?
    {
        return Ok((row.try_get(0)?, row.try_get(1)?));
    }
    let first: Option<DateTime<Utc>> = client.query_one(FIRST_PROBE, &[]).await?.try_get(0)?;
    // Rows dated ahead of now are rolled when their hour comes.
    let start = hour_of(first.unwrap_or(guard).min(guard).max(keep_since));
    // Rows stored before the guard in hours from `start` on are rolled by
    // the steps to come; none of the hours before it is rolled.
    let _ = client
        .execute(
            "INSERT INTO rollup_progress (rolled_until, stored_before) VALUES ($1, $2)",
            &[&start, &guard],
        )
        .await?;
    Ok((start, guard))
}

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
