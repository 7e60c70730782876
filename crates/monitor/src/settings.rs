//! Every setting of the monitor, each declared once (flag, environment
//! variable, default, config-file key and help) and read in layers: the
//! default, then a TOML file (`--config`), then the environment, then flags
//! (see `sitewatch_service::settings`).

use std::path::PathBuf;

use clap::{Arg, ArgAction, Command, ValueEnum};
use serde::Deserialize;
use sitewatch_kafka::KafkaSettings;
use sitewatch_service::health::HealthSettings;
pub use sitewatch_service::settings::Cli;
use sitewatch_service::settings::{
    self as layers, About, LogSettings, ServiceSettings, SettingsError, TimeSpan,
};

use crate::source::TargetSpec;

/// Id of `--check`, which is no setting.
pub const CHECK: &str = "check";

/// Where metrics go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Output {
    /// Publish to the Kafka topic.
    #[default]
    Kafka,
    /// Print JSON lines on standard output (no Kafka needed).
    Stdout,
}

/// Every setting of the monitor.
#[derive(Debug, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Site list: a CSV file `url,interval_seconds[,regex]`, a JSON file `[{"url","interval","regex"?,"timeout"?}]`, or postgres://user:password@host/db for the enabled rows of the `websites` table
    #[arg(
        short = 't',
        long,
        env = "MONITOR_TARGETS",
        value_name = "FILE|URL",
        value_parser = clap::value_parser!(String),
        hide_env_values = true
    )]
    pub targets: Option<TargetSpec>,
    /// How often the websites table is re-read (SIGHUP re-reads at once; files are watched instead)
    #[arg(
        long,
        env = "MONITOR_TARGETS_REFRESH",
        value_name = "DURATION",
        default_value = "30s"
    )]
    pub targets_refresh: TimeSpan,
    /// Where metrics go: kafka, stdout, or both as kafka,stdout
    #[arg(
        short = 'o',
        long,
        env = "MONITOR_OUTPUT",
        value_name = "OUTPUT",
        value_enum,
        value_delimiter = ',',
        default_value = "kafka"
    )]
    pub output: Vec<Output>,
    /// Probe every site once, publish, flush and exit
    #[arg(long, env = "MONITOR_ONCE")]
    pub once: bool,
    /// Probes running at once across all sites
    #[arg(
        long,
        env = "MONITOR_MAX_IN_FLIGHT",
        value_name = "N",
        default_value = "1000"
    )]
    pub max_in_flight: usize,
    /// Deadlines this close are served together: a probe starts up to this late, and the monitor wakes less often (0s: each at its deadline)
    #[arg(
        long,
        env = "MONITOR_SCHEDULE_SLACK",
        value_name = "DURATION",
        default_value = "5ms"
    )]
    pub schedule_slack: TimeSpan,
    /// Reload the site list when its file changes (SIGHUP always does); --no-watch turns it off
    #[arg(
        long = "no-watch",
        env = "MONITOR_WATCH_TARGETS",
        action = ArgAction::SetFalse
    )]
    pub watch_targets: bool,
    /// After SIGTERM, how long probes in flight may take
    #[arg(
        long,
        env = "MONITOR_SHUTDOWN_GRACE",
        value_name = "DURATION",
        default_value = "10s"
    )]
    pub shutdown_grace: TimeSpan,
    /// At exit, how long to wait for Kafka's confirmations
    #[arg(
        long,
        env = "MONITOR_FLUSH_TIMEOUT",
        value_name = "DURATION",
        default_value = "30s"
    )]
    pub flush_timeout: TimeSpan,
    /// At start, how long to wait for the brokers
    #[arg(
        long,
        env = "MONITOR_CONNECT_TIMEOUT",
        value_name = "DURATION",
        default_value = "15s"
    )]
    pub connect_timeout: TimeSpan,
    /// Messages the producer holds before probes wait for Kafka
    #[arg(
        long,
        env = "MONITOR_PRODUCER_QUEUE",
        value_name = "N",
        default_value = "100000"
    )]
    pub producer_queue: usize,
    /// Label the probe counter and duration histogram on /metrics with each site's URL; off by default, since every site adds series (with thousands of sites, far more than Prometheus is sized for)
    #[arg(long, env = "MONITOR_METRICS_PER_SITE")]
    pub metrics_per_site: bool,
    /// Where the service says whether it is ready, and when it is not.
    #[command(flatten)]
    #[serde(flatten)]
    pub health: HealthSettings,
    /// How probes are made.
    #[command(flatten)]
    pub probe: ProbeSettings,
    /// The Kafka cluster and topic.
    #[command(flatten)]
    pub kafka: KafkaSettings,
    /// Logging.
    #[command(flatten)]
    pub log: LogSettings,
}

/// How probes are made.
#[derive(Debug, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ProbeSettings {
    /// Timeout of a site without its own, never more than its interval
    #[arg(
        id = "probe.timeout",
        long = "probe-timeout",
        env = "MONITOR_PROBE_TIMEOUT",
        value_name = "DURATION",
        default_value = "10s"
    )]
    pub timeout: TimeSpan,
    /// Body bytes read for the regex; the rest is not downloaded
    #[arg(
        id = "probe.body_cap",
        long = "body-cap",
        env = "MONITOR_BODY_CAP",
        value_name = "BYTES",
        default_value = "1048576"
    )]
    pub body_cap: usize,
    /// Redirects followed before a probe fails with `redirect`
    #[arg(
        id = "probe.max_redirects",
        long = "max-redirects",
        env = "MONITOR_MAX_REDIRECTS",
        value_name = "N",
        default_value = "10"
    )]
    pub max_redirects: usize,
    /// Extra CA certificates (PEM) to trust for probed sites, besides the system's
    #[arg(
        id = "probe.ca_file",
        long = "ca-file",
        env = "MONITOR_CA_FILE",
        value_name = "FILE"
    )]
    pub ca_file: Option<PathBuf>,
    /// User-Agent header sent with every probe
    #[arg(
        id = "probe.user_agent",
        long = "user-agent",
        env = "MONITOR_USER_AGENT",
        value_name = "TEXT",
        default_value = concat!("sitewatch-monitor/", env!("CARGO_PKG_VERSION"))
    )]
    pub user_agent: String,
    /// Name lookups running at once: a resolver that hangs holds at most this many threads, and the probes waiting for one end at their timeout
    #[arg(
        id = "probe.dns_lookups",
        long = "dns-lookups",
        env = "MONITOR_DNS_LOOKUPS",
        value_name = "N",
        default_value = "64"
    )]
    pub dns_lookups: usize,
    /// Follow redirects to link-local addresses (169.254.0.0/16, fe80::/10, fd00:ec2::254: cloud metadata services), which are refused by default
    #[arg(
        id = "probe.allow_link_local_redirects",
        long = "allow-link-local-redirects",
        env = "MONITOR_ALLOW_LINK_LOCAL_REDIRECTS"
    )]
    pub allow_link_local_redirects: bool,
}

impl Default for Settings {
    fn default() -> Self {
        layers::defaults()
    }
}

impl Default for ProbeSettings {
    fn default() -> Self {
        layers::defaults()
    }
}

/// What `--help` says of the monitor.
const ABOUT: About = About {
    name: "monitor",
    version: env!("CARGO_PKG_VERSION"),
    summary: "Probes websites on their own schedules and publishes one JSON metric per\n\
        probe to Kafka.",
    lifecycle: "SIGHUP reloads the site list, and\n\
        so does a change of the file; SIGTERM or SIGINT stops scheduling, lets\n\
        probes in flight finish, waits for Kafka to confirm every metric, and exits.",
    exit_codes: "0 stopped cleanly; 1 a failure at run time (or metrics Kafka never confirmed); 2 bad settings or a bad site list.",
    example: "monitor-data/monitor.example.toml",
};

/// The monitor's command line: every setting, `--config`, `--check-health`
/// and `--check`.
pub fn command() -> Command {
    let check = Arg::new(CHECK)
        .long("check")
        .action(ArgAction::SetTrue)
        .help("Check the settings and the site list, then exit (0 when both are valid)");
    layers::command::<Settings>(ABOUT.command(), "MONITOR_CONFIG").arg(check)
}

impl ServiceSettings for Settings {
    fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |setting, reason: &str| Err(SettingsError::invalid(setting, reason));
        if self.targets.is_none() {
            return invalid(
                "targets",
                "no site list given: pass --targets FILE (CSV or JSON)",
            );
        }
        if self.output.is_empty() {
            return invalid("output", "name at least one of kafka, stdout");
        }
        if self.max_in_flight == 0 {
            return invalid("max_in_flight", "must be at least 1");
        }
        if self.probe.body_cap == 0 {
            return invalid("probe.body_cap", "must be at least 1 byte");
        }
        if self.probe.dns_lookups == 0 {
            return invalid("probe.dns_lookups", "must be at least 1");
        }
        if self.probe.timeout.is_zero() {
            return invalid("probe.timeout", "must be longer than zero");
        }
        if self.targets_refresh.is_zero() {
            return invalid("targets_refresh", "must be longer than zero");
        }
        if self.producer_queue == 0 {
            return invalid("producer_queue", "must be at least 1");
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
    fn flags_beat_the_file_which_beats_defaults() {
        let (_dir, config) = check::config_file(
            "targets = \"sites.csv\"\nmax_in_flight = 50\n[probe]\ntimeout = \"3s\"\n[kafka]\ntopic = \"from-file\"\n",
        );
        let s = Settings::load(&check::cli(
            command(),
            &[
                "--config",
                &config,
                "--max-in-flight",
                "7",
                "--kafka-topic",
                "from-flag",
            ],
        ))
        .expect("valid");
        assert_eq!(s.max_in_flight, 7);
        assert_eq!(s.probe.timeout.get(), Duration::from_secs(3));
        assert_eq!(s.kafka.topic, "from-flag");
        assert_eq!(s.probe.body_cap, 1024 * 1024);
        assert_eq!(s.targets, Some(TargetSpec::new("sites.csv")));
    }

    #[test]
    fn a_bad_file_setting_is_named() {
        let bad_duration = "targets = \"s.csv\"\n[probe]\ntimeout = \"soon\"\n";
        let err = check::file_error::<Settings>(command(), bad_duration);
        assert!(err.contains("probe.timeout"), "{err}");
        let unknown_key = "targets = \"s.csv\"\nmax_inflight = 3\n";
        let err = check::file_error::<Settings>(command(), unknown_key);
        assert!(err.contains("max_inflight"), "{err}");
        // The settings every service shares sit at the top of the file too.
        let bad_shared = "targets = \"s.csv\"\nunhealthy_after = \"soon\"\n";
        let err = check::file_error::<Settings>(command(), bad_shared);
        assert!(err.contains("unhealthy_after"), "{err}");
    }

    #[test]
    fn invalid_values_are_named() {
        let err = Settings::load(&check::cli(
            command(),
            &["-t", "s.csv", "--max-in-flight", "0"],
        ))
        .expect_err("zero");
        assert!(err.to_string().contains("`max_in_flight`"), "{err}");
        let err = Settings::load(&check::cli(command(), &[])).expect_err("no targets");
        assert!(err.to_string().contains("--targets"), "{err}");
        assert!(Cli::try_parse_from(command(), ["monitor", "--probe-timeout", "ten"]).is_err());
    }

    #[test]
    fn defaults_come_from_the_declaration() {
        let s = Settings::default();
        assert_eq!(s.targets, None);
        assert_eq!(s.output, [Output::Kafka]);
        assert!(s.watch_targets && !s.once);
        assert_eq!(
            (s.max_in_flight, s.producer_queue, s.schedule_slack.get()),
            (1000, 100_000, Duration::from_millis(5))
        );
        let probe = ProbeSettings::default();
        assert_eq!(probe.timeout.get(), Duration::from_secs(10));
        assert_eq!(probe.body_cap, 1024 * 1024);
        assert_eq!(
            probe.user_agent,
            concat!("sitewatch-monitor/", env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn no_watch_and_the_example_file() {
        assert!(
            !Settings::load(&check::cli(command(), &["-t", "s.csv", "--no-watch"]))
                .expect("valid")
                .watch_targets
        );
        let example = check::example("monitor.example.toml");
        let s = Settings::load(&check::cli(command(), &["--config", &example]))
            .expect("the example loads");
        let defaults = Settings {
            targets: s.targets.clone(),
            ..Settings::default()
        };
        assert_eq!(
            format!("{s:?}"),
            format!("{defaults:?}"),
            "the example shows the defaults"
        );
    }
}
