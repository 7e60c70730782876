//! PostgreSQL for both services: where the server is and how to reach it
//! ([`settings`], with libpq's TLS modes in [`tls`]), and the schema they
//! share ([`schema`]): the consumer writes `metrics` (each column mapped
//! once, in [`columns`]), the monitor can read its sites from `websites`.

pub mod columns;
pub mod schema;
pub mod settings;
mod tls;

pub use settings::{Connector, PgSettings, PgSettingsError, SslMode};

/// A PostgreSQL error in one line: the server's message, SQLSTATE and detail,
/// or the client's error and its cause.
pub fn describe_error(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!(
            "{} ({}) {}",
            db.message(),
            db.code().code(),
            db.detail().unwrap_or("")
        ),
        None => match std::error::Error::source(err) {
            Some(cause) => format!("{err}: {cause}"),
            None => err.to_string(),
        },
    }
}

/// Whether the server refused who we are or where we asked to go: a wrong
/// password (SQLSTATE class 28) or a database that does not exist (3D).
pub fn is_refused_login(err: &tokio_postgres::Error) -> bool {
    err.code()
        .is_some_and(|c| c.code().starts_with("28") || c.code().starts_with("3D"))
}
