//! Header names used by MCP over Streamable HTTP.
//!
//! All names are lower-case, as [`http::HeaderName`] requires.

use http::HeaderName;

/// `Mcp-Session-Id`: the legacy session id issued by a server on `initialize`.
pub const MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
/// `MCP-Protocol-Version`: the negotiated (legacy) or per-request (2026-07-28) protocol version.
pub const MCP_PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
/// `Mcp-Method`: the JSON-RPC method of a 2026-07-28 request, mirrored in a header.
pub const MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");
/// `Mcp-Name`: the tool name, prompt name or resource URI of a 2026-07-28 request.
pub const MCP_NAME: HeaderName = HeaderName::from_static("mcp-name");
/// Prefix of `Mcp-Param-*` headers, which intermediaries must forward even when unknown.
pub const MCP_PARAM_PREFIX: &str = "mcp-param-";
/// `Last-Event-ID`: resumption point of a legacy SSE stream.
pub const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");
/// `X-Accel-Buffering`: asks buffering proxies in front of us not to buffer SSE.
pub const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");
/// `Retry-After`, set on 429 and 503 answers.
pub const RETRY_AFTER: HeaderName = http::header::RETRY_AFTER;

/// The `text/event-stream` media type.
pub const EVENT_STREAM: &str = "text/event-stream";
/// The `application/json` media type.
pub const APPLICATION_JSON: &str = "application/json";

/// True when a `Content-Type` value names `text/event-stream` (parameters ignored).
pub fn is_event_stream(content_type: &http::HeaderValue) -> bool {
    media_type_is(content_type, EVENT_STREAM)
}

/// True when a `Content-Type` value names `application/json` (parameters ignored).
pub fn is_json(content_type: &http::HeaderValue) -> bool {
    media_type_is(content_type, APPLICATION_JSON)
}

fn media_type_is(value: &http::HeaderValue, wanted: &str) -> bool {
    value
        .to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(wanted))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn media_types_ignore_parameters_and_case() {
        assert!(is_json(&HeaderValue::from_static(
            "application/json; charset=utf-8"
        )));
        assert!(is_event_stream(&HeaderValue::from_static(
            "Text/Event-Stream"
        )));
        assert!(!is_json(&HeaderValue::from_static("application/jsonx")));
    }
}
