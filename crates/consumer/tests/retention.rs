//! Bounded storage: a pass makes the days ahead and drops the days past the
//! retention whole, and only one consumer's pass runs at a time.

mod common;

use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
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
    retention_by(db, keep_days, ahead, DAY)
}

const DAY: Duration = Duration::from_secs(86_400);
const HOUR: Duration = Duration::from_secs(3_600);

/// Passes making partitions `width` wide.
fn retention_by(db: &Postgres, keep_days: u64, ahead: u32, width: Duration) -> Retention {
    Retention::new(
        connector(db),
        RetentionSettings {
            metrics: Duration::from_secs(keep_days * 86_400).into(),
            rollups: Duration::from_secs(400 * 86_400).into(),
            partition: width.into(),
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
    let times: Vec<DateTime<Utc>> = days.iter().map(|d| now - TimeDelta::days(*d)).collect();
    store_at(store, &times).await;
}

/// Metrics probed at `times`, stored by the consumer's store.
async fn store_at(store: &Store, times: &[DateTime<Utc>]) {
    let metrics: Vec<Metric> = times
        .iter()
        .enumerate()
        .map(|(i, &at)| Metric {
            scheduled_at: at,
            started_at: at,
            ..common::metric(i as u64, 2)
        })
        .collect();
    let written = store
        .write(&common::batch(&metrics), &[])
        .await
        .expect("written");
    assert_eq!(written.inserted, metrics.len() as u64);
}

/// The partitions of `metrics`, by name.
async fn partitions(client: &tokio_postgres::Client) -> Vec<String> {
    client
        .query(
            "SELECT partition::text FROM metrics_partitions() ORDER BY lower",
            &[],
        )
        .await
        .expect("partitions")
        .iter()
        .map(|row| row.get(0))
        .collect()
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

#[tokio::test]
async fn partitions_of_another_width_fill_the_gaps_between_those_made_before_and_go_whole() {
    let db = common::postgres();
    let hourly = common::migrated_store(db.url(), WritePath::Copy, false)
        .await
        .partitioned_by(HOUR);
    let now = Utc::now();
    let day = (now - TimeDelta::days(30))
        .duration_trunc(TimeDelta::days(1))
        .expect("a day");
    let at = |minutes: i64| day + TimeDelta::minutes(minutes);
    let name = |minutes: i64| {
        let start = at(minutes);
        if start == day {
            start.format("metrics_p%Y%m%d").to_string()
        } else {
            start.format("metrics_p%Y%m%d_%H%M%S").to_string()
        }
    };
    // Hours 5 and 6 of that day, by the hour.
    store_at(&hourly, &[at(5 * 60 + 10), at(6 * 60 + 59)]).await;
    let client = connector(&db).connect().await.expect("connect");
    let made = partitions(&client).await;
    assert!(
        made.contains(&name(5 * 60)) && made.contains(&name(6 * 60)),
        "{made:?}"
    );

    // Then by the week: the week around those hours is made in the two
    // pieces they leave, and every row goes in.
    let weekly = common::migrated_store(db.url(), WritePath::Copy, false)
        .await
        .partitioned_by(7 * DAY);
    let week = DateTime::from_timestamp(day.timestamp().div_euclid(7 * 86_400) * 7 * 86_400, 0)
        .expect("a week");
    store_at(&weekly, &[at(60), at(12 * 60), at(6 * 60 + 30)]).await;
    let made = partitions(&client).await;
    let before = week.format("metrics_p%Y%m%d").to_string();
    assert!(made.contains(&before), "the week up to hour 5: {made:?}");
    assert!(
        made.contains(&name(7 * 60)),
        "hour 7 to the week's end: {made:?}"
    );
    assert_eq!(count(&client).await, 5, "every row stored");
    let bounds = client
        .query_one(
            "SELECT lower, upper FROM metrics_partitions() WHERE partition::text = $1",
            &[&name(7 * 60)],
        )
        .await
        .expect("bounds");
    assert_eq!(
        (
            bounds.get::<_, DateTime<Utc>>(0),
            bounds.get::<_, DateTime<Utc>>(1)
        ),
        (at(7 * 60), week + TimeDelta::days(7)),
        "cut short at the hour partition before it, whole to the week's end"
    );

    // And an hour inside a day 15 days back.
    let late_day = (now - TimeDelta::days(15))
        .duration_trunc(TimeDelta::days(1))
        .expect("a day");
    let hour_3 = late_day + TimeDelta::hours(3);
    store_at(&hourly, &[hour_3 + TimeDelta::minutes(10)]).await;
    let hour_3_name = hour_3.format("metrics_p%Y%m%d_%H%M%S").to_string();
    assert!(exists(&client, &hour_3_name).await);

    // A pass by the hour: every partition of that week, and the hour, are
    // past 14 days and rolled up, so each goes whole; the day the hour is in
    // is left with part of its raw rows, which no longer count as complete.
    let Pass::Done { dropped, .. } = retention_by(&db, 14, 3, HOUR).pass().await.expect("a pass")
    else {
        panic!("skipped")
    };
    for gone in [
        before,
        name(5 * 60),
        name(6 * 60),
        name(7 * 60),
        hour_3_name,
    ] {
        assert!(dropped.contains(&gone), "{gone} dropped: {dropped:?}");
        assert!(!exists(&client, &gone).await, "{gone}");
    }
    assert_eq!(count(&client).await, 0);
    let complete_since: DateTime<Utc> = client
        .query_one("SELECT raw_complete_since FROM rollup_progress", &[])
        .await
        .expect("progress")
        .get(0);
    assert_eq!(
        complete_since,
        late_day + TimeDelta::days(1),
        "the day after the last partition dropped ends"
    );
}

#[tokio::test]
async fn a_pass_makes_partitions_ahead_by_the_hour_after_those_of_whole_days() {
    let db = common::postgres();
    sitewatch_db::schema::migrate(&connector(&db))
        .await
        .expect("schema");
    let client = connector(&db).connect().await.expect("connect");
    let now = Utc::now();
    // The migration made today and the days ahead by the day; the last of
    // those is dropped, so that the pass makes the hours after tomorrow.
    for ahead in 2..=3 {
        client
            .batch_execute(&format!("DROP TABLE {}", partition_of(now, -ahead)))
            .await
            .expect("drop a day ahead");
    }
    let _ = drops(retention_by(&db, 14, 4, HOUR)).await;
    let after = (now + TimeDelta::days(2))
        .duration_trunc(TimeDelta::days(1))
        .expect("a day");
    let made = partitions(&client).await;
    assert!(made.contains(&partition_of(now, 0)) && made.contains(&partition_of(now, -1)));
    assert!(
        made.contains(&after.format("metrics_p%Y%m%d").to_string()),
        "{made:?}"
    );
    for hour in 1..=2 {
        let name = (after + TimeDelta::hours(hour))
            .format("metrics_p%Y%m%d_%H%M%S")
            .to_string();
        assert!(made.contains(&name), "{name} ahead: {made:?}");
    }
    let name = (after + TimeDelta::hours(3))
        .format("metrics_p%Y%m%d_%H%M%S")
        .to_string();
    assert!(!made.contains(&name), "no more than 4 ahead: {made:?}");
}
