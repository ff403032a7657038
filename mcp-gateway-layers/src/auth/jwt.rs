//! JWT access tokens, verified against the issuer's JWKS.
//!
//! - Keys come from the `jwks_uri` of the issuer's metadata (RFC 8414 or OIDC discovery).
//! - Only asymmetric algorithms from an allow-list are accepted: never `none`, never HMAC (a
//!   public key must not become an HMAC secret). The key's type must match the algorithm.
//! - `iss` must be the issuer; `exp` is required; `exp` and `nbf` are checked with a small
//!   leeway.
//! - A token signed with a key id the gateway has not seen triggers one JWKS re-fetch,
//!   rate-limited (default: at most once every 10 s), so key rotation costs no failed call and
//!   a flood of made-up key ids costs at most one fetch per interval.

use super::discovery::Issuer;
use super::verify::{TokenVerifier, Verified, VerifyError};
use base64::Engine;
use futures_util::future::BoxFuture;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use mcp_gateway_core::{Principal, PrincipalKind};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, UNIX_EPOCH};

/// The algorithms accepted by default: RSA (PKCS#1 and PSS), ECDSA and EdDSA.
pub const DEFAULT_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Family {
    Rsa,
    Ec,
    Ed,
}

fn family(alg: Algorithm) -> Option<Family> {
    match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => Some(Family::Rsa),
        Algorithm::ES256 | Algorithm::ES384 => Some(Family::Ec),
        Algorithm::EdDSA => Some(Family::Ed),
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => None,
    }
}

struct Key {
    key: DecodingKey,
    family: Family,
}

#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, Arc<Key>>,
    without_kid: Vec<Arc<Key>>,
}

struct Inner {
    issuer: Arc<Issuer>,
    algorithms: Vec<Algorithm>,
    leeway: u64,
    min_refetch: Duration,
    keys: RwLock<KeySet>,
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    fetches: AtomicU64,
}

/// Verifies JWT access tokens. Cheap to clone. See the module docs.
#[derive(Clone)]
pub struct JwtVerifier(Arc<Inner>);

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("issuer", &self.0.issuer.id())
            .field("algorithms", &self.0.algorithms)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    scope: Option<serde_json::Value>,
    #[serde(default)]
    scp: Option<serde_json::Value>,
    #[serde(default)]
    aud: Option<serde_json::Value>,
    #[serde(default)]
    exp: Option<u64>,
}

/// Strings from a JSON string (space-separated when `split`) or array of strings.
pub(crate) fn strings(v: Option<&serde_json::Value>, split: bool) -> Vec<String> {
    match v {
        Some(serde_json::Value::String(s)) if split => {
            s.split_ascii_whitespace().map(str::to_owned).collect()
        }
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// True when `token` has the shape of a JWS compact serialization.
fn looks_like_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_some() && parts.next().is_none()
}

impl JwtVerifier {
    /// A verifier for tokens of `issuer`, accepting [`DEFAULT_ALGORITHMS`], a 30 s leeway,
    /// and at most one JWKS fetch every 10 s for unknown key ids.
    pub fn new(issuer: Arc<Issuer>) -> Self {
        Self(Arc::new(Inner {
            issuer,
            algorithms: DEFAULT_ALGORITHMS.to_vec(),
            leeway: 30,
            min_refetch: Duration::from_secs(10),
            keys: RwLock::new(KeySet::default()),
            last_fetch: tokio::sync::Mutex::new(None),
            fetches: AtomicU64::new(0),
        }))
    }

    fn edit(self, f: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = Arc::try_unwrap(self.0).unwrap_or_else(|shared| Inner {
            issuer: shared.issuer.clone(),
            algorithms: shared.algorithms.clone(),
            leeway: shared.leeway,
            min_refetch: shared.min_refetch,
            keys: RwLock::new(KeySet::default()),
            last_fetch: tokio::sync::Mutex::new(None),
            fetches: AtomicU64::new(0),
        });
        f(&mut inner);
        Self(Arc::new(inner))
    }

    /// Accepts only these algorithms (HMAC ones are ignored: they are never accepted).
    pub fn algorithms(self, algs: &[Algorithm]) -> Self {
        let algs: Vec<Algorithm> = algs
            .iter()
            .copied()
            .filter(|a| family(*a).is_some())
            .collect();
        self.edit(|i| i.algorithms = algs)
    }

    /// Clock skew tolerated for `exp` and `nbf`.
    pub fn leeway(self, leeway: Duration) -> Self {
        self.edit(|i| i.leeway = leeway.as_secs())
    }

    /// The shortest interval between two JWKS fetches caused by unknown key ids.
    pub fn min_refetch_interval(self, d: Duration) -> Self {
        self.edit(|i| i.min_refetch = d)
    }

    /// How many times the JWKS was fetched (for metrics and tests).
    pub fn jwks_fetches(&self) -> u64 {
        self.0.fetches.load(Ordering::Relaxed)
    }

    /// Fetches the JWKS now: always for the first load (`force`), else unless another
    /// unknown-kid re-fetch happened within the interval.
    async fn refresh(&self, force: bool) -> Result<(), VerifyError> {
        // Only re-fetches caused by unknown key ids are rate-limited: the first one after
        // any fetch goes out at once (a rotation), a flood of made-up ids costs one per interval.
        let mut last = self.0.last_fetch.lock().await;
        if !force {
            if let Some(t) = *last {
                if t.elapsed() < self.0.min_refetch {
                    return Ok(());
                }
            }
            *last = Some(Instant::now());
        }
        let meta = self
            .0
            .issuer
            .metadata()
            .await
            .map_err(|e| VerifyError::Unavailable(e.to_string()))?;
        let Some(uri) = meta.jwks_uri.as_deref() else {
            return Err(VerifyError::Unavailable(
                "the issuer's metadata has no jwks_uri".into(),
            ));
        };
        self.0.fetches.fetch_add(1, Ordering::Relaxed);
        let doc: serde_json::Value = self
            .0
            .issuer
            .http()
            .get_json(uri)
            .await
            .map_err(|e| VerifyError::Unavailable(format!("JWKS: {e}")))?;
        let mut set = KeySet::default();
        for k in doc["keys"].as_array().into_iter().flatten() {
            // Keys this gateway cannot use (unknown types, symmetric keys) are skipped, not fatal.
            let Ok(jwk) = serde_json::from_value::<Jwk>(k.clone()) else {
                continue;
            };
            let fam = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Family::Rsa,
                AlgorithmParameters::EllipticCurve(_) => Family::Ec,
                AlgorithmParameters::OctetKeyPair(_) => Family::Ed,
                AlgorithmParameters::OctetKey(_) => continue,
            };
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            let key = Arc::new(Key { key, family: fam });
            match jwk.common.key_id {
                Some(kid) => {
                    set.by_kid.insert(kid, key);
                }
                None => set.without_kid.push(key),
            }
        }
        *self.0.keys.write().unwrap_or_else(|p| p.into_inner()) = set;
        Ok(())
    }

    fn candidates(&self, kid: Option<&str>, fam: Family) -> Vec<Arc<Key>> {
        let keys = self.0.keys.read().unwrap_or_else(|p| p.into_inner());
        let found: Vec<Arc<Key>> = match kid {
            Some(kid) => keys.by_kid.get(kid).cloned().into_iter().collect(),
            None => keys
                .without_kid
                .iter()
                .chain(keys.by_kid.values())
                .cloned()
                .collect(),
        };
        // The key's type must be the algorithm's: an RSA key never checks an HMAC or EC tag.
        found.into_iter().filter(|k| k.family == fam).collect()
    }

    async fn check(&self, token: &str) -> Result<Verified, VerifyError> {
        if !looks_like_jwt(token) {
            return Err(VerifyError::NotMine);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            // Name the algorithm when that is what failed (`none`, say), else say malformed.
            let alg = token
                .split('.')
                .next()
                .and_then(|h| {
                    base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(h)
                        .ok()
                })
                .and_then(|h| serde_json::from_slice::<serde_json::Value>(&h).ok())
                .and_then(|h| h["alg"].as_str().map(str::to_owned));
            VerifyError::Invalid(match alg {
                Some(a) => format!("token algorithm {a:?} is not accepted"),
                None => "malformed token: its header is not valid JSON in base64url".into(),
            })
        })?;
        let alg = header.alg;
        let fam = match family(alg) {
            Some(f) if self.0.algorithms.contains(&alg) => f,
            _ => {
                return Err(VerifyError::Invalid(format!(
                    "token algorithm {alg:?} is not accepted"
                )))
            }
        };
        let kid = header.kid.as_deref();
        let mut keys = self.candidates(kid, fam);
        if keys.is_empty() {
            let first = self
                .0
                .keys
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .by_kid
                .is_empty();
            self.refresh(first).await?;
            keys = self.candidates(kid, fam);
        }
        if keys.is_empty() {
            return Err(VerifyError::Invalid(match kid {
                Some(k) => format!("token signed with an unknown key id {k:?}"),
                None => "no key of the issuer matches the token".into(),
            }));
        }
        let mut v = Validation::new(alg);
        v.algorithms = vec![alg];
        v.leeway = self.0.leeway;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.validate_aud = false; // checked by the guard against the route's resource
        v.set_issuer(&[self.0.issuer.id()]);
        v.set_required_spec_claims(&["exp", "iss"]);
        let mut last = None;
        for key in keys {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &v) {
                Ok(data) => return Ok(to_verified(data.claims)),
                Err(e) => last = Some(e),
            }
        }
        let why = last.map_or_else(String::new, |e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => "token expired".into(),
            jsonwebtoken::errors::ErrorKind::ImmatureSignature => {
                "token not valid yet (nbf)".into()
            }
            jsonwebtoken::errors::ErrorKind::InvalidIssuer => "token issuer is not trusted".into(),
            jsonwebtoken::errors::ErrorKind::InvalidSignature => "token signature invalid".into(),
            jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(c) => {
                format!("token has no {c:?} claim")
            }
            jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => {
                "token algorithm does not match its key".into()
            }
            _ => "token rejected: its claims or encoding are invalid".into(),
        });
        Err(VerifyError::Invalid(why))
    }
}

fn to_verified(c: Claims) -> Verified {
    let client = c.client_id.or(c.azp);
    let sub = c.sub.or_else(|| client.clone()).unwrap_or_default();
    let kind = if client.as_deref() == Some(sub.as_str()) {
        PrincipalKind::Service
    } else {
        PrincipalKind::User
    };
    let mut scopes = strings(c.scope.as_ref(), true);
    scopes.extend(strings(c.scp.as_ref(), true));
    let mut p = Principal::new(sub, kind).with_scopes(scopes);
    if let Some(client) = client {
        p = p.with_client_id(client);
    }
    let expires = c.exp.map(|e| UNIX_EPOCH + Duration::from_secs(e));
    Verified::new(p, Some(strings(c.aud.as_ref(), false)), expires)
}

impl TokenVerifier for JwtVerifier {
    fn verify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Verified, VerifyError>> {
        Box::pin(self.check(token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_shape() {
        assert!(looks_like_jwt("eyJh.eyJz.c2ln"));
        assert!(looks_like_jwt("eyJh.eyJz."));
        assert!(!looks_like_jwt("opaque-token"));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a.b.c.d"));
        assert!(!looks_like_jwt("a+.b.c"));
    }

    #[test]
    fn hmac_is_never_a_family() {
        assert_eq!(family(Algorithm::HS256), None);
        assert_eq!(family(Algorithm::ES256), Some(Family::Ec));
    }
}
