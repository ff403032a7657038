use super::record::{AuditRecord, Event, Outcome};
use super::writer::{AuditWriter, FsyncPolicy, Slot};
use crate::body::{reject, ResponseBody};
use crate::parse::read_request;
use crate::scope::Scope;
use crate::BoxError;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use mcp_gateway_core::exchange::{Denial, DenialKind, Exchange};
use mcp_gateway_core::jsonrpc::{ErrorCode, JsonRpcError};
use mcp_gateway_core::message::MessageKind;
use mcp_gateway_core::observe::{EndGate, EndReason, Ending, Head, ObservedMessage, Observer};
use mcp_gateway_core::McpRequest;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;
use tokio::sync::oneshot;
use tower_service::Service;

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) writer: AuditWriter,
    pub(crate) body_limit: usize,
}

/// Records every exchange that passes through it. See the [module docs](super).
pub struct AuditLog<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: Clone> Clone for AuditLog<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for AuditLog<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> AuditLog<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }
}

/// What the record of one exchange is made from, gathered as the answer streams.
struct Auditor {
    shared: Arc<Shared>,
    exchange: Exchange,
    slot: Option<Slot>,
    http_method: Method,
    time: SystemTime,
    status: StatusCode,
    new_session: Option<String>,
    error_code: Option<i64>,
    tool_error: bool,
    answered: bool,
    ack: Option<oneshot::Receiver<()>>,
}

impl Auditor {
    /// Builds the records and queues them (once).
    fn submit(&mut self, reason: EndReason) {
        let Some(slot) = self.slot.take() else {
            return;
        };
        let snap = self.exchange.snapshot();
        let mut r = AuditRecord::new(self.time, Event::Request, self.http_method.as_str());
        let latency = self.exchange.started().elapsed();
        r.latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        r.status = self.status.as_u16();
        if let Some(p) = &snap.principal {
            r.agent = Some(p.subject().to_owned());
            r.client_id = p.client_id().map(str::to_owned);
        }
        r.route = snap.route.as_deref().map(str::to_owned);
        r.instance = snap.instance.as_deref().map(str::to_owned);
        r.tokens_in = snap.tokens_in;
        r.tokens_out = snap.tokens_out;
        r.trace_id.clone_from(&snap.trace_id);
        r.span_id.clone_from(&snap.span_id);
        r.client = snap.client;
        r.session = snap.session.as_deref().map(str::to_owned);
        if let Some(view) = &snap.request {
            if r.session.is_none() {
                r.session = view.protocol().session_id.as_deref().map(str::to_owned);
            }
            describe(&mut r, view);
        }
        r.error_code = self.error_code;
        r.denied_by = snap.denial.as_ref().map(|d| d.by);
        r.outcome = self.outcome(snap.denial.as_ref(), reason, r.session.is_some());
        let mut records = Vec::with_capacity(2);
        let ok = self.status.is_success();
        if let (Some(id), true, Some("initialize")) = (&self.new_session, ok, r.method.as_deref()) {
            r.session = Some(id.clone());
            let mut start = r.clone();
            start.event = Event::SessionStart;
            start.arguments = None;
            records.push(r);
            records.push(start);
        } else if ok && self.http_method == Method::DELETE && r.session.is_some() {
            let mut end = r.clone();
            end.event = Event::SessionEnd;
            records.push(r);
            records.push(end);
        } else {
            records.push(r);
        }
        self.ack = self.shared.writer.submit(slot, records);
    }

    fn outcome(&self, denial: Option<&Denial>, reason: EndReason, session: bool) -> Outcome {
        if let Some(d) = denial {
            return match d.kind {
                DenialKind::Unauthenticated => Outcome::DeniedAuth,
                DenialKind::Forbidden => Outcome::DeniedPermission,
                DenialKind::RateLimited => Outcome::RateLimited,
                DenialKind::UnknownSession => Outcome::BadSession,
                DenialKind::BadRequest => Outcome::BadInput,
                DenialKind::Unavailable => Outcome::Unavailable,
                _ => Outcome::HttpError,
            };
        }
        let gateway_upstream = [
            i64::from(ErrorCode::UPSTREAM_UNAVAILABLE.0),
            i64::from(ErrorCode::UPSTREAM_TIMEOUT.0),
        ];
        if matches!(
            self.status,
            StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT
        ) || self
            .error_code
            .is_some_and(|c| gateway_upstream.contains(&c))
        {
            return Outcome::UpstreamError;
        }
        if self.error_code.is_some() {
            return Outcome::Error;
        }
        if self.tool_error {
            return Outcome::ToolError;
        }
        match reason {
            // The answer was delivered (a client may close an SSE stream once it has it),
            // there was none to deliver, or the stream was a GET listening stream, which
            // ends when the client closes it.
            EndReason::ClientGone | EndReason::DroppedUnpolled
                if self.answered
                    || self.status == StatusCode::ACCEPTED
                    || (self.http_method == Method::GET && self.status.is_success()) =>
            {
                Outcome::Ok
            }
            EndReason::UpstreamFailed => Outcome::UpstreamError,
            EndReason::ClientGone | EndReason::DroppedUnpolled => Outcome::ClientGone,
            EndReason::Shutdown => Outcome::Shutdown,
            _ if self.status == StatusCode::NOT_FOUND && session => Outcome::BadSession,
            _ if self.status.is_client_error() || self.status.is_server_error() => {
                Outcome::HttpError
            }
            _ => Outcome::Ok,
        }
    }
}

/// Method, target, id and arguments of the request.
fn describe(r: &mut AuditRecord, view: &McpRequest) {
    let Some(parsed) = view.parsed() else {
        return;
    };
    if parsed.is_batch() {
        r.method = Some("batch".into());
        return;
    }
    let Some(msg) = parsed.single() else {
        return;
    };
    r.method = msg.method().map(str::to_owned);
    r.id = msg.id().map(|id| id.as_raw().to_owned());
    match msg.method() {
        Some("tools/call") => {
            r.tool = msg.name().map(str::to_owned);
            r.arguments = msg
                .arguments_span()
                .and_then(|s| view.body().map(|b| b.slice(s)));
        }
        Some("prompts/get") => r.prompt = msg.name().map(str::to_owned),
        Some(m) if m.starts_with("resources/") => r.resource = msg.uri().map(str::to_owned),
        _ => {}
    }
}

impl Observer for Auditor {
    fn on_head(&mut self, head: &Head<'_>) {
        self.status = head.status;
        self.new_session = head
            .headers
            .get(mcp_gateway_core::headers::MCP_SESSION_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
    }

    fn on_message(&mut self, msg: &ObservedMessage<'_>) {
        if self.answered
            || !matches!(
                msg.kind(),
                MessageKind::Response | MessageKind::ErrorResponse
            )
        {
            return;
        }
        self.answered = true;
        self.error_code = msg.error_code();
        self.tool_error = msg.is_tool_error();
    }

    fn on_end(&mut self, end: &Ending) {
        self.status = end.status;
        self.submit(end.reason);
    }

    fn gates(&self) -> bool {
        self.shared.writer.options().fsync == FsyncPolicy::Always
    }

    fn gate(&mut self) -> Option<EndGate> {
        let ack = self.ack.take()?;
        Some(Box::pin(async move {
            let _ = ack.await;
        }))
    }
}

/// Holds the auditor while the inner service works: an exchange dropped before it answered
/// (the client went away) is recorded too.
struct Pending(Option<Auditor>);

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(mut a) = self.0.take() {
            a.status = StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST);
            a.submit(EndReason::ClientGone);
        }
    }
}

impl<S, B, ResBody> Service<Request<B>> for AuditLog<S>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let time = SystemTime::now();
        let scope = Scope::enter(&mut req);
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        Box::pin(async move {
            let http_method = req.method().clone();
            let Some(slot) = shared.writer.reserve().await else {
                return Ok(scope.finish(full_queue(&shared, req).await).await);
            };
            let mut pending = Pending(Some(Auditor {
                shared: shared.clone(),
                exchange: scope.exchange().clone(),
                slot: Some(slot),
                http_method,
                time,
                status: StatusCode::OK,
                new_session: None,
                error_code: None,
                tool_error: false,
                answered: false,
                ack: None,
            }));
            let resp = inner.call(req).await?.map(ResponseBody::inner);
            // Registered last, so its end runs after the inner layers' (tokens counted).
            if let Some(a) = pending.0.take() {
                scope.exchange().observe(a);
            }
            Ok(scope.finish(resp).await)
        })
    }
}

/// The answer when the queue is full and `on_full = "refuse"`: 503, -32054, the request's id.
async fn full_queue<B, R>(shared: &Shared, req: Request<B>) -> Response<ResponseBody<R>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let id = match read_request(req, shared.body_limit).await {
        Ok(req) => McpRequest::from_extensions(req.extensions())
            .and_then(McpRequest::reply_id)
            .cloned(),
        Err(_) => None,
    };
    shared.writer.dropped(
        1,
        "the audit queue is full; the request was refused with 503",
    );
    let err = JsonRpcError::new(
        ErrorCode::UNAVAILABLE,
        "the audit log cannot keep up; retry shortly",
    );
    let mut resp = err.into_response(StatusCode::SERVICE_UNAVAILABLE, id.as_ref());
    resp.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    reject(resp)
}
