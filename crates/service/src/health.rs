//! A heartbeat file for container health checks: the service writes the time
//! to it while it is up and connected, and `--check-health` (run by the
//! container runtime) says whether the last beat is recent.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

/// How often a healthy service beats.
pub const BEAT_EVERY: Duration = Duration::from_secs(10);

/// A beat older than this means the service is not healthy (three missed beats).
pub const STALE_AFTER: Duration = Duration::from_secs(30);

/// Where a service records that it is healthy.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    path: PathBuf,
}

impl Heartbeat {
    /// Beats into `path`.
    pub fn new(path: PathBuf) -> Heartbeat {
        Heartbeat { path }
    }

    /// Records that the service is healthy now.
    pub fn beat(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        // Written whole then renamed, so a check never reads half a number.
        let tmp = self.path.with_extension("tmp");
        let written =
            std::fs::write(&tmp, now.to_string()).and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(err) = written {
            tracing::warn!(file = %self.path.display(), error = %err, "cannot write the health file");
        }
    }
}

/// Beats into `heartbeat` every [`BEAT_EVERY`] while `healthy` finds the
/// service healthy, until `stop`; when it is not, logs why and skips the beat.
pub async fn beat_while<F, Fut>(heartbeat: Heartbeat, stop: CancellationToken, mut healthy: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut tick = tokio::time::interval(BEAT_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        match healthy().await {
            Ok(()) => heartbeat.beat(),
            Err(why) => tracing::warn!(%why, "not healthy: the health check will report it"),
        }
    }
}

/// Whether the service beating into `path` is healthy; the error says why not.
pub fn check(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("no heartbeat in {} yet ({e})", path.display()))?;
    let beat: u64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{} does not hold a heartbeat", path.display()))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let age = now.saturating_sub(beat);
    if age > STALE_AFTER.as_secs() {
        return Err(format!(
            "last heartbeat {age}s ago: the service is stuck or cannot reach Kafka or PostgreSQL"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_beat_is_healthy_missing_or_stale_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("health");
        assert!(check(&path).is_err(), "no beat yet");
        Heartbeat::new(path.clone()).beat();
        assert_eq!(check(&path), Ok(()));
        std::fs::write(&path, "1").expect("write");
        assert!(check(&path).expect_err("stale").contains("ago"));
    }
}
