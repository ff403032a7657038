//! `[telemetry]` and `[admin]`: trace context, spans and metrics (TraceInject), and the
//! operator's listener for `/metrics`, `/healthz` and `/readyz`.
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
//!
//! [admin]
//! listen = "127.0.0.1:9464"                 # /metrics, /healthz, /readyz
//! ```
//!
//! `otlp_endpoint` is the collector's base URL: spans are POSTed to `{otlp_endpoint}/v1/traces`
//! (a URL already ending in `/v1/traces` is used as it is).

use crate::auth_config::Errs;
use crate::config::Dur;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use toml::Spanned;

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

/// `[admin]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// The admin listener's address.
    pub listen: Spanned<SocketAddr>,
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

/// Checked `[admin]`.
#[derive(Debug, Clone)]
pub struct AdminSpec {
    /// Listen address.
    pub listen: SocketAddr,
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

/// Checks `[telemetry]`.
pub(crate) fn check_telemetry(c: &TelemetryConfig, e: &mut Errs<'_>) -> Option<TelemetrySpec> {
    let before = e.list.len();
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
            }
            _ => e.at(
                Some(u.span()),
                format!("telemetry.otlp_endpoint: {url:?} is not an http:// or https:// URL"),
            ),
        }
    }
    if let Some(n) = &c.service_name {
        if n.get_ref().trim().is_empty() {
            e.at(Some(n.span()), "telemetry.service_name is empty".into());
        } else {
            spec.service_name = n.get_ref().trim().to_owned();
        }
    }
    if let Some(r) = &c.sample_ratio {
        let v = *r.get_ref();
        if (0.0..=1.0).contains(&v) {
            spec.sample_ratio = v;
        } else {
            e.at(
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
                e.at(
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
            e.at(
                Some(t.span()),
                "telemetry.export_timeout must be above zero".into(),
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
                _ => e.at(
                    Some(n.span()),
                    format!("telemetry.{name} must be at least 1"),
                ),
            }
        }
    }
    (e.list.len() == before).then_some(spec)
}

/// Checks `[admin]`.
pub(crate) fn check_admin(c: &AdminConfig) -> AdminSpec {
    AdminSpec {
        listen: *c.listen.get_ref(),
    }
}
