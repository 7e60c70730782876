//! Re-reads the site list on SIGHUP, when its file changes, or periodically
//! for the `websites` table, and hands a valid new list to the schedule; a
//! list with errors is refused and logged, and the running list stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::measure::Measures;
use crate::source::TargetSource;
use crate::targets::{Target, TargetsError};

/// Quiet time after a file event before reading, so an editor's several writes count once.
const SETTLE: Duration = Duration::from_millis(250);

/// Watches for reload requests until `shutdown`; `refresh` is the period of
/// re-reading a table (files are watched instead).
pub async fn run(
    source: TargetSource,
    watch_file: bool,
    refresh: Duration,
    mut sighup: mpsc::Receiver<()>,
    updates: mpsc::Sender<Vec<Target>>,
    measures: Arc<Measures>,
    shutdown: CancellationToken,
) {
    let (changed_tx, mut changed) = mpsc::channel::<()>(1);
    // Kept alive for as long as the loop runs; dropping it stops the watch.
    let _watcher = match &source {
        TargetSource::File(path) if watch_file => match watch(path, changed_tx) {
            Ok(w) => Some(w),
            Err(err) => {
                tracing::warn!(file = %path.display(), error = %err, "cannot watch the site list for changes; send SIGHUP to reload");
                None
            }
        },
        _ => None,
    };
    let periodic = matches!(source, TargetSource::Postgres(_));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + refresh, refresh);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            Some(()) = sighup.recv() => {}
            Some(()) = changed.recv() => {
                tokio::time::sleep(SETTLE).await;
                while changed.try_recv().is_ok() {}
                tracing::info!(source = %source.describe(), "site list changed on disk: reloading");
            }
            _ = tick.tick(), if periodic => {}
            else => return,
        }
        match source.load().await {
            Ok(list) => {
                measures.reloaded(true);
                measures.sites(list.len());
                if updates.send(list).await.is_err() {
                    return;
                }
            }
            Err(err) => {
                measures.reloaded(false);
                log_refused(&err);
            }
        }
    }
}

fn log_refused(err: &TargetsError) {
    match err {
        TargetsError::Rows(rows) => {
            for row in rows {
                tracing::error!(file = %row.source, line = row.line, reason = %row.reason, "bad row in the site list");
            }
            tracing::error!(
                bad_rows = rows.len(),
                "site list reload refused; the running list stays until the file is fixed"
            );
        }
        TargetsError::Read { .. } | TargetsError::Postgres { .. } => {
            tracing::error!(error = %err, "site list reload refused; the running list stays");
        }
    }
}

fn watch(path: &Path, changed: mpsc::Sender<()>) -> notify::Result<notify::RecommendedWatcher> {
    let file_name = path.file_name().map(ToOwned::to_owned);
    // Watch the folder: editors and config tools replace the file rather than write into it.
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let relevant = matches!(
            event.kind,
            EventKind::Create(_)
                | EventKind::Modify(_)
                | EventKind::Access(AccessKind::Close(AccessMode::Write))
        );
        let ours = event
            .paths
            .iter()
            .any(|p| p.file_name() == file_name.as_deref());
        if relevant && ours {
            // A pending notice covers this event too.
            let _ = changed.try_send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}
