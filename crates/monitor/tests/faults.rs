//! The monitor among faults: the network to the broker misbehaving, through
//! a fault proxy (cut without a word, connections reset), after which every
//! probe made is on the topic, once; and hostile sites, which must not hold
//! up their neighbours.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use sitewatch_faults::{BrokerBehind, Fault};
use sitewatch_monitor::settings::{Output, Settings};
use sitewatch_monitor::{run, RunSummary};
use sitewatch_sitefarm::{FarmOptions, SiteFarm};
use tokio_util::sync::CancellationToken;

const TOPIC: &str = "metrics";

/// The monitor run in-process on a task of its own, until stopped.
struct Monitor {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<RunSummary, sitewatch_monitor::MonitorError>>,
    _list: tempfile::TempDir,
}

impl Monitor {
    /// Probes the CSV list `csv`, publishing to `bootstrap`; `tune` adjusts the settings.
    fn start(csv: &str, bootstrap: String, tune: impl FnOnce(&mut Settings)) -> Monitor {
        let (dir, list) = common::site_list("sites.csv", csv);
        let mut settings = Settings {
            targets: Some(sitewatch_monitor::source::TargetSpec::new(
                list.to_string_lossy(),
            )),
            output: vec![Output::Kafka],
            ..Settings::default()
        };
        settings.kafka.brokers = bootstrap;
        settings.kafka.topic = TOPIC.to_owned();
        tune(&mut settings);
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(settings, stop.clone(), tokio::sync::mpsc::channel(1).1));
        Monitor {
            stop,
            task,
            _list: dir,
        }
    }

    /// Cancels it and returns its summary; panics if it failed.
    async fn stop(self) -> RunSummary {
        self.stop.cancel();
        self.task
            .await
            .expect("monitor task")
            .expect("monitor runs")
    }
}

/// What the monitor's run returned once it ended by itself, within `within`.
async fn ended(
    monitor: Monitor,
    within: Duration,
) -> Result<RunSummary, sitewatch_monitor::MonitorError> {
    let mut task = monitor.task;
    tokio::select! {
        ended = &mut task => ended.expect("monitor task"),
        () = tokio::time::sleep(within) => {
            monitor.stop.cancel();
            panic!("the monitor still runs after {within:?}");
        }
    }
}

/// Probes 20 sites every second through `fault` (for `lasting`, after a
/// healthy start), stops the monitor a few seconds after the network is
/// back, and checks the topic against what it says it published.
async fn publishes_through(fault: Fault, lasting: Duration) -> RunSummary {
    let farm = SiteFarm::start(FarmOptions::default()).await.expect("farm");
    let kafka = BrokerBehind::start(TOPIC, 3).await.expect("broker");
    let csv: String = (0..20)
        .map(|i| format!("{},1,\n", farm.url(&format!("/ok?{i}"))))
        .collect();
    let monitor = Monitor::start(&csv, kafka.bootstrap(), |_| {});
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
    let summary = monitor.stop().await;
    assert_eq!(summary.lost(), 0, "{summary:?}");
    assert!(
        kafka.proxy.connections() > 0,
        "the monitor published through the proxy"
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_sites_do_not_hold_up_their_neighbours() {
    let farm = SiteFarm::start(FarmOptions::default()).await.expect("farm");
    let kafka = common::kafka(TOPIC, 3);
    let hostile = [
        "/drip/10",
        "/gzip-bomb",
        "/headers/10000",
        "/slow/5000",
        "/reset",
    ];
    let neighbours: Vec<String> = (0..5).map(|i| farm.url(&format!("/ok?{i}"))).collect();
    let csv: String = hostile
        .iter()
        .map(|path| format!("{},2,\n", farm.url(path)))
        .chain(neighbours.iter().map(|url| format!("{url},1,Welcome\n")))
        .collect();
    let monitor = Monitor::start(&csv, kafka.bootstrap_servers(), |settings| {
        settings.probe.timeout = Duration::from_secs(1).into();
    });
    // How long the sites are probed is the scenario, not a wait.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let summary = monitor.stop().await;
    assert_eq!(summary.lost(), 0, "{summary:?}");
    let want = usize::try_from(summary.delivery.delivered).expect("count");
    let topic = common::read_topic(
        &kafka.bootstrap_servers(),
        TOPIC,
        want,
        Duration::from_secs(30),
    )
    .await;
    let mut probes: HashMap<&str, Vec<_>> = HashMap::new();
    for read in &topic {
        probes
            .entry(read.metric.url.as_str())
            .or_default()
            .push(&read.metric);
    }
    for url in &neighbours {
        let metrics = probes
            .get(url.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert!(
            metrics.len() >= 5,
            "{url} probed every second beside the hostile sites: {} probes; {summary:?}",
            metrics.len()
        );
        assert!(
            metrics
                .iter()
                .all(|m| m.error.is_none() && m.regex_matched == Some(true)),
            "{metrics:?}"
        );
    }
    for path in hostile {
        let url = farm.url(path);
        let metrics = probes
            .get(url.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert!(!metrics.is_empty(), "{url} was probed too");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_producer_error_stops_the_monitor_and_names_it() {
    let farm = SiteFarm::start(FarmOptions::default()).await.expect("farm");
    let kafka = common::kafka(TOPIC, 1);
    // The broker answers the first produce request with a sequence number it
    // did not expect: the idempotent producer can no longer promise
    // exactly-once order, which librdkafka makes fatal.
    kafka.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
    );
    let csv = format!("{},1,\n", farm.url("/ok"));
    let monitor = Monitor::start(&csv, kafka.bootstrap_servers(), |_| {});
    let summary = ended(monitor, Duration::from_secs(30))
        .await
        .expect("a fatal error is a summary, not a failed start");
    let fatal = summary.fatal.expect("the fatal error is reported");
    assert!(fatal.contains("sequence"), "{fatal}");
}
