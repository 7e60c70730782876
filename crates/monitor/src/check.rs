//! Per-site checks: what a probe sends (method, headers, body, basic auth)
//! and what its response must meet (status set, regexes, JSON conditions,
//! response time, certificate days), read with the site list and judged
//! into the probe's [`Verdict`].
//!
//! Header values and basic-auth passwords are secrets: they may come from
//! `${env:NAME}`, resolved when the list is loaded, so that tokens stay out
//! of files; they appear in no log line, error, metric or `Debug` output.

use std::ffi::OsString;
use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use chrono::SecondsFormat;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use reqwest::Method;
use serde_json::{Number, Value};
use serde_json_path::JsonPath;
use sitewatch_metric::{
    truncate_utf8, Condition, Failed, Metric, Verdict, DEFAULT_FAILURE_THRESHOLD,
    DEFAULT_SUCCESS_THRESHOLD, MAX_FAILED_CONDITIONS, MAX_REGEX_BYTES, MAX_THRESHOLD,
};
use url::Url;

use crate::targets::{parse_seconds, RegexCache, SiteRegex};

/// Every option's key, as a JSON list and the `websites.checks` column spell it.
pub(crate) const KEYS: [&str; 11] = [
    "method",
    "headers",
    "body",
    "basic_auth",
    "expect_status",
    "reject_regex",
    "json",
    "max_response_time",
    "min_cert_days",
    "failure_threshold",
    "success_threshold",
];

/// The keys of a CSV list's `key=value` fields: one `header=Name: value` per header.
pub(crate) const CSV_KEYS: [&str; 11] = [
    "method",
    "header",
    "body",
    "basic_auth",
    "expect_status",
    "reject_regex",
    "json",
    "max_response_time",
    "min_cert_days",
    "failure_threshold",
    "success_threshold",
];

/// The methods a site may ask for.
const METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

/// Longest part of a response body or JSON value quoted in a failed condition.
const MAX_QUOTED_BYTES: usize = 120;

/// Shown in place of a secret.
const REDACTED: &str = "***";

/// How a value refers to an environment variable: `${env:NAME}`.
const ENV_OPEN: &str = "${env:";

/// Looks up an environment variable for `${env:NAME}`.
pub(crate) type Env<'a> = &'a dyn Fn(&str) -> Option<OsString>;

/// The process's environment, where `${env:NAME}` is looked up outside tests.
pub(crate) fn process_env(name: &str) -> Option<OsString> {
    std::env::var_os(name)
}

/// A site's checks: cheap to clone (clones share one set of options), and
/// equal when every option is, secrets included, so that a reload notices a
/// changed token.
#[derive(Clone, PartialEq)]
pub struct Checks(Arc<Options>);

/// Sites that set nothing share one set of options.
static DEFAULTS: LazyLock<Arc<Options>> = LazyLock::new(|| Arc::new(Options::default()));

impl Default for Checks {
    /// The checks of a site that sets none: a GET, a status below 400, the
    /// site's regex if it has one, thresholds 3 and 2.
    fn default() -> Self {
        Checks(Arc::clone(&DEFAULTS))
    }
}

#[derive(PartialEq)]
struct Options {
    method: Method,
    /// Every value marked sensitive, so HTTP/2 never indexes it either.
    headers: HeaderMap,
    body: Option<Bytes>,
    basic_auth: Option<BasicAuth>,
    /// `None` is "below 400", which a site that sets nothing gets.
    expect_status: Option<StatusSet>,
    reject_regex: Option<PatternEq>,
    json: Vec<JsonCondition>,
    max_response_time: Option<Duration>,
    min_cert_days: Option<u32>,
    failure_threshold: u16,
    success_threshold: u16,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            method: Method::GET,
            headers: HeaderMap::new(),
            body: None,
            basic_auth: None,
            expect_status: None,
            reject_regex: None,
            json: Vec::new(),
            max_response_time: None,
            min_cert_days: None,
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
            success_threshold: DEFAULT_SUCCESS_THRESHOLD,
        }
    }
}

/// A compiled regex compared by its pattern.
#[derive(Clone)]
struct PatternEq(SiteRegex);

impl PartialEq for PatternEq {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

#[derive(PartialEq)]
struct BasicAuth {
    user: String,
    password: String,
}

impl fmt::Debug for Checks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &*self.0;
        let headers: Vec<String> = o
            .headers
            .keys()
            .map(|name| format!("{name}: {REDACTED}"))
            .collect();
        f.debug_struct("Checks")
            .field("method", &o.method)
            .field("headers", &headers)
            .field(
                "body",
                &o.body.as_ref().map(|b| format!("{} bytes", b.len())),
            )
            .field(
                "basic_auth",
                // The user may come from the environment too.
                &o.basic_auth
                    .as_ref()
                    .map(|_| format!("{REDACTED}:{REDACTED}")),
            )
            .field("expect_status", &o.expect_status.as_ref().map(|s| &s.text))
            .field(
                "reject_regex",
                &o.reject_regex.as_ref().map(|r| r.0.as_str()),
            )
            .field(
                "json",
                &o.json.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            )
            .field("max_response_time", &o.max_response_time)
            .field("min_cert_days", &o.min_cert_days)
            .field("failure_threshold", &o.failure_threshold)
            .field("success_threshold", &o.success_threshold)
            .finish()
    }
}

impl Checks {
    /// The HTTP method the probe sends.
    pub fn method(&self) -> &Method {
        &self.0.method
    }

    /// The request for `url` with the site's method, headers, body and basic
    /// auth; credentials in the URL stay with reqwest, which sends them as
    /// basic auth.
    pub fn request(&self, client: &reqwest::Client, url: Url) -> reqwest::RequestBuilder {
        let o = &*self.0;
        let mut request = client.request(o.method.clone(), url);
        if !o.headers.is_empty() {
            request = request.headers(o.headers.clone());
        }
        if let Some(body) = &o.body {
            request = request.body(body.clone());
        }
        if let Some(auth) = &o.basic_auth {
            request = request.basic_auth(&auth.user, Some(&auth.password));
        }
        request
    }

    /// Judges a probe: `metric` as the probe filled it, `body` the bytes it read.
    ///
    /// A probe without a response fails only [`Condition::Response`]; else
    /// the failed conditions come in the order status, regex, reject_regex,
    /// json (in list order), response_time, cert_expiry.
    pub fn verdict(&self, metric: &Metric, body: &[u8]) -> Verdict {
        let o = &*self.0;
        let failed = match &metric.error {
            Some(error) => vec![Failed::response(error)],
            None => {
                let mut failed = Vec::new();
                o.judge_response(metric, body, &mut failed);
                failed.truncate(MAX_FAILED_CONDITIONS);
                failed
            }
        };
        Verdict::of(failed, o.failure_threshold, o.success_threshold)
    }
}

impl Options {
    fn judge_response(&self, metric: &Metric, body: &[u8], failed: &mut Vec<Failed>) {
        if let Some(status) = metric.status {
            match &self.expect_status {
                // The words of `Verdict::default_rule`, which a site that sets nothing must match.
                None if status >= 400 => failed.push(Failed::new(
                    Condition::Status,
                    format!("status {status} is not below 400"),
                )),
                Some(set) if !set.contains(status) => failed.push(Failed::new(
                    Condition::Status,
                    format!("status {status} not in {}", set.text),
                )),
                _ => {}
            }
        }
        if metric.regex_matched == Some(false) {
            let pattern = metric.regex.as_deref().unwrap_or_default();
            failed.push(Failed::new(
                Condition::Regex,
                format!("body does not match {pattern:?}"),
            ));
        }
        if let Some(reject) = &self.reject_regex {
            if let Some(found) = reject.0.find_nonempty(body) {
                failed.push(Failed::new(
                    Condition::RejectRegex,
                    format!(
                        "body matches {:?}: found {:?}",
                        reject.0.as_str(),
                        quoted_bytes(found)
                    ),
                ));
            }
        }
        if !self.json.is_empty() {
            let document = parse_body(body, metric.body_truncated);
            for condition in &self.json {
                if let Err(why) = condition.holds(&document) {
                    failed.push(Failed::new(Condition::Json, format!("{condition}: {why}")));
                }
            }
        }
        if let Some(max) = self.max_response_time {
            let took = Duration::from_micros(metric.timings.total_us);
            if took > max {
                failed.push(Failed::new(
                    Condition::ResponseTime,
                    format!(
                        "took {:.3}s, more than {}s",
                        took.as_secs_f64(),
                        max.as_secs_f64()
                    ),
                ));
            }
        }
        if let Some(min) = self.min_cert_days {
            match metric.tls_expires_at {
                None => failed.push(Failed::new(
                    Condition::CertExpiry,
                    "no certificate: the final response did not come over TLS".to_owned(),
                )),
                Some(expires) => {
                    let days = (expires - metric.started_at).num_days();
                    if days < i64::from(min) {
                        failed.push(Failed::new(
                            Condition::CertExpiry,
                            format!(
                                "certificate expires in {days} days ({}), fewer than {min}",
                                expires.to_rfc3339_opts(SecondsFormat::Secs, true)
                            ),
                        ));
                    }
                }
            }
        }
    }
}

/// The body as JSON, or why it is not, said once for every condition.
fn parse_body(body: &[u8], truncated: bool) -> Result<Value, String> {
    if truncated {
        return Err(format!(
            "body cut at {} bytes (the body cap), not read as JSON",
            body.len()
        ));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("body is empty, not JSON".to_owned());
    }
    serde_json::from_slice(body).map_err(|err| format!("body is not JSON ({err})"))
}

/// Bytes of a body for a message: lossy UTF-8, cut short.
/// `user:password` split at the first colon outside a `${env:NAME}`, so
/// that either part may come from the environment.
fn split_credentials(value: &str) -> Option<(&str, &str)> {
    let mut at = 0;
    while let Some(offset) = value[at..].find([':', '$']) {
        let i = at + offset;
        if value[i..].starts_with(ENV_OPEN) {
            // An unclosed reference is refused when the value is resolved.
            at = value[i..].find('}').map_or(value.len(), |end| i + end + 1);
        } else if value[i..].starts_with(':') {
            return Some((&value[..i], &value[i + 1..]));
        } else {
            at = i + 1;
        }
    }
    None
}

fn quoted_bytes(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(MAX_QUOTED_BYTES)];
    let text = String::from_utf8_lossy(cut).into_owned();
    if bytes.len() > MAX_QUOTED_BYTES {
        format!("{text}…")
    } else {
        text
    }
}

/// A JSON value for a message, cut short.
fn quoted_value(value: &Value) -> String {
    let text = value.to_string();
    if text.len() > MAX_QUOTED_BYTES {
        format!("{}…", truncate_utf8(text, MAX_QUOTED_BYTES))
    } else {
        text
    }
}

/// A set of expected statuses, such as `200-299,301`.
#[derive(Debug, Clone, PartialEq)]
struct StatusSet {
    ranges: Vec<(u16, u16)>,
    /// The set as written, without spaces, for messages.
    text: String,
}

impl StatusSet {
    fn parse(text: &str) -> Result<StatusSet, String> {
        let status = |s: &str| -> Result<u16, String> {
            s.trim()
                .parse::<u16>()
                .ok()
                .filter(|code| (100..=999).contains(code))
                .ok_or_else(|| format!("{:?} is not an HTTP status (100 to 999)", s.trim()))
        };
        let mut ranges = Vec::new();
        let mut parts = Vec::new();
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return Err("an empty item; write statuses and ranges such as 200-299,301".into());
            }
            let (low, high) = match part.split_once('-') {
                Some((low, high)) => (status(low)?, status(high)?),
                None => {
                    let code = status(part)?;
                    (code, code)
                }
            };
            if low > high {
                return Err(format!("range {part} runs backwards"));
            }
            ranges.push((low, high));
            parts.push(if low == high {
                low.to_string()
            } else {
                format!("{low}-{high}")
            });
        }
        Ok(StatusSet {
            ranges,
            text: parts.join(","),
        })
    }

    fn contains(&self, status: u16) -> bool {
        self.ranges
            .iter()
            .any(|&(low, high)| (low..=high).contains(&status))
    }
}

/// The comparisons a JSON condition may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// Two-character operators first, so that `<=` is not read as `<`.
const OPS: [(&str, Op); 6] = [
    ("==", Op::Eq),
    ("!=", Op::Ne),
    ("<=", Op::Le),
    (">=", Op::Ge),
    ("<", Op::Lt),
    (">", Op::Gt),
];

impl Op {
    fn symbol(self) -> &'static str {
        OPS.iter()
            .find(|(_, op)| *op == self)
            .map_or("?", |(symbol, _)| symbol)
    }

    fn orders(self) -> bool {
        matches!(self, Op::Lt | Op::Le | Op::Gt | Op::Ge)
    }
}

/// `PATH OP VALUE`: an RFC 9535 JSONPath, a comparison, a JSON literal.
#[derive(Debug, Clone, PartialEq)]
struct JsonCondition {
    /// The path as written, for messages.
    path_text: String,
    path: JsonPath,
    op: Op,
    value: Value,
}

impl fmt::Display for JsonCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.path_text, self.op.symbol(), self.value)
    }
}

impl JsonCondition {
    fn parse(text: &str) -> Result<JsonCondition, String> {
        let text = text.trim();
        // A path may hold operators (in a filter) and so may a string value:
        // the operator is the rightmost one that leaves a valid path on its
        // left and a JSON literal on its right.
        let mut problem = None;
        for (at, _) in text.char_indices().rev() {
            let Some(&(symbol, op)) = OPS.iter().find(|(s, _)| text[at..].starts_with(s)) else {
                continue;
            };
            let path_text = text[..at].trim();
            let value_text = text[at + symbol.len()..].trim();
            let path = JsonPath::parse(path_text);
            let value = serde_json::from_str::<Value>(value_text);
            match (path, value) {
                (Ok(path), Ok(value)) => {
                    if op.orders() && !value.is_number() {
                        return Err(format!(
                            "`{symbol}` compares numbers, and {value} is not one"
                        ));
                    }
                    return Ok(JsonCondition {
                        path_text: path_text.to_owned(),
                        path,
                        op,
                        value,
                    });
                }
                (Err(err), _) if problem.is_none() => {
                    problem = Some(format!("bad JSON path {path_text:?}: {err}"));
                }
                (Ok(_), Err(_)) if problem.is_none() => {
                    problem = Some(format!(
                        "{value_text:?} is not a JSON literal (a string is quoted: \"ok\")"
                    ));
                }
                _ => {}
            }
        }
        Err(problem.unwrap_or_else(|| {
            "expected PATH OP VALUE, OP one of == != < <= > >=, such as $.status == \"ok\"".into()
        }))
    }

    /// Whether the condition holds on `document`; if not, what was found.
    fn holds(&self, document: &Result<Value, String>) -> Result<(), String> {
        let document = document.as_ref().map_err(Clone::clone)?;
        let nodes = self.path.query(document);
        let found = match nodes.len() {
            0 => return Err("found nothing".to_owned()),
            1 => nodes.iter().next().copied().unwrap_or(&Value::Null),
            n => return Err(format!("found {n} values, expected one")),
        };
        let holds = match self.op {
            Op::Eq => same(found, &self.value),
            Op::Ne => !same(found, &self.value),
            _ => {
                let (Some(found_number), Some(wanted)) = (found.as_f64(), self.value.as_f64())
                else {
                    return Err(format!("found {}, not a number", quoted_value(found)));
                };
                match self.op {
                    Op::Lt => found_number < wanted,
                    Op::Le => found_number <= wanted,
                    Op::Gt => found_number > wanted,
                    _ => found_number >= wanted,
                }
            }
        };
        if holds {
            Ok(())
        } else {
            Err(format!("found {}", quoted_value(found)))
        }
    }
}

/// JSON equality, with numbers equal by value (`1` is `1.0`).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => same_number(x, y),
        _ => a == b,
    }
}

fn same_number(x: &Number, y: &Number) -> bool {
    if let (Some(a), Some(b)) = (x.as_i64(), y.as_i64()) {
        return a == b;
    }
    if let (Some(a), Some(b)) = (x.as_u64(), y.as_u64()) {
        return a == b;
    }
    x.as_f64() == y.as_f64()
}

/// Why an option could not be taken.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SetError {
    /// The key names no option; the caller knows which keys its source has.
    Unknown,
    /// The key is known and its value is wrong.
    Bad(String),
}

impl From<String> for SetError {
    fn from(reason: String) -> Self {
        SetError::Bad(reason)
    }
}

/// A site's options as written, before validation; values are text.
#[derive(Default)]
pub(crate) struct RawChecks {
    method: Option<String>,
    headers: Vec<(String, String)>,
    body: Option<String>,
    basic_auth: Option<(String, String)>,
    expect_status: Option<String>,
    reject_regex: Option<String>,
    json: Vec<String>,
    max_response_time: Option<String>,
    min_cert_days: Option<String>,
    failure_threshold: Option<String>,
    success_threshold: Option<String>,
}

impl fmt::Debug for RawChecks {
    /// The keys set, never their values: some are secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = [
            self.method.is_some(),
            !self.headers.is_empty(),
            self.body.is_some(),
            self.basic_auth.is_some(),
            self.expect_status.is_some(),
            self.reject_regex.is_some(),
            !self.json.is_empty(),
            self.max_response_time.is_some(),
            self.min_cert_days.is_some(),
            self.failure_threshold.is_some(),
            self.success_threshold.is_some(),
        ];
        let keys: Vec<&str> = KEYS
            .iter()
            .zip(set)
            .filter_map(|(key, set)| set.then_some(*key))
            .collect();
        f.debug_tuple("RawChecks").field(&keys).finish()
    }
}

/// Numbers keep their text; strings are taken as written.
fn number_text(key: &str, value: Value) -> Result<String, String> {
    match value {
        Value::Number(n) => Ok(n.to_string()),
        Value::String(s) => Ok(s),
        other => Err(format!("{key} must be a number, got {other}")),
    }
}

fn string(key: &str, value: Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s),
        other => Err(format!("{key} must be a string, got {}", kind_of(&other))),
    }
}

/// What a JSON value is, without quoting it (it may be a secret).
fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Sets `slot` from a CSV field, once.
fn once(slot: &mut Option<String>, key: &str, value: &str) -> Result<(), SetError> {
    if slot.is_some() {
        return Err(SetError::Bad(format!("{key} given twice")));
    }
    *slot = Some(value.to_owned());
    Ok(())
}

impl RawChecks {
    /// Whether no option is set.
    pub(crate) fn is_empty(&self) -> bool {
        self.method.is_none()
            && self.headers.is_empty()
            && self.body.is_none()
            && self.basic_auth.is_none()
            && self.expect_status.is_none()
            && self.reject_regex.is_none()
            && self.json.is_empty()
            && self.max_response_time.is_none()
            && self.min_cert_days.is_none()
            && self.failure_threshold.is_none()
            && self.success_threshold.is_none()
    }

    /// Options from the `websites.checks` column: a JSON object with [`KEYS`].
    pub(crate) fn from_table(text: &str) -> Result<RawChecks, String> {
        let value: Value =
            serde_json::from_str(text).map_err(|err| format!("checks: not JSON: {err}"))?;
        let map = match value {
            Value::Object(map) => map,
            Value::Null => return Ok(RawChecks::default()),
            other => {
                return Err(format!(
                    "checks must be a JSON object, got {}",
                    kind_of(&other)
                ))
            }
        };
        let mut raw = RawChecks::default();
        for (key, value) in map {
            match raw.set_json(&key, value) {
                Ok(()) => {}
                Err(SetError::Bad(reason)) => return Err(format!("checks: {reason}")),
                Err(SetError::Unknown)
                    if matches!(key.as_str(), "url" | "interval" | "regex" | "timeout") =>
                {
                    return Err(format!("checks: `{key}` has its own column"))
                }
                Err(SetError::Unknown) => {
                    return Err(format!("checks: {}", unknown_key(&key, &KEYS)))
                }
            }
        }
        Ok(raw)
    }

    /// One key of a JSON object; `null` leaves the option unset.
    pub(crate) fn set_json(&mut self, key: &str, value: Value) -> Result<(), SetError> {
        if !KEYS.contains(&key) {
            return Err(SetError::Unknown);
        }
        if value.is_null() {
            return Ok(());
        }
        match key {
            "method" => self.method = Some(string(key, value)?),
            "body" => self.body = Some(string(key, value)?),
            "reject_regex" => self.reject_regex = Some(string(key, value)?),
            "headers" => {
                let Value::Object(map) = value else {
                    return Err(SetError::Bad(format!(
                        "headers must be an object of name: value, got {}",
                        kind_of(&value)
                    )));
                };
                for (name, value) in map {
                    let value = string(&format!("header {name:?}"), value)?;
                    self.headers.push((name, value));
                }
            }
            "basic_auth" => {
                let Value::Object(mut map) = value else {
                    return Err(SetError::Bad(format!(
                        "basic_auth must be an object {{\"user\": ..., \"password\": ...}}, got {}",
                        kind_of(&value)
                    )));
                };
                let user = map.remove("user").map(|v| string("basic_auth user", v));
                let password = map
                    .remove("password")
                    .map(|v| string("basic_auth password", v));
                if let Some(other) = map.keys().next() {
                    return Err(SetError::Bad(format!(
                        "basic_auth has an unknown field `{other}`, expected `user` and `password`"
                    )));
                }
                match (user, password) {
                    (Some(user), Some(password)) => self.basic_auth = Some((user?, password?)),
                    _ => {
                        return Err(SetError::Bad(
                            "basic_auth needs both `user` and `password`".into(),
                        ))
                    }
                }
            }
            "json" => match value {
                Value::String(s) => self.json.push(s),
                Value::Array(items) => {
                    for item in items {
                        self.json.push(string("each json condition", item)?);
                    }
                }
                other => {
                    return Err(SetError::Bad(format!(
                        "json must be a condition or an array of them, got {}",
                        kind_of(&other)
                    )))
                }
            },
            "expect_status" => match value {
                Value::String(s) => self.expect_status = Some(s),
                Value::Number(n) => self.expect_status = Some(n.to_string()),
                other => {
                    return Err(SetError::Bad(format!(
                    "expect_status must be a string such as \"200-299,301\" or one status, got {}",
                    kind_of(&other)
                )))
                }
            },
            "max_response_time" => self.max_response_time = Some(number_text(key, value)?),
            "min_cert_days" => self.min_cert_days = Some(number_text(key, value)?),
            "failure_threshold" => self.failure_threshold = Some(number_text(key, value)?),
            "success_threshold" => self.success_threshold = Some(number_text(key, value)?),
            _ => return Err(SetError::Unknown),
        }
        Ok(())
    }

    /// One `key=value` field of a CSV row; `header` and `json` may repeat.
    pub(crate) fn set_csv(&mut self, key: &str, value: &str) -> Result<(), SetError> {
        match key {
            "header" => {
                let Some((name, value)) = value.split_once(':') else {
                    return Err(SetError::Bad(
                        "header needs the form header=Name: value".into(),
                    ));
                };
                self.headers
                    .push((name.trim().to_owned(), value.trim().to_owned()));
            }
            "headers" => {
                return Err(SetError::Bad(
                    "in CSV each header is a field of its own: header=Name: value".into(),
                ))
            }
            "json" => self.json.push(value.to_owned()),
            "basic_auth" => {
                if self.basic_auth.is_some() {
                    return Err(SetError::Bad("basic_auth given twice".into()));
                }
                let Some((user, password)) = split_credentials(value) else {
                    return Err(SetError::Bad(
                        "basic_auth needs the form basic_auth=user:password".into(),
                    ));
                };
                self.basic_auth = Some((user.to_owned(), password.to_owned()));
            }
            "method" => once(&mut self.method, key, value)?,
            "body" => once(&mut self.body, key, value)?,
            "expect_status" => once(&mut self.expect_status, key, value)?,
            "reject_regex" => once(&mut self.reject_regex, key, value)?,
            "max_response_time" => once(&mut self.max_response_time, key, value)?,
            "min_cert_days" => once(&mut self.min_cert_days, key, value)?,
            "failure_threshold" => once(&mut self.failure_threshold, key, value)?,
            "success_threshold" => once(&mut self.success_threshold, key, value)?,
            _ => return Err(SetError::Unknown),
        }
        Ok(())
    }

    /// Validates every option for the site at `url` (whose list row has a
    /// body regex when `has_regex`), resolving `${env:NAME}` through `env`.
    pub(crate) fn build(
        self,
        url: &Url,
        has_regex: bool,
        regexes: &mut RegexCache,
        env: Env<'_>,
    ) -> Result<Checks, String> {
        if self.is_empty() {
            return Ok(Checks::default());
        }
        let mut o = Options::default();
        if let Some(text) = &self.method {
            let upper = text.trim().to_ascii_uppercase();
            o.method = METHODS
                .iter()
                .find(|m| m.as_str() == upper)
                .cloned()
                .ok_or_else(|| {
                    format!(
                        "unknown method {:?}, expected one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS",
                        text.trim()
                    )
                })?;
        }
        for (name, value) in &self.headers {
            let header = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
                format!(
                    "header name {:?} is not a valid HTTP header name",
                    name.trim()
                )
            })?;
            let resolved = resolve(value, env).map_err(|why| format!("header {header}: {why}"))?;
            // The message names the header, never the value: it may be a token.
            let mut value = HeaderValue::from_str(&resolved)
                .map_err(|_| format!("header {header}: the value is not a valid header value (a control character or a line break?)"))?;
            value.set_sensitive(true);
            o.headers.append(header, value);
        }
        o.body = self.body.map(Bytes::from);
        if let Some((user, password)) = &self.basic_auth {
            let user = resolve(user, env).map_err(|why| format!("basic_auth user: {why}"))?;
            let password =
                resolve(password, env).map_err(|why| format!("basic_auth password: {why}"))?;
            if user.contains(':') {
                return Err("basic_auth user may not contain `:`".into());
            }
            o.basic_auth = Some(BasicAuth { user, password });
        }
        let url_credentials = !url.username().is_empty() || url.password().is_some();
        let authorization_header = o.headers.contains_key(AUTHORIZATION);
        if [
            url_credentials,
            o.basic_auth.is_some(),
            authorization_header,
        ]
        .into_iter()
        .filter(|set| *set)
        .count()
            > 1
        {
            return Err("credentials given twice: choose one of basic_auth, credentials in the URL, and an Authorization header".into());
        }
        if let Some(text) = &self.expect_status {
            o.expect_status = Some(
                StatusSet::parse(text).map_err(|why| format!("expect_status {text:?}: {why}"))?,
            );
        }
        if let Some(pattern) = self.reject_regex.as_deref().filter(|p| !p.is_empty()) {
            if pattern.len() > MAX_REGEX_BYTES {
                return Err(format!("reject_regex longer than {MAX_REGEX_BYTES} bytes"));
            }
            let regex = regexes
                .get(pattern)
                .map_err(|err| format!("invalid reject_regex {pattern:?}: {err}"))?;
            o.reject_regex = Some(PatternEq(regex));
        }
        for text in &self.json {
            o.json.push(
                JsonCondition::parse(text)
                    .map_err(|why| format!("json condition {:?}: {why}", text.trim()))?,
            );
        }
        if let Some(text) = &self.max_response_time {
            o.max_response_time =
                Some(parse_seconds(text.trim()).map_err(|why| format!("max_response_time {why}"))?);
        }
        if let Some(text) = &self.min_cert_days {
            let days = text.trim().parse::<u32>().map_err(|_| {
                format!(
                    "min_cert_days {:?} is not a whole number of days",
                    text.trim()
                )
            })?;
            if url.scheme() != "https" {
                return Err(
                    "min_cert_days needs an https:// URL: a plain http site has no certificate"
                        .into(),
                );
            }
            o.min_cert_days = Some(days);
        }
        if let Some(text) = &self.failure_threshold {
            o.failure_threshold = threshold("failure_threshold", text)?;
        }
        if let Some(text) = &self.success_threshold {
            o.success_threshold = threshold("success_threshold", text)?;
        }
        if o.method == Method::HEAD && (has_regex || o.reject_regex.is_some() || !o.json.is_empty())
        {
            return Err("method HEAD gets no body, so regex, reject_regex and json conditions could never pass".into());
        }
        Ok(Checks(Arc::new(o)))
    }
}

fn threshold(key: &str, text: &str) -> Result<u16, String> {
    let n: u64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{key} {:?} is not a whole number", text.trim()))?;
    u16::try_from(n)
        .ok()
        .filter(|n| (1..=MAX_THRESHOLD).contains(n))
        .ok_or_else(|| format!("{key} must be 1 to {MAX_THRESHOLD}, got {n}"))
}

/// The message for a key no option has, listing the `known` ones.
pub(crate) fn unknown_key(key: &str, known: &[&str]) -> String {
    let known: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
    format!(
        "unknown field `{key}`, expected one of {}",
        known.join(", ")
    )
}

/// `text` with every `${env:NAME}` replaced by that variable's value. An
/// error names the variable, never a value.
fn resolve(text: &str, env: Env<'_>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(ENV_OPEN) {
        out.push_str(&rest[..start]);
        let after = &rest[start + ENV_OPEN.len()..];
        let Some(end) = after.find('}') else {
            return Err("`${env:` without its closing `}`".into());
        };
        let name = &after[..end];
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            // Not a name, so perhaps a secret written in place: never quoted.
            return Err(
                "`${env:...}` holds something that is not an environment variable name (letters, digits, _)"
                    .into(),
            );
        }
        let value = env(name)
            .ok_or_else(|| format!("environment variable {name} is not set"))?
            .into_string()
            .map_err(|_| format!("environment variable {name} is not valid UTF-8"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, TimeDelta, Utc};
    use sitewatch_metric::{ErrorKind, ProbeError, Timings};

    fn env(name: &str) -> Option<OsString> {
        match name {
            "TOKEN" => Some("tok-123-secret".into()),
            "PASS" => Some("pa55-secret".into()),
            _ => None,
        }
    }

    fn build_at(url: &str, fields: &[(&str, &str)]) -> Result<Checks, String> {
        let mut raw = RawChecks::default();
        for (key, value) in fields {
            match raw.set_csv(key, value) {
                Ok(()) => {}
                Err(SetError::Bad(why)) => return Err(why),
                Err(SetError::Unknown) => return Err(unknown_key(key, &CSV_KEYS)),
            }
        }
        let url = Url::parse(url).map_err(|e| e.to_string())?;
        raw.build(&url, false, &mut RegexCache::default(), &env)
    }

    fn build(fields: &[(&str, &str)]) -> Result<Checks, String> {
        build_at("https://example.com/", fields)
    }

    fn metric(
        status: Option<u16>,
        error: Option<ErrorKind>,
        regex_matched: Option<bool>,
    ) -> Metric {
        Metric {
            status,
            error: error.map(|kind| ProbeError {
                kind,
                message: "it failed".into(),
            }),
            regex: regex_matched.map(|_| "Welcome".to_owned()),
            regex_matched,
            started_at: DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default(),
            timings: Timings {
                total_us: 80_000,
                ..Timings::default()
            },
            ..Metric::default()
        }
    }

    #[test]
    fn a_site_that_sets_nothing_gets_the_default_rule() {
        let checks = Checks::default();
        let cases = [
            ("ok", metric(Some(200), None, None)),
            ("ok with a regex", metric(Some(200), None, Some(true))),
            ("3xx", metric(Some(301), None, None)),
            ("4xx", metric(Some(404), None, None)),
            ("5xx", metric(Some(503), None, None)),
            ("5xx and a regex miss", metric(Some(503), None, Some(false))),
            ("error", metric(None, Some(ErrorKind::Timeout), None)),
            (
                "error after the head",
                metric(Some(200), Some(ErrorKind::Body), None),
            ),
            ("regex miss", metric(Some(200), None, Some(false))),
        ];
        for (name, m) in cases {
            assert_eq!(
                checks.verdict(&m, b"<html>anything</html>"),
                Verdict::default_rule(&m),
                "{name}"
            );
        }
        let built = build(&[]).expect("no options");
        assert!(Arc::ptr_eq(&built.0, &checks.0), "defaults are shared");
    }

    #[test]
    fn every_option_is_parsed() {
        let c = build(&[
            ("method", "post"),
            ("header", "X-Token: Bearer ${env:TOKEN}"),
            ("header", "Accept: application/json"),
            ("body", "{\"ping\": 1}"),
            ("basic_auth", "monitor:${env:PASS}"),
            ("expect_status", "200-299, 301"),
            ("reject_regex", "(?i)maintenance"),
            ("json", "$.status == \"ok\""),
            ("json", "$.queue.depth < 100"),
            ("max_response_time", "1.5"),
            ("min_cert_days", "14"),
            ("failure_threshold", "5"),
            ("success_threshold", "1"),
        ])
        .expect("valid");
        let o = &*c.0;
        assert_eq!(o.method, Method::POST);
        assert_eq!(
            o.headers.get("x-token").map(HeaderValue::as_bytes),
            Some(&b"Bearer tok-123-secret"[..])
        );
        assert!(o
            .headers
            .get("x-token")
            .is_some_and(HeaderValue::is_sensitive));
        assert_eq!(o.body.as_deref(), Some(&b"{\"ping\": 1}"[..]));
        let auth = o.basic_auth.as_ref().expect("auth");
        assert_eq!(
            (auth.user.as_str(), auth.password.as_str()),
            ("monitor", "pa55-secret")
        );
        let set = o.expect_status.as_ref().expect("status set");
        assert_eq!(set.text, "200-299,301");
        assert!(set.contains(204) && set.contains(301) && !set.contains(302));
        assert_eq!(o.json.len(), 2);
        assert_eq!(o.json[1].to_string(), "$.queue.depth < 100");
        assert_eq!(o.max_response_time, Some(Duration::from_millis(1500)));
        assert_eq!(o.min_cert_days, Some(14));
        assert_eq!((o.failure_threshold, o.success_threshold), (5, 1));
    }

    #[test]
    fn json_options_take_their_json_types() {
        let mut raw = RawChecks::default();
        let options = serde_json::json!({
            "method": "HEAD",
            "headers": {"X-Token": "${env:TOKEN}"},
            "basic_auth": {"user": "u", "password": "p"},
            "expect_status": 204,
            "json": "$.a == 1",
            "max_response_time": 2,
            "min_cert_days": 7,
            "failure_threshold": "4",
            "success_threshold": null,
        });
        let serde_json::Value::Object(map) = options else {
            panic!("an object")
        };
        for (key, value) in map {
            assert_eq!(raw.set_json(&key, value), Ok(()), "{key}");
        }
        assert_eq!(raw.json, vec!["$.a == 1".to_owned()]);
        assert_eq!(raw.expect_status.as_deref(), Some("204"));
        assert_eq!(raw.success_threshold, None, "null is unset");
        assert_eq!(
            raw.set_json("json", serde_json::json!(["$.a == 1", "$.b != null"])),
            Ok(())
        );
        assert_eq!(raw.json.len(), 3);
        assert_eq!(raw.set_json("methd", "GET".into()), Err(SetError::Unknown));
        let bad = |key: &str, value: Value| match RawChecks::default().set_json(key, value) {
            Err(SetError::Bad(why)) => why,
            other => panic!("{key}: {other:?}"),
        };
        assert!(bad("method", 5.into()).contains("method must be a string"));
        assert!(bad("headers", "X: y".into()).contains("headers must be an object"));
        assert!(bad("basic_auth", serde_json::json!({"user": "u"})).contains("both"));
        assert!(bad(
            "basic_auth",
            serde_json::json!({"user": "u", "password": "p", "pw": "q"})
        )
        .contains("unknown field `pw`"));
        assert!(bad("json", 1.into()).contains("json must be"));
        assert!(bad("expect_status", serde_json::json!([200])).contains("got an array"));
        assert!(bad("min_cert_days", true.into()).contains("must be a number"));
        let mut head = RawChecks::default();
        for (key, value) in [("method", "HEAD"), ("json", "$.a == 1")] {
            assert_eq!(head.set_json(key, value.into()), Ok(()));
        }
        let url = Url::parse("https://example.com/").expect("url");
        let err = head
            .build(&url, false, &mut RegexCache::default(), &env)
            .expect_err("HEAD has no body");
        assert!(err.contains("method HEAD gets no body"), "{err}");
    }

    #[test]
    fn table_checks_are_an_object_of_the_same_keys() {
        let raw =
            RawChecks::from_table(r#"{"method": "put", "json": ["$.ok == true"]}"#).expect("valid");
        assert_eq!(raw.method.as_deref(), Some("put"));
        let err = |text: &str| RawChecks::from_table(text).expect_err(text);
        assert!(err(r#"{"interval": 5}"#).contains("`interval` has its own column"));
        assert!(err(r#"{"metod": "GET"}"#).contains("unknown field `metod`"));
        assert!(err("[1]").contains("must be a JSON object"));
        assert!(err("{").contains("not JSON"));
    }

    #[test]
    fn each_bad_option_says_why() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("method", "FETCH")],
                "unknown method \"FETCH\", expected one of GET",
            ),
            (
                &[("method", "GET"), ("method", "POST")],
                "method given twice",
            ),
            (&[("header", "X-Token")], "header=Name: value"),
            (
                &[("header", "Bad Name: v")],
                "header name \"Bad Name\" is not a valid",
            ),
            (
                &[("header", "X-A: ${env:NOPE}")],
                "header x-a: environment variable NOPE is not set",
            ),
            (&[("header", "X-A: ${env:TOKEN")], "without its closing"),
            (
                &[("header", "X-A: ${env:1X}")],
                "not an environment variable name",
            ),
            (
                &[("headers", "X-A: b")],
                "each header is a field of its own",
            ),
            (&[("basic_auth", "nopassword")], "basic_auth=user:password"),
            (
                &[("basic_auth", "u:${env:NOPE}")],
                "basic_auth password: environment variable NOPE",
            ),
            (
                &[("expect_status", "2xx")],
                "expect_status \"2xx\": \"2xx\" is not an HTTP status",
            ),
            (&[("expect_status", "299-200")], "runs backwards"),
            (&[("expect_status", "200,,301")], "an empty item"),
            (
                &[("expect_status", "42")],
                "not an HTTP status (100 to 999)",
            ),
            (&[("reject_regex", "(unclosed")], "invalid reject_regex"),
            (&[("json", "$.status = \"ok\"")], "expected PATH OP VALUE"),
            (&[("json", "$.a[ == 1")], "bad JSON path \"$.a[\""),
            (&[("json", "status == \"ok\"")], "bad JSON path \"status\""),
            (
                &[("json", "$.status == ok")],
                "\"ok\" is not a JSON literal",
            ),
            (&[("json", "$.depth < \"ten\"")], "`<` compares numbers"),
            (
                &[("max_response_time", "0")],
                "max_response_time must be greater than zero",
            ),
            (
                &[("max_response_time", "fast")],
                "max_response_time \"fast\" is not a number",
            ),
            (
                &[("min_cert_days", "-1")],
                "min_cert_days \"-1\" is not a whole number",
            ),
            (
                &[("failure_threshold", "0")],
                "failure_threshold must be 1 to 1000, got 0",
            ),
            (
                &[("success_threshold", "1001")],
                "success_threshold must be 1 to 1000, got 1001",
            ),
            (
                &[("success_threshold", "two")],
                "success_threshold \"two\" is not a whole number",
            ),
            (
                &[("method", "HEAD"), ("reject_regex", "x")],
                "method HEAD gets no body",
            ),
            (
                &[("basic_auth", "u:p"), ("header", "Authorization: Bearer x")],
                "credentials given twice",
            ),
            (
                &[("colour", "red")],
                "unknown field `colour`, expected one of `method`",
            ),
        ];
        for (fields, expected) in cases {
            let err = build(fields).expect_err(expected);
            assert!(err.contains(expected), "{fields:?}: {err}");
        }
        let err = build_at("http://example.com/", &[("min_cert_days", "30")])
            .expect_err("http has no certificate");
        assert!(err.contains("min_cert_days needs an https:// URL"), "{err}");
        let err = build_at("https://u:p@example.com/", &[("basic_auth", "u:p")])
            .expect_err("two credentials");
        assert!(err.contains("credentials given twice"), "{err}");
    }

    #[test]
    fn secrets_stay_out_of_debug_and_errors() {
        let c = build(&[
            ("header", "X-Token: Bearer ${env:TOKEN}"),
            ("header", "X-Plain: literal-secret"),
            ("basic_auth", "monitor:${env:PASS}"),
            ("body", "password=body-secret"),
        ])
        .expect("valid");
        let shown = format!("{c:?}");
        for secret in ["tok-123", "pa55", "literal-secret", "body-secret"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(
            shown.contains("x-token: ***") && shown.contains("basic_auth: Some(\"***:***\")"),
            "{shown}"
        );
        let mut raw = RawChecks::default();
        assert_eq!(raw.set_csv("header", "X-Token: literal-secret"), Ok(()));
        assert!(!format!("{raw:?}").contains("literal-secret"));
        // A value that is not a valid header value: the error names the header only.
        let err = build(&[("header", "X-Token: bad\u{7f}literal-secret")]).expect_err("bad value");
        assert!(
            err.contains("header x-token") && !err.contains("literal-secret"),
            "{err}"
        );
        let err = build(&[("header", "X-Token: ${env:NOPE}-literal-secret")]).expect_err("unset");
        assert!(!err.contains("literal-secret"), "{err}");
        // Not a variable's name, perhaps a secret typed in its place: not quoted.
        let err = build(&[("basic_auth", "monitor:${env:literal secret}")]).expect_err("bad name");
        assert!(
            err.contains("not an environment variable name") && !err.contains("literal secret"),
            "{err}"
        );
    }

    #[test]
    fn either_part_of_basic_auth_may_come_from_the_environment() {
        assert_eq!(
            split_credentials("${env:USER}:${env:PASS}"),
            Some(("${env:USER}", "${env:PASS}"))
        );
        assert_eq!(split_credentials("u:p:q"), Some(("u", "p:q")));
        assert_eq!(
            split_credentials("a$b:${env:PASS}x"),
            Some(("a$b", "${env:PASS}x"))
        );
        assert_eq!(split_credentials("${env:USER}"), None);
        assert_eq!(split_credentials("${env:USER"), None);
        let c = build(&[("basic_auth", "${env:TOKEN}:${env:PASS}")]).expect("valid");
        let auth = c.0.basic_auth.as_ref().expect("basic auth");
        assert_eq!(auth.user, "tok-123-secret");
    }

    #[test]
    fn a_reject_regex_that_matches_nothing_everywhere_finds_nothing() {
        let m = metric(Some(200), None, None);
        let c = build(&[("reject_regex", "maintenance|x*")]).expect("valid");
        assert!(c.verdict(&m, b"all systems go").up, "only empty matches");
        let v = c.verdict(&m, b"down for maintenance");
        assert!(
            !v.up && v.failed[0].message.contains("found \"maintenance\""),
            "{v:?}"
        );
        let empty = build(&[("reject_regex", "^$")]).expect("valid");
        assert!(
            !empty.verdict(&m, b"").up,
            "an empty body is what ^$ rejects"
        );
        assert!(empty.verdict(&m, b"something").up);
    }

    #[test]
    fn env_references_are_resolved_in_place() {
        assert_eq!(
            resolve("a ${env:TOKEN} b ${env:PASS}", &env).as_deref(),
            Ok("a tok-123-secret b pa55-secret")
        );
        assert_eq!(
            resolve("no reference, $HOME {x}", &env).as_deref(),
            Ok("no reference, $HOME {x}")
        );
        assert_eq!(
            resolve("${env:NOPE}", &env),
            Err("environment variable NOPE is not set".to_owned())
        );
    }

    #[test]
    fn json_conditions_split_at_the_right_operator() {
        let c = JsonCondition::parse(r#"$.message == "a == b""#).expect("string holds ==");
        assert_eq!(c.value, Value::from("a == b"));
        let c = JsonCondition::parse("$.items[?@.depth > 5].name != \"x\"").expect("filter");
        assert_eq!(
            (c.path_text.as_str(), c.op),
            ("$.items[?@.depth > 5].name", Op::Ne)
        );
        let c = JsonCondition::parse("$.a<=1").expect("no spaces");
        assert_eq!((c.op, c.value), (Op::Le, Value::from(1)));
        let c = JsonCondition::parse("$['odd key'] >= 2.5").expect("bracket");
        assert_eq!(c.to_string(), "$['odd key'] >= 2.5");
    }

    fn judged(fields: &[(&str, &str)], m: &Metric, body: &str) -> Vec<(Condition, String)> {
        build(fields)
            .expect("valid")
            .verdict(m, body.as_bytes())
            .failed
            .into_iter()
            .map(|f| (f.condition, f.message))
            .collect()
    }

    #[test]
    fn json_conditions_say_what_they_found() {
        let ok = metric(Some(200), None, None);
        let body = r#"{"status": "degraded", "queue": {"depth": 500}, "items": [1, 2]}"#;
        let failed = judged(
            &[
                ("json", "$.status == \"ok\""),
                ("json", "$.queue.depth < 100"),
                ("json", "$.missing == 1"),
                ("json", "$.items[*] == 1"),
                ("json", "$.status > 1"),
                ("json", "$.queue.depth == 500.0"),
            ],
            &ok,
            body,
        );
        let messages: Vec<&str> = failed.iter().map(|f| f.1.as_str()).collect();
        assert_eq!(
            messages,
            vec![
                "$.status == \"ok\": found \"degraded\"",
                "$.queue.depth < 100: found 500",
                "$.missing == 1: found nothing",
                "$.items[*] == 1: found 2 values, expected one",
                "$.status > 1: found \"degraded\", not a number",
            ]
        );
        assert!(failed.iter().all(|f| f.0 == Condition::Json));
        let not_json = judged(&[("json", "$.status == \"ok\"")], &ok, "<html>");
        assert!(
            not_json[0]
                .1
                .starts_with("$.status == \"ok\": body is not JSON"),
            "{not_json:?}"
        );
        let cut = Metric {
            body_truncated: true,
            ..ok.clone()
        };
        let truncated = judged(
            &[("json", "$.status == \"ok\"")],
            &cut,
            "{\"status\": \"ok\"",
        );
        assert!(
            truncated[0].1.contains("body cut at 15 bytes"),
            "{truncated:?}"
        );
        let empty = judged(&[("json", "$.status == \"ok\"")], &ok, "");
        assert!(empty[0].1.contains("body is empty"), "{empty:?}");
    }

    #[test]
    fn failed_conditions_come_in_the_documented_order() {
        let m = Metric {
            regex: Some("Welcome".into()),
            tls_expires_at: Some(
                DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
                    + TimeDelta::days(10)
                    + TimeDelta::hours(5),
            ),
            timings: Timings {
                total_us: 2_100_000,
                ..Timings::default()
            },
            ..metric(Some(503), None, Some(false))
        };
        let fields = [
            ("min_cert_days", "30"),
            ("max_response_time", "1"),
            ("json", "$.a == 1"),
            ("json", "$.b == 2"),
            ("reject_regex", "[Mm]aintenance"),
            ("expect_status", "200-299"),
            ("failure_threshold", "4"),
        ];
        let body = r#"{"a": 0, "b": 0, "note": "Maintenance window"}"#;
        let c = build(&fields).expect("valid");
        let verdict = c.verdict(&m, body.as_bytes());
        assert!(!verdict.up);
        assert_eq!(
            (verdict.failure_threshold, verdict.success_threshold),
            (4, 2)
        );
        let got: Vec<(Condition, &str)> = verdict
            .failed
            .iter()
            .map(|f| (f.condition, f.message.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Condition::Status, "status 503 not in 200-299"),
                (Condition::Regex, "body does not match \"Welcome\""),
                (
                    Condition::RejectRegex,
                    "body matches \"[Mm]aintenance\": found \"Maintenance\""
                ),
                (Condition::Json, "$.a == 1: found 0"),
                (Condition::Json, "$.b == 2: found 0"),
                (Condition::ResponseTime, "took 2.100s, more than 1s"),
                (
                    Condition::CertExpiry,
                    "certificate expires in 10 days (2027-01-25T13:00:00Z), fewer than 30"
                ),
            ]
        );
        // A probe without a response fails that alone.
        let error = Metric {
            error: Some(ProbeError {
                kind: ErrorKind::Connect,
                message: "refused".into(),
            }),
            status: None,
            regex_matched: None,
            ..m
        };
        let verdict = c.verdict(&error, body.as_bytes());
        assert_eq!(
            verdict.failed,
            vec![Failed::new(Condition::Response, "connect: refused")]
        );
        assert_eq!(verdict.failure_threshold, 4);
    }

    #[test]
    fn conditions_that_hold_pass() {
        let m = Metric {
            tls_expires_at: Some(Utc::now() + TimeDelta::days(40)),
            started_at: Utc::now(),
            ..metric(Some(301), None, None)
        };
        let c = build(&[
            ("expect_status", "200-299,301"),
            ("reject_regex", "error"),
            ("json", "$.status == \"ok\""),
            ("json", "$.depth <= 100"),
            ("json", "$.n == 1.0"),
            ("json", "$.gone != 1"),
            ("max_response_time", "0.5"),
            ("min_cert_days", "30"),
        ])
        .expect("valid");
        let verdict = c.verdict(
            &m,
            br#"{"status": "ok", "depth": 100, "n": 1, "gone": null}"#,
        );
        assert!(verdict.up, "{verdict:?}");
        let no_tls = Metric {
            tls_expires_at: None,
            ..m
        };
        let failed = c
            .verdict(&no_tls, br#"{"status": "ok", "depth": 1, "n": 1}"#)
            .failed;
        assert_eq!(failed.len(), 2, "{failed:?}");
        assert_eq!(failed[0].message, "$.gone != 1: found nothing");
        assert_eq!(failed[1].condition, Condition::CertExpiry);
    }

    #[test]
    fn equal_options_make_equal_checks_and_a_rotated_token_does_not() {
        let a = build(&[("header", "X-Token: ${env:TOKEN}"), ("json", "$.a == 1")]).expect("a");
        let b = build(&[("header", "X-Token: ${env:TOKEN}"), ("json", "$.a == 1")]).expect("b");
        let c = build(&[("header", "X-Token: ${env:PASS}"), ("json", "$.a == 1")]).expect("c");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, Checks::default());
    }
}
