//! Every setting of the consumer, each declared once (flag, environment
//! variable, default, config-file key and help) and read in layers: the
//! default, then a TOML file (`--config`), then the environment, then flags
//! (see `sitewatch_service::settings`).

use clap::Command;
use serde::Deserialize;
use sitewatch_db::PgSettings;
use sitewatch_kafka::KafkaSettings;
use sitewatch_service::health::HealthSettings;
pub use sitewatch_service::settings::Cli;
use sitewatch_service::settings::{
    self as layers, About, LogSettings, ServiceSettings, SettingsError, TimeSpan,
};

use crate::alert::AlertSettings;
use crate::retention::RetentionSettings;
use crate::store::WritePath;

/// Every setting of the consumer.
#[derive(Debug, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Consumer group; consumers sharing it share the topic's partitions
    #[arg(
        long,
        env = "CONSUMER_GROUP_ID",
        value_name = "NAME",
        default_value = "sitewatch-consumer"
    )]
    pub group_id: String,
    /// Static membership: this member's id in the group (unique per consumer), so that a restarted consumer gets its partitions back without a rebalance of the whole group; `hostname` takes the container's host name
    #[arg(long, env = "CONSUMER_GROUP_INSTANCE_ID", value_name = "ID|hostname")]
    pub group_instance_id: Option<String>,
    /// Rows that make a batch full
    #[arg(
        long,
        env = "CONSUMER_BATCH_ROWS",
        value_name = "N",
        default_value = "5000"
    )]
    pub batch_rows: usize,
    /// Longest a message waits for its batch
    // Short: a batch is due even when few messages come, so a quiet stream
    // still makes small, cheap transactions and a metric reaches the table
    // well within the end-to-end latency goal in BENCHMARKS.md.
    #[arg(
        long,
        env = "CONSUMER_BATCH_WAIT",
        value_name = "DURATION",
        default_value = "100ms"
    )]
    pub batch_wait: TimeSpan,
    /// Batches written at once; each holds a pooled connection
    #[arg(long, env = "CONSUMER_WRITERS", value_name = "N", default_value = "2")]
    pub writers: usize,
    /// Messages read ahead of the writers before partitions pause
    #[arg(
        long,
        env = "CONSUMER_QUEUE_MESSAGES",
        value_name = "N",
        default_value = "20000"
    )]
    pub queue_messages: usize,
    /// Bytes of messages read ahead and not yet written before partitions pause, so that large messages cannot exhaust memory
    #[arg(
        long,
        env = "CONSUMER_QUEUE_BYTES",
        value_name = "BYTES",
        default_value = "67108864"
    )]
    pub queue_bytes: usize,
    /// Bytes of messages that make a batch full (as `batch_rows` does by count)
    #[arg(
        long,
        env = "CONSUMER_BATCH_BYTES",
        value_name = "BYTES",
        default_value = "16777216"
    )]
    pub batch_bytes: usize,
    /// How rows get into the table
    #[arg(
        long,
        env = "CONSUMER_WRITE_PATH",
        value_name = "WRITE_PATH",
        value_enum,
        default_value = "copy"
    )]
    pub write_path: WritePath,
    /// Keep each site's up/down state and its incidents (tables `site_state`, `incidents`) in the transaction that stores its metrics
    #[arg(
        long,
        env = "CONSUMER_TRACK_STATE",
        value_name = "BOOL",
        default_value = "true",
        action = clap::ArgAction::Set
    )]
    pub track_state: bool,
    /// After SIGTERM, time to write what was read before exiting
    #[arg(
        long,
        env = "CONSUMER_SHUTDOWN_GRACE",
        value_name = "DURATION",
        default_value = "20s"
    )]
    pub shutdown_grace: TimeSpan,
    /// On a rebalance, time to write revoked partitions before their offsets are committed
    #[arg(
        long,
        env = "CONSUMER_REVOKE_DRAIN",
        value_name = "DURATION",
        default_value = "10s"
    )]
    pub revoke_drain: TimeSpan,
    /// How often stored offsets are committed
    #[arg(
        long,
        env = "CONSUMER_COMMIT_INTERVAL",
        value_name = "DURATION",
        default_value = "1s"
    )]
    pub commit_interval: TimeSpan,
    /// At start, how long to wait for the brokers
    #[arg(
        long,
        env = "CONSUMER_CONNECT_TIMEOUT",
        value_name = "DURATION",
        default_value = "15s"
    )]
    pub connect_timeout: TimeSpan,
    /// Longest one write of a batch may take; past it the connection is dropped and the write retried
    #[arg(
        long,
        env = "CONSUMER_WRITE_TIMEOUT",
        value_name = "DURATION",
        default_value = "60s"
    )]
    pub write_timeout: TimeSpan,
    /// Attempts at a write failing for a reason not known to pass (schema drift, permissions) before the consumer stops with the error, its offsets untouched
    #[arg(
        long,
        env = "CONSUMER_UNKNOWN_ERROR_ATTEMPTS",
        value_name = "N",
        default_value = "5"
    )]
    pub unknown_error_attempts: u32,
    /// Where the service says whether it is ready, and when it is not.
    #[command(flatten)]
    #[serde(flatten)]
    pub health: HealthSettings,
    /// Notifications of sites going down and up.
    #[command(flatten)]
    pub alert: AlertSettings,
    /// How long metrics are kept.
    #[command(flatten)]
    pub retention: RetentionSettings,
    /// The Kafka cluster and topic.
    #[command(flatten)]
    pub kafka: KafkaSettings,
    /// The database.
    #[command(flatten)]
    pub postgres: PgSettings,
    /// Logging.
    #[command(flatten)]
    pub log: LogSettings,
}

impl Default for Settings {
    fn default() -> Self {
        layers::defaults()
    }
}

/// What `--help` says of the consumer.
const ABOUT: About = About {
    name: "consumer",
    version: env!("CARGO_PKG_VERSION"),
    summary: "Reads website metrics from Kafka in a consumer group and writes them to\n\
        PostgreSQL in batches: nothing lost, nothing written twice.",
    lifecycle: "Run several consumers with the\n\
        same group to share the topic's partitions. SIGTERM or SIGINT stops\n\
        fetching, writes what was read (within the grace period), commits offsets,\n\
        leaves the group and exits 0.",
    exit_codes: "0 stopped cleanly; 1 a failure at run time; 2 bad settings.",
    example: "monitor-data/consumer.example.toml",
};

/// The consumer's command line: every setting, `--config` and `--check-health`.
pub fn command() -> Command {
    layers::command::<Settings>(ABOUT.command(), "CONSUMER_CONFIG")
}

impl ServiceSettings for Settings {
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
        if self.write_timeout.is_zero() {
            return invalid("write_timeout", "must be longer than zero");
        }
        if self.unknown_error_attempts == 0 {
            return invalid("unknown_error_attempts", "must be at least 1");
        }
        if self.queue_bytes == 0 || self.batch_bytes == 0 {
            return invalid(
                "queue_bytes",
                "queue_bytes and batch_bytes must be at least 1",
            );
        }
        if self.queue_messages == 0 {
            return invalid("queue_messages", "must be at least 1");
        }
        let webhooks = match self.alert.webhooks() {
            Ok(webhooks) => webhooks,
            Err(why) => return invalid("alert.webhooks", &why),
        };
        if let Err(why) = self.alert.status_page() {
            return invalid("alert.status_page_url", &why);
        }
        if !webhooks.is_empty() && !self.track_state {
            return invalid(
                "alert.webhooks",
                "notifications come from site state: set track_state to true, or no webhooks",
            );
        }
        let retention = self.retention.metrics.get();
        if retention < std::time::Duration::from_secs(3600) {
            return invalid(
                "retention.metrics",
                "must be at least an hour: metrics are kept by the day",
            );
        }
        if retention > std::time::Duration::from_secs(1000 * 366 * 86_400) {
            return invalid("retention.metrics", "must be at most 1000 years");
        }
        let rollups = self.retention.rollups.get();
        if rollups < std::time::Duration::from_secs(86_400) {
            return invalid(
                "retention.rollups",
                "must be at least a day: rollups are made by the hour and the day",
            );
        }
        if rollups > std::time::Duration::from_secs(1000 * 366 * 86_400) {
            return invalid("retention.rollups", "must be at most 1000 years");
        }
        if rollups < retention {
            return invalid(
                "retention.rollups",
                "must be at least retention.metrics: the rollups outlive the metrics they sum",
            );
        }
        let partition = self.retention.partition.get();
        if partition.as_secs() < 3600
            || partition.as_secs() % 3600 != 0
            || partition.subsec_nanos() != 0
        {
            return invalid(
                "retention.partition",
                "must be a whole number of hours (1h, 6h, 1day, 7days, ...)",
            );
        }
        if partition > std::time::Duration::from_secs(366 * 86_400) {
            return invalid("retention.partition", "must be at most 366 days");
        }
        if self.retention.partitions_ahead > 1000 {
            return invalid("retention.partitions_ahead", "must be at most 1000");
        }
        if self.retention.every.is_zero() {
            return invalid("retention.every", "must be longer than zero");
        }
        if self.alert.timeout.is_zero() {
            return invalid("alert.timeout", "must be longer than zero");
        }
        if self.alert.retry_max.get() < std::time::Duration::from_secs(1) {
            return invalid("alert.retry_max", "must be at least 1s, the first wait");
        }
        if self.alert.refused_attempts == 0 {
            return invalid("alert.refused_attempts", "must be at least 1");
        }
        // A batch due at a revocation or at shutdown is written even when
        // every writer is busy, and a batch may wait for its turn holding its
        // connection: one connection more keeps the earlier batch writing.
        if self.postgres.pool_size <= self.writers {
            return invalid(
                "postgres.pool_size",
                "must be more than `writers`: each writer holds a connection, and one more is needed for a batch written at a revocation or at shutdown",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sitewatch_service::settings::check;

    use super::*;

    #[test]
    fn layers_and_validation() {
        let (_dir, config) =
            check::config_file("batch_rows = 100\n[postgres]\nhost = \"db\"\npool_size = 8\n");
        let s = Settings::load(&check::cli(
            command(),
            &[
                "--config",
                &config,
                "--batch-rows",
                "7",
                "--postgres-port",
                "6000",
            ],
        ))
        .expect("valid");
        assert_eq!(
            (s.batch_rows, s.postgres.port, s.postgres.host.as_str()),
            (7, 6000, "db")
        );
        let err = Settings::load(&check::cli(
            command(),
            &["--alert-webhooks", "https://hooks.example/T0/s3cr3t"],
        ))
        .expect_err("a webhook without its kind");
        let text = err.to_string();
        assert!(
            text.contains("`alert.webhooks`: webhook 1: no KIND"),
            "{text}"
        );
        assert!(!text.contains("s3cr3t"), "the URL is a credential: {text}");
        let err = Settings::load(&check::cli(
            command(),
            &[
                "--alert-webhooks",
                "json:https://h.example/",
                "--track-state",
                "false",
            ],
        ))
        .expect_err("alerts without state");
        assert!(err.to_string().contains("track_state"), "{err}");
        let empty = Settings::load(&check::cli(
            command(),
            &["--alert-webhooks", "", "--alert-status-page-url", ""],
        ))
        .expect("empty means none, as compose passes an unset variable");
        assert!(empty.alert.webhooks().expect("none").is_empty());
        assert_eq!(empty.alert.status_page(), Ok(None));
        let err = Settings::load(&check::cli(command(), &["--writers", "4"]))
            .expect_err("pool too small");
        assert!(err.to_string().contains("`postgres.pool_size`"), "{err}");
        for width in ["30m", "90m", "400days"] {
            let err = Settings::load(&check::cli(command(), &["--retention-partition", width]))
                .expect_err("not a whole number of hours up to a year");
            assert!(err.to_string().contains("`retention.partition`"), "{err}");
        }
        let hourly = Settings::load(&check::cli(command(), &["--retention-partition", "1h"]))
            .expect("an hour");
        assert_eq!(hourly.retention.partition.get(), Duration::from_secs(3600));
        let err = check::file_error::<Settings>(command(), "[postgres]\nsslmode = \"sometimes\"\n");
        assert!(err.contains("sslmode"), "{err}");
    }

    #[test]
    fn help_hides_secret_values() {
        let s = Settings::load(&check::cli(
            command(),
            &[
                "--postgres-password",
                "hunter2",
                "--postgres-url",
                "postgres://u:hunter2@h/db",
            ],
        ))
        .expect("valid");
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn defaults_and_the_example_file() {
        let s = Settings::default();
        assert_eq!(
            (
                s.group_id.as_str(),
                s.batch_rows,
                s.batch_wait.get(),
                s.writers
            ),
            ("sitewatch-consumer", 5000, Duration::from_millis(100), 2)
        );
        assert_eq!(s.write_path, WritePath::Copy);
        assert_eq!(s.postgres.pool_size, 4);
        let example = check::example("consumer.example.toml");
        let loaded = Settings::load(&check::cli(command(), &["--config", &example]))
            .expect("the example loads");
        assert_eq!(
            format!("{loaded:?}"),
            format!("{s:?}"),
            "the example shows the defaults"
        );
    }
}
