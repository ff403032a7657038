//! Protocol eras and the header/body checks of MCP 2026-07-28.
//!
//! MCP over Streamable HTTP has two eras that a gateway carries at once:
//!
//! - **Legacy** (2025-03-26 … 2025-11-25): an `initialize` handshake, optional
//!   `Mcp-Session-Id` sessions that must keep reaching the instance that issued them, and an
//!   `MCP-Protocol-Version` header after initialization.
//! - **Modern** (2026-07-28 and later): no sessions; every request carries
//!   `_meta["io.modelcontextprotocol/protocolVersion"]` and mirrors it, its method and its target
//!   in the `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name` headers, which an intermediary
//!   must check against the body before relying on them.
//!
//! The era is read from the body (the `_meta` protocol version), confirmed by the headers.
//!
//! ```
//! use http::HeaderMap;
//! use mcp_gateway_core::era::{detect, Era};
//! use mcp_gateway_core::message::classify;
//!
//! let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#;
//! let parsed = classify(body).unwrap();
//! let mut headers = HeaderMap::new();
//! headers.insert("mcp-protocol-version", "2026-07-28".parse().unwrap());
//! headers.insert("mcp-method", "tools/list".parse().unwrap());
//! let info = detect(&headers, Some(&parsed)).unwrap();
//! assert_eq!(info.era, Era::Modern);
//!
//! headers.insert("mcp-method", "tools/call".parse().unwrap());
//! assert!(detect(&headers, Some(&parsed)).is_err());
//! ```

use crate::headers::{MCP_METHOD, MCP_NAME, MCP_PROTOCOL_VERSION, MCP_SESSION_ID};
use crate::jsonrpc::{ErrorCode, JsonRpcError};
use crate::message::{MessageKind, ParsedBody};
use base64::Engine as _;
use http::{HeaderMap, StatusCode};

/// The first protocol version of the modern (sessionless) era.
pub const FIRST_MODERN_VERSION: &str = "2026-07-28";
/// The protocol version a legacy server assumes when `MCP-Protocol-Version` is absent.
pub const DEFAULT_LEGACY_VERSION: &str = "2025-03-26";
/// Every protocol version published so far, oldest first.
pub const KNOWN_VERSIONS: &[&str] = &[
    "2024-11-05",
    "2025-03-26",
    "2025-06-18",
    "2025-11-25",
    "2026-07-28",
];

/// The protocol era of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Era {
    /// 2025-11-25 and earlier: `initialize`, optional sessions.
    Legacy,
    /// 2026-07-28 and later: sessionless, per-request `_meta`.
    Modern,
}

/// What the gateway knows of a request's protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolInfo {
    /// The era.
    pub era: Era,
    /// The protocol version the request declares (header or `_meta`); `None` for a legacy
    /// request without the header (`initialize`, or a 2025-03-26 client).
    pub version: Option<Box<str>>,
    /// The legacy session id, when sent (never set for the modern era, whose servers ignore it).
    pub session_id: Option<Box<str>>,
}

/// True for a version string of the modern era (versions are dates and compare as text).
pub fn is_modern_version(v: &str) -> bool {
    v >= FIRST_MODERN_VERSION
}

/// Why a request's headers and body disagree.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EraError {
    /// A required 2026-07-28 header is missing or does not match the body (JSON-RPC -32020).
    #[error("Header mismatch: {0}")]
    HeaderMismatch(String),
    /// A batch was sent with a protocol version that has no batches (JSON-RPC -32600).
    #[error("JSON-RPC batches are only allowed in protocol version 2025-03-26, not {0}")]
    BatchNotAllowed(String),
    /// A header value is not visible ASCII.
    #[error("header {0} is not valid visible ASCII")]
    InvalidHeader(&'static str),
    /// A request declares a 2026-07-28 version in `MCP-Protocol-Version` but its `_meta` lacks
    /// the protocol version every such request must carry (JSON-RPC -32602, as SEP-2575 has
    /// servers answer).
    #[error("Invalid params: request _meta is missing \"io.modelcontextprotocol/protocolVersion\" (MCP-Protocol-Version header is {0})")]
    MissingMetaVersion(String),
}

impl EraError {
    /// The HTTP status and JSON-RPC error for this failure (all 400 Bad Request).
    pub fn to_jsonrpc(&self) -> (StatusCode, JsonRpcError) {
        let code = match self {
            Self::HeaderMismatch(_) | Self::InvalidHeader(_) => ErrorCode::HEADER_MISMATCH,
            Self::BatchNotAllowed(_) => ErrorCode::INVALID_REQUEST,
            Self::MissingMetaVersion(_) => ErrorCode::INVALID_PARAMS,
        };
        (
            StatusCode::BAD_REQUEST,
            JsonRpcError::new(code, self.to_string()),
        )
    }
}

fn header_str<'h>(
    headers: &'h HeaderMap,
    name: &http::HeaderName,
    label: &'static str,
) -> Result<Option<&'h str>, EraError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim()))
            .map_err(|_| EraError::InvalidHeader(label)),
    }
}

/// Encodes `v` for a 2026-07-28 header (`Mcp-Name`): as it is when it is printable ASCII
/// without surrounding spaces, else in the `=?base64?…?=` form.
pub fn encode_header_value(v: &str) -> String {
    let plain = v.bytes().all(|b| (0x20..0x7f).contains(&b))
        && v.trim() == v
        && !(v.starts_with("=?") && v.ends_with("?="));
    if plain {
        v.to_owned()
    } else {
        format!(
            "=?base64?{}?=",
            base64::engine::general_purpose::STANDARD.encode(v)
        )
    }
}

/// Decodes a header value that may use the `=?base64?…?=` form of 2026-07-28.
pub fn decode_header_value(v: &str) -> Option<String> {
    match v
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
    {
        Some(enc) => base64::engine::general_purpose::STANDARD
            .decode(enc)
            .ok()
            .and_then(|b| String::from_utf8(b).ok()),
        None => Some(v.to_owned()),
    }
}

/// Works out the era of a request and, for the modern era, checks that `MCP-Protocol-Version`,
/// `Mcp-Method` and `Mcp-Name` are present and match the body.
///
/// `parsed` is `None` for requests without a body (GET, DELETE).
pub fn detect(headers: &HeaderMap, parsed: Option<&ParsedBody>) -> Result<ProtocolInfo, EraError> {
    let header_version = header_str(headers, &MCP_PROTOCOL_VERSION, "MCP-Protocol-Version")?;
    let session_id = header_str(headers, &MCP_SESSION_ID, "Mcp-Session-Id")?;
    // Only the values kept are copied (headers are compared in place).
    let legacy = |version: Option<&str>| ProtocolInfo {
        era: Era::Legacy,
        version: version.map(Into::into),
        session_id: session_id.map(Into::into),
    };
    let Some(parsed) = parsed else {
        // GET / DELETE: only headers to go by.
        return Ok(match header_version {
            Some(v) if is_modern_version(v) => ProtocolInfo {
                era: Era::Modern,
                version: Some(v.into()),
                session_id: None,
            },
            v => legacy(v),
        });
    };
    if parsed.is_batch() {
        let v = header_version.unwrap_or(DEFAULT_LEGACY_VERSION);
        if v != DEFAULT_LEGACY_VERSION {
            return Err(EraError::BatchNotAllowed(v.to_owned()));
        }
        return Ok(legacy(header_version));
    }
    let Some(msg) = parsed.single() else {
        return Ok(legacy(header_version));
    };
    let Some(meta_version) = msg.meta_protocol_version() else {
        if msg.kind() == MessageKind::Request
            && msg.method() != Some("initialize")
            && header_version.is_some_and(is_modern_version)
        {
            return Err(EraError::MissingMetaVersion(
                header_version.unwrap_or_default().to_owned(),
            ));
        }
        return Ok(legacy(header_version));
    };
    match header_version {
        None => {
            return Err(EraError::HeaderMismatch(
                "MCP-Protocol-Version header is missing".into(),
            ))
        }
        Some(h) if h != meta_version => {
            return Err(EraError::HeaderMismatch(format!(
                "MCP-Protocol-Version header value '{h}' does not match body value '{meta_version}'"
            )))
        }
        Some(_) => {}
    }
    if msg.kind() == MessageKind::Request {
        let method = msg.method().unwrap_or_default();
        match header_str(headers, &MCP_METHOD, "Mcp-Method")? {
            None => {
                return Err(EraError::HeaderMismatch(
                    "Mcp-Method header is missing".into(),
                ))
            }
            Some(h) if h != method => {
                return Err(EraError::HeaderMismatch(format!(
                    "Mcp-Method header value '{h}' does not match body value '{method}'"
                )))
            }
            Some(_) => {}
        }
        if matches!(method, "tools/call" | "prompts/get" | "resources/read") {
            let body_name = msg.target().unwrap_or_default();
            match header_str(headers, &MCP_NAME, "Mcp-Name")? {
                None => {
                    return Err(EraError::HeaderMismatch(
                        "Mcp-Name header is missing".into(),
                    ))
                }
                Some(h) => {
                    let decoded =
                        decode_header_value(h).ok_or(EraError::InvalidHeader("Mcp-Name"))?;
                    if decoded != body_name {
                        return Err(EraError::HeaderMismatch(format!(
                            "Mcp-Name header value '{h}' does not match body value '{body_name}'"
                        )));
                    }
                }
            }
        }
    }
    Ok(ProtocolInfo {
        era: Era::Modern,
        version: Some(meta_version.into()),
        session_id: None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::message::classify;

    fn hdrs(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    const MODERN_CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"greet","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#;

    #[test]
    fn modern_request_validated() {
        let p = classify(MODERN_CALL.as_bytes()).unwrap();
        let ok = hdrs(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "greet"),
            ("mcp-session-id", "ignored"),
        ]);
        let info = detect(&ok, Some(&p)).unwrap();
        assert_eq!(info.era, Era::Modern);
        assert_eq!(info.session_id, None);
        let b64 = hdrs(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "=?base64?Z3JlZXQ=?="),
        ]);
        assert!(detect(&b64, Some(&p)).is_ok());
        for bad in [
            hdrs(&[("mcp-method", "tools/call"), ("mcp-name", "greet")]),
            hdrs(&[
                ("mcp-protocol-version", "2025-06-18"),
                ("mcp-method", "tools/call"),
                ("mcp-name", "greet"),
            ]),
            hdrs(&[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-name", "greet"),
            ]),
            hdrs(&[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/list"),
                ("mcp-name", "greet"),
            ]),
            hdrs(&[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
            ]),
            hdrs(&[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
                ("mcp-name", "other"),
            ]),
        ] {
            let err = detect(&bad, Some(&p)).unwrap_err();
            assert_eq!(err.to_jsonrpc().1.code, ErrorCode::HEADER_MISMATCH, "{err}");
        }
    }

    #[test]
    fn legacy_requests() {
        let p = classify(br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#).unwrap();
        let info = detect(&HeaderMap::new(), Some(&p)).unwrap();
        assert_eq!(info.era, Era::Legacy);
        assert_eq!(info.version, None);
        let p = classify(br#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#).unwrap();
        let info = detect(
            &hdrs(&[
                ("mcp-protocol-version", "2025-06-18"),
                ("mcp-session-id", "s1"),
            ]),
            Some(&p),
        )
        .unwrap();
        assert_eq!(info.session_id.as_deref(), Some("s1"));
        assert_eq!(info.version.as_deref(), Some("2025-06-18"));
        let err = detect(&hdrs(&[("mcp-protocol-version", "2026-07-28")]), Some(&p)).unwrap_err();
        assert!(matches!(err, EraError::MissingMetaVersion(_)));
        assert_eq!(err.to_jsonrpc().1.code, ErrorCode::INVALID_PARAMS);
    }

    #[test]
    fn batches_only_in_2025_03_26() {
        let p = classify(br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#).unwrap();
        assert!(detect(&HeaderMap::new(), Some(&p)).is_ok());
        assert!(detect(&hdrs(&[("mcp-protocol-version", "2025-03-26")]), Some(&p)).is_ok());
        let err = detect(&hdrs(&[("mcp-protocol-version", "2025-06-18")]), Some(&p)).unwrap_err();
        assert_eq!(err.to_jsonrpc().1.code, ErrorCode::INVALID_REQUEST);
    }

    #[test]
    fn bodiless_requests() {
        let info = detect(&hdrs(&[("mcp-session-id", "abc")]), None).unwrap();
        assert_eq!(info.era, Era::Legacy);
        assert_eq!(info.session_id.as_deref(), Some("abc"));
        let info = detect(&hdrs(&[("mcp-protocol-version", "2026-07-28")]), None).unwrap();
        assert_eq!(info.era, Era::Modern);
    }

    #[test]
    fn header_decoding() {
        assert_eq!(
            decode_header_value("=?base64?SGVsbG8sIOS4lueVjA==?=").unwrap(),
            "Hello, 世界"
        );
        assert_eq!(decode_header_value("plain").unwrap(), "plain");
        assert!(decode_header_value("=?base64?***?=").is_none());
        for v in ["greet", "Hello, 世界", " padded ", "=?base64?x?="] {
            assert_eq!(decode_header_value(&encode_header_value(v)).unwrap(), v);
        }
        assert_eq!(encode_header_value("greet"), "greet");
    }
}
