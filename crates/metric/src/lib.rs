//! The metric message: one probe of one website, as `monitor` publishes it to
//! Kafka and `consumer` stores it in PostgreSQL.
//!
//! The payload is JSON, keyed in Kafka by the site URL so that one site's
//! metrics stay ordered in one partition. Every message carries a
//! `schema_version`; a reader rejects versions it does not know instead of
//! guessing at their fields.
//!
//! A successful probe with a regex:
//!
//! ```json
//! {
//!   "schema_version": 2,
//!   "probe_id": "019abc6e-8a3c-7d2e-9b1f-3c5d7e9f1a2b",
//!   "url": "https://www.example.com/",
//!   "scheduled_at": "2026-11-25T17:00:00.000000Z",
//!   "started_at": "2026-11-25T17:00:00.000412Z",
//!   "lateness_us": 412,
//!   "skipped_before": 0,
//!   "timings": { "dns_us": 1200, "connect_us": 35000, "ttfb_us": 41000, "body_us": 3000, "total_us": 80200 },
//!   "status": 200,
//!   "body_bytes": 1256,
//!   "body_truncated": false,
//!   "regex": "Example Domain",
//!   "regex_matched": true,
//!   "regex_match": "Example Domain",
//!   "final_url": "https://www.example.com/",
//!   "redirects": 0,
//!   "tls_expires_at": "2027-01-15T23:59:59Z",
//!   "error": null,
//!   "verdict": { "up": true, "failed": [], "failure_threshold": 3, "success_threshold": 2 }
//! }
//! ```
//!
//! A probe that got no response has no `status`, and says why in `error`:
//!
//! ```json
//! { "status": null, "error": { "kind": "dns", "message": "failed to lookup address information: Name or service not known" },
//!   "verdict": { "up": false, "failed": [{ "condition": "response", "message": "dns: failed to lookup address information: Name or service not known" }], "failure_threshold": 3, "success_threshold": 2 } }
//! ```
//!
//! A response that failed a site's checks names every condition it failed:
//!
//! ```json
//! { "status": 200, "error": null,
//!   "verdict": { "up": false, "failed": [{ "condition": "json", "message": "$.status == \"ok\": found \"degraded\"" }], "failure_threshold": 3, "success_threshold": 2 } }
//! ```

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The schema version this crate writes.
pub const SCHEMA_VERSION: u32 = 2;

/// The oldest schema version this crate reads.
pub const OLDEST_SCHEMA_VERSION: u32 = 1;

/// Longest site URL a metric may carry, in bytes.
pub const MAX_URL_BYTES: usize = 2000;

/// Longest `regex_match` kept in a metric, in bytes; longer matches are cut.
pub const MAX_MATCH_BYTES: usize = 256;

/// Longest error `message` kept in a metric, in bytes.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 1024;

/// Longest body regex a site may have, in bytes.
pub const MAX_REGEX_BYTES: usize = 4096;

/// Longest failed condition's `message`, in bytes.
pub const MAX_CONDITION_MESSAGE_BYTES: usize = 512;

/// Most failed conditions one verdict lists; a site with more conditions
/// than this reports the first ones.
pub const MAX_FAILED_CONDITIONS: usize = 32;

/// Highest failure or success threshold a site may set.
pub const MAX_THRESHOLD: u16 = 1000;

/// The failure threshold of a site that sets none (as Gatus).
pub const DEFAULT_FAILURE_THRESHOLD: u16 = 3;

/// The success threshold of a site that sets none (as Gatus).
pub const DEFAULT_SUCCESS_THRESHOLD: u16 = 2;

/// One probe of one site: what was asked, when, and what came back.
///
/// The default is an empty probe (nil id, epoch times): a base for the
/// struct-update syntax, not a valid message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metric {
    /// Always [`SCHEMA_VERSION`] for messages this crate writes.
    pub schema_version: u32,
    /// Unique, time-ordered (UUIDv7) id of this probe; the idempotency key downstream.
    pub probe_id: Uuid,
    /// The site as listed by the operator (normalised, with a scheme).
    pub url: String,
    /// When the schedule wanted this probe to start.
    pub scheduled_at: DateTime<Utc>,
    /// When the probe actually started.
    pub started_at: DateTime<Utc>,
    /// How late the probe started, in microseconds (start minus deadline).
    pub lateness_us: u64,
    /// Deadlines skipped just before this probe because the previous probe of
    /// the site was still running (a site never has two probes in flight).
    pub skipped_before: u32,
    /// Where the response time went.
    pub timings: Timings,
    /// HTTP status of the final response; absent when no response arrived.
    pub status: Option<u16>,
    /// Body bytes read (after content decoding), at most the body cap.
    pub body_bytes: u64,
    /// Whether the body was longer than the cap and reading stopped there.
    pub body_truncated: bool,
    /// The regex the body was checked against, if the site has one.
    pub regex: Option<String>,
    /// Whether the regex matched the body read; absent without a regex or a body.
    pub regex_matched: Option<bool>,
    /// The first match, lossily decoded and cut to [`MAX_MATCH_BYTES`].
    pub regex_match: Option<String>,
    /// URL of the final response after redirects.
    pub final_url: Option<String>,
    /// Redirects followed.
    pub redirects: u32,
    /// For https, when the leaf certificate of the final response expires.
    pub tls_expires_at: Option<DateTime<Utc>>,
    /// Why the probe failed; absent when a response was read.
    pub error: Option<ProbeError>,
    /// Whether the probe passed the site's checks, and if not which failed.
    #[serde(default)]
    pub verdict: Verdict,
}

/// The monitor's judgement of one probe against its site's checks.
///
/// The thresholds travel with every probe because the site list, where an
/// operator sets them, is read by the monitor only: the consumer, which
/// turns probes into up/down state, applies what the probe was made under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// Every condition passed.
    pub up: bool,
    /// The conditions that failed, in the order the site lists them; empty when `up`.
    pub failed: Vec<Failed>,
    /// Consecutive failed probes that turn the site down.
    pub failure_threshold: u16,
    /// Consecutive passed probes that turn a down site up again.
    pub success_threshold: u16,
}

impl Default for Verdict {
    /// Up, with the default thresholds: a base for struct updates.
    fn default() -> Self {
        Verdict {
            up: true,
            failed: Vec::new(),
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
            success_threshold: DEFAULT_SUCCESS_THRESHOLD,
        }
    }
}

impl Verdict {
    /// A verdict from the conditions that failed, with the given thresholds.
    pub fn of(failed: Vec<Failed>, failure_threshold: u16, success_threshold: u16) -> Verdict {
        Verdict {
            up: failed.is_empty(),
            failed,
            failure_threshold,
            success_threshold,
        }
    }

    /// The rule of every site that sets no checks, and of every version 1
    /// message: a response below 400 whose body matched the site's regex,
    /// if it has one; default thresholds.
    pub fn default_rule(metric: &Metric) -> Verdict {
        // A probe that failed says only why: a body not read to its end
        // proves nothing about the other conditions.
        if let Some(error) = &metric.error {
            return Verdict::of(
                vec![Failed::response(error)],
                DEFAULT_FAILURE_THRESHOLD,
                DEFAULT_SUCCESS_THRESHOLD,
            );
        }
        let mut failed = Vec::new();
        if let Some(status) = metric.status.filter(|&s| s >= 400) {
            failed.push(Failed::new(
                Condition::Status,
                format!("status {status} is not below 400"),
            ));
        }
        if metric.regex_matched == Some(false) {
            let pattern = metric.regex.as_deref().unwrap_or_default();
            failed.push(Failed::new(
                Condition::Regex,
                format!("body does not match {pattern:?}"),
            ));
        }
        Verdict::of(failed, DEFAULT_FAILURE_THRESHOLD, DEFAULT_SUCCESS_THRESHOLD)
    }

    /// The first failed condition, the one an incident is filed under.
    pub fn first_failed(&self) -> Option<&Failed> {
        self.failed.first()
    }
}

/// One condition a probe failed, and what was found instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failed {
    /// Which kind of condition.
    pub condition: Condition,
    /// What was expected and what was found, for people; never a header
    /// value or other secret of the site's options.
    pub message: String,
}

impl Failed {
    /// A failed condition, its message cut to [`MAX_CONDITION_MESSAGE_BYTES`].
    pub fn new(condition: Condition, message: impl Into<String>) -> Failed {
        let mut message = message.into();
        // PostgreSQL text cannot hold NUL; a body quoted in a message may.
        if message.contains('\0') {
            message = message.replace('\0', "\u{fffd}");
        }
        Failed {
            condition,
            message: truncate_utf8(message, MAX_CONDITION_MESSAGE_BYTES),
        }
    }

    /// The failed condition of a probe that got no response.
    pub fn response(error: &ProbeError) -> Failed {
        Failed::new(
            Condition::Response,
            format!("{}: {}", error.kind, error.message),
        )
    }
}

/// The kinds of condition a site can check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// A response arrived (every site checks this).
    Response,
    /// The status is in the site's expected set (default: below 400).
    Status,
    /// The body matches the site's regex.
    Regex,
    /// The body does not match the site's forbidden regex.
    RejectRegex,
    /// A JSON path in the body compares as the site says.
    Json,
    /// The response took no longer than the site's maximum.
    ResponseTime,
    /// The certificate expires no sooner than the site's minimum days.
    CertExpiry,
    /// A kind this reader does not know, from a newer monitor: kept as a
    /// failure (so the site still goes down), its name lost.
    #[serde(other)]
    Other,
}

impl Condition {
    /// Every kind, in the order of the documentation.
    pub const ALL: [Condition; 8] = [
        Condition::Response,
        Condition::Status,
        Condition::Regex,
        Condition::RejectRegex,
        Condition::Json,
        Condition::ResponseTime,
        Condition::CertExpiry,
        Condition::Other,
    ];

    /// The name used in JSON and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Response => "response",
            Condition::Status => "status",
            Condition::Regex => "regex",
            Condition::RejectRegex => "reject_regex",
            Condition::Json => "json",
            Condition::ResponseTime => "response_time",
            Condition::CertExpiry => "cert_expiry",
            Condition::Other => "other",
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Response time split into phases, each in microseconds.
///
/// A phase is absent when it did not happen: no DNS lookup for an IP address,
/// nothing after `connect` when the connection was refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// Name resolution.
    pub dns_us: Option<u64>,
    /// TCP connect, including the TLS handshake for https.
    pub connect_us: Option<u64>,
    /// From connected to the first byte of the response head (all redirects included).
    pub ttfb_us: Option<u64>,
    /// Reading the body, up to the cap.
    pub body_us: Option<u64>,
    /// The whole probe, start to end.
    pub total_us: u64,
}

/// A probe that did not end with a response read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeError {
    /// What failed, for dashboards and alerts.
    pub kind: ErrorKind,
    /// What the HTTP stack said, for people.
    pub message: String,
}

/// The kinds of failure a probe reports instead of a fake HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The host name did not resolve.
    Dns,
    /// TCP connection refused, reset or unreachable.
    Connect,
    /// TLS handshake failed (untrusted or expired certificate, protocol mismatch).
    Tls,
    /// The probe did not finish within its timeout.
    Timeout,
    /// Too many redirects, or a redirect loop.
    Redirect,
    /// The response head arrived but the body failed (reset, bad encoding).
    Body,
    /// Anything else (malformed response, protocol error).
    Other,
}

impl ErrorKind {
    /// Every kind, in the order of the documentation.
    pub const ALL: [ErrorKind; 7] = [
        ErrorKind::Dns,
        ErrorKind::Connect,
        ErrorKind::Tls,
        ErrorKind::Timeout,
        ErrorKind::Redirect,
        ErrorKind::Body,
        ErrorKind::Other,
    ];

    /// The name used in JSON and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Dns => "dns",
            ErrorKind::Connect => "connect",
            ErrorKind::Tls => "tls",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Redirect => "redirect",
            ErrorKind::Body => "body",
            ErrorKind::Other => "other",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a payload could not be read as a metric; such a message can never be stored.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not a JSON object.
    #[error("payload is not a JSON object: {0}")]
    NotJson(#[source] serde_json::Error),
    /// The message has a `schema_version` this reader does not know.
    #[error("unknown schema_version {found}; this reader knows {OLDEST_SCHEMA_VERSION} to {SCHEMA_VERSION}")]
    UnknownVersion {
        /// The version in the message.
        found: u64,
    },
    /// The version is known but a field is missing or has the wrong type.
    #[error("not a valid metric of its schema_version: {0}")]
    Invalid(#[source] serde_json::Error),
    /// A field parsed but holds a value no probe can produce.
    #[error("field `{field}` out of range: {reason}")]
    OutOfRange {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl DecodeError {
    /// A short fixed name for this kind of error (`not_json`, `unknown_version`,
    /// `invalid`, `out_of_range`), for a metric's label.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::NotJson(_) => "not_json",
            DecodeError::UnknownVersion { .. } => "unknown_version",
            DecodeError::Invalid(_) => "invalid",
            DecodeError::OutOfRange { .. } => "out_of_range",
        }
    }
}

/// The successful probe of this crate's documentation, as JSON: every field
/// but `error` holds a value, so tests that must see every field start here.
pub const EXAMPLE_JSON: &str = r#"{
  "schema_version": 2,
  "probe_id": "019abc6e-8a3c-7d2e-9b1f-3c5d7e9f1a2b",
  "url": "https://www.example.com/",
  "scheduled_at": "2026-11-25T17:00:00.000000Z",
  "started_at": "2026-11-25T17:00:00.000412Z",
  "lateness_us": 412,
  "skipped_before": 0,
  "timings": { "dns_us": 1200, "connect_us": 35000, "ttfb_us": 41000, "body_us": 3000, "total_us": 80200 },
  "status": 200,
  "body_bytes": 1256,
  "body_truncated": false,
  "regex": "Example Domain",
  "regex_matched": true,
  "regex_match": "Example Domain",
  "final_url": "https://www.example.com/",
  "redirects": 0,
  "tls_expires_at": "2027-01-15T23:59:59Z",
  "error": null,
  "verdict": { "up": true, "failed": [], "failure_threshold": 3, "success_threshold": 2 }
}"#;

#[derive(Deserialize)]
struct Envelope {
    schema_version: Option<u64>,
    verdict: Option<serde::de::IgnoredAny>,
}

impl Metric {
    /// [`EXAMPLE_JSON`] as a metric.
    pub fn example() -> Metric {
        // A test of this crate checks that the example parses.
        Metric::from_json(EXAMPLE_JSON.as_bytes()).unwrap_or_default()
    }

    /// The Kafka message key: the site URL, so one site stays in one partition.
    pub fn key(&self) -> &[u8] {
        self.url.as_bytes()
    }

    /// The JSON payload.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising a struct of plain fields into a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a payload, checking the version first so that a newer message is
    /// reported as such rather than as a missing field.
    pub fn from_json(payload: &[u8]) -> Result<Metric, DecodeError> {
        let envelope: Envelope = serde_json::from_slice(payload).map_err(DecodeError::NotJson)?;
        let version = match envelope.schema_version {
            Some(v)
                if (u64::from(OLDEST_SCHEMA_VERSION)..=u64::from(SCHEMA_VERSION)).contains(&v) =>
            {
                v
            }
            Some(found) => return Err(DecodeError::UnknownVersion { found }),
            None => {
                return Err(DecodeError::Invalid(serde::de::Error::missing_field(
                    "schema_version",
                )))
            }
        };
        if version >= 2 && envelope.verdict.is_none() {
            return Err(DecodeError::Invalid(serde::de::Error::missing_field(
                "verdict",
            )));
        }
        let mut metric: Metric = serde_json::from_slice(payload).map_err(DecodeError::Invalid)?;
        if version == 1 {
            // Whatever a version 1 message says past its schema is not its verdict.
            metric.verdict = Verdict::default_rule(&metric);
        }
        metric.check_ranges()?;
        Ok(metric)
    }

    fn check_ranges(&self) -> Result<(), DecodeError> {
        let out_of_range = |field, reason: &str| {
            Err(DecodeError::OutOfRange {
                field,
                reason: reason.to_owned(),
            })
        };
        if let Some(status) = self.status {
            if !(100..=999).contains(&status) {
                return out_of_range("status", "an HTTP status has three digits");
            }
        }
        if self.url.is_empty() {
            return out_of_range("url", "empty");
        }
        if self.probe_id.get_version_num() != 7 {
            return out_of_range("probe_id", "not a time-ordered UUIDv7");
        }
        if self.status.is_none() && self.error.is_none() {
            return out_of_range("error", "a probe without a status must say why");
        }
        // The monitor never makes longer fields; a message that has them
        // was made by something else, and is kept out of memory and the table.
        // A URL is a unique key in PostgreSQL, whose btree rows stop at 2704 bytes.
        let limits = [
            ("url", Some(self.url.as_str()), MAX_URL_BYTES),
            ("final_url", self.final_url.as_deref(), MAX_URL_BYTES),
            ("regex", self.regex.as_deref(), MAX_REGEX_BYTES),
            ("regex_match", self.regex_match.as_deref(), MAX_MATCH_BYTES),
            (
                "error.message",
                self.error.as_ref().map(|e| e.message.as_str()),
                MAX_ERROR_MESSAGE_BYTES,
            ),
        ];
        for (field, value, max) in limits {
            if value.is_some_and(|v| v.len() > max) {
                return out_of_range(field, &format!("longer than {max} bytes"));
            }
        }
        if self.skipped_before > i32::MAX as u32 || self.redirects > i32::MAX as u32 {
            return out_of_range(
                "skipped_before/redirects",
                "does not fit a signed 32-bit integer",
            );
        }
        let verdict = &self.verdict;
        if verdict.up != verdict.failed.is_empty() {
            return out_of_range("verdict", "up exactly when no condition failed");
        }
        if verdict.failed.len() > MAX_FAILED_CONDITIONS {
            return out_of_range(
                "verdict.failed",
                &format!("more than {MAX_FAILED_CONDITIONS} conditions"),
            );
        }
        if verdict
            .failed
            .iter()
            .any(|f| f.message.len() > MAX_CONDITION_MESSAGE_BYTES || f.message.contains('\0'))
        {
            return out_of_range(
                "verdict.failed.message",
                &format!("longer than {MAX_CONDITION_MESSAGE_BYTES} bytes or holds NUL"),
            );
        }
        for threshold in [verdict.failure_threshold, verdict.success_threshold] {
            if !(1..=MAX_THRESHOLD).contains(&threshold) {
                return out_of_range(
                    "verdict thresholds",
                    &format!("a threshold is 1 to {MAX_THRESHOLD}"),
                );
            }
        }
        if i64::try_from(self.lateness_us).is_err() || i64::try_from(self.body_bytes).is_err() {
            return out_of_range(
                "lateness_us/body_bytes",
                "does not fit a signed 64-bit integer",
            );
        }
        let t = &self.timings;
        let phases = [
            t.dns_us,
            t.connect_us,
            t.ttfb_us,
            t.body_us,
            Some(t.total_us),
        ];
        if phases
            .into_iter()
            .flatten()
            .any(|us| i64::try_from(us).is_err())
        {
            return out_of_range("timings", "does not fit a signed 64-bit integer");
        }
        Ok(())
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn truncate_utf8(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Metric {
        Metric {
            probe_id: Uuid::now_v7(),
            tls_expires_at: None,
            ..Metric::example()
        }
    }

    #[test]
    fn json_round_trips() {
        let m = sample();
        let back = Metric::from_json(&m.to_json()).expect("round trip");
        assert_eq!(back, m);
    }

    #[test]
    fn the_documented_example_is_the_example_and_a_valid_metric() {
        let doc = include_str!("lib.rs");
        let start = doc.find("//! ```json\n").expect("example") + "//! ```json\n".len();
        let end = start + doc[start..].find("//! ```").expect("end of example");
        let json: String = doc[start..end]
            .lines()
            .map(|l| l.trim_start_matches("//!"))
            .collect();
        let m = Metric::from_json(json.as_bytes()).expect("doc example parses");
        assert_eq!(m.status, Some(200));
        assert_eq!(m.timings.total_us, 80_200);
        let example = Metric::from_json(EXAMPLE_JSON.as_bytes()).expect("EXAMPLE_JSON parses");
        assert_eq!(m, example, "the docs show EXAMPLE_JSON");
        assert_eq!(Metric::example(), example);
    }

    #[test]
    fn unknown_version_is_named() {
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_json()).expect("json");
        v["schema_version"] = 3.into();
        let err = Metric::from_json(v.to_string().as_bytes()).expect_err("v3 refused");
        assert!(
            matches!(err, DecodeError::UnknownVersion { found: 3 }),
            "{err}"
        );
        assert!(err.to_string().contains("knows 1 to 2"), "{err}");
    }

    /// A version 1 message as the monitor of that version wrote it.
    fn version_1(edit: impl FnOnce(&mut serde_json::Value)) -> Metric {
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_json()).expect("json");
        v["schema_version"] = 1.into();
        let _ = v.as_object_mut().expect("object").remove("verdict");
        edit(&mut v);
        Metric::from_json(v.to_string().as_bytes()).expect("version 1 is read")
    }

    #[test]
    fn version_1_gets_the_verdict_of_its_rule() {
        let ok = version_1(|_| {});
        assert_eq!(ok.schema_version, 1);
        assert_eq!(ok.verdict, Verdict::default());
        let error = version_1(|v| {
            v["status"] = serde_json::Value::Null;
            v["regex_matched"] = serde_json::Value::Null;
            v["error"] = serde_json::json!({"kind": "timeout", "message": "no response within 5s"});
        });
        assert!(!error.verdict.up);
        assert_eq!(
            error.verdict.failed,
            vec![Failed::new(
                Condition::Response,
                "timeout: no response within 5s"
            )]
        );
        let bad_status = version_1(|v| v["status"] = 503.into());
        assert_eq!(bad_status.verdict.failed[0].condition, Condition::Status);
        let redirect = version_1(|v| v["status"] = 301.into());
        assert!(redirect.verdict.up, "below 400 is up, as before");
        let no_match = version_1(|v| v["regex_matched"] = false.into());
        assert_eq!(no_match.verdict.failed[0].condition, Condition::Regex);
        let forged = version_1(|v| {
            v["verdict"] = serde_json::json!({"up": false, "failed": [{"condition": "json", "message": "x"}], "failure_threshold": 1, "success_threshold": 1});
        });
        assert_eq!(
            forged.verdict,
            Verdict::default(),
            "a v1 verdict is derived, never read"
        );
    }

    #[test]
    fn version_2_must_carry_a_consistent_verdict() {
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_json()).expect("json");
        let _ = v.as_object_mut().expect("object").remove("verdict");
        let err = Metric::from_json(v.to_string().as_bytes()).expect_err("no verdict");
        assert!(err.to_string().contains("verdict"), "{err}");
        let mut down = sample();
        down.verdict.up = false;
        let err = Metric::from_json(&down.to_json()).expect_err("down without a reason");
        assert!(
            matches!(
                err,
                DecodeError::OutOfRange {
                    field: "verdict",
                    ..
                }
            ),
            "{err}"
        );
        let mut zero = sample();
        zero.verdict.failure_threshold = 0;
        assert!(Metric::from_json(&zero.to_json()).is_err());
        let mut failed = sample();
        failed.verdict = Verdict::of(
            vec![Failed::new(
                Condition::ResponseTime,
                "took 2.1s, at most 1s",
            )],
            5,
            1,
        );
        let back = Metric::from_json(&failed.to_json()).expect("valid");
        assert_eq!(back.verdict, failed.verdict);
    }

    #[test]
    fn a_condition_from_a_newer_monitor_still_fails_the_probe() {
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_json()).expect("json");
        v["verdict"] = serde_json::json!({"up": false, "failed": [{"condition": "tls_version", "message": "TLS 1.0"}], "failure_threshold": 3, "success_threshold": 2});
        let m = Metric::from_json(v.to_string().as_bytes()).expect("read");
        assert!(!m.verdict.up);
        assert_eq!(m.verdict.failed[0].condition, Condition::Other);
    }

    #[test]
    fn conditions_serialise_as_documented() {
        for condition in Condition::ALL {
            let json = serde_json::to_string(&condition).expect("json");
            assert_eq!(json, format!("\"{}\"", condition.as_str()));
        }
    }

    #[test]
    fn garbage_and_bad_fields_are_refused() {
        assert!(matches!(
            Metric::from_json(b"\xff\x00"),
            Err(DecodeError::NotJson(_))
        ));
        assert!(matches!(
            Metric::from_json(b"{}"),
            Err(DecodeError::Invalid(_))
        ));
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_json()).expect("json");
        v["status"] = 42.into();
        let err = Metric::from_json(v.to_string().as_bytes()).expect_err("status 42");
        assert!(
            matches!(
                err,
                DecodeError::OutOfRange {
                    field: "status",
                    ..
                }
            ),
            "{err}"
        );
        v["status"] = serde_json::Value::Null;
        let err = Metric::from_json(v.to_string().as_bytes()).expect_err("no status no error");
        assert!(
            matches!(err, DecodeError::OutOfRange { field: "error", .. }),
            "{err}"
        );
    }

    #[test]
    fn fields_longer_than_the_monitor_makes_are_refused() {
        let mut long = sample();
        long.final_url = Some(format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES)));
        let err = Metric::from_json(&long.to_json()).expect_err("too long");
        assert!(
            matches!(
                err,
                DecodeError::OutOfRange {
                    field: "final_url",
                    ..
                }
            ),
            "{err}"
        );
        let mut long = sample();
        long.regex_match = Some("x".repeat(MAX_MATCH_BYTES + 1));
        assert!(Metric::from_json(&long.to_json()).is_err());
    }

    #[test]
    fn error_kinds_serialise_as_documented() {
        for kind in ErrorKind::ALL {
            let json = serde_json::to_string(&kind).expect("json");
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate_utf8("héllo".into(), 2), "h");
        assert_eq!(truncate_utf8("abc".into(), 10), "abc");
    }
}
