//! The built `monitor` binary as an operator runs it: signals, exit codes, error text.

mod common;

use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sitewatch_metric::Metric;
use sitewatch_pgtest::child::{assert_help_names, piped, signal};
use sitewatch_pgtest::wait::lines;
use sitewatch_sitefarm::{FarmOptions, SiteFarm};

const MONITOR: &str = env!("CARGO_BIN_EXE_monitor");

fn monitor(args: &[&str]) -> Command {
    let mut cmd = Command::new(MONITOR);
    let _ = piped(cmd.args(args));
    cmd
}

/// A monitor that probes the sites in `list` and prints each metric, with `extra` flags.
fn printing(list: &Path, extra: &[&str]) -> Command {
    let mut args = vec![
        "--targets",
        list.to_str().expect("utf8 path"),
        "--output",
        "stdout",
    ];
    args.extend_from_slice(extra);
    monitor(&args)
}

fn wait_exit(child: &mut Child, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("monitor did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for a line that satisfies `pred`, keeping every line seen.
fn wait_line(
    rx: &mpsc::Receiver<String>,
    seen: &mut Vec<String>,
    within: Duration,
    pred: impl Fn(&str) -> bool,
) -> bool {
    let deadline = Instant::now() + within;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                let hit = pred(&line);
                seen.push(line);
                if hit {
                    return true;
                }
            }
            Err(_) => return false,
        }
    }
    false
}

fn wait_until(within: Duration, what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write site list");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_probes_in_flight_exits_0_and_publishes_every_started_probe() {
    let farm = SiteFarm::start(FarmOptions::default()).await.expect("farm");
    let kafka = common::kafka("metrics", 2);
    let dir = tempfile::tempdir().expect("tempdir");
    let list = dir.path().join("sites.csv");
    let sites: String = (0..6)
        .map(|i| format!("{},1\n", farm.url(&format!("/slow/700?site={i}"))))
        .collect();
    write(&list, &sites);
    let bootstrap = kafka.bootstrap_servers();
    let mut child = monitor(&[
        "--targets",
        list.to_str().expect("utf8 path"),
        "--kafka-brokers",
        &bootstrap,
        "--kafka-topic",
        "metrics",
    ])
    .spawn()
    .expect("monitor starts");
    let stderr = lines(child.stderr.take().expect("stderr"));

    wait_until(Duration::from_secs(30), "several probes", || {
        farm.requests_seen() >= 8
    });
    wait_until(Duration::from_secs(10), "a probe in flight", || {
        farm.requests_in_flight() > 0
    });
    signal(&child, "TERM");
    let status = wait_exit(&mut child, Duration::from_secs(30));
    let log: Vec<String> = stderr.try_iter().collect();
    assert_eq!(
        status.code(),
        Some(0),
        "exit 0 after SIGTERM; log:\n{}",
        log.join("\n")
    );

    let started = usize::try_from(farm.requests_seen()).expect("fits");
    let reads = common::read_topic(&bootstrap, "metrics", started, Duration::from_secs(30)).await;
    assert_eq!(
        reads.len(),
        started,
        "every probe that reached a site was published, once"
    );
    common::assert_unique_v7(&reads);
    assert!(
        reads
            .iter()
            .all(|r| r.metric.status == Some(200) && r.metric.error.is_none()),
        "probes in flight at SIGTERM finished rather than being cut off"
    );
}

#[test]
fn a_bad_site_list_exits_2_and_names_every_bad_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let list = dir.path().join("sites.csv");
    write(
        &list,
        "good.example,30\nno-interval.example\nre.example,5,\"(oops\"\ngood.example,60\n",
    );
    let out = printing(&list, &[]).output().expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let name = list.display().to_string();
    for expected in [
        format!("{name}:2: interval missing"),
        format!("{name}:3: invalid regex"),
        format!("{name}:4: duplicate URL https://good.example/, first listed on line 1"),
    ] {
        assert!(err.contains(&expected), "stderr lacks {expected:?}:\n{err}");
    }
    assert!(out.stdout.is_empty(), "nothing published");
}

#[test]
fn a_bad_setting_is_named_and_help_documents_every_setting() {
    let out = monitor(&["--targets", "x.csv", "--max-in-flight", "0"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`max_in_flight`"));

    assert_help_names(
        MONITOR,
        &[
            "--targets",
            "--output",
            "--once",
            "--max-in-flight",
            "--probe-timeout",
            "--kafka-brokers",
            "--kafka-certs-dir",
            "SITEWATCH_KAFKA_SSL_KEY_PASSWORD",
            "--log-format",
        ],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn once_to_stdout_prints_one_metric_per_site_and_exits_0() {
    let farm = SiteFarm::start(FarmOptions::default()).await.expect("farm");
    let dir = tempfile::tempdir().expect("tempdir");
    let list = dir.path().join("sites.json");
    let urls = [farm.url("/ok"), farm.url("/status/404"), farm.url("/gzip")];
    let json: Vec<String> = urls
        .iter()
        .map(|u| format!("{{\"url\": \"{u}\", \"interval\": 30}}"))
        .collect();
    write(&list, &format!("[{}]", json.join(",\n")));
    let out =
        tokio::task::spawn_blocking(move || printing(&list, &["--once"]).output().expect("runs"))
            .await
            .expect("join");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metrics: Vec<Metric> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| Metric::from_json(l.as_bytes()).expect("each line is a metric"))
        .collect();
    let mut got: Vec<(String, Option<u16>)> =
        metrics.iter().map(|m| (m.url.clone(), m.status)).collect();
    got.sort();
    let mut want = vec![
        (urls[0].clone(), Some(200)),
        (urls[1].clone(), Some(404)),
        (urls[2].clone(), Some(200)),
    ];
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_list_reloads_on_file_change_and_sighup_and_a_bad_reload_keeps_it() {
    let farm = SiteFarm::start(FarmOptions::default()).await.expect("farm");
    let dir = tempfile::tempdir().expect("tempdir");
    let list = dir.path().join("sites.csv");
    let (a, b, c) = (
        farm.url("/site/a"),
        farm.url("/site/b"),
        farm.url("/site/c"),
    );
    write(&list, &format!("{a},0.2\n"));
    let mut child = printing(&list, &[]).spawn().expect("starts");
    let stdout = lines(child.stdout.take().expect("stdout"));
    let stderr = lines(child.stderr.take().expect("stderr"));
    let mut out = Vec::new();
    let mut err = Vec::new();
    let url_of = |line: &str| {
        Metric::from_json(line.as_bytes())
            .map(|m| m.url)
            .unwrap_or_default()
    };

    assert!(
        wait_line(&stdout, &mut out, Duration::from_secs(10), |l| url_of(l)
            == a),
        "first site probed"
    );
    // Change of the file: b is added.
    write(&list, &format!("{a},0.2\n{b},0.2\n"));
    assert!(
        wait_line(&stdout, &mut out, Duration::from_secs(10), |l| url_of(l)
            == b),
        "added site probed after a file change"
    );
    // A bad list is refused whole, with its errors logged, and the running list stays.
    write(&list, &format!("{a},0.2\n{c},zero\n"));
    assert!(
        wait_line(&stderr, &mut err, Duration::from_secs(10), |l| l
            .contains("reload refused")),
        "refusal logged: {err:?}"
    );
    assert!(
        err.iter().any(|l| l.contains("not a number")),
        "the bad row is logged: {err:?}"
    );
    let mut after = Vec::new();
    assert!(
        wait_line(&stdout, &mut after, Duration::from_secs(10), |l| url_of(l)
            == b),
        "b still probed after the bad reload"
    );
    // SIGHUP reloads too (the watcher is off here, so only the signal can do it).
    let _ = child.kill();
    let _ = child.wait();
    write(&list, &format!("{a},0.2\n"));
    let mut child = printing(&list, &["--no-watch"]).spawn().expect("starts");
    let stdout = lines(child.stdout.take().expect("stdout"));
    let mut out = Vec::new();
    assert!(wait_line(
        &stdout,
        &mut out,
        Duration::from_secs(10),
        |l| url_of(l) == a
    ));
    write(&list, &format!("{c},0.2\n"));
    signal(&child, "HUP");
    assert!(
        wait_line(&stdout, &mut out, Duration::from_secs(10), |l| url_of(l)
            == c),
        "SIGHUP reloaded the list"
    );
    // After the reload, a is gone: once c shows up, a does not come back.
    // A probe of a already running at the reload may still print; give it time, then watch.
    let _ = wait_line(&stdout, &mut Vec::new(), Duration::from_millis(300), |_| {
        false
    });
    let mut tail = Vec::new();
    let _ = wait_line(&stdout, &mut tail, Duration::from_secs(1), |_| false);
    assert!(
        tail.iter().all(|l| url_of(l) == c),
        "removed site no longer probed: {tail:?}"
    );
    signal(&child, "TERM");
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(20)).code(),
        Some(0)
    );
}
