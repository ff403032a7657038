//! [`McpRequest`]: the parsed view of a request that travels in request extensions.
//!
//! The first layer that needs to know what a request is classifies its body and inserts an
//! `McpRequest`; every later layer reads it with [`McpRequest::from_extensions`] instead of
//! parsing again. The view holds the body bytes it was made from, so a layer that rewrites the
//! body (trace context in `_meta`) replaces the view with [`McpRequest::with_body`].
//!
//! ```
//! use bytes::Bytes;
//! use http::Request;
//! use mcp_gateway_core::McpRequest;
//!
//! let body = Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#);
//! let mut req = Request::post("/mcp").body(()).unwrap();
//! let view = McpRequest::parse(req.headers(), Some(body)).unwrap();
//! req.extensions_mut().insert(view);
//! let seen = McpRequest::from_extensions(req.extensions()).unwrap();
//! assert_eq!(seen.single().unwrap().method(), Some("tools/list"));
//! ```

use crate::era::{detect, EraError, ProtocolInfo};
use crate::jsonrpc::{JsonRpcError, RequestId};
use crate::message::{classify, ClassifyError, McpMessage, ParsedBody};
use bytes::Bytes;
use http::{Extensions, HeaderMap, StatusCode};
use std::sync::Arc;

/// Why a request could not be understood.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The body is not JSON-RPC.
    #[error(transparent)]
    Classify(#[from] ClassifyError),
    /// Headers and body disagree.
    #[error(transparent)]
    Era(#[from] EraError),
}

impl RequestError {
    /// The HTTP status and JSON-RPC error for this failure.
    pub fn to_jsonrpc(&self) -> (StatusCode, JsonRpcError) {
        match self {
            Self::Classify(e) => (StatusCode::BAD_REQUEST, e.to_jsonrpc()),
            Self::Era(e) => e.to_jsonrpc(),
        }
    }
}

#[derive(Debug)]
struct Inner {
    body: Option<Bytes>,
    parsed: Option<ParsedBody>,
    protocol: ProtocolInfo,
}

/// The parsed view of one HTTP request to an MCP endpoint. Cheap to clone.
#[derive(Clone, Debug)]
pub struct McpRequest(Arc<Inner>);

impl McpRequest {
    /// Classifies `body` (absent for GET and DELETE) and works out the protocol era.
    pub fn parse(headers: &HeaderMap, body: Option<Bytes>) -> Result<Self, RequestError> {
        let parsed = body.as_deref().map(classify).transpose()?;
        let protocol = detect(headers, parsed.as_ref())?;
        Ok(Self(Arc::new(Inner {
            body,
            parsed,
            protocol,
        })))
    }

    /// Assembles a view from parts already computed (a layer that classified the body itself
    /// to keep the request id for its error answers).
    pub fn from_parts(
        body: Option<Bytes>,
        parsed: Option<ParsedBody>,
        protocol: ProtocolInfo,
    ) -> Self {
        Self(Arc::new(Inner {
            body,
            parsed,
            protocol,
        }))
    }

    /// The same request with a rewritten body. The caller promises `body` keeps the messages'
    /// meaning (only `_meta` changed); the body is classified again so spans stay right.
    pub fn with_body(&self, body: Bytes) -> Result<Self, ClassifyError> {
        let parsed = classify(&body)?;
        Ok(Self(Arc::new(Inner {
            body: Some(body),
            parsed: Some(parsed),
            protocol: self.0.protocol.clone(),
        })))
    }

    /// The same request with a body that `edits` made of this one's ([`crate::meta`] edits:
    /// `_meta` only). The spans are moved rather than the body classified again.
    pub fn with_edited_body(&self, body: Bytes, edits: &[crate::message::Edit]) -> Self {
        Self(Arc::new(Inner {
            parsed: self.0.parsed.as_ref().map(|p| p.edited(edits)),
            body: Some(body),
            protocol: self.0.protocol.clone(),
        }))
    }

    /// The view of this request sent on with its target (`params.name`, else `params.uri`)
    /// replaced by `value`, as `protocol` (a virtual server sends a call to the upstream
    /// that owns it: the original name, the upstream's session). The body is spliced and the
    /// spans moved, nothing is parsed again; `None` when the request has no such target.
    pub fn with_target(&self, value: &str, protocol: ProtocolInfo) -> Option<Self> {
        let parsed = self.0.parsed.as_ref()?;
        let body = self.0.body.as_ref()?;
        let m = parsed.single()?;
        let span = m.name_span().or_else(|| m.uri_span())?;
        let quoted = serde_json::to_string(value).ok()?;
        let mut out = Vec::with_capacity(body.len() + quoted.len());
        out.extend_from_slice(body.get(..span.start)?);
        out.extend_from_slice(quoted.as_bytes());
        out.extend_from_slice(body.get(span.end..)?);
        let parsed = parsed.with_target(quoted.len(), value)?;
        Some(Self(Arc::new(Inner {
            body: Some(Bytes::from(out)),
            parsed: Some(parsed),
            protocol,
        })))
    }

    /// The view inserted by an earlier layer, if any.
    pub fn from_extensions(ext: &Extensions) -> Option<&Self> {
        ext.get::<Self>()
    }

    /// The body bytes (POST only).
    pub fn body(&self) -> Option<&Bytes> {
        self.0.body.as_ref()
    }

    /// The classified body (POST only).
    pub fn parsed(&self) -> Option<&ParsedBody> {
        self.0.parsed.as_ref()
    }

    /// The message of a non-batch POST.
    pub fn single(&self) -> Option<&McpMessage> {
        self.parsed().and_then(ParsedBody::single)
    }

    /// The id to answer with when rejecting this request.
    pub fn reply_id(&self) -> Option<&RequestId> {
        self.parsed().and_then(ParsedBody::reply_id)
    }

    /// Era, version and legacy session id.
    pub fn protocol(&self) -> &ProtocolInfo {
        &self.0.protocol
    }
}
