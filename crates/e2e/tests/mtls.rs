//! The managed-Kafka path over mutual TLS, as an operator sets it up: the
//! three files of a managed service (`ca.pem`, `service.cert`,
//! `service.key`, made here with `openssl`) in one folder named by
//! `SITEWATCH_KAFKA_CERTS_DIR`, the variable the compose override sets, and a
//! broker that requires a client certificate signed by its CA.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sitewatch_pgtest::sql::count_once_created;
use sitewatch_pgtest::wait::wait_for;
use sitewatch_pgtest::Postgres;
use sitewatch_sitefarm::{FarmOptions, SiteFarm};
use support::{consumer_args, Proc};

const TOPIC: &str = "metrics";

/// Runs `openssl` with `args` in `dir`; panics with its output on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs (Debian package openssl; scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`NAME.pem`, `NAME.key`) in `dir`.
fn ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

/// A leaf certificate `NAME.cert` with key `NAME.key`, signed by CA `by`, with OpenSSL extensions `ext`.
fn leaf(dir: &Path, name: &str, by: &str, subject: &str, ext: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), ext).expect("write extensions");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            subject,
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{by}.pem"),
            "-CAkey",
            &format!("{by}.key"),
            "-CAcreateserial",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.cert"),
        ],
    );
}

/// What the test made: the PKI files, and one certs folder per way of getting them wrong.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// The service CA, the broker's certificate for localhost, a client certificate
    /// it signed, and a second CA with a client certificate of its own.
    fn make() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        ca(d, "service-ca");
        ca(d, "other-ca");
        leaf(
            d,
            "broker",
            "service-ca",
            "/CN=localhost",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        );
        let client = "extendedKeyUsage=clientAuth\n";
        leaf(d, "client", "service-ca", "/CN=sitewatch", client);
        leaf(d, "rogue", "other-ca", "/CN=sitewatch", client);
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A `kafka_certs/`-like folder `name` holding CA `ca` (`ca.pem`) and the
    /// certificate and key of client `client` (`service.cert`, `service.key`).
    fn certs_dir(&self, name: &str, ca: &str, client: &str) -> String {
        let dir = self.path(name);
        std::fs::create_dir_all(&dir).expect("certs dir");
        let files = [
            (format!("{ca}.pem"), "ca.pem"),
            (format!("{client}.cert"), "service.cert"),
            (format!("{client}.key"), "service.key"),
        ];
        for (source, target) in files {
            let _ = std::fs::copy(self.path(&source), dir.join(target)).expect("copy PEM");
        }
        dir.to_string_lossy().into_owned()
    }

    /// Lines of base64 from every private key made, to look for in logs.
    fn key_material(&self) -> Vec<String> {
        ["client.key", "rogue.key", "broker.key"]
            .iter()
            .flat_map(|name| {
                std::fs::read_to_string(self.path(name))
                    .expect("read key")
                    .lines()
                    .filter(|l| !l.starts_with("-----"))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Panics if any line shows a private key or a line of one.
    fn assert_no_key_material(&self, who: &str, lines: &[String]) {
        let keys = self.key_material();
        for line in lines {
            assert!(
                !line.contains("PRIVATE KEY") && !keys.iter().any(|k| line.contains(k.as_str())),
                "{who} logged private key material: {line}"
            );
        }
    }
}

/// The broker with a TLS front that requires a client certificate signed by the service CA.
fn tls_broker(pki: &Pki) -> (Proc, String) {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let listen = format!("127.0.0.1:{port}");
    let advertise = format!("localhost:{port}");
    let cert = pki.path("broker.cert");
    let key = pki.path("broker.key");
    let ca = pki.path("service-ca.pem");
    let broker = Proc::start(
        "broker",
        &[
            "--topic",
            TOPIC,
            "--partitions",
            "2",
            "--listen",
            &listen,
            "--advertise",
            &advertise,
            "--tls-cert",
            &cert.to_string_lossy(),
            "--tls-key",
            &key.to_string_lossy(),
            "--tls-client-ca",
            &ca.to_string_lossy(),
        ],
        &[],
    );
    let bootstrap = broker.value("bootstrap", Duration::from_secs(20));
    (broker, bootstrap)
}

/// The environment the managed-Kafka compose override gives both services.
fn managed_env<'a>(bootstrap: &'a str, certs: &'a str) -> [(&'static str, &'a str); 2] {
    [
        ("SITEWATCH_KAFKA_BROKERS", bootstrap),
        ("SITEWATCH_KAFKA_CERTS_DIR", certs),
    ]
}

fn consumer_with(certs: &str, bootstrap: &str, db: &Postgres, extra: &[&str]) -> Proc {
    let url = db.url();
    let mut args = consumer_args(bootstrap, TOPIC, &url, "mtls");
    // The override names the brokers by environment; drop the flag so the variable counts.
    let at = args
        .iter()
        .position(|a| a == "--kafka-brokers")
        .expect("flag");
    let _ = args.drain(at..at + 2);
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::start("consumer", &refs, &managed_env(bootstrap, certs))
}

fn monitor_with(certs: &str, bootstrap: &str, list: &str, extra: &[&str]) -> Proc {
    let mut args = vec![
        "--targets",
        list,
        "--kafka-topic",
        TOPIC,
        "--log-format",
        "json",
    ];
    args.extend_from_slice(extra);
    Proc::start("monitor", &args, &managed_env(bootstrap, certs))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_and_consumer_deliver_rows_with_the_managed_kafka_files() {
    let pki = Pki::make();
    let certs = pki.certs_dir("kafka_certs", "service-ca", "client");
    let (broker, bootstrap) = tls_broker(&pki);
    let farm = SiteFarm::start(FarmOptions::default()).await.expect("farm");
    let db = Postgres::start_temp().expect("postgres");
    let list = pki.path("sites.csv");
    let sites: String = (0..5)
        .map(|i| format!("{},1\n", farm.url(&format!("/site/{i}"))))
        .collect();
    std::fs::write(&list, sites).expect("site list");

    let consumer = consumer_with(&certs, &bootstrap, &db, &[]);
    let monitor = monitor_with(&certs, &bootstrap, &list.to_string_lossy(), &["--once"]);
    let (code, _, monitor_log) = monitor.wait(Duration::from_secs(60));
    assert_eq!(
        code,
        Some(0),
        "monitor --once over mutual TLS exits 0:\n{}",
        monitor_log.join("\n")
    );
    wait_for(
        Duration::from_secs(60),
        "5 rows over mutual TLS",
        || async { count_once_created(&db, "SELECT count(*) FROM metrics").await == 5 },
    )
    .await;

    let (_, consumer_log) = consumer.stop(Duration::from_secs(30));
    for (who, log) in [("monitor", &monitor_log), ("consumer", &consumer_log)] {
        assert!(
            log.iter()
                .any(|l| l.contains("connected to Kafka") && l.contains("security=mutual TLS")),
            "{who} says it connected over mutual TLS:\n{}",
            log.join("\n")
        );
        pki.assert_no_key_material(who, log);
    }
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_a_missing_key_or_an_untrusted_client_certificate_is_named_at_start() {
    let pki = Pki::make();
    let wrong_ca = pki.certs_dir("wrong-ca", "other-ca", "client");
    let no_key = pki.certs_dir("no-key", "service-ca", "client");
    std::fs::remove_file(Path::new(&no_key).join("service.key")).expect("remove the key");
    let untrusted = pki.certs_dir("untrusted", "service-ca", "rogue");
    let (_broker, bootstrap) = tls_broker(&pki);
    let db = Postgres::start_temp().expect("postgres");
    let list = pki.path("sites.csv");
    std::fs::write(&list, "http://127.0.0.1:9/,5\n").expect("site list");
    let list = list.to_string_lossy().into_owned();

    let cases = [
        (
            &wrong_ca,
            format!("the broker's certificate is not signed by the CA in {wrong_ca}/ca.pem"),
        ),
        (
            &no_key,
            format!("kafka TLS file {no_key}/service.key (setting `kafka.ssl_key`) cannot be read"),
        ),
        (
            &untrusted,
            format!("the broker refused the client certificate {untrusted}/service.cert"),
        ),
    ];
    for (certs, expected) in &cases {
        let runs = [
            (
                "monitor",
                monitor_with(certs, &bootstrap, &list, &["--connect-timeout", "3s"]),
            ),
            (
                "consumer",
                consumer_with(certs, &bootstrap, &db, &["--connect-timeout", "3s"]),
            ),
        ];
        for (who, proc) in runs {
            let (code, _, log) = proc.wait(Duration::from_secs(60));
            assert_eq!(
                code,
                Some(1),
                "{who} with {certs} exits 1:\n{}",
                log.join("\n")
            );
            let last = log.last().cloned().unwrap_or_default();
            assert!(
                last.starts_with(&format!("{who}: error: ")) && last.contains(expected.as_str()),
                "{who} with {certs}: the last line names the failure ({expected}):\n{}",
                log.join("\n")
            );
            pki.assert_no_key_material(who, &log);
        }
    }
}
