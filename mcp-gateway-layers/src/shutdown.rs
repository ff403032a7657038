//! Stopping an app that embeds the layers the way the gateway binary stops: answers in flight
//! get a grace period, open streams still running after it are ended (and recorded as cut at
//! shutdown, not as clients gone), then every audit record is written and the spans still
//! queued are exported — one call, [`Shutdown::run`].
//!
//! Put [`Shutdown::layer`] outermost on the MCP routes: it hands the governing layers the
//! shutdown flag and ends the answers still open when the grace period is over. Give the
//! server the same shutdown: `axum::serve(..).with_graceful_shutdown(shutdown.requested())`
//! stops accepting when [`run`](Shutdown::run) starts, and finishes once the streams are ended.
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full, StreamBody};
//! use mcp_gateway_layers::shutdown::Shutdown;
//! use std::time::Duration;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let shutdown = Shutdown::new();
//! // A server whose answer never ends, as an SSE stream that stays open.
//! let svc = shutdown.layer().layer(service_fn(|_req: Request<Full<Bytes>>| async {
//!     let never = futures_util::stream::pending::<Result<http_body::Frame<Bytes>, std::convert::Infallible>>();
//!     Ok::<_, std::convert::Infallible>(Response::new(StreamBody::new(never)))
//! }));
//! let resp = svc.oneshot(Request::new(Full::new(Bytes::new()))).await.unwrap();
//! let reading = tokio::spawn(resp.into_body().collect());
//! assert_eq!(shutdown.open(), 1);
//! shutdown.run(Duration::from_millis(50)).await; // grace over: the stream is ended
//! assert!(reading.await.unwrap().is_ok());
//! assert_eq!(shutdown.open(), 0);
//! # }
//! ```

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use mcp_gateway_core::observe::Cutoff;
use pin_project_lite::pin_project;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tower_layer::Layer;
use tower_service::Service;

#[derive(Default)]
struct Shared {
    cutoff: Cutoff,
    /// Answers whose body is still open.
    open: AtomicUsize,
    /// The wakers of open bodies waiting on their server, by body.
    waiting: Mutex<HashMap<u64, Waker>>,
    /// Numbers bodies (their keys in `waiting`).
    next: AtomicU64,
    /// Set when `run` starts.
    is_requested: AtomicBool,
    requested: tokio::sync::Notify,
    #[cfg(feature = "audit")]
    audit: Mutex<Option<crate::audit::AuditWriter>>,
    #[cfg(feature = "telemetry-otlp")]
    telemetry: Mutex<Option<crate::telemetry::TraceInjectLayer>>,
}

/// The shutdown of an app that embeds the layers. Cheap to clone; clones share the state.
#[derive(Clone, Default)]
pub struct Shutdown(Arc<Shared>);

impl std::fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shutdown")
            .field("cut", &self.0.cutoff.is_triggered())
            .field("open", &self.open())
            .finish_non_exhaustive()
    }
}

impl Shutdown {
    /// A shutdown not requested yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes and syncs every record of `writer` at shutdown (waiting at most 10 s).
    #[cfg(feature = "audit")]
    pub fn audit(self, writer: crate::audit::AuditWriter) -> Self {
        *self.0.audit.lock().unwrap_or_else(|p| p.into_inner()) = Some(writer);
        self
    }

    /// Exports the spans `layer` still holds at shutdown (waiting at most 5 s).
    #[cfg(feature = "telemetry-otlp")]
    pub fn telemetry(self, layer: crate::telemetry::TraceInjectLayer) -> Self {
        *self.0.telemetry.lock().unwrap_or_else(|p| p.into_inner()) = Some(layer);
        self
    }

    /// The layer that hands the governing layers the shutdown flag and ends, at the end of
    /// the grace period, the answers still open. Put it outermost.
    pub fn layer(&self) -> ShutdownLayer {
        ShutdownLayer(self.clone())
    }

    /// How many answers are still open (their body not over).
    pub fn open(&self) -> usize {
        self.0.open.load(Ordering::Acquire)
    }

    /// Resolves once [`run`](Self::run) has started: what a server's graceful shutdown waits
    /// for to stop accepting.
    pub fn requested(&self) -> impl Future<Output = ()> + Send + 'static {
        let this = self.clone();
        async move {
            let notified = this.0.requested.notified();
            if this.is_requested() {
                return;
            }
            notified.await;
        }
    }

    fn is_requested(&self) -> bool {
        self.0.is_requested.load(Ordering::Acquire)
    }

    /// Shuts down: signals [`requested`](Self::requested), lets open answers finish for up
    /// to `grace`, ends those still open (recorded as cut at shutdown), then writes every
    /// audit record and exports the queued spans.
    pub async fn run(&self, grace: Duration) {
        self.0.is_requested.store(true, Ordering::Release);
        self.0.requested.notify_waiters();
        let deadline = tokio::time::Instant::now() + grace;
        while self.open() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if self.open() > 0 {
            tracing_cut(self.open(), grace);
        }
        self.cut();
        // The ended bodies are dropped by their connections: their records follow at once.
        let settle = tokio::time::Instant::now() + Duration::from_secs(1);
        while self.open() > 0 && tokio::time::Instant::now() < settle {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        #[cfg(feature = "telemetry-otlp")]
        {
            let t = self
                .0
                .telemetry
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(t) = t {
                crate::telemetry::otlp::shutdown(&t, Duration::from_secs(5)).await;
            }
        }
        #[cfg(feature = "audit")]
        {
            let w = self
                .0
                .audit
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(w) = w {
                crate::audit::config::shutdown(&w, Duration::from_secs(10)).await;
            }
        }
    }

    /// Ends every open answer now (the end of [`run`](Self::run)'s grace period).
    pub fn cut(&self) {
        self.0.cutoff.trigger();
        let wakers: Vec<Waker> = self
            .0
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, w)| w)
            .collect();
        for w in wakers {
            w.wake();
        }
    }
}

fn tracing_cut(open: usize, grace: Duration) {
    tracing::warn!(
        open,
        ?grace,
        "shutdown grace period over: ending the answers still open"
    );
}

/// Applies the [`Shutdown`] to a service: see [`Shutdown::layer`].
#[derive(Clone, Debug)]
pub struct ShutdownLayer(Shutdown);

impl<S> Layer<S> for ShutdownLayer {
    type Service = ShutdownService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ShutdownService {
            inner,
            shutdown: self.0.clone(),
        }
    }
}

/// The service of a [`ShutdownLayer`].
#[derive(Clone, Debug)]
pub struct ShutdownService<S> {
    inner: S,
    shutdown: Shutdown,
}

impl<S, B, RB> Service<Request<B>> for ShutdownService<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<ShutdownBody<RB>>;
    type Error = S::Error;
    type Future = ShutdownFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        req.extensions_mut().insert(self.shutdown.0.cutoff.clone());
        ShutdownFuture {
            inner: self.inner.call(req),
            shutdown: Some(self.shutdown.clone()),
        }
    }
}

pin_project! {
    /// The future of a [`ShutdownService`].
    pub struct ShutdownFuture<F> {
        #[pin]
        inner: F,
        shutdown: Option<Shutdown>,
    }
}

impl<F> std::fmt::Debug for ShutdownFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShutdownFuture").finish_non_exhaustive()
    }
}

impl<F, RB, E> Future for ShutdownFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<ShutdownBody<RB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let resp = std::task::ready!(this.inner.poll(cx))?;
        let Some(shutdown) = this.shutdown.take() else {
            return Poll::Pending;
        };
        let shared = shutdown.0;
        shared.open.fetch_add(1, Ordering::AcqRel);
        let id = shared.next.fetch_add(1, Ordering::Relaxed);
        Poll::Ready(Ok(resp.map(|body| ShutdownBody {
            inner: Some(body),
            guard: Open { shared, id },
        })))
    }
}

/// Counts an open body until it is dropped (after the body it guards: fields drop in order).
struct Open {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.shared
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
        self.shared.open.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project! {
    /// An answer's body that ends when the shutdown's grace period is over.
    pub struct ShutdownBody<B> {
        #[pin]
        inner: Option<B>,
        guard: Open,
    }
}

impl<B> std::fmt::Debug for ShutdownBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShutdownBody").finish_non_exhaustive()
    }
}

impl<B> Body for ShutdownBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        if this.guard.shared.cutoff.is_triggered() {
            // Dropped here, so that whoever observes it sees a stream cut at shutdown.
            this.inner.set(None);
            return Poll::Ready(None);
        }
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            return Poll::Ready(None);
        };
        let res = inner.poll_frame(cx);
        if res.is_pending() {
            let mut waiting = this
                .guard
                .shared
                .waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            waiting.insert(this.guard.id, cx.waker().clone());
            drop(waiting);
            // Raised between the check above and the registration: do not sleep through it.
            if this.guard.shared.cutoff.is_triggered() {
                cx.waker().wake_by_ref();
            }
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
