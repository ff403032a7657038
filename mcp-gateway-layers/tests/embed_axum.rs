//! The layers inside an axum app, served as axum apps are: what the server knows of the client
//! and the route reaches the layers with no code of the app's own.
#![allow(clippy::unwrap_used, missing_docs)]

use axum::extract::ConnectInfo;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use mcp_gateway_layers::audit::{AuditLogLayer, AuditWriter, FileSink, WriterOptions};
use mcp_gateway_layers::limits::{KeySource, Limits, TokenBucket2DLayer};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::{service_fn, ServiceBuilder};

const CALL: &str =
    r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{}}}"#;

fn answer() -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(
        br#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#,
    )));
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    resp
}

/// One call over a new connection from `from` (a loopback address): the status.
async fn call_from(from: IpAddr, to: SocketAddr) -> u16 {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(from, 0)).unwrap();
    let mut s = sock.connect(to).await.unwrap();
    let req = format!(
        "POST /mcp HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
         accept: application/json, text/event-stream\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{CALL}",
        CALL.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    text[9..12].parse().unwrap()
}

/// axum's `ConnectInfo<SocketAddr>` keys the `ip` budget (two clients, two buckets) and fills
/// the audit record's `client`; its `MatchedPath` names the `route`.
#[tokio::test]
async fn axum_connect_info_and_matched_path_reach_limits_and_audit() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let writer =
        AuditWriter::spawn(FileSink::open(&log).unwrap(), WriterOptions::default()).unwrap();
    let limits = Limits::new()
        .key(KeySource::Ip)
        .requests_per_minute(2)
        .tokens_per_minute(100_000);
    let mcp = ServiceBuilder::new()
        .layer(AuditLogLayer::new(writer.clone()))
        .layer(TokenBucket2DLayer::new(limits))
        .service(service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(answer())
        }));
    let app = axum::Router::new().route_service("/mcp", mcp);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    let a: IpAddr = "127.0.0.1".parse().unwrap();
    let b: IpAddr = "127.0.0.2".parse().unwrap();
    let mut got = Vec::new();
    for from in [a, a, a, b] {
        got.push(call_from(from, addr).await);
    }
    // The third call from a is over a's budget; b has a budget of its own.
    assert_eq!(got, [200, 200, 429, 200]);

    writer.flush().await;
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{text}");
    for (line, from) in lines.iter().zip([a, a, a, b]) {
        let client: SocketAddr = line["client"].as_str().unwrap().parse().unwrap();
        assert_eq!(client.ip(), from, "{line}");
        assert_eq!(line["route"], "/mcp", "{line}");
    }
    assert_eq!(lines[2]["outcome"], "rate_limited");
}

/// A server that provides no client address: the `ip` key refuses charged calls (500, with
/// a JSON-RPC error saying why) instead of putting every client in one budget.
#[tokio::test]
async fn without_a_client_address_the_ip_key_refuses_rather_than_pooling_everyone() {
    use tower::ServiceExt;
    let limits = Limits::new()
        .key(KeySource::Ip)
        .requests_per_minute(1)
        .tokens_per_minute(100_000);
    let svc = ServiceBuilder::new()
        .layer(TokenBucket2DLayer::new(limits))
        .service(service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(answer())
        }));
    let req = || {
        Request::post("/mcp")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(CALL.as_bytes())))
            .unwrap()
    };
    for _ in 0..2 {
        let resp = svc.clone().oneshot(req()).await.unwrap();
        assert_eq!(resp.status(), 500);
    }
    // A plain `SocketAddr` extension (what a hyper server loop inserts) is enough.
    for (ip, want) in [("10.0.0.1", 200), ("10.0.0.1", 429), ("10.0.0.2", 200)] {
        let mut r = req();
        r.extensions_mut()
            .insert(SocketAddr::new(ip.parse().unwrap(), 4000));
        let resp = svc.clone().oneshot(r).await.unwrap();
        assert_eq!(resp.status(), want, "{ip}");
    }
    // axum's wrapper of it as well, without axum serving the call.
    let mut r = req();
    r.extensions_mut().insert(ConnectInfo(SocketAddr::new(
        "10.0.0.3".parse().unwrap(),
        4000,
    )));
    let resp = svc.clone().oneshot(r).await.unwrap();
    assert_eq!(resp.status(), 200);
    tokio::time::sleep(Duration::from_millis(1)).await;
}
