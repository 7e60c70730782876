//! Where metrics go: a Kafka topic (keyed by site URL, acks=all, idempotent),
//! or standard output as JSON lines.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::util::Timeout;
use rdkafka::Message;
use sitewatch_kafka::{broker, BrokerErrors, KafkaSettings, KafkaSettingsError, Unreachable};
use sitewatch_metric::Metric;
use sitewatch_service::health::Stall;
use tokio_util::sync::CancellationToken;

use crate::settings::{Output, Settings};

/// How long to wait before retrying when the producer queue is full.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(5);

/// Why the publisher could not start.
#[derive(Debug, thiserror::Error)]
pub enum PublishSetupError {
    /// The Kafka settings are unusable.
    #[error(transparent)]
    Settings(#[from] KafkaSettingsError),
    /// librdkafka refused the configuration (a bad property, unreadable TLS material).
    #[error("cannot create the Kafka producer ({kafka}): {source}")]
    Producer {
        /// Safe description of the settings.
        kafka: String,
        /// librdkafka's reason.
        #[source]
        source: KafkaError,
    },
    /// The brokers did not answer in time (unreachable, wrong port, TLS rejected).
    #[error(transparent)]
    Unreachable(#[from] Unreachable),
}

/// A metric that could not be handed to Kafka at all.
#[derive(Debug, thiserror::Error)]
#[error("metric of {url} not published: {source}")]
pub struct PublishError {
    url: String,
    #[source]
    source: KafkaError,
}

/// Counts of what happened to published metrics.
#[derive(Debug, Default)]
pub struct DeliveryCounts {
    enqueued: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
}

/// A point-in-time copy of [`DeliveryCounts`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Handed to the producer (or written to stdout).
    pub enqueued: u64,
    /// Confirmed by the brokers (or written to stdout).
    pub delivered: u64,
    /// Given up on by librdkafka after its retries, or refused at enqueue.
    pub failed: u64,
}

impl DeliveryReport {
    /// Metrics whose fate is not known yet.
    pub fn pending(&self) -> u64 {
        self.enqueued.saturating_sub(self.delivered + self.failed)
    }
}

/// The counts of two outputs together.
impl std::ops::Add for DeliveryReport {
    type Output = DeliveryReport;

    fn add(self, other: DeliveryReport) -> DeliveryReport {
        DeliveryReport {
            enqueued: self.enqueued + other.enqueued,
            delivered: self.delivered + other.delivered,
            failed: self.failed + other.failed,
        }
    }
}

impl DeliveryCounts {
    fn report(&self) -> DeliveryReport {
        DeliveryReport {
            enqueued: self.enqueued.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// How often the producer is asked whether it hit a fatal error.
const FATAL_CHECK_EVERY: Duration = Duration::from_millis(500);

/// Reports `producer`'s fatal error to `errors`, if it has one; true if so.
fn check_fatal(producer: &ThreadedProducer<DeliveryContext>, errors: &BrokerErrors) -> bool {
    match producer.client().fatal_error() {
        Some((code, reason)) => {
            errors.raise_fatal(&format!("{reason} ({code:?})"));
            true
        }
        None => false,
    }
}

/// librdkafka callbacks: delivery reports are counted, failures logged with their site.
#[derive(Debug, Clone)]
pub struct DeliveryContext {
    counts: Arc<DeliveryCounts>,
    errors: Arc<BrokerErrors>,
    failing: Arc<Stall>,
}

sitewatch_kafka::forward_client_context!(DeliveryContext, errors);

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _opaque: ()) {
        match result {
            Ok(_) => {
                let _ = self.counts.delivered.fetch_add(1, Ordering::Relaxed);
                self.failing.moving();
            }
            Err((err, message)) => {
                let _ = self.counts.failed.fetch_add(1, Ordering::Relaxed);
                self.failing.stuck();
                let url = message
                    .key()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                tracing::error!(
                    url = %url,
                    error = %err,
                    "metric lost: Kafka did not confirm it after librdkafka's retries (message.timeout.ms); check broker health"
                );
            }
        }
    }
}

/// Where metrics go: Kafka, standard output, or both (every metric to each).
#[derive(Debug, Default)]
pub struct Sink {
    kafka: Option<KafkaSink>,
    stdout: Option<StdoutSink>,
}

/// Publishes to Kafka through librdkafka's bounded queue.
pub struct KafkaSink {
    producer: ThreadedProducer<DeliveryContext>,
    topic: String,
    counts: Arc<DeliveryCounts>,
    errors: Arc<BrokerErrors>,
    failing: Arc<Stall>,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// Writes each metric as one JSON line.
#[derive(Debug, Default)]
pub struct StdoutSink {
    counts: DeliveryCounts,
}

impl KafkaSink {
    /// Creates the producer and checks the brokers answer within `connect_timeout`.
    ///
    /// `queue_messages` bounds the messages waiting in the producer.
    pub async fn connect(
        settings: &KafkaSettings,
        queue_messages: usize,
        connect_timeout: Duration,
    ) -> Result<KafkaSink, PublishSetupError> {
        let mut config = settings.client_config()?;
        // Defaults that make delivery safe; the operator's properties still win.
        for (name, value) in [
            ("acks", "all"),
            ("enable.idempotence", "true"),
            ("compression.type", "lz4"),
            // librdkafka wakes its broker thread for the first message of each
            // batch; a longer linger than its 5 ms default makes fewer, larger
            // batches, so fewer context switches and less CPU per probe (see
            // BENCHMARKS.md), for at most this much more on the way to Kafka.
            ("linger.ms", "50"),
            // The broker metrics and the consumer's lag come from librdkafka's statistics.
            (
                "statistics.interval.ms",
                sitewatch_kafka::stats::STATISTICS_INTERVAL_MS,
            ),
        ] {
            if !settings.properties.contains(name) {
                let _ = config.set(name, value);
            }
        }
        let _ = config.set("queue.buffering.max.messages", queue_messages.to_string());
        let counts = Arc::new(DeliveryCounts::default());
        let errors = Arc::new(BrokerErrors::default());
        let failing = Arc::new(Stall::default());
        let context = DeliveryContext {
            counts: Arc::clone(&counts),
            errors: Arc::clone(&errors),
            failing: Arc::clone(&failing),
        };
        let producer: ThreadedProducer<DeliveryContext> = config
            .create_with_context(context)
            .map_err(|source| PublishSetupError::Producer {
                kafka: settings.describe(),
                source,
            })?;
        let sink = KafkaSink {
            producer,
            topic: settings.topic.clone(),
            counts,
            errors: Arc::clone(&errors),
            failing,
        };
        let topic = sink.topic.clone();
        let producer = sink.producer.clone();
        let partitions =
            broker::check_reachable(settings, &errors, connect_timeout, move |timeout| {
                broker::topic_partitions(producer.client(), &topic, timeout)
            })
            .await?;
        match partitions {
            Some(partitions) => {
                tracing::info!(kafka = %settings.describe(), partitions, "connected to Kafka");
            }
            None => tracing::warn!(
                kafka = %settings.describe(),
                "topic not found in the brokers' metadata; publishing relies on auto-creation"
            ),
        }
        Ok(sink)
    }

    /// Watches for a fatal error until `token` is cancelled: a monitor whose
    /// sites are probed hourly must not wait for its next send to find out.
    fn watch_fatal(&self, token: CancellationToken) {
        let producer = self.producer.clone();
        let errors = Arc::clone(&self.errors);
        drop(tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = token.cancelled() => return,
                    () = tokio::time::sleep(FATAL_CHECK_EVERY) => {
                        if check_fatal(&producer, &errors) {
                            return;
                        }
                    }
                }
            }
        }));
    }

    async fn publish(&self, metric: &Metric) -> Result<(), PublishError> {
        let payload = metric.to_json();
        loop {
            let record = BaseRecord::to(&self.topic)
                .key(metric.key())
                .payload(&payload);
            match self.producer.send(record) {
                Ok(()) => {
                    let _ = self.counts.enqueued.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                // The queue is bounded: the probe waits here instead of memory growing.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                }
                Err((source, _)) => {
                    let _ = check_fatal(&self.producer, &self.errors);
                    let _ = self.counts.enqueued.fetch_add(1, Ordering::Relaxed);
                    let _ = self.counts.failed.fetch_add(1, Ordering::Relaxed);
                    self.failing.stuck();
                    return Err(PublishError {
                        url: metric.url.clone(),
                        source,
                    });
                }
            }
        }
    }

    async fn flush(&self, timeout: Duration) -> DeliveryReport {
        let producer = self.producer.clone();
        let flushed =
            tokio::task::spawn_blocking(move || producer.flush(Timeout::After(timeout))).await;
        let report = self.counts.report();
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::error!(
                error = %err,
                pending = report.pending(),
                "Kafka did not confirm every metric before the flush timeout; those metrics may be lost"
            ),
            Err(err) => tracing::error!(error = %err, "flush task failed"),
        }
        report
    }
}

impl StdoutSink {
    fn publish(&self, metric: &Metric) -> Result<(), std::io::Error> {
        let mut line = metric.to_json();
        line.push(b'\n');
        let mut out = std::io::stdout().lock();
        out.write_all(&line)?;
        out.flush()?;
        let _ = self.counts.enqueued.fetch_add(1, Ordering::Relaxed);
        let _ = self.counts.delivered.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl Sink {
    /// Opens the outputs asked for, connecting to Kafka if it is one of them.
    pub async fn open(outputs: &[Output], settings: &Settings) -> Result<Sink, PublishSetupError> {
        let kafka = if outputs.contains(&Output::Kafka) {
            Some(
                KafkaSink::connect(
                    &settings.kafka,
                    settings.producer_queue,
                    settings.connect_timeout.get(),
                )
                .await?,
            )
        } else {
            None
        };
        let stdout = outputs.contains(&Output::Stdout).then(StdoutSink::default);
        Ok(Sink { kafka, stdout })
    }

    /// Publishes one metric to every output, waiting while Kafka's queue is full.
    pub async fn publish(&self, metric: &Metric) {
        if let Some(stdout) = &self.stdout {
            if let Err(err) = stdout.publish(metric) {
                tracing::error!(error = %err, url = %metric.url, "metric not written to stdout");
            }
        }
        if let Some(kafka) = &self.kafka {
            if let Err(err) = kafka.publish(metric).await {
                tracing::error!(error = %err, "metric lost");
            }
        }
    }

    /// Whether the outputs can take metrics now: Kafka answers a metadata request within `timeout`.
    pub async fn reachable(&self, timeout: Duration) -> bool {
        let Some(kafka) = &self.kafka else {
            return true;
        };
        let producer = kafka.producer.clone();
        let topic = kafka.topic.clone();
        tokio::task::spawn_blocking(move || {
            broker::topic_partitions(producer.client(), &topic, timeout).is_ok()
        })
        .await
        .unwrap_or(false)
    }

    /// The counts so far over all outputs, without waiting for anything.
    pub fn report(&self) -> DeliveryReport {
        let kafka = self.kafka.as_ref().map(|k| k.counts.report());
        self.stdout_report() + kafka.unwrap_or_default()
    }

    /// Metrics in the producer's queue that Kafka has not confirmed yet.
    pub fn queued(&self) -> Option<usize> {
        let kafka = self.kafka.as_ref()?;
        usize::try_from(kafka.producer.in_flight_count()).ok()
    }

    fn stdout_report(&self) -> DeliveryReport {
        self.stdout
            .as_ref()
            .map(|s| s.counts.report())
            .unwrap_or_default()
    }

    /// How long deliveries to Kafka have kept failing, if longer than `limit`.
    pub fn failing_longer_than(&self, limit: Duration) -> Option<Duration> {
        self.kafka
            .as_ref()
            .and_then(|kafka| kafka.failing.longer_than(limit))
    }

    /// Cancels `token` if the producer hits a fatal error, so that the monitor stops.
    pub fn on_fatal(&self, token: CancellationToken) {
        if let Some(kafka) = &self.kafka {
            kafka.errors.on_fatal(token.clone());
            kafka.watch_fatal(token);
        }
    }

    /// The producer's fatal error, if one happened.
    pub fn fatal(&self) -> Option<String> {
        self.kafka.as_ref().and_then(|kafka| kafka.errors.fatal())
    }

    /// Waits until every published metric is confirmed or `timeout` passes; counts over all outputs.
    pub async fn finish(&self, timeout: Duration) -> DeliveryReport {
        let kafka = match &self.kafka {
            Some(kafka) => kafka.flush(timeout).await,
            None => DeliveryReport::default(),
        };
        self.stdout_report() + kafka
    }
}
