//! Scenario 2, ceiling: the highest rate the monitor holds on schedule (p99
//! lateness under 100 ms, at most 1% of deadlines missed), found by stepping
//! the rate up and then halving the gap, against two limits measured on the
//! same farm in the same run: `wrk` with `Connection: close` (a fresh
//! connection per GET) and `probe-loop`, the bench's own minimal prober
//! (tokio + reqwest, fresh connection, body read, regex matched, a JSON line
//! made; no schedule, no Kafka). Every party is a process of its own, so its
//! CPU comes from /proc.

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use crate::farm::{self, REGEX};
use crate::procs::{self, CpuClock, MachineCpu, Proc};
use crate::report::{median, Figure, Goal, ScenarioReport};
use crate::schedule::{self, Bed, Measured, Plan};
use crate::stack;
use crate::Options;

/// The ceiling's test of "on schedule": p99 lateness under this many ms.
const P99_LIMIT_MS: f64 = 100.0;
/// Every site's interval in a ceiling step; sites = rate x interval.
const STEP_INTERVAL: Duration = Duration::from_secs(2);
/// Connections wrk and probe-loop keep busy at once.
const CONCURRENCY: usize = 64;
/// Distinct `/site/N` paths wrk and probe-loop cycle through.
const LOOP_SITES: usize = 10_000;

/// Runs the scenario `options.runs` times; ratios are taken within a run, then the median.
pub async fn run(options: &Options) -> anyhow::Result<ScenarioReport> {
    let bed = Bed::start(options, "ceiling")?;
    let mut runs = Vec::new();
    for i in 0..options.runs {
        let run = one_run(&bed, options, i).await?;
        eprintln!(
            "bench: ceiling run {}: monitor {:.0}/s, probe-loop {:.0}/s, wrk {:.0}/s",
            i + 1,
            run.ceiling,
            run.probe_loop.rate,
            run.wrk.rate
        );
        runs.push(run);
    }
    let med = |f: &dyn Fn(&Run) -> f64| median(runs.iter().map(f).collect());
    let mut report = ScenarioReport::new("ceiling");
    report.figures.extend([
        Figure::new(
            "wrk fresh-connection GETs/s (Connection: close)",
            med(&|r| r.wrk.rate),
            "GETs/s",
        ),
        Figure::new(
            "probe-loop probes/s (minimal tokio + reqwest)",
            med(&|r| r.probe_loop.rate),
            "probes/s",
        ),
        Figure::new(
            "monitor on-schedule ceiling (p99 lateness < 100 ms)",
            med(&|r| r.ceiling),
            "probes/s",
        ),
        Figure::new(
            "monitor ceiling / probe-loop",
            med(&|r| r.ceiling / r.probe_loop.rate),
            "x",
        )
        .goal(Goal::AtLeast(0.8)),
        Figure::new(
            "monitor ceiling / wrk",
            med(&|r| r.ceiling / r.wrk.rate),
            "x",
        )
        .goal(Goal::AtLeast(0.6)),
        Figure::new(
            "monitor CPU per 1,000 probes at the ceiling",
            med(&|r| r.at_ceiling.as_ref().map_or(f64::NAN, |m| m.cpu_per_1000)),
            "CPU-s",
        ),
        Figure::new(
            "probe-loop CPU per 1,000 probes",
            med(&|r| r.probe_loop.cpu_per_1000),
            "CPU-s",
        ),
        Figure::new(
            "wrk CPU per 1,000 GETs",
            med(&|r| r.wrk.cpu_per_1000),
            "CPU-s",
        ),
        Figure::new(
            "site farm CPU per 1,000 GETs (under wrk)",
            med(&|r| r.wrk.farm_cpu_per_1000),
            "CPU-s",
        ),
    ]);
    report.notes.push(format!(
        "wrk -t2 -c{CONCURRENCY} -H 'Connection: close' and probe-loop --concurrency {CONCURRENCY}, both cycling {LOOP_SITES} /site/N paths; monitor steps of {LOOP_SITES}-ish /site/N sites (sites = rate x {} s interval), each warmed up one interval + 1 s, then measured over whole intervals; a step holds when p99 lateness < {P99_LIMIT_MS} ms and at most 1% of deadlines are missed; median of {} run(s)",
        STEP_INTERVAL.as_secs(),
        options.runs
    ));
    if let Some(last) = runs.last() {
        report
            .notes
            .push(format!("steps (last run): {}", last.steps.join("; ")));
        let farm_cores = last.wrk.farm_cpu / last.wrk.seconds;
        let wrk_cores = last.wrk.cpu / last.wrk.seconds;
        report.notes.push(format!(
            "is the farm the bottleneck? under wrk (last run) the farm process used {farm_cores:.2} cores, wrk {wrk_cores:.2}, and the machine was busy {:.2} of its 2 cores (the rest is the kernel's TCP work on loopback, charged to no process, and any other load): {}; FACTS.md has wrk at 16,400-17,300 fresh-connection GETs/s against nginx on this kind of machine, and the farm served {:.0}/s ({:.2}x)",
            last.wrk.machine_cores,
            if last.wrk.machine_cores > 1.8 {
                "the machine's CPU is the limit, not the farm alone"
            } else {
                "the machine had spare CPU"
            },
            last.wrk.rate,
            last.wrk.rate / 16_850.0
        ));
        if let Some(m) = &last.at_ceiling {
            report.notes.push(format!(
                "at the ceiling (last run) the monitor used {:.2} cores, the farm {:.2}, the local broker {:.2} (a cost probe-loop and wrk do not have, and a real Kafka would not put on this machine), the machine {:.2} of 2; probe-loop ran with the machine {:.2} busy; past the ceiling lateness does not grow slowly but runs away (the machine is full and probes queue), so the ceiling is where the 2 cores run out, with the headroom a schedule needs",
                m.monitor_cores, m.farm_cores, m.broker_cores, m.machine_cores, last.probe_loop.machine_cores
            ));
        }
        report.notes.push(format!(
            "the wrk ratio measures the client's cost: on 2 cores shared by client, farm and kernel, probe-loop itself reached {:.2}x wrk here (FACTS.md: 0.81x against nginx), since wrk's C client spends {:.3} CPU-s per GET against probe-loop's {:.3} (tokio + reqwest, the floor for any reqwest prober), and the farm is cheaper per GET than nginx, which lifts wrk more than a dearer client",
            last.probe_loop.rate / last.wrk.rate,
            last.wrk.cpu_per_1000,
            last.probe_loop.cpu_per_1000
        ));
        report.notes.push(format!(
            "probe-loop (last run): {} probes, {} failed, {:.2} cores; wrk: {}",
            last.probe_loop.probes,
            last.probe_loop.failed,
            last.probe_loop.cpu / last.probe_loop.seconds,
            last.wrk.errors
        ));
    }
    drop(bed);
    Ok(report)
}

/// One run of the scenario.
#[derive(Debug)]
struct Run {
    wrk: WrkResult,
    probe_loop: LoopResult,
    /// The highest rate held (0 when none was).
    ceiling: f64,
    /// The measurement of the step at the ceiling.
    at_ceiling: Option<Measured>,
    /// Each step, in words.
    steps: Vec<String>,
}

async fn one_run(bed: &Bed, options: &Options, run: usize) -> anyhow::Result<Run> {
    let seconds = if options.full { 20 } else { 8 };
    let wrk = tokio::task::block_in_place(|| wrk(bed, seconds))?;
    eprintln!(
        "bench: ceiling: wrk {:.0} GETs/s, {:.3} CPU-s/1000",
        wrk.rate, wrk.cpu_per_1000
    );
    let probe_loop = tokio::task::block_in_place(|| probe_loop(bed, options, seconds))?;
    eprintln!(
        "bench: ceiling: probe-loop {:.0} probes/s, {:.3} CPU-s/1000",
        probe_loop.rate, probe_loop.cpu_per_1000
    );
    // Start below the goal (0.8x the loop), at half the loop's rate in
    // whole 500s: a good monitor steps up through the goal in few steps and
    // a poor one is stepped down to.
    let start = (probe_loop.rate * 0.5 / 500.0).floor().max(1.0) * 500.0;
    let mut stepper = Stepper::new(start, 1.25, if options.full { 3 } else { 2 });
    let mut steps = Vec::new();
    let mut at_ceiling: Option<Measured> = None;
    while let Some(rate) = stepper.next_rate() {
        let sites = (rate * STEP_INTERVAL.as_secs_f64()).round() as usize;
        let plan = Plan {
            label: format!("ceiling-{run}-{rate:.0}"),
            sites: farm::hit_sites(bed.farm.http, sites),
            interval: STEP_INTERVAL,
            warmup: STEP_INTERVAL + Duration::from_secs(1),
            intervals: if options.full { 5 } else { 2 },
        };
        let m = schedule::measure(bed, options, &plan).await?;
        let held = m.on_schedule(P99_LIMIT_MS);
        eprintln!(
            "bench: ceiling step {rate:.0}/s: {} -> {}",
            m.summary(),
            if held { "held" } else { "not held" }
        );
        steps.push(format!(
            "{rate:.0}/s {} (p99 {:.1} ms, missed {} of {})",
            if held { "held" } else { "NOT held" },
            m.p99_ms,
            m.missed,
            m.due
        ));
        stepper.record(rate, held);
        if held && stepper.best() == Some(rate) {
            at_ceiling = Some(m);
        }
    }
    Ok(Run {
        wrk,
        probe_loop,
        ceiling: stepper.best().unwrap_or(0.0),
        at_ceiling,
        steps,
    })
}

/// Finds the highest rate that holds: steps up by `factor` until a rate
/// fails (or down until one holds), then halves the gap (geometrically)
/// `refinements` times.
#[derive(Debug, Clone)]
pub(crate) struct Stepper {
    start: f64,
    factor: f64,
    refinements: u32,
    /// Highest rate that held.
    held: Option<f64>,
    /// Lowest rate that did not.
    failed: Option<f64>,
    steps: u32,
}

/// Steps taken at most, whatever the results, so a noisy machine cannot loop for long.
const MAX_STEPS: u32 = 10;
/// Rates are rounded to this many probes/s, and the search stops when the gap is smaller.
const RATE_GRAIN: f64 = 100.0;

impl Stepper {
    /// A search starting at `start` probes/s.
    pub(crate) fn new(start: f64, factor: f64, refinements: u32) -> Stepper {
        Stepper {
            start,
            factor,
            refinements,
            held: None,
            failed: None,
            steps: 0,
        }
    }

    /// The next rate to try, or `None` when the search is over.
    pub(crate) fn next_rate(&self) -> Option<f64> {
        if self.steps >= MAX_STEPS {
            return None;
        }
        let grain = |r: f64| ((r / RATE_GRAIN).round() * RATE_GRAIN).max(RATE_GRAIN);
        match (self.held, self.failed) {
            (None, None) => Some(grain(self.start)),
            // At least one grain up or down, or rounding could repeat a rate.
            (Some(held), None) => Some(grain(held * self.factor).max(held + RATE_GRAIN)),
            (None, Some(failed)) => {
                let lower = grain(failed / self.factor).min(failed - RATE_GRAIN);
                (lower >= RATE_GRAIN).then_some(lower)
            }
            (Some(held), Some(failed)) => {
                if self.refinements == 0 || failed - held <= RATE_GRAIN {
                    return None;
                }
                let mid = grain((held * failed).sqrt());
                (mid > held && mid < failed).then_some(mid)
            }
        }
    }

    /// Records whether `rate` held.
    pub(crate) fn record(&mut self, rate: f64, held: bool) {
        let refining = self.held.is_some() && self.failed.is_some();
        if refining {
            self.refinements = self.refinements.saturating_sub(1);
        }
        self.steps += 1;
        if held {
            self.held = Some(self.held.map_or(rate, |h| h.max(rate)));
        } else {
            self.failed = Some(self.failed.map_or(rate, |f| f.min(rate)));
        }
    }

    /// The highest rate that held so far.
    pub(crate) fn best(&self) -> Option<f64> {
        self.held
    }
}

/// What wrk reported, with CPU from /proc.
#[derive(Debug, Clone)]
struct WrkResult {
    rate: f64,
    seconds: f64,
    cpu: f64,
    cpu_per_1000: f64,
    farm_cpu: f64,
    farm_cpu_per_1000: f64,
    /// Cores the whole machine was busy while wrk ran.
    machine_cores: f64,
    /// Socket errors and non-2xx answers, as wrk printed them.
    errors: String,
}

fn wrk(bed: &Bed, seconds: u64) -> anyhow::Result<WrkResult> {
    let script = bed.dir.join("paths.lua");
    stack::write_file(&script, wrk_script(LOOP_SITES))?;
    let connections = CONCURRENCY.to_string();
    let duration = format!("{seconds}s");
    let script_arg = script.display().to_string();
    let url = format!("http://{}/", bed.farm.http);
    let farm_clock = CpuClock::process(bed.farm.proc.pid())?;
    let load = Load::run(
        bed,
        "wrk",
        Path::new("wrk"),
        [
            "-t2",
            "-c",
            &connections,
            "-d",
            &duration,
            "-H",
            "Connection: close",
            "-s",
            &script_arg,
            &url,
        ],
        Duration::from_secs(seconds + 30),
    )
    .context("cannot run wrk (scripts/bench.sh installs it: apt-get install wrk)")?;
    let farm_cpu = farm_clock.elapsed()?;
    let parsed = parse_wrk(&load.output)
        .with_context(|| format!("unexpected wrk output:\n{}", load.output))?;
    Ok(WrkResult {
        rate: parsed.requests as f64 / parsed.seconds,
        seconds: parsed.seconds,
        cpu: load.cpu,
        cpu_per_1000: load.cpu * 1000.0 / parsed.requests.max(1) as f64,
        farm_cpu,
        farm_cpu_per_1000: farm_cpu * 1000.0 / parsed.requests.max(1) as f64,
        machine_cores: load.machine_cores,
        errors: parsed.errors,
    })
}

/// What a load generator that ends by itself (wrk, probe-loop) left: its
/// output, its CPU and the whole machine's while it ran.
#[derive(Debug)]
struct Load {
    /// Everything it printed.
    output: String,
    /// CPU seconds of its whole life.
    cpu: f64,
    /// Cores the whole machine was busy while it ran (its warm-up included).
    machine_cores: f64,
}

impl Load {
    /// Runs `program` with `args` to its end (at most `timeout`); fails if it does not succeed.
    fn run(
        bed: &Bed,
        name: &str,
        program: &Path,
        args: impl IntoIterator<Item = impl AsRef<OsStr>>,
        timeout: Duration,
    ) -> anyhow::Result<Load> {
        let machine0 = MachineCpu::now()?;
        let proc = Proc::spawn(name, program, args, &[], &bed.dir)?;
        let log = proc.log().to_owned();
        let cpu = proc.finish_ok(timeout)?;
        let machine_cores = MachineCpu::now()?.busy_cores_since(&machine0);
        let output = std::fs::read_to_string(&log)
            .with_context(|| format!("cannot read {}", log.display()))?;
        Ok(Load {
            output,
            cpu,
            machine_cores,
        })
    }
}

/// A wrk script that cycles the request path through `/site/0` .. `/site/{sites-1}`.
fn wrk_script(sites: usize) -> String {
    format!(
        "-- Made by the bench: every request a different site path.\n\
         local n = 0\n\
         request = function()\n  \
           n = (n + 1) % {sites}\n  \
           return wrk.format(\"GET\", \"/site/\" .. n)\n\
         end\n"
    )
}

/// What the bench reads in wrk's summary.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WrkSummary {
    pub(crate) requests: u64,
    pub(crate) seconds: f64,
    pub(crate) errors: String,
}

/// Reads `N requests in 8.00s, ...` and the error lines from wrk's summary.
pub(crate) fn parse_wrk(output: &str) -> Option<WrkSummary> {
    let line = output.lines().find(|l| l.contains(" requests in "))?;
    let mut words = line.split_whitespace();
    let requests: u64 = words.next()?.parse().ok()?;
    let _ = words.next()?; // "requests"
    let _ = words.next()?; // "in"
    let time = words.next()?.trim_end_matches(',');
    let seconds = parse_wrk_duration(time)?;
    let errors: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("Socket errors") || l.starts_with("Non-2xx"))
        .collect();
    Some(WrkSummary {
        requests,
        seconds,
        errors: if errors.is_empty() {
            "no socket errors, all 2xx".to_owned()
        } else {
            errors.join("; ")
        },
    })
}

/// wrk's durations: `8.00s`, `1.00m`, `500.00ms`.
pub(crate) fn parse_wrk_duration(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit {
        "us" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    Some(number * scale)
}

/// What probe-loop printed.
#[derive(Debug, Clone, Deserialize)]
struct LoopOutcome {
    probes: u64,
    failed: u64,
    seconds: f64,
    cpu_seconds: f64,
}

#[derive(Debug, Clone)]
struct LoopResult {
    rate: f64,
    probes: u64,
    failed: u64,
    seconds: f64,
    cpu: f64,
    cpu_per_1000: f64,
    /// Cores the whole machine was busy while probe-loop ran (its warm-up included).
    machine_cores: f64,
}

fn probe_loop(bed: &Bed, options: &Options, seconds: u64) -> anyhow::Result<LoopResult> {
    let urls = bed.dir.join("probe-loop-urls.txt");
    let list: Vec<String> = farm::hit_sites(bed.farm.http, LOOP_SITES)
        .into_iter()
        .map(|s| s.url)
        .collect();
    stack::write_file(&urls, list.join("\n"))?;
    let urls_arg = urls.display().to_string();
    let concurrency = CONCURRENCY.to_string();
    let duration = format!("{seconds}s");
    let load = Load::run(
        bed,
        "probe-loop",
        &procs::release_binary(&options.bin_dir, "probe-loop")?,
        [
            "--urls",
            &urls_arg,
            "--regex",
            REGEX,
            "--concurrency",
            &concurrency,
            "--warmup",
            "2s",
            "--duration",
            &duration,
        ],
        Duration::from_secs(seconds + 60),
    )?;
    let line = load
        .output
        .lines()
        .find_map(|line| line.strip_prefix("result="))
        .with_context(|| format!("probe-loop printed no result:\n{}", load.output))?;
    let outcome: LoopOutcome = serde_json::from_str(line)
        .with_context(|| format!("unexpected probe-loop result {line}"))?;
    Ok(LoopResult {
        rate: outcome.probes as f64 / outcome.seconds,
        probes: outcome.probes,
        failed: outcome.failed,
        seconds: outcome.seconds,
        cpu: outcome.cpu_seconds,
        cpu_per_1000: outcome.cpu_seconds * 1000.0 / outcome.probes.max(1) as f64,
        machine_cores: load.machine_cores,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a search against a monitor that holds up to `limit`.
    fn search(start: f64, limit: f64, refinements: u32) -> (Option<f64>, Vec<f64>) {
        let mut stepper = Stepper::new(start, 1.25, refinements);
        let mut tried = Vec::new();
        while let Some(rate) = stepper.next_rate() {
            tried.push(rate);
            stepper.record(rate, rate <= limit);
        }
        (stepper.best(), tried)
    }

    #[test]
    fn steps_up_then_narrows_the_gap() {
        let (best, tried) = search(4000.0, 6200.0, 2);
        assert_eq!(&tried[..3], &[4000.0, 5000.0, 6300.0]);
        // Between 5000 (held) and 6300 (failed): sqrt(5000*6300) = 5612 -> 5600, then 5900.
        assert_eq!(&tried[3..], &[5600.0, 5900.0]);
        assert_eq!(best, Some(5900.0));
    }

    #[test]
    fn steps_down_when_the_start_fails() {
        let (best, tried) = search(4000.0, 2500.0, 1);
        assert_eq!(&tried[..3], &[4000.0, 3200.0, 2600.0]);
        assert_eq!(tried[3], 2100.0);
        assert_eq!(best, Some(2300.0));
        assert_eq!(tried.len(), 5);
    }

    #[test]
    fn the_search_is_bounded() {
        let (best, tried) = search(100.0, f64::INFINITY, 3);
        assert_eq!(tried.len() as u32, MAX_STEPS);
        assert!(best.is_some());
        let (best, tried) = search(1000.0, 0.0, 3);
        assert_eq!(best, None);
        assert!(tried.len() as u32 <= MAX_STEPS);
        assert_eq!(*tried.last().expect("some"), 100.0);
    }

    #[test]
    fn wrk_summary() {
        let output = "Running 8s test @ http://127.0.0.1:4000/\n  \
            2 threads and 64 connections\n  \
            Thread Stats   Avg      Stdev     Max   +/- Stdev\n    \
            Latency     3.60ms    1.10ms  20.00ms   80.00%\n  \
            124000 requests in 8.00s, 14.50MB read\n  \
            Socket errors: connect 0, read 12, write 0, timeout 0\n\
            Requests/sec:  15500.00\n\
            Transfer/sec:      1.81MB\n";
        let summary = parse_wrk(output).expect("parsed");
        assert_eq!(summary.requests, 124_000);
        assert_eq!(summary.seconds, 8.0);
        assert_eq!(
            summary.errors,
            "Socket errors: connect 0, read 12, write 0, timeout 0"
        );
        assert_eq!(parse_wrk_duration("1.00m"), Some(60.0));
        assert_eq!(parse_wrk_duration("500.00ms"), Some(0.5));
        assert_eq!(parse_wrk_duration("8.00"), None);
        assert!(parse_wrk("nothing here").is_none());
    }

    #[test]
    fn the_wrk_script_cycles_paths() {
        let script = wrk_script(10);
        assert!(script.contains("% 10"), "{script}");
        assert!(script.contains("\"/site/\" .. n"), "{script}");
    }
}
