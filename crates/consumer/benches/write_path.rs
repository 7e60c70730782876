//! Rows per second into `metrics` by each write path, and by COPY with the
//! consumer's state tracking, against a real PostgreSQL (durable settings),
//! with a plain binary COPY as the raw limit.
//!
//! cargo bench -p sitewatch-consumer --bench write_path [-- ROWS BATCH]

#![allow(clippy::print_stdout)] // A benchmark prints its figures.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, TimeDelta};
use sitewatch_consumer::offsets::Origin;
use sitewatch_consumer::sink::{Row, Sink};
use sitewatch_consumer::store::{Store, WritePath};
use sitewatch_db::columns::{self, RowRef};
use sitewatch_db::{PgSettings, SslMode};
use sitewatch_metric::{Metric, Timings, Verdict};
use sitewatch_pgtest::{PgOptions, Postgres};
use sitewatch_service::SecretString;

/// Metric `i`: site `i % 10_000`, about one probe in ten answering 503
/// (spread over the sites), so state tracking counts failures, opens and
/// resolves incidents as it would for a real list.
fn metric(i: u64) -> Metric {
    // splitmix64's finalizer: each probe fails on its own, not in step with its site's others.
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    let failing = (z ^ (z >> 31)) % 10 == 0;
    let at = DateTime::from_timestamp_micros(
        1_790_000_000_000_000 + i64::try_from(i).unwrap_or(0) * 500,
    )
    .unwrap_or_default();
    let mut metric = Metric {
        probe_id: uuid::Uuid::now_v7(),
        url: format!("https://site-{}.example/", i % 10_000),
        scheduled_at: at,
        started_at: at + TimeDelta::microseconds(120),
        lateness_us: 120,
        skipped_before: 0,
        timings: Timings {
            dns_us: Some(900),
            connect_us: Some(1500),
            ttfb_us: Some(4000),
            body_us: Some(300),
            total_us: 6700,
        },
        status: Some(if failing { 503 } else { 200 }),
        body_bytes: 5120,
        body_truncated: false,
        regex: Some("Welcome".into()),
        regex_matched: Some(true),
        regex_match: Some("Welcome".into()),
        final_url: Some(format!("https://site-{}.example/", i % 10_000)),
        redirects: 0,
        tls_expires_at: None,
        ..Metric::example()
    };
    metric.verdict = Verdict::default_rule(&metric);
    metric
}

fn settings(db: &Postgres, name: &str) -> PgSettings {
    PgSettings {
        url: Some(SecretString::from(db.url_for(name))),
        sslmode: SslMode::Disable,
        pool_size: 1,
        ..PgSettings::default()
    }
}

/// What one measurement writes through.
#[derive(Debug, Clone, Copy)]
enum Case {
    /// The consumer's store by a write path, state tracking off.
    Path(WritePath),
    /// The store by COPY with state tracking: `site_state` and incidents
    /// moved in each batch's transaction.
    State,
    /// Binary COPY straight into the table, no conflict check: the limit.
    Raw,
    /// The same into an unpartitioned table of the same columns, indexes
    /// and foreign key (what partitioning by day costs a COPY), less what
    /// the statements given take away from it (what each part of the
    /// schema costs a COPY).
    RawFlat(&'static [&'static str]),
    /// Binary COPY into each day's partition by name, not through the
    /// partitioned table: what routing rows to their day costs a COPY.
    RawPartition,
}

async fn run_path(db: &Postgres, name: &str, case: Case, rows: &[Row], batch: usize) -> f64 {
    let _ = db.create_database(name).expect("database");
    let s = settings(db, name);
    sitewatch_db::schema::migrate(&s.connector().expect("connector"))
        .await
        .expect("schema");
    let (path, track_state) = match case {
        Case::Path(path) => (path, false),
        Case::State | Case::Raw | Case::RawFlat(_) | Case::RawPartition => {
            (WritePath::Copy, matches!(case, Case::State))
        }
    };
    let store = Store::new(
        s.pool().expect("pool"),
        path,
        std::time::Duration::from_secs(600),
        track_state,
    );
    // Sites first, so every case measures the metrics insert (and state) alone.
    for chunk in rows.chunks(10_000).take(1) {
        let _ = store.write(chunk, &[]).await.expect("warm-up");
    }
    let _ = db
        .psql(name, "TRUNCATE metrics, site_state, incidents CASCADE")
        .expect("truncate");
    store.partitions_changed();
    let table = match case {
        Case::RawFlat(less) => {
            let _ = db
                .psql(
                    name,
                    &format!(
                        "CREATE TABLE metrics_flat (LIKE metrics INCLUDING ALL); \
                         ALTER TABLE metrics_flat ADD FOREIGN KEY (website_id) REFERENCES websites (id); {}",
                        less.join(" ")
                    ),
                )
                .expect("an unpartitioned table");
            "metrics_flat"
        }
        _ => "metrics",
    };
    let start = Instant::now();
    match case {
        Case::Path(_) | Case::State => {
            for chunk in rows.chunks(batch) {
                let _ = store.write(chunk, &[]).await.expect("write");
            }
        }
        Case::Raw | Case::RawFlat(_) | Case::RawPartition => {
            let mut client = s
                .connector()
                .expect("connector")
                .connect()
                .await
                .expect("connect");
            copy_raw(
                &mut client,
                rows,
                batch,
                table,
                matches!(case, Case::RawPartition),
            )
            .await;
        }
    }
    let took = start.elapsed();
    let n = db
        .psql(name, &format!("SELECT count(*) FROM {table}"))
        .expect("count");
    assert_eq!(n, rows.len().to_string());
    if track_state {
        let opened = db
            .psql(name, "SELECT count(*) FROM incidents")
            .expect("incidents");
        assert_ne!(opened, "0", "state tracking opened no incident");
    }
    rows.len() as f64 / took.as_secs_f64()
}

/// Rows by binary COPY straight into `table` in chunks of `batch`, one
/// transaction each, without the consumer around it; their sites exist.
/// `by_day`: each chunk's rows into their day's partition by name instead.
async fn copy_raw(
    client: &mut tokio_postgres::Client,
    rows: &[Row],
    batch: usize,
    table: &str,
    by_day: bool,
) {
    let urls: Vec<&str> = rows.iter().map(|r| r.metric.url.as_str()).collect();
    let known: std::collections::HashMap<String, i64> = client
        .query(
            "SELECT url, id FROM websites WHERE url = ANY($1::text[])",
            &[&urls],
        )
        .await
        .expect("site ids")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    // The days' partitions, which the store makes on demand.
    let mut days: Vec<_> = rows
        .iter()
        .map(|r| r.metric.started_at.date_naive())
        .collect();
    days.dedup();
    for day in days {
        let at = day.and_time(chrono::NaiveTime::MIN).and_utc();
        let _ = client
            .execute("SELECT metrics_partition_for($1)", &[&at])
            .await
            .expect("partition");
    }
    let copy = columns::copy_into(table);
    for chunk in rows.chunks(batch.max(1)) {
        let mut parts: Vec<(String, Vec<&Row>)> = Vec::new();
        for row in chunk {
            let target = if by_day {
                row.metric.started_at.format("metrics_p%Y%m%d").to_string()
            } else {
                table.to_owned()
            };
            match parts.last_mut() {
                Some((name, rows)) if *name == target => rows.push(row),
                _ => parts.push((target, vec![row])),
            }
        }
        let tx = client.transaction().await.expect("transaction");
        for (target, part) in parts {
            let refs = part.into_iter().map(|row| RowRef {
                metric: &row.metric,
                website_id: known.get(&row.metric.url).copied().unwrap_or(-1),
                topic: &row.origin.topic,
                partition: row.origin.partition,
                offset: row.origin.offset,
            });
            let statement = if by_day {
                columns::copy_into(&target)
            } else {
                copy.clone()
            };
            let sink = tx.copy_in(&statement).await.expect("copy");
            let _ = columns::copy_rows(sink, refs).await.expect("raw copy");
        }
        tx.commit().await.expect("commit");
    }
}

/// The last is the reference the others are compared with.
/// What the release before partitioning did not have: the block-range
/// index, the storing transaction's default, the key's second column.
const NO_BRIN: &str = "DO $$ DECLARE i regclass; BEGIN \
    FOR i IN SELECT x.indexrelid::regclass FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid \
             JOIN pg_am a ON a.oid = c.relam WHERE x.indrelid = 'metrics_flat'::regclass AND a.amname = 'brin' \
    LOOP EXECUTE format('DROP INDEX %s', i); END LOOP; END $$;";
const NO_XID_DEFAULT: &str = "ALTER TABLE metrics_flat ALTER COLUMN stored_xid DROP DEFAULT;";
const NARROW_KEY: &str =
    "ALTER TABLE metrics_flat DROP CONSTRAINT metrics_flat_pkey, ADD PRIMARY KEY (probe_id);";
const CASES: [(&str, Case); 10] = [
    ("copy", Case::Path(WritePath::Copy)),
    ("copy_state", Case::State),
    ("unnest", Case::Path(WritePath::Unnest)),
    ("raw_flat", Case::RawFlat(&[])),
    ("flat_no_brin", Case::RawFlat(&[NO_BRIN])),
    ("flat_no_xid", Case::RawFlat(&[NO_XID_DEFAULT])),
    ("flat_narrow_key", Case::RawFlat(&[NARROW_KEY])),
    (
        "flat_as_before",
        Case::RawFlat(&[NO_BRIN, NO_XID_DEFAULT, NARROW_KEY]),
    ),
    ("raw_partition", Case::RawPartition),
    ("raw_copy", Case::Raw),
];

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with('-'));
    let total: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let batch: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5000);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let db = Postgres::start(PgOptions {
        fast: false,
        ..PgOptions::default()
    })
    .expect("PostgreSQL");
    let topic: Arc<str> = Arc::from("metrics");
    let rows: Vec<Row> = (0..total)
        .map(|i| Row {
            metric: metric(i),
            origin: Origin {
                topic: Arc::clone(&topic),
                partition: i32::try_from(i % 6).unwrap_or(0),
                offset: i64::try_from(i).unwrap_or(0),
            },
            key: None,
            payload: None,
        })
        .collect();
    const ROUNDS: usize = 3;
    // results[round][case]: rows/s.
    let mut results = Vec::new();
    for round in 0..ROUNDS {
        let mut rates = Vec::new();
        for (name, case) in CASES {
            rates.push(runtime.block_on(run_path(
                &db,
                &format!("bench_{name}_{round}"),
                case,
                &rows,
                batch,
            )));
        }
        results.push(rates);
    }
    println!("{total} rows, batches of {batch}, one connection, PostgreSQL with fsync on; median (min-max) of {ROUNDS} rounds; ratios are medians of per-round ratios");
    println!(
        "{:<15} {:>24} {:>8} {:>9}",
        "path", "rows/s", "vs raw", "vs copy"
    );
    let spread = |values: Vec<f64>| {
        let mut v = values;
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    let ratio = |case: usize, reference: usize| {
        spread(results.iter().map(|r| r[case] / r[reference]).collect()).0
    };
    let raw = CASES.len() - 1;
    let mut json = Vec::new();
    for (c, (name, _)) in CASES.iter().enumerate() {
        let (median, min, max) = spread(results.iter().map(|r| r[c]).collect());
        println!(
            "{name:<15} {median:>8.0} ({min:>6.0}-{max:>6.0}) {:>7.2}x {:>8.2}x",
            ratio(c, raw),
            ratio(c, 0)
        );
        json.push(format!("\"{name}\": {median:.0}"));
    }
    println!(
        "{{\"rows\": {total}, \"batch\": {batch}, \"rows_per_s\": {{{}}}}}",
        json.join(", ")
    );
}
