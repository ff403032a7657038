//! Classification of JSON-RPC message bodies.
//!
//! [`classify`] reads a body once and records what every layer needs: the message kind, the
//! method, the id, the tool or prompt name, the resource URI and where `params._meta` and
//! `params.arguments` sit in the body. Arguments are skipped over as raw text — no DOM is built
//! for them — so classifying a large `tools/call` costs one validating scan.
//!
//! ```
//! use mcp_gateway_core::message::{classify, MessageKind};
//!
//! let parsed = classify(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
//! assert_eq!(parsed.single().unwrap().kind(), MessageKind::Notification);
//!
//! let batch = classify(br#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"result":{}}]"#).unwrap();
//! assert_eq!(batch.messages().len(), 2);
//! assert!(batch.is_batch());
//! ```

use crate::jsonrpc::{ErrorCode, JsonRpcError, RequestId};
use crate::scan::{decode_string, scan, Fields, Found, ScanError};
use crate::text::Text;
use bytes::Bytes;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::ops::Range;

pub use crate::scan::META_PROTOCOL_VERSION;

/// What a JSON-RPC message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// Has a `method` and an `id`: expects a response.
    Request,
    /// Has a `method` and no `id`.
    Notification,
    /// Has a `result`.
    Response,
    /// Has an `error`.
    ErrorResponse,
}

impl MessageKind {
    /// Requests expect a response; everything else is accepted with 202 in Streamable HTTP.
    pub fn expects_response(self) -> bool {
        self == Self::Request
    }
}

/// Why a body could not be classified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClassifyError {
    /// The body is not valid JSON (JSON-RPC -32700).
    #[error("body is not valid JSON: {0}")]
    Parse(String),
    /// The body is JSON but not a JSON-RPC 2.0 message (JSON-RPC -32600).
    #[error("not a valid JSON-RPC 2.0 message: {0}")]
    Invalid(String),
}

impl ClassifyError {
    /// The JSON-RPC error a client should get for this failure.
    pub fn to_jsonrpc(&self) -> JsonRpcError {
        match self {
            Self::Parse(_) => JsonRpcError::new(ErrorCode::PARSE_ERROR, self.to_string()),
            Self::Invalid(_) => JsonRpcError::new(ErrorCode::INVALID_REQUEST, self.to_string()),
        }
    }
}

/// One classified JSON-RPC message. Spans are byte ranges into the body it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct McpMessage {
    kind: MessageKind,
    id: Option<RequestId>,
    method: Option<Text>,
    name: Option<Text>,
    uri: Option<Text>,
    meta_protocol_version: Option<Text>,
    span: Range<usize>,
    name_span: Option<Range<usize>>,
    uri_span: Option<Range<usize>>,
    params: Option<Range<usize>>,
    meta: Option<Range<usize>>,
    /// `params._meta["io.modelcontextprotocol/clientCapabilities"]`.
    client_caps: Option<Range<usize>>,
    arguments: Option<Range<usize>>,
    result: Option<Range<usize>>,
    result_meta: Option<Range<usize>>,
    error_code: Option<i64>,
    is_error: bool,
}

impl McpMessage {
    /// The message kind.
    pub fn kind(&self) -> MessageKind {
        self.kind
    }
    /// The id of a request or response.
    pub fn id(&self) -> Option<&RequestId> {
        self.id.as_ref()
    }
    /// The method of a request or notification.
    pub fn method(&self) -> Option<&str> {
        self.method.as_ref().map(Text::as_str)
    }
    /// `params.name`: the tool name of `tools/call`, the prompt name of `prompts/get`.
    pub fn name(&self) -> Option<&str> {
        self.name.as_ref().map(Text::as_str)
    }
    /// `params.uri`: the resource of `resources/read`, `resources/subscribe`, ….
    pub fn uri(&self) -> Option<&str> {
        self.uri.as_ref().map(Text::as_str)
    }
    /// Where the JSON string of `params.name` sits in the body (its quotes included).
    pub fn name_span(&self) -> Option<Range<usize>> {
        self.name_span.clone()
    }
    /// Where the JSON string of `params.uri` sits in the body (its quotes included).
    pub fn uri_span(&self) -> Option<Range<usize>> {
        self.uri_span.clone()
    }
    /// What the request acts on, as the `Mcp-Name` header names it: the tool name for
    /// `tools/call`, the prompt name for `prompts/get`, the URI for `resources/read`.
    pub fn target(&self) -> Option<&str> {
        match self.method()? {
            "tools/call" | "prompts/get" => self.name(),
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => self.uri(),
            _ => None,
        }
    }
    /// `params._meta["io.modelcontextprotocol/protocolVersion"]`, present on 2026-07-28
    /// requests.
    pub fn meta_protocol_version(&self) -> Option<&str> {
        self.meta_protocol_version.as_ref().map(Text::as_str)
    }
    /// Where this message sits in the body.
    pub fn span(&self) -> Range<usize> {
        self.span.clone()
    }
    /// Where `params` sits in the body.
    pub fn params_span(&self) -> Option<Range<usize>> {
        self.params.clone()
    }
    /// Where `params._meta` sits in the body (an object when well-formed).
    pub fn meta_span(&self) -> Option<Range<usize>> {
        self.meta.clone()
    }
    /// Where `params._meta["io.modelcontextprotocol/clientCapabilities"]` sits in the body
    /// (its first copy), as 2026-07-28 requests carry it.
    pub fn client_capabilities_span(&self) -> Option<Range<usize>> {
        self.client_caps.clone()
    }
    /// Where `params.arguments` sits in the body.
    pub fn arguments_span(&self) -> Option<Range<usize>> {
        self.arguments.clone()
    }
    /// The size of `params.arguments` in bytes (0 when absent).
    pub fn arguments_len(&self) -> usize {
        self.arguments.as_ref().map_or(0, |r| r.len())
    }
    /// Where `result` sits in the body (responses).
    pub fn result_span(&self) -> Option<Range<usize>> {
        self.result.clone()
    }
    /// Where `result._meta` sits in the body (responses that carry one).
    pub fn result_meta_span(&self) -> Option<Range<usize>> {
        self.result_meta.clone()
    }
    /// `error.code` of an error response, when it is an integer.
    pub fn error_code(&self) -> Option<i64> {
        self.error_code
    }
    /// True when `result.isError` is `true`: a tool call that ran and failed.
    pub fn is_tool_error(&self) -> bool {
        self.is_error
    }
}

/// One change to a body's bytes: `removed` bytes at `at` replaced by `inserted` bytes
/// (positions in the body before any of the edits it is listed with).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edit {
    /// Where the change starts.
    pub at: usize,
    /// Bytes taken out.
    pub removed: usize,
    /// Bytes put in.
    pub inserted: usize,
    /// A `params` object the inserted text creates: its place within the inserted text.
    pub new_params: Option<Range<usize>>,
    /// A `_meta` object the inserted text creates: its place within the inserted text.
    pub new_meta: Option<Range<usize>>,
}

impl Edit {
    /// Moves `r` as the edit moves the bytes it covers: a range after the edit shifts, a
    /// range around it grows or shrinks, a range before it stays.
    fn apply(&self, r: &mut Range<usize>) {
        let end_of_removed = self.at + self.removed;
        if r.start >= end_of_removed && !(self.removed > 0 && r.start == self.at) {
            r.start = r.start + self.inserted - self.removed;
            r.end = r.end + self.inserted - self.removed;
        } else if r.start < self.at && r.end >= end_of_removed && r.end > self.at {
            r.end = r.end + self.inserted - self.removed;
        }
    }
}

impl McpMessage {
    fn apply(&mut self, e: &Edit) {
        let owns = self.span.start < e.at && e.at < self.span.end;
        e.apply(&mut self.span);
        for r in [
            &mut self.params,
            &mut self.meta,
            &mut self.client_caps,
            &mut self.name_span,
            &mut self.uri_span,
            &mut self.arguments,
            &mut self.result,
            &mut self.result_meta,
        ]
        .into_iter()
        .flatten()
        {
            e.apply(r);
        }
        if owns {
            if let Some(p) = &e.new_params {
                self.params = Some(e.at + p.start..e.at + p.end);
            }
            if let Some(m) = &e.new_meta {
                self.meta = Some(e.at + m.start..e.at + m.end);
            }
        }
    }
}

/// A classified body: one message or a batch (batches exist only in protocol 2025-03-26).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedBody {
    messages: Messages,
}

/// The messages of a body: one, kept inline (a single message is nearly every call, and
/// boxing it would cost the allocation this saves), or a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
enum Messages {
    One(McpMessage),
    Batch(Vec<McpMessage>),
}

impl ParsedBody {
    /// The classification of the body that `edits` made of this one, when the edits only
    /// touched bytes inside `_meta` objects or inserted whole members (what
    /// [`crate::meta`] does): no message changed its meaning, so only the spans move. Far
    /// cheaper than classifying the new body again.
    pub fn edited(&self, edits: &[Edit]) -> Self {
        let mut out = self.clone();
        let mut sorted: Vec<&Edit> = edits.iter().collect();
        sorted.sort_by_key(|e| std::cmp::Reverse(e.at));
        for e in sorted {
            for m in out.messages_mut() {
                m.apply(e);
            }
        }
        out
    }

    /// The classification of a one-message body whose `params.name` (or, without one,
    /// `params.uri`) JSON string was replaced by `quoted` (the new string, quoted and escaped)
    /// and that now reads `value`: every span moves as the bytes did, nothing is classified
    /// again. `None` for a batch, or a message with neither.
    pub fn with_target(&self, quoted_len: usize, value: &str) -> Option<Self> {
        let Messages::One(m) = &self.messages else {
            return None;
        };
        let (span, is_name) = match (&m.name_span, &m.uri_span) {
            (Some(s), _) => (s.clone(), true),
            (None, Some(s)) => (s.clone(), false),
            (None, None) => return None,
        };
        let edit = Edit {
            at: span.start,
            removed: span.end - span.start,
            inserted: quoted_len,
            new_params: None,
            new_meta: None,
        };
        let mut out = self.edited(std::slice::from_ref(&edit));
        let Messages::One(m) = &mut out.messages else {
            return None;
        };
        let new_span = span.start..span.start + quoted_len;
        if is_name {
            m.name = Some(value.into());
            m.name_span = Some(new_span);
        } else {
            m.uri = Some(value.into());
            m.uri_span = Some(new_span);
        }
        Some(out)
    }

    fn messages_mut(&mut self) -> &mut [McpMessage] {
        match &mut self.messages {
            Messages::One(m) => std::slice::from_mut(m),
            Messages::Batch(all) => all,
        }
    }

    /// True for a JSON array body.
    pub fn is_batch(&self) -> bool {
        matches!(self.messages, Messages::Batch(_))
    }
    /// All messages, in body order (one unless a batch).
    pub fn messages(&self) -> &[McpMessage] {
        match &self.messages {
            Messages::One(m) => std::slice::from_ref(m),
            Messages::Batch(all) => all,
        }
    }
    /// The message of a non-batch body.
    pub fn single(&self) -> Option<&McpMessage> {
        match &self.messages {
            Messages::One(m) => Some(m),
            Messages::Batch(_) => None,
        }
    }
    /// The id to answer with when rejecting the whole body: the single request's id, or none.
    pub fn reply_id(&self) -> Option<&RequestId> {
        self.single().and_then(McpMessage::id)
    }
    /// True when every message is a notification or a response (Streamable HTTP answers 202).
    pub fn is_fire_and_forget(&self) -> bool {
        self.messages().iter().all(|m| !m.kind.expects_response())
    }
}

/// Classifies a body: one JSON-RPC message, or a JSON array of them.
///
/// Fails with [`ClassifyError::Parse`] when the body is not JSON, and with
/// [`ClassifyError::Invalid`] when it is JSON but not JSON-RPC 2.0 (wrong `jsonrpc`, no
/// `method`/`result`/`error`, an id that is neither string nor number, an empty batch).
pub fn classify(body: &[u8]) -> Result<ParsedBody, ClassifyError> {
    let messages = match scan(body).map_err(scan_error)? {
        Found::One(f) => Messages::One(from_fields(body, f)?),
        Found::Batch(all) => Messages::Batch(
            all.into_iter()
                .map(|f| from_fields(body, f))
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(ParsedBody { messages })
}

/// Classifies a message that is already known to be one JSON text (an SSE `data` payload, say).
pub fn classify_message(text: &[u8]) -> Result<McpMessage, ClassifyError> {
    match scan(text).map_err(scan_error)? {
        Found::One(f) => from_fields(text, f),
        Found::Batch(_) => Err(ClassifyError::Invalid(
            "expected one message, not a batch".into(),
        )),
    }
}

fn scan_error(e: ScanError) -> ClassifyError {
    if e.syntax {
        ClassifyError::Parse(e.message.into_owned())
    } else {
        ClassifyError::Invalid(e.message.into_owned())
    }
}

/// The decoded text of a JSON string token; `None` for any other kind of value.
fn str_token(token: &[u8]) -> Option<Cow<'_, str>> {
    if token.first() != Some(&b'"') {
        return None;
    }
    decode_string(token)
}

fn from_fields(body: &[u8], f: Fields) -> Result<McpMessage, ClassifyError> {
    let at = |r: &Range<usize>| &body[r.clone()];
    let jsonrpc = f.jsonrpc.as_ref().and_then(|r| str_token(at(r)));
    if jsonrpc.as_deref() != Some("2.0") {
        return Err(ClassifyError::Invalid(r#""jsonrpc" must be "2.0""#.into()));
    }
    // `"id": null` is only meaningful on an error answering an unreadable request.
    let null_id = f.id.as_ref().is_some_and(|r| at(r) == b"null");
    let id = match &f.id {
        None => None,
        Some(_) if null_id => None,
        Some(r) => Some(
            std::str::from_utf8(at(r))
                .ok()
                .and_then(RequestId::from_scanned)
                .ok_or_else(|| {
                    ClassifyError::Invalid("\"id\" must be a string or a number".into())
                })?,
        ),
    };
    if null_id && f.error.is_none() {
        return Err(ClassifyError::Invalid(
            "\"id\" must be a string or a number".into(),
        ));
    }
    let method: Option<Text> = match &f.method {
        None => None,
        Some(r) => Some(
            str_token(at(r))
                .ok_or_else(|| ClassifyError::Invalid("\"method\" must be a string".into()))?
                .into(),
        ),
    };
    let kind = match (&method, &id, &f.result, &f.error) {
        (Some(_), Some(_), None, None) => MessageKind::Request,
        (Some(_), None, None, None) => MessageKind::Notification,
        (None, Some(_), Some(_), None) => MessageKind::Response,
        (None, _, None, Some(_)) => MessageKind::ErrorResponse,
        _ => {
            return Err(ClassifyError::Invalid(
                "a message needs a method (request, notification), a result or an error".into(),
            ))
        }
    };
    let text = |r: &Option<Range<usize>>| -> Option<Text> {
        r.as_ref().and_then(|r| str_token(at(r))).map(Into::into)
    };
    Ok(McpMessage {
        kind,
        id,
        method,
        name: text(&f.name),
        uri: text(&f.uri),
        meta_protocol_version: text(&f.protocol_version),
        span: f.span,
        name_span: f.name.clone(),
        uri_span: f.uri.clone(),
        params: f.params,
        meta: f.meta,
        client_caps: f.client_caps,
        arguments: f.arguments,
        error_code: f
            .error_code
            .as_ref()
            .and_then(|r| std::str::from_utf8(at(r)).ok())
            .and_then(|t| t.parse().ok()),
        is_error: f.is_error.as_ref().is_some_and(|r| at(r) == b"true"),
        result: f.result,
        result_meta: f.result_meta,
    })
}

/// A body together with its classification: what layers hand to each other.
#[derive(Clone, Debug)]
pub struct ClassifiedBody {
    bytes: Bytes,
    parsed: ParsedBody,
}

impl ClassifiedBody {
    /// Classifies `bytes`.
    pub fn new(bytes: Bytes) -> Result<Self, ClassifyError> {
        let parsed = classify(&bytes)?;
        Ok(Self { bytes, parsed })
    }
    /// The body bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
    /// The classification.
    pub fn parsed(&self) -> &ParsedBody {
        &self.parsed
    }
    /// The raw text of `params._meta` of message `msg`, when present.
    pub fn meta_text(&self, msg: &McpMessage) -> Option<&str> {
        self.slice(msg.meta_span()?)
    }
    /// The raw text of `params.arguments` of message `msg`, when present.
    pub fn arguments_text(&self, msg: &McpMessage) -> Option<&str> {
        self.slice(msg.arguments_span()?)
    }
    /// Reads one `_meta` value of `msg` as JSON (parsed on demand; `_meta` is small).
    pub fn meta_value(&self, msg: &McpMessage, key: &str) -> Option<serde_json::Value> {
        let text = self.meta_text(msg)?;
        let map: std::collections::HashMap<Cow<'_, str>, &RawValue> =
            serde_json::from_str(text).ok()?;
        serde_json::from_str(map.get(key)?.get()).ok()
    }
    fn slice(&self, r: Range<usize>) -> Option<&str> {
        std::str::from_utf8(self.bytes.get(r)?).ok()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn one(body: &str) -> McpMessage {
        classify(body.as_bytes()).unwrap().single().unwrap().clone()
    }

    #[test]
    fn request_with_tool_name_and_spans() {
        let body = r#"{"jsonrpc":"2.0","id":"a1","method":"tools/call","params":{"name":"echo","arguments":{"text":"x","deep":[1,{"a":2}]},"_meta":{"progressToken":3,"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#;
        let m = one(body);
        assert_eq!(m.kind(), MessageKind::Request);
        assert_eq!(m.id().unwrap().as_raw(), "\"a1\"");
        assert_eq!(m.method(), Some("tools/call"));
        assert_eq!(m.target(), Some("echo"));
        assert_eq!(m.meta_protocol_version(), Some("2026-07-28"));
        assert_eq!(
            &body[m.arguments_span().unwrap()],
            r#"{"text":"x","deep":[1,{"a":2}]}"#
        );
        assert!(body[m.meta_span().unwrap()].starts_with("{\"progressToken\""));
        assert_eq!(&body[m.name_span().unwrap()], "\"echo\"");
        // The same message with another name: spliced, every span moved, nothing re-read.
        let protocol = crate::ProtocolInfo {
            era: crate::Era::Modern,
            version: Some("2026-07-28".into()),
            session_id: None,
        };
        let view = crate::McpRequest::from_parts(
            Some(bytes::Bytes::from(body)),
            Some(classify(body.as_bytes()).unwrap()),
            protocol,
        );
        let moved = view
            .with_target("a__e\"cho", view.protocol().clone())
            .unwrap();
        let text = std::str::from_utf8(moved.body().unwrap()).unwrap();
        let again = classify(text.as_bytes()).unwrap();
        let (a, b) = (moved.single().unwrap(), again.single().unwrap());
        assert_eq!(a.name(), Some("a__e\"cho"));
        assert_eq!(a, b, "as if classified again");
        assert_eq!(&body[m.span()], body);
    }

    #[test]
    fn response_fields() {
        let body = r#"{"jsonrpc":"2.0","id":4,"result":{"content":[{"type":"text","text":"{\"isError\":true}"}],"isError":true,"_meta":{"usage":{"output_tokens":5}}}}"#;
        let m = one(body);
        assert_eq!(m.kind(), MessageKind::Response);
        assert!(m.is_tool_error());
        assert_eq!(m.error_code(), None);
        assert_eq!(
            &body[m.result_meta_span().unwrap()],
            r#"{"usage":{"output_tokens":5}}"#
        );
        // `isError` inside nested content does not count; only the result's own key does.
        let m = one(r#"{"jsonrpc":"2.0","id":4,"result":{"content":[{"isError":true}]}}"#);
        assert!(!m.is_tool_error());
        let m = one(
            r#"{"jsonrpc":"2.0","id":"x","error":{"message":"nope","code":-32602,"data":{"code":1}}}"#,
        );
        assert_eq!(m.kind(), MessageKind::ErrorResponse);
        assert_eq!(m.error_code(), Some(-32602));
        assert!(!m.is_tool_error());
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let m =
            one(r#"{"jsonrpc":"2.0","id":1,"method":"tools\/call","params":{"name":"e\u0063ho"}}"#);
        assert_eq!(m.method(), Some("tools/call"));
        assert_eq!(m.target(), Some("echo"));
    }

    #[test]
    fn resources_and_prompts_targets() {
        assert_eq!(
            one(
                r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///a"}}"#
            )
            .target(),
            Some("file:///a")
        );
        assert_eq!(
            one(r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"p"}}"#)
                .target(),
            Some("p")
        );
        assert_eq!(
            one(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#).target(),
            None
        );
    }

    #[test]
    fn kinds() {
        assert_eq!(
            one(r#"{"jsonrpc":"2.0","method":"n"}"#).kind(),
            MessageKind::Notification
        );
        assert_eq!(
            one(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#).kind(),
            MessageKind::Response
        );
        assert_eq!(
            one(r#"{"jsonrpc":"2.0","id":null,"error":{"code":1,"message":"m"}}"#).kind(),
            MessageKind::ErrorResponse
        );
    }

    #[test]
    fn malformed_bodies() {
        for (body, parse) in [
            ("", true),
            ("   ", true),
            ("{", true),
            ("{\"jsonrpc\":\"2.0\",", true),
            ("nope", true),
            ("[1,", true),
            ("42", false),
            ("\"s\"", false),
            ("[]", false),
            ("[1]", false),
            (r#"{"id":1,"method":"x"}"#, false),
            (r#"{"jsonrpc":"1.0","id":1,"method":"x"}"#, false),
            (r#"{"jsonrpc":"2.0","id":1}"#, false),
            (r#"{"jsonrpc":"2.0","id":{},"method":"x"}"#, false),
            (r#"{"jsonrpc":"2.0","id":null,"method":"x"}"#, false),
            (r#"{"jsonrpc":"2.0","id":1,"method":7}"#, false),
            (r#"{"jsonrpc":"2.0","id":1,"method":"x","result":1}"#, false),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"x","method":"y"}"#,
                false,
            ),
        ] {
            let err = classify(body.as_bytes()).unwrap_err();
            assert_eq!(
                matches!(err, ClassifyError::Parse(_)),
                parse,
                "{body}: {err}"
            );
        }
        assert!(classify(b"{\"jsonrpc\":\"2.0\",\"method\":\"\xff\"}").is_err());
    }

    #[test]
    fn duplicate_keys_the_gateway_reads_are_refused() {
        for body in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"safe","name":"rm"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"a","uri":"b"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"_meta":{},"_meta":{}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"arguments":{},"arguments":{}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/protocolVersion":"2025-06-18"}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":7}}}"#,
        ] {
            assert!(
                matches!(classify(body.as_bytes()), Err(ClassifyError::Invalid(_))),
                "{body}"
            );
        }
        // Keys the gateway does not read may repeat: that is the server's business.
        assert!(
            classify(br#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"x":1,"x":2}}"#).is_ok()
        );
    }

    #[test]
    fn odd_params_are_tolerated() {
        let m = one(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":[1,2]}"#);
        assert_eq!(m.target(), None);
        assert!(m.params_span().is_some());
        let m = one(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":5}}"#);
        assert_eq!(m.target(), None);
    }

    #[test]
    fn batch_spans() {
        let body =
            r#" [ {"jsonrpc":"2.0","id":1,"method":"a"} , {"jsonrpc":"2.0","method":"b"} ] "#;
        let p = classify(body.as_bytes()).unwrap();
        assert!(p.is_batch());
        assert!(p.single().is_none());
        assert_eq!(
            &body[p.messages()[1].span()],
            r#"{"jsonrpc":"2.0","method":"b"}"#
        );
        assert!(!p.is_fire_and_forget());
    }

    #[test]
    fn client_capabilities_located_and_moved_by_edits() {
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","_meta":{"x":{"io.modelcontextprotocol/clientCapabilities":1},"io.modelcontextprotocol/clientCapabilities":{"extensions":{}},"io.modelcontextprotocol/clientCapabilities":2}}}"#;
        let m = one(body);
        // The top-level key's first copy, not the nested one.
        let span = m.client_capabilities_span().unwrap();
        assert_eq!(&body[span], r#"{"extensions":{}}"#);
        assert_eq!(
            one(r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"_meta":{}}}"#)
                .client_capabilities_span(),
            None
        );
        // A longer name: the span moves with the bytes.
        let parsed = classify(body.as_bytes()).unwrap();
        let moved = parsed.with_target(r#""abcdef""#.len(), "abcdef").unwrap();
        let edited = body.replacen(r#""name":"a""#, r#""name":"abcdef""#, 1);
        let span = moved.single().unwrap().client_capabilities_span().unwrap();
        assert_eq!(&edited[span], r#"{"extensions":{}}"#);
    }

    #[test]
    fn meta_value_on_demand() {
        let body = Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"_meta":{"traceparent":"00-x","n":1}}}"#,
        );
        let c = ClassifiedBody::new(body).unwrap();
        let m = c.parsed().single().unwrap();
        assert_eq!(c.meta_value(m, "traceparent").unwrap(), "00-x");
        assert!(c.meta_value(m, "missing").is_none());
    }
}
