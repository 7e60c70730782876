//! Bounded storage: a pass makes the days ahead and drops the days past the
//! retention whole, and only one consumer's pass runs at a time.

mod common;

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use sitewatch_consumer::retention::{Pass, Retention, RetentionSettings, RETENTION_LOCK};
use sitewatch_consumer::sink::Sink;
use sitewatch_consumer::store::{Store, WritePath};
use sitewatch_db::Connector;
use sitewatch_metric::Metric;
use sitewatch_pgtest::wait::wait_for;
use sitewatch_pgtest::Postgres;

fn connector(db: &Postgres) -> Connector {
    common::pg_settings(db.url())
        .connector()
        .expect("connector")
}

fn retention(db: &Postgres, keep_days: u64, ahead: u32) -> Retention {
    Retention::new(
        connector(db),
        RetentionSettings {
            metrics: Duration::from_secs(keep_days * 86_400).into(),
            rollups: Duration::from_secs(400 * 86_400).into(),
            partitions_ahead: ahead,
            every: Duration::from_secs(600).into(),
        },
    )
}

/// What a pass dropped, left and failed to drop.
#[derive(Debug, PartialEq, Eq)]
struct Drops {
    dropped: Vec<String>,
    left: Vec<String>,
    failed: Vec<String>,
}

/// A pass that ran, by what it dropped.
async fn drops(retention: Retention) -> Drops {
    match retention.pass().await.expect("a pass") {
        Pass::Done {
            dropped,
            left,
            failed,
            ..
        } => Drops {
            dropped,
            left,
            failed,
        },
        Pass::Skipped => panic!("the pass was skipped"),
    }
}

/// Metrics probed `days` days before `now`, stored by the consumer's store.
async fn store_days_ago(store: &Store, now: DateTime<Utc>, days: &[i64]) {
    let metrics: Vec<Metric> = days
        .iter()
        .enumerate()
        .map(|(i, days_ago)| {
            let at: DateTime<Utc> = now - TimeDelta::days(*days_ago);
            Metric {
                scheduled_at: at,
                started_at: at,
                ..common::metric(i as u64, 2)
            }
        })
        .collect();
    let written = store
        .write(&common::batch(&metrics), &[])
        .await
        .expect("written");
    assert_eq!(written.inserted, metrics.len() as u64);
}

/// The partition of the day `days_ago` days before `now`; one `now` per
/// test, so that midnight passing during it changes no name.
fn partition_of(now: DateTime<Utc>, days_ago: i64) -> String {
    (now - TimeDelta::days(days_ago))
        .format("metrics_p%Y%m%d")
        .to_string()
}

async fn exists(client: &tokio_postgres::Client, table: &str) -> bool {
    client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .expect("to_regclass")
        .get(0)
}

async fn count(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM metrics", &[])
        .await
        .expect("count")
        .get(0)
}

#[tokio::test]
async fn days_past_the_retention_are_dropped_whole_and_the_days_ahead_made() {
    let db = common::postgres();
    let store = common::migrated_store(db.url(), WritePath::Copy, false).await;
    let now = Utc::now();
    store_days_ago(&store, now, &[30, 20, 20, 10, 0]).await;
    let client = connector(&db).connect().await.expect("connect");
    assert_eq!(count(&client).await, 5);

    let pass = drops(retention(&db, 14, 6)).await;
    assert_eq!(
        pass,
        Drops {
            dropped: vec![partition_of(now, 30), partition_of(now, 20)],
            left: Vec::new(),
            failed: Vec::new(),
        }
    );
    assert!(
        !exists(&client, &partition_of(now, 30)).await,
        "dropped, not emptied"
    );
    assert!(!exists(&client, &partition_of(now, 20)).await);
    assert!(
        exists(&client, &partition_of(now, 10)).await,
        "kept: within 14 days"
    );
    assert_eq!(count(&client).await, 2, "the rows of 10 days ago and today");
    for ahead in 0..=6 {
        assert!(
            exists(&client, &partition_of(now, -ahead)).await,
            "{ahead} days ahead"
        );
    }

    let again = drops(retention(&db, 14, 6)).await;
    assert_eq!(
        again,
        Drops {
            dropped: Vec::new(),
            left: Vec::new(),
            failed: Vec::new(),
        },
        "nothing more to do"
    );
}

#[tokio::test]
async fn only_one_consumer_runs_a_pass_at_a_time() {
    let db = common::postgres();
    sitewatch_db::schema::migrate(&connector(&db))
        .await
        .expect("schema");
    let other = connector(&db).connect().await.expect("connect");
    // What a pass running in another consumer holds.
    let _ = other
        .execute("SELECT pg_advisory_lock($1)", &[&RETENTION_LOCK])
        .await
        .expect("lock");
    assert_eq!(
        retention(&db, 14, 3).pass().await.expect("a pass"),
        Pass::Skipped
    );
    drop(other);
    wait_for(
        Duration::from_secs(10),
        "a pass once the other consumer's session ended",
        || async { matches!(retention(&db, 14, 3).pass().await, Ok(Pass::Done { .. })) },
    )
    .await;
}

#[tokio::test]
async fn a_drop_held_up_by_writes_is_left_for_the_next_pass() {
    let db = common::postgres();
    let store = common::migrated_store(db.url(), WritePath::Copy, false).await;
    let now = Utc::now();
    store_days_ago(&store, now, &[30]).await;
    let mut writer = connector(&db).connect().await.expect("connect");
    // A write under way into metrics, not yet committed.
    let tx = writer.transaction().await.expect("transaction");
    let _ = tx
        .execute("LOCK TABLE metrics IN ROW EXCLUSIVE MODE", &[])
        .await
        .expect("lock");
    let pass = drops(retention(&db, 14, 3)).await;
    assert_eq!(
        pass,
        Drops {
            dropped: Vec::new(),
            left: vec![partition_of(now, 30)],
            failed: Vec::new(),
        }
    );
    tx.rollback().await.expect("rollback");
    let pass = drops(retention(&db, 14, 3)).await;
    assert_eq!(
        pass,
        Drops {
            dropped: vec![partition_of(now, 30)],
            left: Vec::new(),
            failed: Vec::new(),
        }
    );
}

#[tokio::test]
async fn notifications_delivered_and_incidents_resolved_long_ago_are_deleted() {
    let db = common::postgres();
    let store = common::migrated_store(db.url(), WritePath::Copy, false).await;
    store_days_ago(&store, Utc::now(), &[0]).await;
    let client = connector(&db).connect().await.expect("connect");
    client
        .batch_execute(
            "INSERT INTO incidents (website_id, opened_at, opened_by, failed_condition, failed_message, resolved_at, resolved_by)
             SELECT w.id, now() - i.opened, gen_random_uuid(), 'status', 'was 503', now() - i.resolved,
                    CASE WHEN i.resolved IS NOT NULL THEN gen_random_uuid() END
             FROM (SELECT min(id) AS id FROM websites) w,
                  (VALUES (interval '501 days', interval '500 days'),
                          (interval '11 days', interval '10 days'),
                          (interval '600 days', NULL)) i (opened, resolved);
             INSERT INTO alert_outbox (incident_id, website_id, transition, webhook, payload, sent_at, failed_at)
             SELECT i.id, i.website_id, 'down', o.webhook, '{}', now() - o.sent, now() - o.failed
             FROM (SELECT * FROM incidents WHERE resolved_at > now() - interval '20 days') i,
                  (VALUES ('generic:a', interval '30 days', NULL::interval), ('generic:b', NULL, interval '20 days'),
                          ('generic:c', interval '1 day', NULL), ('generic:d', NULL, NULL)) o (webhook, sent, failed);",
        )
        .await
        .expect("incidents and notifications");
    let _ = drops(retention(&db, 14, 3)).await;
    let left = |sql: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(sql, &[])
                .await
                .expect("count")
                .get::<_, i64>(0)
        }
    };
    assert_eq!(
        left("SELECT count(*) FROM incidents").await,
        2,
        "the incident resolved 500 days ago is gone; the one of 10 days ago and the open one stay"
    );
    assert_eq!(
        left("SELECT count(*) FROM alert_outbox").await,
        2,
        "sent or given up on 14+ days ago: gone; sent yesterday or pending: kept"
    );
}
