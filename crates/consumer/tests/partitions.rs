//! `metrics` is partitioned by day: a metric of any date is stored, never
//! dead-lettered for its date, also once its day's partition was dropped.

mod common;

use chrono::{DateTime, TimeDelta, Utc};
use sitewatch_consumer::offsets::Origin;
use sitewatch_consumer::sink::{Row, Sink};
use sitewatch_consumer::store::WritePath;
use sitewatch_metric::Metric;

/// Metric `i` of the common set, probed at `at`.
fn at(i: u64, at: DateTime<Utc>, offset: i64) -> Row {
    let metric = Metric {
        scheduled_at: at,
        started_at: at,
        ..common::metric(i, 3)
    };
    Row {
        metric,
        origin: Origin {
            topic: "metrics".into(),
            partition: 0,
            offset,
        },
        key: None,
        payload: None,
    }
}

fn time(text: &str) -> DateTime<Utc> {
    text.parse().expect("a time")
}

#[tokio::test]
async fn metrics_of_days_long_gone_and_far_ahead_are_stored_by_either_write_path() {
    let db = common::postgres();
    for (n, path) in [WritePath::Copy, WritePath::Unnest].into_iter().enumerate() {
        let name = format!("days_{n}");
        let _ = db.create_database(&name).expect("database");
        let store = common::migrated_store(db.url_for(&name), path, true).await;
        let now = Utc::now();
        let rows = [
            at(1, time("1999-12-31T23:59:59Z"), 1),
            at(2, time("2000-01-01T00:00:00Z"), 2),
            at(3, now, 3),
            at(4, time("2100-06-01T12:00:00Z"), 4),
        ];
        let written = store.write(&rows, &[]).await.expect("written");
        assert_eq!((written.inserted, written.dead_letters), (4, 0), "{path:?}");
        let again = store.write(&rows, &[]).await.expect("written again");
        assert_eq!(
            (again.inserted, again.duplicates),
            (0, 4),
            "{path:?}: a redelivery"
        );
        let days = db
            .psql(
                &name,
                "SELECT string_agg(tableoid::regclass::text, ',' ORDER BY started_at) FROM metrics",
            )
            .expect("days");
        let today = now.format("metrics_p%Y%m%d").to_string();
        assert_eq!(
            days,
            format!("metrics_p19991231,metrics_p20000101,{today},metrics_p21000601"),
            "{path:?}: each row in its UTC day's partition"
        );
    }
}

#[tokio::test]
async fn a_partition_dropped_under_a_running_consumer_is_made_again() {
    let db = common::postgres();
    let store = common::migrated_store(db.url(), WritePath::Copy, true).await;
    let day = time("2030-03-03T10:00:00Z");
    let written = store.write(&[at(1, day, 1)], &[]).await.expect("written");
    assert_eq!(written.inserted, 1);
    // Retention (or an operator) drops the day this process has seen.
    let _ = db
        .psql("postgres", "DROP TABLE metrics_p20300303")
        .expect("drop");
    let written = store
        .write(&[at(2, day + TimeDelta::hours(1), 2)], &[])
        .await
        .expect("written after the drop");
    assert_eq!((written.inserted, written.dead_letters), (1, 0));
    assert_eq!(
        db.psql("postgres", "SELECT count(*) FROM metrics_p20300303")
            .expect("count"),
        "1"
    );
}
