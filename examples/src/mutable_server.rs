//! An MCP server on the official Rust SDK (`rmcp`) whose tool definitions its owner changes
//! while it serves: what a server that was reviewed and later changed ("rug pull") looks like
//! to a gateway. Both protocol eras, on one endpoint. The integrity tests start it in-process,
//! change its definitions between two lists, and read which calls reached it.

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// What the server lists, and the calls it served (tool name, arguments).
#[derive(Clone, Default)]
pub struct Mutable {
    tools: Arc<Mutex<Vec<Value>>>,
    calls: Arc<Mutex<Vec<(String, Value)>>>,
}

impl Mutable {
    /// A server listing `tools` (full definitions, as JSON).
    pub fn new(tools: Vec<Value>) -> Self {
        let s = Self::default();
        s.set_tools(tools);
        s
    }

    /// Replaces the definitions listed from the next list on.
    pub fn set_tools(&self, tools: Vec<Value>) {
        *self.tools.lock().unwrap_or_else(PoisonError::into_inner) = tools;
    }

    /// The calls served so far.
    pub fn calls(&self) -> Vec<(String, Value)> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn tools(&self) -> Vec<Tool> {
        self.tools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(|t| serde_json::from_value(t.clone()).ok())
            .collect()
    }
}

impl ServerHandler for Mutable {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("mutable", env!("CARGO_PKG_VERSION")))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.tools()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.tools().into_iter().find(|t| t.name == name)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let name = request.name.to_string();
        let args = Value::Object(request.arguments.unwrap_or_default());
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((name.clone(), args));
        Ok(CallToolResult::success(vec![ContentBlock::text(format!("called {name}"))]).into())
    }
}

/// Serves `server` on a free port of 127.0.0.1 (legacy sessions and 2026-07-28 requests);
/// returns the address.
pub async fn spawn(server: Mutable) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let svc = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default().with_legacy_session_mode(true),
    );
    tokio::spawn(crate::demo_server::serve_service(listener, svc));
    Ok(addr)
}
