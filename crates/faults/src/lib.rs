//! A TCP fault proxy for the fault suite (no toxiproxy package exists on
//! these machines): it listens on a loopback port and forwards to an
//! upstream, and a test switches what the network does on the fly.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use sitewatch_faults::{Fault, FaultProxy};
//! let proxy = FaultProxy::start("127.0.0.1:5432".parse().unwrap()).await?;
//! let through = proxy.addr(); // point the client here
//! proxy.set(Fault::Blackhole); // a network cut: packets vanish, nothing is refused
//! proxy.set(Fault::None); // the network is back
//! # let _ = through; Ok(()) }
//! ```

mod broker;

pub use broker::BrokerBehind;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the network between client and upstream does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Bytes pass both ways.
    None,
    /// Connections are accepted, nothing passes either way and nothing is
    /// refused: a cut network, a frozen peer. Bytes already in flight wait.
    Blackhole,
    /// Every open connection is reset, and new ones are reset at once.
    Reset,
    /// Every chunk of bytes is held this long before it passes.
    Latency(Duration),
    /// Once a request holding these bytes has passed on a connection (say
    /// `b"COMMIT"`), the upstream's replies on it wait: a statement that ran
    /// while its acknowledgement is lost.
    NoRepliesAfter(&'static [u8]),
}

/// A proxy on a loopback port in front of `upstream`; stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    fault: watch::Sender<Fault>,
    stop: CancellationToken,
    connections: Arc<Mutex<Connections>>,
}

/// What the proxy knows of the connections it accepted.
#[derive(Debug, Default)]
struct Connections {
    accepted: u64,
    /// One token per connection still open; cancelled to strand it.
    open: Vec<CancellationToken>,
}

impl FaultProxy {
    /// Starts forwarding a free loopback port to `upstream`, with no fault.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<FaultProxy> {
        FaultProxy::serve(TcpListener::bind("127.0.0.1:0").await?, upstream)
    }

    /// Starts forwarding what `listener` accepts to `upstream`, with no
    /// fault: for an upstream that must know the proxy's address before it
    /// starts (a broker advertising it, say).
    pub fn serve(listener: TcpListener, upstream: SocketAddr) -> std::io::Result<FaultProxy> {
        let addr = listener.local_addr()?;
        let (fault, faults) = watch::channel(Fault::None);
        let stop = CancellationToken::new();
        let connections = Arc::new(Mutex::new(Connections::default()));
        drop(tokio::spawn(accept(
            listener,
            upstream,
            faults,
            stop.clone(),
            Arc::clone(&connections),
        )));
        Ok(FaultProxy {
            addr,
            fault,
            stop,
            connections,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What the network does from now on, to open and new connections alike.
    pub fn set(&self, fault: Fault) {
        tracing::info!(?fault, "fault proxy");
        self.fault.send_replace(fault);
    }

    /// Connections open now hang for good, as when the upstream fails over:
    /// the client hears nothing more on them (only its own timeouts end
    /// them), while the upstream sees them closed. New connections pass as
    /// the current fault allows.
    pub fn strand(&self) {
        let open = std::mem::take(&mut self.lock().open);
        tracing::info!(
            connections = open.len(),
            "fault proxy strands open connections"
        );
        for connection in open {
            connection.cancel();
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.lock().accepted
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connections> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept(
    listener: TcpListener,
    upstream: SocketAddr,
    faults: watch::Receiver<Fault>,
    stop: CancellationToken,
    connections: Arc<Mutex<Connections>>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => return,
        };
        let Ok((client, _)) = accepted else {
            // Out of descriptors, say: a pause rather than a spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let stranded = CancellationToken::new();
        {
            let mut connections = connections.lock().unwrap_or_else(PoisonError::into_inner);
            connections.accepted += 1;
            connections.open.retain(|open| !open.is_cancelled());
            connections.open.push(stranded.clone());
        }
        drop(tokio::spawn(connection(
            client,
            upstream,
            faults.clone(),
            Stranding {
                stranded,
                stop: stop.clone(),
            },
        )));
    }
}

/// How a connection learns it is stranded, and that the proxy stops.
#[derive(Debug, Clone)]
struct Stranding {
    stranded: CancellationToken,
    stop: CancellationToken,
}

/// Which way bytes flow through a pump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Client to upstream.
    Request,
    /// Upstream to client.
    Reply,
}

/// One client connection: connects upstream and pumps both ways under the fault.
async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    faults: watch::Receiver<Fault>,
    stranding: Stranding,
) {
    // However it ends, its token is then pruned from the open list.
    let _ended = stranding.stranded.clone().drop_guard();
    let server = tokio::select! {
        server = TcpStream::connect(upstream) => server,
        () = stranding.stop.cancelled() => return,
    };
    let Ok(server) = server else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let cut = CancellationToken::new();
    let reset = CancellationToken::new();
    let muted = CancellationToken::new();
    let flow = |direction| Flow {
        direction,
        faults: faults.clone(),
        cut: cut.clone(),
        reset: reset.clone(),
        muted: muted.clone(),
        stranding: stranding.clone(),
    };
    let up = pump(client_read, server_write, flow(Direction::Request));
    let down = pump(server_read, client_write, flow(Direction::Reply));
    tokio::select! {
        () = async { tokio::join!(up, down); } => {}
        () = stranding.stop.cancelled() => {}
    }
}

/// What one direction of a connection obeys.
#[derive(Debug)]
struct Flow {
    direction: Direction,
    faults: watch::Receiver<Fault>,
    /// Ends both directions together, as a real connection's do.
    cut: CancellationToken,
    /// Set before `cut` when the connection ends in resets, not closes.
    reset: CancellationToken,
    /// Set once a request matched [`Fault::NoRepliesAfter`].
    muted: CancellationToken,
    stranding: Stranding,
}

/// What a direction of a connection does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Bytes pass.
    Pass,
    /// The connection closes (either side closed, or the proxy stops).
    Close,
    /// The connection ends in resets, both ways.
    Reset,
    /// The connection is stranded.
    Strand,
}

/// Copies `from` to `to` chunk by chunk, each chunk as the fault allows.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut flow: Flow) {
    let mut buf = vec![0u8; 16 * 1024];
    let next = loop {
        match flow.allow().await {
            Next::Pass => {}
            other => break other,
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => break Next::Close,
                Ok(n) => n,
            },
            () = flow.cut.cancelled() => break Next::Close,
            () = flow.stranding.stranded.cancelled() => break Next::Strand,
            // A fault set while waiting for bytes applies before they pass.
            _ = flow.faults.changed() => continue,
        };
        match flow.allow().await {
            Next::Pass => {}
            other => break other,
        }
        let fault = *flow.faults.borrow();
        if let Fault::Latency(delay) = fault {
            tokio::time::sleep(delay).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break Next::Close;
        }
        if let Fault::NoRepliesAfter(pattern) = fault {
            if flow.direction == Direction::Request && contains(&buf[..n], pattern) {
                flow.muted.cancel();
            }
        }
    };
    match next {
        Next::Strand => flow.strand(from, to).await,
        Next::Reset => {
            flow.reset.cancel();
            flow.end(to);
        }
        Next::Pass | Next::Close => flow.end(to),
    }
}

impl Flow {
    /// Waits while the fault holds this direction's bytes, then says what
    /// comes next.
    async fn allow(&mut self) -> Next {
        loop {
            if self.stranding.stranded.is_cancelled() {
                return Next::Strand;
            }
            if self.cut.is_cancelled() {
                return Next::Close;
            }
            let fault = *self.faults.borrow_and_update();
            let held = match fault {
                Fault::None | Fault::Latency(_) => false,
                Fault::Reset => return Next::Reset,
                Fault::Blackhole => true,
                Fault::NoRepliesAfter(_) => {
                    self.direction == Direction::Reply && self.muted.is_cancelled()
                }
            };
            if !held {
                return Next::Pass;
            }
            tokio::select! {
                changed = self.faults.changed() => {
                    if changed.is_err() {
                        return Next::Close;
                    }
                }
                () = self.cut.cancelled() => {}
                () = self.stranding.stranded.cancelled() => {}
                () = self.muted.cancelled(), if !self.muted.is_cancelled() => {}
            }
        }
    }

    /// Ends this direction and tells the other one. A plain drop of the
    /// write half would send a FIN first, which a client reads as a clean
    /// close; for a reset, linger 0 and no shutdown make the socket's close
    /// (once its read half goes too) a RST.
    fn end(&self, to: OwnedWriteHalf) {
        if self.reset.is_cancelled() {
            let _ = to.as_ref().set_zero_linger();
            to.forget();
        } else {
            drop(to);
        }
        self.cut.cancel();
    }

    /// A stranded connection, as after a failover: the upstream is told at
    /// once (its session ends, its open transaction with it), the client
    /// hears nothing more until it gives up and closes.
    async fn strand(&self, mut from: OwnedReadHalf, to: OwnedWriteHalf) {
        match self.direction {
            Direction::Request => {
                drop(to);
                let mut discard = [0u8; 4096];
                loop {
                    tokio::select! {
                        read = from.read(&mut discard) => {
                            if matches!(read, Ok(0) | Err(_)) {
                                break;
                            }
                        }
                        () = self.stranding.stop.cancelled() => break,
                    }
                }
                self.cut.cancel();
            }
            Direction::Reply => {
                drop(from);
                tokio::select! {
                    () = self.cut.cancelled() => {}
                    () = self.stranding.stop.cancelled() => {}
                }
                drop(to);
            }
        }
    }
}

/// Whether `pattern` occurs in `bytes`.
fn contains(bytes: &[u8], pattern: &[u8]) -> bool {
    !pattern.is_empty() && bytes.windows(pattern.len()).any(|window| window == pattern)
}

#[cfg(test)]
mod tests {
    use std::io::ErrorKind;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::mpsc;

    use super::*;

    /// An upstream that echoes what it reads and reports each chunk, then
    /// `None` when a connection closes.
    async fn echo() -> (SocketAddr, mpsc::UnboundedReceiver<Option<Vec<u8>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen, heard) = mpsc::unbounded_channel();
        drop(tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let seen = seen.clone();
                drop(tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    loop {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => {
                                let _ = seen.send(None);
                                return;
                            }
                            Ok(n) => {
                                let _ = seen.send(Some(buf[..n].to_vec()));
                                let _ = socket.write_all(&buf[..n]).await;
                            }
                        }
                    }
                }));
            }
        }));
        (addr, heard)
    }

    /// Sends `bytes` and returns what comes back within `within`, if anything.
    async fn round_trip(client: &mut TcpStream, bytes: &[u8], within: Duration) -> Option<Vec<u8>> {
        client.write_all(bytes).await.unwrap();
        let mut buf = vec![0u8; bytes.len()];
        match tokio::time::timeout(within, client.read_exact(&mut buf)).await {
            Ok(Ok(_)) => Some(buf),
            _ => None,
        }
    }

    const ANSWER: Duration = Duration::from_secs(5);
    /// How long silence must last to count as none: the negative checks'
    /// window, not a wait for something to happen.
    const SILENCE: Duration = Duration::from_millis(300);

    #[tokio::test]
    async fn bytes_pass_both_ways_without_a_fault() {
        let (upstream, _) = echo().await;
        let proxy = FaultProxy::start(upstream).await.unwrap();
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(
            round_trip(&mut client, b"ping", ANSWER).await.as_deref(),
            Some(&b"ping"[..])
        );
        assert_eq!(proxy.connections(), 1);
    }

    #[tokio::test]
    async fn a_reset_is_a_reset_not_a_clean_close() {
        let (upstream, _) = echo().await;
        let proxy = FaultProxy::start(upstream).await.unwrap();
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(round_trip(&mut client, b"ping", ANSWER).await.is_some());
        proxy.set(Fault::Reset);
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(ANSWER, client.read(&mut buf))
            .await
            .unwrap();
        assert_eq!(
            read.map_err(|e| e.kind()).err(),
            Some(ErrorKind::ConnectionReset)
        );
    }

    #[tokio::test]
    async fn a_blackhole_holds_bytes_until_it_lifts() {
        let (upstream, _) = echo().await;
        let proxy = FaultProxy::start(upstream).await.unwrap();
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        proxy.set(Fault::Blackhole);
        assert_eq!(round_trip(&mut client, b"ping", SILENCE).await, None);
        proxy.set(Fault::None);
        let mut buf = [0u8; 4];
        tokio::time::timeout(ANSWER, client.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"ping");
    }

    #[tokio::test]
    async fn a_stranded_connection_is_closed_upstream_and_silent_to_the_client() {
        let (upstream, mut heard) = echo().await;
        let proxy = FaultProxy::start(upstream).await.unwrap();
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(round_trip(&mut client, b"ping", ANSWER).await.is_some());
        assert_eq!(heard.recv().await, Some(Some(b"ping".to_vec())));
        proxy.strand();
        let closed = tokio::time::timeout(ANSWER, heard.recv()).await.unwrap();
        assert_eq!(closed, Some(None), "the upstream sees the connection close");
        assert_eq!(round_trip(&mut client, b"more", SILENCE).await, None);
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(
            round_trip(&mut fresh, b"next", ANSWER).await.is_some(),
            "new connections pass"
        );
    }

    #[tokio::test]
    async fn replies_stop_after_the_pattern_but_the_request_lands() {
        let (upstream, mut heard) = echo().await;
        let proxy = FaultProxy::start(upstream).await.unwrap();
        proxy.set(Fault::NoRepliesAfter(b"COMMIT"));
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(round_trip(&mut client, b"INSERT", ANSWER).await.is_some());
        assert_eq!(round_trip(&mut client, b"COMMIT", SILENCE).await, None);
        let mut upstream_saw = Vec::new();
        while let Ok(Some(Some(chunk))) = tokio::time::timeout(ANSWER, heard.recv()).await {
            upstream_saw.extend(chunk);
            if upstream_saw.ends_with(b"COMMIT") {
                break;
            }
        }
        assert_eq!(upstream_saw, b"INSERTCOMMIT");
    }
}
