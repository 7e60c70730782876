//! The built binaries scraped by a real Prometheus (Debian's `prometheus`),
//! and what an operator would ask it: are both services up, did the monitor
//! count every metric it published, did the consumer count every row it
//! stored, and is its lag back to zero once the stream stops.

mod support;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use sitewatch_pgtest::sql::{count, count_once_created};
use sitewatch_pgtest::wait::wait_for;
use support::{free_port, http_get, log_event, query_escape, Proc, Watched};

const ROWS: &str = "SELECT count(*) FROM metrics";

/// Sites with three probes or more stored.
const PROBED_THRICE: &str = "SELECT count(*) FROM (SELECT website_id FROM metrics \
     GROUP BY website_id HAVING count(*) >= 3) AS probed";

/// Where Debian's package installs it (`scripts/setup.sh` installs the package).
const PROMETHEUS: &str = "/usr/bin/prometheus";

/// How long any one condition may take to come true, on a loaded machine.
const WITHIN: Duration = Duration::from_secs(60);

/// A Prometheus in a temporary directory scraping some targets every second;
/// killed when dropped, so a failed test leaves nothing running.
struct Prometheus {
    port: u16,
    /// Killed on drop; declared before `_dir` so that it goes first.
    proc: Proc,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts it with one scrape job per `(job, port)`, each a single
    /// target on 127.0.0.1, and waits until it is ready to answer queries.
    async fn start(jobs: &[(&str, u16)]) -> Prometheus {
        assert!(
            Path::new(PROMETHEUS).exists(),
            "{PROMETHEUS} is missing: install the `prometheus` package (scripts/setup.sh does)"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config =
            String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
        for (job, port) in jobs {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
            ));
        }
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).expect("prometheus.yml");
        let port = free_port();
        let proc = Proc::spawn(
            "prometheus",
            PROMETHEUS,
            &[
                &format!("--config.file={}", config_file.display()),
                &format!("--storage.tsdb.path={}", dir.path().join("data").display()),
                &format!("--web.listen-address=127.0.0.1:{port}"),
            ],
            &[],
        );
        let prometheus = Prometheus {
            port,
            proc,
            _dir: dir,
        };
        wait_for(WITHIN, "Prometheus ready", || async {
            http_get(port, "/-/ready").await.map(|(status, _)| status) == Some(200)
        })
        .await;
        prometheus
    }

    /// The answer to the instant query `promql`: each series' labels and
    /// value, or what came back instead of a vector.
    async fn query(&self, promql: &str) -> Result<Vec<(Value, f64)>, String> {
        let path = format!("/api/v1/query?query={}", query_escape(promql));
        let (status, body) = http_get(self.port, &path)
            .await
            .ok_or("no answer from Prometheus")?;
        let answer: Value = serde_json::from_str(&body).map_err(|_| format!("{status} {body}"))?;
        let series = answer["data"]["result"]
            .as_array()
            .filter(|_| answer["status"] == "success" && answer["data"]["resultType"] == "vector")
            .ok_or_else(|| format!("{status} {body}"))?;
        series
            .iter()
            .map(|s| {
                let value = s["value"][1].as_str().and_then(|v| v.parse().ok());
                value
                    .map(|v| (s["metric"].clone(), v))
                    .ok_or_else(|| format!("{status} {body}"))
            })
            .collect()
    }

    /// Asks `promql` until its answer is a single series whose value
    /// satisfies `holds`; panics after [`WITHIN`] with the last answer. An
    /// empty answer (no such series) never holds.
    async fn wait_until(&self, promql: &str, expected: &str, holds: impl Fn(f64) -> bool) {
        let deadline = tokio::time::Instant::now() + WITHIN;
        loop {
            let answer = self.query(promql).await;
            if matches!(answer.as_deref(), Ok([(_, value)]) if holds(*value)) {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                let seen = match answer {
                    Ok(series) if series.is_empty() => "no series".to_owned(),
                    Ok(series) => series
                        .iter()
                        .map(|(labels, value)| format!("{labels} {value}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    Err(answer) => answer,
                };
                let log: Vec<String> = self.proc.stderr.try_iter().collect();
                panic!(
                    "Prometheus: `{promql}` is not {expected} after {WITHIN:?}; last answer: {seen}\n\
                     the end of its log:\n{}",
                    log[log.len().saturating_sub(20)..].join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Now, as Prometheus writes sample timestamps: seconds since the epoch.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_every_probe_every_row_and_the_lag_drain() {
    // Five outcomes (2xx, 4xx, 5xx, a followed redirect, a redirect loop),
    // each site every second; the site list is reloaded on SIGHUP only, so
    // that the test knows when. The consumer reports librdkafka's
    // statistics (its lag) every second rather than every 10 s.
    let paths = [
        "/ok",
        "/status/404",
        "/status/500",
        "/redirect/2",
        "/loop/a",
    ];
    let watched =
        Watched::start(&paths, 2, &["--no-watch"], &["statistics.interval.ms=1000"]).await;
    let db = &watched.db;
    let (monitor, consumer) = (watched.monitor, watched.consumer);
    let prometheus = Prometheus::start(&[
        ("monitor", watched.monitor_port),
        ("consumer", watched.consumer_port),
    ])
    .await;

    // 1. Both targets are up while they run.
    for job in ["monitor", "consumer"] {
        prometheus
            .wait_until(&format!("up{{job=\"{job}\"}}"), "1", |up| up == 1.0)
            .await;
    }

    // Every site probed several times (and so scheduled: see below).
    wait_for(WITHIN, "three probes of every site stored", || async {
        count_once_created(db, PROBED_THRICE).await == paths.len() as i64
    })
    .await;

    // 2. The probe counter as last scraped is what the monitor published.
    // For that, the last scrape must come after the last probe, and the
    // monitor's endpoint ends with the monitor, right after its final
    // flush. So its schedule is stopped first while it keeps running: the
    // list is reloaded with an interval of an hour, which puts each site's
    // next probe an hour after its last one. Once a scrape after that
    // reload finds no probe in flight, no probe runs or will run, and what
    // that scrape (and every later one) counted is final. (A probe started
    // before the reload counts itself in flight once its task runs; should
    // one still wait for that after the scrape, the count below falls
    // short: the test fails, it cannot pass wrongly.)
    let hourly: String = paths
        .iter()
        .map(|p| format!("{},3600\n", watched.farm.url(p)))
        .collect();
    let staged = watched.list.with_extension("new");
    std::fs::write(&staged, hourly).expect("site list");
    std::fs::rename(&staged, &watched.list).expect("site list replaced");
    monitor.signal("HUP");
    let reloaded = monitor.log_until("target list reloaded", WITHIN);
    assert_eq!(reloaded["changed"], paths.len(), "{reloaded}");
    // Prometheus may move a scrape's timestamp up to 2 ms to align it with
    // the interval (`scrape.timestamp-tolerance`); 10 ms leaves no doubt.
    let reloaded_at = unix_now() + 0.01;
    prometheus
        .wait_until(
            &format!(
                "sitewatch_monitor_probes_in_flight == 0 \
                 and on(instance) timestamp(sitewatch_monitor_probes_in_flight) > {reloaded_at:.3}"
            ),
            "0, scraped after the reload",
            |in_flight| in_flight == 0.0,
        )
        .await;
    monitor.signal("TERM");
    let (code, _, stderr) = monitor.wait(WITHIN);
    assert_eq!(code, Some(0), "{}", stderr.join("\n"));
    let stopped = log_event(&stderr, "monitor stopped");
    let delivered = stopped["delivered"]
        .as_f64()
        .expect("the exit log counts deliveries");
    assert!(delivered >= 15.0, "{stopped}");
    // The monitor is gone, so its series are stale: ask for each outcome's
    // last sample rather than the current value.
    prometheus
        .wait_until(
            "sum(last_over_time(sitewatch_monitor_probes_total[10m]))",
            &format!("{delivered} (delivered, as the monitor's exit log says)"),
            |probes| probes == delivered,
        )
        .await;

    // 3. The rows the consumer counts are the rows in the table.
    wait_for(WITHIN, "every delivered metric stored", || async {
        count(db, ROWS).await as f64 == delivered
    })
    .await;
    let rows = count(db, ROWS).await as f64;
    prometheus
        .wait_until(
            "sitewatch_consumer_rows_inserted_total",
            &format!("{rows} (rows in the metrics table)"),
            |inserted| inserted == rows,
        )
        .await;

    // 4. With the stream stopped and everything stored and committed, the
    // lag of every partition falls to 0 (and the series must be there).
    prometheus
        .wait_until("max(sitewatch_consumer_lag_messages)", "0", |lag| {
            lag == 0.0
        })
        .await;

    let _ = consumer.stop(WITHIN);
}
