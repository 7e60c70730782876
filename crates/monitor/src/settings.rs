//! Settings in layers: built-in defaults, then a TOML file (`--config`), then
//! environment variables, then command-line flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde::Deserialize;
use sitewatch_kafka::{KafkaArgs, KafkaSettings};
use sitewatch_service::settings::{self as layers, LogArgs, LogSettings, SettingsError};

use crate::probe::ProbeSettings;
use crate::source::TargetSpec;

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

/// Every setting of the monitor, after all layers.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Site list: a CSV or JSON file, or a `postgres://` URL of the `websites` table.
    pub targets: Option<TargetSpec>,
    /// How often the `websites` table is re-read (files are watched instead).
    #[serde(with = "humantime_serde")]
    pub targets_refresh: Duration,
    /// Where metrics go: one or both of kafka and stdout.
    pub output: Vec<Output>,
    /// Probe every site once, publish, flush and exit.
    pub once: bool,
    /// Probes running at once across all sites.
    pub max_in_flight: usize,
    /// Deadlines this close together are served by one timer wake-up: a probe
    /// starts up to this late, and the monitor wakes far less often.
    #[serde(with = "humantime_serde")]
    pub schedule_slack: Duration,
    /// Reload the site list when its file changes (SIGHUP always reloads).
    pub watch_targets: bool,
    /// After SIGTERM, how long probes in flight may take to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// At exit, how long to wait for Kafka to confirm what was published.
    #[serde(with = "humantime_serde")]
    pub flush_timeout: Duration,
    /// At start, how long to wait for the brokers to answer.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Messages the producer holds before probes wait for Kafka.
    pub producer_queue: usize,
    /// File the monitor beats into while it can reach Kafka (for container health checks).
    pub health_file: Option<PathBuf>,
    /// How probes are made.
    pub probe: ProbeSettings,
    /// The Kafka cluster and topic.
    pub kafka: KafkaSettings,
    /// Logging.
    pub log: LogSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            targets: None,
            targets_refresh: Duration::from_secs(30),
            output: vec![Output::Kafka],
            once: false,
            max_in_flight: 1000,
            schedule_slack: Duration::from_millis(5),
            watch_targets: true,
            shutdown_grace: Duration::from_secs(10),
            flush_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(15),
            producer_queue: 100_000,
            health_file: None,
            probe: ProbeSettings::default(),
            kafka: KafkaSettings::default(),
            log: LogSettings::default(),
        }
    }
}

/// Probes websites on their own schedules and publishes one JSON metric per
/// probe to Kafka.
///
/// Every setting can come from a TOML file (--config), an environment
/// variable (shown below), or a flag; a flag beats the environment, which
/// beats the file, which beats the default. SIGHUP reloads the site list, and
/// so does a change of the file; SIGTERM or SIGINT stops scheduling, lets
/// probes in flight finish, waits for Kafka to confirm every metric, and exits.
#[derive(Debug, Parser)]
#[command(name = "monitor", version, verbatim_doc_comment, after_help = AFTER_HELP)]
pub struct Cli {
    /// TOML file with settings; its keys are the names in `setting` below
    #[arg(short, long, env = "MONITOR_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Site list: a CSV file `url,interval_seconds[,regex]`, a JSON file `[{"url","interval","regex"?,"timeout"?}]`, or postgres://user:password@host/db for the enabled rows of the `websites` table [setting: targets]
    #[arg(
        short,
        long,
        env = "MONITOR_TARGETS",
        value_name = "FILE|URL",
        hide_env_values = true
    )]
    pub targets: Option<String>,
    /// How often the websites table is re-read (SIGHUP re-reads at once) [setting: targets_refresh] [default: 30s]
    #[arg(long, env = "MONITOR_TARGETS_REFRESH", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub targets_refresh: Option<Duration>,
    /// Where metrics go: kafka, stdout, or both as kafka,stdout [setting: output] [default: kafka]
    #[arg(short, long, env = "MONITOR_OUTPUT", value_enum, value_delimiter = ',')]
    pub output: Option<Vec<Output>>,
    /// Probe every site once, publish, flush and exit [setting: once]
    #[arg(long)]
    pub once: bool,
    /// Check the settings and the site list, then exit (0 when both are valid)
    #[arg(long)]
    pub check: bool,
    /// Probes running at once across all sites [setting: max_in_flight] [default: 1000]
    #[arg(long, env = "MONITOR_MAX_IN_FLIGHT", value_name = "N")]
    pub max_in_flight: Option<usize>,
    /// Deadlines this close are served together: a probe starts up to this late, and the monitor wakes less often (0s: each at its deadline) [setting: schedule_slack] [default: 5ms]
    #[arg(long, env = "MONITOR_SCHEDULE_SLACK", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub schedule_slack: Option<Duration>,
    /// Do not reload the site list when its file changes (SIGHUP still does) [setting: watch_targets = false]
    #[arg(long)]
    pub no_watch: bool,
    /// Timeout of a site without its own, never more than its interval [setting: probe.timeout] [default: 10s]
    #[arg(long, env = "MONITOR_PROBE_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub probe_timeout: Option<Duration>,
    /// Body bytes read for the regex [setting: probe.body_cap] [default: 1048576]
    #[arg(long, env = "MONITOR_BODY_CAP", value_name = "BYTES")]
    pub body_cap: Option<usize>,
    /// Redirects followed before a probe fails with `redirect` [setting: probe.max_redirects] [default: 10]
    #[arg(long, env = "MONITOR_MAX_REDIRECTS", value_name = "N")]
    pub max_redirects: Option<usize>,
    /// Extra CA certificates (PEM) to trust for probed sites [setting: probe.ca_file]
    #[arg(long, env = "MONITOR_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// After SIGTERM, how long probes in flight may take [setting: shutdown_grace] [default: 10s]
    #[arg(long, env = "MONITOR_SHUTDOWN_GRACE", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Option<Duration>,
    /// At exit, how long to wait for Kafka's confirmations [setting: flush_timeout] [default: 30s]
    #[arg(long, env = "MONITOR_FLUSH_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub flush_timeout: Option<Duration>,
    /// At start, how long to wait for the brokers [setting: connect_timeout] [default: 15s]
    #[arg(long, env = "MONITOR_CONNECT_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub connect_timeout: Option<Duration>,
    /// Messages the producer holds before probes wait for Kafka [setting: producer_queue] [default: 100000]
    #[arg(long, env = "MONITOR_PRODUCER_QUEUE", value_name = "N")]
    pub producer_queue: Option<usize>,
    /// Beat into this file every 10 s while Kafka is reachable [setting: health_file]
    #[arg(long, env = "MONITOR_HEALTH_FILE", value_name = "FILE")]
    pub health_file: Option<PathBuf>,
    /// Exit 0 if the monitor beating into --health-file is healthy, 1 if not (a container health check)
    #[arg(long, requires = "health_file")]
    pub check_health: bool,
    /// Kafka settings (shared with the consumer) [settings: kafka.*]
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Logging [settings: log.*]
    #[command(flatten)]
    pub log: LogArgs,
}

const AFTER_HELP: &str = "\
Exit codes: 0 stopped cleanly; 1 a failure at run time (or metrics Kafka never confirmed); 2 bad settings or a bad site list.
Durations are written like 500ms, 10s, 2m. Example config: monitor-data/monitor.example.toml";

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

impl Cli {
    fn apply(self, s: &mut Settings) {
        use layers::set;
        s.targets = self.targets.map(TargetSpec::new).or(s.targets.take());
        set(&mut s.targets_refresh, self.targets_refresh);
        set(&mut s.output, self.output);
        s.once |= self.once;
        set(&mut s.max_in_flight, self.max_in_flight);
        set(&mut s.schedule_slack, self.schedule_slack);
        s.watch_targets &= !self.no_watch;
        set(&mut s.probe.timeout, self.probe_timeout);
        set(&mut s.probe.body_cap, self.body_cap);
        set(&mut s.probe.max_redirects, self.max_redirects);
        s.probe.ca_file = self.ca_file.or(s.probe.ca_file.take());
        set(&mut s.shutdown_grace, self.shutdown_grace);
        set(&mut s.flush_timeout, self.flush_timeout);
        set(&mut s.connect_timeout, self.connect_timeout);
        set(&mut s.producer_queue, self.producer_queue);
        s.health_file = self.health_file.or(s.health_file.take());
        self.log.apply(&mut s.log);
        self.kafka.apply(&mut s.kafka);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("monitor").chain(args.iter().copied()))
            .expect("flags parse")
    }

    #[test]
    fn flags_beat_the_file_which_beats_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("monitor.toml");
        std::fs::write(
            &file,
            "targets = \"sites.csv\"\nmax_in_flight = 50\n[probe]\ntimeout = \"3s\"\n[kafka]\ntopic = \"from-file\"\n",
        )
        .expect("write");
        let config = file.to_string_lossy().into_owned();
        let s = Settings::load(cli(&[
            "--config",
            &config,
            "--max-in-flight",
            "7",
            "--kafka-topic",
            "from-flag",
        ]))
        .expect("valid");
        assert_eq!(s.max_in_flight, 7);
        assert_eq!(s.probe.timeout, Duration::from_secs(3));
        assert_eq!(s.kafka.topic, "from-flag");
        assert_eq!(s.probe.body_cap, 1024 * 1024);
        assert_eq!(s.targets, Some(TargetSpec::new("sites.csv")));
    }

    #[test]
    fn a_bad_file_setting_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("monitor.toml");
        std::fs::write(&file, "targets = \"s.csv\"\n[probe]\ntimeout = \"soon\"\n").expect("write");
        let config = file.to_string_lossy().into_owned();
        let err = Settings::load(cli(&["--config", &config])).expect_err("bad duration");
        assert!(err.to_string().contains("probe.timeout"), "{err}");

        std::fs::write(&file, "targets = \"s.csv\"\nmax_inflight = 3\n").expect("write");
        let err = Settings::load(cli(&["--config", &config])).expect_err("unknown key");
        assert!(err.to_string().contains("max_inflight"), "{err}");
    }

    #[test]
    fn invalid_values_are_named() {
        let err = Settings::load(cli(&["-t", "s.csv", "--max-in-flight", "0"])).expect_err("zero");
        assert!(err.to_string().contains("`max_in_flight`"), "{err}");
        let err = Settings::load(cli(&[])).expect_err("no targets");
        assert!(err.to_string().contains("--targets"), "{err}");
        assert!(Cli::try_parse_from(["monitor", "--probe-timeout", "ten"]).is_err());
    }
}
