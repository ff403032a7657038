//! [`Toggle`]: a layer switched on or off when the stack is built — a layer that is off is
//! not in the stack at all, and costs nothing per request beyond one branch.
//!
//! This is how the `mcp-gateway` binary turns its governing layers on from configuration
//! while keeping one stack type.
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use mcp_gateway_layers::{ParseMcpLayer, Toggle};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let inner = service_fn(|_req: Request<Full<Bytes>>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
//! });
//! let parse_configured = false;
//! let svc = Toggle::new(parse_configured.then(ParseMcpLayer::new)).layer(inner);
//! // Off: the request reaches `inner` untouched, even though it is not MCP.
//! let resp = svc.oneshot(Request::new(Full::new(Bytes::from_static(b"not json")))).await.unwrap();
//! assert_eq!(resp.status(), 200);
//! # }
//! ```

use crate::body::{Refused, ResponseBody};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower_layer::Layer;
use tower_service::Service;

/// A layer that is applied when present. See the module docs.
#[derive(Clone, Debug)]
pub struct Toggle<L> {
    layer: Option<L>,
}

impl<L> Toggle<L> {
    /// `Some(layer)`: on; `None`: off.
    pub fn new(layer: Option<L>) -> Self {
        Self { layer }
    }
    /// Whether the layer is on.
    pub fn is_on(&self) -> bool {
        self.layer.is_some()
    }
}

impl<S, L: Layer<S>> Layer<S> for Toggle<L> {
    type Service = Toggled<L::Service, S>;
    fn layer(&self, inner: S) -> Self::Service {
        match &self.layer {
            Some(l) => Toggled::On(l.layer(inner)),
            None => Toggled::Off(inner),
        }
    }
}

/// The service of a [`Toggle`]: the layer's service, or the inner service alone.
#[derive(Clone, Debug)]
pub enum Toggled<A, S> {
    /// The layer is on.
    On(A),
    /// The layer is off.
    Off(S),
}

/// A layer's response body that can also carry its inner service's body unchanged: what a
/// [`Toggled`] service that is off answers with.
pub trait WrapBody<B> {
    /// The inner service's body, passed through.
    fn wrap(inner: B) -> Self;
}

impl<B> WrapBody<B> for ResponseBody<B> {
    fn wrap(inner: B) -> Self {
        ResponseBody::inner(inner)
    }
}

impl<B> WrapBody<B> for Refused<B> {
    fn wrap(inner: B) -> Self {
        Either::<B, Full<Bytes>>::Left(inner)
    }
}

impl<A, S, Req, B, AB> Service<Request<Req>> for Toggled<A, S>
where
    A: Service<Request<Req>, Response = Response<AB>>,
    S: Service<Request<Req>, Response = Response<B>, Error = A::Error>,
    AB: WrapBody<B>,
{
    type Response = Response<AB>;
    type Error = A::Error;
    type Future = ToggledFuture<A::Future, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self {
            Self::On(a) => a.poll_ready(cx),
            Self::Off(s) => s.poll_ready(cx),
        }
    }

    fn call(&mut self, req: Request<Req>) -> Self::Future {
        match self {
            Self::On(a) => ToggledFuture::On { fut: a.call(req) },
            Self::Off(s) => ToggledFuture::Off { fut: s.call(req) },
        }
    }
}

pin_project! {
    /// The future of a [`Toggled`] service.
    #[project = ToggledProj]
    #[allow(missing_docs)]
    pub enum ToggledFuture<FA, FS> {
        /// The layer's future.
        On { #[pin] fut: FA },
        /// The inner service's future.
        Off { #[pin] fut: FS },
    }
}

impl<FA, FS, B, AB, E> Future for ToggledFuture<FA, FS>
where
    FA: Future<Output = Result<Response<AB>, E>>,
    FS: Future<Output = Result<Response<B>, E>>,
    AB: WrapBody<B>,
{
    type Output = Result<Response<AB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ToggledProj::On { fut } => fut.poll(cx),
            ToggledProj::Off { fut } => fut.poll(cx).map(|r| r.map(|resp| resp.map(AB::wrap))),
        }
    }
}
