//! The list of sites to probe: read from CSV or JSON, validated as a whole.
//!
//! A list with any bad row is refused whole, with every bad row reported, so
//! that a typo never starts (or reloads into) a half-configured monitor.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use sitewatch_metric::{MAX_REGEX_BYTES, MAX_URL_BYTES};
use url::Url;

/// Biggest compiled regex accepted, so one row cannot eat the monitor's memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// One site to probe.
#[derive(Debug, Clone)]
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
    /// `url,interval_seconds[,regex]`, one site a line.
    Csv,
    /// `[{"url": ..., "interval": ..., "regex"?: ..., "timeout"?: ...}]`.
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
    /// Keep the URL as written as the site's id (rows of the `websites` table).
    pub(crate) keep_id: bool,
}

/// Parses the CSV layout `url,interval_seconds[,regex]`; a header row is accepted.
pub fn parse_csv(source: &str, text: &str) -> Result<Vec<Target>, TargetsError> {
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
        if record.len() > 3 {
            errors.push(row_error(
                source,
                line,
                format!(
                    "{} fields, expected url,interval_seconds[,regex] (quote a regex that contains commas)",
                    record.len()
                ),
            ));
            continue;
        }
        rows.push(RawRow {
            line,
            url,
            interval: field(1),
            regex: field(2),
            timeout: None,
            keep_id: false,
        });
    }
    validate(source, rows, errors)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRow {
    url: Option<String>,
    interval: Option<serde_json::Value>,
    regex: Option<String>,
    timeout: Option<serde_json::Value>,
}

/// Parses a JSON array of `{ "url", "interval", "regex"?, "timeout"? }`.
pub fn parse_json(source: &str, text: &str) -> Result<Vec<Target>, TargetsError> {
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
        match serde_json::from_str::<JsonRow>(element.get()) {
            Ok(row) => rows.push(RawRow {
                line,
                url: row.url.unwrap_or_default(),
                interval: row.interval.map(json_number_text),
                regex: row.regex,
                timeout: row.timeout.map(json_number_text),
                keep_id: false,
            }),
            Err(err) => errors.push(row_error(source, line, format!("not a site object: {err}"))),
        }
    }
    validate(source, rows, errors)
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

fn row_error(source: &str, line: u64, reason: String) -> RowError {
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
    mut errors: Vec<RowError>,
) -> Result<Vec<Target>, TargetsError> {
    let mut first_line: HashMap<String, u64> = HashMap::new();
    let mut regexes = RegexCache::default();
    let mut targets = Vec::with_capacity(rows.len());
    for row in rows {
        match validate_row(&row, &mut regexes) {
            Ok(target) => match first_line.get(target.id.as_str()) {
                Some(first) => errors.push(row_error(
                    source,
                    row.line,
                    format!("duplicate URL {}, first listed on line {first}", target.id),
                )),
                None => {
                    let _ = first_line.insert(target.id.clone(), row.line);
                    targets.push(target);
                }
            },
            Err(reason) => errors.push(row_error(source, row.line, reason)),
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
struct RegexCache(HashMap<String, SiteRegex>);

impl RegexCache {
    fn get(&mut self, pattern: &str) -> Result<SiteRegex, regex::Error> {
        if let Some(regex) = self.0.get(pattern) {
            return Ok(regex.clone());
        }
        let regex = SiteRegex::new(pattern)?;
        let _ = self.0.insert(pattern.to_owned(), regex.clone());
        Ok(regex)
    }
}

fn validate_row(row: &RawRow, regexes: &mut RegexCache) -> Result<Target, String> {
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
fn parse_seconds(text: &str) -> Result<Duration, String> {
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
        assert!(reason(8).contains("4 fields"), "{}", reason(8));
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

    #[test]
    fn regex_matches_raw_bytes() {
        let re = SiteRegex::new("marker-[0-9]+").expect("regex");
        assert_eq!(re.find(b"\xff\xfe marker-42 \x80"), Some(&b"marker-42"[..]));
    }
}
