//! Each site's up/down state and its incidents, as the PostgreSQL store keeps
//! them: moved by thresholds, unmoved by redeliveries, late probes and a
//! second writer of the same sites; and the notifications of each move,
//! through the outbox to local webhook receivers.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use sitewatch_consumer::alert::outbox::Outbox;
use sitewatch_consumer::alert::send::Sender;
use sitewatch_consumer::alert::AlertSettings;
use sitewatch_consumer::sink::{Row, Sink, Turns};
use sitewatch_consumer::store::{Store, StoreError, WritePath};
use sitewatch_metric::{Condition, Failed, Metric, Verdict};
use sitewatch_pgtest::wait::wait_for;
use sitewatch_pgtest::Postgres;
use sitewatch_service::settings::TimeSpan;
use sitewatch_service::SecretString;
use sitewatch_sitefarm::webhook::{Delivery, WebhookReceiver};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const SITE: &str = "https://flaky.example/health";

/// Probe number `n` of [`SITE`], `n` seconds into the test, passed or failed.
fn probe(n: i64, up: bool) -> Metric {
    probe_of(SITE, n, up)
}

/// Probe number `n` of `site`.
fn probe_of(site: &str, n: i64, up: bool) -> Metric {
    let at =
        DateTime::<Utc>::from_timestamp(1_790_000_000, 0).expect("time") + TimeDelta::seconds(n);
    let failed = if up {
        Vec::new()
    } else {
        vec![Failed::new(
            Condition::Status,
            format!("status 503 not in 200-299 (probe {n})"),
        )]
    };
    Metric {
        probe_id: Uuid::now_v7(),
        url: site.into(),
        scheduled_at: at,
        started_at: at,
        verdict: Verdict::of(failed, 3, 2),
        ..Metric::example()
    }
}

/// `(up, consecutive_failures, consecutive_successes)` of [`SITE`].
async fn state(db: &Postgres) -> (bool, i32, i32) {
    let client = sitewatch_pgtest::sql::client(db).await;
    let row = client
        .query_one(
            "SELECT up, consecutive_failures, consecutive_successes FROM site_state \
             JOIN websites w ON w.id = website_id WHERE w.url = $1",
            &[&SITE],
        )
        .await
        .expect("the site has a state");
    (row.get(0), row.get(1), row.get(2))
}

/// Every incident: (opened by, failed condition, message, resolved by).
async fn incidents(db: &Postgres) -> Vec<(Uuid, String, String, Option<Uuid>)> {
    let client = sitewatch_pgtest::sql::client(db).await;
    client
        .query(
            "SELECT opened_by, failed_condition, failed_message, resolved_by FROM incidents ORDER BY id",
            &[],
        )
        .await
        .expect("incidents")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

#[tokio::test]
async fn three_failures_open_one_incident_and_two_successes_resolve_it() {
    let db = common::postgres();
    let store = common::migrated_store(db.url(), WritePath::Copy, true).await;
    let probes: Vec<Metric> = [true, false, false, false, false, true, true, true]
        .iter()
        .zip(0..)
        .map(|(&up, n)| probe(n, up))
        .collect();
    // One probe a batch, as a quiet stream writes them.
    for (i, row) in common::batch(&probes).iter().enumerate() {
        let written = store
            .write(std::slice::from_ref(row), &[])
            .await
            .expect("write");
        let expected = u64::from(i == 3 || i == 6);
        assert_eq!(written.transitions, expected, "probe {i}");
        if i == 3 {
            assert_eq!(state(&db).await, (false, 3, 0));
        }
    }
    assert_eq!(state(&db).await, (true, 0, 0), "successes count while down");
    let found = incidents(&db).await;
    assert_eq!(found.len(), 1, "{found:?}");
    let (opened_by, condition, message, resolved_by) = &found[0];
    assert_eq!(
        *opened_by, probes[3].probe_id,
        "opened by the third failure"
    );
    assert_eq!(condition, "status");
    assert_eq!(message, "status 503 not in 200-299 (probe 3)");
    assert_eq!(
        *resolved_by,
        Some(probes[6].probe_id),
        "resolved by the second success"
    );
}

#[tokio::test]
async fn two_failures_then_a_recovery_open_nothing_even_in_one_batch() {
    let db = common::postgres();
    let store = common::migrated_store(db.url(), WritePath::Copy, true).await;
    let probes: Vec<Metric> = [false, false, true, false, false, true, true]
        .iter()
        .zip(0..)
        .map(|(&up, n)| probe(n, up))
        .collect();
    let written = store
        .write(&common::batch(&probes), &[])
        .await
        .expect("write");
    assert_eq!(written.transitions, 0);
    assert_eq!(state(&db).await, (true, 0, 0));
    assert!(incidents(&db).await.is_empty());
}

#[tokio::test]
async fn redelivered_and_late_probes_move_nothing() {
    let db = common::postgres();
    let store = common::migrated_store(db.url(), WritePath::Copy, true).await;
    let probes: Vec<Metric> = (0..5).map(|n| probe(n, n == 0)).collect();
    let all = common::batch(&probes);
    let _ = store.write(&all[..3], &[]).await.expect("first batch");
    assert_eq!(state(&db).await, (true, 2, 0));
    // The first batch again, as after a crash before its offsets were committed.
    let again = store.write(&all[..3], &[]).await.expect("redelivery");
    assert_eq!((again.inserted, again.duplicates), (0, 3));
    assert_eq!(
        state(&db).await,
        (true, 2, 0),
        "a redelivery counts nothing"
    );
    // A failure older than the last applied probe, then the rest.
    let late = common::batch(&[probe(-10, false)]);
    let _ = store.write(&late, &[]).await.expect("late probe");
    assert_eq!(
        state(&db).await,
        (true, 2, 0),
        "a late probe counts nothing"
    );
    let _ = store.write(&all[3..], &[]).await.expect("the rest");
    assert_eq!(state(&db).await, (false, 4, 0));
    assert_eq!(incidents(&db).await.len(), 1);
    let _ = store.write(&all, &[]).await.expect("everything again");
    assert_eq!(state(&db).await, (false, 4, 0));
    assert_eq!(incidents(&db).await.len(), 1);
}

#[tokio::test]
async fn two_writers_of_the_same_sites_at_once_open_one_incident() {
    // A rebalance can leave the old owner of a partition writing while the
    // new one starts on the same messages.
    let db = common::postgres();
    let first = Arc::new(common::migrated_store(db.url(), WritePath::Copy, true).await);
    let second = Arc::new(common::migrated_store(db.url(), WritePath::Copy, true).await);
    let probes: Vec<Metric> = (0..40).map(|n| probe(n, !(10..30).contains(&n))).collect();
    let all = common::batch(&probes);
    let write = |store: Arc<Store>, all: Vec<Row>, batch: usize| {
        tokio::spawn(async move {
            for chunk in all.chunks(batch) {
                let _ = store.write(chunk, &[]).await.expect("write");
            }
        })
    };
    let a = write(first, all.clone(), 3);
    let b = write(second, all, 7);
    a.await.expect("first writer");
    b.await.expect("second writer");
    let found = incidents(&db).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, probes[12].probe_id);
    assert_eq!(found[0].3, Some(probes[31].probe_id));
    assert_eq!(state(&db).await, (true, 0, 0));
}

/// Alert settings for `webhooks` (`KIND:URL,...`), quick to retry.
fn alerting(webhooks: &str, refused_attempts: u32) -> AlertSettings {
    AlertSettings {
        webhooks: Some(SecretString::from(webhooks.to_owned())),
        status_page_url: Some("https://status.example/".into()),
        timeout: TimeSpan::from(Duration::from_secs(2)),
        retry_max: TimeSpan::from(Duration::from_millis(500)),
        refused_attempts,
    }
}

/// A store that writes notifications for `alerts` into the outbox.
async fn alerting_store(db: &Postgres, alerts: &AlertSettings) -> Store {
    common::migrated_store(db.url(), WritePath::Copy, true)
        .await
        .alerting(Outbox::new(
            alerts.webhooks().expect("webhooks"),
            alerts.status_page().expect("status page"),
        ))
}

/// A sender running until the token is cancelled.
fn sender(db: &Postgres, alerts: &AlertSettings) -> (CancellationToken, JoinHandle<()>) {
    let stop = CancellationToken::new();
    let connector = common::pg_settings(db.url())
        .connector()
        .expect("connector");
    let sender = Sender::new(connector, alerts).expect("sender");
    (stop.clone(), tokio::spawn(sender.run(stop)))
}

/// Waits until no notification is pending (all sent or given up).
async fn wait_outbox_settled(db: &Postgres, rows: i64) {
    let client = sitewatch_pgtest::sql::client(db).await;
    wait_for(Duration::from_secs(60), "every notification sent or given up", || async {
        let row = client
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE sent_at IS NULL AND failed_at IS NULL) FROM alert_outbox",
                &[],
            )
            .await
            .expect("outbox");
        let (all, pending): (i64, i64) = (row.get(0), row.get(1));
        all == rows && pending == 0
    })
    .await;
}

/// Probes that take `site` down (3 failures) and up again (2 successes).
fn outage(site: &str) -> Vec<Metric> {
    [false, false, false, true, true]
        .iter()
        .zip(0..)
        .map(|(&up, n)| probe_of(site, n, up))
        .collect()
}

/// The accepted deliveries' keys, in arrival order.
fn accepted_keys(receiver: &WebhookReceiver) -> Vec<String> {
    receiver
        .deliveries()
        .iter()
        .filter(|d| d.accepted())
        .filter_map(|d| d.key.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_transition_reaches_every_webhook_once_with_its_key() {
    let db = common::postgres();
    let json = WebhookReceiver::start().await.expect("receiver");
    let slack = WebhookReceiver::start().await.expect("receiver");
    let alerts = alerting(&format!("json:{},slack:{}", json.url(), slack.url()), 3);
    let store = alerting_store(&db, &alerts).await;
    let probes = outage(SITE);
    let written = store
        .write(&common::batch(&probes), &[])
        .await
        .expect("write");
    assert_eq!(written.transitions, 2);
    let (stop, task) = sender(&db, &alerts);
    wait_outbox_settled(&db, 4).await;
    stop.cancel();
    task.await.expect("sender");

    let incident: i64 = sitewatch_pgtest::sql::client(&db)
        .await
        .query_one("SELECT id FROM incidents", &[])
        .await
        .expect("one incident")
        .get(0);
    let keys = vec![
        format!("incident-{incident}-down"),
        format!("incident-{incident}-up"),
    ];
    assert_eq!(accepted_keys(&json), keys);
    assert_eq!(accepted_keys(&slack), keys);
    let down = json.deliveries()[0].json();
    assert_eq!(down["site"], SITE);
    assert_eq!(down["state"], "down");
    assert_eq!(down["failed_condition"], "status");
    assert_eq!(down["probe_id"], probes[2].probe_id.to_string());
    assert_eq!(
        down["since"],
        serde_json::to_value(probes[2].started_at).expect("time")
    );
    let site_id: i64 = sitewatch_pgtest::sql::client(&db)
        .await
        .query_one("SELECT id FROM websites WHERE url = $1", &[&SITE])
        .await
        .expect("site")
        .get(0);
    assert_eq!(
        down["status_page"],
        format!("https://status.example/sites/{site_id}")
    );
    let text = slack.deliveries()[1].json()["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        text.starts_with(&format!("UP: {SITE} again since")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_webhook_is_retried_and_a_refusing_one_given_up() {
    let db = common::postgres();
    let flaky = WebhookReceiver::start().await.expect("receiver");
    flaky.answer_next(&[503, 500]);
    let refusing = WebhookReceiver::start().await.expect("receiver");
    refusing.answer_next(&[404; 10]);
    let alerts = alerting(&format!("json:{},json:{}", flaky.url(), refusing.url()), 2);
    let store = alerting_store(&db, &alerts).await;
    let _ = store
        .write(&common::batch(&outage(SITE)[..3]), &[])
        .await
        .expect("write");
    let (stop, task) = sender(&db, &alerts);
    wait_outbox_settled(&db, 2).await;
    stop.cancel();
    task.await.expect("sender");

    let statuses = |r: &WebhookReceiver| -> Vec<Option<u16>> {
        r.deliveries().iter().map(|d| d.status).collect()
    };
    assert_eq!(statuses(&flaky), vec![Some(503), Some(500), Some(200)]);
    assert_eq!(
        statuses(&refusing),
        vec![Some(404), Some(404)],
        "given up after 2 attempts"
    );
    let client = sitewatch_pgtest::sql::client(&db).await;
    let rows = client
        .query(
            "SELECT attempts, sent_at IS NOT NULL, failed_at IS NOT NULL, last_error FROM alert_outbox",
            &[],
        )
        .await
        .expect("outbox");
    let outcomes: Vec<(i32, bool, bool, Option<String>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert!(outcomes.contains(&(3, true, false, None)), "{outcomes:?}");
    assert!(
        outcomes.contains(&(2, false, true, Some("answered 404 Not Found".into()))),
        "{outcomes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_senders_never_send_a_notification_twice_and_keep_each_sites_order() {
    let db = common::postgres();
    let receiver = WebhookReceiver::start().await.expect("receiver");
    let alerts = alerting(&format!("json:{}", receiver.url()), 3);
    let store = alerting_store(&db, &alerts).await;
    let probes: Vec<Metric> = (0..15)
        .flat_map(|i| outage(&format!("https://site-{i}.example/")))
        .collect();
    let written = store
        .write(&common::batch(&probes), &[])
        .await
        .expect("write");
    assert_eq!(written.transitions, 30);
    let first = sender(&db, &alerts);
    let second = sender(&db, &alerts);
    wait_outbox_settled(&db, 30).await;
    for (stop, task) in [first, second] {
        stop.cancel();
        task.await.expect("sender");
    }
    let deliveries = receiver.deliveries();
    assert_eq!(deliveries.len(), 30, "each notification sent once");
    let mut keys: Vec<String> = deliveries.iter().filter_map(|d| d.key.clone()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 30);
    for i in 0..15 {
        let site = format!("https://site-{i}.example/");
        let states: Vec<String> = deliveries
            .iter()
            .map(Delivery::json)
            .filter(|n| n["site"] == site.as_str())
            .map(|n| n["state"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(states, ["down", "up"], "{site}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_webhook_delays_notifications_in_order_and_blocks_no_write() {
    let db = common::postgres();
    // A port nobody listens on until the receiver comes back on it.
    let addr = {
        let reserved = WebhookReceiver::start().await.expect("receiver");
        let addr = reserved.addr();
        reserved.stop().await;
        addr
    };
    let alerts = alerting(&format!("json:http://{addr}/hook"), 3);
    let store = alerting_store(&db, &alerts).await;
    let (stop, task) = sender(&db, &alerts);
    let sites = ["https://a.example/", "https://b.example/"];
    for site in sites {
        let _ = store
            .write(&common::batch(&outage(site)), &[])
            .await
            .expect("write while the webhook is down");
    }
    let client = sitewatch_pgtest::sql::client(&db).await;
    wait_for(
        Duration::from_secs(30),
        "attempts against the unreachable webhook",
        || async {
            let attempts: i64 = client
                .query_one(
                    "SELECT coalesce(sum(attempts), 0)::int8 FROM alert_outbox",
                    &[],
                )
                .await
                .expect("attempts")
                .get(0);
            attempts >= 3
        },
    )
    .await;
    // Metrics keep landing while the webhook is down.
    let more: Vec<Metric> = (10..20)
        .map(|n| probe_of("https://c.example/", n, true))
        .collect();
    let written = store
        .write(&common::batch(&more), &[])
        .await
        .expect("a write during the outage");
    assert_eq!(written.inserted, 10);

    let receiver = WebhookReceiver::start_on(addr)
        .await
        .expect("the receiver comes back");
    wait_outbox_settled(&db, 4).await;
    stop.cancel();
    task.await.expect("sender");
    let deliveries = receiver.deliveries();
    assert_eq!(deliveries.len(), 4, "{deliveries:?}");
    for site in sites {
        let states: Vec<String> = deliveries
            .iter()
            .map(Delivery::json)
            .filter(|n| n["site"] == site)
            .map(|n| n["state"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(states, ["down", "up"], "{site}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_killed_mid_send_leaves_the_notification_to_the_next() {
    let db = common::postgres();
    let receiver = WebhookReceiver::start().await.expect("receiver");
    receiver.hang(true);
    let alerts = alerting(&format!("json:{}", receiver.url()), 3);
    let store = alerting_store(&db, &alerts).await;
    let _ = store
        .write(&common::batch(&outage(SITE)[..3]), &[])
        .await
        .expect("write");
    let (_, first) = sender(&db, &alerts);
    wait_for(
        Duration::from_secs(30),
        "the first sender's request",
        || async { !receiver.deliveries().is_empty() },
    )
    .await;
    // Gone without a word, as a process SIGKILLed: its connection closes and
    // PostgreSQL releases the row it held.
    first.abort();
    let _ = first.await;
    receiver.hang(false);
    let (stop, second) = sender(&db, &alerts);
    wait_outbox_settled(&db, 1).await;
    stop.cancel();
    second.await.expect("sender");
    let deliveries = receiver.deliveries();
    assert_eq!(
        deliveries.len(),
        2,
        "the unanswered attempt and the one after: {deliveries:?}"
    );
    assert_eq!(
        deliveries[0].key, deliveries[1].key,
        "one key for both attempts"
    );
    assert_eq!(deliveries.iter().filter(|d| d.accepted()).count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_batch_of_a_partition_moves_state_only_after_the_earlier_one() {
    // Two writers: the second batch of a partition can reach its commit first.
    let db = common::postgres();
    let store = Arc::new(common::migrated_store(db.url(), WritePath::Copy, true).await);
    let probes: Vec<Metric> = (0..6).map(|n| probe(n, n >= 3)).collect();
    let all = common::batch(&probes);
    let (earlier, later) = (all[..3].to_vec(), all[3..].to_vec());
    let mut turns = Turns::default();
    let (first_turn, first_done) = turns.next([0]);
    let (second_turn, second_done) = turns.next([0]);
    let second = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let written = store.write_in_turn(&later, &[], &second_turn).await;
            second_done.written();
            written
        })
    };
    let client = sitewatch_pgtest::sql::client(&db).await;
    wait_for(
        Duration::from_secs(30),
        "the later batch waiting for its turn",
        || async {
            client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction'",
                    &[],
                )
                .await
                .expect("activity")
                .get::<_, i64>(0)
                == 1
        },
    )
    .await;
    assert!(
        !second.is_finished(),
        "its state waits for the earlier batch"
    );
    let first = store
        .write_in_turn(&earlier, &[], &first_turn)
        .await
        .expect("earlier batch");
    assert_eq!(first.transitions, 1, "three failures: down");
    first_done.written();
    let second = second.await.expect("task").expect("later batch");
    assert_eq!(second.transitions, 1, "then three successes: up");
    let found = incidents(&db).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].0, probes[2].probe_id);
    assert_eq!(found[0].3, Some(probes[4].probe_id));
}

#[tokio::test]
async fn a_row_stored_before_verdicts_redelivered_after_an_upgrade_is_a_duplicate() {
    let db = common::postgres();
    let store = common::migrated_store(db.url(), WritePath::Copy, true).await;
    let all = common::batch(&[probe(0, true)]);
    let _ = store.write(&all, &[]).await.expect("first write");
    // As a consumer older than verdicts stored it.
    let client = sitewatch_pgtest::sql::client(&db).await;
    let _ = client
        .execute(
            "UPDATE metrics SET up = NULL, failed = NULL, failure_threshold = NULL, success_threshold = NULL",
            &[],
        )
        .await
        .expect("an old row");
    let again = store.write(&all, &[]).await.expect("redelivery");
    assert_eq!(
        (again.inserted, again.duplicates, again.dead_letters),
        (0, 1, 0)
    );
}

#[tokio::test]
async fn a_site_state_deleted_during_an_incident_goes_down_into_that_incident() {
    let db = common::postgres();
    let store = common::migrated_store(db.url(), WritePath::Copy, true).await;
    let _ = store
        .write(&common::batch(&outage(SITE)[..3]), &[])
        .await
        .expect("down");
    let client = sitewatch_pgtest::sql::client(&db).await;
    let _ = client
        .execute("DELETE FROM site_state", &[])
        .await
        .expect("reset");
    let later = common::batch(&(10..13).map(|n| probe(n, false)).collect::<Vec<_>>());
    // The first write finds the row it remembered gone, and is retried (as
    // the writer retries a transient failure) with the table read again.
    let written = match store.write(&later, &[]).await {
        Err(StoreError::StateMoved) => store.write(&later, &[]).await,
        other => other,
    }
    .expect("down again");
    assert_eq!(written.transitions, 1);
    let found = incidents(&db).await;
    assert_eq!(
        found.len(),
        1,
        "the open incident is taken up again: {found:?}"
    );
    assert_eq!(state(&db).await, (false, 3, 0));
}
