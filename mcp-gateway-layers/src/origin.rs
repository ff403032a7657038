//! Origin validation: the DNS-rebinding defence MCP servers must apply.
//!
//! Browsers send `Origin` on cross-site requests. A page on `https://evil.example` that makes the
//! browser talk to a gateway on `127.0.0.1` is refused here with 403. Requests without `Origin`
//! (agents, command-line clients) pass; by default so do localhost origins.
//!
//! ```
//! use mcp_gateway_layers::origin::{AllowedOrigins, OriginGuardLayer};
//!
//! let origins = AllowedOrigins::default().allow("https://app.example.com").unwrap();
//! let layer = OriginGuardLayer::new(origins);
//! # let _ = layer;
//! ```

use crate::body::{refused, Refused};
use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use mcp_gateway_core::jsonrpc::{ErrorCode, JsonRpcError};
use pin_project_lite::pin_project;
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_layer::Layer;
use tower_service::Service;

/// Why an origin could not be added to the allow list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid origin {0:?}: expected scheme://host[:port], or *")]
pub struct InvalidOrigin(pub String);

/// Which `Origin` values may reach the upstream.
#[derive(Clone, Debug)]
pub struct AllowedOrigins {
    exact: HashSet<String>,
    any: bool,
    localhost: bool,
}

impl Default for AllowedOrigins {
    /// Localhost origins (`localhost`, `127.0.0.0/8`, `[::1]`, any scheme and port) only.
    fn default() -> Self {
        Self {
            exact: HashSet::new(),
            any: false,
            localhost: true,
        }
    }
}

impl AllowedOrigins {
    /// Allows one origin (`https://app.example.com`, `http://host:8080`), or every origin
    /// with `*`.
    pub fn allow(mut self, origin: &str) -> Result<Self, InvalidOrigin> {
        if origin == "*" {
            self.any = true;
            return Ok(self);
        }
        let norm = normalize(origin).ok_or_else(|| InvalidOrigin(origin.to_owned()))?;
        self.exact.insert(norm);
        Ok(self)
    }

    /// Whether localhost origins pass (default true).
    pub fn allow_localhost(mut self, yes: bool) -> Self {
        self.localhost = yes;
        self
    }

    /// True when a request with this `Origin` value may pass.
    pub fn permits(&self, origin: &str) -> bool {
        if self.any {
            return true;
        }
        let Some(norm) = normalize(origin) else {
            return false;
        };
        if self.exact.contains(&norm) {
            return true;
        }
        self.localhost && is_localhost_origin(&norm)
    }
}

fn normalize(origin: &str) -> Option<String> {
    let origin = origin.trim().trim_end_matches('/');
    let (scheme, rest) = origin.split_once("://")?;
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        || rest.is_empty()
        || rest.contains(['/', '?', '#', '@', ' '])
    {
        return None;
    }
    Some(format!(
        "{}://{}",
        scheme.to_ascii_lowercase(),
        rest.to_ascii_lowercase()
    ))
}

fn is_localhost_origin(norm: &str) -> bool {
    let Some((_, hostport)) = norm.split_once("://") else {
        return false;
    };
    let host = if let Some(rest) = hostport.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        hostport.split(':').next().unwrap_or_default()
    };
    host == "localhost"
        || host.ends_with(".localhost")
        || host == "::1"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Applies [`OriginGuard`].
#[derive(Clone, Debug)]
pub struct OriginGuardLayer {
    allowed: Arc<AllowedOrigins>,
}

impl OriginGuardLayer {
    /// A layer that admits the given origins.
    pub fn new(allowed: AllowedOrigins) -> Self {
        Self {
            allowed: Arc::new(allowed),
        }
    }
}

impl<S> Layer<S> for OriginGuardLayer {
    type Service = OriginGuard<S>;
    fn layer(&self, inner: S) -> Self::Service {
        OriginGuard {
            inner,
            allowed: self.allowed.clone(),
        }
    }
}

/// Refuses requests whose `Origin` is not allowed with 403 and a JSON-RPC error.
#[derive(Clone, Debug)]
pub struct OriginGuard<S> {
    inner: S,
    allowed: Arc<AllowedOrigins>,
}

impl<S> OriginGuard<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The 403 answer for a request whose `Origin` header is present and not allowed; `None`
    /// when the request may pass. This is the whole check [`Service::call`] makes, for
    /// callers that drive the inner service themselves.
    pub fn refusal(&self, headers: &http::HeaderMap) -> Option<Response<Full<Bytes>>> {
        let origin = headers.get(header::ORIGIN)?;
        if origin.to_str().is_ok_and(|o| self.allowed.permits(o)) {
            return None;
        }
        let shown = String::from_utf8_lossy(origin.as_bytes()).into_owned();
        Some(
            JsonRpcError::new(
                ErrorCode::GATEWAY_REFUSED,
                format!("Origin {shown:?} is not allowed"),
            )
            .into_response(StatusCode::FORBIDDEN, None),
        )
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for OriginGuard<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<Refused<ResBody>>;
    type Error = S::Error;
    type Future = OriginFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        if let Some(resp) = self.refusal(req.headers()) {
            return OriginFuture::Reject {
                resp: Some(refused(resp)),
            };
        }
        OriginFuture::Inner {
            fut: self.inner.call(req),
        }
    }
}

pin_project! {
    /// Response future of [`OriginGuard`].
    #[project = OriginFutureProj]
    #[allow(missing_docs)]
    pub enum OriginFuture<F, B> {
        /// Waiting for the inner service.
        Inner {
            #[pin]
            fut: F,
        },
        /// Answered here.
        Reject {
            resp: Option<Response<Refused<B>>>,
        },
    }
}

impl<F, B, E> Future for OriginFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<Refused<B>>, E>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            OriginFutureProj::Inner { fut } => {
                fut.poll(cx).map(|r| r.map(|resp| resp.map(Either::Left)))
            }
            OriginFutureProj::Reject { resp } => match resp.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn default_allows_localhost_only() {
        let a = AllowedOrigins::default();
        for ok in [
            "http://localhost",
            "http://localhost:5173",
            "https://127.0.0.1:8443",
            "http://[::1]:80",
            "http://app.localhost",
            "HTTP://LOCALHOST",
        ] {
            assert!(a.permits(ok), "{ok}");
        }
        for bad in [
            "https://evil.example",
            "null",
            "http://localhost.evil.example",
            "http://127.0.0.1.evil.example",
            "http://10.0.0.1",
            "",
            "http://user@localhost",
        ] {
            assert!(!a.permits(bad), "{bad}");
        }
    }

    #[test]
    fn configured_origins() {
        let a = AllowedOrigins::default()
            .allow("https://App.Example.com/")
            .unwrap()
            .allow_localhost(false);
        assert!(a.permits("https://app.example.com"));
        assert!(!a.permits("http://app.example.com"));
        assert!(!a.permits("http://localhost"));
        assert!(AllowedOrigins::default().allow("nope").is_err());
        assert!(AllowedOrigins::default()
            .allow("*")
            .unwrap()
            .permits("https://x.y"));
    }
}
