//! The status service against a real PostgreSQL with the whole schema and a
//! few sites in every state: what the pages and the API show, what they
//! refuse, what they never show (secrets of a site's checks), how they
//! escape what sites and errors say, and that the role they read through
//! cannot write.

use std::time::Duration;

use serde_json::Value;
use sitewatch_db::{PgSettings, SslMode};
use sitewatch_pgtest::Postgres;
use sitewatch_service::SecretString;
use sitewatch_status::settings::Settings;
use sitewatch_status::Server;
use tokio_util::sync::CancellationToken;

/// What a site's check options hold that must never be shown.
const SECRETS: [&str; 4] = ["hunter2", "s3cr3t-token", "pw-secret", "secret-body"];

fn pg_settings(db: &Postgres) -> PgSettings {
    PgSettings {
        url: Some(SecretString::from(db.url())),
        sslmode: SslMode::Disable,
        ..PgSettings::default()
    }
}

/// The sites: one up, one down with two incidents (one open) and a URL and
/// error that hold markup, one up with credentials in its URL and checks,
/// one never probed. Returns their ids in that order.
async fn seed(db: &Postgres) -> [i64; 4] {
    let connector = pg_settings(db).connector().expect("connector");
    sitewatch_db::schema::migrate(&connector)
        .await
        .expect("schema");
    let client = connector.connect().await.expect("connect");
    client
        .batch_execute(
            r#"
            SELECT metrics_partition_for(now());
            SELECT metrics_partition_for(now() - interval '1 day');
            INSERT INTO websites (url, interval_seconds, checks) VALUES
              ('https://up.example/', 30, NULL),
              ('https://down.example/<script>alert(1)</script>', 30, NULL),
              ('https://monitor:hunter2@auth.example/', 30,
               '{"headers": {"Authorization": "Bearer s3cr3t-token", "Accept": "text/html"},
                 "basic_auth": {"user": "u", "password": "pw-secret"}, "body": "secret-body",
                 "expect_status": "200-299", "failure_threshold": 2}'),
              ('https://new.example/', 30, NULL);
            -- In the last whole hour (not rolled up): ten responses for the
            -- site up (10 ms to 100 ms), five refused connections for the one
            -- down, three responses for the third.
            INSERT INTO metrics (probe_id, website_id, schema_version, scheduled_at, started_at,
                lateness_us, skipped_before, total_us, status, body_bytes, body_truncated, redirects,
                kafka_topic, kafka_partition, kafka_offset, up, failure_threshold, success_threshold,
                error_kind, error_message, tls_expires_at)
            SELECT gen_random_uuid(), w.id, 2, h.at, h.at,
                   10, 0, CASE WHEN w.url LIKE '%down%' THEN 5000 ELSE i * 10000 END,
                   CASE WHEN w.url LIKE '%down%' THEN NULL ELSE 200 END, 10, false, 0, 't', 0, i,
                   w.url NOT LIKE '%down%', 3, 2,
                   CASE WHEN w.url LIKE '%down%' THEN 'connect' END,
                   CASE WHEN w.url LIKE '%down%' THEN 'connection refused <img src=x onerror=alert(1)>' END,
                   CASE WHEN w.url LIKE '%down%' THEN NULL ELSE now() + interval '40 days 1 hour' END
            FROM websites w, generate_series(1, 10) i,
                 LATERAL (SELECT date_trunc('hour', now()) - interval '1 hour' + i * interval '3 minutes' AS at) h
            WHERE (w.url LIKE '%up.example%')
               OR (w.url LIKE '%down%' AND i <= 5)
               OR (w.url LIKE '%auth%' AND i <= 3);
            -- The four hours before it rolled up for the site up: 60 probes
            -- each, all up, median 30 ms, 95th percentile 40 ms.
            INSERT INTO metrics_hourly (website_id, hour, probes, up, errors_dns, errors_connect,
                errors_tls, errors_timeout, errors_redirect, errors_body, errors_other, responses,
                latency_sum_us, latency_min_us, latency_p50_us, latency_p95_us, latency_p99_us, latency_max_us)
            SELECT w.id, date_trunc('hour', now()) - k * interval '1 hour', 60, 60, 0, 0, 0, 0, 0, 0, 0, 60,
                   60 * 31000, 20000, 30000, 40000, 45000, 50000
            FROM websites w, generate_series(2, 5) k WHERE w.url LIKE '%up.example%';
            INSERT INTO rollup_progress (rolled_until, xid_before, raw_complete_since)
            VALUES (date_trunc('hour', now()) - interval '1 hour', txid_current(), '-infinity');
            INSERT INTO incidents (website_id, opened_at, opened_by, failed_condition, failed_message, resolved_at, resolved_by)
            SELECT id, now() - interval '2 hours', gen_random_uuid(), 'status', 'HTTP 503',
                   now() - interval '110 minutes', gen_random_uuid()
            FROM websites WHERE url LIKE '%down%';
            INSERT INTO incidents (website_id, opened_at, opened_by, failed_condition, failed_message)
            SELECT id, now() - interval '15 minutes', gen_random_uuid(), 'connect',
                   'connection refused <img src=x onerror=alert(1)>'
            FROM websites WHERE url LIKE '%down%';
            INSERT INTO site_state (website_id, up, since, consecutive_failures, consecutive_successes, open_incident_id)
            SELECT w.id, w.url NOT LIKE '%down%', now() - interval '15 minutes',
                   CASE WHEN w.url LIKE '%down%' THEN 5 ELSE 0 END, 0,
                   (SELECT i.id FROM incidents i WHERE i.website_id = w.id AND i.resolved_at IS NULL)
            FROM websites w WHERE w.url NOT LIKE '%new%';
            "#,
        )
        .await
        .expect("seed");
    let ids: Vec<i64> = client
        .query("SELECT id FROM websites ORDER BY id", &[])
        .await
        .expect("ids")
        .iter()
        .map(|r| r.get(0))
        .collect();
    [ids[0], ids[1], ids[2], ids[3]]
}

/// The service on a free port, reading `db` every second.
async fn serve(db: &Postgres) -> (String, CancellationToken, tokio::task::JoinHandle<()>) {
    let settings = Settings {
        listen: "127.0.0.1:0".to_owned(),
        refresh: "1s".parse().expect("span"),
        page_size: 2,
        postgres: pg_settings(db),
        ..Settings::default()
    };
    let server = Server::bind(settings).await.expect("bind");
    let addr = server.local_addr().expect("address");
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move { server.run(stop).await.expect("the service runs") }
    });
    (format!("http://{addr}"), stop, task)
}

/// Waits for the service's first overview; on a timeout, says what it answered.
async fn first_overview(base: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer = get(base, "/api/sites").await;
        if answer.status == 200 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no overview within 30 s: {} {}",
            answer.status,
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

async fn get(base: &str, path: &str) -> Answer {
    // reqwest is built without a TLS provider, and wants one even for HTTP.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let response = reqwest::get(format!("{base}{path}"))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.text().await.expect("body");
    Answer {
        status,
        content_type,
        body,
    }
}

/// Fails unless `answer` is what `/openapi.json` says schema `name` is.
fn conforms(name: &str, path: &str, answer: &Value) {
    let mut document: Value =
        serde_json::from_str(sitewatch_status::OPENAPI).expect("openapi.json is JSON");
    // The document itself as the schema, pointing at the one named: its
    // other keys are not schema keywords, and its references resolve in it.
    document["$ref"] = Value::String(format!("#/components/schemas/{name}"));
    let validator = jsonschema::draft202012::new(&document)
        .unwrap_or_else(|e| panic!("schema {name} does not compile: {e}"));
    let errors: Vec<String> = validator
        .iter_errors(answer)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{path} does not match {name}: {errors:?}\n{answer}"
    );
}

fn no_secret_in(path: &str, body: &str) {
    for secret in SECRETS {
        assert!(!body.contains(secret), "{path} shows {secret:?}: {body}");
    }
}

#[tokio::test]
async fn pages_and_api_show_every_site_escaped_and_without_secrets() {
    let db = Postgres::start_temp().expect("postgres");
    let [up, down, auth, new] = seed(&db).await;
    let (base, stop, task) = serve(&db).await;
    first_overview(&base).await;

    // The list: every state counted, down first, two a page.
    let first = get(&base, "/api/sites").await;
    let sites = first.json();
    conforms("Sites", "/api/sites", &sites);
    assert_eq!(
        sites["counts"],
        serde_json::json!({"up": 2, "down": 1, "unknown": 1})
    );
    assert_eq!(
        (sites["pages"].as_u64(), sites["matching"].as_u64()),
        (Some(2), Some(4))
    );
    assert_eq!(sites["sites"][0]["id"].as_i64(), Some(down));
    assert_eq!(sites["sites"][1]["state"], "unknown");
    let all = get(&base, "/api/sites?sort=url&page=1&per_page=2")
        .await
        .json();
    let second = get(&base, "/api/sites?sort=url&page=2").await.json();
    let urls: Vec<&str> = [&all, &second]
        .iter()
        .flat_map(|p| p["sites"].as_array().into_iter().flatten())
        .filter_map(|s| s["url"].as_str())
        .collect();
    assert_eq!(
        urls,
        [
            "https://***@auth.example/",
            "https://down.example/<script>alert(1)</script>",
            "https://new.example/",
            "https://up.example/"
        ]
    );

    // One site: its figures from four rolled-up hours and the raw rows of
    // the hour after them: the median of the hours' medians (30, 30, 30, 30
    // and the raw hour's 50), the worst hour's 95th percentile (the raw
    // hour's 100), every hour in its slot of the chart.
    let site = get(&base, &format!("/api/sites/{up}")).await.json();
    conforms("SiteDetail", "/api/sites/{up}", &site);
    assert_eq!(site["site"]["state"], "up");
    assert_eq!(site["site"]["uptime_pct"]["24h"].as_f64(), Some(100.0));
    let latency = &site["site"]["latency_24h"];
    assert_eq!(
        (latency["p50_ms"].as_f64(), latency["p95_ms"].as_f64()),
        (Some(30.0), Some(100.0)),
        "{latency}"
    );
    let chart: Vec<Option<f64>> = latency["hourly_p50_ms"]
        .as_array()
        .into_iter()
        .flatten()
        .map(Value::as_f64)
        .collect();
    assert_eq!(chart.len(), 24, "{latency}");
    assert_eq!(
        &chart[18..],
        [
            Some(30.0),
            Some(30.0),
            Some(30.0),
            Some(30.0),
            Some(50.0),
            None
        ],
        "{latency}"
    );
    assert_eq!(site["site"]["last"]["latency_ms"].as_f64(), Some(100.0));
    let down_site = get(&base, &format!("/api/sites/{down}")).await.json();
    assert_eq!(down_site["site"]["uptime_pct"]["24h"].as_f64(), Some(0.0));
    assert_eq!(down_site["site"]["last"]["error_kind"], "connect");
    assert!(down_site["site"]["open_incident"].is_i64());
    let unknown = get(&base, &format!("/api/sites/{new}")).await.json();
    conforms("SiteDetail", "/api/sites/{new}", &unknown);
    conforms("SiteDetail", "/api/sites/{down}", &down_site);
    assert_eq!(
        (unknown["site"]["state"].as_str(), &unknown["site"]["last"]),
        (Some("unknown"), &Value::Null)
    );

    // The third site's checks: what is checked, never a credential.
    let options = get(&base, &format!("/api/sites/{auth}")).await;
    no_secret_in("/api/sites/{auth}", &options.body);
    let checks = &options.json()["options"]["checks"];
    assert_eq!(
        checks["headers"],
        serde_json::json!(["Accept", "Authorization"])
    );
    assert_eq!(
        (&checks["basic_auth"], &checks["body"]),
        (&Value::Bool(true), &Value::Bool(true))
    );
    assert_eq!(checks["expect_status"], "200-299");

    // History by the hour: the rolled-up hours and the raw one, each a
    // point on its hour. By 5 minutes: the raw rows alone.
    let history = get(&base, &format!("/api/sites/{up}/history?step=1h")).await;
    assert_eq!(history.status, 200, "{}", history.body);
    conforms("History", "/api/sites/{up}/history", &history.json());
    let points = history.json()["points"].clone();
    let hours: Vec<(String, i64)> = points
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["at"].as_str().unwrap_or_default().to_owned(),
                p["probes"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        hours.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        [60, 60, 60, 60, 10],
        "{points}"
    );
    assert!(
        hours.iter().all(|(at, _)| at.ends_with(":00:00Z")),
        "each point on its hour: {points}"
    );
    let by_minutes = get(&base, &format!("/api/sites/{up}/history?step=5m")).await;
    let probes: i64 = by_minutes.json()["points"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["probes"].as_i64())
        .sum();
    assert_eq!(probes, 10, "{}", by_minutes.body);

    // Incidents, newest first, with durations.
    let incidents = get(&base, &format!("/api/incidents?site={down}"))
        .await
        .json();
    let list = incidents["incidents"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(list.len(), 2, "{incidents}");
    assert_eq!(list[0]["resolved_at"], Value::Null);
    assert_eq!(list[1]["duration_seconds"].as_f64(), Some(600.0));
    let open = get(&base, "/api/incidents?open=true").await.json();
    assert_eq!(open["incidents"].as_array().map(Vec::len), Some(1));

    // The pages: markup from sites and errors shown as text.
    let overview = get(&base, "/?sort=url").await;
    assert_eq!(overview.status, 200);
    assert!(
        overview.content_type.starts_with("text/html"),
        "{}",
        overview.content_type
    );
    assert!(
        overview
            .body
            .contains("https://down.example/&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{}",
        overview.body
    );
    assert!(!overview.body.contains("<script"), "{}", overview.body);
    assert!(overview.body.contains("http-equiv=\"refresh\""));
    let down_page = get(&base, "/?state=down").await;
    assert!(
        down_page
            .body
            .contains("connection refused &lt;img src=x onerror=alert(1)&gt;"),
        "{}",
        down_page.body
    );
    assert!(!down_page.body.contains("<img src=x"), "{}", down_page.body);
    let page = get(&base, &format!("/sites/{down}")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("10m 0s"),
        "the resolved incident's duration: {}",
        page.body
    );
    assert!(page.body.contains("HTTP 503"));
    assert!(
        !page.body.contains("<img src=x") && !page.body.contains("<script"),
        "{}",
        page.body
    );
    for path in [
        "/",
        "/?page=2",
        &format!("/sites/{auth}"),
        "/api/sites",
        "/api/incidents",
    ] {
        no_secret_in(path, &get(&base, path).await.body);
    }
    for range in ["7d", "30d", "1y"] {
        let page = get(&base, &format!("/sites/{up}?range={range}")).await;
        assert_eq!(page.status, 200, "range {range}: {}", page.body);
    }

    // Badges.
    let badge = get(&base, &format!("/badge/{down}/state.svg")).await;
    assert_eq!(
        (badge.status, badge.content_type.as_str()),
        (200, "image/svg+xml")
    );
    assert!(badge.body.contains("status: down"), "{}", badge.body);
    let uptime = get(&base, &format!("/badge/{up}/uptime/24h.svg")).await;
    assert!(
        uptime.body.contains("uptime 24h: 100.00%"),
        "{}",
        uptime.body
    );

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the service stops when told")
        .expect("the service task");
}

#[tokio::test]
async fn bad_parameters_are_refused_with_a_reason() {
    let db = Postgres::start_temp().expect("postgres");
    let [up, ..] = seed(&db).await;
    let (base, stop, _task) = serve(&db).await;
    first_overview(&base).await;
    let history = format!("/api/sites/{up}/history");
    for (path, status, says) in [
        (
            "/api/sites/999999".to_owned(),
            404,
            "no site with id 999999",
        ),
        ("/api/sites/abc".to_owned(), 400, "site id: a whole number"),
        (
            "/api/sites/999999/history".to_owned(),
            404,
            "no site with id 999999",
        ),
        (
            format!("{history}?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z"),
            400,
            "from must be before to",
        ),
        (
            format!("{history}?from=2025-01-01T00:00:00Z&to=2026-01-01T00:00:00Z&step=1m"),
            400,
            "step too small for the range",
        ),
        (format!("{history}?step=10s"), 400, "at least 1m"),
        (
            format!("{history}?from=last-week"),
            400,
            "from: an RFC 3339 time",
        ),
        (
            "/api/sites?state=sideways".to_owned(),
            400,
            "state: up, down or unknown",
        ),
        (
            "/api/sites?page=0".to_owned(),
            400,
            "page: a whole number from 1",
        ),
        ("/api/incidents?limit=0".to_owned(), 400, "limit: 1 to 1000"),
        (
            "/api/incidents?site=999999".to_owned(),
            404,
            "no site with id 999999",
        ),
        (
            "/api/incidents?open=maybe".to_owned(),
            400,
            "open: true or false",
        ),
        ("/api/nothing".to_owned(), 404, "no such page"),
    ] {
        let answer = get(&base, &path).await;
        assert_eq!(answer.status, status, "{path}: {}", answer.body);
        conforms("Error", &path, &answer.json());
        assert_eq!(
            answer.json()["error"].as_str().map(|e| e.contains(says)),
            Some(true),
            "{path}: {}",
            answer.body
        );
    }
    for (path, status) in [
        ("/sites/999999", 404),
        ("/sites/abc", 400),
        (&format!("/sites/{up}?range=2w"), 400),
        ("/?state=sideways", 400),
        ("/badge/999999/state.svg", 404),
        (&format!("/badge/{up}/uptime/2w.svg"), 400),
    ] {
        let answer = get(&base, path).await;
        assert_eq!(answer.status, status, "{path}: {}", answer.body);
    }
    stop.cancel();
}

#[tokio::test]
async fn the_read_role_cannot_write_nor_read_the_sites_secrets() {
    let db = Postgres::start_temp().expect("postgres");
    let [up, ..] = seed(&db).await;
    // The service's own sessions.
    let pool = pg_settings(&db)
        .read_only_pool("sitewatch_read")
        .expect("pool");
    let client = pool.get().await.expect("a session as the read role");
    let role: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("role")
        .get(0);
    assert_eq!(role, "sitewatch_read");
    let refused = |sql: &'static str| {
        let client = &client;
        async move {
            let err = client.batch_execute(sql).await.expect_err(sql);
            err.code().cloned()
        }
    };
    use tokio_postgres::error::SqlState;
    for sql in [
        "DELETE FROM incidents",
        "UPDATE site_state SET up = true",
        "INSERT INTO metrics_hourly (website_id, hour, probes, up, errors_dns, errors_connect, errors_tls, errors_timeout, errors_redirect, errors_body, errors_other, responses) VALUES (1, now(), 1, 1, 0, 0, 0, 0, 0, 0, 0, 1)",
    ] {
        assert_eq!(refused(sql).await, Some(SqlState::READ_ONLY_SQL_TRANSACTION), "{sql}");
    }
    // Even with its transaction made writable, the role may not write, nor
    // read the table that holds the sites' credentials.
    for sql in [
        "BEGIN READ WRITE; DELETE FROM incidents; COMMIT",
        "BEGIN READ WRITE; TRUNCATE metrics; COMMIT",
        "SELECT checks FROM websites",
        "SELECT url FROM websites",
        "SELECT * FROM alert_outbox",
        "SELECT regex_match, final_url FROM metrics",
    ] {
        let _ = client.batch_execute("ROLLBACK").await;
        assert_eq!(
            refused(sql).await,
            Some(SqlState::INSUFFICIENT_PRIVILEGE),
            "{sql}"
        );
    }
    let _ = client.batch_execute("ROLLBACK").await;
    // What a URL's user information may hold is masked whole.
    let owner = sitewatch_pgtest::sql::client(&db).await;
    owner
        .batch_execute(
            "INSERT INTO websites (url) VALUES ('https://user:p@ss@two-ats.example/x'),
               ('https://TOKEN123@token.example/'), ('https://q.example/path?x=a:b@c')",
        )
        .await
        .expect("more sites");
    let urls: Vec<String> = client
        .query("SELECT url FROM status_sites ORDER BY id", &[])
        .await
        .expect("the public view")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        urls[2..],
        [
            "https://***@auth.example/",
            "https://new.example/",
            "https://***@two-ats.example/x",
            "https://***@token.example/",
            "https://q.example/path?x=a:b@c",
        ]
    );
    // A temporary view of the caller's cannot stand in for `websites` in the
    // function that runs as its owner.
    client
        .batch_execute(
            "BEGIN READ WRITE; CREATE TEMP VIEW websites AS SELECT 424242::bigint AS id, url FROM status_sites",
        )
        .await
        .expect("a temporary view");
    let ids: Vec<i64> = client
        .query(
            "SELECT website_id FROM status_uptime(now() - interval '1 day')",
            &[],
        )
        .await
        .expect("uptime")
        .iter()
        .map(|r| r.get(0))
        .collect();
    client.batch_execute("ROLLBACK").await.expect("rollback");
    assert!(ids.contains(&up) && !ids.contains(&424_242), "{ids:?}");
    let counted: i64 = client
        .query_one(
            "SELECT count(*) FROM status_uptime(now() - interval '1 day') WHERE website_id = $1",
            &[&up],
        )
        .await
        .expect("uptime through its definer function")
        .get(0);
    assert_eq!(counted, 1);
}

#[tokio::test]
async fn requests_and_overview_reads_show_on_metrics_by_route() {
    let recorded = sitewatch_service::observe::recorder();
    let db = Postgres::start_temp().expect("postgres");
    let [up, ..] = seed(&db).await;
    let (base, stop, _task) = serve(&db).await;
    first_overview(&base).await;
    for path in [
        format!("/sites/{up}"),
        format!("/sites/{up}?range=7d"),
        "/sites/999999".to_owned(),
        "/nowhere".to_owned(),
    ] {
        let _ = get(&base, &path).await;
    }
    let shown = recorded.render();
    // At least: the recorder is the process's, which other tests may share
    // when they run as threads of one process.
    let value = |series: &str| -> f64 {
        shown
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("/metrics should show {series}:\n{shown}"))
    };
    for (series, least) in [
        (
            "sitewatch_status_requests_total{route=\"/sites/{id}\",code=\"200\"}",
            2.0,
        ),
        (
            "sitewatch_status_requests_total{route=\"/sites/{id}\",code=\"404\"}",
            1.0,
        ),
        (
            "sitewatch_status_requests_total{route=\"unmatched\",code=\"404\"}",
            1.0,
        ),
        (
            "sitewatch_status_request_duration_seconds_count{route=\"/sites/{id}\"}",
            3.0,
        ),
    ] {
        assert!(value(series) >= least, "{series} below {least}:\n{shown}");
    }
    // One series per route, whatever the site or path.
    for stray in [
        format!("route=\"/sites/{up}"),
        "route=\"/nowhere".to_owned(),
    ] {
        assert!(
            !shown.contains(&stray),
            "a series per path ({stray}):\n{shown}"
        );
    }
    assert!(
        shown.contains("sitewatch_status_overview_reads_total{outcome=\"done\"}"),
        "/metrics should count the overview's reads:\n{shown}"
    );
    let read_at = shown
        .lines()
        .find_map(|l| l.strip_prefix("sitewatch_status_overview_read_timestamp_seconds "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("/metrics should show when the overview was read:\n{shown}"));
    let now = chrono::Utc::now().timestamp() as f64;
    assert!(
        (now - 60.0..=now).contains(&read_at),
        "the overview was read at {read_at}, not within the last minute of {now}"
    );
    stop.cancel();
}
