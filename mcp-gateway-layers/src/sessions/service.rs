use super::body::{CountedBody, InFlight};
use super::seal::{digest64, Claims, Keyring, SessionKey};
use super::store::{Clock, SessionHandle, SessionState, SessionStore, Use};
use crate::body::{reject, ResponseBody};
use arc_swap::ArcSwap;
use futures_util::future::BoxFuture;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use mcp_gateway_core::exchange::{Denial, DenialKind, Exchange};
use mcp_gateway_core::headers::MCP_SESSION_ID;
use mcp_gateway_core::jsonrpc::{ErrorCode, JsonRpcError, RequestId};
use mcp_gateway_core::{Era, InstanceUnreachable, McpRequest, Principal};
use std::cell::Cell;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower_service::Service;

/// What every service of one layer shares.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) keys: Arc<Keyring>,
    pub(crate) key: SessionKey,
    pub(crate) previous: Vec<SessionKey>,
    pub(crate) store: Arc<dyn SessionStore>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_lifetime: Duration,
    pub(crate) eject_base: Duration,
    pub(crate) eject_max: Duration,
    pub(crate) store_errors: Arc<AtomicU64>,
}

/// One instance of the set.
struct Instance<S> {
    name: Arc<str>,
    /// Digest of the name: what sealed ids carry.
    key: u64,
    svc: S,
    /// Requests sent whose answer is not over yet.
    outstanding: Arc<AtomicUsize>,
    /// Failures in a row.
    failures: AtomicU32,
    /// Skipped for new work until then (ms since the epoch).
    ejected_until: AtomicU64,
}

impl<S> Instance<S> {
    fn new(name: Arc<str>, svc: S) -> Self {
        Self {
            key: digest64(&[name.as_bytes()]),
            name,
            svc,
            outstanding: Arc::new(AtomicUsize::new(0)),
            failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
        }
    }
    fn ejected(&self, now_ms: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now_ms
    }
}

struct Shared<S> {
    config: Arc<Config>,
    scope: Arc<str>,
    set: ArcSwap<Vec<Arc<Instance<S>>>>,
}

/// Routes legacy sessions to the instance that owns them, balances new work over the live
/// instances, and seals the session ids clients see. See the [module docs](super).
pub struct SessionAffinity<S> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for SessionAffinity<S> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<S> std::fmt::Debug for SessionAffinity<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionAffinity")
            .field("scope", &self.shared.scope)
            .field("instances", &self.instances())
            .finish_non_exhaustive()
    }
}

impl<S> SessionAffinity<S> {
    pub(crate) fn new<I, K>(config: Arc<Config>, scope: Arc<str>, instances: I) -> Self
    where
        I: IntoIterator<Item = (K, S)>,
        K: Into<Arc<str>>,
    {
        let list: Vec<_> = instances
            .into_iter()
            .map(|(k, s)| Arc::new(Instance::new(k.into(), s)))
            .collect();
        Self {
            shared: Arc::new(Shared {
                config,
                scope,
                set: ArcSwap::from_pointee(list),
            }),
        }
    }

    /// The names of the instances, in order.
    pub fn instances(&self) -> Vec<String> {
        self.shared
            .set
            .load()
            .iter()
            .map(|i| i.name.to_string())
            .collect()
    }

    /// Adds an instance (or replaces the one of that name). Sessions on the other instances
    /// are not disturbed; those of a replaced instance keep routing to its name.
    pub fn insert(&self, name: impl Into<Arc<str>>, svc: S) {
        let inst = Arc::new(Instance::new(name.into(), svc));
        self.shared.set.rcu(|cur| {
            let mut next: Vec<_> = cur
                .iter()
                .filter(|i| i.name != inst.name)
                .cloned()
                .collect();
            next.push(inst.clone());
            next
        });
    }

    /// Removes the instance `name`; its sessions get 404 (and re-initialize elsewhere),
    /// sessions on the other instances are not disturbed. Returns whether it was there.
    pub fn remove(&self, name: &str) -> bool {
        let mut found = false;
        self.shared.set.rcu(|cur| {
            found = cur.iter().any(|i| &*i.name == name);
            cur.iter()
                .filter(|i| &*i.name != name)
                .cloned()
                .collect::<Vec<_>>()
        });
        found
    }

    /// How many times the store could not answer (each logged; routing failed open).
    pub fn store_errors(&self) -> u64 {
        self.shared.config.store_errors.load(Ordering::Relaxed)
    }
}

thread_local! {
    // Seeded differently per thread (std's per-thread random hash keys); quality is
    // irrelevant for choosing two instances.
    static RNG: Cell<u64> = Cell::new({
        use std::hash::{BuildHasher, Hasher};
        std::collections::hash_map::RandomState::new().build_hasher().finish().max(1)
    });
}

fn random() -> u64 {
    RNG.with(|c| {
        let mut x = c.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.set(x);
        x
    })
}

/// Power of two choices among the live instances: two at random, the one with fewer
/// outstanding requests. When every instance is ejected, the one whose ejection ends first.
fn pick<S>(set: &[Arc<Instance<S>>], now_ms: u64) -> Option<Arc<Instance<S>>> {
    let n = set.len();
    match n {
        0 => return None,
        1 => return Some(set[0].clone()),
        _ => {}
    }
    let r = random();
    let a = (r % n as u64) as usize;
    let mut b = ((r >> 32) % (n as u64 - 1)) as usize;
    if b >= a {
        b += 1;
    }
    let (x, y) = (&set[a], &set[b]);
    let chosen = match (x.ejected(now_ms), y.ejected(now_ms)) {
        (false, false) => {
            if y.outstanding.load(Ordering::Relaxed) < x.outstanding.load(Ordering::Relaxed) {
                y
            } else {
                x
            }
        }
        (false, true) => x,
        (true, false) => y,
        (true, true) => match set.iter().find(|i| !i.ejected(now_ms)) {
            Some(live) => live,
            None => set
                .iter()
                .min_by_key(|i| i.ejected_until.load(Ordering::Relaxed))
                .unwrap_or(x),
        },
    };
    Some(chosen.clone())
}

/// The response, counted as outstanding on its instance until its body is over — except a
/// GET stream, which is a listener that may stay open for hours, not work in progress.
fn in_flight<B>(
    resp: Response<B>,
    flight: InFlight,
    get: bool,
) -> Response<ResponseBody<CountedBody<B>>> {
    if get {
        drop(flight);
        resp.map(|b| ResponseBody::inner(CountedBody::new(b)))
    } else {
        resp.map(|b| ResponseBody::inner(CountedBody::counted(b, flight)))
    }
}

/// Why a session id was refused (logs and the per-request record).
#[derive(Clone, Copy, Debug)]
enum Refusal {
    Unopened(super::seal::OpenError),
    Expired,
    Idle,
    Ended,
    OtherPrincipal,
    InstanceGone,
    InstanceEjected,
    InstanceUnreachable,
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Self::Unopened(super::seal::OpenError::Malformed) => "malformed session id",
            Self::Unopened(super::seal::OpenError::UnknownKey) => "session id from an unknown key",
            Self::Unopened(_) => "forged or tampered session id",
            Self::Expired => "session past its max_lifetime",
            Self::Idle => "session idle past its idle_timeout",
            Self::Ended => "session ended",
            Self::OtherPrincipal => "session belongs to another principal",
            Self::InstanceGone => "session's instance is no longer configured",
            Self::InstanceEjected => "session's instance is failing",
            Self::InstanceUnreachable => "session's instance could not be reached",
        }
    }
}

fn not_found<B>(
    why: Refusal,
    id: Option<&RequestId>,
    exchange: Option<&Exchange>,
) -> Response<ResponseBody<B>> {
    tracing::debug!(target: "mcp_gateway::sessions", reason = why.as_str(), "session refused");
    if let Some(x) = exchange {
        x.deny(Denial::new(
            "sessions",
            DenialKind::UnknownSession,
            StatusCode::NOT_FOUND,
            why.as_str(),
        ));
    }
    let err = JsonRpcError::new(
        ErrorCode::SESSION_NOT_FOUND,
        "session not found: initialize a new session without a session id",
    );
    reject(err.into_response(StatusCode::NOT_FOUND, id))
}

/// A digest of who is calling, as the per-request record knows it (0: nobody known).
fn principal_digest(p: Option<&Principal>) -> u64 {
    p.map_or(0, |p| {
        digest64(&[p.subject().as_bytes(), p.agent_key().as_bytes()])
    })
}

/// Whether the instance failed: it could not be reached ([`InstanceUnreachable`]) or the
/// exchange broke (502). A 503 or 504 is an answer (busy, slow), not an ejection.
fn failed<B>(resp: &Response<B>) -> bool {
    resp.extensions().get::<InstanceUnreachable>().is_some()
        || resp.status() == StatusCode::BAD_GATEWAY
}

impl<S> Shared<S> {
    fn now(&self) -> u64 {
        self.config.clock.now_ms()
    }

    fn outcome(&self, inst: &Instance<S>, failed: bool) {
        if failed {
            let now = self.now();
            if inst.ejected(now) {
                // The same outage, seen by a request already in flight: not a new failure.
                return;
            }
            let n = inst
                .failures
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1);
            let backoff = self
                .config
                .eject_base
                .saturating_mul(1u32 << (n - 1).min(16))
                .min(self.config.eject_max);
            let until = now.saturating_add(backoff.as_millis() as u64);
            inst.ejected_until.store(until, Ordering::Relaxed);
            tracing::warn!(target: "mcp_gateway::sessions", instance = %inst.name, failures = n, ?backoff, "instance ejected");
        } else if inst.failures.load(Ordering::Relaxed) != 0 {
            inst.failures.store(0, Ordering::Relaxed);
            inst.ejected_until.store(0, Ordering::Relaxed);
        }
    }

    fn store_error(&self, e: &super::StoreError) {
        let n = self.config.store_errors.fetch_add(1, Ordering::Relaxed);
        // Logged once, then once per thousand: a store outage must not flood the log.
        if n % 1000 == 0 {
            tracing::warn!(target: "mcp_gateway::sessions", error = %e, errors = n + 1, "session store unavailable: routing by sealed id alone");
        }
    }

    fn usage(&self, issued_ms: u64, now_ms: u64) -> Use {
        Use::new(
            now_ms,
            self.config.idle_timeout,
            issued_ms.saturating_add(self.config.max_lifetime.as_millis() as u64),
        )
    }
}

async fn ready<S, R>(svc: &mut S) -> Result<(), S::Error>
where
    S: Service<R>,
{
    futures_util::future::poll_fn(|cx| svc.poll_ready(cx)).await
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionAffinity<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResponseBody<CountedBody<ResBody>>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is per instance, checked once the instance is chosen.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move {
            let view = McpRequest::from_extensions(req.extensions());
            let modern = view.is_some_and(|v| v.protocol().era == Era::Modern);
            let reply_id = view.and_then(|v| v.reply_id().cloned());
            let exchange = Exchange::from_extensions(req.extensions()).cloned();
            let now = shared.now();
            let presented = if modern {
                // 2026-07-28 has no sessions: any instance serves any request, and a stray
                // id is not the upstream's business.
                req.headers_mut().remove(MCP_SESSION_ID);
                None
            } else {
                req.headers().get(MCP_SESSION_ID).cloned()
            };

            let Some(client_id) = presented else {
                // New work: `initialize`, a sessionless request, or any 2026-07-28 request.
                let Some(inst) = pick(&shared.set.load(), now) else {
                    let err = JsonRpcError::new(
                        ErrorCode::UPSTREAM_UNAVAILABLE,
                        "no upstream instance is configured",
                    );
                    return Ok(reject(err.into_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        reply_id.as_ref(),
                    )));
                };
                if let Some(x) = &exchange {
                    x.update(|r| r.instance = Some(inst.name.clone()));
                }
                let get = req.method() == Method::GET;
                let mut svc = inst.svc.clone();
                let flight = InFlight::new(&inst.outstanding);
                ready(&mut svc).await?;
                let mut resp = svc.call(req).await?;
                shared.outcome(&inst, failed(&resp));
                let issued = resp
                    .headers()
                    .get(MCP_SESSION_ID)
                    .and_then(|v| v.to_str().ok())
                    .map(Box::<str>::from);
                if let Some(upstream) = issued {
                    // Only now, for the rare answer that issues a session: the digest is a hash.
                    let principal = exchange
                        .as_ref()
                        .map_or(0, |x| x.update(|r| principal_digest(r.principal.as_ref())));
                    let claims = Claims {
                        instance: inst.key,
                        issued_ms: now,
                        principal,
                        upstream,
                    };
                    match shared.config.keys.seal(&claims, shared.scope.as_bytes()) {
                        Ok((sealed, handle)) => {
                            if let Some(x) = &exchange {
                                let h = SessionHandle(handle).to_hex();
                                x.update(|r| r.session = Some(h.into()));
                            }
                            match HeaderValue::from_str(&sealed) {
                                Ok(v) => {
                                    resp.headers_mut().insert(MCP_SESSION_ID, v);
                                }
                                Err(_) => {
                                    resp.headers_mut().remove(MCP_SESSION_ID);
                                }
                            }
                        }
                        Err(e) => {
                            // The upstream's id must not reach the client: drop it.
                            tracing::error!(target: "mcp_gateway::sessions", error = %e, "cannot seal a session id");
                            resp.headers_mut().remove(MCP_SESSION_ID);
                        }
                    }
                }
                return Ok(in_flight(resp, flight, get));
            };

            // A legacy session: open, check, route to its owner.
            let scope = shared.scope.as_bytes();
            let (claims, handle) = match shared.config.keys.open(client_id.as_bytes(), scope) {
                Ok(c) => c,
                Err(e) => {
                    return Ok(not_found(
                        Refusal::Unopened(e),
                        reply_id.as_ref(),
                        exchange.as_ref(),
                    ))
                }
            };
            if let Some(x) = &exchange {
                // The handle, not the id: logs and audit records never hold a usable id.
                let h = SessionHandle(handle).to_hex();
                x.update(|r| r.session = Some(h.into()));
            }
            let refuse =
                |why| Ok::<_, S::Error>(not_found(why, reply_id.as_ref(), exchange.as_ref()));
            let usage = shared.usage(claims.issued_ms, now);
            if now >= usage.expires_ms {
                return refuse(Refusal::Expired);
            }
            let principal = exchange
                .as_ref()
                .map_or(0, |x| x.update(|r| principal_digest(r.principal.as_ref())));
            if principal != claims.principal {
                return refuse(Refusal::OtherPrincipal);
            }
            let found = shared
                .set
                .load()
                .iter()
                .find(|i| i.key == claims.instance)
                .cloned();
            let Some(inst) = found else {
                return refuse(Refusal::InstanceGone);
            };
            if inst.ejected(now) {
                return refuse(Refusal::InstanceEjected);
            }
            let handle = SessionHandle(handle);
            match shared.config.store.touch(handle, usage).await {
                Ok(SessionState::Alive) => {}
                Ok(SessionState::Idle) => return refuse(Refusal::Idle),
                Ok(_) => return refuse(Refusal::Ended),
                Err(e) => shared.store_error(&e),
            }
            if let Some(x) = &exchange {
                x.update(|r| r.instance = Some(inst.name.clone()));
            }
            let Ok(upstream_id) = HeaderValue::from_str(&claims.upstream) else {
                return refuse(Refusal::Unopened(super::seal::OpenError::Malformed));
            };
            req.headers_mut().insert(MCP_SESSION_ID, upstream_id);
            let delete = req.method() == Method::DELETE;
            let get = req.method() == Method::GET;
            let mut svc = inst.svc.clone();
            let flight = InFlight::new(&inst.outstanding);
            ready(&mut svc).await?;
            let mut resp = svc.call(req).await?;
            let failure = failed(&resp);
            shared.outcome(&inst, failure);
            if failure {
                // The owner is unreachable: the client must start over elsewhere, not wait.
                return refuse(Refusal::InstanceUnreachable);
            }
            let ended =
                (delete && resp.status().is_success()) || resp.status() == StatusCode::NOT_FOUND;
            if ended {
                if let Err(e) = shared.config.store.end(handle, usage).await {
                    shared.store_error(&e);
                }
            }
            if resp.headers().contains_key(MCP_SESSION_ID) {
                resp.headers_mut().insert(MCP_SESSION_ID, client_id);
            }
            Ok(in_flight(resp, flight, get))
        })
    }
}
