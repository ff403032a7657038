//! A demo MCP server on the official Rust SDK (`rmcp`), speaking Streamable HTTP in both the
//! legacy (session) and 2026-07-28 (sessionless) eras on one endpoint.

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, Implementation, ProgressNotificationParam, ServerCapabilities,
    ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{schemars, tool, tool_handler, tool_router, ErrorData, RoleServer, ServerHandler};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Arguments of `echo`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct EchoArgs {
    /// Text to send back.
    pub text: String,
}

/// Arguments of `slow_count`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct SlowCountArgs {
    /// How many progress notifications to send.
    pub n: u32,
    /// Pause before each notification, in milliseconds (default 100).
    #[serde(default)]
    pub delay_ms: Option<u64>,
}

/// Arguments of `blob`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct BlobArgs {
    /// How many bytes of text to return (at most 8 MiB).
    pub bytes: usize,
}

/// The demo server. One instance lives per legacy session (so `increment` counts per session);
/// 2026-07-28 requests each get a fresh one.
#[derive(Clone)]
pub struct Demo {
    counter: Arc<AtomicU64>,
    /// Tool calls served, shared by every instance of one service (tests compare it with
    /// what a gateway admitted).
    calls: Arc<AtomicU64>,
    tool_router: ToolRouter<Self>,
}

impl Default for Demo {
    fn default() -> Self {
        Self::new()
    }
}

impl Demo {
    /// A server with a zeroed counter.
    pub fn new() -> Self {
        Self::counting(Arc::default())
    }

    /// A server that adds each tool call it serves to `calls`.
    pub fn counting(calls: Arc<AtomicU64>) -> Self {
        Self {
            counter: Arc::new(AtomicU64::new(0)),
            calls,
            tool_router: Self::tool_router(),
        }
    }
}

#[tool_router]
impl Demo {
    #[tool(description = "Echo the given text back")]
    async fn echo(&self, Parameters(EchoArgs { text }): Parameters<EchoArgs>) -> String {
        self.calls.fetch_add(1, Ordering::SeqCst);
        text
    }

    #[tool(description = "Return the given number of bytes of text (a large result)")]
    async fn blob(&self, Parameters(BlobArgs { bytes }): Parameters<BlobArgs>) -> String {
        self.calls.fetch_add(1, Ordering::SeqCst);
        "x".repeat(bytes.min(8 << 20))
    }

    #[tool(description = "Increment a per-session counter and return its new value")]
    async fn increment(&self) -> Result<CallToolResult, ErrorData> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let v = self.counter.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(CallToolResult::success(vec![ContentBlock::text(
            v.to_string(),
        )]))
    }

    #[tool(
        description = "Return the W3C trace context (traceparent, tracestate, baggage) this call's _meta carried, as JSON"
    )]
    async fn trace_context(&self, ctx: RequestContext<RoleServer>) -> String {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut seen = serde_json::Map::new();
        for key in ["traceparent", "tracestate", "baggage"] {
            if let Some(v) = ctx.meta.get(key) {
                seen.insert(key.to_owned(), v.clone());
            }
        }
        serde_json::Value::Object(seen).to_string()
    }

    #[tool(description = "Send n progress notifications, then return")]
    async fn slow_count(
        &self,
        Parameters(SlowCountArgs { n, delay_ms }): Parameters<SlowCountArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let delay = Duration::from_millis(delay_ms.unwrap_or(100));
        let token = ctx.meta.get_progress_token();
        for i in 1..=n {
            tokio::time::sleep(delay).await;
            if ctx.ct.is_cancelled() {
                return Err(ErrorData::internal_error("cancelled", None));
            }
            if let Some(token) = &token {
                ctx.peer
                    .notify_progress(
                        ProgressNotificationParam::new(token.clone(), f64::from(i))
                            .with_total(f64::from(n))
                            .with_message(format!("step {i}/{n}")),
                    )
                    .await
                    .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
            }
        }
        Ok(CallToolResult::success(vec![ContentBlock::text(format!(
            "counted to {n}"
        ))]))
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Demo {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "mcp-gateway-demo",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions("Demo server for mcp-gateway: echo, increment, slow_count, blob.")
    }
}

/// How to serve the demo.
#[derive(Clone, Copy, Debug, Default)]
pub struct DemoOptions {
    /// Serve without legacy sessions (every request stands alone).
    pub stateless: bool,
    /// Answer sessionless requests with `application/json` instead of SSE.
    pub json_response: bool,
}

/// The demo as a tower service (serve it at any path).
pub fn service(opts: DemoOptions) -> StreamableHttpService<Demo, LocalSessionManager> {
    service_counting(opts, Arc::default())
}

/// The demo as a tower service that adds every tool call it serves to `calls`.
pub fn service_counting(
    opts: DemoOptions,
    calls: Arc<AtomicU64>,
) -> StreamableHttpService<Demo, LocalSessionManager> {
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(!opts.stateless)
        .with_json_response(opts.json_response);
    StreamableHttpService::new(
        move || Ok(Demo::counting(calls.clone())),
        Arc::new(LocalSessionManager::default()),
        config,
    )
}

/// Binds `addr` and serves the demo on every path in a background task; returns the bound
/// address (useful with port 0).
pub async fn spawn(addr: SocketAddr, opts: DemoOptions) -> std::io::Result<SocketAddr> {
    Ok(spawn_counting(addr, opts).await?.0)
}

/// Like [`spawn`], and returns the count of tool calls the server has served.
pub async fn spawn_counting(
    addr: SocketAddr,
    opts: DemoOptions,
) -> std::io::Result<(SocketAddr, Arc<AtomicU64>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let calls = Arc::new(AtomicU64::new(0));
    tokio::spawn(serve_service(
        listener,
        service_counting(opts, calls.clone()),
    ));
    Ok((local, calls))
}

/// Serves the demo on an already-bound listener until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, opts: DemoOptions) {
    serve_service(listener, service(opts)).await;
}

/// Serves an `rmcp` Streamable HTTP service on `listener`, each connection in a task of its
/// own, until the task running this is dropped.
pub async fn serve_service<S: ServerHandler + Clone + Send + 'static>(
    listener: tokio::net::TcpListener,
    svc: StreamableHttpService<S, LocalSessionManager>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        // Events are small writes: without it, Nagle's algorithm holds each one until the
        // peer's delayed acknowledgement of the one before (tens of milliseconds).
        let _ = stream.set_nodelay(true);
        let svc = TowerToHyperService::new(svc.clone());
        tokio::spawn(async move {
            let _ = Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
