//! One HTTP request of one site, as its checks say (method, headers, body,
//! basic auth), timed by phase, with every failure given a kind instead of a
//! fake status; what it saw is the metric itself, judged by the site's
//! checks into the metric's verdict.

use std::error::Error as StdError;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use sitewatch_metric::{
    truncate_utf8, ErrorKind, Metric, ProbeError, Timings, MAX_ERROR_MESSAGE_BYTES,
    MAX_MATCH_BYTES, MAX_URL_BYTES, SCHEMA_VERSION,
};
use sitewatch_service::tls;
use tokio::time::Instant;
use uuid::Uuid;

pub use crate::settings::ProbeSettings;
use crate::targets::Target;
use crate::timing::{
    is_link_local, DnsFailure, LinkLocalRefused, PhaseLog, TimedConnectLayer, TimedResolver,
};

/// Why the HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ProbeSetupError {
    /// The extra CA file cannot be read or holds no certificate.
    #[error("CA file {path} (setting `probe.ca_file`): {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls or reqwest refused the configuration.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// Makes probes; one per process, shared by every site.
#[derive(Debug, Clone)]
pub struct Prober {
    client: reqwest::Client,
    settings: Arc<ProbeSettings>,
}

#[derive(Debug, thiserror::Error)]
enum RedirectFailure {
    #[error("redirect loop back to {0}")]
    Loop(String),
    #[error("more than {0} redirects")]
    TooMany(usize),
}

/// Whether `url`'s host is an IP literal that is link-local.
fn link_local_literal(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => is_link_local(ip.into()),
        Some(url::Host::Ipv6(ip)) => is_link_local(ip.into()),
        _ => false,
    }
}

/// The response head, kept apart so a body failure or timeout still reports it.
#[derive(Debug, Default)]
struct Head {
    status: Option<u16>,
    final_url: Option<String>,
    tls_expires_at: Option<DateTime<Utc>>,
    at: Option<Instant>,
    body: Vec<u8>,
    truncated: bool,
    body_done_at: Option<Instant>,
}

impl Prober {
    /// Builds the shared client: system CAs plus `ca_file`, fresh connection per probe.
    pub fn new(settings: ProbeSettings) -> Result<Prober, ProbeSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = tls::system_roots();
        if let Some(path) = &settings.ca_file {
            tls::add_pem_file(&mut roots, path).map_err(|reason| ProbeSetupError::CaFile {
                path: path.clone(),
                reason,
            })?;
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ProbeSetupError::Client(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];

        let max = settings.max_redirects;
        let allow_link_local = settings.allow_link_local_redirects;
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if !allow_link_local && link_local_literal(attempt.url()) {
                let to = attempt.url().to_string();
                attempt.error(LinkLocalRefused(to))
            } else if attempt.previous().contains(attempt.url()) {
                let to = attempt.url().to_string();
                attempt.error(RedirectFailure::Loop(to))
            } else if attempt.previous().len() > max {
                attempt.error(RedirectFailure::TooMany(max))
            } else {
                PhaseLog::count_redirect();
                attempt.follow()
            }
        });
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .tls_info(true)
            .dns_resolver(TimedResolver::new(
                settings.dns_lookups,
                settings.allow_link_local_redirects,
            ))
            .connector_layer(TimedConnectLayer)
            .redirect(policy)
            // A health check measures what a new visitor gets: no reused connections.
            .pool_max_idle_per_host(0)
            .no_proxy()
            .user_agent(settings.user_agent.clone())
            .build()
            .map_err(|e| ProbeSetupError::Client(error_chain(&e)))?;
        Ok(Prober {
            client,
            settings: Arc::new(settings),
        })
    }

    /// The settings in force.
    pub fn settings(&self) -> &ProbeSettings {
        &self.settings
    }

    /// Probes `target` once, starting now: the metric of the probe, with
    /// what the schedule knows (when it was due, how late it started) left
    /// for the caller to fill in.
    pub async fn probe(&self, target: &Target) -> Metric {
        let probe_id = Uuid::now_v7();
        let now = Utc::now();
        // PostgreSQL keeps microseconds; trimming here keeps the round trip exact.
        let started_at = now
            .duration_trunc(TimeDelta::microseconds(1))
            .unwrap_or(now);
        let log = Arc::new(PhaseLog::default());
        let start = Instant::now();
        let timeout = target.effective_timeout(self.settings.timeout.get());
        let mut head = Head::default();
        let outcome = log
            .scope(tokio::time::timeout(timeout, self.fetch(target, &mut head)))
            .await;
        let end = Instant::now();
        let error = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(failure)) => Some(failure),
            Err(_elapsed) => Some(ProbeError {
                kind: ErrorKind::Timeout,
                message: format!(
                    "no complete response within {:.3}s ({})",
                    timeout.as_secs_f64(),
                    if head.at.is_some() {
                        "while reading the body"
                    } else {
                        "before the response head"
                    }
                ),
            }),
        };
        let phases = log.snapshot();
        let dns = phases.dns.unwrap_or_default();
        let connect = phases.connect.unwrap_or_default();
        let ttfb = head.at.map(|at| (at - start).saturating_sub(dns + connect));
        let body_time = head.at.map(|at| head.body_done_at.unwrap_or(end) - at);
        // A probe that failed did not read its body to the end: a miss there
        // proves nothing, and the verdict names the failure alone.
        let matched = match (&target.regex, head.at, &error) {
            (Some(regex), Some(_), None) => Some(regex.find(&head.body)),
            _ => None,
        };
        let metric = Metric {
            schema_version: SCHEMA_VERSION,
            probe_id,
            url: target.id.clone(),
            scheduled_at: started_at,
            started_at,
            timings: Timings {
                dns_us: phases.dns.map(micros),
                connect_us: phases.connect.map(micros),
                ttfb_us: ttfb.map(micros),
                body_us: body_time.map(micros),
                total_us: micros(end - start),
            },
            status: head.status,
            body_bytes: head.body.len() as u64,
            body_truncated: head.truncated,
            regex: target.regex.as_ref().map(|r| r.as_str().to_owned()),
            regex_matched: matched.map(|m| m.is_some()),
            regex_match: matched.flatten().map(|m| {
                let cut = &m[..m.len().min(MAX_MATCH_BYTES)];
                // PostgreSQL text cannot hold NUL; a body may.
                let text = String::from_utf8_lossy(cut).replace('\0', "\u{fffd}");
                truncate_utf8(text, MAX_MATCH_BYTES)
            }),
            final_url: head.final_url,
            redirects: phases.redirects,
            tls_expires_at: head.tls_expires_at,
            error,
            ..Metric::default()
        };
        Metric {
            verdict: target.checks.verdict(&metric, &head.body),
            ..metric
        }
    }

    async fn fetch(&self, target: &Target, head: &mut Head) -> Result<(), ProbeError> {
        let mut response = target
            .checks
            .request(&self.client, target.url.clone())
            .send()
            .await
            .map_err(|e| classify(&e))?;
        head.at = Some(Instant::now());
        head.status = Some(response.status().as_u16());
        head.final_url = Some(truncate_utf8(response.url().to_string(), MAX_URL_BYTES));
        head.tls_expires_at = response
            .extensions()
            .get::<reqwest::tls::TlsInfo>()
            .and_then(|info| info.peer_certificate())
            .and_then(leaf_expiry);
        let cap = self.settings.body_cap;
        while let Some(chunk) = response.chunk().await.map_err(|e| classify(&e))? {
            let room = cap - head.body.len();
            if chunk.len() > room {
                head.body.extend_from_slice(&chunk[..room]);
                head.truncated = true;
            } else {
                head.body.extend_from_slice(&chunk);
            }
            if head.body.len() >= cap {
                // One more chunk tells a body of exactly `cap` bytes from a longer one.
                if !head.truncated {
                    let more = response.chunk().await.map_err(|e| classify(&e))?;
                    head.truncated = more.is_some_and(|c| !c.is_empty());
                }
                break;
            }
        }
        head.body_done_at = Some(Instant::now());
        Ok(())
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn leaf_expiry(der: &[u8]) -> Option<DateTime<Utc>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    DateTime::from_timestamp(cert.validity().not_after.timestamp(), 0)
}

/// Gives a reqwest failure its kind by what is in its cause chain.
pub fn classify(err: &reqwest::Error) -> ProbeError {
    let kind = if has_cause::<DnsFailure>(err) {
        ErrorKind::Dns
    } else if err.is_redirect()
        || has_cause::<RedirectFailure>(err)
        || has_cause::<LinkLocalRefused>(err)
    {
        ErrorKind::Redirect
    } else if err.is_timeout() {
        ErrorKind::Timeout
    } else if is_tls(err) {
        ErrorKind::Tls
    } else if err.is_connect() {
        ErrorKind::Connect
    } else if err.is_body() || err.is_decode() {
        ErrorKind::Body
    } else {
        ErrorKind::Other
    };
    ProbeError {
        kind,
        message: truncate_utf8(
            error_chain(err).replace('\0', "\u{fffd}"),
            MAX_ERROR_MESSAGE_BYTES,
        ),
    }
}

fn causes<'a>(
    err: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(err), |e| next_cause(*e))
}

fn next_cause<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a (dyn StdError + 'static)> {
    // io::Error hides its inner error from `source()`; rustls errors live there.
    match e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        Some(inner) => Some(inner as &(dyn StdError + 'static)),
        None => e.source(),
    }
}

fn has_cause<T: StdError + 'static>(err: &reqwest::Error) -> bool {
    causes(err).any(|e| e.is::<T>())
}

fn is_tls(err: &reqwest::Error) -> bool {
    causes(err).any(|e| e.is::<rustls::Error>())
}

/// The error and its causes, each once, joined by ": ".
fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in causes(err) {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}
