//! Health as progress, for container health checks: the service writes its
//! verdict (ready, or why not) to a file every [`BEAT_EVERY`], and
//! `--check-health` (run by the container runtime) reads it: healthy means a
//! recent beat that says ready. With an HTTP endpoint, `--check-health` asks
//! its `/readyz` instead ([`ask_ready`]), the same verdict judged afresh. [`Stall`] tracks since when something that
//! should move (writes, deliveries, offsets) has not.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::settings::TimeSpan;

/// The health settings every service has, at the top of its config file;
/// their environment variables take the service's prefix
/// (`MONITOR_HEALTH_FILE`, `CONSUMER_UNHEALTHY_AFTER`, `MONITOR_HTTP_LISTEN`).
#[derive(Debug, Clone, Deserialize, clap::Args)]
pub struct HealthSettings {
    /// Write into this file every 10 s whether the service is ready (for container health checks: `--check-health` reads it when http_listen is not set)
    #[arg(long, value_name = "FILE")]
    pub health_file: Option<PathBuf>,
    /// The health check reports not ready once the service has made no progress for this long: the monitor when its deliveries to Kafka fail (every produce refused, topic missing, ACL denied); the consumer when its writes fail, or it holds messages and no offset moves
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    #[serde(deserialize_with = "unhealthy_after")]
    pub unhealthy_after: TimeSpan,
    /// Serve /metrics (Prometheus), /healthz and /readyz over HTTP on this address (IP:PORT, e.g. 0.0.0.0:9464); off unless set
    #[arg(long, value_name = "IP:PORT")]
    pub http_listen: Option<String>,
}

/// Reads `unhealthy_after`, naming it in the error: these settings are
/// flattened into each service's, and serde's flattening drops the key that
/// the settings loader otherwise puts in front of a bad value.
fn unhealthy_after<'de, D: serde::Deserializer<'de>>(value: D) -> Result<TimeSpan, D::Error> {
    TimeSpan::deserialize(value)
        .map_err(|err| serde::de::Error::custom(format!("unhealthy_after: {err}")))
}

/// How often a service writes its verdict.
pub const BEAT_EVERY: Duration = Duration::from_secs(10);

/// A beat older than this means the service is not healthy (three missed beats).
pub const STALE_AFTER: Duration = Duration::from_secs(30);

/// What a beat starts with when the service is ready.
const READY: &str = "ready";

/// Where a service records whether it is healthy.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    path: PathBuf,
}

impl Heartbeat {
    /// Beats into `path`.
    pub fn new(path: PathBuf) -> Heartbeat {
        Heartbeat { path }
    }

    /// Records the verdict now: ready, or not ready for `why`.
    pub fn beat(&self, verdict: &Result<(), String>) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let text = match verdict {
            Ok(()) => format!("{now} {READY}"),
            Err(why) => format!("{now} {why}"),
        };
        // Written whole then renamed, so a check never reads half a verdict.
        let tmp = self.path.with_extension("tmp");
        let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(err) = written {
            tracing::warn!(file = %self.path.display(), error = %err, "cannot write the health file");
        }
    }
}

/// Writes the verdict of `healthy` into `heartbeat` every [`BEAT_EVERY`]
/// until `stop`; logs when the service stops or starts being ready.
pub async fn beat_while<F, Fut>(heartbeat: Heartbeat, stop: CancellationToken, mut healthy: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut tick = tokio::time::interval(BEAT_EVERY);
    let mut was_ready = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let verdict = healthy().await;
        match &verdict {
            Err(why) => tracing::warn!(%why, "not ready: the health check reports it"),
            Ok(()) if !was_ready => tracing::info!("ready again"),
            Ok(()) => {}
        }
        was_ready = verdict.is_ok();
        heartbeat.beat(&verdict);
    }
}

/// Whether the service beating into `path` is healthy; the error says why not.
pub fn check(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("no heartbeat in {} yet ({e})", path.display()))?;
    let (beat, verdict) = text.trim().split_once(' ').unwrap_or((text.trim(), READY));
    let beat: u64 = beat
        .parse()
        .map_err(|_| format!("{} does not hold a heartbeat", path.display()))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let age = now.saturating_sub(beat);
    if age > STALE_AFTER.as_secs() {
        return Err(format!(
            "last heartbeat {age}s ago: the service is stuck or stopped"
        ));
    }
    if verdict != READY {
        return Err(verdict.to_owned());
    }
    Ok(())
}

/// Asks the service's own `/readyz` at `listen` (the `http_listen` setting;
/// an unspecified address such as 0.0.0.0 is asked on loopback): ready, or
/// why not, in the endpoint's words.
pub fn ask_ready(listen: &str) -> Result<(), String> {
    use std::io::{Read, Write};
    let mut addr: std::net::SocketAddr = listen
        .trim()
        .parse()
        .map_err(|_| format!("http_listen: {listen:?} is not an address (IP:PORT)"))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let mut stream = std::net::TcpStream::connect_timeout(&addr, ASK_WITHIN).map_err(|e| {
        format!("nothing answers on {addr} ({e}): the service is not running or not listening yet")
    })?;
    let exchanged = stream
        .set_read_timeout(Some(ASK_WITHIN))
        .and_then(|()| stream.set_write_timeout(Some(ASK_WITHIN)))
        .and_then(|()| stream.write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n"));
    let mut reply = String::new();
    exchanged
        .and_then(|()| stream.take(64 * 1024).read_to_string(&mut reply))
        .map_err(|e| format!("no answer from {addr}/readyz ({e})"))?;
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    match head.split(' ').nth(1) {
        Some("200") => Ok(()),
        // The reason as the health file gives it, without the endpoint's prefix.
        Some(_) => Err(body.trim().trim_start_matches("not ready: ").to_owned()),
        None => Err(format!("{addr}/readyz answered without a status")),
    }
}

/// How long `--check-health` waits for `/readyz`: the endpoint's own bound
/// on the verdict, and a second for the exchange.
const ASK_WITHIN: Duration = Duration::from_secs(6);

/// Since when something that should move has not: a write that keeps
/// failing, deliveries that keep failing, messages held while no offset moves.
#[derive(Debug, Default)]
pub struct Stall {
    since: Mutex<Option<Instant>>,
}

impl Stall {
    /// It is not moving; the stall starts now unless it already had.
    pub fn stuck(&self) {
        let mut since = self.lock();
        if since.is_none() {
            *since = Some(Instant::now());
        }
    }

    /// It moved: no stall.
    pub fn moving(&self) {
        *self.lock() = None;
    }

    /// It moved but is still expected to move again: a stall, if any, starts over now.
    pub fn restart(&self) {
        *self.lock() = Some(Instant::now());
    }

    /// How long it has been stuck, if longer than `limit`.
    pub fn longer_than(&self, limit: Duration) -> Option<Duration> {
        self.lock()
            .map(|since| since.elapsed())
            .filter(|stuck| *stuck > limit)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        // An Option<Instant> is valid whatever a panicking holder did.
        self.since.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_ready_beat_is_healthy_a_missing_stale_or_unready_one_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("health");
        assert!(check(&path).is_err(), "no beat yet");
        let heartbeat = Heartbeat::new(path.clone());
        heartbeat.beat(&Ok(()));
        assert_eq!(check(&path), Ok(()));
        heartbeat.beat(&Err("writes have failed for 61s".into()));
        assert_eq!(check(&path), Err("writes have failed for 61s".into()));
        std::fs::write(&path, "1 ready").expect("write");
        assert!(check(&path).expect_err("stale").contains("ago"));
    }

    #[test]
    fn a_stall_counts_from_its_first_sign_until_it_moves() {
        let stall = Stall::default();
        assert_eq!(stall.longer_than(Duration::ZERO), None);
        stall.stuck();
        std::thread::sleep(Duration::from_millis(20));
        stall.stuck();
        let stuck = stall.longer_than(Duration::from_millis(10));
        assert!(
            stuck.is_some_and(|d| d >= Duration::from_millis(20)),
            "{stuck:?}"
        );
        stall.restart();
        assert_eq!(stall.longer_than(Duration::from_millis(10)), None);
        stall.moving();
        assert_eq!(stall.longer_than(Duration::ZERO), None);
    }
}
