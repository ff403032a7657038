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
//! | body over the limit (declared with `Expect: 100-continue`: answered before the body is asked for) | 413 | -32600 |
//! | body stalled: the body reported [`BodyReadTimeout`] (see `rt::ReadTimeout`) | 408 | -32600 |
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
//! use mcp_gateway_layers::McpRequest;
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

use crate::body::{refused, Refused};
use crate::BoxError;
use bytes::{Buf, Bytes, BytesMut};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{Either, Full};
use mcp_gateway_core::era::{detect, Era, ProtocolInfo};
use mcp_gateway_core::exchange::{Denial, DenialKind, Exchange};
use mcp_gateway_core::jsonrpc::{ErrorCode, JsonRpcError};
use mcp_gateway_core::message::classify;
use mcp_gateway_core::McpRequest;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tower_layer::Layer;
use tower_service::Service;

/// The default request body limit: 4 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 4 * 1024 * 1024;

/// The error a request body reports when the client sent nothing for too long (what
/// `rt::ReadTimeout` yields, with the `upstream` feature): [`ReadRequest`] answers it 408.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no request body data for {}ms", .0.as_millis())]
pub struct BodyReadTimeout(pub std::time::Duration);

/// How much of an oversized body is read and thrown away before answering 413, so that a
/// client still writing its body receives the answer instead of a reset connection.
fn drain_cap(limit: usize) -> usize {
    limit.saturating_mul(4).min(64 << 20)
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

    /// The largest request body accepted, in bytes.
    pub const fn limit(&self) -> usize {
        self.limit
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

/// What reading a request gives: the request with its body whole and its view, or the
/// refusal to send.
pub type ReadResult = Result<(Request<Full<Bytes>>, McpRequest), Response<Full<Bytes>>>;

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
    ReadRequest::new(req, limit).await.map(|(mut req, view)| {
        req.extensions_mut().insert(view);
        req
    })
}

/// [`read_request`] for a caller that passes the view on itself: the view comes back next to
/// the request instead of inside its extensions (which are left as they were, saving the
/// extension map's allocations on the common path). Refusals, a view already present and the
/// per-request [`Exchange`] are handled as [`read_request`] handles them.
pub async fn read_request_detached<B>(req: Request<B>, limit: usize) -> ReadResult
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    ReadRequest::new(req, limit).await
}

enum Step {
    /// Collecting the body: the first chunk kept as is, later ones appended.
    Collect {
        first: Option<Bytes>,
        buf: BytesMut,
        total: usize,
    },
    /// Reading an oversized body away (up to a cap) before answering 413.
    Drain { seen: usize },
    /// Answered without reading (or already answered).
    Done(Option<ReadResult>),
}

pin_project! {
    /// The future of [`read_request_detached`]: reads the body (bounded), classifies it, checks
    /// the 2026-07-28 headers. A named future, so layers can hold it without boxing.
    pub struct ReadRequest<B> {
        #[pin]
        body: B,
        parts: Option<http::request::Parts>,
        limit: usize,
        step: Step,
        exchange: Option<Exchange>,
    }
}

impl<B> std::fmt::Debug for ReadRequest<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadRequest")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

fn too_large(limit: usize) -> Response<Full<Bytes>> {
    refuse(
        StatusCode::PAYLOAD_TOO_LARGE,
        JsonRpcError::new(
            ErrorCode::INVALID_REQUEST,
            format!("request body exceeds the limit of {limit} bytes"),
        )
        .with_data(serde_json::json!({ "limit": limit })),
        None,
    )
}

impl<B> ReadRequest<B> {
    /// Starts reading `req` with a body limit of `limit` bytes. The checks that need no body
    /// (method, `Content-Type`, declared length, a view already present) are made here.
    pub fn new(req: Request<B>, limit: usize) -> Self {
        let (parts, body) = req.into_parts();
        let mut this = Self {
            body,
            parts: None,
            limit,
            step: Step::Done(None),
            exchange: None,
        };
        if let Some(view) = McpRequest::from_extensions(&parts.extensions) {
            // An earlier layer already read and classified this request (or made its view
            // with its body: a virtual server's call to an upstream). The record gets the view
            // when it has none yet.
            let view = view.clone();
            let bytes = view.body().cloned().unwrap_or_default();
            this.exchange = Exchange::from_extensions(&parts.extensions)
                .filter(|x| x.update(|r| r.request.is_none()))
                .cloned();
            this.step = Step::Done(Some(Ok((
                Request::from_parts(parts, Full::new(bytes)),
                view,
            ))));
            return this.recorded();
        }
        this.exchange = Exchange::from_extensions(&parts.extensions).cloned();
        let answer = match parts.method {
            Method::POST => None,
            Method::GET | Method::DELETE => Some(match detect(&parts.headers, None) {
                Ok(protocol) => {
                    let view = McpRequest::from_parts(None, None, protocol);
                    let req = Request::from_parts(parts, Full::new(Bytes::new()));
                    this.step = Step::Done(Some(Ok((req, view))));
                    return this.recorded();
                }
                Err(e) => {
                    let (status, err) = e.to_jsonrpc();
                    refuse(status, err, None)
                }
            }),
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
                Some(resp)
            }
        };
        let answer = answer.or_else(|| {
            let ct = parts.headers.get(header::CONTENT_TYPE)?;
            (!mcp_gateway_core::headers::is_json(ct)).then(|| {
                refuse(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    JsonRpcError::new(
                        ErrorCode::INVALID_REQUEST,
                        "Content-Type must be application/json",
                    ),
                    None,
                )
            })
        });
        if let Some(resp) = answer {
            this.step = Step::Done(Some(Err(resp)));
            return this.recorded();
        }
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        this.step = if declared.is_some_and(|n| n > limit as u64) {
            if expects_continue(&parts.headers) {
                // The client waits for `100 Continue` before sending its body, and hyper sends
                // it when the body is first polled: answering without polling it spares the
                // client an upload that could only end in 413.
                this.step = Step::Done(Some(Err(too_large(limit))));
                return this.recorded();
            }
            Step::Drain { seen: 0 }
        } else {
            Step::Collect {
                first: None,
                buf: BytesMut::new(),
                total: 0,
            }
        };
        this.parts = Some(parts);
        this
    }

    /// Writes an answer decided at once to the per-request record.
    fn recorded(mut self) -> Self {
        if let (Some(x), Step::Done(Some(r))) = (self.exchange.take(), &self.step) {
            record(&x, r);
        }
        self
    }
}

/// Whether the request waits for `100 Continue` before sending its body (RFC 9110 §10.1.1:
/// the only expectation defined, compared case-insensitively).
fn expects_continue(headers: &http::HeaderMap) -> bool {
    headers.get_all(header::EXPECT).iter().any(|v| {
        v.as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"100-continue")
    })
}

/// Writes the view, or the refusal, to the per-request record.
fn record(x: &Exchange, result: &ReadResult) {
    match result {
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

// The error is the answer to send, as large as any response: boxing it would cost an
// allocation per refusal.
#[allow(clippy::result_large_err)]
fn finish(parts: http::request::Parts, bytes: Bytes, exchange: Option<&Exchange>) -> ReadResult {
    let parsed = match classify(&bytes) {
        Ok(p) => p,
        Err(e) => return Err(refuse(StatusCode::BAD_REQUEST, e.to_jsonrpc(), None)),
    };
    let protocol = match detect(&parts.headers, Some(&parsed)) {
        Ok(p) => p,
        Err(e) => {
            let (status, err) = e.to_jsonrpc();
            let answer = refuse(status, err, parsed.reply_id());
            // The body was understood, its headers were not (an unknown protocol version, a
            // session id that is not visible ASCII): the record still names the request's id
            // and method, as the answer does. Its protocol is unknown, so none is claimed.
            if let Some(x) = exchange {
                let view = McpRequest::from_parts(
                    Some(bytes),
                    Some(parsed),
                    ProtocolInfo {
                        era: Era::Legacy,
                        version: None,
                        session_id: None,
                    },
                );
                x.update(|r| r.request = Some(view));
            }
            return Err(answer);
        }
    };
    let view = McpRequest::from_parts(Some(bytes.clone()), Some(parsed), protocol);
    Ok((Request::from_parts(parts, Full::new(bytes)), view))
}

impl<B> Future for ReadRequest<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Output = ReadResult;

    #[allow(clippy::result_large_err)] // the error is the answer to send
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<ReadResult> {
        let mut this = self.project();
        let limit = *this.limit;
        let result = loop {
            match this.step {
                Step::Done(r) => {
                    return Poll::Ready(r.take().unwrap_or_else(|| {
                        Err(refuse(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            JsonRpcError::new(ErrorCode::INTERNAL_ERROR, "request read twice"),
                            None,
                        ))
                    }))
                }
                Step::Drain { seen } => {
                    let done = match ready!(this.body.as_mut().poll_frame(cx)) {
                        Some(Ok(frame)) => {
                            *seen += frame.data_ref().map_or(0, |d| d.remaining());
                            *seen > drain_cap(limit)
                        }
                        _ => true,
                    };
                    if done {
                        break Err(too_large(limit));
                    }
                }
                Step::Collect { first, buf, total } => {
                    match ready!(this.body.as_mut().poll_frame(cx)) {
                        None => {
                            let bytes = first.take().unwrap_or_else(|| buf.split().freeze());
                            let Some(parts) = this.parts.take() else {
                                continue;
                            };
                            break finish(parts, bytes, this.exchange.as_ref());
                        }
                        Some(Ok(frame)) => {
                            let Ok(data) = frame.into_data() else {
                                continue;
                            };
                            *total = total.saturating_add(data.len());
                            if *total > limit {
                                *this.step = Step::Drain { seen: 0 };
                                continue;
                            }
                            // One chunk (the common case) is kept without copying.
                            match first.take() {
                                None if buf.is_empty() => *first = Some(data),
                                None => buf.extend_from_slice(&data),
                                Some(f) => {
                                    buf.extend_from_slice(&f);
                                    buf.extend_from_slice(&data);
                                }
                            }
                        }
                        Some(Err(e)) => {
                            let e: BoxError = e.into();
                            if let Some(stalled) = e.downcast_ref::<BodyReadTimeout>() {
                                break Err(refuse(
                                    StatusCode::REQUEST_TIMEOUT,
                                    JsonRpcError::new(
                                        ErrorCode::INVALID_REQUEST,
                                        format!("the request body stalled: {stalled}"),
                                    ),
                                    None,
                                ));
                            }
                            break Err(refuse(
                                StatusCode::BAD_REQUEST,
                                JsonRpcError::new(
                                    ErrorCode::INVALID_REQUEST,
                                    format!("could not read the request body: {e}"),
                                ),
                                None,
                            ));
                        }
                    }
                }
            }
        };
        if let Some(x) = this.exchange.take() {
            record(&x, &result);
        }
        *this.step = Step::Done(None);
        Poll::Ready(result)
    }
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
    ) -> Response<Refused<crate::upstream::UpstreamBody>>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        match ReadRequest::new(req, self.limit).await {
            Ok((req, view)) => {
                let back = self.view_on_response.then(|| view.clone());
                let mut resp = self.inner.forward(req, Some(view)).await.map(Either::Left);
                if let Some(view) = back {
                    resp.extensions_mut().insert(view);
                }
                resp
            }
            Err(resp) => refused(resp),
        }
    }

    /// [`serve`](Self::serve) for a request already read and parsed by an outer service,
    /// its body whole and its view in its extensions (a virtual server's request to one of
    /// its upstreams): sent on with that view, nothing read or parsed again. Without a view
    /// it is [`serve`](Self::serve).
    pub async fn serve_parsed(
        &self,
        mut req: Request<Full<Bytes>>,
    ) -> Response<Refused<crate::upstream::UpstreamBody>> {
        let Some(view) = req.extensions_mut().remove::<McpRequest>() else {
            return self.serve(req).await;
        };
        let back = self.view_on_response.then(|| view.clone());
        let mut resp = self.inner.forward(req, Some(view)).await.map(Either::Left);
        if let Some(view) = back {
            resp.extensions_mut().insert(view);
        }
        resp
    }
}

impl<S, B, ResBody> Service<Request<B>> for ParseMcp<S>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>> + Clone,
{
    type Response = Response<Refused<ResBody>>;
    type Error = S::Error;
    type Future = ParseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Take the service that was driven to readiness; leave a fresh clone behind.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ParseFuture {
            state: ParseState::Reading {
                read: ReadRequest::new(req, self.limit),
                inner: Some(inner),
            },
            view_on_response: self.view_on_response,
            view: None,
        }
    }
}

pin_project! {
    #[project = ParseStateProj]
    enum ParseState<S: Service<Request<Full<Bytes>>>, B> {
        Reading { #[pin] read: ReadRequest<B>, inner: Option<S> },
        Calling { #[pin] fut: S::Future },
        Done,
    }
}

pin_project! {
    /// The future of [`ParseMcp`]: the body read, then the inner service called.
    pub struct ParseFuture<S: Service<Request<Full<Bytes>>>, B> {
        #[pin]
        state: ParseState<S, B>,
        view_on_response: bool,
        view: Option<McpRequest>,
    }
}

impl<S: Service<Request<Full<Bytes>>>, B> std::fmt::Debug for ParseFuture<S, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParseFuture").finish_non_exhaustive()
    }
}

impl<S, B, ResBody> Future for ParseFuture<S, B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>>,
{
    type Output = Result<Response<Refused<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                ParseStateProj::Reading { read, inner } => {
                    let (mut req, view) = match ready!(read.poll(cx)) {
                        Ok(pair) => pair,
                        Err(resp) => {
                            this.state.set(ParseState::Done);
                            return Poll::Ready(Ok(refused(resp)));
                        }
                    };
                    if *this.view_on_response {
                        *this.view = Some(view.clone());
                    }
                    req.extensions_mut().insert(view);
                    let Some(mut svc) = inner.take() else {
                        return Poll::Pending;
                    };
                    let fut = svc.call(req);
                    this.state.set(ParseState::Calling { fut });
                }
                ParseStateProj::Calling { fut } => {
                    let resp = ready!(fut.poll(cx));
                    this.state.set(ParseState::Done);
                    return Poll::Ready(resp.map(|r| {
                        let mut r = r.map(Either::Left);
                        // The view travels back on the response, so code outside the stack
                        // (an access log) can name the call without parsing again.
                        if let Some(view) = this.view.take() {
                            r.extensions_mut().insert(view);
                        }
                        r
                    }));
                }
                ParseStateProj::Done => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A request whose body is understood but whose headers are not is refused with its id,
    /// and recorded with its id and method (audit and spans read the record).
    #[tokio::test]
    async fn a_refusal_of_a_parsed_request_records_its_id_and_method() {
        let body = r#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"echo"}}"#;
        for (header, value) in [
            ("mcp-protocol-version", "2099-01-01"),
            ("mcp-session-id", "caf\u{e9}"),
        ] {
            let x = Exchange::new();
            let mut req = Request::post("/mcp")
                .header("content-type", "application/json")
                .header(header, HeaderValue::from_bytes(value.as_bytes()).unwrap())
                .body(Full::new(Bytes::from_static(body.as_bytes())))
                .unwrap();
            req.extensions_mut().insert(x.clone());
            let resp = read_request(req, 1 << 20).await.unwrap_err();
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{header}");
            let record = x.snapshot();
            let view = record.request.expect("the request is recorded");
            let msg = view.single().unwrap();
            assert_eq!(msg.method(), Some("tools/call"), "{header}");
            assert_eq!(
                view.reply_id().map(ToString::to_string).as_deref(),
                Some("42")
            );
            assert!(record.denial.is_some());
        }
    }
}
