//! [`OAuthGuardLayer`] and the [`OAuthGuard`] service.

use super::cache::{key, CachePolicy, TokenCache};
use super::credentials::UpstreamCredentials;
use super::permissions::{ListFilter, Permissions, Target};
use super::verify::{TokenVerifier, Verified, VerifyError};
use crate::body::ResponseBody;
use crate::parse::{read_request, DEFAULT_BODY_LIMIT};
use crate::scope::Scope;
use crate::BoxError;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::Full;
use mcp_gateway_core::exchange::{Denial, DenialKind, Exchange};
use mcp_gateway_core::jsonrpc::{ErrorCode, JsonRpcError};
use mcp_gateway_core::{McpRequest, Principal, UpstreamAuthorization};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_layer::Layer;
use tower_service::Service;

/// Longest bearer token looked at; longer ones are refused unread.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

struct Guard {
    verifier: Arc<dyn TokenVerifier>,
    cache: Arc<TokenCache>,
    resource: String,
    resource_metadata: String,
    authorization_servers: Vec<String>,
    scopes: Vec<String>,
    upstream: String,
    permissions: Arc<Permissions>,
    credentials: UpstreamCredentials,
    body_limit: usize,
}

impl Clone for Guard {
    fn clone(&self) -> Self {
        Self {
            verifier: self.verifier.clone(),
            cache: self.cache.clone(),
            resource: self.resource.clone(),
            resource_metadata: self.resource_metadata.clone(),
            authorization_servers: self.authorization_servers.clone(),
            scopes: self.scopes.clone(),
            upstream: self.upstream.clone(),
            permissions: self.permissions.clone(),
            credentials: self.credentials.clone(),
            body_limit: self.body_limit,
        }
    }
}

/// Applies [`OAuthGuard`]: one per protected route (its resource URI is the route's). Cheap
/// to clone. See the module docs.
#[derive(Clone)]
pub struct OAuthGuardLayer {
    guard: Arc<Guard>,
}

impl std::fmt::Debug for OAuthGuardLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthGuardLayer")
            .field("resource", &self.guard.resource)
            .field("scopes", &self.guard.scopes)
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
                body_limit: DEFAULT_BODY_LIMIT,
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Guard)) -> Self {
        f(Arc::make_mut(&mut self.guard));
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
    pub fn body_limit(self, bytes: usize) -> Self {
        self.edit(|g| g.body_limit = bytes)
    }

    /// The RFC 9728 Protected Resource Metadata document of this route.
    pub fn protected_resource_metadata(&self) -> serde_json::Value {
        let g = &self.guard;
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
        &self.guard.resource_metadata
    }
}

/// The RFC 9728 path-suffixed well-known URI of `resource`.
pub fn metadata_url(resource: &str) -> String {
    let (scheme, rest) = resource.split_once("://").unwrap_or(("https", resource));
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    format!("{scheme}://{host}/.well-known/oauth-protected-resource{path}")
}

impl<S> Layer<S> for OAuthGuardLayer {
    type Service = OAuthGuard<S>;
    fn layer(&self, inner: S) -> Self::Service {
        OAuthGuard {
            inner,
            guard: self.guard.clone(),
        }
    }
}

/// Authenticates and authorizes MCP calls. See the module docs.
#[derive(Clone)]
pub struct OAuthGuard<S> {
    inner: S,
    guard: Arc<Guard>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for OAuthGuard<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthGuard")
            .field("inner", &self.inner)
            .field("resource", &self.guard.resource)
            .finish_non_exhaustive()
    }
}

/// A refusal to send.
struct Refusal {
    status: StatusCode,
    kind: DenialKind,
    /// `error=` of the challenge (`invalid_token`, `insufficient_scope`, `invalid_request`).
    error: Option<&'static str>,
    /// Scopes the challenge names.
    scope: Vec<String>,
    message: String,
}

fn quoted(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
        .collect()
}

impl Guard {
    fn refuse(&self, r: Refusal, view: Option<&McpRequest>, x: &Exchange) -> Response<Full<Bytes>> {
        x.deny(Denial::new("auth", r.kind, r.status, r.message.clone()));
        let code = match r.status {
            StatusCode::FORBIDDEN => ErrorCode::FORBIDDEN,
            StatusCode::SERVICE_UNAVAILABLE => ErrorCode::UNAVAILABLE,
            StatusCode::BAD_REQUEST => ErrorCode::INVALID_REQUEST,
            _ => ErrorCode::UNAUTHORIZED,
        };
        let id = view.and_then(McpRequest::reply_id);
        let mut resp = JsonRpcError::new(code, r.message.clone()).into_response(r.status, id);
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            return resp;
        }
        let mut challenge = format!(
            "Bearer resource_metadata=\"{}\"",
            quoted(&self.resource_metadata)
        );
        if !r.scope.is_empty() {
            challenge.push_str(&format!(", scope=\"{}\"", quoted(&r.scope.join(" "))));
        }
        if let Some(e) = r.error {
            challenge.push_str(&format!(
                ", error=\"{e}\", error_description=\"{}\"",
                quoted(&r.message)
            ));
        }
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        resp
    }

    fn unauthenticated(&self, error: Option<&'static str>, message: impl Into<String>) -> Refusal {
        Refusal {
            status: StatusCode::UNAUTHORIZED,
            kind: DenialKind::Unauthenticated,
            error,
            scope: self.scopes.clone(),
            message: message.into(),
        }
    }

    async fn verify(&self, token: &str) -> Result<Verified, VerifyError> {
        let k = key(token);
        if let Some(answer) = self.cache.get(&k) {
            return answer;
        }
        let answer = self.verifier.verify(token).await;
        self.cache.put(k, &answer);
        answer
    }

    /// Authenticates and authorizes `req`; returns it ready for the upstream.
    async fn admit(
        &self,
        mut req: Request<Full<Bytes>>,
        x: &Exchange,
    ) -> Result<Request<Full<Bytes>>, Refusal> {
        if req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv.starts_with("access_token=")))
        {
            return Err(Refusal {
                status: StatusCode::BAD_REQUEST,
                kind: DenialKind::BadRequest,
                error: Some("invalid_request"),
                scope: self.scopes.clone(),
                message: "access tokens are accepted only in the Authorization header".into(),
            });
        }
        let mut auths = req.headers().get_all(header::AUTHORIZATION).iter();
        let (first, second) = (auths.next(), auths.next());
        // The header value shares the request head's buffer: the token is not copied.
        let value = match (first, second) {
            (None, _) => {
                return Err(
                    self.unauthenticated(None, "authorization required: send a Bearer token")
                )
            }
            (Some(_), Some(_)) => {
                return Err(self.unauthenticated(
                    Some("invalid_request"),
                    "more than one Authorization header",
                ))
            }
            (Some(v), None) => v.clone(),
        };
        let v = value.as_bytes();
        if v.len() > MAX_TOKEN_BYTES + 7 {
            return Err(self.unauthenticated(
                Some("invalid_token"),
                format!("token longer than {MAX_TOKEN_BYTES} bytes"),
            ));
        }
        let token: &str = match v.get(..7) {
            Some(p) if p.eq_ignore_ascii_case(b"bearer ") => {
                match std::str::from_utf8(&v[7..]).map(str::trim) {
                    Ok(t) if !t.is_empty() => t,
                    _ => {
                        return Err(
                            self.unauthenticated(Some("invalid_token"), "malformed bearer token")
                        )
                    }
                }
            }
            _ => {
                return Err(self.unauthenticated(
                    None,
                    "authorization required: only Bearer tokens are accepted",
                ))
            }
        };
        let verified = match self.verify(token).await {
            Ok(v) => v,
            Err(VerifyError::Unavailable(why)) => {
                tracing::warn!(error = %why, "token verification unavailable");
                return Err(Refusal {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    kind: DenialKind::Unavailable,
                    error: None,
                    scope: Vec::new(),
                    message: "the token cannot be verified right now; retry shortly".into(),
                });
            }
            Err(e) => return Err(self.unauthenticated(Some("invalid_token"), e.to_string())),
        };
        if let Some(auds) = &verified.audiences {
            if !auds
                .iter()
                .any(|a| a.trim_end_matches('/') == self.resource)
            {
                return Err(self.unauthenticated(
                    Some("invalid_token"),
                    format!(
                        "token audience does not include this resource ({})",
                        self.resource
                    ),
                ));
            }
        }
        let who = verified.principal;
        x.update(|r| r.principal = Some(who.clone()));
        let view = McpRequest::from_extensions(req.extensions());
        // Scopes every call needs, then each message's own.
        let mut needed: BTreeSet<&str> = self.scopes.iter().map(String::as_str).collect();
        for msg in view
            .iter()
            .filter_map(|v| v.parsed())
            .flat_map(|p| p.messages())
        {
            if let Some((target, false)) = msg.method().and_then(Target::of_method) {
                let name = match target {
                    Target::Resource => msg.uri(),
                    _ => msg.name(),
                };
                if let Some(name) = name {
                    needed.extend(self.permissions.needed(&self.upstream, target, name));
                }
            }
        }
        if needed.iter().any(|s| !who.has_scope(s)) {
            let missing: Vec<&str> = needed
                .iter()
                .copied()
                .filter(|s| !who.has_scope(s))
                .collect();
            return Err(Refusal {
                status: StatusCode::FORBIDDEN,
                kind: DenialKind::Forbidden,
                error: Some("insufficient_scope"),
                scope: needed.iter().map(|s| (*s).to_owned()).collect(),
                message: format!("this call needs scope {}", missing.join(" ")),
            });
        }
        // Lists: show only what the caller may use.
        if let Some(msg) = view.and_then(McpRequest::single) {
            if let (Some((target, true)), Some(id)) =
                (msg.method().and_then(Target::of_method), msg.id())
            {
                if self.permissions.may_restrict(&self.upstream, target, &who) {
                    x.observe(ListFilter {
                        id: id.clone(),
                        target,
                        upstream: self.upstream.clone(),
                        principal: who.clone(),
                        permissions: self.permissions.clone(),
                    });
                }
            }
        }
        // Handlers behind the gateway (an axum `Extension<Principal>`) see who is calling.
        req.extensions_mut().insert(who);
        // No token passthrough: the upstream gets the gateway's own credential, if any.
        req.headers_mut().remove(header::AUTHORIZATION);
        let caller = verified.audiences.is_some().then_some(token);
        match self.credentials.authorization(caller).await {
            Ok(Some(v)) => {
                req.extensions_mut().insert(UpstreamAuthorization(v));
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(upstream = %self.upstream, error = %e, "upstream credentials unavailable");
                return Err(Refusal {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    kind: DenialKind::Unavailable,
                    error: None,
                    scope: Vec::new(),
                    message:
                        "the gateway could not obtain credentials for the upstream; retry shortly"
                            .into(),
                });
            }
        }
        Ok(req)
    }
}

impl<S, B, ResBody> Service<Request<B>> for OAuthGuard<S>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let guard = self.guard.clone();
        let scope = Scope::enter(&mut req);
        Box::pin(async move {
            let req = match read_request(req, guard.body_limit).await {
                Ok(r) => r,
                Err(resp) => return Ok(scope.finish(resp.map(ResponseBody::full)).await),
            };
            let x = scope.exchange().clone();
            match guard.admit(req, &x).await {
                Ok(req) => {
                    let resp = inner.call(req).await?.map(ResponseBody::inner);
                    Ok(scope.finish(resp).await)
                }
                Err(r) => {
                    let view = x.update(|rec| rec.request.clone());
                    let resp = guard.refuse(r, view.as_ref(), &x);
                    Ok(scope.finish(resp.map(ResponseBody::full)).await)
                }
            }
        })
    }
}

/// Reads the principal an [`OAuthGuard`] established for this request.
pub fn principal(ext: &http::Extensions) -> Option<Principal> {
    Exchange::from_extensions(ext).and_then(|x| x.update(|r| r.principal.clone()))
}
