//! Settings in layers: built-in defaults, then a TOML file (`--config`), then
//! environment variables, then command-line flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;
use sitewatch_db::{PgArgs, PgSettings};
use sitewatch_kafka::{KafkaArgs, KafkaSettings};
use sitewatch_service::settings::{self as layers, set, LogArgs, LogSettings, SettingsError};

use crate::store::WritePath;

/// Every setting of the consumer, after all layers.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Consumer group; consumers sharing it share the topic's partitions.
    pub group_id: String,
    /// Rows that make a batch full.
    pub batch_rows: usize,
    /// Longest a message waits for its batch to fill.
    #[serde(with = "humantime_serde")]
    pub batch_wait: Duration,
    /// Batches written at once; each holds a pooled connection.
    pub writers: usize,
    /// Messages read ahead of the writers before partitions are paused.
    pub queue_messages: usize,
    /// How rows get into the table.
    pub write_path: WritePath,
    /// After SIGTERM, how long to write what was read before exiting.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// On a rebalance, how long revoked partitions may take to be written before their offsets are committed.
    #[serde(with = "humantime_serde")]
    pub revoke_drain: Duration,
    /// How often stored offsets are committed.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// At start, how long to wait for the brokers to answer.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// File the consumer beats into while it reaches Kafka and PostgreSQL (for container health checks).
    pub health_file: Option<PathBuf>,
    /// The Kafka cluster and topic.
    pub kafka: KafkaSettings,
    /// The database.
    pub postgres: PgSettings,
    /// Logging.
    pub log: LogSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            group_id: "sitewatch-consumer".into(),
            batch_rows: 5000,
            // A batch is due at 100 ms even when few messages come: at 1,000
            // messages/s that is 100-row transactions, cheap, and it keeps a
            // metric's way to the table well under half a second (issue 9's p99).
            batch_wait: Duration::from_millis(100),
            writers: 2,
            queue_messages: 20_000,
            write_path: WritePath::Copy,
            shutdown_grace: Duration::from_secs(20),
            revoke_drain: Duration::from_secs(10),
            commit_interval: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(15),
            health_file: None,
            kafka: KafkaSettings::default(),
            postgres: PgSettings::default(),
            log: LogSettings::default(),
        }
    }
}

/// Reads website metrics from Kafka in a consumer group and writes them to
/// PostgreSQL in batches: nothing lost, nothing written twice.
///
/// Every setting can come from a TOML file (--config), an environment
/// variable (shown below), or a flag; a flag beats the environment, which
/// beats the file, which beats the default. Run several consumers with the
/// same group to share the topic's partitions. SIGTERM or SIGINT stops
/// fetching, writes what was read (within the grace period), commits offsets,
/// leaves the group and exits 0.
#[derive(Debug, Parser)]
#[command(name = "consumer", version, verbatim_doc_comment, after_help = AFTER_HELP)]
pub struct Cli {
    /// TOML file with settings; its keys are the names in `setting` below
    #[arg(short, long, env = "CONSUMER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Consumer group [setting: group_id] [default: sitewatch-consumer]
    #[arg(long, env = "CONSUMER_GROUP_ID", value_name = "NAME")]
    pub group_id: Option<String>,
    /// Rows that make a batch full [setting: batch_rows] [default: 5000]
    #[arg(long, env = "CONSUMER_BATCH_ROWS", value_name = "N")]
    pub batch_rows: Option<usize>,
    /// Longest a message waits for its batch [setting: batch_wait] [default: 100ms]
    #[arg(long, env = "CONSUMER_BATCH_WAIT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub batch_wait: Option<Duration>,
    /// Batches written at once [setting: writers] [default: 2]
    #[arg(long, env = "CONSUMER_WRITERS", value_name = "N")]
    pub writers: Option<usize>,
    /// Messages read ahead of the writers before partitions pause [setting: queue_messages] [default: 20000]
    #[arg(long, env = "CONSUMER_QUEUE_MESSAGES", value_name = "N")]
    pub queue_messages: Option<usize>,
    /// How rows get into the table [setting: write_path] [default: copy]
    #[arg(long, env = "CONSUMER_WRITE_PATH", value_enum)]
    pub write_path: Option<WritePath>,
    /// After SIGTERM, time to write what was read [setting: shutdown_grace] [default: 20s]
    #[arg(long, env = "CONSUMER_SHUTDOWN_GRACE", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Option<Duration>,
    /// On a rebalance, time to write revoked partitions before committing [setting: revoke_drain] [default: 10s]
    #[arg(long, env = "CONSUMER_REVOKE_DRAIN", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub revoke_drain: Option<Duration>,
    /// How often stored offsets are committed [setting: commit_interval] [default: 1s]
    #[arg(long, env = "CONSUMER_COMMIT_INTERVAL", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub commit_interval: Option<Duration>,
    /// At start, how long to wait for the brokers [setting: connect_timeout] [default: 15s]
    #[arg(long, env = "CONSUMER_CONNECT_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub connect_timeout: Option<Duration>,
    /// Beat into this file every 10 s while Kafka and PostgreSQL are reachable [setting: health_file]
    #[arg(long, env = "CONSUMER_HEALTH_FILE", value_name = "FILE")]
    pub health_file: Option<PathBuf>,
    /// Exit 0 if the consumer beating into --health-file is healthy, 1 if not (a container health check)
    #[arg(long, requires = "health_file")]
    pub check_health: bool,
    /// Kafka settings (shared with the monitor) [settings: kafka.*]
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// PostgreSQL settings [settings: postgres.*]
    #[command(flatten)]
    pub postgres: PgArgs,
    /// Logging [settings: log.*]
    #[command(flatten)]
    pub log: LogArgs,
}

const AFTER_HELP: &str = "\
Exit codes: 0 stopped cleanly; 1 a failure at run time; 2 bad settings.
Durations are written like 500ms, 10s, 2m. Example config: monitor-data/consumer.example.toml";

impl Settings {
    /// Reads the layers in order; the result is validated.
    pub fn load(cli: Cli) -> Result<Settings, SettingsError> {
        let mut settings: Settings = layers::read(cli.config.as_deref())?;
        cli.apply(&mut settings);
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |setting, reason: &str| Err(SettingsError::invalid(setting, reason));
        if self.group_id.trim().is_empty() {
            return invalid("group_id", "empty");
        }
        if self.batch_rows == 0 {
            return invalid("batch_rows", "must be at least 1");
        }
        if self.writers == 0 {
            return invalid("writers", "must be at least 1");
        }
        if self.commit_interval.is_zero() {
            return invalid(
                "commit_interval",
                "must be longer than zero (0 would stop periodic commits)",
            );
        }
        if self.queue_messages == 0 {
            return invalid("queue_messages", "must be at least 1");
        }
        if self.postgres.pool_size < self.writers {
            return invalid(
                "postgres.pool_size",
                "must be at least `writers`, as each writer holds a connection",
            );
        }
        Ok(())
    }
}

impl Cli {
    fn apply(self, s: &mut Settings) {
        set(&mut s.group_id, self.group_id);
        set(&mut s.batch_rows, self.batch_rows);
        set(&mut s.batch_wait, self.batch_wait);
        set(&mut s.writers, self.writers);
        set(&mut s.queue_messages, self.queue_messages);
        set(&mut s.write_path, self.write_path);
        set(&mut s.shutdown_grace, self.shutdown_grace);
        set(&mut s.revoke_drain, self.revoke_drain);
        set(&mut s.commit_interval, self.commit_interval);
        set(&mut s.connect_timeout, self.connect_timeout);
        s.health_file = self.health_file.or(s.health_file.take());
        self.log.apply(&mut s.log);
        self.kafka.apply(&mut s.kafka);
        self.postgres.apply(&mut s.postgres);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("consumer").chain(args.iter().copied()))
            .expect("flags parse")
    }

    #[test]
    fn layers_and_validation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("consumer.toml");
        std::fs::write(
            &file,
            "batch_rows = 100\n[postgres]\nhost = \"db\"\npool_size = 8\n",
        )
        .expect("write");
        let config = file.to_string_lossy().into_owned();
        let s = Settings::load(cli(&[
            "--config",
            &config,
            "--batch-rows",
            "7",
            "--postgres-port",
            "6000",
        ]))
        .expect("valid");
        assert_eq!(
            (s.batch_rows, s.postgres.port, s.postgres.host.as_str()),
            (7, 6000, "db")
        );
        let err = Settings::load(cli(&["--writers", "9"])).expect_err("pool too small");
        assert!(err.to_string().contains("`postgres.pool_size`"), "{err}");
        std::fs::write(&file, "[postgres]\nsslmode = \"sometimes\"\n").expect("write");
        let err = Settings::load(cli(&["--config", &config])).expect_err("bad sslmode");
        assert!(err.to_string().contains("sslmode"), "{err}");
    }

    #[test]
    fn help_hides_secret_values() {
        let s = Settings::load(cli(&[
            "--postgres-password",
            "hunter2",
            "--postgres-url",
            "postgres://u:hunter2@h/db",
        ]))
        .expect("valid");
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
