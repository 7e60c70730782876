//! The overview of every site, read from PostgreSQL every `refresh` by one
//! task and served from memory: a page view costs the database nothing, so
//! however many people (or badges) look, PostgreSQL sees one read per
//! refresh; and filtering, sorting and paging 10,000 sites takes no query.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::read::{self, Site, State};

/// The last overview read.
#[derive(Debug)]
pub struct Snapshot {
    /// When it was read.
    pub taken_at: DateTime<Utc>,
    /// Every site, by id.
    pub sites: Vec<Site>,
}

/// What serves the last snapshot, shared by every request.
#[derive(Debug, Clone, Default)]
pub struct Overview {
    last: Arc<RwLock<Option<Arc<Snapshot>>>>,
    failure: Arc<RwLock<Option<String>>>,
    /// How long each statement of the read may run (zero: no limit).
    statement_timeout: Duration,
}

impl Overview {
    /// An overview not read yet, whose reads' statements may each run
    /// `statement_timeout` (zero: no limit): longer than a request may.
    pub fn new(statement_timeout: Duration) -> Overview {
        Overview {
            statement_timeout,
            ..Overview::default()
        }
    }

    /// The last snapshot, if one was read.
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.last
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Why the last read failed, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Reads the overview now, keeping it (or why it failed).
    pub async fn refresh(&self, pool: &deadpool_postgres::Pool) -> Result<(), read::ReadError> {
        let taken_at = Utc::now();
        let result = async {
            let mut client = pool.get().await?;
            // One snapshot of the database for every statement of the read.
            let tx = client
                .build_transaction()
                .read_only(true)
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .start()
                .await?;
            tx.batch_execute(&format!(
                "SET LOCAL statement_timeout = {}",
                self.statement_timeout.as_millis()
            ))
            .await?;
            let sites = read::overview(&*tx, taken_at).await?;
            tx.commit().await?;
            Ok::<_, read::ReadError>(sites)
        }
        .await;
        let mut failure = self
            .failure
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match result {
            Ok(sites) => {
                *failure = None;
                *self
                    .last
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some(Arc::new(Snapshot { taken_at, sites }));
                Ok(())
            }
            Err(err) => {
                *failure = Some(err.to_string());
                Err(err)
            }
        }
    }

    /// Refreshes every `every` until `stop`; a failed read is logged and
    /// the last snapshot kept (readiness says it is getting old).
    pub async fn run(
        self,
        pool: deadpool_postgres::Pool,
        every: Duration,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let started = std::time::Instant::now();
            let read = self.refresh(&pool).await;
            let read_at = match read {
                Ok(()) => self.snapshot().map(|s| s.taken_at.timestamp()),
                Err(_) => None,
            };
            crate::measure::overview_read(read_at, started.elapsed());
            match read {
                Ok(()) => {
                    if failing {
                        tracing::info!("overview: reading PostgreSQL again");
                    }
                    failing = false;
                    tracing::debug!(took = ?started.elapsed(), "overview read");
                }
                Err(err) => {
                    if !failing {
                        tracing::warn!(error = %err, "overview: cannot read PostgreSQL; serving the last overview read until it can (check the database, and that the read role exists and may read: README, \"The status page\")");
                    }
                    failing = true;
                }
            }
        }
    }
}

/// How the overview's sites are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sort {
    /// Down first, then unknown, then up; the longest in its state first.
    #[default]
    State,
    /// By URL.
    Url,
    /// Lowest 24-hour uptime first.
    Uptime,
    /// Slowest 24-hour median first.
    Latency,
}

impl Sort {
    /// The name used in URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            Sort::State => "state",
            Sort::Url => "url",
            Sort::Uptime => "uptime",
            Sort::Latency => "latency",
        }
    }

    /// Parses the name `as_str` gives.
    pub fn parse(name: &str) -> Option<Sort> {
        [Sort::State, Sort::Url, Sort::Uptime, Sort::Latency]
            .into_iter()
            .find(|s| s.as_str() == name)
    }
}

/// Which sites, in which order, which page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// Only sites in this state.
    pub state: Option<State>,
    /// Only sites whose URL contains this (ignoring case).
    pub search: Option<String>,
    /// The order.
    pub sort: Sort,
    /// The page, from 1.
    pub page: usize,
}

/// One page of the overview.
#[derive(Debug)]
pub struct Page<'a> {
    /// The sites on this page.
    pub sites: Vec<&'a Site>,
    /// Sites that match the query, on all pages.
    pub matching: usize,
    /// Pages of them.
    pub pages: usize,
    /// Sites in each state, of all sites: up, down, unknown.
    pub counts: [usize; 3],
}

/// The sites of `snapshot` that `query` asks for, `per_page` a page.
pub fn page<'a>(snapshot: &'a Snapshot, query: &Query, per_page: usize) -> Page<'a> {
    let mut counts = [0; 3];
    for site in &snapshot.sites {
        counts[match site.state {
            State::Up => 0,
            State::Down => 1,
            State::Unknown => 2,
        }] += 1;
    }
    let needle = query.search.as_deref().map(str::to_lowercase);
    let mut sites: Vec<&Site> = snapshot
        .sites
        .iter()
        .filter(|s| query.state.is_none_or(|state| s.state == state))
        .filter(|s| {
            needle
                .as_deref()
                .is_none_or(|n| s.url.to_lowercase().contains(n))
        })
        .collect();
    let rank = |s: &Site| match s.state {
        State::Down => 0,
        State::Unknown => 1,
        State::Up => 2,
    };
    let low_first = |v: Option<f64>| v.unwrap_or(f64::INFINITY);
    match query.sort {
        Sort::State => sites.sort_by(|a, b| {
            rank(a)
                .cmp(&rank(b))
                .then(a.since.cmp(&b.since))
                .then(a.url.cmp(&b.url))
        }),
        Sort::Url => sites.sort_by(|a, b| a.url.cmp(&b.url)),
        Sort::Uptime => sites.sort_by(|a, b| {
            low_first(a.uptime_pct.day)
                .total_cmp(&low_first(b.uptime_pct.day))
                .then(a.url.cmp(&b.url))
        }),
        Sort::Latency => sites.sort_by(|a, b| {
            let slow = |s: &Site| -s.latency_24h.p50_ms.unwrap_or(f64::NEG_INFINITY);
            slow(a).total_cmp(&slow(b)).then(a.url.cmp(&b.url))
        }),
    }
    let matching = sites.len();
    let pages = matching.div_ceil(per_page).max(1);
    let first = query.page.saturating_sub(1).saturating_mul(per_page);
    let sites = sites.into_iter().skip(first).take(per_page).collect();
    Page {
        sites,
        matching,
        pages,
        counts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::{Latency, Uptime};

    fn site(id: i64, url: &str, state: State, uptime: Option<f64>) -> Site {
        Site {
            id,
            url: url.to_owned(),
            enabled: true,
            state,
            since: None,
            open_incident: None,
            last: None,
            uptime_pct: Uptime {
                day: uptime,
                ..Uptime::default()
            },
            latency_24h: Latency::default(),
        }
    }

    #[test]
    fn pages_filter_sort_and_count() {
        let snapshot = Snapshot {
            taken_at: Utc::now(),
            sites: vec![
                site(1, "https://b.example", State::Up, Some(99.0)),
                site(2, "https://a.example", State::Down, Some(50.0)),
                site(3, "https://c.example", State::Unknown, None),
                site(4, "https://d.example", State::Up, Some(100.0)),
            ],
        };
        let ids = |page: &Page<'_>| page.sites.iter().map(|s| s.id).collect::<Vec<_>>();
        let all = page(&snapshot, &Query::default(), 10);
        assert_eq!(ids(&all), [2, 3, 1, 4]);
        assert_eq!((all.matching, all.pages, all.counts), (4, 1, [2, 1, 1]));
        let query = |state, search: Option<&str>, sort, page_no| Query {
            state,
            search: search.map(str::to_owned),
            sort,
            page: page_no,
        };
        let up = page(&snapshot, &query(Some(State::Up), None, Sort::Url, 1), 10);
        assert_eq!(ids(&up), [1, 4]);
        let second = page(&snapshot, &query(None, None, Sort::Url, 2), 3);
        assert_eq!((ids(&second), second.pages), (vec![4], 2));
        let beyond = page(&snapshot, &query(None, None, Sort::Url, 9), 3);
        assert!(beyond.sites.is_empty());
        let uptime = page(&snapshot, &query(None, None, Sort::Uptime, 1), 10);
        assert_eq!(ids(&uptime), [2, 1, 4, 3]);
        let found = page(&snapshot, &query(None, Some("C.EX"), Sort::State, 1), 10);
        assert_eq!((ids(&found), found.matching), (vec![3], 1));
    }
}
