//! Scenario 4, ingest: a topic preloaded with metrics (1,000,000 full,
//! 200,000 quick) is drained by one `consumer` release binary into a durable
//! PostgreSQL, twice per run, each time into a fresh database: with the
//! consumer's state tracking (`site_state`, `incidents`; its default) and
//! with `--track-state false`, alternating which goes first. Then the rows
//! the drain with state tracking stored, exported by psql, are loaded by
//! psql's `\copy` into an identical table (same columns, defaults, checks,
//! indexes and foreign key) as the raw limit, and into a table partitioned
//! as `metrics` is, in the same run. With `BENCH_BASELINE_CONSUMER` set to
//! another release's `consumer` binary, each run drains a third time with it.
//!
//! Rates come from PostgreSQL's own commit timestamps
//! (`track_commit_timestamp`), so polling for completion adds nothing to them.
//! CPU seconds of the consumer, PostgreSQL (postmaster, its children and
//! reaped children) and the broker come from /proc; `pg_stat_statements`
//! says which statements the database time went to.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use chrono::{DateTime, TimeDelta, Utc};
use rdkafka::config::ClientConfig;
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::ClientContext;
use sitewatch_metric::{ErrorKind, Metric, ProbeError, Timings, Verdict};
use uuid::Uuid;

use crate::procs::CpuClock;
use crate::report::{median, Figure, Goal, ScenarioReport};
use crate::stack::{self, poll_until, Broker, ConsumerShape, Database, Progress, Store};
use crate::Options;

/// The topic the scenario preloads.
const TOPIC: &str = "bench-ingest";
/// Metrics per partition at most: librdkafka's mock broker keeps only the last
/// 5 MB (or 100,000 message sets) of a partition and silently drops older
/// ones (rdkafka_mock.c, `max_size`); this many of these metrics stay well
/// under that compressed, so the topic gets as many partitions as that takes
/// (at least 6, the compose file's default).
const ROWS_PER_PARTITION: u64 = 20_000;
/// Distinct site URLs in the preloaded metrics.
const SITES: u64 = 5_000;

/// Runs the scenario `options.runs` times on one preloaded topic and reports medians.
pub async fn run(options: &Options) -> anyhow::Result<ScenarioReport> {
    let rows: u64 = if options.full { 1_000_000 } else { 200_000 };
    let store = Store::start(options, "ingest")?;
    let partitions = i32::try_from(rows.div_ceil(ROWS_PER_PARTITION).max(6))?;
    let broker = Broker::start(&options.bin_dir, &store.dir, TOPIC, partitions)?;
    eprintln!("bench: ingest: producing {rows} metrics into {TOPIC} ({partitions} partitions)");
    let preload = produce(broker.bootstrap.clone(), rows).await?;
    let kept = broker.messages().await?;
    if kept != (0, i64::try_from(rows)?) {
        bail!(
            "the broker holds offsets {}..{} of the {rows} metrics produced (the mock broker drops a partition's oldest messages past 5 MB)",
            kept.0,
            kept.1
        );
    }
    eprintln!(
        "bench: ingest: preloaded in {:.1} s ({:.0} msg/s)",
        preload.took.as_secs_f64(),
        rows as f64 / preload.took.as_secs_f64()
    );

    let settings = ConsumerShape::from_env();
    // Another release's consumer, drained in the same runs: the figure of
    // the release before a change, measured beside it.
    let baseline = std::env::var_os("BENCH_BASELINE_CONSUMER").map(std::path::PathBuf::from);
    if let Some(program) = &baseline {
        if !program.is_file() {
            bail!(
                "BENCH_BASELINE_CONSUMER: {} is not a file",
                program.display()
            );
        }
    }
    let mut runs = Vec::new();
    for run in 0..options.runs {
        let measured = measure(
            options,
            &store,
            &broker,
            &preload,
            rows,
            run,
            baseline.as_deref(),
        )
        .await?;
        eprintln!(
            "bench: ingest run {}: raw COPY into a partitioned table {:.0} rows/s, consumer / that {:.2}; {:.0} bytes per stored row{}",
            run + 1,
            measured.part_rate,
            measured.consumer_rate / measured.part_rate,
            measured.bytes_per_row,
            measured
                .baseline_rate
                .map(|b| format!(
                    "; baseline consumer {b:.0} rows/s, consumer / baseline {:.2}",
                    measured.consumer_rate / b
                ))
                .unwrap_or_default(),
        );
        eprintln!(
            "bench: ingest run {}: consumer {:.0} rows/s, raw COPY {:.0} rows/s, ratio {:.2}",
            run + 1,
            measured.consumer_rate,
            measured.raw_rate,
            measured.consumer_rate / measured.raw_rate
        );
        eprintln!(
            "bench: ingest run {}: consumer without state tracking {:.0} rows/s, with state / without {:.2} (drain with state {}); {} incidents ({} open), {} site_state rows",
            run + 1,
            measured.stateless_rate,
            measured.consumer_rate / measured.stateless_rate,
            if measured.state_first { "first" } else { "not first" },
            measured.state.incidents,
            measured.state.open,
            measured.state.sites
        );
        runs.push(measured);
    }
    let mut report = ScenarioReport::new("ingest");
    let med = |f: fn(&Measured) -> f64| median(runs.iter().map(f).collect());
    report.figures.extend([
        Figure::new(
            "consumer rows/s, first to last commit",
            med(|m| m.consumer_rate),
            "rows/s",
        )
        .goal(Goal::AtLeast(100_000.0)),
        Figure::new(
            "consumer rows/s, process start to last commit",
            med(|m| m.start_rate),
            "rows/s",
        ),
        Figure::new(
            "consumer rows/s without state tracking",
            med(|m| m.stateless_rate),
            "rows/s",
        ),
        Figure::new(
            "consumer with state / without",
            med(|m| m.consumer_rate / m.stateless_rate),
            "x",
        )
        .goal(Goal::AtLeast(0.9)),
        Figure::new("raw psql \\copy rows/s", med(|m| m.raw_rate), "rows/s"),
        Figure::new(
            "raw psql \\copy rows/s, table without the foreign key",
            med(|m| m.no_fk_rate),
            "rows/s",
        ),
        Figure::new(
            "consumer / raw COPY",
            med(|m| m.consumer_rate / m.raw_rate),
            "x",
        )
        .goal(Goal::AtLeast(0.6)),
        Figure::new(
            "raw psql \\copy rows/s, partitioned table",
            med(|m| m.part_rate),
            "rows/s",
        ),
        Figure::new(
            "consumer / raw COPY into the partitioned table",
            med(|m| m.consumer_rate / m.part_rate),
            "x",
        )
        .goal(Goal::AtLeast(0.8)),
        Figure::new(
            "raw COPY partitioned / unpartitioned",
            med(|m| m.part_rate / m.raw_rate),
            "x",
        ),
        Figure::new(
            "stored row on disk (heap and indexes)",
            med(|m| m.bytes_per_row),
            "bytes",
        ),
        Figure::new(
            "consumer CPU per 100k rows",
            med(|m| m.cpu.consumer * 100_000.0 / m.rows),
            "s",
        ),
        Figure::new(
            "PostgreSQL CPU per 100k rows (consumer)",
            med(|m| m.cpu.postgres * 100_000.0 / m.rows),
            "s",
        ),
        Figure::new(
            "broker CPU per 100k rows",
            med(|m| m.cpu.broker * 100_000.0 / m.rows),
            "s",
        ),
        Figure::new(
            "PostgreSQL CPU per 100k rows (raw COPY)",
            med(|m| m.raw_pg_cpu * 100_000.0 / m.rows),
            "s",
        ),
    ]);
    report.notes.push(format!(
        "{rows} metrics ({SITES} sites, UUIDv7 ids, {partitions} partitions) drained by one consumer: {}; PostgreSQL 15 durable (fsync, synchronous_commit on, full_page_writes), defaults otherwise; CHECKPOINT before each load; median of {} run(s)",
        settings.describe(),
        options.runs
    ));
    report.notes.push(
        "consumer rows/s = rows after the first transaction / (last commit - first commit), from track_commit_timestamp; 'process start' counts from spawning the consumer to the last commit, including migrations and the mock broker's 3 s initial group rebalance delay".to_owned(),
    );
    report.notes.push(
        "the consumer writes by binary COPY straight into metrics, two transactions in flight on two connections (a redelivered batch is redone through a staging table with ON CONFLICT DO NOTHING); psql's \\copy is text format on one connection, so the consumer can exceed it".to_owned(),
    );
    report.notes.push(
        "raw limit: the same rows (exported with psql \\copy TO, text format) loaded by one psql \\copy FROM into CREATE TABLE metrics_raw (LIKE metrics INCLUDING ALL) plus the same foreign key: one transaction, no conflict check".to_owned(),
    );
    report.notes.push(format!(
        "state tracking: each run drains the topic twice, each time into a fresh database by a consumer in a new group, with state tracking (the default: site_state and incidents moved in each batch's transaction) and with --track-state false (and with the baseline consumer, if given), the order turning with each run (run 1 with state first); every consumer figure but the two 'without state' ones is the drain with state tracking; 'with state / without' is the median of the per-run ratios. CPU per 100k rows without state tracking (median): consumer {:.2} s, PostgreSQL {:.2} s",
        med(|m| m.stateless_cpu.consumer * 100_000.0 / m.rows),
        med(|m| m.stateless_cpu.postgres * 100_000.0 / m.rows),
    ));
    if let Some(program) = &baseline {
        let ratios: Vec<f64> = runs
            .iter()
            .filter_map(|m| m.baseline_rate.map(|b| m.consumer_rate / b))
            .collect();
        let rates: Vec<f64> = runs.iter().filter_map(|m| m.baseline_rate).collect();
        report.figures.push(Figure::new(
            "baseline consumer rows/s",
            median(rates),
            "rows/s",
        ));
        report.figures.push(
            Figure::new("consumer / baseline consumer", median(ratios.clone()), "x")
                .goal(Goal::AtLeast(0.9)),
        );
        report.notes.push(format!(
            "baseline: the consumer binary {} (BENCH_BASELINE_CONSUMER), its defaults, drained into a fresh database of its own schema in each run, the three drains' order turning with the run; consumer / baseline per run: {}",
            program.display(),
            ratios
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let cpu = |f: fn(&CpuSplit) -> f64| {
            median(
                runs.iter()
                    .filter_map(|m| {
                        m.baseline_cpu
                            .as_ref()
                            .map(|(c, _)| f(c) * 100_000.0 / m.rows)
                    })
                    .collect(),
            )
        };
        report.figures.extend([
            Figure::new(
                "baseline consumer CPU per 100k rows",
                cpu(|c| c.consumer),
                "s",
            ),
            Figure::new(
                "PostgreSQL CPU per 100k rows (baseline consumer)",
                cpu(|c| c.postgres),
                "s",
            ),
        ]);
        if let Some((_, statements)) = runs.last().and_then(|m| m.baseline_cpu.as_ref()) {
            report.notes.push(format!(
                "database time by statement (pg_stat_statements, last run, baseline consumer): {statements}"
            ));
        }
    }
    report.notes.push(
        "raw limit into a partitioned table: the same rows loaded by one psql \\copy into CREATE TABLE metrics_part (LIKE metrics INCLUDING ALL) PARTITION BY RANGE (started_at), one partition per UTC day the rows fall on, plus the same foreign key".to_owned(),
    );
    if let Some(last) = runs.last() {
        let same = runs.iter().all(|m| m.state == last.state);
        report.notes.push(format!(
            "state tracking's work: the metrics carry the default rule's verdict (a response below 400 whose body matched the regex, if any; failure threshold 3, success threshold 2); the drain with state tracking left {} site_state rows and {} incidents ({} still open) {}; the drain without it left both tables empty",
            last.state.sites,
            last.state.incidents,
            last.state.open,
            if same { "in every run" } else { "in the last run (other runs differ: see the per-run lines)" },
        ));
        report.notes.push(format!(
            "CPU while draining (last run, with state tracking, {:.1} s at the measured rate): consumer {:.2} cores, PostgreSQL {:.2}, broker {:.2} (2 cores on this machine)",
            last.drain_secs,
            last.cpu.consumer / last.drain_secs,
            last.cpu.postgres / last.drain_secs,
            last.cpu.broker / last.drain_secs,
        ));
        report.notes.push(format!(
            "database time by statement (pg_stat_statements, last run, with state tracking): {}",
            last.statements
        ));
    }
    drop(broker);
    drop(store);
    Ok(report)
}

/// What the preload left in the topic.
#[derive(Debug)]
struct Preload {
    /// Probe id of the last message of each partition.
    last_ids: Vec<Uuid>,
    took: Duration,
}

/// Records, per partition, the probe id of the highest offset delivered.
#[derive(Debug, Default)]
struct Deliveries {
    last: Mutex<HashMap<i32, (i64, Uuid)>>,
    failed: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<Uuid>;

    fn delivery(&self, result: &DeliveryResult<'_>, id: Box<Uuid>) {
        match result {
            Ok(message) => {
                let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
                let entry = last.entry(message.partition()).or_insert((-1, *id));
                if message.offset() > entry.0 {
                    *entry = (message.offset(), *id);
                }
            }
            Err((err, _)) => {
                let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
                let _ = failed.get_or_insert_with(|| err.to_string());
            }
        }
    }
}

/// Publishes `rows` metrics keyed by URL, as the monitor does (acks=all, idempotent, lz4).
async fn produce(bootstrap: String, rows: u64) -> anyhow::Result<Preload> {
    tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        let producer: BaseProducer<Deliveries> = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("compression.type", "lz4")
            .set("linger.ms", "20")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "200000")
            .create_with_context(Deliveries::default())
            .context("cannot create the preload producer")?;
        let base = Utc::now() - TimeDelta::seconds(i64::try_from(rows / 1000 + 60)?);
        for i in 0..rows {
            let metric = sample_metric(i, base);
            let payload = serde_json::to_vec(&metric).context("cannot encode a metric")?;
            let record = BaseRecord::with_opaque_to(TOPIC, Box::new(metric.probe_id))
                .key(metric.url.as_bytes())
                .payload(&payload);
            stack::send(&producer, record)?;
            if i % 1000 == 0 {
                producer.poll(Duration::ZERO);
            }
        }
        producer
            .flush(Duration::from_secs(120))
            .context("the broker did not confirm every preloaded metric")?;
        let context = producer.context();
        if let Some(err) = context
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            bail!("a preloaded metric was not delivered: {err}");
        }
        let last = context.last.lock().unwrap_or_else(|e| e.into_inner());
        Ok(Preload {
            last_ids: last.values().map(|(_, id)| *id).collect(),
            took: start.elapsed(),
        })
    })
    .await
    .context("the preload task failed")?
}

/// A small deterministic generator (SplitMix64), so runs produce the same mix.
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Metric number `i` of the preload: site `i % SITES` probed every 5 s from
/// `base`, with the outcomes a real list shows (mostly 200s, some redirects,
/// server errors, timeouts, refused connections and unknown hosts).
pub(crate) fn sample_metric(i: u64, base: DateTime<Utc>) -> Metric {
    let site = i % SITES;
    let r = mix(i);
    let url = format!("https://www.site-{site:04}.bench.example/status");
    // 5 s per round of all sites: the i-th probe is due i * 5 s / SITES after base.
    let due_us = i64::try_from(i * 5_000_000 / SITES).unwrap_or(i64::MAX);
    let scheduled_at = base + TimeDelta::microseconds(due_us);
    let lateness_us = 50 + r % 900;
    let started_at =
        scheduled_at + TimeDelta::microseconds(i64::try_from(lateness_us).unwrap_or(0));
    let nanos = started_at.timestamp_subsec_nanos();
    let secs = u64::try_from(started_at.timestamp()).unwrap_or(0);
    let probe_id = Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, secs, nanos));
    let has_regex = site % 3 == 0;
    let outcome = r % 100;
    let (dns, connect, ttfb, body) = (
        200 + (r >> 8) % 3_000,
        800 + (r >> 16) % 40_000,
        2_000 + (r >> 24) % 200_000,
        100 + (r >> 32) % 20_000,
    );
    let mut metric = Metric {
        probe_id,
        url: url.clone(),
        scheduled_at,
        started_at,
        lateness_us,
        skipped_before: 0,
        timings: Timings {
            dns_us: Some(dns),
            connect_us: Some(connect),
            ttfb_us: Some(ttfb),
            body_us: Some(body),
            total_us: dns + connect + ttfb + body,
        },
        status: Some(200),
        body_bytes: 1_000 + (r >> 40) % 60_000,
        body_truncated: false,
        regex: has_regex.then(|| "Welcome|All systems operational".to_owned()),
        regex_matched: has_regex.then_some(outcome != 7),
        regex_match: (has_regex && outcome != 7).then(|| "All systems operational".to_owned()),
        final_url: Some(url),
        redirects: 0,
        tls_expires_at: Some(base + TimeDelta::days(40 + i64::try_from(site % 300).unwrap_or(0))),
        ..Metric::example()
    };
    let fail = |m: &mut Metric, kind: ErrorKind, message: &str, total_us: u64| {
        m.status = None;
        m.body_bytes = 0;
        m.regex_matched = None;
        m.regex_match = None;
        m.final_url = None;
        m.tls_expires_at = None;
        m.timings = Timings {
            dns_us: (kind != ErrorKind::Dns).then_some(dns),
            connect_us: None,
            ttfb_us: None,
            body_us: None,
            total_us,
        };
        m.error = Some(ProbeError {
            kind,
            message: message.to_owned(),
        });
    };
    match outcome {
        0..=84 => {}
        85..=89 => {
            metric.redirects = 1;
            metric.final_url = Some(format!("https://site-{site:04}.bench.example/status/"));
        }
        90..=93 => {
            metric.status = Some(if outcome % 2 == 0 { 503 } else { 500 });
            metric.body_bytes = 180;
        }
        94..=96 => fail(
            &mut metric,
            ErrorKind::Timeout,
            "operation timed out after 10s",
            10_000_000,
        ),
        97..=98 => fail(
            &mut metric,
            ErrorKind::Connect,
            "tcp connect error: Connection refused (os error 111)",
            connect,
        ),
        _ => fail(
            &mut metric,
            ErrorKind::Dns,
            "dns error: failed to lookup address information: Name or service not known",
            dns,
        ),
    }
    // The verdict the monitor gives a site that sets no checks.
    metric.verdict = Verdict::default_rule(&metric);
    metric
}

/// Which consumer drains the topic, and how.
#[derive(Debug, Clone, Copy)]
enum Drainer<'a> {
    /// This release, with state tracking (its default).
    State,
    /// This release, `--track-state false`.
    NoState,
    /// Another release's binary (`BENCH_BASELINE_CONSUMER`), its defaults.
    Baseline(&'a Path),
}

/// A table partitioned as `metrics` is (same columns, indexes, foreign key;
/// one partition per UTC day the stored rows fall on), for the raw COPY.
const PARTITIONED_COPY: &str = "CREATE TABLE metrics_part (LIKE metrics INCLUDING ALL) PARTITION BY RANGE (started_at);
ALTER TABLE metrics_part ADD FOREIGN KEY (website_id) REFERENCES websites (id);
DO $$ DECLARE day timestamptz; BEGIN
    FOR day IN SELECT DISTINCT date_trunc('day', started_at, 'UTC') FROM metrics LOOP
        EXECUTE format('CREATE TABLE %I PARTITION OF metrics_part FOR VALUES FROM (%L) TO (%L)',
                       'metrics_part_' || to_char(day AT TIME ZONE 'UTC', 'YYYYMMDD'), day, day + interval '24 hours');
    END LOOP;
END $$;";

/// CPU seconds spent by each part while the consumer drained the topic.
#[derive(Debug, Clone, Copy, Default)]
struct CpuSplit {
    consumer: f64,
    postgres: f64,
    broker: f64,
}

/// What the drain with state tracking left in `incidents` and `site_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StateRows {
    incidents: i64,
    open: i64,
    sites: i64,
}

/// One run's figures.
#[derive(Debug)]
struct Measured {
    rows: f64,
    consumer_rate: f64,
    start_rate: f64,
    raw_rate: f64,
    no_fk_rate: f64,
    /// Raw COPY into a table partitioned by day as `metrics` is.
    part_rate: f64,
    /// The baseline consumer's drain, when one was given.
    baseline_rate: Option<f64>,
    /// Its CPU, and the statements its database time went to.
    baseline_cpu: Option<(CpuSplit, String)>,
    /// Disk of the stored rows (heap and indexes of every partition) per row.
    bytes_per_row: f64,
    drain_secs: f64,
    cpu: CpuSplit,
    raw_pg_cpu: f64,
    statements: String,
    /// The drain with `--track-state false`.
    stateless_rate: f64,
    stateless_cpu: CpuSplit,
    /// Whether the drain with state tracking went first in this run.
    state_first: bool,
    state: StateRows,
}

/// One run: the topic drained with state tracking and without, each into a
/// fresh database (alternating which goes first), then the raw COPY of the
/// rows the drain with state tracking stored.
async fn measure(
    options: &Options,
    store: &Store,
    broker: &Broker,
    preload: &Preload,
    rows: u64,
    run: usize,
    baseline: Option<&Path>,
) -> anyhow::Result<Measured> {
    let pg = &store.pg;
    // The drain that goes first tends to lose: the order turns with each run.
    let mut order = vec![Drainer::State, Drainer::NoState];
    if let Some(program) = baseline {
        order.push(Drainer::Baseline(program));
    }
    let turn = run % order.len();
    order.rotate_left(turn);
    let state_first = matches!(order.first(), Some(Drainer::State));
    let (mut with, mut without, mut before) = (None, None, None);
    for drainer in order {
        let drained = drain(options, store, broker, preload, rows, run, drainer).await?;
        match drainer {
            Drainer::State => with = Some(drained),
            Drainer::NoState => without = Some(drained),
            Drainer::Baseline(_) => before = Some(drained),
        }
    }
    let (Some(with), Some(without)) = (with, without) else {
        bail!("a drain did not run");
    };
    let baseline_rate = before.as_ref().map(|drained| drained.consumer_rate);
    let baseline_cpu = match before {
        Some(before) => {
            drop(before.client);
            tokio::task::block_in_place(|| pg.drop_database(&before.db.name))
                .context("cannot drop the baseline's database")?;
            Some((before.cpu, before.statements))
        }
        None => None,
    };
    let state = state_rows(&with.client).await?;
    if state.sites == 0 {
        bail!("the drain with state tracking left site_state empty");
    }
    let left = state_rows(&without.client).await?;
    if left.sites != 0 || left.incidents != 0 {
        bail!(
            "the drain with --track-state false left {} site_state rows and {} incidents",
            left.sites,
            left.incidents
        );
    }
    let (client, db) = (with.client, with.db);

    // The raw limit: the same rows, as stored, loaded by psql into an identical table.
    let file = store.dir.join("rows.tsv");
    let postmaster = store.postmaster_pid()?;
    let bytes_per_row: f64 = client
        .query_one(
            "SELECT sum(pg_total_relation_size(inhrelid))::float8 FROM pg_inherits WHERE inhparent = 'metrics'::regclass",
            &[],
        )
        .await?
        .get::<_, f64>(0)
        / rows as f64;
    let (raw_secs, raw_pg_cpu, no_fk_secs, part_secs) =
        tokio::task::block_in_place(|| -> anyhow::Result<(f64, f64, f64, f64)> {
            let _ = pg.psql(
                &db.name,
                &format!(
                    "CREATE TABLE metrics_raw (LIKE metrics INCLUDING ALL);\n\
                     ALTER TABLE metrics_raw ADD FOREIGN KEY (website_id) REFERENCES websites (id);\n\
                     CREATE TABLE metrics_no_fk (LIKE metrics INCLUDING ALL);\n\
                     {PARTITIONED_COPY}\n\
                     \\copy (SELECT * FROM metrics) TO {}\n",
                    quote(&file)
                ),
            )?;
            let timed = |table: &str| -> anyhow::Result<(f64, f64)> {
                let _ = pg.psql(&db.name, "CHECKPOINT")?;
                let clock = CpuClock::tree(postmaster)?;
                let start = Instant::now();
                let _ = pg.psql(&db.name, &format!("\\copy {table} FROM {}\n", quote(&file)))?;
                Ok((start.elapsed().as_secs_f64(), clock.elapsed()?))
            };
            let (raw_secs, raw_pg_cpu) = timed("metrics_raw")?;
            // The same without the foreign key, to show what its per-row check costs.
            let (no_fk_secs, _) = timed("metrics_no_fk")?;
            // Into a table partitioned as metrics is: the partitioned table's raw limit.
            let (part_secs, _) = timed("metrics_part")?;
            Ok((raw_secs, raw_pg_cpu, no_fk_secs, part_secs))
        })
        .context("the raw COPY failed")?;
    let _ = std::fs::remove_file(&file);
    let raw_rows: i64 = client
        .query_one("SELECT count(*) FROM metrics_raw", &[])
        .await?
        .get(0);
    if raw_rows != i64::try_from(rows)? {
        bail!("the raw COPY loaded {raw_rows} rows, not {rows}");
    }
    drop(client);
    drop(without.client);
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        pg.drop_database(&db.name)?;
        pg.drop_database(&without.db.name)?;
        Ok(())
    })
    .context("cannot drop the databases")?;
    Ok(Measured {
        rows: rows as f64,
        consumer_rate: with.consumer_rate,
        start_rate: with.start_rate,
        raw_rate: rows as f64 / raw_secs,
        no_fk_rate: rows as f64 / no_fk_secs,
        part_rate: rows as f64 / part_secs,
        baseline_rate,
        baseline_cpu,
        bytes_per_row,
        drain_secs: with.drain_secs,
        cpu: with.cpu,
        raw_pg_cpu,
        statements: with.statements,
        stateless_rate: without.consumer_rate,
        stateless_cpu: without.cpu,
        state_first,
        state,
    })
}

/// One drain of the topic by one consumer, in a group of its own, into a
/// fresh database (still there, with a client on it).
#[derive(Debug)]
struct Drain {
    db: Database,
    client: tokio_postgres::Client,
    consumer_rate: f64,
    start_rate: f64,
    drain_secs: f64,
    cpu: CpuSplit,
    statements: String,
}

/// Drains the preloaded topic into a fresh database, with the consumer's
/// state tracking (its default) or with `--track-state false`.
async fn drain(
    options: &Options,
    store: &Store,
    broker: &Broker,
    preload: &Preload,
    rows: u64,
    run: usize,
    drainer: Drainer<'_>,
) -> anyhow::Result<Drain> {
    let pg = &store.pg;
    let (db, suffix, extra, label): (_, _, &[&str], _) = match drainer {
        Drainer::State => (store.database(run)?, "", &[], "with state tracking"),
        Drainer::NoState => (
            store.named_database(format!("sitewatch_{run}_no_state"))?,
            "-no-state",
            &["--track-state", "false"],
            "without state tracking",
        ),
        Drainer::Baseline(_) => (
            store.named_database(format!("sitewatch_{run}_baseline"))?,
            "-baseline",
            &[],
            "the baseline consumer",
        ),
    };
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        let _ = pg.psql(
            &db.name,
            "CREATE EXTENSION IF NOT EXISTS pg_stat_statements",
        )?;
        let _ = pg.psql(&db.name, "CHECKPOINT")?;
        Ok(())
    })
    .context("cannot prepare the database")?;
    let client = stack::connect(&db.url).await?;
    let _ = client
        .execute("SELECT pg_stat_statements_reset()", &[])
        .await
        .context("cannot reset pg_stat_statements")?;

    let postmaster = store.postmaster_pid()?;
    let pg_clock = CpuClock::tree(postmaster)?;
    let broker_clock = CpuClock::process(broker.proc.pid())?;
    let started = SystemTime::now();
    let group = format!("bench-ingest-{}-{run}{suffix}", std::process::id());
    let log_dir = store.dir.join(format!("run-{run}{suffix}"));
    let mut consumer = match drainer {
        Drainer::Baseline(program) => {
            stack::start_consumer_binary(program, broker, &group, &db.url, extra, &log_dir)?
        }
        _ => stack::start_consumer(options, broker, &group, &db.url, extra, &log_dir)?,
    };
    let consumer_clock = CpuClock::process(consumer.pid())?;

    // Done when each partition's last message is stored and the count is whole;
    // writers may commit out of order, hence the count. The last ids come first
    // so that the table is not counted over and over while it fills.
    let last_ids = i64::try_from(preload.last_ids.len())?;
    let want = i64::try_from(rows)?;
    poll_until(
        &format!("{rows} rows stored"),
        Duration::from_secs(rows / 5_000 + 180),
        std::slice::from_mut(&mut consumer),
        || async {
            let present: i64 = match client
                .query_one(
                    "SELECT count(*) FROM metrics WHERE probe_id = ANY($1)",
                    &[&preload.last_ids],
                )
                .await
            {
                Ok(row) => row.get(0),
                // The consumer makes the table when it starts.
                Err(err) if sitewatch_pgtest::sql::is_undefined_table(&err) => 0,
                Err(err) => return Err(err).context("cannot look for the last rows"),
            };
            if present < last_ids {
                return Ok(Progress::Waiting(format!(
                    "{present} of the {last_ids} partitions' last rows"
                )));
            }
            let all: i64 = client
                .query_one("SELECT count(*) FROM metrics", &[])
                .await
                .context("cannot count metrics")?
                .get(0);
            Ok(if all == want {
                Progress::Done
            } else {
                Progress::Waiting(format!("{all} rows"))
            })
        },
    )
    .await?;
    let cpu = CpuSplit {
        consumer: consumer_clock.elapsed()?,
        postgres: pg_clock.elapsed()?,
        broker: broker_clock.elapsed()?,
    };
    tokio::task::block_in_place(|| consumer.stop_ok(Duration::from_secs(30)))?;

    let stats = client
        .query_one(
            "WITH t AS (SELECT pg_xact_commit_timestamp(xmin) AS ts, count(*) AS n FROM metrics GROUP BY 1)
             SELECT extract(epoch FROM max(ts) - min(ts))::float8,
                    (SELECT n FROM t ORDER BY ts LIMIT 1),
                    extract(epoch FROM max(ts))::float8,
                    count(*)
             FROM t",
            &[],
        )
        .await
        .context("cannot read commit timestamps (track_commit_timestamp)")?;
    let span: f64 = stats.get(0);
    let first_tx: i64 = stats.get(1);
    let last_commit: f64 = stats.get(2);
    let transactions: i64 = stats.get(3);
    let started_epoch = started
        .duration_since(SystemTime::UNIX_EPOCH)
        .context("clock before 1970")?
        .as_secs_f64();
    let consumer_rate = (rows as f64 - first_tx as f64) / span.max(1e-3);
    let start_rate = rows as f64 / (last_commit - started_epoch).max(1e-3);
    // The drain at the measured rate, without the group join before it.
    let drain_secs = rows as f64 / consumer_rate;
    let statements = top_statements(&client).await?;
    eprintln!("bench: ingest: {label}: {transactions} transactions, first holds {first_tx} rows");
    Ok(Drain {
        db,
        client,
        consumer_rate,
        start_rate,
        drain_secs,
        cpu,
        statements,
    })
}

/// Counts what state tracking made: incidents (and how many are open) and site_state rows.
async fn state_rows(client: &tokio_postgres::Client) -> anyhow::Result<StateRows> {
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM incidents),
                    (SELECT count(*) FROM incidents WHERE resolved_at IS NULL),
                    (SELECT count(*) FROM site_state)",
            &[],
        )
        .await
        .context("cannot count incidents and site_state rows")?;
    Ok(StateRows {
        incidents: row.get(0),
        open: row.get(1),
        sites: row.get(2),
    })
}

/// The statements that took most of the database's time, with their share.
async fn top_statements(client: &tokio_postgres::Client) -> anyhow::Result<String> {
    let rows = client
        .query(
            // Grouped by text: each batch's temporary staging table makes its own entry.
            // The bench's own queries (counting, commit times) are left out.
            "WITH s AS (
                 SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 60) AS query,
                        sum(calls)::int8 AS calls, sum(total_exec_time) AS ms
                 FROM pg_stat_statements
                 WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                   AND query NOT LIKE '%count(*)%' AND query NOT LIKE '%pg_xact_commit_timestamp%'
                 GROUP BY 1)
             SELECT query, calls, ms, 100 * ms / sum(ms) OVER () FROM s ORDER BY ms DESC LIMIT 5",
            &[],
        )
        .await
        .context("cannot read pg_stat_statements")?;
    Ok(rows
        .iter()
        .map(|r| {
            let query: String = r.get(0);
            let calls: i64 = r.get(1);
            let ms: f64 = r.get(2);
            let share: f64 = r.get(3);
            format!(
                "{share:.0}% {:.1} s in {calls} calls of `{query}`",
                ms / 1000.0
            )
        })
        .collect::<Vec<_>>()
        .join("; "))
}

/// A path as a psql single-quoted literal.
fn quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_decode_and_vary() {
        let base = Utc::now();
        let metrics: Vec<Metric> = (0..2_000).map(|i| sample_metric(i, base)).collect();
        for m in &metrics {
            let json = serde_json::to_vec(m).expect("encode");
            let back = Metric::from_json(&json).expect("a sample is a valid metric");
            assert_eq!(&back, m);
        }
        let errors = metrics.iter().filter(|m| m.error.is_some()).count();
        assert!((40..200).contains(&errors), "{errors} errors in 2000");
        // Errors, 5xx and regex misses fail the default rule; redirects do not.
        let down = metrics.iter().filter(|m| !m.verdict.up).count();
        assert!((120..300).contains(&down), "{down} probes down in 2000");
        assert!(metrics
            .iter()
            .all(|m| m.verdict == Verdict::default_rule(m)));
        let ids: std::collections::HashSet<Uuid> = metrics.iter().map(|m| m.probe_id).collect();
        assert_eq!(ids.len(), metrics.len());
        assert!(metrics
            .windows(2)
            .all(|w| w[0].scheduled_at <= w[1].scheduled_at));
    }
}
