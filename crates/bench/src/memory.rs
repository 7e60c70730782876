//! Memory bounded in bytes (`bench --scenario memory`, not part of the quick
//! or full set): one `consumer` release binary drains a topic of metrics of
//! about 1 MB each into a durable PostgreSQL, once with the default
//! read-ahead and batch budgets and once with small ones, and its peak RSS
//! is read from /proc each time. Each message carries an error message far
//! past the field limits the monitor keeps, so each becomes a dead letter
//! holding its whole payload: the consumer's largest unit of work.

use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use sitewatch_metric::{ErrorKind, Metric, ProbeError};
use uuid::Uuid;

use crate::procs;
use crate::report::{Figure, ScenarioReport};
use crate::stack::{self, poll_until, Broker, Progress, Store};
use crate::Options;

/// The topic the scenario fills.
const TOPIC: &str = "bench-memory";
/// Messages on it.
const MESSAGES: usize = 256;
/// Partitions: four messages each (sent to each in turn), within the 5 MB
/// the mock broker keeps of one.
const PARTITIONS: i32 = 64;
/// Bytes of each message's oversized field.
const MESSAGE_BYTES: usize = 1_000_000;

/// The budgets tried: the defaults, then small ones.
const BUDGETS: [(&str, Option<[&str; 4]>); 2] = [
    (
        "default budgets (queue_bytes 64 MiB, batch_bytes 16 MiB)",
        None,
    ),
    (
        "queue_bytes 8 MiB, batch_bytes 4 MiB",
        Some(["--queue-bytes", "8388608", "--batch-bytes", "4194304"]),
    ),
];

/// Runs the scenario and reports the consumer's peak RSS per budget.
pub async fn run(options: &Options) -> anyhow::Result<ScenarioReport> {
    let store = Store::start(options, "memory")?;
    let broker = Broker::start(&options.bin_dir, &store.dir, TOPIC, PARTITIONS)?;
    produce(broker.bootstrap.clone()).await?;
    let kept = broker.messages().await?;
    anyhow::ensure!(
        kept == (0, i64::try_from(MESSAGES)?),
        "the broker kept offsets {}..{} of the {MESSAGES} messages",
        kept.0,
        kept.1
    );
    let mut report = ScenarioReport::new("memory");
    for (run, (name, flags)) in BUDGETS.iter().enumerate() {
        let db = store.database(run)?;
        let group = format!("memory-{run}");
        let started = Instant::now();
        let mut consumer = stack::start_consumer(
            options,
            &broker,
            &group,
            &db.url,
            flags.as_ref().map_or(&[][..], |f| &f[..]),
            &store.dir,
        )?;
        let client = stack::connect(&db.url).await?;
        poll_until(
            "every message a dead letter",
            Duration::from_secs(300),
            std::slice::from_mut(&mut consumer),
            || async {
                let dead: i64 = match client
                    .query_one("SELECT count(*) FROM dead_letters", &[])
                    .await
                {
                    Ok(row) => row.get(0),
                    // The consumer has not made the table yet.
                    Err(_) => 0,
                };
                Ok(if dead >= i64::try_from(MESSAGES)? {
                    Progress::Done
                } else {
                    Progress::Waiting(format!("{dead} of {MESSAGES} stored"))
                })
            },
        )
        .await?;
        let took = started.elapsed();
        let rss = procs::peak_rss_bytes(consumer.pid())?;
        consumer.stop_ok(Duration::from_secs(30))?;
        eprintln!(
            "bench: memory: {name}: peak RSS {:.0} MB, {MESSAGES} messages in {:.1} s",
            rss as f64 / 1e6,
            took.as_secs_f64()
        );
        report.figures.push(Figure::new(
            format!("consumer peak RSS, 1 MB messages, {name}"),
            rss as f64 / 1e6,
            "MB",
        ));
    }
    report.notes = vec![
        format!(
            "{MESSAGES} messages of {} MB each ({PARTITIONS} partitions), each a metric whose error message is {MESSAGE_BYTES} bytes, past the field limits, so each is a dead letter holding its payload; one consumer with its defaults otherwise, peak RSS (VmHWM) once all are stored; librdkafka's own prefetch (queued.max.messages.kbytes, which the consumer sets to 16 MB) comes on top of the consumer's budgets",
            MESSAGE_BYTES / 1_000_000
        ),
    ];
    Ok(report)
}

/// Fills the topic with [`MESSAGES`] metrics of about [`MESSAGE_BYTES`] each.
async fn produce(bootstrap: String) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("message.max.bytes", "2000000")
            .create()
            .context("cannot create the producer")?;
        for i in 0..MESSAGES {
            let mut metric = Metric::example();
            metric.probe_id = Uuid::now_v7();
            metric.url = format!("https://big-{i}.example/");
            metric.error = Some(ProbeError {
                kind: ErrorKind::Other,
                message: "x".repeat(MESSAGE_BYTES),
            });
            let payload = metric.to_json();
            let key = metric.url.clone();
            let partition = i32::try_from(i)? % PARTITIONS;
            let record = BaseRecord::to(TOPIC)
                .key(&key)
                .payload(&payload)
                .partition(partition);
            stack::send(&producer, record)?;
            producer.poll(Duration::ZERO);
        }
        producer
            .flush(Duration::from_secs(120))
            .context("the broker did not confirm every message")
    })
    .await
    .context("the producer task failed")?
}
