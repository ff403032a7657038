//! What the gateway presents to an upstream server: never the caller's token.
//!
//! - [`UpstreamCredentials::None`] (default): no `Authorization` header.
//! - [`UpstreamCredentials::Static`]: a fixed header value (a secret from the environment or a
//!   file).
//! - [`UpstreamCredentials::ClientCredentials`]: a token the gateway obtains for itself with
//!   the client credentials grant (through the `oauth2` crate) and renews before it expires.
//! - [`UpstreamCredentials::TokenExchange`]: RFC 8693 — the caller's token is exchanged for one
//!   minted for the upstream, on the caller's behalf; exchanged tokens are cached per caller
//!   token until they expire.

use super::discovery::Issuer;
use super::introspect::ClientCredentials;
use base64::Engine;
use http::{header, HeaderValue, Request};
use oauth2::basic::BasicClient;
use oauth2::{ClientId, ClientSecret, Scope, TokenResponse, TokenUrl};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The grant type of RFC 8693.
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The token type of an access token (RFC 8693 §3).
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// Why upstream credentials could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// The authorization server refused or could not be reached.
    #[error("upstream credentials: {0}")]
    Token(String),
}

/// Where and as whom the gateway asks for tokens.
#[derive(Clone, Debug)]
pub struct TokenSource {
    issuer: Arc<Issuer>,
    token_url: Option<String>,
    creds: ClientCredentials,
    scopes: Vec<String>,
    resource: Option<String>,
}

impl TokenSource {
    /// Tokens from `issuer`'s token endpoint (or `token_url` when given), as `creds`, for
    /// `resource` (RFC 8707) with `scopes`.
    pub fn new(
        issuer: Arc<Issuer>,
        token_url: Option<String>,
        creds: ClientCredentials,
        scopes: Vec<String>,
        resource: Option<String>,
    ) -> Self {
        Self {
            issuer,
            token_url,
            creds,
            scopes,
            resource,
        }
    }

    async fn token_url(&self) -> Result<String, CredentialError> {
        if let Some(u) = &self.token_url {
            return Ok(u.clone());
        }
        let meta = self
            .issuer
            .metadata()
            .await
            .map_err(|e| CredentialError::Token(e.to_string()))?;
        meta.token_endpoint
            .clone()
            .ok_or_else(|| CredentialError::Token("the issuer has no token_endpoint".into()))
    }
}

/// A token and when to stop using it.
#[derive(Clone)]
struct Cached {
    value: HeaderValue,
    renew_at: Instant,
}

fn bearer(token: &str) -> Result<HeaderValue, CredentialError> {
    HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| CredentialError::Token("the token is not a valid header value".into()))
}

/// When to renew a token that lives `expires_in`: 30 s early (or at half-life for short ones).
fn renew_at(expires_in: Option<Duration>) -> Instant {
    let life = expires_in.unwrap_or(Duration::from_secs(300));
    let early = Duration::from_secs(30).min(life / 2);
    Instant::now() + life.saturating_sub(early)
}

/// Client credentials: one token for the gateway, renewed before it expires.
#[derive(Debug)]
pub struct ClientCredentialsSource {
    source: TokenSource,
    cached: tokio::sync::Mutex<Option<Cached>>,
}

impl std::fmt::Debug for Cached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cached").finish_non_exhaustive()
    }
}

impl ClientCredentialsSource {
    /// Tokens from `source`.
    pub fn new(source: TokenSource) -> Self {
        Self {
            source,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    async fn header(&self) -> Result<HeaderValue, CredentialError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref() {
            if Instant::now() < c.renew_at {
                return Ok(c.value.clone());
            }
        }
        let s = &self.source;
        let url = TokenUrl::new(s.token_url().await?)
            .map_err(|e| CredentialError::Token(format!("token endpoint: {e}")))?;
        let client = BasicClient::new(ClientId::new(s.creds.client_id.clone()))
            .set_client_secret(ClientSecret::new(s.creds.client_secret.clone()))
            .set_token_uri(url);
        let http = s.issuer.http().clone();
        let send = move |req: oauth2::HttpRequest| {
            let http = http.clone();
            async move { http.oauth2(req).await }
        };
        let mut req = client
            .exchange_client_credentials()
            .add_scopes(s.scopes.iter().cloned().map(Scope::new));
        if let Some(r) = &s.resource {
            req = req.add_extra_param("resource", r.clone());
        }
        let resp = req
            .request_async(&send)
            .await
            .map_err(|e| CredentialError::Token(format!("client credentials grant: {e}")))?;
        let value = bearer(resp.access_token().secret())?;
        *cached = Some(Cached {
            value: value.clone(),
            renew_at: renew_at(resp.expires_in()),
        });
        Ok(value)
    }
}

/// Token exchange: the caller's token becomes one minted for the upstream.
#[derive(Debug)]
pub struct TokenExchangeSource {
    source: TokenSource,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
    max_entries: usize,
}

fn percent(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl TokenExchangeSource {
    /// Exchanges at `source`, caching at most 10,000 exchanged tokens.
    pub fn new(source: TokenSource) -> Self {
        Self {
            source,
            cache: Mutex::new(HashMap::new()),
            max_entries: 10_000,
        }
    }

    async fn header(&self, caller_token: &str) -> Result<HeaderValue, CredentialError> {
        let key: [u8; 32] = Sha256::digest(caller_token.as_bytes()).into();
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = cache.get(&key) {
                if Instant::now() < c.renew_at {
                    return Ok(c.value.clone());
                }
            }
        }
        let s = &self.source;
        let url = s.token_url().await?;
        let mut form = vec![
            ("grant_type", TOKEN_EXCHANGE_GRANT.to_owned()),
            ("subject_token", caller_token.to_owned()),
            ("subject_token_type", ACCESS_TOKEN_TYPE.to_owned()),
            ("requested_token_type", ACCESS_TOKEN_TYPE.to_owned()),
        ];
        if let Some(r) = &s.resource {
            form.push(("resource", r.clone()));
            form.push(("audience", r.clone()));
        }
        if !s.scopes.is_empty() {
            form.push(("scope", s.scopes.join(" ")));
        }
        let body: Vec<String> = form
            .iter()
            .map(|(k, v)| format!("{k}={}", percent(v)))
            .collect();
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            percent(&s.creds.client_id),
            percent(&s.creds.client_secret)
        ));
        let req = Request::post(url.as_str())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .header(header::AUTHORIZATION, format!("Basic {basic}"))
            .body(body.join("&").into_bytes())
            .map_err(|e| CredentialError::Token(format!("token endpoint {url:?}: {e}")))?;
        let resp = s
            .issuer
            .http()
            .send(req)
            .await
            .map_err(|e| CredentialError::Token(format!("token exchange: {e}")))?;
        if !resp.status().is_success() {
            let why = serde_json::from_slice::<serde_json::Value>(resp.body())
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("HTTP {}", resp.status().as_u16()));
            return Err(CredentialError::Token(format!(
                "token exchange refused: {why}"
            )));
        }
        let v: serde_json::Value = serde_json::from_slice(resp.body())
            .map_err(|e| CredentialError::Token(format!("token exchange answer: {e}")))?;
        let token = v["access_token"].as_str().ok_or_else(|| {
            CredentialError::Token("token exchange answer has no access_token".into())
        })?;
        let value = bearer(token)?;
        let expires_in = v["expires_in"].as_u64().map(Duration::from_secs);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= self.max_entries {
            let now = Instant::now();
            cache.retain(|_, c| c.renew_at > now);
            if cache.len() >= self.max_entries {
                cache.clear();
            }
        }
        cache.insert(
            key,
            Cached {
                value: value.clone(),
                renew_at: renew_at(expires_in),
            },
        );
        Ok(value)
    }
}

/// How the gateway authenticates to one upstream. See the module docs.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum UpstreamCredentials {
    /// No credentials.
    #[default]
    None,
    /// A fixed `Authorization` value.
    Static(HeaderValue),
    /// A token of the gateway's own (client credentials grant).
    ClientCredentials(Arc<ClientCredentialsSource>),
    /// A token exchanged for the caller's (RFC 8693).
    TokenExchange(Arc<TokenExchangeSource>),
}

impl UpstreamCredentials {
    /// The `Authorization` value to send upstream for a call made with `caller_token`.
    pub async fn authorization(
        &self,
        caller_token: Option<&str>,
    ) -> Result<Option<HeaderValue>, CredentialError> {
        match self {
            Self::None => Ok(None),
            Self::Static(v) => Ok(Some(v.clone())),
            Self::ClientCredentials(s) => s.header().await.map(Some),
            Self::TokenExchange(s) => match caller_token {
                Some(t) => s.header(t).await.map(Some),
                // An API key is the gateway's own credential: nothing to exchange.
                None => Err(CredentialError::Token(
                    "token exchange needs a caller token".into(),
                )),
            },
        }
    }
}
