//! Tower layers that govern MCP traffic, usable alone over any hyper or axum service, or
//! stacked in the `mcp-gateway` binary.
//!
//! | module | what it does | feature |
//! |---|---|---|
//! | [`parse`] | buffers the request body up to a limit, classifies it once, checks the 2026-07-28 headers, and puts an [`McpRequest`](mcp_gateway_core::McpRequest) in request extensions | always |
//! | [`origin`] | rejects browser requests from origins that are not allowed (DNS-rebinding defence) | always |
//! | [`scope`] | joins the per-request record and attaches response observers: the plumbing every governing layer shares | always |
//! | [`observe`] | attaches an observer of your own to every response (one decode, shared with the gateway's layers) | always |
//! | [`toggle`] | a layer switched on or off when the stack is built | always |
#![cfg_attr(
    feature = "upstream",
    doc = "| [`upstream`] | forwards to an MCP server: streamed bodies, SSE flushed per event, hop-by-hop and `Authorization` headers removed, timeouts | `upstream` |"
)]
#![cfg_attr(
    not(feature = "upstream"),
    doc = "| `upstream` | forwards to an MCP server: streamed bodies, SSE flushed per event, hop-by-hop and `Authorization` headers removed, timeouts | `upstream` |"
)]
#![cfg_attr(
    feature = "limit",
    doc = "| [`limit`] | per-agent request and token budgets (TokenBucket2D): 429 before the server, output tokens counted as the response streams, cost attribution; Redis store for replicas | `limit`, `limit-redis` |"
)]
#![cfg_attr(
    not(feature = "limit"),
    doc = "| `limit` | per-agent request and token budgets (TokenBucket2D): 429 before the server, output tokens counted as the response streams, cost attribution; Redis store for replicas | `limit`, `limit-redis` |"
)]
//!
//! Every rejection is a response (a JSON-RPC error with the right HTTP status), never a
//! service error, so the layers work under axum, whose services are infallible.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

pub mod body;
#[cfg(feature = "limit")]
pub mod limit;
pub mod observe;
pub mod origin;
pub mod parse;
pub mod scope;
pub mod toggle;
#[cfg(feature = "upstream")]
pub mod upstream;

pub use body::ResponseBody;
#[cfg(feature = "limit")]
pub use limit::{TokenBucket2D, TokenBucket2DLayer};
pub use observe::{Observe, ObserveLayer};
pub use origin::{AllowedOrigins, OriginGuard, OriginGuardLayer};
pub use parse::{ParseMcp, ParseMcpLayer};
pub use scope::Scope;
pub use toggle::{Toggle, Toggled};

/// The boxed error type bodies and services report.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
