//! PostgreSQL: the schema (embedded migrations), and writing a batch of
//! metrics and dead letters in one transaction, idempotently.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use deadpool_postgres::{Pool, PoolError};
use serde::Deserialize;
use sitewatch_metric::{ErrorKind, Metric, ProbeError, Timings};
use sitewatch_service::postgres::Connector;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use uuid::Uuid;

mod embedded {
    refinery::embed_migrations!("migrations");
}

const INSERT_METRICS_UNNEST: &str = include_str!("../sql/insert_metrics_unnest.sql");
const CREATE_STAGING: &str = include_str!("../sql/create_staging.sql");
const COPY_STAGING: &str = include_str!("../sql/copy_staging.sql");
const INSERT_FROM_STAGING: &str = include_str!("../sql/insert_from_staging.sql");
const UPSERT_WEBSITES: &str = include_str!("../sql/upsert_websites.sql");
const SELECT_WEBSITE_IDS: &str = include_str!("../sql/select_website_ids.sql");
const INSERT_DEAD_LETTERS: &str = include_str!("../sql/insert_dead_letters.sql");
/// Reads metrics back as the consumer stored them, joined with their site's URL.
pub const SELECT_METRICS: &str = include_str!("../sql/select_metrics.sql");

/// Any number that keeps two consumers from migrating the same database at once.
const MIGRATION_LOCK: i64 = 0x5173_7761_7463_6801;

/// Sites whose ids are remembered; past this the cache starts over.
const SITE_CACHE_LIMIT: usize = 1_000_000;

/// How rows get into `metrics`; both are idempotent on `probe_id`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WritePath {
    /// Binary COPY into a temporary staging table, then INSERT ... SELECT ... ON CONFLICT DO NOTHING.
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
    #[error("PostgreSQL: {}", describe_pg(.0))]
    Db(#[from] tokio_postgres::Error),
    /// Migrations failed.
    #[error("schema migration failed: {0}")]
    Migrate(#[from] refinery::Error),
}

fn describe_pg(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!(
            "{} ({}) {}",
            db.message(),
            db.code().code(),
            db.detail().unwrap_or("")
        ),
        None => match std::error::Error::source(err) {
            Some(cause) => format!("{err}: {cause}"),
            None => err.to_string(),
        },
    }
}

impl StoreError {
    /// Whether the same write may succeed later (database down, connection
    /// lost, overloaded, a lock conflict); otherwise the data itself is at fault.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Pool(_) => true,
            // A database that cannot be reached may come; a schema that diverged will not.
            StoreError::Migrate(err) => match err.kind() {
                refinery::error::Kind::Connection(_, source) => source
                    .downcast_ref::<tokio_postgres::Error>()
                    .is_none_or(|pg| !is_refused_login(pg)),
                _ => false,
            },
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

    /// Whether the server refused who we are or where we asked to go: a wrong
    /// password (28) or a database that does not exist (3D), which no retry fixes.
    pub fn is_refused_login(&self) -> bool {
        match self {
            StoreError::Db(err) => is_refused_login(err),
            StoreError::Migrate(err) => match err.kind() {
                refinery::error::Kind::Connection(_, source) => source
                    .downcast_ref::<tokio_postgres::Error>()
                    .is_some_and(is_refused_login),
                _ => false,
            },
            StoreError::Pool(_) => false,
        }
    }

    fn is_missing_site(&self) -> bool {
        matches!(self, StoreError::Db(err) if err.code() == Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION))
    }
}

fn is_refused_login(err: &tokio_postgres::Error) -> bool {
    err.code()
        .is_some_and(|c| c.code().starts_with("28") || c.code().starts_with("3D"))
}

/// Writes batches through a bounded pool.
#[derive(Debug)]
pub struct Store {
    pool: Pool,
    path: WritePath,
    site_ids: Mutex<HashMap<String, i64>>,
}

/// Applies the embedded migrations, holding an advisory lock so that two
/// consumers starting together against an empty database take turns.
pub async fn migrate(connector: &Connector) -> Result<(), StoreError> {
    let mut client = connector.connect().await?;
    let _ = client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = embedded::migrations::runner().run_async(&mut client).await;
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await?;
    let report = result?;
    for applied in report.applied_migrations() {
        tracing::info!(
            version = applied.version(),
            name = applied.name(),
            "schema migration applied"
        );
    }
    Ok(())
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
        let tx = client.transaction().await?;
        let inserted = if rows.is_empty() {
            0
        } else {
            match self.path {
                WritePath::Unnest => insert_unnest(&tx, rows, &ids).await?,
                WritePath::Copy => insert_copy(&tx, rows, &ids).await?,
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

    /// Ids of the rows' sites, creating the sites first seen; committed on
    /// their own, as a site row is harmless even if the batch fails.
    async fn site_ids(
        &self,
        client: &deadpool_postgres::Client,
        rows: &[Row],
    ) -> Result<HashMap<String, i64>, StoreError> {
        let mut ids = HashMap::new();
        let mut missing: Vec<&str> = Vec::new();
        if let Ok(cache) = self.site_ids.lock() {
            for row in rows {
                let url = row.metric.url.as_str();
                match cache.get(url) {
                    Some(id) => {
                        let _ = ids.insert(url.to_owned(), *id);
                    }
                    None => missing.push(url),
                }
            }
        }
        if missing.is_empty() {
            return Ok(ids);
        }
        missing.sort_unstable();
        missing.dedup();
        let upsert = client.prepare_cached(UPSERT_WEBSITES).await?;
        let _ = client.execute(&upsert, &[&missing]).await?;
        let select = client.prepare_cached(SELECT_WEBSITE_IDS).await?;
        let found = client.query(&select, &[&missing]).await?;
        let mut cache = self
            .site_ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() > SITE_CACHE_LIMIT {
            cache.clear();
        }
        for row in found {
            let url: String = row.try_get(0)?;
            let id: i64 = row.try_get(1)?;
            let _ = cache.insert(url.clone(), id);
            let _ = ids.insert(url, id);
        }
        Ok(ids)
    }
}

/// Columns of one batch, in the order of the insert statements.
struct Columns {
    probe_id: Vec<Uuid>,
    website_id: Vec<i64>,
    schema_version: Vec<i16>,
    scheduled_at: Vec<DateTime<Utc>>,
    started_at: Vec<DateTime<Utc>>,
    lateness_us: Vec<i64>,
    skipped_before: Vec<i32>,
    dns_us: Vec<Option<i64>>,
    connect_us: Vec<Option<i64>>,
    ttfb_us: Vec<Option<i64>>,
    body_us: Vec<Option<i64>>,
    total_us: Vec<i64>,
    status: Vec<Option<i16>>,
    body_bytes: Vec<i64>,
    body_truncated: Vec<bool>,
    regex: Vec<Option<String>>,
    regex_matched: Vec<Option<bool>>,
    regex_match: Vec<Option<String>>,
    final_url: Vec<Option<String>>,
    redirects: Vec<i32>,
    tls_expires_at: Vec<Option<DateTime<Utc>>>,
    error_kind: Vec<Option<&'static str>>,
    error_message: Vec<Option<String>>,
    kafka_topic: Vec<String>,
    kafka_partition: Vec<i32>,
    kafka_offset: Vec<i64>,
}

/// Values were range-checked when the message was decoded; saturating keeps this total.
fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn i32_of(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

impl Columns {
    fn of(rows: &[Row], ids: &HashMap<String, i64>) -> Columns {
        let n = rows.len();
        let mut c = Columns {
            probe_id: Vec::with_capacity(n),
            website_id: Vec::with_capacity(n),
            schema_version: Vec::with_capacity(n),
            scheduled_at: Vec::with_capacity(n),
            started_at: Vec::with_capacity(n),
            lateness_us: Vec::with_capacity(n),
            skipped_before: Vec::with_capacity(n),
            dns_us: Vec::with_capacity(n),
            connect_us: Vec::with_capacity(n),
            ttfb_us: Vec::with_capacity(n),
            body_us: Vec::with_capacity(n),
            total_us: Vec::with_capacity(n),
            status: Vec::with_capacity(n),
            body_bytes: Vec::with_capacity(n),
            body_truncated: Vec::with_capacity(n),
            regex: Vec::with_capacity(n),
            regex_matched: Vec::with_capacity(n),
            regex_match: Vec::with_capacity(n),
            final_url: Vec::with_capacity(n),
            redirects: Vec::with_capacity(n),
            tls_expires_at: Vec::with_capacity(n),
            error_kind: Vec::with_capacity(n),
            error_message: Vec::with_capacity(n),
            kafka_topic: Vec::with_capacity(n),
            kafka_partition: Vec::with_capacity(n),
            kafka_offset: Vec::with_capacity(n),
        };
        for row in rows {
            let m = &row.metric;
            c.probe_id.push(m.probe_id);
            c.website_id.push(ids.get(&m.url).copied().unwrap_or(-1));
            c.schema_version
                .push(i16::try_from(m.schema_version).unwrap_or(i16::MAX));
            c.scheduled_at.push(m.scheduled_at);
            c.started_at.push(m.started_at);
            c.lateness_us.push(i64_of(m.lateness_us));
            c.skipped_before.push(i32_of(m.skipped_before));
            c.dns_us.push(m.timings.dns_us.map(i64_of));
            c.connect_us.push(m.timings.connect_us.map(i64_of));
            c.ttfb_us.push(m.timings.ttfb_us.map(i64_of));
            c.body_us.push(m.timings.body_us.map(i64_of));
            c.total_us.push(i64_of(m.timings.total_us));
            c.status
                .push(m.status.map(|s| i16::try_from(s).unwrap_or(i16::MAX)));
            c.body_bytes.push(i64_of(m.body_bytes));
            c.body_truncated.push(m.body_truncated);
            c.regex.push(m.regex.clone());
            c.regex_matched.push(m.regex_matched);
            c.regex_match.push(m.regex_match.clone());
            c.final_url.push(m.final_url.clone());
            c.redirects.push(i32_of(m.redirects));
            c.tls_expires_at.push(m.tls_expires_at);
            c.error_kind.push(m.error.as_ref().map(|e| e.kind.as_str()));
            c.error_message
                .push(m.error.as_ref().map(|e| e.message.clone()));
            c.kafka_topic.push(row.origin.topic.to_string());
            c.kafka_partition.push(row.origin.partition);
            c.kafka_offset.push(row.origin.offset);
        }
        c
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 26] {
        [
            &self.probe_id,
            &self.website_id,
            &self.schema_version,
            &self.scheduled_at,
            &self.started_at,
            &self.lateness_us,
            &self.skipped_before,
            &self.dns_us,
            &self.connect_us,
            &self.ttfb_us,
            &self.body_us,
            &self.total_us,
            &self.status,
            &self.body_bytes,
            &self.body_truncated,
            &self.regex,
            &self.regex_matched,
            &self.regex_match,
            &self.final_url,
            &self.redirects,
            &self.tls_expires_at,
            &self.error_kind,
            &self.error_message,
            &self.kafka_topic,
            &self.kafka_partition,
            &self.kafka_offset,
        ]
    }
}

async fn insert_unnest(
    tx: &deadpool_postgres::Transaction<'_>,
    rows: &[Row],
    ids: &HashMap<String, i64>,
) -> Result<u64, StoreError> {
    let columns = Columns::of(rows, ids);
    let statement = tx.prepare_cached(INSERT_METRICS_UNNEST).await?;
    Ok(tx.execute(&statement, &columns.params()).await?)
}

const COPY_TYPES: [Type; 26] = [
    Type::UUID,
    Type::INT8,
    Type::INT2,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
    Type::INT8,
    Type::INT4,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT2,
    Type::INT8,
    Type::BOOL,
    Type::TEXT,
    Type::BOOL,
    Type::TEXT,
    Type::TEXT,
    Type::INT4,
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT4,
    Type::INT8,
];

async fn insert_copy(
    tx: &deadpool_postgres::Transaction<'_>,
    rows: &[Row],
    ids: &HashMap<String, i64>,
) -> Result<u64, StoreError> {
    tx.batch_execute(CREATE_STAGING).await?;
    copy_rows(tx.copy_in(COPY_STAGING).await?, rows, ids).await?;
    let statement = tx.prepare_cached(INSERT_FROM_STAGING).await?;
    Ok(tx.execute(&statement, &[]).await?)
}

/// Streams rows through a binary COPY.
async fn copy_rows(
    sink: tokio_postgres::CopyInSink<bytes::Bytes>,
    rows: &[Row],
    ids: &HashMap<String, i64>,
) -> Result<u64, StoreError> {
    let writer = BinaryCopyInWriter::new(sink, &COPY_TYPES);
    futures::pin_mut!(writer);
    for row in rows {
        let m = &row.metric;
        let website_id = ids.get(&m.url).copied().unwrap_or(-1);
        let schema_version = i16::try_from(m.schema_version).unwrap_or(i16::MAX);
        let status = m.status.map(|s| i16::try_from(s).unwrap_or(i16::MAX));
        let error_kind = m.error.as_ref().map(|e| e.kind.as_str());
        let error_message = m.error.as_ref().map(|e| e.message.as_str());
        let topic: &str = &row.origin.topic;
        writer
            .as_mut()
            .write(&[
                &m.probe_id,
                &website_id,
                &schema_version,
                &m.scheduled_at,
                &m.started_at,
                &i64_of(m.lateness_us),
                &i32_of(m.skipped_before),
                &m.timings.dns_us.map(i64_of),
                &m.timings.connect_us.map(i64_of),
                &m.timings.ttfb_us.map(i64_of),
                &m.timings.body_us.map(i64_of),
                &i64_of(m.timings.total_us),
                &status,
                &i64_of(m.body_bytes),
                &m.body_truncated,
                &m.regex,
                &m.regex_matched,
                &m.regex_match,
                &m.final_url,
                &i32_of(m.redirects),
                &m.tls_expires_at,
                &error_kind,
                &error_message,
                &topic,
                &row.origin.partition,
                &row.origin.offset,
            ])
            .await?;
    }
    Ok(writer.finish().await?)
}

/// The raw limit, for benchmarks: rows by binary COPY straight into `metrics`
/// in chunks of `batch`, without staging or conflict checks. Their sites must exist.
pub async fn copy_raw(
    client: &tokio_postgres::Client,
    rows: &[Row],
    batch: usize,
) -> Result<(), StoreError> {
    let urls: Vec<&str> = rows.iter().map(|r| r.metric.url.as_str()).collect();
    let ids: HashMap<String, i64> = client
        .query(SELECT_WEBSITE_IDS, &[&urls])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let copy_metrics = COPY_STAGING.replacen("metrics_staging", "metrics", 1);
    for chunk in rows.chunks(batch.max(1)) {
        let _ = copy_rows(client.copy_in(&copy_metrics).await?, chunk, &ids).await?;
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
