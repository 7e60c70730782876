//! `kafka-admin`: the two things the compose file asks of Kafka's own tools,
//! for the image that stands in for Kafka in tests: see that the topic is
//! there (`kafka-topics.sh --create`; librdkafka's mock broker does not take
//! CreateTopics, so the stand-in creates the topic at start) and check the
//! broker answers (`kafka-broker-api-versions.sh`). The stand-in image puts
//! shims by those names in /opt/kafka/bin that call this. The compose test
//! also counts the topic's messages and publishes messages that are not
//! metrics through it.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

/// Topic creation and a liveness check against a Kafka-protocol broker.
#[derive(Debug, Parser)]
#[command(name = "kafka-admin", version)]
struct Cli {
    /// Bootstrap servers
    #[arg(long, value_name = "HOST:PORT")]
    bootstrap_server: String,
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Wait until the topic exists with at least this many partitions
    WaitTopic {
        /// Topic name
        #[arg(long)]
        topic: String,
        /// Partitions
        #[arg(long, default_value_t = 1)]
        partitions: usize,
    },
    /// Exit 0 when the broker answers a metadata request
    Ping,
    /// Print the number of messages ever published to the topic (the sum of its partitions' high watermarks)
    Messages {
        /// Topic name
        #[arg(long)]
        topic: String,
    },
    /// Publish COUNT messages of BYTES bytes each that are not metrics (each
    /// one a dead letter to the consumer), to the partitions in turn; exits
    /// once the broker confirmed every one
    Produce {
        /// Topic name
        #[arg(long)]
        topic: String,
        /// How many messages
        #[arg(long)]
        count: usize,
        /// Size of each message
        #[arg(long)]
        bytes: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kafka-admin: error: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let mut config = ClientConfig::new();
    let _ = config.set("bootstrap.servers", &cli.bootstrap_server);
    match &cli.action {
        Action::Ping => {
            let admin: AdminClient<DefaultClientContext> =
                config.create().context("cannot create a client")?;
            let _ = admin
                .inner()
                .fetch_metadata(None, Duration::from_secs(5))
                .with_context(|| format!("{} does not answer", cli.bootstrap_server))?;
            Ok(())
        }
        Action::Messages { topic } => {
            let consumer: rdkafka::consumer::BaseConsumer =
                config.create().context("cannot create a client")?;
            let metadata = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(5))
                .with_context(|| format!("{} does not answer", cli.bootstrap_server))?;
            let partitions = metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .map(|t| t.partitions().len())
                .unwrap_or(0);
            // High watermarks, not high minus low: librdkafka's mock broker
            // drops a partition's oldest messages past a few MB, and the
            // count is of messages ever published.
            let mut total = 0i64;
            for p in 0..partitions {
                let (_, high) = consumer
                    .fetch_watermarks(
                        topic,
                        i32::try_from(p).unwrap_or(i32::MAX),
                        Duration::from_secs(5),
                    )
                    .with_context(|| format!("no watermarks for partition {p}"))?;
                total += high;
            }
            let mut out = std::io::stdout().lock();
            writeln!(out, "{total}").context("cannot write to stdout")?;
            Ok(())
        }
        Action::Produce {
            topic,
            count,
            bytes,
        } => {
            let producer: BaseProducer = config
                .set("message.max.bytes", (bytes + 4096).to_string())
                .set("acks", "all")
                .create()
                .context("cannot create a producer")?;
            let partitions = producer
                .client()
                .fetch_metadata(Some(topic), Duration::from_secs(5))
                .with_context(|| format!("{} does not answer", cli.bootstrap_server))?
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .map_or(0, |t| t.partitions().len());
            if partitions == 0 {
                bail!("topic {topic} not found");
            }
            let payload = vec![b'x'; *bytes];
            for i in 0..*count {
                let key = format!("not-a-metric-{i}");
                // In turn, so that no partition holds more than its share.
                let partition = i32::try_from(i % partitions).unwrap_or(0);
                producer
                    .send(
                        BaseRecord::to(topic)
                            .key(&key)
                            .payload(&payload)
                            .partition(partition),
                    )
                    .map_err(|(err, _)| err)
                    .with_context(|| format!("cannot queue message {i}"))?;
            }
            producer
                .flush(Duration::from_secs(30))
                .context("the broker did not confirm every message within 30 s")?;
            eprintln!("kafka-admin: {count} messages of {bytes} bytes on {topic}");
            Ok(())
        }
        Action::WaitTopic { topic, partitions } => {
            let admin: AdminClient<DefaultClientContext> =
                config.create().context("cannot create a client")?;
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let found = admin
                    .inner()
                    .fetch_metadata(Some(topic), Duration::from_secs(5))
                    .ok()
                    .and_then(|m| {
                        m.topics()
                            .iter()
                            .find(|t| t.name() == topic && t.error().is_none())
                            .map(|t| t.partitions().len())
                    });
                match found {
                    Some(n) if n >= *partitions => {
                        eprintln!("kafka-admin: topic {topic} has {n} partitions");
                        return Ok(());
                    }
                    _ if Instant::now() > deadline => bail!(
                        "topic {topic} with {partitions} partitions did not appear within 60 s"
                    ),
                    _ => std::thread::sleep(Duration::from_millis(500)),
                }
            }
        }
    }
}
