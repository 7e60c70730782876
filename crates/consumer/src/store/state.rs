//! Each site's up/down state and its incidents, moved by the probes of a
//! batch in the transaction that stores them.
//!
//! A probe moves its site's state only if it is newer (start time, then
//! probe id) than every probe of the site stored before it: every stored
//! metric was applied in the transaction that stored it, so a redelivered or
//! late metric never counts twice or moves a site back. The last probe
//! applied is kept in memory ([`StateCache`]) and, on a miss, read from
//! `metrics` itself; `site_state` is written only when a site's state
//! changes (a failure, a recovery), not for each passing probe of a site
//! that is up, which is most of them.
//!
//! Batches of one partition move state in their order (`sink::Turn`); a
//! write guards each row with its `version`, so a writer whose view is out
//! of date (another process wrote the site during a handover) fails the
//! transaction, forgets what it remembered, and retries.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};
use sitewatch_metric::Metric;
use uuid::Uuid;

use crate::store::StoreError;

const LOAD_STATE: &str = include_str!("../../sql/load_site_state.sql");
const INSERT_STATE: &str = include_str!("../../sql/insert_site_state.sql");
const UPDATE_STATE: &str = include_str!("../../sql/update_site_state.sql");
const OPEN_INCIDENT: &str = include_str!("../../sql/open_incident.sql");
const RESOLVE_INCIDENT: &str = include_str!("../../sql/resolve_incident.sql");

/// Sites whose state is remembered; past this the cache starts over.
const STATE_CACHE_LIMIT: usize = 1_000_000;

/// One site's state: `site_state`'s row, and the last probe applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SiteState {
    /// Whether the site is up.
    pub(crate) up: bool,
    /// Start of the probe that set `up`, or of the site's first probe.
    pub(crate) since: DateTime<Utc>,
    /// Failed probes in a row.
    pub(crate) failures: u32,
    /// Passed probes in a row while the site is down (0 while it is up).
    pub(crate) successes: u32,
    /// The incident open while the site is down.
    pub(crate) open_incident: Option<i64>,
    /// The row's version, bumped by each write; 0 before the row exists.
    pub(crate) version: i64,
    /// The last probe applied: its start and id.
    pub(crate) last: Option<(DateTime<Utc>, Uuid)>,
}

/// What one probe did to its site's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Not newer than the last probe applied: ignored.
    Stale,
    /// Applied; the row is what it was (a pass while up and not failing).
    Same,
    /// Counted; the site stays as it was.
    Counted,
    /// The site went down.
    Down,
    /// The site came back up.
    Up,
}

impl SiteState {
    /// A site without a row yet: up, as a site is until it fails its
    /// threshold; `last` is the newest probe of it stored before, if any.
    pub(crate) fn new(first: &Metric, last: Option<(DateTime<Utc>, Uuid)>) -> SiteState {
        SiteState {
            up: true,
            since: first.started_at,
            failures: 0,
            successes: 0,
            open_incident: None,
            version: 0,
            last,
        }
    }

    /// Applies one probe, with the thresholds it was made under.
    pub(crate) fn apply(&mut self, metric: &Metric) -> Step {
        let at = (metric.started_at, metric.probe_id);
        if self.last.is_some_and(|last| at <= last) {
            return Step::Stale;
        }
        self.last = Some(at);
        let verdict = &metric.verdict;
        match (self.up, verdict.up) {
            (true, true) if self.failures == 0 => Step::Same,
            (true, true) => {
                self.failures = 0;
                Step::Counted
            }
            (true, false) => {
                self.failures = self.failures.saturating_add(1);
                if self.failures >= u32::from(verdict.failure_threshold) {
                    self.up = false;
                    self.since = metric.started_at;
                    Step::Down
                } else {
                    Step::Counted
                }
            }
            (false, true) => {
                self.failures = 0;
                self.successes = self.successes.saturating_add(1);
                if self.successes >= u32::from(verdict.success_threshold) {
                    self.up = true;
                    self.successes = 0;
                    self.since = metric.started_at;
                    Step::Up
                } else {
                    Step::Counted
                }
            }
            (false, false) => {
                self.successes = 0;
                self.failures = self.failures.saturating_add(1);
                Step::Counted
            }
        }
    }

    /// Whether the row differs from `other`'s (the last probe is not in it).
    fn row_differs(&self, other: &SiteState) -> bool {
        (
            self.up,
            self.since,
            self.failures,
            self.successes,
            self.open_incident,
        ) != (
            other.up,
            other.since,
            other.failures,
            other.successes,
            other.open_incident,
        )
    }
}

/// The states this process wrote or read last, valid while it owns the
/// partitions of their sites: forgotten when its partitions change and when
/// a write fails (its commit may or may not have happened).
#[derive(Debug, Default)]
pub(crate) struct StateCache(Mutex<HashMap<i64, SiteState>>);

impl StateCache {
    /// Forgets every state.
    pub(crate) fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<i64, SiteState>> {
        // Entries are inserted whole; a panicking holder leaves nothing half done.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes out the states remembered of `sites`; a write that commits puts
    /// them back ([`StateCache::committed`]), one that fails clears the rest.
    pub(crate) fn take(&self, sites: &[i64]) -> HashMap<i64, SiteState> {
        let mut cache = self.lock();
        sites
            .iter()
            .filter_map(|id| cache.remove(id).map(|s| (*id, s)))
            .collect()
    }

    /// Remembers the states a committed transaction left.
    pub(crate) fn committed(&self, states: Vec<(i64, SiteState)>) {
        let mut cache = self.lock();
        if cache.len() + states.len() > STATE_CACHE_LIMIT {
            cache.clear();
        }
        for (website_id, state) in states {
            // A batch of another partition holding the same site (the topic's
            // partitions changed) may have put back a newer state meanwhile,
            // perhaps without writing it: the newer one stays.
            let newer = |old: &SiteState| (old.version, old.last) > (state.version, state.last);
            match cache.entry(website_id) {
                Entry::Occupied(old) if newer(old.get()) => {}
                Entry::Occupied(mut old) => {
                    let _ = old.insert(state);
                }
                Entry::Vacant(slot) => {
                    let _ = slot.insert(state);
                }
            }
        }
    }
}

/// A site that went down or came back up in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Transition {
    /// `websites.id`.
    pub(crate) website_id: i64,
    /// The site's URL.
    pub(crate) site: String,
    /// The incident opened or resolved.
    pub(crate) incident_id: i64,
    /// Whether the site came up (the incident resolved) or went down (opened).
    pub(crate) up: bool,
    /// The probe that made the transition.
    pub(crate) probe_id: Uuid,
    /// When that probe started.
    pub(crate) at: DateTime<Utc>,
    /// When the incident opened.
    pub(crate) opened_at: DateTime<Utc>,
    /// The incident's first failed condition.
    pub(crate) failed_condition: String,
    /// What that condition found.
    pub(crate) failed_message: String,
}

/// What a batch did to its sites' state.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    /// The sites that went down or up, in order per site.
    pub(crate) transitions: Vec<Transition>,
    /// Every state of the batch's sites, for the cache once committed.
    pub(crate) states: Vec<(i64, SiteState)>,
}

/// Applies `probes` (each with its site's id, already inserted in `tx`) to
/// their sites' states in `tx`, opening and resolving incidents; states are
/// taken from `cache` where it has them, else read from the table.
pub(super) async fn apply(
    tx: &deadpool_postgres::Transaction<'_>,
    cache: Option<&StateCache>,
    probes: impl Iterator<Item = (i64, &Metric)>,
) -> Result<Applied, StoreError> {
    // By site, then in the order the probes were made: one sort, no map of lists.
    let mut probes: Vec<(i64, &Metric)> = probes.collect();
    if probes.is_empty() {
        return Ok(Applied::default());
    }
    probes.sort_unstable_by_key(|(id, m)| (*id, m.started_at, m.probe_id));
    let mut sites: Vec<i64> = probes.iter().map(|(id, _)| *id).collect();
    sites.dedup();
    // Taken out, not copied: a write that fails forgets the whole cache anyway.
    let mut states = match cache {
        Some(cache) => cache.take(&sites),
        None => HashMap::new(),
    };
    let missing: Vec<i64> = sites
        .iter()
        .filter(|id| !states.contains_key(id))
        .copied()
        .collect();
    if !missing.is_empty() {
        load(tx, &missing, &probes, &mut states).await?;
    }

    let mut applied = Applied::default();
    let mut inserts = Rows::default();
    let mut updates = Rows::default();
    for metrics in probes.chunk_by(|a, b| a.0 == b.0) {
        let website_id = &metrics[0].0;
        let Some(mut state) = states.remove(website_id) else {
            continue;
        };
        let before = state;
        for (_, metric) in metrics {
            match state.apply(metric) {
                Step::Stale | Step::Same | Step::Counted => {}
                Step::Down => {
                    let transition = open_incident(tx, *website_id, metric).await?;
                    state.open_incident = Some(transition.incident_id);
                    applied.transitions.push(transition);
                }
                Step::Up => {
                    // An incident deleted by an operator leaves nothing to resolve.
                    if let Some(incident_id) = state.open_incident.take() {
                        if let Some(transition) =
                            resolve_incident(tx, *website_id, incident_id, metric).await?
                        {
                            applied.transitions.push(transition);
                        }
                    }
                }
            }
        }
        if before.version == 0 {
            inserts.push(*website_id, &state, 0);
            state.version = 1;
        } else if state.row_differs(&before) {
            updates.push(*website_id, &state, before.version);
            state.version += 1;
        }
        applied.states.push((*website_id, state));
    }
    write(tx, INSERT_STATE, &inserts).await?;
    write(tx, UPDATE_STATE, &updates).await?;
    Ok(applied)
}

/// Reads the states of sites not in the cache, with the newest probe of each
/// stored before this transaction (its own rows are told apart by `xmin`).
async fn load(
    tx: &deadpool_postgres::Transaction<'_>,
    ids: &[i64],
    probes: &[(i64, &Metric)],
    states: &mut HashMap<i64, SiteState>,
) -> Result<(), StoreError> {
    let statement = tx.prepare_cached(LOAD_STATE).await?;
    for row in tx.query(&statement, &[&ids]).await? {
        let website_id: i64 = row.try_get("website_id")?;
        let last_started_at: Option<DateTime<Utc>> = row.try_get("last_started_at")?;
        let last_probe_id: Option<Uuid> = row.try_get("last_probe_id")?;
        let last = last_started_at.zip(last_probe_id);
        let version: Option<i64> = row.try_get("version")?;
        let state = match version {
            Some(version) => {
                let failures: i32 = row.try_get("consecutive_failures")?;
                let successes: i32 = row.try_get("consecutive_successes")?;
                let since: DateTime<Utc> = row.try_get("since")?;
                SiteState {
                    up: row.try_get("up")?,
                    since,
                    failures: u32::try_from(failures).unwrap_or_default(),
                    successes: u32::try_from(successes).unwrap_or_default(),
                    open_incident: row.try_get("open_incident_id")?,
                    version,
                    // The probe that set `since` was applied: with a site's rows
                    // dropped by retention, a probe from before it still counts
                    // as stale, not as news.
                    last: last.or(Some((since, Uuid::max()))),
                }
            }
            None => {
                // The site's first probe in the batch: `probes` is sorted by site.
                let at = probes.partition_point(|(id, _)| *id < website_id);
                match probes.get(at) {
                    Some((id, first)) if *id == website_id => SiteState::new(first, last),
                    _ => continue,
                }
            }
        };
        let _ = states.insert(website_id, state);
    }
    Ok(())
}

async fn open_incident(
    tx: &deadpool_postgres::Transaction<'_>,
    website_id: i64,
    metric: &Metric,
) -> Result<Transition, StoreError> {
    let first = metric.verdict.first_failed();
    let condition = first.map_or("", |f| f.condition.as_str());
    let message = first.map_or("", |f| f.message.as_str());
    let open = tx.prepare_cached(OPEN_INCIDENT).await?;
    let row = tx
        .query_one(
            &open,
            &[
                &website_id,
                &metric.started_at,
                &metric.probe_id,
                &condition,
                &message,
            ],
        )
        .await?;
    Ok(Transition {
        website_id,
        site: metric.url.clone(),
        incident_id: row.try_get(0)?,
        up: false,
        probe_id: metric.probe_id,
        at: metric.started_at,
        opened_at: metric.started_at,
        failed_condition: condition.to_owned(),
        failed_message: message.to_owned(),
    })
}

async fn resolve_incident(
    tx: &deadpool_postgres::Transaction<'_>,
    website_id: i64,
    incident_id: i64,
    metric: &Metric,
) -> Result<Option<Transition>, StoreError> {
    let resolve = tx.prepare_cached(RESOLVE_INCIDENT).await?;
    let Some(incident) = tx
        .query_opt(
            &resolve,
            &[&incident_id, &metric.started_at, &metric.probe_id],
        )
        .await?
    else {
        return Ok(None);
    };
    Ok(Some(Transition {
        website_id,
        site: metric.url.clone(),
        incident_id,
        up: true,
        probe_id: metric.probe_id,
        at: metric.started_at,
        opened_at: incident.try_get("opened_at")?,
        failed_condition: incident.try_get("failed_condition")?,
        failed_message: incident.try_get("failed_message")?,
    }))
}

/// Writes `rows` with `sql` (an insert of new rows, or an update guarded by
/// each row's version); a row not written means another writer got there
/// first: the transaction fails, to be retried with fresh states.
async fn write(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &str,
    rows: &Rows,
) -> Result<(), StoreError> {
    if rows.website_id.is_empty() {
        return Ok(());
    }
    let statement = tx.prepare_cached(sql).await?;
    let written = tx
        .execute(
            &statement,
            &[
                &rows.website_id,
                &rows.up,
                &rows.since,
                &rows.failures,
                &rows.successes,
                &rows.open_incident,
                &rows.version,
            ],
        )
        .await?;
    if written < rows.website_id.len() as u64 {
        return Err(StoreError::StateMoved);
    }
    Ok(())
}

/// States to write, column by column.
#[derive(Debug, Default)]
struct Rows {
    website_id: Vec<i64>,
    up: Vec<bool>,
    since: Vec<DateTime<Utc>>,
    failures: Vec<i32>,
    successes: Vec<i32>,
    open_incident: Vec<Option<i64>>,
    /// The version each row must have now (ignored by the insert).
    version: Vec<i64>,
}

impl Rows {
    fn push(&mut self, website_id: i64, state: &SiteState, version: i64) {
        self.website_id.push(website_id);
        self.up.push(state.up);
        self.since.push(state.since);
        self.failures
            .push(i32::try_from(state.failures).unwrap_or(i32::MAX));
        self.successes
            .push(i32::try_from(state.successes).unwrap_or(i32::MAX));
        self.open_incident.push(state.open_incident);
        self.version.push(version);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;
    use sitewatch_metric::{Condition, Failed, Verdict};

    fn probe(second: i64, up: bool) -> Metric {
        let failed = if up {
            Vec::new()
        } else {
            vec![Failed::new(
                Condition::Status,
                "status 503 is not below 400",
            )]
        };
        Metric {
            probe_id: Uuid::now_v7(),
            started_at: DateTime::UNIX_EPOCH + TimeDelta::seconds(second),
            verdict: Verdict::of(failed, 3, 2),
            ..Metric::example()
        }
    }

    fn steps(probes: &[Metric]) -> Vec<Step> {
        let mut state = SiteState::new(&probes[0], None);
        probes.iter().map(|p| state.apply(p)).collect()
    }

    #[test]
    fn down_after_the_failure_threshold_up_after_the_success_threshold() {
        use Step::*;
        let probes: Vec<Metric> = [true, false, false, false, false, true, true, true]
            .iter()
            .enumerate()
            .map(|(i, &up)| probe(i as i64, up))
            .collect();
        assert_eq!(
            steps(&probes),
            vec![Same, Counted, Counted, Down, Counted, Counted, Up, Same]
        );
    }

    #[test]
    fn failures_short_of_the_threshold_change_nothing_lasting() {
        use Step::*;
        let probes: Vec<Metric> = [false, false, true, true, false, false, true]
            .iter()
            .enumerate()
            .map(|(i, &up)| probe(i as i64, up))
            .collect();
        assert_eq!(
            steps(&probes),
            vec![Counted, Counted, Counted, Same, Counted, Counted, Counted]
        );
    }

    #[test]
    fn a_probe_not_newer_than_the_last_applied_is_ignored() {
        let first = probe(10, false);
        let mut state = SiteState::new(&first, None);
        assert_eq!(state.apply(&first), Step::Counted);
        assert_eq!(state.apply(&first), Step::Stale, "a redelivery");
        assert_eq!(state.apply(&probe(5, false)), Step::Stale, "a late probe");
        assert_eq!(state.failures, 1);
        assert_eq!(state.apply(&probe(11, false)), Step::Counted);
        assert_eq!(state.apply(&probe(12, false)), Step::Down);
        assert_eq!(state.since, DateTime::UNIX_EPOCH + TimeDelta::seconds(12));
        let stored_before = probe(20, true);
        let mut fresh = SiteState::new(
            &stored_before,
            Some((stored_before.started_at, stored_before.probe_id)),
        );
        assert_eq!(
            fresh.apply(&probe(15, false)),
            Step::Stale,
            "older than a probe stored before the state existed"
        );
    }

    #[test]
    fn the_cache_keeps_the_newer_of_two_states_put_back() {
        let cache = StateCache::default();
        let first = probe(0, true);
        let written = SiteState {
            up: false,
            version: 6,
            ..SiteState::new(&first, None)
        };
        let read_before = SiteState {
            version: 5,
            ..SiteState::new(&first, None)
        };
        cache.committed(vec![(1, written)]);
        cache.committed(vec![(1, read_before)]);
        assert_eq!(cache.take(&[1]).get(&1), Some(&written));
        cache.committed(vec![(1, read_before)]);
        cache.committed(vec![(1, written)]);
        assert_eq!(cache.take(&[1]).get(&1), Some(&written));
        assert!(cache.take(&[1]).is_empty(), "taken out, not copied");
    }

    #[test]
    fn each_probe_brings_its_own_thresholds() {
        let mut state = SiteState::new(&probe(0, false), None);
        let mut strict = probe(0, false);
        strict.verdict.failure_threshold = 1;
        assert_eq!(state.apply(&strict), Step::Down);
        let mut quick = probe(1, true);
        quick.verdict.success_threshold = 1;
        assert_eq!(state.apply(&quick), Step::Up);
    }
}
