//! Routing: `/mcp/NAME` to upstream `NAME`, plus `/healthz`, `/readyz` and the RFC 9728
//! metadata of protected routes.
//!
//! Each upstream gets its own stack, built in [`Router::new`]: the one place the layers are
//! stacked, as one chain read top to bottom (outermost first). `OriginGuard` comes before
//! the chain — a forbidden browser origin costs nothing else, no body is read for it — and
//! the chain runs as one future over the route's target ([`mcp_gateway_layers::govern`]):
//! one read of the request, one observation of the response, whichever layers are on. A layer
//! whose section is absent is not in the chain; with none configured (and no session routing
//! for the route) a route is exactly `OriginGuard → ParseMcp → Upstream`, the pass-through,
//! which pays nothing for the layers it does not use.

use crate::config::Settings;
use crate::reload::{RouteState, Watched};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use mcp_gateway_core::exchange::{Exchange, ExchangeContext};
use mcp_gateway_core::jsonrpc::{ErrorCode, JsonRpcError, RequestId};
use mcp_gateway_core::observe::{Cutoff, EndReason, Ending, Observer};
use mcp_gateway_core::outcome::{self, Outcome};
use mcp_gateway_core::{Era, McpMessage, McpRequest, ProtocolInfo};
use mcp_gateway_layers::audit::{AuditSink as _, AuditWriter};
use mcp_gateway_layers::auth::{MetadataService, OAuthGuardLayer};
use mcp_gateway_layers::federation::{CallerAuthorization, Member, VirtualBody, VirtualServer};
use mcp_gateway_layers::govern::{Chain, GovernedFuture};
use mcp_gateway_layers::head::HeadCheck;
use mcp_gateway_layers::integrity::held::HeldBody;
use mcp_gateway_layers::integrity::ToolIntegrityLayer;
use mcp_gateway_layers::limits::TokenBucket2DLayer;
use mcp_gateway_layers::rt::ReadTimeout;
use mcp_gateway_layers::sessions::{AffinityBody, SessionAffinity, SessionAffinityLayer};
use mcp_gateway_layers::stdio::{StdioBody, StdioMetrics, StdioUpstream};
use mcp_gateway_layers::telemetry::TraceInjectLayer;
pub use mcp_gateway_layers::upstream::ConnInfo;
use mcp_gateway_layers::upstream::{Upstream, UpstreamBody};
use mcp_gateway_layers::{
    OriginGuard, OriginGuardLayer, ParseMcp, ParseMcpLayer, Refused, ResponseBody,
};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tower::Layer;

/// Where a governed route's requests go: its one upstream, or its instances through
/// `SessionAffinity`, or a local server's child processes.
#[derive(Clone, Debug)]
pub enum Target {
    /// One instance, sessions passed through as they are.
    Direct(Upstream),
    /// Sessions sealed and routed to their instance; new work balanced.
    Affinity(SessionAffinity<Upstream>),
    /// A stdio upstream, its session ids passed through as it issues them.
    Stdio(StdioUpstream),
    /// A stdio upstream under `[sessions]`: its session ids sealed and bound to the principal.
    StdioAffinity(SessionAffinity<StdioUpstream>),
}

/// The body a [`Target`] answers with.
pub type TargetBody = Either<
    Either<UpstreamBody, AffinityBody<UpstreamBody>>,
    Either<StdioBody, AffinityBody<StdioBody>>,
>;

impl Target {
    /// Sends one admitted request to the upstream, by reference (no boxed future).
    async fn forward(&self, req: Request<Full<Bytes>>) -> Result<Response<TargetBody>, Infallible> {
        Ok(match self {
            Self::Direct(up) => up
                .forward(req, None)
                .await
                .map(|b| Either::Left(Either::Left(b))),
            Self::Affinity(aff) => aff
                .serve_retrying(req, |up, req| async move { up.forward(req, None).await })
                .await
                .map(|b| Either::Left(Either::Right(b))),
            Self::Stdio(up) => up
                .forward(req)
                .await
                .map(|b| Either::Right(Either::Left(b))),
            Self::StdioAffinity(aff) => aff
                .serve(req, |up, req| async move { up.forward(req).await })
                .await
                .map(|b| Either::Right(Either::Right(b))),
        })
    }
}

/// What serves a route: a server reached over HTTP, or a local one run as child processes.
#[derive(Clone)]
enum Server {
    Remote(Upstream),
    Local(StdioUpstream),
}

/// A route's stack below the origin check.
#[derive(Clone, Debug)]
pub enum Stack {
    /// No governing layer: `ParseMcp → Upstream`.
    Plain(ParseMcp<Upstream>),
    /// The governing chain over the route's target.
    Governed {
        /// The governors, outermost first.
        chain: Chain,
        /// The largest request body read.
        body_limit: usize,
        /// Where admitted requests go.
        target: Target,
    },
}

/// The body of a route's answers.
pub type StackBody = Either<Refused<UpstreamBody>, ResponseBody<Either<TargetBody, HeldBody>>>;

impl Stack {
    /// Serves one request: one inline future, with no boxed future, service clone or
    /// `Oneshot` on either shape.
    pub async fn serve<B>(&self, req: Request<B>) -> Response<StackBody>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<mcp_gateway_layers::BoxError>,
    {
        match self {
            Self::Plain(parse) => parse.serve(req).await.map(Either::Left),
            Self::Governed {
                chain,
                body_limit,
                target,
            } => {
                let inner = tower::service_fn(|mut req: Request<Full<Bytes>>| async move {
                    // A call ToolIntegrity holds while its client is asked: answered now with
                    // the stream that asks, forwarded once approved.
                    match mcp_gateway_layers::integrity::held::take_held(&mut req) {
                        Some(held) => {
                            let target = target.clone();
                            let resp = held
                                .serve(req, move |req| async move { target.forward(req).await });
                            Ok::<_, Infallible>(resp.map(Either::Right))
                        }
                        None => target.forward(req).await.map(|r| r.map(Either::Left)),
                    }
                });
                match GovernedFuture::new(chain.clone(), inner, req, *body_limit).await {
                    Ok(resp) => resp.map(Either::Right),
                    Err(never) => match never {},
                }
            }
        }
    }
}

/// An upstream's stack is a member of the virtual servers that name it: a virtual route's
/// request reaches it exactly as one of its own route would, through its governing chain.
impl Member for Stack {
    type Body = StackBody;
    async fn call(&self, req: Request<Full<Bytes>>) -> Response<StackBody> {
        match self {
            // No governing layer: the virtual route read and parsed the request, and the
            // view is in its extensions.
            Self::Plain(parse) => parse.serve_parsed(req).await.map(Either::Left),
            Self::Governed { .. } => self.serve(req).await,
        }
    }
}

/// What a route serves: one upstream, or a virtual server over several.
#[derive(Clone, Debug)]
pub enum RouteStack {
    /// An upstream's route.
    Upstream(Stack),
    /// A virtual server: its own chain (authentication for its resource) over the server,
    /// whose members are the upstreams' stacks.
    Virtual {
        /// Authenticates the caller for the virtual route (no permissions: each member's
        /// stack applies its upstream's).
        chain: Chain,
        /// The largest request body read.
        body_limit: usize,
        /// The virtual server.
        server: VirtualServer<Stack>,
    },
}

/// The body of a route's answers.
pub type RouteBody = Either<StackBody, ResponseBody<VirtualBody<StackBody>>>;

impl RouteStack {
    /// Serves one request.
    pub async fn serve(&self, req: Request<RequestBody>) -> Response<RouteBody> {
        match self {
            Self::Upstream(stack) => stack.serve(req).await.map(Either::Left),
            // Boxed: a virtual server's future is large (its fan-outs and their answers), and
            // an upstream route's future, which would be as large, must stay small.
            Self::Virtual {
                chain,
                body_limit,
                server,
            } => Box::pin(Self::serve_virtual(chain, *body_limit, server, req)).await,
        }
    }

    async fn serve_virtual(
        chain: &Chain,
        body_limit: usize,
        server: &VirtualServer<Stack>,
        mut req: Request<RequestBody>,
    ) -> Response<RouteBody> {
        // The route's guard removes the token; each member's guard checks it again (a cache
        // hit) for its upstream's permissions.
        if let Some(auth) = req.headers().get(header::AUTHORIZATION).cloned() {
            req.extensions_mut().insert(CallerAuthorization(auth));
        }
        if chain.is_empty() {
            // No layer on the route itself: read and classify the request, nothing more
            // (each member's stack governs what reaches it).
            return match mcp_gateway_layers::parse::read_request(req, body_limit).await {
                Ok(req) => server
                    .serve(req)
                    .await
                    .map(|b| Either::Right(ResponseBody::inner(b))),
                Err(refusal) => refusal.map(|b| Either::Right(ResponseBody::full(b))),
            };
        }
        let inner = tower::service_fn(|req: Request<Full<Bytes>>| async move {
            Ok::<_, Infallible>(server.serve(req).await)
        });
        match GovernedFuture::new(chain.clone(), inner, req, body_limit).await {
            Ok(resp) => resp.map(Either::Right),
            Err(never) => match never {},
        }
    }
}

/// The body of a request as routes read it: the client's, failing when it stalls for
/// `server.body_read_timeout` (the read then answers 408).
pub type RequestBody = ReadTimeout<Incoming>;

/// The body of every gateway response: a route's (its streams watched for a reload), or the
/// router's own.
pub type GatewayBody = Either<Watched<RouteBody>, Full<Bytes>>;

/// One route: its name, its stack, and its protected resource metadata when guarded.
#[derive(Clone)]
struct Route {
    name: Arc<str>,
    stack: OriginGuard<RouteStack>,
    metadata: Option<MetadataService>,
    /// What the route serves, as a reload compares it (its upstream and the permissions
    /// that apply to it): a difference makes its open streams hear `list_changed`.
    fingerprint: Arc<str>,
    /// What a reload did to the route, as the streams opened on it learn it.
    state: Arc<tokio::sync::watch::Sender<RouteState>>,
}

impl Route {
    /// An SSE answer watches the route for a reload: it hears `list_changed` (a legacy GET
    /// stream, when the route changed) and ends once a removed route's drain is over.
    fn watch(&self, resp: Response<RouteBody>, method: &Method) -> Response<Watched<RouteBody>> {
        let sse = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(mcp_gateway_core::headers::is_event_stream);
        let rx = sse.then(|| self.state.subscribe());
        let notify = *method == Method::GET;
        resp.map(|b| Watched::new(b, rx, notify))
    }
}

/// Whether two checked sections are the same (their `Debug` renderings, which show every
/// setting that matters to the state carried over).
fn same<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

/// What route `spec` serves, as a reload compares it: the upstream and the permissions that
/// apply to it.
fn fingerprint(
    settings: &Settings,
    spec: &mcp_gateway_layers::upstream::config::UpstreamSpec,
) -> String {
    let perms: Vec<_> = settings
        .auth
        .iter()
        .flat_map(|a| a.permissions.iter())
        .filter(|p| p.upstream.as_deref().is_none_or(|u| u == spec.name))
        .collect();
    format!("{spec:?}|{:?}|{perms:?}", settings.auth.is_some())
}

/// Routes requests to upstream stacks and answers health checks.
#[derive(Clone)]
pub struct Router {
    routes: Arc<HashMap<String, Route>>,
    ready: Arc<AtomicBool>,
    /// Raised when the server cuts the streams still open at the end of its grace period.
    cutoff: Cutoff,
    /// Whether any governing layer is configured: only then does a request carry an
    /// [`ExchangeContext`] (the client, the route, the cutoff) for the per-request record,
    /// and the access log line is written when the exchange ends (with its outcome).
    governed: bool,
    /// Whether access log lines are written (decided once: the log filter is fixed at start).
    access_log: bool,
    /// The checks of every request head (its size, its Host), before routing.
    head: HeadCheck,
    /// The longest wait for the next piece of a request body.
    body_read_timeout: std::time::Duration,
    /// The limits layer, when `[limits]` is configured: one for all routes, so a key's
    /// budget is the same whichever upstream it calls.
    limits: Option<TokenBucket2DLayer>,
    /// The audit writer, when `[audit]` is configured (flushed at shutdown).
    audit: Option<AuditWriter>,
    /// ToolIntegrity, when `[integrity]` or `[[approvals]]` is configured: one for all
    /// routes (the definitions seen and the calls held, which the admin listener shows).
    integrity: Option<ToolIntegrityLayer>,
    /// The sessions layer, when any route uses it.
    sessions: Option<SessionAffinityLayer>,
    /// TraceInject, when `[telemetry]` is configured: one for all routes (one metrics
    /// registry, one span exporter).
    telemetry: Option<TraceInjectLayer>,
    /// The stdio upstreams (their readiness, metrics, and the stop of their children).
    stdio: Vec<StdioUpstream>,
    /// The virtual servers, in `settings.virtual_servers` order (their metrics, and the
    /// sessions a reload carries over).
    virtuals: Vec<VirtualServer<Stack>>,
    /// The settings it was built from (a reload compares the next file's with them).
    settings: Arc<Settings>,
}

impl Router {
    /// Builds one stack per configured upstream.
    pub async fn new(
        settings: &Settings,
        ready: Arc<AtomicBool>,
        cutoff: Cutoff,
    ) -> Result<Self, crate::error::StartError> {
        Self::build(settings, ready, cutoff, None).await
    }

    /// Builds one stack per configured upstream, taking over from `previous` (the router a
    /// reload replaces) the state whose meaning did not change: the children of unchanged
    /// stdio upstreams, rate-limit budgets and the cost ledger, session records (and a
    /// random per-process session key), the audit writer and its chain, the span exporter.
    /// Nothing of `previous` changes unless every fallible step succeeded (the audit log is
    /// moved last).
    pub async fn build(
        settings: &Settings,
        ready: Arc<AtomicBool>,
        cutoff: Cutoff,
        previous: Option<&Router>,
    ) -> Result<Self, crate::error::StartError> {
        let auth = match &settings.auth {
            Some(a) => Some(mcp_gateway_layers::auth::config::OAuthGuards::build(a).await?),
            None => None,
        };
        // The access log needs the parsed view on the response; without it nobody does.
        let access_log = tracing::enabled!(target: "mcp_gateway::access", tracing::Level::INFO);
        let mut routes = HashMap::new();
        let limits = settings.limits.as_ref().map(|spec| {
            let layer = mcp_gateway_layers::limits::config::layer(spec);
            let old = previous.and_then(|p| p.limits.as_ref().zip(p.settings.limits.as_ref()));
            match old {
                // The same store: the budgets carry over (the request buckets only when
                // their rate is the same: the in-memory ones are sized by it).
                Some((old, old_spec)) if same(&old_spec.store, &spec.store) => layer.carry_over(
                    old,
                    old_spec.limits.requests_limit() == spec.limits.requests_limit(),
                ),
                _ => layer,
            }
        });
        // The audit writer: kept across reloads (its chain goes on); a changed sink is
        // opened now and switched to last, once nothing else can fail.
        let mut audit_switch = None;
        let audit = match (&settings.audit, previous.and_then(|p| p.audit.clone())) {
            (Some(spec), Some(old)) => {
                let old_spec = previous.and_then(|p| p.settings.audit.as_ref());
                if old_spec.is_none_or(|o| !same(&o.sink, &spec.sink)) {
                    let mut sink = mcp_gateway_layers::audit::config::sink(spec)
                        .map_err(crate::error::StartError::Audit)?;
                    // Checked before anything is built: the new file must start the chain's
                    // continuation, not hold another chain.
                    if sink
                        .last_line()
                        .map_err(crate::error::StartError::Audit)?
                        .is_some()
                    {
                        return Err(crate::error::StartError::Audit(std::io::Error::new(
                            std::io::ErrorKind::AlreadyExists,
                            "the new audit.path already holds records of another chain; name a new file (the log continues there, linked to the old one)",
                        )));
                    }
                    audit_switch = Some(sink);
                }
                Some(old)
            }
            (Some(spec), None) => Some(
                mcp_gateway_layers::audit::config::writer(spec)
                    .map_err(crate::error::StartError::Audit)?,
            ),
            (None, _) => None,
        };
        let audit_layer = audit
            .as_ref()
            .map(|w| mcp_gateway_layers::audit::config::layer(w, settings.body_limit));
        let several = settings.upstreams.iter().any(|u| u.urls.len() > 1);
        let mut sessions =
            mcp_gateway_layers::sessions::config::layer(settings.sessions.as_ref(), several);
        if let (Some(new), Some(old)) = (&sessions, previous.and_then(|p| p.sessions.as_ref())) {
            // Session records carry over in the same store; ids sealed with a random
            // per-process key keep opening when the new file names no key either.
            let old_spec = previous.and_then(|p| p.settings.sessions.as_ref());
            let store = match (old_spec, &settings.sessions) {
                (Some(o), Some(n)) => same(&o.store, &n.store),
                (o, n) => o.is_none() && n.is_none(),
            };
            let random = |s: Option<&mcp_gateway_layers::sessions::config::SessionsSpec>| {
                s.is_none_or(|s| s.key.is_none())
            };
            let key = random(old_spec) && random(settings.sessions.as_ref());
            sessions = Some(new.clone().carry_over(old, store, key));
        }
        let telemetry = match (&settings.telemetry, previous) {
            // Unchanged: the same layer, so its metrics and span export go on.
            (Some(_), Some(p))
                if p.telemetry.is_some() && Self::keeps_telemetry(&p.settings, settings) =>
            {
                p.telemetry.clone()
            }
            (Some(spec), _) => Some(mcp_gateway_layers::telemetry::config::layer(
                spec,
                settings.body_limit,
            )?),
            (None, _) => None,
        };
        // Pins are read again from their file; what was seen and the calls held carry over.
        // With `[sessions]`, approval states are sealed with the session key (any replica
        // opens them) and spent in the session store (Redis: on every replica).
        let integrity = match &settings.integrity {
            Some(spec) => {
                let mut layer = mcp_gateway_layers::integrity::config::layer(spec)?
                    .body_limit(settings.body_limit);
                if let Some(s) = sessions.as_ref().filter(|_| settings.sessions.is_some()) {
                    layer = layer.sealed_with(s.keyring(), s.session_store());
                }
                Some(match previous.and_then(|p| p.integrity.as_ref()) {
                    Some(old) => layer.carry_over(old),
                    None => layer,
                })
            }
            None => None,
        };
        let mut stdio = Vec::new();
        // One upstream's governed stack, for its own route or (with the virtual route's
        // resource as the audience of its tokens) as a member of a virtual server.
        let stack_for =
            |spec: &mcp_gateway_layers::upstream::config::UpstreamSpec,
             server: Server,
             resource: String|
             -> Result<(Stack, Option<MetadataService>), crate::error::StartError> {
                let guard = match &auth {
                    Some(a) => Some(a.layer(
                        &spec.name,
                        resource,
                        spec.credentials.as_ref(),
                        settings.body_limit,
                    )?),
                    None => None,
                };
                let metadata = guard.as_ref().map(OAuthGuardLayer::metadata_service);
                let routed = sessions.as_ref().filter(|_| {
                    settings.sessions.is_some()
                        || matches!(&server, Server::Remote(u) if u.instance_count() > 1)
                });
                // The governing layers, outermost first. A layer that is off is not in the chain.
                let chain = Chain::new()
                    // AuditLog: outermost, so every refusal below it is recorded — bad input,
                    // authentication, permission, rate limit, unknown session — with the
                    // principal when one was established.
                    .with(audit_layer.clone())
                    // TraceInject: inside audit (the audit record carries its trace and span ids)
                    // and outside every refusing layer, so refusals are traced too; it writes trace
                    // context into the forwarded body.
                    .with(telemetry.clone())
                    // (the request is read and classified once here, bounded by `body_limit`:
                    // every layer below reuses the view)
                    // OAuthGuard: first of the deciders — an unauthenticated call costs nothing
                    // further, and its principal is what limits and sessions are keyed by.
                    .with(guard)
                    // TokenBucket2D: after authentication (budgets are per agent), before
                    // sessions, so a refused call never touches session state or picks an instance.
                    .with(limits.clone())
                    // ToolIntegrity: after limits (a call over budget is never held for a
                    // person), innermost of the deciders: it checks lists as they stream back and
                    // holds the calls an approval rule names, with the principal known.
                    .with(integrity.clone());
                // SessionAffinity, innermost: it sits over the upstream's instances, routes a
                // session to its owner and balances new work. Without `[sessions]` a
                // single-instance upstream does without it (session ids pass through).
                let stack = match (server, routed) {
                    // A stdio upstream; under `[sessions]` the ids it issues are sealed and bound
                    // to the principal like any instance's.
                    (Server::Local(local), routed) => Stack::Governed {
                        chain,
                        body_limit: settings.body_limit,
                        target: match routed {
                            Some(layer) => Target::StdioAffinity(
                                layer.clone().scope(&spec.name).service([("stdio", local)]),
                            ),
                            None => Target::Stdio(local),
                        },
                    },
                    (Server::Remote(upstream), None) if chain.is_empty() => Stack::Plain(
                        ParseMcpLayer::new()
                            .body_limit(settings.body_limit)
                            .view_on_response(access_log)
                            .layer(upstream),
                    ),
                    (Server::Remote(upstream), None) => Stack::Governed {
                        chain,
                        body_limit: settings.body_limit,
                        target: Target::Direct(upstream),
                    },
                    (Server::Remote(upstream), Some(layer)) => Stack::Governed {
                        chain,
                        body_limit: settings.body_limit,
                        target: Target::Affinity(
                            layer
                                .clone()
                                .scope(&spec.name)
                                .service(upstream.instances()),
                        ),
                    },
                };
                Ok((stack, metadata))
            };
        let mut servers = HashMap::new();
        for spec in &settings.upstreams {
            // A local server (`command`): its children start now (`shared`) or with their
            // first session or agent.
            let server = match spec.stdio.clone() {
                Some(local) => {
                    if local.mode == mcp_gateway_layers::stdio::Mode::PerAgent && auth.is_none() {
                        tracing::warn!(upstream = %spec.name, "mode = \"per_agent\" without [auth]: every caller is the agent \"anonymous\" and shares one child; add [auth] to give each agent its own");
                    }
                    // An unchanged local server keeps its children (and their sessions).
                    let kept = previous.and_then(|p| {
                        p.stdio
                            .iter()
                            .find(|u| u.name() == spec.name && *u.spec() == local)
                            .cloned()
                    });
                    let local = kept.unwrap_or_else(|| StdioUpstream::new(local));
                    stdio.push(local.clone());
                    Server::Local(local)
                }
                None => Server::Remote(mcp_gateway_layers::upstream::config::build(spec)?),
            };
            servers.insert(spec.name.as_str(), (spec, server.clone()));
            let (stack, metadata) = stack_for(
                spec,
                server,
                format!("{}/mcp/{}", settings.public_base(), spec.name),
            )?;
            let stack =
                OriginGuardLayer::new(settings.origins.clone()).layer(RouteStack::Upstream(stack));
            routes.insert(
                spec.name.clone(),
                Route {
                    name: Arc::from(spec.name.as_str()),
                    stack,
                    metadata,
                    // Its pins too: an approval applied by a reload changes what lists show.
                    fingerprint: format!(
                        "{}|{:?}",
                        fingerprint(settings, spec),
                        integrity.as_ref().map(|i| (
                            i.spec().pins.as_ref().map(|p| p.mode_of(&spec.name)),
                            i.pinned(&spec.name)
                        ))
                    )
                    .into(),
                    state: Arc::new(tokio::sync::watch::Sender::new(RouteState::Live)),
                },
            );
        }
        // Virtual servers: each member is its upstream's stack, built again with the
        // virtual route as the audience of tokens (the same servers, pools and children).
        let mut virtuals = Vec::new();
        for v in &settings.virtual_servers {
            if routes.contains_key(&v.name) {
                return Err(crate::error::StartError::Virtual(format!(
                    "virtual.{0}: an upstream is also named {0:?} (both would be /mcp/{0})",
                    v.name
                )));
            }
            let resource = format!("{}/mcp/{}", settings.public_base(), v.name);
            let mut members = Vec::new();
            let mut prints = vec![format!("{v:?}")];
            for alias in &v.upstreams {
                let Some((spec, server)) = servers.get(alias.as_str()) else {
                    return Err(crate::error::StartError::Virtual(format!(
                        "virtual.{}: no upstream named {alias:?}",
                        v.name
                    )));
                };
                let (stack, _) = stack_for(spec, server.clone(), resource.clone())?;
                prints.push(routes[alias.as_str()].fingerprint.to_string());
                members.push((alias.clone(), stack));
            }
            // The virtual route's own guard authenticates the caller for its resource; the
            // members' guards apply each upstream's permissions.
            let guard = match &auth {
                Some(a) => Some(
                    a.layer(&v.name, resource.clone(), None, settings.body_limit)?
                        .permissions(Arc::default()),
                ),
                None => None,
            };
            let metadata = guard.as_ref().map(OAuthGuardLayer::metadata_service);
            let mut layer = v.layer().body_limit(settings.body_limit).filtered(
                settings
                    .auth
                    .as_ref()
                    .is_some_and(|a| !a.permissions.is_empty()),
            );
            // The same upstreams in the same order: sessions, names seen and counters carry
            // over (and a random cursor key, so that cursors keep opening).
            let old = previous.and_then(|p| {
                p.virtuals
                    .iter()
                    .zip(&p.settings.virtual_servers)
                    .find(|(_, o)| o.name == v.name && o.upstreams == v.upstreams)
                    .map(|(s, _)| s)
            });
            if let Some(old) = old {
                layer = layer.carry_over(old);
            }
            // A configured sessions key seals cursors on every replica alike (after a reload
            // too: it wins over the carried-over key).
            if let Some(key) = settings.sessions.as_ref().and_then(|s| s.key.as_ref()) {
                layer = layer.cursor_key(key);
            }
            // Under `[sessions]`, legacy sessions are shared as SessionAffinity's are: ids
            // sealed with its key, ends and upstream sessions in its store.
            if let Some(sl) = sessions.as_ref().filter(|_| settings.sessions.is_some()) {
                layer = layer.shared_sessions(sl);
            }
            let server = layer.service(members);
            virtuals.push(server.clone());
            // The virtual route's chain: AuditLog (what it answers itself or refuses, and its
            // merged lists: a call's record is the member's) and its guard.
            let stack =
                OriginGuardLayer::new(settings.origins.clone()).layer(RouteStack::Virtual {
                    chain: Chain::new().with(audit_layer.clone()).with(guard),
                    body_limit: settings.body_limit,
                    server,
                });
            routes.insert(
                v.name.clone(),
                Route {
                    name: Arc::from(v.name.as_str()),
                    stack,
                    metadata,
                    fingerprint: prints.join("|").into(),
                    state: Arc::new(tokio::sync::watch::Sender::new(RouteState::Live)),
                },
            );
        }
        if let (Some(writer), Some(sink)) = (&audit, audit_switch) {
            writer
                .switch_sink(sink)
                .await
                .map_err(crate::error::StartError::Audit)?;
        }
        Ok(Self {
            routes: Arc::new(routes),
            ready,
            cutoff,
            governed: auth.is_some()
                || limits.is_some()
                || audit.is_some()
                || sessions.is_some()
                || telemetry.is_some()
                || integrity.is_some()
                || !stdio.is_empty(),
            access_log,
            head: HeadCheck::new().max_header_bytes(settings.max_header_bytes),
            body_read_timeout: settings.body_read_timeout,
            limits,
            audit,
            integrity,
            sessions,
            telemetry,
            stdio,
            virtuals,
            settings: Arc::new(settings.clone()),
        })
    }

    /// Whether a router built from `next` over one built from `old` keeps its telemetry layer
    /// (its exporter and counters): `[telemetry]` and `body_limit` are the same.
    pub fn keeps_telemetry(old: &Settings, next: &Settings) -> bool {
        next.telemetry.is_some()
            && old
                .telemetry
                .as_ref()
                .zip(next.telemetry.as_ref())
                .is_some_and(|(o, n)| same(o, n))
            && old.body_limit == next.body_limit
    }

    /// The settings it was built from.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// What a reload from this router to `next` does to each route: the ones `next` no longer
    /// has (`Retired`), and the ones whose upstream or permissions differ (`Changed`).
    pub fn changes(&self, next: &Router) -> Vec<(String, RouteState)> {
        let mut out: Vec<(String, RouteState)> = self
            .routes
            .iter()
            .filter_map(|(name, r)| match next.routes.get(name) {
                None => Some((name.clone(), RouteState::Retired)),
                Some(n) if n.fingerprint != r.fingerprint => {
                    Some((name.clone(), RouteState::Changed))
                }
                Some(_) => None,
            })
            .collect();
        out.sort();
        out
    }

    /// The routes `next` has and this router had not.
    pub fn added(&self, next: &Router) -> Vec<String> {
        let mut out: Vec<String> = next
            .routes
            .keys()
            .filter(|n| !self.routes.contains_key(*n))
            .cloned()
            .collect();
        out.sort();
        out
    }

    /// Tells the streams open on route `name` what a reload did to it.
    pub fn signal(&self, name: &str, state: RouteState) {
        if let Some(r) = self.routes.get(name) {
            r.state.send_replace(state);
        }
    }

    /// The stdio upstreams' metrics (empty when there are none).
    pub fn stdio_metrics(&self) -> Option<StdioMetrics> {
        let m = StdioMetrics::of(&self.stdio);
        (!m.is_empty()).then_some(m)
    }

    /// The virtual servers.
    pub fn virtuals(&self) -> &[VirtualServer<Stack>] {
        &self.virtuals
    }

    /// The stdio upstreams, whose children the server stops last.
    pub fn stdio(&self) -> &[StdioUpstream] {
        &self.stdio
    }

    /// The telemetry layer (its metrics, and the span exporter's flush), when `[telemetry]`
    /// is configured.
    pub fn telemetry(&self) -> Option<&TraceInjectLayer> {
        self.telemetry.as_ref()
    }

    /// The audit writer (its counters, and `flush`), when `[audit]` is configured.
    pub fn audit(&self) -> Option<&AuditWriter> {
        self.audit.as_ref()
    }

    /// What `/readyz` answers (on the public and the admin listener): 503 `draining` once
    /// the gateway drains (`ready` false), 503 `audit log unavailable` while the audit sink
    /// cannot write (calls are then refused with 503 after `[audit] write_timeout`, so a load
    /// balancer should send them elsewhere), 503 naming a stdio upstream in a crash loop,
    /// else 200 `ready`.
    pub fn readiness(&self, ready: bool) -> (StatusCode, std::borrow::Cow<'static, str>) {
        if !ready {
            (StatusCode::SERVICE_UNAVAILABLE, "draining\n".into())
        } else if self.audit.as_ref().is_some_and(|a| !a.healthy()) {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "audit log unavailable\n".into(),
            )
        } else if let Some(why) = self.stdio.iter().find_map(StdioUpstream::unready) {
            (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n").into())
        } else {
            (StatusCode::OK, "ready\n".into())
        }
    }

    /// The sessions layer (its store error count), when any route uses it.
    pub fn sessions(&self) -> Option<&SessionAffinityLayer> {
        self.sessions.as_ref()
    }

    /// ToolIntegrity (the definitions seen, the calls held, its counters), when configured.
    pub fn integrity(&self) -> Option<&ToolIntegrityLayer> {
        self.integrity.as_ref()
    }

    /// The limits layer (its cost ledger and store error count), when configured.
    pub fn limits(&self) -> Option<&TokenBucket2DLayer> {
        self.limits.as_ref()
    }

    /// Serves one request.
    pub async fn serve(
        &self,
        req: Request<Incoming>,
        conn: &ConnInfo,
    ) -> Result<Response<GatewayBody>, Infallible> {
        // Wherever a route reads the body (ParseMcp, or the governing chain), a client that
        // stops sending it is answered 408 instead of holding the exchange open.
        let timeout = self.body_read_timeout;
        let mut req = req.map(|body| ReadTimeout::new(body, timeout));
        // The clock is read only for the access log's latency.
        let started = self.access_log.then(Instant::now);
        let method = req.method().clone();
        // A `Uri` clone shares its bytes: no allocation for the route match and the log line.
        let uri = req.uri().clone();
        let path = uri.path();
        let route = path
            .strip_prefix("/mcp/")
            .map(|r| r.strip_suffix('/').unwrap_or(r));
        // HTTP's own checks of the head (size, Host), whatever the path: a request failing them is
        // refused before it is routed, so nothing is forwarded for it.
        let refusal = self.head.refusal(&req);
        let (upstream, resp) = match (refusal, route, path) {
            (Some(refusal), _, _) => (None, wrap(refusal)),
            (None, Some(name), _) if self.routes.contains_key(name) => {
                let route = &self.routes[name];
                if let Some(refusal) = route.stack.refusal(req.headers()) {
                    (Some(name), wrap(refusal))
                } else {
                    conn.forward(&mut req);
                    if self.governed {
                        let ext = req.extensions_mut();
                        if let Some(started) = started {
                            // The line is written when the exchange ends, with its outcome.
                            let x = Exchange::new();
                            x.update(|r| {
                                r.client = Some(conn.peer);
                                r.route = Some(route.name.clone());
                            });
                            x.observe(AccessLine {
                                peer: conn.peer,
                                method: method.clone(),
                                path: path.to_owned(),
                                started,
                                exchange: Some(x.clone()),
                            });
                            ext.insert(x);
                        }
                        ext.insert(ExchangeContext::new(
                            Some(conn.peer),
                            Some(route.name.clone()),
                            Some(self.cutoff.clone()),
                        ));
                        let resp = route.stack.get_ref().serve(req).await;
                        return Ok(route.watch(resp, &method).map(Either::Left));
                    }
                    let resp = route.stack.get_ref().serve(req).await;
                    (Some(name), route.watch(resp, &method).map(Either::Left))
                }
            }
            (None, _, p)
                if p.starts_with(PRM_PREFIX)
                    && (method == Method::GET || method == Method::HEAD) =>
            {
                // RFC 9728 metadata of a protected route, at its path-suffixed well-known URI.
                let name = p[PRM_PREFIX.len()..].trim_end_matches('/');
                match self.routes.get(name).and_then(|r| r.metadata.clone()) {
                    Some(doc) => (Some(name), wrap(doc.response())),
                    None => {
                        let err = JsonRpcError::new(
                            ErrorCode::NO_ROUTE,
                            format!("no protected resource is routed at /mcp/{name}"),
                        );
                        (None, wrap(err.into_response(StatusCode::NOT_FOUND, None)))
                    }
                }
            }
            (None, _, "/healthz") if method == Method::GET || method == Method::HEAD => {
                (None, plain(StatusCode::OK, "ok\n"))
            }
            (None, _, "/readyz") if method == Method::GET || method == Method::HEAD => {
                let (status, text) = self.readiness(self.ready.load(Ordering::Relaxed));
                (None, plain(status, text))
            }
            _ => {
                let err = JsonRpcError::new(
                    ErrorCode::NO_ROUTE,
                    format!("no MCP server is routed at {path}; routes are /mcp/NAME"),
                );
                (None, wrap(err.into_response(StatusCode::NOT_FOUND, None)))
            }
        };
        if let Some(started) = started {
            let mut record = mcp_gateway_core::exchange::Record::default();
            record.http_method = Some(method.clone());
            let end = Ending::new(EndReason::Completed, resp.status());
            let line = AccessLine {
                peer: conn.peer,
                method,
                path: path.to_owned(),
                started,
                exchange: None,
            };
            let view = McpRequest::from_extensions(resp.extensions());
            line.write(upstream, view, None, &end, outcome::outcome(&record, &end));
        }
        Ok(resp)
    }
}

/// One access log line: written when the exchange ends, with its outcome by the one
/// classification the audit log and the metrics use — or, for the pass-through (no record),
/// when the response head is ready, with the outcome its status gives.
struct AccessLine {
    peer: SocketAddr,
    method: Method,
    path: String,
    started: Instant,
    /// The record of a governed exchange, read at its end.
    exchange: Option<Exchange>,
}

impl AccessLine {
    fn write(
        &self,
        upstream: Option<&str>,
        view: Option<&McpRequest>,
        agent: Option<&str>,
        end: &Ending,
        outcome: Outcome,
    ) {
        let msg = view.and_then(McpRequest::single);
        tracing::info!(
            target: "mcp_gateway::access",
            client = %self.peer,
            method = %self.method,
            path = %self.path,
            upstream = upstream.unwrap_or("-"),
            mcp_method = msg.and_then(McpMessage::method).unwrap_or("-"),
            target_name = msg.and_then(McpMessage::target).unwrap_or("-"),
            id = msg.and_then(McpMessage::id).map_or("-", RequestId::as_raw),
            era = view.map_or("-", |v| era_name(v.protocol())),
            agent = agent.unwrap_or("-"),
            status = end.status.as_u16(),
            outcome = outcome.as_str(),
            latency_us = self.started.elapsed().as_micros() as u64,
            "request"
        );
    }
}

impl Observer for AccessLine {
    fn on_end(&mut self, end: &Ending) {
        let Some(x) = &self.exchange else { return };
        let (view, agent, route, outcome) = x.update(|r| {
            let agent = r.principal.as_ref().map(|p| p.agent_key().to_owned());
            (
                r.request.clone(),
                agent,
                r.route.clone(),
                outcome::outcome(r, end),
            )
        });
        self.write(
            route.as_deref(),
            view.as_ref(),
            agent.as_deref(),
            end,
            outcome,
        );
    }
}

/// The protocol era as the access log names it: the declared version, or `legacy`.
fn era_name(p: &ProtocolInfo) -> &str {
    match (p.era, p.version.as_deref()) {
        (_, Some(v)) => v,
        (Era::Legacy, None) => "legacy",
        (Era::Modern, None) => "modern",
    }
}

/// Where the protected resource metadata of route NAME is served: this prefix, then `NAME`.
const PRM_PREFIX: &str = "/.well-known/oauth-protected-resource/mcp/";

fn wrap(resp: Response<Full<Bytes>>) -> Response<GatewayBody> {
    resp.map(Either::Right)
}

fn plain(
    status: StatusCode,
    text: impl Into<std::borrow::Cow<'static, str>>,
) -> Response<GatewayBody> {
    let body = match text.into() {
        std::borrow::Cow::Borrowed(t) => Bytes::from_static(t.as_bytes()),
        std::borrow::Cow::Owned(t) => Bytes::from(t),
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    wrap(resp)
}
