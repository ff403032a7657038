//! Tower layers that govern MCP traffic, usable alone over any hyper or axum service, or
//! stacked — as the `mcp-gateway` binary stacks them.
//!
//! Each capability is one module, named like its cargo feature and like its section of the
//! gateway's configuration file, and every such module has the same files: `mod.rs` (docs and
//! an example of the layer alone), `layer.rs` (the tower `Layer` and its builder), `service.rs`
//! (the service, and its governor: the deciding part) and `config.rs` (the section's settings,
//! checked, and the function that builds the layer from them).
//!
//! | module (feature) | layer | section | what it does |
//! |---|---|---|---|
#![cfg_attr(
    feature = "auth",
    doc = "| [`auth`] | `OAuthGuard` | `[auth]` | OAuth 2.1 resource server at the edge — JWT/JWKS, introspection, API keys, audience, tool-level permissions, list filtering, upstream credentials |"
)]
#![cfg_attr(
    not(feature = "auth"),
    doc = "| `auth` | `OAuthGuard` | `[auth]` | OAuth 2.1 resource server at the edge — JWT/JWKS, introspection, API keys, audience, tool-level permissions, list filtering, upstream credentials |"
)]
#![cfg_attr(
    feature = "limits",
    doc = "| [`limits`] | `TokenBucket2D` | `[limits]` | per-agent request and token budgets: 429 before the server, output tokens counted as the response streams, cost attribution; Redis store for replicas (`limits-redis`) |"
)]
#![cfg_attr(
    not(feature = "limits"),
    doc = "| `limits` | `TokenBucket2D` | `[limits]` | per-agent request and token budgets: 429 before the server, output tokens counted as the response streams, cost attribution; Redis store for replicas (`limits-redis`) |"
)]
#![cfg_attr(
    feature = "sessions",
    doc = "| [`sessions`] | `SessionAffinity` | `[sessions]` | sealed (AEAD) session ids that route across gateway replicas, 404 for forged/expired/ended ones, least-outstanding balancing with passive ejection; Redis store (`sessions-redis`) |"
)]
#![cfg_attr(
    not(feature = "sessions"),
    doc = "| `sessions` | `SessionAffinity` | `[sessions]` | sealed (AEAD) session ids that route across gateway replicas, 404 for forged/expired/ended ones, least-outstanding balancing with passive ejection; Redis store (`sessions-redis`) |"
)]
#![cfg_attr(
    feature = "telemetry",
    doc = "| [`telemetry`] | `TraceInject` | `[telemetry]` | W3C trace context into `params._meta` and the headers, OpenTelemetry MCP spans (SERVER and CLIENT), RED metrics per tool and agent with a Prometheus rendering |"
)]
#![cfg_attr(
    not(feature = "telemetry"),
    doc = "| `telemetry` | `TraceInject` | `[telemetry]` | W3C trace context into `params._meta` and the headers, OpenTelemetry MCP spans (SERVER and CLIENT), RED metrics per tool and agent with a Prometheus rendering |"
)]
#![cfg_attr(
    feature = "audit",
    doc = "| [`audit`] | `AuditLog` | `[audit]` | one hash-chained JSON-lines record per exchange (refusals included), written off the request path; `verify` and `query` |"
)]
#![cfg_attr(
    not(feature = "audit"),
    doc = "| `audit` | `AuditLog` | `[audit]` | one hash-chained JSON-lines record per exchange (refusals included), written off the request path; `verify` and `query` |"
)]
#![cfg_attr(
    feature = "integrity",
    doc = "| [`integrity`] | `ToolIntegrity` | `[integrity]`, `[[approvals]]` | tool and prompt definitions pinned by their RFC 8785 digest and checked as lists stream (`warn` or `block`); calls of chosen tools held for a person (asked through MCP elicitation, or decided on an admin API) |"
)]
#![cfg_attr(
    not(feature = "integrity"),
    doc = "| `integrity` | `ToolIntegrity` | `[integrity]`, `[[approvals]]` | tool and prompt definitions pinned by their RFC 8785 digest and checked as lists stream (`warn` or `block`); calls of chosen tools held for a person (asked through MCP elicitation, or decided on an admin API) |"
)]
#![cfg_attr(
    feature = "upstream",
    doc = "| [`upstream`] | `Upstream` | `[upstreams.NAME]` | forwards to an MCP server: streamed bodies, SSE flushed per event, hop-by-hop and `Authorization` headers removed, pooled connections, timeouts |"
)]
#![cfg_attr(
    not(feature = "upstream"),
    doc = "| `upstream` | `Upstream` | `[upstreams.NAME]` | forwards to an MCP server: streamed bodies, SSE flushed per event, hop-by-hop and `Authorization` headers removed, pooled connections, timeouts |"
)]
#![cfg_attr(
    feature = "stdio",
    doc = "| [`stdio`] | `StdioUpstream` | `[upstreams.NAME] command` | runs a local MCP server as supervised child processes (shared, per session or per agent) and serves it over Streamable HTTP, to both protocol eras |"
)]
#![cfg_attr(
    not(feature = "stdio"),
    doc = "| `stdio` | `StdioUpstream` | `[upstreams.NAME] command` | runs a local MCP server as supervised child processes (shared, per session or per agent) and serves it over Streamable HTTP, to both protocol eras |"
)]
#![cfg_attr(
    feature = "reload",
    doc = "| [`reload`] | `Reload` | `[server] watch_config` | a swappable cell in front of any service: a new stack for new requests, the old one kept by those running; a polling file watcher |"
)]
#![cfg_attr(
    not(feature = "reload"),
    doc = "| `reload` | `Reload` | `[server] watch_config` | a swappable cell in front of any service: a new stack for new requests, the old one kept by those running; a polling file watcher |"
)]
#![cfg_attr(
    feature = "federation",
    doc = "| [`federation`] | `VirtualServer` | `[virtual.NAME]` | one MCP endpoint over several upstreams: `alias__name` names, merged lists with sealed cursors, calls routed to their owner, both protocol eras (`virtual` is a Rust keyword: the module is named for what it does) |"
)]
#![cfg_attr(
    not(feature = "federation"),
    doc = "| `federation` | `VirtualServer` | `[virtual.NAME]` | one MCP endpoint over several upstreams: `alias__name` names, merged lists with sealed cursors, calls routed to their owner, both protocol eras (`virtual` is a Rust keyword: the module is named for what it does) |"
)]
//!
//! What they share, always compiled:
//!
//! | module | what it does |
//! |---|---|
//! | [`govern`] | the one service skeleton: read the request once, ask the governor, call the inner service, attach the response observers once; a [`Chain`] runs several governors as one future |
//! | [`parse`] | reads the request body up to a limit, classifies it once, checks the 2026-07-28 headers, and puts an [`McpRequest`] in the request extensions |
//! | [`head`] | the checks of a request head every server makes before routing it: its size (431), `Host` (400) |
//! | [`origin`] | refuses browser requests from origins that are not allowed (DNS-rebinding defence) |
//! | [`prometheus`] | every layer's metrics in one Prometheus text, and a `/metrics` service for an app |
//! | [`observe`] | attaches an observer of your own to every response (one decode, shared with the gateway's layers) |
//! | [`boxed`] | a layer whose answers all have one body type, so that governing layers line up under tower's `ServiceBuilder::option_layer` |
//! | [`toggle`] | a layer switched on or off when the stack is built |
//! | [`body`] | the response bodies: a governed answer, observed once per stack, or a refusal |
//! | `shutdown` | (feature `shutdown`) stopping an embedding app as the binary stops: a grace period for open answers, the rest ended and recorded as cut at shutdown, audit records written, spans exported — one call |
//! | `rt` | for serving the layers with hyper (`upstream`): a cheap timer for hyper's header-read timeout, a request body that fails when it stalls (answered 408), the activity of a connection for closing it when idle |
//! | `config` | what the capabilities' configuration sections share: located errors, durations, sizes, stores (compiled with any capability) |
//! | `http_client` | the small HTTP client of OAuth discovery, introspection and span export (`auth`, `telemetry-otlp`) |
//!
//! Every rejection is a response (a JSON-RPC error with the right HTTP status), never a
//! service error, so the layers work under axum, whose services are infallible.
//!
//! This crate re-exports what a layer user needs from `mcp-gateway-core` — [`McpRequest`],
//! [`Principal`], [`JsonRpcError`] and friends at the top, the whole crate as [`core`] — so one
//! dependency is enough, and the [`McpRequest`] your layer looks up is always the very type
//! [`ParseMcp`] inserts (two versions of the core crate would make
//! [`McpRequest::from_extensions`] return `None`).
//!
//! # Stacking
//!
//! Each layer works alone, and layers stacked with `tower::ServiceBuilder` work together: the
//! outermost creates the per-request record, the others write their decisions to it, and the
//! response is observed once. For the cheapest stack — one future, one read, one response
//! wrapper, whatever the number of layers — put their governors in one [`Chain`], outermost
//! first, as the gateway binary does:
//!
//! ```
//! # #[cfg(all(feature = "limits", feature = "telemetry"))] {
//! use mcp_gateway_layers::govern::{Chain, GovernedLayer};
//! use mcp_gateway_layers::limits::{Limits, TokenBucket2DLayer};
//! use mcp_gateway_layers::telemetry::TraceInjectLayer;
//!
//! let chain = Chain::new()
//!     .with(Some(TraceInjectLayer::new())) // observers outside …
//!     .with(Some(TokenBucket2DLayer::new(Limits::new().requests_per_minute(600)))); // … deciders inside
//! let layer = GovernedLayer::new(chain); // a tower Layer, over any service
//! # let _ = layer;
//! # }
//! ```
//!
//! # Embedding in an axum app
//!
//! With the `upstream` feature (`mcp-gateway-layers = { version = "0.1", features =
//! ["upstream"] }`), three lines put an MCP server behind the gateway's checks inside your own
//! app: refuse foreign browser origins, read and classify the body once, forward.
//!
//! ```
//! # #[cfg(feature = "upstream")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use mcp_gateway_layers::upstream::{Upstream, UpstreamConfig};
//! use mcp_gateway_layers::{AllowedOrigins, OriginGuardLayer, ParseMcpLayer};
//! use tower::ServiceBuilder;
//!
//! let mcp = ServiceBuilder::new()
//!     .layer(OriginGuardLayer::new(AllowedOrigins::default()))
//!     .layer(ParseMcpLayer::new())
//!     .service(Upstream::new(
//!         "demo",
//!         ["http://127.0.0.1:3001/mcp".parse()?],
//!         UpstreamConfig::default(),
//!     )?);
//! let app = axum::Router::new().route_service("/mcp", mcp);
//!
//! // Serve it as any axum app, with the client's address (the `ip` limit key and the records'
//! // `client` need it; the `axum` feature reads it, and the route, from axum's extensions):
//! // axum::serve(
//! //     tokio::net::TcpListener::bind("127.0.0.1:8090").await?,
//! //     app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
//! // ).await?;
//!
//! // A browser page from a foreign origin is refused before anything reaches the server.
//! use tower::ServiceExt;
//! let req = http::Request::post("/mcp")
//!     .header("origin", "https://evil.example")
//!     .header("content-type", "application/json")
//!     .body(axum::body::Body::from(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#))?;
//! let resp = app.oneshot(req).await?;
//! assert_eq!(resp.status(), http::StatusCode::FORBIDDEN);
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "upstream"))]
//! # fn main() {}
//! ```
//!
//! # Writing your own layer
//!
//! A governing layer of your own is a [`Govern`] implementation — its decision — run by the
//! same skeleton as the crate's layers ([`Governed`]); the [`govern`] module docs have an
//! example. It finds the parsed request in the request extensions with
//! [`McpRequest::from_extensions`] (method, tool name, id and protocol era, without reading
//! or parsing the body again) and refuses with a [`Refusal`], whose answer keeps the request's
//! id.
// Denied everywhere but in two functions of `stdio` (the child's death signal and the kill of
// its process group), each allowed on its own with the reason.
#![deny(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(any(
    feature = "limits",
    feature = "audit",
    feature = "sessions",
    feature = "telemetry"
))]
mod ascii;
#[cfg(feature = "audit")]
pub mod audit;
#[cfg(feature = "auth")]
pub mod auth;
pub mod body;
pub mod boxed;
#[cfg(any(
    feature = "auth",
    feature = "limits",
    feature = "sessions",
    feature = "telemetry",
    feature = "audit",
    feature = "upstream",
    feature = "reload",
    feature = "integrity"
))]
pub mod config;
#[cfg(feature = "federation")]
pub mod federation;
pub mod glob;
pub mod govern;
pub mod head;
#[cfg(any(feature = "auth", feature = "telemetry-otlp", feature = "integrity"))]
pub mod http_client;
#[cfg(feature = "integrity")]
pub mod integrity;
#[cfg(feature = "limits")]
pub mod limits;
pub mod observe;
pub mod origin;
pub mod parse;
pub mod prometheus;
#[cfg(any(feature = "limits-redis", feature = "sessions-redis"))]
mod redis_link;
#[cfg(feature = "reload")]
pub mod reload;
#[cfg(feature = "upstream")]
pub mod rt;
#[cfg(feature = "sessions")]
pub mod sessions;
#[cfg(feature = "shutdown")]
pub mod shutdown;
#[cfg(feature = "stdio")]
pub mod stdio;
#[cfg(feature = "telemetry")]
pub mod telemetry;
pub mod toggle;
#[cfg(feature = "upstream")]
pub mod upstream;

/// The shared building blocks, re-exported whole: use `mcp_gateway_layers::core::…` for what
/// the top-level re-exports below do not cover (the [`core::message`] classifier, the
/// [`core::era`] checks, the [`core::sse`] codec).
pub use mcp_gateway_core as core;
pub use mcp_gateway_core::{
    ErrorCode, JsonRpcError, McpRequest, Principal, PrincipalKind, RequestId,
};

#[cfg(feature = "audit")]
pub use audit::{AuditLog, AuditLogLayer};
#[cfg(feature = "auth")]
pub use auth::{OAuthGuard, OAuthGuardLayer};
pub use body::{Refused, ResponseBody};
pub use govern::{Chain, Decision, Govern, Governed, GovernedLayer, IntoGovern, Refusal};
#[cfg(feature = "integrity")]
pub use integrity::{ToolIntegrity, ToolIntegrityLayer};
#[cfg(feature = "limits")]
pub use limits::{TokenBucket2D, TokenBucket2DLayer};
pub use observe::{Observe, ObserveLayer};
pub use origin::{AllowedOrigins, OriginGuard, OriginGuardLayer};
pub use parse::{ParseMcp, ParseMcpLayer};
#[cfg(feature = "reload")]
pub use reload::{Reload, ReloadLayer};
#[cfg(feature = "sessions")]
pub use sessions::{SessionAffinity, SessionAffinityLayer};
#[cfg(feature = "stdio")]
pub use stdio::StdioUpstream;
#[cfg(feature = "telemetry")]
pub use telemetry::{TraceInject, TraceInjectLayer};
pub use toggle::{Toggle, Toggled, WrapBody};

/// The boxed error type bodies and services report (the core's, so the two crates agree).
pub use mcp_gateway_core::observe::BoxError;

/// A mutex's guard, whether or not a thread panicked while holding it: the layers' shared
/// maps and counters stay usable (each update is one step, never left half done).
#[cfg(any(feature = "telemetry", feature = "federation", feature = "integrity"))]
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
