//! What the consumer's integration tests share: a real PostgreSQL, librdkafka's
//! mock broker, metrics to publish, a consumer run in-process, and reads of
//! what landed in the tables.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sitewatch_consumer::offsets::Origin;
use sitewatch_consumer::settings::Settings;
use sitewatch_consumer::sink::Row;
use sitewatch_consumer::store::{Store, WritePath};
use sitewatch_consumer::{run, ConsumerError, Summary};
use sitewatch_db::columns;
use sitewatch_db::{PgSettings, SslMode};
use sitewatch_metric::{ErrorKind, Metric, ProbeError, Timings, Verdict};
use sitewatch_pgtest::sql::{client, count, count_once_created};
use sitewatch_pgtest::wait::wait_for;
use sitewatch_pgtest::Postgres;
use sitewatch_service::SecretString;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The topic the tests publish to and the consumer reads.
pub const TOPIC: &str = "metrics";

/// The rows the consumer wrote.
pub const ROWS: &str = "SELECT count(*) FROM metrics";

/// The messages it dead-lettered.
pub const DEAD: &str = "SELECT count(*) FROM dead_letters";

/// A fresh PostgreSQL server for one test.
pub fn postgres() -> Postgres {
    Postgres::start_temp().expect("PostgreSQL starts (scripts/setup.sh installs it)")
}

/// librdkafka's own broker, in this process, with one topic.
pub fn kafka(topic: &str, partitions: i32) -> MockCluster<'static, DefaultProducerContext> {
    sitewatch_broker::in_process(topic, partitions).expect("mock cluster with the topic")
}

/// What a test runs consumers against: a fresh PostgreSQL, the mock cluster
/// with the [`TOPIC`], and the cluster's address.
pub struct Stack {
    pub db: Postgres,
    pub kafka: MockCluster<'static, DefaultProducerContext>,
    pub bootstrap: String,
}

impl Stack {
    /// Starts both, the topic with `partitions` partitions.
    pub fn start(partitions: i32) -> Stack {
        let db = postgres();
        let kafka = kafka(TOPIC, partitions);
        let bootstrap = kafka.bootstrap_servers();
        Stack {
            db,
            kafka,
            bootstrap,
        }
    }

    /// [`settings`] for a consumer of the topic in `group`.
    pub fn settings(&self, group: &str) -> Settings {
        settings(&self.bootstrap, TOPIC, &self.db, group)
    }

    /// A consumer in `group` with the [`Stack::settings`], running in this process.
    pub fn consumer(&self, group: &str) -> Running {
        Running::start(self.settings(group))
    }

    /// [`publish`] to the topic.
    pub async fn publish(&self, metrics: &[Metric]) -> Vec<(Metric, i32, i64)> {
        publish(&self.bootstrap, TOPIC, metrics).await
    }

    /// [`publish_raw`] to the topic.
    pub async fn publish_raw(&self, messages: &[RawMessage]) -> Vec<(i32, i64)> {
        publish_raw(&self.bootstrap, TOPIC, messages).await
    }

    /// [`committed`] for the topic.
    pub fn committed(&self, group: &str, partitions: i32) -> Vec<i64> {
        committed(&self.bootstrap, TOPIC, group, partitions)
    }
}

/// The consumer run in-process on a task of its own, until stopped.
pub struct Running {
    stop: CancellationToken,
    task: JoinHandle<Result<Summary, ConsumerError>>,
}

impl Running {
    /// Starts [`run`] with `settings`.
    pub fn start(settings: Settings) -> Running {
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(settings, stop.clone()));
        Running { stop, task }
    }

    /// Cancels it and returns its summary; panics if it failed.
    pub async fn stop(self) -> Summary {
        self.stop.cancel();
        self.task
            .await
            .expect("consumer task")
            .expect("consumer ran")
    }

    /// What it returns once it stops by itself; panics if it still runs after `within`.
    pub async fn ended(self, within: Duration) -> Result<Summary, ConsumerError> {
        tokio::time::timeout(within, self.task)
            .await
            .expect("the consumer stops by itself")
            .expect("consumer task")
    }
}

/// Waits up to `within` until `sql` counts exactly `n`; a table not made yet counts as empty.
pub async fn wait_count(db: &Postgres, sql: &str, n: i64, within: Duration) {
    wait_for(within, &format!("{n} from `{sql}`"), || async {
        count_once_created(db, sql).await == n
    })
    .await;
}

/// [`wait_count`] of the metrics rows.
pub async fn wait_rows(db: &Postgres, n: i64, within: Duration) {
    wait_count(db, ROWS, n, within).await;
}

/// Waits up to `within` until at least `n` metrics rows are stored, while more keep coming.
pub async fn wait_rows_past(db: &Postgres, n: i64, within: Duration) {
    wait_for(within, &format!("at least {n} rows"), || async {
        count_once_created(db, ROWS).await >= n
    })
    .await;
}

/// The metrics rows stored now.
pub async fn rows(db: &Postgres) -> i64 {
    count(db, ROWS).await
}

/// The dead letters stored now.
pub async fn dead(db: &Postgres) -> i64 {
    count(db, DEAD).await
}

/// Settings reaching the test database at `url`, without TLS.
pub fn pg_settings(url: String) -> PgSettings {
    PgSettings {
        url: Some(SecretString::from(url)),
        sslmode: SslMode::Disable,
        ..PgSettings::default()
    }
}

/// The consumer's store over the test database at `url`, migrated, writing
/// by `path`, with or without state tracking.
pub async fn migrated_store(url: String, path: WritePath, track_state: bool) -> Store {
    let settings = pg_settings(url);
    sitewatch_db::schema::migrate(&settings.connector().expect("connector"))
        .await
        .expect("schema");
    Store::new(
        settings.pool().expect("pool"),
        path,
        Duration::from_secs(30),
        track_state,
    )
}

/// A retention no test metric is old enough for.
pub const RETAIN_ALL: Duration = Duration::from_secs(100 * 366 * 86_400);

/// Consumer settings for tests: short group timeouts (rebalances in ~3 s on the mock, FACTS.md).
pub fn settings(bootstrap: &str, topic: &str, db: &Postgres, group: &str) -> Settings {
    let mut s = kafka_settings(bootstrap, topic, group);
    s.postgres.url = Some(SecretString::from(db.url()));
    s.postgres.sslmode = SslMode::Disable;
    s
}

/// [`settings`] without a database, for a sink of the test's own.
pub fn kafka_settings(bootstrap: &str, topic: &str, group: &str) -> Settings {
    let mut s = Settings {
        group_id: group.to_owned(),
        batch_rows: 200,
        batch_wait: Duration::from_millis(100).into(),
        shutdown_grace: Duration::from_secs(10).into(),
        revoke_drain: Duration::from_secs(3).into(),
        ..Settings::default()
    };
    s.kafka.brokers = bootstrap.to_owned();
    s.kafka.topic = topic.to_owned();
    s.kafka.properties.extend(group_timeouts());
    // The tests' metrics are dated months back; none is to be dropped by age.
    s.retention.metrics = RETAIN_ALL.into();
    s.retention.rollups = RETAIN_ALL.into();
    s
}

/// A Kafka message as a test publishes it: key and payload, either may be absent.
pub type RawMessage = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Group timeouts short enough for a rebalance to finish in seconds.
pub fn group_timeouts() -> Vec<(String, String)> {
    [
        ("session.timeout.ms", "6000"),
        ("heartbeat.interval.ms", "500"),
        ("max.poll.interval.ms", "10000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// A metric with every field set, different for each `i`.
pub fn metric(i: u64, sites: u64) -> Metric {
    let base = DateTime::from_timestamp_micros(
        1_790_000_000_000_000 + i64::try_from(i).expect("small") * 1_000,
    )
    .expect("valid time");
    let site = i % sites;
    let failed = i % 7 == 3;
    let mut metric = Metric {
        probe_id: Uuid::now_v7(),
        url: format!("https://site-{site}.example/health"),
        scheduled_at: base,
        started_at: base + TimeDelta::microseconds(i64::try_from(i % 500).expect("small")),
        lateness_us: i % 500,
        skipped_before: u32::try_from(i % 3).expect("small"),
        timings: Timings {
            dns_us: (i % 2 == 0).then_some(1000 + i),
            connect_us: Some(2000 + i),
            ttfb_us: (!failed).then_some(3000 + i),
            body_us: (!failed).then_some(400 + i),
            total_us: 10_000 + i,
        },
        status: (!failed).then_some(if i % 5 == 0 { 503 } else { 200 }),
        body_bytes: if failed { 0 } else { 1000 + i },
        body_truncated: i % 11 == 0,
        regex: (i % 4 == 0).then(|| "Welcome|ok".to_owned()),
        regex_matched: (i % 4 == 0 && !failed).then_some(i % 8 == 0),
        regex_match: (i % 8 == 0 && !failed).then(|| "Welcome".to_owned()),
        final_url: (!failed).then(|| format!("https://site-{site}.example/health?r={i}")),
        redirects: u32::try_from(i % 2).expect("small"),
        tls_expires_at: (i % 3 == 0)
            .then(|| DateTime::from_timestamp(1_924_992_000, 0).expect("valid")),
        error: failed.then(|| ProbeError {
            kind: ErrorKind::ALL[usize::try_from(i / 7).expect("small") % ErrorKind::ALL.len()],
            message: format!("failure number {i} with 'quotes' and \"double\" and ünïcode"),
        }),
        ..Metric::example()
    };
    metric.verdict = Verdict::default_rule(&metric);
    metric
}

/// Metrics as the consumer reads them, at offsets 0, 1, ... of partition 0.
pub fn batch(metrics: &[Metric]) -> Vec<Row> {
    metrics
        .iter()
        .enumerate()
        .map(|(i, metric)| Row {
            metric: metric.clone(),
            origin: Origin {
                topic: TOPIC.into(),
                partition: 0,
                offset: i64::try_from(i).expect("small"),
            },
            key: None,
            payload: None,
        })
        .collect()
}

/// `n` metrics from [`metric`], spread over `sites` sites.
pub fn metrics(n: u64, sites: u64) -> Vec<Metric> {
    (0..n).map(|i| metric(i, sites)).collect()
}

/// Publishes payloads (with keys) and returns where each landed, in order.
pub async fn publish_raw(bootstrap: &str, topic: &str, messages: &[RawMessage]) -> Vec<(i32, i64)> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let sends = messages.iter().map(|(key, payload)| {
        let producer = producer.clone();
        async move {
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
            if let Some(key) = key {
                record = record.key(key.as_slice());
            }
            if let Some(payload) = payload {
                record = record.payload(payload.as_slice());
            }
            let delivery = producer
                .send(record, Duration::from_secs(10))
                .await
                .expect("delivered");
            (delivery.partition, delivery.offset)
        }
    });
    futures::future::join_all(sends).await
}

/// Publishes metrics keyed by URL; returns each metric with where it landed.
pub async fn publish(bootstrap: &str, topic: &str, metrics: &[Metric]) -> Vec<(Metric, i32, i64)> {
    let raw: Vec<_> = metrics
        .iter()
        .map(|m| (Some(m.key().to_vec()), Some(m.to_json())))
        .collect();
    let positions = publish_raw(bootstrap, topic, &raw).await;
    metrics
        .iter()
        .cloned()
        .zip(positions)
        .map(|(m, (p, o))| (m, p, o))
        .collect()
}

/// Every stored metric with its Kafka origin, by probe id.
pub async fn stored(db: &Postgres) -> HashMap<Uuid, (Metric, Origin)> {
    let client = client(db).await;
    let rows = client
        .query(columns::select(), &[])
        .await
        .expect("select metrics");
    rows.iter()
        .map(|r| {
            let stored = columns::read(r).expect("row decodes");
            let origin = Origin {
                topic: Arc::from(stored.topic),
                partition: stored.partition,
                offset: stored.offset,
            };
            (stored.metric.probe_id, (stored.metric, origin))
        })
        .collect()
}

/// [`stored`], once checked to hold every one of `published`: nothing lost.
pub async fn assert_all_stored(
    db: &Postgres,
    published: &[Metric],
) -> HashMap<Uuid, (Metric, Origin)> {
    let stored = stored(db).await;
    let lost: Vec<Uuid> = published
        .iter()
        .map(|m| m.probe_id)
        .filter(|id| !stored.contains_key(id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} published metrics lost: {lost:?}",
        lost.len(),
        published.len()
    );
    stored
}

/// Every one of `all` is a row, once, and nothing is a dead letter;
/// `context` (the consumers' summaries, say) goes into the failure messages.
pub async fn assert_stored_once(db: &Postgres, all: &[Metric], context: &dyn std::fmt::Debug) {
    let _ = assert_all_stored(db, all).await;
    assert_eq!(
        count(db, "SELECT count(DISTINCT probe_id) FROM metrics").await,
        count(db, ROWS).await,
        "nothing doubled: {context:?}"
    );
    assert_eq!(count(db, DEAD).await, 0, "no dead letter: {context:?}");
}

/// Locks `metrics` in a transaction on `blocker`, as an operator's
/// migration would: writes wait until the transaction ends.
pub async fn lock_metrics(blocker: &mut tokio_postgres::Client) -> tokio_postgres::Transaction<'_> {
    let lock = blocker.transaction().await.expect("transaction");
    lock.batch_execute("LOCK TABLE metrics IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");
    lock
}

/// Waits until a write waits on a lock.
pub async fn wait_for_a_held_write(db: &Postgres) {
    wait_for(
        Duration::from_secs(30),
        "a write waiting on the lock",
        || async {
            count(
                db,
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
            )
            .await
                >= 1
        },
    )
    .await;
}

/// The group's committed offset for each partition (-1001 = none).
pub fn committed(bootstrap: &str, topic: &str, group: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        let _ = list.add_partition_offset(topic, p, Offset::Invalid);
    }
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .expect("committed offsets");
    (0..partitions)
        .map(
            |p| match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => -1001,
            },
        )
        .collect()
}

/// Shared handle for the tests that run the consumer in-process.
pub type Shared<T> = Arc<T>;
