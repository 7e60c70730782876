//! Health is progress: a consumer whose writes are held up reports not ready
//! in its health file while its connections still answer, and ready again
//! once the rows land, without a restart.

mod common;

use std::time::Duration;

use sitewatch_consumer::run;
use sitewatch_metric::Metric;
use sitewatch_pgtest::sql::client;
use sitewatch_pgtest::wait::wait_for;
use sitewatch_service::health;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_held_up_reports_not_ready_and_ready_again_after() {
    let db = common::postgres();
    let kafka = common::kafka("metrics", 1);
    let bootstrap = kafka.bootstrap_servers();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("health");
    let mut settings = common::settings(&bootstrap, "metrics", &db, "g");
    settings.health.health_file = Some(file.clone());
    settings.health.unhealthy_after = Duration::from_secs(1).into();
    let metrics: Vec<Metric> = (0..20).map(|i| common::metric(i, 5)).collect();
    let _ = common::publish(&bootstrap, "metrics", &metrics[..10]).await;
    let stop = CancellationToken::new();
    let task = tokio::spawn(run(settings, stop.clone()));
    common::wait_rows(&db, 10, Duration::from_secs(30)).await;
    wait_for(Duration::from_secs(30), "a ready beat", || async {
        health::check(&file).is_ok()
    })
    .await;

    // An operator's long transaction holds the table: PostgreSQL and Kafka
    // both answer, but nothing gets written.
    let mut blocker = client(&db).await;
    let lock = blocker.transaction().await.expect("transaction");
    lock.batch_execute("LOCK TABLE metrics IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");
    let _ = common::publish(&bootstrap, "metrics", &metrics[10..]).await;
    wait_for(
        Duration::from_secs(40),
        "a beat saying why not ready",
        || async {
            health::check(&file).is_err_and(|why| why.contains("without an offset moving"))
        },
    )
    .await;

    lock.rollback().await.expect("release");
    common::wait_rows(&db, 20, Duration::from_secs(60)).await;
    wait_for(Duration::from_secs(30), "ready again", || async {
        health::check(&file).is_ok()
    })
    .await;
    stop.cancel();
    let summary = task.await.expect("task").expect("ran");
    assert_eq!(summary.inserted, 20, "{summary:?}");
}
