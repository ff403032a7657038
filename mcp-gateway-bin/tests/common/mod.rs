//! Shared helpers for the gateway's integration tests: real servers on 127.0.0.1:0.
#![allow(dead_code, unreachable_pub, missing_docs)]
#![allow(clippy::unwrap_used)]

pub mod oauth;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use mcp_gateway::config::{parse_upstream_flag, Settings};
use mcp_gateway::Gateway;
use mcp_gateway_examples::demo_server::{self, DemoOptions};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

pub type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Starts the rmcp demo server.
pub async fn demo(opts: DemoOptions) -> SocketAddr {
    demo_server::spawn("127.0.0.1:0".parse().unwrap(), opts)
        .await
        .unwrap()
}

/// Settings for a gateway on an ephemeral port in front of `upstreams` (`name=url,...`).
pub fn settings(upstreams: &[String]) -> Settings {
    Settings::from_flags(
        "127.0.0.1:0".parse().unwrap(),
        upstreams
            .iter()
            .map(|u| parse_upstream_flag(u).unwrap())
            .collect(),
    )
}

/// Starts a gateway.
pub async fn gateway(settings: Settings) -> Gateway {
    Gateway::bind(settings).await.unwrap()
}

/// A gateway in front of one demo server; returns (gateway, route URL).
pub async fn gateway_for_demo(opts: DemoOptions) -> (Gateway, String) {
    let addr = demo(opts).await;
    let gw = gateway(settings(&[format!("demo=http://{addr}/mcp")])).await;
    let url = format!("http://{}/mcp/demo", gw.local_addr());
    (gw, url)
}

/// Serves a hand-written upstream (for wire-level checks no SDK server can make).
pub async fn raw_upstream<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<TestBody>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

pub fn full(body: impl Into<Bytes>) -> TestBody {
    Full::new(body.into()).map_err(|e| match e {}).boxed()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// POSTs a JSON-RPC body with the headers MCP clients send.
pub fn mcp_post(c: &reqwest::Client, url: &str, body: &str) -> reqwest::RequestBuilder {
    c.post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body.to_owned())
}

/// Asserts a JSON-RPC error answer: status, code, and id.
pub async fn assert_error(
    resp: reqwest::Response,
    status: u16,
    code: i64,
    id: serde_json::Value,
) -> serde_json::Value {
    assert_eq!(resp.status().as_u16(), status, "status");
    assert_eq!(
        resp.headers().get("content-type").unwrap(),
        "application/json",
        "content-type"
    );
    let v: serde_json::Value = resp.json_value().await;
    assert_eq!(v["jsonrpc"], "2.0");
    assert_eq!(v["error"]["code"], code, "{v}");
    assert_eq!(v["id"], id, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    v
}

pub trait JsonValue {
    async fn json_value(self) -> serde_json::Value;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self) -> serde_json::Value {
        let bytes = self.bytes().await.unwrap();
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)))
    }
}

/// Decodes the JSON-RPC messages of an SSE body.
pub fn sse_messages(body: &[u8]) -> Vec<serde_json::Value> {
    let mut dec = mcp_gateway_core::sse::SseDecoder::new(1 << 20);
    let mut out = Vec::new();
    dec.feed(body, &mut |item| {
        if let mcp_gateway_core::sse::SseItem::Event(e) = item {
            if !e.data.is_empty() {
                out.push(serde_json::from_str(&e.data).unwrap());
            }
        }
    })
    .unwrap();
    out
}

/// One frame (or failure) of a hand-fed upstream SSE body.
pub type FrameResult = Result<http_body::Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>;

/// An upstream answering every request with an SSE stream whose frames `feed` sends through
/// the channel it is given (dropping the sender ends the stream; the sender's `closed()`
/// resolves when the gateway lets go of the stream).
pub async fn sse_upstream<F, Fut>(feed: F) -> SocketAddr
where
    F: Fn(tokio::sync::mpsc::Sender<FrameResult>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    raw_upstream(move |_req| {
        let feed = feed.clone();
        async move {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<FrameResult>(16);
            tokio::spawn(feed(tx));
            let frames = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(BodyExt::boxed(http_body_util::StreamBody::new(frames)))
                .unwrap()
        }
    })
    .await
}

/// A gateway in front of `up` (route `/mcp/sse`) and a `tools/call` sent through it.
pub async fn call_through(up: SocketAddr) -> (Gateway, reqwest::Response) {
    let gw = gateway(settings(&[format!("sse=http://{up}/mcp")])).await;
    let url = format!("http://{}/mcp/sse", gw.local_addr());
    let resp = mcp_post(
        &client(),
        &url,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t"}}"#,
    )
    .send()
    .await
    .unwrap();
    (gw, resp)
}

/// The SHA-256 of `s`, in hex: how an API-keys file names a key.
pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A port free on 127.0.0.1 now (for a server given its address in advance).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Opens a legacy (2025-11-25) session at `url`: `initialize` and `notifications/initialized`;
/// returns its id.
pub async fn session(c: &reqwest::Client, url: &str) -> String {
    const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"0"}}}"#;
    const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    let resp = mcp_post(c, url, INIT).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{url}");
    let sid = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let _ = resp.bytes().await.unwrap();
    let resp = mcp_post(c, url, INITIALIZED)
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    sid
}
