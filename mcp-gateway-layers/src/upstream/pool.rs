//! A lean HTTP/1.1 connection pool per upstream instance.
//!
//! Idle connections sit in LIFO stacks behind short locks (the most recently used connection is
//! the warmest), one stack per worker thread: a thread reuses the connections it made, whose
//! connection tasks run on its own runtime when the gateway runs one runtime per core, so a
//! call does not wake another core, and threads do not contend for one lock. A thread with no
//! idle connection of its own takes another thread's before opening a new one. A connection goes back to the stack when the response body it
//! carried has been read to the end; a response abandoned half-way (the client left) closes its
//! connection instead, since unread bytes would corrupt the next exchange.

use super::{UpstreamRequestBody, UpstreamStalled};
use crate::rt::Stall;
use crate::BoxError;
use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use pin_project_lite::pin_project;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Why a connection could not be made.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// TCP or TLS did not complete within the connect timeout.
    Timeout,
    /// Refused, unreachable, unresolvable, or a failed handshake.
    Failed(String),
}

struct Idle {
    send: SendRequest<UpstreamRequestBody>,
    since: Instant,
}

/// How many idle stacks a pool keeps: one per core (threads beyond share them).
fn shards() -> usize {
    static SHARDS: OnceLock<usize> = OnceLock::new();
    *SHARDS.get_or_init(|| std::thread::available_parallelism().map_or(1, NonZeroUsize::get))
}

/// This thread's idle stack index, given on first use.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    INDEX.with(|i| *i) % shards()
}

/// The pool of one instance.
pub(crate) struct InstancePool {
    scheme: Scheme,
    authority: Authority,
    /// One idle stack per shard ([`shard_index`]).
    idle: Box<[Mutex<Vec<Idle>>]>,
    /// Most idle connections per stack (the configured total, spread over the stacks).
    max_idle: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl InstancePool {
    pub(crate) fn new(
        scheme: Scheme,
        authority: Authority,
        tls: Option<tokio_rustls::TlsConnector>,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Self {
        Self {
            scheme,
            authority,
            idle: (0..shards()).map(|_| Mutex::new(Vec::new())).collect(),
            max_idle: max_idle.div_ceil(shards()),
            idle_timeout,
            connect_timeout,
            tls,
        }
    }

    /// A connection ready for one request: an idle one if any is alive, else a new one.
    /// The flag says whether it was reused (a reused connection may have been closed by the
    /// server a moment ago, so a request that failed before being sent may be retried).
    pub(crate) async fn checkout(
        &self,
    ) -> Result<(SendRequest<UpstreamRequestBody>, bool), ConnectError> {
        let own = shard_index();
        let mut shard = own;
        loop {
            let candidate = self.idle[shard]
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop();
            let Some(mut idle) = candidate else {
                // None here: take one another thread left idle (its task runs elsewhere, but
                // that beats opening a connection) before connecting.
                shard = (shard + 1) % self.idle.len();
                if shard == own {
                    break;
                }
                continue;
            };
            if idle.since.elapsed() > self.idle_timeout || idle.send.is_closed() {
                continue;
            }
            // Right after a response ends, the connection task may not have marked the
            // connection idle yet: wait for it (it is immediate, or the connection is dead).
            if idle.send.ready().await.is_ok() {
                return Ok((idle.send, true));
            }
        }
        // Boxed: connecting (TCP, maybe TLS) is rare and its state is large; keeping it out
        // of line keeps every request's future small.
        Box::pin(self.connect()).await.map(|s| (s, false))
    }

    /// Returns a connection whose exchange completed.
    pub(crate) fn put(&self, send: SendRequest<UpstreamRequestBody>) {
        if send.is_closed() {
            return;
        }
        let mut idle = self.idle[shard_index()]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push(Idle {
                send,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self) -> Result<SendRequest<UpstreamRequestBody>, ConnectError> {
        let host = self
            .authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let default_port = if self.scheme == Scheme::HTTPS {
            443
        } else {
            80
        };
        let port = self.authority.port_u16().unwrap_or(default_port);
        let connect = async {
            let tcp = tokio::net::TcpStream::connect((host, port))
                .await
                .map_err(|e| ConnectError::Failed(format!("connect to {host}:{port}: {e}")))?;
            let _ = tcp.set_nodelay(true);
            match &self.tls {
                None => handshake(tcp).await,
                Some(tls) => {
                    let name =
                        rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| {
                            ConnectError::Failed(format!("TLS server name {host:?}: {e}"))
                        })?;
                    let stream = tls.connect(name, tcp).await.map_err(|e| {
                        ConnectError::Failed(format!("TLS handshake with {host}:{port}: {e}"))
                    })?;
                    handshake(stream).await
                }
            }
        };
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::Timeout),
        }
    }
}

async fn handshake<T>(io: T) -> Result<SendRequest<UpstreamRequestBody>, ConnectError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| ConnectError::Failed(format!("HTTP handshake: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended with error");
        }
    });
    Ok(send)
}

pin_project! {
    /// An upstream response body that gives its connection back to the pool when it has been
    /// read to the end, and fails with [`UpstreamStalled`] when the upstream sends nothing
    /// for its read limit while the body is being read (`read_timeout`, or `sse_idle_timeout`
    /// for an SSE stream): the connection is then closed, not pooled.
    pub struct PooledBody {
        #[pin]
        inner: Incoming,
        slot: Option<(SendRequest<UpstreamRequestBody>, Arc<InstancePool>)>,
        stall: Option<Stall>,
        upstream: Arc<str>,
        sse: bool,
    }
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody").finish_non_exhaustive()
    }
}

impl PooledBody {
    /// `read_limit`: the longest silence between two reads, none when zero.
    pub(crate) fn new(
        inner: Incoming,
        send: SendRequest<UpstreamRequestBody>,
        pool: Arc<InstancePool>,
        upstream: Arc<str>,
        sse: bool,
        read_limit: Duration,
    ) -> Self {
        let mut body = Self {
            inner,
            slot: Some((send, pool)),
            stall: (!read_limit.is_zero()).then(|| Stall::new(read_limit)),
            upstream,
            sse,
        };
        if body.inner.is_end_stream() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some((send, pool)) = self.slot.take() {
            pool.put(send);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let mut inner = this.inner;
        let res = inner.as_mut().poll_frame(cx);
        if let Some(stall) = this.stall {
            if res.is_ready() {
                stall.reset();
            } else if stall.poll_expired(cx).is_ready() {
                let after = stall.after();
                // The connection is in the middle of a body: closed, never pooled.
                *this.slot = None;
                *this.stall = None;
                tracing::warn!(
                    upstream = %this.upstream,
                    sse = *this.sse,
                    limit = ?after,
                    "upstream sent nothing for its read limit in the middle of its answer: \
                     ending the answer with an error"
                );
                return Poll::Ready(Some(Err(Box::new(UpstreamStalled {
                    upstream: this.upstream.to_string(),
                    after,
                    sse: *this.sse,
                }))));
            }
        }
        let res = res.map(|f| f.map(|f| f.map_err(Into::into)));
        // The server side may stop polling as soon as the body reports its end, so give the
        // connection back both on the final `None` and on the frame that ends the body.
        let ended = match &res {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => inner.is_end_stream(),
            _ => false,
        };
        if ended {
            if let Some((send, pool)) = this.slot.take() {
                pool.put(send);
            }
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
