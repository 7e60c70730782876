//! Logging to stderr, human-readable by default or one JSON object per line.

use std::io::IsTerminal;

use serde::Deserialize;
use tracing_subscriber::EnvFilter;

/// How log lines look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// A log filter that `tracing_subscriber` refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid log filter {filter:?} (setting `log.level`, e.g. \"info\" or \"info,sitewatch_monitor=debug\"): {source}")]
pub struct LogFilterError {
    filter: String,
    #[source]
    source: tracing_subscriber::filter::ParseError,
}

/// Installs the global subscriber; logs go to stderr so stdout stays free for data.
///
/// `RUST_LOG`, when set, wins over `filter`.
pub fn init(format: LogFormat, filter: &str) -> Result<(), LogFilterError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(from_env) if !from_env.is_empty() => from_env,
        _ => filter.to_owned(),
    };
    let env_filter = EnvFilter::try_new(&filter).map_err(|source| LogFilterError {
        filter: filter.clone(),
        source,
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr);
    // A second init (tests) keeps the first subscriber; that is not an error worth failing on.
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    Ok(())
}

/// An error and its causes on one line, each cause once: error types that
/// already quote their source in their own message are not repeated.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut cause = err.source();
    while let Some(source) = cause {
        let text = source.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = source.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read {0}: {1}")]
    struct Quoting(&'static str, #[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("start failed")]
    struct Plain(#[source] std::io::Error);

    #[test]
    fn causes_appear_once() {
        let quoting = Quoting("a.pem", std::io::Error::other("gone"));
        assert_eq!(error_chain(&quoting), "cannot read a.pem: gone");
        let plain = Plain(std::io::Error::other("gone"));
        assert_eq!(error_chain(&plain), "start failed: gone");
    }
}
