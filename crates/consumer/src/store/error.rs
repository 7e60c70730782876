//! Why a write to PostgreSQL failed, told apart by whether retrying can help.

use deadpool_postgres::PoolError;
use tokio_postgres::error::SqlState;

use crate::sink::SinkError;

/// A failed database operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No connection could be had from the pool.
    #[error("no PostgreSQL connection: {0}")]
    Pool(#[from] PoolError),
    /// The database refused or the connection broke.
    #[error("PostgreSQL: {}", sitewatch_db::describe_error(.0))]
    Db(#[from] tokio_postgres::Error),
}

impl SinkError for StoreError {
    fn is_transient(&self) -> bool {
        match self {
            StoreError::Pool(_) => true,
            StoreError::Db(err) => match err.code() {
                // A value the client could not even encode is the data's fault.
                None => !err.to_string().starts_with("error serializing"),
                Some(code) => {
                    let code = code.code();
                    // Data exceptions (22), integrity violations (23) and program
                    // limits such as an index row too large (54) mean this row can
                    // never be written; anything else is the server's state.
                    !(code.starts_with("22") || code.starts_with("23") || code.starts_with("54"))
                }
            },
        }
    }
}

impl StoreError {
    /// A row of the batch is already in `metrics` (a redelivered message).
    pub(super) fn is_stored_already(&self) -> bool {
        matches!(self, StoreError::Db(err) if err.code() == Some(&SqlState::UNIQUE_VIOLATION)
            && err.as_db_error().and_then(|db| db.constraint()) == Some("metrics_pkey"))
    }

    /// A row's site is not in `websites` (deleted while its id was cached).
    pub(super) fn is_missing_site(&self) -> bool {
        matches!(self, StoreError::Db(err) if err.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION))
    }
}
