//! The consumer run in-process against a real PostgreSQL and librdkafka's mock broker.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use sitewatch_consumer::{run, Summary};
use sitewatch_metric::Metric;
use sitewatch_pgtest::sql::{client, count, count_once_created};
use sitewatch_pgtest::wait::wait_for;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Running {
    stop: CancellationToken,
    task: JoinHandle<Result<Summary, sitewatch_consumer::ConsumerError>>,
}

impl Running {
    fn start(settings: sitewatch_consumer::settings::Settings) -> Running {
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(settings, stop.clone()));
        Running { stop, task }
    }

    async fn stop(self) -> Summary {
        self.stop.cancel();
        self.task
            .await
            .expect("consumer task")
            .expect("consumer ran")
    }
}

/// A bad message: key, payload, and words its dead letter's reason must contain.
type Poison<'a> = (Option<Vec<u8>>, Option<Vec<u8>>, &'a str);

fn metrics(n: u64, sites: u64) -> Vec<Metric> {
    (0..n).map(|i| common::metric(i, sites)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_messages_give_n_rows_with_every_field_and_the_sites() {
    let db = common::postgres();
    let kafka = common::kafka("metrics", 3);
    let bootstrap = kafka.bootstrap_servers();
    let published = common::publish(&bootstrap, "metrics", &metrics(600, 20)).await;
    let consumer = Running::start(common::settings(&bootstrap, "metrics", &db, "g1"));
    wait_for(Duration::from_secs(60), "600 rows", || async {
        count_once_created(&db, "SELECT count(*) FROM metrics").await == 600
    })
    .await;
    let summary = consumer.stop().await;
    assert_eq!(
        (summary.inserted, summary.duplicates, summary.dead_letters),
        (600, 0, 0),
        "{summary:?}"
    );

    let stored = common::stored(&db).await;
    assert_eq!(stored.len(), 600);
    for (metric, partition, offset) in &published {
        let (row, origin) = &stored[&metric.probe_id];
        assert_eq!(row, metric, "every field round-trips");
        assert_eq!(
            (&*origin.topic, origin.partition, origin.offset),
            ("metrics", *partition, *offset)
        );
    }
    assert_eq!(count(&db, "SELECT count(*) FROM websites").await, 20);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM websites WHERE interval_seconds IS NULL AND enabled"
        )
        .await,
        20,
        "sites seen only in metrics have no interval, so the monitor does not probe them"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM site_status").await,
        20,
        "the status view has a line per site"
    );
    assert_eq!(
        count(&db, "SELECT sum(probes)::bigint FROM site_status").await,
        600
    );
    let ends = common::committed(&bootstrap, "metrics", "g1", 3);
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
    let db = common::postgres();
    let kafka = common::kafka("metrics", 2);
    let bootstrap = kafka.bootstrap_servers();
    let _ = common::publish(&bootstrap, "metrics", &metrics(300, 10)).await;
    let first = Running::start(common::settings(&bootstrap, "metrics", &db, "first"));
    wait_for(Duration::from_secs(60), "300 rows", || async {
        count_once_created(&db, "SELECT count(*) FROM metrics").await == 300
    })
    .await;
    let _ = first.stop().await;
    // A new group starts from the beginning: every message is delivered again.
    let again = Running::start(common::settings(&bootstrap, "metrics", &db, "second"));
    wait_for(
        Duration::from_secs(60),
        "the second group to read everything",
        || async {
            common::committed(&bootstrap, "metrics", "second", 2)
                .iter()
                .sum::<i64>()
                == 300
        },
    )
    .await;
    let summary = again.stop().await;
    assert_eq!(summary.duplicates, 300, "{summary:?}");
    assert_eq!(summary.inserted, 0);
    assert_eq!(count(&db, "SELECT count(*) FROM metrics").await, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_go_to_dead_letters_and_the_good_ones_land() {
    let db = common::postgres();
    let kafka = common::kafka("metrics", 1);
    let bootstrap = kafka.bootstrap_servers();
    let good = metrics(40, 5);
    let mut v2: serde_json::Value = serde_json::from_slice(&good[0].to_json()).expect("json");
    v2["schema_version"] = 2.into();
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
            Some(v2.to_string().into_bytes()),
            "unknown schema_version 2",
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
    let positions = common::publish_raw(&bootstrap, "metrics", &messages).await;
    let consumer = Running::start(common::settings(&bootstrap, "metrics", &db, "g"));
    wait_for(
        Duration::from_secs(60),
        "good rows and dead letters",
        || async {
            count_once_created(&db, "SELECT count(*) FROM metrics").await == 38
                && count_once_created(&db, "SELECT count(*) FROM dead_letters").await == 5
        },
    )
    .await;
    let summary = consumer.stop().await;
    assert_eq!(
        (summary.inserted, summary.dead_letters),
        (38, 5),
        "{summary:?}"
    );
    let client = client(&db).await;
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
        common::committed(&bootstrap, "metrics", "g", 1),
        vec![i64::try_from(messages.len()).expect("small")],
        "offsets moved past the poison"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_mid_stream_loses_nothing_and_recovers_without_restart() {
    let db = common::postgres();
    let kafka = common::kafka("metrics", 2);
    let bootstrap = kafka.bootstrap_servers();
    let consumer = Running::start(common::settings(&bootstrap, "metrics", &db, "g"));
    let all = metrics(1200, 30);
    let _ = common::publish(&bootstrap, "metrics", &all[..400]).await;
    wait_for(Duration::from_secs(60), "first rows", || async {
        count_once_created(&db, "SELECT count(*) FROM metrics").await == 400
    })
    .await;
    db.stop().expect("stop PostgreSQL");
    // Published while the database is away: the consumer holds and retries.
    let _ = common::publish(&bootstrap, "metrics", &all[400..]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    db.start_again().expect("start PostgreSQL again");
    wait_for(
        Duration::from_secs(90),
        "every row after the outage",
        || async { count(&db, "SELECT count(*) FROM metrics").await == 1200 },
    )
    .await;
    let summary = consumer.stop().await;
    assert!(
        summary.retries > 0,
        "writes failed and were retried while the database was down: {summary:?}"
    );
    assert_eq!(
        count(&db, "SELECT count(DISTINCT probe_id) FROM metrics").await,
        1200
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM dead_letters").await,
        0,
        "an outage is not the data's fault"
    );
    let stored = common::stored(&db).await;
    assert!(
        all.iter().all(|m| stored.contains_key(&m.probe_id)),
        "nothing lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumers_share_partitions_and_a_rebalance_loses_and_doubles_nothing() {
    let db = common::postgres();
    let kafka = common::kafka("metrics", 4);
    let bootstrap = kafka.bootstrap_servers();
    let a = Running::start(common::settings(&bootstrap, "metrics", &db, "shared"));
    let b = Running::start(common::settings(&bootstrap, "metrics", &db, "shared"));
    let all = metrics(3000, 50);
    let _ = common::publish(&bootstrap, "metrics", &all[..1000]).await;
    wait_for(Duration::from_secs(60), "first 1000 rows", || async {
        count_once_created(&db, "SELECT count(*) FROM metrics").await == 1000
    })
    .await;
    // A third member joins while messages keep coming: the group rebalances.
    let c = Running::start(common::settings(&bootstrap, "metrics", &db, "shared"));
    for chunk in all[1000..].chunks(250) {
        let _ = common::publish(&bootstrap, "metrics", chunk).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_for(Duration::from_secs(90), "all 3000 rows", || async {
        count(&db, "SELECT count(*) FROM metrics").await == 3000
    })
    .await;
    let (sa, sb, sc) = (a.stop().await, b.stop().await, c.stop().await);
    assert!(
        sa.read > 0 && sb.read > 0,
        "both first members took part: {sa:?} {sb:?}"
    );
    let inserted = sa.inserted + sb.inserted + sc.inserted;
    assert_eq!(
        inserted, 3000,
        "each message inserted once across members: {sa:?} {sb:?} {sc:?}"
    );
    let stored = common::stored(&db).await;
    assert_eq!(stored.len(), 3000);
    assert!(all.iter().all(|m| stored.contains_key(&m.probe_id)));
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
}
