//! Streams of a virtual server's legacy sessions: the client's GET stream, which merges the
//! GET streams of the upstream sessions opened for it, and the relay of server-to-client
//! requests (on those streams and on calls' SSE answers) under ids that name their upstream.
//!
//! - A server's request (`sampling/createMessage`, `elicitation/create`, `roots/list`) reaches
//!   the client with its id rewritten to `"mcp-gateway/<upstream index>/<original id>"`: ids
//!   of different upstreams never collide, and the client's answer goes back to the upstream
//!   that asked, with its own id.
//! - `notifications/{tools,prompts,resources}/list_changed` from any upstream become one
//!   notification to the client at most once a second per list, however often upstreams
//!   send them.
//! - `notifications/resources/updated` carries the exposed URI.

use bytes::Bytes;
use http::request::Parts;
use http_body::{Body, Frame};
use mcp_gateway_core::sse::{encode_comment, SseDecoder, SseItem};
use pin_project_lite::pin_project;
use serde_json::Value;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};

/// What a relayed request's id starts with.
pub const RELAY_PREFIX: &str = "mcp-gateway/";
/// The shortest time between two notifications of one list to a client.
pub const NOTIFY_INTERVAL: Duration = Duration::from_secs(1);
/// How often an idle GET stream carries a keep-alive comment.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// The largest event read from an upstream's stream.
pub(crate) const MAX_EVENT: usize = 4 * 1024 * 1024;

use crate::lock;

/// The relayed id of request `raw` (its id's JSON text) of upstream `member`.
pub fn relay_id(member: usize, raw: &str) -> String {
    format!("{RELAY_PREFIX}{member}/{raw}")
}

/// The upstream and original id of a relayed id.
pub fn unrelay(id: &Value) -> Option<(usize, Value)> {
    let rest = id.as_str()?.strip_prefix(RELAY_PREFIX)?;
    let (m, raw) = rest.split_once('/')?;
    Some((m.parse().ok()?, serde_json::from_str(raw).ok()?))
}

/// Rewrites the id of a server's request in `v` (a JSON-RPC message) for the client.
pub(crate) fn relay_request(member: usize, v: &mut Value) -> bool {
    if v.get("method").is_some() {
        if let Some(id) = v.get_mut("id") {
            *id = Value::String(relay_id(member, &id.to_string()));
            return true;
        }
    }
    false
}

/// What changes the messages of an answer on their way to the client (true: changed).
pub type Edit = Arc<dyn Fn(&mut Value) -> bool + Send + Sync>;

/// The largest JSON answer read whole to be edited; a larger one passes untouched.
const MAX_EDITED_JSON: usize = 1024 * 1024;

/// One decoded item of an upstream's SSE answer, encoded again, edited; with `ids`, its
/// event id names the upstream (`<index>/<id>`), so that a client resuming the stream with
/// `Last-Event-ID` is sent back to it.
fn edit_item(edit: &Edit, needle: Option<&str>, ids: Option<usize>, item: SseItem) -> Bytes {
    match item {
        SseItem::Comment(c) => encode_comment(&c),
        SseItem::Event(mut ev) => {
            if might_edit(needle, &ev.data) {
                if let Ok(mut v) = serde_json::from_str::<Value>(&ev.data) {
                    if edit(&mut v) {
                        ev.data = v.to_string();
                    }
                }
            }
            if let (Some(m), Some(id)) = (ids, ev.id.as_mut()) {
                *id = format!("{m}/{id}");
            }
            let bytes = ev.encode();
            if ev.data.is_empty() && !bytes.starts_with(b"data:") {
                // An event with an id and empty data (a stream's priming event) keeps its
                // `data:` line: without one a client would not dispatch it, nor learn its id.
                let mut b = bytes.to_vec();
                b.pop();
                b.extend_from_slice(b"data:\n\n");
                return Bytes::from(b);
            }
            bytes
        }
    }
}

/// Whether a message's text may be one the edit changes: it names `needle` (a key the edit
/// looks for), or has an escape that could spell it otherwise. Most messages (a call's
/// result) are then passed on without being parsed.
fn might_edit(needle: Option<&str>, data: &str) -> bool {
    needle.is_none_or(|n| data.contains(n) || data.contains("\\u"))
}

/// [`might_edit`] of raw bytes (an edit with no needle reads every message).
fn might_edit_bytes(needle: Option<&str>, data: &[u8]) -> bool {
    let has = |n: &[u8]| memchr::memmem::find(data, n).is_some();
    needle.is_none_or(|n| has(n.as_bytes()) || has(b"\\u"))
}

/// Whole SSE events `chunk`, each event id prefixed with `member/` (as [`edit_item`] does),
/// by splicing: the rest of the bytes as they came. `None` for an `id` line without a colon
/// (then the events are decoded and written again).
fn prefix_ids(chunk: &Bytes, member: Option<usize>) -> Option<Bytes> {
    let Some(m) = member else {
        return Some(chunk.clone());
    };
    let b = &chunk[..];
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    for p in memchr::memmem::find_iter(b, b"id") {
        // A field name starts a line.
        if p > 0 && !matches!(b[p - 1], b'\n' | b'\r') {
            continue;
        }
        match b.get(p + 2) {
            Some(b':') => {
                let at = p + 3 + usize::from(b.get(p + 3) == Some(&b' '));
                let o = out.get_or_insert_with(|| Vec::with_capacity(b.len() + 8));
                o.extend_from_slice(&b[copied..at]);
                o.extend_from_slice(m.to_string().as_bytes());
                o.push(b'/');
                copied = at;
            }
            None | Some(b'\n' | b'\r') => return None,
            // Another field whose name starts so.
            Some(_) => {}
        }
    }
    Some(match out {
        None => chunk.clone(),
        Some(mut o) => {
            o.extend_from_slice(&b[copied..]);
            Bytes::from(o)
        }
    })
}

/// The upstream and its own event id in a `Last-Event-ID` a relayed stream gave.
pub fn unrelay_event_id(id: &str) -> Option<(usize, &str)> {
    let (m, rest) = id.split_once('/')?;
    Some((m.parse().ok()?, rest))
}

enum Mode {
    /// An SSE answer, event by event.
    Sse { decoder: SseDecoder },
    /// A JSON answer, read whole (up to [`MAX_EDITED_JSON`]).
    Json { buf: Vec<u8> },
}

struct Rewrite {
    edit: Edit,
    /// A key every message the edit changes has (`"method"` for a server's request): a
    /// message without it is not parsed.
    needle: Option<&'static str>,
    /// The upstream whose event ids are prefixed (legacy streams, which can be resumed).
    ids: Option<usize>,
    mode: Mode,
    out: VecDeque<Bytes>,
    done: bool,
}

pin_project! {
    /// An upstream's answer on its way to the client: passed through, or (a legacy call's SSE
    /// answer) event by event with the ids of the server's requests relayed.
    pub struct Relay<B> {
        #[pin]
        body: B,
        rewrite: Option<Box<Rewrite>>,
    }
}

impl<B> std::fmt::Debug for Relay<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("rewrites", &self.rewrite.is_some())
            .finish_non_exhaustive()
    }
}

impl<B> Relay<B> {
    /// Passes `body` through.
    pub fn plain(body: B) -> Self {
        Self {
            body,
            rewrite: None,
        }
    }

    /// Relays the requests upstream `member` makes in the SSE stream `body`.
    pub fn requests_of(body: B, member: usize) -> Self {
        let mut relay = Self::edited(
            body,
            true,
            Arc::new(move |v: &mut Value| relay_request(member, v)),
        );
        if let Some(rw) = relay.rewrite.as_mut() {
            rw.ids = Some(member);
            // A server's request has a method (a result or an error has none).
            rw.needle = Some("\"method\"");
        }
        relay
    }

    /// [`edited`](Self::edited), for an edit that changes only messages whose text names
    /// `needle` (as a JSON key, quoted): the others are not parsed.
    pub fn edited_naming(body: B, sse: bool, edit: Edit, needle: &'static str) -> Self {
        let mut relay = Self::edited(body, sse, edit);
        if let Some(rw) = relay.rewrite.as_mut() {
            rw.needle = Some(needle);
        }
        relay
    }

    /// `body` (an SSE stream when `sse`, else one JSON message) with `edit` applied to
    /// every message.
    pub fn edited(body: B, sse: bool, edit: Edit) -> Self {
        let mode = if sse {
            Mode::Sse {
                decoder: SseDecoder::new(MAX_EVENT),
            }
        } else {
            Mode::Json { buf: Vec::new() }
        };
        Self {
            body,
            rewrite: Some(Box::new(Rewrite {
                edit,
                needle: None,
                ids: None,
                mode,
                out: VecDeque::new(),
                done: false,
            })),
        }
    }
}

impl<B> Body for Relay<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<crate::BoxError>,
{
    type Data = Bytes;
    type Error = crate::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        let Some(rw) = this.rewrite.as_mut() else {
            return this.body.poll_frame(cx).map_err(Into::into);
        };
        let Rewrite {
            edit,
            needle,
            ids,
            mode,
            out,
            done,
        } = &mut **rw;
        loop {
            if let Some(b) = out.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
            if *done {
                return Poll::Ready(None);
            }
            match ready!(this.body.as_mut().poll_frame(cx)) {
                None => {
                    *done = true;
                    if let Mode::Json { buf } = mode {
                        let whole = std::mem::take(buf);
                        out.push_back(if might_edit(*needle, &String::from_utf8_lossy(&whole)) {
                            edit_json(edit, whole)
                        } else {
                            Bytes::from(whole)
                        });
                    }
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => match mode {
                        Mode::Sse { decoder } => {
                            // Whole events that nothing edits (a call's result): on as they
                            // came, their ids prefixed in place.
                            let passed = (!might_edit_bytes(*needle, &data) && decoder.pass(&data))
                                .then(|| prefix_ids(&data, *ids))
                                .flatten();
                            match passed {
                                Some(b) => out.push_back(b),
                                None => decoder
                                    .feed(&data, &mut |item| {
                                        out.push_back(edit_item(edit, *needle, *ids, item))
                                    })
                                    .map_err(|e| -> crate::BoxError { Box::new(e) })?,
                            }
                        }
                        Mode::Json { buf } => {
                            if buf.len() + data.len() > MAX_EDITED_JSON {
                                // Too large to be what is edited (a task, a relayed
                                // request): the rest passes as it comes.
                                let mut all = std::mem::take(buf);
                                all.extend_from_slice(&data);
                                *this.rewrite = None;
                                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(all)))));
                            }
                            buf.extend_from_slice(&data);
                        }
                    },
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.rewrite {
            None => self.body.is_end_stream(),
            Some(rw) => rw.done && rw.out.is_empty(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.rewrite {
            None => self.body.size_hint(),
            // Edited: the length may change.
            Some(_) => http_body::SizeHint::default(),
        }
    }
}

/// One JSON answer, edited (or as it came when it is not JSON or nothing changed).
fn edit_json(edit: &Edit, whole: Vec<u8>) -> Bytes {
    match serde_json::from_slice::<Value>(&whole) {
        Ok(mut v) => {
            if edit(&mut v) {
                Bytes::from(v.to_string())
            } else {
                Bytes::from(whole)
            }
        }
        Err(_) => Bytes::from(whole),
    }
}

#[derive(Debug, Default)]
struct Debounce {
    last: Option<Instant>,
    scheduled: bool,
}

/// The `_meta` key naming the `subscriptions/listen` stream a notification belongs to.
pub const SUBSCRIPTION_ID_META: &str = "io.modelcontextprotocol/subscriptionId";

/// A client's stream of what its upstreams send on their own: a legacy client's GET stream,
/// or a 2026-07-28 client's `subscriptions/listen` stream. The upstream streams' readers
/// write to it.
#[derive(Debug)]
pub struct Hub {
    tx: mpsc::Sender<Bytes>,
    /// The client request's head, which the readers' requests are made from.
    pub(crate) parts: Parts,
    /// A listen stream's id (its request's id): every message sent carries it in `_meta`.
    subscription: Option<Value>,
    kinds: Mutex<[Debounce; 3]>,
    ended: AtomicBool,
    stop: Notify,
}

impl Hub {
    /// A hub for the GET request `parts`, and the body the client reads.
    pub(crate) fn new(parts: Parts) -> (Arc<Self>, HubBody) {
        Self::with(parts, None)
    }

    /// A hub for the `subscriptions/listen` request `parts` whose id is `id`.
    pub(crate) fn listening(parts: Parts, id: Value) -> (Arc<Self>, HubBody) {
        Self::with(parts, Some(id))
    }

    fn with(parts: Parts, subscription: Option<Value>) -> (Arc<Self>, HubBody) {
        let (tx, rx) = mpsc::channel(256);
        let hub = Arc::new(Self {
            tx,
            parts,
            subscription,
            kinds: Mutex::default(),
            ended: AtomicBool::new(false),
            stop: Notify::new(),
        });
        let keepalive =
            tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
        (hub, HubBody { rx, keepalive })
    }

    /// Whether the client still reads the stream.
    pub fn live(&self) -> bool {
        !self.ended.load(Ordering::Acquire) && !self.tx.is_closed()
    }

    /// Ends the stream (its session ended, or another GET replaced it).
    pub(crate) fn end(&self) {
        self.ended.store(true, Ordering::Release);
        self.stop.notify_waiters();
    }

    /// Resolves once the stream has ended.
    pub(crate) async fn ended(&self) {
        loop {
            let notified = self.stop.notified();
            if !self.live() {
                return;
            }
            tokio::select! {
                () = notified => {}
                () = self.tx.closed() => return,
            }
        }
    }

    /// Sends a message to the client; false once the stream has ended.
    pub(crate) async fn send(&self, message: &Value) -> bool {
        let text = match &self.subscription {
            None => message.to_string(),
            Some(id) => {
                let mut m = message.clone();
                if !m["params"].is_object() {
                    m["params"] = Value::Object(serde_json::Map::new());
                }
                if !m["params"]["_meta"].is_object() {
                    m["params"]["_meta"] = Value::Object(serde_json::Map::new());
                }
                m["params"]["_meta"][SUBSCRIPTION_ID_META] = id.clone();
                m.to_string()
            }
        };
        let ev = mcp_gateway_core::sse::SseEvent::data(text).encode();
        self.live() && self.tx.send(ev).await.is_ok()
    }

    /// An upstream's list of `kind` (0 tools, 1 prompts, 2 resources) changed: the client
    /// hears it now, or a second after it last heard of that list.
    pub(crate) fn changed(self: &Arc<Self>, kind: usize) {
        let wait = {
            let mut kinds = lock(&self.kinds);
            let d = &mut kinds[kind];
            if d.scheduled {
                return;
            }
            d.scheduled = true;
            d.last.map_or(Duration::ZERO, |t| {
                (t + NOTIFY_INTERVAL).saturating_duration_since(Instant::now())
            })
        };
        let hub = self.clone();
        tokio::spawn(async move {
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            {
                let mut kinds = lock(&hub.kinds);
                kinds[kind].scheduled = false;
                kinds[kind].last = Some(Instant::now());
            }
            let method = ["tools", "prompts", "resources"][kind];
            let note = serde_json::json!({
                "jsonrpc": "2.0",
                "method": format!("notifications/{method}/list_changed"),
            });
            hub.send(&note).await;
        });
    }
}

/// The body of a legacy client's GET stream.
#[derive(Debug)]
pub struct HubBody {
    rx: mpsc::Receiver<Bytes>,
    keepalive: tokio::time::Interval,
}

impl Body for HubBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(b)) => Poll::Ready(Some(Ok(Frame::data(b)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if self.keepalive.poll_tick(cx).is_ready() {
                    return Poll::Ready(Some(Ok(Frame::data(encode_comment(" keep-alive")))));
                }
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use serde_json::json;

    #[tokio::test]
    async fn a_priming_event_keeps_its_data_line() {
        let body = Relay::requests_of(Full::new(Bytes::from_static(b"id: 0/0\ndata:\n\n")), 1);
        let out = body.collect().await.unwrap().to_bytes();
        assert_eq!(&out[..], b"id: 1/0/0\ndata:\n\n");
        assert_eq!(unrelay_event_id("1/0/0"), Some((1, "0/0")));
    }

    #[tokio::test]
    async fn whole_events_pass_as_they_came_with_their_ids_prefixed() {
        // A result event and a comment, in one chunk: bytes kept, the id prefixed.
        let sse = "id: 7\r\nevent: message\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\r\n\r\n: c\n\n";
        let out = Relay::requests_of(Full::new(Bytes::from(sse)), 3)
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(
            &out[..],
            "id: 3/7\r\nevent: message\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\r\n\r\n: c\n\n".as_bytes()
        );
        // A request among them: decoded, its id relayed.
        let sse = "data: {\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"roots/list\"}\n\n";
        let out = Relay::requests_of(Full::new(Bytes::from(sse)), 1)
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert!(String::from_utf8_lossy(&out).contains("\"mcp-gateway/1/9\""));
        // A key spelled with an escape is read too.
        let sse = "data: {\"jsonrpc\":\"2.0\",\"id\":9,\"\\u006dethod\":\"roots/list\"}\n\n";
        let out = Relay::requests_of(Full::new(Bytes::from(sse)), 1)
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert!(String::from_utf8_lossy(&out).contains("\"mcp-gateway/1/9\""));
        // An event split over chunks: decoded (the same result).
        let chunks = ["id: 4\ndata: {\"a\":", "1}\n\n"];
        let body =
            http_body_util::StreamBody::new(futures_util::stream::iter(chunks.map(|c| {
                Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(c)))
            })));
        let out = Relay::requests_of(body, 2)
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&out[..], b"id: 2/4\ndata: {\"a\":1}\n\n");
    }

    #[test]
    fn ids_round_trip() {
        for id in [json!(7), json!("abc/def"), json!(-1)] {
            let r = relay_id(3, &id.to_string());
            assert_eq!(unrelay(&json!(r)), Some((3, id)));
        }
        assert_eq!(unrelay(&json!("other")), None);
        assert_eq!(unrelay(&json!(5)), None);
    }

    #[tokio::test]
    async fn a_call_stream_relays_requests_only() {
        let sse = "id: 1\ndata: {\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"roots/list\"}\n\n: ping\n\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{}}\n\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n";
        let body = Relay::requests_of(Full::new(Bytes::from(sse)), 2);
        let out = body.collect().await.unwrap().to_bytes();
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(text.contains("\"id\":\"mcp-gateway/2/9\""), "{text}");
        assert!(
            text.contains("id: 2/1\n"),
            "event ids name the upstream: {text}"
        );
        assert!(text.contains(": ping\n\n"), "comments kept: {text}");
        assert!(
            text.contains("\"id\":1,\"result\""),
            "responses untouched: {text}"
        );
    }
}
