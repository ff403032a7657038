//! Where budgets live: the [`LimitStore`] trait, its in-memory default [`MemoryStore`], and
//! the arithmetic both share.
//!
//! Every budget is a bucket of `per_minute` units refilled evenly over a minute, kept as one
//! number per key: its *theoretical arrival time* (GCRA), the moment the bucket would be full
//! again. A call that needs `n` units is admitted when, after taking them, the bucket would be
//! full again within one minute; otherwise it is told how long to wait. Output tokens are
//! charged after the fact and may push the arrival time further than a minute out: that is
//! debt, and every call waits until it is repaid.
//!
//! The request dimension of [`MemoryStore`] is `governor`'s keyed GCRA limiter; the token
//! buckets use the same arithmetic on a sharded map of their own, because `governor` has no
//! notion of charging after the fact.

use futures_util::future::{BoxFuture, Either, Ready};
use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// One minute in nanoseconds: the window of every budget.
pub(crate) const WINDOW_NS: u64 = 60_000_000_000;

/// A token bucket to check and charge: which one (0 is the key's global token budget, `i + 1`
/// the `i`-th rule), its size per minute, and the units asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenCheck {
    /// The bucket: 0 for the key's token budget, `i + 1` for rule `i`.
    pub bucket: u8,
    /// Tokens per minute (the bucket's size).
    pub per_minute: u64,
    /// Tokens this call takes now (its input tokens).
    pub cost: u64,
}

/// What one call asks of the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Demand {
    /// The key budgets are kept under (`agent:…`, `ip:…`, `header:…`).
    pub key: Arc<str>,
    /// Requests this call takes (its JSON-RPC requests; 0 leaves the request budget alone).
    pub requests: u32,
    /// Requests per minute, when the request dimension is limited.
    pub requests_per_minute: Option<NonZeroU32>,
    /// Token buckets to check and charge.
    pub tokens: Vec<TokenCheck>,
}

/// The state of one budget after a decision, for the `RateLimit` header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Remaining {
    /// Units left now (negative: debt).
    pub remaining: i64,
    /// Time until the bucket is full again.
    pub reset: Duration,
}

/// Which budget refused a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Dimension {
    /// The request budget.
    Requests,
    /// A token budget: 0 for the key's, `i + 1` for rule `i`.
    Tokens(u8),
}

/// A store's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// `None`: admitted (and charged). `Some`: refused by that budget; nothing was charged.
    pub denied_by: Option<Dimension>,
    /// When refused: how long until the call would be admitted.
    pub retry_after: Duration,
    /// The request budget after the decision, when limited.
    pub requests: Option<Remaining>,
    /// The key's token budget (bucket 0) after the decision, when limited.
    pub tokens: Option<Remaining>,
}

impl Verdict {
    /// True when the call was admitted.
    pub fn admitted(&self) -> bool {
        self.denied_by.is_none()
    }
}

/// A store could not decide (Redis unreachable, too slow).
#[derive(Debug, thiserror::Error)]
#[error("rate-limit store unavailable: {0}")]
pub struct StoreError(pub String);

/// The future of [`LimitStore::decide`]: ready at once for in-memory stores, a network round
/// trip for shared ones.
pub type StoreFuture =
    Either<Ready<Result<Verdict, StoreError>>, BoxFuture<'static, Result<Verdict, StoreError>>>;

/// Where budgets are kept. Implement it to keep them elsewhere.
pub trait LimitStore: Send + Sync + 'static {
    /// Checks every budget of `demand` at once and, only when all admit, charges them all.
    fn decide(&self, demand: &Demand) -> StoreFuture;
    /// Charges (or, negative, refunds) token buckets after the fact, without checking: the
    /// output tokens of a response that has ended. May push a bucket into debt. Must not
    /// block; a shared store sends it in the background.
    fn charge(&self, key: Arc<str>, charges: Vec<(TokenCheck, i64)>);
}

impl<T: LimitStore + ?Sized> LimitStore for Arc<T> {
    fn decide(&self, demand: &Demand) -> StoreFuture {
        (**self).decide(demand)
    }
    fn charge(&self, key: Arc<str>, charges: Vec<(TokenCheck, i64)>) {
        (**self).charge(key, charges);
    }
}

/// Nanoseconds one unit of a `per_minute` bucket takes to refill, times `n`.
pub(crate) fn cost_ns(per_minute: u64, n: u64) -> u64 {
    let ns = u128::from(n) * u128::from(WINDOW_NS) / u128::from(per_minute.max(1));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// Units left in a bucket whose arrival time is `tat`, at `now` (negative: debt).
pub(crate) fn remaining(per_minute: u64, tat: u64, now: u64) -> i64 {
    let used_ns = i128::from(tat) - i128::from(now);
    let left_ns = i128::from(WINDOW_NS) - used_ns.max(0);
    let units = left_ns * i128::from(per_minute) / i128::from(WINDOW_NS);
    i64::try_from(units).unwrap_or(if units < 0 { i64::MIN } else { i64::MAX })
}

/// The GCRA test for `n` units: the new arrival time when admitted, or the wait.
///
/// A call asking for more than the bucket holds is admitted when the bucket is full (it could
/// never be otherwise) and charged in full: it leaves the bucket in debt.
pub(crate) fn gcra_test(per_minute: u64, tat: u64, now: u64, n: u64) -> Result<u64, Duration> {
    let start = tat.max(now);
    let check = start.saturating_add(cost_ns(per_minute, n.min(per_minute)));
    let limit = now.saturating_add(WINDOW_NS);
    if check > limit {
        return Err(Duration::from_nanos(check - limit));
    }
    Ok(start.saturating_add(cost_ns(per_minute, n)))
}

/// Charges `n` units (refunds, when negative) without a test.
pub(crate) fn gcra_charge(per_minute: u64, tat: u64, now: u64, n: i64) -> u64 {
    let start = tat.max(now);
    if n >= 0 {
        start.saturating_add(cost_ns(per_minute, n.unsigned_abs()))
    } else {
        start
            .saturating_sub(cost_ns(per_minute, n.unsigned_abs()))
            .max(now)
    }
}

/// Hashes keys that are already keyed hashes (SipHash of the key) without hashing again.
#[derive(Clone, Copy, Default)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u8(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
    fn write_u8(&mut self, n: u8) {
        self.0 = self.0.rotate_left(7) ^ u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type Fast = BuildHasherDefault<PreHashed>;

/// Token buckets of some keys: (key hash, bucket) → theoretical arrival time (ns).
type Shard = HashMap<(u64, u8), u64, Fast>;

const SHARDS: usize = 64;
/// How often (in clock time) idle keys are swept out of memory.
const SWEEP_EVERY_NS: u64 = 10_000_000_000;

type Governor<C> = RateLimiter<u64, DashMapStateStore<u64, Fast>, C, StateInformationMiddleware>;

/// The in-memory store: budgets of this process only.
///
/// Keys are kept as 64-bit keyed hashes (SipHash with a per-process random key, so a client
/// cannot aim collisions), which keeps a tracked key to a few dozen bytes. A key whose buckets
/// are all full again holds no information and is dropped: every 10 s of clock time, the
/// decision that notices sweeps the idle keys out ([`retain_recent`](Self::retain_recent)).
/// Memory is thus bounded by the keys active in the last minute.
pub struct MemoryStore<C: Clock = DefaultClock> {
    clock: C,
    origin: C::Instant,
    hasher: RandomState,
    requests: Option<(NonZeroU32, Governor<C>)>,
    tokens: Box<[Mutex<Shard>]>,
    last_sweep: AtomicU64,
}

impl<C: Clock> std::fmt::Debug for MemoryStore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("requests_per_minute", &self.requests.as_ref().map(|r| r.0))
            .field("keys", &self.len())
            .finish_non_exhaustive()
    }
}

impl MemoryStore<DefaultClock> {
    /// A store on the system's monotonic clock. `requests_per_minute` sizes the request
    /// budget (`governor` needs it up front); token budgets come with each [`Demand`].
    pub fn new(requests_per_minute: Option<NonZeroU32>) -> Self {
        Self::with_clock(requests_per_minute, DefaultClock::default())
    }
}

impl<C: Clock + Clone> MemoryStore<C> {
    /// A store on `clock`: `governor::clock::FakeRelativeClock` in tests.
    pub fn with_clock(requests_per_minute: Option<NonZeroU32>, clock: C) -> Self {
        let requests = requests_per_minute.map(|n| {
            let limiter =
                RateLimiter::<u64, _, C, governor::middleware::NoOpMiddleware<C::Instant>>::new(
                    Quota::per_minute(n),
                    DashMapStateStore::<u64, Fast>::with_hasher(Fast::default()),
                    clock.clone(),
                )
                .with_middleware::<StateInformationMiddleware>();
            (n, limiter)
        });
        Self {
            origin: clock.now(),
            clock,
            hasher: RandomState::new(),
            requests,
            tokens: (0..SHARDS).map(|_| Mutex::default()).collect(),
            last_sweep: AtomicU64::new(0),
        }
    }
}

impl<C: Clock> MemoryStore<C> {
    fn now_ns(&self) -> u64 {
        self.clock.now().duration_since(self.origin).as_u64()
    }

    fn shard(&self, h: u64) -> std::sync::MutexGuard<'_, Shard> {
        // The low bits pick the shard; the map hashes the whole key again.
        self.tokens[(h as usize) % SHARDS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The number of keys tracked (request and token buckets).
    pub fn len(&self) -> usize {
        let tokens: usize = self
            .tokens
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum();
        tokens + self.requests.as_ref().map_or(0, |(_, g)| g.len())
    }

    /// True when no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the keys whose buckets are all full again: they hold no information.
    pub fn retain_recent(&self) {
        let now = self.now_ns();
        for shard in &*self.tokens {
            let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
            map.retain(|_, tat| *tat > now);
            if map.capacity() > 64 && map.capacity() > 4 * map.len() {
                map.shrink_to_fit();
            }
        }
        if let Some((_, g)) = &self.requests {
            g.retain_recent();
            g.shrink_to_fit();
        }
    }

    fn maybe_sweep(&self, now: u64) {
        let last = self.last_sweep.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= SWEEP_EVERY_NS
            && self
                .last_sweep
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.retain_recent();
        }
    }

    /// Decides synchronously (what [`LimitStore::decide`] returns, ready).
    pub fn decide_now(&self, demand: &Demand) -> Verdict {
        let now = self.now_ns();
        self.maybe_sweep(now);
        let h = self.hasher.hash_one(&*demand.key);
        let mut verdict = Verdict {
            denied_by: None,
            retry_after: Duration::ZERO,
            requests: None,
            tokens: None,
        };
        // Token buckets first, without charging: a refusal must charge nothing.
        let mut shard = (!demand.tokens.is_empty()).then(|| self.shard(h));
        let mut next = Vec::with_capacity(demand.tokens.len());
        if let Some(map) = shard.as_deref() {
            for t in &demand.tokens {
                let tat = map.get(&(h, t.bucket)).copied().unwrap_or(0);
                match gcra_test(t.per_minute, tat, now, t.cost) {
                    Ok(new) => next.push(new),
                    Err(wait) => {
                        if wait >= verdict.retry_after {
                            verdict.retry_after = wait;
                            verdict.denied_by = Some(Dimension::Tokens(t.bucket));
                        }
                        next.push(tat);
                    }
                }
                if t.bucket == 0 {
                    verdict.tokens = Some(Remaining {
                        remaining: remaining(t.per_minute, tat, now),
                        reset: Duration::from_nanos(tat.saturating_sub(now)),
                    });
                }
            }
        }
        if verdict.denied_by.is_some() {
            return verdict;
        }
        // Then the request budget, which charges as it admits (governor).
        if let (Some((per_minute, g)), Some(n)) = (&self.requests, NonZeroU32::new(demand.requests))
        {
            let per = u64::from(per_minute.get());
            match g.check_key_n(&h, n) {
                Ok(Ok(snapshot)) => {
                    let left = u64::from(snapshot.remaining_burst_capacity());
                    verdict.requests = Some(Remaining {
                        remaining: i64::try_from(left).unwrap_or(i64::MAX),
                        reset: Duration::from_nanos(cost_ns(per, per - left.min(per))),
                    });
                }
                Ok(Err(not_until)) => {
                    verdict.denied_by = Some(Dimension::Requests);
                    verdict.retry_after = not_until.wait_time_from(self.clock.now());
                    verdict.requests = Some(Remaining {
                        remaining: 0,
                        reset: Duration::from_nanos(WINDOW_NS),
                    });
                    return verdict;
                }
                // More requests in one batch than the whole budget: never admissible.
                Err(_) => {
                    verdict.denied_by = Some(Dimension::Requests);
                    verdict.retry_after = Duration::from_nanos(WINDOW_NS);
                    return verdict;
                }
            }
        } else if let Some((per_minute, _)) = &self.requests {
            verdict.requests = Some(Remaining {
                remaining: i64::from(per_minute.get()),
                reset: Duration::ZERO,
            });
        }
        // Admitted: charge the input tokens.
        if let Some(map) = shard.as_deref_mut() {
            for (t, new) in demand.tokens.iter().zip(next) {
                map.insert((h, t.bucket), new);
                if t.bucket == 0 {
                    verdict.tokens = Some(Remaining {
                        remaining: remaining(t.per_minute, new, now),
                        reset: Duration::from_nanos(new.saturating_sub(now)),
                    });
                }
            }
        }
        verdict
    }

    /// Charges token buckets synchronously (what [`LimitStore::charge`] does).
    pub fn charge_now(&self, key: &str, charges: &[(TokenCheck, i64)]) {
        if charges.is_empty() {
            return;
        }
        let now = self.now_ns();
        let h = self.hasher.hash_one(key);
        let mut map = self.shard(h);
        for (t, n) in charges {
            let tat = map.get(&(h, t.bucket)).copied().unwrap_or(0);
            let new = gcra_charge(t.per_minute, tat, now, *n);
            if new > now {
                map.insert((h, t.bucket), new);
            } else {
                map.remove(&(h, t.bucket));
            }
        }
    }
}

impl<C> LimitStore for MemoryStore<C>
where
    C: Clock + Send + Sync + 'static,
    C::Instant: Send + Sync,
{
    fn decide(&self, demand: &Demand) -> StoreFuture {
        Either::Left(futures_util::future::ready(Ok(self.decide_now(demand))))
    }
    fn charge(&self, key: Arc<str>, charges: Vec<(TokenCheck, i64)>) {
        self.charge_now(&key, &charges);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn store(rpm: u32) -> (MemoryStore<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (
            MemoryStore::with_clock(NonZeroU32::new(rpm), clock.clone()),
            clock,
        )
    }

    fn demand(key: &str, requests: u32, tokens: &[(u8, u64, u64)]) -> Demand {
        Demand {
            key: key.into(),
            requests,
            requests_per_minute: None,
            tokens: tokens
                .iter()
                .map(|&(bucket, per_minute, cost)| TokenCheck {
                    bucket,
                    per_minute,
                    cost,
                })
                .collect(),
        }
    }

    #[test]
    fn gcra_arithmetic() {
        // 60 per minute: one unit per second.
        assert_eq!(cost_ns(60, 1), 1_000_000_000);
        assert_eq!(gcra_test(60, 0, 0, 60), Ok(WINDOW_NS));
        assert_eq!(gcra_test(60, WINDOW_NS, 0, 1), Err(Duration::from_secs(1)));
        // Asking for more than the bucket: admitted only when full, charged in full (debt).
        assert_eq!(gcra_test(60, 0, 0, 120), Ok(2 * WINDOW_NS));
        assert_eq!(remaining(60, 2 * WINDOW_NS, 0), -60);
        // Refunds never make a bucket fuller than full.
        assert_eq!(gcra_charge(60, 0, 5, -10), 5);
    }

    #[test]
    fn requests_admit_deny_and_refill() {
        let (s, clock) = store(3);
        let seq: Vec<bool> = (0..5)
            .map(|_| s.decide_now(&demand("a", 1, &[])).admitted())
            .collect();
        assert_eq!(seq, [true, true, true, false, false]);
        // A different key is unaffected.
        assert!(s.decide_now(&demand("b", 1, &[])).admitted());
        // 3 per minute: one request back every 20 s.
        let v = s.decide_now(&demand("a", 1, &[]));
        assert_eq!(v.denied_by, Some(Dimension::Requests));
        assert_eq!(v.retry_after, Duration::from_secs(20));
        clock.advance(Duration::from_secs(19));
        assert_eq!(
            s.decide_now(&demand("a", 1, &[])).retry_after,
            Duration::from_secs(1)
        );
        clock.advance(Duration::from_secs(1));
        let v = s.decide_now(&demand("a", 1, &[]));
        assert!(v.admitted());
        assert_eq!(v.requests.unwrap().remaining, 0);
        assert!(!s.decide_now(&demand("a", 1, &[])).admitted());
        // A full minute refills the bucket.
        clock.advance(Duration::from_secs(60));
        let v = s.decide_now(&demand("a", 1, &[]));
        assert!(v.admitted());
        assert_eq!(v.requests.unwrap().remaining, 2);
    }

    #[test]
    fn tokens_debt_and_repayment() {
        let (s, clock) = store(1000);
        // 600 tokens a minute: 10 per second.
        let call = |cost| demand("a", 1, &[(0, 600, cost)]);
        let v = s.decide_now(&call(100));
        assert!(v.admitted());
        assert_eq!(v.tokens.unwrap().remaining, 500);
        // The response was large: 1100 output tokens, 600 into debt.
        s.charge_now("a", &[(call(0).tokens[0], 1100)]);
        let v = s.decide_now(&call(0));
        assert_eq!(v.denied_by, Some(Dimension::Tokens(0)));
        assert_eq!(v.tokens.unwrap().remaining, -600);
        // Debt of 600 at 10/s: 60 s until the next call.
        assert_eq!(v.retry_after, Duration::from_secs(60));
        clock.advance(Duration::from_secs(59));
        assert_eq!(s.decide_now(&call(0)).retry_after, Duration::from_secs(1));
        clock.advance(Duration::from_secs(1));
        let v = s.decide_now(&call(0));
        assert!(v.admitted());
        // Requests: the first has refilled in the minute, the refused ones were not charged.
        assert_eq!(v.requests.unwrap().remaining, 999);
        // A call with 50 input tokens waits 5 s more.
        assert_eq!(s.decide_now(&call(50)).retry_after, Duration::from_secs(5));
    }

    #[test]
    fn all_or_nothing_across_buckets() {
        let (s, _clock) = store(10);
        // Rule bucket (1) of 100 tokens, key bucket (0) of 1000.
        let call = |cost| demand("a", 1, &[(0, 1000, cost), (1, 100, cost)]);
        assert!(s.decide_now(&call(80)).admitted());
        let v = s.decide_now(&call(80));
        assert_eq!(v.denied_by, Some(Dimension::Tokens(1)));
        // Neither the key's bucket nor the request budget was charged by the refusal.
        let v = s.decide_now(&demand("a", 1, &[(0, 1000, 0)]));
        assert_eq!(v.tokens.unwrap().remaining, 920);
        assert_eq!(v.requests.unwrap().remaining, 8);
    }

    #[test]
    fn idle_keys_are_evicted() {
        let (s, clock) = store(10);
        for i in 0..1000 {
            s.decide_now(&demand(&format!("k{i}"), 1, &[(0, 100, 1)]));
        }
        assert_eq!(s.len(), 2000);
        clock.advance(Duration::from_secs(61));
        s.retain_recent();
        assert_eq!(s.len(), 0);
        // The sweep also runs on its own from decisions.
        for i in 0..10 {
            s.decide_now(&demand(&format!("k{i}"), 1, &[(0, 100, 1)]));
        }
        clock.advance(Duration::from_secs(61));
        s.decide_now(&demand("x", 1, &[]));
        assert_eq!(s.len(), 1);
    }
}
