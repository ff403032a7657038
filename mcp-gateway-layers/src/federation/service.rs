//! [`VirtualServer`]: one MCP endpoint over several upstreams.

use super::cursor::{CursorError, CursorKey, Position};
use super::names::{split_uri, Catalog, Kind, Owner, SEPARATOR};
use super::session::{MemberSession, SessionTable, VirtualSession};
use super::stream::{relay_request, unrelay, Hub, HubBody, Relay, MAX_EVENT, SUBSCRIPTION_ID_META};
use super::{Member, OnUpstreamError, Prefix};
use crate::BoxError;
use bytes::Bytes;
use futures_util::future::{join_all, BoxFuture};
use http::request::Parts;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full, Limited};
use mcp_gateway_core::exchange::{Exchange, ExchangeContext};
use mcp_gateway_core::headers::{
    is_event_stream, APPLICATION_JSON, MCP_METHOD, MCP_NAME, MCP_PROTOCOL_VERSION, MCP_SESSION_ID,
};
use mcp_gateway_core::jsonrpc::{ErrorCode, JsonRpcError, RequestId};
use mcp_gateway_core::message::MessageKind;
use mcp_gateway_core::sse::{SseDecoder, SseItem};
use mcp_gateway_core::{Era, McpRequest, Principal};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

/// The body of a virtual server's answers: an upstream's, streamed (a legacy call's SSE
/// answer with its server's requests relayed), the gateway's own, or a legacy client's GET
/// stream.
pub type VirtualBody<B> = Either<Relay<B>, Either<Full<Bytes>, HubBody>>;

/// The legacy protocol versions a virtual server answers `initialize` with.
pub const LEGACY_VERSIONS: [&str; 3] = ["2025-11-25", "2025-06-18", "2025-03-26"];

/// The longest `initialize` params a shared session's id seals whole (longer: the protocol
/// version, capabilities and the client's name, version and title).
const MAX_SEALED_INIT: usize = 2048;

/// The `_meta` key naming the upstreams a merged list omitted.
pub const OMITTED_META: &str = "mcp-gateway/omitted";
/// The `_meta` key of an exposed entry naming its upstream and original name.
pub const ORIGIN_META: &str = "mcp-gateway/origin";

/// One MCP endpoint that federates several upstreams ([module docs](super)). Cheap to clone.
pub struct VirtualServer<M> {
    pub(crate) inner: Arc<Inner<M>>,
}

impl<M> Clone for VirtualServer<M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<M> std::fmt::Debug for VirtualServer<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtualServer")
            .field("name", &self.inner.name)
            .field("upstreams", &self.inner.aliases)
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner<M> {
    pub name: Arc<str>,
    /// The upstreams as cursors name them (a cursor of other upstreams is stale).
    pub binding: String,
    pub aliases: Vec<Arc<str>>,
    pub members: Vec<M>,
    pub prefix: Prefix,
    pub list_timeout: Duration,
    pub on_error: OnUpstreamError,
    pub filtered: bool,
    pub body_limit: usize,
    pub cursors: Arc<CursorKey>,
    /// Where legacy sessions are shared with other replicas, when they are.
    pub shared: Option<super::session::SharedSessions>,
    pub state: Arc<Shared>,
}

/// What a virtual server keeps across a rebuild with the same upstreams (a reload).
#[derive(Debug)]
pub(crate) struct Shared {
    pub sessions: SessionTable,
    /// When each kind's names were last listed to resolve a call.
    pub refreshed: Mutex<[Option<std::time::Instant>; 4]>,
    pub catalog: Mutex<Catalog>,
    pub metrics: Metrics,
}

/// The counters of one virtual server.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    /// (upstream, list) → lists that omitted it or failed because of it.
    pub upstream_errors: Mutex<BTreeMap<(Arc<str>, &'static str), u64>>,
    /// kind → names found ambiguous (prefix `never`) and removed.
    pub clashes: Mutex<BTreeMap<&'static str, u64>>,
    /// Merged lists answered.
    pub lists: AtomicU64,
}

use crate::lock;

/// Why an upstream's part of a request failed.
enum Failure {
    /// The upstream's stack refused the caller (401/403): the answer goes to the client as is.
    Refused(Box<Response<Full<Bytes>>>),
    /// It failed; the text says how.
    Failed(String),
}

/// One upstream's page of a list.
struct Page {
    items: Vec<Value>,
    next: Option<String>,
    ttl_ms: Option<u64>,
    private: bool,
}

/// The request being served, as every step needs it.
struct Call<'a> {
    /// The client's request head (a call moves its headers out to the member's request).
    parts: &'a mut Parts,
    /// The request body as the client sent it.
    body: &'a Bytes,
    /// The parsed view of the request (its method, name, `_meta` span).
    view: McpRequest,
    /// The whole message as JSON, parsed when a step needs more than the view (a call does
    /// not: its arguments are never parsed).
    value: std::sync::OnceLock<Value>,
    /// `params._meta`, parsed when needed.
    meta: std::sync::OnceLock<Value>,
    /// What a 2026-07-28 request's `_meta` says of the client's capabilities, read without
    /// building the JSON (every such request needs it).
    caps: std::sync::OnceLock<Caps>,
    id: Option<RequestId>,
    session: Option<Arc<VirtualSession>>,
    modern: bool,
}

impl Call<'_> {
    fn id_raw(&self) -> &str {
        self.id.as_ref().map_or("null", RequestId::as_raw)
    }

    /// The message as JSON (the body was checked to be JSON when the view was made).
    fn value(&self) -> &Value {
        self.value
            .get_or_init(|| serde_json::from_slice(self.body).unwrap_or(Value::Null))
    }

    /// The client's capabilities as `_meta` declares them.
    fn caps(&self) -> Caps {
        *self.caps.get_or_init(|| {
            // Located by the parse: nothing of `_meta` is read again.
            self.view
                .single()
                .and_then(|m| m.client_capabilities_span())
                .zip(self.view.body())
                .and_then(|(span, body)| body.get(span))
                .map_or(Caps::default(), Caps::of)
        })
    }

    /// `params._meta` (`Null` when absent).
    fn meta(&self) -> &Value {
        self.meta.get_or_init(|| {
            let msg = self.view.single();
            let text = msg
                .and_then(|m| m.meta_span())
                .zip(self.view.body())
                .and_then(|(span, body)| body.get(span));
            text.and_then(|t| serde_json::from_slice(t).ok())
                .unwrap_or(Value::Null)
        })
    }

    /// The body with the string at `params.<path>` replaced by `value`: a splice at the
    /// name's or URI's place the view knows, else [`replace_param`].
    fn replace(&self, path: &[&str], value: &str) -> Option<Bytes> {
        let msg = self.view.single();
        let span = match path {
            ["name"] => msg.and_then(|m| m.name_span()),
            ["uri"] => msg.and_then(|m| m.uri_span()),
            _ => None,
        };
        match (span, self.view.body()) {
            (Some(span), Some(body)) if span.end <= body.len() => {
                let quoted = serde_json::to_string(value).ok()?;
                let mut out = Vec::with_capacity(body.len() + quoted.len());
                out.extend_from_slice(&body[..span.start]);
                out.extend_from_slice(quoted.as_bytes());
                out.extend_from_slice(&body[span.end..]);
                Some(Bytes::from(out))
            }
            _ => replace_param(self.body, path, value),
        }
    }

    /// A string of `params` at `path`: from the view for a tool's or prompt's name and a
    /// resource's URI, else from the parsed message.
    fn param(&self, path: &[&str]) -> Option<&str> {
        let msg = self.view.single();
        match path {
            ["name"] => msg.and_then(|m| m.name()),
            ["uri"] => msg.and_then(|m| m.uri()),
            _ => path
                .iter()
                .try_fold(&self.value()["params"], |v, k| v.get(*k))
                .and_then(Value::as_str),
        }
    }
}

type Answer<B> = Response<VirtualBody<B>>;

/// `req`, marked as charged to the caller's budgets by another request made for the same
/// client request (a fan-out beyond its first, or the gateway's own bookkeeping).
fn uncharged<B>(mut req: Request<B>) -> Request<B> {
    req.extensions_mut()
        .insert(mcp_gateway_core::ChargedElsewhere);
    req
}

/// `req`, [`uncharged`] unless `charge`.
fn charged_if<B>(req: Request<B>, charge: bool) -> Request<B> {
    if charge {
        req
    } else {
        uncharged(req)
    }
}

/// The next messages of an upstream's stream read into `hub`: `None` once the stream ends or
/// breaks, or the client's stream has ended.
async fn next_messages<B>(
    body: &mut std::pin::Pin<Box<B>>,
    decoder: &mut SseDecoder,
    hub: &Hub,
) -> Option<Vec<Value>>
where
    B: Body<Data = Bytes>,
{
    loop {
        let frame = tokio::select! {
            f = body.frame() => f.and_then(Result::ok),
            () = hub.ended() => None,
        }?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let mut events = Vec::new();
        decoder
            .feed(&data, &mut |item| {
                if let SseItem::Event(ev) = item {
                    events.push(ev.data);
                }
            })
            .ok()?;
        return Some(
            events
                .iter()
                .filter_map(|d| serde_json::from_str(d).ok())
                .collect(),
        );
    }
}

/// The answer carrying a client's stream (a legacy GET stream, a listen): an event stream,
/// not cached, not buffered by a proxy in front.
fn event_stream<B>(body: HubBody) -> Answer<B> {
    let mut resp = Response::new(Either::Right(Either::Right(body)));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(mcp_gateway_core::headers::EVENT_STREAM),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        mcp_gateway_core::headers::X_ACCEL_BUFFERING,
        HeaderValue::from_static("no"),
    );
    resp
}

fn own<B>(resp: Response<Full<Bytes>>) -> Answer<B> {
    resp.map(|b| Either::Right(Either::Left(b)))
}

fn error<B>(status: StatusCode, id: Option<&RequestId>, err: JsonRpcError) -> Answer<B> {
    own(err.into_response(status, id))
}

fn invalid<B>(id: Option<&RequestId>, message: impl Into<String>) -> Answer<B> {
    error(
        StatusCode::OK,
        id,
        JsonRpcError::new(ErrorCode::INVALID_PARAMS, message),
    )
}

fn json_response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(APPLICATION_JSON),
    );
    resp
}

fn result_response(id: &str, result: &Value) -> Response<Full<Bytes>> {
    json_response(
        StatusCode::OK,
        format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{result}}}"#),
    )
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

/// Reads an upstream's answer: its head, its bytes, and the JSON-RPC response in it (the
/// JSON body, or the first response event of an SSE stream).
async fn read_answer<B>(
    resp: Response<B>,
    limit: usize,
) -> Result<(http::response::Parts, Bytes, Option<Value>), String>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let (parts, body) = resp.into_parts();
    let bytes = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| format!("its answer could not be read: {e}"))?
        .to_bytes();
    if bytes.is_empty() {
        return Ok((parts, bytes, None));
    }
    let sse = parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(is_event_stream);
    if !sse {
        return match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) => Ok((parts, bytes, Some(v))),
            Err(_) if !parts.status.is_success() => Ok((parts, bytes, None)),
            Err(e) => Err(format!("its answer is not JSON: {e}")),
        };
    }
    let mut found = None;
    let mut dec = SseDecoder::new(limit);
    dec.feed(&bytes, &mut |item| {
        if let (SseItem::Event(ev), None) = (item, &found) {
            if let Ok(v) = serde_json::from_str::<Value>(&ev.data) {
                if v.get("result").is_some() || v.get("error").is_some() {
                    found = Some(v);
                }
            }
        }
    })
    .map_err(|e| format!("its event stream is malformed: {e}"))?;
    Ok((parts, bytes, found))
}

fn error_text(v: &Value) -> String {
    let e = &v["error"];
    format!(
        "{} ({})",
        e["message"].as_str().unwrap_or("error"),
        e["code"].as_i64().unwrap_or(0)
    )
}

/// The caller's identity as sessions are bound to it.
fn principal_key(parts: &Parts) -> Option<Arc<str>> {
    parts
        .extensions
        .get::<Principal>()
        .map(|p| Arc::from(p.agent_key()))
}

impl<M: Member> VirtualServer<M> {
    /// The virtual server's name (its route).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The upstreams it federates, in order.
    pub fn upstreams(&self) -> impl Iterator<Item = &str> {
        self.inner.aliases.iter().map(|a| &**a)
    }

    /// How many legacy client sessions are open.
    pub fn sessions(&self) -> usize {
        self.inner.state.sessions.len()
    }

    /// Serves one request: answered here (`initialize`, `server/discover`, `ping`, merged
    /// lists) or forwarded to the upstream that owns it.
    pub async fn serve(&self, req: Request<Full<Bytes>>) -> Answer<M::Body> {
        let (mut parts, body) = req.into_parts();
        // What is not a call is boxed: the future of a call, the common case, stays small
        // (it is moved into the route's box whole).
        if parts.method == Method::DELETE {
            return Box::pin(self.delete(&parts)).await;
        }
        let modern_get = parts
            .headers
            .get(MCP_PROTOCOL_VERSION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(mcp_gateway_core::era::is_modern_version);
        if parts.method == Method::GET && !modern_get {
            return Box::pin(self.get_stream(parts)).await;
        }
        if parts.method != Method::POST {
            let mut resp = JsonRpcError::new(
                ErrorCode::INVALID_REQUEST,
                "a virtual server takes POST, and GET and DELETE for legacy sessions",
            )
            .into_response(StatusCode::METHOD_NOT_ALLOWED, None);
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST, GET, DELETE"));
            return own(resp);
        }
        let bytes = match body.collect().await {
            Ok(c) => c.to_bytes(),
            Err(never) => match never {},
        };
        let view = match McpRequest::from_extensions(&parts.extensions) {
            Some(v) => v.clone(),
            None => match McpRequest::parse(&parts.headers, Some(bytes.clone())) {
                Ok(v) => v,
                Err(e) => {
                    let (status, err) = e.to_jsonrpc();
                    return error(status, None, err);
                }
            },
        };
        let Some(msg) = view.single() else {
            return error(
                StatusCode::BAD_REQUEST,
                None,
                JsonRpcError::new(
                    ErrorCode::INVALID_REQUEST,
                    "a virtual server takes one JSON-RPC message per request, not a batch",
                ),
            );
        };
        let id = msg.id().cloned();
        let method = msg.method().unwrap_or("").to_owned();
        let kind = msg.kind();
        let modern = view.protocol().era == Era::Modern;
        if !modern && method == "initialize" {
            let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return self.initialize(&parts, &value, id.as_ref());
        }
        let session = if modern {
            None
        } else {
            match self.session(&parts, id.as_ref()).await {
                Ok(s) => Some(s),
                Err(resp) => return *resp,
            }
        };
        let mut c = Call {
            parts: &mut parts,
            body: &bytes,
            view,
            value: std::sync::OnceLock::new(),
            meta: std::sync::OnceLock::new(),
            caps: std::sync::OnceLock::new(),
            id,
            session,
            modern,
        };
        if modern && kind == MessageKind::Request {
            if let Err(resp) = modern_checks(&c.view, c.caps(), &method, c.id.as_ref()) {
                return *resp;
            }
        }
        match kind {
            MessageKind::Notification => return Box::pin(self.notification(&c, &method)).await,
            MessageKind::Response | MessageKind::ErrorResponse => {
                return Box::pin(self.client_answer(&c, c.body.clone())).await
            }
            MessageKind::Request => {}
        }
        if let Some(list) = Kind::of_list(&method) {
            return Box::pin(self.list(&c, list)).await;
        }
        match method.as_str() {
            "ping" => own(result_response(c.id_raw(), &json!({}))),
            "server/discover" => Box::pin(self.discover(&c)).await,
            "tools/call"
            | "prompts/get"
            | "resources/read"
            | "resources/subscribe"
            | "resources/unsubscribe"
            | "completion/complete" => self.call(&mut c, &method).await,
            "logging/setLevel" => Box::pin(self.set_level(&c)).await,
            "subscriptions/listen" if c.modern => Box::pin(self.listen(&c)).await,
            "tasks/get" | "tasks/update" | "tasks/cancel" if c.modern => {
                Box::pin(self.task(&c, &method)).await
            }
            other => error(
                StatusCode::OK,
                c.id.as_ref(),
                JsonRpcError::new(
                    ErrorCode::METHOD_NOT_FOUND,
                    format!(
                        "method {other:?} is not available on virtual server {:?}",
                        self.inner.name
                    ),
                ),
            ),
        }
    }

    /// The legacy session a request names: held here, or (sessions shared) sealed by any
    /// replica and alive in the shared store.
    async fn session(
        &self,
        parts: &Parts,
        id: Option<&RequestId>,
    ) -> Result<Arc<VirtualSession>, Box<Answer<M::Body>>> {
        let Some(sid) = parts
            .headers
            .get(MCP_SESSION_ID)
            .and_then(|v| v.to_str().ok())
        else {
            return Err(Box::new(error(
                StatusCode::BAD_REQUEST,
                id,
                JsonRpcError::new(
                    ErrorCode::INVALID_REQUEST,
                    "Mcp-Session-Id header is required (send initialize first)",
                ),
            )));
        };
        let gone = || {
            Box::new(error(
                StatusCode::NOT_FOUND,
                id,
                JsonRpcError::new(
                    ErrorCode::SESSION_NOT_FOUND,
                    "session not found: it ended or expired; initialize again without a session id",
                ),
            ))
        };
        let principal = principal_key(parts);
        let held = self.inner.state.sessions.get(sid);
        let Some(shared) = &self.inner.shared else {
            return match held {
                Some(s) if s.principal == principal => Ok(s),
                _ => Err(gone()),
            };
        };
        // Shared: a session another replica issued is opened from its sealed id; every use is
        // checked with the store (ended by a DELETE elsewhere, or idle).
        let s = match held {
            Some(s) if s.principal == principal => s,
            Some(_) => return Err(gone()),
            None => {
                let Ok(sealed) = self.inner.cursors.open_value::<super::session::Sealed>(
                    &self.inner.name,
                    "session",
                    &self.inner.binding,
                    sid,
                ) else {
                    return Err(gone());
                };
                if sealed.p.as_deref() != principal.as_deref()
                    || shared.use_at(sealed.t).expires_ms <= shared.clock.now_ms()
                {
                    return Err(gone());
                }
                let handle = crate::sessions::SessionHandle(sealed.n);
                match self.inner.state.sessions.insert(
                    sid.to_owned(),
                    Bytes::from(sealed.i),
                    principal,
                    self.inner.members.len(),
                    Some((handle, sealed.t)),
                ) {
                    Some(s) => s,
                    None => return Err(gone()),
                }
            }
        };
        if let Some((handle, issued)) = s.shared {
            match shared.store.touch(handle, shared.use_at(issued)).await {
                Ok(crate::sessions::SessionState::Alive) => {}
                Ok(_) => {
                    self.inner.state.sessions.remove(sid);
                    return Err(gone());
                }
                // The store is unreachable: the sealed id stands (as SessionAffinity's does).
                Err(e) => {
                    tracing::warn!(virtual_server = %self.inner.name, error = %e, "session store unavailable: serving the session from its sealed id");
                }
            }
        }
        Ok(s)
    }

    /// `initialize`, answered by the gateway: upstream sessions open on first use.
    fn initialize(&self, parts: &Parts, value: &Value, id: Option<&RequestId>) -> Answer<M::Body> {
        let params = value.get("params").cloned().unwrap_or_else(|| json!({}));
        let requested = params["protocolVersion"].as_str().unwrap_or("");
        let version = LEGACY_VERSIONS
            .iter()
            .find(|v| **v == requested)
            .copied()
            .unwrap_or(LEGACY_VERSIONS[0]);
        let init = params.to_string();
        let principal = principal_key(parts);
        let members = self.inner.members.len();
        let table = &self.inner.state.sessions;
        // Shared with other replicas: the id is sealed (handle, caller, params, issue time).
        let sealed = self.inner.shared.as_ref().and_then(|shared| {
            let mut n = [0u8; 12];
            getrandom::fill(&mut n).ok()?;
            let t = shared.clock.now_ms();
            // What opening an upstream session needs, and no more when the client sent much
            // (its id stays a header of reasonable size).
            let i = if init.len() <= MAX_SEALED_INIT {
                init.clone()
            } else {
                let info = &params["clientInfo"];
                json!({
                    "protocolVersion": params["protocolVersion"],
                    "capabilities": params["capabilities"],
                    "clientInfo": {"name": info["name"], "version": info["version"], "title": info["title"]},
                })
                .to_string()
            };
            let v = super::session::Sealed {
                n,
                p: principal.as_deref().map(Into::into),
                i,
                t,
            };
            let sid = self.inner.cursors.seal_value(
                &self.inner.name,
                "session",
                &self.inner.binding,
                &v,
            )?;
            Some((sid, crate::sessions::SessionHandle(n), t))
        });
        let created = match sealed {
            Some((sid, handle, t)) => table
                .insert(
                    sid.clone(),
                    Bytes::from(init),
                    principal,
                    members,
                    Some((handle, t)),
                )
                .map(|s| (sid, s)),
            None => table.create(Bytes::from(init), principal, members),
        };
        let Some((sid, _)) = created else {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                id,
                JsonRpcError::new(
                    ErrorCode::UNAVAILABLE,
                    "virtual server has too many open sessions; try again later",
                ),
            );
        };
        let result = json!({
            "protocolVersion": version,
            "capabilities": {
                "tools": {"listChanged": true},
                "prompts": {"listChanged": true},
                "resources": {"listChanged": true, "subscribe": true},
                "completions": {},
            },
            "serverInfo": {
                "name": format!("mcp-gateway/{}", self.inner.name),
                "version": env!("CARGO_PKG_VERSION"),
            },
            "instructions": format!(
                "A virtual server of mcp-gateway federating {}. Tool and prompt names are prefixed per prefix = \"{}\".",
                self.inner.aliases.join(", "),
                self.inner.prefix.as_str()
            ),
        });
        let mut resp = result_response(id.map_or("null", RequestId::as_raw), &result);
        if let Ok(v) = HeaderValue::from_str(&sid) {
            resp.headers_mut().insert(MCP_SESSION_ID, v);
        }
        own(resp)
    }

    /// A request to upstream `member`, built from the client's: its headers (the upstream's
    /// session and protocol version instead of the client's), `body`, the record's context.
    #[allow(clippy::too_many_arguments)]
    fn sub_request(
        &self,
        parts: &Parts,
        member: usize,
        method: Method,
        rpc: Option<&str>,
        body: Bytes,
        session: Option<&MemberSession>,
        name: Option<&str>,
        exposed: Option<&str>,
    ) -> Request<Full<Bytes>> {
        self.sub_request_with(
            parts.headers.clone(),
            parts,
            member,
            method,
            rpc,
            body,
            session,
            name,
            exposed,
        )
    }

    /// [`sub_request`](Self::sub_request) with the client's headers given (moved out of the
    /// request when nothing needs them again: a call's).
    #[allow(clippy::too_many_arguments)]
    fn sub_request_with(
        &self,
        mut headers: HeaderMap,
        parts: &Parts,
        member: usize,
        method: Method,
        rpc: Option<&str>,
        body: Bytes,
        session: Option<&MemberSession>,
        name: Option<&str>,
        exposed: Option<&str>,
    ) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = parts.uri.clone();
        *req.version_mut() = parts.version;
        headers.remove(header::CONTENT_LENGTH);
        if let Some(auth) = parts.extensions.get::<super::CallerAuthorization>() {
            headers.insert(header::AUTHORIZATION, auth.0.clone());
        }
        headers.remove(MCP_SESSION_ID);
        if let Some(s) = session {
            if let Some(id) = &s.id {
                headers.insert(MCP_SESSION_ID, id.clone());
            }
            headers.insert(MCP_PROTOCOL_VERSION, s.version.clone());
        }
        // 2026-07-28 headers describe this request, not the client's.
        if let Some(current) = headers.get(MCP_METHOD) {
            // A call's method is the client's own: the header stays as it is.
            let same = rpc.is_some_and(|m| current.as_bytes() == m.as_bytes());
            if let Some(v) = rpc
                .filter(|_| !same)
                .and_then(|m| HeaderValue::from_str(m).ok())
            {
                headers.insert(MCP_METHOD, v);
            }
            let encoded = name.map(mcp_gateway_core::era::encode_header_value);
            match encoded.and_then(|n| HeaderValue::from_str(&n).ok()) {
                Some(v) => {
                    headers.insert(MCP_NAME, v);
                }
                None => {
                    headers.remove(MCP_NAME);
                }
            }
        }
        *req.headers_mut() = headers;
        let alias = self.inner.aliases[member].clone();
        if let Some(ctx) = parts.extensions.get::<ExchangeContext>() {
            req.extensions_mut().insert(ExchangeContext::new(
                ctx.client,
                Some(alias.clone()),
                ctx.cutoff.clone(),
            ));
            // One audit record per client request: a call's is the member's (with the name
            // the client used); anything else the virtual route's own exchange records.
            let (x, _) = Exchange::get_or_insert(req.extensions_mut());
            match exposed {
                Some(exposed) => {
                    let note =
                        json!({"server": &*self.inner.name, "upstream": &*alias, "name": exposed});
                    x.update(|r| r.notes.push(("virtual", note)));
                }
                None => x.update(|r| r.audited_elsewhere = true),
            }
        }
        req
    }

    /// Upstream `member`'s session for legacy session `s`, opened now if it is not yet.
    async fn member_session(
        &self,
        parts: &Parts,
        s: &VirtualSession,
        member: usize,
    ) -> Result<Arc<MemberSession>, Failure> {
        let mut slot = s.members[member].lock().await;
        if let Some(m) = &*slot {
            return Ok(m.clone());
        }
        // Shared: an upstream session another replica opened for this client session is
        // the one to use.
        let field = format!("m:{}", self.inner.aliases[member]);
        let shared = self.inner.shared.as_ref().zip(s.shared);
        if let Some((sh, (handle, _))) = shared {
            match sh.store.bound(handle, &field).await {
                Ok(Some(text)) => {
                    if let Some(found) = MemberSession::decode(&text) {
                        let found = Arc::new(found);
                        *slot = Some(found.clone());
                        if let Some(hub) = s.hub() {
                            self.read_stream(hub, member, found.clone());
                        }
                        return Ok(found);
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(virtual_server = %self.inner.name, error = %e, "session store unavailable: opening an upstream session here");
                }
            }
        }
        // Opened once per session and upstream: boxed, so that a call's future, which holds
        // this one, stays small.
        let mut opened = Box::pin(self.open_member(parts, s, member)).await?;
        if let Some((sh, (handle, issued))) = shared {
            // Two replicas may open one at once: the first bound wins, for both.
            let mine = opened.encode();
            match sh
                .store
                .bind(handle, &field, &mine, sh.use_at(issued))
                .await
            {
                Ok(won) if won != mine => {
                    if let Some(first) = MemberSession::decode(&won) {
                        opened = first;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(virtual_server = %self.inner.name, error = %e, "session store unavailable: the upstream session is known to this replica only");
                }
            }
        }
        let opened = Arc::new(opened);
        *slot = Some(opened.clone());
        if let Some(hub) = s.hub() {
            self.read_stream(hub, member, opened.clone());
        }
        Ok(opened)
    }

    /// Opens upstream `member`'s session for legacy session `s`: `initialize` with the
    /// client's parameters, then `notifications/initialized`.
    async fn open_member(
        &self,
        parts: &Parts,
        s: &VirtualSession,
        member: usize,
    ) -> Result<MemberSession, Failure> {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":"mcp-gateway-initialize","method":"initialize","params":{}}}"#,
            String::from_utf8_lossy(&s.init)
        );
        // The gateway's own requests: the client's request that needed them is charged.
        let mut req = uncharged(self.sub_request(
            parts,
            member,
            Method::POST,
            Some("initialize"),
            Bytes::from(body),
            None,
            None,
            None,
        ));
        req.headers_mut().remove(MCP_PROTOCOL_VERSION);
        let resp = self.inner.members[member].call(req).await;
        let (head, bytes, v) = read_answer(resp, self.inner.body_limit)
            .await
            .map_err(Failure::Failed)?;
        refused(&head, &bytes)?;
        let v = match v {
            Some(v) if head.status.is_success() => v,
            _ => {
                return Err(Failure::Failed(format!(
                    "initialize answered HTTP {}",
                    head.status
                )))
            }
        };
        if v.get("error").is_some() {
            return Err(Failure::Failed(format!(
                "initialize failed: {}",
                error_text(&v)
            )));
        }
        let version = v["result"]["protocolVersion"]
            .as_str()
            .and_then(|t| HeaderValue::from_str(t).ok())
            .ok_or_else(|| Failure::Failed("initialize answered no protocol version".into()))?;
        let opened = MemberSession {
            id: head.headers.get(MCP_SESSION_ID).cloned(),
            version,
        };
        let note = Bytes::from_static(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        let req = uncharged(self.sub_request(
            parts,
            member,
            Method::POST,
            Some("notifications/initialized"),
            note,
            Some(&opened),
            None,
            None,
        ));
        let resp = self.inner.members[member].call(req).await;
        let status = resp.status();
        drop(resp);
        if !status.is_success() {
            return Err(Failure::Failed(format!(
                "notifications/initialized answered HTTP {status}"
            )));
        }
        Ok(opened)
    }

    /// 2026-07-28 `subscriptions/listen`: the client's stream (acknowledged first), fed by a
    /// listen stream to each upstream asking the same of it (a resource subscription only of
    /// the upstream that owns the resource, under its own URI). List changes reach the client
    /// at most once a second per list; resource updates under their exposed URIs; every
    /// message carries the client's subscription id. An upstream that does not serve it is
    /// left out; one whose stream ends is listened to again a second later (and the lists
    /// asked for are then said to have changed: a change may have been missed).
    async fn listen(&self, c: &Call<'_>) -> Answer<M::Body> {
        let Some(id) = c.id.as_ref() else {
            return invalid(None, "subscriptions/listen requires a request id");
        };
        let asked = &c.value()["params"]["notifications"];
        if !asked.is_object() {
            return invalid(
                Some(id),
                "params.notifications is required (an object of the notifications wanted)",
            );
        }
        let flags = [
            "toolsListChanged",
            "promptsListChanged",
            "resourcesListChanged",
        ];
        let kinds = flags.map(|k| asked[k].as_bool() == Some(true));
        // The resources subscribed to, by owning upstream, under their own URIs (an unknown
        // URI is honored, and never fires).
        let members = self.inner.members.len();
        let mut owned: Vec<Vec<String>> = vec![Vec::new(); members];
        let mut uris = Vec::new();
        for u in asked["resourceSubscriptions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            uris.push(u.to_owned());
            if let Ok((m, original)) = self.resolve(c, Kind::Resources, u).await {
                owned[m].push(original);
            }
        }
        let mut honored = Map::new();
        for (k, on) in flags.iter().zip(kinds) {
            if on {
                honored.insert((*k).into(), Value::Bool(true));
            }
        }
        let sub_id: Value = serde_json::from_str(id.as_raw()).unwrap_or(Value::Null);
        let mut head = Request::new(()).into_parts().0;
        head.method = c.parts.method.clone();
        head.uri = c.parts.uri.clone();
        head.version = c.parts.version;
        head.headers = c.parts.headers.clone();
        if let Some(a) = c.parts.extensions.get::<super::CallerAuthorization>() {
            head.extensions.insert(a.clone());
        }
        // The client's address and the exchange's context: the upstreams' listens are
        // keyed by it for limits and recorded as this one's (not each on its own).
        if let Some(x) = c.parts.extensions.get::<ExchangeContext>() {
            head.extensions.insert(x.clone());
        }
        let (hub, body) = Hub::listening(head, sub_id);
        let mut ack = honored.clone();
        if !uris.is_empty() {
            ack.insert("resourceSubscriptions".into(), json!(uris));
        }
        hub.send(&json!({
            "jsonrpc": "2.0",
            "method": "notifications/subscriptions/acknowledged",
            "params": {"notifications": ack},
        }))
        .await;
        let meta = c.meta().clone();
        // The client's listen is charged once: by the first upstream's.
        let mut charge = true;
        for (i, mine) in owned.into_iter().enumerate() {
            let mut theirs = honored.clone();
            if !mine.is_empty() {
                theirs.insert("resourceSubscriptions".into(), json!(mine));
            }
            if theirs.is_empty() {
                continue;
            }
            let body = json!({
                "jsonrpc": "2.0",
                "id": "mcp-gateway-listen",
                "method": "subscriptions/listen",
                "params": {"notifications": theirs, "_meta": meta},
            });
            self.read_listen(hub.clone(), i, Bytes::from(body.to_string()), kinds, charge);
            charge = false;
        }
        event_stream(body)
    }

    /// Reads upstream `member`'s listen stream (`body` asks for it) into `hub` while the
    /// client's stream is open.
    fn read_listen(
        &self,
        hub: Arc<Hub>,
        member: usize,
        body: Bytes,
        kinds: [bool; 3],
        charge: bool,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut first = true;
            while hub.live() {
                // Listened to again: the gateway's own doing.
                let req = charged_if(
                    this.sub_request(
                        &hub.parts,
                        member,
                        Method::POST,
                        Some("subscriptions/listen"),
                        body.clone(),
                        None,
                        None,
                        None,
                    ),
                    charge && first,
                );
                let resp = tokio::select! {
                    r = this.inner.members[member].call(req) => r,
                    () = hub.ended() => return,
                };
                let sse = resp
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .is_some_and(is_event_stream);
                if !resp.status().is_success() || !sse {
                    // Left out. Not served there (a JSON answer, 404, 405) is expected of a
                    // server without it; anything else (a refusal, a failure) is said aloud.
                    let status = resp.status();
                    let unserved = status.is_success()
                        || matches!(
                            status,
                            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
                        );
                    if unserved {
                        tracing::debug!(virtual_server = %this.inner.name, upstream = %this.inner.aliases[member], %status, "upstream does not serve subscriptions/listen: left out of the client's stream");
                    } else {
                        tracing::warn!(virtual_server = %this.inner.name, upstream = %this.inner.aliases[member], %status, "upstream refused or failed subscriptions/listen: left out of the client's stream");
                    }
                    return;
                }
                if !first {
                    for (k, on) in kinds.iter().enumerate() {
                        if *on {
                            hub.changed(k);
                        }
                    }
                }
                first = false;
                let mut body = Box::pin(resp.into_body());
                let mut decoder = SseDecoder::new(MAX_EVENT);
                'stream: while let Some(messages) =
                    next_messages(&mut body, &mut decoder, &hub).await
                {
                    for mut v in messages {
                        // The listen's own answer ends it (the upstream closed it).
                        if v.get("method").is_none() {
                            break 'stream;
                        }
                        if v["method"] == "notifications/subscriptions/acknowledged" {
                            continue;
                        }
                        if let Some(m) = v["params"]["_meta"].as_object_mut() {
                            m.remove(SUBSCRIPTION_ID_META);
                        }
                        if !this.on_stream_message(&hub, member, v).await {
                            return;
                        }
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = hub.ended() => return,
                }
            }
        });
    }

    /// A legacy client's GET stream: the streams of its upstream sessions, merged (those
    /// opened later join it).
    async fn get_stream(&self, parts: Parts) -> Answer<M::Body> {
        let s = match self.session(&parts, None).await {
            Ok(s) => s,
            Err(resp) => return *resp,
        };
        // Resuming a call's stream: the upstream that sent it, with its own event id.
        let resume = parts
            .headers
            .get(mcp_gateway_core::headers::LAST_EVENT_ID)
            .and_then(|v| v.to_str().ok())
            .and_then(super::stream::unrelay_event_id)
            .filter(|(m, _)| *m < self.inner.members.len())
            .map(|(m, id)| (m, id.to_owned()));
        if let Some((member, last)) = resume {
            let ms = match self.member_session(&parts, &s, member).await {
                Ok(ms) => ms,
                Err(Failure::Refused(resp)) => return own(*resp),
                Err(Failure::Failed(why)) => {
                    return own(JsonRpcError::new(ErrorCode::UPSTREAM_UNAVAILABLE, why)
                        .into_response(StatusCode::BAD_GATEWAY, None))
                }
            };
            let req = self.stream_request(&parts, member, &ms, Some(&last));
            let mut resp = self.inner.members[member].call(req).await;
            own_session_id(&mut resp, parts.headers.get(MCP_SESSION_ID));
            // Edited on the way (event ids): its length is no longer the upstream's.
            resp.headers_mut().remove(header::CONTENT_LENGTH);
            return resp.map(|b| Either::Left(Relay::requests_of(b, member)));
        }
        let (hub, body) = Hub::new(parts);
        s.set_hub(Some(hub.clone()));
        let this = self.clone();
        tokio::spawn(async move {
            for (i, ms) in s.opened().await {
                this.read_stream(hub.clone(), i, ms);
            }
        });
        event_stream(body)
    }

    /// A GET of upstream `member`'s session stream, resumed after its event `last` if given.
    fn stream_request(
        &self,
        parts: &Parts,
        member: usize,
        ms: &MemberSession,
        last: Option<&str>,
    ) -> Request<Full<Bytes>> {
        let mut req = self.sub_request(
            parts,
            member,
            Method::GET,
            None,
            Bytes::new(),
            Some(ms),
            None,
            None,
        );
        let h = req.headers_mut();
        h.remove(mcp_gateway_core::headers::LAST_EVENT_ID);
        if let Some(v) = last.and_then(|l| HeaderValue::from_str(l).ok()) {
            h.insert(mcp_gateway_core::headers::LAST_EVENT_ID, v);
        }
        req
    }

    /// Reads upstream `member`'s GET stream into `hub` while the client reads it: requests
    /// relayed, list changes debounced, resource URIs exposed. A stream that ends is opened
    /// again a second later; an upstream that offers none (405) or lost the session (404)
    /// is left.
    fn read_stream(&self, hub: Arc<Hub>, member: usize, ms: Arc<MemberSession>) {
        let this = self.clone();
        tokio::spawn(async move {
            while hub.live() {
                let req = this.stream_request(&hub.parts, member, &ms, None);
                let resp = tokio::select! {
                    r = this.inner.members[member].call(req) => r,
                    () = hub.ended() => return,
                };
                let sse = resp
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .is_some_and(is_event_stream);
                if !resp.status().is_success() || !sse {
                    return;
                }
                let mut body = Box::pin(resp.into_body());
                let mut decoder = SseDecoder::new(MAX_EVENT);
                while let Some(messages) = next_messages(&mut body, &mut decoder, &hub).await {
                    for v in messages {
                        if !this.on_stream_message(&hub, member, v).await {
                            return;
                        }
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = hub.ended() => return,
                }
            }
        });
    }

    /// One message of upstream `member`'s GET stream; false once the client's stream ended.
    async fn on_stream_message(&self, hub: &Arc<Hub>, member: usize, mut v: Value) -> bool {
        if relay_request(member, &mut v) {
            return hub.send(&v).await;
        }
        match v["method"].as_str() {
            Some("notifications/tools/list_changed") => {
                lock(&self.inner.state.catalog).forget(Kind::Tools, member);
                hub.changed(0);
            }
            Some("notifications/prompts/list_changed") => {
                lock(&self.inner.state.catalog).forget(Kind::Prompts, member);
                hub.changed(1);
            }
            Some("notifications/resources/list_changed") => {
                let mut cat = lock(&self.inner.state.catalog);
                cat.forget(Kind::Resources, member);
                cat.forget(Kind::Templates, member);
                drop(cat);
                hub.changed(2);
            }
            Some("notifications/resources/updated") => {
                if let Some(uri) = v["params"]["uri"].as_str() {
                    let exposed = lock(&self.inner.state.catalog)
                        .exposed(
                            Kind::Resources,
                            self.inner.prefix,
                            &self.inner.aliases,
                            member,
                            uri,
                        )
                        .unwrap_or_else(|| uri.to_owned());
                    v["params"]["uri"] = Value::String(exposed);
                }
                return hub.send(&v).await;
            }
            _ => return hub.send(&v).await,
        }
        hub.live()
    }

    /// Forgets upstream `member`'s session for `s` (the upstream no longer knows it).
    async fn forget_member(&self, s: &VirtualSession, member: usize, gone: &Arc<MemberSession>) {
        let mut slot = s.members[member].lock().await;
        if slot.as_ref().is_some_and(|m| Arc::ptr_eq(m, gone)) {
            *slot = None;
        }
    }

    /// One page of upstream `member`'s list of `kind`.
    async fn fetch_page(
        &self,
        c: &Call<'_>,
        member: usize,
        kind: Kind,
        cursor: Option<&str>,
        charge: bool,
    ) -> Result<Page, Failure> {
        let ms = match &c.session {
            Some(s) => Some(self.member_session(c.parts, s, member).await?),
            None => None,
        };
        // The client's `_meta` (a 2026-07-28 request's protocol version and capabilities),
        // and this upstream's cursor.
        let mut params = Map::new();
        if !c.meta().is_null() {
            params.insert("_meta".into(), c.meta().clone());
        }
        if let Some(cur) = cursor {
            params.insert("cursor".into(), Value::String(cur.to_owned()));
        }
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{},"method":"{}","params":{}}}"#,
            c.id_raw(),
            kind.method(),
            Value::Object(params)
        );
        let req = charged_if(
            self.sub_request(
                c.parts,
                member,
                Method::POST,
                Some(kind.method()),
                Bytes::from(body),
                ms.as_deref(),
                None,
                None,
            ),
            charge,
        );
        let resp = self.inner.members[member].call(req).await;
        let (head, bytes, v) = read_answer(resp, self.inner.body_limit)
            .await
            .map_err(Failure::Failed)?;
        refused(&head, &bytes)?;
        if head.status == StatusCode::NOT_FOUND {
            if let (Some(s), Some(ms)) = (&c.session, &ms) {
                self.forget_member(s, member, ms).await;
            }
        }
        let mut v = match v {
            Some(v) if head.status.is_success() => v,
            Some(v) if v.get("error").is_some() => {
                return Err(Failure::Failed(format!(
                    "HTTP {}: {}",
                    head.status,
                    error_text(&v)
                )))
            }
            _ => return Err(Failure::Failed(format!("HTTP {}", head.status))),
        };
        if v.get("error").is_some() {
            // A server without this kind of list has nothing to merge.
            if v["error"]["code"].as_i64() == Some(i64::from(ErrorCode::METHOD_NOT_FOUND.0)) {
                return Ok(Page {
                    items: Vec::new(),
                    next: None,
                    ttl_ms: None,
                    private: false,
                });
            }
            return Err(Failure::Failed(error_text(&v)));
        }
        let mut result = v["result"].take();
        let items = match result.get_mut(kind.key()).map(Value::take) {
            Some(Value::Array(a)) => a,
            _ => {
                return Err(Failure::Failed(format!(
                    "its {} result has no {:?} array",
                    kind.method(),
                    kind.key()
                )))
            }
        };
        Ok(Page {
            items,
            next: result["nextCursor"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            ttl_ms: result["ttlMs"].as_u64(),
            private: result["cacheScope"].as_str() == Some("private"),
        })
    }

    /// Counts and logs an upstream's failure in a list.
    fn upstream_failed(&self, member: usize, method: &'static str, why: &str) {
        let alias = self.inner.aliases[member].clone();
        tracing::warn!(target: "mcp_gateway::virtual", server = %self.inner.name, upstream = %alias, method, error = %why, "upstream failed in a fanned-out request");
        *lock(&self.inner.state.metrics.upstream_errors)
            .entry((alias, method))
            .or_default() += 1;
    }

    /// A merged list: every upstream asked in parallel (within `list_timeout`), each page's
    /// entries renamed, in upstream order, and a sealed cursor carrying every upstream's own.
    async fn list(&self, c: &Call<'_>, kind: Kind) -> Answer<M::Body> {
        let n = self.inner.members.len();
        let starts: Vec<Option<Position>> = match c.value()["params"].get("cursor") {
            None | Some(Value::Null) => vec![None; n],
            Some(Value::String(text)) => {
                match self
                    .inner
                    .cursors
                    .open(&self.inner.name, kind.method(), &self.inner.binding, text)
                {
                    Ok(p) => p.into_iter().map(Some).collect(),
                    Err(CursorError::Invalid) => {
                        return invalid(c.id.as_ref(), "invalid cursor: not one this list gave")
                    }
                    Err(CursorError::Stale) => {
                        return invalid(
                            c.id.as_ref(),
                            "stale cursor: the virtual server's upstreams changed; list again from the start",
                        )
                    }
                }
            }
            Some(_) => return invalid(c.id.as_ref(), "cursor must be a string"),
        };
        let timeout = self.inner.list_timeout;
        let asked = starts
            .iter()
            .enumerate()
            .filter(|(_, p)| !matches!(p, Some(Position::Done)))
            .enumerate()
            .map(|(n, (i, p))| {
                let cursor = match p {
                    Some(Position::Next(c)) => Some(c.as_str()),
                    _ => None,
                };
                // The client's list is charged once: by the first upstream asked.
                async move {
                    let page =
                        tokio::time::timeout(timeout, self.fetch_page(c, i, kind, cursor, n == 0));
                    (i, page.await)
                }
            });
        let mut answers = join_all(asked).await;
        // A refusal of the caller (401, 403, 429) is the answer, whatever else failed.
        if let Some(pos) = answers
            .iter()
            .position(|(_, a)| matches!(a, Ok(Err(Failure::Refused(_)))))
        {
            if let (_, Ok(Err(Failure::Refused(resp)))) = answers.swap_remove(pos) {
                return own(*resp);
            }
        }
        let mut next = vec![Position::Done; n];
        let mut pages = Vec::with_capacity(n);
        let mut omitted = Vec::new();
        for (i, answer) in answers {
            let why = match answer {
                Ok(Ok(page)) => {
                    if let Some(c) = &page.next {
                        next[i] = Position::Next(c.clone());
                    }
                    pages.push((i, page));
                    continue;
                }
                Ok(Err(Failure::Refused(resp))) => return own(*resp),
                Ok(Err(Failure::Failed(why))) => why,
                Err(_) => format!("no answer within list_timeout ({timeout:?})"),
            };
            self.upstream_failed(i, kind.method(), &why);
            if self.inner.on_error == OnUpstreamError::Fail {
                return self.failed(c, i, Failure::Failed(why));
            }
            omitted.push(json!({"upstream": &*self.inner.aliases[i], "error": why}));
        }
        let mut items = Vec::new();
        {
            let mut cat = lock(&self.inner.state.catalog);
            for (i, page) in &pages {
                let names = page
                    .items
                    .iter()
                    .filter_map(|e| e[kind.field()].as_str().map(str::to_owned));
                // Lists filtered per caller show some of an upstream's names: they are added
                // to what it listed, and forgotten when it announces a change.
                let first = starts[*i].is_none() && !self.inner.filtered;
                cat.record(kind, *i, first, names);
            }
            let fresh = cat.rebuild(kind, self.inner.prefix, &self.inner.aliases);
            self.report_clashes(&cat, kind, &fresh);
            for (i, page) in pages.iter_mut() {
                for mut e in page.items.drain(..) {
                    let Some(original) = e[kind.field()].as_str().map(str::to_owned) else {
                        continue;
                    };
                    let Some(exposed) =
                        cat.exposed(kind, self.inner.prefix, &self.inner.aliases, *i, &original)
                    else {
                        continue;
                    };
                    if exposed != original {
                        if let Some(obj) = e.as_object_mut() {
                            obj.insert(kind.field().into(), Value::String(exposed));
                            let meta = obj
                                .entry("_meta")
                                .or_insert_with(|| Value::Object(Map::new()));
                            if let Some(m) = meta.as_object_mut() {
                                m.insert(
                                    ORIGIN_META.into(),
                                    json!({"upstream": &*self.inner.aliases[*i], kind.field(): original}),
                                );
                            }
                        }
                    }
                    items.push(e);
                }
            }
        }
        let mut result = Map::new();
        result.insert(kind.key().into(), Value::Array(items));
        if next.iter().any(|p| matches!(p, Position::Next(_))) {
            if let Some(cursor) =
                self.inner
                    .cursors
                    .seal(&self.inner.name, kind.method(), &self.inner.binding, &next)
            {
                result.insert("nextCursor".into(), Value::String(cursor));
            }
        }
        if c.modern {
            result.insert("resultType".into(), Value::String("complete".into()));
            // A page without `ttlMs` is fresh for 0 ms, and a list missing an upstream is not
            // to be kept at all.
            let ttl = if omitted.is_empty() {
                pages
                    .iter()
                    .map(|(_, p)| p.ttl_ms.unwrap_or(0))
                    .min()
                    .unwrap_or(0)
            } else {
                0
            };
            result.insert("ttlMs".into(), json!(ttl));
            let private = self.inner.filtered || pages.iter().any(|(_, p)| p.private);
            result.insert(
                "cacheScope".into(),
                Value::String(if private { "private" } else { "public" }.into()),
            );
        }
        if !omitted.is_empty() {
            result.insert("_meta".into(), json!({ OMITTED_META: omitted }));
        }
        self.inner
            .state
            .metrics
            .lists
            .fetch_add(1, Ordering::Relaxed);
        own(result_response(c.id_raw(), &Value::Object(result)))
    }

    /// Logs and counts the clashes a rebuild of the names found new.
    fn report_clashes(&self, cat: &Catalog, kind: Kind, fresh: &[(String, Vec<usize>)]) {
        for (name, owners) in fresh {
            let owners: Vec<&str> = owners.iter().map(|o| &*self.inner.aliases[*o]).collect();
            if matches!(cat.owner(kind, name), Some(Owner::Ambiguous(_))) {
                tracing::warn!(target: "mcp_gateway::virtual", server = %self.inner.name, kind = kind.label(), name = %name, upstreams = ?owners, "several upstreams' entries have this name (prefix = \"never\", or names that collide once exposed): removed from lists, calls to it refused");
                *lock(&self.inner.state.metrics.clashes)
                    .entry(kind.label())
                    .or_default() += 1;
            } else {
                tracing::info!(target: "mcp_gateway::virtual", server = %self.inner.name, kind = kind.label(), name = %name, upstreams = ?owners, "name listed by several upstreams: exposed with their prefixes");
            }
        }
    }

    /// Lists `kind` of `members` to the end (every page), so that the catalog knows their
    /// names: what a call to a name the catalog does not know yet needs. At most once a
    /// second per kind: calls to unknown names cannot make the gateway list every upstream
    /// over and over.
    async fn refresh(&self, c: &Call<'_>, kind: Kind, members: &[usize]) -> Result<(), Failure> {
        {
            let mut last = lock(&self.inner.state.refreshed);
            let now = std::time::Instant::now();
            if last[kind.index()].is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
                return Ok(());
            }
            last[kind.index()] = Some(now);
        }
        let all = members
            .iter()
            .map(|&i| async move { (i, self.all_names(c, i, kind).await) });
        let done = join_all(all).await;
        let mut failed = Vec::new();
        {
            let mut cat = lock(&self.inner.state.catalog);
            for (i, r) in done {
                match r {
                    Ok(names) => cat.record(kind, i, !self.inner.filtered, names),
                    Err(Failure::Refused(resp)) => return Err(Failure::Refused(resp)),
                    Err(Failure::Failed(why)) => failed.push((i, why)),
                }
            }
            let fresh = cat.rebuild(kind, self.inner.prefix, &self.inner.aliases);
            self.report_clashes(&cat, kind, &fresh);
        }
        // The call may then get "unknown tool": the upstreams' failures are logged and
        // counted, not lost in that answer.
        for (i, why) in failed {
            self.upstream_failed(i, kind.method(), &why);
        }
        Ok(())
    }

    /// Every name upstream `i` lists of `kind`, page by page (at most 1,000 pages).
    async fn all_names(&self, c: &Call<'_>, i: usize, kind: Kind) -> Result<Vec<String>, Failure> {
        let timeout = self.inner.list_timeout;
        let mut cursor: Option<String> = None;
        let mut names = Vec::new();
        for _ in 0..1000 {
            let page =
                // Looked up for the caller's request, which is charged.
                match tokio::time::timeout(
                    timeout,
                    self.fetch_page(c, i, kind, cursor.as_deref(), false),
                )
                    .await
                {
                    Ok(p) => p?,
                    Err(_) => return Err(Failure::Failed("no answer within list_timeout".into())),
                };
            names.extend(
                page.items
                    .iter()
                    .filter_map(|e| e[kind.field()].as_str().map(str::to_owned)),
            );
            match page.next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        Ok(names)
    }

    /// The upstream and original name of exposed `name` of `kind`.
    async fn resolve(
        &self,
        c: &Call<'_>,
        kind: Kind,
        name: &str,
    ) -> Result<(usize, String), Answer<M::Body>> {
        let alias_index = |a: &str| self.inner.aliases.iter().position(|x| &**x == a);
        let lookup = |kind: Kind| -> Option<Result<(usize, String), Vec<usize>>> {
            let cat = lock(&self.inner.state.catalog);
            match cat.owner(kind, name) {
                Some(Owner::One(i, n)) => Some(Ok((*i, n.clone()))),
                Some(Owner::Ambiguous(v)) => Some(Err(v.clone())),
                None if kind == Kind::Resources => {
                    let t = cat.template_owners(name);
                    (t.len() == 1).then(|| Ok((t[0], name.to_owned())))
                }
                None => None,
            }
        };
        // The names the upstreams listed decide; with `always`, a name they did not list yet
        // is read directly: the alias before the first `__` (or in the URI), the original
        // after it, unless it has the form of a shortened name (which only the lists map back).
        let mut found = lookup(kind);
        // A prefixed URI names its upstream under any prefix mode (a template's expansion is in
        // no list).
        if found.is_none() && (self.inner.prefix == Prefix::Always || kind.is_uri()) {
            let direct = if kind.is_uri() {
                split_uri(name)
            } else {
                // `alias__original` is its own exposed name exactly when it is a valid name
                // (what `expose` would give unchanged): checked without building it.
                name.split_once(SEPARATOR).filter(|_| {
                    super::names::is_valid_name(name) && !super::names::is_shortened(name)
                })
            };
            if let Some(i) = direct.and_then(|(a, o)| alias_index(a).map(|i| (i, o))) {
                found = Some(Ok((i.0, i.1.to_owned())));
            }
        }
        if found.is_none() {
            let all: Vec<usize> = (0..self.inner.members.len()).collect();
            let kinds: &[Kind] = if kind == Kind::Resources {
                &[Kind::Resources, Kind::Templates]
            } else {
                std::slice::from_ref(&kind)
            };
            for k in kinds {
                if let Err(Failure::Refused(resp)) = Box::pin(self.refresh(c, *k, &all)).await {
                    return Err(own(*resp));
                }
            }
            found = lookup(kind);
        }
        match found {
            Some(Ok(owner)) => Ok(owner),
            Some(Err(owners)) => {
                let owners: Vec<&str> = owners.iter().map(|o| &*self.inner.aliases[*o]).collect();
                Err(error(
                    StatusCode::OK,
                    c.id.as_ref(),
                    JsonRpcError::new(
                        ErrorCode::INVALID_PARAMS,
                        format!(
                            "{} {name:?} is ambiguous on virtual server {:?}: upstreams {} all have it",
                            kind.label(),
                            &*self.inner.name,
                            owners.join(", ")
                        ),
                    )
                    .with_data(json!({"name": name, "upstreams": owners})),
                ))
            }
            None => {
                let data = if kind.is_uri() {
                    json!({"uri": name})
                } else {
                    json!({"name": name})
                };
                Err(error(
                    StatusCode::OK,
                    c.id.as_ref(),
                    JsonRpcError::new(
                        ErrorCode::INVALID_PARAMS,
                        format!(
                            "unknown {} {name:?}: no upstream of virtual server {:?} lists it",
                            kind.label(),
                            &*self.inner.name
                        ),
                    )
                    .with_data(data),
                ))
            }
        }
    }

    /// A call routed to the upstream that owns its tool, prompt or resource, the original
    /// name restored.
    async fn call(&self, c: &mut Call<'_>, method: &str) -> Answer<M::Body> {
        let (kind, path): (Kind, &[&str]) = match method {
            "tools/call" => (Kind::Tools, &["name"]),
            "prompts/get" => (Kind::Prompts, &["name"]),
            "completion/complete" => match c.param(&["ref", "type"]) {
                Some("ref/prompt") => (Kind::Prompts, &["ref", "name"]),
                _ => (Kind::Resources, &["ref", "uri"]),
            },
            _ => (Kind::Resources, &["uri"]),
        };
        // Read from a handle of the view (an `Arc`), so that the client's headers can be
        // moved out of the request below.
        let view = c.view.clone();
        let exposed: Option<std::borrow::Cow<'_, str>> = match path {
            ["name"] => view.single().and_then(|m| m.name()).map(Into::into),
            ["uri"] => view.single().and_then(|m| m.uri()).map(Into::into),
            _ => c.param(path).map(|p| p.to_owned().into()),
        };
        let Some(exposed) = exposed else {
            return invalid(
                c.id.as_ref(),
                format!("params.{} is required", path.join(".")),
            );
        };
        let exposed = &*exposed;
        let (member, original) = match self.resolve(c, kind, exposed).await {
            Ok(o) => o,
            Err(resp) => return resp,
        };
        // The member gets the view of its request with it (nothing parsed again) when the
        // name is where the view knows it; else the body alone.
        let splice = c.view.single().is_some_and(|m| match path {
            ["name"] => m.name_span().is_some(),
            ["uri"] => m.name_span().is_none() && m.uri_span().is_some(),
            _ => false,
        });
        let body = if splice {
            None
        } else {
            match c.replace(path, &original) {
                Some(b) => Some(b),
                None => return invalid(c.id.as_ref(), "params could not be rewritten"),
            }
        };
        // The client's headers move to the member's request, unless a legacy session's call
        // may be sent again (its upstream lost the session): then they are copied.
        let client_sid = c.parts.headers.get(MCP_SESSION_ID).cloned();
        let mut headers = c
            .session
            .is_none()
            .then(|| std::mem::take(&mut c.parts.headers));
        let c = &*c;
        let mut retried = false;
        loop {
            let ms = match &c.session {
                Some(s) => match self.member_session(c.parts, s, member).await {
                    Ok(ms) => {
                        s.sent(c.id_raw(), member);
                        Some(ms)
                    }
                    Err(f) => return self.failed(c, member, f),
                },
                None => None,
            };
            let view = splice
                .then(|| {
                    let protocol = mcp_gateway_core::ProtocolInfo {
                        era: c.view.protocol().era,
                        version: match &ms {
                            Some(ms) => ms.version.to_str().ok().map(Into::into),
                            None => c.view.protocol().version.clone(),
                        },
                        session_id: ms
                            .as_ref()
                            .and_then(|ms| ms.id.as_ref())
                            .and_then(|id| id.to_str().ok())
                            .map(Into::into),
                    };
                    c.view.with_target(&original, protocol)
                })
                .flatten();
            let sent = match (&view, &body) {
                (Some(v), _) => v.body().cloned().unwrap_or_default(),
                (None, Some(b)) => b.clone(),
                (None, None) => match c.replace(path, &original) {
                    Some(b) => b,
                    None => return invalid(c.id.as_ref(), "params could not be rewritten"),
                },
            };
            let mut req = self.sub_request_with(
                headers.take().unwrap_or_else(|| c.parts.headers.clone()),
                c.parts,
                member,
                Method::POST,
                Some(method),
                sent,
                ms.as_deref(),
                Some(&original),
                Some(exposed),
            );
            if let Some(v) = view {
                req.extensions_mut().insert(v);
            }
            // Sent again: the first attempt was charged.
            if retried {
                req.extensions_mut()
                    .insert(mcp_gateway_core::ChargedElsewhere);
            }
            // The member's exchange is this call's audit record (a call that could not be
            // sent is the virtual route's).
            if let Some(x) = Exchange::from_extensions(&c.parts.extensions) {
                x.update(|r| r.audited_elsewhere = true);
            }
            let attempt = Exchange::from_extensions(req.extensions()).cloned();
            let resp = self.inner.members[member].call(req).await;
            // The upstream lost its session (it restarted): opened again, sent once more.
            if let (StatusCode::NOT_FOUND, Some(s), Some(ms), false) =
                (resp.status(), &c.session, &ms, retried)
            {
                self.forget_member(s, member, ms).await;
                // Sent again: the second attempt is the call's record.
                if let Some(x) = &attempt {
                    x.update(|r| r.audited_elsewhere = true);
                }
                drop(resp);
                retried = true;
                continue;
            }
            // A legacy call's SSE answer may carry the server's requests: relayed.
            let sse = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(is_event_stream);
            let mut resp = resp;
            own_session_id(&mut resp, client_sid.as_ref());
            // A 2026-07-28 client that takes tasks may get one: its id becomes a handle
            // naming the upstream.
            let tasks = c.modern && c.caps().tasks;
            if (sse && c.session.is_some()) || tasks {
                // Edited on the way: its length may no longer be the upstream's.
                resp.headers_mut().remove(header::CONTENT_LENGTH);
            }
            return resp.map(|b| {
                Either::Left(if sse && c.session.is_some() {
                    Relay::requests_of(b, member)
                } else if tasks {
                    Relay::edited_naming(b, sse, self.task_edit(member, None), "\"taskId\"")
                } else {
                    Relay::plain(b)
                })
            });
        }
    }

    /// What turns the id of a task upstream `member` created (`resultType: "task"`), or of
    /// task `original` it reports on, into the handle the client is given.
    fn task_edit(&self, member: usize, original: Option<String>) -> super::stream::Edit {
        let this = self.clone();
        Arc::new(move |v: &mut Value| {
            let result = &mut v["result"];
            let created = result["resultType"].as_str() == Some("task");
            let Some(id) = result["taskId"].as_str() else {
                return false;
            };
            if !created && original.as_deref() != Some(id) {
                return false;
            }
            match this.inner.cursors.seal_value(
                &this.inner.name,
                "task",
                &this.inner.binding,
                &(member, id),
            ) {
                Some(handle) => {
                    result["taskId"] = Value::String(handle);
                    true
                }
                None => false,
            }
        })
    }

    /// `tasks/get`, `tasks/update`, `tasks/cancel`: to the upstream whose task the handle
    /// names, with its own id; the answer names the handle again.
    async fn task(&self, c: &Call<'_>, method: &str) -> Answer<M::Body> {
        let Some(handle) = c.param(&["taskId"]) else {
            return invalid(c.id.as_ref(), "params.taskId is required");
        };
        let Ok((member, original)) = self.inner.cursors.open_value::<(usize, String)>(
            &self.inner.name,
            "task",
            &self.inner.binding,
            handle,
        ) else {
            return invalid(
                c.id.as_ref(),
                format!(
                    "unknown task {handle:?}: not a task of virtual server {:?}",
                    &*self.inner.name
                ),
            );
        };
        if member >= self.inner.members.len() {
            return invalid(c.id.as_ref(), "unknown task");
        }
        let Some(body) = replace_param(c.body, &["taskId"], &original) else {
            return invalid(c.id.as_ref(), "params could not be rewritten");
        };
        let req = self.sub_request(
            c.parts,
            member,
            Method::POST,
            Some(method),
            body,
            None,
            Some(&original),
            Some(handle),
        );
        if let Some(x) = Exchange::from_extensions(&c.parts.extensions) {
            x.update(|r| r.audited_elsewhere = true);
        }
        let mut resp = self.inner.members[member].call(req).await;
        own_session_id(&mut resp, c.parts.headers.get(MCP_SESSION_ID));
        let sse = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(is_event_stream);
        let edit = self.task_edit(member, Some(original));
        // Edited on the way: its length may no longer be the upstream's.
        resp.headers_mut().remove(header::CONTENT_LENGTH);
        resp.map(|b| Either::Left(Relay::edited_naming(b, sse, edit, "\"taskId\"")))
    }

    /// The answer to a request upstream `member` could not take.
    fn failed(&self, c: &Call<'_>, member: usize, f: Failure) -> Answer<M::Body> {
        match f {
            Failure::Refused(resp) => own(*resp),
            Failure::Failed(why) => error(
                StatusCode::BAD_GATEWAY,
                c.id.as_ref(),
                JsonRpcError::new(
                    ErrorCode::UPSTREAM_UNAVAILABLE,
                    format!(
                        "upstream {:?} of virtual server {:?} failed: {why}",
                        &*self.inner.aliases[member], &*self.inner.name
                    ),
                )
                .with_data(json!({"upstream": &*self.inner.aliases[member], "reason": why})),
            ),
        }
    }

    /// A notification: `notifications/cancelled` goes to the upstream that owns the request
    /// only; others reach the upstream sessions open for the client.
    async fn notification(&self, c: &Call<'_>, method: &str) -> Answer<M::Body> {
        let Some(s) = &c.session else {
            // 2026-07-28: closing a request's stream cancels it; nothing else to relay.
            return own(empty(StatusCode::ACCEPTED));
        };
        let targets: Vec<usize> = match method {
            "notifications/initialized" => Vec::new(),
            "notifications/cancelled" => {
                let rid = c.value()["params"]["requestId"].to_string();
                s.owner_of(&rid).into_iter().collect()
            }
            _ => s.opened().await.into_iter().map(|(i, _)| i).collect(),
        };
        let body = c.body.clone();
        // Charged once, by the first sent.
        let mut charge = true;
        for i in targets {
            let Ok(ms) = self.member_session(c.parts, s, i).await else {
                continue;
            };
            let req = charged_if(
                self.sub_request(
                    c.parts,
                    i,
                    Method::POST,
                    Some(method),
                    body.clone(),
                    Some(&ms),
                    None,
                    None,
                ),
                charge,
            );
            charge = false;
            drop(self.inner.members[i].call(req).await);
        }
        own(empty(StatusCode::ACCEPTED))
    }

    /// A client's answer to a server's request: it can be routed only when one upstream
    /// session is open (server-to-client requests are not relayed with ids of their own).
    async fn client_answer(&self, c: &Call<'_>, body: Bytes) -> Answer<M::Body> {
        if let (Some(s), Some((member, id))) = (&c.session, unrelay(&c.value()["id"])) {
            if member < self.inner.members.len() {
                if let Ok(ms) = self.member_session(c.parts, s, member).await {
                    let mut v = c.value().clone();
                    v["id"] = id;
                    let req = self.sub_request(
                        c.parts,
                        member,
                        Method::POST,
                        None,
                        Bytes::from(v.to_string()),
                        Some(&ms),
                        None,
                        None,
                    );
                    let mut resp = self.inner.members[member].call(req).await;
                    own_session_id(&mut resp, c.parts.headers.get(MCP_SESSION_ID));
                    return resp.map(|b| Either::Left(Relay::plain(b)));
                }
            }
        }
        if let Some(s) = &c.session {
            let opened = s.opened().await;
            if let [(i, ms)] = opened.as_slice() {
                let req =
                    self.sub_request(c.parts, *i, Method::POST, None, body, Some(ms), None, None);
                let mut resp = self.inner.members[*i].call(req).await;
                own_session_id(&mut resp, c.parts.headers.get(MCP_SESSION_ID));
                return resp.map(|b| Either::Left(Relay::plain(b)));
            }
        }
        error(
            StatusCode::BAD_REQUEST,
            None,
            JsonRpcError::new(
                ErrorCode::INVALID_REQUEST,
                "a virtual server cannot tell which upstream this answer is for",
            ),
        )
    }

    /// `logging/setLevel`: every upstream is told; the answer is the gateway's.
    async fn set_level(&self, c: &Call<'_>) -> Answer<M::Body> {
        let body = c.body.clone();
        let all = (0..self.inner.members.len()).map(|i| {
            let body = body.clone();
            async move {
                let ms = match &c.session {
                    Some(s) => match self.member_session(c.parts, s, i).await {
                        Ok(ms) => Some(ms),
                        Err(_) => return,
                    },
                    None => None,
                };
                let req = charged_if(
                    self.sub_request(
                        c.parts,
                        i,
                        Method::POST,
                        Some("logging/setLevel"),
                        body,
                        ms.as_deref(),
                        None,
                        None,
                    ),
                    i == 0,
                );
                let call = self.inner.members[i].call(req);
                drop(tokio::time::timeout(self.inner.list_timeout, call).await);
            }
        });
        join_all(all).await;
        own(result_response(c.id_raw(), &json!({})))
    }

    /// `server/discover`, answered by the gateway: the protocol versions every upstream
    /// supports, and the capabilities any of them has.
    async fn discover(&self, c: &Call<'_>) -> Answer<M::Body> {
        let body = c.body.clone();
        let timeout = self.inner.list_timeout;
        let all = (0..self.inner.members.len()).map(|i| {
            let body = body.clone();
            async move {
                let req = charged_if(
                    self.sub_request(
                        c.parts,
                        i,
                        Method::POST,
                        Some("server/discover"),
                        body,
                        None,
                        None,
                        None,
                    ),
                    i == 0,
                );
                let call = async {
                    let resp = self.inner.members[i].call(req).await;
                    read_answer(resp, self.inner.body_limit).await
                };
                (i, tokio::time::timeout(timeout, call).await)
            }
        });
        let mut versions: Option<Vec<String>> = None;
        let mut caps = Map::new();
        let mut ttl: Option<u64> = None;
        let mut private = self.inner.filtered;
        for (i, answer) in join_all(all).await {
            let (head, bytes, v) = match answer {
                Ok(Ok(a)) => a,
                Ok(Err(why)) => {
                    self.upstream_failed(i, "server/discover", &why);
                    continue;
                }
                Err(_) => {
                    self.upstream_failed(i, "server/discover", "no answer within list_timeout");
                    continue;
                }
            };
            if let Err(Failure::Refused(resp)) = refused(&head, &bytes) {
                return own(*resp);
            }
            if head.status.is_server_error() {
                self.upstream_failed(
                    i,
                    "server/discover",
                    &format!("answered HTTP {}", head.status),
                );
                continue;
            }
            let result = v.as_ref().map(|v| &v["result"]);
            // The 2026-07-28 versions it offers (none when it does not discover: it speaks
            // the legacy protocol only).
            let theirs: Vec<String> = match result.and_then(|r| r["supportedVersions"].as_array()) {
                Some(a) => a
                    .iter()
                    .filter_map(|v| v.as_str())
                    .filter(|v| MODERN_VERSIONS.contains(v))
                    .map(str::to_owned)
                    .collect(),
                None => Vec::new(),
            };
            versions = Some(match versions {
                None => theirs,
                Some(mine) => mine.into_iter().filter(|v| theirs.contains(v)).collect(),
            });
            match result.and_then(|r| r["capabilities"].as_object()) {
                Some(their) => {
                    for k in ["tools", "prompts", "resources", "completions"] {
                        let Some(their_k) = their.get(k) else {
                            continue;
                        };
                        let mine = caps.entry(k).or_insert_with(|| json!({}));
                        // What one upstream notifies of reaches the client through
                        // `subscriptions/listen`.
                        for flag in ["listChanged", "subscribe"] {
                            if k != "completions" && their_k[flag].as_bool() == Some(true) {
                                mine[flag] = Value::Bool(true);
                            }
                        }
                    }
                }
                None => {
                    caps.insert("tools".into(), json!({}));
                }
            }
            // No `ttlMs`: fresh for 0 ms, as in merged lists.
            let t = result.and_then(|r| r["ttlMs"].as_u64()).unwrap_or(0);
            ttl = Some(ttl.map_or(t, |m| m.min(t)));
            private |= result.is_some_and(|r| r["cacheScope"].as_str() == Some("private"));
        }
        // The 2026-07-28 versions every upstream offers, and the legacy ones (the gateway
        // answers `initialize` itself and opens each upstream's session in it).
        let mut versions = versions.unwrap_or_default();
        versions.extend(LEGACY_VERSIONS.iter().map(|v| (*v).to_owned()));
        let result = json!({
            "resultType": "complete",
            "supportedVersions": versions,
            "capabilities": caps,
            "ttlMs": ttl.unwrap_or(0),
            "cacheScope": if private { "private" } else { "public" },
            "_meta": {"io.modelcontextprotocol/serverInfo": {
                "name": format!("mcp-gateway/{}", self.inner.name),
                "version": env!("CARGO_PKG_VERSION"),
            }},
        });
        own(result_response(c.id_raw(), &result))
    }

    /// DELETE: ends the client's session and every upstream session opened for it.
    async fn delete(&self, parts: &Parts) -> Answer<M::Body> {
        let s = match self.session(parts, None).await {
            Ok(s) => s,
            Err(resp) => return *resp,
        };
        let Some(sid) = parts
            .headers
            .get(MCP_SESSION_ID)
            .and_then(|v| v.to_str().ok())
        else {
            return own(empty(StatusCode::BAD_REQUEST));
        };
        self.inner.state.sessions.remove(sid);
        s.set_hub(None);
        let mut opened = s.opened().await;
        if let (Some(sh), Some((handle, issued))) = (&self.inner.shared, s.shared) {
            // Ended on every replica; the upstream sessions other replicas opened end too.
            if let Err(e) = sh.store.end(handle, sh.use_at(issued)).await {
                tracing::warn!(virtual_server = %self.inner.name, error = %e, "session store unavailable: the session ends on this replica only");
            }
            for i in 0..self.inner.members.len() {
                if opened.iter().any(|(o, _)| *o == i) {
                    continue;
                }
                let field = format!("m:{}", self.inner.aliases[i]);
                if let Ok(Some(ms)) = sh.store.bound(handle, &field).await {
                    if let Some(ms) = MemberSession::decode(&ms) {
                        opened.push((i, Arc::new(ms)));
                    }
                }
            }
        }
        let ends = opened
            .iter()
            .filter(|(_, ms)| ms.id.is_some())
            .map(|(i, ms)| {
                let req = self.sub_request(
                    parts,
                    *i,
                    Method::DELETE,
                    None,
                    Bytes::new(),
                    Some(ms),
                    None,
                    None,
                );
                async move { drop(self.inner.members[*i].call(req).await) }
            });
        join_all(ends).await;
        own(empty(StatusCode::OK))
    }
}

/// `body` with the string at `params.<path>` replaced by `value`: every other member keeps
/// its bytes (the arguments, `_meta`, numbers of any size); only the objects on the path are
/// written again, their members in their order.
fn replace_param(body: &[u8], path: &[&str], value: &str) -> Option<Bytes> {
    fn rewrite(raw: &str, path: &[&str], value: &str) -> Option<String> {
        let (first, rest) = path.split_first()?;
        let fields = object_in_order(raw)?;
        let mut text = String::with_capacity(raw.len() + value.len());
        text.push('{');
        let mut found = false;
        for (i, (k, v)) in fields.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(&serde_json::to_string(k).ok()?);
            text.push(':');
            if k == first {
                found = true;
                if rest.is_empty() {
                    text.push_str(&serde_json::to_string(value).ok()?);
                } else {
                    text.push_str(&rewrite(v.get(), rest, value)?);
                }
            } else {
                text.push_str(v.get());
            }
        }
        text.push('}');
        found.then_some(text)
    }
    let text = std::str::from_utf8(body).ok()?;
    let mut full = Vec::with_capacity(path.len() + 1);
    full.push("params");
    full.extend_from_slice(path);
    Some(Bytes::from(rewrite(text, &full, value)?))
}

/// A JSON object's members in their order, each value left as its text.
fn object_in_order(raw: &str) -> Option<Vec<(String, &serde_json::value::RawValue)>> {
    use serde::de::{Deserializer as _, MapAccess, Visitor};
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<(String, &'de serde_json::value::RawValue)>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(entry) = map.next_entry::<String, &'de serde_json::value::RawValue>()? {
                out.push(entry);
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_str(raw);
    let out = (&mut de).deserialize_map(V).ok()?;
    de.end().ok()?;
    Some(out)
}

/// The 2026-07-28 versions a virtual server speaks itself.
pub(crate) const MODERN_VERSIONS: [&str; 1] = ["2026-07-28"];

/// The methods 2026-07-28 removed (a 2026-07-28 server answers them as unknown).
const REMOVED_IN_MODERN: [&str; 5] = [
    "initialize",
    "ping",
    "logging/setLevel",
    "resources/subscribe",
    "resources/unsubscribe",
];

/// The methods a virtual server serves in 2026-07-28.
const MODERN_METHODS: [&str; 13] = [
    "server/discover",
    "subscriptions/listen",
    "tools/list",
    "prompts/list",
    "resources/list",
    "resources/templates/list",
    "tools/call",
    "prompts/get",
    "resources/read",
    "completion/complete",
    "tasks/get",
    "tasks/update",
    "tasks/cancel",
];

/// What a 2026-07-28 server checks of every request before serving it, for the requests a
/// virtual server answers itself or sends on: a version it speaks (400, -32022), the client's
/// capabilities in `_meta` (400, -32602), a method of the version (404, -32601).
fn modern_checks<B>(
    view: &McpRequest,
    caps: Caps,
    method: &str,
    id: Option<&RequestId>,
) -> Result<(), Box<Answer<B>>> {
    let requested = view.protocol().version.as_deref().unwrap_or("");
    if !MODERN_VERSIONS.contains(&requested) {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            id,
            JsonRpcError::new(
                ErrorCode::UNSUPPORTED_PROTOCOL_VERSION,
                format!("unsupported protocol version {requested:?}"),
            )
            .with_data(json!({"supported": MODERN_VERSIONS, "requested": requested})),
        )));
    }
    if !caps.declared {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            id,
            JsonRpcError::new(
                ErrorCode::INVALID_PARAMS,
                "params._meta[\"io.modelcontextprotocol/clientCapabilities\"] is required (an object)",
            ),
        )));
    }
    if REMOVED_IN_MODERN.contains(&method) || !MODERN_METHODS.contains(&method) {
        return Err(Box::new(error(
            StatusCode::NOT_FOUND,
            id,
            JsonRpcError::new(
                ErrorCode::METHOD_NOT_FOUND,
                format!("method {method:?} does not exist in protocol version {requested}"),
            ),
        )));
    }
    Ok(())
}

/// Whether a 2026-07-28 request's client capabilities take tasks (the tasks extension).
/// What `_meta` says of the client's capabilities.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Caps {
    /// `io.modelcontextprotocol/clientCapabilities` is an object.
    declared: bool,
    /// Its `extensions` name `io.modelcontextprotocol/tasks`.
    tasks: bool,
}

impl Caps {
    /// Reads the capabilities' own text (the value of the `_meta` key), borrowing.
    fn of(caps: &[u8]) -> Self {
        use serde_json::value::RawValue;
        #[derive(serde::Deserialize)]
        struct Capabilities<'a> {
            #[serde(borrow)]
            extensions: Option<&'a RawValue>,
        }
        #[derive(serde::Deserialize)]
        struct Extensions<'a> {
            #[serde(borrow, rename = "io.modelcontextprotocol/tasks")]
            tasks: Option<&'a RawValue>,
        }
        if caps.first() != Some(&b'{') {
            return Self::default();
        }
        // Read whole only when the extension's name is in it at all (rarely).
        const TASKS: &[u8] = b"io.modelcontextprotocol/tasks";
        let named = caps.windows(TASKS.len()).any(|w| w == TASKS);
        let tasks = named
            && serde_json::from_slice::<Capabilities<'_>>(caps)
                .ok()
                .and_then(|c| c.extensions)
                .filter(|e| e.get().starts_with('{'))
                .and_then(|e| serde_json::from_str::<Extensions<'_>>(e.get()).ok())
                .is_some_and(|e| e.tasks.is_some());
        Self {
            declared: true,
            tasks,
        }
    }
}

/// An upstream's answer names the client's session, never the upstream's own (a server may
/// repeat its session id on every answer, and a client takes the last one it saw).
fn own_session_id<B>(resp: &mut Response<B>, client: Option<&HeaderValue>) {
    match client {
        Some(sid) => {
            resp.headers_mut().insert(MCP_SESSION_ID, sid.clone());
        }
        None => {
            resp.headers_mut().remove(MCP_SESSION_ID);
        }
    }
}

/// A 401, 403 or 429 from an upstream's stack: the caller is refused (or over its budget),
/// whatever the upstream; the answer goes to the client as it is, `Retry-After` included.
fn refused(head: &http::response::Parts, bytes: &Bytes) -> Result<(), Failure> {
    if matches!(
        head.status,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS
    ) {
        let mut resp = Response::new(Full::new(bytes.clone()));
        *resp.status_mut() = head.status;
        *resp.headers_mut() = head.headers.clone();
        resp.headers_mut().remove(header::CONTENT_LENGTH);
        return Err(Failure::Refused(Box::new(resp)));
    }
    Ok(())
}

/// The metrics of several virtual servers, each metric family written once (a Prometheus
/// text rendering allows one `# TYPE` line per family).
impl<M: Member> crate::prometheus::RenderPrometheus for Vec<VirtualServer<M>> {
    fn render_prometheus(&self, out: &mut String) {
        use std::fmt::Write as _;
        if self.is_empty() {
            return;
        }
        out.push_str("# HELP mcp_gateway_virtual_upstream_errors_total Merged lists of a virtual server in which an upstream failed (omitted, or the list failed).\n# TYPE mcp_gateway_virtual_upstream_errors_total counter\n");
        for v in self {
            for ((up, list), n) in lock(&v.inner.state.metrics.upstream_errors).iter() {
                let _ = writeln!(out, "mcp_gateway_virtual_upstream_errors_total{{virtual=\"{}\",upstream=\"{up}\",list=\"{list}\"}} {n}", v.inner.name);
            }
        }
        out.push_str("# HELP mcp_gateway_virtual_name_clashes_total Names withheld from a virtual server's lists: listed by several upstreams with prefix = \"never\", or colliding once exposed.\n# TYPE mcp_gateway_virtual_name_clashes_total counter\n");
        for v in self {
            for (kind, n) in lock(&v.inner.state.metrics.clashes).iter() {
                let _ = writeln!(
                    out,
                    "mcp_gateway_virtual_name_clashes_total{{virtual=\"{}\",kind=\"{kind}\"}} {n}",
                    v.inner.name
                );
            }
        }
        out.push_str("# HELP mcp_gateway_virtual_lists_total Merged lists a virtual server answered.\n# TYPE mcp_gateway_virtual_lists_total counter\n");
        for v in self {
            let _ = writeln!(
                out,
                "mcp_gateway_virtual_lists_total{{virtual=\"{}\"}} {}",
                v.inner.name,
                v.inner.state.metrics.lists.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP mcp_gateway_virtual_sessions Legacy client sessions open on a virtual server.\n# TYPE mcp_gateway_virtual_sessions gauge\n");
        for v in self {
            let _ = writeln!(
                out,
                "mcp_gateway_virtual_sessions{{virtual=\"{}\"}} {}",
                v.inner.name,
                v.inner.state.sessions.len()
            );
        }
    }
}

impl<M, B> tower_service::Service<Request<B>> for VirtualServer<M>
where
    M: Member,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Answer<M::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let bytes = match Limited::new(body, this.inner.body_limit).collect().await {
                Ok(c) => c.to_bytes(),
                Err(_) => {
                    return Ok(error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        None,
                        JsonRpcError::new(
                            ErrorCode::INVALID_REQUEST,
                            format!(
                                "request body unreadable or larger than {} bytes",
                                this.inner.body_limit
                            ),
                        ),
                    ))
                }
            };
            Ok(this
                .serve(Request::from_parts(parts, Full::new(bytes)))
                .await)
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::Caps;

    #[test]
    fn caps_are_read_as_the_json_says() {
        let caps = |t: &str| Caps::of(t.as_bytes());
        let none = Caps::default();
        assert_eq!(caps("null"), none);
        assert_eq!(caps("[]"), none);
        assert_eq!(caps("\"x\""), none);
        let declared = Caps {
            declared: true,
            tasks: false,
        };
        assert_eq!(caps("{}"), declared);
        assert_eq!(caps(r#"{"extensions": {"x": {}}}"#), declared);
        // Named, but not as an extension.
        assert_eq!(
            caps(r#"{"sampling": {"io.modelcontextprotocol/tasks": {}}}"#),
            declared
        );
        assert_eq!(
            caps(r#"{"sampling": {}, "extensions": {"io.modelcontextprotocol/tasks": {}}}"#),
            Caps {
                declared: true,
                tasks: true
            }
        );
    }
}
