//! [`OAuthGuardLayer`]: the route's protected-resource settings, and the layer.

use super::cache::{CachePolicy, TokenCache};
use super::credentials::UpstreamCredentials;
use super::permissions::Permissions;
use super::service::{Governor, Guard, OAuthGuard};
use super::verify::TokenVerifier;
use crate::govern::{Govern, Governed, IntoGovern};
use crate::parse::DEFAULT_BODY_LIMIT;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use std::collections::BTreeSet;
use std::convert::Infallible;
use std::future::{ready, Ready};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_layer::Layer;
use tower_service::Service;

/// Applies [`OAuthGuard`]: one per protected route (its resource URI is the route's). Cheap
/// to clone. See the module docs.
#[derive(Clone)]
pub struct OAuthGuardLayer {
    governor: Governor,
    body_limit: usize,
}

impl std::fmt::Debug for OAuthGuardLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthGuardLayer")
            .field("resource", &self.governor.guard.resource)
            .field("scopes", &self.governor.guard.scopes)
            .finish_non_exhaustive()
    }
}

impl OAuthGuardLayer {
    /// A guard for the protected resource `resource` (the route's canonical URI, e.g.
    /// `https://gw.example.com/mcp/github`), checking tokens with `verifier`.
    ///
    /// The resource metadata URL defaults to the RFC 9728 path-suffixed well-known URI of
    /// `resource`.
    pub fn new(verifier: impl TokenVerifier, resource: impl Into<String>) -> Self {
        Self::with_shared_verifier(Arc::new(verifier), resource)
    }

    /// Like [`new`](Self::new), with a verifier shared by several routes.
    pub fn with_shared_verifier(
        verifier: Arc<dyn TokenVerifier>,
        resource: impl Into<String>,
    ) -> Self {
        let resource = resource.into();
        let resource_metadata = metadata_url(&resource);
        Self {
            governor: Governor {
                guard: Arc::new(Guard {
                    verifier,
                    cache: Arc::new(TokenCache::new(CachePolicy::default())),
                    resource,
                    resource_metadata,
                    authorization_servers: Vec::new(),
                    scopes: Vec::new(),
                    upstream: String::new(),
                    permissions: Arc::default(),
                    credentials: UpstreamCredentials::None,
                }),
            },
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }

    /// Changes the guard's settings (on a copy when clones share it: every earlier setting
    /// is kept).
    fn edit(mut self, f: impl FnOnce(&mut Guard)) -> Self {
        f(Arc::make_mut(&mut self.governor.guard));
        self
    }

    /// The authorization servers advertised in the resource metadata.
    pub fn authorization_servers(
        self,
        issuers: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        let list = issuers.into_iter().map(Into::into).collect();
        self.edit(|g| g.authorization_servers = list)
    }

    /// Scopes every call needs (advertised in the resource metadata and in challenges).
    pub fn scopes(self, scopes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        let list = scopes.into_iter().map(Into::into).collect();
        self.edit(|g| g.scopes = list)
    }

    /// The upstream's name, for permission rules that name one.
    pub fn upstream(self, name: impl Into<String>) -> Self {
        let name = name.into();
        self.edit(|g| g.upstream = name)
    }

    /// Tool-level permission rules.
    pub fn permissions(self, p: Arc<Permissions>) -> Self {
        self.edit(|g| g.permissions = p)
    }

    /// What the gateway presents to the upstream (never the caller's token).
    pub fn credentials(self, c: UpstreamCredentials) -> Self {
        self.edit(|g| g.credentials = c)
    }

    /// A verified-token cache, shared by several routes.
    pub fn cache(self, c: Arc<TokenCache>) -> Self {
        self.edit(|g| g.cache = c)
    }

    /// The resource metadata URL named in challenges (when the default is not reachable by
    /// clients).
    pub fn resource_metadata_url(self, url: impl Into<String>) -> Self {
        let url = url.into();
        self.edit(|g| g.resource_metadata = url)
    }

    /// The largest request body read when no layer above has read it.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// The RFC 9728 Protected Resource Metadata document of this route.
    pub fn protected_resource_metadata(&self) -> serde_json::Value {
        let g = &self.governor.guard;
        let mut scopes: BTreeSet<&str> = g.scopes.iter().map(String::as_str).collect();
        scopes.extend(g.permissions.scopes_for(&g.upstream));
        serde_json::json!({
            "resource": g.resource,
            "authorization_servers": g.authorization_servers,
            "scopes_supported": scopes,
            "bearer_methods_supported": ["header"],
        })
    }

    /// Where the metadata is served (the URL named in `WWW-Authenticate`).
    pub fn resource_metadata(&self) -> &str {
        &self.governor.guard.resource_metadata
    }

    /// The path of [`resource_metadata`](Self::resource_metadata): where an app mounts
    /// [`metadata_service`](Self::metadata_service), e.g.
    /// `/.well-known/oauth-protected-resource/mcp` for the resource `https://gw.example.com/mcp`.
    pub fn metadata_path(&self) -> String {
        let url = self.resource_metadata();
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        match rest.find('/') {
            Some(i) => rest[i..].to_owned(),
            None => "/".to_owned(),
        }
    }

    /// A tower service answering with this route's RFC 9728 metadata document, the one the
    /// guard's 401 challenges point at, so that MCP clients' OAuth discovery finds it. One line
    /// in an axum app: `.route_service(&guard.metadata_path(), guard.metadata_service())`.
    pub fn metadata_service(&self) -> MetadataService {
        MetadataService::new(Bytes::from(self.protected_resource_metadata().to_string()))
    }
}

/// Serves a protected resource metadata document (RFC 9728): `GET`/`HEAD` get it as JSON,
/// readable cross-origin (`Access-Control-Allow-Origin: *`: it is public by definition) and
/// cacheable for five minutes; `OPTIONS` gets the CORS answer; other methods 405. Made by
/// [`OAuthGuardLayer::metadata_service`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MetadataService {
    doc: Bytes,
}

impl MetadataService {
    /// Serves `doc`, a JSON document.
    pub fn new(doc: Bytes) -> Self {
        Self { doc }
    }

    /// The answer to a `GET`.
    pub fn response(&self) -> Response<Full<Bytes>> {
        let mut resp = Response::new(Full::new(self.doc.clone()));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=300"),
        );
        resp
    }

    /// The answer to a request of any method.
    pub fn answer(&self, method: &Method) -> Response<Full<Bytes>> {
        if method == Method::GET || method == Method::HEAD {
            return self.response();
        }
        let mut resp = Response::new(Full::new(Bytes::new()));
        let h = resp.headers_mut();
        h.insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, OPTIONS"),
        );
        if method == Method::OPTIONS {
            *resp.status_mut() = StatusCode::NO_CONTENT;
            let h = resp.headers_mut();
            h.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, HEAD, OPTIONS"),
            );
        } else {
            *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        }
        resp
    }
}

impl<B> Service<Request<B>> for MetadataService {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        ready(Ok(self.answer(req.method())))
    }
}

/// The RFC 9728 path-suffixed well-known URI of `resource`.
pub fn metadata_url(resource: &str) -> String {
    let (scheme, rest) = resource.split_once("://").unwrap_or(("https", resource));
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    format!("{scheme}://{host}/.well-known/oauth-protected-resource{path}")
}

impl OAuthGuardLayer {
    /// The deciding part, to stack in a [`Chain`](crate::govern::Chain).
    pub fn governor(&self) -> &Governor {
        &self.governor
    }
}

impl<S> Layer<S> for OAuthGuardLayer {
    type Service = OAuthGuard<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Governed::new(self.governor.clone(), inner).body_limit(self.body_limit)
    }
}

impl IntoGovern for OAuthGuardLayer {
    fn into_govern(self) -> Arc<dyn Govern> {
        Arc::new(self.governor)
    }
}
