//! PostgreSQL connection settings shared by the consumer (which writes) and
//! the monitor (which can read its sites from the `websites` table): a URL or
//! separate fields, TLS modes as libpq names them, and a bounded pool.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{
    ClientWrapper, Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime,
};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sitewatch_service::settings::{self, TimeSpan};
use tokio_postgres_rustls::MakeRustlsConnect;

/// How the connection to PostgreSQL is protected, with libpq's names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS if the server offers it, plain otherwise; the certificate is not checked.
    #[default]
    Prefer,
    /// TLS, without checking the certificate (protects against eavesdropping only),
    /// unless a CA file is given: then the chain is checked, as libpq does.
    Require,
    /// TLS, certificate signed by a trusted CA, any host name.
    VerifyCa,
    /// TLS, certificate signed by a trusted CA and issued for the host.
    VerifyFull,
}

impl SslMode {
    fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl FromStr for SslMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "disable" => Ok(SslMode::Disable),
            "prefer" | "allow" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            other => Err(format!(
                "unknown sslmode {other:?}; use disable, prefer, require, verify-ca or verify-full"
            )),
        }
    }
}

/// Where PostgreSQL is and how to log in, each setting declared once: its
/// flag, environment variable, default and config-file key (the `id`).
///
/// `url` wins over the separate fields it sets; `sslmode`, `ca_file`,
/// `pool_size` and `connect_timeout` apply either way. `Debug` shows the
/// password and the URL redacted.
#[derive(Debug, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct PgSettings {
    /// PostgreSQL URL, postgres://user:password@host:port/db?sslmode=... (never printed)
    #[arg(
        id = "postgres.url",
        long = "postgres-url",
        env = "SITEWATCH_POSTGRES_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub url: Option<SecretString>,
    /// PostgreSQL host, when no URL is given
    #[arg(
        id = "postgres.host",
        long = "postgres-host",
        env = "SITEWATCH_POSTGRES_HOST",
        value_name = "HOST",
        default_value = "localhost"
    )]
    pub host: String,
    /// PostgreSQL port
    #[arg(
        id = "postgres.port",
        long = "postgres-port",
        env = "SITEWATCH_POSTGRES_PORT",
        value_name = "PORT",
        default_value = "5432"
    )]
    pub port: u16,
    /// PostgreSQL user
    #[arg(
        id = "postgres.user",
        long = "postgres-user",
        env = "SITEWATCH_POSTGRES_USER",
        value_name = "USER",
        default_value = "postgres"
    )]
    pub user: String,
    /// PostgreSQL password (never printed)
    #[arg(
        id = "postgres.password",
        long = "postgres-password",
        env = "SITEWATCH_POSTGRES_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<SecretString>,
    /// PostgreSQL database
    #[arg(
        id = "postgres.database",
        long = "postgres-database",
        env = "SITEWATCH_POSTGRES_DATABASE",
        value_name = "NAME",
        default_value = "sitewatch"
    )]
    pub database: String,
    /// TLS to PostgreSQL (`sslmode` in the URL overrides it)
    #[arg(
        id = "postgres.sslmode",
        long = "postgres-sslmode",
        env = "SITEWATCH_POSTGRES_SSLMODE",
        value_name = "SSLMODE",
        value_enum,
        default_value = "prefer"
    )]
    pub sslmode: SslMode,
    /// CA certificate (PEM) for verify-ca / verify-full; the system CAs otherwise
    #[arg(
        id = "postgres.ca_file",
        long = "postgres-ca-file",
        env = "SITEWATCH_POSTGRES_CA_FILE",
        value_name = "FILE"
    )]
    pub ca_file: Option<PathBuf>,
    /// Connections in the pool, at most
    #[arg(
        id = "postgres.pool_size",
        long = "postgres-pool-size",
        env = "SITEWATCH_POSTGRES_POOL_SIZE",
        value_name = "N",
        default_value = "4"
    )]
    pub pool_size: usize,
    /// How long a connection attempt to PostgreSQL may take
    #[arg(
        id = "postgres.connect_timeout",
        long = "postgres-connect-timeout",
        env = "SITEWATCH_POSTGRES_CONNECT_TIMEOUT",
        value_name = "DURATION",
        default_value = "10s"
    )]
    pub connect_timeout: TimeSpan,
    /// Longest a statement may run on the server before it is cancelled (0s: no limit); a transaction left idle 10 s longer than this (its client gone) is ended
    #[arg(
        id = "postgres.statement_timeout",
        long = "postgres-statement-timeout",
        env = "SITEWATCH_POSTGRES_STATEMENT_TIMEOUT",
        value_name = "DURATION",
        default_value = "30s"
    )]
    pub statement_timeout: TimeSpan,
    /// Longest data sent may stay unacknowledged before the connection counts as broken (a blackholed network, a failover); keepalives probe an idle connection as often
    #[arg(
        id = "postgres.tcp_user_timeout",
        long = "postgres-tcp-user-timeout",
        env = "SITEWATCH_POSTGRES_TCP_USER_TIMEOUT",
        value_name = "DURATION",
        default_value = "30s"
    )]
    pub tcp_user_timeout: TimeSpan,
    /// Longest a task waits for a free connection of the pool
    #[arg(
        id = "postgres.pool_wait_timeout",
        long = "postgres-pool-wait-timeout",
        env = "SITEWATCH_POSTGRES_POOL_WAIT_TIMEOUT",
        value_name = "DURATION",
        default_value = "30s"
    )]
    pub pool_wait_timeout: TimeSpan,
}

impl Default for PgSettings {
    fn default() -> Self {
        settings::defaults()
    }
}

/// Settings that cannot make a connection.
#[derive(Debug, thiserror::Error)]
pub enum PgSettingsError {
    /// The URL does not parse; the URL itself is not repeated, as it may hold a password.
    #[error("setting `postgres.url` is not a valid PostgreSQL URL: {0}")]
    Url(String),
    /// The CA file is unusable.
    #[error("PostgreSQL CA file {path} (setting `postgres.ca_file`): {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A pool setting is out of range.
    #[error("setting `postgres.pool_size`: must be at least 1")]
    PoolSize,
    /// rustls refused the configuration.
    #[error("cannot set up TLS for PostgreSQL: {0}")]
    Tls(String),
    /// deadpool refused the configuration.
    #[error("cannot build the PostgreSQL pool: {0}")]
    Pool(String),
    /// A role name that is not a plain identifier.
    #[error("role `{0}`: a role name is letters, digits and _ only")]
    Role(String),
}

/// A connection configuration and the TLS connector to use with it.
#[derive(Clone)]
pub struct Connector {
    /// tokio-postgres settings (holds the password; never printed).
    pub config: tokio_postgres::Config,
    /// TLS for the connection (unused when sslmode is disable).
    pub tls: MakeRustlsConnect,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Connector { .. }")
    }
}

impl Connector {
    /// Opens one connection outside the pool (migrations, long reads), driving it on a task.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = self.config.connect(self.tls.clone()).await?;
        drop(tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "PostgreSQL connection ended");
            }
        }));
        Ok(client)
    }
}

/// How much longer than a statement may run a transaction may stay idle:
/// a batch waits for its turn, holding its transaction, for a few seconds.
const IDLE_IN_TRANSACTION_MARGIN: Duration = Duration::from_secs(10);

impl PgSettings {
    /// A description safe for logs: no password, no URL.
    pub fn describe(&self) -> String {
        match self.parsed() {
            Ok((config, mode)) => {
                let host = config
                    .get_hosts()
                    .first()
                    .map(|h| match h {
                        tokio_postgres::config::Host::Tcp(name) => name.clone(),
                        tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
                    })
                    .unwrap_or_default();
                let port = config.get_ports().first().copied().unwrap_or(5432);
                format!(
                    "host={host} port={port} user={} database={} sslmode={} pool_size={}",
                    config.get_user().unwrap_or(""),
                    config.get_dbname().unwrap_or(""),
                    mode.as_str(),
                    self.pool_size
                )
            }
            Err(_) => "unparseable postgres.url".into(),
        }
    }

    /// The URL (or fields) turned into a tokio-postgres config and the effective TLS mode.
    fn parsed(&self) -> Result<(tokio_postgres::Config, SslMode), PgSettingsError> {
        self.parsed_with_ca()
            .map(|(config, mode, _)| (config, mode))
    }

    /// Like `parsed`, with the CA file from `sslrootcert` in the URL or `ca_file`.
    fn parsed_with_ca(
        &self,
    ) -> Result<(tokio_postgres::Config, SslMode, Option<PathBuf>), PgSettingsError> {
        let mut mode = self.sslmode;
        let mut ca_file = self.ca_file.clone();
        let mut config = match &self.url {
            Some(url) => {
                // tokio-postgres knows neither verify-ca nor verify-full, so the TLS
                // parameters are taken out of the URL and handled here.
                let mut parsed = url::Url::parse(url.expose_secret())
                    .map_err(|e| PgSettingsError::Url(e.to_string()))?;
                let mut kept = Vec::new();
                for (name, value) in parsed.query_pairs() {
                    match name.as_ref() {
                        "sslmode" => mode = value.parse().map_err(PgSettingsError::Url)?,
                        "sslrootcert" => ca_file = Some(PathBuf::from(value.as_ref())),
                        _ => kept.push((name.into_owned(), value.into_owned())),
                    }
                }
                parsed.set_query(None);
                if !kept.is_empty() {
                    let _ = parsed.query_pairs_mut().extend_pairs(kept);
                }
                tokio_postgres::Config::from_str(parsed.as_str())
                    .map_err(|e| PgSettingsError::Url(e.to_string()))?
            }
            None => {
                let mut config = tokio_postgres::Config::new();
                let _ = config
                    .host(&self.host)
                    .port(self.port)
                    .user(&self.user)
                    .dbname(&self.database);
                if let Some(password) = &self.password {
                    let _ = config.password(password.expose_secret());
                }
                config
            }
        };
        let ssl = match mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        };
        let _ = config
            .ssl_mode(ssl)
            .connect_timeout(self.connect_timeout.get());
        self.bound_waits(&mut config);
        if config.get_application_name().is_none() {
            let _ = config.application_name("sitewatch");
        }
        Ok((config, mode, ca_file))
    }

    /// Bounds what the network and the server can make a connection wait
    /// for: a statement by `statement_timeout` (server side), unacknowledged
    /// data by `tcp_user_timeout`, an idle connection to a vanished server by
    /// keepalives probing at the same pace.
    ///
    /// And the other way round, what a vanished client can hold on the
    /// server: a session whose client is gone (a network cut, a container
    /// killed without its TCP connection closed) keeps its transaction, and
    /// the rows it wrote stay locked against the consumer that takes its
    /// partitions over, until the server notices. The server's own
    /// keepalives notice at the client's pace, and a transaction left idle
    /// longer than a statement may run, and the pauses a writer makes
    /// between its statements (waiting for its turn), is ended.
    fn bound_waits(&self, config: &mut tokio_postgres::Config) {
        let mut options = Vec::new();
        let statement = self.statement_timeout.get();
        if !statement.is_zero() {
            options.push(format!("-c statement_timeout={}", statement.as_millis()));
            options.push(format!(
                "-c idle_in_transaction_session_timeout={}",
                (statement + IDLE_IN_TRANSACTION_MARGIN).as_millis()
            ));
        }
        let user = self.tcp_user_timeout.get();
        if !user.is_zero() {
            let probe_every = (user / 3).max(Duration::from_secs(1));
            let _ = config
                .tcp_user_timeout(user)
                .keepalives(true)
                .keepalives_idle(probe_every)
                .keepalives_interval(probe_every)
                .keepalives_retries(3);
            options.push(format!("-c tcp_user_timeout={}", user.as_millis()));
            options.push(format!("-c tcp_keepalives_idle={}", probe_every.as_secs()));
            options.push(format!(
                "-c tcp_keepalives_interval={}",
                probe_every.as_secs()
            ));
            options.push("-c tcp_keepalives_count=3".to_owned());
        }
        if !options.is_empty() {
            let options = options.join(" ");
            let options = match config.get_options() {
                Some(given) => format!("{given} {options}"),
                None => options,
            };
            let _ = config.options(options);
        }
    }

    /// The connection settings and TLS connector these settings describe.
    pub fn connector(&self) -> Result<Connector, PgSettingsError> {
        let (config, mode, ca_file) = self.parsed_with_ca()?;
        let tls = crate::tls::tls_config(mode, ca_file.as_deref())?;
        Ok(Connector {
            config,
            tls: MakeRustlsConnect::new(tls),
        })
    }

    /// A bounded pool of connections.
    pub fn pool(&self) -> Result<Pool, PgSettingsError> {
        self.pool_of(self.connector()?, None)
    }

    /// A bounded pool of connections whose sessions take on `role` (a role
    /// name: letters, digits, `_`) and start every transaction read-only,
    /// for a service that must not write whatever its queries say. A new
    /// session that is not both (a connection pooler that drops startup
    /// options) is refused, with the reason.
    pub fn read_only_pool(&self, role: &str) -> Result<Pool, PgSettingsError> {
        if role.is_empty() || !role.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(PgSettingsError::Role(role.to_owned()));
        }
        let mut connector = self.connector()?;
        let read_only = format!("-c role={role} -c default_transaction_read_only=on");
        let options = match connector.config.get_options() {
            Some(given) => format!("{given} {read_only}"),
            None => read_only,
        };
        let _ = connector.config.options(options);
        let role = role.to_owned();
        let check = Hook::async_fn(move |client: &mut ClientWrapper, _| {
            let role = role.clone();
            Box::pin(async move {
                let row = client
                    .query_one(
                        "SELECT current_user::text, current_setting('transaction_read_only')",
                        &[],
                    )
                    .await
                    .map_err(HookError::Backend)?;
                let (user, read_only): (String, String) = (row.get(0), row.get(1));
                if user != role || read_only != "on" {
                    return Err(HookError::message(format!(
                        "the session runs as {user} with transaction_read_only {read_only}, not as the read role {role}, read-only: does a connection pooler drop the startup options?"
                    )));
                }
                Ok(())
            })
        });
        self.pool_of(connector, Some(check))
    }

    fn pool_of(
        &self,
        connector: Connector,
        post_create: Option<Hook>,
    ) -> Result<Pool, PgSettingsError> {
        if self.pool_size == 0 {
            return Err(PgSettingsError::PoolSize);
        }
        let manager = Manager::from_config(
            connector.config,
            connector.tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let builder = Pool::builder(manager);
        let builder = match post_create {
            Some(hook) => builder.post_create(hook),
            None => builder,
        };
        builder
            .max_size(self.pool_size)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(self.connect_timeout.get()))
            .wait_timeout(Some(self.pool_wait_timeout.get()))
            .build()
            .map_err(|e| PgSettingsError::Pool(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn url_with_libpq_sslmode_is_understood_and_never_printed() {
        let s = PgSettings {
            url: Some(SecretString::from("postgres://app:s3cret@db.internal:6543/metrics?sslmode=verify-full&application_name=x")),
            ..PgSettings::default()
        };
        let printed = format!("{s:?} {}", s.describe());
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(
            printed.contains(
                "host=db.internal port=6543 user=app database=metrics sslmode=verify-full"
            ),
            "{printed}"
        );
        let (config, mode) = s.parsed().expect("parses");
        assert_eq!(mode, SslMode::VerifyFull);
        assert_eq!(config.get_password(), Some(&b"s3cret"[..]));
        assert_eq!(config.get_application_name(), Some("x"));
    }

    #[test]
    fn fields_build_the_same_config() {
        let s = PgSettings {
            password: Some(SecretString::from("s3cret-pw")),
            sslmode: SslMode::Disable,
            ..PgSettings::default()
        };
        let (config, mode) = s.parsed().expect("parses");
        assert_eq!(config.get_dbname(), Some("sitewatch"));
        assert_eq!(config.get_password(), Some(&b"s3cret-pw"[..]));
        assert_eq!(mode, SslMode::Disable);
        assert!(!format!("{s:?}").contains("s3cret-pw"), "{s:?}");
    }

    #[test]
    fn bad_url_and_bad_sslmode_are_named_without_the_url() {
        let s = PgSettings {
            url: Some(SecretString::from(
                "postgres://u:hunter2@h/db?sslmode=sometimes",
            )),
            ..PgSettings::default()
        };
        let err = s.connector().expect_err("bad sslmode").to_string();
        assert!(
            err.contains("postgres.url") && err.contains("sometimes") && !err.contains("hunter2"),
            "{err}"
        );
    }

    #[test]
    fn defaults_come_from_the_declaration() {
        let s = PgSettings::default();
        assert_eq!(
            s.describe(),
            "host=localhost port=5432 user=postgres database=sitewatch sslmode=prefer pool_size=4"
        );
        assert_eq!(s.connect_timeout.get(), Duration::from_secs(10));
        assert!(s.url.is_none() && s.password.is_none() && s.ca_file.is_none());
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let s = PgSettings {
            sslmode: SslMode::VerifyFull,
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..PgSettings::default()
        };
        let err = s.connector().expect_err("missing CA").to_string();
        assert!(
            err.contains("/nonexistent/ca.pem") && err.contains("postgres.ca_file"),
            "{err}"
        );
    }
}
