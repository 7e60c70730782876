//! The network between the monitor and the broker misbehaving, through a
//! fault proxy: cut without a word (blackhole) or connections reset while
//! probes go on. After each: every probe made is on the topic, once.

mod common;

use std::time::Duration;

use sitewatch_faults::{BrokerBehind, Fault};
use sitewatch_monitor::settings::{Output, Settings};
use sitewatch_monitor::{run, RunSummary};
use sitewatch_sitefarm::{FarmOptions, SiteFarm};
use tokio_util::sync::CancellationToken;

const TOPIC: &str = "metrics";

/// Probes 20 sites every second through `fault` (for `lasting`, after a
/// healthy start), stops the monitor a few seconds after the network is
/// back, and checks the topic against what it says it published.
async fn publishes_through(fault: Fault, lasting: Duration) -> RunSummary {
    let farm = SiteFarm::start(FarmOptions::default()).await.expect("farm");
    let kafka = BrokerBehind::start(TOPIC, 3).await.expect("broker");
    let csv: String = (0..20)
        .map(|i| format!("{},1,\n", farm.url(&format!("/ok?{i}"))))
        .collect();
    let (_dir, list) = common::site_list("sites.csv", &csv);
    let mut settings = Settings {
        targets: Some(sitewatch_monitor::source::TargetSpec::new(
            list.to_string_lossy(),
        )),
        output: vec![Output::Kafka],
        ..Settings::default()
    };
    settings.kafka.brokers = kafka.bootstrap();
    settings.kafka.topic = TOPIC.to_owned();
    let stop = CancellationToken::new();
    let monitor = tokio::spawn(run(settings, stop.clone(), tokio::sync::mpsc::channel(1).1));
    let healthy = common::read_topic(&kafka.bootstrap(), TOPIC, 20, Duration::from_secs(30)).await;
    assert!(
        healthy.len() >= 20,
        "published before the fault: {}",
        healthy.len()
    );
    kafka.proxy.set(fault);
    // The fault's length and the probing after it are the scenario, not waits.
    tokio::time::sleep(lasting).await;
    kafka.proxy.set(Fault::None);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    let summary = monitor.await.expect("monitor task").expect("monitor runs");
    assert_eq!(summary.lost(), 0, "{summary:?}");
    let probes = summary.schedule.started;
    assert!(
        probes >= 20 * (lasting.as_secs() + 3),
        "probing went on through the fault: {summary:?}"
    );
    let want = usize::try_from(summary.delivery.delivered).expect("count");
    let topic = common::read_topic(&kafka.bootstrap(), TOPIC, want, Duration::from_secs(30)).await;
    assert_eq!(
        topic.len(),
        want,
        "every delivered metric on the topic, once"
    );
    common::assert_unique_v7(&topic);
    eprintln!("{fault:?} for {lasting:?}: {summary:?}");
    summary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_cut_off_for_seconds_loses_and_doubles_nothing() {
    let _ = publishes_through(Fault::Blackhole, Duration::from_secs(8)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_connections_reset_lose_and_double_nothing() {
    let _ = publishes_through(Fault::Reset, Duration::from_secs(3)).await;
}
