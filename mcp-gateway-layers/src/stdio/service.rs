//! [`StdioUpstream`]: Streamable HTTP in front, newline-delimited JSON-RPC to child processes
//! behind.
//!
//! It answers as an MCP server over HTTP would: `initialize` opens a legacy session (its id
//! in `Mcp-Session-Id`), calls are answered with JSON — or with an SSE stream when the client
//! reads one and the server may send more than the answer (progress, its own requests) — a
//! GET opens the session's stream, a DELETE ends it. 2026-07-28 requests carry everything in
//! `_meta` and are passed on as they are, each on its own.

use super::child::{CallGuard, Child, Delivery, Failure, ListenGuard};
use super::pool::{Pool, SlotKey};
use super::{Mode, StdioSpec};
use crate::BoxError;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use mcp_gateway_core::jsonrpc::ErrorCode;
use mcp_gateway_core::{Era, McpMessage, McpRequest, MessageKind, Principal};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The legacy protocol versions, oldest first; the gateway initializes shared children with
/// the newest.
const LEGACY_VERSIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
/// The most legacy sessions one upstream keeps (each is a few hundred bytes; idle ones end).
const MAX_SESSIONS: usize = 100_000;
/// `Mcp-Session-Id`.
const MCP_SESSION_ID: &str = "mcp-session-id";

/// A stdio upstream: the child processes of one configured command, served as an MCP
/// server over Streamable HTTP. Cheap to clone (a handle); the children stop when the last
/// handle is dropped, or at [`StdioUpstream::shutdown`].
#[derive(Clone)]
pub struct StdioUpstream {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for StdioUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdioUpstream")
            .field("name", &self.inner.pool.name)
            .field("mode", &self.inner.pool.spec.mode)
            .finish_non_exhaustive()
    }
}

struct Inner {
    pool: Arc<Pool>,
    sessions: Mutex<HashMap<Arc<str>, Session>>,
}

#[derive(Clone)]
struct Session {
    /// Its id (the map's key).
    id: Arc<str>,
    /// Its own child (`per_session`), or the slot whose child serves it.
    target: SessionTarget,
    /// The agent that opened it: another gets 404.
    agent: Option<Arc<str>>,
    last_used: Instant,
}

#[derive(Clone)]
enum SessionTarget {
    Own(Arc<Child>),
    Slot(SlotKey),
}

impl StdioUpstream {
    /// Starts serving `spec` (must be called inside a Tokio runtime): in `shared` mode the
    /// child is started at once; others start with their first session or agent.
    pub fn new(spec: StdioSpec) -> Self {
        let pool = Pool::new(spec);
        pool.start_background();
        let inner = Arc::new(Inner {
            pool,
            sessions: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&inner);
        let every = (inner.pool.spec.idle_timeout / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(30));
        tokio::spawn(reap_sessions(weak, every));
        Self { inner }
    }

    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.inner.pool.name
    }

    /// What it runs (a reload compares it with the new file's to keep the children).
    pub fn spec(&self) -> &StdioSpec {
        &self.inner.pool.spec
    }

    /// The mode its children run in.
    pub fn mode(&self) -> Mode {
        self.inner.pool.spec.mode
    }

    /// Why it is not ready (a crash loop, named), or `None`.
    pub fn unready(&self) -> Option<String> {
        self.inner.pool.unready()
    }

    /// The children running now.
    pub fn processes(&self) -> usize {
        self.inner.pool.running()
    }

    /// The legacy sessions open now.
    pub fn sessions(&self) -> usize {
        self.inner.lock().len()
    }

    /// Counters for `/metrics`.
    pub fn metrics(&self) -> StdioMetrics {
        StdioMetrics {
            upstreams: vec![self.clone()],
        }
    }

    /// Stops every child now (each by the MCP stdio shutdown: stdin closed, SIGTERM, SIGKILL,
    /// `stop_timeout` apart). Calls still in flight fail.
    pub fn shutdown(&self) {
        self.inner.lock().clear();
        self.inner.pool.stop_all();
    }

    /// [`StdioUpstream::shutdown`], then waits until every child has exited (each is killed at
    /// the latest two `stop_timeout`s after the request).
    pub async fn stop(&self) {
        self.shutdown();
        let deadline = tokio::time::Instant::now() + self.inner.pool.spec.stop_timeout * 3;
        while self.processes() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Serves one request (its body bounded by `max_message_size`); the parsed view is taken
    /// from the extensions when a layer above made one.
    pub async fn forward<B>(&self, req: Request<B>) -> Response<StdioBody>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = req.into_parts();
        let agent: Option<Arc<str>> = parts
            .extensions
            .get::<Principal>()
            .map(|p| Arc::from(p.agent_key()));
        let session_id = parts
            .headers
            .get(MCP_SESSION_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        match parts.method {
            Method::POST => {}
            Method::GET => return self.open_stream(session_id, agent.as_deref()),
            Method::DELETE => return self.end_session(session_id, agent.as_deref()),
            _ => {
                let mut r = error(
                    None,
                    Failure::new(
                        StatusCode::METHOD_NOT_ALLOWED,
                        ErrorCode::INVALID_REQUEST,
                        "use POST, GET or DELETE",
                    ),
                );
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("POST, GET, DELETE"));
                return r;
            }
        }
        let view = match parts.extensions.get::<McpRequest>() {
            Some(v) if v.body().is_some() => v.clone(),
            _ => {
                let limited =
                    http_body_util::Limited::new(body, self.inner.pool.spec.max_message_size);
                let bytes = match limited.collect().await {
                    Ok(c) => c.to_bytes(),
                    Err(e) => {
                        return error(
                            None,
                            Failure::new(
                                StatusCode::PAYLOAD_TOO_LARGE,
                                ErrorCode::INVALID_REQUEST,
                                format!("the request body cannot be read: {e}"),
                            ),
                        )
                    }
                };
                match McpRequest::parse(&parts.headers, Some(bytes)) {
                    Ok(v) => v,
                    Err(e) => {
                        let (status, err) = e.to_jsonrpc();
                        return error(None, Failure::new(status, err.code, err.message.clone()));
                    }
                }
            }
        };
        let accepts_sse = parts
            .headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("text/event-stream"));
        self.post(view, session_id, agent, accepts_sse).await
    }

    async fn post(
        &self,
        view: McpRequest,
        session_id: Option<String>,
        agent: Option<Arc<str>>,
        accepts_sse: bool,
    ) -> Response<StdioBody> {
        let (Some(msg), Some(body)) = (view.single(), view.body()) else {
            return error(
                None,
                Failure::new(StatusCode::BAD_REQUEST, ErrorCode::INVALID_REQUEST, "JSON-RPC batches are not supported by stdio upstreams: send one message per request"),
            );
        };
        let text = &body[msg.span()];
        let reply_id = msg.id().map(|i| i.as_raw().to_owned());
        let pool = &self.inner.pool;
        let mode = pool.spec.mode;
        let modern = view.protocol().era == Era::Modern;
        // Which child: a legacy session's, an agent's, or the shared one.
        let (child, session): (Result<Arc<Child>, Failure>, Option<Arc<str>>) = if modern {
            (pool.child(&self.slot_key(agent.as_ref(), true)).await, None)
        } else if msg.method() == Some("initialize") && session_id.is_none() {
            return self.initialize(text, agent, reply_id.as_deref()).await;
        } else if let Some(sid) = session_id {
            let Some((target, sid)) = self.inner.touch(&sid, agent.as_deref()) else {
                return error(
                    reply_id.as_deref(),
                    Failure::new(
                        StatusCode::NOT_FOUND,
                        ErrorCode::SESSION_NOT_FOUND,
                        "Session not found: initialize again",
                    ),
                );
            };
            let child = match target {
                SessionTarget::Own(c) if c.alive() => Ok(c),
                SessionTarget::Own(_) => {
                    self.inner.lock().remove(&sid);
                    return error(
                        reply_id.as_deref(),
                        Failure::new(
                            StatusCode::NOT_FOUND,
                            ErrorCode::SESSION_NOT_FOUND,
                            "Session not found: its stdio server exited; initialize again",
                        ),
                    );
                }
                SessionTarget::Slot(key) => self.legacy_child(&key).await,
            };
            (child, Some(sid))
        } else if mode == Mode::PerSession {
            return error(
                reply_id.as_deref(),
                Failure::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::INVALID_REQUEST,
                    "Bad Request: no Mcp-Session-Id; send initialize first",
                ),
            );
        } else {
            (
                self.legacy_child(&self.slot_key(agent.as_ref(), false))
                    .await,
                None,
            )
        };
        let child = match child {
            Ok(c) => c,
            Err(f) => return error(reply_id.as_deref(), f),
        };
        match msg.kind() {
            MessageKind::Request => {}
            MessageKind::Notification => {
                // A child of one session hears everything its client says. A child shared by
                // several clients has the gateway as its one client: it hears only a legacy
                // session's cancellation of its own call (2026-07-28 clients cancel by closing
                // the stream), never one client's notifications about its own state.
                let own = mode == Mode::PerSession && !modern;
                let cancels_own_call =
                    session.is_some() && msg.method() == Some("notifications/cancelled");
                if !(own || cancels_own_call) {
                    return accepted();
                }
                return match child.send(text, session.as_deref()) {
                    Ok(()) => accepted(),
                    Err(f) => error(None, f),
                };
            }
            MessageKind::Response | MessageKind::ErrorResponse => {
                // Answers to the server's requests, which only a child of one session relays.
                if mode != Mode::PerSession || modern {
                    return accepted();
                }
                return match child.send(text, session.as_deref()) {
                    Ok(()) => accepted(),
                    Err(f) => error(None, f),
                };
            }
        }
        let id = reply_id.as_deref().unwrap_or("null");
        let token = progress_token(&body[..], msg);
        // A 2026-07-28 `subscriptions/listen` is answered by a stream of notifications that
        // lasts as long as the client keeps it open.
        let listen = msg.method() == Some("subscriptions/listen");
        if listen && !accepts_sse {
            return error(
                Some(id),
                Failure::new(
                    StatusCode::NOT_ACCEPTABLE,
                    ErrorCode::INVALID_REQUEST,
                    "subscriptions/listen answers with an event stream: accept text/event-stream",
                ),
            );
        }
        let streaming =
            accepts_sse && (listen || token.is_some() || (mode == Mode::PerSession && !modern));
        match child.call(text, id, token.as_deref(), session, streaming) {
            Ok((guard, rx)) => {
                if streaming {
                    sse(StdioBody::call(
                        rx,
                        guard,
                        id.to_owned(),
                        (!listen).then_some(pool.spec.response_timeout),
                    ))
                } else {
                    self.answer(guard, rx, id, modern).await
                }
            }
            Err(f) => error(Some(id), f),
        }
    }

    /// Waits for a call's answer and sends it as JSON.
    async fn answer(
        &self,
        guard: CallGuard,
        mut rx: mpsc::Receiver<Delivery>,
        id: &str,
        modern: bool,
    ) -> Response<StdioBody> {
        let timeout = self.inner.pool.spec.response_timeout;
        let got = tokio::time::timeout(timeout, async {
            loop {
                match rx.recv().await {
                    Some(Delivery::Message(_)) => {}
                    other => return other,
                }
            }
        })
        .await;
        match got {
            Ok(Some(Delivery::Answer(bytes))) => {
                guard.answered();
                let status = if modern {
                    modern_status(&bytes)
                } else {
                    StatusCode::OK
                };
                json(status, bytes)
            }
            Ok(Some(Delivery::Failed(f))) => error(Some(id), f),
            Ok(_) => error(
                Some(id),
                Failure::new(StatusCode::BAD_GATEWAY, ErrorCode::UPSTREAM_UNAVAILABLE, format!("the stdio server {} went away", self.name())),
            ),
            Err(_) => error(
                Some(id),
                Failure::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    ErrorCode::UPSTREAM_TIMEOUT,
                    format!("the stdio server {} did not answer within response_timeout ({timeout:?}); the call was cancelled", self.name()),
                ),
            ),
        }
    }

    fn slot_key(&self, agent: Option<&Arc<str>>, modern: bool) -> SlotKey {
        let agent = match self.mode() {
            Mode::PerAgent => Some(agent.cloned().unwrap_or_else(|| Arc::from("anonymous"))),
            _ => None,
        };
        SlotKey { agent, modern }
    }

    /// A long-lived child, initialized by the gateway for legacy clients.
    async fn legacy_child(&self, key: &SlotKey) -> Result<Arc<Child>, Failure> {
        let child = self.inner.pool.child(key).await?;
        self.gateway_initialize(&child).await?;
        Ok(child)
    }

    /// The gateway's own `initialize` of a shared child, once per child: the server's result.
    async fn gateway_initialize(&self, child: &Arc<Child>) -> Result<Bytes, Failure> {
        let timeout = self.inner.pool.spec.startup_timeout;
        let result = child
            .init
            .get_or_try_init(|| async {
                let params = serde_json::json!({
                    "protocolVersion": LEGACY_VERSIONS[LEGACY_VERSIONS.len() - 1],
                    "capabilities": {},
                    "clientInfo": {"name": "mcp-gateway", "version": env!("CARGO_PKG_VERSION")},
                });
                let result = child.request("initialize", params, timeout).await;
                match result {
                    Ok(r) => {
                        child.notify("notifications/initialized");
                        Ok(r)
                    }
                    Err(f) => {
                        // A child that cannot initialize is broken: it is restarted.
                        child.stop();
                        Err(f)
                    }
                }
            })
            .await?;
        Ok(result.clone())
    }

    /// A legacy `initialize`: a new session, with its own child (`per_session`) or on the
    /// gateway-initialized child of its slot.
    async fn initialize(
        &self,
        text: &[u8],
        agent: Option<Arc<str>>,
        reply_id: Option<&str>,
    ) -> Response<StdioBody> {
        let pool = &self.inner.pool;
        let id = reply_id.unwrap_or("null");
        if self.inner.lock().len() >= MAX_SESSIONS {
            return error(
                Some(id),
                Failure::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::UNAVAILABLE,
                    "too many open sessions on this upstream",
                ),
            );
        }
        let (target, answer) = if pool.spec.mode == Mode::PerSession {
            let child = match pool.session_child().await {
                Ok(c) => c,
                Err(f) => return error(Some(id), f),
            };
            let (guard, mut rx) = match child.call(text, id, None, None, false) {
                Ok(x) => x,
                Err(f) => {
                    child.stop();
                    return error(Some(id), f);
                }
            };
            let got = tokio::time::timeout(pool.spec.startup_timeout, async {
                loop {
                    match rx.recv().await {
                        Some(Delivery::Message(_)) => {}
                        other => return other,
                    }
                }
            })
            .await;
            match got {
                Ok(Some(Delivery::Answer(b))) => {
                    guard.answered();
                    pool.session_started();
                    (SessionTarget::Own(child), b)
                }
                other => {
                    drop(guard);
                    child.stop();
                    let f = match other {
                        Ok(Some(Delivery::Failed(f))) => f,
                        Err(_) => Failure::new(
                            StatusCode::GATEWAY_TIMEOUT,
                            ErrorCode::UPSTREAM_TIMEOUT,
                            format!("the stdio server {} did not answer initialize within startup_timeout ({:?})", self.name(), pool.spec.startup_timeout),
                        ),
                        _ => Failure::new(StatusCode::BAD_GATEWAY, ErrorCode::UPSTREAM_UNAVAILABLE, format!("the stdio server {} went away", self.name())),
                    };
                    return error(Some(id), f);
                }
            }
        } else {
            let key = self.slot_key(agent.as_ref(), false);
            let child = match pool.child(&key).await {
                Ok(c) => c,
                Err(f) => return error(Some(id), f),
            };
            let result = match self.gateway_initialize(&child).await {
                Ok(r) => r,
                Err(f) => return error(Some(id), f),
            };
            let asked = requested_version(text);
            (
                SessionTarget::Slot(key),
                initialize_answer(id, &result, asked.as_deref()),
            )
        };
        let sid = new_session_id();
        self.inner.lock().insert(
            sid.clone(),
            Session {
                id: sid.clone(),
                target,
                agent,
                last_used: Instant::now(),
            },
        );
        let mut resp = json(StatusCode::OK, answer);
        if let Ok(v) = HeaderValue::from_str(&sid) {
            resp.headers_mut().insert(MCP_SESSION_ID, v);
        }
        resp
    }

    /// A legacy session's GET: what its server sends outside calls.
    fn open_stream(&self, session_id: Option<String>, agent: Option<&str>) -> Response<StdioBody> {
        let Some(sid) = session_id else {
            let mut r = error(
                None,
                Failure::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    ErrorCode::INVALID_REQUEST,
                    "no stream without a session: GET needs Mcp-Session-Id",
                ),
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST, DELETE"));
            return r;
        };
        let Some((target, sid)) = self.inner.touch(&sid, agent) else {
            return error(
                None,
                Failure::new(
                    StatusCode::NOT_FOUND,
                    ErrorCode::SESSION_NOT_FOUND,
                    "Session not found: initialize again",
                ),
            );
        };
        let child = match target {
            SessionTarget::Own(c) => Some(c),
            SessionTarget::Slot(key) => self.inner.pool.running_child(&key),
        };
        let Some(child) = child.filter(|c| c.alive()) else {
            return error(
                None,
                Failure::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::UNAVAILABLE,
                    format!("the stdio server {} is not running", self.name()),
                ),
            );
        };
        let _ = sid;
        let (guard, rx) = child.listen();
        sse(StdioBody::listen(rx, guard))
    }

    /// A legacy session's DELETE: the session ends (and its own child stops).
    fn end_session(&self, session_id: Option<String>, agent: Option<&str>) -> Response<StdioBody> {
        let Some(sid) = session_id else {
            return error(
                None,
                Failure::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::INVALID_REQUEST,
                    "DELETE needs Mcp-Session-Id",
                ),
            );
        };
        let removed = {
            let mut sessions = self.inner.lock();
            match sessions.get(sid.as_str()) {
                Some(s) if s.agent.as_deref() == agent => sessions.remove(sid.as_str()),
                _ => None,
            }
        };
        match removed {
            Some(s) => {
                if let SessionTarget::Own(c) = s.target {
                    c.stop();
                }
                let mut r = Response::new(StdioBody::once(Bytes::new()));
                *r.status_mut() = StatusCode::OK;
                r
            }
            None => error(
                None,
                Failure::new(
                    StatusCode::NOT_FOUND,
                    ErrorCode::SESSION_NOT_FOUND,
                    "Session not found",
                ),
            ),
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session `sid`, when it exists and belongs to `agent`; marks it used.
    fn touch(&self, sid: &str, agent: Option<&str>) -> Option<(SessionTarget, Arc<str>)> {
        let mut sessions = self.lock();
        let s = sessions.get_mut(sid)?;
        if s.agent.as_deref() != agent {
            return None;
        }
        s.last_used = Instant::now();
        Some((s.target.clone(), s.id.clone()))
    }
}

/// Ends the sessions idle for `idle_timeout` (stopping their own children).
async fn reap_sessions(weak: Weak<Inner>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = weak.upgrade() else { return };
        let idle = inner.pool.spec.idle_timeout;
        let mut stopped = Vec::new();
        inner.lock().retain(|_, s| {
            let own_gone = matches!(&s.target, SessionTarget::Own(c) if !c.alive());
            let keep = !own_gone && s.last_used.elapsed() < idle;
            if !keep {
                if let SessionTarget::Own(c) = &s.target {
                    stopped.push(c.clone());
                }
            }
            keep
        });
        for c in stopped {
            if c.alive() {
                tracing::info!(target: "mcp_gateway::stdio", upstream = %inner.pool.name, pid = c.pid(), "session idle: stopping its stdio server");
                c.stop();
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for s in self.lock().values() {
            if let SessionTarget::Own(c) = &s.target {
                c.stop();
            }
        }
    }
}

impl<B> tower_service::Service<Request<B>> for StdioUpstream
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<StdioBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<StdioBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.forward(req).await) })
    }
}

/// A new session id: 128 random bits, hex.
fn new_session_id() -> Arc<str> {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        // No system randomness: fail closed to a value no client can guess either.
        b = fastrand::u128(..).to_le_bytes();
    }
    let mut s = String::with_capacity(32);
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    Arc::from(s)
}

/// The protocol version a client's `initialize` asks for.
fn requested_version(text: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Params {
        #[serde(rename = "protocolVersion")]
        version: Option<String>,
    }
    #[derive(Deserialize)]
    struct Init {
        params: Option<Params>,
    }
    serde_json::from_slice::<Init>(text).ok()?.params?.version
}

/// The answer to a client's `initialize` on a shared child: the server's result, at the
/// version the client asked for when the server speaks a newer one (versions are dates).
fn initialize_answer(id: &str, result: &[u8], asked: Option<&str>) -> Bytes {
    let mut v: serde_json::Value = serde_json::from_slice(result).unwrap_or_default();
    let server = v
        .get("protocolVersion")
        .and_then(|s| s.as_str())
        .map(str::to_owned);
    if let (Some(asked), Some(server)) = (asked, server) {
        if LEGACY_VERSIONS.contains(&asked) && asked < server.as_str() {
            v["protocolVersion"] = serde_json::Value::from(asked);
        }
    }
    Bytes::from(format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":{}}}",
        serde_json::to_string(&v).unwrap_or_else(|_| "{}".into())
    ))
}

/// The HTTP status of a 2026-07-28 answer sent as JSON, as Streamable HTTP servers give it
/// (SEP-2575): a method the server does not have is 404; an unsupported protocol version, a
/// missing required client capability, a header mismatch or invalid params naming the `_meta`
/// envelope is 400; everything else 200 (a
/// legacy answer is always 200). Over stdio the server gives only the JSON-RPC error, so the
/// gateway, its HTTP transport, maps it.
fn modern_status(answer: &[u8]) -> StatusCode {
    #[derive(Deserialize)]
    struct Code {
        code: i64,
        #[serde(default)]
        message: String,
    }
    #[derive(Deserialize)]
    struct Answer {
        error: Option<Code>,
    }
    if !answer.windows(7).any(|w| w == b"\"error\"") {
        return StatusCode::OK;
    }
    let Some(error) = serde_json::from_slice::<Answer>(answer)
        .ok()
        .and_then(|a| a.error)
    else {
        return StatusCode::OK;
    };
    match error.code {
        -32601 => StatusCode::NOT_FOUND,
        -32022..=-32020 => StatusCode::BAD_REQUEST,
        // Invalid params about the request's `_meta` envelope (a required key missing): a
        // malformed request, not an in-band error.
        -32602 if error.message.contains("_meta") => StatusCode::BAD_REQUEST,
        _ => StatusCode::OK,
    }
}

/// The progress token of a request, as JSON text.
fn progress_token(body: &[u8], msg: &McpMessage) -> Option<String> {
    #[derive(Deserialize)]
    struct Meta<'a> {
        #[serde(rename = "progressToken", borrow)]
        token: Option<&'a RawValue>,
    }
    let span = msg.meta_span()?;
    let meta: Meta<'_> = serde_json::from_slice(&body[span]).ok()?;
    meta.token.map(|t| t.get().to_owned())
}

fn accepted() -> Response<StdioBody> {
    let mut r = Response::new(StdioBody::once(Bytes::new()));
    *r.status_mut() = StatusCode::ACCEPTED;
    r
}

fn json(status: StatusCode, body: Bytes) -> Response<StdioBody> {
    let mut r = Response::new(StdioBody::once(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(id: Option<&str>, f: Failure) -> Response<StdioBody> {
    let status = f.status;
    let retry = f
        .data
        .as_ref()
        .and_then(|d| d.get("retry_after_ms"))
        .and_then(serde_json::Value::as_u64)
        .map(|ms| ms.div_ceil(1000).max(1))
        .or((status == StatusCode::SERVICE_UNAVAILABLE).then_some(1));
    let mut r = json(status, f.to_json(id));
    if let Some(s) = retry {
        if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    r
}

fn sse(body: StdioBody) -> Response<StdioBody> {
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// The body of a stdio upstream's answers: JSON, a call's SSE stream (ending with its
/// answer), or a session's GET stream.
pub struct StdioBody {
    kind: Kind,
}

enum Kind {
    Once(Option<Bytes>),
    Call {
        rx: mpsc::Receiver<Delivery>,
        guard: Option<CallGuard>,
        id: String,
        /// The longest silence, with its timer (none for a listen stream).
        idle: Option<(Duration, Pin<Box<tokio::time::Sleep>>)>,
    },
    Listen {
        rx: mpsc::Receiver<Bytes>,
        _guard: ListenGuard,
    },
    Done,
}

impl std::fmt::Debug for StdioBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            Kind::Once(_) => "once",
            Kind::Call { .. } => "call",
            Kind::Listen { .. } => "listen",
            Kind::Done => "done",
        };
        f.debug_struct("StdioBody").field("kind", &kind).finish()
    }
}

impl StdioBody {
    fn once(b: Bytes) -> Self {
        Self {
            kind: Kind::Once((!b.is_empty()).then_some(b)),
        }
    }

    fn call(
        rx: mpsc::Receiver<Delivery>,
        guard: CallGuard,
        id: String,
        idle: Option<Duration>,
    ) -> Self {
        Self {
            kind: Kind::Call {
                rx,
                guard: Some(guard),
                id,
                idle: idle.map(|d| (d, Box::pin(tokio::time::sleep(d)))),
            },
        }
    }

    fn listen(rx: mpsc::Receiver<Bytes>, guard: ListenGuard) -> Self {
        Self {
            kind: Kind::Listen { rx, _guard: guard },
        }
    }
}

fn event(data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(b"event: message\ndata: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

impl Body for StdioBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        match &mut this.kind {
            Kind::Once(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Done => Poll::Ready(None),
            Kind::Listen { rx, .. } => match ready!(rx.poll_recv(cx)) {
                Some(m) => Poll::Ready(Some(Ok(Frame::data(event(&m))))),
                None => {
                    this.kind = Kind::Done;
                    Poll::Ready(None)
                }
            },
            Kind::Call {
                rx,
                guard,
                id,
                idle,
            } => match rx.poll_recv(cx) {
                Poll::Ready(Some(Delivery::Message(m))) => {
                    if let Some((d, timer)) = idle {
                        timer.as_mut().reset(tokio::time::Instant::now() + *d);
                    }
                    Poll::Ready(Some(Ok(Frame::data(event(&m)))))
                }
                Poll::Ready(Some(Delivery::Answer(a))) => {
                    if let Some(g) = guard.take() {
                        g.answered();
                    }
                    this.kind = Kind::Done;
                    Poll::Ready(Some(Ok(Frame::data(event(&a)))))
                }
                Poll::Ready(Some(Delivery::Failed(f))) => {
                    let e = event(&f.to_json(Some(id)));
                    this.kind = Kind::Done;
                    Poll::Ready(Some(Ok(Frame::data(e))))
                }
                Poll::Ready(None) => {
                    this.kind = Kind::Done;
                    Poll::Ready(None)
                }
                Poll::Pending => {
                    let Some((d, timer)) = idle else {
                        return Poll::Pending;
                    };
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let f = Failure::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        ErrorCode::UPSTREAM_TIMEOUT,
                        format!("the stdio server sent nothing for response_timeout ({d:?}); the call was cancelled"),
                    );
                    let e = event(&f.to_json(Some(id)));
                    // Dropping the guard cancels the call on the server.
                    this.kind = Kind::Done;
                    Poll::Ready(Some(Ok(Frame::data(e))))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.kind, Kind::Done | Kind::Once(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Once(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Once(None) | Kind::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// The stdio upstreams' counters, rendered for `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct StdioMetrics {
    upstreams: Vec<StdioUpstream>,
}

impl StdioMetrics {
    /// Metrics of several stdio upstreams, rendered together.
    pub fn of<'a>(upstreams: impl IntoIterator<Item = &'a StdioUpstream>) -> Self {
        Self {
            upstreams: upstreams.into_iter().cloned().collect(),
        }
    }

    /// Whether there is nothing to render.
    pub fn is_empty(&self) -> bool {
        self.upstreams.is_empty()
    }

    /// The Prometheus text of the counters.
    pub fn render_into(&self, out: &mut String) {
        use std::fmt::Write;
        use std::sync::atomic::Ordering::Relaxed;
        if self.upstreams.is_empty() {
            return;
        }
        type Read = fn(&StdioUpstream) -> u64;
        let series: [(&str, &str, &str, Read); 7] = [
            (
                "mcp_gateway_stdio_processes",
                "gauge",
                "Child processes running now.",
                |u| u.processes() as u64,
            ),
            (
                "mcp_gateway_stdio_sessions",
                "gauge",
                "Legacy sessions open now.",
                |u| u.sessions() as u64,
            ),
            (
                "mcp_gateway_stdio_starts_total",
                "counter",
                "Child processes started.",
                |u| u.inner.pool.counters.starts.load(Relaxed),
            ),
            (
                "mcp_gateway_stdio_restarts_total",
                "counter",
                "Child processes started again after an exit they were not asked for.",
                |u| u.inner.pool.counters.restarts.load(Relaxed),
            ),
            (
                "mcp_gateway_stdio_crashes_total",
                "counter",
                "Child processes that exited without being asked to.",
                |u| u.inner.pool.counters.crashes.load(Relaxed),
            ),
            (
                "mcp_gateway_stdio_spawn_errors_total",
                "counter",
                "Child processes that could not be started.",
                |u| u.inner.pool.counters.spawn_errors.load(Relaxed),
            ),
            (
                "mcp_gateway_stdio_refused_total",
                "counter",
                "Requests refused with 503: max_processes reached, or restarting.",
                |u| u.inner.pool.counters.refused.load(Relaxed),
            ),
        ];
        for (name, kind, help, read) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for u in &self.upstreams {
                let _ = writeln!(out, "{name}{{upstream=\"{}\"}} {}", u.name(), read(u));
            }
        }
        let _ = writeln!(out, "# HELP mcp_gateway_stdio_ready Whether the upstream is out of a crash loop (1) or in one (0).\n# TYPE mcp_gateway_stdio_ready gauge");
        for u in &self.upstreams {
            let _ = writeln!(
                out,
                "mcp_gateway_stdio_ready{{upstream=\"{}\"}} {}",
                u.name(),
                u8::from(u.unready().is_none())
            );
        }
    }
}

impl crate::prometheus::RenderPrometheus for StdioMetrics {
    fn render_prometheus(&self, out: &mut String) {
        StdioMetrics::render_into(self, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modern_answers_get_the_status_streamable_http_servers_give() {
        let status = |t: &str| modern_status(t.as_bytes());
        assert_eq!(
            status(r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"x"}}"#),
            StatusCode::NOT_FOUND
        );
        for code in [-32022, -32021, -32020] {
            let t =
                format!(r#"{{"jsonrpc":"2.0","id":1,"error":{{"code":{code},"message":"x"}}}}"#);
            assert_eq!(status(&t), StatusCode::BAD_REQUEST, "{code}");
        }
        assert_eq!(
            status(r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"x"}}"#),
            StatusCode::OK
        );
        assert_eq!(
            status(
                r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"request _meta is missing clientCapabilities"}}"#
            ),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(r#"{"jsonrpc":"2.0","id":1,"result":{"error":{"code":-32601}}}"#),
            StatusCode::OK
        );
    }
}
