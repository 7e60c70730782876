//! When a batch is due: full at a number of messages, or a time after its
//! first message, whichever comes first.

use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::decode::Decoded;
use crate::offsets::Ack;
use crate::sink::{DeadLetter, Row};

/// How batches are formed.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    /// Messages that make a batch full.
    pub max_rows: usize,
    /// Bytes of messages that make a batch full.
    pub max_bytes: usize,
    /// Longest time the first message of a batch waits for the rest.
    pub max_wait: Duration,
}

/// Messages written in one transaction, and the acks they earn when it commits.
#[derive(Debug, Default)]
pub struct Batch {
    /// Decoded metrics.
    pub rows: Vec<Row>,
    /// Messages that are not metrics.
    pub dead: Vec<DeadLetter>,
    /// One per message, rows and dead letters alike.
    pub acks: Vec<Ack>,
    /// The messages' share of the read-ahead budget, given back when the
    /// batch is dropped, written.
    pub budget: Option<OwnedSemaphorePermit>,
}

impl Batch {
    /// Messages in the batch.
    pub fn len(&self) -> usize {
        self.rows.len() + self.dead.len()
    }

    /// Whether the batch holds no message.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Gathers messages into a batch and says when it is due.
#[derive(Debug)]
pub struct Batcher {
    policy: BatchPolicy,
    batch: Batch,
    bytes: usize,
    deadline: Option<Instant>,
}

impl Batcher {
    /// An empty batcher following `policy`.
    pub fn new(policy: BatchPolicy) -> Batcher {
        Batcher {
            policy,
            batch: Batch::default(),
            bytes: 0,
            deadline: None,
        }
    }

    /// Adds a message of `bytes` bytes, with its share of the read-ahead
    /// budget; the first of a batch starts its clock.
    pub fn push(
        &mut self,
        decoded: Decoded,
        ack: Ack,
        bytes: usize,
        budget: Option<OwnedSemaphorePermit>,
    ) {
        if self.deadline.is_none() {
            self.deadline = Some(Instant::now() + self.policy.max_wait);
        }
        self.bytes += bytes;
        match (&mut self.batch.budget, budget) {
            (Some(held), Some(more)) => held.merge(more),
            (held @ None, more) => *held = more,
            (Some(_), None) => {}
        }
        self.batch.acks.push(ack);
        match decoded {
            Decoded::Row(row) => self.batch.rows.push(row),
            Decoded::Dead(letter) => self.batch.dead.push(letter),
        }
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.batch.len()
    }

    /// Whether no message is waiting.
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// Whether the batch has all the messages it may hold.
    pub fn is_full(&self) -> bool {
        self.batch.len() >= self.policy.max_rows || self.bytes >= self.policy.max_bytes
    }

    /// When the batch is due by time, if it holds anything.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The batch so far, leaving an empty one.
    pub fn take(&mut self) -> Batch {
        self.deadline = None;
        self.bytes = 0;
        std::mem::take(&mut self.batch)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::offsets::Origin;

    fn dead(offset: i64) -> (Decoded, Ack) {
        let letter = DeadLetter {
            origin: Origin {
                topic: Arc::from("t"),
                partition: 0,
                offset,
            },
            key: None,
            payload: None,
            reason: "test".into(),
            cause: "test",
        };
        let ack = Ack {
            partition: 0,
            epoch: 1,
            offset,
        };
        (Decoded::Dead(letter), ack)
    }

    #[tokio::test(start_paused = true)]
    async fn full_at_max_rows_and_due_after_max_wait_from_the_first() {
        let mut batcher = Batcher::new(BatchPolicy {
            max_rows: 2,
            max_bytes: 1000,
            max_wait: Duration::from_millis(100),
        });
        assert_eq!(batcher.deadline(), None, "no clock without a message");
        let start = Instant::now();
        let (d, a) = dead(1);
        batcher.push(d, a, 10, None);
        tokio::time::advance(Duration::from_millis(60)).await;
        let (d, a) = dead(2);
        batcher.push(d, a, 10, None);
        assert!(batcher.is_full());
        assert_eq!(
            batcher.deadline(),
            Some(start + Duration::from_millis(100)),
            "the first message's clock"
        );
        let batch = batcher.take();
        assert_eq!((batch.len(), batch.acks.len()), (2, 2));
        assert!(batcher.is_empty() && batcher.deadline().is_none());
        let (d, a) = dead(3);
        batcher.push(d, a, 1000, None);
        assert!(batcher.is_full(), "full by bytes with one message");
    }
}
