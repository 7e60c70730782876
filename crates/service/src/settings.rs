//! The layers both services read settings from: built-in defaults, a TOML
//! file, then environment variables and flags (clap, laid over by each service).

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::telemetry::LogFormat;

/// Logging settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// Text for people, JSON for collectors.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `info,sitewatch_consumer=debug`.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// A config file that cannot be read or does not fit the settings.
#[derive(Debug, thiserror::Error)]
#[error("config file {path}: {source}")]
pub struct ConfigFileError {
    /// The file.
    pub path: PathBuf,
    /// What config/serde said, naming the key.
    #[source]
    pub source: Box<config::ConfigError>,
}

/// Settings from `file` laid over the defaults (`T`'s `#[serde(default)]`);
/// without a file, the defaults.
pub fn read<T: DeserializeOwned + Default>(file: Option<&Path>) -> Result<T, ConfigFileError> {
    let Some(path) = file else {
        return Ok(T::default());
    };
    config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .build()
        .and_then(config::Config::try_deserialize)
        .map_err(|source| ConfigFileError {
            path: path.to_owned(),
            source: Box::new(source),
        })
}

/// A setting that cannot be used, named as in the config file.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The config file is unreadable or does not fit the settings.
    #[error(transparent)]
    File(#[from] ConfigFileError),
    /// A value out of its range.
    #[error("setting `{setting}`: {reason}")]
    Invalid {
        /// The setting's name in the config file.
        setting: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl SettingsError {
    /// `setting` holds a value that cannot be used, for `reason`.
    pub fn invalid(setting: &'static str, reason: impl Into<String>) -> SettingsError {
        SettingsError::Invalid {
            setting,
            reason: reason.into(),
        }
    }
}

/// Logging flags, shared by both binaries (and so by one `.env`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogArgs {
    /// Log format [setting: log.format] [default: text]
    #[arg(long = "log-format", env = "SITEWATCH_LOG_FORMAT", value_enum)]
    pub format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `debug,rdkafka=info`; RUST_LOG wins [setting: log.level] [default: info]
    #[arg(long = "log-level", env = "SITEWATCH_LOG_LEVEL", value_name = "FILTER")]
    pub level: Option<String>,
}

impl LogArgs {
    /// Lays these flags over the file's log settings.
    pub fn apply(self, s: &mut LogSettings) {
        set(&mut s.format, self.format);
        set(&mut s.level, self.level);
    }
}

/// Sets `slot` when a higher layer gave a value.
pub fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *slot = value;
    }
}
