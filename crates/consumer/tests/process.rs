//! The built `consumer` binary as an operator runs it: SIGKILL, SIGTERM, restarts.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chrono::DurationRound;
use common::{metrics, rows, wait_rows, wait_rows_past, Stack, TOPIC};
use sitewatch_metric::Metric;
use sitewatch_pgtest::child::{assert_help_names, signal};
use sitewatch_pgtest::wait::{lines, rest, wait_for, wait_for_some};
use tokio::task::JoinHandle;

const CONSUMER: &str = env!("CARGO_BIN_EXE_consumer");

struct Proc {
    child: Child,
    log: mpsc::Receiver<String>,
}

fn start(stack: &Stack) -> Proc {
    start_with(stack, "15s", true)
}

/// A consumer with `grace` to write what it holds after SIGTERM, and the
/// tests' short group timeouts or librdkafka's defaults.
fn start_with(stack: &Stack, grace: &str, short_timeouts: bool) -> Proc {
    let mut cmd = Command::new(CONSUMER);
    let _ = cmd
        .args([
            "--kafka-brokers",
            &stack.bootstrap,
            "--kafka-topic",
            TOPIC,
            "--group-id",
            "g",
        ])
        .args([
            "--postgres-url",
            &stack.db.url(),
            "--postgres-sslmode",
            "disable",
        ])
        // The tests' metrics are dated months back; none is to be dropped by age.
        .args([
            "--retention-metrics",
            "100years",
            "--retention-rollups",
            "100years",
        ])
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

/// Streams `all` to the topic with a consumer reading it, and sends the
/// consumer `signal` once at least `past` rows are stored; returns the
/// producer's task, and the consumer's exit code and log.
async fn interrupted(
    stack: &Stack,
    all: &[Metric],
    past: i64,
    signal: &str,
) -> (JoinHandle<()>, Option<i32>, Vec<String>) {
    let producer = stream(stack.bootstrap.clone(), all.to_vec());
    let consumer = start(stack);
    wait_rows_past(&stack.db, past, Duration::from_secs(60)).await;
    consumer.signal(signal);
    let (code, log) = consumer.exit(Duration::from_secs(30)).await;
    (producer, code, log)
}

/// Publishes `metrics` in chunks over time, as a monitor would.
fn stream(bootstrap: String, metrics: Vec<Metric>) -> JoinHandle<()> {
    tokio::spawn(async move {
        for chunk in metrics.chunks(100) {
            let _ = common::publish(&bootstrap, TOPIC, chunk).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_then_restart_gives_exactly_one_row_per_message() {
    let stack = Stack::start(2);
    let all = metrics(3000, 40);
    let (producer, code, _) = interrupted(&stack, &all, 500, "KILL").await;
    assert_eq!(code, None, "killed by a signal");
    let second = start(&stack);
    producer.await.expect("producer");
    wait_rows(&stack.db, 3000, Duration::from_secs(120)).await;
    second.signal("TERM");
    let (code, _) = second.exit(Duration::from_secs(30)).await;
    assert_eq!(code, Some(0));
    let stored = common::assert_all_stored(&stack.db, &all).await;
    assert_eq!(stored.len(), 3000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_messages_in_flight_exits_0_and_a_restart_reads_nothing_twice() {
    let stack = Stack::start(2);
    let all = metrics(2000, 25);
    let (producer, code, log) = interrupted(&stack, &all, 300, "TERM").await;
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
    let written_before = rows(&stack.db).await;
    assert_eq!(
        serde_json::Value::from(written_before),
        summary["inserted"],
        "rows in the table are what the consumer says it wrote"
    );

    producer.await.expect("producer");
    let second = start(&stack);
    wait_rows(&stack.db, 2000, Duration::from_secs(90)).await;
    second.signal("TERM");
    let (code, log) = second.exit(Duration::from_secs(30)).await;
    assert_eq!(code, Some(0));
    let summary = final_summary(&log);
    assert_eq!(
        summary["duplicates"], 0,
        "offsets were committed at shutdown, so nothing was read twice: {summary}"
    );
    let _ = common::assert_all_stored(&stack.db, &all).await;
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
    let stack = Stack::start(2);
    let _ = stack.publish(&metrics(50, 5)).await;
    let grace = Duration::from_secs(3);
    let consumer = start_with(&stack, "3s", false);
    wait_rows(&stack.db, 50, Duration::from_secs(60)).await;
    // The brokers, group coordinator included, vanish; librdkafka's defaults
    // would let a commit wait for the session timeout (45 s).
    drop(stack.kafka);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_postgres_down_exits_within_the_grace_period_and_a_restart_stores_the_rest() {
    let stack = Stack::start(2);
    let all = metrics(500, 25);
    let _ = stack.publish(&all[..300]).await;
    let grace = Duration::from_secs(3);
    let consumer = start_with(&stack, "3s", true);
    wait_rows(&stack.db, 300, Duration::from_secs(60)).await;
    stack.db.stop().expect("stop PostgreSQL");
    // Read while the database is away: held, retried, never written.
    let _ = stack.publish(&all[300..]).await;
    let stopped = Instant::now();
    consumer.signal("TERM");
    let (code, log) = consumer.exit(Duration::from_secs(60)).await;
    let took = stopped.elapsed();
    assert!(
        took < grace + Duration::from_secs(8),
        "exited {took:?} after SIGTERM with a {grace:?} grace period:\n{}",
        log.join("\n")
    );
    assert_eq!(code, Some(0), "{}", log.join("\n"));
    let summary = final_summary(&log);
    assert_eq!(summary["inserted"], 300, "{summary}");

    stack.db.start_again().expect("start PostgreSQL again");
    let second = start(&stack);
    wait_rows(&stack.db, 500, Duration::from_secs(90)).await;
    second.signal("TERM");
    let (code, _) = second.exit(Duration::from_secs(30)).await;
    assert_eq!(code, Some(0));
    let _ = common::assert_all_stored(&stack.db, &all).await;
}

/// Rollups of the raw rows that differ from what `metrics_hourly` holds, in
/// either direction, over the hours before `rolled_until`.
const HOURS_THAT_DIFFER: &str = "
WITH raw AS (
    SELECT website_id, date_trunc('hour', started_at, 'UTC') AS hour,
           count(*)::int AS probes, count(status)::int AS responses,
           count(*) FILTER (WHERE error_kind = 'timeout')::int AS timeouts,
           percentile_disc(0.5) WITHIN GROUP (ORDER BY total_us) FILTER (WHERE status IS NOT NULL) AS p50,
           percentile_disc(0.99) WITHIN GROUP (ORDER BY total_us) FILTER (WHERE status IS NOT NULL) AS p99
    FROM metrics WHERE started_at < (SELECT rolled_until FROM rollup_progress)
    GROUP BY 1, 2
), rolled AS (
    SELECT website_id, hour, probes, responses, errors_timeout, latency_p50_us, latency_p99_us
    FROM metrics_hourly
)
SELECT count(*) FROM ((TABLE raw EXCEPT TABLE rolled) UNION ALL (TABLE rolled EXCEPT TABLE raw)) differ";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_rollup_leaves_no_step_half_done_and_a_restart_finishes_them() {
    let stack = Stack::start(1);
    let connector = common::pg_settings(stack.db.url())
        .connector()
        .expect("connector");
    sitewatch_db::schema::migrate(&connector)
        .await
        .expect("schema");
    let mut db = connector.connect().await.expect("connect");
    // Ten days of a quarter-hourly probe of ten sites, one in nine timing out,
    // from before the consumer's rollups ever ran.
    // One start for every statement, so that midnight passing changes nothing.
    let first_day = chrono::Utc::now()
        .duration_trunc(chrono::TimeDelta::days(1))
        .expect("a day")
        - chrono::TimeDelta::days(10);
    db.batch_execute(
        "INSERT INTO websites (url) SELECT 'https://site-' || s || '.example/' FROM generate_series(1, 10) s",
    )
    .await
    .expect("sites");
    let _ = db
        .execute(
            "SELECT metrics_partition_for(d) FROM generate_series($1::timestamptz, $1 + interval '10 days', interval '24 hours') d",
            &[&first_day],
        )
        .await
        .expect("partitions");
    let _ = db
        .execute(
            "INSERT INTO metrics (probe_id, website_id, schema_version, scheduled_at, started_at, lateness_us,
                                  skipped_before, total_us, status, body_bytes, body_truncated, redirects,
                                  error_kind, kafka_topic, kafka_partition, kafka_offset)
             SELECT gen_random_uuid(), w.id, 2, t.at, t.at, 0, 0, 1000 + (n * 7919 * w.id) % 90000,
                    CASE WHEN n % 9 <> 0 THEN 200 END, 0, false, 0,
                    CASE WHEN n % 9 = 0 THEN 'timeout' END, 'metrics', 0, n
             FROM websites w, generate_series(0, 10 * 24 * 4 - 1) n,
                  LATERAL (SELECT $1::timestamptz + n * interval '15 minutes' AS at) t",
            &[&first_day],
        )
        .await
        .expect("ten days of metrics");

    // Holds the pass inside its first step: after it rolled the first day's
    // hours, before it commits them with that day's rollup.
    let blocker = db.transaction().await.expect("transaction");
    blocker
        // Idle in its transaction for as long as the test takes.
        .batch_execute(
            "SET LOCAL idle_in_transaction_session_timeout = 0; LOCK TABLE metrics_daily IN EXCLUSIVE MODE",
        )
        .await
        .expect("lock");
    let consumer = start(&stack);
    let waiting = wait_for_some(Duration::from_secs(60), "the pass mid-step", || async {
        let row = connector
            .connect()
            .await
            .ok()?
            .query_opt(
                "SELECT pid FROM pg_locks WHERE relation = 'metrics_daily'::regclass AND NOT granted",
                &[],
            )
            .await
            .ok()??;
        row.try_get::<_, i32>(0).ok()
    })
    .await;
    consumer.signal("KILL");
    let (code, _) = consumer.exit(Duration::from_secs(30)).await;
    assert_eq!(code, None, "killed by a signal");
    blocker.rollback().await.expect("released");
    // Its session ends once PostgreSQL finds the client gone.
    let observer = connector.connect().await.expect("connect");
    wait_for(
        Duration::from_secs(30),
        "the killed pass's session ended",
        || async {
            observer
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                    &[&waiting],
                )
                .await
                .is_ok_and(|row| row.get::<_, i64>(0) == 0)
        },
    )
    .await;
    let left: (i64, i64, bool) = {
        let row = observer
            .query_one(
                "SELECT (SELECT count(*) FROM metrics_hourly), (SELECT count(*) FROM metrics_daily),
                        (SELECT rolled_until = $1 FROM rollup_progress)",
                &[&first_day],
            )
            .await
            .expect("what the killed pass left");
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!(
        left,
        (0, 0, true),
        "the killed step's hours are not kept, and the progress did not move"
    );

    let consumer = start(&stack);
    wait_for(Duration::from_secs(60), "the rollups caught up", || async {
        observer
            .query_one(
                // Every hour closed a few minutes ago.
                "SELECT rolled_until >= date_trunc('hour', now() - interval '10 minutes', 'UTC') FROM rollup_progress",
                &[],
            )
            .await
            .is_ok_and(|row| row.get::<_, bool>(0))
    })
    .await;
    consumer.signal("TERM");
    let (code, _) = consumer.exit(Duration::from_secs(30)).await;
    assert_eq!(code, Some(0));
    let differ: i64 = observer
        .query_one(HOURS_THAT_DIFFER, &[])
        .await
        .expect("compared")
        .get(0);
    assert_eq!(differ, 0, "every hour rolled once, as its raw rows give");
    let (days, closed): (i64, i64) = {
        // The ten days, but for the last in the minutes after midnight.
        let row = observer
            .query_one(
                "SELECT (SELECT count(*) FROM metrics_daily),
                        (SELECT least(10, extract(day FROM date_trunc('day', rolled_until, 'UTC') - $1))::bigint
                         FROM rollup_progress)",
                &[&first_day],
            )
            .await
            .expect("days");
        (row.get(0), row.get(1))
    };
    assert!(closed >= 9, "{closed} days closed");
    assert_eq!(days, 10 * closed, "each closed day of ten sites");
}
