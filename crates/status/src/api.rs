//! The parameters the pages and the JSON API take, checked before any
//! query runs: a bad one is a 400 that says which and why, an unknown site
//! a 404, and a range is bounded in steps so that no request can ask for a
//! slow query.

use std::time::Duration;

use axum::http::StatusCode;
use chrono::{DateTime, TimeDelta, Utc};
use serde::Deserialize;

use crate::overview::{Query, Sort};
use crate::read::State;

/// A request the service refuses or cannot answer, with what to tell the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 400, 404 or 503.
    pub status: StatusCode,
    /// What was wrong, for the caller.
    pub message: String,
}

impl Refusal {
    /// A 400: the caller asked for something that cannot be.
    pub fn bad(message: impl Into<String>) -> Refusal {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    /// A 404 for a site id that is not there.
    pub fn no_site(id: i64) -> Refusal {
        Refusal {
            status: StatusCode::NOT_FOUND,
            message: format!("no site with id {id}"),
        }
    }

    /// A 503: the database could not be read (already logged).
    pub fn unavailable(message: impl Into<String>) -> Refusal {
        Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
        }
    }
}

/// The most steps a history answers with.
pub const MAX_STEPS: i64 = 2000;

/// The shortest step: a probe is rarely more frequent.
pub const MIN_STEP: Duration = Duration::from_secs(60);

/// The overview's parameters, as given.
#[derive(Debug, Default, Deserialize)]
pub struct ListParams {
    state: Option<String>,
    q: Option<String>,
    sort: Option<String>,
    page: Option<String>,
    per_page: Option<String>,
}

/// The overview query, and the page size asked for (API only).
pub fn list_query(p: &ListParams) -> Result<(Query, Option<usize>), Refusal> {
    let state = match p.state.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(State::parse(s).ok_or_else(|| Refusal::bad("state: up, down or unknown"))?),
    };
    let sort = match p.sort.as_deref().filter(|s| !s.is_empty()) {
        None => Sort::default(),
        Some(s) => {
            Sort::parse(s).ok_or_else(|| Refusal::bad("sort: state, url, uptime or latency"))?
        }
    };
    let page = match p.page.as_deref().filter(|s| !s.is_empty()) {
        None => 1,
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|&n| n >= 1)
            .ok_or_else(|| Refusal::bad("page: a whole number from 1"))?,
    };
    let per_page = match p.per_page.as_deref() {
        None => None,
        Some(s) => Some(
            s.parse::<usize>()
                .ok()
                .filter(|&n| n >= 1)
                .ok_or_else(|| Refusal::bad("per_page: a whole number from 1"))?,
        ),
    };
    let search =
        p.q.as_deref()
            .map(str::trim)
            .filter(|q| !q.is_empty())
            .map(str::to_owned);
    Ok((
        Query {
            state,
            search,
            sort,
            page,
        },
        per_page,
    ))
}

/// A site id from a path.
pub fn site_id(given: &str) -> Result<i64, Refusal> {
    given
        .parse::<i64>()
        .map_err(|_| Refusal::bad(format!("site id: a whole number, not {given:?}")))
}

/// The longest step: a little more than the rollups are kept.
pub const MAX_STEP: Duration = Duration::from_secs(400 * 86_400);

fn out_of_range() -> Refusal {
    Refusal::bad("from and to: between years 0001 and 9999")
}

/// The hour `t` is in.
fn floor_hour(t: DateTime<Utc>) -> Result<DateTime<Utc>, Refusal> {
    DateTime::from_timestamp(t.timestamp().div_euclid(3600) * 3600, 0).ok_or_else(out_of_range)
}

/// The first whole hour at or after `t`.
fn ceil_hour(t: DateTime<Utc>) -> Result<DateTime<Utc>, Refusal> {
    let floor = floor_hour(t)?;
    if floor == t {
        return Ok(t);
    }
    floor
        .checked_add_signed(TimeDelta::hours(1))
        .ok_or_else(out_of_range)
}

/// A history's parameters, as given.
#[derive(Debug, Default, Deserialize)]
pub struct HistoryParams {
    from: Option<String>,
    to: Option<String>,
    step: Option<String>,
}

/// A range and its step, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// Start, included.
    pub from: DateTime<Utc>,
    /// End, excluded.
    pub to: DateTime<Utc>,
    /// Whole seconds, at least [`MIN_STEP`].
    pub step: Duration,
}

impl Range {
    /// Each step's start, oldest first.
    pub fn steps(&self) -> Vec<DateTime<Utc>> {
        let step = TimeDelta::seconds(i64::try_from(self.step.as_secs()).unwrap_or(i64::MAX));
        let mut at = self.from;
        let mut steps = Vec::new();
        while at < self.to {
            steps.push(at);
            at += step;
        }
        steps
    }
}

fn time(name: &str, given: &str) -> Result<DateTime<Utc>, Refusal> {
    DateTime::parse_from_rfc3339(given)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            Refusal::bad(format!(
                "{name}: an RFC 3339 time such as 2026-01-31T12:00:00Z, not {given:?}"
            ))
        })
}

/// The range asked for: `to` defaults to now, `from` to a day before
/// `to`, `step` to an hour.
pub fn range(p: &HistoryParams, now: DateTime<Utc>) -> Result<Range, Refusal> {
    let to = match p.to.as_deref() {
        Some(t) => time("to", t)?,
        None => now,
    };
    let from = match p.from.as_deref() {
        Some(t) => time("from", t)?,
        None => to - TimeDelta::days(1),
    };
    if from >= to {
        return Err(Refusal::bad("from must be before to"));
    }
    let step = match p.step.as_deref() {
        Some(s) => humantime::parse_duration(s).map_err(|_| {
            Refusal::bad(format!("step: a duration such as 5m, 1h or 1d, not {s:?}"))
        })?,
        None => Duration::from_secs(3600),
    };
    if step < MIN_STEP || step.subsec_nanos() != 0 {
        return Err(Refusal::bad("step: whole seconds, at least 1m"));
    }
    if step > MAX_STEP {
        return Err(Refusal::bad("step: at most 400d"));
    }
    // Steps of whole hours read hourly rollups: the range is made of whole
    // hours too, so that each step holds the hours it names.
    let (from, to) = if step.as_secs() % 3600 == 0 {
        (floor_hour(from)?, ceil_hour(to)?)
    } else {
        (from, to)
    };
    let seconds = i64::try_from(step.as_secs()).unwrap_or(i64::MAX);
    let span = (to - from).num_seconds();
    let steps = (span + seconds - 1) / seconds;
    if steps > MAX_STEPS {
        return Err(Refusal::bad(format!(
            "step too small for the range: {steps} steps, at most {MAX_STEPS}; ask for a step of at least {}s",
            (span + MAX_STEPS - 1) / MAX_STEPS
        )));
    }
    Ok(Range { from, to, step })
}

/// The incident list's parameters, as given.
#[derive(Debug, Default, Deserialize)]
pub struct IncidentParams {
    site: Option<String>,
    open: Option<String>,
    limit: Option<String>,
}

/// The most incidents one answer holds.
pub const MAX_INCIDENTS: i64 = 1000;

/// Which incidents: of a site or all, open only or all, how many at most.
pub fn incident_query(p: &IncidentParams) -> Result<(Option<i64>, bool, i64), Refusal> {
    let site = p.site.as_deref().map(site_id).transpose()?;
    let open = match p.open.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(Refusal::bad("open: true or false")),
    };
    let limit = match p.limit.as_deref() {
        None => 100,
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_INCIDENTS).contains(n))
            .ok_or_else(|| Refusal::bad(format!("limit: 1 to {MAX_INCIDENTS}")))?,
    };
    Ok((site, open, limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(from: Option<&str>, to: Option<&str>, step: Option<&str>) -> HistoryParams {
        HistoryParams {
            from: from.map(str::to_owned),
            to: to.map(str::to_owned),
            step: step.map(str::to_owned),
        }
    }

    #[test]
    fn ranges_are_checked_before_any_query() {
        let now = DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .expect("time");
        let day = range(&history(None, None, None), now).expect("defaults");
        assert_eq!(
            (day.to - day.from, day.steps().len()),
            (TimeDelta::days(1), 24)
        );
        // By the hour, a range is whole hours; by five minutes, as asked.
        let late = now + TimeDelta::minutes(34) + TimeDelta::seconds(56);
        let hours = range(&history(None, None, None), late).expect("by the hour");
        let at = |t: &str| {
            DateTime::parse_from_rfc3339(t)
                .map(|t| t.with_timezone(&Utc))
                .expect("time")
        };
        assert_eq!(
            (hours.from, hours.to, hours.steps().len()),
            (at("2026-02-28T12:00:00Z"), at("2026-03-01T13:00:00Z"), 25)
        );
        let minutes = range(&history(None, None, Some("5m")), late).expect("by 5 minutes");
        assert_eq!(
            (minutes.from, minutes.to),
            (late - TimeDelta::days(1), late)
        );
        let year = range(
            &history(Some("2025-03-01T12:00:00Z"), None, Some("1d")),
            now,
        )
        .expect("a year by days");
        assert_eq!(year.steps().len(), 365);
        for (params, says) in [
            (
                history(Some("2026-03-02T00:00:00Z"), None, None),
                "from must be before to",
            ),
            (
                history(Some("yesterday"), None, None),
                "from: an RFC 3339 time",
            ),
            (
                history(None, Some("2026-13-01T00:00:00Z"), None),
                "to: an RFC 3339 time",
            ),
            (history(None, None, Some("30s")), "at least 1m"),
            (history(None, None, Some("soon")), "step: a duration"),
            (
                history(Some("2025-03-01T12:00:00Z"), None, Some("1h")),
                "step too small for the range: 8760 steps",
            ),
            (
                history(None, None, Some("10000000000000000000s")),
                "step: at most 400d",
            ),
            (history(None, None, Some("401days")), "step: at most 400d"),
            (
                history(
                    Some("0001-01-01T00:00:00Z"),
                    Some("9999-12-31T00:00:00Z"),
                    Some("400d"),
                ),
                "step too small for the range",
            ),
        ] {
            let refused = range(&params, now).expect_err(says);
            assert_eq!(refused.status, StatusCode::BAD_REQUEST);
            assert!(refused.message.contains(says), "{}", refused.message);
        }
    }

    #[test]
    fn list_and_incident_parameters_are_checked() {
        let params = |state: &str, page: &str| ListParams {
            state: Some(state.to_owned()),
            page: Some(page.to_owned()),
            ..ListParams::default()
        };
        let (query, _) = list_query(&params("down", "3")).expect("valid");
        assert_eq!((query.state, query.page), (Some(State::Down), 3));
        assert!(list_query(&params("sideways", "1")).is_err());
        assert!(list_query(&params("up", "0")).is_err());
        assert!(site_id("12x").is_err());
        let incidents = |limit: &str| IncidentParams {
            limit: Some(limit.to_owned()),
            ..IncidentParams::default()
        };
        assert_eq!(incident_query(&incidents("5")), Ok((None, false, 5)));
        assert!(incident_query(&incidents("0")).is_err());
        assert!(incident_query(&incidents("1001")).is_err());
    }
}
