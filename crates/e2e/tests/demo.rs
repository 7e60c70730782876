//! The README's run command (`scripts/demo.sh`, what `make demo` runs), started
//! and stopped as a person would: rows arrive, Ctrl-C leaves nothing behind,
//! and a second run keeps the first run's rows.

mod support;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A port with the next two free as well (the demo's sites use three).
fn three_free_ports() -> u16 {
    for _ in 0..50 {
        let base = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        if base > 65000 {
            continue;
        }
        let all_free = (0..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no three consecutive free ports");
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(needle) {
            found.push(format!("{}: {text}", entry.file_name().to_string_lossy()));
        }
    }
    found
}

async fn metric_rows(pg_port: u16) -> i64 {
    let url = format!(
        "postgres://postgres:{}@127.0.0.1:{pg_port}/sitewatch",
        sitewatch_pgtest::DEFAULT_PASSWORD
    );
    let Ok((client, connection)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await
    else {
        return 0;
    };
    drop(tokio::spawn(connection));
    client
        .query_one("SELECT count(*) FROM metrics", &[])
        .await
        .map(|r| r.get::<_, i64>(0))
        .unwrap_or(0)
}

/// The last lines of every log the demo wrote, for a failure message.
fn logs(demo_dir: &Path) -> String {
    let mut out = String::new();
    let Ok(entries) = std::fs::read_dir(demo_dir.join("logs")) else {
        return out;
    };
    let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        out.push_str(&format!("--- {}:\n{tail}\n", path.display()));
    }
    out
}

/// Runs the demo until `rows` rows are in PostgreSQL, then Ctrl-C; returns the exit code.
async fn run_demo(
    repo: &Path,
    demo_dir: &Path,
    pg_port: u16,
    farm_port: u16,
    status_port: u16,
    rows: i64,
) -> Option<i32> {
    // A shell cannot trap a signal it was started with ignored, and test
    // runners started in the background ignore SIGINT: restore it, as a terminal has it.
    let mut child = Command::new("env")
        .args(["--default-signal=INT", "bash"])
        .arg(repo.join("scripts/demo.sh"))
        .current_dir(repo)
        .env("BIN_DIR", support::bin_dir())
        .env("DEMO_DIR", demo_dir)
        .env("DEMO_PG_PORT", pg_port.to_string())
        .env("DEMO_FARM_PORT", farm_port.to_string())
        .env("DEMO_STATUS_PORT", status_port.to_string())
        .env("DEMO_REFRESH", "1")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // Kept for the failure message: the demo says there which part stopped.
        .stderr(
            std::fs::File::create(demo_dir.with_file_name("demo-stderr.log")).expect("stderr file"),
        )
        // Its own process group, as a shell gives a foreground job: Ctrl-C goes to the group.
        .process_group(0)
        .spawn()
        .expect("demo starts");
    let deadline = Instant::now() + Duration::from_secs(120);
    while metric_rows(pg_port).await < rows {
        if Instant::now() > deadline || child.try_wait().expect("try_wait").is_some() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let exit = child.try_wait().ok().flatten();
            let said = std::fs::read_to_string(demo_dir.with_file_name("demo-stderr.log"))
                .unwrap_or_default();
            panic!(
                "no {rows} rows from the demo (script exit: {exit:?}); it said:\n{said}\n{}",
                logs(demo_dir)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The status page the demo prints lists the sites that have rows.
    let listed = sitewatch_pgtest::wait::wait_for_some(
        Duration::from_secs(30),
        "the demo's status page to list its sites",
        || async {
            let (code, body) = support::http_get(status_port, "/api/sites").await?;
            let answer: serde_json::Value = serde_json::from_str(&body).ok()?;
            answer["matching"]
                .as_u64()
                .filter(|&n| code == 200 && n > 0)
        },
    )
    .await;
    assert!(listed > 0);
    let ctrl_c = Command::new("kill")
        .args(["-INT", "--", &format!("-{}", child.id())])
        .status()
        .expect("kill");
    assert!(ctrl_c.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            panic!("the demo did not stop within a minute of Ctrl-C");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shows_rows_stops_cleanly_on_ctrl_c_and_keeps_its_rows() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let demo = tempfile::tempdir().expect("tempdir");
    let demo_dir = demo.path().join("demo");
    let needle = demo_dir.to_string_lossy().into_owned();
    let pg_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let farm_port = three_free_ports();
    let status_port = support::free_port();

    let code = run_demo(&repo, &demo_dir, pg_port, farm_port, status_port, 20).await;
    assert_eq!(code, Some(0), "Ctrl-C ends the demo with exit 0");
    let left = processes_mentioning(&needle);
    assert!(left.is_empty(), "processes left behind: {left:?}");
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", status_port)).is_ok(),
        "the status page still listens after Ctrl-C"
    );

    // Run again: the earlier rows are still there and new ones join them.
    let code = run_demo(&repo, &demo_dir, pg_port, farm_port, status_port, 40).await;
    assert_eq!(code, Some(0));
    assert!(
        processes_mentioning(&needle).is_empty(),
        "processes left behind after the second run"
    );
}

#[test]
fn a_port_in_use_stops_the_demo_with_a_line_naming_it() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let demo = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port to hold");
    let port = taken.local_addr().expect("address").port();
    let output = Command::new("bash")
        .arg(repo.join("scripts/demo.sh"))
        .current_dir(&repo)
        .env("BIN_DIR", support::bin_dir())
        .env("DEMO_DIR", demo.path().join("demo"))
        .env("DEMO_PG_PORT", support::free_port().to_string())
        .env("DEMO_FARM_PORT", three_free_ports().to_string())
        .env("DEMO_STATUS_PORT", port.to_string())
        .stdin(Stdio::null())
        .output()
        .expect("the demo runs");
    let said = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!("port {port} (the status page) is in use"))
            && said.contains("DEMO_STATUS_PORT"),
        "{said}"
    );
    assert!(
        !demo.path().join("demo/logs").exists(),
        "nothing was started before the check"
    );
}
