use super::context::{Carried, TraceParent};
use super::metrics::{Metrics, Operation};
use crate::body::{reject, ResponseBody};
use crate::parse::read_request;
use crate::scope::Scope;
use crate::BoxError;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{header, HeaderName, HeaderValue, Method, Request, Response};
use http_body::Body;
use http_body_util::Full;
use mcp_gateway_core::era::Era;
use mcp_gateway_core::exchange::{DenialKind, Exchange};
use mcp_gateway_core::message::{McpMessage, MessageKind};
use mcp_gateway_core::meta::set_meta_entries_with_edits;
use mcp_gateway_core::observe::{EndReason, Ending, ObservedMessage, Observer};
use mcp_gateway_core::McpRequest;
use opentelemetry::trace::{
    Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, SpanData, SpanEvents, SpanLinks, SpanProcessor,
};
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};
use tower_service::Service;

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
static BAGGAGE: HeaderName = HeaderName::from_static("baggage");

/// What every service of one layer shares.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) processor: Option<Arc<dyn SpanProcessor>>,
    pub(crate) ratio: f64,
    pub(crate) metrics: Metrics,
    pub(crate) scope: InstrumentationScope,
    pub(crate) body_limit: usize,
    pub(crate) ids: RandomIdGenerator,
}

impl Shared {
    /// The sampling decision for a new trace: OpenTelemetry's `TraceIdRatioBased` rule (the
    /// low 63 bits of the trace id against the ratio), so every replica decides alike.
    fn sample_new(&self, trace_id: TraceId) -> bool {
        if self.ratio >= 1.0 {
            return true;
        }
        if self.ratio <= 0.0 {
            return false;
        }
        let bytes = trace_id.to_bytes();
        let mut low = [0u8; 8];
        low.copy_from_slice(&bytes[8..16]);
        let rnd = u64::from_be_bytes(low) >> 1;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let bound = (self.ratio * (1u64 << 63) as f64) as u64;
        rnd < bound
    }
}

/// Continues the caller's trace (or starts one), hands the hop's context to the server in
/// `params._meta` and the HTTP headers, and records spans and metrics. See the [module
/// docs](super).
pub struct TraceInject<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: Clone> Clone for TraceInject<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for TraceInject<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceInject")
            .field("inner", &self.inner)
            .field("sample_ratio", &self.shared.ratio)
            .finish_non_exhaustive()
    }
}

impl<S> TraceInject<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }
}

/// The span pair of one exchange, decided when the request arrives and completed when the
/// response ends.
struct Spans {
    shared: Arc<Shared>,
    exchange: Exchange,
    started: Instant,
    start_time: SystemTime,
    /// When the request was handed to the layers below (the hop's start).
    hop_start: SystemTime,
    trace_id: TraceId,
    server_id: SpanId,
    client_id: SpanId,
    parent: Option<TraceParent>,
    link: Option<TraceParent>,
    sampled: bool,
    trace_state: TraceState,
    method: Box<str>,
    target: Option<Box<str>>,
    tool: Option<Box<str>>,
    attrs: Vec<KeyValue>,
    /// The legacy session id the client sent (used when no sessions layer names a handle).
    legacy_session: Option<Box<str>>,
    error_code: Option<i64>,
    tool_error: bool,
    usage_in: Option<u64>,
    usage_out: Option<u64>,
    status: u16,
    /// Answers expected (requests with an id) and answers seen: a client that leaves once it
    /// has every answer (an SDK closing an SSE stream) has not cut the exchange short.
    expected: usize,
    answered: usize,
}

fn id_text(id: &mcp_gateway_core::RequestId) -> String {
    let raw = id.to_string();
    match raw.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(inner) => inner.to_owned(),
        None => raw,
    }
}

impl Observer for Spans {
    fn on_message(&mut self, msg: &ObservedMessage<'_>) {
        match msg.kind() {
            MessageKind::ErrorResponse => {
                self.answered += 1;
                if self.error_code.is_none() {
                    self.error_code = msg.error_code();
                }
            }
            MessageKind::Response => {
                self.answered += 1;
                if msg.is_tool_error() {
                    self.tool_error = true;
                }
                if self.tool.is_some() {
                    if let Some(u) = msg.usage() {
                        self.usage_in = u.input_tokens.or(self.usage_in);
                        self.usage_out = u.output_tokens.or(self.usage_out);
                    }
                }
            }
            _ => {}
        }
    }

    fn on_end(&mut self, end: &Ending) {
        self.status = end.status.as_u16();
        let reason = match end.reason {
            EndReason::ClientGone if self.expected > 0 && self.answered >= self.expected => {
                EndReason::Completed
            }
            other => other,
        };
        let end_time = SystemTime::now();
        let duration = self.started.elapsed();
        let (principal, route, session, tokens_in, tokens_out, denial, instance) =
            self.exchange.update(|r| {
                (
                    r.principal.as_ref().map(|p| p.agent_key().to_owned()),
                    r.route.clone(),
                    r.session.clone(),
                    r.tokens_in,
                    r.tokens_out,
                    r.denial.clone(),
                    r.instance.clone(),
                )
            });
        let tokens_in = tokens_in.or(self.usage_in);
        let tokens_out = tokens_out.or(self.usage_out);
        let agent = principal.as_deref().unwrap_or("anonymous");
        let error_type: Option<String> = match (self.error_code, self.tool_error) {
            (Some(code), _) => Some(code.to_string()),
            (None, true) => Some("tool_error".to_owned()),
            (None, false) if self.status >= 400 => Some(self.status.to_string()),
            _ => match reason {
                EndReason::Completed | EndReason::DroppedUnpolled => None,
                other => Some(other.as_str().to_owned()),
            },
        };
        let outcome: &'static str = if let Some(d) = &denial {
            d.kind.as_str()
        } else {
            match reason {
                EndReason::UpstreamFailed => "upstream_failed",
                EndReason::ClientGone => "client_gone",
                EndReason::Shutdown => "shutdown",
                _ => {
                    if self.error_code.is_some() {
                        "error"
                    } else if self.tool_error {
                        "tool_error"
                    } else if self.status >= 500 {
                        "upstream_failed"
                    } else if self.status >= 400 {
                        "error"
                    } else {
                        "ok"
                    }
                }
            }
        };
        self.shared.metrics.record(&Operation {
            method: &self.method,
            tool: self.tool.as_deref().unwrap_or(""),
            agent,
            route: route.as_deref().unwrap_or(""),
            outcome,
            error_type: error_type.as_deref().unwrap_or(""),
            duration,
            tokens_in,
            tokens_out,
        });
        let Some(processor) = self.shared.processor.as_ref().filter(|_| self.sampled) else {
            return;
        };
        let mut attrs = std::mem::take(&mut self.attrs);
        attrs.push(shared_kv("mcp_gateway.agent", agent));
        attrs.push(KeyValue::new("mcp_gateway.outcome", outcome));
        attrs.push(KeyValue::new(
            "http.response.status_code",
            i64::from(self.status),
        ));
        if let Some(r) = &route {
            attrs.push(KeyValue::new(
                "mcp_gateway.route",
                opentelemetry::StringValue::from(r.clone()),
            ));
        }
        // With SessionAffinity the record names the session by its handle, never by the
        // sealed id itself (which is a credential of sorts).
        if let Some(s) = session.or_else(|| self.legacy_session.take().map(Arc::from)) {
            attrs.push(KeyValue::new(
                "mcp.session.id",
                opentelemetry::StringValue::from(s),
            ));
        }
        if let Some(n) = tokens_in {
            attrs.push(KeyValue::new(
                "gen_ai.usage.input_tokens",
                i64::try_from(n).unwrap_or(i64::MAX),
            ));
        }
        if let Some(n) = tokens_out {
            attrs.push(KeyValue::new(
                "gen_ai.usage.output_tokens",
                i64::try_from(n).unwrap_or(i64::MAX),
            ));
        }
        if let Some(code) = self.error_code {
            attrs.push(shared_kv("rpc.response.status_code", &code.to_string()));
        }
        let status = match &error_type {
            Some(t) => {
                attrs.push(shared_kv("error.type", t));
                Status::Error {
                    description: Cow::Owned(match &denial {
                        Some(d) => format!("refused by {}: {}", d.by, d.reason),
                        None => format!("error {t}"),
                    }),
                }
            }
            None => Status::Unset,
        };
        if let Some(d) = &denial {
            attrs.push(KeyValue::new("mcp_gateway.denied_by", d.by));
        }
        let name: Cow<'static, str> = match &self.target {
            Some(t) => Cow::Owned(format!("{} {t}", self.method)),
            None => Cow::Owned(self.method.to_string()),
        };
        let flags = TraceFlags::SAMPLED;
        // The hop to the server happened unless a layer refused the request.
        if denial.is_none() {
            // Sized once (a collected filter grows the vector step by step); the values are
            // shared, so the copies allocate nothing.
            let mut client_attrs: Vec<KeyValue> = Vec::with_capacity(attrs.len());
            client_attrs.extend(
                attrs
                    .iter()
                    .filter(|kv| {
                        !matches!(
                            kv.key.as_str(),
                            "client.address" | "client.port" | "mcp_gateway.outcome"
                        )
                    })
                    .cloned(),
            );
            if let Some(i) = &instance {
                client_attrs.push(KeyValue::new(
                    "mcp_gateway.instance",
                    opentelemetry::StringValue::from(i.clone()),
                ));
            }
            processor.on_end(SpanData {
                span_context: SpanContext::new(
                    self.trace_id,
                    self.client_id,
                    flags,
                    false,
                    self.trace_state.clone(),
                ),
                parent_span_id: self.server_id,
                parent_span_is_remote: false,
                span_kind: SpanKind::Client,
                name: name.clone(),
                start_time: self.hop_start,
                end_time,
                attributes: client_attrs,
                dropped_attributes_count: 0,
                events: SpanEvents::default(),
                links: SpanLinks::default(),
                status: status.clone(),
                instrumentation_scope: self.shared.scope.clone(),
            });
        }
        let mut links = SpanLinks::default();
        if let Some(l) = self.link {
            links.links.push(Link::with_context(SpanContext::new(
                l.trace_id,
                l.span_id,
                l.flags,
                true,
                TraceState::NONE,
            )));
        }
        processor.on_end(SpanData {
            span_context: SpanContext::new(
                self.trace_id,
                self.server_id,
                flags,
                false,
                self.trace_state.clone(),
            ),
            parent_span_id: self.parent.map_or(SpanId::INVALID, |p| p.span_id),
            parent_span_is_remote: self.parent.is_some(),
            span_kind: SpanKind::Server,
            name,
            start_time: self.start_time,
            end_time,
            attributes: attrs,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links,
            status,
            instrumentation_scope: self.shared.scope.clone(),
        });
    }
}

/// The first request or notification of a body: the one the spans are named after.
fn first_call(view: &McpRequest) -> Option<&McpMessage> {
    view.parsed()?
        .messages()
        .iter()
        .find(|m| matches!(m.kind(), MessageKind::Request | MessageKind::Notification))
}

/// A string attribute whose value the CLIENT span's copy shares instead of copying.
fn shared_kv(key: &'static str, value: &str) -> KeyValue {
    KeyValue::new(
        key,
        opentelemetry::StringValue::from(Arc::<str>::from(value)),
    )
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

/// Sets trace context in every request and notification of the body (last first, so the
/// spans of earlier messages stay valid) and returns the new view, its spans moved by the
/// edits (no second classification). `None` when nothing could be rewritten.
fn inject(view: &McpRequest, entries: &[(&str, &str)]) -> Option<McpRequest> {
    let mut body = view.body()?.clone();
    let mut edits = Vec::new();
    for msg in view.parsed()?.messages().iter().rev() {
        if !matches!(msg.kind(), MessageKind::Request | MessageKind::Notification) {
            continue;
        }
        // A `params` or `_meta` that is not an object is the server's to refuse: leave it.
        if let Ok((next, mut made)) = set_meta_entries_with_edits(&body, msg, entries) {
            body = next;
            edits.append(&mut made);
        }
    }
    (!edits.is_empty()).then(|| view.with_edited_body(body, &edits))
}

fn base_attributes(
    view: &McpRequest,
    msg: &McpMessage,
    version: http::Version,
    client: Option<SocketAddr>,
) -> Vec<KeyValue> {
    // Room for a successful tools/call's attributes, here and at the end (18 × 56 bytes stays
    // under the allocator's 1 KiB fast path); error attributes grow it.
    let mut a = Vec::with_capacity(18);
    let method = msg.method().unwrap_or("");
    a.push(shared_kv("mcp.method.name", method));
    match method {
        "tools/call" => {
            a.push(KeyValue::new("gen_ai.operation.name", "execute_tool"));
            if let Some(n) = msg.name() {
                a.push(shared_kv("gen_ai.tool.name", n));
            }
        }
        "prompts/get" => {
            if let Some(n) = msg.name() {
                a.push(shared_kv("gen_ai.prompt.name", n));
            }
        }
        _ => {
            if let Some(u) = msg.uri() {
                a.push(shared_kv("mcp.resource.uri", u));
            }
        }
    }
    if let Some(id) = msg.id() {
        a.push(shared_kv("jsonrpc.request.id", &id_text(id)));
    }
    a.push(KeyValue::new("jsonrpc.protocol.version", "2.0"));
    let protocol = view.protocol();
    if let Some(v) = protocol.version.as_deref().or(msg.meta_protocol_version()) {
        a.push(shared_kv("mcp.protocol.version", v));
    }
    a.push(KeyValue::new("network.transport", "tcp"));
    a.push(KeyValue::new("network.protocol.name", "http"));
    a.push(KeyValue::new(
        "network.protocol.version",
        match version {
            http::Version::HTTP_10 => "1.0",
            http::Version::HTTP_2 => "2",
            http::Version::HTTP_3 => "3",
            _ => "1.1",
        },
    ));
    if let Some(c) = client {
        let mut ip = Vec::with_capacity(16);
        crate::ascii::push_ip(&mut ip, c.ip());
        a.push(KeyValue::new(
            "client.address",
            String::from_utf8(ip).unwrap_or_default(),
        ));
        a.push(KeyValue::new("client.port", i64::from(c.port())));
    }
    if let Some(p) = view.parsed().filter(|p| p.is_batch()) {
        a.push(KeyValue::new(
            "mcp_gateway.batch.size",
            i64::try_from(p.messages().len()).unwrap_or(i64::MAX),
        ));
    }
    a
}

impl<S, B, ResBody> Service<Request<B>> for TraceInject<S>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>> + Clone + Send + 'static,
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
        let scope = Scope::enter(&mut req);
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        Box::pin(async move {
            let started = Instant::now();
            let start_time = SystemTime::now();
            if req.method() != Method::POST {
                // GET (a server stream) and DELETE are not MCP operations: passed untouched.
                let resp = match read_request(req, shared.body_limit).await {
                    Ok(req) => inner.call(req).await?.map(ResponseBody::inner),
                    Err(resp) => reject(resp),
                };
                return Ok(scope.finish(resp).await);
            }
            let exchange = scope.exchange().clone();
            let mut req = match read_request(req, shared.body_limit).await {
                Ok(req) => req,
                Err(resp) => {
                    let route = exchange.update(|r| r.route.clone());
                    shared.metrics.record(&Operation {
                        method: "unknown",
                        tool: "",
                        agent: "anonymous",
                        route: route.as_deref().unwrap_or(""),
                        outcome: DenialKind::BadRequest.as_str(),
                        error_type: resp.status().as_str(),
                        duration: started.elapsed(),
                        tokens_in: None,
                        tokens_out: None,
                    });
                    return Ok(scope.finish(reject(resp)).await);
                }
            };
            let Some(view) = McpRequest::from_extensions(req.extensions()).cloned() else {
                let resp = inner.call(req).await?.map(ResponseBody::inner);
                return Ok(scope.finish(resp).await);
            };
            let Some(msg) = first_call(&view) else {
                // Only responses (to the server's own requests): nothing to trace.
                let resp = inner.call(req).await?.map(ResponseBody::inner);
                return Ok(scope.finish(resp).await);
            };

            // The `_meta` context is the parent; a different HTTP one becomes a link.
            let from_meta = msg
                .meta_span()
                .and_then(|s| view.body().and_then(|b| b.get(s)))
                .map(Carried::from_meta)
                .unwrap_or_default();
            let from_http = Carried::from_headers(req.headers());
            let (carried, link) = match (from_meta.parent, from_http.parent) {
                (Some(m), Some(h)) if m != h => (from_meta, Some(h)),
                (Some(_), _) => (from_meta, None),
                (None, Some(_)) => (from_http, None),
                (None, None) => {
                    let baggage = from_meta.baggage.or(from_http.baggage);
                    (
                        Carried {
                            baggage,
                            ..Carried::default()
                        },
                        None,
                    )
                }
            };
            let parent = carried.parent;
            let trace_id = parent.map_or_else(|| shared.ids.new_trace_id(), |p| p.trace_id);
            let sampled = parent.map_or_else(|| shared.sample_new(trace_id), |p| p.is_sampled());
            let server_id = shared.ids.new_span_id();
            let client_id = shared.ids.new_span_id();
            let hop = TraceParent {
                trace_id,
                span_id: client_id,
                flags: if sampled {
                    TraceFlags::SAMPLED
                } else {
                    TraceFlags::default()
                },
            };
            let traceparent = hop.format();

            // The forwarded body and headers carry the CLIENT span's context.
            // A traceparent is lowercase hex and dashes: quoted as is.
            let tp_json = {
                let mut q = String::with_capacity(traceparent.len() + 2);
                q.push('"');
                q.push_str(&traceparent);
                q.push('"');
                q
            };
            let ts_json = carried.tracestate.as_deref().map(json_string);
            let bg_json = carried.baggage.as_deref().map(json_string);
            let mut entries: Vec<(&str, &str)> = vec![("traceparent", &tp_json)];
            if let Some(v) = &ts_json {
                entries.push(("tracestate", v));
            }
            if let Some(v) = &bg_json {
                entries.push(("baggage", v));
            }
            if let Some(new_view) = inject(&view, &entries) {
                if let Some(new_body) = new_view.body().cloned() {
                    let len = new_body.len();
                    *req.body_mut() = Full::new(new_body);
                    req.extensions_mut().insert(new_view);
                    // The body is whole now: its length is known, and it is no longer chunked.
                    req.headers_mut().remove(header::TRANSFER_ENCODING);
                    req.headers_mut()
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
                }
            }
            let headers = req.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&traceparent) {
                headers.insert(TRACEPARENT.clone(), v);
            }
            headers.remove(&TRACESTATE);
            if let Some(v) = carried
                .tracestate
                .as_deref()
                .and_then(|s| HeaderValue::from_str(s).ok())
            {
                headers.insert(TRACESTATE.clone(), v);
            }
            headers.remove(&BAGGAGE);
            if let Some(v) = carried
                .baggage
                .as_deref()
                .and_then(|s| HeaderValue::from_str(s).ok())
            {
                headers.insert(BAGGAGE.clone(), v);
            }

            let method: Box<str> = msg.method().unwrap_or("").into();
            let tool = (&*method == "tools/call").then(|| msg.name().unwrap_or("").into());
            let target = match &*method {
                "tools/call" | "prompts/get" => msg.name().map(Into::into),
                _ => None,
            };
            let client = exchange.update(|r| {
                r.trace_id = Some(crate::ascii::hex(&trace_id.to_bytes()));
                r.span_id = Some(crate::ascii::hex(&server_id.to_bytes()));
                r.client
            });
            let attrs = if sampled && shared.processor.is_some() {
                base_attributes(&view, msg, req.version(), client)
            } else {
                Vec::new()
            };
            let trace_state = carried
                .tracestate
                .as_deref()
                .and_then(|s| s.parse::<TraceState>().ok())
                .unwrap_or_default();
            exchange.observe(Spans {
                shared: shared.clone(),
                exchange: exchange.clone(),
                started,
                start_time,
                hop_start: SystemTime::now(),
                trace_id,
                server_id,
                client_id,
                parent,
                link,
                sampled,
                trace_state,
                method,
                target,
                tool,
                attrs,
                legacy_session: (view.protocol().era == Era::Legacy)
                    .then(|| view.protocol().session_id.clone())
                    .flatten(),
                error_code: None,
                tool_error: false,
                usage_in: None,
                usage_out: None,
                status: 0,
                expected: view.parsed().map_or(0, |p| {
                    p.messages()
                        .iter()
                        .filter(|m| m.kind().expects_response())
                        .count()
                }),
                answered: 0,
            });
            let resp = inner.call(req).await?.map(ResponseBody::inner);
            Ok(scope.finish(resp).await)
        })
    }
}
