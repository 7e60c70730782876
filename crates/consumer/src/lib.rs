//! `consumer`: reads website metrics from Kafka in a consumer group and
//! writes them to PostgreSQL in batches, exactly once per probe.
//!
//! [`consume`] polls the group on its own thread and hands messages to
//! [`batch`], which writes them through [`store`]; [`offsets`] decides which
//! offsets may be stored once their rows are committed.

pub mod batch;
pub mod consume;
pub mod offsets;
pub mod settings;
pub mod store;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use sitewatch_db::PgSettingsError;
use sitewatch_kafka::{broker as kafka, KafkaSettingsError};
use sitewatch_service::health::{self, Heartbeat};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::batch::{BatchOptions, Totals};
use crate::consume::GroupContext;
use crate::settings::Settings;
use crate::store::Store;

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
        source: sitewatch_db::schema::MigrateError,
    },
    /// A part of the consumer failed; what it held is read again by the next consumer.
    #[error("{0}")]
    Stopped(String),
    /// The brokers did not answer in time (unreachable, wrong port, TLS rejected).
    #[error("{message}")]
    Unreachable {
        /// The brokers, how long we waited and what the operator can do
        /// (from librdkafka's last broker error); one string keeps the error small.
        message: String,
        /// librdkafka's reason.
        #[source]
        source: KafkaError,
    },
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

/// What a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Messages handed to the writers.
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

/// Migrates the schema, joins the group, and consumes until `shutdown`.
pub async fn run(
    settings: Settings,
    shutdown: CancellationToken,
) -> Result<Summary, ConsumerError> {
    let connector = settings.postgres.connector()?;
    if !migrate(&settings, &connector, &shutdown).await? {
        return Ok(Summary::default());
    }
    let store = Arc::new(Store::new(settings.postgres.pool()?, settings.write_path));
    tracing::info!(postgres = %settings.postgres.describe(), write_path = ?settings.write_path, "database ready");

    let (ack_tx, ack_rx) = std::sync::mpsc::channel();
    let flush_now = Arc::new(Notify::new());
    let context = GroupContext::new(
        &settings.kafka.topic,
        ack_rx,
        Arc::clone(&flush_now),
        settings.revoke_drain,
    );
    let consumer = group_member(&settings, context)?;
    let kafka_error = |source| ConsumerError::Kafka {
        kafka: settings.kafka.describe(),
        source,
    };
    let consumer = {
        let topic = settings.kafka.topic.clone();
        let timeout = settings.connect_timeout;
        let (consumer, partitions) = tokio::task::spawn_blocking(move || {
            let partitions = kafka::topic_partitions(consumer.client(), &topic, timeout);
            if partitions.is_err() {
                // Error callbacks are served by poll; without it the failure could not say why.
                // Nothing is subscribed yet, so no message can come back.
                let _ = consumer.poll(Duration::from_millis(100));
            }
            (consumer, partitions)
        })
        .await
        .map_err(|_| kafka_error(KafkaError::Canceled))?;
        let partitions = partitions.map_err(|source| ConsumerError::Unreachable {
            message: format!(
                "cannot reach Kafka ({}) within {timeout:?}: {}",
                settings.kafka.describe(),
                kafka::explain_unreachable(
                    &settings.kafka,
                    consumer.context().last_broker_error().as_deref(),
                )
            ),
            source,
        })?;
        match partitions {
            Some(n) => {
                tracing::info!(kafka = %settings.kafka.describe(), partitions = n, group = %settings.group_id, "connected to Kafka")
            }
            None => {
                tracing::warn!(kafka = %settings.kafka.describe(), "topic not found yet; waiting for it to be created")
            }
        }
        consumer
    };
    consumer
        .subscribe(&[&settings.kafka.topic])
        .map_err(kafka_error)?;

    let (records_tx, records_rx) = mpsc::channel(settings.queue_messages);
    let totals = Arc::new(Totals::default());
    let options = BatchOptions {
        max_rows: settings.batch_rows,
        max_wait: settings.batch_wait,
        max_in_flight: settings.writers,
    };
    let writers = tokio::spawn(batch::run(
        records_rx,
        flush_now,
        Arc::clone(&store),
        options,
        ack_tx,
        Arc::clone(&totals),
    ));
    let health = settings.health_file.clone().map(|file| {
        let context = Arc::clone(consumer.context());
        tokio::spawn(beat_while_reachable(
            Heartbeat::new(file),
            context,
            Arc::clone(&store),
            shutdown.clone(),
        ))
    });
    let grace = settings.shutdown_grace;
    let poll_shutdown = shutdown.clone();
    let poll = tokio::task::spawn_blocking(move || {
        consume::run(consumer, records_tx, &poll_shutdown, grace)
    });
    let progress = tokio::spawn(log_progress(Arc::clone(&totals), shutdown.clone()));

    let report = poll.await;
    progress.abort();
    if let Some(health) = health {
        health.abort();
    }
    // Writers that still hold rows after the grace period (PostgreSQL down) are
    // cut off: their offsets were never stored, so the messages are read again.
    let mut writers = writers;
    if tokio::time::timeout(Duration::from_secs(1), &mut writers)
        .await
        .is_err()
    {
        tracing::warn!("writers still busy after the grace period; stopping them without storing their offsets");
        writers.abort();
    }
    let report = report
        .map_err(|err| ConsumerError::Stopped(format!("the Kafka poll loop failed: {err}")))?;
    if report.writers_gone {
        return Err(ConsumerError::Stopped(
            "the writers stopped before the consumer did; unwritten messages keep their offsets"
                .into(),
        ));
    }
    let summary = Summary {
        read: report.handed_over,
        inserted: totals.inserted.load(Ordering::Relaxed),
        duplicates: totals.duplicates.load(Ordering::Relaxed),
        dead_letters: totals.dead_letters.load(Ordering::Relaxed),
        retries: totals.retries.load(Ordering::Relaxed),
        unwritten: report.unwritten_at_exit,
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

/// Beats while the brokers answered recently and PostgreSQL answers now.
async fn beat_while_reachable(
    heartbeat: Heartbeat,
    group: Arc<GroupContext>,
    store: Arc<Store>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(health::BEAT_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let kafka = group.kafka_reachable(health::BEAT_EVERY * 2);
        let postgres = store.ping().await;
        if kafka && postgres {
            heartbeat.beat();
        } else {
            tracing::warn!(kafka, postgres, "not healthy: a dependency does not answer");
        }
    }
}

/// Brings the schema up to date, retrying while the database is not reachable
/// yet; false when shutdown came first.
async fn migrate(
    settings: &Settings,
    connector: &sitewatch_db::Connector,
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
    // fraction of that while catching up: that wait halved the rate at which a
    // backlog reached the table (about 60k instead of 120k rows/s here).
    for (name, value) in [
        ("auto.offset.reset", "earliest"),
        ("queued.max.messages.kbytes", "16384"),
        ("fetch.queue.backoff.ms", "10"),
    ] {
        if !settings.kafka.properties.contains(name) {
            let _ = config.set(name, value);
        }
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
