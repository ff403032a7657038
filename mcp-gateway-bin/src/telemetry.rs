//! Builds the TraceInject layer from `[telemetry]`: spans batched and exported over
//! OTLP/HTTP (protobuf) on the exporter's own thread, sent with the gateway's HTTP client on
//! the gateway's runtime; metrics kept in memory for the admin listener's `/metrics`.

use crate::otlp::OtlpHttpExporter;
use crate::telemetry_config::TelemetrySpec;
use mcp_gateway_layers::telemetry::{Metrics, MetricsOptions, TraceInjectLayer};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor};
use opentelemetry_sdk::Resource;
use std::time::Duration;

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
#[error("telemetry: {0}")]
pub struct TelemetryError(String);

/// The layer for `spec`; with an endpoint, spans are exported from a batch processor.
pub fn layer(spec: &TelemetrySpec, body_limit: usize) -> Result<TraceInjectLayer, TelemetryError> {
    let metrics = Metrics::new(MetricsOptions {
        max_series: spec.max_series,
    });
    let mut layer = TraceInjectLayer::new()
        .metrics_registry(metrics)
        .sample_ratio(spec.sample_ratio)
        .body_limit(body_limit);
    if let Some(url) = &spec.traces_url {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| TelemetryError("no async runtime to export spans from".into()))?;
        let exporter = OtlpHttpExporter::new(url, &spec.headers, spec.export_timeout, runtime)
            .map_err(TelemetryError)?;
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(spec.max_queue)
                    .with_scheduled_delay(Duration::from_millis(500))
                    .build(),
            )
            .build();
        let resource = Resource::builder()
            .with_service_name(spec.service_name.clone())
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        layer = layer.span_processor(processor, &resource);
        tracing::info!(target: "mcp_gateway::telemetry", endpoint = %url, sample_ratio = spec.sample_ratio, "exporting spans over OTLP/HTTP");
    }
    Ok(layer)
}
/// Exports the spans still queued and stops the exporter, waiting at most `timeout`. Runs the
/// blocking flush off the runtime's threads, which must keep driving the export itself.
pub async fn shutdown(layer: &TraceInjectLayer, timeout: Duration) {
    let layer = layer.clone();
    let done = tokio::task::spawn_blocking(move || layer.shutdown(timeout)).await;
    match done {
        Ok(Ok(())) => tracing::debug!(target: "mcp_gateway::telemetry", "spans flushed"),
        Ok(Err(e)) => {
            tracing::warn!(target: "mcp_gateway::telemetry", error = %e, "spans not all exported at shutdown");
        }
        Err(e) => tracing::warn!(target: "mcp_gateway::telemetry", error = %e, "span flush failed"),
    }
}
