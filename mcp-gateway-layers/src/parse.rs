//! [`ParseMcp`]: read the request once, classify it, and share the result.
//!
//! The layer buffers a POST body up to a limit (requests are single JSON-RPC messages; it is
//! responses that stream), classifies it with [`mcp_gateway_core::message::classify`], checks
//! the 2026-07-28 header/body agreement, and inserts an [`McpRequest`] into the request
//! extensions before calling the inner service with the same bytes. Later layers read the view
//! instead of parsing again; with [`ParseMcpLayer::view_on_response`] the view is also put on
//! the response's extensions, for code outside the stack such as an access log. Its answers:
//!
//! | input | status | JSON-RPC code |
//! |---|---|---|
//! | body over the limit | 413 | -32600 |
//! | not JSON | 400 | -32700 |
//! | JSON but not JSON-RPC 2.0 | 400 | -32600 |
//! | 2026-07-28 headers disagree with the body | 400 | -32020 |
//! | batch outside protocol 2025-03-26 | 400 | -32600 |
//! | `Content-Type` present and not JSON on POST | 415 | -32600 |
//! | method other than POST, GET, DELETE | 405 | -32600 |
//!
//! ```
//! use bytes::{Buf, Bytes};
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use mcp_gateway_core::McpRequest;
//! use mcp_gateway_layers::ParseMcpLayer;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(ParseMcpLayer::new())
//!     .service(service_fn(|req: Request<Full<Bytes>>| async move {
//!         let view = McpRequest::from_extensions(req.extensions()).unwrap();
//!         let method = view.single().unwrap().method().unwrap().to_owned();
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(method))))
//!     }));
//! let req = Request::post("/mcp")
//!     .header("content-type", "application/json")
//!     .body(Full::new(Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)))
//!     .unwrap();
//! let resp = svc.oneshot(req).await.unwrap();
//! assert_eq!(resp.status(), 200);
//! # }
//! ```

use crate::body::{reject, ResponseBody};
use crate::BoxError;
use bytes::{Buf, Bytes};
use futures_util::future::BoxFuture;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use mcp_gateway_core::era::detect;
use mcp_gateway_core::exchange::{Denial, DenialKind, Exchange};
use mcp_gateway_core::jsonrpc::{ErrorCode, JsonRpcError};
use mcp_gateway_core::message::classify;
use mcp_gateway_core::McpRequest;
use std::task::{Context, Poll};
use tower_layer::Layer;
use tower_service::Service;

/// The default request body limit: 4 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 4 * 1024 * 1024;

/// How much of an oversized body is read and thrown away before answering 413, so that a
/// client still writing its body receives the answer instead of a reset connection.
fn drain_cap(limit: usize) -> usize {
    limit.saturating_mul(4).min(64 << 20)
}

async fn drain<B: Body>(mut body: std::pin::Pin<&mut B>, cap: usize) {
    let mut seen = 0usize;
    while seen <= cap {
        match body.as_mut().frame().await {
            Some(Ok(frame)) => seen += frame.data_ref().map_or(0, |d| d.remaining()),
            _ => return,
        }
    }
}

/// Applies [`ParseMcp`].
#[derive(Clone, Copy, Debug)]
pub struct ParseMcpLayer {
    limit: usize,
    view_on_response: bool,
}

impl Default for ParseMcpLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl ParseMcpLayer {
    /// A layer with the default body limit ([`DEFAULT_BODY_LIMIT`]).
    pub const fn new() -> Self {
        Self {
            limit: DEFAULT_BODY_LIMIT,
            view_on_response: false,
        }
    }

    /// Also puts the view on the response's extensions, for code outside the stack (an
    /// access log) that wants to name the call without parsing again. Off by default: it
    /// costs an allocation per response.
    pub const fn view_on_response(mut self, on: bool) -> Self {
        self.view_on_response = on;
        self
    }

    /// Sets the largest request body accepted, in bytes.
    pub const fn body_limit(mut self, bytes: usize) -> Self {
        self.limit = bytes;
        self
    }
}

impl<S> Layer<S> for ParseMcpLayer {
    type Service = ParseMcp<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ParseMcp {
            inner,
            limit: self.limit,
            view_on_response: self.view_on_response,
        }
    }
}

/// Classifies MCP requests once and shares the result in extensions. See the module docs.
#[derive(Clone, Debug)]
pub struct ParseMcp<S> {
    inner: S,
    limit: usize,
    view_on_response: bool,
}

fn refuse(
    status: StatusCode,
    err: JsonRpcError,
    id: Option<&mcp_gateway_core::RequestId>,
) -> Response<Full<Bytes>> {
    err.into_response(status, id)
}

/// Reads and classifies a request once: the body (bounded by `limit`) becomes a
/// `Full<Bytes>` and an [`McpRequest`] goes into the extensions — or the rejection to send.
///
/// A request that already carries a view passes with the view's bytes (nothing is read
/// twice). When a per-request [`Exchange`] is present, the view is written to it, and so is a
/// refusal ([`DenialKind::BadRequest`]), so outer layers can trace and audit it.
pub async fn read_request<B>(
    req: Request<B>,
    limit: usize,
) -> Result<Request<Full<Bytes>>, Response<Full<Bytes>>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    if let Some(view) = McpRequest::from_extensions(req.extensions()) {
        // An earlier layer already read and classified this request.
        let bytes = view.body().cloned().unwrap_or_default();
        let (parts, _) = req.into_parts();
        return Ok(Request::from_parts(parts, Full::new(bytes)));
    }
    read_request_detached(req, limit)
        .await
        .map(|(mut req, view)| {
            req.extensions_mut().insert(view);
            req
        })
}

/// [`read_request`] for a caller that passes the view on itself: the view comes back next to
/// the request instead of inside its extensions (which are left as they were, saving the
/// extension map's allocations on the common path). Refusals, a view already present and the
/// per-request [`Exchange`] are handled as [`read_request`] handles them.
pub async fn read_request_detached<B>(
    req: Request<B>,
    limit: usize,
) -> Result<(Request<Full<Bytes>>, McpRequest), Response<Full<Bytes>>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    if let Some(view) = McpRequest::from_extensions(&parts.extensions) {
        // An earlier layer already read and classified this request.
        let view = view.clone();
        let bytes = view.body().cloned().unwrap_or_default();
        return Ok((Request::from_parts(parts, Full::new(bytes)), view));
    }
    let exchange = Exchange::from_extensions(&parts.extensions).cloned();
    let result = read_parts(parts, body, limit).await;
    if let Some(x) = exchange {
        match &result {
            Ok((_, view)) => {
                let view = Some(view.clone());
                x.update(|r| r.request = view);
            }
            Err(resp) => x.deny(Denial::new(
                "parse",
                DenialKind::BadRequest,
                resp.status(),
                "request could not be read or understood",
            )),
        }
    }
    result
}

async fn read_parts<B>(
    parts: http::request::Parts,
    body: B,
    limit: usize,
) -> Result<(Request<Full<Bytes>>, McpRequest), Response<Full<Bytes>>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let has_body = match parts.method {
        Method::POST => true,
        Method::GET | Method::DELETE => false,
        _ => {
            let mut resp = refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                JsonRpcError::new(
                    ErrorCode::INVALID_REQUEST,
                    format!("method {} is not allowed on an MCP endpoint", parts.method),
                ),
                None,
            );
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
            return Err(resp);
        }
    };
    if !has_body {
        let view = match detect(&parts.headers, None) {
            Ok(protocol) => McpRequest::from_parts(None, None, protocol),
            Err(e) => {
                let (status, err) = e.to_jsonrpc();
                return Err(refuse(status, err, None));
            }
        };
        return Ok((Request::from_parts(parts, Full::new(Bytes::new())), view));
    }
    if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
        if !mcp_gateway_core::headers::is_json(ct) {
            return Err(refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                JsonRpcError::new(
                    ErrorCode::INVALID_REQUEST,
                    "Content-Type must be application/json",
                ),
                None,
            ));
        }
    }
    let too_large = || {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            JsonRpcError::new(
                ErrorCode::INVALID_REQUEST,
                format!("request body exceeds the limit of {limit} bytes"),
            )
            .with_data(serde_json::json!({ "limit": limit })),
            None,
        )
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        drain(std::pin::pin!(body), drain_cap(limit)).await;
        return Err(too_large());
    }
    let mut body = std::pin::pin!(body);
    let mut buf = bytes::BytesMut::new();
    let mut first: Option<Bytes> = None;
    let mut total = 0usize;
    let read: Result<(), BoxError> = loop {
        let next = body.as_mut().frame().await.map(|r| r.map_err(Into::into));
        match next {
            None => break Ok(()),
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                total = total.saturating_add(data.len());
                if total > limit {
                    drain(body.as_mut(), drain_cap(limit)).await;
                    return Err(too_large());
                }
                // One chunk (the common case) is kept without copying.
                match first.take() {
                    None if buf.is_empty() => first = Some(data),
                    None => buf.extend_from_slice(&data),
                    Some(f) => {
                        buf.extend_from_slice(&f);
                        buf.extend_from_slice(&data);
                    }
                }
            }
            Some(Err(e)) => break Err(e),
        }
    };
    let bytes = match read {
        Ok(()) => first.unwrap_or_else(|| buf.freeze()),
        Err(e) => {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                JsonRpcError::new(
                    ErrorCode::INVALID_REQUEST,
                    format!("could not read the request body: {e}"),
                ),
                None,
            ))
        }
    };
    let parsed = match classify(&bytes) {
        Ok(p) => p,
        Err(e) => return Err(refuse(StatusCode::BAD_REQUEST, e.to_jsonrpc(), None)),
    };
    let protocol = match detect(&parts.headers, Some(&parsed)) {
        Ok(p) => p,
        Err(e) => {
            let (status, err) = e.to_jsonrpc();
            return Err(refuse(status, err, parsed.reply_id()));
        }
    };
    let view = McpRequest::from_parts(Some(bytes.clone()), Some(parsed), protocol);
    Ok((Request::from_parts(parts, Full::new(bytes)), view))
}

#[cfg(feature = "upstream")]
impl ParseMcp<crate::upstream::Upstream> {
    /// Serves one request through this layer and the [`Upstream`](crate::upstream::Upstream)
    /// below it, as one future that borrows both: what [`Service::call`] does, without the
    /// boxed future, the service clone and the extension map a tower call costs. This is the
    /// gateway's pass-through path.
    pub async fn serve<B>(
        &self,
        req: Request<B>,
    ) -> Response<ResponseBody<crate::upstream::UpstreamBody>>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        match read_request_detached(req, self.limit).await {
            Ok((req, view)) => {
                let back = self.view_on_response.then(|| view.clone());
                let mut resp = self
                    .inner
                    .forward(req, Some(view))
                    .await
                    .map(ResponseBody::inner);
                if let Some(view) = back {
                    resp.extensions_mut().insert(view);
                }
                resp
            }
            Err(resp) => reject(resp),
        }
    }
}

impl<S, B, ResBody> Service<Request<B>> for ParseMcp<S>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    ResBody: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Take the service that was driven to readiness; leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limit = self.limit;
        let view_on_response = self.view_on_response;
        Box::pin(async move {
            match read_request(req, limit).await {
                Ok(req) => {
                    let view = view_on_response
                        .then(|| McpRequest::from_extensions(req.extensions()).cloned())
                        .flatten();
                    let mut resp = inner.call(req).await?.map(ResponseBody::inner);
                    // The view travels back on the response, so code outside the stack (an
                    // access log) can name the call without parsing again.
                    if let Some(view) = view {
                        resp.extensions_mut().insert(view);
                    }
                    Ok(resp)
                }
                Err(resp) => Ok(reject(resp)),
            }
        })
    }
}
