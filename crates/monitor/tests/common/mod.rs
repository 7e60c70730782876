//! Helpers the monitor's integration tests share: a Kafka protocol peer, a
//! reader of its topic, and a site list on disk.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::{ClientConfig, Message};
use sitewatch_metric::Metric;

/// One message read back from the topic.
#[derive(Debug, Clone)]
pub struct Read {
    pub key: String,
    pub partition: i32,
    pub metric: Metric,
}

/// librdkafka's own mock broker, in this process, with one topic.
pub fn kafka(topic: &str, partitions: i32) -> MockCluster<'static, DefaultProducerContext> {
    sitewatch_broker::in_process(topic, partitions).expect("mock cluster with the topic")
}

/// A temp folder holding the site list `name` with `text`; the folder goes with the guard.
pub fn site_list(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let list = dir.path().join(name);
    std::fs::write(&list, text).expect("write site list");
    (dir, list)
}

/// Reads the topic from the start until `want` messages arrived or `within` passed,
/// then keeps reading briefly so that extra messages would be seen too; on a
/// thread of its own, as the reader blocks.
pub async fn read_topic(bootstrap: &str, topic: &str, want: usize, within: Duration) -> Vec<Read> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || read_topic_blocking(&bootstrap, &topic, want, within))
        .await
        .expect("reader")
}

fn read_topic_blocking(bootstrap: &str, topic: &str, want: usize, within: Duration) -> Vec<Read> {
    let group = format!("reader-{}", uuid::Uuid::now_v7());
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    let mut extra_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now > deadline || extra_until.is_some_and(|t| now > t) {
            break;
        }
        if let Some(msg) = consumer.poll(Duration::from_millis(100)) {
            let msg = msg.expect("message");
            let key = String::from_utf8(msg.key().expect("key").to_vec()).expect("utf8 key");
            let metric = Metric::from_json(msg.payload().expect("payload")).expect("valid metric");
            out.push(Read {
                key,
                partition: msg.partition(),
                metric,
            });
        }
        if out.len() >= want && extra_until.is_none() {
            extra_until = Some(Instant::now() + Duration::from_millis(500));
        }
    }
    out
}

/// Every probe id once, and every one a UUIDv7.
pub fn assert_unique_v7(reads: &[Read]) {
    let ids: HashSet<_> = reads.iter().map(|r| r.metric.probe_id).collect();
    assert_eq!(ids.len(), reads.len(), "probe ids are unique");
    assert!(reads
        .iter()
        .all(|r| r.metric.probe_id.get_version_num() == 7));
}
