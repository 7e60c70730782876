//! Running the workspace's binaries as an operator would, and reading what
//! they leave behind.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sitewatch_metric::Metric;
use sitewatch_pgtest::child::{piped, signal};
use sitewatch_pgtest::sql::client;
use sitewatch_pgtest::wait::{lines, rest};
use sitewatch_pgtest::Postgres;
use sitewatch_sitefarm::{FarmOptions, SiteFarm};

/// The folder the workspace's binaries were built into (next to this test's executable).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target folder")
        .to_owned()
}

/// Path of a workspace binary; fails with the command that builds it.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A child process whose output lines arrive on channels.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub stdout: mpsc::Receiver<String>,
    pub stderr: mpsc::Receiver<String>,
}

impl Proc {
    /// Starts a workspace binary with `args` and extra environment.
    pub fn start(name: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        Proc::spawn(name, bin(name), args, env)
    }

    /// Starts `program` (any, not only the workspace's), called `name` in messages.
    pub fn spawn(
        name: &str,
        program: impl AsRef<OsStr>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Proc {
        let mut cmd = Command::new(program);
        let _ = piped(cmd.args(args).envs(env.iter().copied()));
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{name} starts: {e}"));
        let stdout = lines(child.stdout.take().expect("stdout"));
        let stderr = lines(child.stderr.take().expect("stderr"));
        Proc {
            name: name.to_owned(),
            child,
            stdout,
            stderr,
        }
    }

    /// Sends a signal by name (TERM, INT, KILL).
    pub fn signal(&self, name: &str) {
        signal(&self.child, name);
    }

    /// Waits for the exit; returns the code (None when killed by a signal) and every stderr line.
    pub fn wait(mut self, within: Duration) -> (Option<i32>, Vec<String>, Vec<String>) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return (
                    status.code(),
                    rest(&self.stdout, Duration::from_secs(5)),
                    rest(&self.stderr, Duration::from_secs(5)),
                );
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let log: Vec<String> = self.stderr.try_iter().collect();
                panic!(
                    "{} did not exit within {within:?}:\n{}",
                    self.name,
                    log.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then [`Proc::wait`]; panics with its log unless it exits 0 within `within`.
    /// Returns its stdout and stderr lines.
    pub fn stop(self, within: Duration) -> (Vec<String>, Vec<String>) {
        self.signal("TERM");
        let name = self.name.clone();
        let (code, stdout, stderr) = self.wait(within);
        assert_eq!(
            code,
            Some(0),
            "{name} exits 0 on SIGTERM:\n{}",
            stderr.join("\n")
        );
        (stdout, stderr)
    }

    /// Waits for the JSON log line (stderr) with this message and returns
    /// it; the lines before it are gone from [`Proc::stderr`].
    pub fn log_until(&self, message: &str, within: Duration) -> serde_json::Value {
        let deadline = Instant::now() + within;
        let mut before = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(line) = self.stderr.recv_timeout(left) else {
                break;
            };
            match serde_json::from_str::<serde_json::Value>(&line) {
                Ok(event) if event["message"] == message => return event,
                _ => before.push(line),
            }
        }
        panic!(
            "{} logged no {message:?} within {within:?}:\n{}",
            self.name,
            before.join("\n")
        );
    }

    /// Waits for a stdout line `key=value` and returns the value.
    pub fn value(&self, key: &str, within: Duration) -> String {
        let prefix = format!("{key}=");
        let deadline = Instant::now() + within;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.stdout.recv_timeout(left) {
                Ok(line) if line.starts_with(&prefix) => return line[prefix.len()..].to_owned(),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("{} printed no {key}= line", self.name);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A failed test must not leave its processes running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The local broker with one topic; returns it and its bootstrap address.
pub fn broker(topic: &str, partitions: u32) -> (Proc, String) {
    let p = Proc::start(
        "broker",
        &["--topic", topic, "--partitions", &partitions.to_string()],
        &[],
    );
    let bootstrap = p.value("bootstrap", Duration::from_secs(20));
    (p, bootstrap)
}

/// Consumer flags for tests: short group timeouts so rebalances take seconds (FACTS.md).
pub fn consumer_args<'a>(
    bootstrap: &'a str,
    topic: &'a str,
    db_url: &'a str,
    group: &'a str,
) -> Vec<String> {
    let mut args: Vec<String> = [
        "--kafka-brokers",
        bootstrap,
        "--kafka-topic",
        topic,
        "--group-id",
        group,
        "--postgres-url",
        db_url,
        "--postgres-sslmode",
        "disable",
        "--batch-rows",
        "200",
        "--batch-wait",
        "100ms",
        "--log-format",
        "json",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    for p in [
        "session.timeout.ms=6000",
        "heartbeat.interval.ms=500",
        "max.poll.interval.ms=10000",
    ] {
        args.push("-X".into());
        args.push(p.into());
    }
    args
}

/// Starts a consumer.
pub fn consumer(bootstrap: &str, topic: &str, db: &Postgres, group: &str) -> Proc {
    let url = db.url();
    let args = consumer_args(bootstrap, topic, &url, group);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::start("consumer", &refs, &[])
}

/// A consumer of topic `metrics` (group `g`) serving its HTTP endpoint on
/// 127.0.0.1:`port`, with extra librdkafka `properties` (`NAME=VALUE`,
/// passed with `-X`, later ones winning over [`consumer_args`]' own).
pub fn consumer_serving(bootstrap: &str, db: &Postgres, port: u16, properties: &[&str]) -> Proc {
    let url = db.url();
    let mut args = consumer_args(bootstrap, "metrics", &url, "g");
    args.extend(["--http-listen".to_owned(), format!("127.0.0.1:{port}")]);
    for property in properties {
        args.extend(["-X".to_owned(), (*property).to_owned()]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::start("consumer", &refs, &[])
}

/// A monitor probing the site list `targets`, publishing to topic `metrics`,
/// logging JSON and serving its HTTP endpoint on 127.0.0.1:`port`; `flags` are added.
pub fn monitor_serving(targets: &Path, bootstrap: &str, port: u16, flags: &[&str]) -> Proc {
    let targets = targets.to_string_lossy();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "--targets",
        &targets,
        "--kafka-brokers",
        bootstrap,
        "--kafka-topic",
        "metrics",
        "--http-listen",
        &listen,
        "--log-format",
        "json",
    ];
    args.extend(flags);
    Proc::start("monitor", &args, &[])
}

/// The pipeline watched as an operator watches it: local sites, PostgreSQL,
/// a broker with topic `metrics`, a monitor probing some of the farm's
/// paths every second, and a consumer, each service serving `/metrics`,
/// `/healthz` and `/readyz` on a port of its own.
pub struct Watched {
    pub monitor: Proc,
    pub monitor_port: u16,
    pub consumer: Proc,
    pub consumer_port: u16,
    pub broker: Proc,
    pub db: Postgres,
    pub farm: SiteFarm,
    /// The monitor's site list (`url,interval` lines).
    pub list: PathBuf,
    /// Holds the site list.
    pub dir: tempfile::TempDir,
}

impl Watched {
    /// Starts it all: the monitor probes each of the farm's `paths` every
    /// second, with extra `monitor_flags`; the consumer gets the extra
    /// librdkafka `consumer_properties` (see [`consumer_serving`]).
    pub async fn start(
        paths: &[&str],
        partitions: u32,
        monitor_flags: &[&str],
        consumer_properties: &[&str],
    ) -> Watched {
        let dir = tempfile::tempdir().expect("temp dir");
        let farm = SiteFarm::start(FarmOptions::default()).await.expect("farm");
        let db = Postgres::start_temp().expect("postgres");
        let (broker, bootstrap) = broker("metrics", partitions);
        let list = dir.path().join("sites.csv");
        let sites: String = paths
            .iter()
            .map(|p| format!("{},1\n", farm.url(p)))
            .collect();
        std::fs::write(&list, sites).expect("site list");
        let (monitor_port, consumer_port) = (free_port(), free_port());
        let monitor = monitor_serving(&list, &bootstrap, monitor_port, monitor_flags);
        let consumer = consumer_serving(&bootstrap, &db, consumer_port, consumer_properties);
        Watched {
            monitor,
            monitor_port,
            consumer,
            consumer_port,
            broker,
            db,
            farm,
            list,
            dir,
        }
    }
}

/// Metrics printed by a monitor running with `--output kafka,stdout`.
pub fn printed_metrics(lines: &[String]) -> Vec<Metric> {
    lines
        .iter()
        .map(|l| Metric::from_json(l.as_bytes()).expect("each stdout line is a metric"))
        .collect()
}

/// The fields of a JSON log line with this message.
pub fn log_event(lines: &[String], message: &str) -> serde_json::Value {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == message)
        .unwrap_or_else(|| panic!("no {message:?} in the log:\n{}", lines.join("\n")))
}

/// The stored rows by probe id: status, error kind, regex result.
pub async fn rows(
    db: &Postgres,
) -> HashMap<uuid::Uuid, (Option<i16>, Option<String>, Option<bool>)> {
    client(db)
        .await
        .query(
            "SELECT probe_id, status, error_kind, regex_matched FROM metrics",
            &[],
        )
        .await
        .expect("select")
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect()
}

/// A free port on 127.0.0.1 for a service's HTTP endpoint (bound, then let go).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `GET path` on 127.0.0.1:`port`: the status and the body; None while
/// nothing answers there. HTTP/1.0, so that no server answers in chunks.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply).await.ok()?;
    let status = reply.split(' ').nth(1)?.parse().ok()?;
    let body = reply.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// `text` as it may stand in a URL's query.
pub fn query_escape(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// The value of the sample `series` (name and labels as printed) in a
/// Prometheus text page; None when the page does not have it.
pub fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
