//! The seam between the Kafka side and the database: the consumer writes
//! through any `Sink`. A sink in memory, which fails now and then and refuses
//! some rows, gets every message exactly once (as a row or a dead letter),
//! and the group commits every offset; no PostgreSQL involved.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sitewatch_consumer::sink::{DeadLetter, Fault, Row, Sink, SinkError, Written};
use sitewatch_metric::Metric;
use sitewatch_pgtest::wait::wait_for;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Why the memory sink did not take a batch.
#[derive(Debug, thiserror::Error)]
enum MemoryError {
    #[error("the sink is briefly unavailable")]
    Unavailable,
    #[error("the sink refuses {0}")]
    Refused(String),
}

impl SinkError for MemoryError {
    fn fault(&self) -> Fault {
        match self {
            MemoryError::Unavailable => Fault::Transient,
            MemoryError::Refused(_) => Fault::Message,
        }
    }
}

/// Rows by probe id and dead letters by offset, written all or nothing per batch.
#[derive(Debug, Default)]
struct MemorySink {
    rows: Mutex<HashMap<Uuid, Metric>>,
    dead: Mutex<HashMap<(i32, i64), String>>,
    /// Writes that fail as transient before any succeeds.
    unavailable_for: AtomicUsize,
    /// Writes attempted.
    attempts: AtomicUsize,
}

impl Sink for MemorySink {
    type Error = MemoryError;

    async fn write(&self, rows: &[Row], dead: &[DeadLetter]) -> Result<Written, MemoryError> {
        let attempt = self.attempts.fetch_add(1, Ordering::SeqCst);
        if attempt < self.unavailable_for.load(Ordering::SeqCst) {
            return Err(MemoryError::Unavailable);
        }
        if let Some(bad) = rows.iter().find(|r| r.metric.url.contains("refused")) {
            return Err(MemoryError::Refused(bad.metric.url.clone()));
        }
        let mut stored = self.rows.lock().expect("rows");
        let mut written = Written::default();
        for row in rows {
            if stored
                .insert(row.metric.probe_id, row.metric.clone())
                .is_some()
            {
                written.duplicates += 1;
            } else {
                written.inserted += 1;
            }
        }
        let mut letters = self.dead.lock().expect("dead letters");
        for letter in dead {
            let _ = letters.insert(
                (letter.origin.partition, letter.origin.offset),
                letter.reason.clone(),
            );
            written.dead_letters += 1;
        }
        Ok(written)
    }
}

#[tokio::test]
async fn every_message_reaches_a_memory_sink_once_and_every_offset_is_committed() {
    let topic = "metrics";
    let cluster = common::kafka(topic, 3);
    let bootstrap = cluster.bootstrap_servers();
    let mut settings = common::kafka_settings(&bootstrap, topic, "memory-sink");
    settings.writers = 3;

    let mut metrics: Vec<Metric> = (0..400).map(|i| common::metric(i, 20)).collect();
    for m in metrics.iter_mut().step_by(50) {
        m.url = format!("https://refused-{}.example/", m.probe_id);
    }
    let published = common::publish(&bootstrap, topic, &metrics).await;
    let garbage = common::publish_raw(
        &bootstrap,
        topic,
        &[(Some(b"k".to_vec()), Some(b"not json".to_vec()))],
    )
    .await;

    let sink = Arc::new(MemorySink {
        unavailable_for: AtomicUsize::new(3),
        ..MemorySink::default()
    });
    let shutdown = CancellationToken::new();
    let run = tokio::spawn({
        let (sink, shutdown) = (Arc::clone(&sink), shutdown.clone());
        async move { sitewatch_consumer::consume_into(&settings, sink, shutdown).await }
    });
    let refused = metrics.iter().filter(|m| m.url.contains("refused")).count();
    let want_rows = metrics.len() - refused;
    wait_for(Duration::from_secs(60), "every message in the sink", || {
        let sink = Arc::clone(&sink);
        async move {
            sink.rows.lock().expect("rows").len() == want_rows
                && sink.dead.lock().expect("dead").len() == refused + 1
        }
    })
    .await;
    shutdown.cancel();
    let summary = run.await.expect("joined").expect("consumer ran");

    let rows = sink.rows.lock().expect("rows").clone();
    let dead = sink.dead.lock().expect("dead").clone();
    for (metric, partition, offset) in &published {
        if metric.url.contains("refused") {
            let reason = &dead[&(*partition, *offset)];
            assert!(reason.contains("refuses"), "{reason}");
        } else {
            assert_eq!(rows.get(&metric.probe_id), Some(metric));
        }
    }
    let (partition, offset) = garbage[0];
    assert!(dead[&(partition, offset)].contains("not a JSON object"));
    assert_eq!(
        (summary.inserted, summary.duplicates, summary.dead_letters),
        (want_rows as u64, 0, refused as u64 + 1),
        "{summary:?}"
    );
    assert!(summary.retries >= 3, "{summary:?}");

    let mut ends = vec![0_i64; 3];
    for (_, partition, offset) in &published {
        let end = &mut ends[usize::try_from(*partition).expect("partition")];
        *end = (*end).max(offset + 1);
    }
    ends[usize::try_from(partition).expect("partition")] =
        ends[usize::try_from(partition).expect("partition")].max(offset + 1);
    assert_eq!(
        common::committed(&bootstrap, topic, "memory-sink", 3),
        ends,
        "every offset committed"
    );
}
