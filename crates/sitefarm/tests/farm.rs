//! Starts a farm and talks to it the way a client on the wire would: raw HTTP/1.1 over TCP,
//! HTTP/1.1 and HTTP/2 over TLS.

use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use sitewatch_sitefarm::{SiteFarm, LEAF_NOT_AFTER_UNIX_SECS};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("body is UTF-8")
    }
}

fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn parse_head(head: &[u8]) -> (u16, Vec<(String, String)>) {
    let head = std::str::from_utf8(head).expect("head is UTF-8");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("status line with a code");
    let headers = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').expect("header line with a colon");
            (n.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    (status, headers)
}

/// Sends one request and reads one response framed by Content-Length (every farm response has one).
async fn exchange<S>(stream: &mut S, method: &str, path: &str, close: bool) -> Reply
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let connection = if close { "close" } else { "keep-alive" };
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: {connection}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    let mut buf = Vec::new();
    let end = loop {
        if let Some(end) = head_end(&buf) {
            break end;
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.expect("read the head");
        assert!(n > 0, "connection closed before the response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let (status, headers) = parse_head(&buf[..end]);
    let mut body = buf.split_off(end);
    let reply = Reply {
        status,
        headers,
        body: Vec::new(),
    };
    let len: usize = if method == "HEAD" {
        0
    } else {
        reply
            .header("content-length")
            .and_then(|len| len.parse().ok())
            .expect("a Content-Length")
    };
    while body.len() < len {
        let mut chunk = vec![0u8; 64 * 1024];
        let n = stream.read(&mut chunk).await.expect("read the body");
        assert!(n > 0, "connection closed inside the body");
        body.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(body.len(), len);
    Reply { body, ..reply }
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let reply = exchange(&mut stream, "GET", path, true).await;
    // `Connection: close` is honoured: the server closes after the response.
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.expect("read to EOF");
    assert!(rest.is_empty());
    reply
}

#[tokio::test]
async fn plain_http_routes() {
    let farm = SiteFarm::start(Default::default()).await.unwrap();
    let addr = farm.http_addr();
    assert_eq!(
        farm.url("/ok"),
        format!("http://127.0.0.1:{}/ok", addr.port())
    );

    for path in ["/", "/ok", "/ok?cache=bust"] {
        let reply = get(addr, path).await;
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(reply.header("content-type"), Some("text/html"));
        assert!(reply.text().contains("Welcome to sitefarm"));
    }

    for code in [200, 404, 500, 503] {
        let reply = get(addr, &format!("/status/{code}")).await;
        assert_eq!(reply.status, code);
        assert!(reply.text().starts_with(&code.to_string()));
    }

    let reply = get(addr, "/redirect/3").await;
    assert_eq!(reply.status, 302);
    assert_eq!(reply.header("location"), Some("/redirect/2"));
    let reply = get(addr, "/redirect/0").await;
    assert_eq!((reply.status, reply.text()), (200, "redirect chain done"));
    assert_eq!(
        get(addr, "/loop/a").await.header("location"),
        Some("/loop/b")
    );
    assert_eq!(
        get(addr, "/loop/b").await.header("location"),
        Some("/loop/a")
    );

    let reply = get(addr, "/big/1000003").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-length"), Some("1000003"));
    assert_eq!(reply.body.len(), 1_000_003);

    let reply = get(addr, "/gzip").await;
    assert_eq!(reply.header("content-encoding"), Some("gzip"));
    let mut text = String::new();
    flate2::read::GzDecoder::new(&reply.body[..])
        .read_to_string(&mut text)
        .unwrap();
    assert!(text.contains("compressed hello from sitefarm"));

    let reply = get(addr, "/binary").await;
    assert_eq!(
        reply.header("content-type"),
        Some("application/octet-stream")
    );
    assert!(std::str::from_utf8(&reply.body).is_err());
    assert!(reply.body.windows(9).any(|w| w == b"marker-42"));

    assert_eq!(get(addr, "/site/17").await.text(), "site 17 ok");
    assert_eq!(get(addr, "/nowhere").await.status, 404);
    assert_eq!(get(addr, "/status/abc").await.status, 404);

    let mut stream = TcpStream::connect(addr).await.unwrap();
    let reply = exchange(&mut stream, "POST", "/ok", true).await;
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("allow"), Some("GET, HEAD"));

    farm.shutdown().await;
}

#[tokio::test]
async fn keep_alive_head_and_reset() {
    let farm = SiteFarm::start(Default::default()).await.unwrap();
    let mut stream = TcpStream::connect(farm.http_addr()).await.unwrap();
    for n in 0..3 {
        let reply = exchange(&mut stream, "GET", &format!("/site/{n}"), false).await;
        assert_eq!(reply.text(), format!("site {n} ok"));
    }
    let reply = exchange(&mut stream, "HEAD", "/big/5000", false).await;
    assert_eq!(reply.header("content-length"), Some("5000"));

    // On the same connection: /reset closes it without a response.
    stream
        .write_all(b"GET /reset HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let read = stream.read_to_end(&mut rest).await;
    assert!(read.is_err() || rest.is_empty(), "got {rest:?}");
    farm.shutdown().await;
}

#[tokio::test]
async fn slow_routes_take_their_time() {
    let farm = SiteFarm::start(Default::default()).await.unwrap();

    let started = Instant::now();
    let reply = get(farm.http_addr(), "/slow/300").await;
    assert_eq!(reply.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));

    let started = Instant::now();
    let mut stream = TcpStream::connect(farm.http_addr()).await.unwrap();
    stream
        .write_all(b"GET /slow-body/1500 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    while head_end(&buf).is_none() {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
    }
    let head_after = started.elapsed();
    assert!(head_after < Duration::from_millis(1000), "{head_after:?}");
    stream.read_to_end(&mut buf).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert!(buf.ends_with(b"slow body after 1500 ms"));

    farm.shutdown().await;
}

fn client_config(farm: &SiteFarm, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    let ca = CertificateDer::from_pem_slice(farm.ca_pem().as_bytes()).expect("CA PEM");
    roots.add(ca).expect("CA certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

#[tokio::test]
async fn tls_listeners() {
    let farm = SiteFarm::start(Default::default()).await.unwrap();
    assert_eq!(
        farm.https_url("/ok"),
        format!("https://localhost:{}/ok", farm.https_addr().port())
    );
    assert_eq!(
        farm.leaf_not_after().duration_since(UNIX_EPOCH).unwrap(),
        Duration::from_secs(1_924_992_000)
    );

    // HTTP/1.1 over TLS, by name and by IP address.
    let connector = TlsConnector::from(client_config(&farm, &[b"http/1.1"]));
    for name in ["localhost", "127.0.0.1"] {
        let tcp = TcpStream::connect(farm.https_addr()).await.unwrap();
        let name = ServerName::try_from(name).unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        let (_, session) = tls.get_ref();
        assert_eq!(session.alpn_protocol(), Some(&b"http/1.1"[..]));
        let leaf = &session.peer_certificates().unwrap()[0];
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf).unwrap();
        assert_eq!(
            parsed.validity().not_after.timestamp(),
            LEAF_NOT_AFTER_UNIX_SECS
        );
        let reply = exchange(&mut tls, "GET", "/ok", true).await;
        assert!(reply.text().contains("Welcome to sitefarm"));
    }

    // The self-signed leaf is not signed by the farm's CA.
    let tcp = TcpStream::connect(farm.self_signed_addr()).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let error = connector.connect(name, tcp).await.unwrap_err();
    assert!(error.to_string().contains("UnknownIssuer"), "{error}");

    farm.shutdown().await;
}

#[tokio::test]
async fn http2_over_tls() {
    let farm = SiteFarm::start(Default::default()).await.unwrap();
    let connector = TlsConnector::from(client_config(&farm, &[b"h2", b"http/1.1"]));
    let tcp = TcpStream::connect(farm.https_addr()).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    let driver = tokio::spawn(connection);

    let request = |path: &str| {
        hyper::Request::get(format!("https://localhost{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let response = sender.send_request(request("/big/200000")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-length"], "200000");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 200_000);

    // /reset kills only its stream; the connection goes on.
    assert!(sender.send_request(request("/reset")).await.is_err());
    let response = sender.send_request(request("/site/9")).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"site 9 ok");

    // Shutdown drops open connections, so the client's connection task ends.
    farm.shutdown().await;
    tokio::time::timeout(Duration::from_secs(5), driver)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
}

#[tokio::test]
async fn shutdown_closes_the_ports() {
    let farm = SiteFarm::start(Default::default()).await.unwrap();
    let addrs = [farm.http_addr(), farm.https_addr(), farm.self_signed_addr()];
    let idle = TcpStream::connect(addrs[0]).await.unwrap();
    farm.shutdown().await;
    for addr in addrs {
        assert!(TcpStream::connect(addr).await.is_err(), "{addr} still open");
    }
    drop(idle);

    // Dropping without shutdown stops the listeners too.
    let farm = SiteFarm::start(Default::default()).await.unwrap();
    let addr = farm.http_addr();
    drop(farm);
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "{addr} still open after drop");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
