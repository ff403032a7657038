//! Tower layers that govern MCP traffic, usable alone over any hyper or axum service, or
//! stacked in the `mcp-gateway` binary.
//!
//! | module | what it does | feature |
//! |---|---|---|
//! | [`parse`] | buffers the request body up to a limit, classifies it once, checks the 2026-07-28 headers, and puts an [`McpRequest`] in request extensions | always |
//! | [`origin`] | rejects browser requests from origins that are not allowed (DNS-rebinding defence) | always |
//! | `auth` | OAuthGuard: OAuth 2.1 resource server at the edge — JWT/JWKS, introspection, API keys, audience, tool-level permissions, list filtering, upstream credentials | `auth` |
//! | [`scope`] | joins the per-request record and attaches response observers: the plumbing every governing layer shares | always |
//! | [`observe`] | attaches an observer of your own to every response (one decode, shared with the gateway's layers) | always |
//! | [`toggle`] | a layer switched on or off when the stack is built | always |
//! | `config` | what the capabilities' configuration sections share (located errors, durations, sizes, stores); each capability's own section is its `config` module (`limits::config`, …) | any capability |
#![cfg_attr(
    feature = "upstream",
    doc = "| [`upstream`] | forwards to an MCP server: streamed bodies, SSE flushed per event, hop-by-hop and `Authorization` headers removed, timeouts | `upstream` |"
)]
#![cfg_attr(
    not(feature = "upstream"),
    doc = "| `upstream` | forwards to an MCP server: streamed bodies, SSE flushed per event, hop-by-hop and `Authorization` headers removed, timeouts | `upstream` |"
)]
#![cfg_attr(
    feature = "limits",
    doc = "| [`limits`] | per-agent request and token budgets (TokenBucket2D): 429 before the server, output tokens counted as the response streams, cost attribution; Redis store for replicas | `limits`, `limits-redis` |"
)]
#![cfg_attr(
    not(feature = "limits"),
    doc = "| `limits` | per-agent request and token budgets (TokenBucket2D): 429 before the server, output tokens counted as the response streams, cost attribution; Redis store for replicas | `limits`, `limits-redis` |"
)]
#![cfg_attr(
    feature = "audit",
    doc = "| [`audit`] | AuditLog: one hash-chained JSON-lines record per exchange (refusals included), written off the request path; `verify` and `query` | `audit` |"
)]
#![cfg_attr(
    not(feature = "audit"),
    doc = "| `audit` | AuditLog: one hash-chained JSON-lines record per exchange (refusals included), written off the request path; `verify` and `query` | `audit` |"
)]
#![cfg_attr(
    feature = "sessions",
    doc = "| [`sessions`] | SessionAffinity over a set of instances: sealed (AEAD) session ids that route across gateway replicas, 404 for forged/expired/ended ones, least-outstanding balancing with passive ejection; Redis store for replicas | `sessions`, `sessions-redis` |"
)]
#![cfg_attr(
    not(feature = "sessions"),
    doc = "| `sessions` | SessionAffinity over a set of instances: sealed (AEAD) session ids that route across gateway replicas, 404 for forged/expired/ended ones, least-outstanding balancing with passive ejection; Redis store for replicas | `sessions`, `sessions-redis` |"
)]
#![cfg_attr(
    feature = "telemetry",
    doc = "| [`telemetry`] | TraceInject: W3C trace context into `params._meta` and the HTTP headers, OpenTelemetry MCP spans (SERVER and CLIENT), RED metrics per tool and agent with a Prometheus rendering | `telemetry` |"
)]
#![cfg_attr(
    not(feature = "telemetry"),
    doc = "| `telemetry` | TraceInject: W3C trace context into `params._meta` and the HTTP headers, OpenTelemetry MCP spans (SERVER and CLIENT), RED metrics per tool and agent with a Prometheus rendering | `telemetry` |"
)]
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
//! // Serve it as any axum app:
//! // axum::serve(tokio::net::TcpListener::bind("127.0.0.1:8090").await?, app).await?;
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
//! A layer placed after [`ParseMcpLayer`] finds the parsed request in the request extensions
//! with [`McpRequest::from_extensions`]: method, tool name, id and protocol era, without
//! reading or parsing the body again. To refuse a request, answer a [`JsonRpcError`] (never a
//! service error) that keeps the request's id. This one refuses calls to one tool:
//!
//! ```
//! use bytes::Bytes;
//! use futures_util::future::Either;
//! use http::{Request, Response, StatusCode};
//! use mcp_gateway_layers::{ErrorCode, JsonRpcError, McpRequest, ResponseBody};
//! use std::future::{ready, Ready};
//! use std::task::{Context, Poll};
//! use tower::{Layer, Service};
//!
//! /// Refuses `tools/call` for one tool; everything else passes.
//! #[derive(Clone)]
//! struct DenyToolLayer(&'static str);
//!
//! impl<S> Layer<S> for DenyToolLayer {
//!     type Service = DenyTool<S>;
//!     fn layer(&self, inner: S) -> DenyTool<S> {
//!         DenyTool { inner, tool: self.0 }
//!     }
//! }
//!
//! #[derive(Clone)]
//! struct DenyTool<S> {
//!     inner: S,
//!     tool: &'static str,
//! }
//!
//! impl<S, B, RB> Service<Request<B>> for DenyTool<S>
//! where
//!     S: Service<Request<B>, Response = Response<ResponseBody<RB>>>,
//! {
//!     type Response = S::Response;
//!     type Error = S::Error;
//!     type Future = Either<S::Future, Ready<Result<S::Response, S::Error>>>;
//!
//!     fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
//!         self.inner.poll_ready(cx)
//!     }
//!
//!     fn call(&mut self, req: Request<B>) -> Self::Future {
//!         if let Some(mcp) = McpRequest::from_extensions(req.extensions()) {
//!             let msg = mcp.single();
//!             let denied = msg.is_some_and(|m| {
//!                 m.method() == Some("tools/call") && m.target() == Some(self.tool)
//!             });
//!             if denied {
//!                 let err = JsonRpcError::new(ErrorCode::GATEWAY_REFUSED, "tool not allowed");
//!                 let resp = err.into_response(StatusCode::FORBIDDEN, mcp.reply_id());
//!                 return Either::Right(ready(Ok(resp.map(ResponseBody::full))));
//!             }
//!         }
//!         Either::Left(self.inner.call(req))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use http_body_util::{BodyExt, Full};
//! use mcp_gateway_layers::ParseMcpLayer;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! // Stands in for `Upstream` (or any service answering `ResponseBody`).
//! let server = service_fn(|_req: Request<Full<Bytes>>| async {
//!     let body = ResponseBody::inner(Full::new(Bytes::from_static(b"forwarded")));
//!     Ok::<_, std::convert::Infallible>(Response::new(body))
//! });
//! let svc = ServiceBuilder::new()
//!     .layer(ParseMcpLayer::new())
//!     .layer(DenyToolLayer("delete_everything"))
//!     .service(server);
//!
//! let call = |tool: &str| {
//!     let body = format!(
//!         r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"{tool}"}}}}"#
//!     );
//!     Request::post("/mcp")
//!         .header("content-type", "application/json")
//!         .body(Full::new(Bytes::from(body)))
//!         .unwrap()
//! };
//! let refused = svc.clone().oneshot(call("delete_everything")).await.unwrap();
//! assert_eq!(refused.status(), StatusCode::FORBIDDEN);
//! let body = refused.into_body().collect().await.unwrap().to_bytes();
//! let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
//! assert_eq!(json["id"], 7);
//! assert_eq!(json["error"]["code"], ErrorCode::GATEWAY_REFUSED.0);
//!
//! let allowed = svc.oneshot(call("echo")).await.unwrap();
//! assert_eq!(allowed.status(), StatusCode::OK);
//! let body = allowed.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(body, "forwarded");
//! # }
//! ```
#![forbid(unsafe_code)]
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
#[cfg(any(
    feature = "auth",
    feature = "limits",
    feature = "sessions",
    feature = "telemetry",
    feature = "audit"
))]
pub mod config;
#[cfg(any(feature = "auth", feature = "telemetry-otlp"))]
pub mod http_client;
#[cfg(feature = "limits")]
pub mod limits;
pub mod observe;
pub mod origin;
pub mod parse;
#[cfg(any(feature = "limits-redis", feature = "sessions-redis"))]
mod redis_link;
pub mod scope;
#[cfg(feature = "sessions")]
pub mod sessions;
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
pub use body::ResponseBody;
#[cfg(feature = "limits")]
pub use limits::{TokenBucket2D, TokenBucket2DLayer};
pub use observe::{Observe, ObserveLayer};
pub use origin::{AllowedOrigins, OriginGuard, OriginGuardLayer};
pub use parse::{ParseMcp, ParseMcpLayer};
pub use scope::Scope;
#[cfg(feature = "sessions")]
pub use sessions::{SessionAffinity, SessionAffinityLayer};
#[cfg(feature = "telemetry")]
pub use telemetry::{TraceInject, TraceInjectLayer};
pub use toggle::{Toggle, Toggled};

/// The boxed error type bodies and services report.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
