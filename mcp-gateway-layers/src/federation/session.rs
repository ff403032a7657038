//! Legacy (2025-11-25 and older) sessions of a virtual server: the gateway answers
//! `initialize` itself and opens one upstream session per (client session, upstream) on
//! first use.

use bytes::Bytes;
use http::HeaderValue;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The most requests remembered per session for routing their cancellations.
const INFLIGHT: usize = 1024;
/// The most sessions one authenticated caller (one agent) holds open on a virtual server:
/// past it, its least recently used session makes way. (Without authentication callers cannot
/// be told apart; the table's own bound applies.)
pub const MAX_PER_CALLER: usize = 1000;

/// Where a virtual server's legacy sessions are shared with the other replicas: the sessions
/// layer's store (Redis, say) and lifetimes. Client session ids are then sealed (any replica
/// opens them), and the upstream sessions a client session opens are bound to it in the store
/// (any replica sharing the store reaches the same ones).
#[derive(Clone)]
pub struct SharedSessions {
    /// The store shared with the other replicas.
    pub store: Arc<dyn crate::sessions::SessionStore>,
    /// Unused this long, a session ends (`None`: never).
    pub idle: Option<Duration>,
    /// A session ends this long after `initialize` in any case.
    pub lifetime: Duration,
    /// The sessions layer's clock (ms since the Unix epoch).
    pub clock: Arc<dyn crate::sessions::Clock>,
}

impl std::fmt::Debug for SharedSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSessions")
            .field("idle", &self.idle)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl SharedSessions {
    /// A use of a session issued at `created_ms`, now.
    pub fn use_at(&self, created_ms: u64) -> crate::sessions::Use {
        crate::sessions::Use::new(
            self.clock.now_ms(),
            self.idle,
            created_ms.saturating_add(self.lifetime.as_millis() as u64),
        )
    }
}

/// What a shared session's id seals: any replica holding the key opens it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Sealed {
    /// Its handle in the store (random).
    pub n: [u8; 12],
    /// The caller it belongs to (its agent key), when authenticated.
    pub p: Option<String>,
    /// The client's `initialize` params (each upstream session is opened with them).
    pub i: String,
    /// When it was issued (ms since the Unix epoch).
    pub t: u64,
}

/// An upstream session opened for a client session.
#[derive(Debug)]
pub struct MemberSession {
    /// The id the upstream issued (none: it keeps no sessions).
    pub id: Option<HeaderValue>,
    /// The protocol version it negotiated.
    pub version: HeaderValue,
}

/// One client session of a virtual server.
#[derive(Debug)]
pub struct VirtualSession {
    /// The `initialize` params the client sent (each upstream session is opened with them).
    pub init: Bytes,
    /// The caller the session belongs to (its agent key), when authenticated.
    pub principal: Option<Arc<str>>,
    /// Per upstream: its session, once opened (the lock serialises opening it).
    pub members: Vec<tokio::sync::Mutex<Option<Arc<MemberSession>>>>,
    /// Recent requests' ids and the upstream each went to, for `notifications/cancelled`.
    inflight: Mutex<(HashMap<String, usize>, VecDeque<String>)>,
    /// When the session was last used (ms since the table's start).
    last_used: AtomicU64,
    /// The client's GET stream, while it is open.
    hub: Mutex<Option<Arc<super::stream::Hub>>>,
    /// Its place in the order sessions were opened (ties of `last_used` go to the older).
    seq: u64,
    /// Its handle in the shared store and when it was issued, when sessions are shared.
    pub shared: Option<(crate::sessions::SessionHandle, u64)>,
}

use crate::lock;

impl MemberSession {
    /// The form bound in a shared store: the version, a newline, the id (empty: none).
    pub fn encode(&self) -> String {
        format!(
            "{}\n{}",
            self.version.to_str().unwrap_or(""),
            self.id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("")
        )
    }

    /// What [`encode`](Self::encode) wrote.
    pub fn decode(text: &str) -> Option<Self> {
        let (version, id) = text.split_once('\n')?;
        Some(Self {
            version: HeaderValue::from_str(version).ok()?,
            id: if id.is_empty() {
                None
            } else {
                Some(HeaderValue::from_str(id).ok()?)
            },
        })
    }
}

impl VirtualSession {
    /// Remembers that request `id` went to upstream `member`.
    pub fn sent(&self, id: &str, member: usize) {
        let mut g = lock(&self.inflight);
        let (map, order) = &mut *g;
        if map.insert(id.to_owned(), member).is_none() {
            order.push_back(id.to_owned());
        }
        while order.len() > INFLIGHT {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }

    /// The upstream request `id` went to.
    pub fn owner_of(&self, id: &str) -> Option<usize> {
        lock(&self.inflight).0.get(id).copied()
    }

    /// The client's GET stream, while it is open.
    pub fn hub(&self) -> Option<Arc<super::stream::Hub>> {
        lock(&self.hub).clone().filter(|h| h.live())
    }

    /// Makes `hub` the client's GET stream, ending the one it replaces.
    pub(crate) fn set_hub(&self, hub: Option<Arc<super::stream::Hub>>) {
        if let Some(old) = std::mem::replace(&mut *lock(&self.hub), hub) {
            old.end();
        }
    }

    /// The upstream sessions opened so far.
    pub async fn opened(&self) -> Vec<(usize, Arc<MemberSession>)> {
        let mut out = Vec::new();
        for (i, m) in self.members.iter().enumerate() {
            if let Some(s) = m.lock().await.clone() {
                out.push((i, s));
            }
        }
        out
    }
}

/// The sessions of one virtual server.
#[derive(Debug)]
pub struct SessionTable {
    sessions: Mutex<HashMap<String, Arc<VirtualSession>>>,
    seq: AtomicU64,
    start: Instant,
    idle: Duration,
    max: usize,
}

impl SessionTable {
    /// A table ending sessions idle for `idle`, holding at most `max`.
    pub fn new(idle: Duration, max: usize) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
            start: Instant::now(),
            idle,
            max,
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Opens a session for a client; `None` when the table is full of live sessions.
    pub fn create(
        &self,
        init: Bytes,
        principal: Option<Arc<str>>,
        members: usize,
    ) -> Option<(String, Arc<VirtualSession>)> {
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).ok()?;
        let mut id = String::with_capacity(32);
        for b in raw {
            id.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            id.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        let s = self.insert(id.clone(), init, principal, members, None)?;
        Some((id, s))
    }

    /// Holds session `id` (a shared one: its handle and issue time), issued here or by
    /// another replica; `None` when the table is full of live sessions.
    pub fn insert(
        &self,
        id: String,
        init: Bytes,
        principal: Option<Arc<str>>,
        members: usize,
        shared: Option<(crate::sessions::SessionHandle, u64)>,
    ) -> Option<Arc<VirtualSession>> {
        let s = Arc::new(VirtualSession {
            init,
            principal,
            members: (0..members)
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            inflight: Mutex::new((HashMap::new(), VecDeque::new())),
            last_used: AtomicU64::new(self.now()),
            hub: Mutex::new(None),
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            shared,
        });
        let now = self.now();
        let idle = self.idle.as_millis() as u64;
        let mut map = lock(&self.sessions);
        if map.len() >= self.max {
            map.retain(|_, s| now.saturating_sub(s.last_used.load(Ordering::Relaxed)) < idle);
            if map.len() >= self.max {
                return None;
            }
        }
        // One caller cannot fill the table for everyone: its least recently used session
        // ends when it opens one too many.
        let mine: Vec<(&String, (u64, u64))> = map
            .iter()
            .filter(|(_, o)| s.principal.is_some() && o.principal == s.principal)
            .map(|(k, o)| (k, (o.last_used.load(Ordering::Relaxed), o.seq)))
            .collect();
        if mine.len() >= MAX_PER_CALLER {
            if let Some(oldest) = mine
                .iter()
                .min_by_key(|(_, t)| *t)
                .map(|(k, _)| (*k).clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(id, s.clone());
        Some(s)
    }

    /// The live session `id`, touched.
    pub fn get(&self, id: &str) -> Option<Arc<VirtualSession>> {
        let now = self.now();
        let mut map = lock(&self.sessions);
        let s = map.get(id)?.clone();
        if now.saturating_sub(s.last_used.load(Ordering::Relaxed)) >= self.idle.as_millis() as u64 {
            map.remove(id);
            return None;
        }
        s.last_used.store(now, Ordering::Relaxed);
        Some(s)
    }

    /// Ends session `id`.
    pub fn remove(&self, id: &str) -> Option<Arc<VirtualSession>> {
        lock(&self.sessions).remove(id)
    }

    /// How many sessions are open (used within the idle time).
    pub fn len(&self) -> usize {
        let now = self.now();
        let idle = self.idle.as_millis() as u64;
        lock(&self.sessions)
            .values()
            .filter(|s| now.saturating_sub(s.last_used.load(Ordering::Relaxed)) < idle)
            .count()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn one_caller_cannot_fill_the_table() {
        let t = SessionTable::new(Duration::from_secs(60), 10_000);
        let alice: Option<Arc<str>> = Some("alice".into());
        let first = t.create(Bytes::new(), alice.clone(), 1).unwrap().0;
        let bob = t.create(Bytes::new(), Some("bob".into()), 1).unwrap().0;
        for _ in 0..MAX_PER_CALLER {
            t.create(Bytes::new(), alice.clone(), 1).unwrap();
        }
        assert!(t.get(&first).is_none(), "alice's oldest made way");
        assert!(t.get(&bob).is_some(), "bob's session stays");
        assert_eq!(t.len(), MAX_PER_CALLER + 1);
    }
}
