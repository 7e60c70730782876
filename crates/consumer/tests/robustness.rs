//! Situations a review found the consumer mishandling, kept as tests: a bad
//! row next to a dead letter, a rebalance while paused, a URL too long for the
//! index, a site deleted by an operator.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{dead, metrics, rows, wait_count, wait_rows, Running, Stack, DEAD};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use sitewatch_consumer::store::WritePath;
use sitewatch_metric::Metric;
use sitewatch_pgtest::sql::{client, count};
use sitewatch_pgtest::wait::wait_for;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_row_and_an_undecodable_message_in_one_batch_both_become_dead_letters() {
    let stack = Stack::start(1);
    let mut nul = common::metric(1, 5);
    nul.regex_match = Some("a\0b".into());
    let messages: Vec<common::RawMessage> = vec![
        (Some(nul.key().to_vec()), Some(nul.to_json())),
        (Some(b"k".to_vec()), Some(b"not json".to_vec())),
    ];
    let _ = stack.publish_raw(&messages).await;
    let consumer = stack.consumer("g");
    wait_count(&stack.db, DEAD, 2, Duration::from_secs(30)).await;
    let summary = consumer.stop().await;
    assert_eq!(summary.unwritten, 0, "{summary:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitions_paused_during_an_outage_resume_after_a_rebalance() {
    paused_partitions_resume_after_rebalances(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitions_paused_during_an_outage_resume_after_cooperative_rebalances() {
    // Incremental assignments hand over only the new partitions: those the
    // consumer kept must resume with them.
    paused_partitions_resume_after_rebalances(Some("cooperative-sticky")).await;
}

/// A consumer paused behind a database outage sees a member join and leave
/// (two rebalances, by `strategy` or librdkafka's default); once the database
/// is back, every message becomes a row.
async fn paused_partitions_resume_after_rebalances(strategy: Option<&'static str>) {
    let strategy = strategy.map(|s| ("partition.assignment.strategy".to_owned(), s.to_owned()));
    let stack = Stack::start(2);
    let db = &stack.db;
    let mut settings = stack.settings("g");
    settings.queue_messages = 50;
    settings.batch_rows = 20;
    settings.kafka.properties.extend(strategy.clone());
    let consumer = Running::start(settings);
    let all = metrics(1010, 40);
    let _ = stack.publish(&all[..10]).await;
    wait_rows(db, 10, Duration::from_secs(60)).await;
    db.stop().expect("stop PostgreSQL");
    // More than the queue holds: the writers fall behind and the partitions pause.
    let _ = stack.publish(&all[10..]).await;
    // A member that takes nothing joins and leaves: two rebalances while paused.
    let joined = Arc::new(AtomicBool::new(false));
    let leave = Arc::new(AtomicBool::new(false));
    let member = {
        let (joined, leave, bootstrap) = (
            Arc::clone(&joined),
            Arc::clone(&leave),
            stack.bootstrap.clone(),
        );
        std::thread::spawn(move || {
            let mut config = ClientConfig::new();
            let _ = config
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", "g")
                .set("enable.auto.commit", "false");
            for (k, v) in common::group_timeouts().into_iter().chain(strategy) {
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
    // Every row once the database is back and the group settled.
    wait_rows(db, 1010, Duration::from_secs(90)).await;
    let _ = consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_too_long_to_index_is_a_dead_letter_and_the_rest_lands() {
    let stack = Stack::start(1);
    let mut long = common::metric(1, 5);
    long.url = format!("https://x.example/{}", "a".repeat(3000));
    let good = common::metric(2, 5);
    let _ = stack.publish(&[long, good]).await;
    let consumer = stack.consumer("g");
    wait_rows(&stack.db, 1, Duration::from_secs(30)).await;
    wait_count(&stack.db, DEAD, 1, Duration::from_secs(30)).await;
    let _ = consumer.stop().await;
    let reason = client(&stack.db)
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
    let stack = Stack::start(1);
    let db = &stack.db;
    let consumer = stack.consumer("g");
    let _ = stack.publish(&[common::metric(1, 1)]).await;
    wait_rows(db, 1, Duration::from_secs(60)).await;
    client(db)
        .await
        .batch_execute("DELETE FROM metrics; DELETE FROM websites;")
        .await
        .expect("cleanup");
    let _ = stack.publish(&[common::metric(2, 1)]).await;
    // The second row, under a new site row.
    wait_rows(db, 1, Duration::from_secs(30)).await;
    assert_eq!(dead(db).await, 0);
    assert_eq!(count(db, "SELECT count(*) FROM websites").await, 1);
    let _ = consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_id_stored_with_other_content_is_a_conflict_by_either_write_path() {
    for path in [WritePath::Copy, WritePath::Unnest] {
        let stack = Stack::start(1);
        let db = &stack.db;
        let original = common::metric(1, 5);
        let redelivered = original.clone();
        let forged = Metric {
            status: Some(500),
            ..original.clone()
        };
        let _ = stack.publish(&[original]).await;
        let mut settings = stack.settings("g");
        settings.write_path = path;
        let consumer = Running::start(settings);
        wait_rows(db, 1, Duration::from_secs(30)).await;
        let _ = stack.publish(&[redelivered, forged]).await;
        wait_count(db, DEAD, 1, Duration::from_secs(30)).await;
        let summary = consumer.stop().await;
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
            count(db, "SELECT count(*) FROM metrics WHERE status = 200").await,
            1,
            "{path:?}: the stored row is untouched"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_drift_stops_the_consumer_dead_letters_nothing_and_a_restart_after_the_fix_writes_all(
) {
    let stack = Stack::start(1);
    let db = &stack.db;
    let all = metrics(40, 5);
    let _ = stack.publish(&all[..20]).await;
    let consumer = stack.consumer("g");
    wait_rows(db, 20, Duration::from_secs(30)).await;
    // A rolling upgrade adds a constraint the running consumer's rows break.
    let _ = db
        .psql(
            "postgres",
            "ALTER TABLE metrics ADD CONSTRAINT no_new_rows CHECK (false) NOT VALID",
        )
        .expect("constraint");
    let _ = stack.publish(&all[20..]).await;
    let stopped = consumer.ended(Duration::from_secs(60)).await;
    let err = stopped.expect_err("it stops with an error");
    assert!(
        err.to_string().contains("no_new_rows") || err.to_string().contains("check"),
        "{err}"
    );
    assert_eq!(dead(db).await, 0, "nothing dead-lettered by mistake");
    assert_eq!(rows(db).await, 20);

    let _ = db
        .psql(
            "postgres",
            "ALTER TABLE metrics DROP CONSTRAINT no_new_rows",
        )
        .expect("the fix");
    let consumer = stack.consumer("g");
    wait_rows(db, 40, Duration::from_secs(30)).await;
    let summary = consumer.stop().await;
    assert_eq!(summary.dead_letters, 0, "{summary:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_held_past_the_revoke_drain_is_neither_lost_nor_doubled() {
    let stack = Stack::start(2);
    let db = &stack.db;
    let a = stack.consumer("g");
    let all = metrics(400, 20);
    let _ = stack.publish(&all[..200]).await;
    wait_rows(db, 200, Duration::from_secs(60)).await;

    // An operator's transaction holds the table, so the first member's next
    // write hangs mid-flight.
    let mut blocker = client(db).await;
    let lock = common::lock_metrics(&mut blocker).await;
    let _ = stack.publish(&all[200..]).await;
    common::wait_for_a_held_write(db).await;
    // A second member joins: the group rebalances, and the first member's
    // drain of a revoked partition runs out (3 s) with its write still held.
    let b = stack.consumer("g");
    // How long the lock holds is the scenario: past the rebalance and the drain.
    tokio::time::sleep(Duration::from_secs(12)).await;
    lock.rollback().await.expect("release");

    wait_rows(db, 400, Duration::from_secs(90)).await;
    let (sa, sb) = (a.stop().await, b.stop().await);
    common::assert_stored_once(db, &all, &(&sa, &sb)).await;
    assert_eq!(sa.inserted + sb.inserted, 400, "{sa:?} {sb:?}");
    // Which member reads the held messages again depends on how the group
    // settles (the new owner, or the old one given its partition back); that
    // somebody did shows the write really was held past the drain.
    assert!(
        sa.duplicates + sb.duplicates > 0,
        "a member read again what was still being written: {sa:?} {sb:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_member_stops_with_the_reason_and_the_group_reads_the_rest() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    let stack = Stack::start(2);
    let db = &stack.db;
    let all = metrics(400, 20);
    let fenced = stack.consumer("g");
    let _ = stack.publish(&all[..200]).await;
    wait_rows(db, 200, Duration::from_secs(60)).await;
    // Another member took this one's group.instance.id: the coordinator says
    // so on the next heartbeat, and librdkafka makes the client unusable.
    stack.kafka.request_errors(
        RDKafkaApiKey::Heartbeat,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_FENCED_INSTANCE_ID],
    );
    let err = fenced
        .ended(Duration::from_secs(30))
        .await
        .expect_err("a fenced member stops with an error");
    let text = err.to_string();
    assert!(text.contains("fatal Kafka consumer error"), "{text}");
    assert!(text.to_lowercase().contains("fenced"), "{text}");

    let _ = stack.publish(&all[200..]).await;
    let next = stack.consumer("g");
    wait_rows(db, 400, Duration::from_secs(60)).await;
    let summary = next.stop().await;
    common::assert_stored_once(db, &all, &summary).await;
}
