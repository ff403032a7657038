//! An MCP server on the official Rust SDK (`rmcp`) with as many tools as asked, listed in
//! pages, optionally slow to list: what the virtual-server tests federate ten of. It counts
//! the calls it serves and the requests its clients cancel, so a test can tell which server
//! a call or a cancellation reached. Both protocol eras, on one endpoint.

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// A server listing `tools` tools named `{name}_{i}` (plus `wait`), `page` per page, and
/// serving three unlisted tools: `roots` (asks the client for its roots), `flap` (announces
/// `n` tool list changes) and `task` (a task, SEP-2663, that `tasks/get` finds completed).
#[derive(Clone)]
pub struct Fleet {
    name: Arc<str>,
    tools: usize,
    page: usize,
    list_delay: Duration,
    calls: Arc<Mutex<Vec<String>>>,
    cancelled: Arc<AtomicU64>,
}

impl Fleet {
    /// `tools` tools named `{name}_0…`, listed `page` at a time (0: all in one page), and a
    /// `wait` tool that returns after its `seconds` argument (default 0) or when cancelled.
    pub fn new(name: &str, tools: usize, page: usize) -> Self {
        Self {
            name: name.into(),
            tools,
            page,
            list_delay: Duration::ZERO,
            calls: Arc::default(),
            cancelled: Arc::default(),
        }
    }

    /// Answers every list only after `delay`.
    pub fn list_delay(mut self, delay: Duration) -> Self {
        self.list_delay = delay;
        self
    }

    /// The tools called so far (names as the server got them).
    pub fn calls(&self) -> Vec<String> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many `wait` calls were cancelled by their client.
    pub fn cancelled(&self) -> u64 {
        self.cancelled.load(Ordering::SeqCst)
    }

    fn tool(name: String) -> Tool {
        let schema = serde_json::json!({"type": "object"});
        let schema = match schema {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        Tool::new(name, "a tool of a fleet server", Arc::new(schema))
    }
}

impl ServerHandler for Fleet {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .enable_tasks()
                .build(),
        )
        .with_server_info(Implementation::new(&*self.name, env!("CARGO_PKG_VERSION")))
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        if !self.list_delay.is_zero() {
            tokio::time::sleep(self.list_delay).await;
        }
        let start: usize = match request.and_then(|r| r.cursor) {
            Some(c) => c
                .parse()
                .map_err(|_| ErrorData::invalid_params("bad cursor", None))?,
            None => 0,
        };
        let mut names: Vec<String> = (0..self.tools)
            .map(|i| format!("{}_{i}", self.name))
            .collect();
        names.push("wait".into());
        let page = if self.page == 0 {
            names.len()
        } else {
            self.page
        };
        let end = (start + page).min(names.len());
        let tools = names
            .get(start..end)
            .unwrap_or_default()
            .iter()
            .cloned()
            .map(Self::tool)
            .collect();
        let mut result = ListToolsResult::with_all_items(tools);
        if end < names.len() {
            result.next_cursor = Some(end.to_string());
        }
        Ok(result)
    }

    async fn get_task(
        &self,
        request: rmcp::model::GetTaskParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::GetTaskResult, ErrorData> {
        if request.task_id != "t1" {
            return Err(ErrorData::invalid_params(
                format!("no task {:?}", request.task_id),
                None,
            ));
        }
        let result =
            CallToolResult::success(vec![ContentBlock::text(format!("task of {}", self.name))]);
        let result = match serde_json::to_value(result) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        let task = rmcp::model::Task::new(
            "t1",
            rmcp::model::TaskStatus::Completed,
            "2026-12-06T00:00:00Z",
            "2026-12-06T00:00:01Z",
        );
        Ok(rmcp::model::GetTaskResult::new(
            rmcp::model::DetailedTask::new(task, rmcp::model::TaskPayload::Completed { result }),
        ))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let name = request.name.to_string();
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(name.clone());
        let seconds = request
            .arguments
            .as_ref()
            .and_then(|a| a.get("seconds"))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        // Unlisted tools the relay tests call: `roots` asks the client for its roots (a
        // server-to-client request), `flap` announces `n` tool list changes, 20 ms apart,
        // on the session's stream after answering.
        // `task` makes a task (SEP-2663) of the call when the client takes tasks: every
        // fleet server names its task "t1", so that only a gateway's handles tell them apart.
        if name == "task" {
            let task = rmcp::model::Task::new(
                "t1",
                rmcp::model::TaskStatus::Working,
                "2026-12-06T00:00:00Z",
                "2026-12-06T00:00:00Z",
            );
            return Ok(CallToolResponse::Task(rmcp::model::CreateTaskResult::new(
                task,
            )));
        }
        if name == "roots" {
            // Roots belong to the legacy protocol (deprecated in 2026-07-28), which the relay
            // of server-to-client requests serves.
            #[allow(deprecated)]
            let roots = ctx
                .peer
                .list_roots()
                .await
                .map_err(|e| ErrorData::internal_error(format!("roots/list: {e}"), None))?;
            #[allow(deprecated)]
            let uris: Vec<String> = roots.roots.iter().map(|r| r.uri.clone()).collect();
            return Ok(CallToolResult::success(vec![ContentBlock::text(uris.join(","))]).into());
        }
        if name == "flap" {
            let n = request
                .arguments
                .as_ref()
                .and_then(|a| a.get("n"))
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(1);
            let peer = ctx.peer.clone();
            tokio::spawn(async move {
                for _ in 0..n {
                    if peer.notify_tool_list_changed().await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
        }
        if name == "wait" && seconds > 0 {
            tokio::select! {
                _ = ctx.ct.cancelled() => {
                    self.cancelled.fetch_add(1, Ordering::SeqCst);
                    return Err(ErrorData::internal_error("cancelled", None));
                }
                _ = tokio::time::sleep(Duration::from_secs(seconds)) => {}
            }
        }
        Ok(CallToolResult::success(vec![ContentBlock::text(format!(
            "{name} from {}",
            self.name
        ))])
        .into())
    }
}

/// Serves `server` on a free port of 127.0.0.1 (legacy sessions and 2026-07-28 requests);
/// returns the address.
pub async fn spawn(server: Fleet) -> std::io::Result<SocketAddr> {
    spawn_on(tokio::net::TcpListener::bind("127.0.0.1:0").await?, server)
}

/// Serves `server` on `listener`.
pub fn spawn_on(listener: tokio::net::TcpListener, server: Fleet) -> std::io::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    let svc = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default().with_legacy_session_mode(true),
    );
    tokio::spawn(crate::demo_server::serve_service(listener, svc));
    Ok(addr)
}
