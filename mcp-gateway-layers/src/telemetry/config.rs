//! `[telemetry]`: trace context, spans and metrics (TraceInject), as written in the gateway's
//! configuration file, checked with a location for every error, and built into a
//! [`TraceInjectLayer`].
//!
//! ```toml
//! [telemetry]                               # absent: nothing injected, exported or counted
//! otlp_endpoint = "http://127.0.0.1:4318"   # OTLP/HTTP (protobuf); absent: no span export
//! service_name = "mcp-gateway"
//! sample_ratio = 1.0                        # share of new traces recorded (callers' flags win)
//! # headers = { Authorization = "Basic …" } # sent with every export (hosted backends)
//! # export_timeout = "10s"
//! # max_queue = 2048                        # spans waiting for export; more are dropped
//! # max_series = 10000                      # metric label sets kept
//! ```
//!
//! `otlp_endpoint` is the collector's base URL: spans are POSTed to `{otlp_endpoint}/v1/traces`
//! (a URL already ending in `/v1/traces` is used as it is). Span export needs the
//! `telemetry-otlp` feature.
//!
//! An app with its own TOML file reads the section with [`from_toml`] (the binary's
//! validation, [`check`], with errors located in the app's file):
//!
//! ```
//! use mcp_gateway_layers::telemetry::config;
//!
//! let spec = config::from_toml("[telemetry]\nservice_name = \"app\"\n", "app.toml")?;
//! assert!(spec.is_some());
//!
//! let bad = "[telemetry]\nsample_ratio = 2.0\n";
//! assert_eq!(
//!     config::from_toml(bad, "app.toml").unwrap_err().to_string(),
//!     "app.toml:2:16: telemetry.sample_ratio must be between 0.0 and 1.0, not 2"
//! );
//! # Ok::<(), mcp_gateway_layers::config::ConfigErrors>(())
//! ```

use super::{Metrics, MetricsOptions, TraceInjectLayer};
use crate::config::{check_section, ConfigErrors, Diagnostics, Dur, Spanned};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// `[telemetry]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The OTLP/HTTP collector's base URL. Absent: spans are not exported.
    #[serde(default)]
    pub otlp_endpoint: Option<Spanned<String>>,
    /// `service.name` of the exported resource. Default `mcp-gateway`.
    #[serde(default)]
    pub service_name: Option<Spanned<String>>,
    /// Share of new traces whose spans are recorded, 0.0–1.0. Default 1.0.
    #[serde(default)]
    pub sample_ratio: Option<Spanned<f64>>,
    /// Headers sent with every export.
    #[serde(default)]
    pub headers: Option<Spanned<BTreeMap<String, String>>>,
    /// How long one export may take. Default 10 s.
    #[serde(default)]
    pub export_timeout: Option<Spanned<Dur>>,
    /// Spans that may wait for export. Default 2048.
    #[serde(default)]
    pub max_queue: Option<Spanned<u64>>,
    /// Metric label sets kept. Default 10 000.
    #[serde(default)]
    pub max_series: Option<Spanned<u64>>,
}

/// Checked `[telemetry]`.
#[derive(Debug, Clone)]
pub struct TelemetrySpec {
    /// Where spans are POSTed (`…/v1/traces`), when exporting.
    pub traces_url: Option<String>,
    /// `service.name`.
    pub service_name: String,
    /// Sample ratio.
    pub sample_ratio: f64,
    /// Export headers.
    pub headers: Vec<(String, String)>,
    /// Export timeout.
    pub export_timeout: Duration,
    /// Export queue.
    pub max_queue: usize,
    /// Metric series bound.
    pub max_series: usize,
}

impl TelemetrySpec {
    /// Telemetry on, no export: trace context injected and metrics kept.
    pub fn local() -> Self {
        Self {
            traces_url: None,
            service_name: "mcp-gateway".into(),
            sample_ratio: 1.0,
            headers: Vec::new(),
            export_timeout: Duration::from_secs(10),
            max_queue: 2048,
            max_series: 10_000,
        }
    }
}

/// `[telemetry]` of the TOML `text` of the file `source`, checked by [`check`] as the binary
/// checks it: every error, located in `source`, or the spec — `None` when the file has no
/// `[telemetry]`.
pub fn from_toml(text: &str, source: &str) -> Result<Option<TelemetrySpec>, ConfigErrors> {
    check_section(text, source, "telemetry", |t, _, e| check(t, e))
}

/// Checks `[telemetry]`. Each problem is reported at its key; `None` when there was one.
pub fn check(c: &TelemetryConfig, e: &mut Diagnostics<'_>) -> Option<TelemetrySpec> {
    let before = e.count();
    let mut spec = TelemetrySpec::local();
    if let Some(u) = &c.otlp_endpoint {
        let url = u.get_ref().trim();
        match url.parse::<http::Uri>() {
            Ok(uri)
                if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() =>
            {
                let base = url.trim_end_matches('/');
                spec.traces_url = Some(if base.ends_with("/v1/traces") {
                    base.to_owned()
                } else {
                    format!("{base}/v1/traces")
                });
                #[cfg(not(feature = "telemetry-otlp"))]
                e.error(
                    Some(u.span()),
                    "telemetry.otlp_endpoint: span export is not built in (feature `telemetry-otlp`)",
                );
            }
            _ => e.error(
                Some(u.span()),
                format!("telemetry.otlp_endpoint: {url:?} is not an http:// or https:// URL"),
            ),
        }
    }
    if let Some(n) = &c.service_name {
        if n.get_ref().trim().is_empty() {
            e.error(Some(n.span()), "telemetry.service_name is empty");
        } else {
            spec.service_name = n.get_ref().trim().to_owned();
        }
    }
    if let Some(r) = &c.sample_ratio {
        let v = *r.get_ref();
        if (0.0..=1.0).contains(&v) {
            spec.sample_ratio = v;
        } else {
            e.error(
                Some(r.span()),
                format!("telemetry.sample_ratio must be between 0.0 and 1.0, not {v}"),
            );
        }
    }
    if let Some(h) = &c.headers {
        for (k, v) in h.get_ref() {
            if http::HeaderName::from_bytes(k.as_bytes()).is_err()
                || http::HeaderValue::from_str(v).is_err()
            {
                e.error(
                    Some(h.span()),
                    format!("telemetry.headers: {k:?} is not a valid header"),
                );
            } else {
                spec.headers.push((k.clone(), v.clone()));
            }
        }
    }
    if let Some(t) = &c.export_timeout {
        if t.get_ref().0.is_zero() {
            e.error(
                Some(t.span()),
                "telemetry.export_timeout must be above zero",
            );
        } else {
            spec.export_timeout = t.get_ref().0;
        }
    }
    for (name, field, target) in [
        ("max_queue", &c.max_queue, &mut spec.max_queue),
        ("max_series", &c.max_series, &mut spec.max_series),
    ] {
        if let Some(n) = field {
            match usize::try_from(*n.get_ref()) {
                Ok(v) if v > 0 => *target = v,
                _ => e.error(
                    Some(n.span()),
                    format!("telemetry.{name} must be at least 1"),
                ),
            }
        }
    }
    (e.count() == before).then_some(spec)
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
#[error("telemetry: {0}")]
pub struct TelemetryError(pub(crate) String);

/// The TraceInject layer for checked `[telemetry]`, reading request bodies up to
/// `body_limit` bytes: metrics kept in memory (for an admin listener's `/metrics`), and, with
/// an endpoint, spans exported over OTLP/HTTP from a batch processor (see
/// `telemetry::otlp`, feature `telemetry-otlp`; it needs a Tokio runtime). One layer serves
/// every route: one metrics registry, one span exporter.
pub fn layer(spec: &TelemetrySpec, body_limit: usize) -> Result<TraceInjectLayer, TelemetryError> {
    let metrics = Metrics::new(MetricsOptions {
        max_series: spec.max_series,
    });
    #[allow(unused_mut)]
    let mut layer = TraceInjectLayer::new()
        .metrics_registry(metrics)
        .sample_ratio(spec.sample_ratio)
        .body_limit(body_limit);
    if let Some(url) = &spec.traces_url {
        #[cfg(feature = "telemetry-otlp")]
        {
            let (processor, resource) = super::otlp::batch_processor(url, spec)?;
            layer = layer.span_processor(processor, &resource);
            tracing::info!(target: "mcp_gateway::telemetry", endpoint = %url, sample_ratio = spec.sample_ratio, "exporting spans over OTLP/HTTP");
        }
        #[cfg(not(feature = "telemetry-otlp"))]
        return Err(TelemetryError(format!(
            "span export to {url} is not built in (feature `telemetry-otlp`)"
        )));
    }
    Ok(layer)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::testing::run;

    #[derive(Deserialize)]
    struct Doc {
        telemetry: Option<TelemetryConfig>,
    }

    fn parse(text: &str) -> Result<TelemetrySpec, Vec<String>> {
        run(text, |d: &Doc, e| check(d.telemetry.as_ref()?, e))
    }

    #[test]
    fn defaults_and_errors() {
        let s = parse("[telemetry]\n").unwrap();
        assert!(s.traces_url.is_none());
        assert_eq!(s.service_name, "mcp-gateway");
        assert_eq!(s.max_queue, 2048);
        let e =
            parse("[telemetry]\nsample_ratio = 2.0\nmax_series = 0\notlp_endpoint = \"udp://x\"\n")
                .unwrap_err();
        assert_eq!(
            e,
            [
                "gw.toml:4:17: telemetry.otlp_endpoint: \"udp://x\" is not an http:// or https:// URL",
                "gw.toml:2:16: telemetry.sample_ratio must be between 0.0 and 1.0, not 2",
                "gw.toml:3:14: telemetry.max_series must be at least 1",
            ]
        );
    }

    #[cfg(feature = "telemetry-otlp")]
    #[test]
    fn the_endpoint_gets_its_path() {
        let s = parse("[telemetry]\notlp_endpoint = \"http://c:4318/\"\n").unwrap();
        assert_eq!(s.traces_url.as_deref(), Some("http://c:4318/v1/traces"));
        let s = parse("[telemetry]\notlp_endpoint = \"http://c:4318/v1/traces\"\n").unwrap();
        assert_eq!(s.traces_url.as_deref(), Some("http://c:4318/v1/traces"));
    }
}
