//! [`boxed`]: a layer whose answers all have one body type, [`BoxBody`], whatever the layer
//! and the service below — so that governing layers switched on or off with tower's
//! `ServiceBuilder::option_layer` line up.
//!
//! Each governing layer wraps the body of the service below in its own type, and tower's
//! `Either` (what `option_layer` builds) needs both branches — the layer on, the layer off — to
//! answer with the same type. Box each optional layer, and the service at the bottom, and
//! they do. Each box costs an allocation per answer; a stack that knows its layers when it is
//! built can use [`Toggle`](crate::Toggle) or a [`Chain`](crate::govern::Chain) instead, which
//! box nothing.
//!
//! ```
//! # #[cfg(all(feature = "limits", feature = "auth"))] {
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use mcp_gateway_layers::auth::{ApiKeys, OAuthGuardLayer};
//! use mcp_gateway_layers::boxed::boxed;
//! use mcp_gateway_layers::limits::{Limits, TokenBucket2DLayer};
//! use tower::layer::util::Identity;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let auth: Option<OAuthGuardLayer> =
//!     Some(OAuthGuardLayer::new(ApiKeys::new(), "https://gw.example.com/mcp"));
//! let limits: Option<TokenBucket2DLayer> = None; // switched off by configuration
//! let svc = ServiceBuilder::new()
//!     .option_layer(auth.map(boxed))
//!     .option_layer(limits.map(boxed))
//!     .layer(boxed(Identity::new())) // the bottom answers a `BoxBody` too
//!     .service(service_fn(|_req: Request<Full<Bytes>>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
//!     }));
//! let call = Request::post("/mcp")
//!     .header("content-type", "application/json")
//!     .body(Full::new(Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)))
//!     .unwrap();
//! assert_eq!(svc.oneshot(call).await.unwrap().status(), 401); // no token: the guard is on
//! # }
//! # }
//! ```

use crate::BoxError;
use bytes::Bytes;
use http::Response;
use http_body::Body;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower_layer::Layer;
use tower_service::Service;

/// The one body type of boxed layers' answers.
pub type BoxBody = UnsyncBoxBody<Bytes, BoxError>;

/// `layer`, with its answers' bodies boxed into a [`BoxBody`]. See the module docs.
pub fn boxed<L>(layer: L) -> Boxed<L> {
    Boxed(layer)
}

/// A layer whose answers are boxed: see [`boxed`].
#[derive(Clone, Debug)]
pub struct Boxed<L>(L);

impl<S, L: Layer<S>> Layer<S> for Boxed<L> {
    type Service = BoxedService<L::Service>;
    fn layer(&self, inner: S) -> Self::Service {
        BoxedService(self.0.layer(inner))
    }
}

/// The service of a [`Boxed`] layer.
#[derive(Clone, Debug)]
pub struct BoxedService<S>(S);

impl<S, R, B> Service<R> for BoxedService<S>
where
    S: Service<R, Response = Response<B>>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<BoxBody>;
    type Error = S::Error;
    type Future = BoxedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        BoxedFuture {
            inner: self.0.call(req),
        }
    }
}

pin_project! {
    /// The future of a [`BoxedService`].
    pub struct BoxedFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F> std::fmt::Debug for BoxedFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoxedFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for BoxedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<BoxBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project()
            .inner
            .poll(cx)
            .map(|r| r.map(|resp| resp.map(|b| b.map_err(Into::into).boxed_unsync())))
    }
}
