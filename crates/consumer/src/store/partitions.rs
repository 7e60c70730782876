//! The partitions of `metrics` a batch needs, one per UTC day: made on
//! demand (the migration makes today's and the next few), so that a metric
//! of any date is stored, never dead-lettered for its date.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};

use crate::sink::Row;
use crate::store::StoreError;

const ENSURE_PARTITION: &str = include_str!("../../sql/ensure_partition.sql");

const SECONDS_PER_DAY: i64 = 86_400;

/// The days known to have a partition, as days since 1970-01-01 UTC.
#[derive(Debug, Default)]
pub(super) struct Partitions(Mutex<HashSet<i64>>);

impl Partitions {
    /// Makes sure each day the rows were probed on has its partition,
    /// asking PostgreSQL only for days this process has not seen; each
    /// partition is made in a transaction of its own, before the batch's.
    pub(super) async fn ensure(
        &self,
        client: &deadpool_postgres::Client,
        rows: &[Row],
    ) -> Result<(), StoreError> {
        let mut days: Vec<i64> = rows.iter().map(|r| day_of(r.metric.started_at)).collect();
        days.sort_unstable();
        days.dedup();
        days.retain(|day| !self.lock().contains(day));
        if days.is_empty() {
            return Ok(());
        }
        let statement = client.prepare_cached(ENSURE_PARTITION).await?;
        for day in days {
            let start = DateTime::from_timestamp(day.saturating_mul(SECONDS_PER_DAY), 0)
                .unwrap_or_default();
            let _ = client.execute(&statement, &[&start]).await?;
            let _ = self.lock().insert(day);
        }
        Ok(())
    }

    /// Forgets every day: a partition was dropped since (by retention, or
    /// by an operator), so each is asked for again.
    pub(super) fn forget(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> MutexGuard<'_, HashSet<i64>> {
        // Days are inserted whole; a panicking holder leaves nothing half done.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The UTC day `at` falls on, as days since 1970-01-01.
fn day_of(at: DateTime<Utc>) -> i64 {
    at.timestamp().div_euclid(SECONDS_PER_DAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_utc_days_before_and_after_1970() {
        let at = |s: &str| s.parse::<DateTime<Utc>>().expect("a time");
        assert_eq!(day_of(at("1970-01-01T00:00:00Z")), 0);
        assert_eq!(day_of(at("1970-01-01T23:59:59.999Z")), 0);
        assert_eq!(day_of(at("1969-12-31T23:59:59Z")), -1);
        assert_eq!(day_of(at("2026-12-07T00:00:00Z")), 20_794);
        assert_eq!(day_of(at("2026-12-07T23:30:00-02:00")), 20_795);
    }
}
