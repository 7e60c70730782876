//! Memory bounded in bytes: with a read-ahead budget of a few messages, and
//! one message larger than the whole budget, every message still lands.

mod common;

use std::time::Duration;

use sitewatch_consumer::run;
use sitewatch_metric::Metric;
use sitewatch_pgtest::sql::count;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_of_a_few_messages_still_lets_every_message_through() {
    let db = common::postgres();
    let kafka = common::kafka("metrics", 2);
    let bootstrap = kafka.bootstrap_servers();
    let mut settings = common::settings(&bootstrap, "metrics", &db, "g");
    settings.queue_bytes = 4096;
    settings.batch_bytes = 2048;
    let mut metrics: Vec<Metric> = (0..300).map(|i| common::metric(i, 10)).collect();
    // Larger than the whole budget: it takes all of it, in its turn.
    metrics[150].error = Some(sitewatch_metric::ProbeError {
        kind: sitewatch_metric::ErrorKind::Other,
        message: "x".repeat(1000),
    });
    metrics[150].regex = Some("y".repeat(4000));
    let _ = common::publish(&bootstrap, "metrics", &metrics).await;
    let stop = CancellationToken::new();
    let task = tokio::spawn(run(settings, stop.clone()));
    common::wait_rows(&db, 300, Duration::from_secs(60)).await;
    stop.cancel();
    let summary = task.await.expect("task").expect("ran");
    assert_eq!(summary.inserted, 300, "{summary:?}");
    assert_eq!(count(&db, "SELECT count(*) FROM dead_letters").await, 0);
}
