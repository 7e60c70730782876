//! The built binaries watched as Prometheus and a container runtime watch
//! them: `/metrics` counts what happened (probes, deliveries, rows), and
//! `/readyz` says whether the service makes progress.

mod support;

use std::time::Duration;

use sitewatch_pgtest::sql::{count, count_once_created};
use sitewatch_pgtest::wait::wait_for;
use sitewatch_pgtest::Postgres;
use sitewatch_sitefarm::{FarmOptions, SiteFarm};
use support::{broker, consumer_args, free_port, http_get, log_event, sample, Proc};

const ROWS: &str = "SELECT count(*) FROM metrics";

/// A consumer with its HTTP endpoint on `port`.
fn consumer(bootstrap: &str, db: &Postgres, port: u16) -> Proc {
    let url = db.url();
    let listen = format!("127.0.0.1:{port}");
    let mut args = consumer_args(bootstrap, "metrics", &url, "g");
    args.extend(["--http-listen".to_owned(), listen]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::start("consumer", &refs, &[])
}

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
    let dir = tempfile::tempdir().expect("temp dir");
    let farm = SiteFarm::start(FarmOptions::default()).await.expect("farm");
    let db = Postgres::start_temp().expect("postgres");
    let (_broker, bootstrap) = broker("metrics", 2);
    let list = dir.path().join("sites.csv");
    let sites = format!("{},1\n{},1\n", farm.url("/ok"), farm.url("/status/500"));
    std::fs::write(&list, sites).expect("site list");
    let (monitor_port, consumer_port) = (free_port(), free_port());
    let monitor_listen = format!("127.0.0.1:{monitor_port}");
    let monitor = Proc::start(
        "monitor",
        &[
            "--targets",
            &list.to_string_lossy(),
            "--kafka-brokers",
            &bootstrap,
            "--kafka-topic",
            "metrics",
            "--http-listen",
            &monitor_listen,
            "--log-format",
            "json",
        ],
        &[],
    );
    let consumer = consumer(&bootstrap, &db, consumer_port);
    wait_for(Duration::from_secs(60), "rows from both sites", || async {
        count_once_created(&db, ROWS).await >= 6
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
        || async { count(&db, ROWS).await as f64 == delivered },
    )
    .await;
    let page = scrape(consumer_port).await;
    assert_eq!(
        sample(&page, "sitewatch_consumer_rows_inserted_total"),
        Some(delivered),
        "{page}"
    );
    assert_eq!(
        sample(&page, "sitewatch_consumer_dead_letters_total"),
        Some(0.0)
    );
    let _ = consumer.stop(Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_while_postgres_is_down_and_200_after_without_a_restart() {
    let db = Postgres::start_temp().expect("postgres");
    let (_broker, bootstrap) = broker("metrics", 1);
    let port = free_port();
    let consumer = consumer(&bootstrap, &db, port);
    wait_ready(port, 200, Duration::from_secs(30)).await;
    db.stop().expect("stop postgres");
    wait_ready(port, 503, Duration::from_secs(30)).await;
    let (_, body) = http_get(port, "/readyz").await.expect("an answer");
    assert!(body.contains("PostgreSQL"), "{body}");
    db.start_again().expect("start postgres");
    wait_ready(port, 200, Duration::from_secs(60)).await;
    let _ = consumer.stop(Duration::from_secs(30));
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
