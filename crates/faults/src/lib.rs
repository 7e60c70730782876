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

    /// Connections open now hang for good, as when the upstream fails over
    /// and its old address stops answering; new connections pass as the
    /// current fault allows. Only the client's own timeouts end them.
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
        let Ok((client, _)) = accepted else { continue };
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

impl Stranding {
    /// Holds the connection's sockets open, passing nothing, until the proxy stops.
    async fn hang(&self) {
        self.stop.cancelled().await;
    }
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
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let cut = CancellationToken::new();
    let muted = CancellationToken::new();
    let flow = |direction| Flow {
        direction,
        faults: faults.clone(),
        cut: cut.clone(),
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
    /// Set once a request matched [`Fault::NoRepliesAfter`].
    muted: CancellationToken,
    stranding: Stranding,
}

/// Copies `from` to `to` chunk by chunk, each chunk as the fault allows.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut flow: Flow,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !flow.allow().await {
            break;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            () = flow.cut.cancelled() => break,
            () = flow.stranding.stranded.cancelled() => {
                flow.stranding.hang().await;
                break;
            }
            // A fault set while waiting for bytes applies before they pass.
            _ = flow.faults.changed() => continue,
        };
        if !flow.allow().await {
            break;
        }
        let fault = *flow.faults.borrow();
        if let Fault::Latency(delay) = fault {
            tokio::time::sleep(delay).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        if let Fault::NoRepliesAfter(pattern) = fault {
            if flow.direction == Direction::Request && contains(&buf[..n], pattern) {
                flow.muted.cancel();
            }
        }
    }
    flow.cut.cancel();
    let fault = *flow.faults.borrow();
    if fault == Fault::Reset {
        // Linger 0 makes the close a RST, not a FIN.
        let _ = to.as_ref().set_zero_linger();
    }
}

impl Flow {
    /// Waits while the fault holds this direction's bytes; false when the
    /// connection must end (reset, or cut from the other direction).
    async fn allow(&mut self) -> bool {
        loop {
            if self.stranding.stranded.is_cancelled() && !self.cut.is_cancelled() {
                self.stranding.hang().await;
                return false;
            }
            let fault = *self.faults.borrow_and_update();
            let held = match fault {
                Fault::None | Fault::Latency(_) => false,
                Fault::Reset => return false,
                Fault::Blackhole => true,
                Fault::NoRepliesAfter(_) => {
                    self.direction == Direction::Reply && self.muted.is_cancelled()
                }
            };
            if !held {
                return true;
            }
            tokio::select! {
                changed = self.faults.changed() => {
                    if changed.is_err() {
                        return false;
                    }
                }
                () = self.cut.cancelled() => return false,
                () = self.stranding.stranded.cancelled() => {}
                () = self.muted.cancelled(), if !self.muted.is_cancelled() => {}
            }
        }
    }
}

/// Whether `pattern` occurs in `bytes`.
fn contains(bytes: &[u8], pattern: &[u8]) -> bool {
    !pattern.is_empty() && bytes.windows(pattern.len()).any(|window| window == pattern)
}
