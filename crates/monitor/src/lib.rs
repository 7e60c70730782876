//! `monitor`: probes websites on their own schedules and publishes one
//! versioned JSON metric per probe to Kafka.
//!
//! The parts, in the order a probe meets them: [`targets`] (the site list,
//! each site with its [`check`] options), [`schedule`] (deadlines, spread,
//! the in-flight bound), [`probe`] (one request, timed by phase with
//! [`timing`], judged by its site's checks), [`publish`] (Kafka or stdout). [`reload`]
//! re-reads the list; [`measure`] holds what `/metrics` shows; [`settings`]
//! holds the configuration.

pub mod check;
pub mod measure;
pub mod probe;
pub mod publish;
pub mod reload;
pub mod schedule;
pub mod settings;
pub mod source;
pub mod targets;
pub mod timing;

use std::sync::Arc;

use chrono::TimeDelta;
use sitewatch_metric::Metric;
use sitewatch_service::health::{self, Heartbeat};
use sitewatch_service::observe::{self, Collect, EndpointError, Readiness};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::measure::Measures;
use crate::probe::{ProbeSetupError, Prober};
use crate::publish::{DeliveryReport, PublishSetupError, Sink};
use crate::schedule::{Job, RunJob, ScheduleOptions, ScheduleReport};
use crate::settings::Settings;
use crate::source::TargetSource;
use crate::targets::TargetsError;

/// How long Kafka may take to answer the health check's metadata request.
const KAFKA_ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Why the monitor could not run.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// The site list is missing or has bad rows; nothing was probed or published.
    #[error(transparent)]
    Targets(#[from] TargetsError),
    /// The HTTP client could not be built.
    #[error(transparent)]
    Probe(#[from] ProbeSetupError),
    /// Kafka could not be reached or configured.
    #[error(transparent)]
    Publish(#[from] PublishSetupError),
    /// The HTTP endpoint cannot listen where `http_listen` says.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
}

/// What a run did, for the exit log and the exit code.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// What the schedule did.
    pub schedule: ScheduleReport,
    /// What became of the metrics.
    pub delivery: DeliveryReport,
    /// The producer's fatal error, which stopped the run, if there was one.
    pub fatal: Option<String>,
}

impl RunSummary {
    /// Metrics that were made but not confirmed by the destination.
    pub fn lost(&self) -> u64 {
        self.delivery.failed + self.delivery.pending()
    }
}

/// Probes a job's site and publishes the metric; the in-flight permit is held
/// until the metric is handed over, so a slow Kafka slows probing, not memory.
#[derive(Debug)]
struct ProbeAndPublish {
    prober: Prober,
    sink: Arc<Sink>,
    measures: Arc<Measures>,
}

impl RunJob for ProbeAndPublish {
    async fn run(&self, job: Job, started: Instant) {
        // Debug, not info: a span per probe cost a few percent of the CPU at
        // a thousand probes a second, and what a probe logs at info or above
        // names its site itself.
        let span = tracing::debug_span!("probe", url = %job.target.id);
        async {
            let _busy = self.measures.in_flight();
            let seen = self.prober.probe(&job.target).await;
            if let Some(err) = &seen.error {
                tracing::debug!(kind = %err.kind, message = %err.message, "probe failed");
            }
            // The wall clock is read when the probe starts (a clock step
            // moves only the probes after it); the due time is that, less
            // the lateness measured on the monotonic clock.
            let lateness = started.saturating_duration_since(job.scheduled);
            let metric = Metric {
                scheduled_at: seen.started_at
                    - TimeDelta::from_std(lateness).unwrap_or(TimeDelta::MAX),
                lateness_us: u64::try_from(lateness.as_micros()).unwrap_or(u64::MAX),
                skipped_before: job.skipped_before,
                ..seen
            };
            self.measures.probed(&metric);
            self.sink.publish(&metric).await;
        }
        .instrument(span)
        .await;
    }
}

/// Loads the site list, connects the destination, and probes until `shutdown`
/// (or once, with `once`); then lets probes in flight finish and flushes.
///
/// `sighup` carries reload requests. A bad site list fails here, before
/// anything is published.
pub async fn run(
    settings: Settings,
    shutdown: CancellationToken,
    sighup: mpsc::Receiver<()>,
) -> Result<RunSummary, MonitorError> {
    let Some(spec) = &settings.targets else {
        return Err(TargetsError::Rows(Vec::new()).into());
    };
    // Answers until the run ends, through the final flush.
    let serving = observe::start(settings.health.http_listen.as_deref()).await?;
    let source = TargetSource::from_spec(spec);
    let targets = source.load().await?;
    tracing::info!(source = %source.describe(), sites = targets.len(), "site list loaded");
    let measures = Arc::new(Measures::new(settings.metrics_per_site));
    measures.sites(targets.len());
    let prober = Prober::new(settings.probe.clone())?;
    let sink = Arc::new(Sink::open(&settings.output, &settings).await?);
    let runner = Arc::new(ProbeAndPublish {
        prober,
        sink: Arc::clone(&sink),
        measures: Arc::clone(&measures),
    });
    let (updates_tx, updates) = mpsc::channel(1);
    let reloader = (!settings.once).then(|| {
        tokio::spawn(reload::run(
            source,
            settings.watch_targets,
            settings.targets_refresh.get(),
            sighup,
            updates_tx,
            Arc::clone(&measures),
            shutdown.child_token(),
        ))
    });
    sink.on_fatal(shutdown.clone());
    let readiness: Readiness = {
        let sink = Arc::clone(&sink);
        let limit = settings.health.unhealthy_after.get();
        Arc::new(move || {
            let sink = Arc::clone(&sink);
            Box::pin(async move {
                if !sink.reachable(KAFKA_ANSWER_WITHIN).await {
                    return Err("Kafka does not answer".to_owned());
                }
                match sink.failing_longer_than(limit) {
                    Some(stuck) => Err(format!("deliveries to Kafka have failed for {stuck:?}")),
                    None => Ok(()),
                }
            })
        })
    };
    let collect: Collect = {
        let sink = Arc::clone(&sink);
        Arc::new(move || {
            measures.collect(&sink.report(), sink.queued());
        })
    };
    serving.status.set(Arc::clone(&readiness), collect);
    let health = settings.health.health_file.clone().map(|file| {
        tokio::spawn(health::beat_while(
            Heartbeat::new(file),
            shutdown.child_token(),
            move || readiness(),
        ))
    });
    let options = ScheduleOptions {
        max_in_flight: settings.max_in_flight,
        grace: settings.shutdown_grace.get(),
        once: settings.once,
        slack: settings.schedule_slack.get(),
    };
    // On a worker thread rather than the thread that blocks on `run`: a due
    // probe is then spawned on the worker whose timer fired, instead of the
    // timer waking this thread and this thread waking a worker, two futex
    // round trips per probe.
    let schedule = tokio::spawn(schedule::run(
        targets,
        runner,
        options,
        shutdown.clone(),
        updates,
    ))
    .await
    .unwrap_or_else(|err| match err.try_into_panic() {
        // A bug in the schedule stays as loud as it was on this thread.
        Ok(panic) => std::panic::resume_unwind(panic),
        // Cancelled: only a runtime shutting down does that, and then nothing runs after.
        Err(err) => {
            tracing::error!(error = %err, "the schedule task was cancelled");
            ScheduleReport::default()
        }
    });
    if let Some(reloader) = reloader {
        reloader.abort();
    }
    if let Some(health) = health {
        health.abort();
    }
    tracing::info!(
        probes = schedule.started,
        "schedule stopped; waiting for the last confirmations"
    );
    let delivery = sink.finish(settings.flush_timeout.get()).await;
    let summary = RunSummary {
        schedule,
        delivery,
        fatal: sink.fatal(),
    };
    tracing::info!(
        probes = summary.schedule.started,
        skipped = summary.schedule.skipped,
        abandoned = summary.schedule.abandoned,
        delivered = summary.delivery.delivered,
        failed = summary.delivery.failed,
        unconfirmed = summary.delivery.pending(),
        "monitor stopped"
    );
    Ok(summary)
}
