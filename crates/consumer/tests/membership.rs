//! Static membership: a consumer restarted with the same `group.instance.id`
//! gets its partitions back, and while it is away nobody else takes them
//! (no group-wide rebalance). Each member writes into a sink of its own that
//! remembers which partition every message came from.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sitewatch_consumer::sink::{DeadLetter, Fault, Row, Sink, SinkError, Written};
use sitewatch_consumer::{ConsumerError, Summary};
use sitewatch_metric::Metric;
use sitewatch_pgtest::wait::wait_for;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const TOPIC: &str = "metrics";

/// The sink never fails; its error type only satisfies the trait.
#[derive(Debug, thiserror::Error)]
#[error("never happens")]
struct Never;

impl SinkError for Never {
    fn fault(&self) -> Fault {
        Fault::Transient
    }
}

/// Every message written, with the partition it came from.
#[derive(Debug, Default)]
struct Seen {
    rows: Mutex<Vec<(i32, Uuid)>>,
}

impl Seen {
    /// The partitions that the messages with these ids came from.
    fn partitions_of(&self, ids: &[Uuid]) -> BTreeSet<i32> {
        let rows = self.rows.lock().expect("rows");
        rows.iter()
            .filter(|(_, id)| ids.contains(id))
            .map(|(partition, _)| *partition)
            .collect()
    }

    /// How many of these ids it holds.
    fn holds(&self, ids: &[Uuid]) -> usize {
        let rows = self.rows.lock().expect("rows");
        rows.iter().filter(|(_, id)| ids.contains(id)).count()
    }

    fn is_empty(&self) -> bool {
        self.rows.lock().expect("rows").is_empty()
    }
}

impl Sink for Seen {
    type Error = Never;

    async fn write(&self, rows: &[Row], _dead: &[DeadLetter]) -> Result<Written, Never> {
        let mut seen = self.rows.lock().expect("rows");
        seen.extend(rows.iter().map(|r| (r.origin.partition, r.metric.probe_id)));
        Ok(Written {
            inserted: rows.len() as u64,
            ..Written::default()
        })
    }
}

/// One member of group `g` with a static id, consuming into a sink of its own.
struct Member {
    seen: Arc<Seen>,
    stop: CancellationToken,
    task: JoinHandle<Result<Summary, ConsumerError>>,
}

impl Member {
    fn start(bootstrap: &str, instance: &str) -> Member {
        let mut settings = common::kafka_settings(bootstrap, TOPIC, "g");
        // librdkafka's mock broker keeps static members only under the
        // consumer group protocol (KIP-848), whose timeouts are the broker's;
        // real brokers keep them under the classic protocol too.
        settings.kafka.properties = sitewatch_kafka::Properties::default();
        settings
            .kafka
            .properties
            .extend([("group.protocol".to_owned(), "consumer".to_owned())]);
        settings.group_instance_id = Some(instance.to_owned());
        let seen = Arc::new(Seen::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (seen, stop) = (Arc::clone(&seen), stop.clone());
            async move { sitewatch_consumer::consume_into(&settings, seen, stop).await }
        });
        Member { seen, stop, task }
    }

    async fn stop(self) -> Summary {
        self.stop.cancel();
        self.task.await.expect("member task").expect("member ran")
    }
}

/// Publishes `n` metrics of three sites (so both partitions get some),
/// numbered from `from`; returns their ids.
async fn publish(bootstrap: &str, from: u64, n: u64) -> Vec<Uuid> {
    let metrics: Vec<Metric> = (from..from + n).map(|i| common::metric(i, 3)).collect();
    let _ = common::publish(bootstrap, TOPIC, &metrics).await;
    metrics.iter().map(|m| m.probe_id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_static_member_gets_its_partitions_back_and_nobody_else_takes_them() {
    let cluster = common::kafka(TOPIC, 2);
    let bootstrap = cluster.bootstrap_servers();
    let a = Member::start(&bootstrap, "a");
    let b = Member::start(&bootstrap, "b");

    // Until each member holds a partition, publishing a little as we go.
    let next = Arc::new(Mutex::new(0_u64));
    wait_for(
        Duration::from_secs(60),
        "both members hold a partition",
        || {
            let (bootstrap, next) = (bootstrap.clone(), Arc::clone(&next));
            let (sa, sb) = (Arc::clone(&a.seen), Arc::clone(&b.seen));
            async move {
                let from = {
                    let mut next = next.lock().expect("next");
                    *next += 10;
                    *next
                };
                let _ = publish(&bootstrap, from, 10).await;
                !sa.is_empty() && !sb.is_empty()
            }
        },
    )
    .await;
    // Who holds which partition now that the group has settled.
    let from = *next.lock().expect("next") + 10;
    let marked = publish(&bootstrap, from, 30).await;
    wait_for(
        Duration::from_secs(30),
        "the marked messages written",
        || {
            let (sa, sb, marked) = (Arc::clone(&a.seen), Arc::clone(&b.seen), marked.clone());
            async move { sa.holds(&marked) + sb.holds(&marked) >= marked.len() }
        },
    )
    .await;
    let (held_a, held_b) = (a.seen.partitions_of(&marked), b.seen.partitions_of(&marked));
    assert!(
        held_a.len() == 1 && held_b.len() == 1 && held_a != held_b,
        "one partition each: {held_a:?} {held_b:?}"
    );
    let mine = *held_a.first().expect("a partition");

    let _ = a.stop().await;
    let away = publish(&bootstrap, from + 100, 60).await;
    wait_for(
        Duration::from_secs(30),
        "the other member writes its own partition",
        || {
            let (sb, away) = (Arc::clone(&b.seen), away.clone());
            async move { sb.holds(&away) > 0 }
        },
    )
    .await;
    // Several of the mock broker's 3 s heartbeats: time enough for a
    // rebalance to hand the partition over, which must not happen.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        b.seen.partitions_of(&away),
        held_b,
        "nobody took the away member's partition"
    );

    let back = Member::start(&bootstrap, "a");
    let left = away.len() - b.seen.holds(&away);
    wait_for(
        Duration::from_secs(30),
        "the restarted member writes its partition",
        || {
            let (sa, away) = (Arc::clone(&back.seen), away.clone());
            async move { sa.holds(&away) >= left }
        },
    )
    .await;
    assert_eq!(
        back.seen.partitions_of(&away),
        BTreeSet::from([mine]),
        "it got its own partition back"
    );
    assert_eq!(b.seen.partitions_of(&away), held_b, "and only that");
    let _ = (back.stop().await, b.stop().await);
}
