//! [`ConnInfo`]: the `X-Forwarded-*` headers a request carries to the upstream.

use http::{header, HeaderValue, Request};
use std::net::SocketAddr;

static X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: http::HeaderName = http::HeaderName::from_static("x-forwarded-host");

/// The client connection a request arrived on: what a reverse proxy tells the upstream
/// about it (`X-Forwarded-For`, `-Proto`, `-Host`). Made once per connection.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The client's IP, ready to go into `X-Forwarded-For`.
    peer_ip: HeaderValue,
    /// Whether the connection is TLS.
    pub tls: bool,
}

impl ConnInfo {
    /// Information for a new connection.
    pub fn new(peer: SocketAddr, tls: bool) -> Self {
        let peer_ip = HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self { peer, peer_ip, tls }
    }
}

impl ConnInfo {
    /// Appends the client to `X-Forwarded-For` and records the scheme and host it used, as
    /// reverse proxies conventionally do, so upstream logs can name the real client.
    pub fn forward<B>(&self, req: &mut Request<B>) {
        forwarded(req, self);
    }
}

fn forwarded<B>(req: &mut Request<B>, conn: &ConnInfo) {
    // HTTP/2 carries the host in the URI's authority, HTTP/1.1 in the Host header. Only a
    // valid `host[:port]` is passed on: a value the client made up (a list, a path, user
    // information) would otherwise reach the upstream as the gateway's word.
    let host = match req.headers().get(header::HOST) {
        Some(h) => Some(h.clone()),
        None => req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    }
    .filter(|h| mcp_gateway_core::headers::is_valid_host(h.as_bytes()));
    let headers = req.headers_mut();
    let chain = match headers.get(&X_FORWARDED_FOR).map(HeaderValue::as_bytes) {
        Some(prior) if !prior.trim_ascii().is_empty() => {
            let mut joined = Vec::with_capacity(prior.len() + 2 + conn.peer_ip.len());
            joined.extend_from_slice(prior);
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(conn.peer_ip.as_bytes());
            HeaderValue::from_bytes(&joined).unwrap_or_else(|_| conn.peer_ip.clone())
        }
        _ => conn.peer_ip.clone(),
    };
    headers.insert(X_FORWARDED_FOR.clone(), chain);
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
    );
    // The gateway speaks for `X-Forwarded-Host`: without a valid host of its own, a client's
    // copy is removed rather than passed on.
    match host {
        Some(host) => headers.insert(X_FORWARDED_HOST.clone(), host),
        None => headers.remove(&X_FORWARDED_HOST),
    };
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn forwarded_host(req: http::request::Builder) -> Option<String> {
        let mut req = req.body(()).unwrap();
        ConnInfo::new("127.0.0.1:1".parse().unwrap(), false).forward(&mut req);
        req.headers()
            .get(&X_FORWARDED_HOST)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn only_a_valid_host_is_forwarded() {
        let b = || Request::post("/mcp").header(&X_FORWARDED_HOST, "client-said");
        assert_eq!(
            forwarded_host(b().header(header::HOST, "gw.example:8080")).as_deref(),
            Some("gw.example:8080")
        );
        assert_eq!(
            forwarded_host(Request::post("http://gw.example/mcp")).as_deref(),
            Some("gw.example")
        );
        // Invalid or absent: neither the bad value nor the client's own header goes on.
        assert_eq!(forwarded_host(b().header(header::HOST, "a, b")), None);
        assert_eq!(forwarded_host(b().header(header::HOST, "u@gw")), None);
        assert_eq!(forwarded_host(b()), None);
    }
}
