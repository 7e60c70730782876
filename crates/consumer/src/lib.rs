//! `consumer`: reads website metrics from Kafka in a consumer group and
//! writes them to PostgreSQL in batches, exactly once per probe.
//!
//! The data path, in order: [`consume`] polls the group on its own thread
//! and sends what happens (messages, assignments, revocations) as events on
//! one bounded channel to the [`pipeline`], which [`decode`]s each message,
//! gathers [`batch`]es, [`write`]s them through a [`sink::Sink`] (PostgreSQL
//! is [`store`]) and, through [`offsets`], stores an offset only once every
//! message before it in its partition is written. [`measure`] holds what
//! `/metrics` shows.

pub mod alert;
pub mod batch;
pub mod consume;
pub mod decode;
pub mod measure;
pub mod offsets;
pub mod pipeline;
pub mod retention;
pub mod rollup;
pub mod settings;
pub mod sink;
pub mod store;
pub mod write;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use sitewatch_db::schema::MigrateError;
use sitewatch_db::{Connector, PgSettingsError};
use sitewatch_kafka::{broker, KafkaSettingsError, Unreachable};
use sitewatch_service::health::{self, Heartbeat};
use sitewatch_service::observe::{self, Collect, EndpointError, Readiness, Status};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::batch::BatchPolicy;
use crate::consume::{GroupContext, GroupOffsets};
use crate::pipeline::PipelineOptions;
use crate::settings::Settings;
use crate::sink::Sink;
use crate::store::Store;
use crate::write::{RetryPolicy, Totals};

/// How long the pipeline may outlive the grace period before it is cut off.
const PIPELINE_EXIT_MARGIN: Duration = Duration::from_secs(1);

/// Why the consumer could not run.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// Kafka settings unusable.
    #[error(transparent)]
    KafkaSettings(#[from] KafkaSettingsError),
    /// PostgreSQL settings unusable.
    #[error(transparent)]
    PgSettings(#[from] PgSettingsError),
    /// The schema could not be brought up to date.
    #[error("cannot prepare the database ({postgres}): {source}")]
    Migrate {
        /// Safe description of the connection.
        postgres: String,
        /// Why.
        #[source]
        source: MigrateError,
    },
    /// A part of the consumer failed; what it held is read again by the next consumer.
    #[error("{0}")]
    Stopped(String),
    /// The webhooks cannot be used: a bad one in `alert.webhooks`, or an
    /// HTTP client that cannot be built.
    #[error(transparent)]
    Alerts(#[from] alert::send::SenderError),
    /// The HTTP endpoint cannot listen where `http_listen` says.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The brokers did not answer in time (unreachable, wrong port, TLS rejected).
    #[error(transparent)]
    Unreachable(Box<Unreachable>),
    /// librdkafka refused the configuration or the brokers did not answer.
    #[error("Kafka ({kafka}): {source}; check the brokers, the network and the TLS files (librdkafka's log above says more)")]
    Kafka {
        /// Safe description of the settings.
        kafka: String,
        /// librdkafka's reason.
        #[source]
        source: KafkaError,
    },
}

impl From<Unreachable> for ConsumerError {
    fn from(err: Unreachable) -> Self {
        ConsumerError::Unreachable(Box::new(err))
    }
}

/// What a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Messages taken from Kafka into batches.
    pub read: u64,
    /// New rows in `metrics`.
    pub inserted: u64,
    /// Redelivered messages already stored.
    pub duplicates: u64,
    /// Messages stored as dead letters.
    pub dead_letters: u64,
    /// Transient write failures retried.
    pub retries: u64,
    /// Messages read but not written when the grace period ended (read again by the next consumer).
    pub unwritten: u64,
}

/// Migrates the schema, joins the group, and consumes into PostgreSQL until `shutdown`.
pub async fn run(
    settings: Settings,
    shutdown: CancellationToken,
) -> Result<Summary, ConsumerError> {
    let connector = settings.postgres.connector()?;
    // Answers from the start, through migrations, until the run ends.
    let serving = observe::start(settings.health.http_listen.as_deref()).await?;
    if !migrate(&settings, &connector, &shutdown).await? {
        return Ok(Summary::default());
    }
    let mut store = Store::new(
        settings.postgres.pool()?,
        settings.write_path,
        settings.write_timeout.get(),
        settings.track_state,
    )
    .partitioned_by(settings.retention.partition.get());
    let webhooks = settings
        .alert
        .webhooks()
        .map_err(alert::send::SenderError::Settings)?;
    let sender = if webhooks.is_empty() {
        None
    } else {
        let sender = alert::send::Sender::new(connector.clone(), &settings.alert)?;
        let ids: Vec<&str> = webhooks.as_slice().iter().map(alert::Webhook::id).collect();
        tracing::info!(webhooks = ?ids, "alerts: notifying webhooks of sites going down and up");
        let status_page = settings
            .alert
            .status_page()
            .map_err(alert::send::SenderError::Settings)?;
        store = store.alerting(alert::outbox::Outbox::new(webhooks.clone(), status_page));
        // Stops when the consumer does, whatever the reason, after the send under way.
        let stop = shutdown.child_token();
        Some((stop.clone(), tokio::spawn(sender.run(stop))))
    };
    tracing::info!(postgres = %settings.postgres.describe(), write_path = ?settings.write_path, track_state = settings.track_state, "database ready");
    let retention = {
        let stop = shutdown.child_token();
        let task = retention::Retention::new(connector.clone(), settings.retention.clone());
        (stop.clone(), tokio::spawn(task.run(stop)))
    };
    let consumed = consume(&settings, Arc::new(store), shutdown, &serving.status).await;
    let (stop, task) = retention;
    stop.cancel();
    if tokio::time::timeout(retention::RETENTION_EXIT, task)
        .await
        .is_err()
    {
        tracing::warn!("retention: the pass did not finish in time; each of its steps is done or not, and the next pass goes on");
    }
    if let Some((stop, task)) = sender {
        stop.cancel();
        let bound = settings.alert.timeout.get() + PIPELINE_EXIT_MARGIN;
        if tokio::time::timeout(bound, task).await.is_err() {
            tracing::warn!("alerts: the sender did not finish its last send in time; the notification is sent again by the next consumer");
        }
    }
    consumed
}

/// Joins the group and consumes into `sink` until `shutdown`: the Kafka side
/// of [`run`], with any sink.
pub async fn consume_into<S: Sink>(
    settings: &Settings,
    sink: Arc<S>,
    shutdown: CancellationToken,
) -> Result<Summary, ConsumerError> {
    let serving = observe::start(settings.health.http_listen.as_deref()).await?;
    consume(settings, sink, shutdown, &serving.status).await
}

async fn consume<S: Sink>(
    settings: &Settings,
    sink: Arc<S>,
    shutdown: CancellationToken,
    status: &Status,
) -> Result<Summary, ConsumerError> {
    let (events_tx, events) = mpsc::channel(settings.queue_messages);
    let context = GroupContext::new(
        &settings.kafka.topic,
        events_tx,
        u32::try_from(settings.queue_bytes).unwrap_or(u32::MAX),
        settings.revoke_drain.get(),
    );
    let consumer = Arc::new(group_member(settings, context)?);
    let partitions = {
        let member = Arc::clone(&consumer);
        let topic = settings.kafka.topic.clone();
        broker::check_reachable(
            &settings.kafka,
            consumer.context().errors(),
            settings.connect_timeout.get(),
            move |timeout| {
                let partitions = broker::topic_partitions(member.client(), &topic, timeout);
                if partitions.is_err() {
                    // Error callbacks are served by poll; without it the failure could not say why.
                    // Nothing is subscribed yet, so no message can come back.
                    let _ = member.poll(Duration::from_millis(100));
                }
                partitions
            },
        )
        .await?
    };
    match partitions {
        Some(n) => {
            tracing::info!(kafka = %settings.kafka.describe(), partitions = n, group = %settings.group_id, "connected to Kafka")
        }
        None => {
            tracing::warn!(kafka = %settings.kafka.describe(), "topic not found yet; waiting for it to be created")
        }
    }
    consumer
        .subscribe(&[&settings.kafka.topic])
        .map_err(|source| ConsumerError::Kafka {
            kafka: settings.kafka.describe(),
            source,
        })?;

    let totals = Arc::new(Totals::default());
    let options = PipelineOptions {
        batch: BatchPolicy {
            max_rows: settings.batch_rows,
            max_bytes: settings.batch_bytes,
            max_wait: settings.batch_wait.get(),
        },
        writers: settings.writers,
        revoke_drain: settings.revoke_drain.get(),
        shutdown_grace: settings.shutdown_grace.get(),
        retry: RetryPolicy {
            unknown_attempts: settings.unknown_error_attempts,
        },
    };
    let (finished_tx, finished) = std::sync::mpsc::channel();
    let pipeline = tokio::spawn(pipeline::run(
        events,
        Arc::clone(&sink),
        GroupOffsets::new(&consumer),
        options,
        Arc::clone(&totals),
        shutdown.clone(),
        finished_tx,
    ));
    let progress = Progress {
        group: Arc::clone(consumer.context()),
        sink: Arc::clone(&sink),
        totals: Arc::clone(&totals),
        limit: settings.health.unhealthy_after.get(),
    };
    let readiness: Readiness = Arc::new(move || Box::pin(progress.clone().verdict()));
    measure::describe();
    let collect: Collect = {
        let (totals, group, sink) = (
            Arc::clone(&totals),
            Arc::clone(consumer.context()),
            Arc::clone(&sink),
        );
        Arc::new(move || {
            measure::totals(&totals);
            group.collect();
            sink.collect();
        })
    };
    status.set(Arc::clone(&readiness), collect);
    let health = settings.health.health_file.clone().map(|file| {
        tokio::spawn(health::beat_while(
            Heartbeat::new(file),
            shutdown.clone(),
            move || readiness(),
        ))
    });
    let grace = settings.shutdown_grace;
    let pump_shutdown = shutdown.clone();
    let pump = tokio::task::spawn_blocking(move || {
        consume::run(consumer, &pump_shutdown, grace.get(), &finished)
    });
    let progress = tokio::spawn(log_progress(Arc::clone(&totals), shutdown.clone()));

    let pumped = pump.await;
    progress.abort();
    if let Some(health) = health {
        health.abort();
    }
    // Writes still running after the grace period (PostgreSQL down) are cut
    // off: their offsets were never stored, so the messages are read again.
    let mut pipeline = pipeline;
    let piped = match tokio::time::timeout(PIPELINE_EXIT_MARGIN, &mut pipeline).await {
        Ok(joined) => joined.ok(),
        Err(_) => {
            tracing::warn!("writers still busy after the grace period; stopping them without storing their offsets");
            pipeline.abort();
            None
        }
    };
    let pumped = pumped
        .map_err(|err| ConsumerError::Stopped(format!("the Kafka poll loop failed: {err}")))?;
    if let Some(stop) = piped.as_ref().and_then(|report| report.stopped.clone()) {
        return Err(ConsumerError::Stopped(stop.to_string()));
    }
    if let Some(fatal) = pumped.fatal {
        return Err(ConsumerError::Stopped(format!(
            "fatal Kafka consumer error: {fatal}; what was written keeps its rows, the rest is read again by the group (check that no two consumers share a group.instance.id)"
        )));
    }
    if pumped.pipeline_gone {
        return Err(ConsumerError::Stopped(
            "the writers stopped before the consumer did; unwritten messages keep their offsets"
                .into(),
        ));
    }
    let summary = Summary {
        read: totals.read.load(Ordering::Relaxed),
        inserted: totals.inserted.load(Ordering::Relaxed),
        duplicates: totals.duplicates.load(Ordering::Relaxed),
        dead_letters: totals.dead_letters.load(Ordering::Relaxed),
        retries: totals.retries.load(Ordering::Relaxed),
        unwritten: piped.map_or(0, |report| report.unwritten),
    };
    tracing::info!(
        read = summary.read,
        inserted = summary.inserted,
        duplicates = summary.duplicates,
        dead_letters = summary.dead_letters,
        unwritten = summary.unwritten,
        "consumer stopped"
    );
    Ok(summary)
}

/// How long the health check waits for PostgreSQL to answer `SELECT 1`.
const PING_WITHIN: Duration = Duration::from_secs(5);

/// What the health check looks at: the consumer is ready while the brokers
/// answer, the sink answers, and it makes progress.
struct Progress<S> {
    group: Arc<GroupContext>,
    sink: Arc<S>,
    totals: Arc<Totals>,
    limit: Duration,
}

impl<S> Clone for Progress<S> {
    fn clone(&self) -> Self {
        Progress {
            group: Arc::clone(&self.group),
            sink: Arc::clone(&self.sink),
            totals: Arc::clone(&self.totals),
            limit: self.limit,
        }
    }
}

impl<S: Sink> Progress<S> {
    /// Ready, or why not, in words for the health file.
    async fn verdict(self) -> Result<(), String> {
        if !self.group.kafka_reachable(health::BEAT_EVERY * 2) {
            return Err("Kafka does not answer".into());
        }
        // A pooled connection whose peer vanished (a network cut) hangs
        // until the kernel gives up on it; the verdict must not wait as long.
        if !matches!(
            tokio::time::timeout(PING_WITHIN, self.sink.ping()).await,
            Ok(true)
        ) {
            return Err(format!(
                "PostgreSQL does not answer (within {PING_WITHIN:?})"
            ));
        }
        if let Some(stuck) = self.totals.failing.longer_than(self.limit) {
            return Err(format!("writes to PostgreSQL have failed for {stuck:?}"));
        }
        if let Some(stuck) = self.totals.held.longer_than(self.limit) {
            return Err(format!(
                "messages have been held for {stuck:?} without an offset moving"
            ));
        }
        Ok(())
    }
}

/// Brings the schema up to date, retrying while the database is not reachable
/// yet; false when shutdown came first.
async fn migrate(
    settings: &Settings,
    connector: &Connector,
    shutdown: &CancellationToken,
) -> Result<bool, ConsumerError> {
    let mut backoff = Duration::from_millis(200);
    loop {
        let result = tokio::select! {
            result = sitewatch_db::schema::migrate(connector) => result,
            () = shutdown.cancelled() => return Ok(false),
        };
        match result {
            Ok(()) => return Ok(true),
            // A wrong password or a missing database will not fix itself: say so and stop.
            Err(err) if err.is_transient() && !err.is_refused_login() => {
                tracing::warn!(postgres = %settings.postgres.describe(), error = %err, retry_in = ?backoff, "database not ready");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => return Ok(false),
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(source) => {
                return Err(ConsumerError::Migrate {
                    postgres: settings.postgres.describe(),
                    source,
                })
            }
        }
    }
}

fn group_member(
    settings: &Settings,
    context: GroupContext,
) -> Result<BaseConsumer<GroupContext>, ConsumerError> {
    let mut config = settings.kafka.client_config()?;
    let commit_ms = settings.commit_interval.as_millis().to_string();
    // Offsets are stored by hand after their rows commit; librdkafka commits
    // what is stored, periodically. The operator's properties still win.
    // When its fetch queue is full, librdkafka waits fetch.queue.backoff.ms
    // (1 s by default) before fetching again, although the queue drains in a
    // fraction of that while catching up: that wait halved the rate at which
    // a backlog reached the table.
    for (name, value) in [
        ("auto.offset.reset", "earliest"),
        ("queued.max.messages.kbytes", "16384"),
        ("fetch.queue.backoff.ms", "10"),
        // The broker metrics and each partition's lag come from librdkafka's statistics.
        (
            "statistics.interval.ms",
            sitewatch_kafka::stats::STATISTICS_INTERVAL_MS,
        ),
    ] {
        if !settings.kafka.properties.contains(name) {
            let _ = config.set(name, value);
        }
    }
    if let Some(instance) = &settings.group_instance_id {
        let _ = config.set("group.instance.id", instance_id(instance));
    }
    let _ = config
        .set("group.id", &settings.group_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.commit.interval.ms", commit_ms)
        .set("enable.partition.eof", "false");
    config
        .create_with_context(context)
        .map_err(|source| ConsumerError::Kafka {
            kafka: settings.kafka.describe(),
            source,
        })
}

/// The static member id `setting` names: itself, or for `hostname` the host's
/// name (a container's, which survives a restart of the container).
fn instance_id(setting: &str) -> String {
    if setting != "hostname" {
        return setting.to_owned();
    }
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| setting.to_owned())
}

/// Every 30 s, what was written; silent when nothing was.
async fn log_progress(totals: Arc<Totals>, shutdown: CancellationToken) {
    let mut last = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let inserted = totals.inserted.load(Ordering::Relaxed);
        if inserted != last {
            tracing::info!(
                inserted,
                duplicates = totals.duplicates.load(Ordering::Relaxed),
                dead_letters = totals.dead_letters.load(Ordering::Relaxed),
                "progress"
            );
            last = inserted;
        }
    }
}
