//! Gathers messages into batches (N rows or T milliseconds, whichever comes
//! first), writes each batch in one transaction, and reports back which
//! offsets are safely stored.
//!
//! Transient failures are retried with backoff, holding the batch (and so,
//! through the bounded channel, the partitions); a batch that fails for its
//! data is split until the bad rows are alone, and those become dead letters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sitewatch_metric::Metric;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::store::{DeadLetter, Origin, Row, Store, StoreError, Written};

/// First wait after a transient failure; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between two attempts at the same batch.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A message as read from Kafka, not yet decoded.
#[derive(Debug, Clone)]
pub struct Record {
    /// Where it came from.
    pub origin: Origin,
    /// The epoch of its partition's assignment when it was handed over.
    pub epoch: u64,
    /// Message key.
    pub key: Option<Vec<u8>>,
    /// Message payload.
    pub payload: Option<Vec<u8>>,
}

/// One offset now stored in PostgreSQL (as a row or a dead letter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// Partition.
    pub partition: i32,
    /// Epoch quoted when handed over.
    pub epoch: u64,
    /// Offset.
    pub offset: i64,
}

/// How batches are formed and written.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    /// Rows that make a batch full.
    pub max_rows: usize,
    /// Longest time the first message of a batch waits for the rest.
    pub max_wait: Duration,
    /// Batches being written at once (each holds a pooled connection).
    pub max_in_flight: usize,
}

/// Running totals, readable while the consumer runs.
#[derive(Debug, Default)]
pub struct Totals {
    /// Rows inserted into `metrics`.
    pub inserted: AtomicU64,
    /// Redelivered rows that were already stored, skipped.
    pub duplicates: AtomicU64,
    /// Messages stored in `dead_letters`.
    pub dead_letters: AtomicU64,
    /// Transient write failures retried.
    pub retries: AtomicU64,
}

impl Totals {
    fn add(&self, w: Written) {
        let _ = self.inserted.fetch_add(w.inserted, Ordering::Relaxed);
        let _ = self.duplicates.fetch_add(w.duplicates, Ordering::Relaxed);
        let _ = self
            .dead_letters
            .fetch_add(w.dead_letters, Ordering::Relaxed);
    }
}

/// The key and payload a row was decoded from, kept in case the database refuses it.
#[derive(Debug)]
struct Source {
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
}

/// Decoded rows, with their sources at the same index (apart, so that the
/// rows can be written as a slice without copying them).
#[derive(Debug, Default)]
struct Rows {
    rows: Vec<Row>,
    sources: Vec<Source>,
}

impl Rows {
    fn len(&self) -> usize {
        self.rows.len()
    }

    fn split_off(&mut self, at: usize) -> Rows {
        Rows {
            rows: self.rows.split_off(at),
            sources: self.sources.split_off(at),
        }
    }
}

#[derive(Debug, Default)]
struct Batch {
    rows: Rows,
    dead: Vec<DeadLetter>,
    acks: Vec<Ack>,
    deadline: Option<Instant>,
}

impl Batch {
    fn len(&self) -> usize {
        self.rows.len() + self.dead.len()
    }

    fn push(&mut self, record: Record, max_wait: Duration) {
        if self.deadline.is_none() {
            self.deadline = Some(Instant::now() + max_wait);
        }
        self.acks.push(Ack {
            partition: record.origin.partition,
            epoch: record.epoch,
            offset: record.origin.offset,
        });
        let decoded = match &record.payload {
            None => Err("empty payload (a tombstone or a null message)".to_owned()),
            Some(bytes) => Metric::from_json(bytes).map_err(|e| e.to_string()),
        };
        match decoded {
            Ok(metric) => {
                self.rows.rows.push(Row {
                    metric,
                    origin: record.origin,
                });
                self.rows.sources.push(Source {
                    key: record.key,
                    payload: record.payload,
                });
            }
            Err(reason) => self.dead.push(DeadLetter {
                origin: record.origin,
                key: record.key,
                payload: record.payload,
                reason,
            }),
        }
    }
}

/// Writes batches until `records` closes, then writes what is left and returns.
///
/// `flush_now` asks for everything received so far to be written at once
/// (partitions are being revoked, or the process is stopping). Acks go to
/// `acks` after each transaction commits.
pub async fn run(
    mut records: mpsc::Receiver<Record>,
    flush_now: Arc<Notify>,
    store: Arc<Store>,
    options: BatchOptions,
    acks: std::sync::mpsc::Sender<Vec<Ack>>,
    totals: Arc<Totals>,
) {
    let mut batch = Batch::default();
    let mut writing: JoinSet<Vec<Ack>> = JoinSet::new();
    let mut closed = false;
    let max_in_flight = options.max_in_flight.max(1);
    loop {
        let full = batch.len() >= options.max_rows;
        let mut due = false;
        let mut urgent = false;
        tokio::select! {
            biased;
            Some(done) = writing.join_next() => {
                match done {
                    Ok(written) => {
                        // The poll loop may have stopped; then nothing waits for acks.
                        let _ = acks.send(written);
                    }
                    Err(err) => tracing::error!(error = %err, "a batch write task failed; its offsets stay unstored and will be read again"),
                }
                // A writer is free: a batch that filled meanwhile goes now, below.
            }
            () = flush_now.notified() => {
                while let Ok(record) = records.try_recv() {
                    batch.push(record, options.max_wait);
                }
                urgent = true;
            }
            received = records.recv(), if !full && !closed => match received {
                Some(record) => batch.push(record, options.max_wait),
                None => closed = true,
            },
            // While every writer is busy the deadline cannot be acted on; a finished write wakes the loop.
            () = sleep_until(batch.deadline), if batch.deadline.is_some() && writing.len() < max_in_flight => due = true,
        }
        let ready = batch.len() >= options.max_rows || due || urgent || closed;
        if ready && batch.len() > 0 && (writing.len() < max_in_flight || urgent || closed) {
            let taken = std::mem::take(&mut batch);
            let _ = writing.spawn(write_batch(Arc::clone(&store), taken, Arc::clone(&totals)));
        }
        if closed && batch.len() == 0 && writing.is_empty() {
            return;
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline).await;
    }
}

/// Writes one batch to the end: every message is a row or a dead letter when this returns.
async fn write_batch(store: Arc<Store>, batch: Batch, totals: Arc<Totals>) -> Vec<Ack> {
    let Batch {
        rows, dead, acks, ..
    } = batch;
    let mut pending = vec![(rows, dead)];
    while let Some((rows, dead)) = pending.pop() {
        match write_retrying(&store, &rows.rows, &dead, &totals).await {
            Ok(written) => totals.add(written),
            Err(err) if rows.len() + dead.len() > 1 => {
                tracing::warn!(error = %err, rows = rows.len(), "a batch failed for its data: splitting it to find the bad rows");
                // Each part is strictly smaller, so splitting always ends.
                let (mut rows_a, mut dead_a) = (rows, dead);
                if rows_a.len() >= 2 {
                    let rows_b = rows_a.split_off(rows_a.len() / 2);
                    pending.push((rows_b, Vec::new()));
                } else if rows_a.len() == 1 {
                    pending.push((Rows::default(), std::mem::take(&mut dead_a)));
                } else {
                    let dead_b = dead_a.split_off(dead_a.len() / 2);
                    pending.push((Rows::default(), dead_b));
                }
                pending.push((rows_a, dead_a));
            }
            Err(err) => match rows.rows.into_iter().zip(rows.sources).next() {
                Some((row, Source { key, payload })) => {
                    tracing::warn!(error = %err, probe_id = %row.metric.probe_id, "a metric the database refuses goes to dead_letters");
                    let letter = DeadLetter {
                        origin: row.origin,
                        key,
                        payload,
                        reason: format!("refused by PostgreSQL: {err}"),
                    };
                    pending.push((Rows::default(), vec![letter]));
                }
                None => tracing::error!(
                    error = %err,
                    "a dead letter could not be stored either; its offset moves on and the message is only in this log"
                ),
            },
        }
    }
    acks
}

/// Retries transient failures with backoff until the write succeeds or fails for its data.
async fn write_retrying(
    store: &Store,
    rows: &[Row],
    dead: &[DeadLetter],
    totals: &Totals,
) -> Result<Written, StoreError> {
    let mut backoff = FIRST_BACKOFF;
    loop {
        match store.write(rows, dead).await {
            Ok(written) => return Ok(written),
            Err(err) if err.is_transient() => {
                let _ = totals.retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    error = %err,
                    retry_in = ?backoff,
                    rows = rows.len(),
                    "PostgreSQL write failed; retrying (offsets do not move until it succeeds)"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(err) => return Err(err),
        }
    }
}
