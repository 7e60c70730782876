//! The partitions of `metrics` a batch needs: made on demand (the migrations
//! and the retention pass make the current one and the next few), so that a
//! metric of any date is stored, never dead-lettered for its date.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::sink::Row;
use crate::store::StoreError;

const ENSURE_PARTITION: &str = include_str!("../../sql/ensure_partition.sql");

/// How much time a partition made by the store holds, unless set.
pub(crate) const DEFAULT_WIDTH: Duration = Duration::from_secs(86_400);

/// The time a partition holds: from `lower` (none: since ever) to before
/// `upper` (none: from then on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bounds {
    pub(crate) lower: Option<DateTime<Utc>>,
    pub(crate) upper: Option<DateTime<Utc>>,
}

impl Bounds {
    fn holds(&self, at: DateTime<Utc>) -> bool {
        self.lower.is_none_or(|lower| lower <= at) && self.upper.is_none_or(|upper| at < upper)
    }
}

/// The partition that holds `at`, made `width` wide (cut short by its
/// neighbours) unless one holds it already.
pub(crate) async fn ensure(
    client: &tokio_postgres::Client,
    at: DateTime<Utc>,
    width: Duration,
) -> Result<Bounds, tokio_postgres::Error> {
    let seconds = i64::try_from(width.as_secs()).unwrap_or(i64::MAX);
    let row = client.query_one(ENSURE_PARTITION, &[&at, &seconds]).await?;
    Ok(Bounds {
        lower: row.try_get(0)?,
        upper: row.try_get(1)?,
    })
}

/// The partitions known to exist, and the width of those this store makes.
#[derive(Debug)]
pub(super) struct Partitions {
    width: Duration,
    known: Mutex<Vec<Bounds>>,
}

impl Partitions {
    /// Partitions `width` wide.
    pub(super) fn new(width: Duration) -> Partitions {
        Partitions {
            width,
            known: Mutex::new(Vec::new()),
        }
    }

    /// Makes sure each time the rows were probed at has its partition,
    /// asking PostgreSQL only for times no partition this process has seen
    /// holds; each partition is made in a transaction of its own, before
    /// the batch's.
    pub(super) async fn ensure(
        &self,
        client: &deadpool_postgres::Client,
        rows: &[Row],
    ) -> Result<(), StoreError> {
        let mut times: Vec<DateTime<Utc>> = rows.iter().map(|r| r.metric.started_at).collect();
        times.sort_unstable();
        times.dedup();
        // Sorted, most times fall in the partition the one before did.
        let mut last: Option<Bounds> = None;
        for at in times {
            if last.is_some_and(|b| b.holds(at)) {
                continue;
            }
            // Newest first: the partitions of now were made last.
            let known = self.lock().iter().rev().find(|b| b.holds(at)).copied();
            let bounds = match known {
                Some(bounds) => bounds,
                None => {
                    let made = ensure(client, at, self.width).await?;
                    self.lock().push(made);
                    made
                }
            };
            last = Some(bounds);
        }
        Ok(())
    }

    /// Forgets every partition: one was dropped since (by retention, or by
    /// an operator), so each time is asked for again.
    pub(super) fn forget(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Bounds>> {
        // Bounds are pushed whole; a panicking holder leaves nothing half done.
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_hold_their_start_not_their_end_and_none_is_unbounded() {
        let at = |s: &str| s.parse::<DateTime<Utc>>().expect("a time");
        let day = Bounds {
            lower: Some(at("2026-12-07T00:00:00Z")),
            upper: Some(at("2026-12-08T00:00:00Z")),
        };
        assert!(day.holds(at("2026-12-07T00:00:00Z")));
        assert!(day.holds(at("2026-12-07T23:59:59.999999Z")));
        assert!(!day.holds(at("2026-12-08T00:00:00Z")));
        assert!(!day.holds(at("2026-12-06T23:59:59Z")));
        let before = Bounds {
            lower: None,
            upper: Some(at("2026-12-08T00:00:00Z")),
        };
        assert!(before.holds(at("1970-01-01T00:00:00Z")));
        assert!(!before.holds(at("2026-12-08T00:00:00Z")));
    }
}
