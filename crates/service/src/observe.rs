//! The HTTP endpoint that operators and Prometheus watch a service through:
//! `/metrics` (the Prometheus text format), `/healthz` (the process answers)
//! and `/readyz` (ready means making progress: the same verdict the health
//! file holds, judged afresh for each request).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Ready, or why not.
pub type Verdict = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// How a service judges whether it is ready: called for each health beat
/// and each `/readyz`, so that both say the same.
pub type Readiness = Arc<dyn Fn() -> Verdict + Send + Sync>;

/// Publishes the counters a service keeps as plain atomics, called before
/// each scrape: the hot paths keep one relaxed add and `/metrics` still
/// shows the current figures.
pub type Collect = Arc<dyn Fn() + Send + Sync>;

/// What the endpoint reports, set once the service knows how to judge
/// itself: until then `/readyz` says "starting" and `/metrics` shows only
/// what was recorded so far. The endpoint answers from the start, so a
/// service still waiting for its database is seen alive and not ready,
/// not silent.
#[derive(Clone, Default)]
pub struct Status {
    judged: Arc<RwLock<Option<(Readiness, Collect)>>>,
    /// The last verdict of the judge that runs beside the endpoint, for
    /// `sitewatch_ready`: a scrape reads it rather than wait on PostgreSQL
    /// or Kafka, which would fail the scrape just when the gauge matters.
    ready: Arc<AtomicBool>,
}

impl std::fmt::Debug for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Status").finish_non_exhaustive()
    }
}

impl Status {
    /// From now on, readiness is `readiness` and each scrape calls `collect` first.
    pub fn set(&self, readiness: Readiness, collect: Collect) {
        *self.judged.write().unwrap_or_else(PoisonError::into_inner) = Some((readiness, collect));
    }

    fn judged(&self) -> Option<(Readiness, Collect)> {
        self.judged
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// How long `/readyz` waits for the verdict before it answers not ready.
const VERDICT_WITHIN: Duration = Duration::from_secs(5);

/// What the text format is served as.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why the endpoint cannot start: the `http_listen` setting is wrong.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// Not an address.
    #[error("http_listen: {given:?} is not an address; give IP:PORT, e.g. 0.0.0.0:9464")]
    Address {
        /// What the setting said.
        given: String,
    },
    /// The address cannot be listened on (in use, not this host's).
    #[error("http_listen: cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Bucket bounds of every histogram in seconds: from a fast local answer
/// (lateness, a DNS lookup) to a probe's longest timeout.
const SECONDS_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Bucket bounds of histograms that count things (rows in a batch).
const COUNT_BUCKETS: [f64; 10] = [
    1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 50000.0,
];

/// A gauge not set for this long leaves `/metrics`: gauges are set at each
/// scrape or from librdkafka's statistics, so only a gauge about something
/// gone (a partition revoked, a broker removed) ages out.
const GAUGE_IDLE: Duration = Duration::from_secs(60);

/// How often recorded histogram samples are folded into their buckets, so
/// that a service nobody scrapes does not hold every sample.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The process's Prometheus recorder, installed on first use: the `metrics`
/// macros anywhere in the process record into it.
pub fn recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Histograms, not summaries: buckets add up across replicas, so
            // a p99 over every consumer is one PromQL expression.
            let builder = PrometheusBuilder::new()
                .idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE))
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_rows".into()), &COUNT_BUCKETS)
                });
            let recorder = match builder {
                Ok(builder) => builder.build_recorder(),
                // Only empty bucket lists are refused, and these are constants.
                Err(err) => {
                    tracing::error!(error = %err, "histogram buckets refused; histograms become summaries");
                    PrometheusBuilder::new().build_recorder()
                }
            };
            let handle = recorder.handle();
            // Another recorder already installed (a test harness's) keeps
            // its place; this handle then renders what this one records.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::debug!("a metrics recorder was installed already");
            }
            handle
        })
        .clone()
}

/// The endpoint of a run, while it lasts: what it reports, and a guard that
/// stops it when the run ends (dropped).
#[derive(Debug)]
pub struct Serving {
    /// What the endpoint reports; [`Status::set`] once the service can judge itself.
    pub status: Status,
    _stop: Option<tokio_util::sync::DropGuard>,
}

/// Binds and serves the endpoint when `listen` is set (the `http_listen`
/// setting); without it, a [`Serving`] whose status nobody reads.
pub async fn start(listen: Option<&str>) -> Result<Serving, EndpointError> {
    let status = Status::default();
    let Some(listen) = listen else {
        return Ok(Serving {
            status,
            _stop: None,
        });
    };
    let endpoint = Endpoint::bind(listen).await?;
    let stop = CancellationToken::new();
    drop(endpoint.serve(status.clone(), stop.clone()));
    Ok(Serving {
        status,
        _stop: Some(stop.drop_guard()),
    })
}

/// The endpoint's socket, bound at start so that a bad address stops the
/// service before it does anything else.
#[derive(Debug)]
pub struct Endpoint {
    listener: TcpListener,
}

impl Endpoint {
    /// Listens on `listen` (IP:PORT).
    pub async fn bind(listen: &str) -> Result<Endpoint, EndpointError> {
        let addr: SocketAddr = listen.trim().parse().map_err(|_| EndpointError::Address {
            given: listen.to_owned(),
        })?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| EndpointError::Bind { addr, source })?;
        Ok(Endpoint { listener })
    }

    /// The address it listens on (the port chosen, for port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Answers requests from `status` until `stop`.
    pub fn serve(self, status: Status, stop: CancellationToken) -> JoinHandle<()> {
        let handle = recorder();
        if let Some(addr) = self.local_addr() {
            tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
        }
        let upkeep = handle.clone();
        let upkeep_stop = stop.clone();
        drop(tokio::spawn(async move {
            let mut tick = tokio::time::interval(UPKEEP_EVERY);
            loop {
                tokio::select! {
                    _ = tick.tick() => upkeep.run_upkeep(),
                    () = upkeep_stop.cancelled() => return,
                }
            }
        }));
        drop(tokio::spawn(judge(status.clone(), stop.clone())));
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    accepted = self.listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(err) => {
                            tracing::warn!(error = %err, "cannot accept a connection on the HTTP endpoint");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                    () = stop.cancelled() => return,
                };
                let (status, handle) = (status.clone(), handle.clone());
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let (judged, handle) = (status.judged(), handle.clone());
                    let ready = Arc::clone(&status.ready);
                    async move { Ok::<_, Infallible>(answer(&request, judged, &ready, &handle).await) }
                });
                let stop = stop.clone();
                drop(tokio::spawn(async move {
                    let connection = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = connection => {}
                        () = stop.cancelled() => {}
                    }
                }));
            }
        })
    }
}

/// The response to one request.
async fn answer(
    request: &Request<Incoming>,
    judged: Option<(Readiness, Collect)>,
    last_ready: &AtomicBool,
    handle: &PrometheusHandle,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".to_owned());
    }
    match request.uri().path() {
        "/metrics" => {
            if let Some((_, collect)) = &judged {
                collect();
            }
            // Prometheus cannot ask /readyz itself; the verdict as a gauge
            // lets an alert say which replica is not ready and for how long.
            metrics::describe_gauge!(
                "sitewatch_ready",
                "1 when the service is ready (the verdict /readyz gives, judged every 10 s), 0 when not."
            );
            let ready = judged.is_some() && last_ready.load(Ordering::Relaxed);
            metrics::gauge!("sitewatch_ready").set(if ready { 1.0 } else { 0.0 });
            let mut response = text(StatusCode::OK, handle.render());
            let _ = response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT));
            response
        }
        "/healthz" => text(StatusCode::OK, "alive\n".to_owned()),
        "/readyz" => {
            let Some((readiness, _)) = judged else {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: starting\n".to_owned(),
                );
            };
            ready(readiness).await
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /healthz or /readyz\n".to_owned(),
        ),
    }
}

/// How often the verdict behind `sitewatch_ready` is judged: the health
/// file's beat.
const JUDGE_EVERY: Duration = crate::health::BEAT_EVERY;

/// Judges readiness every [`JUDGE_EVERY`] once `status` can, until `stop`,
/// keeping the last verdict for `/metrics`.
async fn judge(status: Status, stop: CancellationToken) {
    loop {
        // Until the service can judge itself, look again soon, so that the
        // first verdict does not wait a whole beat.
        let next = match status.judged() {
            Some((readiness, _)) => {
                let ready = tokio::select! {
                    verdict = verdict(readiness) => verdict.is_ok(),
                    () = stop.cancelled() => return,
                };
                status.ready.store(ready, Ordering::Relaxed);
                JUDGE_EVERY
            }
            None => Duration::from_millis(200),
        };
        tokio::select! {
            () = tokio::time::sleep(next) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// The verdict, within [`VERDICT_WITHIN`].
async fn verdict(readiness: Readiness) -> Result<(), String> {
    match tokio::time::timeout(VERDICT_WITHIN, readiness()).await {
        Ok(verdict) => verdict,
        Err(_) => Err(format!(
            "the readiness check took longer than {VERDICT_WITHIN:?}"
        )),
    }
}

/// `/readyz`: the verdict, as a status and a line of text.
async fn ready(readiness: Readiness) -> Response<Full<Bytes>> {
    match verdict(readiness).await {
        Ok(()) => text(StatusCode::OK, "ready\n".to_owned()),
        Err(why) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut reply = String::new();
        let _ = stream.read_to_string(&mut reply).await.expect("read");
        let status = reply
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status");
        let body = reply.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
        (status, body.unwrap_or_default())
    }

    fn ready_if(ready: bool) -> Readiness {
        Arc::new(move || {
            Box::pin(async move {
                if ready {
                    Ok(())
                } else {
                    Err("PostgreSQL does not answer".to_owned())
                }
            })
        })
    }

    #[tokio::test]
    async fn the_three_paths_answer_and_readyz_says_why_not() {
        let stop = CancellationToken::new();
        let endpoint = Endpoint::bind("127.0.0.1:0").await.expect("bind");
        let addr = endpoint.local_addr().expect("addr");
        let collect: Collect = Arc::new(|| {
            metrics::counter!("sitewatch_test_collected_total").absolute(7);
        });
        let status = Status::default();
        let _served = endpoint.serve(status.clone(), stop.clone());
        assert_eq!(get(addr, "/healthz").await.0, 200);
        let (status_code, body) = get(addr, "/readyz").await;
        assert_eq!((status_code, body.as_str()), (503, "not ready: starting\n"));
        status.set(ready_if(false), collect);
        let (status, body) = get(addr, "/readyz").await;
        assert_eq!(status, 503);
        assert!(body.contains("PostgreSQL does not answer"), "{body}");
        let (status, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(body.contains("sitewatch_test_collected_total 7"), "{body}");
        assert_eq!(get(addr, "/nope").await.0, 404);
        stop.cancel();
    }

    #[tokio::test]
    async fn metrics_show_the_last_verdict_without_waiting_for_a_slow_one() {
        let stop = CancellationToken::new();
        let endpoint = Endpoint::bind("127.0.0.1:0").await.expect("bind");
        let addr = endpoint.local_addr().expect("addr");
        let status = Status::default();
        let _served = endpoint.serve(status.clone(), stop.clone());
        let nothing: Collect = Arc::new(|| {});
        status.set(ready_if(true), Arc::clone(&nothing));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (_, body) = get(addr, "/metrics").await;
            if body.contains("sitewatch_ready 1") {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never ready:\n{body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A dependency that hangs: /readyz waits its bound, /metrics does not.
        let hangs: Readiness = Arc::new(|| {
            Box::pin(async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(())
            })
        });
        status.set(hangs, nothing);
        let scraped = tokio::time::timeout(Duration::from_secs(2), get(addr, "/metrics")).await;
        let (code, body) = scraped.expect("a scrape does not wait for the verdict");
        assert_eq!(code, 200);
        assert!(body.contains("sitewatch_ready"), "{body}");
        stop.cancel();
    }

    #[tokio::test]
    async fn a_bad_or_taken_address_names_the_setting() {
        let err = Endpoint::bind("localhost")
            .await
            .expect_err("not an address");
        assert!(err.to_string().starts_with("http_listen:"), "{err}");
        let taken = Endpoint::bind("127.0.0.1:0").await.expect("bind");
        let addr = taken.local_addr().expect("addr").to_string();
        let err = Endpoint::bind(&addr).await.expect_err("in use");
        assert!(
            err.to_string().starts_with("http_listen: cannot listen on"),
            "{err}"
        );
    }
}
