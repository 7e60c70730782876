//! Writing one batch through a sink to the end: every message is a row or a
//! dead letter when [`write_batch`] returns.
//!
//! Transient failures are retried with backoff, holding the batch (and so,
//! through the pipeline's bounded queue, the partitions); a batch that fails
//! for its data is split until the bad rows are alone, and those become dead
//! letters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::batch::Batch;
use crate::offsets::Ack;
use crate::sink::{DeadLetter, Row, Sink, SinkError, Written};

/// First wait after a transient failure; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between two attempts at the same batch.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Running totals of what the writes did, readable while the consumer runs.
#[derive(Debug, Default)]
pub struct Totals {
    /// Messages taken from Kafka into batches.
    pub read: AtomicU64,
    /// Rows inserted.
    pub inserted: AtomicU64,
    /// Redelivered rows that were already stored, skipped.
    pub duplicates: AtomicU64,
    /// Messages stored as dead letters.
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

/// Writes `batch` through `sink` until every message in it is stored; returns its acks.
pub async fn write_batch<S: Sink>(sink: &S, batch: Batch, totals: &Totals) -> Vec<Ack> {
    let Batch { rows, dead, acks } = batch;
    let mut pending = vec![(rows, dead)];
    while let Some((rows, dead)) = pending.pop() {
        match write_retrying(sink, &rows, &dead, totals).await {
            Ok(written) => totals.add(written),
            Err(err) if rows.len() + dead.len() > 1 => {
                tracing::warn!(error = %err, rows = rows.len(), "a batch failed for its data: splitting it to find the bad rows");
                pending.extend(split(rows, dead));
            }
            Err(err) => match rows.into_iter().next() {
                Some(row) => {
                    tracing::warn!(error = %err, probe_id = %row.metric.probe_id, "a metric the database refuses goes to dead_letters");
                    let letter = row.into_dead_letter(format!("refused by PostgreSQL: {err}"));
                    pending.push((Vec::new(), vec![letter]));
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

type Part = (Vec<Row>, Vec<DeadLetter>);

/// Two strictly smaller parts of a batch of at least two messages, so that
/// splitting always ends.
fn split(mut rows: Vec<Row>, mut dead: Vec<DeadLetter>) -> [Part; 2] {
    let second = if rows.len() >= 2 {
        (rows.split_off(rows.len() / 2), Vec::new())
    } else if rows.len() == 1 {
        (Vec::new(), std::mem::take(&mut dead))
    } else {
        (Vec::new(), dead.split_off(dead.len() / 2))
    };
    [second, (rows, dead)]
}

/// Retries transient failures with backoff until the write succeeds or fails for its data.
async fn write_retrying<S: Sink>(
    sink: &S,
    rows: &[Row],
    dead: &[DeadLetter],
    totals: &Totals,
) -> Result<Written, S::Error> {
    let mut backoff = FIRST_BACKOFF;
    loop {
        match sink.write(rows, dead).await {
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
