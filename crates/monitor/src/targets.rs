//! The list of sites to probe: read from CSV or JSON, validated as a whole.
//!
//! A list with any bad row is refused whole, with every bad row reported, so
//! that a typo never starts (or reloads into) a half-configured monitor.
//! Each row may carry per-site checks ([`crate::check`]), the same keys in
//! every format.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use serde_json::Value;
use sitewatch_metric::{MAX_REGEX_BYTES, MAX_URL_BYTES};
use url::Url;

use crate::check::{self, Checks, Env, RawChecks, SetError};

/// Biggest compiled regex accepted, so one row cannot eat the monitor's memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// One site to probe.
#[derive(Clone)]
pub struct Target {
    /// The site's name in metrics and in the `websites` table: the normalised
    /// URL for a file, the URL exactly as stored for a table row, so the
    /// consumer files the metrics under that same row.
    pub id: String,
    /// Normalised URL (scheme added when missing), what is fetched.
    pub url: Url,
    /// Time between two scheduled probes.
    pub interval: Duration,
    /// Pattern looked for in the body.
    pub regex: Option<SiteRegex>,
    /// Per-site timeout; the monitor's default applies when absent.
    pub timeout: Option<Duration>,
    /// What the probe sends and what its response must meet.
    pub checks: Checks,
}

impl fmt::Debug for Target {
    /// The URL without its password, which authenticates the probe.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut url = self.url.clone();
        if url.password().is_some() {
            let _ = url.set_password(Some("***"));
        }
        f.debug_struct("Target")
            .field("id", &self.id)
            .field("url", &url.as_str())
            .field("interval", &self.interval)
            .field("regex", &self.regex.as_ref().map(SiteRegex::as_str))
            .field("timeout", &self.timeout)
            .field("checks", &self.checks)
            .finish()
    }
}

impl Target {
    /// The timeout this site gets: its own or the default, never more than its interval.
    pub fn effective_timeout(&self, default: Duration) -> Duration {
        self.timeout.unwrap_or(default).min(self.interval)
    }
}

impl PartialEq for Target {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.url == other.url
            && self.interval == other.interval
            && self.timeout == other.timeout
            && self.regex.as_ref().map(SiteRegex::as_str)
                == other.regex.as_ref().map(SiteRegex::as_str)
            && self.checks == other.checks
    }
}

/// A compiled body regex, matched against raw bytes (bodies need not be UTF-8).
///
/// Clones share one compiled regex and its match caches: a list usually
/// repeats a few patterns over many sites, and each compiled copy costs about
/// 13 kB (25,000 sites with one pattern each took 365 MB before, 34 MB now).
#[derive(Debug, Clone)]
pub struct SiteRegex(Arc<regex::bytes::Regex>);

impl SiteRegex {
    /// Compiles `pattern`.
    pub fn new(pattern: &str) -> Result<Self, regex::Error> {
        regex::bytes::RegexBuilder::new(pattern)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map(|regex| SiteRegex(Arc::new(regex)))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The first match in `body`, if any.
    pub fn find<'b>(&self, body: &'b [u8]) -> Option<&'b [u8]> {
        self.0.find(body).map(|m| m.as_bytes())
    }

    /// The first match in `body` that holds something (a pattern such as
    /// `x*` or `a|` matches nothing everywhere), or the empty body itself.
    pub fn find_nonempty<'b>(&self, body: &'b [u8]) -> Option<&'b [u8]> {
        self.0
            .find_iter(body)
            .find(|m| !m.is_empty() || body.is_empty())
            .map(|m| m.as_bytes())
    }
}

/// One bad row: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    /// The file (or other source) the row came from.
    pub source: String,
    /// 1-based line of the row.
    pub line: u64,
    /// What is wrong, in words an operator can act on.
    pub reason: String,
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.source, self.line, self.reason)
    }
}

/// Why a target list was refused: every bad row, or why the source could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TargetsError {
    /// The file cannot be read.
    #[error("cannot read target list {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The `websites` table cannot be read.
    #[error("cannot read targets from the {database}: {reason}")]
    Postgres {
        /// Safe description of the database.
        database: String,
        /// What went wrong.
        reason: String,
    },
    /// One or more rows are bad; nothing from the list is used.
    #[error("{} bad row(s) in the target list:\n{}", .0.len(), display_rows(.0))]
    Rows(Vec<RowError>),
}

fn display_rows(rows: &[RowError]) -> String {
    rows.iter()
        .map(|r| format!("  {r}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The formats a target file can be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `url,interval_seconds[,regex[,key=value...]]`, one site a line.
    Csv,
    /// `[{"url": ..., "interval": ..., "regex"?: ..., "timeout"?: ..., check options?}]`.
    Json,
}

impl Format {
    /// Chooses by extension, else by the first character (`[` means JSON).
    pub fn detect(path: &Path, text: &str) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("json") => Format::Json,
            Some(ext) if ext.eq_ignore_ascii_case("csv") => Format::Csv,
            _ if text.trim_start().starts_with('[') => Format::Json,
            _ => Format::Csv,
        }
    }
}

/// Reads and validates a target file.
pub fn load_file(path: &Path) -> Result<Vec<Target>, TargetsError> {
    let text = std::fs::read_to_string(path).map_err(|source| TargetsError::Read {
        path: path.to_owned(),
        source,
    })?;
    let name = path.display().to_string();
    match Format::detect(path, &text) {
        Format::Csv => parse_csv(&name, &text),
        Format::Json => parse_json(&name, &text),
    }
}

/// A row as written, before validation.
#[derive(Debug, Default)]
pub(crate) struct RawRow {
    /// Where the row is: a line, or a table row's id.
    pub(crate) line: u64,
    pub(crate) url: String,
    pub(crate) interval: Option<String>,
    pub(crate) regex: Option<String>,
    pub(crate) timeout: Option<String>,
    /// The site's check options, unvalidated.
    pub(crate) checks: RawChecks,
    /// Keep the URL as written as the site's id (rows of the `websites` table).
    pub(crate) keep_id: bool,
}

/// The keys of a JSON list row that are not check options.
const SITE_KEYS: [&str; 4] = ["url", "interval", "regex", "timeout"];

/// Parses the CSV layout `url,interval_seconds[,regex[,key=value...]]`; a
/// header row is accepted.
pub fn parse_csv(source: &str, text: &str) -> Result<Vec<Target>, TargetsError> {
    parse_csv_in(source, text, &check::process_env)
}

/// [`parse_csv`], with `${env:NAME}` looked up in `env`.
pub(crate) fn parse_csv_in(
    source: &str,
    text: &str,
    env: Env<'_>,
) -> Result<Vec<Target>, TargetsError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_reader(text.as_bytes());
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for (index, record) in reader.records().enumerate() {
        let record = match record {
            Ok(record) => record,
            Err(err) => {
                let line = err.position().map_or(0, csv::Position::line);
                errors.push(row_error(source, line, format!("not valid CSV: {err}")));
                continue;
            }
        };
        let line = record.position().map_or(0, csv::Position::line);
        let field = |i: usize| record.get(i).map(str::to_owned);
        let url = field(0).unwrap_or_default();
        if index == 0 && url.eq_ignore_ascii_case("url") {
            continue;
        }
        let mut row = RawRow {
            line,
            url,
            interval: field(1),
            regex: field(2),
            ..RawRow::default()
        };
        match csv_options(&record, &mut row) {
            Ok(()) => rows.push(row),
            Err(reason) => errors.push(row_error(source, line, reason)),
        }
    }
    validate_in(source, rows, errors, env)
}

/// The CSV keys: the check options and the per-site timeout.
fn csv_keys() -> Vec<&'static str> {
    let mut keys = vec!["timeout"];
    keys.extend(check::CSV_KEYS);
    keys
}

/// Fields 4 and on of a CSV row: each one `key=value`.
fn csv_options(record: &csv::StringRecord, row: &mut RawRow) -> Result<(), String> {
    if let Some((key, _)) = row.regex.as_deref().and_then(|r| r.split_once('=')) {
        // `url,interval,method=HEAD` would silently probe for the regex "method=HEAD".
        if csv_keys().contains(&key.trim()) {
            return Err(format!(
                "the third field is the regex, and {key}=... looks like an option: leave the regex empty (url,interval,,{key}=...)"
            ));
        }
    }
    for (index, field) in record.iter().enumerate().skip(3) {
        let Some((key, value)) = field.split_once('=') else {
            // Not quoted: a mistyped option may hold a password.
            return Err(format!(
                "field {} is not key=value (quote a field that contains commas)",
                index + 1
            ));
        };
        let key = key.trim();
        if key == "timeout" {
            if row.timeout.is_some() {
                return Err("timeout given twice".into());
            }
            row.timeout = Some(value.to_owned());
            continue;
        }
        match row.checks.set_csv(key, value) {
            Ok(()) => {}
            Err(SetError::Bad(reason)) => return Err(reason),
            Err(SetError::Unknown) if SITE_KEYS.contains(&key) => {
                return Err(format!(
                    "{key} is a column of its own, not a key=value field"
                ));
            }
            Err(SetError::Unknown) => return Err(check::unknown_key(key, &csv_keys())),
        }
    }
    Ok(())
}

/// Parses a JSON array of `{ "url", "interval", "regex"?, "timeout"?, check options? }`.
pub fn parse_json(source: &str, text: &str) -> Result<Vec<Target>, TargetsError> {
    parse_json_in(source, text, &check::process_env)
}

/// [`parse_json`], with `${env:NAME}` looked up in `env`.
pub(crate) fn parse_json_in(
    source: &str,
    text: &str,
    env: Env<'_>,
) -> Result<Vec<Target>, TargetsError> {
    let elements: Vec<&RawValue> = serde_json::from_str(text).map_err(|err| {
        TargetsError::Rows(vec![row_error(
            source,
            err.line() as u64,
            format!("not a JSON array of sites: {err}"),
        )])
    })?;
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for element in elements {
        let line = line_of(text, element.get());
        match json_row(element.get()) {
            Ok(row) => rows.push(RawRow { line, ..row }),
            Err(reason) => errors.push(row_error(source, line, reason)),
        }
    }
    validate_in(source, rows, errors, env)
}

/// One element of a JSON list: the site's keys and its check options.
fn json_row(text: &str) -> Result<RawRow, String> {
    let object: serde_json::Map<String, Value> =
        serde_json::from_str(text).map_err(|err| format!("not a site object: {err}"))?;
    let mut row = RawRow::default();
    let string = |key: &str, value: Value| match value {
        Value::String(s) => Ok(Some(s)),
        Value::Null => Ok(None),
        _ => Err(format!("{key} must be a string")),
    };
    for (key, value) in object {
        match key.as_str() {
            "url" => row.url = string("url", value)?.unwrap_or_default(),
            "regex" => row.regex = string("regex", value)?,
            "interval" => row.interval = (!value.is_null()).then(|| json_number_text(value)),
            "timeout" => row.timeout = (!value.is_null()).then(|| json_number_text(value)),
            _ => match row.checks.set_json(&key, value) {
                Ok(()) => {}
                Err(SetError::Bad(reason)) => return Err(reason),
                Err(SetError::Unknown) => {
                    let mut known = SITE_KEYS.to_vec();
                    known.extend(check::KEYS);
                    return Err(check::unknown_key(&key, &known));
                }
            },
        }
    }
    Ok(row)
}

/// Numbers keep their text; anything else is shown as JSON so the error quotes it.
fn json_number_text(value: serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    }
}

/// 1-based line on which `part` (a slice of `whole`) starts.
fn line_of(whole: &str, part: &str) -> u64 {
    let offset = (part.as_ptr() as usize).saturating_sub(whole.as_ptr() as usize);
    let before = whole.get(..offset).unwrap_or(whole);
    before.bytes().filter(|&b| b == b'\n').count() as u64 + 1
}

/// A bad row of `source` at `line`.
pub(crate) fn row_error(source: &str, line: u64, reason: String) -> RowError {
    RowError {
        source: source.to_owned(),
        line,
        reason,
    }
}

/// Checks every row; all good gives the targets, any bad gives every bad row.
pub(crate) fn validate(
    source: &str,
    rows: Vec<RawRow>,
    errors: Vec<RowError>,
) -> Result<Vec<Target>, TargetsError> {
    validate_in(source, rows, errors, &check::process_env)
}

/// [`validate`], with `${env:NAME}` looked up in `env`.
pub(crate) fn validate_in(
    source: &str,
    rows: Vec<RawRow>,
    mut errors: Vec<RowError>,
    env: Env<'_>,
) -> Result<Vec<Target>, TargetsError> {
    let mut first_line: HashMap<String, u64> = HashMap::new();
    let mut regexes = RegexCache::default();
    let mut targets = Vec::with_capacity(rows.len());
    for row in rows {
        let line = row.line;
        match validate_row(row, &mut regexes, env) {
            Ok(target) => match first_line.get(target.id.as_str()) {
                Some(first) => errors.push(row_error(
                    source,
                    line,
                    format!("duplicate URL {}, first listed on line {first}", target.id),
                )),
                None => {
                    let _ = first_line.insert(target.id.clone(), line);
                    targets.push(target);
                }
            },
            Err(reason) => errors.push(row_error(source, line, reason)),
        }
    }
    if targets.is_empty() && errors.is_empty() {
        errors.push(row_error(source, 1, "no sites listed".into()));
    }
    if errors.is_empty() {
        Ok(targets)
    } else {
        errors.sort_by_key(|e| e.line);
        Err(TargetsError::Rows(errors))
    }
}

/// Compiled regexes by pattern, so that sites with the same pattern share one.
#[derive(Default)]
pub(crate) struct RegexCache(HashMap<String, SiteRegex>);

impl RegexCache {
    /// The compiled `pattern`, shared with every other site that has it.
    pub(crate) fn get(&mut self, pattern: &str) -> Result<SiteRegex, regex::Error> {
        if let Some(regex) = self.0.get(pattern) {
            return Ok(regex.clone());
        }
        let regex = SiteRegex::new(pattern)?;
        let _ = self.0.insert(pattern.to_owned(), regex.clone());
        Ok(regex)
    }
}

fn validate_row(row: RawRow, regexes: &mut RegexCache, env: Env<'_>) -> Result<Target, String> {
    let url = parse_url(&row.url)?;
    // The consumer refuses longer ones (the URL is a unique key in PostgreSQL).
    if url.as_str().len() > MAX_URL_BYTES {
        return Err(format!("URL longer than {MAX_URL_BYTES} bytes"));
    }
    let interval = match row.interval.as_deref().map(str::trim) {
        None | Some("") => return Err("interval missing".into()),
        Some(text) => parse_seconds(text).map_err(|why| format!("interval {why}"))?,
    };
    let regex = match row.regex.as_deref() {
        None | Some("") => None,
        Some(pattern) if pattern.len() > MAX_REGEX_BYTES => {
            return Err(format!("regex longer than {MAX_REGEX_BYTES} bytes"))
        }
        Some(pattern) => Some(
            regexes
                .get(pattern)
                .map_err(|err| format!("invalid regex {pattern:?}: {err}"))?,
        ),
    };
    let timeout = match row.timeout.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => {
            let timeout = parse_seconds(text).map_err(|why| format!("timeout {why}"))?;
            if timeout > interval {
                return Err(format!(
                    "timeout {}s is longer than the interval {}s",
                    timeout.as_secs_f64(),
                    interval.as_secs_f64()
                ));
            }
            Some(timeout)
        }
    };
    let checks = row.checks.build(&url, regex.is_some(), regexes, env)?;
    let id = if has_credentials(&url) {
        // Credentials in the URL authenticate the probe (basic auth) but are
        // never published, stored or logged: the site's name goes without them.
        let mut public = url.clone();
        let _ = public.set_username("");
        let _ = public.set_password(None);
        public.to_string()
    } else if row.keep_id {
        row.url.trim().to_owned()
    } else {
        url.to_string()
    };
    Ok(Target {
        id,
        url,
        interval,
        regex,
        timeout,
        checks,
    })
}

/// A URL without a scheme means https.
pub fn parse_url(text: &str) -> Result<Url, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("URL missing".into());
    }
    let with_scheme = if text.contains("://") {
        text.to_owned()
    } else {
        format!("https://{text}")
    };
    let shown = without_userinfo(text);
    let url =
        Url::parse(&with_scheme).map_err(|err| format!("unparseable URL {shown:?}: {err}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "unparseable URL {shown:?}: only http and https can be probed"
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("unparseable URL {shown:?}: no host"));
    }
    Ok(url)
}

/// `text` with anything before an `@` in its authority replaced by `***`, so
/// that an error quoting a URL never shows its password.
fn without_userinfo(text: &str) -> String {
    let start = text.find("://").map_or(0, |i| i + 3);
    let end = text[start..]
        .find(['/', '?', '#'])
        .map_or(text.len(), |i| start + i);
    match text[start..end].rfind('@') {
        Some(at) => format!("{}***{}", &text[..start], &text[start + at..]),
        None => text.to_owned(),
    }
}

/// Whether `url` carries a user name or password.
fn has_credentials(url: &Url) -> bool {
    !url.username().is_empty() || url.password().is_some()
}

/// Shortest interval or timeout accepted: below this a schedule is a busy loop.
const MIN_SECONDS: f64 = 0.01;

/// Positive seconds, fractions allowed (`30`, `0.5`), at least [`MIN_SECONDS`].
pub(crate) fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !seconds.is_finite() {
        return Err(format!("{text:?} is not a number of seconds"));
    }
    if seconds <= 0.0 {
        return Err(format!("must be greater than zero, got {text}"));
    }
    if seconds < MIN_SECONDS {
        return Err(format!(
            "must be at least {MIN_SECONDS} seconds, got {text}"
        ));
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_never_part_of_the_sites_name_or_an_error() {
        let list =
            "https://user:s3cret@example.com/health,30\nhttps://user:s3cret@exa mple.com/,30\n";
        let err = parse_csv("sites.csv", list).expect_err("a bad row");
        assert!(!err.to_string().contains("s3cret"), "{err}");
        let ok =
            parse_csv("sites.csv", "https://user:s3cret@example.com/health,30\n").expect("valid");
        assert_eq!(ok[0].id, "https://example.com/health");
        assert_eq!(
            ok[0].url.password(),
            Some("s3cret"),
            "the probe still authenticates"
        );
    }

    fn rows(err: TargetsError) -> Vec<(u64, String)> {
        match err {
            TargetsError::Rows(rows) => rows.into_iter().map(|r| (r.line, r.reason)).collect(),
            other => panic!("expected row errors, got {other}"),
        }
    }

    #[test]
    fn sites_with_one_pattern_share_one_compiled_regex() {
        let t = parse_csv(
            "sites.csv",
            "a.example,5,ok|up\nb.example,5,ok|up\nc.example,5,down\n",
        )
        .expect("valid");
        let regex = |i: usize| &t[i].regex.as_ref().expect("regex").0;
        assert!(Arc::ptr_eq(regex(0), regex(1)));
        assert!(!Arc::ptr_eq(regex(0), regex(2)));
        assert_eq!(regex(2).as_str(), "down");
    }

    #[test]
    fn csv_old_layout_with_quotes_and_commas_in_regex() {
        let text = "www.facebook.com,10\nwww.twitter.com,14,foo\n\"www.google.com\",8,\"feeling, lucky\"\nhttp://plain.example/x,0.5\n";
        let t = parse_csv("sites.csv", text).expect("valid");
        assert_eq!(t.len(), 4);
        assert_eq!(t[0].url.as_str(), "https://www.facebook.com/");
        assert_eq!(t[0].interval, Duration::from_secs(10));
        assert!(t[0].regex.is_none());
        assert_eq!(t[1].regex.as_ref().map(SiteRegex::as_str), Some("foo"));
        assert_eq!(
            t[2].regex.as_ref().map(SiteRegex::as_str),
            Some("feeling, lucky")
        );
        assert_eq!(t[3].url.as_str(), "http://plain.example/x");
        assert_eq!(t[3].interval, Duration::from_millis(500));
    }

    #[test]
    fn csv_header_row_is_accepted_but_not_required() {
        let t = parse_csv("s.csv", "url,interval_seconds,regex\nexample.com,5\n").expect("valid");
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn csv_reports_every_bad_row_with_its_line() {
        let text = "ok.example,5\n\
                    http://exa mple.com,5\n\
                    missing.example\n\
                    zero.example,0\n\
                    nan.example,ten\n\
                    re.example,5,\"(unclosed\"\n\
                    ok.example,7\n\
                    too.example,5,a,b\n\
                    ftp://files.example,5\n";
        let errs = rows(parse_csv("sites.csv", text).expect_err("bad rows"));
        let lines: Vec<u64> = errs.iter().map(|e| e.0).collect();
        assert_eq!(lines, vec![2, 3, 4, 5, 6, 7, 8, 9], "{errs:#?}");
        let reason = |line: u64| {
            errs.iter()
                .find(|e| e.0 == line)
                .map(|e| e.1.clone())
                .unwrap_or_default()
        };
        assert!(reason(2).starts_with("unparseable URL"), "{}", reason(2));
        assert_eq!(reason(3), "interval missing");
        assert!(reason(4).contains("greater than zero"), "{}", reason(4));
        let tiny = parse_csv("s.csv", "tiny.example,0.0000000001\n").expect_err("too small");
        assert!(tiny.to_string().contains("at least 0.01 seconds"), "{tiny}");
        assert!(reason(5).contains("not a number"), "{}", reason(5));
        assert!(reason(6).starts_with("invalid regex"), "{}", reason(6));
        assert!(
            reason(7).contains("duplicate URL https://ok.example/, first listed on line 1"),
            "{}",
            reason(7)
        );
        assert!(
            reason(8).contains("field 4 is not key=value"),
            "{}",
            reason(8)
        );
        assert!(reason(9).contains("only http and https"), "{}", reason(9));
    }

    #[test]
    fn error_text_names_file_and_line() {
        let err = parse_csv("lists/sites.csv", "a.example,x\n").expect_err("bad");
        let text = err.to_string();
        assert!(text.contains("lists/sites.csv:1: interval"), "{text}");
    }

    #[test]
    fn json_sites_with_optional_fields() {
        let text = r#"[
  {"url": "www.example.com", "interval": 30},
  {"url": "https://a.example/health", "interval": 5, "regex": "ok|up", "timeout": 2.5}
]"#;
        let t = parse_json("s.json", text).expect("valid");
        assert_eq!(t[0].url.as_str(), "https://www.example.com/");
        assert_eq!(t[1].timeout, Some(Duration::from_millis(2500)));
        assert_eq!(
            t[1].effective_timeout(Duration::from_secs(10)),
            Duration::from_millis(2500)
        );
        assert_eq!(
            t[0].effective_timeout(Duration::from_secs(60)),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn json_bad_rows_carry_their_lines() {
        let text = r#"[
  {"url": "good.example", "interval": 30},
  {"url": "no-interval.example"},
  {"url": "zero.example", "interval": 0},
  {"url": "str.example", "interval": "soon"},
  {"url": "re.example", "interval": 5, "regex": "["},
  {"url": "good.example", "interval": 9},
  {"url": "slow.example", "interval": 5, "timeout": 6},
  {"url": "typo.example", "intervall": 5}
]"#;
        let errs = rows(parse_json("s.json", text).expect_err("bad rows"));
        let lines: Vec<u64> = errs.iter().map(|e| e.0).collect();
        assert_eq!(lines, vec![3, 4, 5, 6, 7, 8, 9], "{errs:#?}");
        assert!(errs[0].1.contains("interval missing"));
        assert!(errs[2].1.contains("not a number"));
        assert!(errs[4].1.contains("duplicate URL"));
        assert!(errs[5].1.contains("longer than the interval"));
        assert!(
            errs[6].1.contains("unknown field `intervall`"),
            "{}",
            errs[6].1
        );
    }

    #[test]
    fn json_syntax_error_has_a_line() {
        let errs = rows(parse_json("s.json", "[\n{\"url\": }\n]").expect_err("syntax"));
        assert_eq!(errs[0].0, 2);
    }

    #[test]
    fn empty_list_is_refused() {
        assert!(parse_csv("s.csv", "# nothing yet\n").is_err());
        assert!(parse_json("s.json", "[]").is_err());
    }

    #[test]
    fn format_is_detected() {
        assert_eq!(Format::detect(Path::new("a.json"), "x"), Format::Json);
        assert_eq!(Format::detect(Path::new("a.txt"), " [ {}]"), Format::Json);
        assert_eq!(Format::detect(Path::new("a.txt"), "a,1"), Format::Csv);
    }

    fn test_env(name: &str) -> Option<std::ffi::OsString> {
        (name == "API_TOKEN").then(|| "tok-secret-42".into())
    }

    #[test]
    fn csv_options_follow_the_three_columns() {
        let text = "# url,interval,regex,options...\n\
                    plain.example,30\n\
                    api.example/health,10,,method=post,\"header=Authorization: Bearer ${env:API_TOKEN}\",\"expect_status=200-299,301\",json=$.status == \"ok\",json=$.queue.depth < 100,timeout=2\n\
                    www.example,60,Welcome,min_cert_days=14,max_response_time=1.5,failure_threshold=5,success_threshold=1,\"reject_regex=(?i)maintenance, back soon\"\n\
                    \"post.example\",5,,\"body={\"\"ping\"\": 1}\",basic_auth=monitor:${env:API_TOKEN},method=PUT\n";
        let t = parse_csv_in("sites.csv", text, &test_env).expect("valid");
        assert_eq!(t.len(), 4);
        assert_eq!(t[0].checks, Checks::default());
        assert_eq!(t[1].checks.method(), reqwest::Method::POST);
        assert_eq!(t[1].timeout, Some(Duration::from_secs(2)));
        assert!(t[1].regex.is_none());
        let shown = format!("{:?}", t[1]);
        assert!(!shown.contains("tok-secret"), "{shown}");
        assert!(
            shown.contains("authorization: ***") && shown.contains("200-299,301"),
            "{shown}"
        );
        assert!(
            shown.contains(r#"$.status == \"ok\""#) && shown.contains("$.queue.depth < 100"),
            "{shown}"
        );
        assert_eq!(t[2].regex.as_ref().map(SiteRegex::as_str), Some("Welcome"));
        let shown = format!("{:?}", t[2]);
        for part in [
            "min_cert_days: Some(14)",
            "max_response_time: Some(1.5s)",
            "failure_threshold: 5",
            "success_threshold: 1",
            "(?i)maintenance, back soon",
        ] {
            assert!(shown.contains(part), "{part}: {shown}");
        }
        let shown = format!("{:?}", t[3]);
        assert!(
            shown.contains("basic_auth: Some(\"***:***\")")
                && shown.contains("body: Some(\"11 bytes\")"),
            "{shown}"
        );
        assert!(!shown.contains("tok-secret"), "{shown}");
    }

    #[test]
    fn csv_bad_options_are_row_errors_with_their_lines() {
        let text = "ok.example,5\n\
                    a.example,5,,method=FETCH\n\
                    b.example,5,,methd=GET\n\
                    c.example,5,,GET\n\
                    d.example,5,method=HEAD\n\
                    e.example,5,,\"header=X-Token: ${env:NOT_SET_ANYWHERE}\"\n\
                    f.example,5,,expect_status=2xx\n\
                    g.example,5,,json=$.a[ == 1\n\
                    h.example,5,,failure_threshold=0\n\
                    http://i.example,5,,min_cert_days=10\n\
                    j.example,5,,regex=x\n\
                    k.example,5,,timeout=1,timeout=2\n\
                    l.example,5,,headers=X: y\n";
        let errs = rows(parse_csv_in("sites.csv", text, &test_env).expect_err("bad rows"));
        let expected = [
            (2, "unknown method \"FETCH\""),
            (
                3,
                "unknown field `methd`, expected one of `timeout`, `method`, `header`",
            ),
            (4, "field 4 is not key=value"),
            (
                5,
                "the third field is the regex, and method=... looks like an option",
            ),
            (
                6,
                "header x-token: environment variable NOT_SET_ANYWHERE is not set",
            ),
            (7, "expect_status \"2xx\""),
            (8, "json condition \"$.a[ == 1\": bad JSON path"),
            (9, "failure_threshold must be 1 to 1000, got 0"),
            (10, "min_cert_days needs an https:// URL"),
            (11, "regex is a column of its own"),
            (12, "timeout given twice"),
            (13, "in CSV each header is a field of its own"),
        ];
        assert_eq!(errs.len(), expected.len(), "{errs:#?}");
        for ((line, reason), (want_line, want)) in errs.iter().zip(expected) {
            assert_eq!(*line, want_line, "{reason}");
            assert!(reason.contains(want), "line {line}: {reason}");
        }
        let whole = parse_csv_in("lists/sites.csv", "x.example,5,,method=FETCH\n", &test_env)
            .expect_err("bad")
            .to_string();
        assert!(
            whole.contains("lists/sites.csv:1: unknown method"),
            "{whole}"
        );
    }

    #[test]
    fn json_options_beside_the_site_keys() {
        let text = r#"[
  {"url": "plain.example", "interval": 30},
  {"url": "https://api.example/health", "interval": 10, "timeout": 2,
   "method": "POST", "headers": {"Authorization": "Bearer ${env:API_TOKEN}", "Accept": "application/json"},
   "body": "{\"ping\": 1}", "expect_status": "200-299,301", "reject_regex": "maintenance",
   "json": ["$.status == \"ok\"", "$.queue.depth < 100"], "max_response_time": 1.5,
   "min_cert_days": 14, "failure_threshold": 5, "success_threshold": 1},
  {"url": "https://b.example", "interval": 10, "basic_auth": {"user": "monitor", "password": "${env:API_TOKEN}"}, "json": "$.ok == true"}
]"#;
        let t = parse_json_in("s.json", text, &test_env).expect("valid");
        assert_eq!(t[0].checks, Checks::default());
        assert_eq!(t[1].checks.method(), reqwest::Method::POST);
        let shown = format!("{t:?}");
        assert!(!shown.contains("tok-secret"), "{shown}");
        assert!(
            shown.contains("***:***") && shown.contains("$.ok == true"),
            "{shown}"
        );
        let again = parse_json_in("s.json", text, &test_env).expect("valid");
        assert_eq!(t, again, "the same list is the same targets");
        let rotated = parse_json_in("s.json", text, &|name| {
            (name == "API_TOKEN").then(|| "rotated".into())
        })
        .expect("valid");
        assert_ne!(t[1], rotated[1], "a reload notices a changed token");
    }

    #[test]
    fn json_bad_options_are_row_errors_with_their_lines() {
        let text = r#"[
  {"url": "a.example", "interval": 5, "method": "fetch"},
  {"url": "b.example", "interval": 5, "json": "$.a = 1"},
  {"url": "c.example", "interval": 5, "headers": {"X-Key": "${env:NOT_SET_ANYWHERE}"}},
  {"url": "d.example", "interval": 5, "success_threshold": 0},
  {"url": "e.example", "interval": 5, "expect_status": "200-1000"},
  {"url": "f.example", "interval": 5, "header": {"X": "y"}},
  {"url": "g.example", "interval": 5, "headers": ["X: y"]},
  {"url": 7, "interval": 5}
]"#;
        let errs = rows(parse_json_in("s.json", text, &test_env).expect_err("bad rows"));
        let expected = [
            (2, "unknown method \"fetch\""),
            (3, "json condition \"$.a = 1\": expected PATH OP VALUE"),
            (4, "header x-key: environment variable NOT_SET_ANYWHERE is not set"),
            (5, "success_threshold must be 1 to 1000, got 0"),
            (6, "\"1000\" is not an HTTP status"),
            (7, "unknown field `header`, expected one of `url`, `interval`, `regex`, `timeout`, `method`, `headers`"),
            (8, "headers must be an object"),
            (9, "url must be a string"),
        ];
        assert_eq!(errs.len(), expected.len(), "{errs:#?}");
        for ((line, reason), (want_line, want)) in errs.iter().zip(expected) {
            assert_eq!(*line, want_line, "{reason}");
            assert!(reason.contains(want), "line {line}: {reason}");
        }
    }

    #[test]
    fn the_sample_lists_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../monitor-data");
        for name in ["websites_top100.csv", "websites_top100.json"] {
            let sites = load_file(&dir.join(name)).expect(name);
            assert_eq!(sites.len(), 100, "{name}");
            assert!(
                sites.iter().any(|s| s.checks != Checks::default()),
                "{name} shows some check options"
            );
        }
    }

    #[test]
    fn the_readmes_examples_are_valid_lists() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("## Site lists").expect("the section");
        let section = &readme[start..];
        let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
        let env = |name: &str| {
            ["TOKEN", "INTRANET_PASSWORD"]
                .contains(&name)
                .then(|| "from-env".into())
        };
        let mut parsed = 0;
        for (fence, parse) in [
            ("```csv\n", parse_csv_in as fn(&str, &str, Env<'_>) -> _),
            ("```json\n", parse_json_in),
        ] {
            for block in section.split(fence).skip(1) {
                let text = &block[..block.find("```").expect("closed block")];
                let sites = parse("README.md", text, &env).expect(text);
                assert!(
                    sites.iter().any(|s| s.checks != Checks::default()),
                    "{text}"
                );
                parsed += 1;
            }
        }
        assert_eq!(parsed, 2, "one CSV and one JSON example");
    }

    #[test]
    fn regex_matches_raw_bytes() {
        let re = SiteRegex::new("marker-[0-9]+").expect("regex");
        assert_eq!(re.find(b"\xff\xfe marker-42 \x80"), Some(&b"marker-42"[..]));
    }
}
