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
use bytes::Bytes;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::ops::Range;

/// The `_meta` key that carries the protocol version of a 2026-07-28 request.
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";

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
    method: Option<Box<str>>,
    name: Option<Box<str>>,
    uri: Option<Box<str>>,
    meta_protocol_version: Option<Box<str>>,
    span: Range<usize>,
    params: Option<Range<usize>>,
    meta: Option<Range<usize>>,
    arguments: Option<Range<usize>>,
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
        self.method.as_deref()
    }
    /// `params.name`: the tool name of `tools/call`, the prompt name of `prompts/get`.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
    /// `params.uri`: the resource of `resources/read`, `resources/subscribe`, ….
    pub fn uri(&self) -> Option<&str> {
        self.uri.as_deref()
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
        self.meta_protocol_version.as_deref()
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
    /// Where `params.arguments` sits in the body.
    pub fn arguments_span(&self) -> Option<Range<usize>> {
        self.arguments.clone()
    }
    /// The size of `params.arguments` in bytes (0 when absent).
    pub fn arguments_len(&self) -> usize {
        self.arguments.as_ref().map_or(0, |r| r.len())
    }
}

/// A classified body: one message or a batch (batches exist only in protocol 2025-03-26).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedBody {
    batch: bool,
    messages: Vec<McpMessage>,
}

impl ParsedBody {
    /// True for a JSON array body.
    pub fn is_batch(&self) -> bool {
        self.batch
    }
    /// All messages, in body order (one unless a batch).
    pub fn messages(&self) -> &[McpMessage] {
        &self.messages
    }
    /// The message of a non-batch body.
    pub fn single(&self) -> Option<&McpMessage> {
        if self.batch {
            None
        } else {
            self.messages.first()
        }
    }
    /// The id to answer with when rejecting the whole body: the single request's id, or none.
    pub fn reply_id(&self) -> Option<&RequestId> {
        self.single().and_then(McpMessage::id)
    }
    /// True when every message is a notification or a response (Streamable HTTP answers 202).
    pub fn is_fire_and_forget(&self) -> bool {
        self.messages.iter().all(|m| !m.kind.expects_response())
    }
}

fn raw_present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default, borrow)]
    jsonrpc: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "raw_present")]
    id: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "raw_present")]
    method: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "raw_present")]
    params: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "raw_present")]
    result: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "raw_present")]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Params<'a> {
    #[serde(default, borrow, deserialize_with = "raw_present")]
    name: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "raw_present")]
    uri: Option<&'a RawValue>,
    #[serde(default, borrow, rename = "_meta", deserialize_with = "raw_present")]
    meta: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "raw_present")]
    arguments: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct MetaKnown<'a> {
    #[serde(default, borrow, rename = "io.modelcontextprotocol/protocolVersion")]
    protocol_version: Option<Cow<'a, str>>,
}

/// Classifies a body: one JSON-RPC message, or a JSON array of them.
///
/// Fails with [`ClassifyError::Parse`] when the body is not JSON, and with
/// [`ClassifyError::Invalid`] when it is JSON but not JSON-RPC 2.0 (wrong `jsonrpc`, no
/// `method`/`result`/`error`, an id that is neither string nor number, an empty batch).
pub fn classify(body: &[u8]) -> Result<ParsedBody, ClassifyError> {
    let first = body.iter().copied().find(|b| !b.is_ascii_whitespace());
    match first {
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_slice(body).map_err(|e| json_error(&e))?;
            if items.is_empty() {
                return Err(ClassifyError::Invalid("empty batch".into()));
            }
            let messages = items
                .into_iter()
                .map(|raw| classify_one(body, raw))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ParsedBody {
                batch: true,
                messages,
            })
        }
        Some(b'{') => {
            // One pass: the envelope straight from the body, `params` kept as raw text.
            let env: Envelope<'_> = serde_json::from_slice(body).map_err(|e| json_error(&e))?;
            let start = body
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .unwrap_or(0);
            let end = body
                .iter()
                .rposition(|b| !b.is_ascii_whitespace())
                .map_or(body.len(), |i| i + 1);
            Ok(ParsedBody {
                batch: false,
                messages: vec![classify_envelope(body, env, start..end)?],
            })
        }
        None => Err(ClassifyError::Parse("empty body".into())),
        Some(_) => match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
            Ok(_) => Err(ClassifyError::Invalid(
                "expected a JSON object or array".into(),
            )),
            Err(e) => Err(json_error(&e)),
        },
    }
}

/// Classifies a message that is already known to be one JSON text (an SSE `data` payload, say).
pub fn classify_message(text: &[u8]) -> Result<McpMessage, ClassifyError> {
    let raw: &RawValue = serde_json::from_slice(text).map_err(|e| json_error(&e))?;
    classify_one(text, raw)
}

fn json_error(e: &serde_json::Error) -> ClassifyError {
    if e.is_syntax() || e.is_eof() || e.is_io() {
        ClassifyError::Parse(e.to_string())
    } else {
        ClassifyError::Invalid(e.to_string())
    }
}

fn span_of(body: &[u8], raw: &RawValue) -> Range<usize> {
    let start = (raw.get().as_ptr() as usize).saturating_sub(body.as_ptr() as usize);
    start..start + raw.get().len()
}

fn string_of(raw: &RawValue) -> Option<Box<str>> {
    serde_json::from_str::<Cow<'_, str>>(raw.get())
        .ok()
        .map(|s| s.into())
}

fn classify_one(body: &[u8], raw: &RawValue) -> Result<McpMessage, ClassifyError> {
    let text = raw.get();
    if !text.starts_with('{') {
        return Err(ClassifyError::Invalid(
            "a message must be a JSON object".into(),
        ));
    }
    let env: Envelope<'_> =
        serde_json::from_str(text).map_err(|e| ClassifyError::Invalid(e.to_string()))?;
    classify_envelope(body, env, span_of(body, raw))
}

fn classify_envelope(
    body: &[u8],
    env: Envelope<'_>,
    span: Range<usize>,
) -> Result<McpMessage, ClassifyError> {
    if env.jsonrpc.as_deref() != Some("2.0") {
        return Err(ClassifyError::Invalid(r#""jsonrpc" must be "2.0""#.into()));
    }
    // `"id": null` is only meaningful on an error answering an unreadable request.
    let null_id = env.id.is_some_and(|raw_id| raw_id.get().trim() == "null");
    let id =
        match env.id {
            None => None,
            Some(_) if null_id => None,
            Some(raw_id) => Some(RequestId::from_raw(raw_id.get()).ok_or_else(|| {
                ClassifyError::Invalid("\"id\" must be a string or a number".into())
            })?),
        };
    if null_id && env.error.is_none() {
        return Err(ClassifyError::Invalid(
            "\"id\" must be a string or a number".into(),
        ));
    }
    let method = match env.method {
        None => None,
        Some(m) => Some(
            string_of(m)
                .ok_or_else(|| ClassifyError::Invalid("\"method\" must be a string".into()))?,
        ),
    };
    let kind = match (&method, &id, env.result, env.error) {
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
    let mut msg = McpMessage {
        kind,
        id,
        method,
        name: None,
        uri: None,
        meta_protocol_version: None,
        span,
        params: None,
        meta: None,
        arguments: None,
    };
    if let Some(params) = env.params {
        msg.params = Some(span_of(body, params));
        // Params of an unexpected shape (an array, a numeric name) are the server's to reject:
        // keep what can be read. But a key the gateway acts on must not appear twice: parsers
        // disagree on which copy wins, so the gateway could check one name while the server
        // runs another.
        if params.get().starts_with('{') {
            let p = serde_json::from_str::<Params<'_>>(params.get())
                .map_err(|e| ClassifyError::Invalid(format!("params: {e}")))?;
            msg.name = p.name.and_then(string_of);
            msg.uri = p.uri.and_then(string_of);
            msg.arguments = p.arguments.map(|a| span_of(body, a));
            if let Some(meta) = p.meta {
                msg.meta = Some(span_of(body, meta));
                if meta.get().starts_with('{') {
                    let known = serde_json::from_str::<MetaKnown<'_>>(meta.get())
                        .map_err(|e| ClassifyError::Invalid(format!("params._meta: {e}")))?;
                    msg.meta_protocol_version = known.protocol_version.map(Into::into);
                }
            }
        }
    }
    Ok(msg)
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
        assert_eq!(&body[m.span()], body);
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
