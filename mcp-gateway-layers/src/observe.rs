//! [`ObserveLayer`]: attach an [`Observer`] of your own to every response, sharing the one
//! decode of the stream with the gateway's layers.
//!
//! The closure is called per request with the request head (its extensions hold the parsed
//! [`McpRequest`](mcp_gateway_core::McpRequest) and the per-request
//! [`Exchange`](mcp_gateway_core::Exchange) when layers above put them there) and returns the
//! observer for that exchange, or `None` to skip it.
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use mcp_gateway_core::observe::{ObservedMessage, Observer};
//! use mcp_gateway_layers::ObserveLayer;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! struct CountErrors(Arc<AtomicUsize>);
//! impl Observer for CountErrors {
//!     fn on_message(&mut self, msg: &ObservedMessage<'_>) {
//!         if msg.error_code().is_some() || msg.is_tool_error() {
//!             self.0.fetch_add(1, Ordering::Relaxed);
//!         }
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let errors = Arc::new(AtomicUsize::new(0));
//! let counter = errors.clone();
//! let svc = ServiceBuilder::new()
//!     .layer(ObserveLayer::new(move |_: &http::request::Parts| Some(CountErrors(counter.clone()))))
//!     .service(service_fn(|_req: Request<Full<Bytes>>| async {
//!         let body = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[],"isError":true}}"#;
//!         let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
//!         resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
//!         Ok::<_, std::convert::Infallible>(resp)
//!     }));
//! let resp = svc.oneshot(Request::new(Full::new(Bytes::new()))).await.unwrap();
//! resp.into_body().collect().await.unwrap();
//! assert_eq!(errors.load(Ordering::Relaxed), 1);
//! # }
//! ```

use crate::body::ResponseBody;
use crate::scope::Scope;
use crate::BoxError;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use http_body::Body;
use mcp_gateway_core::observe::Observer;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_layer::Layer;
use tower_service::Service;

/// Applies [`Observe`]. See the module docs.
pub struct ObserveLayer<F> {
    make: Arc<F>,
}

impl<F> Clone for ObserveLayer<F> {
    fn clone(&self) -> Self {
        Self {
            make: self.make.clone(),
        }
    }
}

impl<F> std::fmt::Debug for ObserveLayer<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObserveLayer").finish_non_exhaustive()
    }
}

impl<F> ObserveLayer<F> {
    /// A layer that asks `make` for an observer of each exchange.
    pub fn new<O>(make: F) -> Self
    where
        F: Fn(&http::request::Parts) -> Option<O>,
        O: Observer,
    {
        Self {
            make: Arc::new(make),
        }
    }
}

impl<S, F> Layer<S> for ObserveLayer<F> {
    type Service = Observe<S, F>;
    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            make: self.make.clone(),
        }
    }
}

/// Registers an observer per exchange. See the module docs.
pub struct Observe<S, F> {
    inner: S,
    make: Arc<F>,
}

impl<S: Clone, F> Clone for Observe<S, F> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            make: self.make.clone(),
        }
    }
}

impl<S: std::fmt::Debug, F> std::fmt::Debug for Observe<S, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observe")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, F, O, ReqBody, ResBody> Service<Request<ReqBody>> for Observe<S, F>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    F: Fn(&http::request::Parts) -> Option<O>,
    O: Observer,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let scope = Scope::enter(&mut req);
        let (parts, body) = req.into_parts();
        if let Some(o) = (self.make)(&parts) {
            scope.exchange().observe(o);
        }
        let req = Request::from_parts(parts, body);
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?.map(ResponseBody::inner);
            Ok(scope.finish(resp).await)
        })
    }
}
