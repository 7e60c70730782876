//! The HTTP client the bench drives probes with, in `probe-loop` and against
//! the peer prober: reqwest on rustls with ring, as the monitor builds it.
//! Every target is plain HTTP on loopback, so no root certificate is loaded
//! and no proxy is asked.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

/// Whether a client keeps its connections open between requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connections {
    /// Keep-alive, as Prometheus scrapes an exporter.
    KeepAlive,
    /// A fresh connection per request, as the monitor makes one per probe.
    Fresh,
}

/// A client with a 10 s timeout per request.
pub fn client(connections: Connections) -> anyhow::Result<reqwest::Client> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("cannot set up TLS")?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let mut builder = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .timeout(Duration::from_secs(10));
    if connections == Connections::Fresh {
        builder = builder.pool_max_idle_per_host(0);
    }
    builder.build().context("cannot build the HTTP client")
}
