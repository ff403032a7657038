//! [`Upstream`]: the service that forwards MCP requests to a server.
//!
//! - Request and response bodies stream through; an SSE response reaches the client event by
//!   event, as the server writes it (nothing is buffered).
//! - GET streams and DELETE are forwarded like POST.
//! - Hop-by-hop headers are removed both ways; `Mcp-*` headers (including unknown
//!   `Mcp-Param-*` ones) pass untouched. The client's `Authorization` header is **never**
//!   forwarded: the gateway does not pass tokens through to servers.
//! - A connect timeout and a response-start timeout apply; streams have no total timeout, but
//!   the silence between two reads of an answer's body is bounded (`read_timeout` for a JSON
//!   answer, `sse_idle_timeout` for an SSE stream): past it the body ends with
//!   [`UpstreamStalled`], the client's answer fails instead of hanging, and the exchange ends
//!   as `upstream_error`.
//! - An upstream with several instances spreads new work round-robin and keeps each legacy
//!   session (`Mcp-Session-Id`) on the instance that issued it, within this process only. For
//!   sessions that survive restarts and span gateway replicas, put
//!   [`SessionAffinity`](crate::sessions::SessionAffinity) over [`Upstream::instances`].
//! - A connection that cannot be made is answered with the [`InstanceUnreachable`] response
//!   extension, so that a balancing layer above can eject the instance. With several
//!   instances of its own, a request that could not be sent to its instance at all (connection
//!   refused, or closed before a byte of it was written) goes once to the next instance, unless
//!   it belongs to a session pinned to the first; nothing is sent again once any of it may
//!   have reached an instance.
//! - Failures are answered, not raised: 502 with JSON-RPC -32050 when the server cannot be
//!   reached, 504 with -32051 when it does not answer in time, both keeping the request id.
//!
//! ```no_run
//! use mcp_gateway_layers::upstream::{Upstream, UpstreamConfig};
//!
//! let upstream = Upstream::new(
//!     "demo",
//!     ["http://127.0.0.1:3001/mcp".parse().unwrap()],
//!     UpstreamConfig::default(),
//! )
//! .unwrap();
//! # let _ = upstream;
//! ```

use crate::body::{refused, Refused};
use crate::BoxError;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use mcp_gateway_core::headers::{is_event_stream, MCP_SESSION_ID, X_ACCEL_BUFFERING};
use mcp_gateway_core::jsonrpc::{ErrorCode, JsonRpcError, RequestId};
use mcp_gateway_core::{ConnectionLost, InstanceUnreachable, McpRequest, UpstreamAuthorization};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tower_service::Service;

/// The body type the upstream client sends.
pub type UpstreamRequestBody = UnsyncBoxBody<Bytes, BoxError>;
pub mod config;
mod pool;

mod forwarded;
pub use forwarded::ConnInfo;
pub use pool::PooledBody;
use pool::{ConnectError, InstancePool};
/// A DER-encoded X.509 certificate, as [`UpstreamConfig::trust`] takes it (re-exported from
/// `rustls`, so that callers need not depend on it).
pub use rustls::pki_types::CertificateDer;

/// The body type [`Upstream`] answers with: the instance's streamed body, or the gateway's own
/// JSON-RPC error when the instance could not be reached.
pub type UpstreamBody = Refused<PooledBody>;

/// Timeouts and limits of an [`Upstream`]: start from [`UpstreamConfig::default`] and change
/// what you need with the builder methods, one per field.
///
/// ```
/// use mcp_gateway_layers::upstream::{CertificateDer, UpstreamConfig};
/// use std::time::Duration;
///
/// # let internal_ca_der: Vec<u8> = Vec::new();
/// let config = UpstreamConfig::default()
///     .connect_timeout(Duration::from_secs(2))
///     .response_timeout(Duration::from_secs(30))
///     .pool_idle_timeout(Duration::from_secs(60))
///     .max_pinned_sessions(10_000)
///     .max_idle_per_instance(32)
///     .trust(vec![CertificateDer::from(internal_ca_der)]);
/// assert_eq!(config.pool_idle_timeout, Duration::from_secs(60));
/// assert_eq!(config.max_pinned_sessions, 10_000);
/// assert_eq!(config.max_idle_per_instance, 32);
/// assert_eq!(config.extra_roots.len(), 1);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct UpstreamConfig {
    /// Longest wait for a TCP (and TLS) connection. Default 5 s.
    pub connect_timeout: Duration,
    /// Longest wait for the response head once the request is sent. Default 60 s. The body of
    /// a response (an SSE stream, say) has no total time limit; see `read_timeout` and
    /// `sse_idle_timeout` for the silence within it.
    pub response_timeout: Duration,
    /// Longest silence between two reads of a non-SSE answer's body (nginx's
    /// `proxy_read_timeout`); zero for none. Default 60 s.
    pub read_timeout: Duration,
    /// Longest silence on an SSE stream from the upstream; zero for none (long-lived GET
    /// streams of a server that sends nothing for hours). Default 5 minutes.
    pub sse_idle_timeout: Duration,
    /// How long an idle pooled connection is kept. Default 90 s.
    pub pool_idle_timeout: Duration,
    /// Most legacy sessions remembered per upstream for instance pinning. Default 100,000.
    pub max_pinned_sessions: usize,
    /// Most idle connections kept per instance (spread over one idle stack per core, each
    /// thread reusing the connections it opened; rounded up). Default 256.
    pub max_idle_per_instance: usize,
    /// Certificates trusted for `https://` instances besides the system's roots (an internal
    /// CA, say). Default none.
    pub extra_roots: Vec<CertificateDer<'static>>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            read_timeout: Duration::from_secs(60),
            sse_idle_timeout: Duration::from_secs(300),
            pool_idle_timeout: Duration::from_secs(90),
            max_pinned_sessions: 100_000,
            max_idle_per_instance: 256,
            extra_roots: Vec::new(),
        }
    }
}

impl UpstreamConfig {
    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }
    /// Trusts these certificates (DER) for `https://` instances, besides the system's roots:
    /// sets `extra_roots`.
    pub fn trust(mut self, roots: Vec<CertificateDer<'static>>) -> Self {
        self.extra_roots = roots;
        self
    }
    /// Sets the response-start timeout.
    pub fn response_timeout(mut self, d: Duration) -> Self {
        self.response_timeout = d;
        self
    }
    /// Sets the longest silence between two reads of a JSON answer's body (zero: none).
    pub fn read_timeout(mut self, d: Duration) -> Self {
        self.read_timeout = d;
        self
    }
    /// Sets the longest silence on an SSE stream (zero: none).
    pub fn sse_idle_timeout(mut self, d: Duration) -> Self {
        self.sse_idle_timeout = d;
        self
    }
    /// Sets how long an idle pooled connection is kept.
    pub fn pool_idle_timeout(mut self, d: Duration) -> Self {
        self.pool_idle_timeout = d;
        self
    }
    /// Sets how many legacy sessions are remembered for instance pinning.
    pub fn max_pinned_sessions(mut self, n: usize) -> Self {
        self.max_pinned_sessions = n;
        self
    }
    /// Sets how many idle connections are kept per instance.
    pub fn max_idle_per_instance(mut self, n: usize) -> Self {
        self.max_idle_per_instance = n;
        self
    }
}

/// Why an upstream could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// No instance URL was given.
    #[error("upstream {0:?} has no instance URLs")]
    NoInstances(String),
    /// An instance URL is not absolute http(s).
    #[error("upstream {name:?}: {url:?} is not an absolute http:// or https:// URL")]
    BadUrl {
        /// The upstream name.
        name: String,
        /// The offending URL.
        url: String,
    },
    /// The certificates to trust (an upstream's `ca_file`) cannot be loaded.
    #[error(transparent)]
    Certificates(#[from] config::CertError),
}

/// The error an upstream answer's body ends with when the upstream sent nothing for its read
/// limit in the middle of it (`read_timeout`, or `sse_idle_timeout` for an SSE stream).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("upstream {upstream:?} sent nothing for {after:?} in the middle of its answer")]
#[non_exhaustive]
pub struct UpstreamStalled {
    /// The upstream's name.
    pub upstream: String,
    /// The limit that was reached.
    pub after: Duration,
    /// Whether the answer was an SSE stream (`sse_idle_timeout`) or not (`read_timeout`).
    pub sse: bool,
}

#[derive(Clone)]
struct Instance {
    /// The instance URL as configured: its name for balancing layers and logs.
    url: Arc<str>,
    pool: Arc<InstancePool>,
    /// The instance URL's path and query, parsed once: most calls carry no query of their own
    /// and reuse it as it is (a cheap, shared clone).
    target: PathAndQuery,
    /// The `Host` header for this instance, built once (a shared clone per call).
    host: Option<HeaderValue>,
}

impl Instance {
    fn path_and_query(&self, client_query: Option<&str>) -> Option<PathAndQuery> {
        let Some(c) = client_query else {
            return Some(self.target.clone());
        };
        let pq = match self.target.query() {
            Some(q) => format!("{}?{q}&{c}", self.target.path()),
            None => format!("{}?{c}", self.target.path()),
        };
        PathAndQuery::try_from(pq).ok()
    }
}

struct Shared {
    name: Arc<str>,
    instances: Vec<Instance>,
    next: AtomicUsize,
    pins: Mutex<HashMap<Box<str>, usize>>,
    config: UpstreamConfig,
}

/// Forwards requests to one MCP server (one or more instances). Cheap to clone.
#[derive(Clone)]
pub struct Upstream {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.shared.name)
            .field("instances", &self.shared.instances.len())
            .finish_non_exhaustive()
    }
}

fn tls_config(extra: &[rustls::pki_types::CertificateDer<'static>]) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs.into_iter().chain(extra.iter().cloned()) {
        let _ = roots.add(cert);
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| {
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_protocol_versions(rustls::DEFAULT_VERSIONS)
            .expect("ring supports the default protocol versions")
        });
    builder.with_root_certificates(roots).with_no_client_auth()
}

impl Upstream {
    /// An upstream named `name` (used in logs and errors) served by `instances`.
    pub fn new(
        name: &str,
        instances: impl IntoIterator<Item = Uri>,
        config: UpstreamConfig,
    ) -> Result<Self, UpstreamError> {
        let mut list = Vec::new();
        let mut tls = None;
        for uri in instances {
            let bad = || UpstreamError::BadUrl {
                name: name.to_owned(),
                url: uri.to_string(),
            };
            let scheme = uri.scheme().cloned().ok_or_else(bad)?;
            if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
                return Err(bad());
            }
            let authority = uri.authority().cloned().ok_or_else(bad)?;
            let connector = if scheme == http::uri::Scheme::HTTPS {
                Some(
                    tls.get_or_insert_with(|| {
                        tokio_rustls::TlsConnector::from(Arc::new(tls_config(&config.extra_roots)))
                    })
                    .clone(),
                )
            } else {
                None
            };
            let host = HeaderValue::from_str(authority.as_str()).ok();
            list.push(Instance {
                url: uri.to_string().into(),
                host,
                pool: Arc::new(InstancePool::new(
                    scheme,
                    authority,
                    connector,
                    config.connect_timeout,
                    config.pool_idle_timeout,
                    config.max_idle_per_instance,
                )),
                target: uri
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/")),
            });
        }
        if list.is_empty() {
            return Err(UpstreamError::NoInstances(name.to_owned()));
        }
        Ok(Self {
            shared: Arc::new(Shared {
                name: name.into(),
                instances: list,
                next: AtomicUsize::new(0),
                pins: Mutex::new(HashMap::new()),
                config,
            }),
        })
    }

    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// One single-instance `Upstream` per instance, each named by its instance URL, sharing
    /// this upstream's connection pools and settings: the instance set for a balancing layer
    /// such as [`SessionAffinity`](crate::sessions::SessionAffinity), which then decides where
    /// each request goes (this upstream's own round-robin and in-process pinning are not used).
    ///
    /// ```
    /// use mcp_gateway_layers::upstream::{Upstream, UpstreamConfig};
    ///
    /// let up = Upstream::new(
    ///     "demo",
    ///     ["http://10.0.0.1:3001/mcp".parse().unwrap(), "http://10.0.0.2:3001/mcp".parse().unwrap()],
    ///     UpstreamConfig::default(),
    /// )
    /// .unwrap();
    /// let names: Vec<String> = up.instances().into_iter().map(|(name, _)| name).collect();
    /// assert_eq!(names, ["http://10.0.0.1:3001/mcp", "http://10.0.0.2:3001/mcp"]);
    /// ```
    pub fn instances(&self) -> Vec<(String, Upstream)> {
        self.shared
            .instances
            .iter()
            .map(|i| {
                let one = Upstream {
                    shared: Arc::new(Shared {
                        name: self.shared.name.clone(),
                        instances: vec![i.clone()],
                        next: AtomicUsize::new(0),
                        pins: Mutex::new(HashMap::new()),
                        config: self.shared.config.clone(),
                    }),
                };
                (i.url.to_string(), one)
            })
            .collect()
    }

    /// How many instances serve this upstream.
    pub fn instance_count(&self) -> usize {
        self.shared.instances.len()
    }
}

impl Shared {
    fn pick(&self, session: Option<&str>) -> usize {
        let n = self.instances.len();
        if n == 1 {
            return 0;
        }
        if let Some(sid) = session {
            if let Some(&i) = self.pins.lock().unwrap_or_else(|p| p.into_inner()).get(sid) {
                return i;
            }
        }
        self.next.fetch_add(1, Ordering::Relaxed) % n
    }

    fn pin(&self, sid: &str, idx: usize) {
        if self.instances.len() == 1 {
            return;
        }
        let mut pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
        if pins.len() >= self.config.max_pinned_sessions && !pins.contains_key(sid) {
            // Full: forget an arbitrary session. Its next request may reach another instance,
            // which answers 404, and the client re-initializes.
            if let Some(k) = pins.keys().next().cloned() {
                pins.remove(&k);
            }
        }
        pins.insert(sid.into(), idx);
    }

    fn is_pinned(&self, sid: &str) -> bool {
        self.pins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(sid)
    }

    fn unpin(&self, sid: &str) {
        if self.instances.len() > 1 {
            self.pins
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(sid);
        }
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    *name == header::CONNECTION
        || *name == header::PROXY_AUTHENTICATE
        || *name == header::PROXY_AUTHORIZATION
        || *name == header::TE
        || *name == header::TRAILER
        || *name == header::TRANSFER_ENCODING
        || *name == header::UPGRADE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and those named by `Connection`.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One scan first: most messages carry none, and then nothing is hashed or moved.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

fn failure(
    status: StatusCode,
    code: ErrorCode,
    msg: String,
    id: Option<&RequestId>,
) -> Response<UpstreamBody> {
    refused(JsonRpcError::new(code, msg).into_response(status, id))
}

enum Failure {
    Connect(ConnectError),
    Send(hyper::Error),
    Timeout,
}

impl Failure {
    fn into_response(
        self,
        shared: &Shared,
        idx: usize,
        id: Option<&RequestId>,
    ) -> Response<UpstreamBody> {
        let name = &shared.name;
        let unreachable = matches!(self, Failure::Connect(_));
        let lost = matches!(&self, Failure::Send(e) if e.is_incomplete_message());
        let (status, code, message) = match self {
            Failure::Connect(ConnectError::Timeout) => {
                tracing::warn!(upstream = %name, instance = idx, timeout = ?shared.config.connect_timeout, "upstream connect timed out");
                (
                    StatusCode::GATEWAY_TIMEOUT,
                    ErrorCode::UPSTREAM_TIMEOUT,
                    format!("gateway timed out connecting to upstream {name:?}"),
                )
            }
            Failure::Connect(ConnectError::Failed(why)) => {
                tracing::warn!(upstream = %name, instance = idx, error = %why, "upstream connect failed");
                (
                    StatusCode::BAD_GATEWAY,
                    ErrorCode::UPSTREAM_UNAVAILABLE,
                    format!("gateway could not connect to upstream {name:?}"),
                )
            }
            Failure::Send(e) => {
                tracing::warn!(upstream = %name, instance = idx, error = %e, "upstream exchange failed");
                (
                    StatusCode::BAD_GATEWAY,
                    ErrorCode::UPSTREAM_UNAVAILABLE,
                    format!("gateway failed talking to upstream {name:?}"),
                )
            }
            Failure::Timeout => {
                tracing::warn!(upstream = %name, instance = idx, "upstream response timed out");
                (
                    StatusCode::GATEWAY_TIMEOUT,
                    ErrorCode::UPSTREAM_TIMEOUT,
                    format!(
                        "upstream {name:?} did not answer within {:?}",
                        shared.config.response_timeout
                    ),
                )
            }
        };
        let mut resp = failure(status, code, message, id);
        if unreachable {
            // Nothing was sent: a balancing layer above may eject this instance.
            resp.extensions_mut().insert(InstanceUnreachable);
        }
        if lost {
            // Written, and the connection closed before any answer: a balancing layer may
            // send again what is safe to repeat.
            resp.extensions_mut().insert(ConnectionLost);
        }
        resp
    }
}

impl<B> Service<Request<B>> for Upstream
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<UpstreamBody>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.forward(req, None).await) })
    }
}

impl Upstream {
    /// Forwards one request and answers with the upstream's response (streaming), or with the
    /// gateway's JSON-RPC error response when the upstream cannot be reached or does not answer
    /// in time — what [`Service::call`] does, as a future that borrows the upstream instead
    /// of a boxed one, for callers that compose it inline.
    ///
    /// `view` is the request's parsed view when the caller holds it outside the request's
    /// extensions; without it the view is looked up there. It names the id that error answers
    /// carry. The request's extensions are not forwarded.
    pub async fn forward<B>(
        &self,
        req: Request<B>,
        view: Option<McpRequest>,
    ) -> Response<UpstreamBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let shared = &*self.shared;
        let (mut parts, body) = req.into_parts();
        // The view is only read for the id of an error answer: taken, not copied.
        let view = view.or_else(|| parts.extensions.remove::<McpRequest>());
        let reply_id = || view.as_ref().and_then(McpRequest::reply_id);
        // Session pinning only matters with several instances.
        let several = shared.instances.len() > 1;
        let session: Option<Box<str>> = several
            .then(|| {
                parts
                    .headers
                    .get(MCP_SESSION_ID)
                    .and_then(|v| v.to_str().ok())
                    .map(Into::into)
            })
            .flatten();
        let first = shared.pick(session.as_deref());
        // With several instances, a request that belongs to no session this process pinned
        // may go to another instance when it could not be sent to its first one at all.
        let movable = several && session.as_deref().is_none_or(|sid| !shared.is_pinned(sid));
        let client_query: Option<Box<str>> = if movable {
            parts.uri.query().map(Into::into)
        } else {
            None
        };
        let Some(pq) = shared.instances[first].path_and_query(parts.uri.query()) else {
            return failure(
                StatusCode::BAD_REQUEST,
                ErrorCode::INVALID_REQUEST,
                "the request's query string cannot be forwarded".into(),
                reply_id(),
            );
        };
        // HTTP/1.1 to the upstream: origin-form target, Host from the instance URL.
        parts.uri = Uri::from(pq);
        parts.version = Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        // No token passthrough: the client's credentials are for the gateway only. What
        // the upstream gets is the gateway's own credential, when a layer provided one.
        parts.headers.remove(header::AUTHORIZATION);
        if let Some(own) = parts.extensions.get::<UpstreamAuthorization>() {
            parts.headers.insert(header::AUTHORIZATION, own.0.clone());
        }
        if let Some(host) = &shared.instances[first].host {
            parts.headers.insert(header::HOST, host.clone());
        }
        parts.extensions.clear();
        let delete = parts.method == Method::DELETE;
        let req = Request::from_parts(parts, body.map_err(Into::into).boxed_unsync());

        // The next instance in turn and the request target there, for a request that could
        // not be sent to its first instance and may move (once).
        let elsewhere = |idx: usize| -> Option<(usize, PathAndQuery)> {
            let next = (idx + 1) % shared.instances.len();
            let pq = shared.instances[next].path_and_query(client_query.as_deref())?;
            Some((next, pq))
        };
        let exchange = async {
            let mut req = req;
            let mut idx = first;
            let mut retried = false;
            let mut moved = !movable;
            loop {
                let instance = &shared.instances[idx];
                let (unsent, to) = match instance.pool.checkout().await {
                    Err(e) => match (!moved).then(|| elsewhere(idx)).flatten() {
                        Some(to) => {
                            tracing::warn!(upstream = %shared.name, instance = idx, error = ?e, "upstream instance unreachable: sending the request to another instance");
                            (req, to)
                        }
                        None => return Err((Failure::Connect(e), idx)),
                    },
                    Ok((mut send, reused)) => match send.try_send_request(req).await {
                        Ok(resp) => return Ok((resp, send, idx)),
                        Err(mut e) => match e.take_message() {
                            // The server closed an idle connection just as it was reused:
                            // nothing was sent, so sending again on a fresh one is safe.
                            Some(back) if reused && !retried => {
                                req = back;
                                retried = true;
                                continue;
                            }
                            // Nothing of it was written: another instance may take it.
                            Some(back) => match (!moved).then(|| elsewhere(idx)).flatten() {
                                Some(to) => {
                                    tracing::warn!(upstream = %shared.name, instance = idx, error = %e.error(), "upstream exchange failed before anything was sent: sending the request to another instance");
                                    (back, to)
                                }
                                None => return Err((Failure::Send(e.into_error()), idx)),
                            },
                            None => return Err((Failure::Send(e.into_error()), idx)),
                        },
                    },
                };
                // Once, to the next instance in turn, rewritten for it.
                moved = true;
                retried = false;
                req = unsent;
                (idx, *req.uri_mut()) = (to.0, Uri::from(to.1));
                match &shared.instances[idx].host {
                    Some(host) => req.headers_mut().insert(header::HOST, host.clone()),
                    None => req.headers_mut().remove(header::HOST),
                };
            }
        };
        let (resp, send, idx) =
            match tokio::time::timeout(shared.config.response_timeout, exchange).await {
                Ok(Ok(found)) => found,
                Ok(Err((f, idx))) => return f.into_response(shared, idx, reply_id()),
                Err(_) => return Failure::Timeout.into_response(shared, first, reply_id()),
            };
        let instance = &shared.instances[idx];
        let sse = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(is_event_stream);
        let read_limit = if sse {
            shared.config.sse_idle_timeout
        } else {
            shared.config.read_timeout
        };
        let mut resp = resp.map(|b| {
            PooledBody::new(
                b,
                send,
                instance.pool.clone(),
                shared.name.clone(),
                sse,
                read_limit,
            )
        });
        if several {
            if let Some(issued) = resp
                .headers()
                .get(MCP_SESSION_ID)
                .and_then(|v| v.to_str().ok())
            {
                shared.pin(issued, idx);
            }
            if let Some(sid) = session.as_deref() {
                let ended = (delete && resp.status().is_success())
                    || resp.status() == StatusCode::NOT_FOUND;
                if ended {
                    shared.unpin(sid);
                }
            }
        }
        strip_hop_by_hop(resp.headers_mut());
        if sse && !resp.headers().contains_key(X_ACCEL_BUFFERING) {
            resp.headers_mut()
                .insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
        }
        resp.map(http_body_util::Either::Left)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("mcp-param-region", HeaderValue::from_static("eu"));
        h.insert(MCP_SESSION_ID, HeaderValue::from_static("s"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
        assert!(h.contains_key("mcp-param-region"));
    }

    #[test]
    fn instance_uri_merges_queries() {
        let up = Upstream::new(
            "t",
            ["http://h:1/mcp?k=v".parse().unwrap()],
            UpstreamConfig::default(),
        )
        .unwrap();
        let inst = &up.shared.instances[0];
        assert_eq!(inst.path_and_query(None).unwrap().as_str(), "/mcp?k=v");
        assert_eq!(
            inst.path_and_query(Some("a=b")).unwrap().as_str(),
            "/mcp?k=v&a=b"
        );
        assert!(Upstream::new(
            "t",
            ["ftp://h/x".parse().unwrap()],
            UpstreamConfig::default()
        )
        .is_err());
        assert!(Upstream::new("t", Vec::<Uri>::new(), UpstreamConfig::default()).is_err());
    }

    /// New work whose instance refuses the connection goes to the next instance: nothing was
    /// sent, so no call fails while one instance is down.
    #[tokio::test]
    async fn work_that_could_not_be_sent_moves_to_another_instance() {
        use hyper::server::conn::http1;
        use hyper_util::rt::TokioIo;
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_addr = live.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (s, _) = live.accept().await.unwrap();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req| async {
                        let body = http_body_util::Full::new(Bytes::from_static(
                            br#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
                        ));
                        Ok::<_, Infallible>(Response::new(body))
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        let dead_addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let up = Upstream::new(
            "t",
            [
                format!("http://{dead_addr}/mcp").parse().unwrap(),
                format!("http://{live_addr}/mcp").parse().unwrap(),
            ],
            UpstreamConfig::default(),
        )
        .unwrap();
        for _ in 0..6 {
            let req = Request::post("/mcp")
                .body(http_body_util::Full::new(Bytes::from_static(
                    br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
                )))
                .unwrap();
            let resp = up.forward(req, None).await;
            assert_eq!(resp.status(), StatusCode::OK);
            assert!(resp.extensions().get::<InstanceUnreachable>().is_none());
        }
        // A session pinned to the dead instance is not moved: its owner is the only one
        // that knows it.
        up.shared.pin("s-1", 0);
        let req = Request::post("/mcp")
            .header(MCP_SESSION_ID, "s-1")
            .body(http_body_util::Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let resp = up.forward(req, None).await;
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        assert!(resp.extensions().get::<InstanceUnreachable>().is_some());
    }

    #[test]
    fn sessions_stay_on_their_instance() {
        let up = Upstream::new(
            "t",
            [
                "http://a:1/mcp".parse().unwrap(),
                "http://b:1/mcp".parse().unwrap(),
            ],
            UpstreamConfig::default(),
        )
        .unwrap();
        let s = &up.shared;
        s.pin("sess-1", 1);
        for _ in 0..5 {
            assert_eq!(s.pick(Some("sess-1")), 1);
        }
        let spread: std::collections::HashSet<_> = (0..4).map(|_| s.pick(None)).collect();
        assert_eq!(spread.len(), 2);
        s.unpin("sess-1");
        assert!(s.pins.lock().unwrap().is_empty());
    }
}
