//! SIGTERM and SIGINT become one cancellation token; SIGHUP becomes a reload request.

use futures::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Failure to install the signal handlers.
#[derive(Debug, thiserror::Error)]
#[error("cannot install handlers for SIGTERM, SIGINT and SIGHUP: {0}")]
pub struct SignalError(#[source] std::io::Error);

/// The two things a service learns from signals.
#[derive(Debug)]
pub struct SignalHandles {
    /// Cancelled on the first SIGTERM or SIGINT; every task watches a child of it.
    pub shutdown: CancellationToken,
    /// One item per SIGHUP (coalesced while a reload is pending).
    pub reload: mpsc::Receiver<()>,
}

/// Installs the handlers and spawns the task that turns signals into the handles.
///
/// Must be called inside a tokio runtime.
pub fn listen() -> Result<SignalHandles, SignalError> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(SignalError)?;
    let shutdown = CancellationToken::new();
    let (reload_tx, reload) = mpsc::channel(1);
    let token = shutdown.clone();
    drop(tokio::spawn(async move {
        while let Some(signal) = signals.next().await {
            match signal {
                SIGHUP => {
                    tracing::info!("SIGHUP received: reloading");
                    // A reload already pending covers this one too.
                    let _ = reload_tx.try_send(());
                }
                _ if token.is_cancelled() => {
                    tracing::warn!(
                        signal,
                        "already shutting down; the process exits when the grace period ends"
                    );
                }
                _ => {
                    tracing::info!(signal, "shutdown requested");
                    token.cancel();
                }
            }
        }
    }));
    Ok(SignalHandles { shutdown, reload })
}
