//! What the brokers said, in words an operator can act on: librdkafka's
//! errors and logs forwarded to `tracing` (rate-limited while they repeat),
//! and a start-up reachability check that says why it failed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::{Client, ClientContext};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::util::Timeout;
use tokio_util::sync::CancellationToken;

use crate::settings::KafkaSettings;

/// The brokers did not answer in time (unreachable, wrong port, TLS refused).
#[derive(Debug, thiserror::Error)]
#[error("cannot reach Kafka ({kafka}) within {timeout:?}: {why}")]
pub struct Unreachable {
    /// Safe description of the settings.
    pub kafka: String,
    /// How long we waited.
    pub timeout: Duration,
    /// What the operator can do, from librdkafka's last broker error.
    pub why: String,
    /// librdkafka's reason.
    #[source]
    pub source: KafkaError,
}

/// Asks the brokers for the topic's metadata on a blocking thread, with
/// `fetch` (which calls [`topic_partitions`] on the client at hand), so that
/// an unreachable cluster or a refused TLS handshake shows at start-up;
/// returns the partition count, or `None` when the topic does not exist yet.
/// A failure is explained from `errors`, the client's broker errors.
pub async fn check_reachable<F>(
    settings: &KafkaSettings,
    errors: &BrokerErrors,
    timeout: Duration,
    fetch: F,
) -> Result<Option<usize>, Unreachable>
where
    F: FnOnce(Duration) -> Result<Option<usize>, KafkaError> + Send + 'static,
{
    let answer = tokio::task::spawn_blocking(move || fetch(timeout))
        .await
        // The blocking task only fails if it panicked; report it as no answer.
        .unwrap_or(Err(KafkaError::Canceled));
    answer.map_err(|source| Unreachable {
        kafka: settings.describe(),
        timeout,
        why: explain_unreachable(settings, errors.last().as_deref()),
        source,
    })
}

/// Implements rdkafka's `ClientContext` for a context type that keeps its
/// [`BrokerErrors`] in the named field: broker errors are recorded (so a
/// failed start can say why), librdkafka's log lines go to `tracing` and its
/// statistics to the metrics ([`crate::stats`]).
#[macro_export]
macro_rules! forward_client_context {
    ($context:ty, $errors:ident) => {
        impl $crate::rdkafka::ClientContext for $context {
            fn error(&self, error: $crate::rdkafka::error::KafkaError, reason: &str) {
                self.$errors.record(&error, reason);
            }

            fn log(
                &self,
                level: $crate::rdkafka::config::RDKafkaLogLevel,
                fac: &str,
                log_message: &str,
            ) {
                self.$errors.log(level, fac, log_message);
            }

            fn stats(&self, statistics: $crate::rdkafka::statistics::Statistics) {
                $crate::stats::publish(&statistics);
            }
        }
    };
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
    /// librdkafka's fatal error, if one happened: the client is unusable.
    fatal: Option<String>,
    /// Cancelled on a fatal error, so that the service stops.
    on_fatal: Option<CancellationToken>,
}

impl ErrorState {
    /// The first fatal error wins; later ones follow from it.
    fn raise_fatal(&mut self, reason: &str) {
        if self.fatal.is_some() {
            return;
        }
        tracing::error!(
            reason,
            "fatal Kafka client error: the client cannot go on; stopping"
        );
        self.fatal = Some(reason.to_owned());
        if let Some(token) = &self.on_fatal {
            token.cancel();
        }
    }
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
        if code == Some(RDKafkaErrorCode::Fatal) {
            state.raise_fatal(reason);
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

    /// Cancels `token` when librdkafka reports a fatal error (an idempotent
    /// producer that can no longer guarantee its order or no duplicates).
    pub fn on_fatal(&self, token: CancellationToken) {
        if let Ok(mut state) = self.state.lock() {
            if state.fatal.is_some() {
                token.cancel();
            }
            state.on_fatal = Some(token);
        }
    }

    /// Records `reason` as the client's fatal error and cancels the token
    /// given to [`BrokerErrors::on_fatal`]. rust-rdkafka passes a fatal error
    /// to the error callback with its underlying code (an out-of-order
    /// sequence number, say), which does not say it is fatal; a client's
    /// owner asks `Client::fatal_error` and reports it here.
    pub fn raise_fatal(&self, reason: &str) {
        if let Ok(mut state) = self.state.lock() {
            state.raise_fatal(reason);
        }
    }

    /// librdkafka's fatal error, if one happened.
    pub fn fatal(&self) -> Option<String> {
        self.state.lock().ok().and_then(|state| state.fatal.clone())
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::settings::tests::with_certs_dir;

    #[test]
    fn a_fatal_error_cancels_the_service() {
        let errors = BrokerErrors::default();
        let stop = CancellationToken::new();
        errors.on_fatal(stop.clone());
        errors.record(
            &KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure),
            "broker down",
        );
        assert!(!stop.is_cancelled() && errors.fatal().is_none());
        errors.record(
            &KafkaError::Global(RDKafkaErrorCode::Fatal),
            "out of order sequence number",
        );
        assert!(stop.is_cancelled());
        assert_eq!(
            errors.fatal().as_deref(),
            Some("out of order sequence number")
        );
    }

    #[test]
    fn a_tls_failure_names_the_file_to_replace() {
        let settings = with_certs_dir(Path::new("/certs"));
        for (last_error, says) in [
            (
                Some("ssl://k:9093/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed"),
                "not signed by the CA in /certs/ca.pem",
            ),
            (
                Some("ssl://k:9093/bootstrap: Receive failed: error:0A00045C:SSL routines::tlsv13 alert certificate required"),
                "refused the client certificate /certs/service.cert",
            ),
            (None, "no broker answered"),
        ] {
            let explained = explain_unreachable(&settings, last_error);
            assert!(explained.contains(says), "{explained}");
        }
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
