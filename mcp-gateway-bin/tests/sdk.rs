//! The official Rust SDK (`rmcp`) on both sides of the gateway: a real client talking to a
//! real server through `/mcp/NAME`, in the legacy (session) and 2026-07-28 (sessionless) eras.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use mcp_gateway_examples::demo_server::DemoOptions;
use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation,
    ProgressNotificationParam, ProtocolVersion,
};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, ClientLifecycleMode, ClientServiceExt, RoleClient, ServiceExt};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Clone)]
struct Client {
    info: ClientConfig,
    progress: Arc<AtomicUsize>,
}

impl ClientHandler for Client {
    fn get_info(&self) -> ClientConfig {
        self.info.clone()
    }
    async fn on_progress(&self, _: ProgressNotificationParam, _: NotificationContext<RoleClient>) {
        self.progress.fetch_add(1, Ordering::SeqCst);
    }
}

fn client(version: ProtocolVersion) -> Client {
    let mut info = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("gateway-test", "0"),
    );
    info.protocol_version = version;
    Client {
        info,
        progress: Arc::default(),
    }
}

fn transport(url: &str) -> StreamableHttpClientTransport<reqwest::Client> {
    // A token the gateway must not pass through (asserted on the wire in wire.rs).
    StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(url.to_owned()).auth_header("client-token"),
    )
}

async fn legacy(url: &str, version: ProtocolVersion) -> RunningService<RoleClient, Client> {
    client(version)
        .serve(transport(url))
        .await
        .expect("initialize through the gateway")
}

async fn modern(url: &str) -> RunningService<RoleClient, Client> {
    client(ProtocolVersion::V_2026_07_28)
        .serve_with_lifecycle(
            transport(url),
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .expect("server/discover through the gateway")
}

/// rmcp runs notification handlers on tasks of their own, so the last progress notification
/// may still be in its handler when the call's result arrives: wait (bounded) for the count.
async fn assert_progress(c: &RunningService<RoleClient, Client>, expected: usize) {
    let counter = &c.service().progress;
    for _ in 0..500 {
        if counter.load(Ordering::SeqCst) >= expected {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        counter.load(Ordering::SeqCst),
        expected,
        "progress notifications streamed"
    );
}

fn text(r: &rmcp::model::CallToolResult) -> String {
    r.content
        .first()
        .and_then(|c| c.as_text())
        .map(|t| t.text.clone())
        .unwrap_or_default()
}

async fn call(
    c: &RunningService<RoleClient, Client>,
    tool: &'static str,
    args: serde_json::Value,
) -> String {
    let mut p = CallToolRequestParams::new(tool);
    if let serde_json::Value::Object(m) = args {
        p = p.with_arguments(m);
    }
    text(
        &c.call_tool(p)
            .await
            .unwrap_or_else(|e| panic!("{tool}: {e}")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_session_through_gateway() {
    let (gw, url) = gateway_for_demo(DemoOptions::default()).await;
    for version in [ProtocolVersion::V_2025_06_18, ProtocolVersion::V_2025_11_25] {
        let c = legacy(&url, version.clone()).await;
        assert_eq!(c.peer_info().unwrap().protocol_version, version);
        let tools: Vec<String> = c
            .list_all_tools()
            .await
            .unwrap()
            .iter()
            .map(|t| t.name.to_string())
            .collect();
        assert_eq!(
            tools,
            ["blob", "echo", "increment", "slow_count", "trace_context"]
        );
        assert_eq!(
            call(&c, "echo", serde_json::json!({"text": "héllo"})).await,
            "héllo"
        );
        // Per-session state lives in the server: the session must keep reaching it.
        assert_eq!(call(&c, "increment", serde_json::json!({})).await, "1");
        assert_eq!(call(&c, "increment", serde_json::json!({})).await, "2");
        assert_eq!(
            call(
                &c,
                "slow_count",
                serde_json::json!({"n": 3, "delay_ms": 20})
            )
            .await,
            "counted to 3"
        );
        assert_progress(&c, 3).await;
        c.cancel().await.unwrap();
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessionless_2026_through_gateway() {
    for opts in [
        DemoOptions::default(),
        DemoOptions {
            stateless: true,
            json_response: true,
        },
    ] {
        let (gw, url) = gateway_for_demo(opts).await;
        let c = modern(&url).await;
        assert_eq!(
            c.peer_info().unwrap().protocol_version,
            ProtocolVersion::V_2026_07_28
        );
        assert_eq!(c.list_all_tools().await.unwrap().len(), 5);
        assert_eq!(
            call(&c, "echo", serde_json::json!({"text": "x"})).await,
            "x"
        );
        // No sessions in 2026-07-28: every request gets a fresh server instance.
        assert_eq!(call(&c, "increment", serde_json::json!({})).await, "1");
        assert_eq!(call(&c, "increment", serde_json::json!({})).await, "1");
        assert_eq!(
            call(
                &c,
                "slow_count",
                serde_json::json!({"n": 2, "delay_ms": 20})
            )
            .await,
            "counted to 2"
        );
        assert_progress(&c, 2).await;
        c.cancel().await.unwrap();
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_stay_on_their_instance_across_several() {
    let a = demo(DemoOptions::default()).await;
    let b = demo(DemoOptions::default()).await;
    let gw = gateway(settings(&[format!("demo=http://{a}/mcp,http://{b}/mcp")])).await;
    let url = format!("http://{}/mcp/demo", gw.local_addr());
    let clients = [
        legacy(&url, ProtocolVersion::V_2025_11_25).await,
        legacy(&url, ProtocolVersion::V_2025_11_25).await,
        legacy(&url, ProtocolVersion::V_2025_11_25).await,
    ];
    for round in 1..=3 {
        for c in &clients {
            assert_eq!(
                call(c, "increment", serde_json::json!({})).await,
                round.to_string()
            );
        }
    }
    for c in clients {
        c.cancel().await.unwrap();
    }
    gw.shutdown().await;
}
