//! `demo-client URL`: calls the demo tools through `URL` (a gateway route, say), first over a
//! legacy session (initialize, tools/list, echo, increment twice, slow_count with progress,
//! DELETE), then sessionless in protocol 2026-07-28.

use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation,
    ProgressNotificationParam, ProtocolVersion,
};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, ClientLifecycleMode, ClientServiceExt, RoleClient, ServiceExt};

#[derive(Clone)]
struct Printer(ClientConfig);

impl ClientHandler for Printer {
    fn get_info(&self) -> ClientConfig {
        self.0.clone()
    }
    async fn on_progress(&self, p: ProgressNotificationParam, _: NotificationContext<RoleClient>) {
        println!(
            "    progress {}/{} {}",
            p.progress,
            p.total.unwrap_or(0.0),
            p.message.unwrap_or_default()
        );
    }
}

fn text(r: &rmcp::model::CallToolResult) -> String {
    r.content
        .first()
        .and_then(|c| c.as_text())
        .map(|t| t.text.clone())
        .unwrap_or_default()
}

async fn exercise(
    client: &RunningService<RoleClient, Printer>,
) -> Result<(), Box<dyn std::error::Error>> {
    let info = client.peer_info().ok_or("no server info")?;
    println!("  protocol {}", info.protocol_version);
    let tools = client.list_all_tools().await?;
    let names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
    println!("  tools/list -> {names:?}");
    let mut args = serde_json::Map::new();
    args.insert("text".into(), "hello through the gateway".into());
    let r = client
        .call_tool(CallToolRequestParams::new("echo").with_arguments(args))
        .await?;
    println!("  echo -> {:?}", text(&r));
    for _ in 0..2 {
        let r = client
            .call_tool(CallToolRequestParams::new("increment"))
            .await?;
        println!("  increment -> {}", text(&r));
    }
    let mut args = serde_json::Map::new();
    args.insert("n".into(), 3.into());
    args.insert("delay_ms".into(), 50.into());
    let r = client
        .call_tool(CallToolRequestParams::new("slow_count").with_arguments(args))
        .await?;
    println!("  slow_count -> {:?}", text(&r));
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:8080/mcp/demo".into());
    let base = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("demo-client", "0.1.0"),
    );

    println!("legacy session (2025-11-25) via {url}");
    let mut cfg = base.clone();
    cfg.protocol_version = ProtocolVersion::V_2025_11_25;
    let client = Printer(cfg)
        .serve(StreamableHttpClientTransport::from_uri(url.clone()))
        .await?;
    exercise(&client).await?;
    client.cancel().await?;
    println!("  session closed (DELETE)");

    println!("sessionless (2026-07-28) via {url}");
    let client = Printer(base)
        .serve_with_lifecycle(
            StreamableHttpClientTransport::from_uri(url),
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        )
        .await?;
    exercise(&client).await?;
    client.cancel().await?;
    println!("done");
    Ok(())
}
