//! The one service skeleton every governing layer runs on: [`Governed`] does the plumbing —
//! join the per-request record, read and classify the request once, attach the response
//! observers once, finish — and a layer supplies only its decision, a [`Govern`]
//! implementation (in the spirit of tower-http's `AsyncAuthorizeRequest`: the deciding part
//! apart from the plumbing).
//!
//! A request through a [`Governed`] service goes:
//!
//! 1. **join**: the [`Exchange`] in the request's extensions is found or created; the first
//!    governed service to see the request [claims](Exchange::claim) it and will attach the
//!    observers;
//! 2. **enter**: [`Govern::enter`] with the request head, before the body is read (AuditLog
//!    takes its queue place here);
//! 3. **read**: the body is read (bounded) and classified once, unless an outer layer did;
//!    a bad request is refused (400, 405, 413, 415) and [`Govern::unread`] is told;
//! 4. **admit**: [`Govern::admit`] with the whole request: pass it on (possibly changed),
//!    refuse it with a [`Refusal`], or wait for something (a token verified over the network,
//!    a Redis decision) and then do either — the only step that may allocate a future, and
//!    only when it really waits;
//! 5. **call** the inner service;
//! 6. **finish**: the claiming service adds the headers layers asked for
//!    ([`Record::response_headers`](mcp_gateway_core::exchange::Record::response_headers)),
//!    attaches every registered [`Observer`](mcp_gateway_core::observe::Observer) to the
//!    response body once ([`ResponseBody`]), and puts the record on the response.
//!
//! The future is a named state machine ([`GovernedFuture`]): no boxing per layer. A stack of
//! several governing layers is one [`Governed`] over a [`Chain`] of their governors — one
//! future, one read, one response wrapper, one observation — which is how the `mcp-gateway`
//! binary stacks them. Each layer's own tower `Layer` (`TokenBucket2DLayer`, …) is the same
//! skeleton over its governor alone, so every layer is usable by itself; layers stacked with
//! `ServiceBuilder` also work, each a `Governed` of its own that only the outermost finishes.
//!
//! A client that goes away before the answer starts still ends the exchange: the claiming
//! future, dropped, shows the observers a 499 that ended with
//! [`EndReason::ClientGone`](mcp_gateway_core::observe::EndReason::ClientGone).
//!
//! A governor of your own:
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::{BodyExt, Full};
//! use mcp_gateway_layers::core::{ErrorCode, Exchange, JsonRpcError, McpRequest};
//! use mcp_gateway_layers::govern::{Decision, Govern, Governed, Refusal};
//! use std::sync::Arc;
//! use tower::{service_fn, ServiceExt};
//!
//! /// Refuses `tools/call` of one tool.
//! struct DenyTool(&'static str);
//!
//! impl Govern for DenyTool {
//!     fn admit(&self, req: Request<Full<Bytes>>, _x: &Exchange) -> Decision<Request<Full<Bytes>>> {
//!         let view = McpRequest::from_extensions(req.extensions());
//!         let call = view.and_then(McpRequest::single);
//!         if call.is_some_and(|m| m.method() == Some("tools/call") && m.target() == Some(self.0)) {
//!             let err = JsonRpcError::new(ErrorCode::GATEWAY_REFUSED, "tool not allowed");
//!             return Decision::Refuse(Refusal::new(StatusCode::FORBIDDEN, err));
//!         }
//!         Decision::Pass(req)
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let server = service_fn(|_req: Request<Full<Bytes>>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"forwarded"))))
//! });
//! let svc = Governed::new(Arc::new(DenyTool("delete_everything")), server);
//! let call = |tool: &str| {
//!     let body = format!(r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"{tool}"}}}}"#);
//!     Request::post("/mcp").header("content-type", "application/json").body(Full::new(Bytes::from(body))).unwrap()
//! };
//! let refused = svc.clone().oneshot(call("delete_everything")).await.unwrap();
//! assert_eq!(refused.status(), StatusCode::FORBIDDEN);
//! let body = refused.into_body().collect().await.unwrap().to_bytes();
//! let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
//! assert_eq!(json["id"], 7); // the refusal keeps the request's id
//! let allowed = svc.oneshot(call("echo")).await.unwrap();
//! assert_eq!(allowed.into_body().collect().await.unwrap().to_bytes(), "forwarded");
//! # }
//! ```

mod chain;
mod service;

pub use chain::Chain;
pub use service::{Governed, GovernedFuture, GovernedLayer};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use mcp_gateway_core::exchange::Exchange;
use mcp_gateway_core::jsonrpc::{JsonRpcError, RequestId};
use std::future::Future;
use std::pin::Pin;

#[allow(unused_imports)] // the module docs link to it
use crate::body::ResponseBody;

/// A future a decision waits for (rare: a network round trip, a full queue).
pub type Waiting<T> = Pin<Box<dyn Future<Output = Result<T, Refusal>> + Send>>;

/// What a governor decided about a request.
pub enum Decision<T> {
    /// Go on, with this (the request, possibly changed).
    Pass(T),
    /// Answer this refusal; nothing further runs.
    Refuse(Refusal),
    /// Wait for this, then go on or refuse.
    Wait(Waiting<T>),
}

impl<T> std::fmt::Debug for Decision<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pass(_) => f.write_str("Pass"),
            Self::Refuse(r) => f.debug_tuple("Refuse").field(r).finish(),
            Self::Wait(_) => f.write_str("Wait"),
        }
    }
}

/// A refusal: the HTTP status, the JSON-RPC error and any headers (`WWW-Authenticate`,
/// `Retry-After`, …). The answer carries the request's id when the request could be read.
#[derive(Clone, Debug)]
pub struct Refusal {
    status: StatusCode,
    error: JsonRpcError,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// A result answered instead of the error (see [`Refusal::answer`]).
    result: Option<Box<serde_json::Value>>,
}

impl Refusal {
    /// A refusal with this status and error.
    pub fn new(status: StatusCode, error: JsonRpcError) -> Self {
        Self {
            status,
            error,
            headers: Vec::new(),
            result: None,
        }
    }

    /// An answer the layer gives itself instead of the upstream's: a JSON-RPC *result*
    /// (200), such as the 2026-07-28 `input_required` result by which the gateway asks the
    /// client for input before it forwards the call.
    pub fn answer(result: serde_json::Value) -> Self {
        Self {
            status: StatusCode::OK,
            error: JsonRpcError::new(mcp_gateway_core::jsonrpc::ErrorCode::INTERNAL_ERROR, ""),
            headers: Vec::new(),
            result: Some(Box::new(result)),
        }
    }

    /// Adds a header to the answer.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Adds headers to the answer.
    pub fn headers(mut self, headers: HeaderMap) -> Self {
        self.headers
            .extend(headers.into_iter().filter_map(|(k, v)| Some((k?, v))));
        self
    }

    /// 202 Accepted with no body: what a client's notification or response gets when the
    /// layer consumed it (an answer to the gateway's own request).
    pub fn accepted() -> Self {
        Self {
            status: StatusCode::ACCEPTED,
            error: JsonRpcError::new(mcp_gateway_core::jsonrpc::ErrorCode::INTERNAL_ERROR, ""),
            headers: Vec::new(),
            result: Some(Box::new(serde_json::Value::Null)),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The answer, with `id` when the request's id is known.
    pub fn into_response(self, id: Option<&RequestId>) -> Response<Full<Bytes>> {
        let mut resp = match self.result {
            Some(_) if self.status == StatusCode::ACCEPTED => {
                let mut r = Response::new(Full::new(Bytes::new()));
                *r.status_mut() = StatusCode::ACCEPTED;
                r
            }
            Some(result) => {
                let body = serde_json::json!({"jsonrpc": "2.0", "id": id, "result": result});
                let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                r
            }
            None => self.error.into_response(self.status, id),
        };
        for (k, v) in self.headers {
            resp.headers_mut().insert(k, v);
        }
        resp
    }
}

/// The deciding part of a governing layer. See the [module docs](self).
///
/// Each method runs on the request path and must not block; anything slow is returned as
/// [`Decision::Wait`]. Write what you decided to the per-request record ([`Exchange`]), and
/// register an [`Observer`](mcp_gateway_core::observe::Observer) there to see the response.
pub trait Govern: Send + Sync + 'static {
    /// The request head, before its body is read. Default: pass.
    fn enter(&self, head: &http::request::Parts, exchange: &Exchange) -> Decision<()> {
        let _ = (head, exchange);
        Decision::Pass(())
    }

    /// The request, read whole and classified: its [`McpRequest`](mcp_gateway_core::McpRequest)
    /// is in the extensions and in the record.
    fn admit(
        &self,
        req: Request<Full<Bytes>>,
        exchange: &Exchange,
    ) -> Decision<Request<Full<Bytes>>>;

    /// The request could not be read or understood and was refused (the refusal is in the
    /// record). Default: nothing.
    fn unread(&self, exchange: &Exchange) {
        let _ = exchange;
    }
}

impl<G: Govern + ?Sized> Govern for std::sync::Arc<G> {
    fn enter(&self, head: &http::request::Parts, exchange: &Exchange) -> Decision<()> {
        (**self).enter(head, exchange)
    }
    fn admit(
        &self,
        req: Request<Full<Bytes>>,
        exchange: &Exchange,
    ) -> Decision<Request<Full<Bytes>>> {
        (**self).admit(req, exchange)
    }
    fn unread(&self, exchange: &Exchange) {
        (**self).unread(exchange);
    }
}

/// A layer whose decision can join a [`Chain`]: every governing layer of this crate.
///
/// A governor is a handle on shared state (cloned per request, so its state lives behind an
/// `Arc`); [`Govern`] is also implemented for `Arc<G>`, so any governor can be shared as is.
pub trait IntoGovern {
    /// The layer's governor, shared.
    fn into_govern(self) -> std::sync::Arc<dyn Govern>;
}
