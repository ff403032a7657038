use super::{Decision, Govern, Refusal, Waiting};
use crate::body::{reject, ResponseBody};
use crate::parse::{ReadRequest, DEFAULT_BODY_LIMIT};
use crate::BoxError;
use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{Full, Limited};
use mcp_gateway_core::exchange::{Exchange, ExchangeContext};
use mcp_gateway_core::jsonrpc::{ErrorCode, JsonRpcError, RequestId};
use mcp_gateway_core::observe::{Cutoff, EndReason, Observation};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tower_layer::Layer;
use tower_service::Service;

type Req = Request<Full<Bytes>>;

/// A service governed by `G`: the skeleton of the [module docs](super) over the inner service
/// `S`. Cheap to clone when `S` is.
pub struct Governed<G, S> {
    governor: G,
    inner: S,
    body_limit: usize,
}

impl<G: Clone, S: Clone> Clone for Governed<G, S> {
    fn clone(&self) -> Self {
        Self {
            governor: self.governor.clone(),
            inner: self.inner.clone(),
            body_limit: self.body_limit,
        }
    }
}

impl<G, S: std::fmt::Debug> std::fmt::Debug for Governed<G, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Governed")
            .field("inner", &self.inner)
            .field("body_limit", &self.body_limit)
            .finish_non_exhaustive()
    }
}

impl<G, S> Governed<G, S> {
    /// `inner` governed by `governor`, reading request bodies up to the default limit
    /// ([`DEFAULT_BODY_LIMIT`]). A governor is a handle: cloned for each request, so keep
    /// its state behind an `Arc`.
    pub fn new(governor: G, inner: S) -> Self {
        Self {
            governor,
            inner,
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }

    /// The largest request body read (when no layer above has read it): larger ones get 413.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// The governor.
    pub fn governor(&self) -> &G {
        &self.governor
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

/// Applies [`Governed`] with a shared governor: the layer of a [`Chain`](super::Chain), or of a
/// governor of your own.
pub struct GovernedLayer<G> {
    governor: G,
    body_limit: usize,
}

impl<G: Clone> Clone for GovernedLayer<G> {
    fn clone(&self) -> Self {
        Self {
            governor: self.governor.clone(),
            body_limit: self.body_limit,
        }
    }
}

impl<G> std::fmt::Debug for GovernedLayer<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GovernedLayer")
            .field("body_limit", &self.body_limit)
            .finish_non_exhaustive()
    }
}

impl<G> GovernedLayer<G> {
    /// A layer governing with `governor`, default body limit.
    pub fn new(governor: G) -> Self {
        Self {
            governor,
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }

    /// The largest request body read: larger ones get 413.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// The largest request body read.
    pub fn limit(&self) -> usize {
        self.body_limit
    }

    /// The governor.
    pub fn governor(&self) -> &G {
        &self.governor
    }
}

impl<G: Clone, S> Layer<S> for GovernedLayer<G> {
    type Service = Governed<G, S>;
    fn layer(&self, inner: S) -> Self::Service {
        Governed {
            governor: self.governor.clone(),
            inner,
            body_limit: self.body_limit,
        }
    }
}

impl<G, S, B, RB> Service<Request<B>> for Governed<G, S>
where
    G: Govern + Clone,
    S: Service<Req, Response = Response<RB>> + Clone,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    RB: Body<Data = Bytes>,
    RB::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<RB>>;
    type Error = S::Error;
    type Future = GovernedFuture<G, S, B, RB>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The future drives its own clone of the inner service to readiness once the request
        // has been admitted: a refused request never waits for the inner service.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        GovernedFuture::new(
            self.governor.clone(),
            self.inner.clone(),
            req,
            self.body_limit,
        )
    }
}

/// Ends the exchange of a future dropped before its answer started: the client went away.
struct Pending(Option<(Exchange, Option<Cutoff>)>);

impl Drop for Pending {
    fn drop(&mut self) {
        let Some((x, cutoff)) = self.0.take() else {
            return;
        };
        let observers = x.take_observers();
        if observers.is_empty() {
            return;
        }
        let shutdown = cutoff.as_ref().is_some_and(Cutoff::is_triggered);
        let status = StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST);
        let mut obs = Observation::new(observers, status, &HeaderMap::new());
        obs.end(
            if shutdown {
                EndReason::Shutdown
            } else {
                EndReason::ClientGone
            },
            None,
        );
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B, F, RB> {
        Start { req: Option<Request<B>>, inner: Option<S> },
        Entering { wait: Waiting<()>, req: Option<Request<B>>, inner: Option<S> },
        Reading { #[pin] read: ReadRequest<B>, inner: Option<S>, refusal: Option<Refusal> },
        Admitting { wait: Waiting<Req>, inner: Option<S> },
        Ready { req: Option<Req>, inner: Option<S> },
        Calling { #[pin] fut: F },
        Collecting {
            #[pin] body: Limited<ResponseBody<RB>>,
            buf: BytesMut,
            parts: Option<http::response::Parts>,
            obs: Option<Observation>,
        },
        Done,
    }
}

pin_project! {
    /// The future of a [`Governed`] service: the whole skeleton as one named state machine.
    pub struct GovernedFuture<G, S: Service<Req>, B, RB> {
        #[pin]
        state: State<S, B, S::Future, RB>,
        governor: G,
        exchange: Option<Exchange>,
        owner: bool,
        cutoff: Option<Cutoff>,
        body_limit: usize,
        pending: Pending,
    }
}

impl<G, S: Service<Req>, B, RB> std::fmt::Debug for GovernedFuture<G, S, B, RB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GovernedFuture")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

impl<G, S: Service<Req>, B, RB> GovernedFuture<G, S, B, RB> {
    /// Governs `req` with `governor` and, once admitted, calls `inner` (driven to readiness
    /// first). What [`Governed`]'s `call` returns; a server that holds its inner service by
    /// reference can build it directly, over a `tower::service_fn` borrowing it.
    pub fn new(governor: G, inner: S, req: Request<B>, body_limit: usize) -> Self {
        Self {
            state: State::Start {
                req: Some(req),
                inner: Some(inner),
            },
            governor,
            exchange: None,
            owner: false,
            cutoff: None,
            body_limit,
            pending: Pending(None),
        }
    }
}

/// The reply id of the request in the record, for a refusal.
fn reply_id(x: &Exchange) -> Option<RequestId> {
    x.update(|r| r.request.as_ref().and_then(|v| v.reply_id().cloned()))
}

impl<G, S, B, RB> Future for GovernedFuture<G, S, B, RB>
where
    G: Govern,
    S: Service<Req, Response = Response<RB>>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    RB: Body<Data = Bytes>,
    RB::Error: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<RB>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let answer: Response<ResponseBody<RB>> = match this.state.as_mut().project() {
                StateProj::Start { req, inner } => {
                    let Some(mut req) = req.take() else {
                        return Poll::Pending;
                    };
                    let inner = inner.take();
                    let (x, created) = Exchange::get_or_insert(req.extensions_mut());
                    if created {
                        from_server(req.extensions(), &x);
                    }
                    *this.owner = x.claim();
                    if *this.owner {
                        // The server's flag, or one a `ShutdownLayer` put there.
                        *this.cutoff = req
                            .extensions()
                            .get::<ExchangeContext>()
                            .and_then(|c| c.cutoff.clone())
                            .or_else(|| req.extensions().get::<Cutoff>().cloned());
                        *this.pending = Pending(Some((x.clone(), this.cutoff.clone())));
                        let method = req.method().clone();
                        x.update(|r| r.http_method = Some(method));
                    }
                    let (parts, body) = req.into_parts();
                    let decision = this.governor.enter(&parts, &x);
                    let req = Request::from_parts(parts, body);
                    *this.exchange = Some(x);
                    let limit = *this.body_limit;
                    match decision {
                        Decision::Pass(()) => this.state.set(State::Reading {
                            read: ReadRequest::new(req, limit),
                            inner,
                            refusal: None,
                        }),
                        Decision::Refuse(r) => this.state.set(State::Reading {
                            read: ReadRequest::new(req, limit),
                            inner: None,
                            refusal: Some(r),
                        }),
                        Decision::Wait(wait) => this.state.set(State::Entering {
                            wait,
                            req: Some(req),
                            inner,
                        }),
                    }
                    continue;
                }
                StateProj::Entering { wait, req, inner } => {
                    let entered = ready!(wait.as_mut().poll(cx));
                    let Some(req) = req.take() else {
                        return Poll::Pending;
                    };
                    let inner = inner.take();
                    let read = ReadRequest::new(req, *this.body_limit);
                    match entered {
                        Ok(()) => this.state.set(State::Reading {
                            read,
                            inner,
                            refusal: None,
                        }),
                        Err(r) => this.state.set(State::Reading {
                            read,
                            inner: None,
                            refusal: Some(r),
                        }),
                    }
                    continue;
                }
                StateProj::Reading {
                    read,
                    inner,
                    refusal,
                } => {
                    let result = ready!(read.poll(cx));
                    let Some(x) = this.exchange.as_ref() else {
                        return Poll::Pending;
                    };
                    if let Some(r) = refusal.take() {
                        // Refused on entry: the request was read only for its id.
                        let id = result.ok().and_then(|(_, v)| v.reply_id().cloned());
                        reject(r.into_response(id.as_ref()))
                    } else {
                        match result {
                            Err(resp) => {
                                this.governor.unread(x);
                                reject(resp)
                            }
                            Ok((mut req, view)) => {
                                req.extensions_mut().insert(view);
                                let inner = inner.take();
                                match this.governor.admit(req, x) {
                                    Decision::Pass(req) => {
                                        this.state.set(State::Ready {
                                            req: Some(req),
                                            inner,
                                        });
                                        continue;
                                    }
                                    Decision::Wait(wait) => {
                                        this.state.set(State::Admitting { wait, inner });
                                        continue;
                                    }
                                    Decision::Refuse(r) => {
                                        reject(r.into_response(reply_id(x).as_ref()))
                                    }
                                }
                            }
                        }
                    }
                }
                StateProj::Admitting { wait, inner } => match ready!(wait.as_mut().poll(cx)) {
                    Ok(req) => {
                        let inner = inner.take();
                        this.state.set(State::Ready {
                            req: Some(req),
                            inner,
                        });
                        continue;
                    }
                    Err(r) => {
                        let id = this.exchange.as_ref().and_then(reply_id);
                        reject(r.into_response(id.as_ref()))
                    }
                },
                StateProj::Ready { req, inner } => {
                    let Some(svc) = inner.as_mut() else {
                        return Poll::Pending;
                    };
                    if let Err(e) = ready!(svc.poll_ready(cx)) {
                        this.state.set(State::Done);
                        this.pending.0 = None; // disarmed: the answer is here
                        return Poll::Ready(Err(e));
                    }
                    let (Some(mut svc), Some(req)) = (inner.take(), req.take()) else {
                        return Poll::Pending;
                    };
                    let fut = svc.call(req);
                    this.state.set(State::Calling { fut });
                    continue;
                }
                StateProj::Calling { fut } => match ready!(fut.poll(cx)) {
                    Ok(resp) => resp.map(ResponseBody::inner),
                    Err(e) => {
                        this.state.set(State::Done);
                        this.pending.0 = None; // disarmed: the answer is here
                        return Poll::Ready(Err(e));
                    }
                },
                StateProj::Collecting {
                    mut body,
                    buf,
                    parts,
                    obs,
                } => {
                    let collected = loop {
                        match ready!(body.as_mut().poll_frame(cx)) {
                            None => break Ok(std::mem::take(buf).freeze()),
                            Some(Ok(frame)) => {
                                if let Ok(d) = frame.into_data() {
                                    buf.extend_from_slice(&d);
                                }
                            }
                            Some(Err(e)) => break Err(e),
                        }
                    };
                    let (Some(mut parts), Some(mut obs)) = (parts.take(), obs.take()) else {
                        return Poll::Pending;
                    };
                    this.state.set(State::Done);
                    let resp = match collected {
                        Ok(c) => {
                            let new = obs.replace_json(c);
                            parts.headers.remove(header::TRANSFER_ENCODING);
                            parts
                                .headers
                                .insert(header::CONTENT_LENGTH, HeaderValue::from(new.len()));
                            Response::from_parts(
                                parts,
                                ResponseBody::full(Full::new(new)).observed(obs),
                            )
                        }
                        Err(e) => {
                            obs.end(EndReason::UpstreamFailed, Some(e.to_string()));
                            drop(obs);
                            let id = this.exchange.as_ref().and_then(reply_id);
                            let err = JsonRpcError::new(
                                ErrorCode::UPSTREAM_UNAVAILABLE,
                                "the upstream's response could not be read whole for filtering",
                            );
                            reject(err.into_response(StatusCode::BAD_GATEWAY, id.as_ref()))
                        }
                    };
                    return Poll::Ready(Ok(resp));
                }
                StateProj::Done => return Poll::Pending,
            };
            // The answer is here (the inner service's, or a refusal): finish.
            this.pending.0 = None; // disarmed: the answer is here
            let Some(x) = this.exchange.as_ref().filter(|_| *this.owner) else {
                this.state.set(State::Done);
                return Poll::Ready(Ok(answer));
            };
            let (mut parts, body) = answer.into_parts();
            // The record travels back on the response, for code outside the stack.
            parts.extensions.insert(x.clone());
            let added = x.update(|r| std::mem::take(&mut r.response_headers));
            if !added.is_empty() {
                parts.headers.extend(added);
            }
            let observers = x.take_observers();
            if observers.is_empty() {
                this.state.set(State::Done);
                return Poll::Ready(Ok(Response::from_parts(parts, body)));
            }
            let mut obs = Observation::new(observers, parts.status, &parts.headers)
                .with_cutoff(this.cutoff.clone());
            if !obs.needs_whole_json() {
                let obs = obs.with_exact_len(body.size_hint().exact());
                this.state.set(State::Done);
                return Poll::Ready(Ok(Response::from_parts(parts, body.observed(obs))));
            }
            // A JSON answer an observer may rewrite (list filtering) is read whole first —
            // bounded — so the `Content-Length` sent is the rewritten body's.
            obs.mark_polled();
            let body = Limited::new(body, obs.max_message_bytes());
            this.state.set(State::Collecting {
                body,
                buf: BytesMut::new(),
                parts: Some(parts),
                obs: Some(obs),
            });
        }
    }
}

/// What an embedding server provides of the client and the route, when it put no
/// [`ExchangeContext`] in the extensions: axum's `ConnectInfo<SocketAddr>` (an app served with
/// `into_make_service_with_connect_info::<SocketAddr>()`) and its `MatchedPath` (the route's
/// pattern, under `Router::route_layer`/`layer`). A plain `SocketAddr` extension is taken when
/// the record is created ([`Exchange::get_or_insert`]).
#[cfg(feature = "axum")]
fn from_server(ext: &http::Extensions, x: &Exchange) {
    use axum::extract::{ConnectInfo, MatchedPath};
    if ext.get::<ExchangeContext>().is_some() {
        return;
    }
    let peer = ext.get::<ConnectInfo<std::net::SocketAddr>>().map(|c| c.0);
    let route = ext
        .get::<MatchedPath>()
        .map(|m| std::sync::Arc::<str>::from(m.as_str()));
    if peer.is_some() || route.is_some() {
        x.update(|r| {
            if r.client.is_none() {
                r.client = peer;
            }
            if r.route.is_none() {
                r.route = route;
            }
        });
    }
}

/// Without the `axum` feature there is nothing more to look for.
#[cfg(not(feature = "axum"))]
fn from_server(_ext: &http::Extensions, _x: &Exchange) {}
