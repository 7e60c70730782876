//! Scenario: storage, what bounded storage costs on a durable PostgreSQL.
//! A day of metrics (10,000,000 rows full, 1,000,000 quick) removed by a
//! DROP of its partition against the same day removed by DELETE (and the
//! VACUUM a DELETE needs before the space is reused): time and WAL bytes.
//! Then the consumer's own maintenance pass rolling up an hour of 10,000
//! sites probed every minute, the bytes of a raw row and of a rollup row
//! (the README's sizing table), and `site_uptime` over 30 days for 10,000
//! sites with 400 days of daily rollups.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use sitewatch_consumer::retention::{Pass, Retention, RetentionSettings};
use sitewatch_db::{PgSettings, SslMode};
use sitewatch_service::SecretString;
use tokio_postgres::Client;

use crate::report::{median, Figure, Goal, ScenarioReport};
use crate::stack::{connect, Store};
use crate::Options;

/// Sites of every part.
const SITES: i64 = 10_000;
/// Days of daily rollups behind the query (the default `retention.rollups`).
const ROLLUP_DAYS: i64 = 400;
/// Times the 30-day query runs in each run, after one that warms the cache.
const QUERIES: usize = 5;

/// `$2` raw rows from `$1` over `$4` microseconds, spread over `$3` sites,
/// with the columns a consumer fills for a healthy probe (an error for one
/// in twenty). Probe ids rise with time, as UUIDv7s do.
const FILL: &str = "
INSERT INTO metrics (probe_id, website_id, schema_version, scheduled_at, started_at, lateness_us,
                     skipped_before, dns_us, connect_us, ttfb_us, body_us, total_us, status, body_bytes,
                     body_truncated, final_url, redirects, tls_expires_at, error_kind, error_message,
                     kafka_topic, kafka_partition, kafka_offset, up, failure_threshold, success_threshold)
SELECT (lpad(to_hex(extract(epoch FROM $1::timestamptz)::bigint), 12, '0') || lpad(to_hex(n), 20, '0'))::uuid,
       1 + n % $3::bigint, 2, t.at, t.at + interval '3 ms', 3000, 0,
       1200, 2500, 48000, 1500, 53000 + n % 40000,
       CASE WHEN n % 20 <> 0 THEN 200 END,
       CASE WHEN n % 20 <> 0 THEN 14200 ELSE 0 END, false,
       CASE WHEN n % 20 <> 0 THEN 'https://site-' || (1 + n % $3::bigint) || '.example/health' END,
       0, $1::timestamptz + interval '90 days',
       CASE WHEN n % 20 = 0 THEN 'timeout' END,
       CASE WHEN n % 20 = 0 THEN 'no response within 10s' END,
       'website-metrics', (n % 6)::int, n, n % 20 <> 0, 3, 2
FROM generate_series(0::bigint, $2::bigint - 1) n,
     LATERAL (SELECT $1::timestamptz + (n * ($4::bigint / $2::bigint)) * interval '1 microsecond' AS at) t";

/// Runs the scenario `options.runs` times and reports medians.
pub async fn run(options: &Options) -> anyhow::Result<ScenarioReport> {
    let rows: i64 = if options.full { 10_000_000 } else { 1_000_000 };
    let store = Store::start(options, "storage")?;
    let db = store.named_database("sitewatch_storage".to_owned())?;
    let settings = PgSettings {
        url: Some(SecretString::from(db.url.clone())),
        sslmode: SslMode::Disable,
        ..PgSettings::default()
    };
    let connector = settings.connector()?;
    sitewatch_db::schema::migrate(&connector)
        .await
        .context("cannot migrate the benchmark database")?;
    let client = connect(&db.url).await?;
    client
        .batch_execute(&format!(
            "SET TimeZone = 'UTC';
             INSERT INTO websites (url) SELECT 'https://site-' || s || '.example/health' FROM generate_series(1, {SITES}) s;"
        ))
        .await?;

    let mut runs = Vec::new();
    for run in 0..options.runs {
        let measured = drop_against_delete(&client, rows, run).await?;
        eprintln!(
            "bench: storage run {}: {rows} rows, DROP {:.3} s {:.0} kB WAL, DELETE {:.1} s {:.0} MB WAL, VACUUM {:.1} s {:.0} MB WAL; {:.0} bytes/row",
            run + 1,
            measured.drop.secs,
            measured.drop.wal / 1e3,
            measured.delete.secs,
            measured.delete.wal / 1e6,
            measured.vacuum.secs,
            measured.vacuum.wal / 1e6,
            measured.bytes_per_row,
        );
        runs.push(measured);
    }
    let hour = rollup_an_hour(&client, &connector).await?;
    eprintln!(
        "bench: storage: a pass rolled up an hour of {} probes (and its day) in {:.2} s",
        hour.rows, hour.secs
    );
    let query = thirty_days(&client).await?;
    eprintln!(
        "bench: storage: 30 whole days for {SITES} sites: median {:.1} ms ({:.1}-{:.1}); to now: {:.1} ms ({:.1}-{:.1})",
        median(query.days.clone()),
        min(&query.days),
        max(&query.days),
        median(query.to_now.clone()),
        min(&query.to_now),
        max(&query.to_now),
    );

    let med = |f: fn(&Measured) -> f64| median(runs.iter().map(f).collect());
    let spread = |f: fn(&Measured) -> f64| {
        let values: Vec<f64> = runs.iter().map(f).collect();
        format!("{:.3}-{:.3}", min(&values), max(&values))
    };
    let mut report = ScenarioReport::new("storage");
    report.figures.extend([
        Figure::new("DROP of a day's partition", med(|m| m.drop.secs), "s"),
        Figure::new("DROP: WAL written", med(|m| m.drop.wal / 1e3), "kB"),
        Figure::new("DELETE of the same day", med(|m| m.delete.secs), "s"),
        Figure::new("DELETE: WAL written", med(|m| m.delete.wal / 1e6), "MB"),
        Figure::new("VACUUM after the DELETE", med(|m| m.vacuum.secs), "s"),
        Figure::new("VACUUM: WAL written", med(|m| m.vacuum.wal / 1e6), "MB"),
        Figure::new(
            "DELETE + VACUUM / DROP, time",
            med(|m| (m.delete.secs + m.vacuum.secs) / m.drop.secs),
            "x",
        ),
        Figure::new(
            "raw row on disk (heap and indexes)",
            med(|m| m.bytes_per_row),
            "bytes",
        ),
        Figure::new("hourly rollup row on disk", query.hourly_bytes, "bytes"),
        Figure::new("daily rollup row on disk", query.daily_bytes, "bytes"),
        Figure::new("maintenance pass rolling up an hour", hour.secs, "s"),
        Figure::new(
            "rolled up per second",
            hour.rows as f64 / hour.secs,
            "rows/s",
        ),
        Figure::new(
            "site_uptime, 30 whole days, 10k sites",
            median(query.days.clone()),
            "ms",
        )
        .goal(Goal::AtMost(50.0)),
        Figure::new(
            "site_uptime, 30 days to now, 10k sites",
            median(query.to_now.clone()),
            "ms",
        ),
    ]);
    report.notes.push(format!(
        "a day of {rows} rows ({SITES} sites, rising probe ids, one probe in twenty a timeout) in its own partition, twice per run: one removed by DELETE then VACUUM of its partition, the other by DROP TABLE of its partition; CHECKPOINT before each (so the WAL includes the full-page images a real DELETE writes); PostgreSQL 15 durable, defaults otherwise; median of {} run(s); per run, DROP {} s, DELETE {} s, VACUUM {} s",
        options.runs,
        spread(|m| m.drop.secs),
        spread(|m| m.delete.secs),
        spread(|m| m.vacuum.secs),
    ));
    report.notes.push(format!(
        "rollups: the consumer's maintenance pass (sitewatch_consumer::retention) from an hour two days back holding {} probes ({SITES} sites, one a minute) to now: the hour's rollup, its day's from the same raw rows, and the empty hours after",
        hour.rows
    ));
    report.notes.push(format!(
        "site_uptime: {SITES} sites, {ROLLUP_DAYS} days of metrics_daily (with their running totals), hourly rollups of the days at either end of the range, and the raw rows of the hour under way ({} of them); every row returned to the client; after one warm-up, {QUERIES} queries, median (min-max): whole days {:.1} ({:.1}-{:.1}) ms, to now {:.1} ({:.1}-{:.1}) ms; bytes per rollup row from pg_total_relation_size over the rows",
        query.raw_rows,
        median(query.days.clone()),
        min(&query.days),
        max(&query.days),
        median(query.to_now.clone()),
        min(&query.to_now),
        max(&query.to_now),
    ));
    drop(client);
    drop(store);
    Ok(report)
}

/// What one run of the DROP against DELETE measured.
#[derive(Debug)]
struct Measured {
    drop: Cost,
    delete: Cost,
    vacuum: Cost,
    bytes_per_row: f64,
}

/// Time and WAL bytes of one statement.
#[derive(Debug, Clone, Copy)]
struct Cost {
    secs: f64,
    wal: f64,
}

/// Runs `sql` and measures it.
async fn cost(client: &Client, sql: &str) -> anyhow::Result<Cost> {
    let before: String = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await?
        .get(0);
    let start = Instant::now();
    client
        .batch_execute(sql)
        .await
        .with_context(|| format!("{sql} failed"))?;
    let secs = start.elapsed().as_secs_f64();
    let wal: f64 = client
        .query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), $1::text::pg_lsn)::float8",
            &[&before],
        )
        .await?
        .get(0);
    Ok(Cost { secs, wal })
}

/// Two days of `rows` each, one deleted and one dropped.
async fn drop_against_delete(client: &Client, rows: i64, run: usize) -> anyhow::Result<Measured> {
    let first: DateTime<Utc> = "2001-01-01T00:00:00Z".parse()?;
    let deleted = first + TimeDelta::days(2 * i64::try_from(run)?);
    let dropped = deleted + TimeDelta::days(1);
    let day_us: i64 = 86_400_000_000;
    for day in [deleted, dropped] {
        client
            .execute("SELECT metrics_partition_for($1)", &[&day])
            .await?;
        let start = Instant::now();
        let n = client
            .execute(FILL, &[&day, &rows, &SITES, &day_us])
            .await?;
        eprintln!(
            "bench: storage: {n} rows into {} in {:.0} s",
            partition(day),
            start.elapsed().as_secs_f64()
        );
    }
    let bytes: i64 = client
        .query_one(
            &format!("SELECT pg_total_relation_size('{}')", partition(deleted)),
            &[],
        )
        .await?
        .get(0);
    client.batch_execute("CHECKPOINT").await?;
    let delete = cost(
        client,
        &format!(
            "DELETE FROM metrics WHERE started_at >= '{}' AND started_at < '{}'",
            deleted.to_rfc3339(),
            dropped.to_rfc3339()
        ),
    )
    .await?;
    let vacuum = cost(client, &format!("VACUUM {}", partition(deleted))).await?;
    client.batch_execute("CHECKPOINT").await?;
    let drop = cost(client, &format!("DROP TABLE {}", partition(dropped))).await?;
    client
        .batch_execute(&format!("DROP TABLE {}", partition(deleted)))
        .await?;
    Ok(Measured {
        drop,
        delete,
        vacuum,
        bytes_per_row: bytes as f64 / rows as f64,
    })
}

/// The partition of the UTC day `day`, as `metrics_partition_for` names it.
fn partition(day: DateTime<Utc>) -> String {
    day.format("metrics_p%Y%m%d").to_string()
}

/// What rolling up an hour took.
#[derive(Debug)]
struct Hour {
    rows: i64,
    secs: f64,
}

/// An hour two days back holding a probe a minute of every site, rolled up
/// by the consumer's maintenance pass, which resumes from that hour.
async fn rollup_an_hour(
    client: &Client,
    connector: &sitewatch_db::Connector,
) -> anyhow::Result<Hour> {
    let now = Utc::now();
    let hour = (now - TimeDelta::days(2)).duration_trunc(TimeDelta::hours(1))?;
    let rows = SITES * 60;
    client
        .execute("SELECT metrics_partition_for($1)", &[&hour])
        .await?;
    let _ = client
        .execute(FILL, &[&hour, &rows, &SITES, &3_600_000_000_i64])
        .await?;
    client
        .execute(
            "INSERT INTO rollup_progress (rolled_until, xid_before, raw_complete_since)
             VALUES ($1, txid_snapshot_xmin(txid_current_snapshot()), '0001-01-01Z')
             ON CONFLICT (only_row) DO UPDATE SET rolled_until = EXCLUDED.rolled_until, xid_before = EXCLUDED.xid_before",
            &[&hour],
        )
        .await?;
    client.batch_execute("ANALYZE metrics; CHECKPOINT").await?;
    let retention = Retention::new(
        connector.clone(),
        RetentionSettings {
            metrics: Duration::from_secs(100 * 366 * 86_400).into(),
            rollups: Duration::from_secs(1000 * 86_400).into(),
            partition: std::time::Duration::from_secs(86_400).into(),
            partitions_ahead: 3,
            every: Duration::from_secs(600).into(),
        },
    );
    let start = Instant::now();
    let pass = retention.pass().await?;
    let secs = start.elapsed().as_secs_f64();
    match pass {
        Pass::Done { rolled, .. } if rolled.caught_up => {}
        other => bail!("the pass did not roll up to now: {other:?}"),
    }
    let rolled: i64 = client
        .query_one(
            "SELECT coalesce(sum(probes), 0)::bigint FROM metrics_hourly WHERE hour = $1",
            &[&hour],
        )
        .await?
        .get(0);
    if rolled != rows {
        bail!("the hour's rollups count {rolled} probes, not {rows}");
    }
    Ok(Hour { rows, secs })
}

/// The 30-day query's timings and the rollups' bytes per row.
#[derive(Debug)]
struct Query {
    days: Vec<f64>,
    to_now: Vec<f64>,
    raw_rows: i64,
    hourly_bytes: f64,
    daily_bytes: f64,
}

/// 400 days of daily rollups of every site, the hourly rollups of the days
/// at either end of a 30-day range, the raw rows of the hour under way,
/// then `site_uptime` over 30 whole days and over 30 days to now.
async fn thirty_days(client: &Client) -> anyhow::Result<Query> {
    let now = Utc::now();
    let today = now.duration_trunc(TimeDelta::days(1))?;
    let this_hour = now.duration_trunc(TimeDelta::hours(1))?;
    let rollup = "website_id, {unit}, probes, up, errors_dns, errors_connect, errors_tls, errors_timeout, \
                  errors_redirect, errors_body, errors_other, responses, latency_sum_us, latency_min_us, \
                  latency_p50_us, latency_p95_us, latency_p99_us, latency_max_us";
    let values = "s, b, 1440 / {per}, 1440 / {per} - (s % 7)::int, 0, 0, 0, (s % 7)::int, 0, 0, 0, \
                  1440 / {per} - (s % 7)::int, (1440 / {per} - (s % 7)) * 60000, 20000, 55000, 90000, 120000, 300000";
    // The running totals the maintenance pass keeps on each day: the days
    // before, and this one, of a site whose every day is the same.
    let running = "(extract(epoch FROM b - ($1::timestamptz - interval '{ROLLUP_DAYS} days')) / 86400 + 1)::bigint";
    let cumulative = format!(
        "{running} * 1440, {running} * (1440 - s % 7), {running} * (1440 - s % 7), {running} * (1440 - s % 7) * 60000"
    );
    client
        .batch_execute("TRUNCATE metrics_hourly, metrics_daily")
        .await?;
    client
        .execute(
            &format!(
                "INSERT INTO metrics_daily ({}, cum_probes, cum_up, cum_responses, cum_latency_sum_us) \
                 SELECT {}, {} FROM generate_series(1, {SITES}) s, \
                 generate_series($1::timestamptz - interval '{ROLLUP_DAYS} days', $1 - interval '1 day', interval '1 day') b",
                rollup.replace("{unit}", "day"),
                values.replace("{per}", "1"),
                cumulative.replace("{ROLLUP_DAYS}", &ROLLUP_DAYS.to_string()),
            ),
            &[&today],
        )
        .await?;
    // The hours of the first day of the range, and of today and yesterday.
    for (from, to) in [
        (today - TimeDelta::days(31), today - TimeDelta::days(29)),
        (today - TimeDelta::days(1), this_hour),
    ] {
        client
            .execute(
                &format!(
                    "INSERT INTO metrics_hourly ({}) SELECT {} FROM generate_series(1, {SITES}) s, \
                     generate_series($1::timestamptz, $2::timestamptz - interval '1 hour', interval '1 hour') b",
                    rollup.replace("{unit}", "hour"),
                    values.replace("{per}", "24")
                ),
                &[&from, &to],
            )
            .await?;
    }
    let raw_rows = fill_hour_under_way(client, now, SITES).await?;
    client
        .execute(
            "UPDATE rollup_progress SET rolled_until = $1, xid_before = txid_snapshot_xmin(txid_current_snapshot())",
            &[&this_hour],
        )
        .await?;
    client
        .batch_execute("VACUUM ANALYZE metrics_daily, metrics_hourly, metrics")
        .await?;
    let bytes = |table: &'static str| async move {
        let row = client
            .query_one(
                &format!(
                    "SELECT pg_total_relation_size('{table}')::float8 / count(*) FROM {table}"
                ),
                &[],
            )
            .await?;
        anyhow::Ok(row.get::<_, f64>(0))
    };
    let (hourly_bytes, daily_bytes) = (
        bytes("metrics_hourly").await?,
        bytes("metrics_daily").await?,
    );

    let whole = client.prepare("SELECT * FROM site_uptime($1, $2)").await?;
    let to_now = client.prepare("SELECT * FROM site_uptime($1)").await?;
    let from = today - TimeDelta::days(30);
    let since = now - TimeDelta::days(30);
    let mut timings = (Vec::new(), Vec::new());
    for i in 0..=QUERIES {
        let start = Instant::now();
        let days = client.query(&whole, &[&from, &today]).await?;
        let days_ms = start.elapsed().as_secs_f64() * 1e3;
        let start = Instant::now();
        let recent = client.query(&to_now, &[&since]).await?;
        let to_now_ms = start.elapsed().as_secs_f64() * 1e3;
        for (what, got) in [("whole days", &days), ("to now", &recent)] {
            let sites = i64::try_from(got.len())?;
            let probes: i64 = got.iter().map(|row| row.get::<_, i64>(1)).sum();
            if sites != SITES || probes < SITES * 30 * 1440 {
                bail!("site_uptime {what}: {sites} sites, {probes} probes; expected {SITES} sites of 30 days");
            }
        }
        if i > 0 {
            timings.0.push(days_ms);
            timings.1.push(to_now_ms);
        }
    }
    Ok(Query {
        days: timings.0,
        to_now: timings.1,
        raw_rows,
        hourly_bytes,
        daily_bytes,
    })
}

/// The raw rows of the hour under way, up to `now`: each of `sites` probed
/// once a minute, in the hour's partition; returns how many.
pub(crate) async fn fill_hour_under_way(
    client: &Client,
    now: DateTime<Utc>,
    sites: i64,
) -> anyhow::Result<i64> {
    let this_hour = now.duration_trunc(TimeDelta::hours(1))?;
    client
        .execute("SELECT metrics_partition_for($1)", &[&this_hour])
        .await?;
    let minutes = (now - this_hour).num_minutes().max(1);
    let raw_rows = sites * minutes;
    let _ = client
        .execute(
            FILL,
            &[&this_hour, &raw_rows, &sites, &(minutes * 60_000_000)],
        )
        .await?;
    Ok(raw_rows)
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}
