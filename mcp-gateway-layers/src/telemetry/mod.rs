//! TraceInject: W3C trace context handed to MCP servers in `params._meta`, OpenTelemetry MCP
//! spans and RED metrics per tool and agent — with no change to the servers.
//!
//! For every POST carrying MCP requests or notifications, [`TraceInject`]:
//!
//! 1. finds the caller's context: `params._meta.traceparent`/`tracestate`/`baggage` of the
//!    first request (SEP-414), else the HTTP `traceparent`/`tracestate`/`baggage` headers.
//!    As the OpenTelemetry MCP conventions say for the receiving side, the `_meta` context is
//!    the parent and a different HTTP one becomes a link;
//! 2. opens a SERVER span for the gateway (continuing that trace, or starting one) and a
//!    CLIENT span under it for the hop to the server;
//! 3. writes the CLIENT span's context into `params._meta` of every request and notification
//!    of the body — other `_meta` keys and every other byte keep their place — and into the
//!    `traceparent`, `tracestate` and `baggage` headers; `Content-Length` follows the body;
//! 4. when the response ends (the last SSE event, for a stream), ends both spans and counts
//!    the operation in [`Metrics`].
//!
//! Spans are named `{mcp.method.name} {target}` (the tool or prompt name) or
//! `{mcp.method.name}`, and carry `mcp.method.name`, `gen_ai.tool.name`,
//! `gen_ai.operation.name`, `gen_ai.prompt.name`, `mcp.resource.uri`, `jsonrpc.request.id`,
//! `mcp.protocol.version`, `mcp.session.id` (legacy sessions), `network.*`, `client.*`,
//! `gen_ai.usage.input_tokens`/`output_tokens` (from the limits layer's count, or the usage a
//! server reports in `result._meta`), the agent (`mcp_gateway.agent`) and, for a JSON-RPC
//! error, a tool result with `isError: true` or a refusal by a layer below (401, 403, 429,
//! 404…), `error.type` with an error status. A refused request has no CLIENT span: it never
//! reached the server. `docs/observability.md` lists every attribute and metric.
//!
//! Spans go to an `opentelemetry_sdk` [`SpanProcessor`] — a `BatchSpanProcessor` over the
//! OTLP exporter of `otlp` (feature `telemetry-otlp`) in production, as [`config::layer`]
//! builds it from `[telemetry]` (export happens on the processor's own thread and never holds
//! a request up) — and only when sampled: a parent's sampled flag decides, else
//! [`TraceInjectLayer::sample_ratio`]. Context is injected whether or not the gateway samples.
//! Without a processor only the metrics are kept.
//!
//! GET (a server's stream) and DELETE pass untouched; so does a body holding only responses.
//!
//! **Versions.** `opentelemetry` and `opentelemetry_sdk` **0.33** are part of this module's
//! public API: [`TraceInjectLayer::span_processor`] takes an `opentelemetry_sdk`
//! [`SpanProcessor`] and a `Resource`. Both crates are re-exported
//! ([`opentelemetry`], [`opentelemetry_sdk`]), so
//! an app can name the very versions this crate uses; a processor built with another major
//! version of the SDK does not fit. For production export there is an OTLP/HTTP exporter in
//! `otlp` (feature `telemetry-otlp`, no other dependency): `otlp::batch_processor(...)`, and
//! `otlp::shutdown(&layer, timeout)` at exit.
//!
//! The example below checks its spans with the SDK's `InMemorySpanExporter`, which exists only
//! with the SDK's `testing` feature: to run it in your crate, add
//! `opentelemetry_sdk = { version = "0.33", features = ["testing"] }` to your dev-dependencies
//! (and `opentelemetry = "0.33"` for `SpanKind`).
//!
//! ```
//! use axum::{routing::post, Router};
//! use bytes::Bytes;
//! use http::Request;
//! use http_body_util::{BodyExt, Full};
//! use mcp_gateway_layers::telemetry::TraceInjectLayer;
//! use opentelemetry::trace::SpanKind;
//! use opentelemetry_sdk::trace::{InMemorySpanExporter, SimpleSpanProcessor};
//! use opentelemetry_sdk::Resource;
//! use tower::{Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // A plain axum app standing in for an MCP server: it answers with the `_meta` it was sent.
//! let server = Router::new().route("/mcp", post(|body: String| async move {
//!     let call: serde_json::Value = serde_json::from_str(&body).unwrap();
//!     let meta = call["params"]["_meta"].clone();
//!     serde_json::json!({"jsonrpc": "2.0", "id": 1, "result": {"_meta": meta}}).to_string()
//! }));
//!
//! let spans = InMemorySpanExporter::default();
//! let layer = TraceInjectLayer::new().span_processor(
//!     SimpleSpanProcessor::new(spans.clone()),
//!     &Resource::builder().with_service_name("mcp-gateway").build(),
//! );
//! let svc = layer.layer(server);
//!
//! let call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","_meta":{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","app/x":1}}}"#;
//! let req = Request::post("/mcp")
//!     .header("content-type", "application/json")
//!     .body(Full::new(Bytes::from_static(call.as_bytes())))
//!     .unwrap();
//! let resp = svc.oneshot(req).await.unwrap();
//! let answer: serde_json::Value =
//!     serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
//!
//! let finished = spans.get_finished_spans().unwrap();
//! let client = finished.iter().find(|s| s.span_kind == SpanKind::Client).unwrap();
//! let server = finished.iter().find(|s| s.span_kind == SpanKind::Server).unwrap();
//! assert_eq!(server.name, "tools/call echo");
//! // The caller's trace continues; the server was handed the CLIENT span's context …
//! assert_eq!(client.span_context.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
//! assert_eq!(client.parent_span_id, server.span_context.span_id());
//! let sent = answer["result"]["_meta"]["traceparent"].as_str().unwrap();
//! assert_eq!(sent, format!("00-{}-{}-01", client.span_context.trace_id(), client.span_context.span_id()));
//! // … and the caller's other `_meta` keys untouched.
//! assert_eq!(answer["result"]["_meta"]["app/x"], 1);
//! # }
//! ```

pub mod config;
mod context;
mod layer;
pub mod metrics;
#[cfg(feature = "telemetry-otlp")]
pub mod otlp;
mod service;

pub use context::{Carried, TraceParent};
pub use layer::TraceInjectLayer;
pub use metrics::{Metrics, MetricsOptions, Operation};
/// The OpenTelemetry API crate this module is built with (version 0.33): part of its public API.
pub use opentelemetry;
/// The OpenTelemetry SDK crate this module is built with (version 0.33): its span processors
/// and `Resource` are what [`TraceInjectLayer::span_processor`] takes.
pub use opentelemetry_sdk;
pub use opentelemetry_sdk::trace::SpanProcessor;
pub use service::{Governor, TraceInject};
