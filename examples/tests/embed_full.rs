//! All five layers in an axum app (`embed_full`), over a real rmcp server, served as axum apps
//! are: two client addresses get two limit budgets, the audit records name the client, the
//! route, the agent and the session handle, `/metrics` and the RFC 9728 document answer, and
//! shutdown writes every record.
#![allow(clippy::unwrap_used)]

use mcp_gateway_examples::demo_server::{self, DemoOptions};
use mcp_gateway_examples::embed_full::{FullApp, Options};
use mcp_gateway_layers::auth::ApiKeys;
use mcp_gateway_layers::{Principal, PrincipalKind};
use std::net::{IpAddr, SocketAddr};

const KEY: &str = "alice-key";

fn client(from: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(from.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// One JSON-RPC POST to `/mcp`: the status, the session id the answer carries, the body.
async fn post(
    c: &reqwest::Client,
    base: &str,
    sid: Option<&str>,
    body: &str,
) -> (u16, Option<String>, String) {
    let mut req = c
        .post(format!("{base}/mcp"))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body.to_owned());
    if let Some(s) = sid {
        req = req
            .header("mcp-session-id", s)
            .header("mcp-protocol-version", "2025-11-25");
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let sid = resp
        .headers()
        .get("mcp-session-id")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, sid, resp.text().await.unwrap())
}

const INIT: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"0"}}}"#;
const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
const ECHO: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_five_layers_in_an_axum_app() {
    let up = demo_server::spawn("127.0.0.1:0".parse().unwrap(), DemoOptions::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let base = format!("http://{addr}");
    let keys = ApiKeys::new().with_key(
        KEY,
        Principal::new("alice", PrincipalKind::Service)
            .with_client_id("alice-bot")
            .with_scopes(["mcp:tools"]),
    );
    let app = FullApp::new(Options {
        upstream: format!("http://{up}/mcp").parse().unwrap(),
        public_url: base.clone(),
        keys,
        requests_per_minute: 4,
        audit_log: log.clone(),
    })
    .unwrap();
    let router = app.router.clone();
    let stopped = app.shutdown.requested();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stopped)
        .await
        .unwrap();
    });

    // The app's own route, and the RFC 9728 document the challenges point at.
    let a = client("127.0.0.1");
    let hello = a.get(format!("{base}/hello")).send().await.unwrap();
    assert_eq!(hello.text().await.unwrap(), "hello from the host app\n");
    let denied = a
        .post(format!("{base}/mcp"))
        .header("content-type", "application/json")
        .body(ECHO)
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 401);
    let challenge = denied.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    let metadata_url = challenge
        .split("resource_metadata=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_owned();
    let doc: serde_json::Value = serde_json::from_str(
        &a.get(&metadata_url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(doc["resource"], format!("{base}/mcp"));

    // From 127.0.0.1: a session, then calls until the budget of 4 requests is spent.
    let (status, sid, _) = post(&a, &base, None, INIT).await;
    assert_eq!(status, 200);
    let sid = sid.unwrap();
    assert_eq!(post(&a, &base, Some(&sid), INITIALIZED).await.0, 202);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let (status, _, body) = post(&a, &base, Some(&sid), ECHO).await;
        if status == 200 {
            assert!(body.contains("hi"), "{body}");
        }
        statuses.push(status);
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
    // From 127.0.0.2: a budget of its own.
    let b = client("127.0.0.2");
    let (status, sid_b, _) = post(&b, &base, None, INIT).await;
    assert_eq!(status, 200);
    assert_eq!(post(&b, &base, sid_b.as_deref(), ECHO).await.0, 200);

    let metrics = a
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("mcp_gateway_audit_records_written_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mcp_gateway_sessions_store_errors_total"),
        "{metrics}"
    );
    assert!(metrics.contains("tools/call"), "{metrics}");

    // A listening stream (GET) of the session stays open until shutdown ends it.
    let get = a
        .get(format!("{base}/mcp"))
        .header("authorization", format!("Bearer {KEY}"))
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200);
    let listening = tokio::spawn(async move { get.bytes().await });

    // Shutdown: the server stops accepting, the stream gets its grace then is ended, the
    // server finishes, and every record is written.
    let t = std::time::Instant::now();
    app.shutdown
        .run(std::time::Duration::from_millis(300))
        .await;
    assert!(t.elapsed() >= std::time::Duration::from_millis(300));
    tokio::time::timeout(std::time::Duration::from_secs(10), server)
        .await
        .expect("the server did not finish once its streams were ended")
        .unwrap();
    let _ = listening.await.unwrap();
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let calls: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["event"] == "request" && r["method"] == "tools/call")
        .collect();
    assert_eq!(calls.len(), 5 + 1, "{records:#?}"); // 4 from a (one refused), 1 from b, the 401
    let handle = calls[1]["session"].as_str().unwrap();
    assert_eq!(handle.len(), 24, "{handle}");
    assert!(!records.iter().any(|r| r.to_string().contains(&sid)));
    for r in &calls[1..5] {
        let client: SocketAddr = r["client"].as_str().unwrap().parse().unwrap();
        assert_eq!(client.ip().to_string(), "127.0.0.1", "{r}");
        assert_eq!(r["route"], "/mcp", "{r}");
        assert_eq!(r["agent"], "alice-bot", "{r}");
        assert_eq!(r["subject"], "alice", "{r}");
        assert_eq!(r["session"], handle, "{r}");
    }
    assert_eq!(calls[4]["outcome"], "rate_limited");
    let start = records
        .iter()
        .find(|r| r["event"] == "session_start")
        .unwrap();
    assert_eq!(start["session"], handle);
    let last: SocketAddr = calls[5]["client"].as_str().unwrap().parse().unwrap();
    assert_eq!(last.ip().to_string(), "127.0.0.2");
    // The stream ended by the shutdown is recorded as such.
    let cut = records.iter().find(|r| r["http_method"] == "GET").unwrap();
    assert_eq!(cut["outcome"], "shutdown", "{cut}");
    let report = mcp_gateway_layers::audit::verify(&[log]).unwrap();
    assert_eq!(report.records, records.len() as u64);
}
