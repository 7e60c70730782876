//! The built binaries together, as separate processes: broker, monitor,
//! consumers, against a real PostgreSQL and local sites.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use sitewatch_metric::{ErrorKind, Metric};
use sitewatch_pgtest::sql::{client, count, count_once_created};
use sitewatch_pgtest::wait::wait_for;
use sitewatch_pgtest::Postgres;
use sitewatch_sitefarm::{FarmOptions, SiteFarm};
use support::{broker, consumer, log_event, printed_metrics, rows, Proc};

async fn farm_and_ca(dir: &std::path::Path) -> (SiteFarm, String) {
    let farm = SiteFarm::start(FarmOptions::default()).await.expect("farm");
    let ca = dir.join("farm-ca.pem");
    std::fs::write(&ca, farm.ca_pem()).expect("write CA");
    (farm, ca.to_string_lossy().into_owned())
}

/// What every test starts with: a temp folder, local sites (and their CA), a
/// PostgreSQL, and the broker with a `metrics` topic.
struct Stack {
    dir: tempfile::TempDir,
    farm: SiteFarm,
    ca: String,
    db: Postgres,
    broker: Proc,
    bootstrap: String,
}

impl Stack {
    async fn start(partitions: u32) -> Stack {
        let dir = tempfile_dir();
        let (farm, ca) = farm_and_ca(dir.path()).await;
        let db = Postgres::start_temp().expect("postgres");
        let (broker, bootstrap) = broker("metrics", partitions);
        Stack {
            dir,
            farm,
            ca,
            db,
            broker,
            bootstrap,
        }
    }

    /// Writes a site list of `n` fast sites probed every `interval` seconds; returns its path.
    fn fast_sites(&self, n: u32, interval: &str) -> String {
        let lines: String = (0..n)
            .map(|i| format!("{},{interval}\n", self.farm.url(&format!("/site/{i}"))))
            .collect();
        self.site_list(&lines)
    }

    /// Writes a site list; returns its path.
    fn site_list(&self, csv: &str) -> String {
        let list = self.dir.path().join("sites.csv");
        std::fs::write(&list, csv).expect("site list");
        list.to_string_lossy().into_owned()
    }

    /// A consumer of the `metrics` topic in `group`.
    fn consumer(&self, group: &str) -> Proc {
        consumer(&self.bootstrap, "metrics", &self.db, group)
    }

    /// A monitor of the sites in `list` that publishes to `metrics` and prints
    /// each metric (`--output kafka,stdout`), with `extra` flags.
    fn monitor(&self, list: &str, extra: &[&str]) -> Proc {
        let mut args = vec![
            "--targets",
            list,
            "--output",
            "kafka,stdout",
            "--kafka-brokers",
            &self.bootstrap,
            "--kafka-topic",
            "metrics",
            "--ca-file",
            &self.ca,
        ];
        args.extend_from_slice(extra);
        Proc::start("monitor", &args, &[])
    }

    async fn rows(&self) -> i64 {
        count(&self.db, ROWS).await
    }

    /// Waits until the table holds at least `n` rows; the first wait may begin
    /// before the consumer has made the table.
    async fn wait_rows(&self, within: Duration, what: &str, n: i64) {
        wait_for(within, what, || async {
            count_once_created(&self.db, ROWS).await >= n
        })
        .await;
    }
}

const ROWS: &str = "SELECT count(*) FROM metrics";

/// Each printed probe is exactly one row: the monitor printed no probe twice,
/// the table holds as many rows as probes and as many distinct probe ids as
/// rows (so nothing doubled), and every printed probe is among them (so
/// nothing lost).
async fn assert_one_row_per_probe(db: &Postgres, printed: &[Metric]) {
    let printed_ids: HashSet<uuid::Uuid> = printed.iter().map(|m| m.probe_id).collect();
    assert_eq!(
        printed_ids.len(),
        printed.len(),
        "the monitor printed each probe once"
    );
    let rows = count(db, ROWS).await;
    let distinct = count(db, "SELECT count(DISTINCT probe_id) FROM metrics").await;
    assert_eq!(rows, distinct, "nothing doubled: no probe id in two rows");
    assert_eq!(
        rows,
        i64::try_from(printed.len()).expect("fits"),
        "nothing doubled: exactly one row per probe, no more"
    );
    let stored_ids: HashSet<uuid::Uuid> = client(db)
        .await
        .query("SELECT probe_id FROM metrics", &[])
        .await
        .expect("select probe ids")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(printed_ids.is_subset(&stored_ids), "nothing lost");
}

/// SIGTERM to a monitor started with `--output kafka,stdout`: it exits 0; returns what it printed.
fn stop_monitor(monitor: Proc) -> Vec<Metric> {
    let (stdout, _) = monitor.stop(Duration::from_secs(30));
    printed_metrics(&stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_probe_the_monitor_makes_is_exactly_one_row_with_the_right_result() {
    let stack = Stack::start(2).await;
    let farm = &stack.farm;
    let refused = free_port();
    // What each site's probe must give: status, error kind, regex result.
    let ok = |matched: Option<bool>| (Some(200), None, matched);
    let status = |code: u16| (Some(code), None, None);
    let failed = |kind: ErrorKind| (None, Some(kind), None);
    let sites = [
        (farm.url("/ok"), "Welcome", ok(Some(true))),
        (farm.url("/ok?miss"), "Goodbye", ok(Some(false))),
        (farm.url("/status/500"), "", status(500)),
        (farm.url("/status/404"), "", status(404)),
        (farm.url("/slow/3000"), "", failed(ErrorKind::Timeout)),
        (farm.url("/redirect/2"), "chain done", ok(Some(true))),
        (
            format!("http://127.0.0.1:{refused}/"),
            "",
            failed(ErrorKind::Connect),
        ),
        (
            "http://no-such-site.invalid/".to_owned(),
            "",
            failed(ErrorKind::Dns),
        ),
        (farm.self_signed_url("/ok"), "", failed(ErrorKind::Tls)),
        (farm.https_url("/ok"), "Welcome", ok(Some(true))),
    ];
    let csv: String = sites
        .iter()
        .map(|(u, r, _)| format!("{u},1,{r}\n"))
        .collect();
    let list = stack.site_list(&csv);
    let consumer = stack.consumer("g");
    let monitor = stack.monitor(&list, &[]);
    stack
        .wait_rows(Duration::from_secs(60), "rows arriving", 30)
        .await;
    let printed = stop_monitor(monitor);
    assert!(printed.len() >= 30);
    let n = i64::try_from(printed.len()).expect("fits");
    stack
        .wait_rows(Duration::from_secs(60), "a row for every printed probe", n)
        .await;
    assert_one_row_per_probe(&stack.db, &printed).await;
    let stored = rows(&stack.db).await;
    for m in &printed {
        let row = stored
            .get(&m.probe_id)
            .unwrap_or_else(|| panic!("probe {} of {} has no row", m.probe_id, m.url));
        let kind = m.error.as_ref().map(|e| e.kind.as_str().to_owned());
        assert_eq!(
            *row,
            (
                m.status.map(|s| i16::try_from(s).expect("fits")),
                kind,
                m.regex_matched
            ),
            "row matches the probe of {}",
            m.url
        );
        let (_, _, expected) = sites
            .iter()
            .find(|(u, _, _)| *u == m.url)
            .expect("a listed site");
        assert_eq!(
            (m.status, m.error.as_ref().map(|e| e.kind), m.regex_matched),
            *expected,
            "result of {}",
            m.url
        );
    }
    let urls: HashSet<&str> = printed.iter().map(|m| m.url.as_str()).collect();
    assert_eq!(urls.len(), sites.len(), "every kind of site was probed");
    let _ = consumer.stop(Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_mid_stream_hands_its_partitions_over_and_nothing_is_lost_or_doubled() {
    let stack = Stack::start(4).await;
    let list = stack.fast_sites(20, "0.2");
    let a = stack.consumer("shared");
    let b = stack.consumer("shared");
    let monitor = stack.monitor(&list, &[]);
    stack
        .wait_rows(Duration::from_secs(60), "rows arriving", 300)
        .await;
    a.signal("KILL");
    let _ = a.wait(Duration::from_secs(10));
    // b takes a's partitions once a's session times out (6 s); then rows flow again.
    let before = stack.rows().await;
    stack
        .wait_rows(
            Duration::from_secs(60),
            "rows after the kill",
            before + 1000,
        )
        .await;
    let printed = stop_monitor(monitor);
    let n = i64::try_from(printed.len()).expect("fits");
    stack
        .wait_rows(Duration::from_secs(60), "every probe stored", n)
        .await;
    assert_one_row_per_probe(&stack.db, &printed).await;
    let (_, log) = b.stop(Duration::from_secs(30));
    let took_all = log
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .any(|v| v["message"] == "partitions assigned" && v["partitions"] == "[0, 1, 2, 3]");
    assert!(took_all, "the survivor took every partition over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_the_monitor_commits_the_consumer_and_a_restart_reads_nothing_twice() {
    let stack = Stack::start(2).await;
    let list = stack.fast_sites(5, "0.2");
    let first = stack.consumer("g");
    let monitor = stack.monitor(&list, &[]);
    stack
        .wait_rows(Duration::from_secs(60), "rows arriving", 100)
        .await;
    let n = i64::try_from(stop_monitor(monitor).len()).expect("fits");
    wait_for(
        Duration::from_secs(30),
        "every printed probe stored (the producer was flushed)",
        || async { stack.rows().await == n },
    )
    .await;
    let (_, log) = first.stop(Duration::from_secs(30));
    assert_eq!(log_event(&log, "consumer stopped")["unwritten"], 0);

    // The restarted consumer starts from the committed offsets: it reads only what is new.
    let second = stack.consumer("g");
    let again = Proc::start(
        "monitor",
        &[
            "--targets",
            &list,
            "--once",
            "--kafka-brokers",
            &stack.bootstrap,
            "--kafka-topic",
            "metrics",
        ],
        &[],
    );
    assert_eq!(again.wait(Duration::from_secs(30)).0, Some(0));
    wait_for(
        Duration::from_secs(60),
        "the 5 new probes stored",
        || async { stack.rows().await == n + 5 },
    )
    .await;
    let (_, log) = second.stop(Duration::from_secs(30));
    let summary = log_event(&log, "consumer stopped");
    assert_eq!(
        (summary["read"].as_u64(), summary["duplicates"].as_u64()),
        (Some(5), Some(0)),
        "nothing read twice: {summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sites_from_the_websites_table_follow_its_rows() {
    let stack = Stack::start(2).await;
    let db = &stack.db;
    let consumer = stack.consumer("g");
    wait_for(Duration::from_secs(60), "the consumer's schema", || async {
        count_once_created(db, "SELECT count(*) FROM refinery_schema_history").await >= 1
    })
    .await;
    let (a, b) = (stack.farm.url("/site/1"), stack.farm.url("/site/2"));
    db.psql(
        "postgres",
        &format!("INSERT INTO websites (url, interval_seconds) VALUES ('{a}', 0.3)"),
    )
    .expect("insert a");
    let url = format!("{}?sslmode=disable", db.url());
    let monitor = Proc::start(
        "monitor",
        &[
            "--targets",
            &url,
            "--targets-refresh",
            "500ms",
            "--kafka-brokers",
            &stack.bootstrap,
            "--kafka-topic",
            "metrics",
            "--ca-file",
            &stack.ca,
            "--log-format",
            "json",
        ],
        &[],
    );
    let rows_of = |site: String| {
        let db = &db;
        async move {
            count(db, &format!("SELECT count(*) FROM metrics m JOIN websites w ON w.id = m.website_id WHERE w.url = '{site}'")).await
        }
    };
    wait_for(Duration::from_secs(60), "rows for the first site", || {
        rows_of(a.clone()).map_gt(0)
    })
    .await;
    db.psql(
        "postgres",
        &format!("INSERT INTO websites (url, interval_seconds) VALUES ('{b}', 0.3)"),
    )
    .expect("insert b");
    // One reload period (500 ms) plus the consumer's batch time.
    wait_for(
        Duration::from_secs(5),
        "rows for the site added while running",
        || rows_of(b.clone()).map_gt(0),
    )
    .await;
    db.psql(
        "postgres",
        &format!("UPDATE websites SET enabled = false WHERE url = '{a}'"),
    )
    .expect("disable a");
    // After the reload that drops a, and a probe of a that was running then, a gets no more rows.
    let mark = rows_of(b.clone()).await;
    wait_for(
        Duration::from_secs(10),
        "b probed on after the reload",
        || rows_of(b.clone()).map_gt(mark + 6),
    )
    .await;
    let a_rows = rows_of(a.clone()).await;
    let mark = rows_of(b.clone()).await;
    wait_for(Duration::from_secs(10), "b probed on", || {
        rows_of(b.clone()).map_gt(mark + 6)
    })
    .await;
    assert_eq!(
        rows_of(a.clone()).await,
        a_rows,
        "a disabled row is no longer probed"
    );
    let (_, log) = monitor.stop(Duration::from_secs(30));
    assert!(
        log.iter()
            .any(|l| l.contains("target list reloaded") && l.contains("\"removed\":1")),
        "the reload dropped a"
    );
    let _ = consumer.stop(Duration::from_secs(30));
}

/// `future.map_gt(n)`: whether the count it yields is above `n`.
trait MapGt {
    async fn map_gt(self, n: i64) -> bool;
}

impl<F: std::future::Future<Output = i64>> MapGt for F {
    async fn map_gt(self, n: i64) -> bool {
        self.await > n
    }
}

fn tempfile_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_report_connected_services_and_fail_when_a_dependency_goes() {
    let stack = Stack::start(1).await;
    let Stack {
        dir,
        farm,
        db,
        broker,
        bootstrap,
        ..
    } = &stack;
    let list = stack.site_list(&format!("{},1\n", farm.url("/ok")));
    let consumer_health = dir.path().join("consumer.health");
    let monitor_health = dir.path().join("monitor.health");
    let mut args = support::consumer_args(bootstrap, "metrics", &db.url(), "g");
    args.extend([
        "--health-file".to_owned(),
        consumer_health.to_string_lossy().into_owned(),
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let consumer = Proc::start("consumer", &refs, &[]);
    let monitor = stack.monitor(
        &list,
        &["--health-file", monitor_health.to_str().expect("utf8")],
    );
    let healthy = |name: &'static str, file: std::path::PathBuf| {
        move || {
            let file = file.clone();
            async move {
                std::process::Command::new(support::bin(name))
                    .args(["--check-health", "--health-file"])
                    .arg(&file)
                    .status()
                    .is_ok_and(|s| s.success())
            }
        }
    };
    wait_for(
        Duration::from_secs(30),
        "the consumer healthy",
        healthy("consumer", consumer_health.clone()),
    )
    .await;
    wait_for(
        Duration::from_secs(30),
        "the monitor healthy",
        healthy("monitor", monitor_health.clone()),
    )
    .await;
    // Without the broker, beats stop and the check fails once the last beat is stale.
    broker.signal("KILL");
    let unhealthy = |name: &'static str, file: std::path::PathBuf| {
        let check = healthy(name, file);
        move || {
            let check = check.clone();
            async move { !check().await }
        }
    };
    wait_for(
        Duration::from_secs(60),
        "the monitor unhealthy without Kafka",
        unhealthy("monitor", monitor_health),
    )
    .await;
    wait_for(
        Duration::from_secs(60),
        "the consumer unhealthy without Kafka",
        unhealthy("consumer", consumer_health),
    )
    .await;
    drop((monitor, consumer));
}
