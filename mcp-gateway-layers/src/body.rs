//! [`ResponseBody`]: the body of a governed response — the inner service's body or a refusal a
//! layer answered itself, observed once per stack when a layer attached an [`Observation`].
//!
//! A governed stack wraps its answer once, however many governing layers it holds: the
//! layer that owns the exchange attaches one observation, the others pass the body through.
//! [`Refused`] is the body of a service that is either its inner service's or a refusal of its
//! own without being observed (`OriginGuard`, `SessionAffinity`, `Upstream`).

use crate::BoxError;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use mcp_gateway_core::observe::{Observation, ObservedBody};
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The inner service's body (`Left`) or a complete answer of the layer's own (`Right`).
pub type Refused<B> = Either<B, Full<Bytes>>;

pin_project! {
    /// A response body that is either the inner service's (passed through untouched) or a
    /// complete answer of a layer's own, optionally observed.
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        body: ObservedBody<Refused<B>>,
    }
}

impl<B> ResponseBody<B> {
    /// Wraps the inner service's body.
    pub fn inner(body: B) -> Self {
        Self {
            body: ObservedBody::new(Either::Left(body)),
        }
    }
    /// A complete body.
    pub fn full(body: Full<Bytes>) -> Self {
        Self {
            body: ObservedBody::new(Either::Right(body)),
        }
    }
    /// The same body, shown to `observation` as it streams.
    pub fn observed(self, observation: Observation) -> Self {
        Self {
            body: self.body.with_observation(observation),
        }
    }
    /// Whether an observation is attached.
    pub fn is_observed(&self) -> bool {
        self.body.is_observed()
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A refusal's response with the body type of a service that may also pass its inner
/// service's body.
pub(crate) fn refused<B>(resp: http::Response<Full<Bytes>>) -> http::Response<Refused<B>> {
    resp.map(Either::Right)
}

/// Turns a JSON-RPC rejection into a response with a [`ResponseBody`].
pub(crate) fn reject<B>(resp: http::Response<Full<Bytes>>) -> http::Response<ResponseBody<B>> {
    resp.map(ResponseBody::full)
}
