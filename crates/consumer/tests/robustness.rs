//! Situations a review found the consumer mishandling, kept as tests: a bad
//! row next to a dead letter, a rebalance while paused, a URL too long for the
//! index, a site deleted by an operator.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use sitewatch_consumer::run;
use sitewatch_consumer::store::WritePath;
use sitewatch_metric::Metric;
use sitewatch_pgtest::sql::{client, count, count_once_created};
use sitewatch_pgtest::wait::wait_for;
use tokio_util::sync::CancellationToken;

const ROWS: &str = "SELECT count(*) FROM metrics";
const DEAD: &str = "SELECT count(*) FROM dead_letters";

async fn rows(db: &sitewatch_pgtest::Postgres) -> i64 {
    count(db, ROWS).await
}

async fn dead(db: &sitewatch_pgtest::Postgres) -> i64 {
    count(db, DEAD).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_row_and_an_undecodable_message_in_one_batch_both_become_dead_letters() {
    let db = common::postgres();
    let kafka = common::kafka("metrics", 1);
    let bootstrap = kafka.bootstrap_servers();
    let mut nul = common::metric(1, 5);
    nul.regex_match = Some("a\0b".into());
    let messages: Vec<common::RawMessage> = vec![
        (Some(nul.key().to_vec()), Some(nul.to_json())),
        (Some(b"k".to_vec()), Some(b"not json".to_vec())),
    ];
    let _ = common::publish_raw(&bootstrap, "metrics", &messages).await;
    let stop = CancellationToken::new();
    let task = tokio::spawn(run(
        common::settings(&bootstrap, "metrics", &db, "g"),
        stop.clone(),
    ));
    wait_for(Duration::from_secs(30), "two dead letters", || async {
        count_once_created(&db, DEAD).await == 2
    })
    .await;
    stop.cancel();
    let summary = task.await.expect("task").expect("ran");
    assert_eq!(summary.unwritten, 0, "{summary:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitions_paused_during_an_outage_resume_after_a_rebalance() {
    let db = common::postgres();
    let kafka = common::kafka("metrics", 2);
    let bootstrap = kafka.bootstrap_servers();
    let mut settings = common::settings(&bootstrap, "metrics", &db, "g");
    settings.queue_messages = 50;
    settings.batch_rows = 20;
    let stop = CancellationToken::new();
    let task = tokio::spawn(run(settings, stop.clone()));
    let all: Vec<_> = (0..1010).map(|i| common::metric(i, 40)).collect();
    let _ = common::publish(&bootstrap, "metrics", &all[..10]).await;
    wait_for(Duration::from_secs(60), "first rows", || async {
        count_once_created(&db, ROWS).await == 10
    })
    .await;
    db.stop().expect("stop PostgreSQL");
    // More than the queue holds: the writers fall behind and the partitions pause.
    let _ = common::publish(&bootstrap, "metrics", &all[10..]).await;
    // A member that takes nothing joins and leaves: two rebalances while paused.
    let joined = Arc::new(AtomicBool::new(false));
    let leave = Arc::new(AtomicBool::new(false));
    let member = {
        let (joined, leave, bootstrap) =
            (Arc::clone(&joined), Arc::clone(&leave), bootstrap.clone());
        std::thread::spawn(move || {
            let mut config = ClientConfig::new();
            let _ = config
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", "g")
                .set("enable.auto.commit", "false");
            for (k, v) in common::group_timeouts() {
                let _ = config.set(k, v);
            }
            let idle: BaseConsumer = config.create().expect("member");
            idle.subscribe(&["metrics"]).expect("subscribe");
            while !leave.load(Ordering::Relaxed) {
                let _ = idle.poll(Duration::from_millis(100));
                if let Ok(assigned) = idle.assignment() {
                    if assigned.count() > 0 {
                        joined.store(true, Ordering::Relaxed);
                        let _ = idle.pause(&assigned);
                    }
                }
            }
        })
    };
    wait_for(
        Duration::from_secs(60),
        "the idle member to get a partition",
        || {
            let joined = Arc::clone(&joined);
            async move { joined.load(Ordering::Relaxed) }
        },
    )
    .await;
    db.start_again().expect("start PostgreSQL");
    leave.store(true, Ordering::Relaxed);
    member.join().expect("member thread");
    wait_for(
        Duration::from_secs(90),
        "every row once the database is back and the group settled",
        || async { rows(&db).await == 1010 },
    )
    .await;
    stop.cancel();
    let _ = task.await.expect("task").expect("ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_too_long_to_index_is_a_dead_letter_and_the_rest_lands() {
    let db = common::postgres();
    let kafka = common::kafka("metrics", 1);
    let bootstrap = kafka.bootstrap_servers();
    let mut long = common::metric(1, 5);
    long.url = format!("https://x.example/{}", "a".repeat(3000));
    let good = common::metric(2, 5);
    let _ = common::publish(&bootstrap, "metrics", &[long, good]).await;
    let stop = CancellationToken::new();
    let task = tokio::spawn(run(
        common::settings(&bootstrap, "metrics", &db, "g"),
        stop.clone(),
    ));
    wait_for(
        Duration::from_secs(30),
        "the good row and the dead letter",
        || async {
            count_once_created(&db, ROWS).await == 1 && count_once_created(&db, DEAD).await == 1
        },
    )
    .await;
    stop.cancel();
    let _ = task.await.expect("task").expect("ran");
    let reason = client(&db)
        .await
        .query_one("SELECT reason FROM dead_letters", &[])
        .await
        .expect("reason");
    assert!(
        reason.get::<_, String>(0).contains("url"),
        "the reason names the field"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_deleted_by_an_operator_is_created_again_not_dead_lettered() {
    let db = common::postgres();
    let kafka = common::kafka("metrics", 1);
    let bootstrap = kafka.bootstrap_servers();
    let stop = CancellationToken::new();
    let task = tokio::spawn(run(
        common::settings(&bootstrap, "metrics", &db, "g"),
        stop.clone(),
    ));
    let _ = common::publish(&bootstrap, "metrics", &[common::metric(1, 1)]).await;
    wait_for(Duration::from_secs(60), "the first row", || async {
        count_once_created(&db, ROWS).await == 1
    })
    .await;
    client(&db)
        .await
        .batch_execute("DELETE FROM metrics; DELETE FROM websites;")
        .await
        .expect("cleanup");
    let _ = common::publish(&bootstrap, "metrics", &[common::metric(2, 1)]).await;
    wait_for(
        Duration::from_secs(30),
        "the second row, under a new site row",
        || async { rows(&db).await == 1 },
    )
    .await;
    assert_eq!(dead(&db).await, 0);
    assert_eq!(count(&db, "SELECT count(*) FROM websites").await, 1);
    stop.cancel();
    let _ = task.await.expect("task").expect("ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_id_stored_with_other_content_is_a_conflict_by_either_write_path() {
    for path in [WritePath::Copy, WritePath::Unnest] {
        let db = common::postgres();
        let kafka = common::kafka("metrics", 1);
        let bootstrap = kafka.bootstrap_servers();
        let original = common::metric(1, 5);
        let redelivered = original.clone();
        let forged = Metric {
            status: Some(500),
            ..original.clone()
        };
        let _ = common::publish(&bootstrap, "metrics", &[original]).await;
        let mut settings = common::settings(&bootstrap, "metrics", &db, "g");
        settings.write_path = path;
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(settings, stop.clone()));
        wait_for(Duration::from_secs(30), "the first row", || async {
            count_once_created(&db, ROWS).await == 1
        })
        .await;
        let _ = common::publish(&bootstrap, "metrics", &[redelivered, forged]).await;
        wait_for(Duration::from_secs(30), "a dead letter", || async {
            dead(&db).await == 1
        })
        .await;
        stop.cancel();
        let summary = task.await.expect("task").expect("ran");
        assert_eq!(
            (summary.inserted, summary.duplicates, summary.dead_letters),
            (1, 1, 1),
            "{path:?}: {summary:?}"
        );
        let reason = db
            .psql("postgres", "SELECT reason FROM dead_letters")
            .expect("reason");
        assert!(reason.contains("conflict"), "{path:?}: {reason}");
        assert_eq!(
            count(&db, "SELECT count(*) FROM metrics WHERE status = 200").await,
            1,
            "{path:?}: the stored row is untouched"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_drift_stops_the_consumer_dead_letters_nothing_and_a_restart_after_the_fix_writes_all(
) {
    let db = common::postgres();
    let kafka = common::kafka("metrics", 1);
    let bootstrap = kafka.bootstrap_servers();
    let metrics: Vec<Metric> = (0..40).map(|i| common::metric(i, 5)).collect();
    let _ = common::publish(&bootstrap, "metrics", &metrics[..20]).await;
    let settings = common::settings(&bootstrap, "metrics", &db, "g");
    let stop = CancellationToken::new();
    let task = tokio::spawn(run(settings.clone(), stop.clone()));
    wait_for(Duration::from_secs(30), "the first rows", || async {
        count_once_created(&db, ROWS).await == 20
    })
    .await;
    // A rolling upgrade adds a constraint the running consumer's rows break.
    let _ = db
        .psql(
            "postgres",
            "ALTER TABLE metrics ADD CONSTRAINT no_new_rows CHECK (false) NOT VALID",
        )
        .expect("constraint");
    let _ = common::publish(&bootstrap, "metrics", &metrics[20..]).await;
    let stopped = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the consumer stops by itself")
        .expect("task");
    let err = stopped.expect_err("it stops with an error");
    assert!(
        err.to_string().contains("no_new_rows") || err.to_string().contains("check"),
        "{err}"
    );
    assert_eq!(dead(&db).await, 0, "nothing dead-lettered by mistake");
    assert_eq!(rows(&db).await, 20);

    let _ = db
        .psql(
            "postgres",
            "ALTER TABLE metrics DROP CONSTRAINT no_new_rows",
        )
        .expect("the fix");
    let stop = CancellationToken::new();
    let task = tokio::spawn(run(settings, stop.clone()));
    wait_for(Duration::from_secs(30), "every row", || async {
        rows(&db).await == 40
    })
    .await;
    stop.cancel();
    let summary = task.await.expect("task").expect("ran");
    assert_eq!(summary.dead_letters, 0, "{summary:?}");
}
