//! [`ObserveLayer`]: attach an [`Observer`] of your own to every response, sharing the one
//! decode of the stream with the gateway's layers.
//!
//! The closure is called per request with the request head (its extensions hold the parsed
//! [`McpRequest`](mcp_gateway_core::McpRequest) and the per-request
//! [`Exchange`] when layers above put them there) and returns the
//! observer for that exchange, or `None` to skip it.
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use mcp_gateway_layers::core::observe::{ObservedMessage, Observer};
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

use crate::govern::{Decision, Govern, Governed, IntoGovern};
use crate::parse::DEFAULT_BODY_LIMIT;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use mcp_gateway_core::exchange::Exchange;
use mcp_gateway_core::observe::Observer;
use std::sync::Arc;
use tower_layer::Layer;

/// The governor of [`ObserveLayer`]: registers the observer `make` returns for each request.
pub struct Observers<F> {
    make: F,
}

impl<F> std::fmt::Debug for Observers<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observers").finish_non_exhaustive()
    }
}

impl<F, O> Govern for Observers<F>
where
    F: Fn(&http::request::Parts) -> Option<O> + Send + Sync + 'static,
    O: Observer,
{
    fn enter(&self, head: &http::request::Parts, x: &Exchange) -> Decision<()> {
        if let Some(o) = (self.make)(head) {
            x.observe(o);
        }
        Decision::Pass(())
    }

    fn admit(&self, req: Request<Full<Bytes>>, _x: &Exchange) -> Decision<Request<Full<Bytes>>> {
        Decision::Pass(req)
    }
}

/// Applies [`Observe`]. See the module docs.
pub struct ObserveLayer<F> {
    observers: Arc<Observers<F>>,
    body_limit: usize,
}

impl<F> Clone for ObserveLayer<F> {
    fn clone(&self) -> Self {
        Self {
            observers: self.observers.clone(),
            body_limit: self.body_limit,
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
            observers: Arc::new(Observers { make }),
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }

    /// The largest request body read when no layer above has read it. Default: 4 MiB.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }
}

impl<S, F> Layer<S> for ObserveLayer<F> {
    type Service = Observe<S, F>;
    fn layer(&self, inner: S) -> Self::Service {
        Governed::new(self.observers.clone(), inner).body_limit(self.body_limit)
    }
}

impl<F, O> IntoGovern for ObserveLayer<F>
where
    F: Fn(&http::request::Parts) -> Option<O> + Send + Sync + 'static,
    O: Observer,
{
    fn into_govern(self) -> Arc<dyn Govern> {
        self.observers
    }
}

/// Registers an observer per exchange: the [`Governed`] skeleton over [`Observers`]. See the
/// module docs.
pub type Observe<S, F> = Governed<Arc<Observers<F>>, S>;
