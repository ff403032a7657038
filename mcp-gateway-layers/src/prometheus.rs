//! Every layer's metrics in one Prometheus text rendering: what an app serves at `/metrics`,
//! as the `mcp-gateway` binary's admin listener does.
//!
//! Register the layers (and the audit writer) whose metrics to show, then render them, or
//! mount [`Prometheus::service`] on a route. Each source keeps its live counters: a render
//! reads them at that moment.
//!
//! ```
//! # #[cfg(feature = "limits")] {
//! use mcp_gateway_layers::limits::{Limits, TokenBucket2DLayer};
//! use mcp_gateway_layers::prometheus::Prometheus;
//!
//! let limits = TokenBucket2DLayer::new(Limits::new().requests_per_minute(600));
//! let metrics = Prometheus::new().with(limits.clone());
//! assert!(metrics.render().contains("# TYPE"));
//! // In an axum app: `Router::new().route_service("/metrics", metrics.service())`.
//! # }
//! ```

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use std::convert::Infallible;
use std::future::{ready, Ready};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_service::Service;

/// Something whose metrics appear on `/metrics`: the governing layers that keep counters
/// (`TraceInjectLayer`, `TokenBucket2DLayer`, `SessionAffinityLayer`) and the `AuditWriter`.
pub trait RenderPrometheus: Send + Sync + 'static {
    /// Appends the metrics in the Prometheus text format (0.0.4).
    fn render_prometheus(&self, out: &mut String);
}

/// The metrics of several layers, rendered as one text. Cheap to clone.
#[derive(Clone, Default)]
pub struct Prometheus {
    sources: Vec<Arc<dyn RenderPrometheus>>,
}

impl std::fmt::Debug for Prometheus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prometheus")
            .field("sources", &self.sources.len())
            .finish()
    }
}

impl Prometheus {
    /// No sources yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a source; sources render in the order they were added.
    pub fn with(mut self, source: impl RenderPrometheus) -> Self {
        self.sources.push(Arc::new(source));
        self
    }

    /// Adds a source, when there is one (a layer that is switched off has none).
    pub fn with_some(self, source: Option<impl RenderPrometheus>) -> Self {
        match source {
            Some(s) => self.with(s),
            None => self,
        }
    }

    /// Appends every source's metrics to `out`.
    pub fn render_into(&self, out: &mut String) {
        for s in &self.sources {
            s.render_prometheus(out);
        }
    }

    /// Every source's metrics, as one text.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        self.render_into(&mut out);
        out
    }

    /// A tower service that answers `GET` (and `HEAD`) with [`render`](Self::render), in the
    /// Prometheus text format; any other method gets 405.
    pub fn service(&self) -> PrometheusService {
        PrometheusService(self.clone())
    }
}

/// The `/metrics` endpoint of a [`Prometheus`]: see [`Prometheus::service`].
#[derive(Clone, Debug)]
pub struct PrometheusService(Prometheus);

impl<B> Service<Request<B>> for PrometheusService {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let mut resp = if req.method() == Method::GET || req.method() == Method::HEAD {
            let mut r = Response::new(Full::new(Bytes::from(self.0.render())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        } else {
            let mut r = Response::new(Full::new(Bytes::from_static(b"GET only\n")));
            *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            r
        };
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        ready(Ok(resp))
    }
}

impl<T: RenderPrometheus> RenderPrometheus for Arc<T> {
    fn render_prometheus(&self, out: &mut String) {
        (**self).render_prometheus(out);
    }
}

#[cfg(feature = "limits")]
impl RenderPrometheus for crate::limits::TokenBucket2DLayer {
    fn render_prometheus(&self, out: &mut String) {
        crate::limits::TokenBucket2DLayer::render_prometheus(self, out);
    }
}

#[cfg(feature = "integrity")]
impl RenderPrometheus for crate::integrity::ToolIntegrityLayer {
    fn render_prometheus(&self, out: &mut String) {
        crate::integrity::ToolIntegrityLayer::render_prometheus(self, out);
    }
}

#[cfg(feature = "sessions")]
impl RenderPrometheus for crate::sessions::SessionAffinityLayer {
    fn render_prometheus(&self, out: &mut String) {
        crate::sessions::SessionAffinityLayer::render_prometheus(self, out);
    }
}

#[cfg(feature = "telemetry")]
impl RenderPrometheus for crate::telemetry::TraceInjectLayer {
    fn render_prometheus(&self, out: &mut String) {
        self.metrics().render_prometheus(out);
    }
}

#[cfg(feature = "audit")]
impl RenderPrometheus for crate::audit::AuditWriter {
    fn render_prometheus(&self, out: &mut String) {
        self.stats().render_prometheus(out);
    }
}
