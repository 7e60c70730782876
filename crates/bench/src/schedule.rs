//! Scenario 1, schedule at scale: the `monitor` release binary probes 1,000,
//! 10,000 (and, in the full run, 50,000) distinct sites on the site farm,
//! each interval set so that 2,000 probes are due per second, and publishes
//! to the local broker. The metrics are read back from the topic: lateness
//! (`lateness_us`), missed deadlines, the rate achieved; CPU and peak RSS come
//! from /proc of the monitor process alone.
//!
//! The parts the ceiling and peer scenarios reuse are here too: [`Bed`] (farm
//! and broker) and [`measure`] (one monitor run, one measured window).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, TimeDelta, Utc};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sitewatch_metric::Metric;
use tokio::time::Instant;

use crate::farm::{self, Farm, Site};
use crate::procs::{self, CpuClock, MachineCpu};
use crate::report::{median, Figure, Goal, ScenarioReport};
use crate::stack::{self, Broker};
use crate::Options;

/// The topic the monitor publishes to in scenarios 1 to 3.
const TOPIC: &str = "bench-metrics";
/// Partitions of [`TOPIC`]: librdkafka's mock broker keeps only the last
/// 5 MB of each partition, and a full 50k-site run publishes several times
/// that; `read_range` fails rather than miss metrics should that not do.
const PARTITIONS: i32 = 16;
/// The due rate the schedule goals are set at: 10,000 sites every 5 s.
pub(crate) const DUE_RATE: f64 = 2_000.0;
/// After the window, time for probes due in it to start before SIGTERM.
const TAIL: Duration = Duration::from_secs(2);

/// Runs the scenario: each site count `options.runs` times, medians reported.
pub async fn run(options: &Options) -> anyhow::Result<ScenarioReport> {
    let sizes: &[usize] = if options.full {
        &[1_000, 10_000, 50_000]
    } else {
        &[1_000, 10_000]
    };
    let bed = Bed::start(options, "schedule")?;
    let mut report = ScenarioReport::new("schedule");
    for &sites in sizes {
        let interval = farm::interval_for(sites, DUE_RATE);
        let plan = Plan {
            label: format!("{}k", sites / 1000),
            sites: farm::sites(bed.farm.http, sites),
            interval,
            warmup: interval + Duration::from_secs(2),
            intervals: window_intervals(interval, measured_secs(options)),
        };
        let mut runs = Vec::new();
        for i in 0..options.runs {
            let m = measure(&bed, options, &plan).await?;
            eprintln!(
                "bench: schedule {} run {}: {}",
                plan.label,
                i + 1,
                m.summary()
            );
            runs.push(m);
        }
        add_figures(&mut report, &plan, &runs);
    }
    report.notes.push(format!(
        "each site every sites/{DUE_RATE:.0} s (1k: 0.5 s, 10k: 5 s, 50k: 25 s); per 100 sites 50 regex hits, 28 misses, 18 without regex, 2 slow ({} ms head), 2 answering 500; {} partitions, publishing included (acks=all, idempotent, lz4)",
        farm::SLOW_MS, PARTITIONS
    ));
    report.notes.push(
        "fresh connection per probe, as a real uptime check makes: the monitor's client sets pool_max_idle_per_host(0) (crates/monitor/src/probe.rs); sites by IP address, so no DNS".to_owned(),
    );
    report.notes.push(
        "the monitor runs with its defaults: schedule_slack 5 ms (deadlines less than 5 ms apart share one timer wake-up, so about 2.5 ms of the lateness p50 is chosen, for a sixth less CPU), linger.ms 50 for Kafka, max_in_flight 1000".to_owned(),
    );
    report.notes.push(format!(
        "window: after one interval + 2 s of warm-up (first probes are spread over the first interval), a whole number of intervals of at least {:.0} s; lateness = started_at - scheduled_at of every metric due in the window; missed = deadlines in the window without a metric (skipped or never started); CPU (user+system) and peak RSS (VmHWM) of the monitor process only; median of {} run(s)",
        measured_secs(options).as_secs_f64(),
        options.runs
    ));
    drop(bed);
    Ok(report)
}

/// Seconds measured per run: the full run measures as long as the goals
/// assume, the quick one long enough for a stable p99.
fn measured_secs(options: &Options) -> Duration {
    Duration::from_secs(if options.full { 60 } else { 20 })
}

/// The smallest whole number of intervals lasting at least `at_least`.
pub(crate) fn window_intervals(interval: Duration, at_least: Duration) -> u32 {
    let n = (at_least.as_secs_f64() / interval.as_secs_f64()).ceil();
    (n as u32).max(1)
}

fn add_figures(report: &mut ScenarioReport, plan: &Plan, runs: &[Measured]) {
    let label = &plan.label;
    let med = |f: fn(&Measured) -> f64| median(runs.iter().map(f).collect());
    // The lateness goals are set for 10,000 sites; other sizes are reported without them.
    let goal_size = plan.sites.len() == 10_000;
    let lateness_goal = |f: Figure, limit: f64| {
        if goal_size {
            f.goal(Goal::AtMost(limit))
        } else {
            f
        }
    };
    report.figures.extend([
        Figure::new(
            format!("probes/s due ({label} sites)"),
            med(|m| m.due_rate),
            "probes/s",
        ),
        Figure::new(
            format!("probes/s achieved ({label} sites)"),
            med(|m| m.achieved_rate),
            "probes/s",
        ),
        Figure::new(
            format!("lateness p50 ({label} sites)"),
            med(|m| m.p50_ms),
            "ms",
        ),
        lateness_goal(
            Figure::new(
                format!("lateness p99 ({label} sites)"),
                med(|m| m.p99_ms),
                "ms",
            ),
            25.0,
        ),
        lateness_goal(
            Figure::new(
                format!("lateness max ({label} sites)"),
                med(|m| m.max_ms),
                "ms",
            ),
            250.0,
        ),
        lateness_goal(
            Figure::new(
                format!("missed or late > 1 interval ({label} sites)"),
                med(|m| (m.missed + m.late_over_interval) as f64),
                "probes",
            ),
            0.0,
        ),
        Figure::new(
            format!("monitor CPU per 1,000 probes ({label} sites)"),
            med(|m| m.cpu_per_1000),
            "CPU-s",
        ),
    ]);
    let rss = Figure::new(
        format!("monitor peak RSS ({label} sites)"),
        med(|m| m.peak_rss_mb),
        "MB",
    );
    report.figures.push(if plan.sites.len() == 50_000 {
        rss.goal(Goal::AtMost(100.0))
    } else {
        rss
    });
    if let Some(last) = runs.last() {
        report.notes.push(format!(
            "{label} sites (last run): {} probes in {:.1} s, {} missed, {} late > 1 interval, {} skipped in all; outcomes {}",
            last.in_window,
            last.window_secs,
            last.missed,
            last.late_over_interval,
            last.skipped_total,
            last.outcomes
        ));
    }
}

/// What the scenarios that run the monitor share: the farm and the broker.
#[derive(Debug)]
pub(crate) struct Bed {
    pub(crate) farm: Farm,
    pub(crate) broker: Broker,
    /// Scratch directory of the scenario (site lists, logs).
    pub(crate) dir: PathBuf,
}

impl Bed {
    /// Starts the farm and the broker in `work_dir/NAME`.
    pub(crate) fn start(options: &Options, name: &str) -> anyhow::Result<Bed> {
        let dir = stack::fresh_dir(&options.work_dir.join(name))?;
        let farm = Farm::start(&options.bin_dir, &dir)?;
        let broker = Broker::start(&options.bin_dir, &dir, TOPIC, PARTITIONS)?;
        Ok(Bed { farm, broker, dir })
    }
}

/// One monitor run: what it probes and how long it is measured.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Names the run in logs and figures.
    pub(crate) label: String,
    /// The sites, every one probed every `interval`.
    pub(crate) sites: Vec<Site>,
    /// Interval of every site.
    pub(crate) interval: Duration,
    /// From the schedule's start to the window's.
    pub(crate) warmup: Duration,
    /// Length of the window, in intervals (so each site has exactly this many deadlines in it).
    pub(crate) intervals: u32,
}

/// What one monitor run measured in its window.
#[derive(Debug, Clone)]
pub(crate) struct Measured {
    pub(crate) due_rate: f64,
    pub(crate) achieved_rate: f64,
    pub(crate) window_secs: f64,
    pub(crate) due: u64,
    pub(crate) in_window: u64,
    pub(crate) missed: u64,
    pub(crate) late_over_interval: u64,
    pub(crate) skipped_total: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    pub(crate) cpu_per_1000: f64,
    pub(crate) peak_rss_mb: f64,
    /// Cores the monitor process used on average in the window.
    pub(crate) monitor_cores: f64,
    /// Cores the site farm used.
    pub(crate) farm_cores: f64,
    /// Cores the broker used (it shares the machine, as a real Kafka would not).
    pub(crate) broker_cores: f64,
    /// Cores the whole machine was busy (every process, the kernel's network work included).
    pub(crate) machine_cores: f64,
    pub(crate) outcomes: String,
}

impl Measured {
    /// One line for the progress log.
    pub(crate) fn summary(&self) -> String {
        format!(
            "{:.0}/{:.0} probes/s, lateness p50 {:.2} ms p99 {:.2} ms max {:.1} ms, missed {}, late>interval {}, {:.3} CPU-s/1000, peak RSS {:.1} MB; cores: monitor {:.2}, farm {:.2}, broker {:.2}, machine {:.2}",
            self.achieved_rate,
            self.due_rate,
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.missed,
            self.late_over_interval,
            self.cpu_per_1000,
            self.peak_rss_mb,
            self.monitor_cores,
            self.farm_cores,
            self.broker_cores,
            self.machine_cores
        )
    }

    /// Whether the monitor held its schedule by the ceiling scenario's test:
    /// p99 lateness under `p99_ms` and at most 1% of deadlines missed.
    pub(crate) fn on_schedule(&self, p99_ms: f64) -> bool {
        self.p99_ms < p99_ms && (self.missed as f64) <= self.due as f64 * 0.01
    }
}

/// Runs the monitor on `plan` against the bed, measures one window, stops it
/// and reads its metrics back from the topic.
pub(crate) async fn measure(bed: &Bed, options: &Options, plan: &Plan) -> anyhow::Result<Measured> {
    let csv = bed.dir.join(format!("sites-{}.csv", plan.label));
    stack::write_file(&csv, farm::monitor_csv(&plan.sites, plan.interval))?;
    let bootstrap = bed.broker.bootstrap.clone();
    let before = {
        let bootstrap = bootstrap.clone();
        tokio::task::spawn_blocking(move || stack::watermarks(&bootstrap, TOPIC)).await??
    };
    let mut monitor = stack::start_monitor(
        options,
        &format!("monitor-{}", plan.label),
        &csv,
        &bed.broker,
        &["--no-watch", "--log-level", "info"],
        &bed.dir,
    )?;
    tokio::task::block_in_place(|| {
        monitor.wait_for_text("schedule started", Duration::from_secs(120))
    })?;
    let started = Instant::now();
    let pid = monitor.pid();
    tokio::time::sleep_until(started + plan.warmup).await;
    let monitor_clock = CpuClock::process(pid)?;
    let farm_clock = CpuClock::process(bed.farm.proc.pid())?;
    let broker_clock = CpuClock::process(bed.broker.proc.pid())?;
    let machine0 = MachineCpu::now()?;
    let w0 = Utc::now();
    let t0 = Instant::now();
    let window = plan.interval * plan.intervals;
    tokio::time::sleep_until(t0 + window).await;
    let cpu = monitor_clock.elapsed()?;
    let farm_cpu = farm_clock.elapsed()?;
    let broker_cpu = broker_clock.elapsed()?;
    let machine_cores = MachineCpu::now()?.busy_cores_since(&machine0);
    let rss = procs::peak_rss_bytes(pid)?;
    let seconds = t0.elapsed().as_secs_f64();
    let w1 = w0 + TimeDelta::from_std(window).context("window too long")?;
    tokio::time::sleep(TAIL).await;
    tokio::task::block_in_place(|| monitor.stop_ok(Duration::from_secs(60)))?;
    // The mock broker drops a partition's oldest messages past 5 MB; that may
    // take warm-up metrics, never the window's (checked in `read_range`).
    let not_pruned_after = w0 - TimeDelta::seconds(1);
    let metrics = tokio::task::spawn_blocking(move || {
        let after = stack::watermarks(&bootstrap, TOPIC)?;
        read_range(&bootstrap, &before, &after, not_pruned_after)
    })
    .await??;
    let mut measured = tally(&metrics, plan, w0, w1, cpu, rss);
    measured.farm_cores = farm_cpu / seconds;
    measured.broker_cores = broker_cpu / seconds;
    measured.machine_cores = machine_cores;
    Ok(measured)
}

/// The figures of one window from the metrics read back.
fn tally(
    metrics: &[Metric],
    plan: &Plan,
    w0: DateTime<Utc>,
    w1: DateTime<Utc>,
    cpu_seconds: f64,
    peak_rss: u64,
) -> Measured {
    let interval_us = plan.interval.as_micros() as u64;
    let mut lateness_us: Vec<u64> = Vec::new();
    let mut deadlines: HashSet<(&str, DateTime<Utc>)> = HashSet::new();
    let mut late_over_interval = 0;
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let skipped_total = metrics.iter().map(|m| u64::from(m.skipped_before)).sum();
    for m in metrics
        .iter()
        .filter(|m| m.scheduled_at >= w0 && m.scheduled_at < w1)
    {
        let _ = deadlines.insert((m.url.as_str(), m.scheduled_at));
        lateness_us.push(m.lateness_us);
        if m.lateness_us > interval_us {
            late_over_interval += 1;
        }
        *outcomes.entry(outcome(m)).or_default() += 1;
    }
    lateness_us.sort_unstable();
    let due = plan.sites.len() as u64 * u64::from(plan.intervals);
    let window_secs = (plan.interval * plan.intervals).as_secs_f64();
    let in_window = deadlines.len() as u64;
    let ms = |q: f64| percentile(&lateness_us, q).map_or(f64::NAN, |us| us as f64 / 1000.0);
    Measured {
        due_rate: due as f64 / window_secs,
        achieved_rate: in_window as f64 / window_secs,
        window_secs,
        due,
        in_window,
        missed: due.saturating_sub(in_window),
        late_over_interval,
        skipped_total,
        p50_ms: ms(0.50),
        p99_ms: ms(0.99),
        max_ms: ms(1.0),
        cpu_per_1000: cpu_seconds * 1000.0 / in_window.max(1) as f64,
        peak_rss_mb: peak_rss as f64 / 1e6,
        monitor_cores: cpu_seconds / window_secs,
        farm_cores: f64::NAN,
        broker_cores: f64::NAN,
        machine_cores: f64::NAN,
        outcomes: outcomes
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// A probe's outcome in a word, for the notes' sanity counts.
fn outcome(m: &Metric) -> String {
    match (&m.error, m.status, m.regex_matched) {
        (Some(err), _, _) => format!("error {:?}", err.kind).to_lowercase(),
        (None, Some(status), Some(true)) => format!("{status} match"),
        (None, Some(status), Some(false)) => format!("{status} no match"),
        (None, Some(status), None) => format!("{status}"),
        (None, None, _) => "no status".to_owned(),
    }
}

/// The value at quantile `q` (0 to 1) of sorted `values`, by nearest rank.
pub(crate) fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.saturating_sub(1)).copied()
}

/// A consumer that only reads assigned partitions (no group membership, no commits).
fn reader(bootstrap: &str) -> anyhow::Result<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "sitewatch-bench-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        // Offsets come from the watermarks just read; should the broker drop
        // more meanwhile, read what is left rather than wait at the end.
        .set("auto.offset.reset", "earliest")
        .create()
        .context("cannot create the Kafka reader")
}

/// Every metric in [`TOPIC`] from the high watermarks `from` to those of
/// `to`, per partition. Where the broker has already dropped the first of
/// them, the first one left must be scheduled before `not_pruned_after`, or
/// metrics that count may be missing and this fails.
fn read_range(
    bootstrap: &str,
    from: &[(i32, i64, i64)],
    to: &[(i32, i64, i64)],
    not_pruned_after: DateTime<Utc>,
) -> anyhow::Result<Vec<Metric>> {
    let consumer = reader(bootstrap)?;
    let mut assignment = TopicPartitionList::new();
    let mut left: BTreeMap<i32, i64> = BTreeMap::new();
    let mut pruned: HashSet<i32> = HashSet::new();
    for &(partition, low, end) in to {
        let wanted = from
            .iter()
            .find(|(p, _, _)| *p == partition)
            .map_or(0, |(_, _, high)| *high);
        if low > wanted {
            let _ = pruned.insert(partition);
        }
        let start = wanted.max(low);
        if end > start {
            assignment
                .add_partition_offset(TOPIC, partition, Offset::Offset(start))
                .context("cannot assign a partition")?;
            let _ = left.insert(partition, end);
        }
    }
    let mut metrics = Vec::new();
    if left.is_empty() {
        return Ok(metrics);
    }
    consumer
        .assign(&assignment)
        .context("cannot assign the partitions")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut bad = 0u64;
    while !left.is_empty() {
        if std::time::Instant::now() > deadline {
            bail!("the topic was not read to its end within 120 s: {left:?} left");
        }
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message.context("cannot read the topic")?;
        let Some(&end) = left.get(&message.partition()) else {
            continue;
        };
        if message.offset() >= end {
            continue;
        }
        match message.payload().map(Metric::from_json) {
            Some(Ok(metric)) => {
                if pruned.remove(&message.partition()) && metric.scheduled_at >= not_pruned_after {
                    bail!(
                        "the broker dropped metrics of the measured window from partition {} (librdkafka's mock keeps 5 MB a partition): use more partitions or a shorter run",
                        message.partition()
                    );
                }
                metrics.push(metric);
            }
            _ => bad += 1,
        }
        if message.offset() + 1 >= end {
            let _ = left.remove(&message.partition());
        }
    }
    if bad > 0 {
        bail!("{bad} messages in the topic are not metrics");
    }
    Ok(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 0.5), Some(50));
        assert_eq!(percentile(&values, 0.99), Some(99));
        assert_eq!(percentile(&values, 1.0), Some(100));
        assert_eq!(percentile(&values, 0.0), Some(1));
        assert_eq!(percentile(&[7], 0.99), Some(7));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn windows_are_whole_intervals() {
        assert_eq!(
            window_intervals(Duration::from_secs(5), Duration::from_secs(20)),
            4
        );
        assert_eq!(
            window_intervals(Duration::from_secs(25), Duration::from_secs(60)),
            3
        );
        assert_eq!(
            window_intervals(Duration::from_millis(500), Duration::from_secs(20)),
            40
        );
        assert_eq!(
            window_intervals(Duration::from_secs(90), Duration::from_secs(60)),
            1
        );
    }

    fn metric(url: &str, scheduled: DateTime<Utc>, lateness_us: u64) -> Metric {
        let json = serde_json::json!({
            "schema_version": 1,
            "probe_id": "019abc6e-8a3c-7d2e-9b1f-3c5d7e9f1a2b",
            "url": url,
            "scheduled_at": scheduled,
            "started_at": scheduled + TimeDelta::microseconds(lateness_us as i64),
            "lateness_us": lateness_us,
            "skipped_before": 0,
            "timings": { "total_us": 1000 },
            "status": 200,
            "body_bytes": 9,
            "body_truncated": false,
            "regex": null,
            "regex_matched": null,
            "regex_match": null,
            "final_url": url,
            "redirects": 0,
            "tls_expires_at": null,
            "error": null
        });
        Metric::from_json(json.to_string().as_bytes()).expect("valid metric")
    }

    #[test]
    fn the_tally_counts_misses_and_late_probes_in_the_window_only() {
        let w0 = Utc::now();
        let s = TimeDelta::seconds(1);
        let plan = Plan {
            label: "t".into(),
            sites: vec![
                Site {
                    url: "a".into(),
                    regex: None,
                },
                Site {
                    url: "b".into(),
                    regex: None,
                },
            ],
            interval: Duration::from_secs(1),
            warmup: Duration::ZERO,
            intervals: 3,
        };
        let metrics = vec![
            metric("a", w0 - s, 10),            // before the window
            metric("a", w0, 1_000),             // in
            metric("a", w0 + s, 2_000),         // in
            metric("a", w0 + s * 2, 1_500_000), // in, later than one interval
            metric("b", w0 + s, 3_000),         // in; b missed two deadlines
            metric("b", w0 + s * 3, 5),         // after the window
        ];
        let m = tally(&metrics, &plan, w0, w0 + s * 3, 0.5, 50_000_000);
        assert_eq!(m.due, 6);
        assert_eq!(m.in_window, 4);
        assert_eq!(m.missed, 2);
        assert_eq!(m.late_over_interval, 1);
        assert_eq!(m.max_ms, 1500.0);
        assert_eq!(m.p50_ms, 2.0);
        assert!((m.achieved_rate - 4.0 / 3.0).abs() < 1e-9);
        assert!((m.cpu_per_1000 - 125.0).abs() < 1e-9);
        assert_eq!(m.peak_rss_mb, 50.0);
        assert_eq!(m.outcomes, "200 4");
    }
}
