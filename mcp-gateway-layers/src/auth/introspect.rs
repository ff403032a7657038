//! Opaque tokens, checked with the authorization server's RFC 7662 introspection endpoint
//! (through the `oauth2` crate), the gateway authenticating with its own client credentials.
//!
//! Caching is the guard's: an active answer is kept until the token's `exp`, bounded by the
//! guard's cache lifetime for introspected tokens; an inactive one for a short while, so a
//! flood of bad tokens does not become a flood of introspection calls.

use super::discovery::Issuer;
use super::verify::{TokenVerifier, Verified, VerifyError};
use futures_util::future::BoxFuture;
use mcp_gateway_core::{Principal, PrincipalKind};
use oauth2::basic::BasicClient;
use oauth2::{AccessToken, ClientId, ClientSecret, IntrospectionUrl, TokenIntrospectionResponse};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// The gateway's own client credentials at the authorization server.
#[derive(Clone)]
pub struct ClientCredentials {
    /// The client id.
    pub client_id: String,
    /// The client secret.
    pub client_secret: String,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .finish()
    }
}

/// Verifies tokens by introspection. Cheap to clone.
#[derive(Clone, Debug)]
pub struct IntrospectionVerifier {
    issuer: Arc<Issuer>,
    creds: ClientCredentials,
    calls: Arc<AtomicU64>,
}

impl IntrospectionVerifier {
    /// Introspects at `issuer`'s `introspection_endpoint` as `creds`.
    pub fn new(issuer: Arc<Issuer>, creds: ClientCredentials) -> Self {
        Self {
            issuer,
            creds,
            calls: Arc::default(),
        }
    }

    /// How many introspection calls were made (for metrics and tests).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    async fn check(&self, token: &str) -> Result<Verified, VerifyError> {
        let meta = self
            .issuer
            .metadata()
            .await
            .map_err(|e| VerifyError::Unavailable(e.to_string()))?;
        let Some(url) = meta.introspection_endpoint.as_deref() else {
            return Err(VerifyError::Unavailable(
                "the issuer's metadata has no introspection_endpoint".into(),
            ));
        };
        let url = IntrospectionUrl::new(url.to_owned())
            .map_err(|e| VerifyError::Unavailable(format!("introspection endpoint: {e}")))?;
        let client = BasicClient::new(ClientId::new(self.creds.client_id.clone()))
            .set_client_secret(ClientSecret::new(self.creds.client_secret.clone()))
            .set_introspection_url(url);
        let http = self.issuer.http().clone();
        let send = move |req: oauth2::HttpRequest| {
            let http = http.clone();
            async move { http.oauth2(req).await }
        };
        self.calls.fetch_add(1, Ordering::Relaxed);
        let token = AccessToken::new(token.to_owned());
        let answer = client
            .introspect(&token)
            .set_token_type_hint("access_token")
            .request_async(&send)
            .await
            .map_err(|e| VerifyError::Unavailable(format!("introspection failed: {e}")))?;
        if !answer.active() {
            return Err(VerifyError::Invalid(
                "token is not active (expired, revoked or unknown)".into(),
            ));
        }
        if let Some(iss) = answer.iss() {
            if iss.trim_end_matches('/') != self.issuer.id().trim_end_matches('/') {
                return Err(VerifyError::Invalid("token issuer is not trusted".into()));
            }
        }
        let client = answer.client_id().map(|c| c.as_str().to_owned());
        let sub = answer
            .sub()
            .map(str::to_owned)
            .or_else(|| client.clone())
            .unwrap_or_default();
        let kind = if client.as_deref() == Some(sub.as_str()) {
            PrincipalKind::Service
        } else {
            PrincipalKind::User
        };
        let scopes: Vec<String> = answer
            .scopes()
            .map(|s| s.iter().map(|x| x.as_str().to_owned()).collect())
            .unwrap_or_default();
        let mut p = Principal::new(sub, kind).with_scopes(scopes);
        if let Some(c) = client {
            p = p.with_client_id(c);
        }
        let audiences = answer.aud().cloned().unwrap_or_default();
        let expires = answer
            .exp()
            .and_then(|t| u64::try_from(t.timestamp()).ok())
            .map(|s| UNIX_EPOCH + Duration::from_secs(s));
        Ok(Verified::new(p, Some(audiences), expires))
    }
}

impl TokenVerifier for IntrospectionVerifier {
    fn verify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Verified, VerifyError>> {
        Box::pin(self.check(token))
    }
}
