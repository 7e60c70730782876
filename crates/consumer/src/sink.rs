//! Where batches are written: the seam between the consumer's pipeline and
//! its database. PostgreSQL ([`crate::store::Store`]) is one sink; a test can
//! put any other behind the same trait.

use std::future::Future;

use futures::future::{FutureExt, Shared};
use sitewatch_metric::Metric;
use tokio::sync::oneshot;

use crate::offsets::Origin;

/// A decoded metric and the message it came from, kept in case the sink
/// refuses it and it must become a dead letter.
#[derive(Debug, Clone)]
pub struct Row {
    /// The message, decoded.
    pub metric: Metric,
    /// Its Kafka position.
    pub origin: Origin,
    /// The message key as received.
    pub key: Option<Vec<u8>>,
    /// The payload as received.
    pub payload: Option<Vec<u8>>,
}

/// A message that can never be a metric row, kept whole with the reason.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Its Kafka position.
    pub origin: Origin,
    /// The message key as received.
    pub key: Option<Vec<u8>>,
    /// The payload as received.
    pub payload: Option<Vec<u8>>,
    /// Why it cannot be stored.
    pub reason: String,
    /// The kind of reason, a short fixed name (`not_json`, `refused`, ...)
    /// for the dead-letter counter's `reason` label.
    pub cause: &'static str,
}

impl Row {
    /// This row as a dead letter of kind `cause`, for `reason`.
    pub fn into_dead_letter(self, cause: &'static str, reason: String) -> DeadLetter {
        DeadLetter {
            origin: self.origin,
            key: self.key,
            payload: self.payload,
            reason,
            cause,
        }
    }
}

/// The `cause` of a dead letter whose probe id is stored already with
/// other content.
pub const CONFLICT: &str = "conflict";

/// What a write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// New rows stored.
    pub inserted: u64,
    /// Rows already there (a redelivery), skipped.
    pub duplicates: u64,
    /// Dead letters stored (new or already there).
    pub dead_letters: u64,
    /// Sites that went down or came back up.
    pub transitions: u64,
}

/// Whose fault a failed write is, which decides what the consumer does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The sink's state (down, overloaded, a broken connection, a lock
    /// conflict, a timeout): the same write is retried until it succeeds.
    Transient,
    /// The message itself (a value that cannot fit its column): the batch is
    /// split until the message is alone, and it becomes a dead letter.
    Message,
    /// Anything else (schema drift, permissions, an error never seen): retried
    /// a few times, then the consumer stops with the error and leaves the
    /// offsets alone, for an operator to fix the cause.
    Unknown,
}

/// A failed write, told apart by whose fault it is.
pub trait SinkError: std::error::Error + Send + Sync + 'static {
    /// Whose fault the failure is.
    fn fault(&self) -> Fault;
}

/// Stores batches of rows and dead letters, each batch all or nothing, and
/// idempotently: a row already stored is skipped, not stored twice.
pub trait Sink: Send + Sync + 'static {
    /// Why a write failed.
    type Error: SinkError;

    /// Stores `rows` and `dead` in one transaction.
    fn write(
        &self,
        rows: &[Row],
        dead: &[DeadLetter],
    ) -> impl Future<Output = Result<Written, Self::Error>> + Send;

    /// [`Sink::write`] for a batch that holds `turn`: a sink whose writes
    /// depend on the order of messages within a partition (state moved by
    /// each site's probes) waits for it before that part. Writes are
    /// concurrent otherwise, so a sink without such state ignores it.
    fn write_in_turn(
        &self,
        rows: &[Row],
        dead: &[DeadLetter],
        turn: &Turn,
    ) -> impl Future<Output = Result<Written, Self::Error>> + Send {
        let _ = turn;
        self.write(rows, dead)
    }

    /// The consumer's partitions changed (assigned or revoked): a sink that
    /// remembers anything per partition forgets it.
    fn partitions_changed(&self) {}

    /// Whether the sink answers now, for the health check.
    fn ping(&self) -> impl Future<Output = bool> + Send {
        async { true }
    }

    /// Sets the gauges that describe the sink (its connections), before a scrape.
    fn collect(&self) {}
}

/// A batch's place among the batches in flight: it comes once every batch
/// handed to the writers before it that shares a partition with it has
/// finished (written, or given up).
#[derive(Debug, Clone, Default)]
pub struct Turn {
    after: Vec<Shared<oneshot::Receiver<()>>>,
}

/// Held by a batch while it is written: [`Finished::written`] lets the
/// batches after it in its partitions take their turn; dropped without it
/// (a batch given up, a task that panicked), their turn is lost.
#[derive(Debug)]
pub struct Finished {
    done: oneshot::Sender<()>,
}

impl Finished {
    /// The batch is written.
    pub fn written(self) {
        let _ = self.done.send(());
    }
}

/// An earlier batch of the same partitions was not written.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("an earlier batch of the same partitions was not written, so this one cannot move its sites' state in order; the consumer stops and the next run reads both again")]
pub struct TurnLost;

impl Turn {
    /// A turn that has come already.
    pub fn now() -> Turn {
        Turn::default()
    }

    /// Waits for the batches before this one; an error if one was not written.
    pub async fn wait(&self) -> Result<(), TurnLost> {
        for before in &self.after {
            before.clone().await.map_err(|_| TurnLost)?;
        }
        Ok(())
    }
}

/// Hands out turns in the order batches go to the writers: one queue per
/// partition, each batch behind the last one of each of its partitions.
#[derive(Debug, Default)]
pub struct Turns {
    last: std::collections::HashMap<i32, Shared<oneshot::Receiver<()>>>,
}

impl Turns {
    /// The turn of a batch of `partitions`, and what it drops when finished.
    pub fn next(&mut self, partitions: impl IntoIterator<Item = i32>) -> (Turn, Finished) {
        let (done, finished) = oneshot::channel();
        let finished = finished.shared();
        let mut after = Vec::new();
        for partition in partitions {
            if let Some(before) = self.last.insert(partition, finished.clone()) {
                // A batch written holds nobody up; one given up must still say so.
                let written = matches!(before.peek(), Some(Ok(())));
                if !written && !after.iter().any(|a: &Shared<_>| a.ptr_eq(&before)) {
                    after.push(before);
                }
            }
        }
        (Turn { after }, Finished { done })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_waits_only_for_earlier_batches_of_its_partitions() {
        let mut turns = Turns::default();
        let (first, first_done) = turns.next([0, 1]);
        let (second, second_done) = turns.next([1]);
        let (other, _other_done) = turns.next([2]);
        let (third, _third_done) = turns.next([0, 1]);
        assert!(first.wait().await.is_ok());
        assert!(other.wait().await.is_ok());
        let wait = |turn: &Turn| {
            let turn = turn.clone();
            async move {
                tokio::time::timeout(std::time::Duration::from_millis(50), turn.wait())
                    .await
                    .ok()
            }
        };
        assert!(
            wait(&second).await.is_none(),
            "behind the first batch of partition 1"
        );
        first_done.written();
        assert!(matches!(wait(&second).await, Some(Ok(()))));
        assert!(
            wait(&third).await.is_none(),
            "behind the second batch of partition 1"
        );
        drop(second_done);
        assert!(
            matches!(wait(&third).await, Some(Err(TurnLost))),
            "a batch given up before it: not in order"
        );
    }
}
