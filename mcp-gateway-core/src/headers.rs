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

/// True when a `Host` header or `:authority` value names a host the way a client reaching a
/// server must (RFC 9110 §7.2, `uri-host [ ":" port ]`): a name of letters, digits, `-`, `.`,
/// `_` and `~`, an IPv4 address, or an IPv6 address in brackets, then an optional port of
/// at most 65535. Stricter than the URI grammar in one way: the sub-delimiters (`,` `;` `(`
/// …) and percent-escapes no host name uses are refused, so that the value can be copied
/// into `X-Forwarded-Host` — a list header — without a reader splitting it. Empty values,
/// user information (`user@host`), paths and spaces are refused.
pub fn is_valid_host(value: &[u8]) -> bool {
    let port = if let Some(rest) = value.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let ipv6 = std::str::from_utf8(&rest[..end])
            .is_ok_and(|l| l.parse::<std::net::Ipv6Addr>().is_ok());
        if !ipv6 {
            return false;
        }
        match &rest[end + 1..] {
            [] => return true,
            [b':', port @ ..] => port,
            _ => return false,
        }
    } else {
        let (name, port) = match value.iter().position(|&b| b == b':') {
            Some(i) => (&value[..i], &value[i + 1..]),
            None => (value, &[][..]),
        };
        let name_byte =
            |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
        if name.is_empty() || !name.iter().all(name_byte) {
            return false;
        }
        port
    };
    // `port = *DIGIT`: an empty port after the colon is allowed, as the URI grammar allows it.
    port.len() <= 5
        && port.iter().all(u8::is_ascii_digit)
        && (port.is_empty() || std::str::from_utf8(port).is_ok_and(|p| p.parse::<u16>().is_ok()))
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

    #[test]
    fn hosts_are_names_or_addresses_with_an_optional_port() {
        for ok in [
            "gw",
            "gw.example.com",
            "GW.Example.com:8443",
            "xn--bcher-kva.example",
            "127.0.0.1:8080",
            "[::1]",
            "[::1]:8080",
            "[2001:db8::1]:443",
            "h:",
            "under_score.local:65535",
        ] {
            assert!(is_valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            ":80",
            "gw:http",
            "gw:65536",
            "gw:123456",
            "gw:80:80",
            "user@gw",
            "gw/path",
            "gw example",
            " gw",
            "a,b",
            "evil.example;x",
            "gw%2e",
            "[::1",
            "[::1]x",
            "[not-v6]:80",
            "::1",
            "gw\t",
        ] {
            assert!(!is_valid_host(bad.as_bytes()), "{bad:?}");
        }
    }
}
