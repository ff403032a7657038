//! The processes of one stdio upstream and their supervision: which child serves a request
//! (by mode), `max_processes`, restarts with capped, jittered exponential back-off, crash-loop
//! detection, and stops of idle children.

use super::child::{Child, ChildSettings, Exit, Failure, Relay};
use super::{process, Mode, StdioSpec};
use http::StatusCode;
use mcp_gateway_core::jsonrpc::ErrorCode;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The first restart delay; it doubles with each quick exit in a row.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// The longest restart delay.
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// A child that ran this long was healthy: its exit starts the back-off over.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Quick exits in a row that make a crash loop (the upstream is then not ready).
const CRASH_LOOP: u32 = 3;

/// Which long-lived child serves a request. A child speaks one protocol era (servers bind a
/// connection to the era of its first message), so each era has its own.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SlotKey {
    /// The agent whose own child it is (`per_agent`), or `None` for the shared child.
    pub(crate) agent: Option<Arc<str>>,
    /// Whether it serves 2026-07-28 requests (never initialized) or legacy ones (initialized
    /// by the gateway).
    pub(crate) modern: bool,
}

impl SlotKey {
    /// The shared child of an era.
    pub(crate) fn shared(modern: bool) -> Self {
        Self {
            agent: None,
            modern,
        }
    }
}

/// Consecutive quick exits, and when the next start may happen.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    failures: u32,
    next_start: Option<Instant>,
    last: Option<String>,
}

impl Backoff {
    /// Records an exit; returns the delay before the next start.
    fn exited(&mut self, lived: Duration, status: &str) -> Duration {
        if lived >= STABLE_AFTER {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        self.last = Some(status.to_owned());
        let exp = BACKOFF_BASE.saturating_mul(1u32 << (self.failures - 1).min(16));
        let capped = exp.min(BACKOFF_CAP);
        // Jitter: between half and all of it, so replicas do not restart in step.
        let delay = capped.mul_f64(0.5 + fastrand::f64() * 0.5);
        self.next_start = Some(Instant::now() + delay);
        delay
    }

    fn crash_looping(&self) -> bool {
        self.failures >= CRASH_LOOP
    }
}

struct SlotState {
    child: Option<(Arc<Child>, OwnedSemaphorePermit)>,
    backoff: Backoff,
}

struct Slot {
    key: SlotKey,
    /// Starts are one at a time; requests arriving meanwhile wait for the same start.
    starting: tokio::sync::Mutex<()>,
    state: Mutex<SlotState>,
}

/// Counters of one upstream, for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) starts: AtomicU64,
    pub(crate) restarts: AtomicU64,
    pub(crate) crashes: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) spawn_errors: AtomicU64,
}

pub(crate) struct Pool {
    pub(crate) spec: Arc<StdioSpec>,
    pub(crate) name: Arc<str>,
    slots: Mutex<HashMap<SlotKey, Arc<Slot>>>,
    permits: Arc<Semaphore>,
    pub(crate) counters: Counters,
    /// `per_session` starts: one back-off for all of them.
    session_backoff: Mutex<Backoff>,
    /// Children of `per_session` sessions, for stops.
    session_children: Mutex<Vec<Weak<Child>>>,
    me: Weak<Pool>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Pool {
    pub(crate) fn new(spec: StdioSpec) -> Arc<Self> {
        let name: Arc<str> = Arc::from(spec.name.as_str());
        let permits = Arc::new(Semaphore::new(spec.max_processes));
        Arc::new_cyclic(|me| Self {
            spec: Arc::new(spec),
            name,
            slots: Mutex::new(HashMap::new()),
            permits,
            counters: Counters::default(),
            session_backoff: Mutex::new(Backoff::default()),
            session_children: Mutex::new(Vec::new()),
            me: me.clone(),
        })
    }

    /// Starts the reaper of idle children (and, in `shared` mode, the shared child).
    pub(crate) fn start_background(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let every =
            (self.spec.idle_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = weak.upgrade() else { return };
                pool.reap_idle();
            }
        });
        if self.spec.mode == Mode::Shared {
            let pool = self.clone();
            tokio::spawn(async move {
                if let Err(f) = pool.child(&SlotKey::shared(false)).await {
                    tracing::warn!(target: "mcp_gateway::stdio", upstream = %pool.name, error = %f.message, "stdio server did not start");
                }
            });
        }
    }

    /// A long-lived child serves several clients (an agent's own child, several sessions of
    /// that agent): its requests are not relayed.
    fn relay_for(&self, _key: &SlotKey) -> Relay {
        Relay::Shared
    }

    fn slot(&self, key: &SlotKey) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Slot {
                    key: key.clone(),
                    starting: tokio::sync::Mutex::new(()),
                    state: Mutex::new(SlotState {
                        child: None,
                        backoff: Backoff::default(),
                    }),
                })
            })
            .clone()
    }

    /// The running child of `key`, started (after its back-off) when there is none.
    pub(crate) async fn child(&self, key: &SlotKey) -> Result<Arc<Child>, Failure> {
        let slot = self.slot(key);
        if let Some(c) = slot.running() {
            return Ok(c);
        }
        let _one = slot.starting.lock().await;
        if let Some(c) = slot.running() {
            return Ok(c);
        }
        let next = slot.lock().backoff.next_start;
        self.wait_backoff(next).await?;
        let permit = self.permit().await?;
        let agent = key.agent.as_deref();
        let weak_pool = self.me.clone();
        let weak_slot = Arc::downgrade(&slot);
        // The shared children are kept running; an agent's starts again with its next call.
        let restart = key.agent.is_none();
        let child = self.spawn(agent, self.relay_for(key), move |exit, pid| {
            if let (Some(pool), Some(slot)) = (weak_pool.upgrade(), weak_slot.upgrade()) {
                pool.slot_exited(&slot, exit, pid, restart);
            }
        });
        let child = match child {
            Ok(c) => c,
            Err(f) => {
                let delay = slot.lock().backoff.exited(Duration::ZERO, &f.message);
                self.log_backoff(delay, &slot.lock().backoff);
                if restart {
                    self.restart_later(key.clone(), delay);
                }
                return Err(f);
            }
        };
        if slot.lock().backoff.failures > 0 {
            self.counters.restarts.fetch_add(1, Ordering::Relaxed);
        }
        slot.lock().child = Some((child.clone(), permit));
        Ok(child)
    }

    /// The running child of `key`, without starting one.
    pub(crate) fn running_child(&self, key: &SlotKey) -> Option<Arc<Child>> {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()?;
        slot.running()
    }

    /// A child for a new `per_session` session.
    pub(crate) async fn session_child(&self) -> Result<Arc<Child>, Failure> {
        let next = self.lock_session_backoff().next_start;
        self.wait_backoff(next).await?;
        let permit = self.permit().await?;
        let weak_pool = self.me.clone();
        let child = self.spawn(None, Relay::Session, move |exit, _pid| {
            drop(permit);
            if let Some(pool) = weak_pool.upgrade() {
                if !exit.requested {
                    pool.counters.crashes.fetch_add(1, Ordering::Relaxed);
                    let mut b = pool.lock_session_backoff();
                    if exit.lived < STABLE_AFTER {
                        let delay = b.exited(exit.lived, &exit.status);
                        pool.log_backoff(delay, &b);
                    } else {
                        *b = Backoff::default();
                    }
                }
                pool.session_children
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|w| w.strong_count() > 0);
            }
        });
        let child = match child {
            Ok(c) => c,
            Err(f) => {
                let mut b = self.lock_session_backoff();
                let delay = b.exited(Duration::ZERO, &f.message);
                self.log_backoff(delay, &b);
                return Err(f);
            }
        };
        self.session_children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::downgrade(&child));
        Ok(child)
    }

    /// A child that answered `initialize` well: the `per_session` back-off starts over.
    pub(crate) fn session_started(&self) {
        *self.lock_session_backoff() = Backoff::default();
    }

    fn lock_session_backoff(&self) -> std::sync::MutexGuard<'_, Backoff> {
        self.session_backoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    async fn wait_backoff(&self, next: Option<Instant>) -> Result<(), Failure> {
        let Some(at) = next else { return Ok(()) };
        let now = Instant::now();
        if at <= now {
            return Ok(());
        }
        let wait = at - now;
        if wait > self.spec.queue_timeout {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            let mut f = Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::UNAVAILABLE,
                format!(
                    "the stdio server {} keeps exiting; it is restarted in {} ms",
                    self.name,
                    wait.as_millis()
                ),
            );
            f.data = Some(serde_json::json!({"retry_after_ms": wait.as_millis() as u64}));
            return Err(f);
        }
        tokio::time::sleep(wait).await;
        Ok(())
    }

    async fn permit(&self) -> Result<OwnedSemaphorePermit, Failure> {
        match tokio::time::timeout(
            self.spec.queue_timeout,
            self.permits.clone().acquire_owned(),
        )
        .await
        {
            Ok(Ok(p)) => Ok(p),
            _ => {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                let mut f = Failure::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::UNAVAILABLE,
                    format!(
                        "the stdio upstream {} runs its max_processes ({}) and none became free within {:?}",
                        self.name, self.spec.max_processes, self.spec.queue_timeout
                    ),
                );
                f.data = Some(serde_json::json!({"max_processes": self.spec.max_processes}));
                Err(f)
            }
        }
    }

    fn spawn(
        &self,
        agent: Option<&str>,
        relay: Relay,
        on_exit: impl FnOnce(Exit, u32) + Send + 'static,
    ) -> Result<Arc<Child>, Failure> {
        let unavailable = |message: String| {
            self.counters.spawn_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(target: "mcp_gateway::stdio", upstream = %self.name, error = %message, "stdio server could not be started");
            Failure::new(
                StatusCode::BAD_GATEWAY,
                ErrorCode::UPSTREAM_UNAVAILABLE,
                message,
            )
        };
        let env = process::environment(&self.spec, agent).map_err(|e| {
            unavailable(format!("the stdio server {} cannot start: {e}", self.name))
        })?;
        let proc = process::spawn(&self.spec, &env).map_err(|e| {
            unavailable(format!(
                "the stdio server {} cannot start: {}: {e}",
                self.name,
                self.spec.command.first().map_or("", String::as_str)
            ))
        })?;
        let settings = ChildSettings {
            upstream: self.name.clone(),
            relay,
            max_message_size: self.spec.max_message_size,
            stop_timeout: self.spec.stop_timeout,
        };
        let pid_cell = Arc::new(std::sync::OnceLock::<u32>::new());
        let pid_for_exit = pid_cell.clone();
        let child = Child::start(proc, settings, move |exit| {
            on_exit(exit, pid_for_exit.get().copied().unwrap_or(0));
        })
        .map_err(|e| unavailable(format!("the stdio server {} cannot start: {e}", self.name)))?;
        let _ = pid_cell.set(child.pid());
        self.counters.starts.fetch_add(1, Ordering::Relaxed);
        Ok(child)
    }

    fn slot_exited(&self, slot: &Arc<Slot>, exit: Exit, pid: u32, restart: bool) {
        let mut st = slot.lock();
        if st.child.as_ref().is_some_and(|(c, _)| c.pid() == pid) {
            st.child = None;
        }
        if exit.requested {
            return;
        }
        self.counters.crashes.fetch_add(1, Ordering::Relaxed);
        let delay = st.backoff.exited(exit.lived, &exit.status);
        self.log_backoff(delay, &st.backoff);
        drop(st);
        if restart {
            self.restart_later(slot.key.clone(), delay);
        }
    }

    /// Starts `key`'s child again after `delay` (the shared child is kept running).
    fn restart_later(&self, key: SlotKey, delay: Duration) {
        let Some(pool) = self.me.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Err(f) = Box::pin(pool.child(&key)).await {
                tracing::debug!(target: "mcp_gateway::stdio", upstream = %pool.name, error = %f.message, "restart failed");
            }
        });
    }

    fn log_backoff(&self, delay: Duration, b: &Backoff) {
        tracing::warn!(
            target: "mcp_gateway::stdio",
            upstream = %self.name,
            exits_in_a_row = b.failures,
            last = b.last.as_deref().unwrap_or("-"),
            restart_in_ms = delay.as_millis() as u64,
            crash_loop = b.crash_looping(),
            "stdio server back-off"
        );
    }

    /// Why the upstream is not ready: a child (or the `per_session` starts) in a crash loop.
    pub(crate) fn unready(&self) -> Option<String> {
        let describe = |b: &Backoff| {
            format!(
                "stdio upstream {} is crash-looping ({} exits in a row, last: {})",
                self.name,
                b.failures,
                b.last.as_deref().unwrap_or("-")
            )
        };
        let slots: Vec<Arc<Slot>> = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for slot in slots {
            let st = slot.lock();
            let healthy_now = st
                .child
                .as_ref()
                .is_some_and(|(c, _)| c.alive() && c.uptime() >= STABLE_AFTER);
            if st.backoff.crash_looping() && !healthy_now {
                return Some(describe(&st.backoff));
            }
        }
        let b = self.lock_session_backoff();
        b.crash_looping().then(|| describe(&b))
    }

    /// How many children run now.
    pub(crate) fn running(&self) -> usize {
        self.spec.max_processes - self.permits.available_permits()
    }

    /// Stops the children idle for `idle_timeout` (agents' children; sessions are ended by
    /// the service, which owns them).
    fn reap_idle(&self) {
        let idle = self.spec.idle_timeout;
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.retain(|key, slot| {
            if key.agent.is_none() {
                return true;
            }
            let st = slot.lock();
            match &st.child {
                Some((c, _)) if c.in_flight() == 0 && c.idle_for() >= idle => {
                    tracing::info!(target: "mcp_gateway::stdio", upstream = %self.name, pid = c.pid(), "stdio server idle: stopping it");
                    c.stop();
                    false
                }
                Some(_) => true,
                None => st.backoff.next_start.is_some_and(|t| t > Instant::now()),
            }
        });
    }

    /// Stops every child (the gateway stops, or this upstream is dropped).
    pub(crate) fn stop_all(&self) {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        for slot in slots.values() {
            if let Some((c, _)) = &slot.lock().child {
                c.stop();
            }
        }
        for c in self
            .session_children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
        {
            c.stop();
        }
    }
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn running(&self) -> Option<Arc<Child>> {
        self.lock()
            .child
            .as_ref()
            .filter(|(c, _)| c.alive())
            .map(|(c, _)| c.clone())
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.stop_all();
    }
}
