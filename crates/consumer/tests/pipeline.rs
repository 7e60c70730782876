//! The consumer run in-process against a real PostgreSQL and librdkafka's mock broker.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use common::{metrics, wait_count, wait_rows, Stack, DEAD, ROWS};
use sitewatch_pgtest::sql::{client, count};
use sitewatch_pgtest::wait::wait_for;

/// A bad message: key, payload, and words its dead letter's reason must contain.
type Poison<'a> = (Option<Vec<u8>>, Option<Vec<u8>>, &'a str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_messages_give_n_rows_with_every_field_and_the_sites() {
    let stack = Stack::start(3);
    let db = &stack.db;
    let published = stack.publish(&metrics(600, 20)).await;
    let mut settings = stack.settings("g1");
    // The metrics are dated months back: hours the rollups have passed
    // already, so they count in the status view once rolled again.
    settings.retention.every = Duration::from_secs(1).into();
    let consumer = common::Running::start(settings);
    wait_rows(db, 600, Duration::from_secs(60)).await;
    common::wait_count(
        db,
        "SELECT sum(probes)::bigint FROM site_status",
        600,
        Duration::from_secs(30),
    )
    .await;
    let summary = consumer.stop().await;
    assert_eq!(
        (summary.inserted, summary.duplicates, summary.dead_letters),
        (600, 0, 0),
        "{summary:?}"
    );

    let stored = common::stored(db).await;
    assert_eq!(stored.len(), 600);
    for (metric, partition, offset) in &published {
        let (row, origin) = &stored[&metric.probe_id];
        assert_eq!(row, metric, "every field round-trips");
        assert_eq!(
            (&*origin.topic, origin.partition, origin.offset),
            ("metrics", *partition, *offset)
        );
    }
    assert_eq!(count(db, "SELECT count(*) FROM websites").await, 20);
    assert_eq!(
        count(
            db,
            "SELECT count(*) FROM websites WHERE interval_seconds IS NULL AND enabled"
        )
        .await,
        20,
        "sites seen only in metrics have no interval, so the monitor does not probe them"
    );
    assert_eq!(
        count(db, "SELECT count(*) FROM site_status").await,
        20,
        "the status view has a line per site"
    );
    assert_eq!(
        count(db, "SELECT sum(probes)::bigint FROM site_status").await,
        600
    );
    let ends = stack.committed("g1", 3);
    let mut highest: HashMap<i32, i64> = HashMap::new();
    for (_, p, o) in &published {
        let e = highest.entry(*p).or_insert(-1);
        *e = (*e).max(*o);
    }
    for (p, committed) in ends.iter().enumerate() {
        let p = i32::try_from(p).expect("small");
        assert_eq!(
            *committed,
            highest.get(&p).map_or(-1001, |h| h + 1),
            "partition {p} committed to its end"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_messages_delivered_twice_add_no_rows() {
    let stack = Stack::start(2);
    let _ = stack.publish(&metrics(300, 10)).await;
    let first = stack.consumer("first");
    wait_rows(&stack.db, 300, Duration::from_secs(60)).await;
    let _ = first.stop().await;
    // A new group starts from the beginning: every message is delivered again.
    let again = stack.consumer("second");
    wait_for(
        Duration::from_secs(60),
        "the second group to read everything",
        || async { stack.committed("second", 2).iter().sum::<i64>() == 300 },
    )
    .await;
    let summary = again.stop().await;
    assert_eq!(summary.duplicates, 300, "{summary:?}");
    assert_eq!(summary.inserted, 0);
    assert_eq!(common::rows(&stack.db).await, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_go_to_dead_letters_and_the_good_ones_land() {
    // This test's process records its metrics, as a consumer with an HTTP endpoint does.
    let recorded = sitewatch_service::observe::recorder();
    let stack = Stack::start(1);
    let good = metrics(40, 5);
    let mut v3: serde_json::Value = serde_json::from_slice(&good[0].to_json()).expect("json");
    v3["schema_version"] = 3.into();
    let mut bad_status: serde_json::Value =
        serde_json::from_slice(&good[1].to_json()).expect("json");
    bad_status["status"] = 42.into();
    bad_status["probe_id"] = uuid::Uuid::now_v7().to_string().into();
    // Valid JSON and a valid metric, but PostgreSQL text cannot hold NUL: the batch must be split.
    let mut nul = common::metric(1000, 5);
    nul.regex_match = Some("a\0b".into());
    let poison: Vec<Poison<'_>> = vec![
        (
            Some(b"k".to_vec()),
            Some(b"not json at all".to_vec()),
            "not a JSON object",
        ),
        (
            Some(b"k".to_vec()),
            Some(v3.to_string().into_bytes()),
            "unknown schema_version 3",
        ),
        (
            Some(b"k".to_vec()),
            Some(bad_status.to_string().into_bytes()),
            "field `status` out of range",
        ),
        (
            Some(nul.key().to_vec()),
            Some(nul.to_json()),
            "refused by PostgreSQL",
        ),
        (Some(b"tombstone".to_vec()), None, "empty payload"),
    ];
    let mut messages: Vec<common::RawMessage> = good
        .iter()
        .skip(2)
        .map(|m| (Some(m.key().to_vec()), Some(m.to_json())))
        .collect();
    for (i, (key, payload, _)) in poison.iter().enumerate() {
        messages.insert(i * 7 + 3, (key.clone(), payload.clone()));
    }
    let positions = stack.publish_raw(&messages).await;
    let consumer = stack.consumer("g");
    wait_count(&stack.db, ROWS, 38, Duration::from_secs(60)).await;
    wait_count(&stack.db, DEAD, 5, Duration::from_secs(60)).await;
    let summary = consumer.stop().await;
    assert_eq!(
        (summary.inserted, summary.dead_letters),
        (38, 5),
        "{summary:?}"
    );
    let client = client(&stack.db).await;
    let rows = client
        .query(
            "SELECT kafka_offset, reason, payload, key FROM dead_letters ORDER BY kafka_offset",
            &[],
        )
        .await
        .expect("dead letters");
    for (row, (key, payload, why)) in rows.iter().zip(&poison) {
        let reason: String = row.get(1);
        assert!(reason.contains(why), "{reason:?} should say {why:?}");
        assert_eq!(row.get::<_, Option<Vec<u8>>>(2), *payload, "raw bytes kept");
        assert_eq!(row.get::<_, Option<Vec<u8>>>(3), *key);
    }
    let dead_offsets: BTreeSet<i64> = rows.iter().map(|r| r.get(0)).collect();
    let expected: BTreeSet<i64> = (0..poison.len()).map(|i| positions[i * 7 + 3].1).collect();
    assert_eq!(dead_offsets, expected);
    assert_eq!(
        stack.committed("g", 1),
        vec![i64::try_from(messages.len()).expect("small")],
        "offsets moved past the poison"
    );
    let shown = recorded.render();
    for reason in [
        "not_json",
        "unknown_version",
        "out_of_range",
        "refused",
        "empty",
    ] {
        let line = format!("sitewatch_consumer_dead_letters_total{{reason=\"{reason}\"}} 1\n");
        assert!(
            shown.contains(&line),
            "/metrics should show {line:?}:\n{shown}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_mid_stream_loses_nothing_and_recovers_without_restart() {
    let stack = Stack::start(2);
    let all = metrics(1200, 30);
    let db = &stack.db;
    let consumer = stack.consumer("g");
    let _ = stack.publish(&all[..400]).await;
    wait_rows(db, 400, Duration::from_secs(60)).await;
    db.stop().expect("stop PostgreSQL");
    // Published while the database is away: the consumer holds and retries.
    let _ = stack.publish(&all[400..]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    db.start_again().expect("start PostgreSQL again");
    wait_rows(db, 1200, Duration::from_secs(90)).await;
    let summary = consumer.stop().await;
    assert!(
        summary.retries > 0,
        "writes failed and were retried while the database was down: {summary:?}"
    );
    assert_eq!(
        count(db, "SELECT count(DISTINCT probe_id) FROM metrics").await,
        1200
    );
    assert_eq!(
        common::dead(db).await,
        0,
        "an outage is not the data's fault"
    );
    let _ = common::assert_all_stored(db, &all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumers_share_partitions_and_a_rebalance_loses_and_doubles_nothing() {
    let recorded = sitewatch_service::observe::recorder();
    let stack = Stack::start(4);
    let a = stack.consumer("shared");
    let b = stack.consumer("shared");
    let all = metrics(3000, 50);
    let _ = stack.publish(&all[..1000]).await;
    wait_rows(&stack.db, 1000, Duration::from_secs(60)).await;
    // A third member joins while messages keep coming: the group rebalances.
    // The stream lasts several rebalances' time (about 3 s each on the mock),
    // so the third member gets messages after it has partitions.
    let c = stack.consumer("shared");
    for chunk in all[1000..].chunks(50) {
        let _ = stack.publish(chunk).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_rows(&stack.db, 3000, Duration::from_secs(90)).await;
    let (sa, sb, sc) = (a.stop().await, b.stop().await, c.stop().await);
    assert!(
        sa.read > 0 && sb.read > 0,
        "both first members took part: {sa:?} {sb:?}"
    );
    assert!(sc.read > 0, "the third member got partitions: {sc:?}");
    let inserted = sa.inserted + sb.inserted + sc.inserted;
    assert_eq!(
        inserted, 3000,
        "each message inserted once across members: {sa:?} {sb:?} {sc:?}"
    );
    let stored = common::assert_all_stored(&stack.db, &all).await;
    assert_eq!(stored.len(), 3000);
    // Every offset of every partition is a row: nothing skipped by the rebalance.
    let mut per_partition: HashMap<i32, Vec<i64>> = HashMap::new();
    for (_, origin) in stored.values() {
        per_partition
            .entry(origin.partition)
            .or_default()
            .push(origin.offset);
    }
    for (p, mut offsets) in per_partition {
        offsets.sort_unstable();
        let expected: Vec<i64> = (0..i64::try_from(offsets.len()).expect("small")).collect();
        assert_eq!(offsets, expected, "partition {p} has every offset once");
    }
    // The three members share this process's metrics: each was assigned
    // partitions, and the third one's arrival took some from the others.
    let shown = recorded.render();
    let rebalances = |kind: &str| {
        let prefix = format!("sitewatch_consumer_rebalances_total{{kind=\"{kind}\"}} ");
        shown
            .lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .and_then(|value| value.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(
        rebalances("assign") >= 3 && rebalances("revoke") >= 1,
        "rebalances shown on /metrics:\n{shown}"
    );
}
