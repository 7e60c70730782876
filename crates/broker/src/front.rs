//! The TCP front of one mock broker: accepts on any address, optionally
//! terminates TLS (and checks client certificates), and forwards the bytes to
//! the broker's own listener on 127.0.0.1.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after a failed accept (say, out of file descriptors) before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A running front; dropping it stops accepting and closes its connections.
pub(crate) struct Front {
    local: SocketAddr,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Front")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        // The accept task owns the connections' JoinSet, which aborts them when dropped.
        self.task.abort();
    }
}

impl Front {
    /// Starts forwarding what `listener` accepts to `upstream`, through TLS if `tls` is given.
    ///
    /// Must be called inside a tokio runtime.
    pub(crate) fn spawn(
        listener: TcpListener,
        upstream: SocketAddr,
        tls: Option<TlsAcceptor>,
    ) -> io::Result<Front> {
        let local = listener.local_addr()?;
        let task = tokio::spawn(accept_loop(listener, upstream, tls));
        Ok(Front { local, task })
    }

    /// The address it accepts on.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, tls: Option<TlsAcceptor>) {
    let local = listener.local_addr().ok();
    let mut connections = JoinSet::new();
    loop {
        // Reap finished connections so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
        match listener.accept().await {
            Ok((stream, peer)) => {
                drop(connections.spawn(connection(stream, peer, upstream, tls.clone())));
            }
            Err(err) => {
                tracing::warn!(listen = ?local, error = %err, "cannot accept a connection");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn connection(
    client: TcpStream,
    peer: SocketAddr,
    upstream: SocketAddr,
    tls: Option<TlsAcceptor>,
) {
    // Kafka requests are small and latency-bound.
    let _ = client.set_nodelay(true);
    match tls {
        None => forward(client, peer, upstream).await,
        Some(acceptor) => {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(client)).await {
                Ok(Ok(stream)) => forward(stream, peer, upstream).await,
                Ok(Err(err)) => {
                    tracing::warn!(%peer, error = %err, "TLS handshake failed; connection dropped");
                }
                Err(_) => {
                    tracing::warn!(
                        %peer,
                        timeout = ?HANDSHAKE_TIMEOUT,
                        "TLS handshake timed out; connection dropped"
                    );
                }
            }
        }
    }
}

async fn forward<S>(mut client: S, peer: SocketAddr, upstream: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut broker = match TcpStream::connect(upstream).await {
        Ok(broker) => broker,
        Err(err) => {
            tracing::warn!(%peer, %upstream, error = %err, "cannot reach the mock broker; connection dropped");
            return;
        }
    };
    let _ = broker.set_nodelay(true);
    match tokio::io::copy_bidirectional(&mut client, &mut broker).await {
        Ok((sent, received)) => {
            tracing::debug!(%peer, sent, received, "connection closed");
        }
        Err(err) => {
            tracing::debug!(%peer, error = %err, "connection ended with an error");
        }
    }
}

/// Builds the TLS server settings from PEM files: the certificate chain, its
/// key, and optionally the CA that must have signed every client's certificate.
pub(crate) fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
    client_ca: Option<&std::path::Path>,
) -> Result<TlsAcceptor, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::PrivateKeyDer;
    use rustls::server::WebPkiClientVerifier;

    let chain =
        sitewatch_service::tls::pem_certificates(cert).map_err(|reason| TlsError::File {
            what: "certificate",
            path: cert.to_owned(),
            reason,
        })?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|err| TlsError::File {
        what: "private key",
        path: key.to_owned(),
        reason: err.to_string(),
    })?;
    // An explicit provider: the process-wide default may be unset or another one.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            sitewatch_service::tls::add_pem_file(&mut roots, path).map_err(|reason| {
                TlsError::File {
                    what: "client CA",
                    path: path.to_owned(),
                    reason,
                }
            })?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(TlsError::ClientVerifier)?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(TlsError::Config)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Why the TLS settings could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file is unreadable or holds nothing usable.
    #[error("TLS {what} {path:?}: {reason}")]
    File {
        /// Which file: certificate, private key or client CA.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the certificate, key or protocol settings.
    #[error("TLS settings: {0}")]
    Config(#[source] rustls::Error),
    /// The client CA cannot verify certificates.
    #[error("TLS client CA: {0}")]
    ClientVerifier(#[source] rustls::server::VerifierBuilderError),
}
