//! One running child: the writer of its stdin, the reader of its stdout, and the calls in
//! flight on it.
//!
//! Every request the gateway writes gets an id of the gateway's own (a number unique in this
//! process), and a progress token it carries is replaced the same way, so requests of
//! different clients never collide; answers and progress get the client's values back,
//! spliced into the server's bytes. A child that exits fails its calls at once.

use super::frame::{Line, LineReader};
use super::process;
use bytes::{Bytes, BytesMut};
use http::StatusCode;
use mcp_gateway_core::jsonrpc::ErrorCode;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Notify};

/// How long a child that closed its stdout may take to exit before it is stopped.
const EXIT_AFTER_EOF: Duration = Duration::from_secs(1);
/// How long the rest of stdout is read after the child exited (its last answers).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);

/// Who receives what a child sends that is not the answer of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Relay {
    /// The child serves one client session: its requests (sampling, elicitation, roots) and
    /// notifications go to that client, on the stream of a call in flight or its GET stream.
    Session,
    /// The child serves many clients: its requests are refused (they could reach the wrong
    /// person), `list_changed` and `resources/updated` go to every open GET stream, other
    /// notifications are dropped.
    Shared,
}

/// Why a call failed on the gateway's side.
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    pub(crate) status: StatusCode,
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
    pub(crate) data: Option<serde_json::Value>,
}

impl Failure {
    pub(crate) fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            data: None,
        }
    }

    /// The JSON-RPC error response for `id` (raw JSON text, `null` when none).
    pub(crate) fn to_json(&self, id: Option<&str>) -> Bytes {
        let mut err = serde_json::json!({"code": self.code.0, "message": self.message});
        if let Some(d) = &self.data {
            err["data"] = d.clone();
        }
        let text = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":{},\"error\":{}}}",
            id.unwrap_or("null"),
            err
        );
        Bytes::from(text)
    }
}

/// What a call's receiver gets.
#[derive(Debug)]
pub(crate) enum Delivery {
    /// A notification or a request of the server for the client, to pass on.
    Message(Bytes),
    /// The answer, with the client's id.
    Answer(Bytes),
    /// The call failed.
    Failed(Failure),
}

struct Call {
    /// The client's id, as JSON text.
    id: Box<str>,
    /// The gateway's progress token for this call.
    token: Option<u64>,
    /// The client's progress token, as JSON text.
    client_token: Option<Box<str>>,
    session: Option<Arc<str>>,
    /// Whether the client reads a stream (messages other than the answer can reach it).
    streaming: bool,
    tx: mpsc::Sender<Delivery>,
}

struct Listener {
    id: u64,
    tx: mpsc::Sender<Bytes>,
}

#[derive(Default)]
struct State {
    dead: Option<String>,
    calls: HashMap<u64, Call>,
    tokens: HashMap<u64, u64>,
    listeners: Vec<Listener>,
}

/// How a child ended, for its supervisor.
#[derive(Debug)]
pub(crate) struct Exit {
    pub(crate) status: String,
    /// How long it ran.
    pub(crate) lived: Duration,
    /// Whether the gateway asked it to stop.
    pub(crate) requested: bool,
}

/// A running child.
pub(crate) struct Child {
    upstream: Arc<str>,
    pid: u32,
    started: Instant,
    relay: Relay,
    out: mpsc::Sender<Bytes>,
    state: Mutex<State>,
    next: AtomicU64,
    stop: Notify,
    stopping: AtomicBool,
    close_stdin: Notify,
    /// The server's `initialize` result, when the gateway initialized it.
    pub(crate) init: tokio::sync::OnceCell<Bytes>,
    /// When it last carried a call (for idle stops).
    last_used: Mutex<Instant>,
}

impl std::fmt::Debug for Child {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Child")
            .field("upstream", &self.upstream)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

/// The settings a child runs with.
#[derive(Clone, Debug)]
pub(crate) struct ChildSettings {
    pub(crate) upstream: Arc<str>,
    pub(crate) relay: Relay,
    pub(crate) max_message_size: usize,
    pub(crate) stop_timeout: Duration,
}

impl Child {
    /// Starts `cmd`'s process and the tasks that serve it; `on_exit` is called once, when it
    /// has exited, before its calls are failed.
    pub(crate) fn start(
        mut proc: tokio::process::Child,
        settings: ChildSettings,
        on_exit: impl FnOnce(Exit) + Send + 'static,
    ) -> std::io::Result<Arc<Self>> {
        let pid = proc.id().unwrap_or(0);
        let stdin = proc.stdin.take();
        let stdout = proc.stdout.take();
        let stderr = proc.stderr.take();
        let (Some(mut stdin), Some(stdout)) = (stdin, stdout) else {
            return Err(std::io::Error::other("the child's stdio is not piped"));
        };
        let (out, mut rx) = mpsc::channel::<Bytes>(1024);
        let child = Arc::new(Self {
            upstream: settings.upstream.clone(),
            pid,
            started: Instant::now(),
            relay: settings.relay,
            out,
            state: Mutex::new(State::default()),
            next: AtomicU64::new(1),
            stop: Notify::new(),
            stopping: AtomicBool::new(false),
            close_stdin: Notify::new(),
            init: tokio::sync::OnceCell::new(),
            last_used: Mutex::new(Instant::now()),
        });
        if let Some(stderr) = stderr {
            tokio::spawn(process::pump_stderr(settings.upstream.clone(), pid, stderr));
        }
        // The writer: one task owns stdin, so a message is written whole or not at all, even
        // when the call that sent it is dropped meanwhile.
        let writer = child.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    m = rx.recv() => match m {
                        Some(line) => {
                            if stdin.write_all(&line).await.is_err() {
                                break;
                            }
                        }
                        None => break,
                    },
                    () = writer.close_stdin.notified() => break,
                }
            }
            drop(stdin);
        });
        // Kills the group if the gateway dies without stopping it; holds its pipe open.
        let dog = process::watchdog(pid);
        let reader = child.clone();
        tokio::spawn(async move {
            reader
                .drive(
                    proc,
                    LineReader::new(stdout, settings.max_message_size),
                    settings.stop_timeout,
                    on_exit,
                )
                .await;
            if let Some(mut dog) = dog {
                // The group kill ended it; reap it (or end it, if it was not in the group).
                if tokio::time::timeout(Duration::from_millis(500), dog.wait())
                    .await
                    .is_err()
                {
                    let _ = dog.start_kill();
                    let _ = dog.wait().await;
                }
            }
        });
        tracing::info!(target: "mcp_gateway::stdio", upstream = %child.upstream, pid, "stdio server started");
        Ok(child)
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// How long it has run.
    pub(crate) fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether it still runs (and is not being stopped).
    pub(crate) fn alive(&self) -> bool {
        !self.stopping.load(Ordering::Relaxed) && self.lock().dead.is_none()
    }

    /// How long since it last carried a call.
    pub(crate) fn idle_for(&self) -> Duration {
        self.last_used
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }

    /// How many calls are in flight on it.
    pub(crate) fn in_flight(&self) -> usize {
        self.lock().calls.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks it to stop: stdin closed, then SIGTERM and SIGKILL to its group, each after
    /// `stop_timeout`.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.stop.notify_one();
    }

    /// Sends one call: `body` is the request's text, `id` its id as JSON text, `token` the
    /// progress token it carries (JSON text). The returned guard cancels the call on the
    /// server when dropped before the answer.
    pub(crate) fn call(
        self: &Arc<Self>,
        body: &[u8],
        id: &str,
        token: Option<&str>,
        session: Option<Arc<str>>,
        streaming: bool,
    ) -> Result<(CallGuard, mpsc::Receiver<Delivery>), Failure> {
        let gw = self.next.fetch_add(1, Ordering::Relaxed);
        // The request was validated when it was read (or is re-serialized here): its id is
        // found by a byte scan, not a second parse, and spliced while copying it once.
        let edited;
        let (gw_token, body): (Option<u64>, &[u8]) = match token {
            Some(_) => {
                let t = self.next.fetch_add(1, Ordering::Relaxed);
                edited = set_progress_token(body, t).map_err(|m| {
                    Failure::new(StatusCode::BAD_REQUEST, ErrorCode::INVALID_PARAMS, m)
                })?;
                (Some(t), &edited)
            }
            None => (None, body),
        };
        let line = super::frame::id_span(body)
            .map(|r| splice_at(body, r, gw.to_string().as_bytes(), true))
            .ok_or_else(|| {
                Failure::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::INVALID_REQUEST,
                    "the request has no id to rewrite",
                )
            })?;
        let (tx, rx) = mpsc::channel(64);
        {
            let mut st = self.lock();
            if let Some(why) = &st.dead {
                return Err(exited_failure(&self.upstream, why));
            }
            st.calls.insert(
                gw,
                Call {
                    id: id.into(),
                    token: gw_token,
                    client_token: token.map(Into::into),
                    session,
                    streaming,
                    tx,
                },
            );
            if let Some(t) = gw_token {
                st.tokens.insert(t, gw);
            }
        }
        if let Ok(mut t) = self.last_used.lock() {
            *t = Instant::now();
        }
        if self.out.try_send(line).is_err() {
            self.forget(gw);
            return Err(Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::UNAVAILABLE,
                format!(
                    "the stdio server {} is not reading its input fast enough",
                    self.upstream
                ),
            ));
        }
        Ok((
            CallGuard {
                child: self.clone(),
                gw,
            },
            rx,
        ))
    }

    /// Writes a message that needs no answer: a client's notification (a cancellation gets the
    /// gateway's id of the call it names, and goes nowhere when that call is not in flight
    /// here) or a client's answer to a request of the server.
    pub(crate) fn send(&self, body: &[u8], session: Option<&str>) -> Result<(), Failure> {
        let top = Top::parse(body).map_err(|e| {
            Failure::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::PARSE_ERROR,
                e.to_string(),
            )
        })?;
        let line = if top.method.as_deref() == Some("notifications/cancelled") {
            let Some(gw) = self.cancelled_call(body, session) else {
                return Ok(());
            };
            self.forget(gw);
            cancel_line(gw, "cancelled by the client")
        } else {
            let mut line = BytesMut::with_capacity(body.len() + 1);
            line.extend_from_slice(body);
            one_line(&mut line);
            line.extend_from_slice(b"\n");
            line.freeze()
        };
        self.out.try_send(line).map_err(|_| {
            Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::UNAVAILABLE,
                format!(
                    "the stdio server {} is not reading its input fast enough",
                    self.upstream
                ),
            )
        })
    }

    /// The gateway id of the call a client's `notifications/cancelled` names.
    fn cancelled_call(&self, body: &[u8], session: Option<&str>) -> Option<u64> {
        #[derive(Deserialize)]
        struct Params<'a> {
            #[serde(rename = "requestId", borrow)]
            request_id: Option<&'a RawValue>,
        }
        #[derive(Deserialize)]
        struct Note<'a> {
            #[serde(borrow)]
            params: Option<Params<'a>>,
        }
        // Only a legacy session names the calls it may cancel: without one, an id could be
        // another client's.
        let session = Some(session?);
        let note: Note<'_> = serde_json::from_slice(body).ok()?;
        let want = note.params?.request_id?.get().trim().to_owned();
        let st = self.lock();
        st.calls
            .iter()
            .find(|(_, c)| *c.id == *want && c.session.as_deref() == session)
            .map(|(gw, _)| *gw)
    }

    /// Opens a stream of what the server sends outside calls, for a client session's GET.
    pub(crate) fn listen(self: &Arc<Self>) -> (ListenGuard, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(64);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().listeners.push(Listener { id, tx });
        (
            ListenGuard {
                child: self.clone(),
                id,
            },
            rx,
        )
    }

    /// Removes a call without telling the server.
    fn forget(&self, gw: u64) -> Option<Call> {
        let mut st = self.lock();
        let call = st.calls.remove(&gw)?;
        if let Some(t) = call.token {
            st.tokens.remove(&t);
        }
        Some(call)
    }

    /// The gateway's own request (its `initialize`): the answer's `result`, as JSON text.
    pub(crate) async fn request(
        self: &Arc<Self>,
        method: &str,
        params: serde_json::Value,
        timeout: Duration,
    ) -> Result<Bytes, Failure> {
        let body =
            serde_json::json!({"jsonrpc": "2.0", "id": 0, "method": method, "params": params});
        let body = serde_json::to_vec(&body).unwrap_or_default();
        let (guard, mut rx) = self.call(&body, "0", None, None, false)?;
        let answer = match tokio::time::timeout(timeout, async {
            loop {
                match rx.recv().await {
                    Some(Delivery::Answer(b)) => return Ok(b),
                    Some(Delivery::Failed(f)) => return Err(f),
                    Some(Delivery::Message(_)) => {}
                    None => {
                        return Err(Failure::new(
                            StatusCode::BAD_GATEWAY,
                            ErrorCode::UPSTREAM_UNAVAILABLE,
                            "the stdio server went away",
                        ))
                    }
                }
            }
        })
        .await
        {
            Ok(r) => r?,
            Err(_) => {
                drop(guard);
                return Err(Failure::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    ErrorCode::UPSTREAM_TIMEOUT,
                    format!(
                        "the stdio server {} did not answer {method} within {:?}",
                        self.upstream, timeout
                    ),
                ));
            }
        };
        guard.answered();
        #[derive(Deserialize)]
        struct Answer<'a> {
            #[serde(borrow)]
            result: Option<&'a RawValue>,
            #[serde(borrow)]
            error: Option<&'a RawValue>,
        }
        let a: Answer<'_> = serde_json::from_slice(&answer).map_err(|e| {
            Failure::new(
                StatusCode::BAD_GATEWAY,
                ErrorCode::UPSTREAM_UNAVAILABLE,
                e.to_string(),
            )
        })?;
        match (a.result, a.error) {
            (Some(r), _) => Ok(Bytes::copy_from_slice(r.get().as_bytes())),
            (None, e) => Err(Failure::new(
                StatusCode::BAD_GATEWAY,
                ErrorCode::UPSTREAM_UNAVAILABLE,
                format!(
                    "the stdio server {} refused {method}: {}",
                    self.upstream,
                    e.map_or("no result", RawValue::get)
                ),
            )),
        }
    }

    /// Writes a notification of the gateway's own.
    pub(crate) fn notify(&self, method: &str) {
        let line = format!("{{\"jsonrpc\":\"2.0\",\"method\":\"{method}\"}}\n");
        let _ = self.out.try_send(Bytes::from(line));
    }

    async fn drive(
        self: &Arc<Self>,
        mut proc: tokio::process::Child,
        mut lines: LineReader<tokio::process::ChildStdout>,
        stop_timeout: Duration,
        on_exit: impl FnOnce(Exit),
    ) {
        let mut requested = false;
        let status = loop {
            tokio::select! {
                line = lines.next() => match line {
                    Ok(Some(line)) => self.on_line(line),
                    _ => {
                        // It closed its stdout: it is exiting, or it is broken.
                        match tokio::time::timeout(EXIT_AFTER_EOF, proc.wait()).await {
                            Ok(st) => break st.ok(),
                            Err(_) => break self.shut_down(&mut proc, stop_timeout).await,
                        }
                    }
                },
                st = proc.wait() => {
                    // Its last answers may still be in the pipe.
                    let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, async {
                        while let Ok(Some(line)) = lines.next().await {
                            self.on_line(line);
                        }
                    }).await;
                    break st.ok();
                }
                () = self.stop.notified() => {
                    requested = true;
                    break self.shut_down(&mut proc, stop_timeout).await;
                }
            }
        };
        // What it started and left behind (its group) goes with it.
        process::signal_group(self.pid, process::SIGKILL);
        let status = status.map_or_else(|| "unknown status".to_owned(), |s| process::describe(&s));
        let why = if requested {
            "was stopped".to_owned()
        } else {
            format!("exited ({status})")
        };
        let calls = {
            let mut st = self.lock();
            st.dead = Some(why.clone());
            st.tokens.clear();
            st.listeners.clear();
            std::mem::take(&mut st.calls)
        };
        self.close_stdin.notify_one();
        // The supervisor learns of the exit before the callers do: a call retried at once
        // finds the exit recorded (its back-off, its restart count), not a stale child.
        on_exit(Exit {
            status: status.clone(),
            lived: self.started.elapsed(),
            requested,
        });
        let failed = calls.len();
        for (_, call) in calls {
            let _ = call
                .tx
                .try_send(Delivery::Failed(exited_failure(&self.upstream, &why)));
        }
        if requested {
            tracing::info!(target: "mcp_gateway::stdio", upstream = %self.upstream, pid = self.pid, status = %status, "stdio server stopped");
        } else {
            tracing::warn!(target: "mcp_gateway::stdio", upstream = %self.upstream, pid = self.pid, status = %status, failed_calls = failed, "stdio server exited");
        }
    }

    /// The MCP stdio shutdown: stdin closed, then SIGTERM, then SIGKILL, to the whole group.
    async fn shut_down(
        &self,
        proc: &mut tokio::process::Child,
        grace: Duration,
    ) -> Option<std::process::ExitStatus> {
        self.close_stdin.notify_one();
        if let Ok(st) = tokio::time::timeout(grace, proc.wait()).await {
            return st.ok();
        }
        process::signal_group(self.pid, process::SIGTERM);
        if let Ok(st) = tokio::time::timeout(grace, proc.wait()).await {
            return st.ok();
        }
        process::signal_group(self.pid, process::SIGKILL);
        proc.wait().await.ok()
    }

    fn on_line(&self, line: Line) {
        let line = match line {
            Line::Oversize { id, len } => {
                let gw = id
                    .as_deref()
                    .and_then(|i| std::str::from_utf8(i).ok())
                    .and_then(|i| i.parse::<u64>().ok());
                tracing::warn!(target: "mcp_gateway::stdio", upstream = %self.upstream, pid = self.pid, bytes = len, "stdio server wrote a message over max_message_size: dropped");
                if let Some(call) = gw.and_then(|gw| self.forget(gw)) {
                    let mut f = Failure::new(
                        StatusCode::BAD_GATEWAY,
                        ErrorCode::UPSTREAM_UNAVAILABLE,
                        format!(
                            "the answer of stdio server {} ({len} bytes) is over max_message_size",
                            self.upstream
                        ),
                    );
                    f.data = Some(serde_json::json!({"size": len}));
                    let _ = call.tx.try_send(Delivery::Failed(f));
                }
                return;
            }
            Line::Message(m) => m,
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let top = match Top::parse(&line) {
            Ok(t) => t,
            Err(_) => {
                let shown = String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned();
                tracing::warn!(target: "mcp_gateway::stdio", upstream = %self.upstream, pid = self.pid, bytes = line.len(), line = %shown, "stdio server wrote a line that is not a JSON-RPC message: dropped");
                return;
            }
        };
        match (&top.id, &top.method) {
            (Some(id), None) => {
                let span = span_in(&line, id.get());
                self.on_answer(&line, id.get(), span);
            }
            (Some(_), Some(method)) => self.on_server_request(&line, method),
            (None, Some(method)) => self.on_notification(&line, method),
            (None, None) => {
                tracing::warn!(target: "mcp_gateway::stdio", upstream = %self.upstream, pid = self.pid, "stdio server wrote a message with neither id nor method: dropped");
            }
        }
    }

    fn on_answer(&self, line: &Bytes, id: &str, span: Option<std::ops::Range<usize>>) {
        let Some(call) = id.trim().parse::<u64>().ok().and_then(|gw| self.forget(gw)) else {
            tracing::debug!(target: "mcp_gateway::stdio", upstream = %self.upstream, id, "answer to no call in flight (cancelled or timed out): dropped");
            return;
        };
        let Some(span) = span else { return };
        let answer = splice_at(line, span, call.id.as_bytes(), false);
        let _ = call.tx.try_send(Delivery::Answer(answer));
    }

    fn on_server_request(&self, line: &Bytes, method: &str) {
        if self.relay == Relay::Shared || method == "ping" {
            let reply = if method == "ping" {
                splice_into_answer(line, "\"result\":{}")
            } else {
                tracing::debug!(target: "mcp_gateway::stdio", upstream = %self.upstream, method, "request of a shared stdio server refused");
                splice_into_answer(
                    line,
                    "\"error\":{\"code\":-32601,\"message\":\"the gateway does not relay requests of a stdio server shared by several clients\"}",
                )
            };
            if let Some(reply) = reply {
                let _ = self.out.try_send(reply);
            }
            return;
        }
        if !self.relay_to_client(line) {
            if let Some(reply) = splice_into_answer(
                line,
                "\"error\":{\"code\":-32603,\"message\":\"no stream of the client is open to pass the request on\"}",
            ) {
                let _ = self.out.try_send(reply);
            }
        }
    }

    fn on_notification(&self, line: &Bytes, method: &str) {
        if method == "notifications/progress" {
            self.on_progress(line);
            return;
        }
        if method == "notifications/cancelled" {
            // The server gave up a call: end it for the client.
            return;
        }
        // 2026-07-28: a `subscriptions/listen` stream's frames name the listen request's id
        // (the gateway's, on this child): they go to that stream, with the client's id.
        if contains(line, b"io.modelcontextprotocol/subscriptionId") && self.on_subscription(line) {
            return;
        }
        match self.relay {
            Relay::Session => {
                self.relay_to_client(line);
            }
            Relay::Shared => {
                if method.ends_with("/list_changed") || method == "notifications/resources/updated"
                {
                    let mut st = self.lock();
                    st.listeners.retain(|l| !l.tx.is_closed());
                    for l in &st.listeners {
                        let _ = l.tx.try_send(line.clone());
                    }
                }
            }
        }
    }

    /// Passes a message of the server to its client: on the stream of the latest streaming
    /// call, else on a GET stream. Whether it found one.
    fn relay_to_client(&self, line: &Bytes) -> bool {
        let st = self.lock();
        if let Some((_, call)) = st
            .calls
            .iter()
            .filter(|(_, c)| c.streaming)
            .max_by_key(|(gw, _)| **gw)
        {
            return call.tx.try_send(Delivery::Message(line.clone())).is_ok();
        }
        st.listeners
            .iter()
            .any(|l| l.tx.try_send(line.clone()).is_ok())
    }

    /// Routes a listen-stream frame to its `subscriptions/listen` call; whether it was one.
    fn on_subscription(&self, line: &Bytes) -> bool {
        const POINTER: &str = "/params/_meta/io.modelcontextprotocol~1subscriptionId";
        let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(line) else {
            return false;
        };
        let Some(gw) = v.pointer(POINTER).and_then(serde_json::Value::as_u64) else {
            return false;
        };
        let st = self.lock();
        let Some(call) = st.calls.get(&gw) else {
            return true;
        };
        let Ok(client) = serde_json::from_str::<serde_json::Value>(&call.id) else {
            return true;
        };
        if let Some(slot) = v.pointer_mut(POINTER) {
            *slot = client;
        }
        if let Ok(text) = serde_json::to_vec(&v) {
            let _ = call.tx.try_send(Delivery::Message(Bytes::from(text)));
        }
        true
    }

    fn on_progress(&self, line: &Bytes) {
        let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(line) else {
            return;
        };
        let Some(token) = v
            .pointer("/params/progressToken")
            .and_then(serde_json::Value::as_u64)
        else {
            return;
        };
        let st = self.lock();
        let Some(call) = st.tokens.get(&token).and_then(|gw| st.calls.get(gw)) else {
            return;
        };
        if !call.streaming {
            return;
        }
        let Some(client) = call
            .client_token
            .as_deref()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
        else {
            return;
        };
        if let Some(slot) = v.pointer_mut("/params/progressToken") {
            *slot = client;
        }
        let Ok(text) = serde_json::to_vec(&v) else {
            return;
        };
        let _ = call.tx.try_send(Delivery::Message(Bytes::from(text)));
    }
}

/// Ends a call: dropped before its answer, it is cancelled on the server.
pub(crate) struct CallGuard {
    child: Arc<Child>,
    gw: u64,
}

impl CallGuard {
    /// The answer arrived: nothing to cancel.
    pub(crate) fn answered(self) {
        std::mem::forget(self);
    }
}

impl std::fmt::Debug for CallGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallGuard").field("id", &self.gw).finish()
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.child.forget(self.gw).is_some() {
            let _ = self
                .child
                .out
                .try_send(cancel_line(self.gw, "the client went away"));
        }
    }
}

/// Ends a GET stream's registration when dropped.
pub(crate) struct ListenGuard {
    child: Arc<Child>,
    id: u64,
}

impl std::fmt::Debug for ListenGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenGuard").field("id", &self.id).finish()
    }
}

impl Drop for ListenGuard {
    fn drop(&mut self) {
        self.child.lock().listeners.retain(|l| l.id != self.id);
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn cancel_line(gw: u64, reason: &str) -> Bytes {
    Bytes::from(format!(
        "{{\"jsonrpc\":\"2.0\",\"method\":\"notifications/cancelled\",\"params\":{{\"requestId\":{gw},\"reason\":\"{reason}\"}}}}\n"
    ))
}

fn exited_failure(upstream: &str, why: &str) -> Failure {
    Failure::new(
        StatusCode::BAD_GATEWAY,
        ErrorCode::UPSTREAM_UNAVAILABLE,
        format!("the stdio server {upstream} {why} before answering"),
    )
}

/// The top-level members of a message the gateway acts on.
#[derive(Deserialize)]
struct Top<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: Option<std::borrow::Cow<'a, str>>,
}

impl<'a> Top<'a> {
    fn parse(line: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(line)
    }
}

/// Where `part` (a slice of `text`, as serde's borrowed values are) lies in `text`.
fn span_in(text: &[u8], part: &str) -> Option<std::ops::Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(text.as_ptr() as usize)?;
    (start + part.len() <= text.len()).then(|| start..start + part.len())
}

/// `text` with the bytes at `span` replaced by `id`, and a newline appended when `newline`.
fn splice_at(text: &[u8], span: std::ops::Range<usize>, id: &[u8], newline: bool) -> Bytes {
    let mut out = BytesMut::with_capacity(text.len() + id.len() + 1);
    out.extend_from_slice(&text[..span.start]);
    out.extend_from_slice(id);
    out.extend_from_slice(&text[span.end..]);
    if newline {
        one_line(&mut out);
        out.extend_from_slice(b"\n");
    }
    out.freeze()
}

/// Turns the line breaks of a JSON text into spaces: in valid JSON they can only be
/// whitespace between tokens (inside strings they are escaped), and stdio frames messages by
/// newlines, so a pretty-printed request must become one line.
fn one_line(text: &mut [u8]) {
    if text.iter().any(|b| *b == b'\n' || *b == b'\r') {
        for b in text.iter_mut().filter(|b| **b == b'\n' || **b == b'\r') {
            *b = b' ';
        }
    }
}

/// `text` with its top-level `id` value replaced by `id`, and a newline appended when
/// `newline`. `None` when it has no id.
#[cfg(test)]
fn splice_id(text: &[u8], id: &[u8], newline: bool) -> Option<Bytes> {
    let top = Top::parse(text).ok()?;
    let span = span_in(text, top.id?.get())?;
    Some(splice_at(text, span, id, newline))
}

/// The answer to a request of the server: its id, and `member` (`"result":…` or
/// `"error":…`), as one line.
fn splice_into_answer(request: &[u8], member: &str) -> Option<Bytes> {
    let top = Top::parse(request).ok()?;
    let id = top.id?.get();
    Some(Bytes::from(format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":{id},{member}}}\n"
    )))
}

/// `body` (one request) with `params._meta.progressToken` replaced by `token`.
fn set_progress_token(body: &[u8], token: u64) -> Result<Vec<u8>, String> {
    let mut v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("unreadable request: {e}"))?;
    match v.pointer_mut("/params/_meta/progressToken") {
        Some(slot) => *slot = serde_json::Value::from(token),
        None => return Err("no progress token to rewrite".into()),
    }
    serde_json::to_vec(&v).map_err(|e| e.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_spliced_byte_for_byte() {
        let out = splice_id(
            br#"{"result":{"id":"x"},"jsonrpc":"2.0","id":12}"#,
            b"\"abc\"",
            false,
        )
        .unwrap();
        assert_eq!(
            &out[..],
            br#"{"result":{"id":"x"},"jsonrpc":"2.0","id":"abc"}"#
        );
        let out = splice_id(br#"{"jsonrpc":"2.0","id": "q" ,"method":"m"}"#, b"7", true).unwrap();
        assert_eq!(
            &out[..],
            b"{\"jsonrpc\":\"2.0\",\"id\": 7 ,\"method\":\"m\"}\n"
        );
        assert!(splice_id(br#"{"jsonrpc":"2.0","method":"m"}"#, b"7", true).is_none());
    }

    #[test]
    fn a_pretty_printed_request_becomes_one_line() {
        let text = b"{\n  \"jsonrpc\": \"2.0\",\r\n  \"id\": 3,\n  \"method\": \"ping\"\n}";
        let span = super::super::frame::id_span(text).unwrap();
        let out = splice_at(text, span, b"9", true);
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
        assert!(out.ends_with(b"\n"));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["id"], 9);
    }

    #[test]
    fn progress_tokens_are_replaced() {
        let out = set_progress_token(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","_meta":{"progressToken":"abc"}}}"#,
            99,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["params"]["_meta"]["progressToken"], 99);
        assert_eq!(v["params"]["name"], "t");
    }
}
