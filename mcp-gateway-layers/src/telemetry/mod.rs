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
pub mod metrics;
#[cfg(feature = "telemetry-otlp")]
pub mod otlp;
mod service;

pub use context::{Carried, TraceParent};
pub use metrics::{Metrics, MetricsOptions, Operation};
pub use opentelemetry_sdk::trace::SpanProcessor;
pub use service::TraceInject;

use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::RandomIdGenerator;
use opentelemetry_sdk::Resource;
use service::Shared;
use std::sync::Arc;
use std::time::Duration;
use tower_layer::Layer;

/// Applies [`TraceInject`]. Cheap to clone; clones share the span processor and the metrics.
#[derive(Clone)]
pub struct TraceInjectLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for TraceInjectLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceInjectLayer")
            .field("exports_spans", &self.shared.processor.is_some())
            .field("sample_ratio", &self.shared.ratio)
            .finish_non_exhaustive()
    }
}

impl Default for TraceInjectLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl TraceInjectLayer {
    /// Injects trace context and keeps metrics; exports no spans until
    /// [`span_processor`](Self::span_processor) is given. Sample ratio 1.0.
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                processor: None,
                ratio: 1.0,
                metrics: Metrics::default(),
                scope: InstrumentationScope::builder("mcp-gateway")
                    .with_version(env!("CARGO_PKG_VERSION"))
                    .build(),
                body_limit: crate::parse::DEFAULT_BODY_LIMIT,
                ids: RandomIdGenerator::default(),
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Shared)) -> Self {
        f(Arc::make_mut(&mut self.shared));
        self
    }

    /// Sends finished spans to `processor` (a `BatchSpanProcessor` over an OTLP exporter, say),
    /// describing the gateway with `resource` (its `service.name`, …).
    pub fn span_processor(
        self,
        mut processor: impl SpanProcessor + 'static,
        resource: &Resource,
    ) -> Self {
        processor.set_resource(resource);
        let processor: Arc<dyn SpanProcessor> = Arc::new(processor);
        self.edit(|s| s.processor = Some(processor))
    }

    /// The share of new traces whose spans are recorded, 0.0 to 1.0 (default 1.0). A caller's
    /// sampled flag decides for the traces it continues.
    pub fn sample_ratio(self, ratio: f64) -> Self {
        let ratio = if ratio.is_nan() {
            1.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        self.edit(|s| s.ratio = ratio)
    }

    /// Keeps metrics in `metrics` (to share one registry between layers, or bound it with
    /// [`MetricsOptions`]).
    pub fn metrics_registry(self, metrics: Metrics) -> Self {
        self.edit(|s| s.metrics = metrics)
    }

    /// The largest request body read when no layer above has read it. Default: 4 MiB.
    pub fn body_limit(self, bytes: usize) -> Self {
        self.edit(|s| s.body_limit = bytes)
    }

    /// The metrics registry (render it with [`Metrics::render_prometheus`]).
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Exports the spans still queued in the processor.
    pub fn force_flush(&self) -> OTelSdkResult {
        match &self.shared.processor {
            Some(p) => p.force_flush(),
            None => Ok(()),
        }
    }

    /// Exports what is queued and stops the processor (at shutdown), waiting at most `timeout`.
    pub fn shutdown(&self, timeout: Duration) -> OTelSdkResult {
        match &self.shared.processor {
            Some(p) => p.shutdown_with_timeout(timeout),
            None => Ok(()),
        }
    }
}

impl<S> Layer<S> for TraceInjectLayer {
    type Service = TraceInject<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TraceInject::new(inner, self.shared.clone())
    }
}
