//! The two shapes a route's stack can take, chosen once when the gateway starts:
//!
//! - **plain** (no governing layer configured): `ParseMcp → Upstream`, exactly the
//!   pass-through of a gateway without governance, with nothing added per request;
//! - **governed**: the governing layers that are configured, in the order of the router's
//!   module docs, type-erased behind one boxed service (one allocation per response, which a
//!   governed exchange dwarfs anyway).
//!
//! Keeping the plain shape free of the governing layers' types means a pass-through gateway's
//! cost does not grow as layers are added to the project.

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use mcp_gateway_layers::upstream::{Upstream, UpstreamBody};
use mcp_gateway_layers::{BoxError, OriginGuard, ParseMcp, ResponseBody};
use pin_project_lite::pin_project;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower::util::BoxCloneSyncService;
use tower::ServiceExt;
use tower_service::Service;

/// The plain stack.
pub type Plain = ParseMcp<Upstream>;
/// The body of a governed stack, type-erased.
pub type GovernedBody = UnsyncBoxBody<Bytes, BoxError>;
/// A governed stack, type-erased.
pub type Governed = BoxCloneSyncService<Request<Incoming>, Response<GovernedBody>, Infallible>;

/// A route's stack below `OriginGuard`: plain or governed.
#[derive(Clone)]
pub enum Switch {
    /// No governing layer.
    Plain(Plain),
    /// Some governing layers.
    Governed(Governed),
}

impl std::fmt::Debug for Switch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Plain(_) => "Switch::Plain",
            Self::Governed(_) => "Switch::Governed",
        })
    }
}

impl Switch {
    /// Serves one request. The plain stack runs as one inline future (no boxed future, no
    /// service clone, no `Oneshot`); a governed one through its boxed service.
    pub async fn serve(&self, req: Request<Incoming>) -> Response<SwitchBody> {
        match self {
            Self::Plain(s) => s.serve(req).await.map(|body| SwitchBody::Plain { body }),
            Self::Governed(s) => match s.clone().oneshot(req).await {
                Ok(resp) => resp.map(|body| SwitchBody::Governed { body }),
                Err(never) => match never {},
            },
        }
    }
}

/// Serves one request through a route's stack: the origin check, then [`Switch::serve`].
pub async fn serve(
    stack: &OriginGuard<Switch>,
    req: Request<Incoming>,
) -> Response<ResponseBody<SwitchBody>> {
    if let Some(resp) = stack.refusal(req.headers()) {
        return resp.map(ResponseBody::full);
    }
    stack.get_ref().serve(req).await.map(ResponseBody::inner)
}

impl Service<Request<Incoming>> for Switch {
    type Response = Response<SwitchBody>;
    type Error = Infallible;
    type Future = SwitchFuture<
        <Plain as Service<Request<Incoming>>>::Future,
        <Governed as Service<Request<Incoming>>>::Future,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        match self {
            Self::Plain(s) => Service::<Request<Incoming>>::poll_ready(s, cx),
            Self::Governed(s) => s.poll_ready(cx),
        }
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        match self {
            Self::Plain(s) => SwitchFuture::Plain { fut: s.call(req) },
            Self::Governed(s) => SwitchFuture::Governed { fut: s.call(req) },
        }
    }
}

pin_project! {
    /// The future of [`Switch`].
    #[project = SwitchFutureProj]
    #[allow(missing_docs)]
    pub enum SwitchFuture<P, G> {
        Plain { #[pin] fut: P },
        Governed { #[pin] fut: G },
    }
}

impl<P, G> Future for SwitchFuture<P, G>
where
    P: Future<Output = Result<Response<ResponseBody<UpstreamBody>>, Infallible>>,
    G: Future<Output = Result<Response<GovernedBody>, Infallible>>,
{
    type Output = Result<Response<SwitchBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            SwitchFutureProj::Plain { fut } => fut
                .poll(cx)
                .map(|r| r.map(|resp| resp.map(|body| SwitchBody::Plain { body }))),
            SwitchFutureProj::Governed { fut } => fut
                .poll(cx)
                .map(|r| r.map(|resp| resp.map(|body| SwitchBody::Governed { body }))),
        }
    }
}

pin_project! {
    /// The body of [`Switch`]'s responses.
    #[project = SwitchBodyProj]
    #[allow(missing_docs)]
    pub enum SwitchBody {
        Plain { #[pin] body: ResponseBody<UpstreamBody> },
        Governed { #[pin] body: GovernedBody },
    }
}

impl Body for SwitchBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            SwitchBodyProj::Plain { body } => body.poll_frame(cx),
            SwitchBodyProj::Governed { body } => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Plain { body } => body.is_end_stream(),
            Self::Governed { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Plain { body } => body.size_hint(),
            Self::Governed { body } => body.size_hint(),
        }
    }
}
