//! Shared building blocks of **mcp-gateway**: everything the gateway layers need to agree on.
//!
//! - [`message`]: classify a JSON-RPC request body once (method, id, kind, tool/prompt name,
//!   resource URI, `params._meta`) without building a DOM of the arguments.
//! - [`era`]: tell the legacy (session) protocol era from the 2026-07-28 (sessionless) one, and
//!   check that the `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name` headers match the body.
//! - [`meta`]: rewrite `params._meta` keys while keeping every other byte of the body.
//! - [`sse`]: an incremental, bounded Server-Sent Events decoder and an encoder.
//! - [`jsonrpc`]: request ids, error codes and JSON-RPC error responses with the right HTTP status.
//! - [`request`]: [`McpRequest`], the parsed view that travels in request extensions so that no
//!   layer parses a body twice.
//! - [`principal`]: [`Principal`], the identity that authentication hands to later layers.
//! - [`exchange`]: [`Exchange`], the per-request record every governing layer writes its
//!   decisions to, so outer layers (tracing, audit) see what inner ones decided.
//! - [`observe`]: the response observer — each JSON-RPC message of a JSON or SSE response,
//!   decoded once as it streams, shown to every registered [`Observer`], with an end-of-stream
//!   hook that fires exactly once.
//! - [`outcome`]: [`Outcome`], how an exchange ended, decided by one set of rules for the audit
//!   log, spans, metrics and the access log.
//! - [`session`]: [`handle_of`](session::handle_of), how logs name a legacy session — by a
//!   handle, never by an id a client could present.
//!
//! ```
//! use mcp_gateway_core::message::{classify, MessageKind};
//!
//! let body = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}"#;
//! let parsed = classify(body).unwrap();
//! let msg = parsed.single().unwrap();
//! assert_eq!(msg.kind(), MessageKind::Request);
//! assert_eq!(msg.method(), Some("tools/call"));
//! assert_eq!(msg.target(), Some("echo"));
//! assert_eq!(msg.id().unwrap().as_raw(), "7");
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod era;
pub mod exchange;
pub mod headers;
pub mod jsonrpc;
pub mod message;
pub mod meta;
pub mod observe;
pub mod outcome;
pub mod principal;
pub mod request;
mod scan;
pub mod session;
pub mod sse;
mod text;

pub use era::{Era, ProtocolInfo};
pub use exchange::{Denial, DenialKind, Exchange, ExchangeContext, Record};
pub use jsonrpc::{ErrorCode, JsonRpcError, RequestId};
pub use message::{classify, McpMessage, MessageKind, ParsedBody};
pub use observe::{EndReason, Ending, ObservedBody, ObservedMessage, Observer};
pub use outcome::Outcome;
pub use principal::{
    ChargedElsewhere, ConnectionLost, InstanceUnreachable, Principal, PrincipalKind,
    UpstreamAuthorization,
};
pub use request::McpRequest;
