//! [`ResponseBody`]: the inner service's body, or a rejection the layer answered itself.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::task::{Context, Poll};

pin_project! {
    /// A response body that is either the inner service's or a complete rejection.
    #[project = ResponseBodyProj]
    #[allow(missing_docs)]
    #[derive(Debug)]
    pub enum ResponseBody<B> {
        /// The inner service's body, passed through untouched.
        Inner {
            #[pin]
            body: B,
        },
        /// A rejection answered by the layer.
        Full {
            #[pin]
            body: Full<Bytes>,
        },
    }
}

impl<B> ResponseBody<B> {
    /// Wraps the inner service's body.
    pub fn inner(body: B) -> Self {
        Self::Inner { body }
    }
    /// A complete body.
    pub fn full(body: Full<Bytes>) -> Self {
        Self::Full { body }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project() {
            ResponseBodyProj::Inner { body } => body.poll_frame(cx),
            ResponseBodyProj::Full { body } => body
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

/// Turns a JSON-RPC rejection into a response with a [`ResponseBody`].
pub(crate) fn reject<B>(resp: http::Response<Full<Bytes>>) -> http::Response<ResponseBody<B>> {
    resp.map(ResponseBody::full)
}
