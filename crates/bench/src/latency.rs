//! Scenario 5, end-to-end latency: the monitor probes 10,000 sites of the
//! site farm every 5 s (2,000 probes/s) into the broker, two consumers in one
//! group write them to a durable PostgreSQL, and each row's latency is the
//! time from its probe's end (`started_at + timings.total_us`, the monitor's
//! clock) to the commit of the transaction that stored it.
//!
//! Commit times are PostgreSQL's own (`track_commit_timestamp`), read as
//! `pg_xact_commit_timestamp(xmin)`: exact per row, no polling. PostgreSQL
//! stamps the commit record just before flushing it to disk, so the figure
//! leaves out that last flush (milliseconds); everything runs on one host, so
//! the two clocks are the same clock.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{TimeDelta, Utc};

use crate::farm::{self, Farm};
use crate::procs::{CpuClock, Proc};
use crate::report::{median, Figure, Goal, ScenarioReport};
use crate::stack::{self, poll_until, Broker, ConsumerShape, Progress, Store};
use crate::Options;

/// The topic of this scenario.
const TOPIC: &str = "bench-latency";
/// Partitions: three for each of the two consumers.
const PARTITIONS: i32 = 6;
/// Sites on the farm, each probed every [`INTERVAL`]: 2,000 probes/s.
const SITES: usize = 10_000;
/// Each site's interval.
const INTERVAL: Duration = Duration::from_secs(5);
/// Probes started in the first seconds are left out: the monitor is ramping
/// up its first round (first probes spread over one interval).
const WARMUP: Duration = Duration::from_secs(5);
/// The consumers' fetch wait on the mock broker (see where it is used).
const FETCH_WAIT: &str = "fetch.wait.max.ms=20";

/// Runs the pipeline for 30 s (quick) or 60 s (full) per run and reports median percentiles.
pub async fn run(options: &Options) -> anyhow::Result<ScenarioReport> {
    let window = Duration::from_secs(if options.full { 60 } else { 30 });
    let store = Store::start(options, "latency")?;
    let farm = Farm::start(&options.bin_dir, &store.dir)?;
    let targets = store.dir.join("sites.csv");
    stack::write_file(
        &targets,
        farm::monitor_csv(&farm::sites(farm.http, SITES), INTERVAL),
    )?;

    let mut runs = Vec::new();
    for run in 0..options.runs {
        let measured = measure(options, &store, &targets, window, run).await?;
        eprintln!(
            "bench: latency run {}: {} rows at {:.0} probes/s, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            run + 1,
            measured.rows,
            measured.rate,
            measured.p50,
            measured.p99,
            measured.max
        );
        runs.push(measured);
    }
    let med = |f: fn(&Measured) -> f64| median(runs.iter().map(f).collect());
    let mut report = ScenarioReport::new("latency");
    report.figures.extend([
        Figure::new(
            "probes/s stored (measured window)",
            med(|m| m.rate),
            "probes/s",
        ),
        Figure::new("probe end to row committed, p50", med(|m| m.p50), "ms"),
        Figure::new("probe end to row committed, p99", med(|m| m.p99), "ms")
            .goal(Goal::AtMost(500.0)),
        Figure::new("probe end to row committed, max", med(|m| m.max), "ms"),
        Figure::new(
            "consumers' CPU (both together)",
            med(|m| m.consumer_cores),
            "cores",
        ),
        Figure::new("monitor CPU", med(|m| m.monitor_cores), "cores"),
    ]);
    report.notes.push(format!(
        "monitor probing {SITES} farm sites every {} s, broker ({PARTITIONS} partitions), two consumers in one group ({}), PostgreSQL 15 durable; {} s measured after {} s of warm-up; median of {} run(s)",
        INTERVAL.as_secs(),
        ConsumerShape::from_env().describe(),
        window.as_secs(),
        WARMUP.as_secs(),
        options.runs
    ));
    report.notes.push(format!(
        "consumers run with -X {FETCH_WAIT}: librdkafka's mock broker holds an empty fetch for the whole fetch.wait.max.ms (default 500 ms) instead of answering when data arrives as Kafka does, which alone adds up to 500 ms"
    ));
    report.notes.push(
        "latency = PostgreSQL commit timestamp of the row's transaction (track_commit_timestamp) - (started_at + total_us); it leaves out the WAL flush after the commit is stamped (a few ms) and counts the monitor's publish (linger, acks=all), the consumer's fetch and batch_wait, and the write".to_owned(),
    );
    drop(farm);
    drop(store);
    Ok(report)
}

/// One run's figures.
#[derive(Debug)]
struct Measured {
    rows: i64,
    rate: f64,
    p50: f64,
    p99: f64,
    max: f64,
    consumer_cores: f64,
    monitor_cores: f64,
}

async fn measure(
    options: &Options,
    store: &Store,
    targets: &Path,
    window: Duration,
    run: usize,
) -> anyhow::Result<Measured> {
    let dir = store.dir.join(format!("run-{run}"));
    let db = store.database(run)?;
    let broker = Broker::start(&options.bin_dir, &dir, TOPIC, PARTITIONS)?;
    let group = format!("bench-latency-{}-{run}", std::process::id());
    let extra = [
        // Short group timeouts: the second member's join settles in seconds.
        "-X",
        "session.timeout.ms=6000",
        "-X",
        "heartbeat.interval.ms=500",
        "-X",
        "max.poll.interval.ms=10000",
        // librdkafka's mock broker holds a fetch that finds no data for the
        // whole fetch.wait.max.ms (rdkafka_mock_handlers.c: "If there was no
        // data, delay up to MaxWait") where Kafka answers as soon as data
        // comes; a short wait stands in for Kafka's behaviour.
        "-X",
        FETCH_WAIT,
    ];
    let mut consumers = (0..2)
        .map(|i| {
            let log_dir = dir.join(format!("consumer-{i}"));
            stack::start_consumer(options, &broker, &group, &db.url, &extra, &log_dir)
        })
        .collect::<anyhow::Result<Vec<Proc>>>()?;
    wait_for_split(&mut consumers, Duration::from_secs(60)).await?;

    let mut monitor = stack::start_monitor(
        options,
        "monitor",
        targets,
        &broker,
        &["--log-format", "json"],
        &dir.join("monitor"),
    )?;
    let started = Utc::now();
    let consumer_clocks = consumers
        .iter()
        .map(|c| CpuClock::process(c.pid()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let monitor_clock = CpuClock::process(monitor.pid())?;
    let clock = Instant::now();
    // The measured window is a fixed span of the pipeline running; nothing is waited on.
    let window_end = clock + WARMUP + window;
    while Instant::now() < window_end {
        monitor.ensure_running()?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let elapsed = clock.elapsed().as_secs_f64();
    let consumer_cores = consumer_clocks
        .iter()
        .map(CpuClock::elapsed)
        .sum::<anyhow::Result<f64>>()?
        / elapsed;
    let monitor_cores = monitor_clock.elapsed()? / elapsed;
    let ended = Utc::now();
    tokio::task::block_in_place(|| monitor.stop_ok(Duration::from_secs(60)))?;

    // Everything published is stored once the table holds as many rows as the topic.
    // High watermarks count every message produced, even ones the mock broker
    // has since dropped (it keeps 5 MB a partition; the consumers read them long before).
    let (_, published) = broker.messages().await?;
    let client = stack::connect(&db.url).await?;
    poll_until(
        &format!("all {published} metrics stored after the monitor's exit"),
        Duration::from_secs(60),
        &mut consumers,
        || async {
            let stored: i64 = client
                .query_one("SELECT count(*) FROM metrics", &[])
                .await
                .context("cannot count metrics")?
                .get(0);
            Ok(if stored >= published {
                Progress::Done
            } else {
                Progress::Waiting(format!("{stored} stored"))
            })
        },
    )
    .await?;
    for consumer in consumers {
        tokio::task::block_in_place(|| consumer.stop_ok(Duration::from_secs(30)))?;
    }
    drop(broker);

    let from = started + TimeDelta::from_std(WARMUP)?;
    let to = ended;
    let row = client
        .query_one(
            "SELECT count(*),
                    percentile_cont(0.5) WITHIN GROUP (ORDER BY lat),
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY lat),
                    max(lat)
             FROM (SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin) - started_at)::float8 * 1000
                          - total_us / 1000.0::float8 AS lat
                   FROM metrics WHERE started_at >= $1 AND started_at < $2) t",
            &[&from, &to],
        )
        .await
        .context("cannot read commit timestamps (track_commit_timestamp)")?;
    let rows: i64 = row.get(0);
    if rows == 0 {
        bail!("no probe started in the measured window");
    }
    let span = (to - from).num_milliseconds() as f64 / 1000.0;
    Ok(Measured {
        rows,
        rate: rows as f64 / span,
        p50: row.get(1),
        p99: row.get(2),
        max: row.get(3),
        consumer_cores,
        monitor_cores,
    })
}

/// Waits until the consumers' latest assignments cover every partition.
async fn wait_for_split(consumers: &mut [Proc], within: Duration) -> anyhow::Result<()> {
    let logs: Vec<PathBuf> = consumers.iter().map(|c| c.log().to_owned()).collect();
    poll_until(
        &format!("the {PARTITIONS} partitions shared by the consumers"),
        within,
        consumers,
        || async {
            let held: Vec<usize> = logs
                .iter()
                .map(|log| held_partitions(&std::fs::read_to_string(log).unwrap_or_default()))
                .collect();
            let split =
                held.iter().all(|&n| n > 0) && held.iter().sum::<usize>() == PARTITIONS as usize;
            Ok(if split {
                Progress::Done
            } else {
                Progress::Waiting(format!("holding {held:?}"))
            })
        },
    )
    .await
}

/// Partitions a consumer holds according to its JSON log: its last
/// "partitions assigned" line, unless a "partitions revoked" came after.
fn held_partitions(log: &str) -> usize {
    let mut held = 0;
    for line in log.lines() {
        let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        match entry.get("message").and_then(|m| m.as_str()) {
            Some("partitions assigned") => {
                held = entry
                    .get("partitions")
                    .and_then(|p| p.as_str())
                    .map_or(0, |p| {
                        p.split(',')
                            .filter(|n| {
                                !n.trim_matches(|c| c == '[' || c == ']' || c == ' ')
                                    .is_empty()
                            })
                            .count()
                    });
            }
            Some("partitions revoked") => held = 0,
            _ => {}
        }
    }
    held
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_held_follow_the_last_assignment() {
        let log = [
            r#"{"message":"partitions assigned","partitions":"[0, 1, 2, 3, 4, 5]"}"#,
            r#"{"message":"partitions revoked","partitions":"[0, 1, 2, 3, 4, 5]"}"#,
            r#"{"message":"partitions assigned","partitions":"[3, 4, 5]"}"#,
            "not json",
        ]
        .join("\n");
        assert_eq!(held_partitions(&log), 3);
        assert_eq!(held_partitions(&log[..log.find('\n').unwrap_or(0)]), 6);
        assert_eq!(
            held_partitions(r#"{"message":"partitions assigned","partitions":"[]"}"#),
            0
        );
    }
}
