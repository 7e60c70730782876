//! Where batches are written: the seam between the consumer's pipeline and
//! its database. PostgreSQL ([`crate::store::Store`]) is one sink; a test can
//! put any other behind the same trait.

use std::future::Future;

use sitewatch_metric::Metric;

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

    /// Whether the sink answers now, for the health check.
    fn ping(&self) -> impl Future<Output = bool> + Send {
        async { true }
    }

    /// Sets the gauges that describe the sink (its connections), before a scrape.
    fn collect(&self) {}
}
