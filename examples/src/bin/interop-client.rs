//! `interop-client URL ERA CASE_JSON [HEADER ...]`: the `rmcp` column of the interop matrix
//! (`scripts/interop`).
//!
//! `ERA` is `legacy` (the `initialize` handshake, protocol 2025-11-25) or `2026-07-28`
//! (`server/discover`, then sessionless requests). `CASE_JSON` is
//! `{"call": [tool, args], "progress": [tool, args]}`: the client lists the tools, calls the first
//! tool, then calls the second with a progress token and counts the notifications. Each
//! `HEADER` (`"Name: value"`) is sent on every request. Prints one JSON object:
//! `{"ok", "protocol", "server", "tools", "call", "progress", "error"}`.

use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation,
    ProgressNotificationParam, ProtocolVersion,
};
use rmcp::service::NotificationContext;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, ClientLifecycleMode, ClientServiceExt, RoleClient, ServiceExt};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone)]
struct Counter {
    info: ClientConfig,
    progress: Arc<AtomicUsize>,
}

impl ClientHandler for Counter {
    fn get_info(&self) -> ClientConfig {
        self.info.clone()
    }
    async fn on_progress(&self, _: ProgressNotificationParam, _: NotificationContext<RoleClient>) {
        self.progress.fetch_add(1, Ordering::SeqCst);
    }
}

fn text(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn tool_call(step: &Value) -> Result<CallToolRequestParams, Error> {
    let name = step
        .get(0)
        .and_then(Value::as_str)
        .ok_or("case: tool name missing")?
        .to_owned();
    let args = step.get(1).and_then(Value::as_object).cloned();
    Ok(CallToolRequestParams::new(name).with_arguments(args.unwrap_or_default()))
}

async fn run(
    url: &str,
    era: &str,
    case: &Value,
    headers: &[String],
    out: &mut Map<String, Value>,
) -> Result<(), Error> {
    let mut custom = HashMap::new();
    for h in headers {
        let (k, v) = h.split_once(": ").ok_or("HEADER must be \"Name: value\"")?;
        custom.insert(
            http::HeaderName::try_from(k)?,
            http::HeaderValue::try_from(v)?,
        );
    }
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(url.to_owned()).custom_headers(custom),
    );
    let mut info = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("mcp-gateway-interop-rmcp", env!("CARGO_PKG_VERSION")),
    );
    let progress = Arc::new(AtomicUsize::new(0));
    let client = if era == "legacy" {
        info.protocol_version = ProtocolVersion::V_2025_11_25;
        let handler = Counter {
            info,
            progress: progress.clone(),
        };
        handler.serve(transport).await?
    } else {
        let version = serde_json::from_value::<ProtocolVersion>(json!(era))?;
        let handler = Counter {
            info,
            progress: progress.clone(),
        };
        handler
            .serve_with_lifecycle(
                transport,
                ClientLifecycleMode::Discover {
                    preferred_versions: vec![version],
                },
            )
            .await?
    };
    let peer = client.peer_info().ok_or("no server info")?;
    out.insert("protocol".into(), json!(peer.protocol_version.to_string()));
    out.insert(
        "server".into(),
        json!(peer
            .server_info
            .as_ref()
            .map(|s| format!("{} {}", s.name, s.version))),
    );
    let tools = client.list_all_tools().await?;
    out.insert("tools".into(), json!(tools.len()));
    let r = client.call_tool(tool_call(&case["call"])?).await?;
    out.insert("call".into(), json!(text(&r)));
    if r.is_error == Some(true) {
        return Err(format!("tool failed: {}", text(&r)).into());
    }
    let r = client.call_tool(tool_call(&case["progress"])?).await?;
    // rmcp hands notifications to the handler on their own tasks, so the last one can still be
    // in flight when the result returns; give them a moment before counting.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let seen = progress.load(Ordering::SeqCst);
    out.insert("progress".into(), json!(seen));
    if r.is_error == Some(true) || seen == 0 {
        return Err(format!("{seen} progress notifications, isError={:?}", r.is_error).into());
    }
    client.cancel().await?;
    Ok(())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut out = Map::new();
    let result = match args.as_slice() {
        [url, era, case, headers @ ..] => match serde_json::from_str::<Value>(case) {
            Ok(case) => run(url, era, &case, headers, &mut out).await,
            Err(e) => Err(e.into()),
        },
        _ => Err("usage: interop-client URL ERA CASE_JSON [HEADER ...]".into()),
    };
    out.insert("ok".into(), json!(result.is_ok()));
    if let Err(e) = result {
        out.insert("error".into(), json!(e.to_string()));
    }
    println!("{}", Value::Object(out));
}
