use super::body::{CountedBody, InFlight};
use super::seal::{digest64, Claims, Keyring, SessionKey};
use super::store::{Clock, SessionHandle, SessionState, SessionStore, StoreError, Use};
use crate::body::{refused, Refused};
use crate::govern::{Decision, Refusal, Waiting};
use arc_swap::ArcSwap;
use futures_util::future::{BoxFuture, Either};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use mcp_gateway_core::exchange::{Denial, DenialKind, Exchange};
use mcp_gateway_core::headers::MCP_SESSION_ID;
use mcp_gateway_core::jsonrpc::{ErrorCode, JsonRpcError, RequestId};
use mcp_gateway_core::{ConnectionLost, Era, InstanceUnreachable, McpRequest, Principal};
use pin_project_lite::pin_project;
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tower_service::Service;

/// The key, the store and the timeouts: what every service of one layer shares.
#[derive(Clone)]
pub(crate) struct Settings {
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

/// The instance set of one service, the settings and the scope its ids are sealed for.
struct Placement<S> {
    settings: Arc<Settings>,
    scope: Arc<str>,
    set: ArcSwap<Vec<Arc<Instance<S>>>>,
}

/// Routes legacy sessions to the instance that owns them, balances new work over the live
/// instances, and seals the session ids clients see. See the [module docs](super).
pub struct SessionAffinity<S> {
    placement: Arc<Placement<S>>,
}

impl<S> Clone for SessionAffinity<S> {
    fn clone(&self) -> Self {
        Self {
            placement: self.placement.clone(),
        }
    }
}

impl<S> std::fmt::Debug for SessionAffinity<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionAffinity")
            .field("scope", &self.placement.scope)
            .field("instances", &self.instances())
            .finish_non_exhaustive()
    }
}

impl<S> SessionAffinity<S> {
    pub(crate) fn new<I, K>(settings: Arc<Settings>, scope: Arc<str>, instances: I) -> Self
    where
        I: IntoIterator<Item = (K, S)>,
        K: Into<Arc<str>>,
    {
        let list: Vec<_> = instances
            .into_iter()
            .map(|(k, s)| Arc::new(Instance::new(k.into(), s)))
            .collect();
        Self {
            placement: Arc::new(Placement {
                settings,
                scope,
                set: ArcSwap::from_pointee(list),
            }),
        }
    }

    /// The names of the instances, in order.
    pub fn instances(&self) -> Vec<String> {
        self.placement
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
        self.placement.set.rcu(|cur| {
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
        self.placement.set.rcu(|cur| {
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
        self.placement.settings.store_errors.load(Ordering::Relaxed)
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
) -> Response<Refused<CountedBody<B>>> {
    if get {
        drop(flight);
        resp.map(|b| http_body_util::Either::Left(CountedBody::new(b)))
    } else {
        resp.map(|b| http_body_util::Either::Left(CountedBody::counted(b, flight)))
    }
}

/// Why a session id was refused (logs and the per-request record).
#[derive(Clone, Copy, Debug)]
enum Why {
    Unopened(super::seal::OpenError),
    Expired,
    Idle,
    Ended,
    OtherPrincipal,
    InstanceGone,
    InstanceEjected,
    InstanceUnreachable,
}

impl Why {
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

fn not_found(why: Why, exchange: Option<&Exchange>) -> Refusal {
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
    Refusal::new(StatusCode::NOT_FOUND, err)
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

impl<S> Placement<S> {
    fn now(&self) -> u64 {
        self.settings.clock.now_ms()
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
                .settings
                .eject_base
                .saturating_mul(1u32 << (n - 1).min(16))
                .min(self.settings.eject_max);
            let until = now.saturating_add(backoff.as_millis() as u64);
            inst.ejected_until.store(until, Ordering::Relaxed);
            tracing::warn!(target: "mcp_gateway::sessions", instance = %inst.name, failures = n, ?backoff, "instance ejected");
        } else if inst.failures.load(Ordering::Relaxed) != 0 {
            inst.failures.store(0, Ordering::Relaxed);
            inst.ejected_until.store(0, Ordering::Relaxed);
        }
    }

    fn store_error(&self, e: &StoreError) {
        let n = self.settings.store_errors.fetch_add(1, Ordering::Relaxed);
        // Logged once, then once per thousand: a store outage must not flood the log.
        if n % 1000 == 0 {
            tracing::warn!(target: "mcp_gateway::sessions", error = %e, errors = n + 1, "session store unavailable: routing by sealed id alone");
        }
    }

    fn usage(&self, issued_ms: u64, now_ms: u64) -> Use {
        Use::new(
            now_ms,
            self.settings.idle_timeout,
            issued_ms.saturating_add(self.settings.max_lifetime.as_millis() as u64),
        )
    }
}

/// The body of a [`SessionAffinity`] answer: the instance's body, counted as outstanding on
/// its instance while it streams, or a refusal of the layer's own.
pub type AffinityBody<B> = Refused<CountedBody<B>>;

/// Where a request goes, decided before it is sent: the instance, and what to do with its
/// answer.
pub struct Routed<S> {
    placement: Arc<Placement<S>>,
    inst: Arc<Instance<S>>,
    flight: InFlight,
    exchange: Option<Exchange>,
    get: bool,
    session: Option<Session>,
    now_ms: u64,
}

impl<S> std::fmt::Debug for Routed<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routed")
            .field("instance", &self.inst.name)
            .finish_non_exhaustive()
    }
}

/// A legacy session the request belongs to.
struct Session {
    handle: SessionHandle,
    usage: Use,
    /// The sealed id the client sent (put back on answers that name the session).
    client_id: HeaderValue,
    delete: bool,
}

/// What is left to do with an answer: nothing, or end the session in a store that answers
/// over the network.
enum Finish<B> {
    Now(Response<AffinityBody<B>>),
    Later(BoxFuture<'static, Response<AffinityBody<B>>>),
}

impl<S: Send + Sync + 'static> Routed<S> {
    /// The instance's service.
    pub fn service(&self) -> &S {
        &self.inst.svc
    }

    /// The answer as the client gets it: ejection bookkeeping, the upstream's session id
    /// sealed (or put back), the body counted while it streams.
    fn finish<B: Send + 'static>(self, mut resp: Response<B>, id: Option<&RequestId>) -> Finish<B> {
        let p = &self.placement;
        let failure = failed(&resp);
        p.outcome(&self.inst, failure);
        let Some(session) = self.session else {
            let issued = resp
                .headers()
                .get(MCP_SESSION_ID)
                .and_then(|v| v.to_str().ok())
                .map(Box::<str>::from);
            if let Some(upstream) = issued {
                // Only now, for the rare answer that issues a session: the digest is a hash.
                let principal = self
                    .exchange
                    .as_ref()
                    .map_or(0, |x| x.update(|r| principal_digest(r.principal.as_ref())));
                let claims = Claims {
                    instance: self.inst.key,
                    issued_ms: self.now_ms,
                    principal,
                    upstream,
                };
                match p.settings.keys.seal(&claims, p.scope.as_bytes()) {
                    Ok((sealed, handle)) => {
                        if let Some(x) = &self.exchange {
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
            return Finish::Now(in_flight(resp, self.flight, self.get));
        };
        if failure {
            // The owner is unreachable: the client must start over elsewhere, not wait.
            let r = not_found(Why::InstanceUnreachable, self.exchange.as_ref());
            return Finish::Now(refused(r.into_response(id)));
        }
        if resp.headers().contains_key(MCP_SESSION_ID) {
            resp.headers_mut()
                .insert(MCP_SESSION_ID, session.client_id.clone());
        }
        let ended = (session.delete && resp.status().is_success())
            || resp.status() == StatusCode::NOT_FOUND;
        let resp = in_flight(resp, self.flight, self.get);
        if !ended {
            return Finish::Now(resp);
        }
        match p.settings.store.end(session.handle, session.usage) {
            Either::Left(now) => {
                if let Err(e) = now.into_inner() {
                    p.store_error(&e);
                }
                Finish::Now(resp)
            }
            Either::Right(later) => {
                let p = self.placement.clone();
                Finish::Later(Box::pin(async move {
                    if let Err(e) = later.await {
                        p.store_error(&e);
                    }
                    resp
                }))
            }
        }
    }
}

impl<S: Clone + Send + Sync + 'static> SessionAffinity<S> {
    /// Decides where `req` goes — the instance owning its session, or a live instance for new
    /// work — and rewrites its session id into the upstream's; or refuses it (404 for a
    /// session that is not valid here, 503 with no instance). Waits only for a session store
    /// that answers over the network.
    pub fn route<B>(&self, req: &mut Request<B>) -> Decision<Routed<S>> {
        let p = &self.placement;
        let view = McpRequest::from_extensions(req.extensions());
        let modern = view.is_some_and(|v| v.protocol().era == Era::Modern);
        let exchange = Exchange::from_extensions(req.extensions()).cloned();
        let now = p.now();
        let get = req.method() == Method::GET;
        let presented = if modern {
            // 2026-07-28 has no sessions: any instance serves any request, and a stray id is
            // not the upstream's business.
            req.headers_mut().remove(MCP_SESSION_ID);
            None
        } else {
            req.headers().get(MCP_SESSION_ID).cloned()
        };
        let Some(client_id) = presented else {
            // New work: `initialize`, a sessionless request, or any 2026-07-28 request.
            let Some(inst) = pick(&p.set.load(), now) else {
                let err = JsonRpcError::new(
                    ErrorCode::UPSTREAM_UNAVAILABLE,
                    "no upstream instance is configured",
                );
                return Decision::Refuse(Refusal::new(StatusCode::SERVICE_UNAVAILABLE, err));
            };
            if let Some(x) = &exchange {
                x.update(|r| r.instance = Some(inst.name.clone()));
            }
            return Decision::Pass(Routed {
                placement: self.placement.clone(),
                flight: InFlight::new(&inst.outstanding),
                inst,
                exchange,
                get,
                session: None,
                now_ms: now,
            });
        };

        // A legacy session: open, check, route to its owner.
        let (claims, handle) = match p
            .settings
            .keys
            .open(client_id.as_bytes(), p.scope.as_bytes())
        {
            Ok(c) => c,
            Err(e) => return Decision::Refuse(not_found(Why::Unopened(e), exchange.as_ref())),
        };
        if let Some(x) = &exchange {
            // The handle, not the id: logs and audit records never hold a usable id.
            let h = SessionHandle(handle).to_hex();
            x.update(|r| r.session = Some(h.into()));
        }
        let refuse = |why| Decision::Refuse(not_found(why, exchange.as_ref()));
        let usage = p.usage(claims.issued_ms, now);
        if now >= usage.expires_ms {
            return refuse(Why::Expired);
        }
        let principal = exchange
            .as_ref()
            .map_or(0, |x| x.update(|r| principal_digest(r.principal.as_ref())));
        if principal != claims.principal {
            return refuse(Why::OtherPrincipal);
        }
        let found = p
            .set
            .load()
            .iter()
            .find(|i| i.key == claims.instance)
            .cloned();
        let Some(inst) = found else {
            return refuse(Why::InstanceGone);
        };
        if inst.ejected(now) {
            return refuse(Why::InstanceEjected);
        }
        let Ok(upstream_id) = HeaderValue::from_str(&claims.upstream) else {
            return refuse(Why::Unopened(super::seal::OpenError::Malformed));
        };
        req.headers_mut().insert(MCP_SESSION_ID, upstream_id);
        let handle = SessionHandle(handle);
        let routed = Routed {
            placement: self.placement.clone(),
            flight: InFlight::new(&inst.outstanding),
            inst,
            exchange,
            get,
            session: Some(Session {
                handle,
                usage,
                client_id,
                delete: req.method() == Method::DELETE,
            }),
            now_ms: now,
        };
        match p.settings.store.touch(handle, usage) {
            Either::Left(now) => touched(now.into_inner(), routed),
            Either::Right(later) => Decision::Wait(Box::pin(async move {
                match touched(later.await, routed) {
                    Decision::Pass(r) => Ok(r),
                    Decision::Refuse(r) => Err(r),
                    Decision::Wait(w) => w.await,
                }
            })),
        }
    }

    /// [`route`](Self::route), waiting for the store when it answers over the network.
    async fn routed<B>(&self, req: &mut Request<B>) -> Result<Routed<S>, Refusal> {
        match self.route(req) {
            Decision::Pass(r) => Ok(r),
            Decision::Refuse(r) => Err(r),
            Decision::Wait(w) => w.await,
        }
    }

    /// Serves one request: routes it, hands the chosen instance's service (a clone) and the
    /// request to `call` (an `async` call such as `Upstream::forward`, composed inline: no
    /// boxed future), and finishes the answer. What [`Service::call`] does, for callers that
    /// do not go through the instance's `Service` impl.
    pub async fn serve<B, RB, F, Fut>(
        &self,
        mut req: Request<B>,
        call: F,
    ) -> Response<AffinityBody<RB>>
    where
        RB: Send + 'static,
        F: FnOnce(S, Request<B>) -> Fut,
        Fut: Future<Output = Response<RB>>,
    {
        let id = McpRequest::from_extensions(req.extensions()).and_then(|v| v.reply_id().cloned());
        let routed = match self.routed(&mut req).await {
            Ok(r) => r,
            Err(r) => return refused(r.into_response(id.as_ref())),
        };
        let resp = call(routed.service().clone(), req).await;
        match routed.finish(resp, id.as_ref()) {
            Finish::Now(resp) => resp,
            Finish::Later(f) => f.await,
        }
    }
}

impl<S: Clone + Send + Sync + 'static> SessionAffinity<S> {
    /// What [`serve`](Self::serve) does, and more: a request that belongs to no session and
    /// could not be sent to its instance at all (the answer carries [`InstanceUnreachable`]:
    /// not a byte reached the instance) is sent once more, to another live instance, instead
    /// of failing. Once any of it may have reached an instance, only a legacy `initialize`
    /// whose connection closed before any answer ([`ConnectionLost`]) is sent again (the
    /// session it may have opened there is never named to the client); a session's request
    /// is never moved (its owner is the only instance that knows it).
    ///
    /// The request is copied before it is sent, and only when another instance could take
    /// it, so its body must be `Clone` (a buffered body such as `Full<Bytes>` is); `call` is
    /// called once more for the retry.
    pub async fn serve_retrying<B, RB, F, Fut>(
        &self,
        mut req: Request<B>,
        mut call: F,
    ) -> Response<AffinityBody<RB>>
    where
        B: Clone,
        RB: Send + 'static,
        F: FnMut(S, Request<B>) -> Fut,
        Fut: Future<Output = Response<RB>>,
    {
        let view = McpRequest::from_extensions(req.extensions());
        let id = view.and_then(|v| v.reply_id().cloned());
        // A legacy `initialize` is safe to send again elsewhere even when it may have reached
        // an instance that then dropped the connection: the session it would have opened
        // there is never named to the client.
        let opens_session = view
            .and_then(McpRequest::single)
            .is_some_and(|m| m.method() == Some("initialize"));
        let routed = match self.routed(&mut req).await {
            Ok(r) => r,
            Err(r) => return refused(r.into_response(id.as_ref())),
        };
        let spare =
            (routed.session.is_none() && self.placement.set.load().len() > 1).then(|| copy(&req));
        let mut routed = routed;
        let mut resp = call(routed.service().clone(), req).await;
        if let Some(mut again) = spare {
            let unsent = resp.extensions().get::<InstanceUnreachable>().is_some();
            let lost = opens_session && resp.extensions().get::<ConnectionLost>().is_some();
            if unsent || lost {
                // Ejected first, so that routing anew passes it by.
                self.placement.outcome(&routed.inst, true);
                if let Decision::Pass(next) = self.route(&mut again) {
                    if !Arc::ptr_eq(&next.inst, &routed.inst) {
                        let why = if unsent {
                            "instance unreachable before the request was sent"
                        } else {
                            "instance closed the connection before answering initialize"
                        };
                        tracing::warn!(target: "mcp_gateway::sessions", instance = %routed.inst.name, to = %next.inst.name, "{why}: sending it to another instance");
                        routed = next;
                        resp = call(routed.service().clone(), again).await;
                    }
                }
            }
        }
        match routed.finish(resp, id.as_ref()) {
            Finish::Now(resp) => resp,
            Finish::Later(f) => f.await,
        }
    }
}

/// A copy of a request whose body can be copied: method, target, version, headers and
/// extensions.
fn copy<B: Clone>(req: &Request<B>) -> Request<B> {
    let mut r = Request::new(req.body().clone());
    *r.method_mut() = req.method().clone();
    *r.uri_mut() = req.uri().clone();
    *r.version_mut() = req.version();
    *r.headers_mut() = req.headers().clone();
    *r.extensions_mut() = req.extensions().clone();
    r
}

/// Continues routing once the store said whether the session is alive.
fn touched<S>(state: Result<SessionState, StoreError>, routed: Routed<S>) -> Decision<Routed<S>> {
    let why = match state {
        Ok(SessionState::Alive) => None,
        Ok(SessionState::Idle) => Some(Why::Idle),
        Ok(_) => Some(Why::Ended),
        Err(e) => {
            routed.placement.store_error(&e);
            None
        }
    };
    match why {
        None => {
            if let Some(x) = &routed.exchange {
                x.update(|r| r.instance = Some(routed.inst.name.clone()));
            }
            Decision::Pass(routed)
        }
        Some(why) => Decision::Refuse(not_found(why, routed.exchange.as_ref())),
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionAffinity<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + Sync + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<AffinityBody<ResBody>>;
    type Error = S::Error;
    type Future = AffinityFuture<S, ReqBody, ResBody>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is per instance, checked once the instance is chosen.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let id = McpRequest::from_extensions(req.extensions()).and_then(|v| v.reply_id().cloned());
        let state = match self.route(&mut req) {
            Decision::Pass(routed) => AffinityState::Ready {
                svc: Some(routed.inst.svc.clone()),
                routed: Some(routed),
                req: Some(req),
            },
            Decision::Refuse(r) => AffinityState::Answered {
                resp: Some(refused(r.into_response(id.as_ref()))),
            },
            Decision::Wait(wait) => AffinityState::Routing {
                wait,
                req: Some(req),
            },
        };
        AffinityFuture { state, id }
    }
}

pin_project! {
    #[project = AffinityStateProj]
    enum AffinityState<S: Service<Request<B>>, B, RB> {
        Routing { wait: Waiting<Routed<S>>, req: Option<Request<B>> },
        Ready { svc: Option<S>, routed: Option<Routed<S>>, req: Option<Request<B>> },
        Calling { #[pin] fut: S::Future, routed: Option<Routed<S>> },
        Finishing { fut: BoxFuture<'static, Response<AffinityBody<RB>>> },
        Answered { resp: Option<Response<AffinityBody<RB>>> },
    }
}

pin_project! {
    /// The future of [`SessionAffinity`]: route, call the instance, finish the answer.
    pub struct AffinityFuture<S: Service<Request<B>>, B, RB> {
        #[pin]
        state: AffinityState<S, B, RB>,
        id: Option<RequestId>,
    }
}

impl<S: Service<Request<B>>, B, RB> std::fmt::Debug for AffinityFuture<S, B, RB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AffinityFuture").finish_non_exhaustive()
    }
}

impl<S, B, RB> Future for AffinityFuture<S, B, RB>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    RB: Send + 'static,
{
    type Output = Result<Response<AffinityBody<RB>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                AffinityStateProj::Routing { wait, req } => {
                    let routed = ready!(wait.as_mut().poll(cx));
                    let Some(req) = req.take() else {
                        return Poll::Pending;
                    };
                    match routed {
                        Ok(routed) => this.state.set(AffinityState::Ready {
                            svc: Some(routed.inst.svc.clone()),
                            routed: Some(routed),
                            req: Some(req),
                        }),
                        Err(r) => {
                            let resp = refused(r.into_response(this.id.as_ref()));
                            this.state.set(AffinityState::Answered { resp: None });
                            return Poll::Ready(Ok(resp));
                        }
                    }
                }
                AffinityStateProj::Ready { svc, routed, req } => {
                    let Some(s) = svc.as_mut() else {
                        return Poll::Pending;
                    };
                    ready!(s.poll_ready(cx))?;
                    let (Some(mut s), Some(routed), Some(req)) =
                        (svc.take(), routed.take(), req.take())
                    else {
                        return Poll::Pending;
                    };
                    let fut = s.call(req);
                    this.state.set(AffinityState::Calling {
                        fut,
                        routed: Some(routed),
                    });
                }
                AffinityStateProj::Calling { fut, routed } => {
                    let resp = ready!(fut.poll(cx))?;
                    let Some(routed) = routed.take() else {
                        return Poll::Pending;
                    };
                    match routed.finish(resp, this.id.as_ref()) {
                        Finish::Now(resp) => {
                            this.state.set(AffinityState::Answered { resp: None });
                            return Poll::Ready(Ok(resp));
                        }
                        Finish::Later(fut) => this.state.set(AffinityState::Finishing { fut }),
                    }
                }
                AffinityStateProj::Finishing { fut } => {
                    let resp = ready!(fut.as_mut().poll(cx));
                    this.state.set(AffinityState::Answered { resp: None });
                    return Poll::Ready(Ok(resp));
                }
                AffinityStateProj::Answered { resp } => {
                    return match resp.take() {
                        Some(r) => Poll::Ready(Ok(r)),
                        None => Poll::Pending,
                    }
                }
            }
        }
    }
}
