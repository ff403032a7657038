use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// One request counted as outstanding on its instance until dropped.
pub(crate) struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    pub(crate) fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project! {
    /// An instance's response body, counted as outstanding on the instance until it ends,
    /// fails or is dropped — so a streamed (SSE) answer counts for as long as it streams.
    /// [`CountedBody::new`] makes an uncounted one, to give services without the layer the
    /// same body type (the `mcp-gateway` binary does, for routes without sessions).
    pub struct CountedBody<B> {
        #[pin]
        body: B,
        flight: Option<InFlight>,
    }
}

impl<B> std::fmt::Debug for CountedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountedBody")
            .field("counted", &self.flight.is_some())
            .finish_non_exhaustive()
    }
}

impl<B> CountedBody<B> {
    /// `body`, not counted anywhere.
    pub fn new(body: B) -> Self {
        Self { body, flight: None }
    }

    pub(crate) fn counted(body: B, flight: InFlight) -> Self {
        Self {
            body,
            flight: Some(flight),
        }
    }
}

impl<B: Body<Data = Bytes>> Body for CountedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let res = this.body.poll_frame(cx);
        if matches!(res, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.flight.take();
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
