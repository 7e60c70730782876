//! The ids of sites in `websites`, looked up once per URL and remembered.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::sink::Row;
use crate::store::StoreError;

const UPSERT_WEBSITES: &str = include_str!("../../sql/upsert_websites.sql");
const SELECT_WEBSITE_IDS: &str = include_str!("../../sql/select_website_ids.sql");

/// Sites whose ids are remembered; past this the cache starts over.
const SITE_CACHE_LIMIT: usize = 1_000_000;

/// The id of each URL seen, creating the sites first seen.
#[derive(Debug, Default)]
pub(super) struct SiteIds {
    cache: Mutex<HashMap<String, i64>>,
}

impl SiteIds {
    /// Ids of the rows' sites, in the rows' order, creating the sites first
    /// seen; committed on their own, as a site row is harmless even if the
    /// batch fails. A site deleted meanwhile gets -1, which fails the
    /// foreign key, and [`SiteIds::forget`] lets the next call create it again.
    pub(super) async fn of(
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
        Ok(rows
            .iter()
            .map(|row| cache.get(&row.metric.url).copied().unwrap_or(-1))
            .collect())
    }

    /// Forgets the rows' sites, so that they are looked up (and created) again.
    pub(super) fn forget(&self, rows: &[Row]) {
        let mut cache = self.cache();
        for row in rows {
            let _ = cache.remove(&row.metric.url);
        }
    }

    fn cache(&self) -> MutexGuard<'_, HashMap<String, i64>> {
        // The map is valid whatever a panicking holder left half done: entries are inserted whole.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
