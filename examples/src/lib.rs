//! Examples for mcp-gateway.
//!
//! - [`demo_server`]: a small MCP server built with the official `rmcp` SDK — `echo`, a
//!   per-session counter (`increment`) and a tool that streams progress (`slow_count`). The
//!   `demo-server` binary serves it; the gateway's integration tests start it in-process.
//! - `demo-client` (binary): calls the demo tools through any URL, in both protocol eras.
//! - `embed-axum` (binary): the gateway's layers and forwarding service inside an axum app.
//! - [`embed_full`]: all five governing layers in an axum app, with `/metrics`, the RFC 9728
//!   document and shutdown.
//! - [`mutable_server`]: an `rmcp` server whose tool definitions change while it serves (the
//!   tool-integrity tests' "rug pull").
//! - [`fleet_server`]: an `rmcp` server with as many tools as asked, listed in pages, that
//!   counts calls and cancellations (the virtual-server tests federate ten of them).
//! - [`conformance`]: the server the official conformance suite is run against, directly and
//!   through the gateway (`conformance-server` binary, `scripts/conformance`).
#![forbid(unsafe_code)]

pub mod conformance;
pub mod demo_server;
pub mod embed;
pub mod embed_full;
pub mod fleet_server;
pub mod mutable_server;
