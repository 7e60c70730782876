//! Mutual TLS on the front, as a managed Kafka (Aiven-style) requires it:
//! librdkafka clients with a certificate signed by the client CA get in,
//! clients without one do not.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use sitewatch_broker::{Broker, BrokerOptions, FrontOptions, TlsFiles};
use support::{config, metadata_brokers, round_trip};
use tokio::time::Instant;

const TOPIC: &str = "metrics";

/// PEM files of a CA, a server certificate for 127.0.0.1/localhost and a client
/// certificate, both signed by the CA.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn pki(dir: &Path) -> Pki {
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "broker test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("CA");
    let issuer = Issuer::new(ca, ca_key);

    let leaf = |names: Vec<String>, common: &str, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(names).expect("params");
        params.distinguished_name.push(DnType::CommonName, common);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &issuer).expect("leaf");
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(
        vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
        "localhost",
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert, client_key) =
        leaf(Vec::new(), "monitor", ExtendedKeyUsagePurpose::ClientAuth);

    let write = |name: &str, pem: &str| {
        let path = dir.join(name);
        std::fs::write(&path, pem).expect("write PEM");
        path
    };
    Pki {
        ca: write("ca.pem", &ca_cert.pem()),
        server_cert: write("server.pem", &server_cert),
        server_key: write("server.key", &server_key),
        client_cert: write("client.pem", &client_cert),
        client_key: write("client.key", &client_key),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_a_client_certificate_and_refuses_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki(dir.path());
    let broker = Broker::start(&BrokerOptions {
        brokers: 1,
        topics: vec![TOPIC.to_owned()],
        partitions: 2,
        front: Some(FrontOptions {
            listen: "127.0.0.1:0".parse().expect("addr"),
            advertise: None,
            tls: Some(TlsFiles {
                cert: pki.server_cert.clone(),
                key: pki.server_key.clone(),
                client_ca: Some(pki.ca.clone()),
            }),
        }),
    })
    .await
    .expect("broker");
    let bootstrap = broker.bootstrap();
    assert_eq!(bootstrap, broker.front_addrs()[0].to_string());

    let ca = pki.ca.to_str().expect("UTF-8 path");
    let cert = pki.client_cert.to_str().expect("UTF-8 path");
    let key = pki.client_key.to_str().expect("UTF-8 path");
    let with_cert = config(
        &bootstrap,
        &[
            ("security.protocol", "ssl"),
            ("ssl.ca.location", ca),
            ("ssl.certificate.location", cert),
            ("ssl.key.location", key),
        ],
    );
    let started = Instant::now();
    round_trip(&with_cert, TOPIC, "tls-test", 3).await;
    eprintln!("mutual TLS round trip: {:?}", started.elapsed());

    let without_cert = config(
        &bootstrap,
        &[("security.protocol", "ssl"), ("ssl.ca.location", ca)],
    );
    let started = Instant::now();
    let refused = metadata_brokers(&without_cert, Duration::from_secs(3)).await;
    assert!(refused.is_err(), "no client certificate, yet {refused:?}");
    eprintln!(
        "refusal without a certificate: {:?} ({refused:?})",
        started.elapsed()
    );

    // And plaintext on the TLS port gets nowhere either.
    let plaintext = config(&bootstrap, &[]);
    let refused = metadata_brokers(&plaintext, Duration::from_secs(3)).await;
    assert!(refused.is_err(), "plaintext, yet {refused:?}");
}

#[tokio::test]
async fn unreadable_tls_files_fail_before_the_cluster_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.pem");
    let err = Broker::start(&BrokerOptions {
        brokers: 1,
        topics: Vec::new(),
        partitions: 1,
        front: Some(FrontOptions {
            listen: "127.0.0.1:0".parse().expect("addr"),
            advertise: None,
            tls: Some(TlsFiles {
                cert: missing.clone(),
                key: missing,
                client_ca: None,
            }),
        }),
    })
    .await
    .expect_err("missing files");
    assert!(err.to_string().contains("missing.pem"), "{err}");
}
