//! The status service: every site's state, uptime, latency and incidents as
//! an HTML status page, a JSON API and SVG badges, read from PostgreSQL
//! through a role that can only read.
//!
//! `overview` reads every site once per refresh and serves pages from
//! memory; a site's page, its history and incidents are read when asked
//! (`read`), their parameters checked first (`api`); `page` and `svg` draw
//! the HTML and the charts and badges.

pub mod api;
pub mod measure;
pub mod overview;
pub mod page;
pub mod read;
pub mod settings;
pub mod svg;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use sitewatch_db::PgSettingsError;
use sitewatch_service::health::{self, Heartbeat};
use sitewatch_service::observe::{self, EndpointError, Readiness};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::api::{HistoryParams, IncidentParams, ListParams, Refusal};
use crate::overview::Overview;
use crate::page::Frame;
use crate::settings::Settings;

/// Why the service cannot run.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The database settings are unusable.
    #[error(transparent)]
    Postgres(#[from] PgSettingsError),
    /// The health endpoint cannot start.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The page's address cannot be listened on.
    #[error("cannot listen on {addr} (setting `listen`): {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server stopped with an error.
    #[error("the HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// The OpenAPI description of the JSON API, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// What every request shares.
#[derive(Debug, Clone)]
struct App {
    overview: Overview,
    pool: deadpool_postgres::Pool,
    title: Arc<str>,
    page_size: usize,
    refresh: Duration,
}

impl App {
    fn frame(&self) -> Frame<'_> {
        Frame::new(&self.title, self.refresh)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, Refusal> {
        self.pool.get().await.map_err(|err| {
            tracing::warn!(error = %err, "no connection to PostgreSQL for a request");
            Refusal::unavailable("the database cannot be reached; try again shortly")
        })
    }
}

/// A read that failed, logged, as the caller's answer.
fn unavailable(err: &read::ReadError) -> Refusal {
    tracing::warn!(error = %err, "a read for a request failed");
    Refusal::unavailable("the database could not answer; try again shortly")
}

/// A site's options, or a 404 for no such site.
async fn site_options(client: &tokio_postgres::Client, id: i64) -> Result<read::Options, Refusal> {
    read::options(client, id)
        .await
        .map_err(|e| unavailable(&e))?
        .ok_or_else(|| Refusal::no_site(id))
}

/// An API refusal as JSON: `{"error": "..."}`.
fn json_refusal(refusal: &Refusal) -> Response {
    (
        refusal.status,
        Json(serde_json::json!({ "error": refusal.message })),
    )
        .into_response()
}

fn html_refusal(app: &App, refusal: &Refusal) -> Response {
    (refusal.status, page::error(&app.frame(), &refusal.message)).into_response()
}

/// Why there is nothing to show yet; the database's own words stay in the
/// log and `/readyz`, which are the operator's, not every visitor's.
fn no_overview_yet(app: &App) -> Refusal {
    Refusal::unavailable(match app.overview.failure() {
        Some(_) => "no overview read yet: the database cannot be read (the service's log says why)",
        None => "no overview read yet; try again in a few seconds",
    })
}

/// A query string or path axum could not take apart, as a refusal.
fn malformed(rejection: &impl std::fmt::Display) -> Refusal {
    Refusal::bad(rejection.to_string())
}

async fn overview_page(
    State(app): State<App>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Response {
    let params = match params {
        Ok(Query(params)) => params,
        Err(rejection) => return html_refusal(&app, &malformed(&rejection)),
    };
    let Some(snapshot) = app.overview.snapshot() else {
        return html_refusal(&app, &no_overview_yet(&app));
    };
    let (query, _) = match api::list_query(&params) {
        Ok(q) => q,
        Err(refusal) => return html_refusal(&app, &refusal),
    };
    let page = overview::page(&snapshot, &query, app.page_size);
    page::overview(&app.frame(), &snapshot, &query, &page).into_response()
}

#[derive(Debug, Default, serde::Deserialize)]
struct RangeParam {
    range: Option<String>,
}

async fn site_page(
    State(app): State<App>,
    Path(id): Path<String>,
    params: Result<Query<RangeParam>, QueryRejection>,
) -> Response {
    let params = match params {
        Ok(Query(params)) => params,
        Err(rejection) => return html_refusal(&app, &malformed(&rejection)),
    };
    match site_page_of(&app, &id, params.range.as_deref()).await {
        Ok(page) => page,
        Err(refusal) => html_refusal(&app, &refusal),
    }
}

async fn site_page_of(app: &App, id: &str, range: Option<&str>) -> Result<Response, Refusal> {
    let id = api::site_id(id)?;
    let name = range.unwrap_or("24h");
    let &(name, length, step) = page::RANGES
        .iter()
        .find(|(n, _, _)| *n == name)
        .ok_or_else(|| Refusal::bad("range: 24h, 7d, 30d or 1y"))?;
    let now = Utc::now();
    let step_secs = i64::try_from(step).unwrap_or(i64::MAX);
    let end = (now.timestamp().div_euclid(step_secs) + 1) * step_secs;
    let to = DateTime::from_timestamp(end, 0).unwrap_or(now);
    let range = api::Range {
        from: to - TimeDelta::seconds(i64::try_from(length).unwrap_or(i64::MAX)),
        to,
        step: Duration::from_secs(step),
    };
    let client = app.client().await?;
    let options = site_options(&client, id).await?;
    let history = read::history(&client, id, range.from, range.to, range.step)
        .await
        .map_err(|e| unavailable(&e))?;
    let incidents = read::incidents(&client, Some(id), false, 50, now)
        .await
        .map_err(|e| unavailable(&e))?;
    let snapshot = app.overview.snapshot();
    let site = snapshot
        .as_deref()
        .and_then(|s| s.sites.iter().find(|site| site.id == id));
    let page = page::SitePage {
        site,
        id,
        options: &options,
        history: &history,
        range: name,
        steps: range.steps(),
        incidents: &incidents,
        now,
    };
    Ok(page::site(&app.frame(), &page).into_response())
}

/// A page of the site list.
#[derive(Debug, Serialize)]
struct SitesAnswer<'a> {
    taken_at: DateTime<Utc>,
    page: usize,
    pages: usize,
    per_page: usize,
    matching: usize,
    counts: Counts,
    sites: Vec<&'a read::Site>,
}

/// Sites in each state.
#[derive(Debug, Serialize)]
struct Counts {
    up: usize,
    down: usize,
    unknown: usize,
}

async fn api_sites(
    State(app): State<App>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Response {
    let params = match params {
        Ok(Query(params)) => params,
        Err(rejection) => return json_refusal(&malformed(&rejection)),
    };
    let Some(snapshot) = app.overview.snapshot() else {
        return json_refusal(&no_overview_yet(&app));
    };
    let (query, per_page) = match api::list_query(&params) {
        Ok(q) => q,
        Err(refusal) => return json_refusal(&refusal),
    };
    let per_page = per_page.unwrap_or(app.page_size).min(app.page_size);
    let page = overview::page(&snapshot, &query, per_page);
    let [up, down, unknown] = page.counts;
    Json(SitesAnswer {
        taken_at: snapshot.taken_at,
        page: query.page,
        pages: page.pages,
        per_page,
        matching: page.matching,
        counts: Counts { up, down, unknown },
        sites: page.sites,
    })
    .into_response()
}

/// One site: as of the last overview (none when newer), and its options.
#[derive(Debug, Serialize)]
struct SiteAnswer<'a> {
    id: i64,
    taken_at: Option<DateTime<Utc>>,
    site: Option<&'a read::Site>,
    options: read::Options,
}

async fn api_site(State(app): State<App>, Path(id): Path<String>) -> Response {
    let answer = async {
        let id = api::site_id(&id)?;
        let client = app.client().await?;
        let options = site_options(&client, id).await?;
        let snapshot = app.overview.snapshot();
        let site = snapshot
            .as_deref()
            .and_then(|s| s.sites.iter().find(|site| site.id == id));
        Ok::<_, Refusal>(
            Json(SiteAnswer {
                id,
                taken_at: snapshot.as_deref().map(|s| s.taken_at),
                site,
                options,
            })
            .into_response(),
        )
    }
    .await;
    answer.unwrap_or_else(|refusal| json_refusal(&refusal))
}

/// A site's history.
#[derive(Debug, Serialize)]
struct HistoryAnswer {
    site_id: i64,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    step_seconds: u64,
    points: Vec<read::Point>,
}

async fn api_history(
    State(app): State<App>,
    Path(id): Path<String>,
    params: Result<Query<HistoryParams>, QueryRejection>,
) -> Response {
    let answer = async {
        let Query(params) = params.map_err(|r| malformed(&r))?;
        let id = api::site_id(&id)?;
        let range = api::range(&params, Utc::now())?;
        let client = app.client().await?;
        let _ = site_options(&client, id).await?;
        let points = read::history(&client, id, range.from, range.to, range.step)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(Json(HistoryAnswer {
            site_id: id,
            from: range.from,
            to: range.to,
            step_seconds: range.step.as_secs(),
            points,
        })
        .into_response())
    };
    answer
        .await
        .unwrap_or_else(|refusal| json_refusal(&refusal))
}

/// Incidents, newest first.
#[derive(Debug, Serialize)]
struct IncidentsAnswer {
    incidents: Vec<read::Incident>,
}

async fn api_incidents(
    State(app): State<App>,
    params: Result<Query<IncidentParams>, QueryRejection>,
) -> Response {
    let answer = async {
        let Query(params) = params.map_err(|r| malformed(&r))?;
        let (site, open, limit) = api::incident_query(&params)?;
        let client = app.client().await?;
        if let Some(id) = site {
            let _ = site_options(&client, id).await?;
        }
        let incidents = read::incidents(&client, site, open, limit, Utc::now())
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(Json(IncidentsAnswer { incidents }).into_response())
    };
    answer
        .await
        .unwrap_or_else(|refusal| json_refusal(&refusal))
}

/// An SVG answer, cached by browsers and proxies for one refresh.
fn svg_answer(app: &App, markup: maud::Markup) -> Response {
    let max_age = format!("max-age={}", app.refresh.as_secs().max(1));
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml".to_owned()),
            (header::CACHE_CONTROL, max_age),
        ],
        markup.into_string(),
    )
        .into_response()
}

/// A badge that says what is wrong, not kept by caches: the site may
/// appear, or the database come back, at the next refresh.
fn badge_refusal(app: &App, refusal: &Refusal) -> Response {
    let mut answer = svg_answer(app, svg::badge("status", &refusal.message, "#9f9f9f"));
    *answer.status_mut() = refusal.status;
    let _ = answer
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    answer
}

async fn state_badge(State(app): State<App>, Path((id, file)): Path<(String, String)>) -> Response {
    if file != "state.svg" {
        return badge_refusal(&app, &Refusal::bad("state.svg or uptime/{24h,7d,30d}.svg"));
    }
    let id = match api::site_id(&id) {
        Ok(id) => id,
        Err(refusal) => return badge_refusal(&app, &refusal),
    };
    let Some(snapshot) = app.overview.snapshot() else {
        return badge_refusal(&app, &no_overview_yet(&app));
    };
    let Some(site) = snapshot.sites.iter().find(|s| s.id == id) else {
        return badge_refusal(&app, &Refusal::no_site(id));
    };
    let colour = match site.state {
        read::State::Up => "#2da44e",
        read::State::Down => "#e05d44",
        read::State::Unknown => "#9f9f9f",
    };
    svg_answer(&app, svg::badge("status", site.state.as_str(), colour))
}

async fn uptime_badge(
    State(app): State<App>,
    Path((id, file)): Path<(String, String)>,
) -> Response {
    let id = match api::site_id(&id) {
        Ok(id) => id,
        Err(refusal) => return badge_refusal(&app, &refusal),
    };
    let range = file.strip_suffix(".svg").unwrap_or(&file);
    let pick: fn(&read::Uptime) -> Option<f64> = match range {
        "24h" => |u| u.day,
        "7d" => |u| u.week,
        "30d" => |u| u.month,
        _ => return badge_refusal(&app, &Refusal::bad("uptime/24h.svg, 7d.svg or 30d.svg")),
    };
    let Some(snapshot) = app.overview.snapshot() else {
        return badge_refusal(&app, &no_overview_yet(&app));
    };
    let Some(site) = snapshot.sites.iter().find(|s| s.id == id) else {
        return badge_refusal(&app, &Refusal::no_site(id));
    };
    let pct = pick(&site.uptime_pct);
    let value = pct.map_or_else(|| "no data".to_owned(), |p| format!("{p:.2}%"));
    svg_answer(
        &app,
        svg::badge(&format!("uptime {range}"), &value, svg::uptime_colour(pct)),
    )
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn not_found(State(app): State<App>, uri: axum::http::Uri) -> Response {
    let refusal = Refusal {
        status: StatusCode::NOT_FOUND,
        message: "no such page".to_owned(),
    };
    if uri.path().starts_with("/api/") {
        json_refusal(&refusal)
    } else {
        html_refusal(&app, &refusal)
    }
}

/// What the browser may do with the pages: no script at all, styles inline,
/// images (badges) from here, forms sent here.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The time a request may take, and what its refusal page is drawn with.
#[derive(Debug, Clone)]
struct Bound {
    timeout: Duration,
    title: Arc<str>,
    refresh: Duration,
}

/// Answers 503 with the reason, as JSON for the API and as a page for the
/// rest, when the request takes longer than its bound; the handler (and its
/// statement, which the connection's statement timeout also ends) is dropped.
async fn bounded(
    State(bound): State<Bound>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let api = request.uri().path().starts_with("/api/");
    let path = request.uri().path().to_owned();
    match tokio::time::timeout(bound.timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_elapsed) => {
            tracing::warn!(%path, timeout = ?bound.timeout, "a request took longer than request_timeout and was answered 503: PostgreSQL slow (its log, pg_stat_activity), or request_timeout too short for the ranges asked for");
            let refusal = Refusal::unavailable(format!(
                "the answer took longer than {} (request_timeout); try a shorter range or a larger step",
                humantime::format_duration(bound.timeout)
            ));
            if api {
                json_refusal(&refusal)
            } else {
                let frame = Frame::new(&bound.title, bound.refresh);
                (refusal.status, page::error(&frame, &refusal.message)).into_response()
            }
        }
    }
}

fn router(app: App, request_timeout: Duration) -> Router {
    Router::new()
        .route("/", get(overview_page))
        .route("/sites/{id}", get(site_page))
        .route("/api/sites", get(api_sites))
        .route("/api/sites/{id}", get(api_site))
        .route("/api/sites/{id}/history", get(api_history))
        .route("/api/incidents", get(api_incidents))
        .route("/badge/{id}/{file}", get(state_badge))
        .route("/badge/{id}/uptime/{file}", get(uptime_badge))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .with_state(app.clone())
        .layer(axum::middleware::from_fn_with_state(
            Bound {
                timeout: request_timeout,
                title: app.title,
                refresh: app.refresh,
            },
            bounded,
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        // Outermost: a request cut short by the time bound counts as its 503.
        .layer(axum::middleware::from_fn(measure::requests))
}

/// The service bound to its address, not serving yet.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    settings: Settings,
}

impl Server {
    /// Binds `settings.listen`, so that a port in use stops the service at once.
    pub async fn bind(settings: Settings) -> Result<Server, StatusError> {
        let listener = TcpListener::bind(&settings.listen)
            .await
            .map_err(|source| StatusError::Bind {
                addr: settings.listen.clone(),
                source,
            })?;
        Ok(Server { listener, settings })
    }

    /// The address it listens on (the port chosen, for port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `shutdown`, then answers the requests under way and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StatusError> {
        let settings = self.settings;
        let serving = observe::start(settings.health.http_listen.as_deref()).await?;
        measure::describe();
        // A request's statements end with the request: none goes on holding
        // a pooled connection after its caller was answered 503. The
        // overview's read, which no request waits for, keeps the setting.
        let overview_timeout = settings.postgres.statement_timeout.get();
        let mut postgres = settings.postgres.clone();
        let request_timeout = settings.request_timeout.get();
        if overview_timeout.is_zero() || overview_timeout > request_timeout {
            postgres.statement_timeout = settings.request_timeout;
        }
        let pool = postgres.read_only_pool(&settings.read_role)?;
        let refresh = settings.refresh.get();
        let app = App {
            overview: Overview::new(overview_timeout),
            pool: pool.clone(),
            title: Arc::from(settings.title.as_str()),
            page_size: settings.page_size,
            refresh,
        };
        let readiness: Readiness = {
            let overview = app.overview.clone();
            // Not read for `unhealthy_after` past a refresh: the page shows
            // figures too old to trust.
            let stale = TimeDelta::from_std(refresh + settings.health.unhealthy_after.get())
                .unwrap_or(TimeDelta::MAX);
            Arc::new(move || {
                let overview = overview.clone();
                Box::pin(async move {
                    match overview.snapshot() {
                        Some(s) if Utc::now() - s.taken_at <= stale => Ok(()),
                        Some(s) => Err(format!(
                            "the overview was last read at {}: {}",
                            s.taken_at,
                            overview.failure().unwrap_or_default()
                        )),
                        None => Err(format!(
                            "no overview read yet{}",
                            overview
                                .failure()
                                .map(|why| format!(": {why}"))
                                .unwrap_or_default()
                        )),
                    }
                })
            })
        };
        serving
            .status
            .set(Arc::clone(&readiness), Arc::new(measure::collect));
        let beat = settings.health.health_file.clone().map(|file| {
            tokio::spawn(health::beat_while(
                Heartbeat::new(file),
                shutdown.clone(),
                move || readiness(),
            ))
        });
        let refresher = tokio::spawn(app.overview.clone().run(
            pool,
            refresh,
            shutdown.child_token(),
        ));
        if let Ok(addr) = self.listener.local_addr() {
            tracing::info!(%addr, postgres = %settings.postgres.describe(), role = %settings.read_role, "serving the status page");
        }
        let served = axum::serve(self.listener, router(app, settings.request_timeout.get()))
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .await
            .map_err(StatusError::Serve);
        refresher.abort();
        if let Some(beat) = beat {
            beat.abort();
        }
        served
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request that outlasts its bound gets the reason, as JSON on the
    /// API (the OpenAPI file's Error) and as a page elsewhere.
    #[tokio::test]
    async fn a_request_past_its_bound_is_refused_with_the_reason() {
        let slow = || async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            "never"
        };
        let router = Router::new()
            .route("/api/slow", get(slow))
            .route("/slow", get(slow))
            .layer(axum::middleware::from_fn_with_state(
                Bound {
                    timeout: Duration::from_millis(100),
                    title: Arc::from("Status"),
                    refresh: Duration::from_secs(30),
                },
                bounded,
            ));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let server = tokio::spawn(async move { axum::serve(listener, router).await });
        let _ = rustls::crypto::ring::default_provider().install_default();
        for (path, content_type) in [("/api/slow", "application/json"), ("/slow", "text/html")] {
            let response = reqwest::get(format!("http://{addr}{path}"))
                .await
                .expect("an answer");
            assert_eq!(response.status().as_u16(), 503, "{path}");
            let shown = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            assert!(shown.starts_with(content_type), "{path}: {shown}");
            let body = response.text().await.expect("a body");
            assert!(
                body.contains("longer than 100ms (request_timeout)"),
                "{path}: {body}"
            );
            if path.starts_with("/api/") {
                // The OpenAPI file's Error: one string, nothing else.
                let error: serde_json::Value = serde_json::from_str(&body).expect("JSON");
                assert!(error["error"].is_string(), "{body}");
                assert_eq!(
                    error.as_object().map(serde_json::Map::len),
                    Some(1),
                    "{body}"
                );
            }
        }
        server.abort();
    }
}
