//! Local websites on loopback with set behaviours (fast, slow, failing, redirecting, huge,
//! gzip, binary, resetting, and hostile: a gzip bomb, a body that drips forever, a flood of
//! headers; plain HTTP, CA-signed TLS and self-signed TLS) for the monitor's integration
//! tests, the demo and benchmarks; and a webhook receiver ([`webhook`]) for the
//! consumer's alerting tests.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sitewatch_sitefarm::FarmError> {
//! let farm = sitewatch_sitefarm::SiteFarm::start(Default::default()).await?;
//! let url = farm.url("/status/503");
//! # drop(url);
//! farm.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod body;
mod routes;
mod server;
mod tls;
pub mod webhook;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use routes::METADATA_URL;
pub use tls::LEAF_NOT_AFTER_UNIX_SECS;

/// Where the farm listens; every listener defaults to `127.0.0.1:0` (a free port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FarmOptions {
    /// Plain HTTP listener.
    pub http: SocketAddr,
    /// TLS listener whose leaf certificate the farm's CA signed.
    pub https: SocketAddr,
    /// TLS listener whose leaf certificate is self-signed.
    pub self_signed: SocketAddr,
}

impl Default for FarmOptions {
    fn default() -> Self {
        let any_port = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        Self {
            http: any_port,
            https: any_port,
            self_signed: any_port,
        }
    }
}

/// Why the farm could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FarmError {
    /// A listener could not be bound (address in use, permission denied, ...).
    #[error("cannot listen for {listener} on {addr}: {source}")]
    Bind {
        /// Which listener: `http`, `https` or `self-signed`.
        listener: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// Generating a key or certificate failed.
    #[error("cannot generate the farm's certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the generated key or certificate.
    #[error("cannot build the TLS server settings: {0}")]
    Tls(#[from] rustls::Error),
    /// Compressing the `/gzip` body failed.
    #[error("cannot compress the /gzip body: {0}")]
    Gzip(#[source] io::Error),
}

/// A running farm: three listeners serving the same routes until shutdown or drop.
#[derive(Debug)]
pub struct SiteFarm {
    http_addr: SocketAddr,
    https_addr: SocketAddr,
    self_signed_addr: SocketAddr,
    ca_pem: String,
    counts: Arc<routes::RequestCounts>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl SiteFarm {
    /// Generates the certificates, binds the listeners and spawns their tasks on the current runtime.
    pub async fn start(options: FarmOptions) -> Result<Self, FarmError> {
        let certificates = tls::generate()?;
        let counts = Arc::new(routes::RequestCounts::default());
        let site = routes::Site::new(Arc::clone(&counts)).map_err(FarmError::Gzip)?;
        let (http, http_addr) = listen("http", options.http)?;
        let (https, https_addr) = listen("https", options.https)?;
        let (self_signed, self_signed_addr) = listen("self-signed", options.self_signed)?;

        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let server = server::Server::new(site, shutdown.clone(), tasks.clone());
        let https_tls = TlsAcceptor::from(certificates.ca_signed);
        let self_signed_tls = TlsAcceptor::from(certificates.self_signed);
        drop(tasks.spawn(server.clone().accept_loop("http", http, None)));
        drop(tasks.spawn(server.clone().accept_loop("https", https, Some(https_tls))));
        drop(tasks.spawn(server.accept_loop("self-signed", self_signed, Some(self_signed_tls))));
        tracing::debug!(%http_addr, %https_addr, %self_signed_addr, "sitefarm listening");

        Ok(Self {
            http_addr,
            https_addr,
            self_signed_addr,
            ca_pem: certificates.ca_pem,
            counts,
            shutdown,
            tasks,
        })
    }

    /// Address of the plain HTTP listener.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Address of the TLS listener with the CA-signed leaf (valid for `localhost` and `127.0.0.1`).
    pub fn https_addr(&self) -> SocketAddr {
        self.https_addr
    }

    /// Address of the TLS listener with the self-signed leaf (valid for `localhost` and `127.0.0.1`).
    pub fn self_signed_addr(&self) -> SocketAddr {
        self.self_signed_addr
    }

    /// The farm's CA certificate in PEM, for clients to trust; it signs only the `https` leaf.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// When the CA-signed leaf (and the self-signed one) expires: always 2031-01-01T00:00:00Z.
    pub fn leaf_not_after(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(LEAF_NOT_AFTER_UNIX_SECS.unsigned_abs())
    }

    /// Requests received so far, on every listener and route.
    pub fn requests_seen(&self) -> u64 {
        self.counts.seen.load(Ordering::Relaxed)
    }

    /// Requests whose response is still being prepared (a `/slow` route waiting, say).
    pub fn requests_in_flight(&self) -> u64 {
        self.counts.in_flight.load(Ordering::Relaxed)
    }

    /// `http://{http_addr}{path}`, e.g. `http://127.0.0.1:41234/ok`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http_addr, slash(path))
    }

    /// `https://localhost:{port}{path}` on the CA-signed listener.
    pub fn https_url(&self, path: &str) -> String {
        format!(
            "https://localhost:{}{}",
            self.https_addr.port(),
            slash(path)
        )
    }

    /// `https://localhost:{port}{path}` on the self-signed listener.
    pub fn self_signed_url(&self, path: &str) -> String {
        format!(
            "https://localhost:{}{}",
            self.self_signed_addr.port(),
            slash(path)
        )
    }

    /// Stops accepting, drops every open connection and waits until all the farm's tasks
    /// have ended, so the ports are closed when this returns.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Drop for SiteFarm {
    /// Stops the servers without waiting; their tasks end at their next poll.
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn listen(
    listener: &'static str,
    addr: SocketAddr,
) -> Result<(tokio::net::TcpListener, SocketAddr), FarmError> {
    let bind_error = |source| FarmError::Bind {
        listener,
        addr,
        source,
    };
    let socket = server::bind(addr).map_err(bind_error)?;
    let local = socket.local_addr().map_err(bind_error)?;
    Ok((socket, local))
}

/// Lets `url("ok")` mean `url("/ok")`.
fn slash(path: &str) -> String {
    if path.is_empty() || path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_get_a_leading_slash() {
        assert_eq!(slash(""), "");
        assert_eq!(slash("/ok"), "/ok");
        assert_eq!(slash("ok?x=1"), "/ok?x=1");
    }

    #[test]
    fn default_options_use_free_loopback_ports() {
        let options = FarmOptions::default();
        assert_eq!(options.http, "127.0.0.1:0".parse().unwrap());
        assert_eq!(options.https, options.http);
        assert_eq!(options.self_signed, options.http);
    }
}
