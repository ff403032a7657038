//! Tower layers that govern MCP traffic, usable alone over any hyper or axum service, or
//! stacked in the `mcp-gateway` binary.
//!
//! | module | what it does | feature |
//! |---|---|---|
//! | [`parse`] | buffers the request body up to a limit, classifies it once, checks the 2026-07-28 headers, and puts an [`McpRequest`](mcp_gateway_core::McpRequest) in request extensions | always |
//! | [`origin`] | rejects browser requests from origins that are not allowed (DNS-rebinding defence) | always |
#![cfg_attr(
    feature = "upstream",
    doc = "| [`upstream`] | forwards to an MCP server: streamed bodies, SSE flushed per event, hop-by-hop and `Authorization` headers removed, timeouts | `upstream` |"
)]
#![cfg_attr(
    not(feature = "upstream"),
    doc = "| `upstream` | forwards to an MCP server: streamed bodies, SSE flushed per event, hop-by-hop and `Authorization` headers removed, timeouts | `upstream` |"
)]
//!
//! Every rejection is a response (a JSON-RPC error with the right HTTP status), never a
//! service error, so the layers work under axum, whose services are infallible.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod body;
pub mod origin;
pub mod parse;
#[cfg(feature = "upstream")]
pub mod upstream;

pub use body::ResponseBody;
pub use origin::{AllowedOrigins, OriginGuard, OriginGuardLayer};
pub use parse::{ParseMcp, ParseMcpLayer};

/// The boxed error type bodies and services report.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
