//! [`Exchange`]: the per-request record that every governing layer shares.
//!
//! The outermost layer that governs a request creates the record and puts it in the request
//! extensions ([`Exchange::get_or_insert`]); every layer under it writes what it decided — the
//! [`Principal`], the session, the chosen instance, tokens in and out, a refusal and its reason
//! — and may register an [`Observer`] of the response. Layers above
//! read the record when the exchange ends, so tracing and audit see the decisions of the layers
//! inside them, refusals included.
//!
//! One layer attaches the registered observers to the response — the first to
//! [`claim`](Exchange::claim) the record, which is the outermost governing layer — once, however
//! many layers registered one; the others only write to the record. The observers' end hooks
//! run innermost first, so an outer layer's hook reads what the inner ones settled.
//!
//! ```
//! use http::{Request, StatusCode};
//! use mcp_gateway_core::exchange::{Denial, DenialKind, Exchange};
//! use mcp_gateway_core::Principal;
//!
//! let mut req = Request::post("/mcp").body(()).unwrap();
//! // The outermost layer: creates the record.
//! let (outer, created) = Exchange::get_or_insert(req.extensions_mut());
//! assert!(created);
//! // An inner layer: finds it and writes its decision.
//! let (inner, created) = Exchange::get_or_insert(req.extensions_mut());
//! assert!(!created);
//! inner.update(|r| r.principal = Some(Principal::anonymous()));
//! inner.deny(Denial::new("limits", DenialKind::RateLimited, StatusCode::TOO_MANY_REQUESTS, "over budget"));
//! // The outer layer sees both when the exchange ends.
//! let record = outer.snapshot();
//! assert_eq!(record.principal.unwrap().subject(), "anonymous");
//! assert_eq!(record.denial.unwrap().kind, DenialKind::RateLimited);
//! ```

use crate::observe::Observer;
use crate::{McpRequest, Principal};
use http::{Extensions, HeaderMap, Method, StatusCode};
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime};

/// Why a layer refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DenialKind {
    /// No credentials, or credentials that do not verify (401).
    Unauthenticated,
    /// Verified, but not allowed to do this (403).
    Forbidden,
    /// Over a rate or token budget (429).
    RateLimited,
    /// The session id is unknown, forged, expired or ended (404).
    UnknownSession,
    /// The request could not be read or understood (400, 413, 415, 405).
    BadRequest,
    /// The gateway cannot take the request now (503).
    Unavailable,
}

impl DenialKind {
    /// A short, stable name for logs and metrics: the name of the
    /// [`Outcome`](crate::outcome::Outcome) of such a refusal (`denied_auth`, `rate_limited`,
    /// `bad_input`, …).
    pub fn as_str(self) -> &'static str {
        crate::outcome::Outcome::of_denial(self).as_str()
    }
}

/// A refusal: which layer, what kind, the status sent and a reason for operators.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Denial {
    /// The layer that refused (`"auth"`, `"limits"`, `"sessions"`, `"parse"`, …).
    pub by: &'static str,
    /// The kind of refusal.
    pub kind: DenialKind,
    /// The HTTP status answered.
    pub status: StatusCode,
    /// Why, in words (not sent to the client by this record).
    pub reason: Cow<'static, str>,
}

impl Denial {
    /// A refusal by layer `by`.
    pub fn new(
        by: &'static str,
        kind: DenialKind,
        status: StatusCode,
        reason: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            by,
            kind,
            status,
            reason: reason.into(),
        }
    }
}

/// What the layers decided about one request. Every field is optional: a layer that is not
/// in the stack leaves its fields empty.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Record {
    /// The parsed request, once a layer has read it.
    pub request: Option<McpRequest>,
    /// Who is calling (authentication).
    pub principal: Option<Principal>,
    /// The route (upstream name) the request was sent to.
    pub route: Option<Arc<str>>,
    /// The legacy session, by its handle (24 hex digits): it names the session in logs, spans
    /// and audit records without being usable as an id. SessionAffinity writes it; otherwise
    /// [`session_handle`](Self::session_handle) derives it from the id the request carried.
    pub session: Option<Arc<str>>,
    /// The upstream instance chosen for the request.
    pub instance: Option<Arc<str>>,
    /// Input tokens counted for the call.
    pub tokens_in: Option<u64>,
    /// Output tokens counted for the call (known when the response has ended).
    pub tokens_out: Option<u64>,
    /// The first refusal, if a layer refused.
    pub denial: Option<Denial>,
    /// Trace id (32 hex digits) of the gateway's span, when tracing.
    pub trace_id: Option<String>,
    /// Span id (16 hex digits) of the gateway's span, when tracing.
    pub span_id: Option<String>,
    /// The client's address, when known.
    pub client: Option<SocketAddr>,
    /// The request's HTTP method.
    pub http_method: Option<Method>,
    /// Headers a layer adds to the answer when the request is admitted (the limits layer's
    /// `RateLimit` fields), applied by the layer that attaches the observers.
    pub response_headers: HeaderMap,
    /// What a layer found that the audit record should carry beside the standard fields,
    /// each written as one top-level member (`"integrity": {…}`): tool integrity's
    /// definition changes and approval decisions.
    pub notes: Vec<(&'static str, serde_json::Value)>,
    /// Another exchange records this request: a virtual server forwarded it to a member, and
    /// the member's exchange is the call's record (or it is a member's part of a merged list,
    /// which the virtual route's exchange records). The audit log writes nothing for it.
    pub audited_elsewhere: bool,
}

impl Record {
    /// The legacy session this exchange belongs to, by its handle: the one a session layer
    /// recorded, else the [handle](crate::session::handle_of) of the `Mcp-Session-Id` the
    /// request carried — derived once, then kept here for every layer that names the session.
    /// A 2026-07-28 request belongs to no session.
    pub fn session_handle(&mut self) -> Option<Arc<str>> {
        if self.session.is_none() {
            let id = self
                .request
                .as_ref()
                .map(McpRequest::protocol)
                .filter(|p| p.era == crate::Era::Legacy)
                .and_then(|p| p.session_id.as_deref())?;
            self.session = Some(Arc::from(crate::session::handle_of(id)));
        }
        self.session.clone()
    }
}

/// What the server knows of a request before any layer runs, handed to the layer that
/// creates the [`Exchange`]: put it in the request extensions (the `mcp-gateway` binary does,
/// when a governing layer is configured; an embedder may).
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct ExchangeContext {
    /// The client's address.
    pub client: Option<SocketAddr>,
    /// The route (upstream name).
    pub route: Option<Arc<str>>,
    /// Raised when the server cuts streams at shutdown.
    pub cutoff: Option<crate::observe::Cutoff>,
}

impl ExchangeContext {
    /// A context with the client's address, route and shutdown flag.
    pub fn new(
        client: Option<SocketAddr>,
        route: Option<Arc<str>>,
        cutoff: Option<crate::observe::Cutoff>,
    ) -> Self {
        Self {
            client,
            route,
            cutoff,
        }
    }
}

struct Shared {
    started: Instant,
    started_at: SystemTime,
    record: Mutex<Record>,
    observers: Mutex<Vec<Box<dyn Observer>>>,
    /// Whether some layer has taken charge of attaching the observers ([`Exchange::claim`]).
    claimed: AtomicBool,
}

/// The shared per-request record. Cheap to clone: clones share one record.
#[derive(Clone)]
pub struct Exchange(Arc<Shared>);

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange")
            .field("started", &self.0.started)
            .field("record", &*lock(&self.0.record))
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Default for Exchange {
    fn default() -> Self {
        Self::new()
    }
}

impl Exchange {
    /// A new, empty record started now.
    pub fn new() -> Self {
        Self(Arc::new(Shared {
            started: Instant::now(),
            started_at: SystemTime::now(),
            record: Mutex::new(Record::default()),
            observers: Mutex::new(Vec::new()),
            claimed: AtomicBool::new(false),
        }))
    }

    /// The record an outer layer put in these extensions, if any.
    pub fn from_extensions(ext: &Extensions) -> Option<&Self> {
        ext.get::<Self>()
    }

    /// The record in `ext`, creating (and inserting) one when there is none. The flag is
    /// true when this call created it. A new record takes the client and route of an
    /// [`ExchangeContext`] — or, without one, the client of a plain [`SocketAddr`] extension
    /// (the peer address a hyper server loop inserts) — and the parsed [`McpRequest`] found
    /// in `ext`.
    pub fn get_or_insert(ext: &mut Extensions) -> (Self, bool) {
        if let Some(x) = ext.get::<Self>() {
            return (x.clone(), false);
        }
        let x = Self::new();
        if let Some(ctx) = ext.get::<ExchangeContext>() {
            x.update(|r| {
                r.client = ctx.client;
                r.route.clone_from(&ctx.route);
            });
        } else if let Some(peer) = ext.get::<SocketAddr>() {
            // What a hyper or hyper-util server loop commonly inserts for its connection.
            let peer = *peer;
            x.update(|r| r.client = Some(peer));
        }
        if let Some(view) = ext.get::<McpRequest>() {
            x.update(|r| r.request = Some(view.clone()));
        }
        ext.insert(x.clone());
        (x, true)
    }

    /// Takes charge of attaching the observers to the response: true for the first caller
    /// only. The outermost governing layer calls it when the request arrives, so one layer
    /// attaches them however many are stacked, and whoever created the record (a server that
    /// registered an observer of its own before the stack ran, say).
    pub fn claim(&self) -> bool {
        !self.0.claimed.swap(true, Ordering::AcqRel)
    }

    /// When the record was created: the start of the exchange for latency.
    pub fn started(&self) -> Instant {
        self.0.started
    }

    /// The same moment on the wall clock: what records and spans are timestamped with.
    pub fn started_at(&self) -> SystemTime {
        self.0.started_at
    }

    /// Reads or writes the record under its lock. Keep `f` short.
    pub fn update<R>(&self, f: impl FnOnce(&mut Record) -> R) -> R {
        f(&mut lock(&self.0.record))
    }

    /// A copy of the record as it is now.
    pub fn snapshot(&self) -> Record {
        lock(&self.0.record).clone()
    }

    /// Records a refusal. The first one is kept: it is the one the client got.
    pub fn deny(&self, denial: Denial) {
        self.update(|r| {
            r.denial.get_or_insert(denial);
        });
    }

    /// Registers an observer of this exchange's response.
    pub fn observe(&self, observer: impl Observer) {
        lock(&self.0.observers).push(Box::new(observer));
    }

    /// Takes the registered observers, in registration order (outermost layer first). The
    /// layer that claimed the record ([`claim`](Self::claim)) calls this once the inner
    /// service has answered. Their end hooks run innermost first.
    pub fn take_observers(&self) -> Vec<Box<dyn Observer>> {
        std::mem::take(&mut *lock(&self.0.observers))
    }
}
