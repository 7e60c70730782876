//! The column mapping, the `metrics` table and the metric's JSON agree: every
//! field of a metric reaches its column and comes back unchanged, by both
//! ways of writing rows.

use sitewatch_db::columns::{self, RowRef, StoredMetric};
use sitewatch_db::{PgSettings, SslMode};
use sitewatch_metric::{Condition, ErrorKind, Failed, Metric, ProbeError, Verdict};
use sitewatch_pgtest::Postgres;
use sitewatch_service::SecretString;
use uuid::Uuid;

/// The columns the database fills by itself, which the mapping leaves out.
const FILLED_BY_THE_DATABASE: &[&str] = &["stored_at", "stored_xid"];

/// A metric in which every field holds a value: the documented example with
/// an error, and a verdict that lists failed conditions.
fn every_field_set() -> Metric {
    let error = ProbeError {
        kind: ErrorKind::Body,
        message: "connection reset while reading the body".into(),
    };
    Metric {
        verdict: Verdict::of(
            vec![
                Failed::response(&error),
                Failed::new(Condition::ResponseTime, "took 2.1s, at most 1s"),
            ],
            5,
            1,
        ),
        error: Some(error),
        ..Metric::example()
    }
}

/// Paths of the JSON leaves that are null, e.g. `timings.dns_us`.
fn nulls(value: &serde_json::Value, path: &str, found: &mut Vec<String>) {
    match value {
        serde_json::Value::Null => found.push(path.to_owned()),
        serde_json::Value::Object(fields) => {
            for (name, field) in fields {
                let inner = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                nulls(field, &inner, found);
            }
        }
        _ => {}
    }
}

async fn migrated(db: &Postgres) -> tokio_postgres::Client {
    let settings = PgSettings {
        url: Some(SecretString::from(db.url())),
        sslmode: SslMode::Disable,
        ..PgSettings::default()
    };
    let connector = settings.connector().expect("connector");
    sitewatch_db::schema::migrate(&connector)
        .await
        .expect("migrations");
    connector.connect().await.expect("connect")
}

#[test]
fn the_example_sets_every_field() {
    let json: serde_json::Value =
        serde_json::from_slice(&every_field_set().to_json()).expect("json");
    let mut found = Vec::new();
    nulls(&json, "", &mut found);
    assert!(
        found.is_empty(),
        "give these fields a value in sitewatch_metric::EXAMPLE_JSON, so that the mapping test sees them: {found:?}"
    );
}

#[tokio::test]
async fn the_table_has_the_mapped_columns_with_their_types() {
    let db = Postgres::start_temp().expect("postgres");
    let client = migrated(&db).await;
    let rows = client
        .query(
            "SELECT column_name::text, udt_name::text FROM information_schema.columns \
             WHERE table_name = 'metrics' ORDER BY ordinal_position",
            &[],
        )
        .await
        .expect("columns");
    let mut table: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
        .filter(|(name, _)| !FILLED_BY_THE_DATABASE.contains(&name.as_str()))
        .collect();
    let mut mapped: Vec<(String, String)> = columns::COLUMNS
        .iter()
        .zip(columns::TYPES)
        .map(|(name, ty)| ((*name).to_owned(), ty.name().to_owned()))
        .collect();
    table.sort();
    mapped.sort();
    assert_eq!(
        table, mapped,
        "the columns of `metrics` (left) and of crates/db/src/columns.rs (right)"
    );
}

#[tokio::test]
async fn every_field_comes_back_by_copy_and_by_insert() {
    let db = Postgres::start_temp().expect("postgres");
    let mut client = migrated(&db).await;
    let copied = every_field_set();
    let inserted = Metric {
        probe_id: Uuid::now_v7(),
        ..every_field_set()
    };
    let site: i64 = client
        .query_one(
            "INSERT INTO websites (url) VALUES ($1) RETURNING id",
            &[&copied.url],
        )
        .await
        .expect("site")
        .get(0);
    let row = |metric, offset| RowRef {
        metric,
        website_id: site,
        topic: "website-metrics",
        partition: 3,
        offset,
    };

    // `metrics` holds a day only once its partition exists.
    for metric in [&copied, &inserted] {
        let _ = client
            .execute("SELECT metrics_partition_for($1)", &[&metric.started_at])
            .await
            .expect("partition");
    }
    let tx = client.transaction().await.expect("transaction");
    let sink = tx
        .copy_in(&columns::copy_into("metrics"))
        .await
        .expect("copy");
    let written = columns::copy_rows(sink, [row(&copied, 41)])
        .await
        .expect("copy rows");
    assert_eq!(written, 1);
    let rows = [row(&inserted, 42)];
    let by_column = columns::Columns::of(&rows);
    let written = tx
        .execute(columns::insert_unnest(), &by_column.params())
        .await
        .expect("insert");
    assert_eq!(written, 1);
    tx.commit().await.expect("commit");

    let read: Vec<StoredMetric> = client
        .query(
            &format!("{} ORDER BY m.kafka_offset", columns::select()),
            &[],
        )
        .await
        .expect("select")
        .iter()
        .map(|row| columns::read(row).expect("a stored metric"))
        .collect();
    let expected: Vec<StoredMetric> = [(copied, 41), (inserted, 42)]
        .into_iter()
        .map(|(metric, offset)| StoredMetric {
            metric,
            topic: "website-metrics".into(),
            partition: 3,
            offset,
        })
        .collect();
    assert_eq!(read, expected);

    // A row stored before metrics carried a verdict reads back with the rule
    // it was made under.
    let _ = client
        .execute(
            "UPDATE metrics SET up = NULL, failed = NULL, failure_threshold = NULL, success_threshold = NULL WHERE kafka_offset = 41",
            &[],
        )
        .await
        .expect("an old row");
    let old = columns::read(
        &client
            .query_one(
                &format!("{} WHERE m.kafka_offset = 41", columns::select()),
                &[],
            )
            .await
            .expect("select"),
    )
    .expect("a stored metric");
    assert_eq!(
        old.metric.verdict,
        Verdict::default_rule(&expected[0].metric)
    );
    assert_eq!(old.metric.verdict.failed[0].condition, Condition::Response);
}
