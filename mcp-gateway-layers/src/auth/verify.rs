//! The token verifier trait, its result, and a chain of verifiers.

use futures_util::future::BoxFuture;
use mcp_gateway_core::Principal;
use std::sync::Arc;
use std::time::SystemTime;

/// What a verified token says.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Verified {
    /// Who the token speaks for.
    pub principal: Principal,
    /// The audiences the token was issued for (`aud`). `None` only for credentials that are
    /// not bound to an audience because they are this gateway's own (API keys); a token
    /// without `aud` has an empty list and is refused by the guard. Shared, so that a cached
    /// answer is handed out without copying the list.
    pub audiences: Option<Arc<[String]>>,
    /// When the token expires, if it says.
    pub expires: Option<SystemTime>,
}

impl Verified {
    /// A verified token for `principal`.
    pub fn new(
        principal: Principal,
        audiences: Option<Vec<String>>,
        expires: Option<SystemTime>,
    ) -> Self {
        Self {
            principal,
            audiences: audiences.map(Arc::from),
            expires,
        }
    }
}

/// What a client is told when no verifier handles its token.
pub(crate) const NOT_RECOGNISED: &str = "token not recognised by any configured verifier";

/// Why a token was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// This verifier does not handle tokens of this form (the next one in a chain may).
    #[error("token format not handled by this verifier")]
    NotMine,
    /// The token is invalid, expired, revoked or not for this gateway.
    #[error("{0}")]
    Invalid(String),
    /// The token could not be checked now (the authorization server is unreachable).
    #[error("token could not be verified now: {0}")]
    Unavailable(String),
}

/// Checks bearer tokens. Implementations: [`JwtVerifier`](super::JwtVerifier),
/// [`IntrospectionVerifier`](super::IntrospectionVerifier), [`ApiKeys`](super::ApiKeys); chain
/// them with [`Chain`]. A closure `Fn(&str) -> Result<Verified, VerifyError>` is a verifier too.
pub trait TokenVerifier: Send + Sync + 'static {
    /// Verifies `token` (the text after `Bearer `).
    fn verify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Verified, VerifyError>>;

    /// What the client is told when this verifier does not handle its token
    /// ([`VerifyError::NotMine`]) and no other one does: `"unknown API key"` for
    /// [`ApiKeys`](super::ApiKeys); `None` (the default) for "token not recognised by any
    /// configured verifier".
    fn unrecognised(&self) -> Option<&'static str> {
        None
    }
}

impl<F> TokenVerifier for F
where
    F: Fn(&str) -> Result<Verified, VerifyError> + Send + Sync + 'static,
{
    fn verify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Verified, VerifyError>> {
        let r = self(token);
        Box::pin(async move { r })
    }
}

/// Tries verifiers in order: the first that does not answer [`VerifyError::NotMine`] decides.
#[derive(Clone, Default)]
pub struct Chain(Vec<Arc<dyn TokenVerifier>>);

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Chain").field(&self.0.len()).finish()
    }
}

impl Chain {
    /// An empty chain (refuses every token).
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a verifier at the end.
    pub fn with(mut self, v: impl TokenVerifier) -> Self {
        self.0.push(Arc::new(v));
        self
    }
    /// Adds a shared verifier at the end.
    pub fn with_shared(mut self, v: Arc<dyn TokenVerifier>) -> Self {
        self.0.push(v);
        self
    }
    /// The number of verifiers.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl TokenVerifier for Chain {
    fn verify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Verified, VerifyError>> {
        Box::pin(async move {
            for v in &self.0 {
                match v.verify(token).await {
                    Err(VerifyError::NotMine) => continue,
                    other => return other,
                }
            }
            Err(VerifyError::Invalid(
                self.unrecognised().unwrap_or(NOT_RECOGNISED).into(),
            ))
        })
    }

    fn unrecognised(&self) -> Option<&'static str> {
        self.0.iter().find_map(|v| v.unrecognised())
    }
}
