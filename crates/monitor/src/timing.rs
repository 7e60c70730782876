//! Splits a probe's response time into phases by wrapping reqwest's DNS
//! resolver and connector.
//!
//! The client is shared by every probe, so the wrappers find the probe they
//! work for through a task-local [`PhaseLog`]: reqwest polls resolution,
//! connection and redirects inside the future of the request itself.

use std::future::Future;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use tokio::sync::Semaphore;
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

/// A redirect to a link-local address (a cloud metadata service), refused;
/// found in the error chain to classify `redirect`.
#[derive(Debug, thiserror::Error)]
#[error("redirect to {0}, a link-local address (such as a cloud metadata service), refused; the setting probe.allow_link_local_redirects allows it")]
pub struct LinkLocalRefused(pub String);

/// Whether `ip` is link-local (169.254.0.0/16, fe80::/10) or the IPv6
/// metadata address of a cloud (fd00:ec2::254): places a probe of a public
/// site has no business being sent to.
pub fn is_link_local(ip: IpAddr) -> bool {
    const EC2_METADATA: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => {
            v6 == EC2_METADATA
                || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_link_local())
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// The system resolver (getaddrinfo) on a bounded number of blocking
/// threads, timed. A lookup waits for a free thread within the probe's
/// timeout; a resolver that hangs holds at most the bound, so it cannot
/// starve every other site of threads. After a redirect, link-local
/// addresses are dropped unless allowed.
#[derive(Debug, Clone)]
pub struct TimedResolver {
    lookups: Arc<Semaphore>,
    allow_link_local_redirects: bool,
}

impl TimedResolver {
    /// At most `lookups` lookups at once.
    pub fn new(lookups: usize, allow_link_local_redirects: bool) -> TimedResolver {
        TimedResolver {
            lookups: Arc::new(Semaphore::new(lookups.max(1))),
            allow_link_local_redirects,
        }
    }
}

impl Resolve for TimedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let lookups = Arc::clone(&self.lookups);
        let allow_link_local = self.allow_link_local_redirects;
        Box::pin(async move {
            let start = Instant::now();
            let permit = lookups.acquire_owned().await;
            let lookup = {
                let host = host.clone();
                tokio::task::spawn_blocking(move || {
                    // Held until getaddrinfo returns, however long the probe waited.
                    let _permit = permit;
                    (host.as_str(), 0)
                        .to_socket_addrs()
                        .map(Iterator::collect::<Vec<SocketAddr>>)
                })
            };
            let result = lookup
                .await
                .unwrap_or_else(|err| Err(std::io::Error::other(err)));
            let took = start.elapsed();
            let mut redirected = false;
            PhaseLog::update(|p| {
                add(&mut p.dns, took);
                redirected = p.redirects > 0;
            });
            let failure = |reason: String| DnsFailure {
                host: host.clone(),
                reason,
            };
            let mut addrs = result.map_err(|err| failure(err.to_string()))?;
            if addrs.is_empty() {
                return Err(failure("no addresses".into()).into());
            }
            if redirected && !allow_link_local {
                addrs.retain(|addr| !is_link_local(addr.ip()));
                if addrs.is_empty() {
                    return Err(LinkLocalRefused(host).into());
                }
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
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
