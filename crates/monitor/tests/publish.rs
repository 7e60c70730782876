//! Metrics published to a Kafka protocol peer (librdkafka's mock broker) and read back.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use sitewatch_metric::{ErrorKind, SCHEMA_VERSION};
use sitewatch_monitor::settings::{Output, Settings};
use sitewatch_monitor::{run, MonitorError, RunSummary};
use sitewatch_sitefarm::{FarmOptions, SiteFarm};
use tokio_util::sync::CancellationToken;

fn settings(bootstrap: &str, topic: &str, targets: &std::path::Path) -> Settings {
    let mut s = Settings {
        targets: Some(sitewatch_monitor::source::TargetSpec::new(
            targets.to_string_lossy(),
        )),
        output: vec![Output::Kafka],
        once: true,
        ..Settings::default()
    };
    s.kafka.brokers = bootstrap.to_owned();
    s.kafka.topic = topic.to_owned();
    s.probe.timeout = Duration::from_secs(2).into();
    s
}

/// Runs the monitor with `settings` to its end: nothing cancels it or asks for a reload.
async fn run_to_end(settings: Settings) -> Result<RunSummary, MonitorError> {
    run(
        settings,
        CancellationToken::new(),
        tokio::sync::mpsc::channel(1).1,
    )
    .await
}

#[tokio::test]
async fn every_probe_is_published_keyed_by_its_site_with_every_field() {
    let farm = SiteFarm::start(FarmOptions::default()).await.expect("farm");
    let kafka = common::kafka("metrics", 3);
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let sites = [
        (farm.url("/ok"), "Welcome"),
        (farm.url("/ok?miss"), "Goodbye"),
        (farm.url("/status/500"), ""),
        (farm.url("/redirect/2"), "done"),
        (format!("http://127.0.0.1:{refused}/"), ""),
    ];
    let csv: String = sites.iter().map(|(u, r)| format!("{u},60,{r}\n")).collect();
    let (_dir, list) = common::site_list("sites.csv", &csv);

    let bootstrap = kafka.bootstrap_servers();
    let summary = run_to_end(settings(&bootstrap, "metrics", &list))
        .await
        .expect("monitor runs");
    assert_eq!(summary.schedule.started, 5);
    assert_eq!(summary.delivery.delivered, 5, "{summary:?}");
    assert_eq!(summary.lost(), 0);

    let reads = common::read_topic(&bootstrap, "metrics", 5, Duration::from_secs(30)).await;
    assert_eq!(reads.len(), 5, "one message per probe, no more");
    common::assert_unique_v7(&reads);
    let by_url: HashMap<String, &common::Read> =
        reads.iter().map(|r| (r.metric.url.clone(), r)).collect();
    for r in &reads {
        assert_eq!(r.key, r.metric.url, "keyed by site URL");
        let m = &r.metric;
        assert_eq!(m.schema_version, SCHEMA_VERSION);
        assert!(m.started_at >= m.scheduled_at);
        let lateness = (m.started_at - m.scheduled_at)
            .num_microseconds()
            .expect("small");
        assert!(
            (lateness - i64::try_from(m.lateness_us).expect("fits")).abs() <= 1,
            "{m:?}"
        );
        assert_eq!(m.skipped_before, 0);
        assert!(m.timings.total_us > 0);
        assert_eq!(m.tls_expires_at, None, "plain http has no certificate");
    }
    let ok = by_url[&farm.url("/ok")].metric.clone();
    assert_eq!(
        (ok.status, ok.regex_matched, ok.regex_match.as_deref()),
        (Some(200), Some(true), Some("Welcome"))
    );
    assert_eq!(ok.regex.as_deref(), Some("Welcome"));
    assert_eq!(ok.final_url.as_deref(), Some(farm.url("/ok").as_str()));
    assert!(ok.body_bytes > 0 && !ok.body_truncated);
    assert!(
        ok.timings.connect_us.is_some()
            && ok.timings.ttfb_us.is_some()
            && ok.timings.body_us.is_some()
    );
    let miss = &by_url[&farm.url("/ok?miss")].metric;
    assert_eq!(
        (miss.status, miss.regex_matched, miss.regex_match.clone()),
        (Some(200), Some(false), None)
    );
    let err500 = &by_url[&farm.url("/status/500")].metric;
    assert_eq!(
        (err500.status, err500.regex.clone(), err500.error.clone()),
        (Some(500), None, None)
    );
    let redirect = &by_url[&farm.url("/redirect/2")].metric;
    assert_eq!((redirect.status, redirect.redirects), (Some(200), 2));
    assert_eq!(
        redirect.final_url.as_deref(),
        Some(farm.url("/redirect/0").as_str())
    );
    let down = &by_url[&format!("http://127.0.0.1:{refused}/")].metric;
    assert_eq!(down.status, None);
    assert_eq!(
        down.error.as_ref().map(|e| e.kind),
        Some(ErrorKind::Connect)
    );
    assert!(down.error.as_ref().is_some_and(|e| !e.message.is_empty()));
}

#[tokio::test]
async fn per_site_metrics_name_each_site_when_asked() {
    // The process's recorder, as a monitor with an HTTP endpoint installs it.
    let recorded = sitewatch_service::observe::recorder();
    let farm = SiteFarm::start(FarmOptions::default()).await.expect("farm");
    let kafka = common::kafka("per-site", 1);
    let (ok, failing) = (farm.url("/ok"), farm.url("/status/500"));
    let (_dir, list) = common::site_list("sites.csv", &format!("{ok},60\n{failing},60\n"));
    let mut s = settings(&kafka.bootstrap_servers(), "per-site", &list);
    s.metrics_per_site = true;
    let summary = run_to_end(s).await.expect("monitor runs");
    assert_eq!(summary.delivery.delivered, 2, "{summary:?}");
    let shown = recorded.render();
    for line in [
        format!("sitewatch_monitor_probes_total{{outcome=\"2xx\",site=\"{ok}\"}} 1"),
        format!("sitewatch_monitor_probes_total{{outcome=\"5xx\",site=\"{failing}\"}} 1"),
        format!("sitewatch_monitor_probe_duration_seconds_count{{site=\"{ok}\"}} 1"),
        // The label set without `site` counts nothing: no probe is counted twice.
        "sitewatch_monitor_probes_total{outcome=\"2xx\"} 0".to_owned(),
    ] {
        assert!(
            shown.lines().any(|l| l == line),
            "/metrics should show {line:?}:\n{shown}"
        );
    }
}

#[tokio::test]
async fn one_site_stays_in_one_partition() {
    let farm = SiteFarm::start(FarmOptions::default()).await.expect("farm");
    let kafka = common::kafka("ordered", 4);
    let csv: String = (0..8)
        .map(|i| format!("{},0.2\n", farm.url(&format!("/site/{i}"))))
        .collect();
    let (_dir, list) = common::site_list("sites.csv", &csv);
    let bootstrap = kafka.bootstrap_servers();
    let mut s = settings(&bootstrap, "ordered", &list);
    s.once = false;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let running = tokio::spawn(run(s, shutdown, tokio::sync::mpsc::channel(1).1));
    // Each site is due five times a second; 40 messages means every site was probed several times.
    let reads = common::read_topic(&bootstrap, "ordered", 40, Duration::from_secs(30)).await;
    stop.cancel();
    let summary = running.await.expect("task").expect("monitor");
    assert!(reads.len() >= 40, "{} messages", reads.len());
    assert_eq!(summary.lost(), 0);
    let mut partition_of: HashMap<&str, i32> = HashMap::new();
    for r in &reads {
        let p = *partition_of.entry(r.key.as_str()).or_insert(r.partition);
        assert_eq!(
            p, r.partition,
            "all of {}'s metrics in one partition",
            r.key
        );
    }
    let mut per_site: HashMap<&str, Vec<chrono::DateTime<chrono::Utc>>> = HashMap::new();
    for r in &reads {
        per_site
            .entry(r.key.as_str())
            .or_default()
            .push(r.metric.scheduled_at);
    }
    for (site, times) in per_site {
        assert!(
            times.windows(2).all(|w| w[0] < w[1]),
            "{site}'s metrics arrive in schedule order"
        );
    }
}

#[tokio::test]
async fn a_bad_site_list_publishes_nothing() {
    let kafka = common::kafka("untouched", 1);
    let (_dir, list) =
        common::site_list("sites.csv", "http://127.0.0.1:9/,5\nbroken.example,never\n");
    let bootstrap = kafka.bootstrap_servers();
    let err = run_to_end(settings(&bootstrap, "untouched", &list))
        .await
        .expect_err("bad list refused");
    assert!(matches!(err, MonitorError::Targets(_)), "{err}");
    assert!(err.to_string().contains("sites.csv:2: interval"), "{err}");
    let reads = common::read_topic(&bootstrap, "untouched", 1, Duration::from_secs(3)).await;
    assert!(reads.is_empty(), "nothing published: {reads:?}");
}

#[tokio::test]
async fn deliveries_kafka_refuses_are_counted_not_dropped_silently() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    let farm = SiteFarm::start(FarmOptions::default()).await.expect("farm");
    let kafka = common::kafka("refused", 1);
    // The broker refuses every produce request, with an error librdkafka does not retry.
    kafka.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE; 50],
    );
    let (_dir, list) = common::site_list(
        "sites.csv",
        &format!("{},30\n{},30\n", farm.url("/ok"), farm.url("/status/500")),
    );
    let mut s = settings(&kafka.bootstrap_servers(), "refused", &list);
    s.flush_timeout = Duration::from_secs(10).into();
    let summary = run_to_end(s).await.expect("runs");
    assert_eq!(summary.schedule.started, 2);
    assert_eq!(
        summary.delivery.failed, 2,
        "both refusals counted: {summary:?}"
    );
    assert_eq!(
        summary.lost(),
        2,
        "and reported as lost, so the process exits non-zero"
    );
}
