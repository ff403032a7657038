//! [`SessionStore`]: what replicas must share about sessions beyond the sealed id itself —
//! the last use (for `idle_timeout`) and the ends (DELETE). [`MemoryStore`] is the default;
//! `RedisStore` (feature `sessions-redis`) shares it across replicas.
//!
//! The sealed id alone routes a session; the store only answers "has this session ended or
//! gone idle?". A session the store has never seen is alive: it was issued by another replica
//! with a memory store, before a restart, or while a shared store was unreachable.

use futures_util::future::{BoxFuture, Either, Ready};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A session's handle in a store: the random nonce of its sealed id (unique per id, and says
/// nothing about the session).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionHandle(pub [u8; 12]);

impl SessionHandle {
    /// Lowercase hex, for store keys.
    pub fn to_hex(&self) -> String {
        crate::ascii::hex(&self.0)
    }
}

/// What a store is asked on each use of a session.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Use {
    /// Now, in milliseconds since the Unix epoch.
    pub now_ms: u64,
    /// The idle timeout (`None`: sessions never go idle).
    pub idle_timeout: Option<Duration>,
    /// When the session ends in any case (issue time + `max_lifetime`), in milliseconds since
    /// the Unix epoch: the store need not remember it past then.
    pub expires_ms: u64,
}

impl Use {
    /// A use at `now_ms` of a session that expires at `expires_ms`.
    pub fn new(now_ms: u64, idle_timeout: Option<Duration>, expires_ms: u64) -> Self {
        Self {
            now_ms,
            idle_timeout,
            expires_ms,
        }
    }
}

/// What the store knows of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionState {
    /// Alive; its last use is now.
    Alive,
    /// Unused for longer than the idle timeout.
    Idle,
    /// Ended (DELETE, or the upstream forgot it).
    Ended,
}

/// The store could not answer. The layer then fails open (the sealed id still routes), logs
/// and counts it.
#[derive(Clone, Debug, thiserror::Error)]
#[error("session store: {0}")]
pub struct StoreError(pub String);

/// A store's answer: ready now (in memory) or later (over the network).
pub type StoreFuture<T> =
    Either<Ready<Result<T, StoreError>>, BoxFuture<'static, Result<T, StoreError>>>;

/// Shared session state: what replicas must share beyond the sealed id itself — the last use
/// (for `idle_timeout`) and the ends (DELETE). [`MemoryStore`] is the default; `RedisStore`
/// (feature `sessions-redis`) shares it across replicas.
///
/// The sealed id alone routes a session; the store only answers "has this session ended or
/// gone idle?". A session the store has never seen is alive: it was issued by another replica
/// with a memory store, before a restart, or while a shared store was unreachable.
pub trait SessionStore: Send + Sync + 'static {
    /// Records a use of `session` at `u.now_ms` and says whether it is still alive. An idle or
    /// ended session stays so; a session never seen is alive (and remembered from now on).
    fn touch(&self, session: SessionHandle, u: Use) -> StoreFuture<SessionState>;
    /// Ends `session` on every replica sharing this store.
    fn end(&self, session: SessionHandle, u: Use) -> StoreFuture<()>;

    /// Records `session` as used and says whether this call was the first to — true for the
    /// first caller on any replica sharing the store, false for every later one: a handle
    /// used once, and only this way (tool integrity's approval states, never a session that
    /// is touched). The default checks with [`touch`](Self::touch) and ends with
    /// [`end`](Self::end), two steps; [`MemoryStore`] and the Redis store do it in one.
    fn claim(&self, session: SessionHandle, u: Use) -> StoreFuture<bool> {
        let touch = self.touch(session, u);
        let end = self.end(session, u);
        Either::Right(Box::pin(async move {
            if touch.await? == SessionState::Ended {
                return Ok(false);
            }
            end.await?;
            Ok(true)
        }))
    }

    /// Binds `value` to `field` of `session` unless the field has a value already, and
    /// answers the value it has now: `value`, or the one another replica bound first (kept
    /// until `u.expires_ms`). What a session opens later than its id is issued — a virtual
    /// server's upstream sessions — is found this way by every replica. The default keeps
    /// nothing and answers `value`.
    fn bind(
        &self,
        session: SessionHandle,
        field: &str,
        value: &str,
        u: Use,
    ) -> StoreFuture<String> {
        let _ = (session, field, u);
        Either::Left(futures_util::future::ready(Ok(value.to_owned())))
    }

    /// The value bound to `field` of `session`, if any (the default keeps nothing).
    fn bound(&self, session: SessionHandle, field: &str) -> StoreFuture<Option<String>> {
        let _ = (session, field);
        Either::Left(futures_util::future::ready(Ok(None)))
    }
}

/// A source of wall-clock time: injectable, so tests move time without sleeping.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// A clock that moves only when told to (tests). Clones share the time.
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock at `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        Self(Arc::new(AtomicU64::new(now_ms)))
    }
    /// Moves the clock forward.
    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_millis() as u64, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Clone, Copy)]
struct Entry {
    last_ms: u64,
    expires_ms: u64,
    ended: bool,
}

#[derive(Default)]
struct Shard {
    map: HashMap<SessionHandle, Entry>,
    /// Inserts since the last sweep.
    inserts: usize,
    /// Sweep when `inserts` reaches this: the shard's size after the last sweep (at least 64).
    sweep_at: usize,
}

const SHARDS: usize = 64;

/// (session, field) → (value, when it expires, ms since the epoch).
type Fields = HashMap<(SessionHandle, Box<str>), (Box<str>, u64)>;

/// Sessions in this process's memory: 64 shards, each behind its own short lock, chosen by the
/// handle's first byte (random), so concurrent sessions rarely meet on a lock. An entry is
/// kept until its session's `max_lifetime` is over (swept as shards grow); about 60 bytes per
/// session.
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    /// Values bound to sessions' fields ([`SessionStore::bind`]), until they expire.
    fields: Mutex<Fields>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("sessions", &self.len())
            .finish()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            fields: Mutex::default(),
        }
    }

    /// Sessions remembered (alive, idle or ended, until their lifetime is over).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).map.len())
            .sum()
    }

    /// True when no session is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, h: &SessionHandle) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[usize::from(h.0[0]) % SHARDS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn insert(shard: &mut Shard, h: SessionHandle, e: Entry, now_ms: u64) {
        // Amortized sweep: once a shard has taken as many inserts as it holds entries, drop
        // those whose lifetime is over. Each entry is visited O(1) times per insert on average.
        shard.inserts += 1;
        if shard.inserts >= shard.sweep_at.max(64) {
            shard.map.retain(|_, e| e.expires_ms > now_ms);
            shard.inserts = 0;
            shard.sweep_at = shard.map.len();
        }
        shard.map.insert(h, e);
    }

    /// The state of `session` at `u`, recording the use (the synchronous form of
    /// [`SessionStore::touch`]).
    pub fn touch_now(&self, session: SessionHandle, u: Use) -> SessionState {
        let mut shard = self.shard(&session);
        match shard.map.get_mut(&session) {
            Some(e) if e.ended => SessionState::Ended,
            Some(e) => {
                let idle = u
                    .idle_timeout
                    .is_some_and(|t| u.now_ms.saturating_sub(e.last_ms) > t.as_millis() as u64);
                if idle {
                    SessionState::Idle
                } else {
                    e.last_ms = e.last_ms.max(u.now_ms);
                    SessionState::Alive
                }
            }
            None => {
                let e = Entry {
                    last_ms: u.now_ms,
                    expires_ms: u.expires_ms,
                    ended: false,
                };
                Self::insert(&mut shard, session, e, u.now_ms);
                SessionState::Alive
            }
        }
    }

    /// Records `session` as used (ended); true when the store did not know it (the
    /// synchronous form of [`SessionStore::claim`]).
    pub fn claim_now(&self, session: SessionHandle, u: Use) -> bool {
        let mut shard = self.shard(&session);
        if shard.map.contains_key(&session) {
            return false;
        }
        let e = Entry {
            last_ms: u.now_ms,
            expires_ms: u.expires_ms,
            ended: true,
        };
        Self::insert(&mut shard, session, e, u.now_ms);
        true
    }

    /// The synchronous form of [`SessionStore::bind`].
    pub fn bind_now(&self, session: SessionHandle, field: &str, value: &str, u: Use) -> String {
        let mut fields = self.fields.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (session, Box::<str>::from(field));
        if let Some((v, expires)) = fields.get(&key) {
            if *expires > u.now_ms {
                return v.to_string();
            }
        }
        // Swept as it grows: at most one entry per upstream session a virtual session opened.
        if fields.len() >= 1024 && fields.len().is_power_of_two() {
            fields.retain(|_, (_, expires)| *expires > u.now_ms);
        }
        fields.insert(key, (value.into(), u.expires_ms));
        value.to_owned()
    }

    /// The synchronous form of [`SessionStore::bound`].
    pub fn bound_now(&self, session: SessionHandle, field: &str, now_ms: u64) -> Option<String> {
        let fields = self.fields.lock().unwrap_or_else(PoisonError::into_inner);
        fields
            .get(&(session, Box::<str>::from(field)))
            .filter(|(_, expires)| *expires > now_ms)
            .map(|(v, _)| v.to_string())
    }

    /// Ends `session` (the synchronous form of [`SessionStore::end`]).
    pub fn end_now(&self, session: SessionHandle, u: Use) {
        let mut shard = self.shard(&session);
        let e = Entry {
            last_ms: u.now_ms,
            expires_ms: u.expires_ms,
            ended: true,
        };
        match shard.map.get_mut(&session) {
            Some(old) => *old = e,
            None => Self::insert(&mut shard, session, e, u.now_ms),
        }
    }
}

impl SessionStore for MemoryStore {
    fn touch(&self, session: SessionHandle, u: Use) -> StoreFuture<SessionState> {
        Either::Left(futures_util::future::ready(Ok(self.touch_now(session, u))))
    }
    fn end(&self, session: SessionHandle, u: Use) -> StoreFuture<()> {
        self.end_now(session, u);
        Either::Left(futures_util::future::ready(Ok(())))
    }
    fn claim(&self, session: SessionHandle, u: Use) -> StoreFuture<bool> {
        Either::Left(futures_util::future::ready(Ok(self.claim_now(session, u))))
    }
    fn bind(
        &self,
        session: SessionHandle,
        field: &str,
        value: &str,
        u: Use,
    ) -> StoreFuture<String> {
        Either::Left(futures_util::future::ready(Ok(
            self.bind_now(session, field, value, u)
        )))
    }
    fn bound(&self, session: SessionHandle, field: &str) -> StoreFuture<Option<String>> {
        Either::Left(futures_util::future::ready(Ok(self.bound_now(
            session,
            field,
            SystemClock.now_ms(),
        ))))
    }
}

impl<T: SessionStore + ?Sized> SessionStore for Arc<T> {
    fn touch(&self, session: SessionHandle, u: Use) -> StoreFuture<SessionState> {
        (**self).touch(session, u)
    }
    fn end(&self, session: SessionHandle, u: Use) -> StoreFuture<()> {
        (**self).end(session, u)
    }
    fn claim(&self, session: SessionHandle, u: Use) -> StoreFuture<bool> {
        (**self).claim(session, u)
    }
    fn bind(
        &self,
        session: SessionHandle,
        field: &str,
        value: &str,
        u: Use,
    ) -> StoreFuture<String> {
        (**self).bind(session, field, value, u)
    }
    fn bound(&self, session: SessionHandle, field: &str) -> StoreFuture<Option<String>> {
        (**self).bound(session, field)
    }
}

#[cfg(test)]
mod hex_tests {
    use super::SessionHandle;

    #[test]
    fn handle_hex_is_lowercase_and_fixed_width() {
        let h = SessionHandle([
            0, 1, 0x0f, 0x10, 0xab, 0xff, 7, 0x70, 0x80, 0x9c, 0xde, 0x2a,
        ]);
        assert_eq!(h.to_hex(), "00010f10abff0770809cde2a");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn a_field_is_bound_once_until_it_expires() {
        let s = MemoryStore::new();
        let u = Use::new(1_000, None, 10_000);
        let h = SessionHandle([5; 12]);
        assert_eq!(s.bound_now(h, "m0", 1_000), None);
        assert_eq!(s.bind_now(h, "m0", "first", u), "first");
        assert_eq!(
            s.bind_now(h, "m0", "second", u),
            "first",
            "the first binding stays"
        );
        assert_eq!(s.bind_now(h, "m1", "other", u), "other");
        assert_eq!(s.bound_now(h, "m0", 9_999).as_deref(), Some("first"));
        assert_eq!(s.bound_now(SessionHandle([6; 12]), "m0", 1_000), None);
        // Past its session's lifetime the field is gone, and may be bound again.
        assert_eq!(s.bound_now(h, "m0", 10_000), None);
        let later = Use::new(10_000, None, 20_000);
        assert_eq!(s.bind_now(h, "m0", "third", later), "third");
    }

    #[test]
    fn a_claim_wins_once() {
        let s = MemoryStore::new();
        let u = Use::new(1_000, None, 3_600_000);
        let h = SessionHandle([3; 12]);
        assert!(s.claim_now(h, u));
        assert!(!s.claim_now(h, u));
        assert_eq!(s.touch_now(h, u), SessionState::Ended);
        let known = SessionHandle([4; 12]);
        assert_eq!(s.touch_now(known, u), SessionState::Alive);
        assert!(
            !s.claim_now(known, u),
            "a handle the store knows is not claimed"
        );
    }

    #[test]
    fn idle_ended_and_unknown() {
        let s = MemoryStore::new();
        let h = SessionHandle([9; 12]);
        let at = |ms| Use::new(ms, Some(MIN), 10 * 60_000);
        // Never seen: alive, and remembered.
        assert_eq!(s.touch_now(h, at(0)), SessionState::Alive);
        assert_eq!(s.touch_now(h, at(59_000)), SessionState::Alive);
        // 60 s after the last use: still alive; just over: idle, and stays so.
        assert_eq!(s.touch_now(h, at(119_000)), SessionState::Alive);
        assert_eq!(s.touch_now(h, at(179_001)), SessionState::Idle);
        assert_eq!(s.touch_now(h, at(179_002)), SessionState::Idle);
        let g = SessionHandle([10; 12]);
        assert_eq!(s.touch_now(g, at(0)), SessionState::Alive);
        s.end_now(g, at(1));
        assert_eq!(s.touch_now(g, at(2)), SessionState::Ended);
        // Ended before ever being seen here (another replica's DELETE through a shared store
        // is the Redis case; here, an end recorded first).
        let k = SessionHandle([11; 12]);
        s.end_now(k, at(0));
        assert_eq!(s.touch_now(k, at(1)), SessionState::Ended);
    }

    #[test]
    fn entries_go_when_their_lifetime_is_over() {
        let s = MemoryStore::new();
        for i in 0..10_000u32 {
            let mut h = [0u8; 12];
            h[..4].copy_from_slice(&i.to_le_bytes());
            // Every session expires at 1000 ms; the later inserts sweep the earlier ones.
            let now = if i < 5_000 { 0 } else { 2_000 };
            s.touch_now(SessionHandle(h), Use::new(now, None, now + 1_000));
        }
        assert!(s.len() < 8_000, "{} entries kept", s.len());
    }
}
