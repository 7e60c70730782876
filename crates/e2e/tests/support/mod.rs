//! Running the workspace's binaries as an operator would, and reading what
//! they leave behind.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sitewatch_metric::Metric;
use sitewatch_pgtest::Postgres;

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

fn lines(pipe: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
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

impl Proc {
    /// Starts a workspace binary with `args` and extra environment.
    pub fn start(name: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(bin(name));
        let _ = cmd
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            let _ = cmd.env(k, v);
        }
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
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{signal} {}", self.name);
    }

    /// Waits for the exit; returns the code (None when killed by a signal) and every stderr line.
    pub fn wait(mut self, within: Duration) -> (Option<i32>, Vec<String>, Vec<String>) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                std::thread::sleep(Duration::from_millis(100));
                return (
                    status.code(),
                    self.stdout.try_iter().collect(),
                    self.stderr.try_iter().collect(),
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

/// A client on the database.
pub async fn client(db: &Postgres) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    drop(tokio::spawn(connection));
    client
}

/// One number from SQL; 0 while the schema does not exist yet.
pub async fn count(db: &Postgres, sql: &str) -> i64 {
    let Ok((client, connection)) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls).await
    else {
        return 0;
    };
    drop(tokio::spawn(connection));
    client
        .query_one(sql, &[])
        .await
        .map(|r| r.get::<_, i64>(0))
        .unwrap_or(0)
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

/// Waits until `cond` holds; fails the test with `what` at the deadline.
pub async fn wait_for<F, Fut>(within: Duration, what: &str, cond: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
