//! A real PostgreSQL server for integration tests and the local demo, started
//! from the system binaries (Debian's `postgresql` package) in a temporary
//! directory, or in a kept data directory that survives across runs.
//!
//! ```no_run
//! let pg = sitewatch_pgtest::Postgres::start_temp()?;
//! let url = pg.create_database("consumer_test")?;
//! pg.psql("consumer_test", "CREATE TABLE t (x int); INSERT INTO t VALUES (1)")?;
//! assert_eq!(pg.psql("consumer_test", "SELECT x FROM t")?, "1");
//! # let _ = url;
//! # Ok::<(), sitewatch_pgtest::PgError>(())
//! ```
//!
//! PostgreSQL refuses to run as root, and this project's machines run
//! everything as root: then the server files belong to the `postgres` system
//! user and `initdb`/`pg_ctl` run through `runuser -u postgres`. The clients
//! (`psql`, the consumer) connect over TCP with a password, so they may run as
//! anyone.
//!
//! [`sql`] and [`wait`] are what the integration tests (and the bench) do
//! around a server: connect, count rows, wait for a condition with a
//! deadline, and read a child process's output; [`child`] sets up, signals
//! and checks the `--help` of the binaries the tests run as children.
//!
//! A server never outlives its owner: [`Postgres`] stops it on drop, and a
//! small watchdog shell process stops it (and removes the temp directory) when
//! the owning process dies without dropping it, e.g. killed by a test runner's
//! timeout or holding the server in a `static`.

mod binaries;
pub mod child;
mod command;
mod error;
mod names;
mod options;
mod psql;
mod run_as;
mod server;
pub mod sql;
mod tls;
pub mod wait;
mod watchdog;

pub use binaries::BIN_ENV;
pub use error::PgError;
pub use options::{PgOptions, DEFAULT_PASSWORD};
pub use server::Postgres;
pub use tls::TlsFiles;
