//! `StdioUpstream` alone, mounted in an axum app behind `ParseMcp`: the rmcp conformance
//! fixture (the official Rust SDK) runs as its child over stdio, and official rmcp clients
//! connect over Streamable HTTP — many at once, in both protocol eras, in `shared` and
//! `per_session` mode. Their request ids and progress tokens are the same numbers (each client
//! counts from 0), so an answer or a progress notification delivered to the wrong client
//! would show.
#![allow(clippy::unwrap_used)]

use mcp_gateway_layers::stdio::{Mode, StdioBuilder, StdioUpstream};
use mcp_gateway_layers::ParseMcpLayer;
use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation,
    ProgressNotificationParam, ProtocolVersion,
};
use rmcp::service::NotificationContext;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, ClientLifecycleMode, ClientServiceExt, RoleClient, ServiceExt};
use std::sync::{Arc, Mutex};
use tower::Layer;

#[derive(Clone)]
struct Progress {
    info: ClientConfig,
    seen: Arc<Mutex<Vec<String>>>,
}

impl ClientHandler for Progress {
    fn get_info(&self) -> ClientConfig {
        self.info.clone()
    }
    async fn on_progress(&self, p: ProgressNotificationParam, _: NotificationContext<RoleClient>) {
        self.seen
            .lock()
            .unwrap()
            .push(p.progress_token.0.to_string());
    }
}

async fn serve(upstream: StdioUpstream) -> String {
    let app = axum::Router::new().route_service(
        "/mcp",
        ParseMcpLayer::new().body_limit(4 << 20).layer(upstream),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/mcp")
}

/// One client: connects, lists, calls `echo` with its own text and `slow_count` with progress;
/// returns the progress tokens it saw.
async fn one_client(url: String, modern: bool, n: usize) -> Vec<String> {
    let mut info = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("stdio-axum-test", "0"),
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let transport = StreamableHttpClientTransport::from_uri(url);
    let client = if modern {
        let handler = Progress {
            info,
            seen: seen.clone(),
        };
        handler
            .serve_with_lifecycle(
                transport,
                ClientLifecycleMode::Discover {
                    preferred_versions: vec![serde_json::from_value::<ProtocolVersion>(
                        serde_json::json!("2026-07-28"),
                    )
                    .unwrap()],
                },
            )
            .await
            .unwrap()
    } else {
        info.protocol_version = ProtocolVersion::V_2025_11_25;
        Progress {
            info,
            seen: seen.clone(),
        }
        .serve(transport)
        .await
        .unwrap()
    };
    let tools = client.list_all_tools().await.unwrap();
    assert!(tools.iter().any(|t| t.name == "echo"));
    let mine = format!("client {n}");
    let r = client
        .call_tool(
            CallToolRequestParams::new("echo").with_arguments(
                serde_json::json!({"text": mine})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
        )
        .await
        .unwrap();
    let text: String = r
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect();
    assert_eq!(text, mine, "an answer reached the wrong client");
    let r = client
        .call_tool(
            CallToolRequestParams::new("slow_count").with_arguments(
                serde_json::json!({"n": 3, "delay_ms": 20})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
        )
        .await
        .unwrap();
    assert_ne!(r.is_error, Some(true));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    client.cancel().await.unwrap();
    let seen = seen.lock().unwrap().clone();
    seen
}

async fn many_clients(mode: Mode, modern: bool) {
    let upstream = StdioBuilder::new(
        "fixture",
        [env!("CARGO_BIN_EXE_conformance-server"), "--stdio"],
    )
    .mode(mode)
    .build();
    let url = serve(upstream.clone()).await;
    let clients: Vec<_> = (0..8)
        .map(|n| tokio::spawn(one_client(url.clone(), modern, n)))
        .collect();
    let mut tokens = Vec::new();
    for c in clients {
        let seen = c.await.unwrap();
        // Exactly this client's three notifications, with its own token.
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
        tokens.push(seen[0].clone());
    }
    // The clients chose the same tokens: the gateway kept them apart on the one child.
    assert!(tokens.iter().all(|t| *t == tokens[0]), "{tokens:?}");
    if mode == Mode::Shared {
        assert!(upstream.processes() <= 2, "{}", upstream.processes());
    }
    upstream.stop().await;
    assert_eq!(upstream.processes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_child_keeps_eight_legacy_clients_apart() {
    many_clients(Mode::Shared, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_child_keeps_eight_modern_clients_apart() {
    many_clients(Mode::Shared, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_per_session_for_eight_legacy_clients() {
    many_clients(Mode::PerSession, false).await;
}
