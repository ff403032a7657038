//! [`Outcome`]: how an exchange ended, decided once, by one set of rules, for everything that
//! reports it — the audit record's `outcome`, the span's `error.type` and the metrics'
//! `outcome` label, the access log.
//!
//! [`classify`] reads the per-request [`Record`] (a layer's refusal, the session, the HTTP
//! method, what was asked) and the [`Ending`] of the response (status, answers seen, the first
//! JSON-RPC error code, tool errors, how the stream ended). In order, the first rule that
//! applies wins:
//!
//! | rule | outcome |
//! |---|---|
//! | a layer refused (401, 403, 429, 404 for a session, bad input, 503) | `denied_auth`, `denied_permission`, `rate_limited`, `bad_session`, `bad_input`, `unavailable` |
//! | status 502 or 504, or an answer with the gateway's -32050/-32051 | `upstream_error` |
//! | an answer carried a JSON-RPC error | `error` |
//! | a tool result with `isError: true` | `tool_error` |
//! | the client left after every answer it asked for (or a 202, or a GET stream) | `ok` |
//! | the upstream broke the stream | `upstream_error` |
//! | the client left before its answer | `client_gone` |
//! | cut at the end of the shutdown grace period | `shutdown` |
//! | 404 on a legacy session | `bad_session` |
//! | any other 4xx or 5xx | `http_error` |
//! | otherwise | `ok` |
//!
//! ```
//! use http::StatusCode;
//! use mcp_gateway_core::exchange::{Denial, DenialKind, Record};
//! use mcp_gateway_core::observe::{EndReason, Ending};
//! use mcp_gateway_core::outcome::{classify, Outcome};
//!
//! let mut record = Record::default();
//! let end = Ending::new(EndReason::Completed, StatusCode::OK);
//! assert_eq!(classify(&record, &end).outcome, Outcome::Ok);
//!
//! record.denial = Some(Denial::new("limits", DenialKind::RateLimited, StatusCode::TOO_MANY_REQUESTS, "over"));
//! let end = Ending::new(EndReason::Completed, StatusCode::TOO_MANY_REQUESTS);
//! let c = classify(&record, &end);
//! assert_eq!(c.outcome.as_str(), "rate_limited");
//! assert_eq!(c.error_type.as_deref(), Some("429"));
//! ```

use crate::exchange::{DenialKind, Record};
use crate::jsonrpc::ErrorCode;
use crate::observe::{EndReason, Ending};
use http::{Method, StatusCode};
use std::borrow::Cow;

/// How an exchange ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// Answered, no error.
    Ok,
    /// A JSON-RPC error answer.
    Error,
    /// A tool result with `isError: true`.
    ToolError,
    /// Refused: no or bad credentials (401).
    DeniedAuth,
    /// Refused: not allowed (403).
    DeniedPermission,
    /// Refused: over a rate or token budget (429).
    RateLimited,
    /// Refused: unknown, forged, expired or ended session (404).
    BadSession,
    /// Refused: the request could not be read or understood (400, 405, 413, 415).
    BadInput,
    /// Refused: the gateway cannot take the request now (503).
    Unavailable,
    /// The upstream could not be reached, timed out, or broke the stream.
    UpstreamError,
    /// The client went away before its answer.
    ClientGone,
    /// Cut at the end of the shutdown grace period.
    Shutdown,
    /// Another HTTP error, with no JSON-RPC error.
    HttpError,
}

impl Outcome {
    /// Every outcome, in the order of the docs.
    pub const ALL: [Self; 13] = [
        Self::Ok,
        Self::Error,
        Self::ToolError,
        Self::DeniedAuth,
        Self::DeniedPermission,
        Self::RateLimited,
        Self::BadSession,
        Self::BadInput,
        Self::Unavailable,
        Self::UpstreamError,
        Self::ClientGone,
        Self::Shutdown,
        Self::HttpError,
    ];

    /// The name written in audit records, span attributes and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::ToolError => "tool_error",
            Self::DeniedAuth => "denied_auth",
            Self::DeniedPermission => "denied_permission",
            Self::RateLimited => "rate_limited",
            Self::BadSession => "bad_session",
            Self::BadInput => "bad_input",
            Self::Unavailable => "unavailable",
            Self::UpstreamError => "upstream_error",
            Self::ClientGone => "client_gone",
            Self::Shutdown => "shutdown",
            Self::HttpError => "http_error",
        }
    }

    /// The outcome named `name`, written with underscores or hyphens (`rate_limited`,
    /// `rate-limited`), in any case.
    pub fn from_name(name: &str) -> Option<Self> {
        let name = name.trim();
        Self::ALL.into_iter().find(|o| {
            let s = o.as_str();
            s.len() == name.len()
                && s.bytes().zip(name.bytes()).all(|(a, b)| {
                    let b = b.to_ascii_lowercase();
                    a == b || (a == b'_' && b == b'-')
                })
        })
    }

    /// True for [`Outcome::Ok`].
    pub fn is_ok(self) -> bool {
        self == Self::Ok
    }

    /// The outcome of a refusal of this kind.
    pub fn of_denial(kind: DenialKind) -> Self {
        match kind {
            DenialKind::Unauthenticated => Self::DeniedAuth,
            DenialKind::Forbidden => Self::DeniedPermission,
            DenialKind::RateLimited => Self::RateLimited,
            DenialKind::UnknownSession => Self::BadSession,
            DenialKind::BadRequest => Self::BadInput,
            DenialKind::Unavailable => Self::Unavailable,
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An exchange's [`Outcome`] and the error type reported with it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Classified {
    /// How the exchange ended.
    pub outcome: Outcome,
    /// `error.type` of the spans and the `error_type` metric label: the first JSON-RPC error
    /// code of the answers, else `tool_error`, else the HTTP status when it is an error, else
    /// the outcome's name. `None` exactly when the outcome is [`Outcome::Ok`].
    pub error_type: Option<Cow<'static, str>>,
}

/// Answers the request asked for: one per request message of its body.
fn expected_answers(record: &Record) -> u64 {
    record
        .request
        .as_ref()
        .and_then(|v| v.parsed())
        .map_or(0, |p| {
            p.messages()
                .iter()
                .filter(|m| m.kind().expects_response())
                .count() as u64
        })
}

/// The outcome of an exchange: see the module docs for the rules.
pub fn outcome(record: &Record, end: &Ending) -> Outcome {
    if let Some(d) = &record.denial {
        return Outcome::of_denial(d.kind);
    }
    let upstream_codes = [
        i64::from(ErrorCode::UPSTREAM_UNAVAILABLE.0),
        i64::from(ErrorCode::UPSTREAM_TIMEOUT.0),
    ];
    if matches!(
        end.status,
        StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT
    ) || end.error_code.is_some_and(|c| upstream_codes.contains(&c))
    {
        return Outcome::UpstreamError;
    }
    // A successful status over a body that is not MCP (an HTML page, JSON that is not
    // JSON-RPC) answering a request: the upstream failed, whatever was passed on.
    if end.malformed
        && end.status.is_success()
        && record
            .http_method
            .as_ref()
            .is_none_or(|m| m == Method::POST)
        && expected_answers(record) > 0
    {
        return Outcome::UpstreamError;
    }
    if end.error_code.is_some() {
        return Outcome::Error;
    }
    if end.tool_error {
        return Outcome::ToolError;
    }
    let delivered = || {
        let expected = expected_answers(record);
        (expected > 0 && end.answers >= expected)
            || end.status == StatusCode::ACCEPTED
            || (record.http_method == Some(Method::GET) && end.status.is_success())
    };
    match end.reason {
        // The answer was delivered (a client may close an SSE stream once it has it), there
        // was none to deliver, or the stream was a GET listening stream, which ends when the
        // client closes it.
        EndReason::ClientGone | EndReason::DroppedUnpolled if delivered() => Outcome::Ok,
        EndReason::UpstreamFailed => Outcome::UpstreamError,
        EndReason::ClientGone | EndReason::DroppedUnpolled => Outcome::ClientGone,
        EndReason::Shutdown => Outcome::Shutdown,
        _ => {
            let session = record.session.is_some()
                || record
                    .request
                    .as_ref()
                    .is_some_and(|v| v.protocol().session_id.is_some());
            if end.status == StatusCode::NOT_FOUND && session {
                Outcome::BadSession
            } else if end.status.is_client_error() || end.status.is_server_error() {
                Outcome::HttpError
            } else {
                Outcome::Ok
            }
        }
    }
}

/// The outcome of an exchange and its error type: see the module docs.
pub fn classify(record: &Record, end: &Ending) -> Classified {
    let outcome = outcome(record, end);
    let error_type = if outcome.is_ok() {
        None
    } else if let Some(code) = end.error_code {
        Some(Cow::Owned(code.to_string()))
    } else if end.tool_error {
        Some(Cow::Borrowed("tool_error"))
    } else if end.status.is_client_error() || end.status.is_server_error() {
        Some(Cow::Owned(end.status.as_str().to_owned()))
    } else {
        Some(Cow::Borrowed(outcome.as_str()))
    };
    Classified {
        outcome,
        error_type,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::exchange::Denial;
    use crate::McpRequest;
    use bytes::Bytes;
    use http::HeaderMap;

    fn view(body: &'static str, session: Option<&'static str>) -> McpRequest {
        let mut h = HeaderMap::new();
        if let Some(s) = session {
            h.insert("mcp-session-id", s.parse().unwrap());
        }
        McpRequest::parse(&h, Some(Bytes::from_static(body.as_bytes()))).unwrap()
    }

    const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t"}}"#;
    const NOTE: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;

    struct Row {
        what: &'static str,
        denial: Option<DenialKind>,
        method: Method,
        body: Option<&'static str>,
        session: bool,
        status: u16,
        reason: EndReason,
        answers: u64,
        code: Option<i64>,
        tool_error: bool,
        malformed: bool,
        outcome: &'static str,
        error_type: Option<&'static str>,
    }

    fn row(what: &'static str, status: u16, reason: EndReason) -> Row {
        Row {
            what,
            denial: None,
            method: Method::POST,
            body: Some(CALL),
            session: false,
            status,
            reason,
            answers: 0,
            code: None,
            tool_error: false,
            malformed: false,
            outcome: "ok",
            error_type: None,
        }
    }

    impl Row {
        fn answered(mut self, n: u64) -> Self {
            self.answers = n;
            self
        }
        fn code(mut self, c: i64) -> Self {
            self.code = Some(c);
            self.answers = self.answers.max(1);
            self
        }
        fn tool_error(mut self) -> Self {
            self.tool_error = true;
            self.answers = self.answers.max(1);
            self
        }
        fn malformed(mut self) -> Self {
            self.malformed = true;
            self
        }
        fn denied(mut self, k: DenialKind) -> Self {
            self.denial = Some(k);
            self
        }
        fn method(mut self, m: Method, body: Option<&'static str>) -> Self {
            self.method = m;
            self.body = body;
            self
        }
        fn session(mut self) -> Self {
            self.session = true;
            self
        }
        fn is(mut self, outcome: &'static str, error_type: Option<&'static str>) -> Self {
            self.outcome = outcome;
            self.error_type = error_type;
            self
        }
    }

    /// The mapping, pinned for every status and ending the gateway produces.
    #[test]
    fn outcome_table() {
        use EndReason::*;
        let rows = [
            row("answered", 200, Completed).answered(1).is("ok", None),
            row("answered, client closed the stream after", 200, ClientGone)
                .answered(1)
                .is("ok", None),
            row("notification accepted", 202, Completed)
                .method(Method::POST, Some(NOTE))
                .is("ok", None),
            row(
                "notification accepted, body never polled",
                202,
                DroppedUnpolled,
            )
            .method(Method::POST, Some(NOTE))
            .is("ok", None),
            row("GET stream closed by the client", 200, ClientGone)
                .method(Method::GET, None)
                .is("ok", None),
            row("DELETE of a session", 200, Completed)
                .method(Method::DELETE, None)
                .session()
                .is("ok", None),
            row("JSON-RPC error answer", 200, Completed)
                .code(-32602)
                .is("error", Some("-32602")),
            row("JSON-RPC error answer over 500", 500, Completed)
                .code(-32603)
                .is("error", Some("-32603")),
            row("tool error", 200, Completed)
                .tool_error()
                .is("tool_error", Some("tool_error")),
            row("401", 401, Completed)
                .code(-32055)
                .denied(DenialKind::Unauthenticated)
                .is("denied_auth", Some("-32055")),
            row("403", 403, Completed)
                .code(-32056)
                .denied(DenialKind::Forbidden)
                .is("denied_permission", Some("-32056")),
            row("429", 429, Completed)
                .code(-32052)
                .denied(DenialKind::RateLimited)
                .is("rate_limited", Some("-32052")),
            row("429, client left before reading it", 429, ClientGone)
                .denied(DenialKind::RateLimited)
                .is("rate_limited", Some("429")),
            row("404 for a session (refused)", 404, Completed)
                .code(-32001)
                .session()
                .denied(DenialKind::UnknownSession)
                .is("bad_session", Some("-32001")),
            row("400 bad input", 400, Completed)
                .method(Method::POST, None)
                .code(-32700)
                .denied(DenialKind::BadRequest)
                .is("bad_input", Some("-32700")),
            row("413", 413, Completed)
                .method(Method::POST, None)
                .code(-32600)
                .denied(DenialKind::BadRequest)
                .is("bad_input", Some("-32600")),
            row("503 refused", 503, Completed)
                .code(-32054)
                .denied(DenialKind::Unavailable)
                .is("unavailable", Some("-32054")),
            row("502 from the gateway", 502, Completed)
                .code(-32050)
                .is("upstream_error", Some("-32050")),
            row("504 from the gateway", 504, Completed)
                .code(-32051)
                .is("upstream_error", Some("-32051")),
            row("502 with no JSON-RPC body", 502, Completed).is("upstream_error", Some("502")),
            row("upstream broke the stream", 200, UpstreamFailed)
                .is("upstream_error", Some("upstream_error")),
            row(
                "upstream broke the stream after answering",
                200,
                UpstreamFailed,
            )
            .answered(1)
            .is("upstream_error", Some("upstream_error")),
            row("client left before its answer", 200, ClientGone)
                .is("client_gone", Some("client_gone")),
            row("client left before the head (499)", 499, ClientGone)
                .is("client_gone", Some("499")),
            row("body dropped unread", 200, DroppedUnpolled).is("client_gone", Some("client_gone")),
            row("cut at shutdown", 200, Shutdown).is("shutdown", Some("shutdown")),
            row("404 from the upstream on a session", 404, Completed)
                .session()
                .is("bad_session", Some("404")),
            row("404 without a session", 404, Completed).is("http_error", Some("404")),
            row("500 without a JSON-RPC error", 500, Completed).is("http_error", Some("500")),
            row("503 from the upstream", 503, Completed).is("http_error", Some("503")),
            row("200 over HTML or JSON that is not JSON-RPC", 200, Completed)
                .malformed()
                .is("upstream_error", Some("upstream_error")),
            row("the same, client left after the body", 200, ClientGone)
                .malformed()
                .is("upstream_error", Some("upstream_error")),
            row("not MCP, but no answer was expected", 200, Completed)
                .method(Method::POST, Some(NOTE))
                .malformed()
                .is("ok", None),
            row("DELETE answered with text", 200, Completed)
                .method(Method::DELETE, None)
                .session()
                .malformed()
                .is("ok", None),
        ];
        for r in rows {
            let mut rec = Record {
                http_method: Some(r.method.clone()),
                ..Record::default()
            };
            rec.request = r
                .body
                .map(|b| view(b, r.session.then_some("s1")))
                .or_else(|| {
                    r.session.then(|| {
                        McpRequest::parse(
                            &[(
                                http::header::HeaderName::from_static("mcp-session-id"),
                                "s1".parse().unwrap(),
                            )]
                            .into_iter()
                            .collect(),
                            None,
                        )
                        .unwrap()
                    })
                });
            rec.denial = r
                .denial
                .map(|k| Denial::new("test", k, StatusCode::from_u16(r.status).unwrap(), "why"));
            let mut end = Ending::new(r.reason, StatusCode::from_u16(r.status).unwrap());
            end.answers = r.answers;
            end.error_code = r.code;
            end.tool_error = r.tool_error;
            end.malformed = r.malformed;
            let c = classify(&rec, &end);
            assert_eq!(c.outcome.as_str(), r.outcome, "{}", r.what);
            assert_eq!(c.error_type.as_deref(), r.error_type, "{}", r.what);
            assert_eq!(c.error_type.is_none(), c.outcome.is_ok(), "{}", r.what);
        }
    }

    #[test]
    fn names_round_trip_in_both_spellings() {
        for o in Outcome::ALL {
            assert_eq!(Outcome::from_name(o.as_str()), Some(o));
            assert_eq!(Outcome::from_name(&o.as_str().replace('_', "-")), Some(o));
            assert_eq!(Outcome::from_name(&o.as_str().to_uppercase()), Some(o));
        }
        assert_eq!(Outcome::from_name("no-such-value"), None);
        assert_eq!(Outcome::from_name("rate_limited_"), None);
    }
}
