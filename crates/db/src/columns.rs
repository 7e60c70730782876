//! The one mapping between a metric and a row of `metrics`: every column
//! the consumer writes, its PostgreSQL type, how it is read from the metric
//! and how it is put back. Every COPY, INSERT and SELECT column list is
//! derived from it, so a new field of the metric is one line here (and a
//! migration); a test checks this list against the table and the JSON.

use std::fmt::Write as _;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use sitewatch_metric::{ErrorKind, Failed, Metric, ProbeError, Verdict};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use uuid::Uuid;

/// A metric as the consumer stores it: the message, the id of its site in
/// `websites`, and where in Kafka it was read.
#[derive(Debug, Clone, Copy)]
pub struct RowRef<'a> {
    /// The message.
    pub metric: &'a Metric,
    /// `websites.id` of the metric's URL.
    pub website_id: i64,
    /// Kafka topic it was read from.
    pub topic: &'a str,
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
}

/// A metric read back from `metrics`, with its site's URL and Kafka position.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredMetric {
    /// The message, as it was received.
    pub metric: Metric,
    /// Kafka topic it was read from.
    pub topic: String,
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
}

/// Values were range-checked when the message was decoded; saturating keeps this total.
fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn i32_of(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or_default()
}

fn u32_of(v: i32) -> u32 {
    u32::try_from(v).unwrap_or_default()
}

fn i16_of(v: u16) -> i16 {
    i16::try_from(v).unwrap_or(i16::MAX)
}

fn u16_of(v: i16) -> u16 {
    u16::try_from(v).unwrap_or_default()
}

fn failed_json(failed: &[Failed]) -> Option<serde_json::Value> {
    if failed.is_empty() {
        None
    } else {
        serde_json::to_value(failed).ok()
    }
}

/// A row stored before metrics carried a verdict gets the rule it was made under.
fn finish(
    stored: &mut StoredMetric,
    row: &tokio_postgres::Row,
) -> Result<(), tokio_postgres::Error> {
    let up: Option<bool> = row.try_get("up")?;
    if up.is_none() {
        stored.metric.verdict = Verdict::default_rule(&stored.metric);
    }
    Ok(())
}

fn error_kind(name: &str) -> ErrorKind {
    ErrorKind::ALL
        .into_iter()
        .find(|kind| kind.as_str() == name)
        .unwrap_or(ErrorKind::Other)
}

/// Declares, from one list of
/// `column: Rust type as PostgreSQL type = |row| value => |stored, value| update`,
/// the column names, their COPY types, the per-column vectors `unnest`
/// takes, the writing of one COPY row and the reading of one stored row.
macro_rules! metric_columns {
    ($($column:ident: $ty:ty as $pg:ident = |$r:ident| $value:expr => $read:expr;)*) => {
        /// The columns of `metrics` the consumer writes, in the order of every statement.
        pub const COLUMNS: &[&str] = &[$(stringify!($column)),*];

        /// Their types, as binary COPY needs them.
        pub const TYPES: &[Type] = &[$(Type::$pg),*];

        /// One vector per column, the parameters of [`insert_unnest`].
        #[derive(Debug)]
        pub struct Columns<'a> {
            $($column: Vec<$ty>,)*
        }

        impl<'a> Columns<'a> {
            /// The rows, column by column.
            pub fn of(rows: &[RowRef<'a>]) -> Columns<'a> {
                let mut columns = Columns {
                    $($column: Vec::with_capacity(rows.len()),)*
                };
                for row in rows {
                    $(columns.$column.push({ let $r = row; $value });)*
                }
                columns
            }

            /// The statement's parameters, in column order.
            pub fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
                vec![$(&self.$column),*]
            }
        }

        /// Writes one row of a binary COPY.
        async fn copy_row(
            writer: std::pin::Pin<&mut BinaryCopyInWriter>,
            row: &RowRef<'_>,
        ) -> Result<(), tokio_postgres::Error> {
            $(let $column = { let $r = row; $value };)*
            writer.write(&[$(&$column as &(dyn ToSql + Sync)),*]).await
        }

        /// Rebuilds a metric from a row of [`select`].
        pub fn read<'a>(row: &'a tokio_postgres::Row) -> Result<StoredMetric, tokio_postgres::Error> {
            let mut stored = StoredMetric {
                metric: Metric {
                    url: row.try_get("url")?,
                    ..Metric::default()
                },
                ..StoredMetric::default()
            };
            $({
                let value: $ty = row.try_get(stringify!($column))?;
                let update: fn(&mut StoredMetric, $ty) = $read;
                update(&mut stored, value);
            })*
            finish(&mut stored, row)?;
            Ok(stored)
        }
    };
}

// The one mapping from a stored metric to the columns of `metrics` and back.
metric_columns! {
    probe_id: Uuid as UUID = |r| r.metric.probe_id => |s, v| s.metric.probe_id = v;
    // Reads take the site's URL from `websites` instead.
    website_id: i64 as INT8 = |r| r.website_id => |_, _| {};
    schema_version: i16 as INT2 = |r| i16::try_from(r.metric.schema_version).unwrap_or(i16::MAX)
        => |s, v| s.metric.schema_version = u32::try_from(v).unwrap_or_default();
    scheduled_at: DateTime<Utc> as TIMESTAMPTZ = |r| r.metric.scheduled_at
        => |s, v| s.metric.scheduled_at = v;
    started_at: DateTime<Utc> as TIMESTAMPTZ = |r| r.metric.started_at
        => |s, v| s.metric.started_at = v;
    lateness_us: i64 as INT8 = |r| i64_of(r.metric.lateness_us)
        => |s, v| s.metric.lateness_us = u64_of(v);
    skipped_before: i32 as INT4 = |r| i32_of(r.metric.skipped_before)
        => |s, v| s.metric.skipped_before = u32_of(v);
    dns_us: Option<i64> as INT8 = |r| r.metric.timings.dns_us.map(i64_of)
        => |s, v| s.metric.timings.dns_us = v.map(u64_of);
    connect_us: Option<i64> as INT8 = |r| r.metric.timings.connect_us.map(i64_of)
        => |s, v| s.metric.timings.connect_us = v.map(u64_of);
    ttfb_us: Option<i64> as INT8 = |r| r.metric.timings.ttfb_us.map(i64_of)
        => |s, v| s.metric.timings.ttfb_us = v.map(u64_of);
    body_us: Option<i64> as INT8 = |r| r.metric.timings.body_us.map(i64_of)
        => |s, v| s.metric.timings.body_us = v.map(u64_of);
    total_us: i64 as INT8 = |r| i64_of(r.metric.timings.total_us)
        => |s, v| s.metric.timings.total_us = u64_of(v);
    status: Option<i16> as INT2 = |r| r.metric.status.map(|s| i16::try_from(s).unwrap_or(i16::MAX))
        => |s, v| s.metric.status = v.map(|v| u16::try_from(v).unwrap_or_default());
    body_bytes: i64 as INT8 = |r| i64_of(r.metric.body_bytes)
        => |s, v| s.metric.body_bytes = u64_of(v);
    body_truncated: bool as BOOL = |r| r.metric.body_truncated
        => |s, v| s.metric.body_truncated = v;
    regex: Option<&'a str> as TEXT = |r| r.metric.regex.as_deref()
        => |s, v| s.metric.regex = v.map(str::to_owned);
    regex_matched: Option<bool> as BOOL = |r| r.metric.regex_matched
        => |s, v| s.metric.regex_matched = v;
    regex_match: Option<&'a str> as TEXT = |r| r.metric.regex_match.as_deref()
        => |s, v| s.metric.regex_match = v.map(str::to_owned);
    final_url: Option<&'a str> as TEXT = |r| r.metric.final_url.as_deref()
        => |s, v| s.metric.final_url = v.map(str::to_owned);
    redirects: i32 as INT4 = |r| i32_of(r.metric.redirects)
        => |s, v| s.metric.redirects = u32_of(v);
    tls_expires_at: Option<DateTime<Utc>> as TIMESTAMPTZ = |r| r.metric.tls_expires_at
        => |s, v| s.metric.tls_expires_at = v;
    // The error is two columns; its kind comes first and makes the error.
    error_kind: Option<&'a str> as TEXT = |r| r.metric.error.as_ref().map(|e| e.kind.as_str())
        => |s, v| s.metric.error = v.map(|kind| ProbeError { kind: error_kind(kind), message: String::new() });
    error_message: Option<&'a str> as TEXT = |r| r.metric.error.as_ref().map(|e| e.message.as_str())
        => |s, v| {
            if let (Some(error), Some(message)) = (&mut s.metric.error, v) {
                message.clone_into(&mut error.message);
            }
        };
    // The verdict is four columns; `up` is NULL in rows stored before
    // verdicts existed, which [`finish`] gives the rule they were made under.
    up: Option<bool> as BOOL = |r| Some(r.metric.verdict.up)
        => |s, v| s.metric.verdict.up = v.unwrap_or_default();
    // NULL when nothing failed, the usual case: no JSON to write or store.
    failed: Option<serde_json::Value> as JSONB = |r| failed_json(&r.metric.verdict.failed)
        => |s, v| s.metric.verdict.failed = v.and_then(|v| serde_json::from_value(v).ok()).unwrap_or_default();
    failure_threshold: Option<i16> as INT2 = |r| Some(i16_of(r.metric.verdict.failure_threshold))
        => |s, v| s.metric.verdict.failure_threshold = v.map_or(0, u16_of);
    success_threshold: Option<i16> as INT2 = |r| Some(i16_of(r.metric.verdict.success_threshold))
        => |s, v| s.metric.verdict.success_threshold = v.map_or(0, u16_of);
    kafka_topic: &'a str as TEXT = |r| r.topic => |s, v| v.clone_into(&mut s.topic);
    kafka_partition: i32 as INT4 = |r| r.partition => |s, v| s.partition = v;
    kafka_offset: i64 as INT8 = |r| r.offset => |s, v| s.offset = v;
}

/// The columns that say where a message was read, not what it says: the same
/// probe read from another position is the same probe.
pub const ORIGIN: &[&str] = &["kafka_topic", "kafka_partition", "kafka_offset"];

/// The columns of the verdict, NULL in rows stored before metrics had one.
const VERDICT: &[&str] = &["up", "failed", "failure_threshold", "success_threshold"];

/// `(p.c1, p.c2, ...)` over the columns that hold what a probe says. A row
/// stored without a verdict (`m.up` NULL) takes the verdict of the row it is
/// compared with: a version 1 message redelivered after an upgrade is the
/// same probe, whatever verdict the new reader derives for it.
fn content_of(prefix: &str) -> String {
    let columns: Vec<String> = COLUMNS
        .iter()
        .filter(|c| !ORIGIN.contains(c))
        .map(|c| {
            if prefix == "m" && VERDICT.contains(c) {
                format!("CASE WHEN m.up IS NULL THEN s.{c} ELSE m.{c} END")
            } else {
                format!("{prefix}.{c}")
            }
        })
        .collect();
    format!("({})", columns.join(", "))
}

/// Where in Kafka (partition, offset) the rows of `source` (a table or `FROM`
/// item aliased `s`, shaped like `metrics`) were read whose key (probe id
/// and start) is stored in `metrics` with other content: conflicts, not
/// redeliveries.
pub fn conflicts_in(source: &str) -> String {
    format!(
        "SELECT s.kafka_partition, s.kafka_offset FROM {source} JOIN metrics m USING (probe_id, started_at) WHERE {} IS DISTINCT FROM {}",
        content_of("s"),
        content_of("m")
    )
}

/// [`conflicts_in`] the rows given as [`Columns`] parameters.
pub fn conflicts_unnest() -> &'static str {
    static CONFLICTS: LazyLock<String> =
        LazyLock::new(|| conflicts_in(&format!("unnest({}) AS s({})", unnest_arrays(), list())));
    &CONFLICTS
}

/// `$1::uuid[], $2::int8[], ...`: the columns as array parameters.
fn unnest_arrays() -> String {
    let mut arrays = String::new();
    for (i, ty) in TYPES.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(arrays, "{sep}${}::{}[]", i + 1, ty.name());
    }
    arrays
}

/// The column names joined with `, `.
pub fn list() -> &'static str {
    static LIST: LazyLock<String> = LazyLock::new(|| COLUMNS.join(", "));
    &LIST
}

/// `COPY table (columns) FROM STDIN (FORMAT binary)`, for a table shaped like `metrics`.
pub fn copy_into(table: &str) -> String {
    format!("COPY {table} ({}) FROM STDIN (FORMAT binary)", list())
}

/// One INSERT of every row, its columns as arrays, skipping rows already stored.
pub fn insert_unnest() -> &'static str {
    static INSERT: LazyLock<String> = LazyLock::new(|| {
        format!(
            "INSERT INTO metrics ({}) SELECT * FROM unnest({}) ON CONFLICT (probe_id, started_at) DO NOTHING",
            list(),
            unnest_arrays()
        )
    });
    &INSERT
}

/// Reads metrics with their site's URL, in the shape [`read`] takes; a
/// caller appends its own WHERE and ORDER BY.
pub fn select() -> &'static str {
    static SELECT: LazyLock<String> = LazyLock::new(|| {
        let columns: Vec<String> = COLUMNS.iter().map(|c| format!("m.{c}")).collect();
        format!(
            "SELECT w.url, {} FROM metrics m JOIN websites w ON w.id = m.website_id",
            columns.join(", ")
        )
    });
    &SELECT
}

/// Streams `rows` through a binary COPY opened with [`copy_into`]; returns the rows written.
pub async fn copy_rows(
    sink: tokio_postgres::CopyInSink<bytes::Bytes>,
    rows: impl IntoIterator<Item = RowRef<'_>>,
) -> Result<u64, tokio_postgres::Error> {
    let writer = BinaryCopyInWriter::new(sink, TYPES);
    futures::pin_mut!(writer);
    for row in rows {
        copy_row(writer.as_mut(), &row).await?;
    }
    writer.finish().await
}
