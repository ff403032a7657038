//! The gateway's layers inside an axum application, next to the app's own routes.

use axum::routing::get;
use axum::Router;
use mcp_gateway_layers::upstream::{Upstream, UpstreamConfig, UpstreamError};
use mcp_gateway_layers::{AllowedOrigins, OriginGuardLayer, ParseMcpLayer};
use tower::ServiceBuilder;

/// An app serving `/hello` itself and `/mcp` through the gateway's stack to `upstream_url`.
pub fn app(upstream_url: http::Uri) -> Result<Router, UpstreamError> {
    let upstream = Upstream::new("demo", [upstream_url], UpstreamConfig::default())?;
    let mcp = ServiceBuilder::new()
        // Refuse foreign browser origins first: nothing else runs for them.
        .layer(OriginGuardLayer::new(AllowedOrigins::default()))
        // Read and classify the body once; later layers and the upstream reuse the view.
        .layer(ParseMcpLayer::new().body_limit(1 << 20))
        .service(upstream);
    Ok(Router::new()
        .route("/hello", get(|| async { "hello from the host app\n" }))
        .route_service("/mcp", mcp))
}
