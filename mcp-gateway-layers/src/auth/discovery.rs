//! Authorization server metadata (RFC 8414, with OpenID Connect discovery as fallback),
//! fetched once on first use and retried while it fails.

use crate::http_client::{AsClient, HttpError};
use serde::Deserialize;
use std::sync::Arc;
use tokio::sync::OnceCell;

/// What the gateway needs from the authorization server's metadata.
#[derive(Clone, Debug, Deserialize)]
#[non_exhaustive]
pub struct AsMetadata {
    /// The issuer identifier; must equal the configured issuer.
    pub issuer: String,
    /// Where the signing keys are.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// RFC 7662 introspection endpoint.
    #[serde(default)]
    pub introspection_endpoint: Option<String>,
    /// Token endpoint (client credentials, token exchange).
    #[serde(default)]
    pub token_endpoint: Option<String>,
}

/// Why discovery failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// Neither metadata document could be fetched.
    #[error("authorization server metadata for {issuer}: {error}")]
    Fetch {
        /// The issuer.
        issuer: String,
        /// The last error.
        error: HttpError,
    },
    /// The metadata names another issuer (a mix-up defence, RFC 8414 §3.3).
    #[error("metadata issuer {found:?} is not the configured issuer {expected:?}")]
    IssuerMismatch {
        /// Configured.
        expected: String,
        /// Found.
        found: String,
    },
}

/// The metadata URLs to try for `issuer`, in order: RFC 8414 (well-known segment inserted
/// before the issuer's path), then OpenID Connect discovery (appended).
pub fn metadata_urls(issuer: &str) -> Vec<String> {
    let trimmed = issuer.trim_end_matches('/');
    let mut urls = Vec::new();
    if let Some(rest) = trimmed
        .strip_prefix("https://")
        .map(|r| ("https://", r))
        .or_else(|| trimmed.strip_prefix("http://").map(|r| ("http://", r)))
    {
        let (scheme, rest) = rest;
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        urls.push(format!(
            "{scheme}{host}/.well-known/oauth-authorization-server{path}"
        ));
    }
    urls.push(format!("{trimmed}/.well-known/openid-configuration"));
    urls
}

/// An issuer whose metadata is fetched lazily and kept.
#[derive(Debug)]
pub struct Issuer {
    issuer: String,
    http: AsClient,
    metadata: OnceCell<Arc<AsMetadata>>,
}

impl Issuer {
    /// An issuer at `issuer`, fetched with `http`.
    pub fn new(issuer: impl Into<String>, http: AsClient) -> Self {
        Self {
            issuer: issuer.into(),
            http,
            metadata: OnceCell::new(),
        }
    }

    /// The issuer identifier.
    pub fn id(&self) -> &str {
        &self.issuer
    }

    /// The HTTP client.
    pub fn http(&self) -> &AsClient {
        &self.http
    }

    /// The metadata, fetched on first use (a failed fetch is retried by the next call).
    pub async fn metadata(&self) -> Result<Arc<AsMetadata>, DiscoveryError> {
        self.metadata
            .get_or_try_init(|| async {
                let mut last = None;
                for url in metadata_urls(&self.issuer) {
                    match self.http.get_json::<AsMetadata>(&url).await {
                        Ok(m) => {
                            if m.issuer.trim_end_matches('/') != self.issuer.trim_end_matches('/') {
                                return Err(DiscoveryError::IssuerMismatch {
                                    expected: self.issuer.clone(),
                                    found: m.issuer,
                                });
                            }
                            return Ok(Arc::new(m));
                        }
                        Err(e) => last = Some(e),
                    }
                }
                Err(DiscoveryError::Fetch {
                    issuer: self.issuer.clone(),
                    error: last.unwrap_or(HttpError::Url(self.issuer.clone())),
                })
            })
            .await
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::metadata_urls;

    #[test]
    fn well_known_urls() {
        assert_eq!(
            metadata_urls("https://as.example.com/tenant/1"),
            [
                "https://as.example.com/.well-known/oauth-authorization-server/tenant/1",
                "https://as.example.com/tenant/1/.well-known/openid-configuration"
            ]
        );
        assert_eq!(
            metadata_urls("http://127.0.0.1:9/"),
            [
                "http://127.0.0.1:9/.well-known/oauth-authorization-server",
                "http://127.0.0.1:9/.well-known/openid-configuration"
            ]
        );
    }
}
