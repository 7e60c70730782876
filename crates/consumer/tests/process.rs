//! The built `consumer` binary as an operator runs it: SIGKILL, SIGTERM, restarts.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sitewatch_metric::Metric;
use sitewatch_pgtest::child::{assert_help_names, signal};
use sitewatch_pgtest::sql::{count, count_once_created};
use sitewatch_pgtest::wait::{lines, rest, wait_for};
use sitewatch_pgtest::Postgres;

const CONSUMER: &str = env!("CARGO_BIN_EXE_consumer");

struct Proc {
    child: Child,
    log: mpsc::Receiver<String>,
}

fn start(bootstrap: &str, db: &Postgres) -> Proc {
    start_with(bootstrap, db, "15s", true)
}

/// A consumer with `grace` to write what it holds after SIGTERM, and the
/// tests' short group timeouts or librdkafka's defaults.
fn start_with(bootstrap: &str, db: &Postgres, grace: &str, short_timeouts: bool) -> Proc {
    let mut cmd = Command::new(CONSUMER);
    let _ = cmd
        .args([
            "--kafka-brokers",
            bootstrap,
            "--kafka-topic",
            "metrics",
            "--group-id",
            "g",
        ])
        .args(["--postgres-url", &db.url(), "--postgres-sslmode", "disable"])
        .args([
            "--batch-rows",
            "100",
            "--batch-wait",
            "100ms",
            "--log-format",
            "json",
            "--shutdown-grace",
            grace,
        ])
        .args(
            common::group_timeouts()
                .iter()
                .filter(|_| short_timeouts)
                .flat_map(|(k, v)| ["-X".to_owned(), format!("{k}={v}")]),
        )
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("consumer starts");
    let log = lines(child.stderr.take().expect("stderr"));
    Proc { child, log }
}

impl Proc {
    fn signal(&self, name: &str) {
        signal(&self.child, name);
    }

    /// Exit code, and the log lines, once the process ended.
    async fn exit(mut self, within: Duration) -> (Option<i32>, Vec<String>) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return (status.code(), rest(&self.log, Duration::from_secs(5)));
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let lines: Vec<String> = self.log.try_iter().collect();
                panic!(
                    "consumer did not exit within {within:?}; log:\n{}",
                    lines.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The fields of the "consumer stopped" log line.
fn final_summary(lines: &[String]) -> serde_json::Value {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "consumer stopped")
        .unwrap_or_else(|| panic!("no summary in the log:\n{}", lines.join("\n")))
}

/// Publishes `metrics` in chunks over time, as a monitor would.
fn stream(bootstrap: String, metrics: Vec<Metric>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for chunk in metrics.chunks(100) {
            let _ = common::publish(&bootstrap, "metrics", chunk).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

const ROWS: &str = "SELECT count(*) FROM metrics";

async fn rows(db: &Postgres) -> i64 {
    count(db, ROWS).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_then_restart_gives_exactly_one_row_per_message() {
    let db = common::postgres();
    let kafka = common::kafka("metrics", 2);
    let bootstrap = kafka.bootstrap_servers();
    let all: Vec<Metric> = (0..3000).map(|i| common::metric(i, 40)).collect();
    let producer = stream(bootstrap.clone(), all.clone());
    let first = start(&bootstrap, &db);
    wait_for(Duration::from_secs(60), "rows arriving", || async {
        count_once_created(&db, ROWS).await >= 500
    })
    .await;
    first.signal("KILL");
    let (code, _) = first.exit(Duration::from_secs(10)).await;
    assert_eq!(code, None, "killed by a signal");
    let second = start(&bootstrap, &db);
    producer.await.expect("producer");
    wait_for(
        Duration::from_secs(120),
        "every row after the restart",
        || async { rows(&db).await == 3000 },
    )
    .await;
    second.signal("TERM");
    let (code, _) = second.exit(Duration::from_secs(30)).await;
    assert_eq!(code, Some(0));
    let stored = common::stored(&db).await;
    assert_eq!(stored.len(), 3000);
    assert!(
        all.iter().all(|m| stored.contains_key(&m.probe_id)),
        "no message lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_messages_in_flight_exits_0_and_a_restart_reads_nothing_twice() {
    let db = common::postgres();
    let kafka = common::kafka("metrics", 2);
    let bootstrap = kafka.bootstrap_servers();
    let all: Vec<Metric> = (0..2000).map(|i| common::metric(i, 25)).collect();
    let producer = stream(bootstrap.clone(), all.clone());
    let first = start(&bootstrap, &db);
    wait_for(Duration::from_secs(60), "rows arriving", || async {
        count_once_created(&db, ROWS).await >= 300
    })
    .await;
    first.signal("TERM");
    let (code, log) = first.exit(Duration::from_secs(30)).await;
    assert_eq!(
        code,
        Some(0),
        "exit 0 after SIGTERM; log:\n{}",
        log.join("\n")
    );
    let summary = final_summary(&log);
    assert_eq!(
        summary["unwritten"], 0,
        "everything read was written before exit: {summary}"
    );
    let written_before = rows(&db).await;
    assert_eq!(
        serde_json::Value::from(written_before),
        summary["inserted"],
        "rows in the table are what the consumer says it wrote"
    );

    producer.await.expect("producer");
    let second = start(&bootstrap, &db);
    wait_for(
        Duration::from_secs(90),
        "every row after the restart",
        || async { rows(&db).await == 2000 },
    )
    .await;
    second.signal("TERM");
    let (code, log) = second.exit(Duration::from_secs(30)).await;
    assert_eq!(code, Some(0));
    let summary = final_summary(&log);
    assert_eq!(
        summary["duplicates"], 0,
        "offsets were committed at shutdown, so nothing was read twice: {summary}"
    );
    let stored = common::stored(&db).await;
    assert!(
        all.iter().all(|m| stored.contains_key(&m.probe_id)),
        "no message lost"
    );
}

#[test]
fn help_documents_the_settings_and_bad_ones_are_named() {
    assert_help_names(
        CONSUMER,
        &[
            "--group-id",
            "--batch-rows",
            "--batch-wait",
            "--shutdown-grace",
            "--postgres-url",
            "SITEWATCH_POSTGRES_PASSWORD",
            "--postgres-sslmode",
            "--postgres-pool-size",
            "--kafka-brokers",
        ],
    );
    let out = Command::new(CONSUMER)
        .args(["--batch-rows", "0", "--postgres-password", "hunter2"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`batch_rows`") && !err.contains("hunter2"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_brokers_gone_exits_within_the_grace_period_on_default_timeouts() {
    let db = common::postgres();
    let cluster = common::kafka("metrics", 2);
    let bootstrap = cluster.bootstrap_servers();
    let metrics: Vec<Metric> = (0..50).map(|i| common::metric(i, 5)).collect();
    let _ = common::publish(&bootstrap, "metrics", &metrics).await;
    let grace = Duration::from_secs(3);
    let consumer = start_with(&bootstrap, &db, "3s", false);
    wait_for(Duration::from_secs(60), "the 50 rows", || async {
        count_once_created(&db, ROWS).await == 50
    })
    .await;
    // The brokers, group coordinator included, vanish; librdkafka's defaults
    // would let a commit wait for the session timeout (45 s).
    drop(cluster);
    let stopped = Instant::now();
    consumer.signal("TERM");
    let (code, lines) = consumer.exit(Duration::from_secs(60)).await;
    let took = stopped.elapsed();
    assert_eq!(code, Some(0), "{}", lines.join("\n"));
    assert!(
        took < grace + Duration::from_secs(8),
        "exited {took:?} after SIGTERM with a {grace:?} grace period:\n{}",
        lines.join("\n")
    );
}
