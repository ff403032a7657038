//! Hostile input at the listener, on the wire: what a raw TCP client that bends HTTP gets
//! answered, on routes with and without governing layers (docs/security.md, "Hostile input at
//! the listener").
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use http::Response;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An upstream answering every call with an empty JSON-RPC result, counting the calls.
async fn upstream() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = calls.clone();
    let up = raw_upstream(move |_req| {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async {
            Response::builder()
                .header("content-type", "application/json")
                .body(full(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#))
                .unwrap()
        }
    })
    .await;
    (up, calls)
}

/// Two gateways in front of one upstream, with the `[server]` keys `server`: one whose route
/// `/mcp/plain` has no governing layer (the pass-through), one whose route `/mcp/governed` runs
/// the governing chain (`[limits]`).
async fn gateways(server: &str) -> (Vec<(mcp_gateway::Gateway, &'static str)>, SocketAddr) {
    let (up, _) = upstream().await;
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
        up,
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
