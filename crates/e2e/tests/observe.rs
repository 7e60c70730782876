//! The built binaries watched as Prometheus and a container runtime watch
//! them: `/metrics` counts what happened (probes, deliveries, rows), and
//! `/readyz` says whether the service makes progress.

mod support;

use std::time::Duration;

use sitewatch_pgtest::sql::{count, count_once_created};
use sitewatch_pgtest::wait::wait_for;
use sitewatch_pgtest::Postgres;
use support::{broker, consumer_serving, free_port, http_get, log_event, sample, Proc, Watched};

const ROWS: &str = "SELECT count(*) FROM metrics";

/// The `/metrics` page of the service on `port`.
async fn scrape(port: u16) -> String {
    match http_get(port, "/metrics").await {
        Some((200, page)) => page,
        other => panic!("/metrics on {port}: {other:?}"),
    }
}

/// Waits until `/readyz` on `port` answers `status`.
async fn wait_ready(port: u16, status: u16, within: Duration) {
    wait_for(
        within,
        &format!("/readyz {status} on {port}"),
        || async move { http_get(port, "/readyz").await.map(|(s, _)| s) == Some(status) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_was_probed_delivered_and_stored() {
    let watched = Watched::start(&["/ok", "/status/500"], 2, &[], &[]).await;
    let (db, monitor_port, consumer_port) =
        (&watched.db, watched.monitor_port, watched.consumer_port);
    let (monitor, consumer) = (watched.monitor, watched.consumer);
    wait_for(Duration::from_secs(60), "rows from both sites", || async {
        count_once_created(db, ROWS).await >= 6
    })
    .await;
    wait_ready(monitor_port, 200, Duration::from_secs(30)).await;
    wait_ready(consumer_port, 200, Duration::from_secs(30)).await;
    assert_eq!(
        http_get(monitor_port, "/healthz").await.map(|r| r.0),
        Some(200)
    );

    let page = scrape(monitor_port).await;
    let ok = sample(&page, r#"sitewatch_monitor_probes_total{outcome="2xx"}"#);
    let failing = sample(&page, r#"sitewatch_monitor_probes_total{outcome="5xx"}"#);
    assert!(ok >= Some(1.0) && failing >= Some(1.0), "{page}");

    assert!(
        sample(
            &page,
            r#"sitewatch_monitor_deliveries_total{result="delivered"}"#
        ) >= Some(1.0),
        "{page}"
    );

    // Once the monitor has stopped, what it delivered is final, and each
    // delivered metric is one row, counted by the consumer.
    monitor.signal("TERM");
    let (code, _, stderr) = monitor.wait(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{}", stderr.join("\n"));
    let delivered = log_event(&stderr, "monitor stopped")["delivered"]
        .as_f64()
        .expect("the exit log counts deliveries");
    wait_for(
        Duration::from_secs(60),
        "every delivered metric stored",
        || async { count(db, ROWS).await as f64 == delivered },
    )
    .await;
    let page = scrape(consumer_port).await;
    assert_eq!(
        sample(&page, "sitewatch_consumer_rows_inserted_total"),
        Some(delivered),
        "{page}"
    );
    // Dead letters are counted by reason, a series once there is one.
    let dead_letters = page
        .lines()
        .filter(|l| l.starts_with("sitewatch_consumer_dead_letters_total"))
        .filter(|l| !l.ends_with(" 0"))
        .collect::<Vec<_>>();
    assert!(dead_letters.is_empty(), "{page}");
    let _ = consumer.stop(Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_while_postgres_is_down_and_200_after_without_a_restart() {
    let db = Postgres::start_temp().expect("postgres");
    let (_broker, bootstrap) = broker("metrics", 1);
    let port = free_port();
    let consumer = consumer_serving(&bootstrap, &db, port, &[]);
    wait_ready(port, 200, Duration::from_secs(30)).await;
    db.stop().expect("stop postgres");
    wait_ready(port, 503, Duration::from_secs(30)).await;
    let (_, body) = http_get(port, "/readyz").await.expect("an answer");
    assert!(body.contains("PostgreSQL"), "{body}");
    // The container health check asks the same endpoint, and says why.
    let (code, says) = check_health(port);
    assert_eq!(code, Some(1), "{says}");
    assert!(says.contains("unhealthy: PostgreSQL"), "{says}");
    db.start_again().expect("start postgres");
    wait_ready(port, 200, Duration::from_secs(60)).await;
    assert_eq!(check_health(port).0, Some(0));
    // The endpoint named only in the config file is the one asked, too.
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("consumer.toml");
    std::fs::write(&config, format!("http_listen = \"127.0.0.1:{port}\"\n")).expect("config");
    let out = std::process::Command::new(support::bin("consumer"))
        .arg("--check-health")
        .arg("--config")
        .arg(&config)
        .output()
        .expect("consumer --check-health runs");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = consumer.stop(Duration::from_secs(30));
}

/// `consumer --check-health` with the endpoint of the consumer on `port`
/// (as compose sets it, in the environment): its exit code and stderr.
fn check_health(port: u16) -> (Option<i32>, String) {
    let out = std::process::Command::new(support::bin("consumer"))
        .arg("--check-health")
        .env("CONSUMER_HTTP_LISTEN", format!("127.0.0.1:{port}"))
        .output()
        .expect("consumer --check-health runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_taken_or_bad_address_stops_the_service_naming_the_setting() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    for (listen, says) in [
        (addr.as_str(), "http_listen: cannot listen on"),
        ("nowhere", "http_listen: \"nowhere\" is not an address"),
    ] {
        let monitor = Proc::start(
            "monitor",
            &["--targets", "/nonexistent.csv", "--http-listen", listen],
            &[],
        );
        let (code, _, stderr) = monitor.wait(Duration::from_secs(20));
        assert_ne!(code, Some(0));
        assert!(
            stderr.iter().any(|l| l.contains(says)),
            "{says:?} not in:\n{}",
            stderr.join("\n")
        );
    }
}
