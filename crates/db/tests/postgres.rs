//! PostgreSQL as both services reach it: `require` encrypts, `verify-full`
//! also checks the certificate against a CA file, a wrong CA is a clear
//! error; and two processes migrating an empty database at once both succeed.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use sitewatch_db::{PgSettings, SslMode};
use sitewatch_pgtest::{PgOptions, Postgres, TlsFiles};
use sitewatch_service::SecretString;

/// A CA and a server certificate for localhost signed by it (PEM: ca, cert, key).
fn certificates() -> (String, String, String) {
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, "test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("CA");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    let cert = leaf.signed_by(&key, &issuer).expect("leaf");
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

fn settings(db: &Postgres, mode: SslMode, ca_file: Option<std::path::PathBuf>) -> PgSettings {
    PgSettings {
        host: "localhost".into(),
        port: db.port(),
        user: db.user().into(),
        password: Some(SecretString::from(db.password().to_owned())),
        database: "postgres".into(),
        sslmode: mode,
        ca_file,
        ..PgSettings::default()
    }
}

async fn encrypted(settings: &PgSettings) -> Result<bool, String> {
    let client = settings
        .connector()
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)))?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

#[tokio::test]
async fn require_and_verify_full_encrypt_and_a_wrong_ca_is_refused() {
    let (ca, cert, key) = certificates();
    let db = Postgres::start(PgOptions {
        tls: Some(TlsFiles {
            cert_pem: cert,
            key_pem: key,
        }),
        ..PgOptions::default()
    })
    .expect("PostgreSQL with TLS");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca).expect("write CA");
    let (other_ca, _, _) = certificates();
    let wrong_ca = dir.path().join("other-ca.pem");
    std::fs::write(&wrong_ca, other_ca).expect("write CA");

    assert_eq!(
        encrypted(&settings(&db, SslMode::Require, None)).await,
        Ok(true),
        "require encrypts"
    );
    let full = settings(&db, SslMode::VerifyFull, Some(ca_file.clone()));
    assert_eq!(
        encrypted(&full).await,
        Ok(true),
        "verify-full with the right CA"
    );
    sitewatch_db::schema::migrate(&full.connector().expect("connector"))
        .await
        .expect("migrations over TLS");
    assert_eq!(
        encrypted(&settings(&db, SslMode::Disable, None)).await,
        Ok(false),
        "disable is plain"
    );

    let err = encrypted(&settings(&db, SslMode::Require, Some(wrong_ca.clone())))
        .await
        .expect_err("require with a CA file checks the chain, as libpq does");
    assert!(
        err.to_lowercase().contains("certificate"),
        "the error says why: {err}"
    );
    assert_eq!(
        encrypted(&settings(&db, SslMode::Require, Some(ca_file.clone()))).await,
        Ok(true),
        "require with the right CA file"
    );

    let err = encrypted(&settings(&db, SslMode::VerifyFull, Some(wrong_ca)))
        .await
        .expect_err("an unknown CA is refused");
    assert!(
        err.to_lowercase().contains("certificate"),
        "the error says why: {err}"
    );

    let url = format!(
        "postgres://postgres:{}@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        db.password(),
        db.port(),
        ca_file.display()
    );
    let from_url = PgSettings {
        url: Some(SecretString::from(url)),
        ..PgSettings::default()
    };
    assert_eq!(
        encrypted(&from_url).await,
        Ok(true),
        "sslmode and sslrootcert in the URL"
    );
    assert!(!from_url.describe().contains(db.password()));
}

#[tokio::test]
async fn two_consumers_migrating_an_empty_database_at_once_both_succeed() {
    let db = Postgres::start_temp().expect("postgres");
    let s = PgSettings {
        url: Some(SecretString::from(db.url())),
        sslmode: SslMode::Disable,
        ..PgSettings::default()
    };
    let (a, b) = (
        s.connector().expect("connector"),
        s.connector().expect("connector"),
    );
    let (ra, rb) = tokio::join!(
        sitewatch_db::schema::migrate(&a),
        sitewatch_db::schema::migrate(&b)
    );
    ra.expect("first migrates");
    rb.expect("second waits, then finds nothing to do");
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .expect("migrations folder")
        .count();
    assert_eq!(
        db.psql("postgres", "SELECT count(*) FROM refinery_schema_history")
            .expect("history"),
        files.to_string(),
        "each migration applied once"
    );
}

#[tokio::test]
async fn a_transaction_its_client_left_idle_ends_and_frees_its_rows() {
    let db = Postgres::start_temp().expect("postgres");
    let with = |statement_timeout: u64| PgSettings {
        url: Some(SecretString::from(db.url())),
        sslmode: SslMode::Disable,
        statement_timeout: std::time::Duration::from_secs(statement_timeout).into(),
        tcp_user_timeout: std::time::Duration::from_secs(9).into(),
        ..PgSettings::default()
    };
    let quiet = with(2).connector().expect("connector");
    let quiet = quiet.connect().await.expect("connect");
    let show = |name: &'static str| {
        let quiet = &quiet;
        async move {
            let row = quiet
                .query_one(&format!("SHOW {name}"), &[])
                .await
                .expect(name);
            row.get::<_, String>(0)
        }
    };
    // The server probes a silent client as often as the client probes it.
    assert_eq!(show("tcp_keepalives_idle").await, "3");
    assert_eq!(show("tcp_keepalives_interval").await, "3");
    assert_eq!(show("tcp_keepalives_count").await, "3");
    assert_eq!(show("tcp_user_timeout").await, "9000");
    assert_eq!(
        show("idle_in_transaction_session_timeout").await,
        "12s",
        "a statement's 2 s, and the pauses between a writer's statements"
    );

    quiet
        .batch_execute("CREATE TABLE held (k int PRIMARY KEY)")
        .await
        .expect("a table");
    quiet
        .batch_execute("BEGIN; INSERT INTO held VALUES (1)")
        .await
        .expect("a row written, its transaction left open");
    // Another writer of the same key, which would wait on it for as long
    // as the transaction stays open.
    let other = with(0).connector().expect("connector");
    let other = other.connect().await.expect("connect");
    let inserted = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        other.execute("INSERT INTO held VALUES (1) ON CONFLICT DO NOTHING", &[]),
    )
    .await
    .expect("the other writer no longer waits")
    .expect("insert");
    assert_eq!(inserted, 1, "the idle transaction was rolled back");
    quiet
        .batch_execute("COMMIT")
        .await
        .expect_err("the idle session was ended; its transaction cannot commit");
    assert!(quiet.is_closed());
}
