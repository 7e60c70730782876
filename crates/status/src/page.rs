//! The status page's HTML, rendered on the server with maud (every value
//! escaped): the overview of every site and a page per site. No JavaScript:
//! filters are a GET form, charts are inline SVG, and the page reloads
//! itself every refresh.

use chrono::{DateTime, Utc};
use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::overview::{Page, Query, Snapshot, Sort};
use crate::read::{Incident, Options, Point, Site, State};
use crate::svg;

/// What every page shows around its content.
#[derive(Debug, Clone)]
pub struct Frame<'a> {
    /// The page title setting.
    pub title: &'a str,
    /// Seconds between reloads.
    pub refresh_seconds: u64,
}

impl<'a> Frame<'a> {
    /// The frame of a service titled `title` that reads every `refresh`.
    pub fn new(title: &'a str, refresh: std::time::Duration) -> Frame<'a> {
        Frame {
            title,
            refresh_seconds: refresh.as_secs().max(1),
        }
    }
}

const STYLE: &str = "
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1f2328;background:#f6f8fa}
header,main,footer{max-width:1100px;margin:0 auto;padding:0 16px}
header h1{font-size:1.4em;margin:16px 0 4px}
a{color:#0969da;text-decoration:none}a:hover{text-decoration:underline}
table{border-collapse:collapse;width:100%;background:#fff;font-size:.9em}
th,td{padding:6px 8px;border-bottom:1px solid #d0d7de;text-align:left;vertical-align:middle}
th{background:#eaeef2}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.state{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:600;font-size:.85em;color:#fff}
.state.up{background:#2da44e}.state.down{background:#cf222e}.state.unknown{background:#8c959f}
tr.down td{background:#fff1f0}
.counts span{margin-right:12px}
form.filters{margin:12px 0;display:flex;gap:8px;flex-wrap:wrap;align-items:center}
.err{color:#cf222e;max-width:320px;overflow-wrap:anywhere}
.muted{color:#57606a;font-size:.85em}
nav.pages{margin:12px 0}nav.pages a,nav.pages span{margin-right:8px}
.ranges a{margin-right:10px}.ranges a.on{font-weight:700;color:#1f2328}
section{margin:18px 0}
code{background:#eaeef2;padding:1px 4px;border-radius:4px;overflow-wrap:anywhere}
";

/// A time as the page shows it.
fn at(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A span of seconds as `2d 3h`, `4h 5m`, `6m 7s`.
pub fn span(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) => format!("{m}m {sec}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

fn pct(p: Option<f64>) -> String {
    p.map_or_else(|| "–".to_owned(), |p| format!("{p:.2}%"))
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.0} ms"))
}

fn state_label(state: State) -> Markup {
    html! { span class={ "state " (state.as_str()) } { (state.as_str()) } }
}

fn frame(frame: &Frame<'_>, subtitle: &str, body: &Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta http-equiv="refresh" content=(frame.refresh_seconds);
                title { (subtitle) " · " (frame.title) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    h1 { a href="/" { (frame.title) } }
                    div class="muted" { (subtitle) }
                }
                main { (body) }
                footer class="muted" {
                    p { "Reloads every " (frame.refresh_seconds) " s. "
                        a href="/api/sites" { "JSON API" } " · " a href="/openapi.json" { "OpenAPI" } }
                }
            }
        }
    }
}

/// The overview query as a link's query string, with `page` set.
fn link(query: &Query, page: usize) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    if let Some(state) = query.state {
        q.append_pair("state", state.as_str());
    }
    if let Some(search) = &query.search {
        q.append_pair("q", search);
    }
    if query.sort != Sort::default() {
        q.append_pair("sort", query.sort.as_str());
    }
    if page > 1 {
        q.append_pair("page", &page.to_string());
    }
    let q = q.finish();
    if q.is_empty() {
        "/".to_owned()
    } else {
        format!("/?{q}")
    }
}

/// The overview: counts by state, the filter form, a page of sites.
pub fn overview(frame_: &Frame<'_>, snapshot: &Snapshot, query: &Query, page: &Page<'_>) -> Markup {
    let [up, down, unknown] = page.counts;
    let body = html! {
        p class="counts" {
            span { (state_label(State::Up)) " " (up) }
            span { (state_label(State::Down)) " " (down) }
            span { (state_label(State::Unknown)) " " (unknown) }
        }
        form class="filters" method="get" action="/" {
            label { "State "
                select name="state" {
                    option value="" selected[query.state.is_none()] { "all" }
                    @for s in [State::Up, State::Down, State::Unknown] {
                        option value=(s.as_str()) selected[query.state == Some(s)] { (s.as_str()) }
                    }
                }
            }
            label { "URL contains " input type="search" name="q" value=[query.search.as_deref()]; }
            label { "Sort "
                select name="sort" {
                    @for s in [Sort::State, Sort::Url, Sort::Uptime, Sort::Latency] {
                        option value=(s.as_str()) selected[query.sort == s] { (s.as_str()) }
                    }
                }
            }
            button type="submit" { "Show" }
            span class="muted" { (page.matching) " sites" }
        }
        table {
            thead { tr {
                th { "Site" } th { "State" } th { "Since" }
                th { "Up 24h" } th { "7d" } th { "30d" }
                th { "p50 24h" } th { "p95 24h" } th { "Latency 24h" }
                th { "Certificate" } th { "Last error" }
            } }
            tbody {
                @for site in &page.sites {
                    (row(site, snapshot.taken_at))
                }
            }
        }
        @if page.sites.is_empty() { p { "No site matches." } }
        nav class="pages" {
            @if query.page > 1 { a href=(link(query, query.page - 1)) rel="prev" { "← previous" } }
            span { "page " (query.page.max(1)) " of " (page.pages) }
            @if query.page.max(1) < page.pages { a href=(link(query, query.page.max(1) + 1)) rel="next" { "next →" } }
        }
    };
    let subtitle = format!(
        "{} sites, as of {}",
        snapshot.sites.len(),
        at(snapshot.taken_at)
    );
    frame(frame_, &subtitle, &body)
}

fn row(site: &Site, now: DateTime<Utc>) -> Markup {
    let last = site.last.as_ref();
    let error = last.and_then(|l| {
        l.failed
            .clone()
            .or_else(|| {
                l.error
                    .as_deref()
                    .map(|e| format!("{}: {e}", l.error_kind.as_deref().unwrap_or("error")))
            })
            .or_else(|| l.status.filter(|&s| s >= 400).map(|s| format!("HTTP {s}")))
    });
    // A long error would make its row a column of text: cut, whole on hover.
    let shown = error.as_deref().map(|e| cut(e, ERROR_SHOWN));
    let cert_days = last
        .and_then(|l| l.tls_expires_at)
        .map(|t| (t - now).num_days());
    html! {
        tr class=(site.state.as_str()) {
            td { a href={ "/sites/" (site.id) } { (site.url) } }
            td { (state_label(site.state)) }
            td class="muted" { @if let Some(since) = site.since { (span((now - since).num_seconds() as f64)) } }
            td class="num" { (pct(site.uptime_pct.day)) }
            td class="num" { (pct(site.uptime_pct.week)) }
            td class="num" { (pct(site.uptime_pct.month)) }
            td class="num" { (ms(site.latency_24h.p50_ms)) }
            td class="num" { (ms(site.latency_24h.p95_ms)) }
            td { @if !site.latency_24h.hourly_p50_ms.is_empty() { (svg::sparkline(&site.latency_24h.hourly_p50_ms, 96, 20)) } }
            td class="num" { @if let Some(days) = cert_days { (days) " days" } }
            td class="err" title=[error.as_deref()] { @if let Some(shown) = shown { (shown) } }
        }
    }
}

/// Characters of an error the overview shows.
const ERROR_SHOWN: usize = 90;

/// `text`, cut to `max` characters with an ellipsis.
fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let kept: String = text.chars().take(max - 1).collect();
    format!("{kept}…")
}

/// The ranges a site's page offers: name, length in seconds, step in seconds.
pub const RANGES: [(&str, u64, u64); 4] = [
    ("24h", 86_400, 3600),
    ("7d", 7 * 86_400, 6 * 3600),
    ("30d", 30 * 86_400, 86_400),
    ("1y", 364 * 86_400, 7 * 86_400),
];

/// What a site's page shows.
#[derive(Debug)]
pub struct SitePage<'a> {
    /// The site as of the last overview (none when it is newer than that).
    pub site: Option<&'a Site>,
    /// The site's id.
    pub id: i64,
    /// Its options.
    pub options: &'a Options,
    /// Its history over the range.
    pub history: &'a [Point],
    /// The range's name, from [`RANGES`].
    pub range: &'a str,
    /// The range's steps, oldest first.
    pub steps: Vec<DateTime<Utc>>,
    /// Its incidents, newest first.
    pub incidents: &'a [Incident],
    /// When the page was made.
    pub now: DateTime<Utc>,
}

/// A site's page: its state, its history over a range, its incidents, its options.
pub fn site(frame_: &Frame<'_>, p: &SitePage<'_>) -> Markup {
    let url = p.site.map_or("(new site)", |s| s.url.as_str());
    let steps: Vec<svg::Step> = p
        .steps
        .iter()
        .map(|start| {
            let point = p.history.iter().find(|h| h.at == *start);
            svg::Step {
                label: at(*start),
                uptime_pct: point.and_then(|h| h.uptime_pct),
                avg_ms: point.and_then(|h| h.latency_avg_ms),
                p95_ms: point.and_then(|h| h.latency_p95_ms),
            }
        })
        .collect();
    let probes: i64 = p.history.iter().map(|h| h.probes).sum();
    let up: i64 = p.history.iter().map(|h| h.up).sum();
    let checks = serde_json::to_string_pretty(&p.options.checks).unwrap_or_default();
    let body = html! {
        @if let Some(site) = p.site {
            p {
                (state_label(site.state))
                @if let Some(since) = site.since { " since " (at(since)) " (" (span((p.now - since).num_seconds() as f64)) ")" }
            }
            table { tbody {
                tr { th { "Uptime 24h / 7d / 30d" } td { (pct(site.uptime_pct.day)) " / " (pct(site.uptime_pct.week)) " / " (pct(site.uptime_pct.month)) } }
                tr { th { "Latency 24h p50 / p95" } td { (ms(site.latency_24h.p50_ms)) " / " (ms(site.latency_24h.p95_ms)) } }
                @if let Some(last) = &site.last {
                    tr { th { "Last probe" } td {
                        (at(last.at)) ": "
                        @if let Some(status) = last.status { "HTTP " (status) " in " (format!("{:.0}", last.latency_ms)) " ms" }
                        @if let Some(error) = &last.error { span class="err" { " " (last.error_kind.as_deref().unwrap_or("error")) ": " (error) } }
                    } }
                    @if let Some(expires) = last.tls_expires_at {
                        tr { th { "Certificate expires" } td { (at(expires)) " (" ((expires - p.now).num_days()) " days)" } }
                    }
                }
            } }
        } @else {
            p class="muted" { "Not in the overview yet: it appears at the next refresh." }
        }
        section {
            h2 { "History" }
            p class="ranges" {
                @for (name, _, _) in RANGES {
                    a class=[(name == p.range).then_some("on")] href={ "/sites/" (p.id) "?range=" (name) } { (name) }
                }
                span class="muted" { (probes) " probes, " (pct((probes > 0).then(|| 100.0 * up as f64 / probes as f64))) " up" }
            }
            (svg::history(&steps, 1000, 180))
        }
        section {
            h2 { "Incidents" }
            @if p.incidents.is_empty() {
                p class="muted" { "None." }
            } @else {
                table {
                    thead { tr { th { "Opened" } th { "Resolved" } th { "Duration" } th { "Failed check" } th { "Message" } } }
                    tbody {
                        @for incident in p.incidents {
                            tr class=(if incident.resolved_at.is_none() { "down" } else { "" }) {
                                td { (at(incident.opened_at)) }
                                td { @match incident.resolved_at { Some(t) => (at(t)), None => (state_label(State::Down)) } }
                                td class="num" { (span(incident.duration_seconds)) @if incident.resolved_at.is_none() { " so far" } }
                                td { (incident.failed_condition) }
                                td class="err" { (incident.failed_message) }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Checks" }
            table { tbody {
                tr { th { "Interval" } td { @if let Some(s) = p.options.interval_seconds { (s) " s" } @else { span class="muted" { "not known here: the monitor reads its site list from a file" } } } }
                tr { th { "Timeout" } td { @if let Some(s) = p.options.timeout_seconds { (s) " s" } @else { "the monitor's default" } } }
                tr { th { "Body regex" } td { @if let Some(r) = &p.options.regex { code { (r) } } @else { "–" } } }
                tr { th { "Options" } td { pre { code { (checks) } } } }
            } }
            p class="muted" { "Header values, request bodies, credentials and passwords in URLs are never shown." }
        }
        section {
            h2 { "Badges" }
            p {
                img src={ "/badge/" (p.id) "/state.svg" } alt="state";
                " "
                img src={ "/badge/" (p.id) "/uptime/30d.svg" } alt="uptime over 30 days";
            }
            p class="muted" { "Embed: " code { "/badge/" (p.id) "/state.svg" } ", " code { "/badge/" (p.id) "/uptime/24h.svg" } " (or 7d, 30d)" }
        }
    };
    frame(frame_, url, &body)
}

/// A page that says what went wrong.
pub fn error(frame_: &Frame<'_>, message: &str) -> Markup {
    frame(
        frame_,
        "Error",
        &html! { p class="err" { (message) } p { a href="/" { "All sites" } } },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_as_the_two_largest_units() {
        for (seconds, shown) in [
            (0.0, "0s"),
            (59.9, "59s"),
            (61.0, "1m 1s"),
            (3_725.0, "1h 2m"),
            (90_061.0, "1d 1h"),
            (-5.0, "0s"),
        ] {
            assert_eq!(span(seconds), shown, "{seconds}");
        }
    }

    #[test]
    fn long_errors_are_cut_by_characters() {
        assert_eq!(cut("short", 10), "short");
        assert_eq!(cut("ééééééé", 4), "ééé…");
        assert_eq!(
            cut(&"x".repeat(200), ERROR_SHOWN).chars().count(),
            ERROR_SHOWN
        );
    }

    #[test]
    fn links_keep_the_query_and_encode_it() {
        let query = Query {
            state: Some(State::Down),
            search: Some("a&b <c>".to_owned()),
            sort: Sort::Url,
            page: 1,
        };
        assert_eq!(
            link(&query, 2),
            "/?state=down&q=a%26b+%3Cc%3E&sort=url&page=2"
        );
        assert_eq!(link(&Query::default(), 1), "/");
    }
}
