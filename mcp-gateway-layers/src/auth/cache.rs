//! The verified-token cache: the same token twice costs a hash and a lookup, not a signature
//! check or a network call. Keyed by the token's SHA-256, so no token is kept in clear.

use super::verify::{Verified, VerifyError};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// How long answers are kept.
#[derive(Clone, Copy, Debug)]
pub struct CachePolicy {
    /// Upper bound on how long a verified token is trusted without asking again (its `exp`
    /// ends it sooner). For introspected tokens this is how long a revocation can go unseen.
    pub max_ttl: Duration,
    /// How long a refused token stays refused without asking again.
    pub negative_ttl: Duration,
    /// Most entries kept.
    pub max_entries: usize,
}

impl Default for CachePolicy {
    fn default() -> Self {
        Self {
            max_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(5),
            max_entries: 100_000,
        }
    }
}

struct Entry {
    answer: Result<Verified, VerifyError>,
    until: Instant,
}

const SHARDS: usize = 16;

/// A bounded, sharded cache of verification answers.
pub struct TokenCache {
    policy: CachePolicy,
    shards: Vec<Mutex<HashMap<[u8; 32], Entry>>>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// The cache key of a token.
pub(crate) fn key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl TokenCache {
    /// An empty cache.
    pub fn new(policy: CachePolicy) -> Self {
        Self {
            policy,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, k: &[u8; 32]) -> &Mutex<HashMap<[u8; 32], Entry>> {
        &self.shards[usize::from(k[0]) % SHARDS]
    }

    /// The cached answer for `k`, if still fresh.
    pub fn get(&self, k: &[u8; 32]) -> Option<Result<Verified, VerifyError>> {
        let map = self.shard(k).lock().unwrap_or_else(|p| p.into_inner());
        let e = map.get(k)?;
        (Instant::now() < e.until).then(|| e.answer.clone())
    }

    /// Stores an answer. Answers that say "could not check now" are not stored.
    pub fn put(&self, k: [u8; 32], answer: &Result<Verified, VerifyError>) {
        let now = Instant::now();
        let ttl = match answer {
            Ok(v) => {
                let left = v.expires.map_or(self.policy.max_ttl, |exp| {
                    exp.duration_since(SystemTime::now()).unwrap_or_default()
                });
                left.min(self.policy.max_ttl)
            }
            Err(VerifyError::Invalid(_)) => self.policy.negative_ttl,
            Err(_) => return,
        };
        if ttl.is_zero() {
            return;
        }
        let cap = (self.policy.max_entries / SHARDS).max(1);
        let mut map = self.shard(&k).lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= cap && !map.contains_key(&k) {
            map.retain(|_, e| e.until > now);
            if map.len() >= cap {
                // Still full of live entries: drop an arbitrary one.
                if let Some(victim) = map.keys().next().copied() {
                    map.remove(&victim);
                }
            }
        }
        map.insert(
            k,
            Entry {
                answer: answer.clone(),
                until: now + ttl,
            },
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use mcp_gateway_core::Principal;

    #[test]
    fn bounded_and_expiring() {
        let c = TokenCache::new(CachePolicy {
            max_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(5),
            max_entries: 32,
        });
        let ok = Ok(Verified::new(Principal::anonymous(), None, None));
        for i in 0..1000 {
            c.put(key(&format!("t{i}")), &ok);
        }
        let total: usize = c.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(total <= 32, "{total}");
        c.put(key("x"), &ok);
        assert!(c.get(&key("x")).unwrap().is_ok());
        // Already expired: not stored.
        let gone = Ok(Verified::new(
            Principal::anonymous(),
            None,
            Some(SystemTime::now() - Duration::from_secs(1)),
        ));
        c.put(key("old"), &gone);
        assert!(c.get(&key("old")).is_none());
        // "Could not check now" is never cached.
        c.put(key("down"), &Err(VerifyError::Unavailable("x".into())));
        assert!(c.get(&key("down")).is_none());
        c.put(key("bad"), &Err(VerifyError::Invalid("x".into())));
        assert!(c.get(&key("bad")).unwrap().is_err());
    }
}
