//! Probes against real local servers that behave like websites.

use std::time::{Duration, UNIX_EPOCH};

use sitewatch_metric::{ErrorKind, Metric};
use sitewatch_monitor::probe::{ProbeSettings, Prober};
use sitewatch_monitor::targets::{parse_url, SiteRegex, Target};
use sitewatch_sitefarm::{FarmOptions, SiteFarm};

struct Bench {
    farm: SiteFarm,
    prober: Prober,
    _ca_dir: tempfile::TempDir,
}

async fn bench() -> Bench {
    bench_with(ProbeSettings::default()).await
}

async fn bench_with(mut settings: ProbeSettings) -> Bench {
    let farm = SiteFarm::start(FarmOptions::default())
        .await
        .expect("site farm starts");
    let ca_dir = tempfile::tempdir().expect("tempdir");
    let ca = ca_dir.path().join("ca.pem");
    std::fs::write(&ca, farm.ca_pem()).expect("write CA");
    settings.ca_file = Some(ca);
    let prober = Prober::new(settings).expect("prober");
    Bench {
        farm,
        prober,
        _ca_dir: ca_dir,
    }
}

fn site(url: &str, regex: Option<&str>, timeout: Option<Duration>) -> Target {
    let url = parse_url(url).expect("url");
    Target {
        id: url.to_string(),
        url,
        interval: Duration::from_secs(30),
        regex: regex.map(|r| SiteRegex::new(r).expect("regex")),
        timeout,
        checks: Default::default(),
    }
}

impl Bench {
    /// A probe of the farm's page at `path`.
    async fn probe(&self, path: &str, regex: Option<&str>) -> Metric {
        self.probe_url(&self.farm.url(path), regex).await
    }

    /// A probe of `path` with `timeout` times out after the head (a 200) arrived.
    async fn assert_body_times_out(&self, path: &str, timeout: Duration) {
        let t = site(&self.farm.url(path), None, Some(timeout));
        let o = self.prober.probe(&t).await;
        assert_eq!(kind(&o), Some(ErrorKind::Timeout), "{o:?}");
        assert_eq!(o.status, Some(200), "the head arrived before the timeout");
    }

    /// A probe of `url`, anywhere.
    async fn probe_url(&self, url: &str, regex: Option<&str>) -> Metric {
        self.prober.probe(&site(url, regex, None)).await
    }
}

fn kind(o: &Metric) -> Option<ErrorKind> {
    o.error.as_ref().map(|e| e.kind)
}

/// The probe failed with `expected` before any response, so it has no status.
fn assert_failed(o: &Metric, expected: ErrorKind) {
    assert_eq!(kind(o), Some(expected), "{o:?}");
    assert_eq!(o.status, None, "{o:?}");
}

#[tokio::test]
async fn ok_page_with_and_without_a_regex_match() {
    let b = bench().await;
    let hit = b.probe("/ok", Some("Welcome to [a-z]+")).await;
    assert_eq!(hit.status, Some(200), "{hit:?}");
    assert_eq!(hit.error, None);
    assert_eq!(hit.regex_matched, Some(true));
    assert_eq!(hit.regex_match.as_deref(), Some("Welcome to sitefarm"));
    assert!(hit.body_bytes > 0 && !hit.body_truncated);
    assert_eq!(hit.final_url.as_deref(), Some(b.farm.url("/ok").as_str()));

    let miss = b.probe("/ok", Some("Goodbye")).await;
    assert_eq!(miss.status, Some(200));
    assert_eq!(miss.regex_matched, Some(false));
    assert_eq!(miss.regex_match, None);

    let none = b.probe("/ok", None).await;
    assert_eq!(none.regex_matched, None);
}

#[tokio::test]
async fn error_statuses_are_responses_not_errors() {
    let b = bench().await;
    for code in [404u16, 500, 503] {
        let o = b.probe(&format!("/status/{code}"), None).await;
        assert_eq!(o.status, Some(code), "{o:?}");
        assert_eq!(o.error, None, "an HTTP error status is a response");
    }
}

#[tokio::test]
async fn a_slow_response_past_the_timeout() {
    let b = bench().await;
    let slow_head = site(
        &b.farm.url("/slow/3000"),
        None,
        Some(Duration::from_millis(300)),
    );
    let o = b.prober.probe(&slow_head).await;
    assert_failed(&o, ErrorKind::Timeout);
    assert!(
        o.timings.total_us >= 300_000 && o.timings.total_us < 2_000_000,
        "{:?}",
        o.timings
    );

    b.assert_body_times_out("/slow-body/3000", Duration::from_millis(300))
        .await;
}

#[tokio::test]
async fn the_timeout_never_exceeds_the_interval() {
    let b = bench().await;
    let mut t = site(&b.farm.url("/slow/3000"), None, None);
    t.interval = Duration::from_millis(400);
    let o = b.prober.probe(&t).await;
    assert_eq!(kind(&o), Some(ErrorKind::Timeout));
    assert!(
        o.timings.total_us < 1_500_000,
        "default 10 s cut to the 400 ms interval: {:?}",
        o.timings
    );
}

#[tokio::test]
async fn redirect_chain_is_followed_and_the_final_url_kept() {
    let b = bench().await;
    let o = b.probe("/redirect/3", Some("chain done")).await;
    assert_eq!(o.status, Some(200), "{o:?}");
    assert_eq!(o.redirects, 3);
    assert_eq!(
        o.final_url.as_deref(),
        Some(b.farm.url("/redirect/0").as_str())
    );
    assert_eq!(o.regex_matched, Some(true));
}

#[tokio::test]
async fn redirect_loop_and_too_many_redirects() {
    let b = bench_with(ProbeSettings {
        max_redirects: 5,
        ..ProbeSettings::default()
    })
    .await;
    let o = b.probe("/loop/a", None).await;
    assert_eq!(kind(&o), Some(ErrorKind::Redirect), "{o:?}");
    assert!(
        o.error.as_ref().is_some_and(|e| e.message.contains("loop")),
        "{o:?}"
    );
    assert_eq!(o.status, None);

    let o = b.probe("/redirect/8", None).await;
    assert_eq!(kind(&o), Some(ErrorKind::Redirect), "{o:?}");
    assert!(
        o.error
            .as_ref()
            .is_some_and(|e| e.message.contains("more than 5")),
        "{o:?}"
    );
}

#[tokio::test]
async fn a_body_over_the_cap_is_cut_there() {
    let b = bench_with(ProbeSettings {
        body_cap: 64 * 1024,
        ..ProbeSettings::default()
    })
    .await;
    let o = b.probe("/big/5000000", None).await;
    assert_eq!(o.status, Some(200));
    assert_eq!(o.body_bytes, 64 * 1024);
    assert!(o.body_truncated);
    assert_eq!(o.error, None);

    let exact = b.probe("/big/65536", None).await;
    assert_eq!(exact.body_bytes, 65_536);
    assert!(!exact.body_truncated, "a body of exactly the cap is whole");
}

#[tokio::test]
async fn gzip_bodies_are_decoded_before_the_regex() {
    let b = bench().await;
    let o = b.probe("/gzip", Some("compressed hello")).await;
    assert_eq!(o.status, Some(200), "{o:?}");
    assert_eq!(o.regex_matched, Some(true), "{o:?}");
}

#[tokio::test]
async fn non_utf8_bodies_still_match() {
    let b = bench().await;
    let o = b.probe("/binary", Some("marker-[0-9]+")).await;
    assert_eq!(o.regex_matched, Some(true), "{o:?}");
    assert_eq!(o.regex_match.as_deref(), Some("marker-42"));
}

#[tokio::test]
async fn a_refused_port_is_a_connect_error() {
    let b = bench().await;
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let o = b
        .probe_url(&format!("http://127.0.0.1:{port}/"), None)
        .await;
    assert_failed(&o, ErrorKind::Connect);
    assert_eq!(o.timings.dns_us, None, "an IP address needs no lookup");
}

#[tokio::test]
async fn an_unresolvable_host_is_a_dns_error() {
    let b = bench().await;
    let o = b.probe_url("http://no-such-host.invalid/", None).await;
    assert_failed(&o, ErrorKind::Dns);
    assert!(o.timings.dns_us.is_some());
}

#[tokio::test]
async fn a_self_signed_certificate_is_a_tls_error() {
    let b = bench().await;
    let o = b.probe_url(&b.farm.self_signed_url("/ok"), None).await;
    assert_failed(&o, ErrorKind::Tls);
}

#[tokio::test]
async fn a_trusted_certificate_records_its_expiry_and_the_phases() {
    let b = bench().await;
    let o = b.probe_url(&b.farm.https_url("/ok"), Some("Welcome")).await;
    assert_eq!(o.status, Some(200), "{o:?}");
    let expected = b
        .farm
        .leaf_not_after()
        .duration_since(UNIX_EPOCH)
        .expect("after epoch")
        .as_secs();
    let got = o.tls_expires_at.expect("expiry recorded").timestamp();
    assert_eq!(u64::try_from(got).ok(), Some(expected));
    let t = &o.timings;
    assert!(t.dns_us.is_some(), "localhost is looked up: {t:?}");
    assert!(t.connect_us.is_some_and(|c| c > 0), "{t:?}");
    assert!(t.ttfb_us.is_some() && t.body_us.is_some(), "{t:?}");
    let phases = t.dns_us.unwrap_or(0)
        + t.connect_us.unwrap_or(0)
        + t.ttfb_us.unwrap_or(0)
        + t.body_us.unwrap_or(0);
    assert!(
        phases <= t.total_us + 1_000,
        "phases add up to at most the total: {t:?}"
    );
}

#[tokio::test]
async fn a_connection_closed_without_a_response_is_not_a_status() {
    let b = bench().await;
    let o = b.probe("/reset", None).await;
    assert_eq!(o.status, None, "{o:?}");
    assert!(
        matches!(
            kind(&o),
            Some(ErrorKind::Other | ErrorKind::Connect | ErrorKind::Body)
        ),
        "{o:?}"
    );
}

#[tokio::test]
async fn a_redirect_to_a_metadata_address_is_refused_unless_allowed() {
    let b = bench().await;
    let o = b.probe("/to-metadata", None).await;
    assert_eq!(kind(&o), Some(ErrorKind::Redirect), "{o:?}");
    let message = &o.error.as_ref().expect("an error").message;
    assert!(
        message.contains("169.254.169.254") && message.contains("allow_link_local_redirects"),
        "{message}"
    );

    let allowed = bench_with(ProbeSettings {
        allow_link_local_redirects: true,
        timeout: Duration::from_millis(500).into(),
        ..ProbeSettings::default()
    })
    .await;
    let t = site(&allowed.farm.url("/to-metadata"), None, None);
    let o = allowed.prober.probe(&t).await;
    // Allowed, the probe goes there (whether anything answers depends on the machine).
    assert_ne!(kind(&o), Some(ErrorKind::Redirect), "{o:?}");
    assert_eq!(o.redirects, 1, "{o:?}");
}

#[tokio::test]
async fn credentials_in_the_url_authenticate_but_are_never_in_the_metric() {
    let b = bench().await;
    let with_secret = |url: &str| url.replacen("://", "://user:s3cret@", 1);
    let list = format!(
        "{},30\n{},30\nhttp://user:s3cret@127.0.0.1:1/,30\n",
        with_secret(&b.farm.url("/ok")),
        with_secret(&b.farm.url("/redirect/2")),
    );
    let targets = sitewatch_monitor::targets::parse_csv("sites.csv", &list).expect("a valid list");
    for target in &targets {
        let metric = b.prober.probe(target).await;
        let json = String::from_utf8(metric.to_json()).expect("utf-8");
        assert!(
            !json.contains("s3cret") && !json.contains("user@"),
            "{json}"
        );
    }
    let ok = b.prober.probe(&targets[0]).await;
    assert_eq!(ok.status, Some(200), "{ok:?}");
}

#[tokio::test]
async fn a_gzip_bomb_is_read_only_up_to_the_cap() {
    let b = bench().await;
    let o = b.probe("/gzip-bomb", None).await;
    assert_eq!(o.status, Some(200), "{o:?}");
    assert_eq!(o.error, None, "{o:?}");
    assert_eq!(
        o.body_bytes,
        ProbeSettings::default().body_cap as u64,
        "inflated only as far as the cap: {o:?}"
    );
    assert!(o.body_truncated, "{o:?}");
}

#[tokio::test]
async fn a_body_that_drips_forever_ends_at_the_timeout() {
    let b = bench().await;
    b.assert_body_times_out("/drip/20", Duration::from_millis(500))
        .await;
}

#[tokio::test]
async fn a_flood_of_headers_is_refused_and_the_next_probe_is_unharmed() {
    let b = bench().await;
    let o = b.probe("/headers/10000", None).await;
    assert_failed(&o, ErrorKind::Other);
    let message = &o.error.as_ref().expect("an error").message;
    assert!(message.contains("message head is too large"), "{message}");
    let next = b.probe("/ok", None).await;
    assert_eq!(next.status, Some(200), "{next:?}");
}

#[tokio::test]
async fn an_ipv6_literal_is_probed_and_published_with_its_brackets() {
    let farm = SiteFarm::start(FarmOptions {
        http: "[::1]:0".parse().expect("address"),
        ..FarmOptions::default()
    })
    .await
    .expect("a farm on ::1 (the loopback has IPv6 here)");
    let prober = Prober::new(ProbeSettings::default()).expect("prober");
    let url = farm.url("/ok");
    assert!(url.starts_with("http://[::1]:"), "{url}");
    let o = prober.probe(&site(&url, Some("Welcome"), None)).await;
    assert_eq!(o.status, Some(200), "{o:?}");
    assert_eq!(o.regex_matched, Some(true), "{o:?}");
    assert_eq!(o.url, url);
}

#[tokio::test]
async fn an_international_host_is_published_in_its_ascii_form() {
    let b = bench().await;
    // `.invalid` never resolves (RFC 6761): the DNS error is the expected end.
    let o = b.probe_url("http://bücher.invalid/", None).await;
    assert_failed(&o, ErrorKind::Dns);
    assert_eq!(o.url, "http://xn--bcher-kva.invalid/", "{o:?}");
}

#[tokio::test]
async fn a_redirect_from_https_to_http_is_followed_and_shows_in_the_final_url() {
    let b = bench().await;
    let plain = b.farm.url("/ok");
    let o = b
        .probe_url(
            &b.farm.https_url(&format!("/redirect-to?{plain}")),
            Some("Welcome"),
        )
        .await;
    assert_eq!(o.status, Some(200), "{o:?}");
    assert_eq!(o.redirects, 1, "{o:?}");
    assert_eq!(o.final_url.as_deref(), Some(plain.as_str()), "{o:?}");
    assert_eq!(o.regex_matched, Some(true), "{o:?}");
}
