use super::context::{Carried, TraceParent};
use super::metrics::{Metrics, Operation};
use crate::govern::{Decision, Govern, Governed};
use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Method, Request};
use http_body_util::Full;
use mcp_gateway_core::exchange::Exchange;
use mcp_gateway_core::message::{McpMessage, MessageKind};
use mcp_gateway_core::meta::set_meta_entries_with_edits;
use mcp_gateway_core::observe::{Ending, ObservedMessage, Observer};
use mcp_gateway_core::outcome::classify;
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
use std::time::{Instant, SystemTime};

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
static BAGGAGE: HeaderName = HeaderName::from_static("baggage");

/// The span processor, sampling, metrics and id generator: what every request of one layer
/// shares.
#[derive(Clone)]
pub(crate) struct Tracer {
    pub(crate) processor: Option<Arc<dyn SpanProcessor>>,
    pub(crate) ratio: f64,
    pub(crate) metrics: Metrics,
    pub(crate) instrumentation: InstrumentationScope,
    pub(crate) ids: RandomIdGenerator,
}

impl Tracer {
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

/// The deciding part of [`TraceInject`] (it never refuses): continues the caller's trace
/// (or starts one), hands the hop's context to the server in `params._meta` and the HTTP
/// headers, and registers the spans and metrics of the exchange. A handle on the layer's
/// shared tracer.
#[derive(Clone)]
pub struct Governor {
    pub(crate) tracer: Arc<Tracer>,
}

impl std::fmt::Debug for Governor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Governor")
            .field("sample_ratio", &self.tracer.ratio)
            .finish_non_exhaustive()
    }
}

/// Continues the caller's trace (or starts one), hands the hop's context to the server in
/// `params._meta` and the HTTP headers, and records spans and metrics: the [`Governed`]
/// skeleton over the telemetry [`Governor`]. See the [module docs](super).
pub type TraceInject<S> = Governed<Governor, S>;

/// The span pair of one exchange, decided when the request arrives and completed when the
/// response ends.
struct Spans {
    tracer: Arc<Tracer>,
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
    usage_in: Option<u64>,
    usage_out: Option<u64>,
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
        if msg.kind() == MessageKind::Response && self.tool.is_some() {
            if let Some(u) = msg.usage() {
                self.usage_in = u.input_tokens.or(self.usage_in);
                self.usage_out = u.output_tokens.or(self.usage_out);
            }
        }
    }

    fn on_end(&mut self, end: &Ending) {
        let status = end.status.as_u16();
        let end_time = SystemTime::now();
        let duration = self.started.elapsed();
        let (principal, route, session, tokens_in, tokens_out, denial, instance, classified) =
            self.exchange.update(|r| {
                (
                    r.principal.as_ref().map(|p| p.agent_key().to_owned()),
                    r.route.clone(),
                    r.session_handle(),
                    r.tokens_in,
                    r.tokens_out,
                    r.denial.clone(),
                    r.instance.clone(),
                    classify(r, end),
                )
            });
        // A call made through a virtual server: the server and the name its client used.
        let via = self.exchange.update(|r| {
            r.notes.iter().find(|(k, _)| *k == "virtual").map(|(_, v)| {
                let text = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
                (text("server"), text("name"))
            })
        });
        let tokens_in = tokens_in.or(self.usage_in);
        let tokens_out = tokens_out.or(self.usage_out);
        let agent = principal.as_deref().unwrap_or("anonymous");
        let outcome = classified.outcome.as_str();
        let error_type = classified.error_type;
        let error_code = end.error_code;
        self.tracer.metrics.record(&Operation {
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
        let Some(processor) = self.tracer.processor.as_ref().filter(|_| self.sampled) else {
            return;
        };
        let mut attrs = std::mem::take(&mut self.attrs);
        attrs.push(shared_kv("mcp_gateway.agent", agent));
        attrs.push(KeyValue::new("mcp_gateway.outcome", outcome));
        attrs.push(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if let Some(r) = &route {
            attrs.push(KeyValue::new(
                "mcp_gateway.route",
                opentelemetry::StringValue::from(r.clone()),
            ));
        }
        // The span names the session by its handle, never by an id someone could present.
        if let Some(s) = session {
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
        if let Some(code) = error_code {
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
        if let Some((server, name)) = via {
            attrs.push(KeyValue::new("mcp_gateway.virtual.server", server));
            attrs.push(KeyValue::new("mcp_gateway.virtual.name", name));
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
                instrumentation_scope: self.tracer.instrumentation.clone(),
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
            instrumentation_scope: self.tracer.instrumentation.clone(),
        });
    }
}

/// The metrics of a request that could not be read or understood (no span: there is no
/// operation to name).
struct Unread {
    tracer: Arc<Tracer>,
    exchange: Exchange,
}

impl Observer for Unread {
    fn on_end(&mut self, end: &Ending) {
        let (route, classified) = self
            .exchange
            .update(|r| (r.route.clone(), classify(r, end)));
        self.tracer.metrics.record(&Operation {
            method: "unknown",
            tool: "",
            agent: "anonymous",
            route: route.as_deref().unwrap_or(""),
            outcome: classified.outcome.as_str(),
            error_type: classified.error_type.as_deref().unwrap_or(""),
            duration: self.exchange.started().elapsed(),
            tokens_in: None,
            tokens_out: None,
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

impl Govern for Governor {
    fn unread(&self, x: &Exchange) {
        x.observe(Unread {
            tracer: self.tracer.clone(),
            exchange: x.clone(),
        });
    }

    fn admit(
        &self,
        mut req: Request<Full<Bytes>>,
        exchange: &Exchange,
    ) -> Decision<Request<Full<Bytes>>> {
        // GET (a server stream) and DELETE are not MCP operations: passed untouched.
        if req.method() != Method::POST {
            return Decision::Pass(req);
        }
        let tracer = &self.tracer;
        let started = exchange.started();
        let start_time = exchange.started_at();
        let Some(view) = McpRequest::from_extensions(req.extensions()).cloned() else {
            return Decision::Pass(req);
        };
        let Some(msg) = first_call(&view) else {
            // Only responses (to the server's own requests): nothing to trace.
            return Decision::Pass(req);
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
        let trace_id = parent.map_or_else(|| tracer.ids.new_trace_id(), |p| p.trace_id);
        let sampled = parent.map_or_else(|| tracer.sample_new(trace_id), |p| p.is_sampled());
        let server_id = tracer.ids.new_span_id();
        let client_id = tracer.ids.new_span_id();
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
        let attrs = if sampled && tracer.processor.is_some() {
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
            tracer: tracer.clone(),
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
            usage_in: None,
            usage_out: None,
        });
        Decision::Pass(req)
    }
}
