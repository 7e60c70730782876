//! The schema both services use: `websites` (sites, and the monitor's
//! targets), `metrics` (one row per probe, partitioned by time),
//! `dead_letters`, site state, incidents and the alert outbox, the hourly
//! and daily rollups, the `site_uptime` function and the `site_status`
//! view, as numbered migrations embedded in the binaries.

use crate::settings::Connector;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Any number that keeps two processes from migrating the same database at once.
const MIGRATION_LOCK: i64 = 0x5173_7761_7463_6801;

/// Why the schema could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The database could not be reached or refused a statement.
    #[error("PostgreSQL: {}", crate::describe_error(.0))]
    Db(#[from] tokio_postgres::Error),
    /// A migration failed, or the database holds migrations this build does not know.
    #[error("schema migration failed: {0}")]
    Migrate(#[from] refinery::Error),
}

impl MigrateError {
    /// Whether trying again later may work: the server is not reachable yet.
    /// A schema that diverged, or a refused login, will not fix itself.
    pub fn is_transient(&self) -> bool {
        match self {
            // Refused connections, a server starting up or shutting down.
            MigrateError::Db(err) => !crate::is_refused_login(err),
            MigrateError::Migrate(err) => match err.kind() {
                refinery::error::Kind::Connection(_, source) => source
                    .downcast_ref::<tokio_postgres::Error>()
                    .is_none_or(|pg| !crate::is_refused_login(pg)),
                _ => false,
            },
        }
    }

    /// Whether the server refused who we are or where we asked to go (a wrong
    /// password, a database that does not exist), which no retry fixes.
    pub fn is_refused_login(&self) -> bool {
        match self {
            MigrateError::Db(err) => crate::is_refused_login(err),
            MigrateError::Migrate(err) => match err.kind() {
                refinery::error::Kind::Connection(_, source) => source
                    .downcast_ref::<tokio_postgres::Error>()
                    .is_some_and(crate::is_refused_login),
                _ => false,
            },
        }
    }
}

/// Applies the embedded migrations, holding an advisory lock so that two
/// processes starting together against an empty database take turns.
pub async fn migrate(connector: &Connector) -> Result<(), MigrateError> {
    migrate_until(connector, None).await
}

/// Applies the embedded migrations up to `version` only: a database as an
/// earlier release left it, to test an upgrade from.
pub async fn migrate_to(connector: &Connector, version: i32) -> Result<(), MigrateError> {
    migrate_until(connector, Some(version)).await
}

async fn migrate_until(connector: &Connector, version: Option<i32>) -> Result<(), MigrateError> {
    let mut client = connector.connect().await?;
    // A migration of a large table, or the wait for another process's, may
    // take longer than the statements of the running services may.
    client.batch_execute("SET statement_timeout = 0").await?;
    let _ = client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let mut runner = embedded::migrations::runner();
    if let Some(version) = version {
        runner = runner.set_target(refinery::Target::Version(version));
    }
    let result = runner.run_async(&mut client).await;
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await?;
    let report = result?;
    for applied in report.applied_migrations() {
        tracing::info!(
            version = applied.version(),
            name = applied.name(),
            "schema migration applied"
        );
    }
    Ok(())
}
