//! [`VirtualServer`]: **one MCP endpoint that federates several upstreams** (the binary's
//! `[virtual.NAME]`, served at `/mcp/NAME` like an upstream).
//!
//! An agent that needs twelve servers gets one URL. The virtual server answers what belongs
//! to the endpoint itself and sends everything else to the upstream that owns it:
//!
//! - **Both protocol eras.** A legacy client's `initialize` is answered here and gets a
//!   session id of the virtual server; the upstream sessions behind it are opened on first
//!   use, one per (client session, upstream), and DELETE ends all of them. A 2026-07-28
//!   client's `server/discover` is answered here (the versions every upstream supports);
//!   every other request is routed on its own.
//! - **Names.** Tools and prompts are exposed as `alias__name`, the alias being the
//!   upstream's name in the configuration; resources as `mcp-gateway://alias/URI`. Every
//!   exposed name matches `^[A-Za-z0-9_-]{1,64}$`: a longer name, or one with other
//!   characters, is shortened deterministically with a hash suffix and mapped back through
//!   the names the upstream listed ([`names`]). [`Prefix::Conditional`] prefixes only names
//!   two upstreams share; [`Prefix::Never`] prefixes nothing and removes the ambiguous ones
//!   (logged with both owners, counted; a call to one is refused with -32602 naming them).
//! - **Lists** (tools, prompts, resources, resource templates) ask every upstream in
//!   parallel, each within `list_timeout`, and merge the pages in upstream order. The
//!   merged `nextCursor` is sealed (ChaCha20-Poly1305) and carries every upstream's own
//!   cursor, so nothing is dropped or repeated across pages; a forged or stale one gets
//!   -32602. An upstream that fails is omitted and named in the result's
//!   `_meta["mcp-gateway/omitted"]` ([`OnUpstreamError::Omit`]), or fails the list
//!   ([`OnUpstreamError::Fail`]). 2026-07-28 caching fields are merged safely (`ttlMs` the
//!   smallest, `cacheScope` `private` when any upstream or the caller's permissions make it so).
//! - **Calls** (`tools/call`, `prompts/get`, `resources/read`, `resources/subscribe`,
//!   `completion/complete`) go to the owning upstream only, the original name restored in
//!   the body and in `Mcp-Name`; the answer streams back (a legacy SSE answer with the
//!   server's requests relayed under ids naming the upstream; a 2026-07-28 task's id turned
//!   into a sealed handle). A legacy `ping` is answered here. A legacy
//!   `notifications/cancelled` goes only to the upstream the request went to.
//! - **Legacy streams** ([`stream`]): the client's GET stream merges its upstream sessions'
//!   streams; `list_changed` reaches the client at most once a second per list.
//!
//! Each upstream is a [`Member`]: any service that takes a request and answers (a tower
//! service through [`ServiceMember`]). In the binary each member is the upstream's own
//! governed stack, so its permissions, limits, pins, audit records and spans apply with
//! the upstream's name and the original tool name, exactly as on its own route.
//!
//! # Example: two servers behind one axum route
//!
//! ```
//! use axum::{routing::post, Router};
//! use mcp_gateway_layers::federation::{Prefix, ServiceMember, VirtualServerLayer};
//! use serde_json::{json, Value};
//! use tower::ServiceExt;
//!
//! // A stand-in MCP server answering 2026-07-28 requests with one tool.
//! fn server(tool: &'static str) -> Router {
//!     Router::new().route("/mcp", post(move |body: String| async move {
//!         let req: Value = serde_json::from_str(&body).unwrap();
//!         let result = match req["method"].as_str() {
//!             Some("tools/list") => json!({"tools": [{"name": tool, "inputSchema": {"type": "object"}}]}),
//!             _ => json!({"content": [{"type": "text", "text": format!("{} ran", req["params"]["name"])}]}),
//!         };
//!         let answer = json!({"jsonrpc": "2.0", "id": req["id"], "result": result});
//!         ([("content-type", "application/json")], answer.to_string())
//!     }))
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let all = VirtualServerLayer::new("all")
//!     .prefix(Prefix::Always)
//!     .service([
//!         ("github", ServiceMember(server("create_issue"))),
//!         ("jira", ServiceMember(server("create_issue"))),
//!     ]);
//! let app = Router::new().route_service("/mcp", all);
//!
//! let ask = |method: &str, params: Value| {
//!     let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": {
//!         "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
//!                   "io.modelcontextprotocol/clientCapabilities": {}},
//!         "name": params["name"],
//!     }});
//!     let mut req = http::Request::post("/mcp")
//!         .header("content-type", "application/json")
//!         .header("accept", "application/json, text/event-stream")
//!         .header("mcp-protocol-version", "2026-07-28")
//!         .header("mcp-method", method);
//!     if let Some(name) = params["name"].as_str() {
//!         req = req.header("mcp-name", name);
//!     }
//!     req.body(axum::body::Body::from(body.to_string())).unwrap()
//! };
//! let read = |resp: http::Response<axum::body::Body>| async move {
//!     let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
//!     serde_json::from_slice::<Value>(&bytes).unwrap()
//! };
//!
//! let list = read(app.clone().oneshot(ask("tools/list", json!({}))).await.unwrap()).await;
//! let names: Vec<&str> = list["result"]["tools"].as_array().unwrap().iter()
//!     .map(|t| t["name"].as_str().unwrap()).collect();
//! assert_eq!(names, ["github__create_issue", "jira__create_issue"]);
//!
//! let call = ask("tools/call", json!({"name": "jira__create_issue"}));
//! let answer = read(app.oneshot(call).await.unwrap()).await;
//! // jira's server got the original name.
//! assert_eq!(answer["result"]["content"][0]["text"], "\"create_issue\" ran");
//! # }
//! ```

pub mod config;
pub mod cursor;
mod layer;
pub mod names;
mod service;
pub mod session;
pub mod stream;

pub use layer::{VirtualServerLayer, DEFAULT_LIST_TIMEOUT, DEFAULT_SESSION_IDLE};
pub use service::{VirtualBody, VirtualServer, LEGACY_VERSIONS, OMITTED_META, ORIGIN_META};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use std::convert::Infallible;
use std::future::Future;

/// The caller's `Authorization` header, kept for the members' own authentication when a
/// layer in front of the virtual server (its OAuthGuard) removed it from the request. Put it
/// in the request's extensions before that layer; the virtual server gives it back to every
/// request it makes of a member. Only code in the process can set an extension.
#[derive(Clone, Debug)]
pub struct CallerAuthorization(pub http::HeaderValue);

/// Which exposed names carry their upstream's alias.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Prefix {
    /// Every name (the default): adding or removing an upstream never renames another's.
    #[default]
    Always,
    /// Only names two or more upstreams share.
    Conditional,
    /// None: a name two upstreams share is removed from lists and refused in calls.
    Never,
}

impl Prefix {
    /// The configuration's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::Conditional => "conditional",
            Self::Never => "never",
        }
    }
}

/// What a merged list does when an upstream fails or does not answer within `list_timeout`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnUpstreamError {
    /// Answer without it, naming it in `_meta["mcp-gateway/omitted"]` (the default).
    #[default]
    Omit,
    /// Fail the list (HTTP 502, JSON-RPC -32050 naming the upstream).
    Fail,
}

impl OnUpstreamError {
    /// The configuration's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Omit => "omit",
            Self::Fail => "fail",
        }
    }
}

/// One upstream of a virtual server: what takes a request and answers it.
pub trait Member: Send + Sync + 'static {
    /// The body of its answers.
    type Body: http_body::Body<Data = Bytes, Error: Into<crate::BoxError>> + Send + 'static;
    /// Serves one request.
    fn call(&self, req: Request<Full<Bytes>>) -> impl Future<Output = Response<Self::Body>> + Send;
}

/// A tower service as a [`Member`] (cloned for each request, as tower services are).
#[derive(Clone, Debug)]
pub struct ServiceMember<S>(pub S);

impl<S, B> Member for ServiceMember<S>
where
    S: tower_service::Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
    B: http_body::Body<Data = Bytes, Error: Into<crate::BoxError>> + Send + 'static,
{
    type Body = B;
    fn call(&self, req: Request<Full<Bytes>>) -> impl Future<Output = Response<B>> + Send {
        let mut svc = self.0.clone();
        async move {
            if let Err(never) = futures_util::future::poll_fn(|cx| svc.poll_ready(cx)).await {
                match never {}
            }
            match svc.call(req).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            }
        }
    }
}
