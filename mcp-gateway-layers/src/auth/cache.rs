//! The verified-token cache: the same token twice costs a hash and a lookup, not a signature
//! check or a network call. Keyed by a keyed 128-bit hash of the token (SipHash-2-4 under a
//! secret, random key of the cache's own), so no token is kept in clear and nobody who does not
//! hold the key can make two tokens share an entry.

use super::verify::{Verified, VerifyError};
use siphasher::sip128::{Hasher128, SipHasher24};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
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

/// The cache key of a token: its keyed 128-bit hash ([`TokenCache::key`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey([u8; 16]);

/// A bounded, sharded cache of verification answers.
pub struct TokenCache {
    policy: CachePolicy,
    /// The secret key of the token hash: random for each cache.
    secret: (u64, u64),
    shards: Vec<Mutex<HashMap<CacheKey, Entry>>>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// A secret 64-bit value from the standard library's randomly keyed hasher (seeded from the
/// operating system's random source).
fn random_u64(salt: u64) -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(salt);
    h.finish()
}

impl TokenCache {
    /// An empty cache.
    pub fn new(policy: CachePolicy) -> Self {
        Self {
            policy,
            secret: (random_u64(0x746f_6b65_6e31), random_u64(0x746f_6b65_6e32)),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// The cache key of `token`. A keyed hash rather than SHA-256: as collision-free for anyone
    /// without the key, and a fraction of the work on CPUs without SHA instructions (an
    /// ~800-byte JWT: ~4k instructions instead of ~34k).
    pub fn key(&self, token: &str) -> CacheKey {
        let mut h = SipHasher24::new_with_keys(self.secret.0, self.secret.1);
        h.write(token.as_bytes());
        CacheKey(h.finish128().as_bytes())
    }

    fn shard(&self, k: &CacheKey) -> &Mutex<HashMap<CacheKey, Entry>> {
        &self.shards[usize::from(k.0[0]) % SHARDS]
    }

    /// The cached answer for `k`, if still fresh.
    pub fn get(&self, k: &CacheKey) -> Option<Result<Verified, VerifyError>> {
        let map = self.shard(k).lock().unwrap_or_else(|p| p.into_inner());
        let e = map.get(k)?;
        (Instant::now() < e.until).then(|| e.answer.clone())
    }

    /// Stores an answer. Answers that say "could not check now" are not stored.
    pub fn put(&self, k: CacheKey, answer: &Result<Verified, VerifyError>) {
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
            c.put(c.key(&format!("t{i}")), &ok);
        }
        let total: usize = c.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(total <= 32, "{total}");
        c.put(c.key("x"), &ok);
        assert!(c.get(&c.key("x")).unwrap().is_ok());
        // Already expired: not stored.
        let gone = Ok(Verified::new(
            Principal::anonymous(),
            None,
            Some(SystemTime::now() - Duration::from_secs(1)),
        ));
        c.put(c.key("old"), &gone);
        assert!(c.get(&c.key("old")).is_none());
        // "Could not check now" is never cached.
        c.put(c.key("down"), &Err(VerifyError::Unavailable("x".into())));
        assert!(c.get(&c.key("down")).is_none());
        c.put(c.key("bad"), &Err(VerifyError::Invalid("x".into())));
        assert!(c.get(&c.key("bad")).unwrap().is_err());
    }

    #[test]
    fn keys_are_keyed() {
        let (a, b) = (
            TokenCache::new(CachePolicy::default()),
            TokenCache::new(CachePolicy::default()),
        );
        assert_eq!(a.key("token"), a.key("token"));
        assert_ne!(a.key("token"), a.key("token2"));
        // Another cache, another secret: the same token hashes differently.
        assert_ne!(a.key("token"), b.key("token"));
    }
}
