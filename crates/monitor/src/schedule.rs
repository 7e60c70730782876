//! When each site is probed: every `interval` from fixed deadlines, first
//! probes spread over the interval, never two probes of one site at once,
//! and at most `max_in_flight` probes running across all sites.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::StreamExt;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::time::{delay_queue, DelayQueue};

use crate::targets::Target;

/// One probe the schedule asks for.
#[derive(Debug, Clone)]
pub struct Job {
    /// The site.
    pub target: Arc<Target>,
    /// The deadline this probe was due at.
    pub scheduled: Instant,
    /// Deadlines skipped just before this one because the previous probe was still running.
    pub skipped_before: u32,
}

/// What runs a due probe (the real prober and publisher, or a test double).
pub trait RunJob: Send + Sync + 'static {
    /// Runs `job`, which the in-flight bound let start at `started`.
    fn run(&self, job: Job, started: Instant) -> impl Future<Output = ()> + Send;
}

/// How the schedule runs.
#[derive(Debug, Clone)]
pub struct ScheduleOptions {
    /// Probes running at once, across all sites.
    pub max_in_flight: usize,
    /// After shutdown, how long probes already running may take to finish.
    pub grace: Duration,
    /// Probe every site once, now, then return.
    pub once: bool,
    /// Deadlines are served in batches this far apart (zero: each at its own
    /// instant). A timer wake-up per deadline costs a context switch or two,
    /// which at a thousand probes a second is a large share of the CPU.
    pub slack: Duration,
}

/// What happened while the schedule ran.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScheduleReport {
    /// Probes that started.
    pub started: u64,
    /// Deadlines skipped because the site's previous probe was still running.
    pub skipped: u64,
    /// Probes still running when the grace period ended, and so cut off.
    pub abandoned: u64,
}

struct Site {
    target: Arc<Target>,
    /// The entry in the deadline queue; absent while `once` has nothing more to schedule.
    key: Option<delay_queue::Key>,
    next: Instant,
    last_scheduled: Option<Instant>,
    skipped: u32,
}

/// Offset of a site's first probe within its interval, stable for a URL so
/// that restarts and reloads keep the load spread the same way.
pub fn spread_offset(url: &str, interval: Duration) -> Duration {
    let mut hasher = DefaultHasher::new();
    url.hash(&mut hasher);
    let nanos = interval.as_nanos().max(1);
    let offset = u128::from(hasher.finish()) % nanos;
    Duration::from_nanos(u64::try_from(offset).unwrap_or(u64::MAX))
}

/// The schedule's state: sites, their deadlines, and the probes running.
struct Schedule<R> {
    sites: HashMap<Arc<str>, Site>,
    deadlines: DelayQueue<Arc<str>>,
    running: JoinSet<Arc<str>>,
    /// Sites with a probe running, by URL: kept apart from `sites` so that a
    /// site removed and added back while its probe runs still waits for it.
    busy: HashSet<Arc<str>>,
    permits: Arc<Semaphore>,
    runner: Arc<R>,
    stop_waiting: CancellationToken,
    options: ScheduleOptions,
    report: ScheduleReport,
    epoch: Instant,
}

/// Runs the schedule until `shutdown` (or, with `once`, until every site was probed).
///
/// New target lists arrive on `updates`, already validated: added sites
/// start, removed ones stop, changed ones apply from their next probe.
pub async fn run<R: RunJob>(
    targets: Vec<Target>,
    runner: Arc<R>,
    options: ScheduleOptions,
    shutdown: CancellationToken,
    mut updates: mpsc::Receiver<Vec<Target>>,
) -> ScheduleReport {
    let mut schedule = Schedule {
        sites: HashMap::new(),
        deadlines: DelayQueue::new(),
        running: JoinSet::new(),
        busy: HashSet::new(),
        permits: Arc::new(Semaphore::new(options.max_in_flight.max(1))),
        runner,
        stop_waiting: shutdown.child_token(),
        options,
        report: ScheduleReport::default(),
        epoch: Instant::now(),
    };
    let now = Instant::now();
    for target in targets {
        schedule.add(target, now);
    }
    tracing::info!(sites = schedule.sites.len(), "schedule started");
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(done) = schedule.running.join_next() => schedule.finished(done),
            Some(due) = schedule.deadlines.next() => schedule.due(due.into_inner()),
            Some(list) = updates.recv(), if !schedule.options.once => schedule.replace(list),
            else => break,
        }
        if schedule.options.once && schedule.running.is_empty() && schedule.deadlines.is_empty() {
            break;
        }
    }
    schedule.drain().await
}

impl<R: RunJob> Schedule<R> {
    fn wake_at(&self, deadline: Instant) -> Instant {
        wake_at(self.epoch, self.options.slack, deadline)
    }

    fn add(&mut self, target: Target, now: Instant) {
        let url: Arc<str> = Arc::from(target.id.as_str());
        let first = if self.options.once {
            now
        } else {
            now + spread_offset(&url, target.interval)
        };
        let key = self
            .deadlines
            .insert_at(Arc::clone(&url), self.wake_at(first));
        let site = Site {
            target: Arc::new(target),
            key: Some(key),
            next: first,
            last_scheduled: None,
            skipped: 0,
        };
        let _ = self.sites.insert(url, site);
    }

    fn due(&mut self, url: Arc<str>) {
        let Some(site) = self.sites.get_mut(&url) else {
            return;
        };
        let deadline = site.next;
        let interval = site.target.interval;
        if self.busy.contains(&url) {
            site.skipped += 1;
            self.report.skipped += 1;
            tracing::debug!(url = %url, interval = ?interval, "previous probe still running: deadline skipped");
        } else {
            let job = Job {
                target: Arc::clone(&site.target),
                scheduled: deadline,
                skipped_before: std::mem::take(&mut site.skipped),
            };
            let _ = self.busy.insert(Arc::clone(&url));
            site.last_scheduled = Some(deadline);
            self.report.started += 1;
            spawn_probe(
                &mut self.running,
                &self.permits,
                &self.runner,
                &self.stop_waiting,
                job,
                Arc::clone(&url),
            );
        }
        if self.options.once {
            site.key = None;
            return;
        }
        // Deadlines follow from the first one, not from when the probe ran, so
        // they never drift; whole intervals the process slept through are skipped.
        let mut next = deadline + interval;
        let now = Instant::now();
        if next + interval <= now {
            let behind = (now - next).as_nanos() / interval.as_nanos().max(1);
            let behind32 = u32::try_from(behind).unwrap_or(u32::MAX);
            site.skipped = site.skipped.saturating_add(behind32);
            self.report.skipped += u64::from(behind32);
            next += interval.saturating_mul(behind32);
        }
        site.next = next;
        let wake = wake_at(self.epoch, self.options.slack, next);
        site.key = Some(self.deadlines.insert_at(url, wake));
    }

    fn finished(&mut self, done: Result<Arc<str>, tokio::task::JoinError>) {
        match done {
            Ok(url) => {
                let _ = self.busy.remove(&url);
            }
            // Probes catch their own panics, so only a cancelled task ends here.
            Err(err) => tracing::error!(error = %err, "a probe task was cancelled"),
        }
    }

    fn replace(&mut self, list: Vec<Target>) {
        let now = Instant::now();
        let mut wanted: HashMap<Arc<str>, Target> = list
            .into_iter()
            .map(|t| (Arc::from(t.id.as_str()), t))
            .collect();
        let (mut added, mut removed, mut changed) = (0usize, 0usize, 0usize);
        let urls: Vec<Arc<str>> = self.sites.keys().cloned().collect();
        for url in urls {
            match wanted.remove(&url) {
                None => {
                    if let Some(site) = self.sites.remove(&url) {
                        if let Some(key) = site.key {
                            let _ = self.deadlines.remove(&key);
                        }
                    }
                    removed += 1;
                }
                Some(target) => {
                    let Some(site) = self.sites.get_mut(&url) else {
                        continue;
                    };
                    if *site.target == target {
                        continue;
                    }
                    changed += 1;
                    if site.target.interval != target.interval {
                        let next = match site.last_scheduled {
                            Some(last) => (last + target.interval).max(now),
                            None => now + spread_offset(&url, target.interval),
                        };
                        site.next = next;
                        if let Some(key) = &site.key {
                            self.deadlines
                                .reset_at(key, wake_at(self.epoch, self.options.slack, next));
                        }
                    }
                    site.target = Arc::new(target);
                }
            }
        }
        for (_, target) in wanted {
            self.add(target, now);
            added += 1;
        }
        tracing::info!(
            added,
            removed,
            changed,
            sites = self.sites.len(),
            "target list reloaded"
        );
    }

    async fn drain(mut self) -> ScheduleReport {
        self.stop_waiting.cancel();
        let running = self.running.len();
        if running > 0 {
            tracing::info!(running, grace = ?self.options.grace, "waiting for probes in flight");
        }
        let wait_all = async { while self.running.join_next().await.is_some() {} };
        if tokio::time::timeout(self.options.grace, wait_all)
            .await
            .is_err()
        {
            let left = self.running.len();
            self.report.abandoned = left as u64;
            tracing::warn!(
                abandoned = left,
                "grace period over: probes still running are cut off and not published"
            );
            self.running.abort_all();
            while self.running.join_next().await.is_some() {}
        }
        self.report
    }
}

/// When to serve `deadline`: rounded up to the next multiple of `slack` after
/// `epoch`, so that deadlines in one slot share one wake-up. The job keeps its
/// true deadline, so the wait shows in its metric's lateness.
fn wake_at(epoch: Instant, slack: Duration, deadline: Instant) -> Instant {
    let slack_ns = slack.as_nanos();
    if slack_ns == 0 {
        return deadline;
    }
    let since = deadline.saturating_duration_since(epoch).as_nanos();
    let rounded = since.div_ceil(slack_ns) * slack_ns;
    epoch + Duration::from_nanos(u64::try_from(rounded).unwrap_or(u64::MAX))
}

/// Starts one probe as a task; it waits for an in-flight permit first.
fn spawn_probe<R: RunJob>(
    running: &mut JoinSet<Arc<str>>,
    permits: &Arc<Semaphore>,
    runner: &Arc<R>,
    stop_waiting: &CancellationToken,
    job: Job,
    url: Arc<str>,
) {
    let permits = Arc::clone(permits);
    let runner = Arc::clone(runner);
    let stop_waiting = stop_waiting.clone();
    let _ = running.spawn(async move {
        // A probe held back by the bound does not start after shutdown;
        // one that started is let finish.
        let permit = tokio::select! {
            permit = permits.acquire_owned() => permit,
            () = stop_waiting.cancelled() => return url,
        };
        let started = Instant::now();
        // A probe that panics (a bug) loses that one metric, not its site:
        // the task still returns the URL, so the site is free for its next deadline.
        let ran = AssertUnwindSafe(runner.run(job, started)).catch_unwind().await;
        if ran.is_err() {
            tracing::error!(url = %url, "a probe panicked; the site is probed again at its next deadline");
        }
        drop(permit);
        url
    });
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::targets::parse_url;

    /// Records when each probe started and takes a set time.
    #[derive(Default)]
    struct Recorder {
        runs: Mutex<Vec<(String, Instant, Instant, u32)>>,
        takes: Mutex<HashMap<String, Duration>>,
        running: Mutex<HashMap<String, u32>>,
        overlaps: Mutex<u32>,
    }

    impl RunJob for Recorder {
        async fn run(&self, job: Job, started: Instant) {
            let url = job.target.id.clone();
            let takes = self
                .takes
                .lock()
                .expect("lock")
                .get(&url)
                .copied()
                .unwrap_or_default();
            {
                let mut running = self.running.lock().expect("lock");
                let n = running.entry(url.clone()).or_default();
                *n += 1;
                if *n > 1 {
                    *self.overlaps.lock().expect("lock") += 1;
                }
            }
            self.runs.lock().expect("lock").push((
                url.clone(),
                job.scheduled,
                started,
                job.skipped_before,
            ));
            tokio::time::sleep(takes).await;
            *self.running.lock().expect("lock").entry(url).or_default() -= 1;
        }
    }

    impl Recorder {
        /// A recorder whose probes of the listed URLs take the time listed (others none).
        fn taking(takes: &[(&str, Duration)]) -> Arc<Recorder> {
            let recorder = Recorder::default();
            recorder
                .takes
                .lock()
                .expect("lock")
                .extend(takes.iter().map(|(url, time)| ((*url).to_owned(), *time)));
            Arc::new(recorder)
        }

        /// Every run so far: URL, deadline, start, deadlines skipped before it.
        fn runs(&self) -> Vec<(String, Instant, Instant, u32)> {
            self.runs.lock().expect("lock").clone()
        }

        /// No two probes of one site ever ran at once.
        fn assert_no_overlaps(&self) {
            assert_eq!(
                *self.overlaps.lock().expect("lock"),
                0,
                "two probes of one site ran at once"
            );
        }

        fn starts_of(&self, url: &str) -> Vec<Instant> {
            self.runs
                .lock()
                .expect("lock")
                .iter()
                .filter(|r| r.0 == url)
                .map(|r| r.2)
                .collect()
        }
    }

    fn target(url: &str, secs: f64) -> Target {
        let url = parse_url(url).expect("url");
        Target {
            id: url.to_string(),
            url,
            interval: Duration::from_secs_f64(secs),
            regex: None,
            timeout: None,
            checks: Default::default(),
        }
    }

    /// The sites `s0.example` to `s{n-1}.example`, each probed every `secs` seconds.
    fn sites(n: usize, secs: f64) -> Vec<Target> {
        (0..n)
            .map(|i| target(&format!("s{i}.example"), secs))
            .collect()
    }

    fn options() -> ScheduleOptions {
        ScheduleOptions {
            max_in_flight: 100,
            grace: Duration::from_secs(5),
            once: false,
            slack: Duration::ZERO,
        }
    }

    struct Running {
        shutdown: CancellationToken,
        updates: mpsc::Sender<Vec<Target>>,
        handle: tokio::task::JoinHandle<ScheduleReport>,
    }

    /// The schedule of `targets` on a task of its own, with `runner` running the probes.
    fn start<R: RunJob>(
        targets: Vec<Target>,
        runner: &Arc<R>,
        options: ScheduleOptions,
    ) -> Running {
        let shutdown = CancellationToken::new();
        let (updates, rx) = mpsc::channel(1);
        let handle = tokio::spawn(run(
            targets,
            Arc::clone(runner),
            options,
            shutdown.clone(),
            rx,
        ));
        Running {
            shutdown,
            updates,
            handle,
        }
    }

    impl Running {
        /// Hands the schedule a new site list, as a reload does.
        async fn reload(&self, targets: Vec<Target>) {
            self.updates.send(targets).await.expect("send");
        }

        async fn stop(self) -> ScheduleReport {
            self.shutdown.cancel();
            self.handle.await.expect("schedule task")
        }
    }

    #[tokio::test(start_paused = true)]
    async fn probes_follow_deadlines_without_drift() {
        // Each probe takes 300 ms; with deadlines from the start this adds no drift.
        let recorder = Recorder::taking(&[("https://a.example/", Duration::from_millis(300))]);
        let t0 = Instant::now();
        let running = start(vec![target("a.example", 10.0)], &recorder, options());
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let report = running.stop().await;
        let starts = recorder.starts_of("https://a.example/");
        assert!(
            (360..=361).contains(&starts.len()),
            "{} probes in an hour",
            starts.len()
        );
        let first = starts[0] - t0;
        assert!(
            first < Duration::from_secs(10),
            "first probe within one interval: {first:?}"
        );
        for (i, s) in starts.iter().enumerate() {
            let expected = starts[0] + Duration::from_secs(10) * u32::try_from(i).expect("small");
            assert_eq!(*s, expected, "probe {i} started off its deadline");
        }
        assert_eq!(report.skipped, 0);
    }

    /// Panics on the first probe of every site, then behaves.
    #[derive(Default)]
    struct PanicsOnce {
        seen: Mutex<HashMap<String, u32>>,
    }

    impl RunJob for PanicsOnce {
        async fn run(&self, job: Job, _started: Instant) {
            let n = {
                let mut seen = self.seen.lock().expect("lock");
                let n = seen.entry(job.target.id.clone()).or_default();
                *n += 1;
                *n
            };
            assert!(n > 1, "a bug in the first probe of {}", job.target.id);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_panics_keeps_its_site_on_the_schedule() {
        let runner = Arc::new(PanicsOnce::default());
        let running = start(vec![target("http://a.example/", 1.0)], &runner, options());
        tokio::time::sleep(Duration::from_millis(3500)).await;
        let report = running.stop().await;
        let probes = runner.seen.lock().expect("lock")["http://a.example/"];
        assert!(
            probes >= 3,
            "probed again after the panic: {probes} probes, {report:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn first_probes_spread_over_the_interval() {
        let recorder = Arc::new(Recorder::default());
        let t0 = Instant::now();
        let running = start(sites(1000, 60.0), &recorder, options());
        tokio::time::sleep(Duration::from_secs(60)).await;
        let _ = running.stop().await;
        let runs = recorder.runs();
        assert_eq!(
            runs.len(),
            1000,
            "every site probed once in its first interval"
        );
        // Ten 6-second slices of the interval each hold roughly a tenth of the first probes.
        let mut slices = [0u32; 10];
        for r in &runs {
            let slice = ((r.2 - t0).as_secs() / 6).min(9) as usize;
            slices[slice] += 1;
        }
        for (i, n) in slices.iter().enumerate() {
            assert!(
                (50..=150).contains(n),
                "slice {i} has {n} of 1000 first probes: {slices:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_probe_is_never_stacked_and_the_skip_is_recorded() {
        let recorder = Recorder::taking(&[("https://slow.example/", Duration::from_millis(2500))]);
        let running = start(vec![target("slow.example", 1.0)], &recorder, options());
        tokio::time::sleep(Duration::from_secs(30)).await;
        let report = running.stop().await;
        recorder.assert_no_overlaps();
        let runs = recorder.runs();
        // A 2.5 s probe every 1 s: each run covers three deadlines, two of them skipped.
        assert!(runs.len() >= 9, "{} runs", runs.len());
        assert!(
            runs.iter().skip(1).all(|r| r.3 == 2),
            "skips recorded: {:?}",
            runs.iter().map(|r| r.3).collect::<Vec<_>>()
        );
        assert!(report.skipped >= 18, "{report:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_in_flight_bound_holds_probes_back_and_lateness_shows() {
        let urls: Vec<String> = (0..4).map(|i| format!("https://b{i}.example/")).collect();
        let takes: Vec<(&str, Duration)> = urls
            .iter()
            .map(|url| (url.as_str(), Duration::from_secs(1)))
            .collect();
        let recorder = Recorder::taking(&takes);
        let targets = urls.iter().map(|url| target(url, 3600.0)).collect();
        let opts = ScheduleOptions {
            max_in_flight: 1,
            once: true,
            ..options()
        };
        let t0 = Instant::now();
        let running = start(targets, &recorder, opts);
        let report = running.handle.await.expect("once ends by itself");
        assert_eq!(report.started, 4);
        let mut lateness: Vec<Duration> = recorder.runs().iter().map(|r| r.2 - r.1).collect();
        lateness.sort();
        let secs: Vec<u64> = lateness.iter().map(Duration::as_secs).collect();
        assert_eq!(
            secs,
            vec![0, 1, 2, 3],
            "one at a time, each later by one probe"
        );
        assert_eq!(Instant::now() - t0, Duration::from_secs(4));
    }

    #[tokio::test(start_paused = true)]
    async fn reload_adds_removes_and_changes_intervals() {
        let recorder = Arc::new(Recorder::default());
        let running = start(
            vec![target("keep.example", 10.0), target("gone.example", 10.0)],
            &recorder,
            options(),
        );
        tokio::time::sleep(Duration::from_secs(25)).await;
        running
            .reload(vec![
                target("keep.example", 2.0),
                target("new.example", 10.0),
            ])
            .await;
        let reload_at = Instant::now();
        tokio::time::sleep(Duration::from_secs(60)).await;
        let _ = running.stop().await;
        let gone_after = recorder
            .starts_of("https://gone.example/")
            .into_iter()
            .filter(|s| *s > reload_at)
            .count();
        assert_eq!(gone_after, 0, "a removed site is not probed again");
        let new = recorder.starts_of("https://new.example/");
        assert!(
            (6..=7).contains(&new.len()),
            "added site probed every 10 s: {}",
            new.len()
        );
        let keep: Vec<Instant> = recorder
            .starts_of("https://keep.example/")
            .into_iter()
            .filter(|s| *s > reload_at)
            .collect();
        assert!(
            keep.len() >= 29,
            "new 2 s interval applies from the next probe: {}",
            keep.len()
        );
        assert!(keep
            .windows(2)
            .all(|w| w[1] - w[0] == Duration::from_secs(2)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_site_removed_and_added_back_waits_for_its_running_probe() {
        let recorder = Recorder::taking(&[("https://slow.example/", Duration::from_secs(5))]);
        let running = start(vec![target("slow.example", 1.0)], &recorder, options());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // Gone and back while its first probe still runs.
        running.reload(vec![target("other.example", 60.0)]).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        running.reload(vec![target("slow.example", 1.0)]).await;
        tokio::time::sleep(Duration::from_secs(20)).await;
        let _ = running.stop().await;
        recorder.assert_no_overlaps();
        assert!(recorder.starts_of("https://slow.example/").len() >= 3);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_lets_running_probes_finish_within_grace() {
        let recorder = Recorder::taking(&[
            ("https://a.example/", Duration::from_secs(3)),
            ("https://b.example/", Duration::from_secs(30)),
        ]);
        let opts = ScheduleOptions {
            once: true,
            ..options()
        };
        let running = start(
            vec![target("a.example", 60.0), target("b.example", 60.0)],
            &recorder,
            opts,
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        let stop_at = Instant::now();
        let report = running.stop().await;
        assert_eq!(report.started, 2);
        assert_eq!(report.abandoned, 1, "the 30 s probe outlives the 5 s grace");
        assert_eq!(Instant::now() - stop_at, Duration::from_secs(5));
    }

    #[test]
    fn wake_ups_round_up_to_the_slack() {
        let epoch = Instant::now();
        let ms = Duration::from_millis;
        let slack = ms(5);
        assert_eq!(wake_at(epoch, slack, epoch), epoch);
        assert_eq!(wake_at(epoch, slack, epoch + ms(1)), epoch + ms(5));
        assert_eq!(wake_at(epoch, slack, epoch + ms(5)), epoch + ms(5));
        assert_eq!(
            wake_at(epoch, slack, epoch + Duration::from_micros(5_001)),
            epoch + ms(10)
        );
        assert_eq!(wake_at(epoch, Duration::ZERO, epoch + ms(3)), epoch + ms(3));
    }

    #[tokio::test(start_paused = true)]
    async fn with_slack_probes_start_late_by_less_than_it_and_never_drift() {
        let recorder = Arc::new(Recorder::default());
        let opts = ScheduleOptions {
            slack: Duration::from_millis(10),
            ..options()
        };
        let running = start(sites(50, 1.0), &recorder, opts);
        tokio::time::sleep(Duration::from_secs(20)).await;
        let report = running.stop().await;
        let runs = recorder.runs();
        assert!(runs.len() >= 50 * 19, "{} runs", runs.len());
        for (url, scheduled, started, skipped) in &runs {
            let late = *started - *scheduled;
            assert!(late < Duration::from_millis(10), "{url} {late:?} late");
            assert_eq!(*skipped, 0);
        }
        // Fifty deadlines spread over a second share at most a hundred 10 ms slots.
        let wakes: HashSet<Instant> = runs.iter().map(|r| r.2).collect();
        assert!(
            wakes.len() <= 20 * 100,
            "{} distinct start instants",
            wakes.len()
        );
        for url in ["https://s0.example/", "https://s7.example/"] {
            let scheduled: Vec<Instant> = runs.iter().filter(|r| r.0 == url).map(|r| r.1).collect();
            assert!(scheduled
                .windows(2)
                .all(|w| w[1] - w[0] == Duration::from_secs(1)));
        }
        assert_eq!(report.skipped, 0);
    }

    #[test]
    fn spread_offset_stays_within_the_interval() {
        for i in 0..100 {
            let d = spread_offset(&format!("https://s{i}.example/"), Duration::from_secs(5));
            assert!(d < Duration::from_secs(5));
        }
        assert_eq!(spread_offset("x", Duration::ZERO), Duration::ZERO);
    }
}
