//! Scenario: status, the status page under load. 10,000 sites with 30 days
//! of hourly and daily rollups (7 in the quick run), the raw rows of the
//! hour under way, every site's state and a few incidents; the `status`
//! release binary serving them; wrk asking for the overview, a filtered
//! overview, site pages over 30 days and the history API, each for a few
//! seconds, with `/openapi.json` (a static answer: the server's floor) as
//! the reference measured in the same run. Reports p99 latency and rate.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DurationRound, TimeDelta, Utc};
use sitewatch_db::{PgSettings, SslMode};
use sitewatch_service::SecretString;

use crate::procs::{MachineCpu, Proc};
use crate::report::{median, Figure, Goal, ScenarioReport};
use crate::stack::{self, connect, Store};
use crate::storage::fill_hour_under_way;
use crate::Options;

/// Sites of the installation.
const SITES: i64 = 10_000;
/// Connections wrk keeps busy.
const CONNECTIONS: u32 = 4;
/// Seconds each page is asked for, per run.
const SECONDS: u64 = 8;
/// Sites the site-page and history loads cycle through.
const CYCLE: i64 = 200;

/// One load: what is asked, and how it is named in the report.
struct Target {
    name: &'static str,
    /// A wrk script body that makes the request (`request = function() ... end`), or a fixed path.
    request: Request,
    /// Whether the goal applies.
    goal: bool,
}

enum Request {
    Path(&'static str),
    /// A path with `{id}` cycled through the sites.
    Cycle(&'static str),
}

const TARGETS: [Target; 5] = [
    Target {
        name: "static /openapi.json (reference)",
        request: Request::Path("/openapi.json"),
        goal: false,
    },
    Target {
        name: "overview, first page",
        request: Request::Path("/"),
        goal: true,
    },
    Target {
        name: "overview, down sites by uptime",
        request: Request::Path("/?state=down&sort=uptime"),
        goal: true,
    },
    Target {
        name: "site page, 30 days",
        request: Request::Cycle("/sites/{id}?range=30d"),
        goal: true,
    },
    Target {
        name: "history API, 30 days by the hour",
        request: Request::Cycle("/api/sites/{id}/history?from={from}&step=1h"),
        goal: false,
    },
];

/// Runs the scenario and reports medians over `options.runs` runs.
pub async fn run(options: &Options) -> anyhow::Result<ScenarioReport> {
    let days: i64 = if options.full { 30 } else { 7 };
    let store = Store::start(options, "status")?;
    let db = store.named_database("sitewatch_status".to_owned())?;
    let settings = PgSettings {
        url: Some(SecretString::from(db.url.clone())),
        sslmode: SslMode::Disable,
        ..PgSettings::default()
    };
    sitewatch_db::schema::migrate(&settings.connector()?)
        .await
        .context("cannot migrate the benchmark database")?;
    let client = connect(&db.url).await?;
    let seeded = Instant::now();
    seed(&client, days).await?;
    eprintln!(
        "bench: status: {SITES} sites, {days} days of rollups, seeded in {:.0} s",
        seeded.elapsed().as_secs_f64()
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let listen = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let mut status = Proc::release(
        &options.bin_dir,
        "status",
        [
            "--listen",
            &listen,
            "--refresh",
            "60s",
            "--postgres-url",
            &db.url,
            "--postgres-sslmode",
            "disable",
            "--log-format",
            "json",
        ],
        &[],
        &store.dir,
    )?;
    let first_read = tokio::task::block_in_place(|| -> anyhow::Result<f64> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            status.ensure_running()?;
            if get_status(&listen, "/api/sites?per_page=1")? == Some(200) {
                return Ok(started.elapsed().as_secs_f64());
            }
            if Instant::now() > deadline {
                bail!("the status service read no overview within 120 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })?;
    eprintln!(
        "bench: status: first overview of {SITES} sites served {first_read:.2} s after start"
    );

    let from = (Utc::now() - TimeDelta::days(days)).duration_trunc(TimeDelta::hours(1))?;
    let from = from.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let mut results: Vec<Vec<Wrk>> = TARGETS.iter().map(|_| Vec::new()).collect();
    for run in 0..options.runs {
        for (target, measured) in TARGETS.iter().zip(results.iter_mut()) {
            let script = store.dir.join("request.lua");
            stack::write_file(&script, script_for(&target.request, &from))?;
            let result = tokio::task::block_in_place(|| wrk(&store.dir, &listen, &script))?;
            eprintln!(
                "bench: status run {}: {}: p99 {:.1} ms, {:.0}/s, {}",
                run + 1,
                target.name,
                result.p99_ms,
                result.rate,
                result.errors
            );
            if result.errors != "no socket errors, all 2xx" {
                bail!("{}: {}", target.name, result.errors);
            }
            measured.push(result);
        }
    }
    tokio::task::block_in_place(|| status.stop_ok(Duration::from_secs(20)))?;

    let mut report = ScenarioReport::new("status");
    let reference: Vec<f64> = results[0].iter().map(|w| w.p99_ms).collect();
    for (target, measured) in TARGETS.iter().zip(&results) {
        let p99: Vec<f64> = measured.iter().map(|w| w.p99_ms).collect();
        let mut figure = Figure::new(format!("{}: p99", target.name), median(p99.clone()), "ms");
        if target.goal {
            figure = figure.goal(Goal::AtMost(100.0));
        }
        report.figures.push(figure);
        report.figures.push(Figure::new(
            format!("{}: rate", target.name),
            median(measured.iter().map(|w| w.rate).collect()),
            "req/s",
        ));
        if target.goal {
            report.figures.push(Figure::new(
                format!("{}: p99 / the reference's", target.name),
                median(p99.iter().zip(&reference).map(|(a, b)| a / b).collect()),
                "x",
            ));
        }
        report.notes.push(format!(
            "{}: p99 per run {} ms; machine busy {} cores",
            target.name,
            join(measured.iter().map(|w| w.p99_ms)),
            join(measured.iter().map(|w| w.machine_cores)),
        ));
    }
    report.figures.push(Figure::new(
        "first overview served after start (10k sites)",
        first_read,
        "s",
    ));
    report.notes.push(format!(
        "{SITES} sites ({} down with an open incident), {days} days of hourly and daily rollups each, the raw rows of the hour under way; the status release binary (refresh 60s, so no overview read during a load); wrk -t1 -c{CONNECTIONS} -d{SECONDS}s --latency per page, the site pages and history cycling through {CYCLE} sites; PostgreSQL 15 durable; median of {} run(s)",
        SITES / 50,
        options.runs
    ));
    drop(client);
    drop(store);
    Ok(report)
}

fn join(values: impl Iterator<Item = f64>) -> String {
    values
        .map(|v| format!("{v:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The sites, their state, incidents, rollups and the raw rows of the hour under way.
async fn seed(client: &tokio_postgres::Client, days: i64) -> anyhow::Result<()> {
    let now = Utc::now();
    let today = now.duration_trunc(TimeDelta::days(1))?;
    let this_hour = now.duration_trunc(TimeDelta::hours(1))?;
    let first_day = today - TimeDelta::days(days);
    client
        .batch_execute(&format!(
            "SET TimeZone = 'UTC';
             INSERT INTO websites (url, interval_seconds)
               SELECT 'https://site-' || s || '.example/health', 60 FROM generate_series(1, {SITES}) s;
             INSERT INTO incidents (website_id, opened_at, opened_by, failed_condition, failed_message, resolved_at, resolved_by)
               SELECT s, now() - (s % 20 + 2) * interval '1 day', gen_random_uuid(), 'status',
                      'status 503 is not below 400', now() - (s % 20 + 2) * interval '1 day' + interval '7 minutes', gen_random_uuid()
               FROM generate_series(1, {SITES}, 7) s;
             INSERT INTO incidents (website_id, opened_at, opened_by, failed_condition, failed_message)
               SELECT s, now() - interval '25 minutes', gen_random_uuid(), 'connect', 'connection refused'
               FROM generate_series(50, {SITES}, 50) s;
             INSERT INTO site_state (website_id, up, since, consecutive_failures, consecutive_successes, open_incident_id)
               SELECT w.id, i.id IS NULL, now() - interval '25 minutes', CASE WHEN i.id IS NULL THEN 0 ELSE 25 END, 0, i.id
               FROM websites w LEFT JOIN incidents i ON i.website_id = w.id AND i.resolved_at IS NULL;"
        ))
        .await?;
    let columns = "website_id, {unit}, probes, up, errors_dns, errors_connect, errors_tls, errors_timeout, \
                   errors_redirect, errors_body, errors_other, responses, latency_sum_us, latency_min_us, \
                   latency_p50_us, latency_p95_us, latency_p99_us, latency_max_us";
    let values =
        "s, b, 60 * {n}, 60 * {n} - (s % 3), 0, 0, 0, (s % 3), 0, 0, 0, 60 * {n} - (s % 3), \
                  (60 * {n} - (s % 3)) * (40000 + s % 500 * 100), 20000, 38000 + s % 500 * 100, \
                  90000 + (extract(hour FROM b)::int * 1000), 120000, 300000";
    client
        .execute(
            &format!(
                "INSERT INTO metrics_hourly ({}) SELECT {} FROM generate_series(1, {SITES}) s, \
                 generate_series($1::timestamptz, $2::timestamptz - interval '1 hour', interval '1 hour') b",
                columns.replace("{unit}", "hour"),
                values.replace("{n}", "1")
            ),
            &[&first_day, &this_hour],
        )
        .await?;
    // Days with their running totals, as the maintenance pass keeps them.
    let running = "(extract(epoch FROM b - $1::timestamptz) / 86400 + 1)::bigint";
    client
        .execute(
            &format!(
                "INSERT INTO metrics_daily ({}, cum_probes, cum_up, cum_responses, cum_latency_sum_us) \
                 SELECT {}, {running} * 1440, {running} * (1440 - (s % 3) * 24), {running} * (1440 - (s % 3) * 24), \
                        {running} * (1440 - (s % 3) * 24) * (40000 + s % 500 * 100) \
                 FROM generate_series(1, {SITES}) s, \
                 generate_series($1::timestamptz, $2::timestamptz - interval '1 day', interval '1 day') b",
                columns.replace("{unit}", "day"),
                values.replace("{n}", "24")
            ),
            &[&first_day, &today],
        )
        .await?;
    let _ = fill_hour_under_way(client, now, SITES).await?;
    client
        .execute(
            "INSERT INTO rollup_progress (rolled_until, xid_before, raw_complete_since) \
             VALUES ($1::timestamptz, txid_snapshot_xmin(txid_current_snapshot()), $1::timestamptz - interval '14 days')",
            &[&this_hour],
        )
        .await?;
    client
        .batch_execute("VACUUM ANALYZE websites, site_state, incidents, metrics_hourly, metrics_daily, metrics")
        .await?;
    Ok(())
}

/// The wrk script for `request`: one path, or the sites' ids in turn.
fn script_for(request: &Request, from: &str) -> String {
    match request {
        Request::Path(path) => format!("wrk.path = \"{path}\"\n"),
        Request::Cycle(path) => {
            let path = path.replace("{from}", from);
            let (head, tail) = path.split_once("{id}").unwrap_or((&path, ""));
            format!(
                "-- Made by the bench: the sites' pages in turn.\n\
                 local n = 0\n\
                 request = function()\n  \
                   n = n % {CYCLE} + 1\n  \
                   return wrk.format(\"GET\", \"{head}\" .. (n * {stride}) .. \"{tail}\")\n\
                 end\n",
                stride = SITES / CYCLE
            )
        }
    }
}

/// What one wrk load measured.
#[derive(Debug, Clone)]
struct Wrk {
    p99_ms: f64,
    rate: f64,
    errors: String,
    machine_cores: f64,
}

fn wrk(dir: &Path, listen: &str, script: &Path) -> anyhow::Result<Wrk> {
    let machine = MachineCpu::now()?;
    let load = Proc::spawn(
        "wrk",
        Path::new("wrk"),
        [
            "-t1".to_owned(),
            format!("-c{CONNECTIONS}"),
            format!("-d{SECONDS}s"),
            "--latency".to_owned(),
            "-s".to_owned(),
            script.display().to_string(),
            format!("http://{listen}"),
        ],
        &[],
        dir,
    )
    .context("cannot run wrk (scripts/bench.sh installs it: apt-get install wrk)")?;
    let log = load.log().to_owned();
    let _ = load.finish_ok(Duration::from_secs(SECONDS + 30))?;
    let machine_cores = MachineCpu::now()?.busy_cores_since(&machine);
    let output =
        std::fs::read_to_string(&log).with_context(|| format!("cannot read {}", log.display()))?;
    let summary = crate::ceiling::parse_wrk(&output)
        .with_context(|| format!("unexpected wrk output:\n{output}"))?;
    let p99 = output
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("99%"))
        .and_then(|t| crate::ceiling::parse_wrk_duration(t.trim()))
        .with_context(|| format!("no 99% line in wrk's output:\n{output}"))?;
    Ok(Wrk {
        p99_ms: p99 * 1e3,
        rate: summary.requests as f64 / summary.seconds,
        errors: summary.errors,
        machine_cores,
    })
}

/// The status code of `GET path`, or None while nothing answers.
fn get_status(listen: &str, path: &str) -> anyhow::Result<Option<u16>> {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(listen) else {
        return Ok(None);
    };
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n")?;
    let mut reply = String::new();
    if stream.read_to_string(&mut reply).is_err() {
        return Ok(None);
    }
    Ok(reply.split(' ').nth(1).and_then(|code| code.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_cycle_the_sites_or_ask_one_path() {
        assert_eq!(
            script_for(&Request::Path("/?state=down"), "x"),
            "wrk.path = \"/?state=down\"\n"
        );
        let script = script_for(&Request::Cycle("/api/sites/{id}/history?from={from}"), "T0");
        assert!(
            script.contains("\"/api/sites/\" .. (n * 50) .. \"/history?from=T0\""),
            "{script}"
        );
    }
}
