//! Sites read from the `websites` table: enabled rows with an interval are
//! probed, the table is re-read periodically, and metrics carry the URL as stored.

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sitewatch_db::PgSettings;
use sitewatch_metric::Metric;
use sitewatch_pgtest::wait::lines;
use sitewatch_service::SecretString;
use sitewatch_sitefarm::{FarmOptions, SiteFarm};

/// Collects the URLs of metric lines that arrive within `within`, stopping early when `stop` says so.
fn urls_until(
    rx: &mpsc::Receiver<String>,
    within: Duration,
    stop: impl Fn(&str) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(line) = rx.recv_timeout(left) else {
            break;
        };
        let url = Metric::from_json(line.as_bytes())
            .map(|m| m.url)
            .expect("metric line");
        let done = stop(&url);
        seen.push(url);
        if done {
            break;
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn enabled_rows_are_probed_and_the_table_is_re_read() {
    let farm = SiteFarm::start(FarmOptions::default()).await.expect("farm");
    let db = sitewatch_pgtest::Postgres::start_temp().expect("postgres");
    let url = format!("{}?sslmode=disable", db.url());
    let settings = PgSettings {
        url: Some(SecretString::from(url.clone())),
        ..PgSettings::default()
    };
    sitewatch_db::schema::migrate(&settings.connector().expect("connector"))
        .await
        .expect("schema");
    let (a, seen_only, off) = (
        farm.url("/site/a"),
        farm.url("/site/x"),
        farm.url("/site/off"),
    );
    // As an operator might type it: upper-case host. Metrics must carry it as stored.
    let b = format!("http://LOCALHOST:{}/site/b", farm.http_addr().port());
    db.psql(
        "postgres",
        &format!(
            "INSERT INTO websites (url, interval_seconds) VALUES ('{a}', 0.2);
             INSERT INTO websites (url) VALUES ('{seen_only}');
             INSERT INTO websites (url, interval_seconds, enabled) VALUES ('{off}', 0.2, false);"
        ),
    )
    .expect("insert sites");

    let mut child = Command::new(env!("CARGO_BIN_EXE_monitor"))
        .args([
            "--targets",
            &url,
            "--targets-refresh",
            "500ms",
            "--output",
            "stdout",
        ])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("monitor starts");
    let rx = lines(child.stdout.take().expect("stdout"));

    let first = urls_until(&rx, Duration::from_secs(3), |_| false);
    assert!(first.contains(&a), "the enabled site is probed: {first:?}");
    assert!(
        first.iter().all(|u| *u == a),
        "no interval or disabled: not probed: {first:?}"
    );

    db.psql(
        "postgres",
        &format!("INSERT INTO websites (url, interval_seconds) VALUES ('{b}', 0.2)"),
    )
    .expect("add b");
    let added = urls_until(&rx, Duration::from_secs(5), |u| u == b);
    assert_eq!(
        added.last(),
        Some(&b),
        "a row added is probed within a reload period, under its stored URL: {added:?}"
    );

    db.psql(
        "postgres",
        &format!("UPDATE websites SET enabled = false WHERE url = '{a}'"),
    )
    .expect("disable a");
    // One reload period (and a probe already running) later, a is gone.
    let _ = urls_until(&rx, Duration::from_millis(1500), |_| false);
    let after = urls_until(&rx, Duration::from_secs(1), |_| false);
    assert!(
        !after.is_empty() && after.iter().all(|u| *u == b),
        "a disabled row stops being probed: {after:?}"
    );

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rows_checks_column_applies_and_a_bad_one_is_named_by_its_id() {
    let farm = SiteFarm::start(FarmOptions::default()).await.expect("farm");
    let db = sitewatch_pgtest::Postgres::start_temp().expect("postgres");
    let url = format!("{}?sslmode=disable", db.url());
    let settings = PgSettings {
        url: Some(SecretString::from(url.clone())),
        ..PgSettings::default()
    };
    sitewatch_db::schema::migrate(&settings.connector().expect("connector"))
        .await
        .expect("schema");
    let (gone, ok) = (farm.url("/status/404"), farm.url("/ok"));
    db.psql(
        "postgres",
        &format!(
            r#"INSERT INTO websites (url, interval_seconds, checks) VALUES
                 ('{gone}', 30, '{{"expect_status": "404", "failure_threshold": 7}}'),
                 ('{ok}', 30, '{{"reject_regex": "Welcome", "headers": {{"X-Token": "${{env:SITEWATCH_TEST_TABLE_TOKEN}}"}}}}');"#
        ),
    )
    .expect("insert sites");
    let monitor = |args: &[&str], token: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_monitor"));
        let _ = cmd
            .args(["--targets", &url])
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("SITEWATCH_TEST_TABLE_TOKEN");
        if let Some(token) = token {
            let _ = cmd.env("SITEWATCH_TEST_TABLE_TOKEN", token);
        }
        cmd.output().expect("monitor runs")
    };

    let out = monitor(&["--output", "stdout", "--once"], Some("table-secret"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("table-secret"), "{stdout}");
    let metrics: Vec<Metric> = stdout
        .lines()
        .map(|l| Metric::from_json(l.as_bytes()).expect("metric line"))
        .collect();
    let of = |u: &str| metrics.iter().find(|m| m.url == u).expect("probed");
    assert!(
        of(&gone).verdict.up,
        "404 is what this row expects: {:?}",
        of(&gone)
    );
    assert_eq!(of(&gone).verdict.failure_threshold, 7);
    let rejected = of(&ok).verdict.first_failed().expect("down");
    assert_eq!(rejected.condition, sitewatch_metric::Condition::RejectRegex);

    // Without the variable, the row is refused with its id, and so is the list.
    let out = monitor(&["--check"], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("websites:2: header x-token: environment variable SITEWATCH_TEST_TABLE_TOKEN is not set"),
        "{stderr}"
    );
    db.psql(
        "postgres",
        &format!(r#"UPDATE websites SET checks = '{{"methd": "GET"}}' WHERE url = '{gone}'"#),
    )
    .expect("a typo");
    let out = monitor(&["--check"], Some("table-secret"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("websites:1: checks: unknown field `methd`, expected one of `method`"),
        "{stderr}"
    );
    assert!(!stderr.contains("table-secret"), "{stderr}");
}
