//! Kafka client settings shared by both services: brokers, topic, the TLS
//! files of a managed cluster, and any other librdkafka property.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::{Client, ClientContext};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// File names a managed Kafka service hands out, looked up in `certs_dir`.
pub const CA_FILE: &str = "ca.pem";
/// Client certificate file name in `certs_dir`.
pub const CERT_FILE: &str = "service.cert";
/// Client private key file name in `certs_dir`.
pub const KEY_FILE: &str = "service.key";

/// Kafka settings as read from defaults, the config file, environment and flags.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSettings {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// Topic the metrics go to.
    pub topic: String,
    /// Folder with `ca.pem`, `service.cert` and `service.key`; turns on TLS.
    pub certs_dir: Option<PathBuf>,
    /// CA certificate file (overrides `certs_dir/ca.pem`).
    pub ssl_ca: Option<PathBuf>,
    /// Client certificate file (overrides `certs_dir/service.cert`).
    pub ssl_cert: Option<PathBuf>,
    /// Client private key file (overrides `certs_dir/service.key`).
    pub ssl_key: Option<PathBuf>,
    /// Password of the private key, if it is encrypted.
    pub ssl_key_password: Option<SecretString>,
    /// Any other librdkafka property (SASL, timeouts, ...), applied last.
    pub properties: Properties,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            brokers: "localhost:9092".into(),
            topic: "website-metrics".into(),
            certs_dir: None,
            ssl_ca: None,
            ssl_cert: None,
            ssl_key: None,
            ssl_key_password: None,
            properties: Properties::default(),
        }
    }
}

/// librdkafka properties passed through as given; values whose names look
/// secret are redacted when printed.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Properties(BTreeMap<String, String>);

impl Properties {
    /// Adds `name=value` pairs; a later value for the same name wins.
    pub fn extend(&mut self, pairs: impl IntoIterator<Item = (String, String)>) {
        self.0.extend(pairs);
    }

    /// Whether `name` is set.
    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    fn is_secret(name: &str) -> bool {
        [
            "password",
            "secret",
            "key",
            "token",
            "jaas",
            "credential",
            "oauthbearer",
        ]
        .iter()
        .any(|word| name.contains(word))
    }
}

impl fmt::Debug for Properties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(name, value)| {
                let shown = if Properties::is_secret(name) {
                    "[REDACTED]"
                } else {
                    value.as_str()
                };
                (name, shown)
            }))
            .finish()
    }
}

/// A setting that cannot make a working Kafka client.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSettingsError {
    /// A TLS file named in the settings cannot be read.
    #[error("kafka TLS file {path} (setting `kafka.{setting}`) cannot be read: {source}")]
    UnreadableFile {
        /// The setting that named the file.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it cannot be read.
        #[source]
        source: std::io::Error,
    },
    /// Mutual TLS needs both halves.
    #[error("kafka client certificate {cert} has no private key: set `kafka.ssl_key` or put {KEY_FILE} next to it")]
    CertWithoutKey {
        /// The certificate given.
        cert: PathBuf,
    },
    /// The private key needs its certificate.
    #[error("kafka private key {key} has no client certificate: set `kafka.ssl_cert` or put {CERT_FILE} next to it")]
    KeyWithoutCert {
        /// The key given.
        key: PathBuf,
    },
    /// Broker list missing.
    #[error(
        "setting `kafka.brokers` is empty: give the bootstrap servers as host:port[,host:port]"
    )]
    NoBrokers,
    /// Topic missing.
    #[error("setting `kafka.topic` is empty")]
    NoTopic,
}

/// The three TLS files after `certs_dir` and the single-file settings are combined.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate, to verify the brokers.
    pub ca: Option<PathBuf>,
    /// Client certificate.
    pub cert: Option<PathBuf>,
    /// Client private key.
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    /// Whether any file is set, i.e. whether the client speaks TLS.
    pub fn any(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }
}

impl KafkaSettings {
    /// The TLS files in effect: single-file settings win over `certs_dir`.
    pub fn tls_files(&self) -> TlsFiles {
        let in_dir = |name: &str| self.certs_dir.as_ref().map(|dir| dir.join(name));
        TlsFiles {
            ca: self.ssl_ca.clone().or_else(|| in_dir(CA_FILE)),
            cert: self.ssl_cert.clone().or_else(|| in_dir(CERT_FILE)),
            key: self.ssl_key.clone().or_else(|| in_dir(KEY_FILE)),
        }
    }

    /// A one-line description safe for logs: no secret, no property value.
    pub fn describe(&self) -> String {
        let tls = self.tls_files();
        let security = match (tls.any(), tls.cert.is_some()) {
            (false, _) => "plaintext",
            (true, false) => "TLS",
            (true, true) => "mutual TLS",
        };
        format!(
            "brokers={} topic={} security={security}",
            self.brokers, self.topic
        )
    }

    /// Builds the librdkafka configuration, checking first that every TLS file
    /// can be read so that a missing file is named here rather than deep in
    /// librdkafka's own message.
    pub fn client_config(&self) -> Result<ClientConfig, KafkaSettingsError> {
        if self.brokers.trim().is_empty() {
            return Err(KafkaSettingsError::NoBrokers);
        }
        if self.topic.trim().is_empty() {
            return Err(KafkaSettingsError::NoTopic);
        }
        let mut config = ClientConfig::new();
        let _ = config.set("bootstrap.servers", &self.brokers);
        let tls = self.tls_files();
        match (&tls.cert, &tls.key) {
            (Some(cert), None) => {
                return Err(KafkaSettingsError::CertWithoutKey { cert: cert.clone() })
            }
            (None, Some(key)) => {
                return Err(KafkaSettingsError::KeyWithoutCert { key: key.clone() })
            }
            _ => {}
        }
        if tls.any() {
            let _ = config.set("security.protocol", "ssl");
        }
        let files = [
            ("ssl_ca", "ssl.ca.location", &tls.ca),
            ("ssl_cert", "ssl.certificate.location", &tls.cert),
            ("ssl_key", "ssl.key.location", &tls.key),
        ];
        for (setting, property, path) in files {
            if let Some(path) = path {
                check_readable(setting, path)?;
                let _ = config.set(property, path.to_string_lossy());
            }
        }
        if let Some(password) = &self.ssl_key_password {
            let _ = config.set("ssl.key.password", password.expose_secret());
        }
        for (name, value) in &self.properties.0 {
            let _ = config.set(name, value);
        }
        Ok(config)
    }
}

/// Asks the brokers for the topic's metadata, so that an unreachable cluster
/// or a refused TLS handshake shows at start-up; returns the partition count,
/// or `None` when the topic does not exist yet. Blocks up to `timeout`.
pub fn topic_partitions<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    timeout: std::time::Duration,
) -> Result<Option<usize>, KafkaError> {
    let metadata = client.fetch_metadata(Some(topic), Timeout::After(timeout))?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len()))
}

/// How often the same broker error is logged again while it repeats: librdkafka
/// reports a refused handshake on every reconnect, several times a second.
const REPEAT_LOG_EVERY: Duration = Duration::from_secs(60);

/// The errors librdkafka reports about the brokers, kept so that a failed
/// start can say why, and logged once a minute per kind rather than on every
/// reconnect. Client contexts call [`BrokerErrors::record`] from their
/// `error` callback and [`BrokerErrors::log`] from their `log` callback.
#[derive(Debug, Default)]
pub struct BrokerErrors {
    state: Mutex<ErrorState>,
}

#[derive(Debug, Default)]
struct ErrorState {
    /// The last reason that said something about a broker ("all brokers are down" does not).
    last: Option<String>,
    /// When each kind of error was last logged.
    logged: HashMap<String, Instant>,
}

impl BrokerErrors {
    /// Keeps `reason` as the last error and logs it unless an error of the
    /// same kind was logged within the last minute.
    pub fn record(&self, error: &KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        // A summary without a cause; the error before it says which broker failed and why.
        if code != Some(RDKafkaErrorCode::AllBrokersDown) {
            state.last = Some(reason.to_owned());
        }
        let kind = code.map_or_else(|| error.to_string(), |code| format!("{code:?}"));
        let now = Instant::now();
        let due = state
            .logged
            .get(&kind)
            .is_none_or(|at| now.duration_since(*at) >= REPEAT_LOG_EVERY);
        if due {
            tracing::error!(error = %error, reason, "Kafka client error (the same kind is logged again after a minute at most)");
            let _ = state.logged.insert(kind, now);
        }
    }

    /// Forwards a librdkafka log line to `tracing`, except connection
    /// failures, which the error callback reports (and rate-limits) too.
    pub fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if fac == "FAIL" {
            return;
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", fac, "{message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", fac, "{message}");
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{message}"),
        }
    }

    /// The last reason recorded that names a broker, if any.
    pub fn last(&self) -> Option<String> {
        self.state.lock().ok().and_then(|state| state.last.clone())
    }
}

/// Why the brokers did not answer, in words an operator can act on: a TLS
/// failure names the file to replace; otherwise librdkafka's last reason.
pub fn explain_unreachable(settings: &KafkaSettings, last_error: Option<&str>) -> String {
    let tls = settings.tls_files();
    let shown = |path: &Option<PathBuf>| {
        path.as_ref()
            .map_or_else(|| "(not set)".to_owned(), |p| p.display().to_string())
    };
    let Some(reason) = last_error else {
        return format!(
            "no broker answered; check that {} is the bootstrap address and that this host can reach it",
            settings.brokers
        );
    };
    let lower = reason.to_ascii_lowercase();
    if lower.contains("certificate verify failed") {
        let trusted = match &tls.ca {
            Some(ca) => format!("the CA in {}", ca.display()),
            None => "this system's CA certificates".to_owned(),
        };
        return format!(
            "TLS: the broker's certificate is not signed by {trusted}; use the CA certificate of this Kafka service (ca.pem). librdkafka: {reason}"
        );
    }
    let refused_client = [
        "certificate required",
        "unknown ca",
        "bad certificate",
        "certificate unknown",
        "handshake failure",
    ];
    if refused_client.iter().any(|s| lower.contains(s)) {
        return format!(
            "TLS: the broker refused the client certificate {} (with key {}): it is not signed by a CA the broker trusts; download service.cert and service.key of this Kafka service again. librdkafka: {reason}",
            shown(&tls.cert),
            shown(&tls.key)
        );
    }
    if lower.contains("ssl") {
        return format!("TLS handshake failed: {reason}");
    }
    format!("last broker error: {reason}")
}

fn check_readable(setting: &'static str, path: &Path) -> Result<(), KafkaSettingsError> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|source| KafkaSettingsError::UnreadableFile {
            setting,
            path: path.to_owned(),
            source,
        })
}

/// Command-line flags (and their environment variables) for the Kafka settings,
/// shared by both services so that one `.env` configures both.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, host:port[,host:port] [default: localhost:9092]
    #[arg(
        long = "kafka-brokers",
        env = "SITEWATCH_KAFKA_BROKERS",
        value_name = "HOST:PORT"
    )]
    pub brokers: Option<String>,
    /// Topic of the metrics [default: website-metrics]
    #[arg(
        long = "kafka-topic",
        env = "SITEWATCH_KAFKA_TOPIC",
        value_name = "NAME"
    )]
    pub topic: Option<String>,
    /// Folder with ca.pem, service.cert and service.key (a managed Kafka's files); turns on TLS
    #[arg(
        long = "kafka-certs-dir",
        env = "SITEWATCH_KAFKA_CERTS_DIR",
        value_name = "DIR"
    )]
    pub certs_dir: Option<PathBuf>,
    /// CA certificate file, instead of <certs-dir>/ca.pem
    #[arg(
        long = "kafka-ssl-ca",
        env = "SITEWATCH_KAFKA_SSL_CA",
        value_name = "FILE"
    )]
    pub ssl_ca: Option<PathBuf>,
    /// Client certificate file, instead of <certs-dir>/service.cert
    #[arg(
        long = "kafka-ssl-cert",
        env = "SITEWATCH_KAFKA_SSL_CERT",
        value_name = "FILE"
    )]
    pub ssl_cert: Option<PathBuf>,
    /// Client private key file, instead of <certs-dir>/service.key
    #[arg(
        long = "kafka-ssl-key",
        env = "SITEWATCH_KAFKA_SSL_KEY",
        value_name = "FILE"
    )]
    pub ssl_key: Option<PathBuf>,
    /// Password of an encrypted private key (never printed)
    #[arg(
        long = "kafka-ssl-key-password",
        env = "SITEWATCH_KAFKA_SSL_KEY_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub ssl_key_password: Option<String>,
    /// Any librdkafka property as NAME=VALUE, repeatable (e.g. sasl.mechanism=PLAIN); one per line in the environment variable
    #[arg(
        short = 'X',
        long = "kafka-property",
        env = "SITEWATCH_KAFKA_PROPERTIES",
        value_name = "NAME=VALUE",
        value_parser = parse_property,
        // Values may hold commas and semicolons (sasl.jaas.config, debug lists); lines may not.
        value_delimiter = '\n',
        hide_env_values = true
    )]
    pub properties: Vec<(String, String)>,
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.to_owned()))
        }
        // The value is not echoed: it may be a password.
        _ => Err("expected NAME=VALUE".to_owned()),
    }
}

impl KafkaArgs {
    /// Lays these flags over settings read from defaults and the config file.
    pub fn apply(self, settings: &mut KafkaSettings) {
        let KafkaArgs {
            brokers,
            topic,
            certs_dir,
            ssl_ca,
            ssl_cert,
            ssl_key,
            ssl_key_password,
            properties,
        } = self;
        if let Some(v) = brokers {
            settings.brokers = v;
        }
        if let Some(v) = topic {
            settings.topic = v;
        }
        settings.certs_dir = certs_dir.or(settings.certs_dir.take());
        settings.ssl_ca = ssl_ca.or(settings.ssl_ca.take());
        settings.ssl_cert = ssl_cert.or(settings.ssl_cert.take());
        settings.ssl_key = ssl_key.or(settings.ssl_key.take());
        if let Some(v) = ssl_key_password {
            settings.ssl_key_password = Some(SecretString::from(v));
        }
        settings.properties.extend(properties);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_certs_dir(dir: &Path) -> KafkaSettings {
        KafkaSettings {
            certs_dir: Some(dir.to_owned()),
            ssl_key_password: Some(SecretString::from("hunter2")),
            ..KafkaSettings::default()
        }
    }

    #[test]
    fn certs_dir_gives_the_three_managed_kafka_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in [CA_FILE, CERT_FILE, KEY_FILE] {
            std::fs::write(dir.path().join(name), "pem").expect("write");
        }
        let config = with_certs_dir(dir.path()).client_config().expect("config");
        assert_eq!(config.get("security.protocol"), Some("ssl"));
        let key = dir.path().join(KEY_FILE);
        assert_eq!(config.get("ssl.key.location"), key.to_str());
        assert_eq!(config.get("ssl.key.password"), Some("hunter2"));
    }

    #[test]
    fn a_missing_file_is_named_with_its_setting() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(CA_FILE), "pem").expect("write");
        std::fs::write(dir.path().join(CERT_FILE), "pem").expect("write");
        let err = with_certs_dir(dir.path())
            .client_config()
            .expect_err("no key");
        let text = err.to_string();
        assert!(
            text.contains("service.key") && text.contains("kafka.ssl_key"),
            "{text}"
        );
    }

    #[test]
    fn secrets_never_print() {
        let mut settings = with_certs_dir(Path::new("/nowhere"));
        settings.properties.extend([
            ("sasl.password".to_owned(), "s3cret".to_owned()),
            ("sasl.mechanism".to_owned(), "PLAIN".to_owned()),
        ]);
        let printed = format!("{settings:?} {}", settings.describe());
        assert!(
            !printed.contains("hunter2") && !printed.contains("s3cret"),
            "{printed}"
        );
        assert!(printed.contains("PLAIN"), "{printed}");
    }

    #[test]
    fn flags_override_file_settings() {
        let mut settings = KafkaSettings {
            brokers: "file:9092".into(),
            ..KafkaSettings::default()
        };
        KafkaArgs {
            brokers: Some("flag:9092".into()),
            properties: vec![
                ("linger.ms".into(), "5".into()),
                ("debug".into(), "broker,topic".into()),
            ],
            ..KafkaArgs::default()
        }
        .apply(&mut settings);
        assert_eq!(settings.brokers, "flag:9092");
        assert!(settings.properties.contains("linger.ms"));
        assert_eq!(
            parse_property("novalue").map_err(|e| e.contains("NAME=VALUE")),
            Err(true)
        );
    }

    #[test]
    fn a_tls_failure_names_the_file_to_replace() {
        let settings = with_certs_dir(Path::new("/certs"));
        let wrong_ca = explain_unreachable(
            &settings,
            Some("ssl://k:9093/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed"),
        );
        assert!(
            wrong_ca.contains("not signed by the CA in /certs/ca.pem"),
            "{wrong_ca}"
        );

        let refused = explain_unreachable(
            &settings,
            Some("ssl://k:9093/bootstrap: Receive failed: error:0A00045C:SSL routines::tlsv13 alert certificate required"),
        );
        assert!(
            refused.contains("refused the client certificate /certs/service.cert"),
            "{refused}"
        );

        let silent = explain_unreachable(&settings, None);
        assert!(silent.contains("no broker answered"), "{silent}");
    }

    #[test]
    fn the_last_reason_names_a_broker() {
        let errors = BrokerErrors::default();
        assert_eq!(errors.last(), None);
        let down = KafkaError::Global(RDKafkaErrorCode::AllBrokersDown);
        errors.record(&down, "1/1 brokers are down");
        assert_eq!(errors.last(), None, "a summary is not a reason");
        let ssl = KafkaError::Global(RDKafkaErrorCode::SSL);
        errors.record(&ssl, "ssl://k:9093: certificate verify failed");
        errors.record(&down, "1/1 brokers are down");
        assert_eq!(
            errors.last().as_deref(),
            Some("ssl://k:9093: certificate verify failed")
        );
    }
}
