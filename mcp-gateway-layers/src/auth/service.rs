//! The [`OAuthGuard`] service: authentication and authorization of each call.

use super::cache::TokenCache;
use super::credentials::{CredentialError, UpstreamCredentials};
use super::permissions::{ListFilter, Permissions, Target};
use super::verify::{TokenVerifier, Verified, VerifyError};
use crate::govern::{Decision, Govern, Governed, Refusal};
use bytes::Bytes;
use http::{header, HeaderValue, Request, StatusCode};
use http_body_util::Full;
use mcp_gateway_core::exchange::{Denial, DenialKind, Exchange};
use mcp_gateway_core::jsonrpc::{ErrorCode, JsonRpcError};
use mcp_gateway_core::{McpRequest, Principal, UpstreamAuthorization};
use std::collections::BTreeSet;
use std::sync::Arc;

/// Longest bearer token looked at; longer ones are refused unread.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

type Req = Request<Full<Bytes>>;

/// One protected route's settings: how tokens are checked, what the route is, what calls
/// need, what the upstream gets.
#[derive(Clone)]
pub(crate) struct Guard {
    pub(crate) verifier: Arc<dyn TokenVerifier>,
    pub(crate) cache: Arc<TokenCache>,
    pub(crate) resource: String,
    pub(crate) resource_metadata: String,
    pub(crate) authorization_servers: Vec<String>,
    pub(crate) scopes: Vec<String>,
    pub(crate) upstream: String,
    pub(crate) permissions: Arc<Permissions>,
    pub(crate) credentials: UpstreamCredentials,
}

/// The deciding part of [`OAuthGuard`]: authenticates the caller, authorizes the call and
/// swaps the caller's credential for the upstream's. A handle on the route's guard.
#[derive(Clone)]
pub struct Governor {
    pub(crate) guard: Arc<Guard>,
}

impl std::fmt::Debug for Governor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Governor")
            .field("resource", &self.guard.resource)
            .finish_non_exhaustive()
    }
}

/// Authenticates and authorizes MCP calls: the [`Governed`] skeleton over the auth
/// [`Governor`]. See the [module docs](super).
pub type OAuthGuard<S> = Governed<Governor, S>;

/// Why a call is refused, before it becomes an answer.
struct Denied {
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
    /// Records the refusal and makes the answer: the JSON-RPC error, and the challenge.
    fn refuse(&self, r: Denied, x: &Exchange) -> Refusal {
        x.deny(Denial::new("auth", r.kind, r.status, r.message.clone()));
        let code = match r.status {
            StatusCode::FORBIDDEN => ErrorCode::FORBIDDEN,
            StatusCode::SERVICE_UNAVAILABLE => ErrorCode::UNAVAILABLE,
            StatusCode::BAD_REQUEST => ErrorCode::INVALID_REQUEST,
            _ => ErrorCode::UNAUTHORIZED,
        };
        let refusal = Refusal::new(r.status, JsonRpcError::new(code, r.message.clone()));
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            return refusal.header(header::RETRY_AFTER, HeaderValue::from_static("5"));
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
        match HeaderValue::from_str(&challenge) {
            Ok(v) => refusal.header(header::WWW_AUTHENTICATE, v),
            Err(_) => refusal,
        }
    }

    fn unauthenticated(&self, error: Option<&'static str>, message: impl Into<String>) -> Denied {
        Denied {
            status: StatusCode::UNAUTHORIZED,
            kind: DenialKind::Unauthenticated,
            error,
            scope: self.scopes.clone(),
            message: message.into(),
        }
    }

    /// The bearer token of `req`: its `Authorization` header (shared, not copied).
    fn bearer(&self, req: &Req) -> Result<HeaderValue, Denied> {
        if req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv.starts_with("access_token=")))
        {
            return Err(Denied {
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
        match v.get(..7) {
            Some(p) if p.eq_ignore_ascii_case(b"bearer ") => {
                match std::str::from_utf8(&v[7..]).map(str::trim) {
                    Ok(t) if !t.is_empty() => Ok(value),
                    _ => Err(self.unauthenticated(Some("invalid_token"), "malformed bearer token")),
                }
            }
            _ => Err(self.unauthenticated(
                None,
                "authorization required: only Bearer tokens are accepted",
            )),
        }
    }

    /// After verification: the audience, the scopes the call needs, list filtering, and the
    /// request made ready for the upstream — all but the upstream's credential.
    fn authorize(
        &self,
        req: &mut Req,
        verified: Result<Verified, VerifyError>,
        x: &Exchange,
    ) -> Result<Verified, Denied> {
        let verified = match verified {
            Ok(v) => v,
            Err(VerifyError::Unavailable(why)) => {
                tracing::warn!(error = %why, "token verification unavailable");
                return Err(Denied {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    kind: DenialKind::Unavailable,
                    error: None,
                    scope: Vec::new(),
                    message: "the token cannot be verified right now; retry shortly".into(),
                });
            }
            Err(VerifyError::NotMine) => {
                let why = self
                    .verifier
                    .unrecognised()
                    .unwrap_or(super::verify::NOT_RECOGNISED);
                return Err(self.unauthenticated(Some("invalid_token"), why));
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
        let who = &verified.principal;
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
            return Err(Denied {
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
                if self.permissions.filters(&self.upstream, target) {
                    x.observe(ListFilter {
                        id: id.clone(),
                        target,
                        upstream: self.upstream.clone(),
                        principal: who.clone(),
                        permissions: self.permissions.clone(),
                        restricts: self.permissions.may_restrict(&self.upstream, target, who),
                        modern: view
                            .is_some_and(|v| v.protocol().era == mcp_gateway_core::Era::Modern),
                    });
                }
            }
        }
        // Handlers behind the gateway (an axum `Extension<Principal>`) see who is calling.
        req.extensions_mut().insert(who.clone());
        // No token passthrough: the upstream gets the gateway's own credential, if any.
        req.headers_mut().remove(header::AUTHORIZATION);
        Ok(verified)
    }

    /// The upstream's credential in the request, or the refusal for want of one.
    fn credential(
        &self,
        req: &mut Req,
        answer: Result<Option<HeaderValue>, CredentialError>,
    ) -> Result<(), Denied> {
        match answer {
            Ok(Some(v)) => {
                req.extensions_mut().insert(UpstreamAuthorization(v));
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                tracing::warn!(upstream = %self.upstream, error = %e, "upstream credentials unavailable");
                Err(Denied {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    kind: DenialKind::Unavailable,
                    error: None,
                    scope: Vec::new(),
                    message:
                        "the gateway could not obtain credentials for the upstream; retry shortly"
                            .into(),
                })
            }
        }
    }
}

impl Governor {
    /// Everything after verification; waits only for an upstream credential fetched over the
    /// network.
    fn after_verify(
        &self,
        mut req: Req,
        token: HeaderValue,
        verified: Result<Verified, VerifyError>,
        x: &Exchange,
    ) -> Decision<Req> {
        let g = &self.guard;
        let verified = match g.authorize(&mut req, verified, x) {
            Ok(v) => v,
            Err(d) => return Decision::Refuse(g.refuse(d, x)),
        };
        let exchanged = verified.audiences.is_some();
        match &g.credentials {
            UpstreamCredentials::None => Decision::Pass(req),
            UpstreamCredentials::Static(v) => {
                let v = v.clone();
                match g.credential(&mut req, Ok(Some(v))) {
                    Ok(()) => Decision::Pass(req),
                    Err(d) => Decision::Refuse(g.refuse(d, x)),
                }
            }
            _ => {
                let this = self.clone();
                let x = x.clone();
                Decision::Wait(Box::pin(async move {
                    let g = &this.guard;
                    let caller = exchanged.then(|| bearer_token(&token)).flatten();
                    let answer = g.credentials.authorization(caller).await;
                    match g.credential(&mut req, answer) {
                        Ok(()) => Ok(req),
                        Err(d) => Err(g.refuse(d, &x)),
                    }
                }))
            }
        }
    }
}

/// The token of a `Bearer` header value checked by [`Guard::bearer`].
fn bearer_token(value: &HeaderValue) -> Option<&str> {
    std::str::from_utf8(value.as_bytes().get(7..)?)
        .ok()
        .map(str::trim)
}

impl Govern for Governor {
    fn admit(&self, req: Req, x: &Exchange) -> Decision<Req> {
        let g = &self.guard;
        let value = match g.bearer(&req) {
            Ok(v) => v,
            Err(d) => return Decision::Refuse(g.refuse(d, x)),
        };
        let Some(token) = bearer_token(&value) else {
            let d = g.unauthenticated(Some("invalid_token"), "malformed bearer token");
            return Decision::Refuse(g.refuse(d, x));
        };
        let k = g.cache.key(token);
        if let Some(answer) = g.cache.get(&k) {
            // The same token again: a hash and a lookup, no future.
            return self.after_verify(req, value, answer, x);
        }
        let this = self.clone();
        let x = x.clone();
        Decision::Wait(Box::pin(async move {
            let g = &this.guard;
            let answer = match bearer_token(&value) {
                Some(token) => g.verifier.verify(token).await,
                None => Err(VerifyError::Invalid("malformed bearer token".into())),
            };
            g.cache.put(k, &answer);
            match this.after_verify(req, value, answer, &x) {
                Decision::Pass(req) => Ok(req),
                Decision::Refuse(r) => Err(r),
                Decision::Wait(f) => f.await,
            }
        }))
    }
}

/// Reads the principal an [`OAuthGuard`] established for this request.
pub fn principal(ext: &http::Extensions) -> Option<Principal> {
    Exchange::from_extensions(ext).and_then(|x| x.update(|r| r.principal.clone()))
}
