//! rdkafka clients for the tests: produce a few messages, read them back, fetch metadata.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeSet;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use tokio::time::Instant;

/// The settings every client gets: `bootstrap` plus `extra` (TLS, say).
pub fn config(bootstrap: &str, extra: &[(&str, &str)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for (key, value) in extra {
        config.set(*key, *value);
    }
    config
}

/// Sends `payloads` to `topic` and waits for each delivery.
pub async fn produce(config: &ClientConfig, topic: &str, payloads: &[String]) {
    let producer: FutureProducer = config
        .clone()
        .set("message.timeout.ms", "10000")
        .create()
        .expect("producer");
    for (i, payload) in payloads.iter().enumerate() {
        let key = i.to_string();
        producer
            .send(
                FutureRecord::to(topic).key(&key).payload(payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(err, _)| err)
            .expect("delivery");
    }
}

/// Reads `topic` from the start in consumer group `group` until every one of
/// `payloads` has arrived, or panics at `deadline`.
pub async fn consume(
    config: &ClientConfig,
    topic: &str,
    group: &str,
    payloads: &[String],
    deadline: Duration,
) {
    let consumer: StreamConsumer = config
        .clone()
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        // Short group timeouts: the mock's rebalances follow them (FACTS.md).
        .set("session.timeout.ms", "6000")
        .set("max.poll.interval.ms", "8000")
        .set("heartbeat.interval.ms", "500")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut missing: BTreeSet<&str> = payloads.iter().map(String::as_str).collect();
    let end = Instant::now() + deadline;
    while !missing.is_empty() {
        let message = tokio::time::timeout_at(end, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("still missing after {deadline:?}: {missing:?}"))
            .expect("message");
        let payload = message
            .payload_view::<str>()
            .and_then(Result::ok)
            .unwrap_or_default()
            .to_owned();
        missing.remove(payload.as_str());
    }
}

/// Produces `n` distinct [`payloads`] to `topic` and reads every one back in
/// consumer group `group`, or panics after 30 s.
pub async fn round_trip(config: &ClientConfig, topic: &str, group: &str, n: usize) {
    let sent = payloads(n);
    produce(config, topic, &sent).await;
    consume(config, topic, group, &sent, Duration::from_secs(30)).await;
}

/// The brokers (`host:port`) the cluster's metadata names, as a client bootstrapping
/// with `config` sees them.
pub async fn metadata_brokers(
    config: &ClientConfig,
    timeout: Duration,
) -> Result<Vec<String>, String> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = config.create().map_err(|e| e.to_string())?;
        let metadata = client
            .fetch_metadata(None, timeout)
            .map_err(|e| e.to_string())?;
        Ok(metadata
            .brokers()
            .iter()
            .map(|b| format!("{}:{}", b.host(), b.port()))
            .collect())
    })
    .await
    .expect("metadata task")
}

/// `n` distinct payloads.
pub fn payloads(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("message {i}")).collect()
}
