//! Splits a probe's response time into phases by wrapping reqwest's DNS
//! resolver and connector.
//!
//! The client is shared by every probe, so the wrappers find the probe they
//! work for through a task-local [`PhaseLog`]: reqwest polls resolution,
//! connection and redirects inside the future of the request itself.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use tokio::time::Instant;

tokio::task_local! {
    static PHASES: Arc<PhaseLog>;
}

/// Phase durations and response facts gathered while one probe runs.
#[derive(Debug, Default)]
pub struct PhaseLog {
    inner: Mutex<Phases>,
}

/// What a [`PhaseLog`] holds; times add up over redirects.
#[derive(Debug, Default, Clone)]
pub struct Phases {
    /// Time spent resolving names.
    pub dns: Option<Duration>,
    /// Time spent connecting, TLS included, name resolution excluded.
    pub connect: Option<Duration>,
    /// Redirects followed.
    pub redirects: u32,
}

impl PhaseLog {
    /// Runs `fut` with this log as the current probe's.
    pub async fn scope<F: Future>(self: &Arc<Self>, fut: F) -> F::Output {
        PHASES.scope(Arc::clone(self), fut).await
    }

    /// A copy of what was recorded so far.
    pub fn snapshot(&self) -> Phases {
        self.inner.lock().map(|p| p.clone()).unwrap_or_default()
    }

    fn update(f: impl FnOnce(&mut Phases)) {
        // Outside a probe's scope (never in the monitor) there is nothing to record.
        let _ = PHASES.try_with(|log| {
            if let Ok(mut phases) = log.inner.lock() {
                f(&mut phases);
            }
        });
    }

    /// Counts one redirect for the current probe.
    pub fn count_redirect() {
        PhaseLog::update(|p| p.redirects += 1);
    }
}

fn add(slot: &mut Option<Duration>, d: Duration) {
    *slot = Some(slot.unwrap_or_default() + d);
}

/// A name that did not resolve; found in the error chain to classify `dns`.
#[derive(Debug, thiserror::Error)]
#[error("cannot resolve {host}: {reason}")]
pub struct DnsFailure {
    host: String,
    reason: String,
}

/// The system resolver (getaddrinfo on a blocking thread), timed.
#[derive(Debug, Clone, Copy, Default)]
pub struct TimedResolver;

impl Resolve for TimedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let start = Instant::now();
            let result = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map(|addrs| addrs.collect::<Vec<SocketAddr>>());
            let took = start.elapsed();
            PhaseLog::update(|p| add(&mut p.dns, took));
            match result {
                Ok(addrs) => {
                    if addrs.is_empty() {
                        Err(DnsFailure {
                            host,
                            reason: "no addresses".into(),
                        }
                        .into())
                    } else {
                        Ok(Box::new(addrs.into_iter()) as Addrs)
                    }
                }
                Err(err) => Err(DnsFailure {
                    host,
                    reason: err.to_string(),
                }
                .into()),
            }
        })
    }
}

/// A tower layer timing reqwest's connector: resolution, TCP and TLS.
#[derive(Debug, Clone, Copy, Default)]
pub struct TimedConnectLayer;

impl<S> tower::Layer<S> for TimedConnectLayer {
    type Service = TimedConnect<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TimedConnect { inner }
    }
}

/// The connector service of [`TimedConnectLayer`].
#[derive(Debug, Clone)]
pub struct TimedConnect<S> {
    inner: S,
}

impl<S, Req> tower_service::Service<Req> for TimedConnect<S>
where
    S: tower_service::Service<Req>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let start = Instant::now();
        let dns_before = PHASES.try_with(|log| log.snapshot().dns).ok().flatten();
        let connecting = self.inner.call(req);
        Box::pin(async move {
            let result = connecting.await;
            let took = start.elapsed();
            PhaseLog::update(|p| {
                // The connector resolves the name itself; that share is DNS, not connect.
                let dns_here = p
                    .dns
                    .unwrap_or_default()
                    .saturating_sub(dns_before.unwrap_or_default());
                add(&mut p.connect, took.saturating_sub(dns_here));
            });
            result
        })
    }
}
