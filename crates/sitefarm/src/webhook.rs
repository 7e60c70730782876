//! A webhook receiver on loopback for the alerting tests: it records every
//! request it is sent and answers with the statuses a test lines up (200
//! once they run out), or not at all while it is told to hang.

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Its `Idempotency-Key` header.
    pub key: Option<String>,
    /// Its body, as sent.
    pub body: Bytes,
    /// The status answered; `None` while hanging (the sender saw no answer).
    pub status: Option<u16>,
    /// When it arrived.
    pub at: Instant,
}

impl Delivery {
    /// Whether the receiver took it (answered 2xx).
    pub fn accepted(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }

    /// The body as JSON; `Null` when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
}

#[derive(Debug, Default)]
struct Book {
    deliveries: Vec<Delivery>,
    answers: VecDeque<u16>,
    hang: bool,
}

/// A running receiver; stops when dropped or [`WebhookReceiver::stop`]ped.
#[derive(Debug)]
pub struct WebhookReceiver {
    addr: SocketAddr,
    book: Arc<Mutex<Book>>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl WebhookReceiver {
    /// Starts on a free port of 127.0.0.1.
    pub async fn start() -> io::Result<WebhookReceiver> {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts on `addr` (a port a test kept free, to come back on it).
    pub async fn start_on(addr: SocketAddr) -> io::Result<WebhookReceiver> {
        let listener = crate::server::bind(addr)?;
        let addr = listener.local_addr()?;
        let book = Arc::new(Mutex::new(Book::default()));
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let accepting = {
            let (book, stop, tasks) = (Arc::clone(&book), stop.clone(), tasks.clone());
            async move {
                loop {
                    let stream = tokio::select! {
                        () = stop.cancelled() => break,
                        accepted = listener.accept() => match accepted {
                            Ok((stream, _)) => stream,
                            Err(_) => continue,
                        },
                    };
                    let book = Arc::clone(&book);
                    let service = service_fn(move |request| answer(Arc::clone(&book), request));
                    let connection = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    drop(tasks.spawn(stop.clone().run_until_cancelled_owned(connection)));
                }
            }
        };
        drop(tasks.spawn(accepting));
        Ok(WebhookReceiver {
            addr,
            book,
            stop,
            tasks,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL to configure as a webhook.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Answers the next requests with `statuses`, in order.
    pub fn answer_next(&self, statuses: &[u16]) {
        self.book().answers.extend(statuses);
    }

    /// Takes requests and never answers them, while `hang` holds.
    pub fn hang(&self, hang: bool) {
        self.book().hang = hang;
    }

    /// Every request so far, in arrival order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.book().deliveries.clone()
    }

    /// Stops listening and drops open connections.
    pub async fn stop(self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        lock(&self.book)
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn lock(book: &Mutex<Book>) -> MutexGuard<'_, Book> {
    // Entries are pushed whole; a panicking holder leaves nothing half done.
    book.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn answer(
    book: Arc<Mutex<Book>>,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let key = request
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = request.into_body().collect().await?.to_bytes();
    let (status, hang) = {
        let mut book = lock(&book);
        let hang = book.hang;
        let status = if hang {
            None
        } else {
            Some(book.answers.pop_front().unwrap_or(200))
        };
        book.deliveries.push(Delivery {
            key,
            body,
            status,
            at: Instant::now(),
        });
        (status, hang)
    };
    if hang {
        std::future::pending::<()>().await;
    }
    let status = StatusCode::from_u16(status.unwrap_or(200)).unwrap_or(StatusCode::OK);
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    Ok(response)
}
