//! Starts real PostgreSQL servers from the system binaries.

use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use sitewatch_pgtest::{PgError, PgOptions, Postgres, TlsFiles};

#[test]
fn data_survives_stop_and_start_again() {
    let started = Instant::now();
    let pg = Postgres::start_temp().expect("start a temp PostgreSQL");
    eprintln!("start_temp took {:?}", started.elapsed());

    let url = pg.create_database("survival").expect("create database");
    assert_eq!(
        url,
        format!(
            "postgres://postgres:sitewatch-test-password@127.0.0.1:{}/survival",
            pg.port()
        )
    );
    pg.psql(
        "survival",
        "CREATE TABLE probe (id int PRIMARY KEY, url text NOT NULL);
         INSERT INTO probe VALUES (1, 'https://example.com/');",
    )
    .expect("create and fill a table");

    let port = pg.port();
    pg.stop().expect("stop");
    assert!(!pg.is_running());
    assert!(
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err(),
        "port {port} still accepts connections after stop"
    );
    let down = pg.psql("survival", "SELECT 1");
    assert!(matches!(down, Err(PgError::Sql { .. })), "{down:?}");

    pg.start_again().expect("start again");
    assert!(pg.is_running());
    assert_eq!(pg.port(), port);
    let row = pg
        .psql("survival", "SELECT id, url FROM probe")
        .unwrap_or_else(|e| panic!("{e}\n{}", pg.log_tail(20)));
    assert_eq!(row, "1|https://example.com/");
}

#[test]
fn two_servers_run_at_once() {
    let a = Postgres::start_temp().expect("start server a");
    let b = Postgres::start_temp().expect("start server b");
    assert_ne!(a.port(), b.port());
    assert_ne!(a.data_dir(), b.data_dir());

    a.psql("postgres", "CREATE TABLE only_in_a (x int)")
        .expect("create table in a");
    let in_a = "SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'";
    assert_eq!(a.psql("postgres", in_a).expect("query a"), "1");
    assert_eq!(b.psql("postgres", in_a).expect("query b"), "0");
    assert_eq!(
        a.psql("postgres", "SHOW max_connections").expect("show"),
        "200"
    );
    assert_eq!(a.psql("postgres", "SHOW fsync").expect("show"), "off");
}

#[test]
fn drop_stops_the_server_and_removes_its_files() {
    let pg = Postgres::start_temp().expect("start");
    let port = pg.port();
    let data_dir = pg.data_dir().to_owned();
    let scratch = data_dir.parent().expect("data dir has a parent").to_owned();
    drop(pg);

    assert!(!scratch.exists(), "{} left behind", scratch.display());
    assert!(
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err(),
        "a server still listens on {port} after drop"
    );
}

#[test]
fn kept_data_dir_is_reused_with_the_new_password() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = PgOptions {
        data_dir: Some(dir.path().to_owned()),
        password: "first-password".to_owned(),
        ..PgOptions::default()
    };
    let pg = Postgres::start(first).expect("first start");
    pg.psql(
        "postgres",
        "CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)",
    )
    .expect("fill");
    drop(pg);
    assert!(dir.path().join("PG_VERSION").exists(), "data dir deleted");

    let second = PgOptions {
        data_dir: Some(dir.path().to_owned()),
        password: "second p@ss:word".to_owned(),
        ..PgOptions::default()
    };
    let pg = Postgres::start(second).expect("second start");
    assert_eq!(
        pg.psql("postgres", "SELECT x FROM kept").expect("query"),
        "7"
    );
    assert!(pg.url().contains("second%20p%40ss%3Aword@127.0.0.1:"));
    assert!(pg.log_tail(100).contains("database system is ready"));
}

#[test]
fn tls_is_served_when_asked() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("generate a certificate");
    let options = PgOptions {
        tls: Some(TlsFiles {
            cert_pem: cert.cert.pem(),
            key_pem: cert.signing_key.serialize_pem(),
        }),
        ..PgOptions::default()
    };
    let pg = Postgres::start(options).expect("start with TLS");
    assert_eq!(pg.psql("postgres", "SHOW ssl").expect("show ssl"), "on");
    let encrypted = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    // psql's default sslmode=prefer picks TLS when the server offers it.
    assert_eq!(pg.psql("postgres", encrypted).expect("query"), "t");
}

#[test]
fn a_failed_start_reports_the_server_log() {
    let options = PgOptions {
        tls: Some(TlsFiles {
            cert_pem: "not a certificate".to_owned(),
            key_pem: "not a key".to_owned(),
        }),
        ..PgOptions::default()
    };
    let started = Instant::now();
    let err = Postgres::start(options).expect_err("a bad certificate must fail the start");
    assert!(started.elapsed() < Duration::from_secs(30));
    let message = err.to_string();
    assert!(matches!(err, PgError::Start { .. }), "{message}");
    assert!(message.contains("server.crt"), "{message}");
}

#[test]
fn invalid_database_names_are_refused() {
    let pg = Postgres::start_temp().expect("start");
    let err = pg.create_database("Bad-Name").expect_err("refused");
    assert!(matches!(err, PgError::InvalidName { .. }), "{err}");
    pg.create_database("gone").expect("create");
    pg.drop_database("gone").expect("drop");
    pg.drop_database("gone").expect("drop is idempotent");
}

const ORPHAN_ENV: &str = "SITEWATCH_PGTEST_ORPHAN";

/// Not a test on its own: the body of the process that
/// `a_killed_owner_leaves_no_server_behind` starts and kills.
#[test]
fn orphan_helper() {
    if std::env::var_os(ORPHAN_ENV).is_none() {
        return;
    }
    let pg = Postgres::start_temp().expect("start");
    println!("READY {} {}", pg.port(), pg.data_dir().display());
    // Long enough to be killed; short if the killer never comes.
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_killed_owner_leaves_no_server_behind() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    let mut owner = Command::new(std::env::current_exe().expect("test binary path"))
        .args([
            "orphan_helper",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ORPHAN_ENV, "1")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the owner process");
    let stdout = owner.stdout.take().expect("piped stdout");
    let ready = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        // libtest prints the test's name on the same line first.
        .find_map(|l| l.split_once("READY ").map(|(_, rest)| rest.to_owned()))
        .expect("the owner reports its server");
    let mut fields = ready.split(' ');
    let port: u16 = fields.next().and_then(|p| p.parse().ok()).expect("port");
    let data_dir = std::path::PathBuf::from(fields.next().expect("data dir"));
    assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok());

    owner.kill().expect("SIGKILL the owner");
    owner.wait().expect("reap the owner");

    let deadline = Instant::now() + Duration::from_secs(30);
    while (TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() || data_dir.exists())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err(),
        "the server on {port} outlived its killed owner"
    );
    assert!(
        !data_dir.exists(),
        "{} outlived its killed owner",
        data_dir.display()
    );
}

#[test]
fn a_kept_data_dir_in_use_is_left_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = PgOptions {
        data_dir: Some(dir.path().to_owned()),
        ..PgOptions::default()
    };
    let first = Postgres::start(options.clone()).expect("first start");
    let err = Postgres::start(options).expect_err("the data dir is in use");
    assert!(matches!(err, PgError::AlreadyRunning { .. }), "{err}");
    assert!(
        first.is_running(),
        "the failed second start stopped the first server"
    );
    assert_eq!(first.psql("postgres", "select 1").expect("query"), "1");
}
