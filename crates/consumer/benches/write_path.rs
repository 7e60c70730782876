//! Rows per second into `metrics` by each write path, against a real
//! PostgreSQL (durable settings), with a plain binary COPY as the raw limit.
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
use sitewatch_metric::{Metric, Timings};
use sitewatch_pgtest::{PgOptions, Postgres};
use sitewatch_service::SecretString;

fn metric(i: u64) -> Metric {
    let at = DateTime::from_timestamp_micros(
        1_790_000_000_000_000 + i64::try_from(i).unwrap_or(0) * 500,
    )
    .unwrap_or_default();
    Metric {
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
        status: Some(200),
        body_bytes: 5120,
        body_truncated: false,
        regex: Some("Welcome".into()),
        regex_matched: Some(true),
        regex_match: Some("Welcome".into()),
        final_url: Some(format!("https://site-{}.example/", i % 10_000)),
        redirects: 0,
        tls_expires_at: None,
        ..Metric::example()
    }
}

fn settings(db: &Postgres, name: &str) -> PgSettings {
    PgSettings {
        url: Some(SecretString::from(db.url_for(name))),
        sslmode: SslMode::Disable,
        pool_size: 1,
        ..PgSettings::default()
    }
}

async fn run_path(
    db: &Postgres,
    name: &str,
    path: Option<WritePath>,
    rows: &[Row],
    batch: usize,
) -> f64 {
    let _ = db.create_database(name).expect("database");
    let s = settings(db, name);
    sitewatch_db::schema::migrate(&s.connector().expect("connector"))
        .await
        .expect("schema");
    let store = Store::new(
        s.pool().expect("pool"),
        path.unwrap_or(WritePath::Copy),
        std::time::Duration::from_secs(600),
        // The paths into `metrics` alone; the ingest benchmark measures state tracking.
        false,
    );
    // Sites first, so every path measures the metrics insert alone.
    for chunk in rows.chunks(10_000).take(1) {
        let _ = store.write(chunk, &[]).await.expect("warm-up");
    }
    let _ = db.psql(name, "TRUNCATE metrics").expect("truncate");
    let start = Instant::now();
    match path {
        Some(_) => {
            for chunk in rows.chunks(batch) {
                let _ = store.write(chunk, &[]).await.expect("write");
            }
        }
        None => {
            // The raw limit: the same rows by binary COPY straight into the table, no conflict check.
            let client = s
                .connector()
                .expect("connector")
                .connect()
                .await
                .expect("connect");
            copy_raw(&client, rows, batch).await;
        }
    }
    let took = start.elapsed();
    let n = db
        .psql(name, "SELECT count(*) FROM metrics")
        .expect("count");
    assert_eq!(n, rows.len().to_string());
    rows.len() as f64 / took.as_secs_f64()
}

/// Rows by binary COPY straight into `metrics` in chunks of `batch`, one
/// transaction each, without the consumer around it; their sites exist.
async fn copy_raw(client: &tokio_postgres::Client, rows: &[Row], batch: usize) {
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
    let copy = columns::copy_into("metrics");
    for chunk in rows.chunks(batch.max(1)) {
        let refs = chunk.iter().map(|row| RowRef {
            metric: &row.metric,
            website_id: known.get(&row.metric.url).copied().unwrap_or(-1),
            topic: &row.origin.topic,
            partition: row.origin.partition,
            offset: row.origin.offset,
        });
        let sink = client.copy_in(&copy).await.expect("copy");
        let _ = columns::copy_rows(sink, refs).await.expect("raw copy");
    }
}

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
    let mut results = Vec::new();
    for round in 0..3 {
        for (name, path) in [
            ("copy", Some(WritePath::Copy)),
            ("unnest", Some(WritePath::Unnest)),
            ("raw_copy", None),
        ] {
            let rate = runtime.block_on(run_path(
                &db,
                &format!("bench_{name}_{round}"),
                path,
                &rows,
                batch,
            ));
            results.push((name, rate));
        }
    }
    println!("{total} rows, batches of {batch}, one connection, PostgreSQL with fsync on; median of 3 rounds");
    println!("{:<10} {:>12} {:>10}", "path", "rows/s", "vs raw");
    let median = |name: &str| {
        let mut r: Vec<f64> = results
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, r)| *r)
            .collect();
        r.sort_by(f64::total_cmp);
        r[r.len() / 2]
    };
    let raw = median("raw_copy");
    let mut json = Vec::new();
    for name in ["copy", "unnest", "raw_copy"] {
        let m = median(name);
        println!("{name:<10} {m:>12.0} {:>9.2}x", m / raw);
        json.push(format!("\"{name}\": {m:.0}"));
    }
    println!(
        "{{\"rows\": {total}, \"batch\": {batch}, \"rows_per_s\": {{{}}}}}",
        json.join(", ")
    );
}
