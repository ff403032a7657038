//! [`HeadCheck`]: what a server checks in a request head before routing it.
//!
//! The checks HTTP asks of every server, whatever the route, made on the head alone (no body
//! is read for them):
//!
//! | input | status | JSON-RPC code |
//! |---|---|---|
//! | a head larger than [`HeadCheck::max_header_bytes`] (`data.limit` gives it) | 431 | -32600 |
//! | HTTP/1.1 request without `Host` (RFC 9112 §3.2) | 400 | -32600 |
//! | more than one `Host` header | 400 | -32600 |
//! | a `Host` that is not `host[:port]` ([`is_valid_host`]) | 400 | -32600 |
//! | HTTP/2 `:authority` that is not `host[:port]`, or a `Host` naming another host (RFC 9113 §8.3.1) | 400 | -32600 |
//! | HTTP/2 request with neither `:authority` nor `Host` | 400 | -32600 |
//!
//! An HTTP/1.0 request may come without `Host` (HTTP/1.0 did not require it).
//!
//! The size is counted on the parsed head, as the request line and each header field's name
//! and value plus 4 bytes (`: ` and CRLF), for HTTP/1.1 and HTTP/2 alike: the server's
//! parser must also stop reading a head somewhere, and the size it answers there is its own
//! (hyper answers a bare 431); [`HeadCheck::parser_cap`] is a bound for it that leaves this
//! check to answer first.
//!
//! ```
//! use mcp_gateway_layers::head::HeadCheck;
//!
//! let check = HeadCheck::new().max_header_bytes(8 * 1024);
//! let big = "a".repeat(10_000);
//! let req = http::Request::post("/mcp").header("host", "gw").header("x-big", big).body(()).unwrap();
//! assert_eq!(check.refusal(&req).unwrap().status(), 431);
//! let req = http::Request::post("/mcp").header("host", "gw.example").body(()).unwrap();
//! assert!(check.refusal(&req).is_none());
//! let req = http::Request::post("/mcp").header("host", "user@gw.example").body(()).unwrap();
//! assert_eq!(check.refusal(&req).unwrap().status(), 400);
//! ```

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::Full;
use mcp_gateway_core::headers::is_valid_host;
use mcp_gateway_core::jsonrpc::{ErrorCode, JsonRpcError};

/// The default largest request head: 64 KiB (Envoy allows 60 KiB, nginx 4 × 8 KiB by
/// default), room for several large tokens and cookies.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;

/// The checks of a request head made before routing. See the module docs.
#[derive(Clone, Copy, Debug)]
pub struct HeadCheck {
    max_header_bytes: usize,
}

impl Default for HeadCheck {
    fn default() -> Self {
        Self::new()
    }
}

impl HeadCheck {
    /// The checks HTTP requires of every server (`Host`), with heads up to
    /// [`DEFAULT_MAX_HEADER_BYTES`].
    pub const fn new() -> Self {
        Self {
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
        }
    }

    /// Sets the largest request head accepted, in bytes (counted as the module docs say).
    pub const fn max_header_bytes(mut self, bytes: usize) -> Self {
        self.max_header_bytes = bytes;
        self
    }

    /// The largest request head accepted, in bytes.
    pub const fn limit(&self) -> usize {
        self.max_header_bytes
    }

    /// Where a server's parser should stop reading a head (hyper's HTTP/1 `max_buf_size`, its
    /// HTTP/2 `max_header_list_size`): twice the limit, and at least 8 KiB (hyper's smallest
    /// buffer). A head between the limit and this cap gets this check's JSON-RPC answer; a
    /// larger one, the parser's bare 431 — and that is all the memory a head can take.
    pub const fn parser_cap(&self) -> usize {
        let cap = self.max_header_bytes.saturating_mul(2);
        if cap < 8192 {
            8192
        } else {
            cap
        }
    }

    /// The answer for a request whose head fails a check; `None` when it may pass.
    pub fn refusal<B>(&self, req: &Request<B>) -> Option<Response<Full<Bytes>>> {
        let size = head_size(req);
        if size > self.max_header_bytes {
            let limit = self.max_header_bytes;
            return Some(
                JsonRpcError::new(
                    ErrorCode::INVALID_REQUEST,
                    format!("request header fields exceed the limit of {limit} bytes"),
                )
                .with_data(serde_json::json!({ "limit": limit }))
                .into_response(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, None),
            );
        }
        let why = bad_host(req.version(), req.uri(), req.headers())?;
        Some(
            JsonRpcError::new(ErrorCode::INVALID_REQUEST, why)
                .into_response(StatusCode::BAD_REQUEST, None),
        )
    }
}

/// The size of a request head: the request line (`METHOD target HTTP/1.1` and CRLF), each
/// header field's name and value plus `: ` and CRLF, and the empty line.
fn head_size<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    let target = uri.path_and_query().map_or(1, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    let line = req.method().as_str().len() + 1 + target + 11;
    req.headers()
        .iter()
        .fold(line + 2, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

/// What is wrong with the request's `Host` (or HTTP/2 `:authority`), if anything.
fn bad_host(version: Version, uri: &Uri, headers: &HeaderMap) -> Option<&'static str> {
    let mut all = headers.get_all(header::HOST).iter();
    let host = all.next();
    if all.next().is_some() {
        return Some("the request has more than one Host header");
    }
    if host.is_some_and(|h| !is_valid_host(h.as_bytes())) {
        return Some("the Host header is not a valid host[:port]");
    }
    if version == Version::HTTP_2 || version == Version::HTTP_3 {
        // The target's authority travels in `:authority`, which hyper puts in the URI.
        return match (uri.authority(), host) {
            (Some(a), _) if !is_valid_host(a.as_str().as_bytes()) => {
                Some("the :authority pseudo-header is not a valid host[:port]")
            }
            (Some(a), Some(h)) if !same_authority(a.as_str(), h, uri.scheme_str()) => {
                Some("the Host header names another host than :authority")
            }
            (None, None) => Some("the request has neither :authority nor a Host header"),
            _ => None,
        };
    }
    if host.is_none() && version != Version::HTTP_10 && version != Version::HTTP_09 {
        return Some("the request has no Host header");
    }
    None
}

/// Whether `:authority` and `Host` name the same host and port: compared without case, a
/// port that is the scheme's default counting as no port.
fn same_authority(authority: &str, host: &HeaderValue, scheme: Option<&str>) -> bool {
    let default = match scheme {
        Some("http") => Some(":80"),
        Some("https") => Some(":443"),
        _ => None,
    };
    let bare = |s: &'_ str| -> String {
        let s = s.to_ascii_lowercase();
        match default {
            Some(d) if s.ends_with(d) => s[..s.len() - d.len()].to_owned(),
            _ => s,
        }
    };
    host.to_str().is_ok_and(|h| bare(h) == bare(authority))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn req(version: Version, uri: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::post(uri).version(version);
        for h in hosts {
            b = b.header(header::HOST, *h);
        }
        b.body(()).unwrap()
    }

    fn refused(r: &Request<()>) -> Option<u16> {
        HeadCheck::new().refusal(r).map(|r| r.status().as_u16())
    }

    #[test]
    fn host_is_required_once_and_valid() {
        use Version as V;
        assert_eq!(refused(&req(V::HTTP_11, "/mcp", &["gw"])), None);
        assert_eq!(refused(&req(V::HTTP_11, "/mcp", &[])), Some(400));
        assert_eq!(refused(&req(V::HTTP_11, "/mcp", &["gw", "gw"])), Some(400));
        assert_eq!(refused(&req(V::HTTP_11, "/mcp", &["gw/x"])), Some(400));
        // HTTP/1.0 did not require Host, but one sent must still be valid.
        assert_eq!(refused(&req(V::HTTP_10, "/mcp", &[])), None);
        assert_eq!(refused(&req(V::HTTP_10, "/mcp", &["a b"])), Some(400));
        // HTTP/2: `:authority`, with a Host that agrees or none.
        let h2 = "http://gw.example/mcp";
        assert_eq!(refused(&req(V::HTTP_2, h2, &[])), None);
        assert_eq!(refused(&req(V::HTTP_2, h2, &["GW.example"])), None);
        assert_eq!(refused(&req(V::HTTP_2, h2, &["gw.example:80"])), None);
        assert_eq!(refused(&req(V::HTTP_2, h2, &["other.example"])), Some(400));
        assert_eq!(
            refused(&req(V::HTTP_2, h2, &["gw.example:8080"])),
            Some(400)
        );
        assert_eq!(
            refused(&req(V::HTTP_2, "http://u@gw.example/mcp", &[])),
            Some(400)
        );
        assert_eq!(refused(&req(V::HTTP_2, "/mcp", &["gw"])), None);
        assert_eq!(refused(&req(V::HTTP_2, "/mcp", &[])), Some(400));
    }

    #[test]
    fn heads_over_the_limit_get_431() {
        let check = HeadCheck::new().max_header_bytes(1000);
        let sized = |value: usize| {
            Request::post("/mcp")
                .header(header::HOST, "gw")
                .header("x-pad", "a".repeat(value))
                .body(())
                .unwrap()
        };
        // `POST /mcp HTTP/1.1` CRLF (20), `host: gw` CRLF (10), `x-pad: …` CRLF (9 + value),
        // CRLF (2): the bytes an HTTP/1.1 client sends.
        assert_eq!(head_size(&sized(100)), 20 + 10 + 109 + 2);
        assert!(check.refusal(&sized(1000 - 41)).is_none());
        let resp = check.refusal(&sized(1000 - 40)).unwrap();
        assert_eq!(resp.status(), 431);
        assert_eq!(check.parser_cap(), 8192);
        assert_eq!(HeadCheck::new().parser_cap(), 128 * 1024);
    }

    #[test]
    fn refusals_are_jsonrpc_errors() {
        let resp = HeadCheck::new()
            .refusal(&req(Version::HTTP_11, "/mcp", &[]))
            .unwrap();
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
    }
}
