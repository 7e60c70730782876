//! Writing one batch through a sink to the end: every message is a row or a
//! dead letter when [`write_batch`] returns, unless the consumer must stop.
//!
//! What happens to a failed write depends on whose fault it is
//! ([`Fault`]): the sink's state is waited out with backoff (holding the
//! batch, and so, through the pipeline's bounded queue, the partitions); a
//! batch refused for a message is split until that message is alone, and it
//! becomes a dead letter; an error of unknown cause is retried a few times,
//! then the batch stops the consumer, its offsets unstored.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sitewatch_service::health::Stall;

use crate::batch::Batch;
use crate::offsets::Ack;
use crate::sink::{DeadLetter, Fault, Row, Sink, SinkError, Turn, Written};

/// First wait after a failure; doubles up to [`MAX_BACKOFF`].
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
    /// Failed writes retried.
    pub retries: AtomicU64,
    /// Since when writes have kept failing, for the health check.
    pub failing: Stall,
    /// Since when messages have been held without any offset moving, for
    /// the health check: a consumer that reads but never gets anything
    /// written is not making progress, whatever its connections say.
    pub held: Stall,
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

/// The `cause` of a dead letter PostgreSQL refused.
const REFUSED: &str = "refused";

/// How failed writes are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts at a write failing for an unknown cause before the consumer stops.
    pub unknown_attempts: u32,
}

/// Why a batch could not be written and the consumer must stop: its offsets
/// stay unstored, and the messages are read again after the cause is fixed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct MustStop(pub String);

/// Writes `batch` through `sink` until every message in it is stored, in
/// `turn` where order matters to the sink; returns its acks.
pub async fn write_batch<S: Sink>(
    sink: &S,
    batch: Batch,
    turn: Turn,
    retry: RetryPolicy,
    totals: &Totals,
) -> Result<Vec<Ack>, MustStop> {
    // The batch's share of the read-ahead budget goes back when it is written.
    let Batch {
        rows,
        dead,
        acks,
        budget: _budget,
    } = batch;
    let mut pending = vec![(rows, dead)];
    while let Some((rows, dead)) = pending.pop() {
        match write_retrying(sink, &rows, &dead, &turn, retry, totals).await {
            Ok(written) => totals.add(written),
            Err(Refused::Message(err)) if rows.len() + dead.len() > 1 => {
                tracing::warn!(error = %err, rows = rows.len(), "a batch was refused for a message in it: splitting it to find that message");
                pending.extend(split(rows, dead));
            }
            Err(Refused::Message(err)) => match rows.into_iter().next() {
                Some(row) => {
                    tracing::warn!(error = %err, probe_id = %row.metric.probe_id, "a metric the database refuses goes to dead_letters");
                    let letter = row.into_dead_letter(REFUSED, format!("refused by PostgreSQL: {err}"));
                    pending.push((Vec::new(), vec![letter]));
                }
                None => return Err(dead_letter_lost(&dead, &err)),
            },
            Err(Refused::Unknown(err)) => {
                return Err(MustStop(format!(
                    "PostgreSQL refused a write {} times for a reason that is not known to pass ({err}); stopping without storing its offsets, so that nothing is dead-lettered by mistake: fix the cause (schema, permissions) and start the consumer again",
                    retry.unknown_attempts
                )))
            }
        }
    }
    Ok(acks)
}

/// A dead letter that cannot be stored either: the message would be only in
/// a log line, so the consumer stops instead, its offset uncommitted.
fn dead_letter_lost(dead: &[DeadLetter], err: &dyn std::fmt::Display) -> MustStop {
    let at = dead.first().map_or_else(String::new, |d| {
        format!(
            " (topic {}, partition {}, offset {})",
            d.origin.topic, d.origin.partition, d.origin.offset
        )
    });
    MustStop(format!(
        "a dead letter{at} could not be stored: {err}; stopping without storing its offset"
    ))
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

/// Why a write gave up.
enum Refused<E> {
    /// A message of the write is at fault.
    Message(E),
    /// Retried as often as the policy allows, for a cause not known to pass.
    Unknown(E),
}

/// Retries with backoff until the write succeeds, a message is found at
/// fault, or an unknown cause has used up its attempts.
async fn write_retrying<S: Sink>(
    sink: &S,
    rows: &[Row],
    dead: &[DeadLetter],
    turn: &Turn,
    retry: RetryPolicy,
    totals: &Totals,
) -> Result<Written, Refused<S::Error>> {
    let mut backoff = FIRST_BACKOFF;
    let mut unknown = 0;
    loop {
        let started = std::time::Instant::now();
        let err = match sink.write_in_turn(rows, dead, turn).await {
            Ok(written) => {
                totals.failing.moving();
                crate::measure::written(
                    rows.len() + dead.len(),
                    started.elapsed(),
                    dead,
                    written.dead_letters,
                );
                return Ok(written);
            }
            Err(err) => err,
        };
        totals.failing.stuck();
        match err.fault() {
            Fault::Message => return Err(Refused::Message(err)),
            Fault::Unknown => {
                unknown += 1;
                if unknown >= retry.unknown_attempts {
                    return Err(Refused::Unknown(err));
                }
            }
            Fault::Transient => {}
        }
        let _ = totals.retries.fetch_add(1, Ordering::Relaxed);
        let wait = jittered(backoff);
        tracing::warn!(
            error = %err,
            retry_in = ?wait,
            rows = rows.len(),
            "PostgreSQL write failed; retrying (offsets do not move until it succeeds)"
        );
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// A wait between half `backoff` and `backoff`, so that consumers that failed
/// together (a database restart) do not all retry at the same instant.
pub(crate) fn jittered(backoff: Duration) -> Duration {
    // A fresh RandomState is seeded from the OS, differently in each process.
    let random = RandomState::new().hash_one(std::time::Instant::now());
    let fraction = 0.5 + (random % 1000) as f64 / 2000.0;
    backoff.mul_f64(fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_between_half_and_all_of_the_backoff() {
        let backoff = Duration::from_secs(4);
        let waits: Vec<Duration> = (0..50).map(|_| jittered(backoff)).collect();
        assert!(waits.iter().all(|w| *w >= backoff / 2 && *w <= backoff));
        assert!(
            waits.iter().any(|w| *w != waits[0]),
            "waits differ: {waits:?}"
        );
    }
}
