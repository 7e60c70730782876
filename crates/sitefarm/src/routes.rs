//! What each path does: parsing a request path into a [`Route`] and answering it.

use std::io::{self, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_ENCODING, CONTENT_TYPE, LOCATION};
use hyper::{Method, Request, Response, StatusCode};

use crate::body::SiteBody;

/// Body of `/` and `/ok`.
const WELCOME_HTML: &str = "<!doctype html>\n\
<html><head><meta charset=\"utf-8\"><title>sitefarm</title></head>\n\
<body><h1>Welcome to sitefarm</h1><p>A local website for sitewatch tests, demos and benchmarks.</p></body></html>\n";

/// Text that `/gzip` compresses.
const GZIP_TEXT: &str = "compressed hello from sitefarm\n";

/// What `/gzip-bomb` inflates to: far past any prober's body cap (the
/// monitor's default is 1 MiB), small enough to compress quickly in a debug build.
const GZIP_BOMB_BYTES: usize = 16 * 1024 * 1024;

/// Headers `/headers/{n}` sends at most: far past any client's limit (a
/// hundred, for hyper), and within what one `HeaderMap` can hold.
const MAX_HEADERS: u64 = 10_000;

/// Body of `/binary`: invalid UTF-8 around an ASCII marker, to test byte-level matching.
const BINARY: &[u8] = b"\xff\xfe\x00\x80marker-42\xc3\x28\xff";

/// A request path, understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// `/` and `/ok`.
    Welcome,
    /// `/status/{code}`, for codes 200 to 599.
    Status(StatusCode),
    /// `/slow/{ms}`: the head waits.
    Slow(Duration),
    /// `/slow-body/{ms}`: the head goes at once, the body waits.
    SlowBody(Duration),
    /// `/redirect/{n}`.
    Redirect(u64),
    /// `/loop/a`.
    LoopA,
    /// `/loop/b`.
    LoopB,
    /// `/big/{bytes}`.
    Big(u64),
    /// `/gzip`.
    Gzip,
    /// `/binary`.
    Binary,
    /// `/site/{n}`.
    Site(u64),
    /// `/reset`.
    Reset,
    /// `/to-metadata`: a redirect to a cloud's metadata address.
    ToMetadata,
    /// `/redirect-to?{url}`: a redirect to the URL in the query, as written.
    RedirectTo,
    /// `/gzip-bomb`: a small gzip body that inflates to [`GZIP_BOMB_BYTES`] of zeros.
    GzipBomb,
    /// `/drip/{ms}`: the head at once, then one body byte every `ms`, forever.
    Drip(Duration),
    /// `/headers/{n}`: a response with `n` headers (at most [`MAX_HEADERS`]).
    Headers(u64),
    /// Anything else, including known prefixes with a malformed number.
    NotFound,
}

impl Route {
    /// Which route `path` (without the query) names.
    pub(crate) fn parse(path: &str) -> Self {
        match path {
            "/" | "/ok" => return Self::Welcome,
            "/loop/a" => return Self::LoopA,
            "/loop/b" => return Self::LoopB,
            "/gzip" => return Self::Gzip,
            "/binary" => return Self::Binary,
            "/reset" => return Self::Reset,
            "/to-metadata" => return Self::ToMetadata,
            "/redirect-to" => return Self::RedirectTo,
            "/gzip-bomb" => return Self::GzipBomb,
            _ => {}
        }
        let Some((prefix, arg)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
            return Self::NotFound;
        };
        let Some(n) = number(arg) else {
            return Self::NotFound;
        };
        match prefix {
            "status" => u16::try_from(n)
                .ok()
                .filter(|code| (200..=599).contains(code))
                .and_then(|code| StatusCode::from_u16(code).ok())
                .map_or(Self::NotFound, Self::Status),
            "slow" => Self::Slow(Duration::from_millis(n)),
            "slow-body" => Self::SlowBody(Duration::from_millis(n)),
            "redirect" => Self::Redirect(n),
            "big" => Self::Big(n),
            "site" => Self::Site(n),
            "drip" if n > 0 => Self::Drip(Duration::from_millis(n)),
            "headers" => Self::Headers(n.min(MAX_HEADERS)),
            _ => Self::NotFound,
        }
    }
}

/// A decimal number of plain ASCII digits; `str::parse` alone would also accept `+7`.
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Returned by the service for `/reset` so that hyper drops the connection without a response.
#[derive(Debug, thiserror::Error)]
#[error("the /reset route drops the connection without a response")]
pub(crate) struct ResetConnection;

/// Answers requests; cheap to clone (one per connection).
#[derive(Debug, Clone)]
pub(crate) struct Site {
    /// Compressed once at start so `/gzip` costs no CPU per request.
    gzip: Bytes,
    /// Shared with [`crate::SiteFarm`], so tests can tell what reached the farm.
    counts: Arc<RequestCounts>,
}

/// Requests the farm has seen, across all listeners.
#[derive(Debug, Default)]
pub(crate) struct RequestCounts {
    pub(crate) seen: AtomicU64,
    pub(crate) in_flight: AtomicU64,
}

/// Counts a request as in flight until dropped.
struct InFlight<'a>(&'a RequestCounts);

impl<'a> InFlight<'a> {
    fn start(counts: &'a RequestCounts) -> Self {
        let _ = counts.seen.fetch_add(1, Ordering::Relaxed);
        let _ = counts.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(counts)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let _ = self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Site {
    /// Prepares the bodies that are computed rather than constant.
    pub(crate) fn new(counts: Arc<RequestCounts>) -> io::Result<Self> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(GZIP_TEXT.as_bytes())?;
        Ok(Self {
            gzip: Bytes::from(encoder.finish()?),
            counts,
        })
    }

    /// Answers one request, or asks for the connection to be dropped.
    pub(crate) async fn respond(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<SiteBody>, ResetConnection> {
        let _in_flight = InFlight::start(&self.counts);
        if request.method() != Method::GET && request.method() != Method::HEAD {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return Ok(response);
        }
        let response = match Route::parse(request.uri().path()) {
            Route::Welcome => {
                let mut response = Response::new(SiteBody::bytes(WELCOME_HTML));
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
                response
            }
            Route::Status(code) => status(code),
            Route::Slow(delay) => {
                tokio::time::sleep(delay).await;
                text(
                    StatusCode::OK,
                    format!("slow response after {} ms", delay.as_millis()),
                )
            }
            Route::SlowBody(delay) => with_text_type(Response::new(SiteBody::delayed(
                delay,
                format!("slow body after {} ms", delay.as_millis()),
            ))),
            Route::Redirect(0) => text(StatusCode::OK, "redirect chain done"),
            Route::Redirect(n) => redirect(format!("/redirect/{}", n - 1)),
            Route::LoopA => redirect("/loop/b".to_owned()),
            Route::LoopB => redirect("/loop/a".to_owned()),
            Route::Big(len) => {
                // hyper would derive Content-Length from the size hint too; being explicit
                // keeps it there whatever the protocol.
                let mut response = Response::new(SiteBody::filler(len));
                let headers = response.headers_mut();
                headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                headers.insert(hyper::header::CONTENT_LENGTH, HeaderValue::from(len));
                response
            }
            Route::Gzip => {
                let mut response =
                    with_text_type(Response::new(SiteBody::bytes(self.gzip.clone())));
                response
                    .headers_mut()
                    .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                response
            }
            Route::Binary => {
                let mut response = Response::new(SiteBody::bytes(BINARY));
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                response
            }
            Route::Site(n) => text(StatusCode::OK, format!("site {n} ok")),
            Route::Reset => return Err(ResetConnection),
            Route::ToMetadata => redirect(METADATA_URL.to_owned()),
            Route::RedirectTo => redirect(request.uri().query().unwrap_or("/").to_owned()),
            Route::GzipBomb => {
                // Compressed on first use, off the runtime's workers.
                let bomb = tokio::task::spawn_blocking(|| gzip_bomb().clone())
                    .await
                    .unwrap_or_default();
                let mut response = Response::new(SiteBody::bytes(bomb));
                response
                    .headers_mut()
                    .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                response
            }
            Route::Drip(every) => with_text_type(Response::new(SiteBody::drip(every))),
            Route::Headers(n) => {
                let mut response = text(StatusCode::OK, format!("{n} headers"));
                let headers = response.headers_mut();
                for i in 0..n {
                    if let Ok(name) = hyper::header::HeaderName::try_from(format!("x-sitefarm-{i}"))
                    {
                        headers.insert(name, HeaderValue::from_static("hostile"));
                    }
                }
                response
            }
            Route::NotFound => text(StatusCode::NOT_FOUND, "not found"),
        };
        Ok(response)
    }
}

/// The `/gzip-bomb` body, compressed on first use and shared by every farm
/// in the process (most farms never serve it).
fn gzip_bomb() -> &'static Bytes {
    static BOMB: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    BOMB.get_or_init(|| {
        let zeros = vec![0u8; 1024 * 1024];
        let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
        for _ in 0..GZIP_BOMB_BYTES / zeros.len() {
            // Writing into a Vec cannot fail.
            let _ = encoder.write_all(&zeros);
        }
        Bytes::from(encoder.finish().unwrap_or_default())
    })
}

fn with_text_type(mut response: Response<SiteBody>) -> Response<SiteBody> {
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn text(code: StatusCode, body: impl Into<Bytes>) -> Response<SiteBody> {
    let mut response = with_text_type(Response::new(SiteBody::bytes(body)));
    *response.status_mut() = code;
    response
}

fn status(code: StatusCode) -> Response<SiteBody> {
    // These statuses must not carry a body.
    if matches!(code.as_u16(), 204 | 205 | 304) {
        let mut response = Response::new(SiteBody::empty());
        *response.status_mut() = code;
        return response;
    }
    let reason = code.canonical_reason().unwrap_or("");
    text(
        code,
        format!("{} {reason}", code.as_u16()).trim_end().to_owned(),
    )
}

/// Where `/to-metadata` sends a client: the link-local address clouds serve
/// instance credentials on, which a prober must not be led to.
pub const METADATA_URL: &str = "http://169.254.169.254/latest/meta-data/";

fn redirect(location: String) -> Response<SiteBody> {
    let body = format!("redirecting to {location}");
    match HeaderValue::try_from(location) {
        Ok(location) => {
            let mut response = text(StatusCode::FOUND, body);
            response.headers_mut().insert(LOCATION, location);
            response
        }
        // Unreachable with the ASCII paths built above, but a 500 beats a panic.
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "bad redirect location"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_paths() {
        assert_eq!(Route::parse("/"), Route::Welcome);
        assert_eq!(Route::parse("/ok"), Route::Welcome);
        assert_eq!(Route::parse("/loop/a"), Route::LoopA);
        assert_eq!(Route::parse("/loop/b"), Route::LoopB);
        assert_eq!(Route::parse("/gzip"), Route::Gzip);
        assert_eq!(Route::parse("/binary"), Route::Binary);
        assert_eq!(Route::parse("/reset"), Route::Reset);
        assert_eq!(Route::parse("/to-metadata"), Route::ToMetadata);
        assert_eq!(Route::parse("/redirect-to"), Route::RedirectTo);
        assert_eq!(Route::parse("/gzip-bomb"), Route::GzipBomb);
        assert_eq!(
            Route::parse("/drip/100"),
            Route::Drip(Duration::from_millis(100))
        );
        assert_eq!(Route::parse("/drip/0"), Route::NotFound);
        assert_eq!(Route::parse("/headers/7"), Route::Headers(7));
        assert_eq!(Route::parse("/headers/100000"), Route::Headers(MAX_HEADERS));
        assert_eq!(Route::parse("/ok/"), Route::NotFound);
        assert_eq!(Route::parse("/loop/c"), Route::NotFound);
        assert_eq!(Route::parse(""), Route::NotFound);
    }

    #[test]
    fn numbered_paths() {
        assert_eq!(
            Route::parse("/status/503"),
            Route::Status(StatusCode::SERVICE_UNAVAILABLE)
        );
        assert_eq!(
            Route::parse("/slow/250"),
            Route::Slow(Duration::from_millis(250))
        );
        assert_eq!(
            Route::parse("/slow-body/0"),
            Route::SlowBody(Duration::ZERO)
        );
        assert_eq!(Route::parse("/redirect/3"), Route::Redirect(3));
        assert_eq!(
            Route::parse("/big/18446744073709551615"),
            Route::Big(u64::MAX)
        );
        assert_eq!(Route::parse("/site/42"), Route::Site(42));
    }

    #[test]
    fn malformed_numbers_are_not_found() {
        for path in [
            "/status/99",
            "/status/600",
            "/status/abc",
            "/status/",
            "/slow/+5",
            "/slow/-5",
            "/slow/1.5",
            "/big/18446744073709551616",
            "/site/1/2",
            "/redirect/ 1",
            "/unknown/1",
        ] {
            assert_eq!(Route::parse(path), Route::NotFound, "{path}");
        }
    }

    #[test]
    fn status_bodies() {
        let response = status(StatusCode::NOT_FOUND);
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            hyper::body::Body::size_hint(response.body()).exact(),
            Some("404 Not Found".len() as u64)
        );
        let response = status(StatusCode::NO_CONTENT);
        assert!(hyper::body::Body::is_end_stream(response.body()));
    }

    #[test]
    fn gzip_body_decompresses() {
        use std::io::Read as _;
        let site = Site::new(Arc::default()).unwrap();
        let mut text = String::new();
        flate2::read::GzDecoder::new(&site.gzip[..])
            .read_to_string(&mut text)
            .unwrap();
        assert!(text.contains("compressed hello from sitefarm"));
    }
}
