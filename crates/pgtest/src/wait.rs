//! Waiting in async tests for something that happens elsewhere (a row
//! stored, a process healthy), with a deadline rather than a fixed sleep.

use std::future::Future;
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
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}
