//! [`VirtualServerLayer`]: the settings of a virtual server, and what builds it over its
//! upstreams.

use super::cursor::CursorKey;
use super::names::Catalog;
use super::service::{Inner, Metrics, Shared};
use super::session::SessionTable;
use super::{Member, OnUpstreamError, Prefix, VirtualServer};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a list waits for an upstream when not set.
pub const DEFAULT_LIST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an unused legacy session is kept.
pub const DEFAULT_SESSION_IDLE: Duration = Duration::from_secs(3600);

/// Builds a [`VirtualServer`]: its name, how it names and merges, and its upstreams
/// ([`service`](Self::service)).
#[derive(Clone, Debug)]
pub struct VirtualServerLayer {
    name: Arc<str>,
    prefix: Prefix,
    list_timeout: Duration,
    on_error: OnUpstreamError,
    filtered: bool,
    body_limit: usize,
    cursors: Arc<CursorKey>,
    session_idle: Duration,
    max_sessions: usize,
    shared: Option<super::session::SharedSessions>,
    state: Option<Arc<Shared>>,
}

impl VirtualServerLayer {
    /// A virtual server named `name` (its route; cursors are bound to it): prefix `always`,
    /// lists waiting 5 s per upstream, failing upstreams omitted, cursors sealed with a
    /// random key of this process.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self {
            name: name.into(),
            prefix: Prefix::Always,
            list_timeout: DEFAULT_LIST_TIMEOUT,
            on_error: OnUpstreamError::Omit,
            filtered: false,
            body_limit: 4 * 1024 * 1024,
            cursors: Arc::new(CursorKey::random()),
            session_idle: DEFAULT_SESSION_IDLE,
            max_sessions: 100_000,
            shared: None,
            state: None,
        }
    }

    /// Which names carry their upstream's alias.
    pub fn prefix(mut self, prefix: Prefix) -> Self {
        self.prefix = prefix;
        self
    }

    /// How long a list waits for each upstream.
    pub fn list_timeout(mut self, timeout: Duration) -> Self {
        self.list_timeout = timeout;
        self
    }

    /// What a list does when an upstream fails.
    pub fn on_upstream_error(mut self, on: OnUpstreamError) -> Self {
        self.on_error = on;
        self
    }

    /// Whether lists are filtered per caller (by permissions): merged 2026-07-28 lists are
    /// then `cacheScope: "private"`.
    pub fn filtered(mut self, filtered: bool) -> Self {
        self.filtered = filtered;
        self
    }

    /// The largest request and upstream answer read (default 4 MiB).
    pub fn body_limit(mut self, limit: usize) -> Self {
        self.body_limit = limit;
        self
    }

    /// Seals cursors with a key derived from `secret` (every replica given the same secret
    /// opens the others' cursors). The binary uses its sessions key.
    pub fn cursor_secret(mut self, secret: &[u8]) -> Self {
        self.cursors = Arc::new(CursorKey::from_secret(secret));
        self
    }

    /// Seals cursors with a key derived from the sessions key (every replica with the same
    /// `[sessions]` key opens the others' cursors).
    pub fn cursor_key(self, key: &crate::sessions::SessionKey) -> Self {
        self.cursor_secret(key.secret())
    }

    /// Seals cursors with the key of `other` (a rebuilt server keeps opening its cursors).
    pub fn same_cursor_key(mut self, other: &VirtualServerLayer) -> Self {
        self.cursors = other.cursors.clone();
        self
    }

    /// How long an unused legacy session is kept, and how many are open at most.
    pub fn sessions(mut self, idle: Duration, max: usize) -> Self {
        self.session_idle = idle;
        self.max_sessions = max;
        self
    }

    /// Shares legacy sessions with the other replicas as `sessions` (the SessionAffinity
    /// layer) shares its own: session ids sealed with its key (any replica opens them; the
    /// caller they were issued to is sealed in), their ends (DELETE) and idle time kept in its
    /// store, and the upstream sessions each one opens bound to it there — with the Redis
    /// store, a client's calls reach the same upstream sessions whichever replica answers.
    /// Sealing with the key also seals cursors with it ([`cursor_key`](Self::cursor_key)).
    pub fn shared_sessions(mut self, sessions: &crate::sessions::SessionAffinityLayer) -> Self {
        let (store, idle, lifetime, clock) = sessions.sharing();
        self.shared = Some(super::session::SharedSessions {
            store,
            idle,
            lifetime,
            clock,
        });
        self.cursor_key(&sessions.key())
    }

    /// Takes over `old`'s sessions, names seen, counters and cursor key (a reload that kept
    /// the virtual server's upstreams, in the same order); a key given after this wins.
    pub fn carry_over<M: Member>(mut self, old: &VirtualServer<M>) -> Self {
        self.state = Some(old.inner.state.clone());
        self.cursors = old.inner.cursors.clone();
        self
    }

    /// The virtual server over `members`, each named by its alias (in list order).
    pub fn service<M: Member>(
        &self,
        members: impl IntoIterator<Item = (impl Into<Arc<str>>, M)>,
    ) -> VirtualServer<M> {
        let (aliases, members): (Vec<Arc<str>>, Vec<M>) =
            members.into_iter().map(|(a, m)| (a.into(), m)).unzip();
        let state = self.state.clone().unwrap_or_else(|| {
            Arc::new(Shared {
                sessions: SessionTable::new(self.session_idle, self.max_sessions),
                refreshed: Mutex::default(),
                catalog: Mutex::new(Catalog::default()),
                metrics: Metrics::default(),
            })
        });
        VirtualServer {
            inner: Arc::new(Inner {
                binding: aliases.join("\0"),
                name: self.name.clone(),
                aliases,
                members,
                prefix: self.prefix,
                list_timeout: self.list_timeout,
                on_error: self.on_error,
                filtered: self.filtered,
                body_limit: self.body_limit,
                cursors: self.cursors.clone(),
                shared: self.shared.clone(),
                state,
            }),
        }
    }
}

impl<M: Member, A: Into<Arc<str>>> tower_layer::Layer<Vec<(A, M)>> for VirtualServerLayer
where
    A: Clone,
    M: Clone,
{
    type Service = VirtualServer<M>;
    fn layer(&self, members: Vec<(A, M)>) -> VirtualServer<M> {
        self.service(members)
    }
}
