//! PostgreSQL: the schema (embedded migrations), and writing a batch of
//! metrics and dead letters in one transaction, idempotently.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use deadpool_postgres::{Pool, PoolError};
use serde::Deserialize;
use sitewatch_metric::{ErrorKind, Metric, ProbeError, Timings};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use uuid::Uuid;

const INSERT_METRICS_UNNEST: &str = include_str!("../sql/insert_metrics_unnest.sql");
const COPY_METRICS: &str = include_str!("../sql/copy_metrics.sql");
const CREATE_STAGING: &str = include_str!("../sql/create_staging.sql");
const COPY_STAGING: &str = include_str!("../sql/copy_staging.sql");
const INSERT_FROM_STAGING: &str = include_str!("../sql/insert_from_staging.sql");
const UPSERT_WEBSITES: &str = include_str!("../sql/upsert_websites.sql");
const SELECT_WEBSITE_IDS: &str = include_str!("../sql/select_website_ids.sql");
const INSERT_DEAD_LETTERS: &str = include_str!("../sql/insert_dead_letters.sql");
/// Reads metrics back as the consumer stored them, joined with their site's URL.
pub const SELECT_METRICS: &str = include_str!("../sql/select_metrics.sql");

/// Sites whose ids are remembered; past this the cache starts over.
const SITE_CACHE_LIMIT: usize = 1_000_000;

/// How rows get into `metrics`; both are idempotent on `probe_id`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WritePath {
    /// Binary COPY straight into `metrics`; a batch holding a row already
    /// stored (a redelivery) is written again by COPY into a temporary staging
    /// table, then INSERT ... SELECT ... ON CONFLICT DO NOTHING.
    #[default]
    Copy,
    /// One INSERT ... SELECT FROM unnest(arrays) ... ON CONFLICT DO NOTHING.
    Unnest,
}

/// Where a message came from in Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Topic.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// A metric ready to be stored.
#[derive(Debug, Clone)]
pub struct Row {
    /// The message.
    pub metric: Metric,
    /// Its Kafka position.
    pub origin: Origin,
}

/// A message that can never be a metric row.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Its Kafka position.
    pub origin: Origin,
    /// The message key as received.
    pub key: Option<Vec<u8>>,
    /// The payload as received.
    pub payload: Option<Vec<u8>>,
    /// Why it cannot be stored.
    pub reason: String,
}

/// What a write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// New rows in `metrics`.
    pub inserted: u64,
    /// Rows already there (a redelivery), skipped.
    pub duplicates: u64,
    /// Rows in `dead_letters` (new or already there).
    pub dead_letters: u64,
}

/// A failed database operation, told apart by whether retrying can help.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No connection could be had from the pool.
    #[error("no PostgreSQL connection: {0}")]
    Pool(#[from] PoolError),
    /// The database refused or the connection broke.
    #[error("PostgreSQL: {}", sitewatch_db::describe_error(.0))]
    Db(#[from] tokio_postgres::Error),
}

impl StoreError {
    /// Whether the same write may succeed later (database down, connection
    /// lost, overloaded, a lock conflict); otherwise the data itself is at fault.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Pool(_) => true,
            StoreError::Db(err) => match err.code() {
                // A value the client could not even encode is the data's fault.
                None => !err.to_string().starts_with("error serializing"),
                Some(code) => {
                    let code = code.code();
                    // Data exceptions (22), integrity violations (23) and program
                    // limits such as an index row too large (54) mean this row can
                    // never be written; anything else is the server's state.
                    !(code.starts_with("22") || code.starts_with("23") || code.starts_with("54"))
                }
            },
        }
    }

    /// A row of the batch is already in `metrics` (a redelivered message).
    fn is_stored_already(&self) -> bool {
        matches!(self, StoreError::Db(err) if err.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
            && err.as_db_error().and_then(|db| db.constraint()) == Some("metrics_pkey"))
    }

    fn is_missing_site(&self) -> bool {
        matches!(self, StoreError::Db(err) if err.code() == Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION))
    }
}

/// Writes batches through a bounded pool.
#[derive(Debug)]
pub struct Store {
    pool: Pool,
    path: WritePath,
    site_ids: Mutex<HashMap<String, i64>>,
}

impl Store {
    /// A store writing through `pool` by `path`.
    pub fn new(pool: Pool, path: WritePath) -> Store {
        Store {
            pool,
            path,
            site_ids: Mutex::new(HashMap::new()),
        }
    }

    /// The pool (for status reads).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Whether PostgreSQL answers a trivial query through the pool.
    pub async fn ping(&self) -> bool {
        match self.pool.get().await {
            Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
            Err(_) => false,
        }
    }

    /// Writes rows and dead letters in one transaction; rows already stored are skipped.
    pub async fn write(&self, rows: &[Row], dead: &[DeadLetter]) -> Result<Written, StoreError> {
        match self.write_once(rows, dead).await {
            // A site row deleted by an operator while its id was cached: forget
            // the batch's sites so they are looked up (and created) again.
            Err(err) if err.is_missing_site() => {
                if let Ok(mut cache) = self.site_ids.lock() {
                    for row in rows {
                        let _ = cache.remove(&row.metric.url);
                    }
                }
                self.write_once(rows, dead).await
            }
            other => other,
        }
    }

    async fn write_once(&self, rows: &[Row], dead: &[DeadLetter]) -> Result<Written, StoreError> {
        let mut client = self.pool.get().await?;
        let ids = self.site_ids(&client, rows).await?;
        let insert = match self.path {
            WritePath::Copy => Insert::Copy,
            WritePath::Unnest => Insert::Unnest,
        };
        match write_transaction(&mut client, rows, &ids, dead, insert).await {
            // Fresh rows, the usual case, went straight in; a redelivery is rare
            // enough that doing its batch twice costs less than checking every batch.
            Err(err) if insert == Insert::Copy && err.is_stored_already() => {
                tracing::debug!(
                    rows = rows.len(),
                    "the batch holds rows already stored (a redelivery): writing it again, skipping those"
                );
                write_transaction(&mut client, rows, &ids, dead, Insert::Staged).await
            }
            other => other,
        }
    }

    /// Ids of the rows' sites, in the rows' order, creating the sites first
    /// seen; committed on their own, as a site row is harmless even if the batch fails.
    async fn site_ids(
        &self,
        client: &deadpool_postgres::Client,
        rows: &[Row],
    ) -> Result<Vec<i64>, StoreError> {
        let mut missing: Vec<&str> = Vec::new();
        {
            let mut cache = self.cache();
            // Emptied before a lookup, never during one, so this batch's ids stay.
            if cache.len() > SITE_CACHE_LIMIT {
                cache.clear();
            }
            missing.extend(
                rows.iter()
                    .map(|row| row.metric.url.as_str())
                    .filter(|url| !cache.contains_key(*url)),
            );
        }
        if !missing.is_empty() {
            missing.sort_unstable();
            missing.dedup();
            let upsert = client.prepare_cached(UPSERT_WEBSITES).await?;
            let _ = client.execute(&upsert, &[&missing]).await?;
            let select = client.prepare_cached(SELECT_WEBSITE_IDS).await?;
            let found = client.query(&select, &[&missing]).await?;
            let mut cache = self.cache();
            for row in found {
                let _ = cache.insert(row.try_get(0)?, row.try_get(1)?);
            }
        }
        let cache = self.cache();
        // A site deleted meanwhile (-1) fails the foreign key, and `write` looks it up again.
        Ok(rows
            .iter()
            .map(|row| cache.get(&row.metric.url).copied().unwrap_or(-1))
            .collect())
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
        // The map is valid whatever a panicking holder left half done: entries are inserted whole.
        self.site_ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How one transaction puts rows into `metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Insert {
    /// Binary COPY into `metrics`; fails if a row is there already.
    Copy,
    /// Binary COPY into a staging table, then INSERT ... ON CONFLICT DO NOTHING.
    Staged,
    /// INSERT ... SELECT FROM unnest(arrays) ... ON CONFLICT DO NOTHING.
    Unnest,
}

/// Rows and dead letters in one transaction; returns what it did.
async fn write_transaction(
    client: &mut deadpool_postgres::Client,
    rows: &[Row],
    ids: &[i64],
    dead: &[DeadLetter],
    insert: Insert,
) -> Result<Written, StoreError> {
    let tx = client.transaction().await?;
    let inserted = if rows.is_empty() {
        0
    } else {
        match insert {
            Insert::Copy => copy_rows(tx.copy_in(COPY_METRICS).await?, rows, ids).await?,
            Insert::Staged => {
                tx.batch_execute(CREATE_STAGING).await?;
                let _ = copy_rows(tx.copy_in(COPY_STAGING).await?, rows, ids).await?;
                let statement = tx.prepare_cached(INSERT_FROM_STAGING).await?;
                tx.execute(&statement, &[]).await?
            }
            Insert::Unnest => {
                let columns = Columns::of(rows, ids);
                let statement = tx.prepare_cached(INSERT_METRICS_UNNEST).await?;
                tx.execute(&statement, &columns.params()).await?
            }
        }
    };
    if !dead.is_empty() {
        insert_dead_letters(&tx, dead).await?;
    }
    tx.commit().await?;
    Ok(Written {
        inserted,
        duplicates: rows.len() as u64 - inserted,
        dead_letters: dead.len() as u64,
    })
}

/// Values were range-checked when the message was decoded; saturating keeps this total.
fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn i32_of(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// Declares, from one list of `column: Rust type as PostgreSQL type = value`,
/// everything both write paths need: the column names, the COPY types, the
/// per-column vectors unnest takes, and the writing of one COPY row.
macro_rules! metric_columns {
    (|$row:ident, $m:ident, $website_id:ident| { $($column:ident: $ty:ty as $pg:ident = $value:expr,)* }) => {
        /// The columns of `metrics` the consumer writes, in the order of the statements in `sql/`.
        #[cfg(test)]
        const COLUMNS: &[&str] = &[$(stringify!($column)),*];

        /// Their types, for binary COPY.
        const COPY_TYPES: &[Type] = &[$(Type::$pg),*];

        /// One vector per column, for unnest.
        struct Columns<'a> {
            $($column: Vec<$ty>,)*
        }

        impl<'a> Columns<'a> {
            fn of(rows: &'a [Row], ids: &[i64]) -> Columns<'a> {
                let mut columns = Columns {
                    $($column: Vec::with_capacity(rows.len()),)*
                };
                for ($row, &$website_id) in rows.iter().zip(ids) {
                    let $m = &$row.metric;
                    $(columns.$column.push($value);)*
                }
                columns
            }

            fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
                vec![$(&self.$column),*]
            }
        }

        /// Writes one row of a binary COPY.
        async fn copy_row(
            writer: std::pin::Pin<&mut BinaryCopyInWriter>,
            $row: &Row,
            $website_id: i64,
        ) -> Result<(), tokio_postgres::Error> {
            let $m = &$row.metric;
            $(let $column = $value;)*
            writer.write(&[$(&$column as &(dyn ToSql + Sync)),*]).await
        }
    };
}

// The one mapping from a metric (and its Kafka origin) to the columns of `metrics`.
metric_columns!(|row, m, site_id| {
    probe_id: Uuid as UUID = m.probe_id,
    website_id: i64 as INT8 = site_id,
    schema_version: i16 as INT2 = i16::try_from(m.schema_version).unwrap_or(i16::MAX),
    scheduled_at: DateTime<Utc> as TIMESTAMPTZ = m.scheduled_at,
    started_at: DateTime<Utc> as TIMESTAMPTZ = m.started_at,
    lateness_us: i64 as INT8 = i64_of(m.lateness_us),
    skipped_before: i32 as INT4 = i32_of(m.skipped_before),
    dns_us: Option<i64> as INT8 = m.timings.dns_us.map(i64_of),
    connect_us: Option<i64> as INT8 = m.timings.connect_us.map(i64_of),
    ttfb_us: Option<i64> as INT8 = m.timings.ttfb_us.map(i64_of),
    body_us: Option<i64> as INT8 = m.timings.body_us.map(i64_of),
    total_us: i64 as INT8 = i64_of(m.timings.total_us),
    status: Option<i16> as INT2 = m.status.map(|s| i16::try_from(s).unwrap_or(i16::MAX)),
    body_bytes: i64 as INT8 = i64_of(m.body_bytes),
    body_truncated: bool as BOOL = m.body_truncated,
    regex: Option<&'a str> as TEXT = m.regex.as_deref(),
    regex_matched: Option<bool> as BOOL = m.regex_matched,
    regex_match: Option<&'a str> as TEXT = m.regex_match.as_deref(),
    final_url: Option<&'a str> as TEXT = m.final_url.as_deref(),
    redirects: i32 as INT4 = i32_of(m.redirects),
    tls_expires_at: Option<DateTime<Utc>> as TIMESTAMPTZ = m.tls_expires_at,
    error_kind: Option<&'a str> as TEXT = m.error.as_ref().map(|e| e.kind.as_str()),
    error_message: Option<&'a str> as TEXT = m.error.as_ref().map(|e| e.message.as_str()),
    kafka_topic: &'a str as TEXT = &*row.origin.topic,
    kafka_partition: i32 as INT4 = row.origin.partition,
    kafka_offset: i64 as INT8 = row.origin.offset,
});

/// Streams rows through a binary COPY; `ids` are their sites' ids, in order.
async fn copy_rows(
    sink: tokio_postgres::CopyInSink<bytes::Bytes>,
    rows: &[Row],
    ids: &[i64],
) -> Result<u64, StoreError> {
    let writer = BinaryCopyInWriter::new(sink, COPY_TYPES);
    futures::pin_mut!(writer);
    for (row, &website_id) in rows.iter().zip(ids) {
        copy_row(writer.as_mut(), row, website_id).await?;
    }
    Ok(writer.finish().await?)
}

/// The raw limit, for benchmarks: rows by binary COPY straight into `metrics`
/// in chunks of `batch`, one transaction each, without the consumer around it. Their sites must exist.
pub async fn copy_raw(
    client: &tokio_postgres::Client,
    rows: &[Row],
    batch: usize,
) -> Result<(), StoreError> {
    let urls: Vec<&str> = rows.iter().map(|r| r.metric.url.as_str()).collect();
    let known: HashMap<String, i64> = client
        .query(SELECT_WEBSITE_IDS, &[&urls])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let ids: Vec<i64> = rows
        .iter()
        .map(|r| known.get(&r.metric.url).copied().unwrap_or(-1))
        .collect();
    for (chunk, chunk_ids) in rows.chunks(batch.max(1)).zip(ids.chunks(batch.max(1))) {
        let _ = copy_rows(client.copy_in(COPY_METRICS).await?, chunk, chunk_ids).await?;
    }
    Ok(())
}

async fn insert_dead_letters(
    tx: &deadpool_postgres::Transaction<'_>,
    dead: &[DeadLetter],
) -> Result<(), StoreError> {
    let topics: Vec<&str> = dead.iter().map(|d| &*d.origin.topic).collect();
    let partitions: Vec<i32> = dead.iter().map(|d| d.origin.partition).collect();
    let offsets: Vec<i64> = dead.iter().map(|d| d.origin.offset).collect();
    let keys: Vec<Option<&[u8]>> = dead.iter().map(|d| d.key.as_deref()).collect();
    let payloads: Vec<Option<&[u8]>> = dead.iter().map(|d| d.payload.as_deref()).collect();
    // PostgreSQL text cannot hold NUL; a reason quoting a bad payload might.
    let reasons: Vec<String> = dead.iter().map(|d| d.reason.replace('\0', "\\0")).collect();
    let statement = tx.prepare_cached(INSERT_DEAD_LETTERS).await?;
    let _ = tx
        .execute(
            &statement,
            &[&topics, &partitions, &offsets, &keys, &payloads, &reasons],
        )
        .await?;
    Ok(())
}

/// Rebuilds a metric and its origin from a row of [`SELECT_METRICS`].
pub fn metric_from_row(
    row: &tokio_postgres::Row,
) -> Result<(Metric, Origin), tokio_postgres::Error> {
    let u64_of = |v: i64| u64::try_from(v).unwrap_or_default();
    let opt = |v: Option<i64>| v.map(u64_of);
    let kind: Option<String> = row.try_get("error_kind")?;
    let message: Option<String> = row.try_get("error_message")?;
    let error = kind.map(|k| ProbeError {
        kind: ErrorKind::ALL
            .into_iter()
            .find(|e| e.as_str() == k)
            .unwrap_or(ErrorKind::Other),
        message: message.unwrap_or_default(),
    });
    let topic: String = row.try_get("kafka_topic")?;
    let metric = Metric {
        schema_version: u32::try_from(row.try_get::<_, i16>("schema_version")?).unwrap_or_default(),
        probe_id: row.try_get("probe_id")?,
        url: row.try_get("url")?,
        scheduled_at: row.try_get("scheduled_at")?,
        started_at: row.try_get("started_at")?,
        lateness_us: u64_of(row.try_get("lateness_us")?),
        skipped_before: u32::try_from(row.try_get::<_, i32>("skipped_before")?).unwrap_or_default(),
        timings: Timings {
            dns_us: opt(row.try_get("dns_us")?),
            connect_us: opt(row.try_get("connect_us")?),
            ttfb_us: opt(row.try_get("ttfb_us")?),
            body_us: opt(row.try_get("body_us")?),
            total_us: u64_of(row.try_get("total_us")?),
        },
        status: row
            .try_get::<_, Option<i16>>("status")?
            .map(|s| u16::try_from(s).unwrap_or_default()),
        body_bytes: u64_of(row.try_get("body_bytes")?),
        body_truncated: row.try_get("body_truncated")?,
        regex: row.try_get("regex")?,
        regex_matched: row.try_get("regex_matched")?,
        regex_match: row.try_get("regex_match")?,
        final_url: row.try_get("final_url")?,
        redirects: u32::try_from(row.try_get::<_, i32>("redirects")?).unwrap_or_default(),
        tls_expires_at: row.try_get("tls_expires_at")?,
        error,
    };
    let origin = Origin {
        topic: Arc::from(topic),
        partition: row.try_get("kafka_partition")?,
        offset: row.try_get("kafka_offset")?,
    };
    Ok((metric, origin))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The column list of a statement in `sql/`, in order.
    fn listed(sql: &str) -> Vec<String> {
        let open = sql.find('(').expect("a column list");
        let close = sql[open..].find(')').expect("a closed column list") + open;
        sql[open + 1..close]
            .split(',')
            .map(|c| c.trim().to_owned())
            .collect()
    }

    #[test]
    fn the_statements_list_the_mapped_columns_in_order() {
        assert_eq!(COLUMNS.len(), COPY_TYPES.len());
        for sql in [COPY_METRICS, COPY_STAGING, INSERT_METRICS_UNNEST] {
            assert_eq!(listed(sql), COLUMNS, "{sql}");
        }
        let casts = INSERT_METRICS_UNNEST.matches("::").count();
        assert_eq!(casts, COLUMNS.len());
    }
}
