//! Waiting in tests for what happens elsewhere: a condition checked until a
//! deadline rather than after a fixed sleep, and a child process's output
//! read line by line as it comes.

use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::sync::mpsc;
use std::time::Duration;

use tokio::time::Instant;

/// How often a condition is checked again.
const POLL: Duration = Duration::from_millis(50);

/// Waits until `cond` holds, checking it every 50 ms; panics with `what` once `within` has passed.
pub async fn wait_for<F, Fut>(within: Duration, what: &str, cond: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for_some(within, what, || async { cond().await.then_some(()) }).await;
}

/// Waits until `found` gives a value, checking it every 50 ms, and returns
/// it; panics with `what` once `within` has passed.
pub async fn wait_for_some<T, F, Fut>(within: Duration, what: &str, found: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = found().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The lines of a child's pipe as they come, read on a thread of its own so
/// that the child never blocks on a full pipe; the channel closes with the pipe.
pub fn lines(pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let _ = std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The lines still to come from a child that has exited: every line until its
/// pipe is closed, or what arrived within `within` should something else hold it open.
pub fn rest(lines: &mpsc::Receiver<String>, within: Duration) -> Vec<String> {
    let deadline = std::time::Instant::now() + within;
    let mut out = Vec::new();
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) => out.push(line),
            Err(_) => break,
        }
    }
    out
}
