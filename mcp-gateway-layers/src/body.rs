//! [`ResponseBody`]: the inner service's body, or a rejection the layer answered itself —
//! either of them observed when a layer attached an [`Observation`].

use crate::BoxError;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use mcp_gateway_core::observe::{Observation, ObservedBody};
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::task::{Context, Poll};

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B> {
        Inner {
            #[pin]
            body: B,
        },
        Full {
            #[pin]
            body: Full<Bytes>,
        },
    }
}

impl<B> Body for Kind<B>
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
        match self.project() {
            KindProj::Inner { body } => body.poll_frame(cx).map_err(Into::into),
            KindProj::Full { body } => body
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|never| match never {}))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Inner { body } => body.is_end_stream(),
            Self::Full { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Inner { body } => body.size_hint(),
            Self::Full { body } => body.size_hint(),
        }
    }
}

pin_project! {
    /// A response body that is either the inner service's (passed through untouched) or a
    /// complete rejection answered by the layer, optionally observed.
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        body: ObservedBody<Kind<B>>,
    }
}

impl<B> ResponseBody<B> {
    /// Wraps the inner service's body.
    pub fn inner(body: B) -> Self {
        Self {
            body: ObservedBody::new(Kind::Inner { body }),
        }
    }
    /// A complete body.
    pub fn full(body: Full<Bytes>) -> Self {
        Self {
            body: ObservedBody::new(Kind::Full { body }),
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

/// Turns a JSON-RPC rejection into a response with a [`ResponseBody`].
pub(crate) fn reject<B>(resp: http::Response<Full<Bytes>>) -> http::Response<ResponseBody<B>> {
    resp.map(ResponseBody::full)
}
