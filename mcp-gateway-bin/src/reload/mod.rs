//! Configuration reload: SIGHUP, `POST /reload` on the admin listener, or (with
//! `[server] watch_config = true`) a change of the file or of a file it names.
//!
//! A reload reads and checks the whole file (the errors `mcp-gateway check` gives, located)
//! and builds every layer before anything changes; a bad file changes nothing. The new stack
//! then replaces the old one in one swap ([`mcp_gateway_layers::reload`]): the listening
//! sockets are never rebound, requests and streams already running finish on the stack they
//! started on, new requests take the new one. State whose meaning did not change carries
//! over ([`Router::build`]). A route the new file no longer has keeps its open streams for
//! `drain_timeout`, then ends them cleanly and stops its stdio children; a route whose
//! upstream or permissions changed tells the legacy GET streams open on it
//! `notifications/tools/list_changed`. What only a restart can change (the listen addresses,
//! the runtime, the log settings, the listener's time limits) is kept, and the report says so
//! while the rest of the change applies.

mod stream;

pub use stream::{RouteState, Watched};

use crate::config::{self, Settings};
use crate::router::Router;
use mcp_gateway_core::observe::Cutoff;
use mcp_gateway_layers::reload::{FileWatch, ReloadHandle};
use mcp_gateway_layers::stdio::StdioUpstream;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

/// What one reload did.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[non_exhaustive]
pub struct ReloadReport {
    /// `"ok"` (applied) or `"error"` (nothing changed).
    pub result: &'static str,
    /// What triggered it: `signal`, `admin`, `watch` or `api`.
    pub trigger: String,
    /// Why nothing changed: the file's errors, located (`FILE:LINE:COL: message`), or what
    /// could not be built.
    pub errors: Vec<String>,
    /// Changes the file makes that only a restart applies (kept as they were).
    pub not_applied: Vec<String>,
    /// Routes served from now on that were not before.
    pub added: Vec<String>,
    /// Routes removed (their open streams drain for `drain_timeout`).
    pub removed: Vec<String>,
    /// Routes whose upstream or permissions changed.
    pub changed: Vec<String>,
}

impl ReloadReport {
    /// Whether the new configuration is in force.
    pub fn applied(&self) -> bool {
        self.result == "ok"
    }
}

/// Reloads a running gateway's configuration. Cheap to clone.
#[derive(Clone)]
pub struct Reloader {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("ok", &self.inner.ok.load(Ordering::Relaxed))
            .field("failed", &self.inner.failed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

struct Inner {
    routers: ReloadHandle<Router>,
    tls: Option<ReloadHandle<tokio_rustls::TlsAcceptor>>,
    ready: Arc<AtomicBool>,
    cutoff: Cutoff,
    /// The public URL derived from the bound address, for a file that names none.
    derived_public_url: String,
    /// One reload at a time.
    lock: tokio::sync::Mutex<()>,
    ok: AtomicU64,
    failed: AtomicU64,
    last_ok: AtomicU64,
    /// Local servers whose route was removed or changed, stopped when their drain is over —
    /// or at shutdown, whichever comes first.
    draining: Mutex<Vec<StdioUpstream>>,
}

impl Reloader {
    pub(crate) fn new(
        routers: ReloadHandle<Router>,
        tls: Option<ReloadHandle<tokio_rustls::TlsAcceptor>>,
        ready: Arc<AtomicBool>,
        cutoff: Cutoff,
        derived_public_url: String,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                routers,
                tls,
                ready,
                cutoff,
                derived_public_url,
                lock: tokio::sync::Mutex::new(()),
                ok: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                last_ok: AtomicU64::new(0),
                draining: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The router serving new requests.
    pub fn current(&self) -> Arc<Router> {
        self.inner.routers.current()
    }

    /// Reads the configuration file again and, when it is valid and everything builds,
    /// serves it from the next request on. `trigger` names the cause in the log and report.
    pub async fn reload(&self, trigger: &str) -> ReloadReport {
        let _one = self.inner.lock.lock().await;
        let mut report = ReloadReport {
            trigger: trigger.to_owned(),
            ..ReloadReport::default()
        };
        match self.try_reload(&mut report).await {
            Ok(()) => {
                report.result = "ok";
                self.inner.ok.fetch_add(1, Ordering::Relaxed);
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                self.inner.last_ok.store(now, Ordering::Relaxed);
                for n in &report.not_applied {
                    tracing::warn!(trigger, "reload: {n}");
                }
                tracing::info!(
                    trigger,
                    added = ?report.added,
                    removed = ?report.removed,
                    changed = ?report.changed,
                    "configuration reloaded"
                );
            }
            Err(errors) => {
                report.result = "error";
                report.errors = errors;
                self.inner.failed.fetch_add(1, Ordering::Relaxed);
                for e in &report.errors {
                    tracing::error!(trigger, "reload refused: {e}");
                }
                tracing::error!(
                    trigger,
                    errors = report.errors.len(),
                    "configuration not reloaded: nothing changed"
                );
            }
        }
        report
    }

    async fn try_reload(&self, report: &mut ReloadReport) -> Result<(), Vec<String>> {
        let current = self.inner.routers.current();
        let old = current.settings();
        let Some(path) = old.source.clone() else {
            return Err(vec![
                "the gateway was started without --config: there is no file to reload".into(),
            ]);
        };
        let mut next = match config::load(&path) {
            Ok(s) => s,
            Err(errors) => return Err(errors.iter().map(ToString::to_string).collect()),
        };
        old.overrides.apply(&mut next);
        if next.public_url.is_none() {
            next.public_url = Some(self.inner.derived_public_url.clone());
        }
        report.not_applied = keep_restart_only(old, &mut next);
        let acceptor = match (&self.inner.tls, &next.tls) {
            (Some(_), Some((cert, key))) => Some(
                crate::tls::server_config(cert, key)
                    .map(tokio_rustls::TlsAcceptor::from)
                    .map_err(|e| vec![format!("server.tls: {e}")])?,
            ),
            _ => None,
        };
        let router = Router::build(
            &next,
            self.inner.ready.clone(),
            self.inner.cutoff.clone(),
            Some(&current),
        )
        .await
        .map_err(|e| vec![e.to_string()])?;
        // Everything is built: from here on nothing fails.
        let changes = current.changes(&router);
        report.added = current.added(&router);
        for (name, state) in &changes {
            match state {
                RouteState::Retired => report.removed.push(name.clone()),
                _ => report.changed.push(name.clone()),
            }
        }
        let stale: Vec<StdioUpstream> = current
            .stdio()
            .iter()
            .filter(|u| {
                !router
                    .stdio()
                    .iter()
                    .any(|n| n.name() == u.name() && n.spec() == u.spec())
            })
            .cloned()
            .collect();
        let old_telemetry = current
            .telemetry()
            .cloned()
            .filter(|_| !Router::keeps_telemetry(old, &next));
        let old_audit = current.audit().cloned().filter(|_| next.audit.is_none());
        let drain = next.reload.drain_timeout;
        self.inner.routers.swap(router);
        if let (Some(cell), Some(a)) = (&self.inner.tls, acceptor) {
            cell.swap(a);
        }
        for name in &report.changed {
            current.signal(name, RouteState::Changed);
        }
        self.inner
            .draining
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(stale.iter().cloned());
        let removed = report.removed.clone();
        let inner = self.inner.clone();
        tokio::spawn(async move {
            tokio::time::sleep(drain).await;
            for name in &removed {
                current.signal(name, RouteState::Retired);
            }
            for up in &stale {
                up.stop().await;
            }
            inner
                .draining
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|d| {
                    !stale
                        .iter()
                        .any(|s| s.name() == d.name() && s.spec() == d.spec())
                });
            if let Some(t) = old_telemetry {
                mcp_gateway_layers::telemetry::otlp::shutdown(&t, Duration::from_secs(5)).await;
            }
            if let Some(a) = old_audit {
                mcp_gateway_layers::audit::config::shutdown(&a, Duration::from_secs(10)).await;
            }
        });
        Ok(())
    }

    /// Stops the local servers still draining (at shutdown).
    pub(crate) async fn stop_draining(&self) {
        let draining = std::mem::take(
            &mut *self
                .inner
                .draining
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for up in draining {
            up.stop().await;
        }
    }

    /// Reloads on every change of the configuration file or of a file it names, while the
    /// current configuration says `watch_config = true`. The files are polled either way, so
    /// that a change made while watching was off (and applied by a signal) is not taken for
    /// a new one when watching is switched on.
    pub(crate) async fn watch(self) {
        let mut watch = FileWatch::new(
            Vec::new(),
            mcp_gateway_layers::reload::config::WATCH_INTERVAL,
            mcp_gateway_layers::reload::config::DEFAULT_WATCH_DEBOUNCE,
        );
        loop {
            let current = self.current();
            let s = current.settings();
            let Some(source) = s.source.clone() else {
                return;
            };
            // The files of the configuration now in force (a reload may name others).
            watch.set_paths(std::iter::once(source).chain(s.named_files.iter().cloned()));
            watch.set_debounce(s.reload.watch_debounce);
            drop(current);
            let changed = watch.changed().await;
            if !self.current().settings().reload.watch_config {
                continue;
            }
            tracing::info!(files = ?changed, "watched files changed: reloading");
            self.reload("watch").await;
        }
    }

    /// Appends the reload counters in the Prometheus text format.
    pub fn render_prometheus(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "# HELP mcp_gateway_config_reloads_total Configuration reloads, by result (error: nothing changed)."
        );
        let _ = writeln!(out, "# TYPE mcp_gateway_config_reloads_total counter");
        let _ = writeln!(
            out,
            "mcp_gateway_config_reloads_total{{result=\"ok\"}} {}",
            self.inner.ok.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "mcp_gateway_config_reloads_total{{result=\"error\"}} {}",
            self.inner.failed.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP mcp_gateway_config_last_reload_success_timestamp_seconds When the configuration was last reloaded (0: never)."
        );
        let _ = writeln!(
            out,
            "# TYPE mcp_gateway_config_last_reload_success_timestamp_seconds gauge"
        );
        let _ = writeln!(
            out,
            "mcp_gateway_config_last_reload_success_timestamp_seconds {}",
            self.inner.last_ok.load(Ordering::Relaxed)
        );
    }
}

/// Puts back what a reload cannot change, and says what was kept.
fn keep_restart_only(old: &Settings, next: &mut Settings) -> Vec<String> {
    let mut kept = Vec::new();
    macro_rules! keep {
        ($field:ident, $key:literal) => {
            if format!("{:?}", next.$field) != format!("{:?}", old.$field) {
                kept.push(format!(
                    concat!(
                        $key,
                        " changed from {:?} to {:?}: only a restart applies it (kept {:?})"
                    ),
                    old.$field, next.$field, old.$field
                ));
                next.$field = old.$field.clone();
            }
        };
    }
    if next.listen != old.listen {
        kept.push(format!(
            "server.listen changed from {} to {}: the listening socket is never rebound; restart to move it (still {})",
            old.listen, next.listen, old.listen
        ));
        next.listen = old.listen;
    }
    let admin = |s: &Settings| s.admin.as_ref().map(|a| a.listen);
    if admin(next) != admin(old) {
        kept.push(format!(
            "admin.listen changed from {:?} to {:?}: the admin listener is never rebound; restart to change it",
            admin(old),
            admin(next)
        ));
        next.admin = old.admin.clone();
    }
    if next.tls.is_some() != old.tls.is_some() {
        kept.push(format!(
            "server.tls {}: a listener changes between plain and TLS only at a restart",
            if next.tls.is_some() {
                "added"
            } else {
                "removed"
            }
        ));
        next.tls = old.tls.clone();
    }
    // The audit writer runs for the whole process (its chain goes on); its `path` moves with a
    // reload, its other settings (queue, fsync, arguments and redaction, timeouts) do not.
    if let (Some(o), Some(n)) = (&old.audit, &mut next.audit) {
        if format!("{:?}", o.options) != format!("{:?}", n.options) {
            kept.push(
                "[audit] settings other than its path changed (queue, on_full, fsync, linger, arguments, redact, write_timeout): only a restart applies them (kept as they run)"
                    .to_owned(),
            );
            n.options = o.options.clone();
        }
    }
    keep!(worker_threads, "server.worker_threads");
    keep!(runtime, "server.runtime");
    keep!(shutdown_grace, "server.shutdown_grace");
    keep!(header_read_timeout, "server.header_read_timeout");
    keep!(max_header_bytes, "server.max_header_bytes");
    keep!(sse_keepalive, "server.sse_keepalive");
    keep!(log_format, "log.format");
    keep!(log_level, "log.level");
    kept
}

/// The address clients reach a listener at, for a file that names no `public_url`.
pub(crate) fn derived_public_url(tls: bool, addr: SocketAddr) -> String {
    format!("{}://{addr}", if tls { "https" } else { "http" })
}
