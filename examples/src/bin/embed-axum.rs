//! `embed-axum [UPSTREAM_URL]`: the gateway's layers inside your own axum app.
//!
//! Serves `/mcp` (origin check → parse once → forward to `UPSTREAM_URL`, default
//! `http://127.0.0.1:3001/mcp`) next to the app's own `/hello` route, on 127.0.0.1:8090.

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:3001/mcp".into());
    let app = mcp_gateway_examples::embed::app(url.parse()?)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8090").await?;
    eprintln!(
        "axum app on http://{}/ — MCP at /mcp",
        listener.local_addr()?
    );
    axum::serve(listener, app).await?;
    Ok(())
}
