//! Scenario 3, a peer side by side: Prometheus' blackbox_exporter (Debian's
//! prometheus-blackbox-exporter) with an HTTP module equivalent to the
//! monitor's probe (GET, the same body regex), driven by the bench's
//! `/probe?module=...&target=...` requests at a fixed rate, and the monitor
//! at the same rate on the same farm sites, one after the other. CPU seconds
//! per 1,000 probes of each process come from /proc.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::sync::Semaphore;
use tokio::time::{Instant, MissedTickBehavior};

use crate::farm::{self, REGEX};
use crate::http::{self, Connections};
use crate::procs::{CpuClock, Proc};
use crate::report::{median, Figure, Goal, ScenarioReport};
use crate::schedule::{self, Bed, Plan};
use crate::stack;
use crate::Options;

/// Where Debian installs blackbox_exporter.
const BLACKBOX: &str = "/usr/bin/prometheus-blackbox-exporter";
/// The module the bench's config defines.
const MODULE: &str = "http_regex";
/// Probes per second both probers are driven at: well under the saturation of
/// either on a small machine, so that both are compared at the same load and
/// neither at its limit.
const RATE: f64 = 1_000.0;
/// Distinct sites both probe, each once per second.
const SITES: usize = 1_000;
/// Requests to the exporter in flight at most; more means it has fallen far behind.
const MAX_IN_FLIGHT: usize = 2_000;

/// Runs the scenario `options.runs` times; the ratio is taken within a run, then the median.
pub async fn run(options: &Options) -> anyhow::Result<ScenarioReport> {
    if !Path::new(BLACKBOX).is_file() {
        bail!("{BLACKBOX} is missing: apt-get install prometheus-blackbox-exporter (scripts/bench.sh does)");
    }
    let bed = Bed::start(options, "peer")?;
    let measured = Duration::from_secs(if options.full { 30 } else { 10 });
    let mut runs = Vec::new();
    for i in 0..options.runs {
        let blackbox = blackbox(&bed, measured).await?;
        eprintln!(
            "bench: peer run {}: blackbox {:.0} probes/s, {:.3} CPU-s/1000 ({} ok, {} failed, {} errors, {} not sent)",
            i + 1,
            blackbox.rate,
            blackbox.cpu_per_1000,
            blackbox.ok,
            blackbox.failed,
            blackbox.errors,
            blackbox.not_sent
        );
        let plan = Plan {
            label: format!("peer-{i}"),
            sites: farm::hit_sites(bed.farm.http, SITES),
            interval: farm::interval_for(SITES, RATE),
            warmup: Duration::from_secs(2),
            intervals: schedule::window_intervals(farm::interval_for(SITES, RATE), measured),
        };
        let monitor = schedule::measure(&bed, options, &plan).await?;
        eprintln!("bench: peer run {}: monitor {}", i + 1, monitor.summary());
        runs.push((blackbox, monitor));
    }
    let med =
        |f: &dyn Fn(&(Driven, schedule::Measured)) -> f64| median(runs.iter().map(f).collect());
    let mut report = ScenarioReport::new("peer");
    report.figures.extend([
        Figure::new("blackbox_exporter probes/s", med(&|r| r.0.rate), "probes/s"),
        Figure::new("monitor probes/s", med(&|r| r.1.achieved_rate), "probes/s"),
        Figure::new(
            "blackbox_exporter CPU per 1,000 probes",
            med(&|r| r.0.cpu_per_1000),
            "CPU-s",
        ),
        Figure::new(
            "monitor CPU per 1,000 probes (publishing included)",
            med(&|r| r.1.cpu_per_1000),
            "CPU-s",
        ),
        Figure::new(
            "monitor / blackbox_exporter CPU per probe",
            med(&|r| r.1.cpu_per_1000 / r.0.cpu_per_1000),
            "x",
        )
        .goal(Goal::AtMost(0.2)),
    ]);
    report.notes.push(format!(
        "both at {RATE:.0} probes/s over the same {SITES} /site/N sites (fresh connection per probe each, regex {REGEX:?} via fail_if_body_not_matches_regexp), one after the other, {:.0} s measured after 2 s of warm-up; median of {} run(s)",
        measured.as_secs_f64(),
        options.runs
    ));
    report.notes.push(
        "blackbox_exporter is driven by the bench over keep-alive connections, as Prometheus scrapes it; its CPU includes answering /probe and rendering the metrics text, which is how it works; the monitor's includes scheduling and publishing to Kafka (the broker's CPU is not counted)".to_owned(),
    );
    report.notes.push(
        "the monitor's CPU per probe falls as its rate rises (see schedule and ceiling: the wake-ups around each probe, tokio's workers parking and unparking, are shared by more probes when busy), so the ratio is at its least favourable at this modest rate; blackbox_exporter's stays near 0.7 CPU-s per 1,000 at any rate (FACTS.md: 0.72 at its saturation)".to_owned(),
    );
    if let Some((b, m)) = runs.last() {
        report.notes.push(format!(
            "last run: blackbox {} probe_success 1, {} probe_success 0, {} request errors, {} not sent; monitor lateness p99 {:.2} ms, outcomes {}",
            b.ok, b.failed, b.errors, b.not_sent, m.p99_ms, m.outcomes
        ));
    }
    drop(bed);
    Ok(report)
}

/// What the exporter did in the measured window.
#[derive(Debug, Clone)]
struct Driven {
    rate: f64,
    cpu_per_1000: f64,
    ok: u64,
    failed: u64,
    errors: u64,
    not_sent: u64,
}

#[derive(Debug, Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
    errors: AtomicU64,
    not_sent: AtomicU64,
}

impl Counts {
    fn snapshot(&self) -> [u64; 4] {
        [
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
            self.not_sent.load(Ordering::Relaxed),
        ]
    }
}

/// The exporter's configuration: one HTTP module equivalent to the monitor's probe.
fn blackbox_config() -> String {
    format!(
        "# Made by the bench: GET, a fresh connection (the exporter's default), the monitor's regex.\n\
         modules:\n  \
           {MODULE}:\n    \
             prober: http\n    \
             timeout: 5s\n    \
             http:\n      \
               method: GET\n      \
               preferred_ip_protocol: ip4\n      \
               fail_if_body_not_matches_regexp:\n        \
                 - \"{REGEX}\"\n"
    )
}

/// A free loopback port (bound, then released for the exporter to take).
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr().context("no local address")?.port())
}

/// Starts the exporter, drives it at [`RATE`] for warm-up plus `measured`, and stops it.
async fn blackbox(bed: &Bed, measured: Duration) -> anyhow::Result<Driven> {
    let config = bed.dir.join("blackbox.yml");
    stack::write_file(&config, blackbox_config())?;
    let port = free_port()?;
    let mut exporter = Proc::spawn(
        "blackbox_exporter",
        Path::new(BLACKBOX),
        [
            format!("--config.file={}", config.display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
        ],
        &[],
        &bed.dir,
    )?;
    tokio::task::block_in_place(|| {
        exporter.wait_for_text("Listening on", Duration::from_secs(20))
    })?;
    let targets: Vec<reqwest::Url> = farm::hit_sites(bed.farm.http, SITES)
        .into_iter()
        .map(|site| {
            let mut url = reqwest::Url::parse(&format!("http://127.0.0.1:{port}/probe"))?;
            let _ = url
                .query_pairs_mut()
                .append_pair("module", MODULE)
                .append_pair("target", &site.url);
            Ok(url)
        })
        .collect::<anyhow::Result<_>>()?;
    let client = http::client(Connections::KeepAlive)?;
    let counts = Arc::new(Counts::default());
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let warmup = Duration::from_secs(2);
    let start = Instant::now();
    let window_start = start + warmup;
    let end = window_start + measured;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / RATE));
    // A late tick sends the requests it owes at once, so the rate stays RATE on average.
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut before: Option<([u64; 4], CpuClock, Instant)> = None;
    let mut n = 0usize;
    loop {
        let now = tick.tick().await;
        if now >= end {
            break;
        }
        if before.is_none() && now >= window_start {
            before = Some((
                counts.snapshot(),
                CpuClock::process(exporter.pid())?,
                Instant::now(),
            ));
        }
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            let _ = counts.not_sent.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let url = targets[n % targets.len()].clone();
        n += 1;
        let (client, counts) = (client.clone(), Arc::clone(&counts));
        drop(tokio::spawn(async move {
            let counter = match probe_once(&client, url).await {
                Ok(true) => &counts.ok,
                Ok(false) => &counts.failed,
                Err(_) => &counts.errors,
            };
            let _ = counter.fetch_add(1, Ordering::Relaxed);
            drop(permit);
        }));
    }
    let after = counts.snapshot();
    let (counts_before, cpu_clock, at) = before.context("the window never started")?;
    let cpu = cpu_clock.elapsed()?;
    let seconds = at.elapsed().as_secs_f64();
    let _ = tokio::task::block_in_place(|| exporter.stop(Duration::from_secs(10)))?;
    let [ok, failed, errors, not_sent] =
        std::array::from_fn(|i| after[i].saturating_sub(counts_before[i]));
    let probes = ok + failed;
    Ok(Driven {
        rate: probes as f64 / seconds,
        cpu_per_1000: cpu * 1000.0 / probes.max(1) as f64,
        ok,
        failed,
        errors,
        not_sent,
    })
}

/// One `/probe` request: whether the exporter says the probe succeeded.
async fn probe_once(client: &reqwest::Client, url: reqwest::Url) -> Result<bool, reqwest::Error> {
    let body = client
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(probe_succeeded(&body))
}

/// Whether the exporter's metrics text has `probe_success 1`.
fn probe_succeeded(body: &str) -> bool {
    body.lines()
        .any(|line| line.split_whitespace().collect::<Vec<_>>() == ["probe_success", "1"])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_success_is_read_from_the_metrics_text() {
        let ok = "# HELP probe_success Displays whether or not the probe was a success\n\
                  # TYPE probe_success gauge\nprobe_success 1\nprobe_duration_seconds 0.001\n";
        assert!(probe_succeeded(ok));
        assert!(!probe_succeeded(
            &ok.replace("probe_success 1", "probe_success 0")
        ));
        assert!(!probe_succeeded("probe_success_total 1\n"));
    }

    #[test]
    fn the_config_has_the_module_and_regex() {
        let config = blackbox_config();
        assert!(
            config.contains("  http_regex:\n    prober: http\n"),
            "{config}"
        );
        assert!(config.contains("- \"site [0-9]+ ok\""), "{config}");
    }
}
