//! Listening sockets, accept loops and per-connection HTTP/1.1 and HTTP/2 serving (plain or TLS).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::rt::{Read, Write};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::routes::Site;

/// Pending-connection queue; bursts of thousands of fresh connections must not be refused
/// (the kernel caps it at `net.core.somaxconn`).
const BACKLOG: u32 = 4096;

/// Pause after an accept error that is not about one connection (e.g. too many open files),
/// so the loop does not spin while descriptors are exhausted.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// A client that connects and never finishes the handshake must not hold a task forever.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `addr` with a deep backlog; `SO_REUSEADDR` lets the binary restart on a fixed port
/// while old connections linger in `TIME_WAIT`.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Runs hyper's background work (HTTP/2 streams) as tracked tasks that end on shutdown.
#[derive(Debug, Clone)]
pub(crate) struct FarmExecutor {
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl<F> hyper::rt::Executor<F> for FarmExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        drop(
            self.tasks
                .spawn(self.shutdown.clone().run_until_cancelled_owned(future)),
        );
    }
}

/// Everything a listener and its connections share; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Server {
    builder: Arc<auto::Builder<FarmExecutor>>,
    site: Site,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Server {
    /// A server answering with `site` until `shutdown` is cancelled; all its tasks go to `tasks`.
    pub(crate) fn new(site: Site, shutdown: CancellationToken, tasks: TaskTracker) -> Self {
        let mut builder = auto::Builder::new(FarmExecutor {
            tasks: tasks.clone(),
            shutdown: shutdown.clone(),
        });
        // The timer enables hyper's default 30 s limit for reading request heads, so idle
        // half-open connections are closed instead of piling up.
        builder.http1().timer(TokioTimer::new());
        builder.http2().timer(TokioTimer::new());
        Self {
            builder: Arc::new(builder),
            site,
            shutdown,
            tasks,
        }
    }

    /// Accepts connections until shutdown, serving each on its own task.
    pub(crate) async fn accept_loop(
        self,
        name: &'static str,
        listener: TcpListener,
        tls: Option<TlsAcceptor>,
    ) {
        loop {
            let accepted = tokio::select! {
                () = self.shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    drop(
                        self.tasks
                            .spawn(self.clone().serve(stream, peer, tls.clone())),
                    );
                }
                // The connection died between SYN and accept: nothing to do for the listener.
                Err(error) if is_connection_error(&error) => {
                    tracing::debug!(listener = name, %error, "accept failed for one connection");
                }
                Err(error) => {
                    tracing::debug!(listener = name, %error, "accept failed; backing off");
                    tokio::select! {
                        () = self.shutdown.cancelled() => return,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                }
            }
        }
    }

    async fn serve(self, stream: TcpStream, peer: SocketAddr, tls: Option<TlsAcceptor>) {
        // Small responses and slow-body heads should leave at once, not wait for Nagle.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
        }
        let Some(acceptor) = tls else {
            return self.serve_io(TokioIo::new(stream), peer).await;
        };
        let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
        let stream = tokio::select! {
            () = self.shutdown.cancelled() => return,
            handshake = handshake => match handshake {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            },
        };
        self.serve_io(TokioIo::new(stream), peer).await;
    }

    async fn serve_io<I>(&self, io: I, peer: SocketAddr)
    where
        I: Read + Write + Unpin + Send + 'static,
    {
        let site = self.site.clone();
        let service = service_fn(move |request| {
            let site = site.clone();
            async move { site.respond(request).await }
        });
        // Protocol by sniffing the HTTP/2 preface, which also covers ALPN-negotiated TLS.
        let connection = self.builder.serve_connection(io, service);
        tokio::select! {
            // On shutdown the connection is dropped: in-flight slow responses are not awaited.
            () = self.shutdown.cancelled() => {}
            result = connection => {
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
            }
        }
    }
}

/// Accept errors that concern only the connection being accepted.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
