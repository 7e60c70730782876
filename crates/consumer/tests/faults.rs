//! The network between the consumer and PostgreSQL, or the broker,
//! misbehaving, through a fault proxy: cut without a word (blackhole),
//! connections reset or hung for good, replies lost, every packet late.
//! After each: nothing lost, nothing doubled, nothing dead-lettered, and the
//! consumer recovers by itself.

mod common;

use std::time::{Duration, Instant};

use common::{metrics, rows, wait_rows, Running, Stack, TOPIC};
use sitewatch_consumer::Summary;
use sitewatch_faults::{BrokerBehind, Fault, FaultProxy};
use sitewatch_metric::Metric;
use sitewatch_pgtest::sql::client;
use sitewatch_pgtest::wait::wait_for;
use sitewatch_pgtest::Postgres;
use sitewatch_service::SecretString;

/// A consumer whose way to PostgreSQL goes through `proxy`, with timeouts
/// short enough for a test to see them end every wait.
fn through(stack: &Stack, proxy: &FaultProxy) -> Running {
    let mut settings = stack.settings("g");
    let through = format!(":{}/", proxy.addr().port());
    let url = stack
        .db
        .url()
        .replace(&format!(":{}/", stack.db.port()), &through);
    assert!(url.contains(&through), "{url} goes through the proxy");
    settings.postgres.url = Some(SecretString::from(url));
    settings.postgres.tcp_user_timeout = Duration::from_secs(2).into();
    settings.postgres.statement_timeout = Duration::from_secs(3).into();
    settings.postgres.pool_wait_timeout = Duration::from_secs(3).into();
    settings.postgres.connect_timeout = Duration::from_secs(2).into();
    settings.write_timeout = Duration::from_secs(4).into();
    Running::start(settings)
}

/// What goes wrong between the consumer and PostgreSQL, mid-stream.
#[derive(Debug, Clone, Copy)]
enum Disruption {
    /// This fault for this long, then a healthy network again.
    For(Fault, Duration),
    /// The open connections hang for good and new ones pass (a failover).
    Strand,
}

/// Runs `disruption` in the middle of a stream of 400 metrics, then checks
/// every one is a row, once, and none a dead letter; returns how long
/// recovery took once the network was healthy again.
async fn survives(disruption: Disruption) -> (Duration, Summary) {
    let stack = Stack::start(2);
    let db = &stack.db;
    let port = std::net::SocketAddr::from(([127, 0, 0, 1], db.port()));
    let proxy = FaultProxy::start(port).await.expect("proxy");
    let consumer = through(&stack, &proxy);
    let all = metrics(400, 20);
    let _ = stack.publish(&all[..200]).await;
    wait_rows(db, 200, Duration::from_secs(60)).await;
    match disruption {
        Disruption::For(fault, lasting) => {
            proxy.set(fault);
            let _ = stack.publish(&all[200..]).await;
            // The fault's duration is the scenario, not a wait for something to happen.
            tokio::time::sleep(lasting).await;
            if matches!(fault, Fault::Blackhole | Fault::Reset) {
                assert_eq!(rows(db).await, 200, "{fault:?} held every write back");
            }
            proxy.set(Fault::None);
        }
        Disruption::Strand => {
            // The pool's idle connections hang: the next writes take them.
            proxy.strand();
            let _ = stack.publish(&all[200..]).await;
        }
    }
    let restored = Instant::now();
    wait_rows(db, 400, Duration::from_secs(90)).await;
    let recovered = restored.elapsed();
    let summary = consumer.stop().await;
    assert!(
        proxy.connections() > 0,
        "the consumer wrote through the proxy"
    );
    if matches!(
        disruption,
        Disruption::Strand | Disruption::For(Fault::Reset, _)
    ) {
        assert!(
            summary.retries > 0,
            "writes failed and were retried: {summary:?}"
        );
    }
    common::assert_stored_once(db, &all, &summary).await;
    eprintln!("{disruption:?}: recovered {recovered:?} after; {summary:?}");
    (recovered, summary)
}

/// A consumer whose every connection to the broker passes a fault proxy,
/// with the first half of 400 metrics stored.
struct BehindProxy {
    db: Postgres,
    kafka: BrokerBehind,
    bootstrap: String,
    consumer: Running,
    all: Vec<Metric>,
}

impl BehindProxy {
    async fn half_stored() -> BehindProxy {
        let db = common::postgres();
        let kafka = BrokerBehind::start(TOPIC, 2).await.expect("broker");
        let bootstrap = kafka.bootstrap();
        let consumer = Running::start(common::settings(&bootstrap, TOPIC, &db, "g"));
        let all = metrics(400, 20);
        let _ = common::publish(&bootstrap, TOPIC, &all[..200]).await;
        wait_rows(&db, 200, Duration::from_secs(60)).await;
        BehindProxy {
            db,
            kafka,
            bootstrap,
            consumer,
            all,
        }
    }
}

/// `fault` between the consumer and the broker for `lasting`, between two
/// halves of a stream; returns how long the second half took to be stored
/// once the network was healthy again.
async fn survives_the_broker(fault: Fault, lasting: Duration) -> Duration {
    let BehindProxy {
        db,
        kafka,
        bootstrap,
        consumer,
        all,
    } = BehindProxy::half_stored().await;
    kafka.proxy.set(fault);
    tokio::time::sleep(lasting).await;
    kafka.proxy.set(Fault::None);
    let restored = Instant::now();
    let _ = common::publish(&bootstrap, TOPIC, &all[200..]).await;
    wait_rows(&db, 400, Duration::from_secs(90)).await;
    let recovered = restored.elapsed();
    let summary = consumer.stop().await;
    assert!(
        kafka.proxy.connections() > 0,
        "the consumer read through the proxy"
    );
    common::assert_stored_once(&db, &all, &summary).await;
    eprintln!("broker {fault:?} for {lasting:?}: recovered {recovered:?} after; {summary:?}");
    recovered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_cut_off_longer_than_the_session_is_rejoined() {
    // Past the tests' 6 s session timeout: the group gives the member up.
    let _ = survives_the_broker(Fault::Blackhole, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_connections_reset_lose_and_double_nothing() {
    let _ = survives_the_broker(Fault::Reset, Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_cut_loses_and_doubles_nothing() {
    let _ = survives(Disruption::For(Fault::Blackhole, Duration::from_secs(8))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_hang_for_good_are_given_up() {
    let _ = survives(Disruption::Strand).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_reply_is_lost_is_not_stored_twice() {
    let lost = Fault::NoRepliesAfter(b"COMMIT");
    let (_, summary) = survives(Disruption::For(lost, Duration::from_secs(6))).await;
    assert!(
        summary.retries > 0,
        "the unacknowledged write was retried: {summary:?}"
    );
    assert!(
        summary.duplicates > 0,
        "the retry found the committed rows stored: {summary:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_connections_lose_and_double_nothing() {
    let _ = survives(Disruption::For(Fault::Reset, Duration::from_secs(3))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_network_loses_and_doubles_nothing() {
    let _ = survives(Disruption::For(
        Fault::Latency(Duration::from_millis(200)),
        Duration::from_secs(4),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_lost_with_a_write_in_flight_are_read_again_not_doubled() {
    let BehindProxy {
        db,
        kafka,
        bootstrap,
        consumer,
        all,
    } = BehindProxy::half_stored().await;

    // An operator's transaction holds the table: the next write hangs.
    let mut blocker = client(&db).await;
    let lock = common::lock_metrics(&mut blocker).await;
    let _ = common::publish(&bootstrap, TOPIC, &all[200..]).await;
    common::wait_for_a_held_write(&db).await;
    // The broker is cut off for twice the tests' 6 s session timeout: the
    // member loses its partitions while its write is still held.
    kafka.proxy.set(Fault::Blackhole);
    tokio::time::sleep(Duration::from_secs(12)).await;
    lock.rollback().await.expect("release");
    // The held write lands, but its offsets belong to a lost assignment.
    wait_rows(&db, 400, Duration::from_secs(60)).await;
    kafka.proxy.set(Fault::None);
    let settled = || {
        let bootstrap = bootstrap.clone();
        async move {
            tokio::task::spawn_blocking(move || common::committed(&bootstrap, TOPIC, "g", 2))
                .await
                .expect("committed")
                .iter()
                .sum::<i64>()
                == 400
        }
    };
    wait_for(
        Duration::from_secs(60),
        "every offset committed after rejoining",
        settled,
    )
    .await;
    let summary = consumer.stop().await;
    common::assert_stored_once(&db, &all, &summary).await;
    assert!(
        summary.duplicates > 0,
        "the rejoined member read the lost partitions again: {summary:?}"
    );
}
