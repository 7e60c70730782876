//! What the status service tells Prometheus: every metric it records, named
//! and described here.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;

const REQUESTS: &str = "sitewatch_status_requests_total";
const REQUEST_DURATION: &str = "sitewatch_status_request_duration_seconds";
const OVERVIEW_READS: &str = "sitewatch_status_overview_reads_total";
const OVERVIEW_READ_DURATION: &str = "sitewatch_status_overview_read_duration_seconds";
const OVERVIEW_READ_AT: &str = "sitewatch_status_overview_read_timestamp_seconds";

/// When the overview served was read (Unix seconds; 0: not yet), set again
/// at each scrape: reads may be further apart than a gauge not set stays on
/// /metrics, and a failing database must not make its age vanish.
static READ_AT: AtomicI64 = AtomicI64::new(0);

/// Describes every metric, once at start.
pub fn describe() {
    metrics::describe_counter!(
        REQUESTS,
        "Requests answered, by route (the path pattern, e.g. /sites/{id}; unmatched for any other path) and HTTP status code."
    );
    metrics::describe_histogram!(
        REQUEST_DURATION,
        metrics::Unit::Seconds,
        "How long each request took to answer, by route."
    );
    metrics::describe_counter!(
        OVERVIEW_READS,
        "Reads of every site's figures from PostgreSQL, by outcome: done or failed (the last read keeps being served)."
    );
    metrics::describe_histogram!(
        OVERVIEW_READ_DURATION,
        metrics::Unit::Seconds,
        "How long each read of every site's figures took, whatever its outcome."
    );
    metrics::describe_gauge!(
        OVERVIEW_READ_AT,
        metrics::Unit::Seconds,
        "When the figures served were read (Unix time); absent until the first read succeeds."
    );
}

/// Counts and times every request by its route: a middleware around the router.
pub async fn requests(request: Request, next: Next) -> Response {
    // The pattern, not the path: one series per route, not one per site.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let began = Instant::now();
    let response = next.run(request).await;
    let took = began.elapsed();
    metrics::counter!(REQUESTS, "route" => route.clone(), "code" => response.status().as_u16().to_string())
        .increment(1);
    metrics::histogram!(REQUEST_DURATION, "route" => route).record(took.as_secs_f64());
    response
}

/// One read of the overview: how it ended, how long it took, and when it
/// was taken if it was.
pub fn overview_read(read_at: Option<i64>, took: Duration) {
    let outcome = if read_at.is_some() { "done" } else { "failed" };
    metrics::counter!(OVERVIEW_READS, "outcome" => outcome).increment(1);
    metrics::histogram!(OVERVIEW_READ_DURATION).record(took.as_secs_f64());
    if let Some(at) = read_at {
        READ_AT.store(at, Ordering::Relaxed);
    }
    collect();
}

/// Sets the gauges, before a scrape.
pub fn collect() {
    let at = READ_AT.load(Ordering::Relaxed);
    if at > 0 {
        metrics::gauge!(OVERVIEW_READ_AT).set(at as f64);
    }
}
