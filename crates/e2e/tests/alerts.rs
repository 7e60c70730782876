//! Alerts from the built binaries: a broker on TCP, a monitor probing local
//! sites whose answers each test lines up, consumers storing the metrics in
//! a real PostgreSQL and telling a local webhook receiver when a site goes
//! down and comes back up: what an operator relies on when a site fails
//! (one notification each way, none for a blip, none lost or doubled
//! through a crash, a webhook outage or a rebalance).
//!
//! Each site is a [`WebhookReceiver`] too: it answers the monitor's probes
//! with the statuses lined up (then 200), so a test decides exactly which
//! probes fail. With the monitor's defaults a site goes down on its 3rd
//! failure in a row and up on its 2nd success in a row.
//!
//! What a test expects of the state is checked against an oracle: the stored
//! probes of each site replayed through those thresholds, so a probe that a
//! loaded machine turned into a timeout cannot make a test fail for nothing.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use sitewatch_pgtest::sql::{client, count, count_once_created};
use sitewatch_pgtest::wait::wait_for;
use sitewatch_pgtest::Postgres;
use sitewatch_sitefarm::webhook::WebhookReceiver;
use support::{broker, consumer_args, Proc};
use uuid::Uuid;

/// The monitor's default thresholds (the sites here set none).
const FAILURES_TO_GO_DOWN: usize = 3;
const SUCCESSES_TO_COME_UP: usize = 2;

/// What every test starts with: a temp folder, a PostgreSQL, and the broker
/// with a `metrics` topic.
struct Stack {
    dir: tempfile::TempDir,
    db: Postgres,
    /// Kept running until the test ends.
    _broker: Proc,
    bootstrap: String,
}

impl Stack {
    fn start(partitions: u32) -> Stack {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Postgres::start_temp().expect("postgres");
        let (broker, bootstrap) = broker("metrics", partitions);
        Stack {
            dir,
            db,
            _broker: broker,
            bootstrap,
        }
    }

    /// Writes the site list `url,interval` for `sites`; returns its path.
    fn site_list(&self, sites: &[&WebhookReceiver], interval: &str) -> String {
        let csv: String = sites
            .iter()
            .map(|s| format!("{},{interval}\n", s.url()))
            .collect();
        let list = self.dir.path().join("sites.csv");
        std::fs::write(&list, csv).expect("site list");
        list.to_string_lossy().into_owned()
    }

    /// A monitor of the sites in `list`, publishing to `metrics`.
    fn monitor(&self, list: &str) -> Proc {
        Proc::start(
            "monitor",
            &[
                "--targets",
                list,
                "--kafka-brokers",
                &self.bootstrap,
                "--kafka-topic",
                "metrics",
                "--log-format",
                "json",
            ],
            &[],
        )
    }

    /// A consumer of `metrics` in `group` (quick rebalances, see
    /// [`consumer_args`]) notifying the `json` webhook `hook`, with `extra` flags.
    fn consumer(&self, group: &str, hook: &str, extra: &[&str]) -> Proc {
        let mut args = consumer_args(&self.bootstrap, "metrics", &self.db.url(), group);
        args.extend(["--alert-webhooks".to_owned(), format!("json:{hook}")]);
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        Proc::start("consumer", &refs, &[])
    }

    async fn rows(&self) -> i64 {
        count_once_created(&self.db, "SELECT count(*) FROM metrics").await
    }
}

/// A site answering the monitor's probes with `statuses`, then 200.
async fn site(statuses: &[u16]) -> WebhookReceiver {
    let site = WebhookReceiver::start().await.expect("site");
    site.answer_next(statuses);
    site
}

/// `failing` then `passing` probes' statuses, `times` over.
fn cycles(times: usize, failing: usize, passing: usize) -> Vec<u16> {
    let cycle = [vec![500; failing], vec![200; passing]].concat();
    cycle.repeat(times)
}

/// One notification a webhook receiver got, as a user reads it.
#[derive(Debug, Clone)]
struct Note {
    /// The `Idempotency-Key` header.
    key: String,
    incident: i64,
    site: String,
    state: String,
    probe: Uuid,
    failed_condition: String,
    accepted: bool,
}

/// Every request `hook` got, in arrival order; checks that each is a `json`
/// notification whose header key is its payload's key, `incident-ID-STATE`.
fn notes(hook: &WebhookReceiver) -> Vec<Note> {
    hook.deliveries()
        .iter()
        .map(|d| {
            let body = d.json();
            let text = |field: &str| {
                body[field]
                    .as_str()
                    .unwrap_or_else(|| panic!("no {field} in the notification {body}"))
                    .to_owned()
            };
            let note = Note {
                key: d.key.clone().expect("an Idempotency-Key header"),
                incident: body["incident_id"].as_i64().expect("incident_id"),
                site: text("site"),
                state: text("state"),
                probe: text("probe_id").parse().expect("probe_id is a UUID"),
                failed_condition: text("failed_condition"),
                accepted: d.accepted(),
            };
            assert_eq!(
                note.key,
                text("idempotency_key"),
                "header key = payload key"
            );
            assert_eq!(
                note.key,
                format!("incident-{}-{}", note.incident, note.state),
                "the key names the incident and the transition"
            );
            note
        })
        .collect()
}

/// Each key accepted (answered 2xx) exactly once; returns the accepted notes
/// in arrival order.
fn accepted_once(notes: &[Note]) -> Vec<Note> {
    let accepted: Vec<Note> = notes.iter().filter(|n| n.accepted).cloned().collect();
    let mut times: BTreeMap<&str, usize> = BTreeMap::new();
    for n in &accepted {
        *times.entry(&n.key).or_default() += 1;
    }
    let doubled: Vec<_> = times.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        doubled.is_empty(),
        "keys accepted more than once: {doubled:?}"
    );
    accepted
}

/// One incident as the table holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Incident {
    id: i64,
    site: String,
    opened_by: Uuid,
    resolved_by: Option<Uuid>,
    failed_condition: String,
}

async fn incidents(db: &Postgres) -> Vec<Incident> {
    client(db)
        .await
        .query(
            "SELECT i.id, w.url, i.opened_by, i.resolved_by, i.failed_condition
             FROM incidents i JOIN websites w ON w.id = i.website_id ORDER BY i.id",
            &[],
        )
        .await
        .expect("incidents")
        .iter()
        .map(|r| Incident {
            id: r.get(0),
            site: r.get(1),
            opened_by: r.get(2),
            resolved_by: r.get(3),
            failed_condition: r.get(4),
        })
        .collect()
}

/// One stored probe of a site: its id, status and verdict.
#[derive(Debug, Clone)]
struct Probe {
    id: Uuid,
    status: Option<i16>,
    error: Option<String>,
    up: bool,
}

/// Each site's stored probes, in the order the state applies them.
async fn probes(db: &Postgres) -> HashMap<String, Vec<Probe>> {
    let mut by_site: HashMap<String, Vec<Probe>> = HashMap::new();
    for r in client(db)
        .await
        .query(
            "SELECT w.url, m.probe_id, m.status, m.error_kind, m.up
             FROM metrics m JOIN websites w ON w.id = m.website_id
             ORDER BY m.started_at, m.probe_id",
            &[],
        )
        .await
        .expect("probes")
    {
        by_site.entry(r.get(0)).or_default().push(Probe {
            id: r.get(1),
            status: r.get(2),
            error: r.get(3),
            up: r
                .get::<_, Option<bool>>(4)
                .expect("a version 2 metric has a verdict"),
        });
    }
    by_site
}

/// The incidents `probes` make with the default thresholds: (opened by,
/// resolved by) in order.
fn replay(probes: &[Probe]) -> Vec<(Uuid, Option<Uuid>)> {
    let (mut up, mut failures, mut successes) = (true, 0, 0);
    let mut out: Vec<(Uuid, Option<Uuid>)> = Vec::new();
    for p in probes {
        if p.up {
            failures = 0;
            successes += 1;
            if !up && successes >= SUCCESSES_TO_COME_UP {
                up = true;
                out.last_mut().expect("an open incident").1 = Some(p.id);
            }
        } else {
            successes = 0;
            failures += 1;
            if up && failures >= FAILURES_TO_GO_DOWN {
                up = false;
                out.push((p.id, None));
            }
        }
    }
    out
}

/// The incidents table is what each site's stored probes make, no more, no less.
async fn assert_incidents_follow_the_probes(db: &Postgres) -> Vec<Incident> {
    let all = incidents(db).await;
    for (site, probes) in probes(db).await {
        let stored: Vec<(Uuid, Option<Uuid>)> = all
            .iter()
            .filter(|i| i.site == site)
            .map(|i| (i.opened_by, i.resolved_by))
            .collect();
        assert_eq!(
            stored,
            replay(&probes),
            "incidents of {site} (opened by, resolved by) follow its probes: {probes:?}"
        );
    }
    all
}

/// Per site, the accepted notifications in arrival order are each incident's
/// down then up, incident after incident: none missing, none out of order.
fn assert_in_order_per_site(accepted: &[Note], incidents: &[Incident]) {
    let mut expected: BTreeMap<&str, Vec<(i64, &str)>> = BTreeMap::new();
    for i in incidents {
        let transitions = expected.entry(&i.site).or_default();
        transitions.push((i.id, "down"));
        if i.resolved_by.is_some() {
            transitions.push((i.id, "up"));
        }
    }
    let mut got: BTreeMap<&str, Vec<(i64, &str)>> = BTreeMap::new();
    for n in accepted {
        got.entry(&n.site).or_default().push((n.incident, &n.state));
    }
    assert_eq!(got, expected, "each site's notifications, in arrival order");
}

/// `(up, consecutive successes while down)` of `site`; None before its first probe is applied.
async fn site_state(db: &Postgres, site: &str) -> Option<(bool, i32)> {
    let rows = client(db)
        .await
        .query(
            "SELECT s.up, s.consecutive_successes FROM site_state s
             JOIN websites w ON w.id = s.website_id WHERE w.url = $1",
            &[&site],
        )
        .await;
    match rows {
        Ok(rows) => rows.first().map(|r| (r.get(0), r.get(1))),
        Err(err) if sitewatch_pgtest::sql::is_undefined_table(&err) => None,
        Err(err) => panic!("site_state: {err}"),
    }
}

/// Waits until every one of `sites` has `probes` probes stored (all its
/// lined-up statuses and more; a stored probe has moved the state in the
/// same transaction) and its state is up.
async fn wait_sites_settled(db: &Postgres, sites: &[(&WebhookReceiver, usize)], within: Duration) {
    wait_for(
        within,
        "every site probed past its lined-up answers, and up",
        || async {
            for (site, probes) in sites {
                let stored = count_once_created(
                    db,
                    &format!(
                        "SELECT count(*) FROM metrics m JOIN websites w ON w.id = m.website_id
                     WHERE w.url = '{}'",
                        site.url()
                    ),
                )
                .await;
                if stored < i64::try_from(*probes).expect("fits") {
                    return false;
                }
                if !matches!(site_state(db, &site.url()).await, Some((true, _))) {
                    return false;
                }
            }
            true
        },
    )
    .await;
}

/// Waits until the outbox holds `rows` notifications, every one sent.
async fn wait_outbox_sent(db: &Postgres, rows: i64, within: Duration) {
    wait_for(within, &format!("{rows} notifications, all sent"), || async {
        count_once_created(
            db,
            "SELECT CASE WHEN count(*) = count(sent_at) THEN count(*) ELSE -1 END FROM alert_outbox",
        )
        .await
            == rows
    })
    .await;
}

/// `(transition, sent, attempts, last error)` of every outbox row, by id.
async fn outbox(db: &Postgres) -> Vec<(String, bool, i32, Option<String>)> {
    client(db)
        .await
        .query(
            "SELECT transition, sent_at IS NOT NULL, attempts, last_error FROM alert_outbox ORDER BY id",
            &[],
        )
        .await
        .expect("outbox")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

/// SIGTERM; the process must exit 0.
fn stop(proc: Proc) {
    let _ = proc.stop(Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_failures_notify_down_once_two_successes_up_once_and_two_failures_nothing() {
    let stack = Stack::start(2);
    let hook = WebhookReceiver::start().await.expect("receiver");
    let flaky = site(&[500, 500, 500]).await;
    let blip = site(&[500, 500]).await;
    let list = stack.site_list(&[&flaky, &blip], "0.5");
    let consumer = stack.consumer("g", &hook.url(), &[]);
    let monitor = stack.monitor(&list);

    // Every transition the probes make applied, and every notification owed sent:
    // from here on, what the receiver has is all it gets.
    wait_sites_settled(
        &stack.db,
        &[(&flaky, 6), (&blip, 5)],
        Duration::from_secs(60),
    )
    .await;
    wait_outbox_sent(&stack.db, 2, Duration::from_secs(30)).await;

    let probes = probes(&stack.db).await;
    let flaky_probes = &probes[&flaky.url()];
    let statuses: Vec<Option<i16>> = flaky_probes[..6].iter().map(|p| p.status).collect();
    assert_eq!(
        statuses,
        [500, 500, 500, 200, 200, 200].map(Some),
        "the site answered as lined up: {flaky_probes:?}"
    );
    let (third_failure, second_success) = (flaky_probes[2].id, flaky_probes[4].id);
    let blip_probes = &probes[&blip.url()];
    let statuses: Vec<Option<i16>> = blip_probes[..5].iter().map(|p| p.status).collect();
    assert_eq!(
        statuses,
        [500, 500, 200, 200, 200].map(Some),
        "the other site failed twice, then recovered: {blip_probes:?}"
    );

    let notes = notes(&hook);
    let accepted = accepted_once(&notes);
    assert_eq!(notes.len(), 2, "two requests, no retry: {notes:?}");
    let [down, up] = [&accepted[0], &accepted[1]];
    assert_eq!(
        (down.site.as_str(), down.state.as_str(), down.probe),
        (flaky.url().as_str(), "down", third_failure),
        "down, after the 3rd failure"
    );
    assert_eq!(
        (up.site.as_str(), up.state.as_str(), up.probe),
        (flaky.url().as_str(), "up", second_success),
        "up, after the 2nd success"
    );
    assert_eq!(
        down.incident, up.incident,
        "one incident, opened and resolved"
    );
    assert!(
        notes.iter().all(|n| n.site != blip.url()),
        "two failures then a recovery notify nothing"
    );

    let incidents = assert_incidents_follow_the_probes(&stack.db).await;
    assert_eq!(
        incidents,
        [Incident {
            id: down.incident,
            site: flaky.url(),
            opened_by: third_failure,
            resolved_by: Some(second_success),
            failed_condition: "status".to_owned(),
        }],
        "one incident, the flaky site's"
    );
    assert_eq!(down.failed_condition, "status");
    let rows = outbox(&stack.db).await;
    assert_eq!(
        rows.iter()
            .map(|(t, sent, attempts, _)| (t.as_str(), *sent, *attempts))
            .collect::<Vec<_>>(),
        [("down", true, 1), ("up", true, 1)],
        "the outbox: each notification sent at the first attempt"
    );
    stop(monitor);
    stop(consumer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_before_the_send_completes_leaves_the_notification_to_the_next() {
    let stack = Stack::start(2);
    let hook = WebhookReceiver::start().await.expect("receiver");
    hook.hang(true);
    let flaky = site(&[500, 500, 500]).await;
    let list = stack.site_list(&[&flaky], "0.5");
    // A long timeout: the send is under way, unanswered, when the consumer dies.
    let first = stack.consumer("g", &hook.url(), &["--alert-timeout", "60s"]);
    let monitor = stack.monitor(&list);

    wait_for(
        Duration::from_secs(60),
        "the down notification's request, unanswered",
        || async {
            hook.deliveries()
                .iter()
                .any(|d| d.key.as_deref().is_some_and(|k| k.ends_with("-down")))
        },
    )
    .await;
    first.signal("KILL");
    let (code, _, _) = first.wait(Duration::from_secs(10));
    assert_eq!(code, None, "killed by the signal");
    // The state moved (the incident is open), the send never settled.
    let open = incidents(&stack.db).await;
    assert_eq!(open.len(), 1, "the incident: {open:?}");
    let pending = outbox(&stack.db).await;
    assert_eq!(
        (pending[0].0.as_str(), pending[0].1, pending[0].2),
        ("down", false, 0),
        "the down notification still pending, never attempted as far as the table knows"
    );

    hook.hang(false);
    let second = stack.consumer("g", &hook.url(), &[]);
    let restarted = Instant::now();
    wait_sites_settled(&stack.db, &[(&flaky, 6)], Duration::from_secs(60)).await;
    wait_outbox_sent(&stack.db, 2, Duration::from_secs(60)).await;
    eprintln!(
        "both notifications sent {:?} after the second consumer started",
        restarted.elapsed()
    );

    let notes = notes(&hook);
    let accepted = accepted_once(&notes);
    let incidents = assert_incidents_follow_the_probes(&stack.db).await;
    assert_eq!(
        incidents.len(),
        1,
        "one incident, not reopened by the redelivery"
    );
    assert_in_order_per_site(&accepted, &incidents);
    let down_key = format!("incident-{}-down", incidents[0].id);
    let down: Vec<bool> = notes
        .iter()
        .filter(|n| n.key == down_key)
        .map(|n| n.accepted)
        .collect();
    assert_eq!(
        down,
        [false, true],
        "the down notification: the request the killed consumer sent, never answered, then the next consumer's, accepted"
    );
    assert_eq!(notes.len(), 3, "nothing else sent: {notes:?}");
    stop(monitor);
    stop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_owed_while_the_webhook_is_down_for_a_minute_arrive_in_order_after() {
    const OUTAGE: Duration = Duration::from_secs(60);
    let stack = Stack::start(2);
    // The webhook's port, held by a socket that does not listen: connections are refused.
    let held = tokio::net::TcpSocket::new_v4().expect("socket");
    held.bind(([127, 0, 0, 1], 0).into()).expect("bind");
    let addr = held.local_addr().expect("address");
    let hook_url = format!("http://{addr}/hook");
    // Two incidents on one site, one on another.
    let twice = site(&cycles(2, 3, 3)).await;
    let late = site(&[200, 200, 200, 200, 500, 500, 500, 500]).await;
    let list = stack.site_list(&[&twice, &late], "0.5");
    let consumer = stack.consumer("g", &hook_url, &["--alert-retry-max", "3s"]);
    let monitor = stack.monitor(&list);
    let outage_began = Instant::now();

    wait_sites_settled(
        &stack.db,
        &[(&twice, 15), (&late, 11)],
        OUTAGE - Duration::from_secs(15),
    )
    .await;
    // Metrics kept landing while no notification could go: rows grow in every 10 s of the outage.
    let mut rows = stack.rows().await;
    let mut checkpoint = outage_began;
    while checkpoint + Duration::from_secs(10) <= outage_began + OUTAGE {
        checkpoint += Duration::from_secs(10);
        tokio::time::sleep(checkpoint.saturating_duration_since(Instant::now())).await;
        let now = stack.rows().await;
        assert!(
            now > rows,
            "metrics rows landed in the 10 s before {:?} of the outage",
            checkpoint - outage_began
        );
        rows = now;
    }
    let owed = outbox(&stack.db).await;
    assert_eq!(
        owed.len(),
        6,
        "3 incidents opened and resolved meanwhile: {owed:?}"
    );
    assert!(
        owed.iter().all(|(_, sent, _, _)| !sent),
        "nothing sent: {owed:?}"
    );
    assert!(
        owed.iter()
            .any(|(_, _, attempts, error)| *attempts > 1 && error.is_some()),
        "the sender kept trying: {owed:?}"
    );

    drop(held);
    let hook = WebhookReceiver::start_on(addr)
        .await
        .expect("receiver back on its port");
    let back = Instant::now();
    wait_outbox_sent(&stack.db, 6, Duration::from_secs(30)).await;
    let caught_up = back.elapsed();

    let notes = notes(&hook);
    let accepted = accepted_once(&notes);
    assert_eq!(accepted.len(), 6, "every notification owed: {notes:?}");
    let incidents = assert_incidents_follow_the_probes(&stack.db).await;
    assert_in_order_per_site(&accepted, &incidents);
    eprintln!("the 6 notifications owed were all sent {caught_up:?} after the webhook came back");
    stop(monitor);
    stop(consumer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_in_one_group_with_a_rebalance_mid_stream_double_no_notification() {
    const SITES: usize = 6;
    const CYCLES: usize = 10;
    let stack = Stack::start(4);
    let hook = WebhookReceiver::start().await.expect("receiver");
    // Each site goes down and up CYCLES times, the sites a few probes apart.
    let mut sites = Vec::new();
    for i in 0..SITES {
        let statuses = [vec![200; 2 * i], cycles(CYCLES, 3, 3)].concat();
        sites.push((site(&statuses).await, statuses.len()));
    }
    let receivers: Vec<&WebhookReceiver> = sites.iter().map(|(s, _)| s).collect();
    let list = stack.site_list(&receivers, "0.3");
    let a = stack.consumer("shared", &hook.url(), &[]);
    let monitor = stack.monitor(&list);

    wait_for(
        Duration::from_secs(60),
        "the first incidents resolved",
        || async {
            count_once_created(&stack.db, "SELECT count(resolved_at) FROM incidents").await >= 2
        },
    )
    .await;
    let b = stack.consumer("shared", &hook.url(), &[]);
    let started = Instant::now();
    loop {
        let assigned = b.log_until("partitions assigned", Duration::from_secs(60));
        if assigned["partitions"] != "[]" {
            break;
        }
    }
    let rebalanced = started.elapsed();
    let before = count(
        &stack.db,
        "SELECT count(*) + count(resolved_at) FROM incidents",
    )
    .await;

    let settled: Vec<(&WebhookReceiver, usize)> = sites.iter().map(|(s, n)| (s, n + 3)).collect();
    wait_sites_settled(&stack.db, &settled, Duration::from_secs(120)).await;
    let transitions = count(
        &stack.db,
        "SELECT count(*) + count(resolved_at) FROM incidents",
    )
    .await;
    wait_outbox_sent(&stack.db, transitions, Duration::from_secs(60)).await;
    assert!(
        transitions > before,
        "sites moved after the rebalance ({before} transitions before it, {transitions} in all)"
    );

    let notes = notes(&hook);
    let accepted = accepted_once(&notes);
    assert_eq!(
        notes.len(),
        accepted.len(),
        "no request refused or unanswered"
    );
    let incidents = assert_incidents_follow_the_probes(&stack.db).await;
    assert!(
        incidents.iter().all(|i| i.resolved_by.is_some()),
        "every incident resolved"
    );
    assert_eq!(
        i64::try_from(accepted.len()).expect("fits"),
        2 * i64::try_from(incidents.len()).expect("fits"),
        "a down and an up per incident"
    );
    assert_eq!(
        count(&stack.db, "SELECT count(sent_at) FROM alert_outbox").await,
        i64::try_from(accepted.len()).expect("fits"),
        "one accepted request per sent row"
    );
    assert_in_order_per_site(&accepted, &incidents);
    let probes = probes(&stack.db).await;
    let lined_up = sites.iter().all(|(s, _)| {
        probes[&s.url()]
            .iter()
            .filter(|p| p.error.is_some())
            .count()
            == 0
    });
    if lined_up {
        assert_eq!(incidents.len(), SITES * CYCLES, "every cycle an incident");
    }
    stop(monitor);
    let (_, a_log) = a.stop(Duration::from_secs(30));
    let (_, b_log) = b.stop(Duration::from_secs(30));
    // Both senders took rows from the one outbox, so "never twice" was put to the test.
    let (by_a, by_b) = (sent_by(&a_log), sent_by(&b_log));
    assert!(
        by_a > 0 && by_b > 0,
        "both consumers sent notifications: {by_a} and {by_b} (of B's, those after its assignment)"
    );
    eprintln!(
        "rebalanced {rebalanced:?} after the second consumer started; \
         {transitions} transitions, {before} before it; sent by A {by_a}, by B {by_b}+"
    );
}

/// How many notifications a consumer's log says it sent.
fn sent_by(log: &[String]) -> usize {
    log.iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "alerts: notification sent")
        .count()
}
