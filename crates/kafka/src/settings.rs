//! Kafka client settings shared by both services (so one `.env` configures both): brokers, topic, the TLS
//! files of a managed cluster, and any other librdkafka property.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use clap::ArgAction;
use rdkafka::ClientConfig;
use secrecy::{ExposeSecret, SecretString};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use sitewatch_service::settings;

/// File names a managed Kafka service hands out, looked up in `certs_dir`.
pub const CA_FILE: &str = "ca.pem";
/// Client certificate file name in `certs_dir`.
pub const CERT_FILE: &str = "service.cert";
/// Client private key file name in `certs_dir`.
pub const KEY_FILE: &str = "service.key";

/// Kafka settings, each declared once: its flag, environment variable,
/// default and config-file key (the `id`), shared by both services so that
/// one `.env` configures both.
#[derive(Debug, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// Kafka bootstrap servers, host:port[,host:port]
    #[arg(
        id = "kafka.brokers",
        long = "kafka-brokers",
        env = "SITEWATCH_KAFKA_BROKERS",
        value_name = "HOST:PORT",
        default_value = "localhost:9092"
    )]
    pub brokers: String,
    /// Topic of the metrics
    #[arg(
        id = "kafka.topic",
        long = "kafka-topic",
        env = "SITEWATCH_KAFKA_TOPIC",
        value_name = "NAME",
        default_value = "website-metrics"
    )]
    pub topic: String,
    /// Folder with ca.pem, service.cert and service.key (a managed Kafka's files); turns on TLS
    #[arg(
        id = "kafka.certs_dir",
        long = "kafka-certs-dir",
        env = "SITEWATCH_KAFKA_CERTS_DIR",
        value_name = "DIR"
    )]
    pub certs_dir: Option<PathBuf>,
    /// CA certificate file, instead of `<certs-dir>/ca.pem`
    #[arg(
        id = "kafka.ssl_ca",
        long = "kafka-ssl-ca",
        env = "SITEWATCH_KAFKA_SSL_CA",
        value_name = "FILE"
    )]
    pub ssl_ca: Option<PathBuf>,
    /// Client certificate file, instead of `<certs-dir>/service.cert`
    #[arg(
        id = "kafka.ssl_cert",
        long = "kafka-ssl-cert",
        env = "SITEWATCH_KAFKA_SSL_CERT",
        value_name = "FILE"
    )]
    pub ssl_cert: Option<PathBuf>,
    /// Client private key file, instead of `<certs-dir>/service.key`
    #[arg(
        id = "kafka.ssl_key",
        long = "kafka-ssl-key",
        env = "SITEWATCH_KAFKA_SSL_KEY",
        value_name = "FILE"
    )]
    pub ssl_key: Option<PathBuf>,
    /// Password of an encrypted private key (never printed)
    #[arg(
        id = "kafka.ssl_key_password",
        long = "kafka-ssl-key-password",
        env = "SITEWATCH_KAFKA_SSL_KEY_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub ssl_key_password: Option<SecretString>,
    /// Any librdkafka property as NAME=VALUE, repeatable (e.g. sasl.mechanism=PLAIN), added to the file's table; one per line in the environment variable
    #[arg(
        id = "kafka.properties",
        short = 'X',
        long = "kafka-property",
        env = "SITEWATCH_KAFKA_PROPERTIES",
        value_name = "NAME=VALUE",
        value_parser = parse_property,
        // Values may hold commas and semicolons (sasl.jaas.config, debug lists); lines may not.
        value_delimiter = '\n',
        action = ArgAction::Append,
        required = false,
        hide_env_values = true
    )]
    #[serde(default)]
    pub properties: Properties,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        settings::defaults()
    }
}

/// librdkafka properties passed through as given; values whose names look
/// secret are redacted when printed.
///
/// In a file they are a table; from flags and the environment, `NAME=VALUE`
/// entries laid over the file's table, which then come as a list (see
/// `sitewatch_service::settings`).
#[derive(Clone, Default)]
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

    /// Every property, secrets in the clear.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
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

impl<'de> Deserialize<'de> for Properties {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(PropertiesVisitor)
    }
}

/// Reads a table, a `NAME=VALUE` entry, or a list of both (later wins).
struct PropertiesVisitor;

impl<'de> Visitor<'de> for PropertiesVisitor {
    type Value = Properties;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a table of librdkafka properties or NAME=VALUE entries")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Properties, A::Error> {
        let mut properties = Properties::default();
        while let Some((name, value)) = map.next_entry::<String, String>()? {
            let _ = properties.0.insert(name, value);
        }
        Ok(properties)
    }

    fn visit_str<E: de::Error>(self, entry: &str) -> Result<Properties, E> {
        let (name, value) = parse_property(entry).map_err(E::custom)?;
        Ok(Properties(BTreeMap::from([(name, value)])))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Properties, A::Error> {
        let mut properties = Properties::default();
        while let Some(item) = seq.next_element::<Properties>()? {
            properties.0.extend(item.0);
        }
        Ok(properties)
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
        for (name, value) in self.properties.iter() {
            let _ = config.set(name, value);
        }
        Ok(config)
    }
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

fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.to_owned()))
        }
        // The value is not echoed: it may be a password.
        _ => Err("expected NAME=VALUE".to_owned()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Settings of a managed cluster whose files are in `dir`, key password `hunter2`.
    pub(crate) fn with_certs_dir(dir: &Path) -> KafkaSettings {
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
    fn flags_override_file_settings_and_add_properties() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("kafka.toml");
        std::fs::write(
            &file,
            "[kafka]\nbrokers = \"file:9092\"\n[kafka.properties]\n\"session.timeout.ms\" = 6000\n\"linger.ms\" = \"1\"\n",
        )
        .expect("write");
        let command = settings::command::<KafkaSettings>(clap::Command::new("t"), "T_CONFIG");
        let args = [
            "t",
            "--config",
            file.to_str().expect("utf8"),
            "--kafka-brokers",
            "flag:9092",
            "-X",
            "linger.ms=5",
            "--kafka-property",
            "debug=broker,topic",
        ];
        let cli = settings::Cli::try_parse_from(command, args).expect("flags parse");
        let settings: KafkaSettings = cli.read().expect("loads");
        assert_eq!(settings.brokers, "flag:9092");
        let config = settings.client_config().expect("config");
        assert_eq!(
            config.get("linger.ms"),
            Some("5"),
            "the flag beats the file"
        );
        assert_eq!(
            config.get("session.timeout.ms"),
            Some("6000"),
            "the file's table stays"
        );
        assert_eq!(config.get("debug"), Some("broker,topic"));
        assert_eq!(
            parse_property("novalue").map_err(|e| e.contains("NAME=VALUE")),
            Err(true)
        );
    }

    #[test]
    fn defaults_come_from_the_declaration() {
        let settings = KafkaSettings::default();
        assert_eq!(settings.brokers, "localhost:9092");
        assert_eq!(settings.topic, "website-metrics");
        assert!(settings.ssl_key_password.is_none() && !settings.tls_files().any());
    }
}
