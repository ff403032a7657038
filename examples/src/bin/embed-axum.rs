//! `embed-axum [UPSTREAM_URL]`: the gateway's layers inside your own axum app.
//!
//! Serves `/mcp` (origin check → parse once → forward to `UPSTREAM_URL`, default
//! `http://127.0.0.1:3001/mcp`) next to the app's own `/hello` route, on 127.0.0.1:8090.

use axum::routing::get;
use axum::Router;
use mcp_gateway_layers::upstream::{Upstream, UpstreamConfig};
use mcp_gateway_layers::{AllowedOrigins, OriginGuardLayer, ParseMcpLayer};
use tower::ServiceBuilder;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:3001/mcp".into());
    let upstream = Upstream::new("demo", [url.parse()?], UpstreamConfig::default())?;
    let mcp = ServiceBuilder::new()
        // Refuse foreign browser origins first: nothing else runs for them.
        .layer(OriginGuardLayer::new(AllowedOrigins::default()))
        // Read and classify the body once; later layers and the upstream reuse the view.
        .layer(ParseMcpLayer::new().body_limit(1 << 20))
        .service(upstream);
    let app = Router::new()
        .route("/hello", get(|| async { "hello from the host app\n" }))
        .route_service("/mcp", mcp);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8090").await?;
    eprintln!(
        "axum app on http://{}/ — MCP at /mcp",
        listener.local_addr()?
    );
    axum::serve(listener, app).await?;
    Ok(())
}
