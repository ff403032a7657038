//! [`OAuthGuardLayer`]: the route's protected-resource settings, and the layer.

use super::cache::{CachePolicy, TokenCache};
use super::credentials::UpstreamCredentials;
use super::permissions::Permissions;
use super::service::{Governor, Guard, OAuthGuard};
use super::verify::TokenVerifier;
use crate::govern::{Govern, Governed, IntoGovern};
use crate::parse::DEFAULT_BODY_LIMIT;
use std::collections::BTreeSet;
use std::sync::Arc;
use tower_layer::Layer;

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
