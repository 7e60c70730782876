//! The status page of the built binaries, looked at in a real browser
//! (Debian's chromium, headless): local sites probed by the monitor, stored
//! by the consumer, shown by the status service. The overview lists every
//! site in the state its probes put it in; a failing site's page shows its
//! open incident. Screenshots of both go to `target/test-artifacts/`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sitewatch_pgtest::wait::wait_for_some;
use support::{bin_dir, free_port, http_get, Proc, Watched};

/// The sites, and the state their answers must put them in.
const SITES: [(&str, &str); 5] = [
    ("/ok", "up"),
    ("/redirect/2", "up"),
    ("/slow/200", "up"),
    ("/status/500", "down"),
    ("/status/404", "down"),
];

/// Where the screenshots go: `target/test-artifacts/`.
fn artifacts() -> PathBuf {
    let dir = bin_dir()
        .parent()
        .map_or_else(bin_dir, Path::to_path_buf)
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts folder");
    dir
}

/// Runs headless chromium with `args` on `url` and returns what it printed.
fn chromium(profile: &Path, args: &[&str], url: &str) -> String {
    let output = Command::new("chromium")
        .args([
            "--headless",
            // The tests run as root, where chromium's sandbox cannot start.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run chromium ({e}): install it (scripts/setup.sh does)")
        });
    assert!(
        output.status.success(),
        "chromium {args:?} {url} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The class of the table row of the page that holds `url`'s link.
fn row_class<'a>(dom: &'a str, url: &str) -> Option<&'a str> {
    let link = format!(">{url}</a>");
    dom.split("<tr class=\"")
        .skip(1)
        .find(|row| row.split("</tr>").next().is_some_and(|r| r.contains(&link)))
        .and_then(|row| row.split('"').next())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_overview_and_a_failing_sites_page_in_a_browser() {
    let paths: Vec<&str> = SITES.iter().map(|(p, _)| *p).collect();
    let watched = Watched::start(&paths, 2, &[], &[]).await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let url = watched.db.url();
    let status = Proc::start(
        "status",
        &[
            "--listen",
            &listen,
            // Not shorter: the page reloads itself this often, and must not
            // while the browser dumps it.
            "--refresh",
            "2s",
            "--postgres-url",
            &url,
            "--postgres-sslmode",
            "disable",
            "--log-format",
            "json",
        ],
        &[],
    );
    let expected: Vec<(String, &str)> = SITES
        .iter()
        .map(|(path, state)| (watched.farm.url(path), *state))
        .collect();

    // The API first: every site in its state, and the failing one's id.
    let failing = watched.farm.url("/status/500");
    let failing_id = wait_for_some(
        Duration::from_secs(90),
        "every site in its state on /api/sites",
        || async {
            let (code, body) = http_get(port, "/api/sites").await?;
            let answer: Value = serde_json::from_str(&body).ok().filter(|_| code == 200)?;
            let sites = answer["sites"].as_array()?;
            let state_of = |url: &str| {
                sites
                    .iter()
                    .find(|s| s["url"] == url)
                    .and_then(|s| s["state"].as_str())
            };
            expected
                .iter()
                .all(|(url, state)| state_of(url) == Some(*state))
                .then(|| {
                    sites
                        .iter()
                        .find(|s| s["url"] == failing.as_str())
                        .and_then(|s| s["id"].as_i64())
                })
                .flatten()
        },
    )
    .await;

    let profile = tempfile::tempdir().expect("browser profile");
    let overview = format!("http://{listen}/?sort=url");
    let dom = chromium(profile.path(), &["--dump-dom"], &overview);
    for (url, state) in &expected {
        assert_eq!(
            row_class(&dom, url),
            Some(*state),
            "{url} on the overview:\n{dom}"
        );
    }
    assert!(dom.contains("sites, as of"), "{dom}");
    let shots = artifacts();
    let shot = shots.join("status-overview.png");
    chromium(
        profile.path(),
        &[&format!("--screenshot={}", shot.display())],
        &overview,
    );
    assert!(
        std::fs::metadata(&shot).is_ok_and(|m| m.len() > 10_000),
        "{}",
        shot.display()
    );

    let page = format!("http://{listen}/sites/{failing_id}");
    let dom = chromium(profile.path(), &["--dump-dom"], &page);
    let incidents = dom
        .split("<h2>Incidents</h2>")
        .nth(1)
        .and_then(|rest| rest.split("</section>").next())
        .unwrap_or_else(|| panic!("no incidents section:\n{dom}"));
    assert!(
        incidents.contains("<tr class=\"down\">") && incidents.contains("so far"),
        "the open incident on {page}:\n{incidents}"
    );
    assert!(
        incidents.contains("status 500 is not below 400"),
        "{incidents}"
    );
    chromium(
        profile.path(),
        &[&format!(
            "--screenshot={}",
            shots.join("status-site.png").display()
        )],
        &page,
    );

    status.stop(Duration::from_secs(20));
}
