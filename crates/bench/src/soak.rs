//! The soak (`make soak`, not part of the quick or full set): the monitor
//! and two consumers (static members of one group) run at >= 1,000 probes/s
//! for `--soak-minutes` while faults come one after another: consumer
//! SIGKILLs (each restarted at once, as a restart policy would), PostgreSQL
//! restarts, and a broker outage (every connection to the broker blackholed
//! through a fault proxy: a hung peer, not a dead one).
//!
//! After each fault the soak waits until the consumers' lag (messages on the
//! topic not yet stored) is back under two seconds of traffic and stays there
//! for [`HOLD`], and reports that recovery time from the fault's end.
//! The consumers run with a 10 s session timeout (librdkafka's default is
//! 45 s): a SIGKILLed member's partitions wait for it to expire.
//! At the end the monitor stops (SIGTERM, so it flushes), the consumers
//! drain, and the ledger is checked in PostgreSQL against the topic's
//! offsets and the monitor's own count: nothing missing, nothing doubled.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use rustix::process::Signal;
use sitewatch_faults::{Fault, FaultProxy};
use tokio::net::TcpListener;

use crate::farm::{self, Farm};
use crate::procs::{self, Proc};
use crate::report::{Figure, Goal, ScenarioReport};
use crate::stack::{self, poll_until, Progress, Store};
use crate::Options;

/// The topic the soak's monitor publishes to.
const TOPIC: &str = "soak";
/// Enough partitions that the mock broker's 5 MB per partition holds the
/// whole run (it silently drops older messages past that), checked at the end.
const PARTITIONS: i32 = 48;
/// Sites probed, each every second.
const SITES: usize = 1_000;
/// Consumer SIGKILLs over the run.
const KILLS: usize = 20;
/// PostgreSQL restarts over the run.
const PG_RESTARTS: usize = 3;
/// How long PostgreSQL stays down at each restart.
const PG_DOWN: Duration = Duration::from_secs(5);
/// How long the broker is unreachable.
const BROKER_OUTAGE: Duration = Duration::from_secs(60);
/// Longest a recovery may take before the soak gives up on the run.
const RECOVERY_LIMIT: Duration = Duration::from_secs(300);
/// How long the lag must stay low for a recovery to count.
const HOLD: Duration = Duration::from_secs(5);
/// The consumers' group timeouts: shorter than librdkafka's defaults, as an
/// operator who restarts consumers sets them.
const GROUP_TIMEOUTS: [&str; 6] = [
    "-X",
    "session.timeout.ms=10000",
    "-X",
    "heartbeat.interval.ms=1000",
    "-X",
    "max.poll.interval.ms=30000",
];

/// One fault of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// SIGKILL consumer `n` (0 or 1) and start it again.
    KillConsumer(usize),
    /// Stop PostgreSQL, wait [`PG_DOWN`], start it again.
    RestartPostgres,
    /// Blackhole the broker for [`BROKER_OUTAGE`].
    BrokerOutage,
}

/// The faults in the order they come: kills spread over the run, the
/// PostgreSQL restarts and the broker outage between them.
fn plan(seed: u64) -> Vec<Event> {
    let mut random = seed | 1;
    let mut next = move || {
        // xorshift64: reproducible from the printed seed, no dependency.
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        random
    };
    let mut faults: Vec<Event> = (0..KILLS)
        .map(|_| Event::KillConsumer(usize::from(next() % 2 == 1)))
        .collect();
    let step = KILLS / (PG_RESTARTS + 2);
    for i in 0..PG_RESTARTS {
        faults.insert((i + 1) * step + i, Event::RestartPostgres);
    }
    faults.insert(faults.len() / 2 + 1, Event::BrokerOutage);
    faults
}

/// Runs the soak once and reports its figures.
pub async fn run(options: &Options) -> anyhow::Result<ScenarioReport> {
    let minutes = options.soak_minutes;
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |t| t.as_secs());
    let faults = plan(seed);
    let store = Store::start(options, "soak")?;
    let db = store.database(0)?;
    let dir = store.dir.clone();

    // The broker advertises the proxy, so every client connection passes it.
    let proxy_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen for the fault proxy")?;
    let proxy_addr = proxy_listener.local_addr()?;
    let front = free_port()?;
    let mut broker = Proc::release(
        &options.bin_dir,
        "broker",
        [
            "--topic",
            TOPIC,
            "--partitions",
            &PARTITIONS.to_string(),
            "--listen",
            &front.to_string(),
            "--advertise",
            &proxy_addr.to_string(),
        ],
        &[],
        &dir,
    )?;
    let bootstrap = broker.wait_for_line("bootstrap=", Duration::from_secs(20))?;
    let proxy = FaultProxy::serve(proxy_listener, front).context("cannot start the fault proxy")?;

    let farm = Farm::start(&options.bin_dir, &dir)?;
    let sites = farm::hit_sites(farm.http, SITES);
    let list = dir.join("sites.csv");
    stack::write_file(&list, farm::monitor_csv(&sites, Duration::from_secs(1)))?;
    let list_arg = list.to_string_lossy().into_owned();
    let kafka = ["--kafka-brokers", &bootstrap, "--kafka-topic", TOPIC];

    let mut consumers = Consumers {
        options,
        dir: &dir,
        kafka: kafka.map(str::to_owned),
        db_url: db.url.clone(),
        procs: Vec::new(),
        starts: 0,
        peak_rss: 0,
    };
    for n in 0..2 {
        let consumer = consumers.start(n)?;
        consumers.procs.push(consumer);
    }
    let mut monitor_args = vec!["--targets", list_arg.as_str(), "--log-format", "json"];
    monitor_args.extend(kafka);
    let mut monitor = Proc::release(&options.bin_dir, "monitor", monitor_args, &[], &dir)?;
    let ledger = Ledger {
        bootstrap: bootstrap.clone(),
        db_url: db.url.clone(),
    };
    ledger
        .caught_up("the first rows", 1, &mut [], RECOVERY_LIMIT)
        .await?;

    let started = Instant::now();
    let spacing = Duration::from_secs(minutes * 60).saturating_sub(BROKER_OUTAGE + PG_DOWN * 3)
        / u32::try_from(faults.len() + 1)?;
    eprintln!(
        "bench: soak: {SITES} sites every second for about {minutes} min, {} faults one every {:.0} s (seed {seed})",
        faults.len(),
        spacing.as_secs_f64()
    );
    let mut recoveries: Vec<(Event, Duration)> = Vec::new();
    let mut monitor_rss = 0;
    let mut broker_rss = 0;
    for fault in &faults {
        let next = Instant::now() + spacing;
        monitor_rss = monitor_rss.max(procs::peak_rss_bytes(monitor.pid())?);
        broker_rss = broker_rss.max(procs::peak_rss_bytes(broker.pid())?);
        match *fault {
            Event::KillConsumer(n) => consumers.kill_and_restart(n)?,
            Event::RestartPostgres => {
                tokio::task::block_in_place(|| store.pg.stop())
                    .context("cannot stop PostgreSQL")?;
                tokio::time::sleep(PG_DOWN).await;
                tokio::task::block_in_place(|| store.pg.start_again())
                    .context("cannot start PostgreSQL again")?;
            }
            Event::BrokerOutage => {
                proxy.set(Fault::Blackhole);
                tokio::time::sleep(BROKER_OUTAGE).await;
                proxy.set(Fault::None);
            }
        }
        let ended = Instant::now();
        let low = (SITES * 2) as i64;
        let took = ledger
            .recovered(&format!("recovery from {fault:?}"), low)
            .await?
            - ended;
        eprintln!(
            "bench: soak: {fault:?} at {:.0} s: lag under {low} again {:.1} s after",
            (ended - started).as_secs_f64(),
            took.as_secs_f64()
        );
        recoveries.push((*fault, took));
        for proc in consumers
            .procs
            .iter_mut()
            .chain([&mut monitor, &mut broker])
        {
            proc.ensure_running()?;
        }
        tokio::time::sleep_until(next.into()).await;
    }

    // The end: the monitor flushes and says what it published; the consumers drain it.
    monitor_rss = monitor_rss.max(procs::peak_rss_bytes(monitor.pid())?);
    broker_rss = broker_rss.max(procs::peak_rss_bytes(broker.pid())?);
    let ran = started.elapsed();
    let monitor_log = monitor.log().to_owned();
    let _ = monitor.stop(Duration::from_secs(60))?;
    let published = monitor_published(&monitor_log)?;
    let (dropped, produced) = ledger.topic().await?;
    ledger
        .caught_up(
            "the last rows",
            produced,
            &mut consumers.procs,
            RECOVERY_LIMIT,
        )
        .await?;
    for proc in &consumers.procs {
        consumers.peak_rss = consumers.peak_rss.max(procs::peak_rss_bytes(proc.pid())?);
    }
    let counts = ledger.counts().await?;
    for proc in consumers.procs.drain(..) {
        proc.stop_ok(Duration::from_secs(30))?;
    }

    let missing = produced - counts.distinct - counts.dead;
    let doubled = counts.rows - counts.distinct;
    let worst = |kind: fn(&Event) -> bool| {
        recoveries
            .iter()
            .filter(|(fault, _)| kind(fault))
            .map(|(_, took)| took.as_secs_f64())
            .fold(0.0, f64::max)
    };
    let kills = recoveries
        .iter()
        .filter(|(f, _)| matches!(f, Event::KillConsumer(_)))
        .count();
    let mut report = ScenarioReport::new("soak");
    report.figures = vec![
        Figure::new("minutes run", ran.as_secs_f64() / 60.0, "min"),
        Figure::new("probes published", published as f64, "metrics")
            .goal(Goal::AtLeast(ran.as_secs_f64() * SITES as f64 * 0.95)),
        Figure::new("messages on the topic", produced as f64, "metrics"),
        Figure::new("rows", counts.rows as f64, "rows"),
        Figure::new("missing", missing as f64, "metrics").goal(Goal::AtMost(0.0)),
        Figure::new("duplicates", doubled as f64, "rows").goal(Goal::AtMost(0.0)),
        Figure::new("dead letters", counts.dead as f64, "messages").goal(Goal::AtMost(0.0)),
        Figure::new(
            "dropped by the broker's retention",
            dropped as f64,
            "metrics",
        )
        .goal(Goal::AtMost(0.0)),
        Figure::new(
            "published but not on the topic",
            (published - produced) as f64,
            "metrics",
        )
        .goal(Goal::AtMost(0.0)),
        Figure::new(
            "recovery after a consumer SIGKILL, worst",
            worst(|f| matches!(f, Event::KillConsumer(_))),
            "s",
        ),
        Figure::new(
            "recovery after a PostgreSQL restart, worst",
            worst(|f| *f == Event::RestartPostgres),
            "s",
        ),
        Figure::new(
            "recovery after the broker outage",
            worst(|f| *f == Event::BrokerOutage),
            "s",
        ),
        Figure::new("monitor peak RSS", mb(monitor_rss), "MB"),
        Figure::new("consumer peak RSS (any run)", mb(consumers.peak_rss), "MB"),
        Figure::new("broker peak RSS", mb(broker_rss), "MB"),
    ];
    report.notes = vec![
        format!(
            "{SITES} sites every second; {kills} consumer SIGKILLs (restarted at once, same group.instance.id), {PG_RESTARTS} PostgreSQL restarts ({} s down), one broker outage of {} s (blackholed through a fault proxy); faults in seed {seed}'s order",
            PG_DOWN.as_secs(),
            BROKER_OUTAGE.as_secs()
        ),
        format!("recovery = from the fault's end until the lag (messages on the topic not yet stored) is under 2 s of traffic and stays there {} s; consumers with session.timeout.ms 10000, heartbeat.interval.ms 1000, max.poll.interval.ms 30000", HOLD.as_secs()),
        "missing = messages on the topic - distinct probe ids stored - dead letters; duplicates = rows - distinct probe ids".to_owned(),
        format!("consumer processes started: {}", consumers.starts),
    ];
    drop(farm);
    drop(proxy);
    drop(broker);
    Ok(report)
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// A loopback address no one listens on now, for a listener a child binds.
fn free_port() -> anyhow::Result<std::net::SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr()?)
}

/// The two consumers, as a restart policy keeps them.
struct Consumers<'a> {
    options: &'a Options,
    dir: &'a Path,
    kafka: [String; 4],
    db_url: String,
    procs: Vec<Proc>,
    /// Processes started, restarts included.
    starts: usize,
    /// The highest peak RSS of any consumer process.
    peak_rss: u64,
}

impl Consumers<'_> {
    /// Starts consumer `n` (a static member: `soak-N`), its log numbered by start.
    fn start(&mut self, n: usize) -> anyhow::Result<Proc> {
        self.starts += 1;
        let name = format!("consumer-{n}-{}", self.starts);
        let instance = format!("soak-{n}");
        let mut args: Vec<&str> = self.kafka.iter().map(String::as_str).collect();
        args.extend(["--group-id", "soak", "--group-instance-id", &instance]);
        args.extend(["--log-format", "json"]);
        args.extend(GROUP_TIMEOUTS);
        args.extend([
            "--postgres-url",
            &self.db_url,
            "--postgres-sslmode",
            "disable",
        ]);
        let program = procs::release_binary(&self.options.bin_dir, "consumer")?;
        Proc::spawn(&name, &program, args, &[], self.dir)
    }

    /// SIGKILLs consumer `n` and starts it again at once.
    fn kill_and_restart(&mut self, n: usize) -> anyhow::Result<()> {
        let rss = procs::peak_rss_bytes(self.procs[n].pid())?;
        self.peak_rss = self.peak_rss.max(rss);
        let mut old = self.procs.remove(n);
        old.signal(Signal::KILL)?;
        let _ = old.wait(Duration::from_secs(10))?;
        let new = self.start(n)?;
        self.procs.insert(n, new);
        Ok(())
    }
}

/// Where the soak reads its figures: the topic's offsets and the table.
struct Ledger {
    bootstrap: String,
    db_url: String,
}

/// What PostgreSQL holds.
struct Counts {
    rows: i64,
    distinct: i64,
    dead: i64,
}

impl Ledger {
    /// The topic's (low, high) watermark sums: messages dropped by retention, and produced.
    async fn topic(&self) -> anyhow::Result<(i64, i64)> {
        stack::messages(&self.bootstrap, TOPIC).await
    }

    /// Rows, distinct probe ids and dead letters.
    async fn counts(&self) -> anyhow::Result<Counts> {
        let client = stack::connect(&self.db_url).await?;
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM metrics), \
                        (SELECT count(DISTINCT probe_id) FROM metrics), \
                        (SELECT count(*) FROM dead_letters)",
                &[],
            )
            .await
            .context("cannot count the rows")?;
        Ok(Counts {
            rows: row.get(0),
            distinct: row.get(1),
            dead: row.get(2),
        })
    }

    /// Messages on the topic not yet stored (a row or a dead letter); `None`
    /// while the broker or PostgreSQL does not answer.
    async fn lag(&self) -> Option<i64> {
        let (_, produced) = self.topic().await.ok()?;
        let counts = self.counts().await.ok()?;
        Some(produced - counts.distinct - counts.dead)
    }

    /// When the lag fell under `low` and then stayed there for [`HOLD`];
    /// fails after [`RECOVERY_LIMIT`].
    async fn recovered(&self, what: &str, low: i64) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + RECOVERY_LIMIT;
        let mut since: Option<Instant> = None;
        let mut last = None;
        while Instant::now() < deadline {
            let lag = self.lag().await;
            match lag {
                Some(lag) if lag <= low => {
                    let at = *since.get_or_insert_with(Instant::now);
                    if at.elapsed() >= HOLD {
                        return Ok(at);
                    }
                }
                _ => since = None,
            }
            last = lag;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        bail!("no {what} within {RECOVERY_LIMIT:?}: lag {last:?}, want at most {low}")
    }

    /// Waits until rows and dead letters reach `messages`.
    async fn caught_up(
        &self,
        what: &str,
        messages: i64,
        watched: &mut [Proc],
        within: Duration,
    ) -> anyhow::Result<()> {
        poll_until(what, within, watched, || async {
            // PostgreSQL may still be starting: not yet, rather than an error.
            let Ok(counts) = self.counts().await else {
                return Ok(Progress::Waiting("PostgreSQL not answering".to_owned()));
            };
            let stored = counts.distinct + counts.dead;
            Ok(if stored >= messages {
                Progress::Done
            } else {
                Progress::Waiting(format!("{stored} of {messages} stored"))
            })
        })
        .await
    }
}

/// The `delivered` count of the monitor's "monitor stopped" log line.
fn monitor_published(log: &Path) -> anyhow::Result<i64> {
    let text =
        std::fs::read_to_string(log).with_context(|| format!("cannot read {}", log.display()))?;
    let Some(summary) = text
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|v| v["message"] == "monitor stopped")
    else {
        bail!("no \"monitor stopped\" line in {}", log.display());
    };
    summary["delivered"]
        .as_i64()
        .with_context(|| format!("no delivered count in {summary}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_has_every_fault_once_and_kills_between_them() {
        let plan = plan(42);
        let count = |f: fn(&Event) -> bool| plan.iter().filter(|x| f(x)).count();
        assert_eq!(count(|f| matches!(f, Event::KillConsumer(_))), KILLS);
        assert_eq!(count(|f| *f == Event::RestartPostgres), PG_RESTARTS);
        assert_eq!(count(|f| *f == Event::BrokerOutage), 1);
        assert!(matches!(plan[0], Event::KillConsumer(_)), "{plan:?}");
        assert!(
            plan.windows(2)
                .all(|w| matches!(w[0], Event::KillConsumer(_))
                    || matches!(w[1], Event::KillConsumer(_))),
            "no two other faults in a row: {plan:?}"
        );
        assert_eq!(plan, super::plan(42), "the same seed, the same plan");
    }
}
