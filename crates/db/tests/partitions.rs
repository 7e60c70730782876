//! `metrics` partitioned by day: an installation of the release before
//! keeps its rows through the upgrade, and each day gets its partition.

use sitewatch_db::{Connector, PgSettings, SslMode};
use sitewatch_pgtest::Postgres;
use sitewatch_service::SecretString;

fn connector(db: &Postgres) -> Connector {
    PgSettings {
        url: Some(SecretString::from(db.url())),
        sslmode: SslMode::Disable,
        ..PgSettings::default()
    }
    .connector()
    .expect("connector")
}

async fn one(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.expect(sql).get(0)
}

/// A client of `db` with the whole schema.
async fn migrated(db: &Postgres) -> tokio_postgres::Client {
    let connector = connector(db);
    sitewatch_db::schema::migrate(&connector)
        .await
        .expect("schema");
    connector.connect().await.expect("connect")
}

/// The partitions of `metrics`, by name.
async fn partitions(client: &tokio_postgres::Client) -> Vec<String> {
    client
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'metrics'::regclass ORDER BY 1",
            &[],
        )
        .await
        .expect("partitions")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// One metric row of the release before, `days_ago` days old, as its consumer stored it.
fn insert_v3(n: i64, days_ago: i64) -> String {
    format!(
        "INSERT INTO metrics (probe_id, website_id, schema_version, scheduled_at, started_at, \
           lateness_us, skipped_before, total_us, status, body_bytes, body_truncated, redirects, \
           kafka_topic, kafka_partition, kafka_offset, up, failure_threshold, success_threshold) \
         SELECT gen_random_uuid(), id, 2, now() - interval '{days_ago} days', \
           now() - interval '{days_ago} days', 10, 0, 1000, 200, 10, false, 0, 't', 0, {n}, true, 3, 2 \
         FROM websites WHERE url = 'https://kept.example/'"
    )
}

#[tokio::test]
async fn rows_stored_before_partitioning_survive_the_upgrade_and_stay_one_per_key() {
    let db = Postgres::start_temp().expect("postgres");
    let connector = connector(&db);
    sitewatch_db::schema::migrate_to(&connector, 3)
        .await
        .expect("the release before");
    let client = connector.connect().await.expect("connect");
    client
        .batch_execute("INSERT INTO websites (url) VALUES ('https://kept.example/')")
        .await
        .expect("site");
    // The last from a monitor whose clock ran a year ahead.
    for (n, days_ago) in [(1, 40), (2, 3), (3, 0), (4, -365)] {
        client
            .batch_execute(&insert_v3(n, days_ago))
            .await
            .expect("a row of the release before");
    }

    sitewatch_db::schema::migrate(&connector)
        .await
        .expect("the upgrade");
    assert_eq!(
        one(&client, "SELECT count(*) FROM metrics").await,
        4,
        "every row kept"
    );
    let names = partitions(&client).await;
    assert!(
        names.contains(&"metrics_before_partitioning".to_owned()),
        "the old rows are a partition: {names:?}"
    );
    assert_eq!(
        one(&client, "SELECT count(*) FROM metrics_before_partitioning").await,
        3,
        "up to today; the row a year ahead is in its own day's partition"
    );
    // The same key again is skipped; a row of tomorrow goes to a partition of its own.
    let again = client
        .execute(
            "INSERT INTO metrics SELECT * FROM metrics ON CONFLICT (probe_id, started_at) DO NOTHING",
            &[],
        )
        .await
        .expect("insert again");
    assert_eq!(again, 0);
    client
        .batch_execute(&insert_v3(5, -1))
        .await
        .expect("a row of tomorrow");
    assert_eq!(
        one(
            &client,
            "SELECT count(*) FROM metrics WHERE tableoid <> 'metrics_before_partitioning'::regclass"
        )
        .await,
        2
    );
    assert_eq!(
        one(
            &client,
            "SELECT probes FROM site_status WHERE url = 'https://kept.example/'"
        )
        .await,
        5,
        "the view reads every partition, not only the rows kept from before"
    );
}

#[tokio::test]
async fn a_new_installation_has_today_and_the_days_ahead_and_makes_any_day_once() {
    let db = Postgres::start_temp().expect("postgres");
    let client = migrated(&db).await;
    let made = partitions(&client).await;
    assert_eq!(made.len(), 4, "today and 3 days ahead: {made:?}");
    assert!(
        !made.contains(&"metrics_before_partitioning".to_owned()),
        "no rows to keep, no partition for them: {made:?}"
    );
    let today: String = client
        .query_one(
            "SELECT 'metrics_p' || to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDD')",
            &[],
        )
        .await
        .expect("today")
        .get(0);
    assert!(made.contains(&today), "{made:?}");

    for _ in 0..2 {
        client
            .batch_execute("SELECT metrics_partition_for('1999-12-31 23:30:00-02')")
            .await
            .expect("a day long gone");
    }
    let made = partitions(&client).await;
    assert!(
        made.contains(&"metrics_p20000101".to_owned()),
        "the UTC day: {made:?}"
    );
    assert_eq!(made.len(), 5, "made once: {made:?}");

    // A table of the name that is not a partition (detached by an operator, say).
    client
        .batch_execute("CREATE TABLE metrics_p20300101 (x int)")
        .await
        .expect("a table in the way");
    let err = client
        .batch_execute("SELECT metrics_partition_for('2030-01-01 12:00:00+00')")
        .await
        .expect_err("refused");
    let said = sitewatch_db::describe_error(&err);
    assert!(
        said.contains("metrics_p20300101 exists but is not a partition of metrics"),
        "{said}"
    );
}

#[tokio::test]
async fn partitions_of_any_width_start_at_its_multiples_and_hold_the_edges() {
    let db = Postgres::start_temp().expect("postgres");
    let client = migrated(&db).await;
    // (time asked for, width, the partition's bounds), in this order: each
    // partition made stays for those after it.
    let asked = [
        // A microsecond before the edge, and the edge itself, as floating
        // point cannot tell them apart.
        (
            "2031-03-04 23:59:59.999999+00",
            "1 day",
            "2031-03-04 00:00:00+00",
            "2031-03-05 00:00:00+00",
        ),
        (
            "2031-03-05 00:00:00+00",
            "1 day",
            "2031-03-05 00:00:00+00",
            "2031-03-06 00:00:00+00",
        ),
        // An hour inside a day that has its partition: the day's.
        (
            "2031-03-05 13:00:00+00",
            "1 hour",
            "2031-03-05 00:00:00+00",
            "2031-03-06 00:00:00+00",
        ),
        (
            "2031-03-06 13:59:59.999999+00",
            "1 hour",
            "2031-03-06 13:00:00+00",
            "2031-03-06 14:00:00+00",
        ),
        // Weeks start on 1970-01-01's weekday (a Thursday), cut short by
        // the day and the hour made above.
        (
            "2031-03-03 08:00:00+00",
            "7 days",
            "2031-02-27 00:00:00+00",
            "2031-03-04 00:00:00+00",
        ),
        (
            "2031-03-06 12:00:00+00",
            "7 days",
            "2031-03-06 00:00:00+00",
            "2031-03-06 13:00:00+00",
        ),
        (
            "2031-03-06 15:00:00+00",
            "7 days",
            "2031-03-06 14:00:00+00",
            "2031-03-13 00:00:00+00",
        ),
        // Before 1970 too.
        (
            "1969-12-31 23:59:59+00",
            "6 hours",
            "1969-12-31 18:00:00+00",
            "1970-01-01 00:00:00+00",
        ),
    ];
    for (at, width, lower, upper) in asked {
        let row = client
            .query_one(
                "SELECT lower::text, upper::text FROM metrics_partition_holding($1::text::timestamptz, $2::text::interval)",
                &[&at, &width],
            )
            .await
            .unwrap_or_else(|e| panic!("{at} by {width}: {}", sitewatch_db::describe_error(&e)));
        assert_eq!(
            (row.get::<_, String>(0), row.get::<_, String>(1)),
            (lower.to_owned(), upper.to_owned()),
            "{at} by {width}"
        );
    }
    let names = partitions(&client).await;
    for name in [
        "metrics_p20310227",
        "metrics_p20310306",
        "metrics_p20310306_130000",
        "metrics_p20310306_140000",
        "metrics_p19691231_180000",
    ] {
        assert!(names.contains(&name.to_owned()), "{name}: {names:?}");
    }
    for (at, width) in [("2031-01-01", "30 seconds"), ("infinity", "1 day")] {
        let err = client
            .query_one(
                "SELECT * FROM metrics_partition_holding($1::text::timestamptz, $2::text::interval)",
                &[&at, &width],
            )
            .await
            .expect_err("refused");
        assert!(
            sitewatch_db::describe_error(&err).contains("metrics_partition_holding"),
            "{err}"
        );
    }
}
