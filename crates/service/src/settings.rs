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

/// Sets `slot` when a higher layer gave a value.
pub fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *slot = value;
    }
}
