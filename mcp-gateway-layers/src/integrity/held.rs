//! A legacy call held while its client is asked: the answer is an SSE stream that opens with
//! the gateway's `elicitation/create` request and goes on, once the call is decided, with
//! the upstream's answer (or the refusal).
//!
//! The governor marks such a request ([`HeldCall`], in its extensions) and passes it; the
//! service below it ([`HeldService`], or a router that calls [`take_held`] itself) answers at
//! once with the stream and forwards the call when it is approved.

use crate::govern::Waiting;
use bytes::Bytes;
use futures_util::future::{Either as FutEither, MapOk, Ready, TryFutureExt as _};
use http::{header, HeaderValue, Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt as _, Either, Full};
use mcp_gateway_core::observe::BoxError;
use mcp_gateway_core::sse::SseEvent;
use mcp_gateway_core::McpRequest;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use tower_service::Service;

type Req = Request<Full<Bytes>>;

/// The largest JSON answer re-framed as an SSE event (a larger one ends the stream).
const MAX_JSON: usize = 16 << 20;

/// A call held while its client decides: the request the gateway sends the client, and
/// the wait for the decision. In the request's extensions between the governor and the
/// upstream.
#[derive(Clone)]
pub struct HeldCall {
    pub(crate) event: Bytes,
    pub(crate) wait: Arc<Mutex<Option<Waiting<()>>>>,
}

impl std::fmt::Debug for HeldCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldCall").finish_non_exhaustive()
    }
}

/// Takes the held call out of a request the integrity governor passed, if it holds one.
pub fn take_held<B>(req: &mut Request<B>) -> Option<HeldCall> {
    req.extensions_mut().remove::<HeldCall>()
}

/// The body of a held call's answer: SSE events, as the decision and the upstream produce
/// them.
#[derive(Debug)]
pub struct HeldBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for HeldBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

impl HeldCall {
    /// Answers the held call: the SSE stream opens with the elicitation request now; the
    /// call goes to `forward` once approved, and its answer follows on the stream (a JSON
    /// answer as one event, an SSE answer as it streams). A refusal ends the stream as one
    /// error event. The client going away cancels the wait and the call.
    pub fn serve<F, Fut, B, E>(self, req: Req, forward: F) -> Response<HeldBody>
    where
        F: FnOnce(Req) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Response<B>, E>> + Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
        E: Send + 'static,
    {
        let (tx, rx) = mpsc::channel(16);
        let id = McpRequest::from_extensions(req.extensions())
            .and_then(McpRequest::reply_id)
            .cloned();
        tokio::spawn(run(self, req, forward, id, tx));
        let mut resp = Response::new(HeldBody { rx });
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert("x-accel-buffering", HeaderValue::from_static("no"));
        resp
    }
}

/// The held call's task: the elicitation, the wait, then the upstream's answer.
async fn run<F, Fut, B, E>(
    held: HeldCall,
    req: Req,
    forward: F,
    id: Option<mcp_gateway_core::RequestId>,
    tx: mpsc::Sender<Bytes>,
) where
    F: FnOnce(Req) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Response<B>, E>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    if tx.send(held.event).await.is_err() {
        return;
    }
    let wait = held
        .wait
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    let Some(wait) = wait else { return };
    let decided = tokio::select! {
        d = wait => d,
        () = tx.closed() => return,
    };
    if let Err(refusal) = decided {
        let body = refusal.into_response(id.as_ref()).into_body();
        let Ok(b) = body.collect().await;
        let text = String::from_utf8_lossy(&b.to_bytes()).into_owned();
        let _ = tx.send(SseEvent::data(text).encode()).await;
        return;
    }
    let Ok(resp) = forward(req).await else {
        return;
    };
    let sse = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(mcp_gateway_core::headers::is_event_stream);
    let mut body = std::pin::pin!(resp
        .into_body()
        .map_err(boxed::<B::Error> as fn(B::Error) -> BoxError));
    if sse {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                if tx.send(data).await.is_err() {
                    return;
                }
            }
        }
    } else {
        let mut all = bytes::BytesMut::new();
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                all.extend_from_slice(&data);
                if all.len() > MAX_JSON {
                    return;
                }
            }
        }
        if !all.is_empty() {
            let text = String::from_utf8_lossy(&all).into_owned();
            let _ = tx.send(SseEvent::data(text).encode()).await;
        }
    }
}

fn boxed<E: Into<BoxError>>(e: E) -> BoxError {
    e.into()
}

/// The service below [`ToolIntegrity`](super::ToolIntegrity): answers held calls (see the
/// [module docs](self)), passes everything else to `S`.
#[derive(Clone, Debug)]
pub struct HeldService<S> {
    inner: S,
}

impl<S> HeldService<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

type Left<B> = fn(Response<B>) -> Response<Either<B, HeldBody>>;

impl<S, B> Service<Req> for HeldService<S>
where
    S: Service<Req, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Either<B, HeldBody>>;
    type Error = S::Error;
    type Future = FutEither<MapOk<S::Future, Left<B>>, Ready<Result<Self::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        match take_held(&mut req) {
            None => {
                let left: Left<B> = |r| r.map(Either::Left);
                FutEither::Left(self.inner.call(req).map_ok(left))
            }
            Some(held) => {
                let mut svc = self.inner.clone();
                let resp = held.serve(req, move |req| async move {
                    std::future::poll_fn(|cx| svc.poll_ready(cx)).await?;
                    svc.call(req).await
                });
                FutEither::Right(futures_util::future::ready(Ok(resp.map(Either::Right))))
            }
        }
    }
}
