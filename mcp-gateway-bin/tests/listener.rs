//! Hostile input at the listener, on the wire: what a raw TCP client that bends HTTP gets
//! answered, on routes with and without governing layers (docs/security.md, "Hostile input at
//! the listener").
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use http::Response;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The heads of the requests an upstream received.
type Seen = Arc<Mutex<Vec<http::HeaderMap>>>;

/// An upstream answering every call with an empty JSON-RPC result, keeping the heads it got.
async fn upstream() -> (SocketAddr, Seen) {
    let seen = Seen::default();
    let heads = seen.clone();
    let up = raw_upstream(move |req| {
        heads.lock().unwrap().push(req.headers().clone());
        async {
            Response::builder()
                .header("content-type", "application/json")
                .body(full(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#))
                .unwrap()
        }
    })
    .await;
    (up, seen)
}

/// Two gateways in front of one upstream, with the `[server]` keys `server`: one whose route
/// `/mcp/plain` has no governing layer (the pass-through), one whose route `/mcp/governed` runs
/// the governing chain (`[limits]`).
async fn gateways(server: &str) -> (Vec<(mcp_gateway::Gateway, &'static str)>, Seen) {
    let (up, seen) = upstream().await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{server}\n[upstreams.plain]\nurl = \"http://{up}/mcp\"\n"
    );
    let plain = mcp_gateway::config::parse(&text, "test.toml", Path::new(".")).unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{server}\n\
         [upstreams.governed]\nurl = \"http://{up}/mcp\"\n[limits]\nrequests_per_minute = 6000\n"
    );
    let governed = mcp_gateway::config::parse(&text, "test.toml", Path::new(".")).unwrap();
    (
        vec![
            (gateway(plain).await, "/mcp/plain"),
            (gateway(governed).await, "/mcp/governed"),
        ],
        seen,
    )
}

/// One HTTP/1.1 response read off a raw connection: status, head text, body.
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    /// The body as a JSON-RPC error: asserts its shape and returns its code.
    fn jsonrpc_code(&self) -> i64 {
        assert!(
            self.head
                .to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{}",
            self.head
        );
        let v: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)));
        assert_eq!(v["jsonrpc"], "2.0", "{v}");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
        v["error"]["code"].as_i64().unwrap()
    }
}

/// Reads one response (head, then a `Content-Length` body), within 10 s.
async fn read_answer(conn: &mut TcpStream) -> Answer {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16384];
    let read = async {
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).into_owned();
                let len: usize = head
                    .to_ascii_lowercase()
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if got.len() >= end + 4 + len {
                    let status = head[9..12].parse().unwrap();
                    let body = got[end + 4..end + 4 + len].to_vec();
                    return Answer { status, head, body };
                }
            }
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("no answer within 10 s")
}

/// Sends `bytes` on a new connection and reads the answer.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Answer {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(bytes).await.unwrap();
    read_answer(&mut conn).await
}

const PING: &str = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;

/// A POST of `PING` to `path` with the extra header lines `extra` (each ending in CRLF).
fn post(path: &str, extra: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n{extra}\r\n{PING}",
        PING.len()
    )
    .into_bytes()
}

/// Finding 7: a client that announces a body over `body_limit` and waits for `100 Continue`
/// is answered 413 at once — it is never invited to send the body — on every kind of route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_over_the_body_limit_is_answered_413_at_once() {
    let (gws, _) = gateways("body_limit = \"64KiB\"").await;
    for (gw, path) in &gws {
        let mut conn = TcpStream::connect(gw.local_addr()).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
             content-length: 10000000\r\nexpect: 100-continue\r\n\r\n"
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        // No body is sent: the answer must come without it.
        let answer = read_answer(&mut conn).await;
        assert_eq!(answer.status, 413, "{path}: {}", answer.head);
        assert_eq!(answer.jsonrpc_code(), -32600, "{path}");
        // Within the limit, the client is invited and served as usual.
        let mut conn = TcpStream::connect(gw.local_addr()).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nexpect: 100-continue\r\n\r\n",
            PING.len()
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        let answer = read_answer(&mut conn).await;
        assert_eq!(answer.status, 100, "{path}: {}", answer.head);
        conn.write_all(PING.as_bytes()).await.unwrap();
        let answer = read_answer(&mut conn).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.head);
    }
    for (gw, _) in gws {
        gw.shutdown().await;
    }
}

/// An HTTP/2 (prior knowledge, h2c) connection to `addr`.
async fn h2<B>(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

/// An HTTP/2 POST of `PING` to `uri` (its authority is `:authority`) with the `Host` headers
/// `hosts`: the status and the JSON-RPC error code, if any.
async fn h2_post(addr: SocketAddr, uri: &str, hosts: &[&str]) -> (u16, Option<i64>) {
    use http_body_util::BodyExt;
    let mut send = h2(addr).await;
    let mut req = http::Request::post(uri).header("content-type", "application/json");
    for h in hosts {
        req = req.header("host", *h);
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            PING.as_bytes(),
        )))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    (status, v["error"]["code"].as_i64())
}

/// Finding 8: HTTP/1.1 without `Host`, with two, or with one that is not `host[:port]` is
/// answered 400 (RFC 9112 §3.2) and never forwarded; HTTP/1.0 without `Host` is served; an
/// HTTP/2 `Host` that names another host than `:authority` is answered 400. The upstream's
/// `X-Forwarded-Host` is the valid host, or absent — never the client's made-up value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_duplicate_and_invalid_hosts_are_answered_400() {
    let (gws, seen) = gateways("").await;
    let ping_head = |path: &str, version: &str, hosts: &[&str]| {
        let mut head = format!("POST {path} HTTP/{version}\r\n");
        for h in hosts {
            head.push_str(&format!("host: {h}\r\n"));
        }
        format!(
            "{head}x-forwarded-host: client-said\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{PING}",
            PING.len()
        )
    };
    for (gw, path) in &gws {
        let addr = gw.local_addr();
        for hosts in [
            &[][..],
            &["gw", "gw"][..],
            &["gw", "other"][..],
            &["a, b"][..],
            &["user@gw"][..],
            &["gw/mcp"][..],
            &["gw:http"][..],
            &[""][..],
        ] {
            let answer = exchange(addr, ping_head(path, "1.1", hosts).as_bytes()).await;
            assert_eq!(answer.status, 400, "{path} {hosts:?}: {}", answer.head);
            assert_eq!(answer.jsonrpc_code(), -32600, "{path} {hosts:?}");
        }
        assert!(
            seen.lock().unwrap().is_empty(),
            "a refused request was forwarded"
        );
        // /healthz is held to HTTP's rules too.
        let answer = exchange(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
        assert_eq!(answer.status, 400, "{}", answer.head);

        // Served: a valid Host is what the upstream learns; HTTP/1.0 may omit it.
        let answer = exchange(
            addr,
            ping_head(path, "1.1", &["GW.example:8080"]).as_bytes(),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.head);
        let answer = exchange(addr, ping_head(path, "1.0", &[]).as_bytes()).await;
        assert_eq!(answer.status, 200, "{}", answer.head);
        let heads: Vec<_> = seen.lock().unwrap().drain(..).collect();
        assert_eq!(heads.len(), 2);
        assert_eq!(heads[0]["x-forwarded-host"], "GW.example:8080");
        assert!(heads[1].get("x-forwarded-host").is_none(), "{:?}", heads[1]);

        // HTTP/2: `:authority` decides; a Host that disagrees is refused.
        let uri = format!("http://gw.example{path}");
        assert_eq!(h2_post(addr, &uri, &[]).await, (200, None));
        assert_eq!(h2_post(addr, &uri, &["gw.example"]).await, (200, None));
        assert_eq!(
            h2_post(addr, &uri, &["evil.example"]).await,
            (400, Some(-32600))
        );
        let heads: Vec<_> = seen.lock().unwrap().drain(..).collect();
        assert_eq!(heads.len(), 2);
        assert_eq!(heads[0]["x-forwarded-host"], "gw.example");
    }
    for (gw, _) in gws {
        gw.shutdown().await;
    }
}

/// Sends `bytes` on a new connection (from a task: the gateway may stop reading) and reads the
/// answer, or `None` when the connection was closed or reset without one.
async fn exchange_or_reset(addr: SocketAddr, bytes: Vec<u8>) -> Option<u16> {
    let conn = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = conn.into_split();
    tokio::spawn(async move {
        let _ = wr.write_all(&bytes).await;
        // Kept open (not shut down) until the task ends with the test.
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(wr);
    });
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = vec![0u8; 16384];
        while let Ok(n) = rd.read(&mut buf).await {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if got.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer and not closed within 10 s");
    let head = String::from_utf8_lossy(&got);
    head.get(9..12).and_then(|s| s.parse().ok())
}

/// Finding 6: a request head over `max_header_bytes` (64 KiB by default) is answered 431 with
/// a JSON-RPC error on HTTP/1.1 and HTTP/2, and not forwarded; smaller heads are served; a
/// head far over the limit is cut by the parser (at twice the limit) with a bare 431.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_heads_over_max_header_bytes_get_431() {
    let (gws, seen) = gateways("").await;
    let padded =
        |path: &str, pad: usize| post(path, &format!("x-pad: {}\r\n", "a".repeat(pad))).to_vec();
    for (gw, path) in &gws {
        let addr = gw.local_addr();
        let answer = exchange(addr, &padded(path, 50_000)).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.head);
        let answer = exchange(addr, &padded(path, 70_000)).await;
        assert_eq!(answer.status, 431, "{path}: {}", answer.head);
        assert_eq!(answer.jsonrpc_code(), -32600);
        let v: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(v["error"]["data"]["limit"], 65536);
        // Far over the limit: hyper stops reading at 128 KiB and answers itself (or resets
        // the connection with the rest of the head unread).
        let status = exchange_or_reset(addr, padded(path, 1 << 20)).await;
        assert!(matches!(status, None | Some(431)), "{status:?}");
        // HTTP/2: the same limit.
        use http_body_util::BodyExt;
        let mut send = h2(addr).await;
        let req = http::Request::post(format!("http://gw{path}"))
            .header("content-type", "application/json")
            .header("x-pad", "a".repeat(70_000))
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                PING.as_bytes(),
            )))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 431);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], -32600);
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        2,
        "only the small heads are forwarded"
    );
    for (gw, _) in gws {
        gw.shutdown().await;
    }
    // The limit is the configured one.
    let (gws, _) = gateways("max_header_bytes = \"16KiB\"").await;
    for (gw, path) in &gws {
        let answer = exchange(gw.local_addr(), &padded(path, 20_000)).await;
        assert_eq!(answer.status, 431, "{path}: {}", answer.head);
        assert_eq!(answer.jsonrpc_code(), -32600);
    }
    for (gw, _) in gws {
        gw.shutdown().await;
    }
}

/// Finding 2: a request body that stalls is answered 408 with a JSON-RPC error after
/// `body_read_timeout` (here 300 ms) without data, on HTTP/1.1 and HTTP/2, on both kinds of
/// route; a body that keeps coming is read whole and served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_bodies_get_408() {
    let (gws, seen) = gateways("body_read_timeout = \"300ms\"").await;
    for (gw, path) in &gws {
        let addr = gw.local_addr();
        let mut conn = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n",
            PING.len()
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        conn.write_all(&PING.as_bytes()[..11]).await.unwrap();
        let started = Instant::now();
        // Then silence.
        let answer = read_answer(&mut conn).await;
        let took = started.elapsed();
        assert_eq!(answer.status, 408, "{path}: {}", answer.head);
        assert_eq!(answer.jsonrpc_code(), -32600);
        assert!(took < Duration::from_secs(5), "{path}: {took:?}");

        // HTTP/2: the body's first DATA frame, then nothing (the stream stays open).
        let mut send = h2(addr).await;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<
            Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>,
        >(1);
        tx.try_send(Ok(http_body::Frame::data(bytes::Bytes::from_static(
            &PING.as_bytes()[..11],
        ))))
        .unwrap();
        let rx = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let req = http::Request::post(format!("http://gw{path}"))
            .header("content-type", "application/json")
            .body(http_body_util::StreamBody::new(rx))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), send.send_request(req))
            .await
            .expect("no answer to a stalled HTTP/2 body")
            .unwrap();
        assert_eq!(resp.status(), 408, "{path}");
        drop(tx);

        // A body sent in pieces, each within the limit, is served.
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(head.as_bytes()).await.unwrap();
        for piece in PING.as_bytes().chunks(10) {
            conn.write_all(piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let answer = read_answer(&mut conn).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.head);
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        2,
        "only whole bodies are forwarded"
    );
    for (gw, _) in gws {
        gw.shutdown().await;
    }
}

/// How long until the gateway closes a connection on which `sent` was written and nothing
/// more (read to the end; at most 10 s).
async fn closed_after(
    conn: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin),
    sent: &[u8],
) -> Duration {
    conn.write_all(sent).await.unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "still open after 10 s");
    started.elapsed()
}

/// The HTTP/2 connection preface and an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
/// A HEADERS frame on stream 1 that ends the stream but not the header block (a CONTINUATION
/// must follow), with one field (`:method: GET`, HPACK index 2).
const H2_HALF_HEADERS: &[u8] = b"\0\0\x01\x01\x01\0\0\0\x01\x82";

/// Finding 3: an HTTP/2 connection that sent only its preface and SETTINGS, or stopped in the
/// middle of a HEADERS block, is closed once no request has been in progress on it for
/// `header_read_timeout` (here 1 s; the last step may take another), as HTTP/1.1 ones are;
/// one whose requests keep coming is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_stuck_http2_connections_close_after_the_header_read_timeout() {
    let (up, seen) = upstream().await;
    let mut s = settings(&[format!("plain=http://{up}/mcp")]);
    s.header_read_timeout = Duration::from_secs(1);
    let gw = gateway(s).await;
    let addr = gw.local_addr();
    for (what, sent) in [
        ("preface and SETTINGS", H2_PREFACE.to_vec()),
        (
            "an unfinished HEADERS block",
            [H2_PREFACE, H2_HALF_HEADERS].concat(),
        ),
    ] {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        let took = closed_after(&mut conn, &sent).await;
        assert!(took >= Duration::from_millis(700), "{what}: {took:?}");
        assert!(took < Duration::from_secs(5), "{what}: {took:?}");
    }
    // Requests 600 ms apart keep an HTTP/2 connection open past the timeout.
    use http_body_util::BodyExt;
    let mut send = h2(addr).await;
    for i in 0..4 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        let req = http::Request::post("http://gw/mcp/plain")
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                PING.as_bytes(),
            )))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
        resp.into_body().collect().await.unwrap();
    }
    assert_eq!(seen.lock().unwrap().len(), 4);
    gw.shutdown().await;
}

/// The same bound holds over TLS, where a client that completed the handshake and then sent
/// nothing was held open (hyper's header-read timeout starts only once it has seen the first
/// bytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connections_that_send_nothing_close_after_the_header_read_timeout() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let (up, _) = upstream().await;
    let mut s = settings(&[format!("plain=http://{up}/mcp")]);
    s.header_read_timeout = Duration::from_secs(1);
    s.tls = Some((cert_path, key_path));
    let gw = gateway(s).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let mut config = config.clone();
        config.alpn_protocols = vec![alpn.to_vec()];
        let tcp = TcpStream::connect(gw.local_addr()).await.unwrap();
        let mut conn = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        let sent: &[u8] = if alpn == b"h2" { H2_PREFACE } else { b"" };
        let took = closed_after(&mut conn, sent).await;
        let alpn = String::from_utf8_lossy(alpn);
        assert!(took >= Duration::from_millis(700), "{alpn}: {took:?}");
        assert!(took < Duration::from_secs(5), "{alpn}: {took:?}");
    }
    gw.shutdown().await;
}
