//! Rollups: per site and hour (and day) the same counts and percentiles as
//! the raw rows give, computed here from the metrics written; rolled again
//! when late metrics come; kept after the raw day is dropped.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use sitewatch_consumer::retention::{Pass, Retention, RetentionSettings};
use sitewatch_consumer::rollup::Rolled;
use sitewatch_consumer::sink::Sink;
use sitewatch_consumer::store::{Store, WritePath};
use sitewatch_metric::{ErrorKind, Metric};
use sitewatch_pgtest::wait::wait_for;
use sitewatch_pgtest::Postgres;

/// A rollup row, as a user reads it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Rollup {
    probes: i32,
    up: i32,
    /// By kind, in the order of `ErrorKind::ALL`.
    errors: Vec<i32>,
    responses: i32,
    latency_sum_us: Option<i64>,
    latency_min_us: Option<i64>,
    latency_p50_us: Option<i64>,
    latency_p95_us: Option<i64>,
    latency_p99_us: Option<i64>,
    latency_max_us: Option<i64>,
}

type Rollups = BTreeMap<(String, DateTime<Utc>), Rollup>;

#[derive(Debug, Clone, Copy)]
enum Unit {
    Hour,
    Day,
}

impl Unit {
    fn of(self, at: DateTime<Utc>) -> DateTime<Utc> {
        let width = match self {
            Unit::Hour => TimeDelta::hours(1),
            Unit::Day => TimeDelta::days(1),
        };
        at.duration_trunc(width).expect("truncated")
    }

    fn table(self) -> (&'static str, &'static str) {
        match self {
            Unit::Hour => ("metrics_hourly", "hour"),
            Unit::Day => ("metrics_daily", "day"),
        }
    }
}

/// PostgreSQL's `percentile_disc`: the first value whose position in the
/// ordering reaches the fraction.
fn percentile_disc(sorted: &[i64], fraction: f64) -> Option<i64> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let position = (fraction * n as f64).ceil() as usize;
    Some(sorted[position.clamp(1, n) - 1])
}

/// The rollups of `metrics` whose bucket has closed by `closed`, computed
/// from the metrics themselves.
fn expected(metrics: &[Metric], unit: Unit, closed: DateTime<Utc>) -> Rollups {
    let mut groups: BTreeMap<(String, DateTime<Utc>), Vec<&Metric>> = BTreeMap::new();
    for metric in metrics {
        let bucket = unit.of(metric.started_at);
        if bucket < unit.of(closed) {
            groups
                .entry((metric.url.clone(), bucket))
                .or_default()
                .push(metric);
        }
    }
    groups
        .into_iter()
        .map(|(key, probes)| {
            let mut latencies: Vec<i64> = probes
                .iter()
                .filter(|m| m.status.is_some())
                .map(|m| i64::try_from(m.timings.total_us).expect("small"))
                .collect();
            latencies.sort_unstable();
            let count = |f: &dyn Fn(&Metric) -> bool| {
                i32::try_from(probes.iter().filter(|m| f(m)).count()).expect("small")
            };
            let rollup = Rollup {
                probes: count(&|_| true),
                up: count(&|m| m.verdict.up),
                errors: ErrorKind::ALL
                    .iter()
                    .map(|kind| count(&|m| m.error.as_ref().is_some_and(|e| e.kind == *kind)))
                    .collect(),
                responses: i32::try_from(latencies.len()).expect("small"),
                latency_sum_us: (!latencies.is_empty()).then(|| latencies.iter().sum()),
                latency_min_us: latencies.first().copied(),
                latency_p50_us: percentile_disc(&latencies, 0.5),
                latency_p95_us: percentile_disc(&latencies, 0.95),
                latency_p99_us: percentile_disc(&latencies, 0.99),
                latency_max_us: latencies.last().copied(),
            };
            (key, rollup)
        })
        .collect()
}

/// What the rollup table of `unit` holds, by site URL and bucket.
async fn rolled(db: &Postgres, unit: Unit) -> Rollups {
    let (table, column) = unit.table();
    let errors: Vec<String> = ErrorKind::ALL
        .iter()
        .map(|kind| format!("r.errors_{}", kind.as_str()))
        .collect();
    let sql = format!(
        "SELECT w.url, r.{column}, r.probes, r.up, r.responses, r.latency_sum_us, r.latency_min_us, \
         r.latency_p50_us, r.latency_p95_us, r.latency_p99_us, r.latency_max_us, {} \
         FROM {table} r JOIN websites w ON w.id = r.website_id",
        errors.join(", ")
    );
    let client = sitewatch_pgtest::sql::client(db).await;
    client
        .query(&sql, &[])
        .await
        .expect("rollups")
        .iter()
        .map(|row| {
            let key = (row.get(0), row.get(1));
            let rollup = Rollup {
                probes: row.get(2),
                up: row.get(3),
                responses: row.get(4),
                latency_sum_us: row.get(5),
                latency_min_us: row.get(6),
                latency_p50_us: row.get(7),
                latency_p95_us: row.get(8),
                latency_p99_us: row.get(9),
                latency_max_us: row.get(10),
                errors: (11..11 + ErrorKind::ALL.len())
                    .map(|i| row.get(i))
                    .collect(),
            };
            (key, rollup)
        })
        .collect()
}

fn retention(db: &Postgres, keep_days: u64) -> Retention {
    Retention::new(
        common::pg_settings(db.url())
            .connector()
            .expect("connector"),
        RetentionSettings {
            metrics: Duration::from_secs(keep_days * 86_400).into(),
            rollups: Duration::from_secs(400 * 86_400).into(),
            partition: std::time::Duration::from_secs(86_400).into(),
            partitions_ahead: 3,
            every: Duration::from_secs(600).into(),
        },
    )
}

async fn rolled_by(retention: &Retention) -> Rolled {
    match retention.pass().await.expect("a pass") {
        Pass::Done { rolled, .. } => rolled,
        Pass::Skipped => panic!("the pass was skipped"),
    }
}

/// Waits, a pass at a time, until the hourly and daily rollups are those
/// of `all` up to where the passes reached.
async fn all_rolled(db: &Postgres, retention: &Retention, all: &[Metric], what: &str) {
    wait_for(Duration::from_secs(20), what, || async {
        let reached = rolled_by(retention).await;
        rolled(db, Unit::Hour).await == expected(all, Unit::Hour, reached.until)
            && rolled(db, Unit::Day).await == expected(all, Unit::Day, reached.until)
    })
    .await;
}

/// Metrics `common::metric(i, 3)` for each `i`, probed at `at(i)`.
fn probes(range: std::ops::Range<u64>, at: impl Fn(u64) -> DateTime<Utc>) -> Vec<Metric> {
    range
        .map(|i| Metric {
            scheduled_at: at(i),
            started_at: at(i),
            ..common::metric(i, 3)
        })
        .collect()
}

async fn store(store: &Store, metrics: &[Metric]) {
    let written = store
        .write(&common::batch(metrics), &[])
        .await
        .expect("written");
    assert_eq!(written.inserted, metrics.len() as u64);
}

#[tokio::test]
async fn rollups_equal_the_aggregates_of_the_raw_rows_and_outlive_them() {
    let db = common::postgres();
    let writer = common::migrated_store(db.url(), WritePath::Copy, false).await;
    let now = Utc::now();
    let three_days_ago = Unit::Day.of(now) - TimeDelta::days(3);
    // Three sites over three days, with responses, errors of every kind and
    // failed checks; and a day that falls past the retention.
    let mut all = probes(0..600, |i| {
        three_days_ago + TimeDelta::minutes(7 * i as i64) + TimeDelta::seconds((i % 60) as i64)
    });
    // Over two days, so that a range over them reads running totals.
    let twenty_days_ago = Unit::Day.of(now - TimeDelta::days(20));
    all.extend(probes(600..620, |i| {
        twenty_days_ago + TimeDelta::hours(2 * (i - 600) as i64 + 1)
    }));
    store(&writer, &all).await;

    let reached = rolled_by(&retention(&db, 14)).await;
    assert!(reached.caught_up, "{reached:?}");
    // Every hour closed a few minutes ago.
    assert!(
        reached.until >= Unit::Hour.of(now) - TimeDelta::hours(1),
        "{reached:?}"
    );

    let hourly = rolled(&db, Unit::Hour).await;
    assert_eq!(hourly, expected(&all, Unit::Hour, reached.until));
    assert!(hourly.len() > 70, "{} hours", hourly.len());
    let daily = rolled(&db, Unit::Day).await;
    assert_eq!(daily, expected(&all, Unit::Day, reached.until));
    assert!(
        daily.keys().any(|(_, day)| *day == twenty_days_ago),
        "the day past the retention is kept rolled up"
    );
    assert_eq!(
        common::rows(&db).await,
        600,
        "its raw rows are gone with its partition"
    );

    // A range whose first and last days hold no probes reads the days
    // between from their running totals all the same.
    let (since, until) = (now - TimeDelta::days(25), now - TimeDelta::days(10));
    let client = sitewatch_pgtest::sql::client(&db).await;
    let got: BTreeMap<String, i64> = client
        .query(
            "SELECT url, probes FROM site_uptime($1, $2)",
            &[&since, &until],
        )
        .await
        .expect("site_uptime")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let mut want: BTreeMap<String, i64> = BTreeMap::new();
    for m in all
        .iter()
        .filter(|m| m.started_at >= since && m.started_at < until)
    {
        *want.entry(m.url.clone()).or_default() += 1;
    }
    assert_eq!(got, want);

    // A probe of that day, late: its day is made again for it, but the
    // rollups of the day stand (its other probes are gone, not missing).
    let retention = retention(&db, 14);
    let late = probes(700..701, |_| now - TimeDelta::days(20));
    store(&writer, &late).await;
    let _ = rolled_by(&retention).await;
    // (The hour closing meanwhile adds its own rollups, never the late probe's.)
    let reached = rolled_by(&retention).await;
    assert_eq!(
        rolled(&db, Unit::Day).await,
        expected(&all, Unit::Day, reached.until)
    );
    assert_eq!(
        rolled(&db, Unit::Hour).await,
        expected(&all, Unit::Hour, reached.until)
    );
}

#[tokio::test]
async fn late_metrics_roll_their_hour_and_day_again() {
    let db = common::postgres();
    let writer = common::migrated_store(db.url(), WritePath::Copy, false).await;
    let now = Utc::now();
    let three_days_ago = Unit::Day.of(now) - TimeDelta::days(3);
    // Over three days, so that the running totals of the last follow the
    // middle one's late probes.
    let mut all = probes(0..100, |i| {
        three_days_ago + TimeDelta::minutes(40 * i as i64)
    });
    store(&writer, &all).await;
    let retention = retention(&db, 14);
    let reached = rolled_by(&retention).await;
    assert_eq!(
        rolled(&db, Unit::Hour).await,
        expected(&all, Unit::Hour, reached.until)
    );

    // Late probes of hours rolled already (a monitor's backlog, a consumer
    // that was down), and probes of an hour to come, which wait for it.
    let late = probes(100..130, |i| {
        three_days_ago + TimeDelta::days(1) + TimeDelta::minutes(37 * (i % 5) as i64 + 1)
    });
    let ahead = probes(130..135, |_| now + TimeDelta::hours(2));
    store(&writer, &late).await;
    store(&writer, &ahead).await;
    all.extend(late);
    all.extend(ahead);

    all_rolled(
        &db,
        &retention,
        &all,
        "the late metrics' hours and day rolled again",
    )
    .await;
    // The days' running totals moved with them: the whole history, read
    // from them, counts every probe.
    let client = sitewatch_pgtest::sql::client(&db).await;
    let day = Unit::Day.of(now);
    let counted: i64 = client
        .query_one(
            "SELECT sum(probes)::bigint FROM site_uptime('-infinity', $1)",
            &[&day],
        )
        .await
        .expect("site_uptime")
        .get(0);
    let before_today = all.iter().filter(|m| m.started_at < day).count();
    assert_eq!(counted, i64::try_from(before_today).expect("small"));

    // Restored into another cluster, whose transaction ids are far behind
    // the ones the rollups saw: the late probes the old cluster stored after
    // its last pass (which keep its ids), and those stored here since, are
    // found.
    let stored_there = probes(135..138, |i| {
        three_days_ago + TimeDelta::hours(30) + TimeDelta::minutes(i as i64 - 135)
    });
    store(&writer, &stored_there).await;
    client
        .batch_execute(
            "UPDATE rollup_progress SET xid_before = xid_before + 1000000000;
             UPDATE metrics SET stored_xid = stored_xid + 1000000000
             WHERE stored_xid >= (SELECT xid_before - 1000000000 FROM rollup_progress)",
        )
        .await
        .expect("the old cluster's ids");
    let stored_here = probes(138..141, |i| {
        three_days_ago + TimeDelta::hours(31) + TimeDelta::minutes(i as i64 - 138)
    });
    store(&writer, &stored_here).await;
    all.extend(stored_there);
    all.extend(stored_here);
    all_rolled(
        &db,
        &retention,
        &all,
        "the late metrics after a restore rolled",
    )
    .await;
}

#[tokio::test]
async fn a_transaction_left_open_holds_the_guard_until_it_ends() {
    let db = common::postgres();
    let _writer = common::migrated_store(db.url(), WritePath::Copy, false).await;
    let connector = common::pg_settings(db.url())
        .connector()
        .expect("connector");
    let other = connector.connect().await.expect("connect");
    let mut holder = connector.connect().await.expect("connect");
    let retention = retention(&db, 14);
    // A transaction of its own that takes an id, as every write does.
    let write = || async {
        let _ = other
            .query_one("SELECT txid_current()", &[])
            .await
            .expect("a write");
    };
    let before = rolled_by(&retention).await.guard;
    write().await;
    assert!(
        rolled_by(&retention).await.guard > before,
        "the guard moves while no transaction is left open"
    );
    let open = holder.transaction().await.expect("begin");
    let held: i64 = open
        .query_one("SELECT txid_current()", &[])
        .await
        .expect("an id")
        .get(0);
    for _ in 0..2 {
        write().await;
        assert_eq!(
            rolled_by(&retention).await.guard,
            held,
            "the transaction left open holds the guard"
        );
    }
    open.commit().await.expect("commit");
    write().await;
    assert!(
        rolled_by(&retention).await.guard > held,
        "the guard moves on once the transaction ends"
    );
}

#[tokio::test]
async fn the_uptime_of_any_range_counts_each_probe_once() {
    let db = common::postgres();
    let writer = common::migrated_store(db.url(), WritePath::Copy, false).await;
    let now = Utc::now();
    let start = now - TimeDelta::days(5);
    let mut all = probes(0..550, |i| start + TimeDelta::minutes(13 * i as i64));
    // And the minutes just past, which no rollup holds yet.
    all.extend(probes(550..580, |i| {
        now - TimeDelta::seconds(15 * (i as i64 - 549))
    }));
    assert!(all.iter().all(|m| m.started_at < now));
    store(&writer, &all).await;
    // The days and hours closed come from the rollups, the hour under way
    // from the raw rows.
    let _ = rolled_by(&retention(&db, 14)).await;

    let client = sitewatch_pgtest::sql::client(&db).await;
    for (since, until) in [
        (now - TimeDelta::days(30), now),
        (start + TimeDelta::minutes(90), now),
        (Unit::Day.of(now) - TimeDelta::days(2), now),
        (Unit::Hour.of(now) - TimeDelta::hours(3), now),
        (now - TimeDelta::minutes(10), now),
        // Ending inside hours rolled up long ago.
        (start, start + TimeDelta::days(2) + TimeDelta::minutes(30)),
        (
            start + TimeDelta::hours(5),
            start + TimeDelta::hours(5) + TimeDelta::minutes(40),
        ),
    ] {
        let from = Unit::Hour.of(since);
        // Probes, up, and the responses' latency summed and counted.
        let mut sums: BTreeMap<String, (i64, i64, i64, i64)> = BTreeMap::new();
        for m in all
            .iter()
            .filter(|m| m.started_at >= from && m.started_at < until)
        {
            let site = sums.entry(m.url.clone()).or_default();
            site.0 += 1;
            site.1 += i64::from(m.verdict.up);
            if m.status.is_some() {
                site.2 += i64::try_from(m.timings.total_us).expect("small");
                site.3 += 1;
            }
        }
        // The mean in tenths of a millisecond, rounded as the function does.
        let want: BTreeMap<String, (i64, i64, i64)> = sums
            .into_iter()
            .map(|(url, (probes, up, sum, n))| {
                let tenths = if n == 0 {
                    0
                } else {
                    (sum + n * 50) / (n * 100)
                };
                (url, (probes, up, tenths))
            })
            .collect();
        let got: BTreeMap<String, (i64, i64, i64)> = client
            .query(
                "SELECT url, probes, up, (latency_avg_ms * 10)::bigint FROM site_uptime($1, $2)",
                &[&since, &until],
            )
            .await
            .expect("site_uptime")
            .iter()
            .map(|row| {
                (
                    row.get(0),
                    (
                        row.get(1),
                        row.get(2),
                        row.get::<_, Option<i64>>(3).unwrap_or(0),
                    ),
                )
            })
            .collect();
        assert_eq!(got, want, "since {since} until {until}");
    }
    let none: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM site_uptime(NULL)) + (SELECT count(*) FROM site_uptime(now(), NULL))",
            &[],
        )
        .await
        .expect("site_uptime")
        .get(0);
    assert_eq!(none, 0, "no range, no rows");
}
