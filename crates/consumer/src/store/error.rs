//! Why a write to PostgreSQL failed, told apart by whether retrying can help.

use deadpool_postgres::PoolError;
use tokio_postgres::error::SqlState;

use crate::sink::{Fault, SinkError};

/// A failed database operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No connection could be had from the pool.
    #[error("no PostgreSQL connection: {0}")]
    Pool(#[from] PoolError),
    /// The database refused or the connection broke.
    #[error("PostgreSQL: {}", sitewatch_db::describe_error(.0))]
    Db(#[from] tokio_postgres::Error),
    /// The write took longer than `write_timeout`; its connection was dropped.
    #[error("PostgreSQL did not finish the write within {0:?}; the connection was dropped")]
    TimedOut(std::time::Duration),
    /// The earlier batches of the same partitions took too long: this one
    /// gave its rows back, to be written again.
    #[error("an earlier batch of the same partitions was still being written after {0:?}; this one is written again")]
    TurnTimedOut(std::time::Duration),
    /// A site's state was written by another writer since this one read it.
    #[error("a site's state was written meanwhile by another writer (a partition handed over); retrying with it read again")]
    StateMoved,
    /// An earlier batch of the same partitions was given up, so this one
    /// cannot move its sites' state in order.
    #[error("{0}")]
    OutOfTurn(#[from] crate::sink::TurnLost),
}

impl SinkError for StoreError {
    /// The policy, by SQLSTATE (README, "Errors by cause"): data exceptions
    /// (class 22) and an index row too large (54000) are the message's;
    /// connection loss (08), resources (53), shutdowns (57P), cancelled
    /// statements (57014), serialization failures and deadlocks (40) and
    /// lock timeouts (55P03) are transient; everything else, constraints
    /// included (a CHECK added during an upgrade must not dead-letter the
    /// stream), is unknown.
    fn fault(&self) -> Fault {
        match self {
            StoreError::Pool(_)
            | StoreError::TimedOut(_)
            | StoreError::StateMoved
            | StoreError::TurnTimedOut(_) => Fault::Transient,
            // Retried until the consumer stops, offsets untouched: the
            // messages are read again in order by the next run.
            StoreError::OutOfTurn(_) => Fault::Unknown,
            StoreError::Db(err) => match err.code() {
                // A value the client could not even encode is the message's fault.
                None if err.to_string().starts_with("error serializing") => Fault::Message,
                // No SQLSTATE: the connection broke or closed.
                None => Fault::Transient,
                Some(code) => fault_of(code.code()),
            },
        }
    }
}

/// Whose fault an error with SQLSTATE `code` is.
pub(super) fn fault_of(code: &str) -> Fault {
    let class = &code[..code.len().min(2)];
    match (class, code) {
        ("22", _) | (_, "54000") => Fault::Message,
        ("08" | "53" | "40", _) | (_, "57014" | "57P01" | "57P02" | "57P03" | "55P03") => {
            Fault::Transient
        }
        _ => Fault::Unknown,
    }
}

impl StoreError {
    /// A row of the batch is already in `metrics` (a redelivered message):
    /// the key of the partition it falls in (`metrics_p20261207_pkey`, say).
    pub(super) fn is_stored_already(&self) -> bool {
        let StoreError::Db(err) = self else {
            return false;
        };
        let Some(db) = err.as_db_error() else {
            return false;
        };
        err.code() == Some(&SqlState::UNIQUE_VIOLATION)
            && db
                .table()
                .is_some_and(|t| t == "metrics" || t.starts_with("metrics_"))
            && db.constraint().is_some_and(|c| c.ends_with("_pkey"))
    }

    /// A row's day has no partition of `metrics` (dropped since this
    /// process made or saw it): a check violation that names no constraint.
    pub(super) fn is_missing_partition(&self) -> bool {
        matches!(self, StoreError::Db(err) if err.code() == Some(&SqlState::CHECK_VIOLATION)
            && err.as_db_error().is_some_and(|db| db.constraint().is_none()))
    }

    /// A row's site is not in `websites` (deleted while its id was cached).
    pub(super) fn is_missing_site(&self) -> bool {
        matches!(self, StoreError::Db(err) if err.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_by_sqlstate() {
        for (code, fault) in [
            ("22001", Fault::Message), // a value too long for its column
            ("22003", Fault::Message), // a number out of range
            ("54000", Fault::Message), // an index row too large (a huge URL)
            ("08006", Fault::Transient),
            ("53300", Fault::Transient),
            ("57P01", Fault::Transient),
            ("57014", Fault::Transient), // statement_timeout
            ("40001", Fault::Transient),
            ("40P01", Fault::Transient),
            ("23514", Fault::Unknown), // a CHECK added during an upgrade
            ("23502", Fault::Unknown), // a NOT NULL column the consumer does not fill
            ("42703", Fault::Unknown), // a column missing
            ("42501", Fault::Unknown), // permission denied
            ("XX000", Fault::Unknown),
        ] {
            assert_eq!(fault_of(code), fault, "{code}");
        }
    }
}
