use super::seal::{Keyring, SessionKey};
use super::service::{SessionAffinity, Settings};
use super::store::{Clock, MemoryStore, SessionStore, SystemClock};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tower_layer::Layer;

/// Default `idle_timeout`: 30 minutes.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Default `max_lifetime`: 24 hours.
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Builds [`SessionAffinity`] services over a set of instances: the key, the store, the
/// timeouts. See the [module docs](super). Cheap to clone; the services it builds share the
/// store and the store error count.
///
/// As a [`Layer`] it takes the instance set — anything that iterates `(name, service)` pairs
/// — rather than one inner service.
#[derive(Clone)]
pub struct SessionAffinityLayer {
    settings: Arc<Settings>,
    scope: Arc<str>,
}

impl std::fmt::Debug for SessionAffinityLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionAffinityLayer")
            .field("scope", &self.scope)
            .field("idle_timeout", &self.settings.idle_timeout)
            .field("max_lifetime", &self.settings.max_lifetime)
            .finish_non_exhaustive()
    }
}

impl SessionAffinityLayer {
    /// Sessions sealed with `key`, kept in memory, with the default timeouts.
    pub fn new(key: SessionKey) -> Self {
        Self {
            settings: Arc::new(Settings {
                keys: Arc::new(Keyring::new(&key, &[])),
                key,
                previous: Vec::new(),
                store: Arc::new(MemoryStore::new()),
                clock: Arc::new(SystemClock),
                idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
                max_lifetime: DEFAULT_MAX_LIFETIME,
                eject_base: Duration::from_secs(1),
                eject_max: Duration::from_secs(30),
                store_errors: Arc::new(AtomicU64::new(0)),
            }),
            scope: Arc::from(""),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Settings)) -> Self {
        let mut c = Settings::clone(&self.settings);
        f(&mut c);
        self.settings = Arc::new(c);
        self
    }

    /// Takes over from `earlier`, as a reload does: its store error count; with `store` true
    /// its session records (ended and idle sessions stay so — the store is the same); with
    /// `key` true its key, so that ids sealed with a random per-process key keep opening.
    pub fn carry_over(self, earlier: &SessionAffinityLayer, store: bool, key: bool) -> Self {
        let old = earlier.settings.clone();
        self.edit(|c| {
            if store {
                c.store = old.store.clone();
            }
            c.store_errors = old.store_errors.clone();
            if key {
                c.key = old.key.clone();
                c.keys = Arc::new(Keyring::new(&c.key, &c.previous));
            }
        })
    }

    /// Older keys whose ids still open (key rotation); new ids use the key given to
    /// [`new`](Self::new).
    pub fn previous_keys(self, keys: Vec<SessionKey>) -> Self {
        self.edit(|c| {
            c.keys = Arc::new(Keyring::new(&c.key, &keys));
            c.previous = keys;
        })
    }

    /// Sessions unused for longer than this end (`None`: never). Default 30 minutes.
    pub fn idle_timeout(self, d: Option<Duration>) -> Self {
        self.edit(|c| c.idle_timeout = d)
    }

    /// Sessions end this long after they were issued, however busy. Default 24 hours.
    pub fn max_lifetime(self, d: Duration) -> Self {
        self.edit(|c| c.max_lifetime = d)
    }

    /// Keeps last use and ends in `store` (shared across replicas, say) instead of memory.
    pub fn store(self, store: impl SessionStore) -> Self {
        let store: Arc<dyn SessionStore> = Arc::new(store);
        self.edit(|c| c.store = store)
    }

    /// Reads time from `clock` (tests move a [`ManualClock`](super::ManualClock)).
    pub fn clock(self, clock: impl Clock) -> Self {
        let clock: Arc<dyn Clock> = Arc::new(clock);
        self.edit(|c| c.clock = clock)
    }

    /// How long an instance that could not be reached is skipped: `base` after one failure,
    /// doubling with each further one, at most `max`. Default 1 s and 30 s.
    pub fn ejection(self, base: Duration, max: Duration) -> Self {
        self.edit(|c| {
            c.eject_base = base;
            c.eject_max = max.max(base);
        })
    }

    /// The scope ids are sealed for — the route name, say: an id issued under one scope does
    /// not open under another. Default empty.
    pub fn scope(mut self, scope: &str) -> Self {
        self.scope = Arc::from(scope);
        self
    }

    /// The keys session ids are sealed with: other handles a client echoes back (tool
    /// integrity's approval states) are sealed with them too, so that any replica opens them.
    pub fn keyring(&self) -> Arc<super::Keyring> {
        self.settings.keys.clone()
    }

    /// The key that seals session ids.
    #[cfg(feature = "federation")]
    pub(crate) fn key(&self) -> SessionKey {
        self.settings.key.clone()
    }

    /// The store, the idle timeout, the longest lifetime and the clock: what another kind
    /// of session (a virtual server's) shares the same way.
    #[cfg(feature = "federation")]
    pub(crate) fn sharing(
        &self,
    ) -> (
        Arc<dyn SessionStore>,
        Option<Duration>,
        Duration,
        Arc<dyn super::store::Clock>,
    ) {
        (
            self.settings.store.clone(),
            self.settings.idle_timeout,
            self.settings.max_lifetime,
            self.settings.clock.clone(),
        )
    }

    /// The store of session ends, shared by the replicas when it is Redis.
    pub fn session_store(&self) -> Arc<dyn SessionStore> {
        self.settings.store.clone()
    }

    /// How many times the store could not answer (each logged; routing failed open).
    pub fn store_errors(&self) -> u64 {
        self.settings
            .store_errors
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Appends the layer's counter in the Prometheus text format, as the gateway's `/metrics`
    /// shows it: the store operations that failed (`mcp_gateway_sessions_store_errors_total`).
    pub fn render_prometheus(&self, out: &mut String) {
        crate::ascii::push_counter(
            out,
            "mcp_gateway_sessions_store_errors_total",
            "Session store operations that failed (sessions still route).",
            self.store_errors(),
        );
    }

    /// A service over `instances`, each a `(name, service)` pair. Names must be the same on
    /// every replica (the instance URL, say): sealed ids carry a digest of the name.
    pub fn service<I, K, S>(&self, instances: I) -> SessionAffinity<S>
    where
        I: IntoIterator<Item = (K, S)>,
        K: Into<Arc<str>>,
    {
        SessionAffinity::new(self.settings.clone(), self.scope.clone(), instances)
    }
}

impl<I, K, S> Layer<I> for SessionAffinityLayer
where
    I: IntoIterator<Item = (K, S)>,
    K: Into<Arc<str>>,
{
    type Service = SessionAffinity<S>;
    fn layer(&self, instances: I) -> Self::Service {
        self.service(instances)
    }
}
