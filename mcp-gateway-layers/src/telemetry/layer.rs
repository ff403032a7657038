use super::metrics::Metrics;
use super::service::{Governor, TraceInject, Tracer};
use crate::govern::{Govern, Governed, IntoGovern};
use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{RandomIdGenerator, SpanProcessor};
use opentelemetry_sdk::Resource;
use std::sync::Arc;
use std::time::Duration;
use tower_layer::Layer;

/// Applies [`TraceInject`]. Cheap to clone; clones share the span processor and the metrics.
#[derive(Clone)]
pub struct TraceInjectLayer {
    governor: Governor,
    body_limit: usize,
}

impl std::fmt::Debug for TraceInjectLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceInjectLayer")
            .field("exports_spans", &self.governor.tracer.processor.is_some())
            .field("sample_ratio", &self.governor.tracer.ratio)
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
            governor: Governor {
                tracer: Arc::new(Tracer {
                    processor: None,
                    ratio: 1.0,
                    metrics: Metrics::default(),
                    instrumentation: InstrumentationScope::builder("mcp-gateway")
                        .with_version(env!("CARGO_PKG_VERSION"))
                        .build(),
                    ids: RandomIdGenerator::default(),
                }),
            },
            body_limit: crate::parse::DEFAULT_BODY_LIMIT,
        }
    }

    /// Changes the tracer's settings (on a copy when clones share it: every earlier setting
    /// is kept).
    fn edit(mut self, f: impl FnOnce(&mut Tracer)) -> Self {
        f(Arc::make_mut(&mut self.governor.tracer));
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
    /// [`MetricsOptions`](super::MetricsOptions)).
    pub fn metrics_registry(self, metrics: Metrics) -> Self {
        self.edit(|s| s.metrics = metrics)
    }

    /// The largest request body read when no layer above has read it. Default: 4 MiB.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// The metrics registry (render it with [`Metrics::render_prometheus`]).
    pub fn metrics(&self) -> &Metrics {
        &self.governor.tracer.metrics
    }

    /// Exports the spans still queued in the processor.
    pub fn force_flush(&self) -> OTelSdkResult {
        match &self.governor.tracer.processor {
            Some(p) => p.force_flush(),
            None => Ok(()),
        }
    }

    /// Exports what is queued and stops the processor (at shutdown), waiting at most `timeout`.
    pub fn shutdown(&self, timeout: Duration) -> OTelSdkResult {
        match &self.governor.tracer.processor {
            Some(p) => p.shutdown_with_timeout(timeout),
            None => Ok(()),
        }
    }
}

impl TraceInjectLayer {
    /// The deciding part, to stack in a [`Chain`](crate::govern::Chain).
    pub fn governor(&self) -> &Governor {
        &self.governor
    }
}

impl<S> Layer<S> for TraceInjectLayer {
    type Service = TraceInject<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Governed::new(self.governor.clone(), inner).body_limit(self.body_limit)
    }
}

impl IntoGovern for TraceInjectLayer {
    fn into_govern(self) -> Arc<dyn Govern> {
        Arc::new(self.governor)
    }
}
