//! The streams a reload reaches: an SSE answer watches its route, hears `list_changed` when
//! the route changed, and ends cleanly once a removed route's drain is over.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::watch;

/// What a reload did to a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RouteState {
    /// Serving (or replaced by an identical route).
    Live,
    /// Replaced by a route whose upstream or permissions differ.
    Changed,
    /// Removed, and its drain is over: its streams end.
    Retired,
}

/// The event a legacy client's GET stream gets when its route changed at a reload.
const LIST_CHANGED: &[u8] =
    b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/tools/list_changed\"}\n\n";

type Waiter = Pin<Box<dyn Future<Output = (RouteState, watch::Receiver<RouteState>)> + Send>>;

fn wait(mut rx: watch::Receiver<RouteState>) -> Waiter {
    Box::pin(async move {
        loop {
            if rx.changed().await.is_err() {
                // The route's router is gone without a word: nothing more will come.
                std::future::pending::<()>().await;
            }
            let s = *rx.borrow_and_update();
            if s != RouteState::Live {
                return (s, rx);
            }
        }
    })
}

/// Keeps the last four bytes of the stream.
fn push_tail(tail: &mut [u8; 4], d: &[u8]) {
    if d.len() >= 4 {
        tail.copy_from_slice(&d[d.len() - 4..]);
    } else {
        tail.rotate_left(d.len());
        tail[4 - d.len()..].copy_from_slice(d);
    }
}

/// Whether the stream so far ends between two events (after a blank line).
fn at_boundary(tail: &[u8; 4]) -> bool {
    tail.ends_with(b"\n\n") || tail.ends_with(b"\r\r") || tail == b"\r\n\r\n"
}

pin_project_lite::pin_project! {
    /// A route's answer body. JSON answers pass through untouched (one branch per frame);
    /// an SSE answer also watches its route (one allocation per stream).
    pub struct Watched<B> {
        #[pin]
        inner: B,
        waiter: Option<Waiter>,
        notify: bool,
        // The stream's last four bytes: an event ends with a blank line, which may span frames.
        tail: [u8; 4],
        pending: bool,
        done: bool,
    }
}

impl<B> Watched<B> {
    /// `body`, watching `route` when given; `notify`: a stream that may hear `list_changed`
    /// (a legacy GET stream, the one for messages not tied to a request).
    pub fn new(body: B, route: Option<watch::Receiver<RouteState>>, notify: bool) -> Self {
        Self {
            inner: body,
            waiter: route.map(wait),
            notify,
            tail: *b"\n\n\n\n",
            pending: false,
            done: false,
        }
    }
}

impl<B> Body for Watched<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        if let Some(w) = this.waiter.as_mut() {
            if let Poll::Ready((state, rx)) = w.as_mut().poll(cx) {
                match state {
                    RouteState::Retired => {
                        *this.done = true;
                        *this.waiter = None;
                        return Poll::Ready(None);
                    }
                    _ => {
                        *this.pending |= *this.notify;
                        // Keep watching: a changed route may be removed later.
                        let mut next = wait(rx);
                        let _ = next.as_mut().poll(cx);
                        *this.waiter = Some(next);
                    }
                }
            }
        }
        // Only between two events: never inside one the upstream is still sending.
        if *this.pending && at_boundary(this.tail) {
            *this.pending = false;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(LIST_CHANGED)))));
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    push_tail(this.tail, d);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || (!self.pending && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.waiter.is_some() {
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};
    use std::convert::Infallible;

    type Feed = tokio::sync::mpsc::UnboundedSender<Result<Frame<Bytes>, Infallible>>;

    fn stream() -> (Feed, impl Body<Data = Bytes, Error = Infallible>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let s =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
            );
        (tx, StreamBody::new(Box::pin(s)))
    }

    #[tokio::test]
    async fn a_changed_route_adds_list_changed_between_events_and_a_retired_one_ends() {
        let (tx, body) = stream();
        let route = watch::Sender::new(RouteState::Live);
        let mut w = Watched::new(body, Some(route.subscribe()), true);
        tx.send(Ok(Frame::data(Bytes::from_static(b"data: {\"a\":1}\n"))))
            .unwrap();
        assert_eq!(
            w.frame().await.unwrap().unwrap().into_data().unwrap(),
            &b"data: {\"a\":1}\n"[..]
        );
        // Mid-event: the notification waits for the event's end.
        route.send_replace(RouteState::Changed);
        tx.send(Ok(Frame::data(Bytes::from_static(b"\n")))).unwrap();
        let f = w.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&f[..], b"\n");
        let f = w.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&f[..], LIST_CHANGED);
        route.send_replace(RouteState::Retired);
        assert!(w.frame().await.is_none(), "a retired route's stream ends");
    }

    #[tokio::test]
    async fn a_post_stream_is_not_told_of_changes_and_an_unwatched_body_passes_through() {
        let (tx, body) = stream();
        let route = watch::Sender::new(RouteState::Live);
        let mut w = Watched::new(body, Some(route.subscribe()), false);
        route.send_replace(RouteState::Changed);
        tx.send(Ok(Frame::data(Bytes::from_static(b"data: x\n\n"))))
            .unwrap();
        let f = w.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&f[..], b"data: x\n\n");
        drop(tx);
        assert!(w.frame().await.is_none());

        let mut plain = Watched::new(
            http_body_util::Full::new(Bytes::from_static(b"{}")),
            None,
            true,
        );
        assert_eq!(plain.size_hint().exact(), Some(2));
        let f = plain.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&f[..], b"{}");
    }
}
