//! JSON-RPC 2.0 ids, error codes and error responses.
//!
//! Every rejection the gateway makes is a JSON-RPC error object carried by the HTTP status that
//! tells a client what to do, and it keeps the id of the request it answers, so that a client
//! can match the error to its call.
//!
//! ```
//! use mcp_gateway_core::jsonrpc::{ErrorCode, JsonRpcError, RequestId};
//! use http::StatusCode;
//!
//! let id = RequestId::from_raw("\"req-1\"").unwrap();
//! let resp = JsonRpcError::new(ErrorCode::PARSE_ERROR, "body is not JSON")
//!     .into_response(StatusCode::BAD_REQUEST, Some(&id));
//! assert_eq!(resp.status(), 400);
//! ```

use crate::text::Text;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use serde_json::value::RawValue;
use std::fmt;

/// A JSON-RPC request id, kept as the exact JSON text the peer sent (a string or a number), so
/// it can be echoed back byte for byte.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RequestId(Text);

impl RequestId {
    /// Accepts the raw JSON text of an id: a JSON string or a JSON number. Anything else
    /// (null, objects, arrays, booleans) is refused.
    pub fn from_raw(raw: &str) -> Option<Self> {
        let raw = raw.trim();
        let first = raw.as_bytes().first()?;
        match first {
            b'"' => serde_json::from_str::<&RawValue>(raw)
                .ok()
                .map(|_| Self(raw.into())),
            b'-' | b'0'..=b'9' => serde_json::from_str::<serde_json::Number>(raw)
                .ok()
                .map(|_| Self(raw.into())),
            _ => None,
        }
    }

    /// An id from a token the body scanner already validated as a JSON string or number:
    /// no second parse.
    pub(crate) fn from_scanned(raw: &str) -> Option<Self> {
        match raw.as_bytes().first()? {
            b'"' | b'-' | b'0'..=b'9' => Some(Self(raw.into())),
            _ => None,
        }
    }

    /// An id from an integer.
    pub fn from_number(n: i64) -> Self {
        Self(n.to_string().into())
    }

    /// An id from a string (JSON-escaped here).
    pub fn from_string(s: &str) -> Self {
        let json = serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned());
        Self(json.into())
    }

    /// The id as the JSON text it was sent as (`7`, `"abc"`).
    pub fn as_raw(&self) -> &str {
        self.0.as_str()
    }

    /// True when the id is a JSON string.
    pub fn is_string(&self) -> bool {
        self.0.as_str().starts_with('"')
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({})", self.0.as_str())
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

impl Serialize for RequestId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // The text was validated as a JSON string or number on construction.
        match serde_json::from_str::<&RawValue>(self.0.as_str()) {
            Ok(raw) => raw.serialize(s),
            Err(_) => s.serialize_none(),
        }
    }
}

/// A JSON-RPC error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ErrorCode(pub i32);

impl ErrorCode {
    /// Invalid JSON was received.
    pub const PARSE_ERROR: Self = Self(-32700);
    /// The JSON sent is not a valid JSON-RPC request.
    pub const INVALID_REQUEST: Self = Self(-32600);
    /// The method does not exist or is not available.
    pub const METHOD_NOT_FOUND: Self = Self(-32601);
    /// Invalid method parameters.
    pub const INVALID_PARAMS: Self = Self(-32602);
    /// Internal JSON-RPC error.
    pub const INTERNAL_ERROR: Self = Self(-32603);
    /// MCP 2026-07-28: an HTTP header (`MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name`)
    /// disagrees with the body.
    pub const HEADER_MISMATCH: Self = Self(-32020);
    /// MCP 2026-07-28: the protocol version is not supported.
    pub const UNSUPPORTED_PROTOCOL_VERSION: Self = Self(-32022);
    /// Gateway: the upstream server could not be reached or failed (HTTP 502).
    pub const UPSTREAM_UNAVAILABLE: Self = Self(-32050);
    /// Gateway: the upstream server did not answer in time (HTTP 504).
    pub const UPSTREAM_TIMEOUT: Self = Self(-32051);
    /// Gateway: the request was refused by gateway policy (origin, authorization, limits).
    pub const GATEWAY_REFUSED: Self = Self(-32052);
    /// Gateway: no route serves the requested path.
    pub const NO_ROUTE: Self = Self(-32053);
    /// Gateway: the gateway is shutting down or not ready, or a dependency it needs to
    /// serve the call is unavailable (the authorization server, the audit log: HTTP 503).
    pub const UNAVAILABLE: Self = Self(-32054);
    /// Gateway: no valid credentials (HTTP 401, with `WWW-Authenticate`).
    pub const UNAUTHORIZED: Self = Self(-32055);
    /// Gateway: the credentials do not grant this call (HTTP 403, `insufficient_scope`).
    pub const FORBIDDEN: Self = Self(-32056);
    /// The session id is unknown, forged, expired or ended (HTTP 404): the client must
    /// re-initialize without a session id. The code the reference TypeScript SDK answers with.
    pub const SESSION_NOT_FOUND: Self = Self(-32001);
}

/// A JSON-RPC error object (`code`, `message`, optional `data`).
#[derive(Clone, Debug, Serialize)]
pub struct JsonRpcError {
    /// The error code.
    pub code: ErrorCode,
    /// A short human-readable description.
    pub message: String,
    /// Extra machine-readable detail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    jsonrpc: &'static str,
    id: Option<&'a RequestId>,
    error: &'a JsonRpcError,
}

impl JsonRpcError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// Attaches `data`.
    pub fn with_data(mut self, data: serde_json::Value) -> Self {
        self.data = Some(data);
        self
    }

    /// The full JSON-RPC response text: `{"jsonrpc":"2.0","id":…,"error":{…}}`. The id is
    /// `null` when the request's id is unknown (unparseable body, GET, notification).
    pub fn to_body(&self, id: Option<&RequestId>) -> Bytes {
        let env = Envelope {
            jsonrpc: "2.0",
            id,
            error: self,
        };
        match serde_json::to_vec(&env) {
            Ok(v) => Bytes::from(v),
            Err(_) => Bytes::from_static(
                br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"internal error"}}"#,
            ),
        }
    }

    /// An HTTP response carrying this error as `application/json` with the given status.
    pub fn into_response(
        self,
        status: StatusCode,
        id: Option<&RequestId>,
    ) -> Response<Full<Bytes>> {
        let body = self.to_body(id);
        let mut resp = Response::new(Full::new(body));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::headers::APPLICATION_JSON),
        );
        resp
    }
}

impl fmt::Display for JsonRpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code.0)
    }
}

impl std::error::Error for JsonRpcError {}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_keep_their_text() {
        assert_eq!(RequestId::from_raw("42").unwrap().as_raw(), "42");
        assert_eq!(
            RequestId::from_raw("\"a\\\"b\"").unwrap().as_raw(),
            "\"a\\\"b\""
        );
        assert!(RequestId::from_raw("null").is_none());
        assert!(RequestId::from_raw("{}").is_none());
        assert!(RequestId::from_raw("true").is_none());
        assert!(RequestId::from_raw("\"unterminated").is_none());
        assert_eq!(RequestId::from_string("x\"y").as_raw(), "\"x\\\"y\"");
    }

    #[test]
    fn error_body_keeps_id() {
        let id = RequestId::from_raw("\"abc\"").unwrap();
        let body = JsonRpcError::new(ErrorCode::PARSE_ERROR, "bad").to_body(Some(&id));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["id"], "abc");
        assert_eq!(v["error"]["code"], -32700);
        assert_eq!(v["jsonrpc"], "2.0");
        let body = JsonRpcError::new(ErrorCode::INVALID_REQUEST, "bad")
            .with_data(serde_json::json!({"k": 1}))
            .to_body(None);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(v["id"].is_null());
        assert_eq!(v["error"]["data"]["k"], 1);
    }
}
