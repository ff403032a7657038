//! The response observer: every JSON-RPC message of a response, decoded once as it streams.
//!
//! Layers that must look at responses — list filtering, output-token counting, span outcomes,
//! audit records — register an [`Observer`]. One [`Observation`] per response drives all of
//! them: it decodes each message of a JSON or SSE body **once**, however many observers there
//! are, and calls each observer in turn.
//!
//! - An observer sees the response head ([`Observer::on_head`]), each message
//!   ([`Observer::on_message`]: id, result or error code, `isError`, size, `_meta` usage), and
//!   the end of the exchange ([`Observer::on_end`]), which fires **exactly once** with how it
//!   ended ([`EndReason`]).
//! - A transformer ([`Observer::transforms`] true) may replace a message
//!   ([`Observer::transform`]). In an SSE stream each event is re-encoded as soon as it is
//!   complete, so the rest of the stream is never held back. A JSON body must be complete
//!   before it can be replaced; the caller reads it whole (bounded) and calls
//!   [`Observation::replace_json`], so the `Content-Length` sent is the new one.
//! - SSE bodies are never buffered: without a transformer the original bytes pass through
//!   untouched and are decoded on the side. Server-to-client requests and notifications on the
//!   stream (progress, sampling, elicitation) pass untouched and are shown to observers too.
//!
//! [`ObservedBody`] wraps any [`http_body::Body`] with an observation.
//!
//! ```
//! use bytes::Bytes;
//! use http::{HeaderMap, HeaderValue, StatusCode};
//! use http_body_util::{BodyExt, Full};
//! use mcp_gateway_core::observe::{Ending, EndReason, ObservedBody, ObservedMessage, Observer, Observation};
//! use std::sync::{Arc, Mutex};
//!
//! #[derive(Default, Clone)]
//! struct Outcome(Arc<Mutex<Vec<String>>>);
//! impl Observer for Outcome {
//!     fn on_message(&mut self, msg: &ObservedMessage<'_>) {
//!         self.0.lock().unwrap().push(format!("code {:?}", msg.error_code()));
//!     }
//!     fn on_end(&mut self, end: &Ending) {
//!         self.0.lock().unwrap().push(format!("{:?}", end.reason));
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let seen = Outcome::default();
//! let mut headers = HeaderMap::new();
//! headers.insert("content-type", HeaderValue::from_static("application/json"));
//! let obs = Observation::new(vec![Box::new(seen.clone())], StatusCode::OK, &headers);
//! let body = Full::new(Bytes::from_static(
//!     br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"bad"}}"#,
//! ));
//! let body = ObservedBody::new(body).with_observation(obs);
//! body.collect().await.unwrap();
//! assert_eq!(*seen.0.lock().unwrap(), ["code Some(-32602)", "Completed"]);
//! # }
//! ```

use crate::headers::{is_event_stream, is_json};
use crate::message::{classify, classify_message, McpMessage, MessageKind, ParsedBody};
use crate::sse::{encode_comment, SseDecoder, SseItem};
use crate::RequestId;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::borrow::Cow;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

/// The error type of [`ObservedBody`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The largest JSON body or single SSE event decoded for observers: 16 MiB. A larger JSON body
/// still passes through, unobserved ([`Ending::undecoded`]); a larger SSE event ends the
/// stream when a transformer needs to see it.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 << 20;

/// How a response body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `application/json`: one message (or a batch).
    Json,
    /// `text/event-stream`: one message per event.
    Sse,
    /// Anything else: nothing is decoded.
    Other,
}

/// The response head, as observers see it.
#[derive(Debug)]
#[non_exhaustive]
pub struct Head<'a> {
    /// Status code.
    pub status: StatusCode,
    /// Headers.
    pub headers: &'a HeaderMap,
    /// The body's framing.
    pub format: Format,
}

/// How an exchange ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EndReason {
    /// The whole body reached the client.
    Completed,
    /// The client went away (the body was dropped part-way).
    ClientGone,
    /// The upstream failed mid-stream (the inner body returned an error).
    UpstreamFailed,
    /// The gateway cut the stream at shutdown, after its grace period.
    Shutdown,
    /// The body was dropped without ever being read.
    DroppedUnpolled,
}

impl EndReason {
    /// A short, stable name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::ClientGone => "client_gone",
            Self::UpstreamFailed => "upstream_failed",
            Self::Shutdown => "shutdown",
            Self::DroppedUnpolled => "dropped_unpolled",
        }
    }
}

/// What the end-of-stream hook is told.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Ending {
    /// How the exchange ended.
    pub reason: EndReason,
    /// The response status.
    pub status: StatusCode,
    /// Body bytes that went out (after any replacement).
    pub body_bytes: u64,
    /// Messages decoded (each exactly once, whatever the number of observers).
    pub messages: u64,
    /// True when some of the body could not be decoded (too large, not JSON-RPC).
    pub undecoded: bool,
    /// True when a successful answer was not MCP at all: a JSON body that is not JSON-RPC,
    /// or a body in another format than JSON or SSE (an HTML page, say). Unlike
    /// [`Ending::undecoded`], never set for a message that was only too large to decode.
    pub malformed: bool,
    /// The error, for [`EndReason::UpstreamFailed`].
    pub error: Option<String>,
    /// Answers (responses and error responses) that went to the client.
    pub answers: u64,
    /// The JSON-RPC error code of the first error answer.
    pub error_code: Option<i64>,
    /// True when an answer was a tool result with `isError: true`.
    pub tool_error: bool,
}

impl Ending {
    /// An ending with nothing decoded: `reason` and `status` alone (a response that was never
    /// observed, or that ended before it started).
    pub fn new(reason: EndReason, status: StatusCode) -> Self {
        Self {
            reason,
            status,
            body_bytes: 0,
            messages: 0,
            undecoded: false,
            malformed: false,
            error: None,
            answers: 0,
            error_code: None,
            tool_error: false,
        }
    }

    /// Counts `msg` among the answers when it is one (what [`Observation`] does for each
    /// message it shows).
    pub fn count(&mut self, msg: &ObservedMessage<'_>) {
        match msg.kind() {
            MessageKind::Response => {
                self.answers += 1;
                self.tool_error |= msg.is_tool_error();
            }
            MessageKind::ErrorResponse => {
                self.answers += 1;
                if self.error_code.is_none() {
                    self.error_code = msg.error_code();
                }
            }
            _ => {}
        }
    }
}

/// Token usage a server reported in a result's `_meta`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Input (prompt) tokens.
    pub input_tokens: Option<u64>,
    /// Output (completion) tokens.
    pub output_tokens: Option<u64>,
}

/// One decoded message of a response.
#[derive(Debug)]
pub struct ObservedMessage<'a> {
    text: &'a [u8],
    msg: &'a McpMessage,
    sse_id: Option<&'a str>,
}

impl<'a> ObservedMessage<'a> {
    /// The message's JSON text.
    pub fn text(&self) -> &'a [u8] {
        self.text
    }
    /// The classification of the message.
    pub fn message(&self) -> &'a McpMessage {
        self.msg
    }
    /// Response, error response, or a server-to-client request or notification.
    pub fn kind(&self) -> MessageKind {
        self.msg.kind()
    }
    /// The id (responses and server-to-client requests).
    pub fn id(&self) -> Option<&'a RequestId> {
        self.msg.id()
    }
    /// The method of a server-to-client request or notification.
    pub fn method(&self) -> Option<&'a str> {
        self.msg.method()
    }
    /// `error.code` of an error response.
    pub fn error_code(&self) -> Option<i64> {
        self.msg.error_code()
    }
    /// True for a tool result with `isError: true`.
    pub fn is_tool_error(&self) -> bool {
        self.msg.is_tool_error()
    }
    /// The message's size in bytes.
    pub fn len(&self) -> usize {
        self.text.len()
    }
    /// True for an empty message text (never, for a decoded message).
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }
    /// The SSE event id the message arrived with.
    pub fn sse_id(&self) -> Option<&'a str> {
        self.sse_id
    }
    /// The `result` text of a response.
    pub fn result_text(&self) -> Option<&'a [u8]> {
        self.text.get(self.msg.result_span()?)
    }
    /// The `result._meta` text of a response.
    pub fn result_meta_text(&self) -> Option<&'a [u8]> {
        self.text.get(self.msg.result_meta_span()?)
    }
    /// Token usage the server reported in `result._meta`: the object under `usage` (or a
    /// prefixed key ending in `/usage`) with `input_tokens`/`inputTokens` and
    /// `output_tokens`/`outputTokens`. Parsed on demand; `_meta` is small.
    pub fn usage(&self) -> Option<Usage> {
        let meta = self.result_meta_text()?;
        let map: HashMap<Cow<'_, str>, &serde_json::value::RawValue> =
            serde_json::from_slice(meta).ok()?;
        let raw = map
            .iter()
            .find(|(k, _)| *k == "usage" || k.ends_with("/usage"))
            .map(|(_, v)| *v)?;
        let obj: HashMap<Cow<'_, str>, serde_json::Value> = serde_json::from_str(raw.get()).ok()?;
        let get = |a: &str, b: &str| obj.get(a).or_else(|| obj.get(b)).and_then(|v| v.as_u64());
        let usage = Usage {
            input_tokens: get("input_tokens", "inputTokens"),
            output_tokens: get("output_tokens", "outputTokens"),
        };
        (usage.input_tokens.is_some() || usage.output_tokens.is_some()).then_some(usage)
    }
}

/// Something that watches (and may transform) the messages of one response.
///
/// Every method has a default that does nothing, so an observer implements only what it
/// needs. Observers run on the task that polls the response body: keep them short and never
/// block (hand slow work, such as writing to disk, to another task).
pub trait Observer: Send + 'static {
    /// The response head, before any message.
    fn on_head(&mut self, _head: &Head<'_>) {}
    /// True when this observer may replace messages of this response (asked once, after
    /// [`on_head`](Self::on_head)). A JSON response is then read whole before it is sent;
    /// an SSE response is re-encoded event by event.
    fn transforms(&self) -> bool {
        false
    }
    /// Returns a replacement for `msg` (its whole JSON text), or `None` to keep it. Called
    /// before any observer's [`on_message`](Self::on_message) for the same message.
    fn transform(&mut self, _msg: &ObservedMessage<'_>) -> Option<Bytes> {
        None
    }
    /// A message, as it goes to the client (after any replacement).
    fn on_message(&mut self, _msg: &ObservedMessage<'_>) {}
    /// The end of the exchange. Called exactly once, observers in the reverse order of their
    /// registration (the innermost layer's first).
    fn on_end(&mut self, _end: &Ending) {}
    /// True when this observer may hold the end of the response back
    /// ([`gate`](Self::gate)); asked once, after [`on_head`](Self::on_head).
    fn gates(&self) -> bool {
        false
    }
    /// Called right after [`on_end`](Self::on_end) when the body ended normally: a future the
    /// body waits for before it releases its last data frame (when it is known to be the
    /// last: the declared `Content-Length` is reached) and its end. An audit log uses it to
    /// make a record durable before the client has the whole answer. When it resolves to an
    /// error, the body ends with that error instead (the held frame is never sent): the client
    /// sees the answer cut off, never a complete answer the gate did not let through.
    fn gate(&mut self) -> Option<EndGate> {
        None
    }
}

/// What [`Observer::gate`] returns: the end of the body waits for it; an error ends the body
/// with that error instead of its last frame and end.
pub type EndGate = Pin<Box<dyn std::future::Future<Output = Result<(), BoxError>> + Send>>;

/// A flag the server raises when it cuts the remaining streams at shutdown, so that their end
/// is reported as [`EndReason::Shutdown`] rather than [`EndReason::ClientGone`]. Put one in the
/// request extensions; the layer that creates the observation picks it up.
#[derive(Clone, Debug, Default)]
pub struct Cutoff(Arc<AtomicBool>);

impl Cutoff {
    /// A lowered flag.
    pub fn new() -> Self {
        Self::default()
    }
    /// Raises the flag: streams dropped from now on were cut by the server.
    pub fn trigger(&self) {
        self.0.store(true, Ordering::Release);
    }
    /// Whether the flag is raised.
    pub fn is_triggered(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Why a stream could not be observed safely.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ObserveError {
    /// An SSE event a transformer had to see could not be decoded.
    #[error("response stream could not be decoded for filtering: {0}")]
    Sse(#[from] crate::sse::SseError),
    /// A JSON body a transformer had to see is larger than the limit.
    #[error("response body exceeds the {0}-byte limit for filtering")]
    TooLarge(usize),
}

enum Mode {
    /// Chunks pass through; a copy is kept (shared, not copied) to decode at the end.
    Json { chunks: Vec<Bytes>, size: usize },
    /// Chunks pass through and are decoded on the side.
    SsePass { dec: SseDecoder, broken: bool },
    /// Events are decoded and re-encoded (a transformer is present).
    SseReframe { dec: SseDecoder },
    /// Nothing to decode: other formats, or messages already delivered.
    Opaque,
}

/// The observation of one response: the observers, the decoder, and the bookkeeping that
/// makes the end hook fire exactly once.
pub struct Observation {
    observers: Vec<Box<dyn Observer>>,
    mode: Mode,
    status: StatusCode,
    format: Format,
    max: usize,
    transforms: bool,
    polled: bool,
    finished: bool,
    /// What the end hook will be told, filled in as the body streams.
    ending: Ending,
    cutoff: Option<Cutoff>,
    /// The declared `Content-Length`: a server may stop polling a body once it has sent that
    /// many bytes, so a JSON body is decoded as soon as it is all there, not at its end.
    expected_len: Option<u64>,
    /// Some observer may hold the end back ([`Observer::gates`]).
    gating: bool,
}

impl std::fmt::Debug for Observation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observation")
            .field("observers", &self.observers.len())
            .field("format", &self.format)
            .field("status", &self.status)
            .field("messages", &self.ending.messages)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl Observation {
    /// Starts observing a response with this status and headers; calls every observer's
    /// [`Observer::on_head`].
    pub fn new(
        mut observers: Vec<Box<dyn Observer>>,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> Self {
        let format = match headers.get(http::header::CONTENT_TYPE) {
            Some(ct) if is_event_stream(ct) => Format::Sse,
            Some(ct) if is_json(ct) => Format::Json,
            _ => Format::Other,
        };
        let head = Head {
            status,
            headers,
            format,
        };
        for o in &mut observers {
            o.on_head(&head);
        }
        let transforms = observers.iter().any(|o| o.transforms());
        let gating = observers.iter().any(|o| o.gates());
        let max = DEFAULT_MAX_MESSAGE_BYTES;
        let mode = match format {
            Format::Json => Mode::Json {
                chunks: Vec::new(),
                size: 0,
            },
            Format::Sse if transforms => Mode::SseReframe {
                dec: SseDecoder::new(max),
            },
            Format::Sse => Mode::SsePass {
                dec: SseDecoder::new(max),
                broken: false,
            },
            Format::Other => Mode::Opaque,
        };
        Self {
            observers,
            mode,
            status,
            format,
            max,
            transforms,
            polled: false,
            finished: false,
            ending: Ending::new(EndReason::Completed, status),
            cutoff: None,
            expected_len: headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
            gating,
        }
    }

    /// The body's exact length when the head does not declare one (a body the gateway made
    /// itself, such as a refusal): a JSON body is then decoded as soon as it is all there,
    /// even when the server does not poll for its end.
    pub fn with_exact_len(mut self, len: Option<u64>) -> Self {
        if self.expected_len.is_none() {
            self.expected_len = len;
        }
        self
    }

    /// Reports streams dropped after `cutoff` is raised as [`EndReason::Shutdown`].
    pub fn with_cutoff(mut self, cutoff: Option<Cutoff>) -> Self {
        self.cutoff = cutoff;
        self
    }

    /// The body's framing.
    pub fn format(&self) -> Format {
        self.format
    }

    /// True when the body is JSON and an observer may replace its message: the caller must
    /// read it whole and call [`replace_json`](Self::replace_json) before sending the head.
    pub fn needs_whole_json(&self) -> bool {
        self.transforms && self.format == Format::Json
    }

    /// The largest JSON body or SSE event decoded.
    pub fn max_message_bytes(&self) -> usize {
        self.max
    }

    /// Decodes a complete JSON body, lets transformers replace its messages and shows the
    /// result to every observer. Returns the body to send. Later chunks are not decoded again.
    pub fn replace_json(&mut self, body: Bytes) -> Bytes {
        self.mode = Mode::Opaque;
        self.expected_len = None;
        let Ok(parsed) = classify(&body) else {
            self.ending.undecoded = !body.is_empty();
            self.ending.malformed = !body.is_empty();
            return body;
        };
        let mut replaced: Vec<Option<Bytes>> = vec![None; parsed.messages().len()];
        for (i, msg) in parsed.messages().iter().enumerate() {
            self.ending.messages += 1;
            let text = &body[msg.span()];
            if let Some((new, m)) = self.run_transforms(text, msg, None) {
                self.deliver(&new, &m, None);
                replaced[i] = Some(new);
            } else {
                self.deliver(text, msg, None);
            }
        }
        if replaced.iter().all(Option::is_none) {
            return body;
        }
        // Splice the replacements into the original text, keeping every other byte.
        let mut out = BytesMut::with_capacity(body.len());
        let mut at = 0;
        for (msg, new) in parsed.messages().iter().zip(replaced) {
            if let Some(new) = new {
                out.extend_from_slice(&body[at..msg.span().start]);
                out.extend_from_slice(&new);
                at = msg.span().end;
            }
        }
        out.extend_from_slice(&body[at..]);
        out.freeze()
    }

    /// Runs the transformers over one message; returns the replacement and its
    /// classification when one replaced it.
    fn run_transforms(
        &mut self,
        text: &[u8],
        msg: &McpMessage,
        sse_id: Option<&str>,
    ) -> Option<(Bytes, McpMessage)> {
        if !self.transforms {
            return None;
        }
        let mut current: Option<(Bytes, McpMessage)> = None;
        for o in &mut self.observers {
            if !o.transforms() {
                continue;
            }
            let view = match &current {
                Some((t, m)) => ObservedMessage {
                    text: t,
                    msg: m,
                    sse_id,
                },
                None => ObservedMessage { text, msg, sse_id },
            };
            if let Some(new) = o.transform(&view) {
                match classify_message(&new) {
                    Ok(m) => current = Some((new, m)),
                    // A transformer that produced something unreadable: keep what was there.
                    Err(_) => self.ending.undecoded = true,
                }
            }
        }
        current
    }

    fn deliver(&mut self, text: &[u8], msg: &McpMessage, sse_id: Option<&str>) {
        let view = ObservedMessage { text, msg, sse_id };
        self.ending.count(&view);
        for o in &mut self.observers {
            o.on_message(&view);
        }
    }

    fn decode_json(&mut self, text: &[u8]) {
        match classify(text) {
            Ok(parsed) => self.deliver_all(text, &parsed),
            Err(_) => {
                self.ending.undecoded = !text.is_empty();
                self.ending.malformed = !text.is_empty();
            }
        }
    }

    fn deliver_all(&mut self, text: &[u8], parsed: &ParsedBody) {
        for msg in parsed.messages() {
            self.ending.messages += 1;
            self.deliver(&text[msg.span()], msg, None);
        }
    }

    /// One SSE item in pass-through mode.
    fn sse_item(&mut self, item: SseItem) {
        if let SseItem::Event(ev) = item {
            if ev.data.is_empty() {
                return;
            }
            match classify_message(ev.data.as_bytes()) {
                Ok(msg) => {
                    self.ending.messages += 1;
                    self.deliver(ev.data.as_bytes(), &msg, ev.id.as_deref());
                }
                Err(_) => self.ending.undecoded = true,
            }
        }
    }

    /// One SSE item in re-encoding mode: returns its wire form, transformed when asked.
    fn sse_reframe(&mut self, item: SseItem, out: &mut BytesMut) {
        match item {
            SseItem::Comment(c) => out.extend_from_slice(&encode_comment(&c)),
            SseItem::Event(mut ev) => {
                if !ev.data.is_empty() {
                    match classify_message(ev.data.as_bytes()) {
                        Ok(msg) => {
                            self.ending.messages += 1;
                            match self.run_transforms(ev.data.as_bytes(), &msg, ev.id.as_deref()) {
                                Some((new, m)) => {
                                    self.deliver(&new, &m, ev.id.as_deref());
                                    ev.data = String::from_utf8_lossy(&new).into_owned();
                                }
                                None => self.deliver(ev.data.as_bytes(), &msg, ev.id.as_deref()),
                            }
                        }
                        Err(_) => self.ending.undecoded = true,
                    }
                }
                out.extend_from_slice(&ev.encode());
            }
        }
    }

    /// Takes one chunk of the body. Returns the bytes to send on (the chunk itself unless
    /// events are being re-encoded; `None` when nothing is complete yet).
    pub fn on_data(&mut self, data: Bytes) -> Result<Option<Bytes>, ObserveError> {
        self.polled = true;
        let mut mode = std::mem::replace(&mut self.mode, Mode::Opaque);
        let out = match &mut mode {
            Mode::Opaque => {
                // A successful answer in neither JSON nor SSE is not MCP.
                if self.format == Format::Other
                    && self.status.is_success()
                    && self.status != StatusCode::ACCEPTED
                    && !data.is_empty()
                {
                    self.ending.malformed = true;
                }
                Ok(Some(data))
            }
            Mode::Json { chunks, size } => {
                *size = size.saturating_add(data.len());
                if *size <= self.max {
                    chunks.push(data.clone());
                } else if !chunks.is_empty() {
                    chunks.clear();
                    self.ending.undecoded = true;
                }
                Ok(Some(data))
            }
            Mode::SsePass { dec, broken } => {
                if !*broken {
                    let mut items = Vec::new();
                    if dec.feed(&data, &mut |i| items.push(i)).is_err() {
                        *broken = true;
                        self.ending.undecoded = true;
                    }
                    for item in items {
                        self.sse_item(item);
                    }
                }
                Ok(Some(data))
            }
            Mode::SseReframe { dec } => {
                let mut items = Vec::new();
                match dec.feed(&data, &mut |i| items.push(i)) {
                    Err(e) => Err(ObserveError::Sse(e)),
                    Ok(()) => {
                        let mut out = BytesMut::new();
                        for item in items {
                            self.sse_reframe(item, &mut out);
                        }
                        Ok((!out.is_empty()).then(|| out.freeze()))
                    }
                }
            }
        };
        self.mode = mode;
        if let Ok(Some(b)) = &out {
            self.ending.body_bytes += b.len() as u64;
        }
        if self.expected_len == Some(self.ending.body_bytes) {
            self.decode_whole_json();
        }
        out
    }

    /// Marks the body as read by its consumer (for [`EndReason::DroppedUnpolled`]).
    pub fn mark_polled(&mut self) {
        self.polled = true;
    }

    /// The body ended normally: decodes what is pending and fires the end hook.
    pub fn complete(&mut self) {
        self.polled = true;
        self.decode_whole_json();
        let dec = match std::mem::replace(&mut self.mode, Mode::Opaque) {
            Mode::SsePass { dec, .. } | Mode::SseReframe { dec } => Some(dec),
            _ => None,
        };
        // An unterminated last event is discarded, as SSE requires.
        if dec.is_some_and(|mut d| d.finish()) {
            self.ending.undecoded = true;
        }
        self.end(EndReason::Completed, None);
    }

    /// Decodes a JSON body kept so far (once: the chunks are let go).
    fn decode_whole_json(&mut self) {
        if !matches!(self.mode, Mode::Json { .. }) {
            return;
        }
        if let Mode::Json { chunks, size } = std::mem::replace(&mut self.mode, Mode::Opaque) {
            if size <= self.max {
                match chunks.len() {
                    0 => {}
                    1 => self.decode_json(&chunks[0]),
                    _ => self.decode_json(&chunks.concat()),
                }
            }
        }
    }

    /// Fires the end hook with `reason` (once; later calls do nothing).
    pub fn end(&mut self, reason: EndReason, error: Option<String>) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.ending.reason = reason;
        self.ending.status = self.status;
        self.ending.error = error;
        // Innermost layer first: an outer layer's end hook (a span, an audit record) reads
        // what the inner ones settled at their end (tokens counted, say).
        for o in self.observers.iter_mut().rev() {
            o.on_end(&self.ending);
        }
    }

    /// Whether the end hook has fired.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Whether some observer may hold the end of the body back ([`Observer::gates`]).
    pub fn is_gating(&self) -> bool {
        self.gating
    }

    /// True once every byte of a declared `Content-Length` went out.
    fn all_declared_sent(&self) -> bool {
        self.expected_len
            .is_some_and(|n| n == self.ending.body_bytes)
    }

    /// The futures the end of the body waits for ([`Observer::gate`]), as one.
    fn take_gates(&mut self) -> Option<EndGate> {
        if !self.gating {
            return None;
        }
        let gates: Vec<EndGate> = self.observers.iter_mut().filter_map(|o| o.gate()).collect();
        match gates.len() {
            0 => None,
            _ => Some(Box::pin(async move {
                for g in gates {
                    g.await?;
                }
                Ok(())
            })),
        }
    }
}

impl Drop for Observation {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let reason = if !self.polled {
            EndReason::DroppedUnpolled
        } else if self
            .expected_len
            .is_some_and(|n| n == self.ending.body_bytes)
        {
            // Every declared byte went out; the server just did not poll for the end.
            EndReason::Completed
        } else if self.cutoff.as_ref().is_some_and(Cutoff::is_triggered) {
            EndReason::Shutdown
        } else {
            EndReason::ClientGone
        };
        self.end(reason, None);
    }
}

pin_project! {
    /// A body whose messages are shown to an [`Observation`]; without one it is a plain
    /// pass-through.
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        observation: Option<Box<Observation>>,
        // With a gating observer: the last data frame, held until the gate opens.
        held: Option<Bytes>,
        // The end-of-body gate, once the inner body ended.
        gate: Option<EndGate>,
        // The inner body ended (and the gate, if any, opened): only the end remains.
        ended: bool,
    }
}

impl<B: std::fmt::Debug> std::fmt::Debug for ObservedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObservedBody")
            .field("inner", &self.inner)
            .field("observation", &self.observation)
            .finish()
    }
}

impl<B> ObservedBody<B> {
    /// A pass-through body.
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            observation: None,
            held: None,
            gate: None,
            ended: false,
        }
    }
    /// Attaches an observation.
    pub fn with_observation(mut self, observation: Observation) -> Self {
        self.observation = Some(Box::new(observation));
        self
    }
    /// Whether an observation is attached.
    pub fn is_observed(&self) -> bool {
        self.observation.is_some()
    }
}

impl<B> Body for ObservedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let Some(obs) = this.observation.as_deref_mut() else {
            return this.inner.poll_frame(cx).map_err(Into::into);
        };
        obs.mark_polled();
        loop {
            if let Some(gate) = this.gate.as_mut() {
                let opened = ready!(gate.as_mut().poll(cx));
                *this.gate = None;
                if let Err(e) = opened {
                    // The end may not go out: cut the body (its held frame included).
                    *this.held = None;
                    *this.ended = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            if *this.ended {
                return Poll::Ready(this.held.take().map(|d| Ok(Frame::data(d))));
            }
            match ready!(this.inner.as_mut().poll_frame(cx)) {
                None => {
                    obs.complete();
                    *this.ended = true;
                    *this.gate = obs.take_gates();
                    continue;
                }
                Some(Err(e)) => {
                    let e: BoxError = e.into();
                    obs.end(EndReason::UpstreamFailed, Some(e.to_string()));
                    return Poll::Ready(Some(Err(e)));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => match obs.on_data(data) {
                        // The last frame, known as such, waits for the gate.
                        Ok(Some(out))
                            if obs.gating
                                && (obs.all_declared_sent() || this.inner.is_end_stream()) =>
                        {
                            *this.held = Some(out);
                            continue;
                        }
                        Ok(Some(out)) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                        Ok(None) => continue,
                        Err(e) => {
                            obs.end(EndReason::UpstreamFailed, Some(e.to_string()));
                            return Poll::Ready(Some(Err(Box::new(e))));
                        }
                    },
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // While an observation waits for its end, the body is polled to the end so that the
        // end hook fires on completion (an empty body included).
        match &self.observation {
            Some(o) if !o.is_finished() => false,
            _ if self.held.is_some() || self.gate.is_some() => false,
            _ if self.ended => true,
            _ => self.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.observation {
            // Re-encoded events may change the length.
            Some(o) if matches!(o.mode, Mode::SseReframe { .. }) => SizeHint::default(),
            _ => self.inner.size_hint(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use http_body_util::{BodyExt, Full};

    /// An observer whose gate opens with `Ok`, or refuses with an error.
    struct Gate(bool);

    impl Observer for Gate {
        fn gates(&self) -> bool {
            true
        }
        fn gate(&mut self) -> Option<EndGate> {
            let open = self.0;
            Some(Box::pin(async move {
                if open {
                    Ok(())
                } else {
                    Err("record not kept".into())
                }
            }))
        }
    }

    fn body(open: bool) -> ObservedBody<Full<Bytes>> {
        let text = Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#);
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("content-length", HeaderValue::from(text.len()));
        let obs = Observation::new(vec![Box::new(Gate(open))], StatusCode::OK, &headers);
        ObservedBody::new(Full::new(text)).with_observation(obs)
    }

    #[tokio::test]
    async fn a_gate_that_refuses_cuts_the_body_its_last_frame_included() {
        let whole = body(true).collect().await.unwrap().to_bytes();
        assert!(whole.starts_with(b"{\"jsonrpc\""));
        let mut cut = body(false);
        let first = cut.frame().await.unwrap();
        assert_eq!(first.unwrap_err().to_string(), "record not kept");
        assert!(cut.frame().await.is_none(), "nothing after the error");
    }
}
