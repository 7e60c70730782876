//! PostgreSQL as the consumer's sink: a batch of metrics and dead letters in
//! one transaction, through a bounded pool, idempotently on `probe_id`.
//!
//! The columns come from `sitewatch_db::columns`, the one mapping between a
//! metric and a row; the schema from `sitewatch_db::schema`.

mod error;
pub(crate) mod partitions;
mod sites;
pub(crate) mod state;

use std::sync::LazyLock;
use std::time::Duration;

use deadpool_postgres::Pool;
use serde::Deserialize;
use sitewatch_db::columns::{self, Columns, RowRef};

pub use self::error::StoreError;
use self::partitions::Partitions;
use self::sites::SiteIds;
use self::state::StateCache;
use crate::alert::outbox::Outbox;
use crate::sink::{DeadLetter, Row, Sink, Turn, Written, CONFLICT};

const CREATE_STAGING: &str = include_str!("../../sql/create_staging.sql");
const SET_LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '10s'";

/// Longest a batch waits, its rows copied, for the earlier batches of its
/// partitions; past it the write is rolled back, waits for them holding
/// nothing, and is retried.
const TURN_WAIT: Duration = Duration::from_secs(5);
const INSERT_DEAD_LETTERS: &str = include_str!("../../sql/insert_dead_letters.sql");

/// The staging table's rows into `metrics`, skipping those already stored.
static INSERT_FROM_STAGING: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO metrics ({list}) SELECT {list} FROM metrics_staging ON CONFLICT (probe_id, started_at) DO NOTHING",
        list = columns::list()
    )
});
/// The staged rows already stored with other content.
static CONFLICTS_STAGED: LazyLock<String> =
    LazyLock::new(|| columns::conflicts_in("metrics_staging s"));
static COPY_METRICS: LazyLock<String> = LazyLock::new(|| columns::copy_into("metrics"));
static COPY_STAGING: LazyLock<String> = LazyLock::new(|| columns::copy_into("metrics_staging"));

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

/// Writes batches through a bounded pool.
#[derive(Debug)]
pub struct Store {
    pool: Pool,
    path: WritePath,
    sites: SiteIds,
    partitions: Partitions,
    timeout: Duration,
    track_state: bool,
    states: StateCache,
    outbox: Option<Outbox>,
}

impl Store {
    /// A store writing through `pool` by `path`, each write within `timeout`;
    /// with `track_state`, each batch also moves its sites' up/down state.
    pub fn new(pool: Pool, path: WritePath, timeout: Duration, track_state: bool) -> Store {
        Store {
            pool,
            path,
            sites: SiteIds::default(),
            partitions: Partitions::new(partitions::DEFAULT_WIDTH),
            timeout,
            track_state,
            states: StateCache::default(),
            outbox: None,
        }
    }

    /// The same store, making the partitions of `metrics` it needs `width` wide.
    pub fn partitioned_by(self, width: Duration) -> Store {
        Store {
            partitions: Partitions::new(width),
            ..self
        }
    }

    /// The same store, writing each transition's notifications into `outbox`.
    pub fn alerting(self, outbox: Outbox) -> Store {
        Store {
            outbox: Some(outbox),
            ..self
        }
    }

    /// One attempt, within the write timeout. A connection whose write did
    /// not finish is dropped, not put back in the pool: it may be stuck
    /// mid-statement, or its COMMIT may have gone through; the retry, on
    /// another connection, finds such rows stored and skips them.
    async fn write_once(
        &self,
        rows: &[Row],
        dead: &[DeadLetter],
        turn: &Turn,
    ) -> Result<Written, StoreError> {
        let mut client = self.pool.get().await?;
        let write = self.write_with(&mut client, rows, dead, turn);
        let written = match tokio::time::timeout(self.timeout, write).await {
            Ok(Err(StoreError::TurnTimedOut(waited))) => {
                // Rolled back, this batch holds no rows another may wait for:
                // it waits for the earlier batch here, so that its retry copies
                // its rows once more, not once per wait.
                drop(client);
                return match turn.wait().await {
                    // Nothing was applied or taken from what is remembered.
                    Ok(()) => Err(StoreError::TurnTimedOut(waited)),
                    Err(lost) => Err(lost.into()),
                };
            }
            Ok(written) => written,
            Err(_elapsed) => {
                drop(deadpool_postgres::Object::take(client));
                Err(StoreError::TimedOut(self.timeout))
            }
        };
        if written.is_err() {
            // Its COMMIT may have gone through: what is remembered may be behind.
            self.states.clear();
        }
        written
    }

    async fn write_with(
        &self,
        client: &mut deadpool_postgres::Client,
        rows: &[Row],
        dead: &[DeadLetter],
        turn: &Turn,
    ) -> Result<Written, StoreError> {
        let ids = self.sites.of(client, rows).await?;
        self.partitions.ensure(client, rows).await?;
        match self.insert(client, rows, &ids, dead, turn).await {
            // A partition this process saw was dropped since: made again.
            Err(err) if err.is_missing_partition() => {
                tracing::info!("a partition of metrics was dropped since it was last seen: making the batch's days again");
                self.partitions.forget();
                self.partitions.ensure(client, rows).await?;
                self.insert(client, rows, &ids, dead, turn).await
            }
            other => other,
        }
    }

    /// The batch's transaction by this store's write path.
    async fn insert(
        &self,
        client: &mut deadpool_postgres::Client,
        rows: &[Row],
        ids: &[i64],
        dead: &[DeadLetter],
        turn: &Turn,
    ) -> Result<Written, StoreError> {
        let insert = match self.path {
            WritePath::Copy => Insert::Copy,
            WritePath::Unnest => Insert::Unnest,
        };
        let state = self.track_state.then_some(State {
            turn,
            cache: &self.states,
            outbox: self.outbox.as_ref(),
        });
        match write_transaction(client, rows, ids, dead, insert, state).await {
            // Fresh rows, the usual case, went straight in; a redelivery is rare
            // enough that doing its batch twice costs less than checking every batch.
            Err(err) if insert == Insert::Copy && err.is_stored_already() => {
                tracing::debug!(
                    rows = rows.len(),
                    "the batch holds rows already stored (a redelivery): writing it again, skipping those"
                );
                write_transaction(client, rows, ids, dead, Insert::Staged, state).await
            }
            other => other,
        }
    }
}

impl Sink for Store {
    type Error = StoreError;

    async fn write(&self, rows: &[Row], dead: &[DeadLetter]) -> Result<Written, StoreError> {
        self.write_in_turn(rows, dead, &Turn::now()).await
    }

    async fn write_in_turn(
        &self,
        rows: &[Row],
        dead: &[DeadLetter],
        turn: &Turn,
    ) -> Result<Written, StoreError> {
        match self.write_once(rows, dead, turn).await {
            // A site row deleted by an operator while its id was cached: forget
            // the batch's sites so they are looked up (and created) again.
            Err(err) if err.is_missing_site() => {
                self.sites.forget(rows);
                self.write_once(rows, dead, turn).await
            }
            other => other,
        }
    }

    /// Whether PostgreSQL answers a trivial query through the pool.
    async fn ping(&self) -> bool {
        match self.pool.get().await {
            Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
            Err(_) => false,
        }
    }

    /// States remembered for sites of partitions this consumer lost, or
    /// gained back after another wrote them, are out of date.
    fn partitions_changed(&self) {
        self.states.clear();
    }

    fn collect(&self) {
        let status = self.pool.status();
        crate::measure::pool(status.size, status.available, status.waiting);
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

/// The rows as the column mapping takes them; `ids` are their sites' ids, in order.
fn row_refs<'a>(rows: &'a [Row], ids: &'a [i64]) -> impl Iterator<Item = RowRef<'a>> {
    rows.iter().zip(ids).map(|(row, &website_id)| RowRef {
        metric: &row.metric,
        website_id,
        topic: &row.origin.topic,
        partition: row.origin.partition,
        offset: row.origin.offset,
    })
}

/// What a batch does to its sites' state: when it may, and where their
/// notifications go.
#[derive(Debug, Clone, Copy)]
struct State<'a> {
    /// A site's probes must move its state in their order; two batches of
    /// one partition may be in flight at once, so the later waits here.
    turn: &'a Turn,
    cache: &'a StateCache,
    outbox: Option<&'a Outbox>,
}

/// Rows and dead letters in one transaction, and with `state` the sites'
/// state the rows move (and the notifications it owes, with an outbox);
/// returns what it did.
async fn write_transaction(
    client: &mut deadpool_postgres::Client,
    rows: &[Row],
    ids: &[i64],
    dead: &[DeadLetter],
    insert: Insert,
    state: Option<State<'_>>,
) -> Result<Written, StoreError> {
    let tx = client.transaction().await?;
    if state.is_some() {
        // This transaction may wait for an earlier batch of this process (its
        // turn) while a batch of another process, during a handover, waits
        // for this one's rows and the earlier batch for that one's: a cycle
        // PostgreSQL cannot see. Lock waits bounded well below the write
        // timeout break it (55P03 is retried).
        tx.batch_execute(SET_LOCK_TIMEOUT).await?;
    }
    let (inserted, conflicts) = if rows.is_empty() {
        (0, Vec::new())
    } else {
        match insert {
            Insert::Copy => {
                let sink = tx.copy_in(COPY_METRICS.as_str()).await?;
                (
                    columns::copy_rows(sink, row_refs(rows, ids)).await?,
                    Vec::new(),
                )
            }
            Insert::Staged => {
                tx.batch_execute(CREATE_STAGING).await?;
                let sink = tx.copy_in(COPY_STAGING.as_str()).await?;
                let _ = columns::copy_rows(sink, row_refs(rows, ids)).await?;
                let statement = tx.prepare_cached(&INSERT_FROM_STAGING).await?;
                let inserted = tx.execute(&statement, &[]).await?;
                let conflicts = if inserted < rows.len() as u64 {
                    tx.query(CONFLICTS_STAGED.as_str(), &[]).await?
                } else {
                    Vec::new()
                };
                (inserted, conflicts)
            }
            Insert::Unnest => {
                let refs: Vec<RowRef<'_>> = row_refs(rows, ids).collect();
                let by_column = Columns::of(&refs);
                let params = by_column.params();
                let statement = tx.prepare_cached(columns::insert_unnest()).await?;
                let inserted = tx.execute(&statement, &params).await?;
                let conflicts = if inserted < rows.len() as u64 {
                    let statement = tx.prepare_cached(columns::conflicts_unnest()).await?;
                    tx.query(&statement, &params).await?
                } else {
                    Vec::new()
                };
                (inserted, conflicts)
            }
        }
    };
    let conflicted = conflicted_letters(rows, &conflicts)?;
    if !dead.is_empty() || !conflicted.is_empty() {
        insert_dead_letters(&tx, dead.iter().chain(&conflicted)).await?;
    }
    let applied = match state {
        Some(State {
            turn,
            cache,
            outbox,
        }) => {
            // Bounded below the lock timeout: this wait holds the batch's rows,
            // which a batch of another process (during a handover) may wait for
            // while this one's earlier batch waits for that one's; PostgreSQL
            // cannot see this edge of the cycle, so it is this one that gives way.
            tokio::time::timeout(TURN_WAIT, turn.wait())
                .await
                .map_err(|_| StoreError::TurnTimedOut(TURN_WAIT))??;
            // A conflict is not the probe stored under its id: it moves nothing.
            let probes = rows
                .iter()
                .zip(ids)
                .filter(|(row, _)| !conflicted.iter().any(|c| c.origin == row.origin))
                .map(|(row, &id)| (id, &row.metric));
            // Rows stored already (a redelivery, or another process's during a
            // handover): what this process remembers of their sites may be
            // behind, so their states are read from the table.
            let remembered = inserted == rows.len() as u64;
            let applied = state::apply(&tx, remembered.then_some(cache), probes).await?;
            if let Some(outbox) = outbox {
                outbox.enqueue(&tx, &applied.transitions).await?;
            }
            Some((cache, applied))
        }
        None => None,
    };
    tx.commit().await?;
    let transitions = match applied {
        Some((cache, applied)) => {
            cache.committed(applied.states);
            applied.transitions
        }
        None => Vec::new(),
    };
    let down = transitions.iter().filter(|t| !t.up).count() as u64;
    crate::measure::transitions(down, transitions.len() as u64 - down);
    let conflicts = conflicted.len() as u64;
    Ok(Written {
        inserted,
        duplicates: rows.len() as u64 - inserted - conflicts,
        dead_letters: dead.len() as u64 + conflicts,
        transitions: transitions.len() as u64,
    })
}

/// Dead letters for the rows whose probe id was already stored with other
/// content: a conflict (a bug or a forged message), not a redelivery, so it
/// is kept for an operator rather than silently dropped.
fn conflicted_letters(
    rows: &[Row],
    conflicts: &[tokio_postgres::Row],
) -> Result<Vec<DeadLetter>, StoreError> {
    let mut letters = Vec::new();
    for conflict in conflicts {
        let at: (i32, i64) = (conflict.try_get(0)?, conflict.try_get(1)?);
        let found = rows
            .iter()
            .find(|r| (r.origin.partition, r.origin.offset) == at);
        if let Some(row) = found {
            let probe_id = row.metric.probe_id;
            tracing::warn!(%probe_id, partition = at.0, offset = at.1, "a probe id already stored with other content goes to dead_letters");
            letters.push(row.clone().into_dead_letter(
                CONFLICT,
                format!("conflict: probe_id {probe_id} is already stored with different content"),
            ));
        }
    }
    Ok(letters)
}

async fn insert_dead_letters<'a>(
    tx: &deadpool_postgres::Transaction<'_>,
    dead: impl Iterator<Item = &'a DeadLetter> + Clone,
) -> Result<(), StoreError> {
    let dead: Vec<&DeadLetter> = dead.collect();
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
