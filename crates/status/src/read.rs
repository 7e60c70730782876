//! What the status service reads from PostgreSQL, each a statement the read
//! role may run: the overview of every site, one site, its history, its
//! incidents. Every statement is bounded by the site, the range or a limit.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::{GenericClient, Row};

/// A read that failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// No connection could be had from the pool.
    #[error("no connection to PostgreSQL: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The statement failed.
    #[error("{}", sitewatch_db::describe_error(.0))]
    Query(#[from] tokio_postgres::Error),
}

/// A site's up/down state, as the consumer keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Its last probes passed its checks.
    Up,
    /// It reached its failure threshold and has not recovered.
    Down,
    /// No probe of it has been stored yet.
    Unknown,
}

impl State {
    fn of(up: Option<bool>) -> State {
        match up {
            Some(true) => State::Up,
            Some(false) => State::Down,
            None => State::Unknown,
        }
    }

    /// The name used in URLs, JSON and CSS classes.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Down => "down",
            State::Unknown => "unknown",
        }
    }

    /// Parses the name `as_str` gives.
    pub fn parse(name: &str) -> Option<State> {
        [State::Up, State::Down, State::Unknown]
            .into_iter()
            .find(|s| s.as_str() == name)
    }
}

/// The last probe of a site.
#[derive(Debug, Clone, Serialize)]
pub struct LastProbe {
    /// When it started.
    pub at: DateTime<Utc>,
    /// The HTTP status, when a response came.
    pub status: Option<i16>,
    /// Its total time in milliseconds.
    pub latency_ms: f64,
    /// The kind of failure (`dns`, `connect`, `tls`, `timeout`, ...), when no response came.
    pub error_kind: Option<String>,
    /// What failed, in words.
    pub error: Option<String>,
    /// When the site's certificate expires.
    pub tls_expires_at: Option<DateTime<Utc>>,
    /// The first of the site's checks it failed, as `check: what happened` (none: it passed).
    pub failed: Option<String>,
}

/// One site as the overview shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Site {
    /// The site's id.
    pub id: i64,
    /// Its URL, any password in it masked.
    pub url: String,
    /// Whether the monitor probes it.
    pub enabled: bool,
    /// Up, down or unknown.
    pub state: State,
    /// Since when it is in that state.
    pub since: Option<DateTime<Utc>>,
    /// The incident open while it is down.
    pub open_incident: Option<i64>,
    /// Its last probe stored in the last two days.
    pub last: Option<LastProbe>,
    /// Uptime in percent over the last 24 hours, 7 days and 30 days (probes passed / probes).
    pub uptime_pct: Uptime,
    /// Latency over the last 24 hours.
    pub latency_24h: Latency,
}

/// Uptime in percent over the ranges the overview shows; absent without probes.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Uptime {
    /// The last 24 hours.
    #[serde(rename = "24h")]
    pub day: Option<f64>,
    /// The last 7 days.
    #[serde(rename = "7d")]
    pub week: Option<f64>,
    /// The last 30 days.
    #[serde(rename = "30d")]
    pub month: Option<f64>,
}

/// Latency over a range from hourly figures: the median of the hours'
/// medians and the worst hour's 95th percentile (percentiles of hours
/// cannot be combined exactly), and each hour's median for a chart.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Median of the hourly medians, in milliseconds.
    pub p50_ms: Option<f64>,
    /// The highest hourly 95th percentile, in milliseconds.
    pub p95_ms: Option<f64>,
    /// Each hour's median in milliseconds, oldest first (none: no response that hour).
    pub hourly_p50_ms: Vec<Option<f64>>,
}

/// Hours in the overview's latency chart.
pub const CHART_HOURS: usize = 24;

const SITES: &str = "
SELECT s.id, s.url, s.enabled, st.up, st.since, st.open_incident_id,
       l.started_at, l.status, l.total_us, l.error_kind, l.error_message, l.tls_expires_at,
       l.failed -> 0 ->> 'condition', l.failed -> 0 ->> 'message'
FROM status_sites s
LEFT JOIN site_state st ON st.website_id = s.id
LEFT JOIN LATERAL (
    SELECT m.started_at, m.status, m.total_us, m.error_kind, m.error_message, m.tls_expires_at, m.failed
    FROM metrics m
    WHERE m.website_id = s.id AND m.started_at > $1::timestamptz - interval '2 days'
    ORDER BY m.started_at DESC
    LIMIT 1
) l ON true
ORDER BY s.id";

const UPTIME: &str = "
SELECT website_id, uptime_pct::float8 FROM status_uptime($1::timestamptz - $2::text::interval, $1)";

/// Each site's hours of the last day: rolled up, and from the raw rows for
/// the hours not rolled up yet (a new installation's first hours), with the
/// rollups' percentiles (`percentile_disc`: a latency some probe had), so
/// that an hour shows the same figures before and after it is rolled up.
const HOURS: &str = "
WITH bounds AS (
    SELECT date_trunc('hour', $1::timestamptz, 'UTC') - interval '23 hours' AS lo,
           coalesce((SELECT rolled_until FROM rollup_progress), '-infinity') AS rolled
)
SELECT h.website_id, h.hour, h.latency_p50_us::float8, h.latency_p95_us::float8
FROM metrics_hourly h, bounds b
WHERE h.hour >= b.lo AND h.hour < b.rolled
UNION ALL
SELECT m.website_id, date_trunc('hour', m.started_at, 'UTC'),
       (percentile_disc(0.5) WITHIN GROUP (ORDER BY m.total_us) FILTER (WHERE m.status IS NOT NULL))::float8,
       (percentile_disc(0.95) WITHIN GROUP (ORDER BY m.total_us) FILTER (WHERE m.status IS NOT NULL))::float8
FROM metrics m, bounds b
WHERE m.started_at >= greatest(b.lo, b.rolled) AND m.started_at <= $1
GROUP BY 1, 2";

fn last_probe(row: &Row, at: usize) -> Result<Option<LastProbe>, tokio_postgres::Error> {
    let Some(started) = row.try_get::<_, Option<DateTime<Utc>>>(at)? else {
        return Ok(None);
    };
    let total_us: i64 = row.try_get(at + 2)?;
    Ok(Some(LastProbe {
        at: started,
        status: row.try_get(at + 1)?,
        latency_ms: total_us as f64 / 1000.0,
        error_kind: row.try_get(at + 3)?,
        error: row.try_get(at + 4)?,
        tls_expires_at: row.try_get(at + 5)?,
        failed: match (
            row.try_get::<_, Option<String>>(at + 6)?,
            row.try_get::<_, Option<String>>(at + 7)?,
        ) {
            (Some(check), Some(message)) => Some(format!("{check}: {message}")),
            (check, message) => check.or(message),
        },
    }))
}

/// Every site with its state, last probe, uptimes and latency, as of `now`.
pub async fn overview(
    client: &impl GenericClient,
    now: DateTime<Utc>,
) -> Result<Vec<Site>, ReadError> {
    let rows = client.query(SITES, &[&now]).await?;
    let mut sites = Vec::with_capacity(rows.len());
    let mut index = std::collections::HashMap::with_capacity(rows.len());
    for row in &rows {
        let id: i64 = row.try_get(0)?;
        index.insert(id, sites.len());
        sites.push(Site {
            id,
            url: row.try_get(1)?,
            enabled: row.try_get(2)?,
            state: State::of(row.try_get(3)?),
            since: row.try_get(4)?,
            open_incident: row.try_get(5)?,
            last: last_probe(row, 6)?,
            uptime_pct: Uptime::default(),
            latency_24h: Latency::default(),
        });
    }
    let statement = client.prepare(UPTIME).await?;
    for (span, pick) in [
        (
            "24 hours",
            (|u| &mut u.day) as fn(&mut Uptime) -> &mut Option<f64>,
        ),
        ("7 days", |u| &mut u.week),
        ("30 days", |u| &mut u.month),
    ] {
        for row in client.query(&statement, &[&now, &span]).await? {
            if let Some(&i) = index.get(&row.try_get::<_, i64>(0)?) {
                *pick(&mut sites[i].uptime_pct) = row.try_get(1)?;
            }
        }
    }
    let first_hour = now.timestamp() / 3600 - (CHART_HOURS as i64 - 1);
    let mut hours: Vec<Vec<(Option<f64>, Option<f64>)>> = vec![Vec::new(); sites.len()];
    for row in client.query(HOURS, &[&now]).await? {
        let Some(&i) = index.get(&row.try_get::<_, i64>(0)?) else {
            continue;
        };
        let hour: DateTime<Utc> = row.try_get(1)?;
        let slot = usize::try_from(hour.timestamp() / 3600 - first_hour).ok();
        let Some(slot) = slot.filter(|&s| s < CHART_HOURS) else {
            continue;
        };
        let cell = &mut hours[i];
        if cell.is_empty() {
            cell.resize(CHART_HOURS, (None, None));
        }
        cell[slot] = (row.try_get(2)?, row.try_get(3)?);
    }
    for (site, hours) in sites.iter_mut().zip(hours) {
        site.latency_24h = latency_of(&hours);
    }
    Ok(sites)
}

/// The latency summary of a day's hours (`(p50, p95)` in microseconds).
fn latency_of(hours: &[(Option<f64>, Option<f64>)]) -> Latency {
    let mut medians: Vec<f64> = hours.iter().filter_map(|h| h.0).collect();
    medians.sort_by(f64::total_cmp);
    let p50 = match medians.len() {
        0 => None,
        n if n % 2 == 1 => Some(medians[n / 2]),
        n => Some((medians[n / 2 - 1] + medians[n / 2]) / 2.0),
    };
    let p95 = hours.iter().filter_map(|h| h.1).max_by(f64::total_cmp);
    let ms = |us: f64| (us / 100.0).round() / 10.0;
    Latency {
        p50_ms: p50.map(ms),
        p95_ms: p95.map(ms),
        hourly_p50_ms: if hours.is_empty() {
            Vec::new()
        } else {
            hours.iter().map(|h| h.0.map(ms)).collect()
        },
    }
}

/// A site's configuration as the status page may show it: the check
/// options without any value that may be a credential.
#[derive(Debug, Clone, Serialize)]
pub struct Options {
    /// Seconds between probes (none: a site only seen in metrics).
    pub interval_seconds: Option<f64>,
    /// The regex looked for in the body.
    pub regex: Option<String>,
    /// Seconds a probe may take.
    pub timeout_seconds: Option<f64>,
    /// The check options: header names only, `true` for a body or basic auth.
    pub checks: serde_json::Value,
}

const OPTIONS: &str = "
SELECT interval_seconds, regex, timeout_seconds, checks FROM status_sites WHERE id = $1";

/// A site's options, or `None` for no such site.
pub async fn options(
    client: &tokio_postgres::Client,
    id: i64,
) -> Result<Option<Options>, ReadError> {
    let Some(row) = client.query_opt(OPTIONS, &[&id]).await? else {
        return Ok(None);
    };
    Ok(Some(Options {
        interval_seconds: row.try_get(0)?,
        regex: row.try_get(1)?,
        timeout_seconds: row.try_get(2)?,
        checks: row.try_get(3)?,
    }))
}

/// An outage of a site.
#[derive(Debug, Clone, Serialize)]
pub struct Incident {
    /// The incident's id.
    pub id: i64,
    /// The site's id.
    pub site_id: i64,
    /// When the probe that reached the failure threshold started.
    pub opened_at: DateTime<Utc>,
    /// When the probe that reached the success threshold started; none while open.
    pub resolved_at: Option<DateTime<Utc>>,
    /// Seconds from opening to resolution (or to now, while open).
    pub duration_seconds: f64,
    /// The check that failed.
    pub failed_condition: String,
    /// What the failing probe said.
    pub failed_message: String,
}

const INCIDENTS: &str = "
SELECT id, website_id, opened_at, resolved_at,
       extract(epoch FROM coalesce(resolved_at, $4) - opened_at)::float8,
       failed_condition, failed_message
FROM incidents
WHERE ($1::bigint IS NULL OR website_id = $1) AND (NOT $2 OR resolved_at IS NULL)
ORDER BY opened_at DESC, id DESC
LIMIT $3";

/// Incidents, newest first: of one site or all, open ones only or all.
pub async fn incidents(
    client: &tokio_postgres::Client,
    site: Option<i64>,
    open_only: bool,
    limit: i64,
    now: DateTime<Utc>,
) -> Result<Vec<Incident>, ReadError> {
    let rows = client
        .query(INCIDENTS, &[&site, &open_only, &limit, &now])
        .await?;
    rows.iter()
        .map(|row| {
            Ok(Incident {
                id: row.try_get(0)?,
                site_id: row.try_get(1)?,
                opened_at: row.try_get(2)?,
                resolved_at: row.try_get(3)?,
                duration_seconds: row.try_get(4)?,
                failed_condition: row.try_get(5)?,
                failed_message: row.try_get(6)?,
            })
        })
        .collect()
}

/// One step of a site's history.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// The step's start.
    pub at: DateTime<Utc>,
    /// Probes in the step.
    pub probes: i64,
    /// Of those, probes that passed the site's checks.
    pub up: i64,
    /// `up / probes` in percent.
    pub uptime_pct: Option<f64>,
    /// Mean time of the responses, in milliseconds.
    pub latency_avg_ms: Option<f64>,
    /// Fastest response, in milliseconds.
    pub latency_min_ms: Option<f64>,
    /// Median response time (of a step longer than an hour: the highest hourly median), in milliseconds.
    pub latency_p50_ms: Option<f64>,
    /// 95th percentile (of a step longer than an hour: the highest hourly one), in milliseconds.
    pub latency_p95_ms: Option<f64>,
    /// Slowest response, in milliseconds.
    pub latency_max_ms: Option<f64>,
}

/// Steps of whole hours read the hourly rollups, and the raw rows for the
/// hours not rolled up yet; each hour is one row of `hours`, then the hours
/// are gathered into steps.
const HISTORY_BY_HOURS: &str = "
WITH bounds AS (
    SELECT coalesce((SELECT rolled_until FROM rollup_progress), '-infinity') AS rolled
), hours AS (
    SELECT h.hour, h.probes::bigint AS probes, h.up::bigint AS up, h.responses::bigint AS responses,
           h.latency_sum_us::float8 AS sum_us, h.latency_min_us::float8 AS min_us,
           h.latency_p50_us::float8 AS p50_us, h.latency_p95_us::float8 AS p95_us,
           h.latency_max_us::float8 AS max_us
    FROM metrics_hourly h, bounds b
    WHERE h.website_id = $1 AND h.hour >= $2 AND h.hour < least($3, b.rolled)
    UNION ALL
    SELECT date_trunc('hour', m.started_at, 'UTC'), count(*),
           count(*) FILTER (WHERE coalesce(m.up, m.status < 400 AND m.error_kind IS NULL AND m.regex_matched IS NOT FALSE)),
           count(m.status), sum(m.total_us) FILTER (WHERE m.status IS NOT NULL),
           min(m.total_us) FILTER (WHERE m.status IS NOT NULL),
           (percentile_disc(0.5) WITHIN GROUP (ORDER BY m.total_us) FILTER (WHERE m.status IS NOT NULL))::float8,
           (percentile_disc(0.95) WITHIN GROUP (ORDER BY m.total_us) FILTER (WHERE m.status IS NOT NULL))::float8,
           max(m.total_us) FILTER (WHERE m.status IS NOT NULL)
    FROM metrics m, bounds b
    WHERE m.website_id = $1 AND m.started_at >= greatest($2, b.rolled) AND m.started_at < $3
    GROUP BY 1
)
SELECT date_bin($4::interval, hour, $2) AS at, sum(probes)::bigint, sum(up)::bigint,
       sum(sum_us) / nullif(sum(responses), 0), min(min_us), max(p50_us), max(p95_us), max(max_us)
FROM hours
GROUP BY 1
ORDER BY 1";

/// Steps shorter than an hour read the raw rows alone (which hold only the
/// retention window).
const HISTORY_RAW: &str = "
SELECT date_bin($4::interval, m.started_at, $2) AS at, count(*),
       count(*) FILTER (WHERE coalesce(m.up, m.status < 400 AND m.error_kind IS NULL AND m.regex_matched IS NOT FALSE)),
       avg(m.total_us) FILTER (WHERE m.status IS NOT NULL)::float8,
       min(m.total_us) FILTER (WHERE m.status IS NOT NULL)::float8,
       (percentile_disc(0.5) WITHIN GROUP (ORDER BY m.total_us) FILTER (WHERE m.status IS NOT NULL))::float8,
       (percentile_disc(0.95) WITHIN GROUP (ORDER BY m.total_us) FILTER (WHERE m.status IS NOT NULL))::float8,
       max(m.total_us) FILTER (WHERE m.status IS NOT NULL)::float8
FROM metrics m
WHERE m.website_id = $1 AND m.started_at >= $2 AND m.started_at < $3
GROUP BY 1
ORDER BY 1";

/// A site's history over `[from, to)` in steps of `step` (whole seconds);
/// steps without probes are left out.
pub async fn history(
    client: &tokio_postgres::Client,
    site: i64,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    step: std::time::Duration,
) -> Result<Vec<Point>, ReadError> {
    let sql = if step.as_secs() % 3600 == 0 {
        HISTORY_BY_HOURS
    } else {
        HISTORY_RAW
    };
    let interval = format!("{} seconds", step.as_secs());
    // The interval is sent as text: tokio-postgres has no interval type.
    let statement = client
        .prepare_typed(
            &sql.replace("$4::interval", "$4::text::interval"),
            &[
                tokio_postgres::types::Type::INT8,
                tokio_postgres::types::Type::TIMESTAMPTZ,
                tokio_postgres::types::Type::TIMESTAMPTZ,
                tokio_postgres::types::Type::TEXT,
            ],
        )
        .await?;
    let rows = client
        .query(&statement, &[&site, &from, &to, &interval])
        .await?;
    let ms = |us: Option<f64>| us.map(|us| (us / 100.0).round() / 10.0);
    rows.iter()
        .map(|row| {
            let probes: i64 = row.try_get(1)?;
            let up: i64 = row.try_get(2)?;
            Ok(Point {
                at: row.try_get(0)?,
                probes,
                up,
                uptime_pct: (probes > 0)
                    .then(|| (100_000.0 * up as f64 / probes as f64).round() / 1000.0),
                latency_avg_ms: ms(row.try_get(3)?),
                latency_min_ms: ms(row.try_get(4)?),
                latency_p50_ms: ms(row.try_get(5)?),
                latency_p95_ms: ms(row.try_get(6)?),
                latency_max_ms: ms(row.try_get(7)?),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_days_latency_is_the_median_of_its_hours_and_the_worst_hour() {
        let hours = [
            (Some(10_000.0), Some(20_000.0)),
            (None, None),
            (Some(30_000.0), Some(90_000.0)),
            (Some(20_000.0), Some(40_000.0)),
            (Some(40_000.0), Some(50_000.0)),
        ];
        let latency = latency_of(&hours);
        assert_eq!(latency.p50_ms, Some(25.0));
        assert_eq!(latency.p95_ms, Some(90.0));
        assert_eq!(
            latency.hourly_p50_ms,
            vec![Some(10.0), None, Some(30.0), Some(20.0), Some(40.0)]
        );
        let none = latency_of(&[]);
        assert_eq!((none.p50_ms, none.p95_ms), (None, None));
        assert!(none.hourly_p50_ms.is_empty());
    }
}
