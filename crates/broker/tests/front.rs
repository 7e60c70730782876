//! The plain TCP front: clients reach the broker through an address other than
//! the mock's own, and metadata sends them back through it.

mod support;

use std::time::Duration;

use sitewatch_broker::{Advertised, Broker, BrokerOptions, FrontOptions};
use support::{config, metadata_brokers, round_trip};

const TOPIC: &str = "metrics";

fn options(front: Option<FrontOptions>) -> BrokerOptions {
    BrokerOptions {
        brokers: 1,
        topics: vec![TOPIC.to_owned()],
        partitions: 2,
        front,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_the_advertised_alias_produce_and_consume_through_the_front() {
    // Listen everywhere, advertise another loopback alias (all of 127/8 reaches
    // loopback on Linux); port 0 advertises the port the front got.
    let broker = Broker::start(&options(Some(FrontOptions {
        listen: "0.0.0.0:0".parse().expect("addr"),
        advertise: Some("127.0.0.3:0".parse::<Advertised>().expect("addr")),
        tls: None,
    })))
    .await
    .expect("broker");
    let port = broker.front_addrs()[0].port();
    let bootstrap = broker.bootstrap();
    assert_eq!(bootstrap, format!("127.0.0.3:{port}"));
    let mock = broker.mock_addrs()[0];
    assert_ne!(mock.port(), port, "the front is not the mock's listener");

    let client = config(&bootstrap, &[]);
    assert_eq!(
        metadata_brokers(&client, Duration::from_secs(10)).await,
        Ok(vec![bootstrap.clone()]),
        "metadata advertises the front, not {mock}"
    );
    // A consumer group also finds its coordinator through metadata.
    round_trip(&client, TOPIC, "front-test", 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_broker_gets_its_own_front() {
    // Partitions are led by both brokers, so a front forwarding to the wrong broker
    // would fail deliveries with "not leader".
    let broker = Broker::start(&BrokerOptions {
        brokers: 2,
        partitions: 4,
        ..options(Some(FrontOptions {
            listen: "127.0.0.1:0".parse().expect("addr"),
            advertise: None,
            tls: None,
        }))
    })
    .await
    .expect("broker");
    let fronts: Vec<String> = broker
        .front_addrs()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(fronts.len(), 2);
    assert_eq!(broker.bootstrap(), fronts.join(","));
    let client = config(&fronts[0], &[]);
    let mut advertised = metadata_brokers(&client, Duration::from_secs(10))
        .await
        .expect("metadata");
    advertised.sort();
    let mut expected = fronts.clone();
    expected.sort();
    assert_eq!(advertised, expected);
    round_trip(&client, TOPIC, "two-brokers", 12).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_front_clients_use_the_mock_listener() {
    let broker = Broker::start(&options(None)).await.expect("broker");
    let mock = broker.mock_addrs()[0];
    assert!(broker.front_addrs().is_empty());
    assert_eq!(broker.bootstrap(), mock.to_string());
    assert!(mock.ip().is_loopback());
    let client = config(&broker.bootstrap(), &[]);
    assert_eq!(
        metadata_brokers(&client, Duration::from_secs(10)).await,
        Ok(vec![mock.to_string()])
    );
    round_trip(&client, TOPIC, "plain-test", 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_port_in_use_is_an_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let err = Broker::start(&options(Some(FrontOptions {
        listen: addr,
        advertise: None,
        tls: None,
    })))
    .await
    .expect_err("port in use");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}
