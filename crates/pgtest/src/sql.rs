//! SQL from async code against a [`Postgres`]: a client, and the one-number
//! queries tests check (`SELECT count(*) FROM ...`).
//!
//! The counting helpers are test helpers: a query that fails panics with the
//! SQL and the error, so that a check such as "no dead letters" cannot pass
//! because the query itself failed. Only [`count_once_created`] reads a table
//! that is not there yet as empty, for a wait that starts before the schema.

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

use crate::Postgres;

/// A client on `url` without TLS (the test servers listen on loopback); its
/// connection runs on a task of its own and ends when the client is dropped.
pub async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    drop(tokio::spawn(connection));
    Ok(client)
}

/// A client on the server's default database; panics when it cannot connect.
pub async fn client(db: &Postgres) -> Client {
    connect(&db.url()).await.unwrap_or_else(|err| {
        panic!(
            "cannot connect to the PostgreSQL on port {}: {}",
            db.port(),
            describe(&err)
        )
    })
}

/// The one number `sql` selects, e.g. `SELECT count(*) FROM metrics`;
/// panics with the SQL and the error when the query fails.
pub async fn count(db: &Postgres, sql: &str) -> i64 {
    try_count(db, sql)
        .await
        .unwrap_or_else(|err| panic!("{sql}: {}", describe(&err)))
}

/// [`count`] for a wait that may begin before the schema is made: 0 while a
/// table `sql` reads does not exist yet; any other failure panics as in [`count`].
pub async fn count_once_created(db: &Postgres, sql: &str) -> i64 {
    match try_count(db, sql).await {
        Ok(n) => n,
        Err(err) if is_undefined_table(&err) => 0,
        Err(err) => panic!("{sql}: {}", describe(&err)),
    }
}

/// Whether `err` says a table the statement reads does not exist (SQLSTATE 42P01).
pub fn is_undefined_table(err: &tokio_postgres::Error) -> bool {
    err.code() == Some(&SqlState::UNDEFINED_TABLE)
}

async fn try_count(db: &Postgres, sql: &str) -> Result<i64, tokio_postgres::Error> {
    let client = connect(&db.url()).await?;
    client.query_one(sql, &[]).await?.try_get(0)
}

/// The error with what the server said: tokio-postgres' own text is only "db error".
fn describe(err: &tokio_postgres::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
