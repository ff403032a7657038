//! The listener: accepts connections (plain or TLS), serves HTTP/1.1 and HTTP/2, and drains
//! on shutdown.

use crate::config::Settings;
use crate::router::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulConnection;
use mcp_gateway_core::observe::Cutoff;
use mcp_gateway_layers::reload::ReloadHandle;
use mcp_gateway_layers::rt::{BusyBody, KeepAlive};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use crate::error::StartError;

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// The other per-core workers' threads: each says when its accept loop has drained.
    workers: Vec<tokio::sync::oneshot::Receiver<()>>,
    admin: Option<crate::admin::Admin>,
    /// Reloads the configuration; its current router's audit writer, span exporter and stdio
    /// children are the ones flushed and stopped at shutdown.
    reloader: crate::reload::Reloader,
    /// The task reloading on file changes (`watch_config`).
    watcher: Option<JoinHandle<()>>,
}

impl Gateway {
    /// Binds the listener and starts serving in the background, on the current runtime.
    pub async fn bind(settings: Settings) -> Result<Self, StartError> {
        Self::start(settings, 1).await
    }

    /// Binds the listener and serves it with `workers` single-threaded runtimes, each
    /// accepting from the same socket: the first on the current runtime (which should be a
    /// current-thread one), the others on threads started here. A connection stays on the
    /// worker that accepted it, upstream connections are reused by the thread that opened
    /// them, and nothing is stolen or handed between threads — nginx's worker model. The
    /// routes, their layers and their state (limits, sessions, audit) are shared. With
    /// `workers` 1 this is [`Gateway::bind`].
    pub async fn bind_per_core(settings: Settings, workers: usize) -> Result<Self, StartError> {
        Self::start(settings, workers.max(1)).await
    }

    async fn start(settings: Settings, workers: usize) -> Result<Self, StartError> {
        let tls = match &settings.tls {
            Some((cert, key)) => Some(ReloadHandle::new(tokio_rustls::TlsAcceptor::from(
                crate::tls::server_config(cert, key)?,
            ))),
            None => None,
        };
        let ready = Arc::new(AtomicBool::new(true));
        let cutoff = Cutoff::new();
        let listen = settings.listen;
        let bind_error = move |source| StartError::Bind {
            addr: listen,
            source,
        };
        let listener = TcpListener::bind(settings.listen)
            .await
            .map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        // The other workers accept from the same socket, each through its own descriptor
        // registered with its own runtime: whichever worker is free first takes a new
        // connection (as nginx's workers share theirs). Measured against one SO_REUSEPORT
        // socket per worker, whose kernel hash can give one worker most of a few long-lived
        // connections, this had the better throughput and tail (docs/performance.md).
        let mut more = Vec::with_capacity(workers.saturating_sub(1));
        let listener = if workers > 1 {
            let std_listener = listener.into_std().map_err(bind_error)?;
            for _ in 1..workers {
                more.push(std_listener.try_clone().map_err(bind_error)?);
            }
            TcpListener::from_std(std_listener).map_err(bind_error)?
        } else {
            listener
        };
        // Resource URIs need the real address when none is configured (port 0 in tests).
        let mut settings = settings;
        let derived = crate::reload::derived_public_url(settings.tls.is_some(), local_addr);
        if settings.public_url.is_none() {
            settings.public_url = Some(derived.clone());
        }
        let router =
            ReloadHandle::new(Router::new(&settings, ready.clone(), cutoff.clone()).await?);
        let reloader = crate::reload::Reloader::new(
            router.clone(),
            tls.clone(),
            ready.clone(),
            cutoff.clone(),
            derived,
        );
        let admin = match &settings.admin {
            Some(spec) => {
                Some(crate::admin::Admin::bind(spec.listen, reloader.clone(), ready.clone()).await?)
            }
            None => None,
        };
        // Reloads on file changes while the configuration asks for it (it may start or stop
        // asking at a reload); nothing to watch without a file.
        if settings.reload.watch_config && settings.source.is_none() {
            tracing::warn!("watch_config = true, but the settings were not read from a file (config::load): nothing is watched, and a reload has no file to read");
        }
        let watcher = settings
            .source
            .is_some()
            .then(|| tokio::spawn(reloader.clone().watch()));
        let (stop, stopped) = watch::channel(false);
        let grace = Timeouts {
            grace: settings.shutdown_grace,
            header_read: settings.header_read_timeout,
            head_cap: mcp_gateway_layers::head::HeadCheck::new()
                .max_header_bytes(settings.max_header_bytes)
                .parser_cap(),
            sse_keepalive: settings.sse_keepalive,
        };
        let mut workers_done = Vec::with_capacity(more.len());
        for (i, std_listener) in more.into_iter().enumerate() {
            let (done, done_rx) = tokio::sync::oneshot::channel();
            let (router, tls, stopped, ready, cutoff) = (
                router.clone(),
                tls.clone(),
                stopped.clone(),
                ready.clone(),
                cutoff.clone(),
            );
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(bind_error)?;
            std::thread::Builder::new()
                .name(format!("mcp-gateway-worker-{}", i + 1))
                .spawn(move || {
                    runtime.block_on(async move {
                        match TcpListener::from_std(std_listener) {
                            Ok(listener) => {
                                accept_loop(listener, router, tls, stopped, ready, grace, cutoff)
                                    .await;
                            }
                            Err(e) => tracing::error!(error = %e, "worker listener unusable"),
                        }
                    });
                    let _ = done.send(());
                })
                .map_err(bind_error)?;
            workers_done.push(done_rx);
        }
        let task = tokio::spawn(accept_loop(
            listener, router, tls, stopped, ready, grace, cutoff,
        ));
        tracing::info!(
            addr = %local_addr,
            tls = settings.tls.is_some(),
            workers,
            upstreams = ?settings.upstreams.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(),
            "mcp-gateway listening"
        );
        Ok(Self {
            local_addr,
            stop,
            task,
            workers: workers_done,
            admin,
            reloader,
            watcher,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin listener's bound address, when `[admin]` is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(crate::admin::Admin::local_addr)
    }

    /// Stops accepting, lets in-flight requests and open streams finish within the grace
    /// period, then returns.
    /// With `[audit]`, the records of every exchange are then written and synced (waiting
    /// at most 10 s for a failing sink; what could not be written is counted and logged).
    /// With span export, the spans still queued are exported (at most 5 s). The admin
    /// listener answers `/readyz` 503 while draining and closes last.
    pub async fn shutdown(self) {
        if let Some(w) = &self.watcher {
            w.abort();
        }
        let _ = self.stop.send(true);
        let _ = self.task.await;
        for done in self.workers {
            let _ = done.await;
        }
        let router = self.reloader.current();
        // Local servers stop after the last call they could serve (the MCP stdio shutdown).
        for up in router.stdio() {
            up.stop().await;
        }
        self.reloader.stop_draining().await;
        if let Some(t) = router.telemetry() {
            mcp_gateway_layers::telemetry::otlp::shutdown(t, Duration::from_secs(5)).await;
        }
        if let Some(admin) = self.admin {
            admin.stop().await;
        }
        if let Some(audit) = router.audit() {
            mcp_gateway_layers::audit::config::shutdown(audit, Duration::from_secs(10)).await;
        }
    }

    /// The audit writer's counters, when `[audit]` is configured.
    pub fn audit_stats(&self) -> Option<mcp_gateway_layers::audit::AuditStats> {
        self.reloader
            .current()
            .audit()
            .map(mcp_gateway_layers::audit::AuditWriter::stats)
    }

    /// Reads the configuration file again and serves it from the next request on, when it
    /// is valid and everything builds; otherwise nothing changes (see [`crate::reload`]).
    pub async fn reload(&self) -> crate::reload::ReloadReport {
        self.reloader.reload("api").await
    }

    /// The reloader (what SIGHUP, `POST /reload` and the file watcher call).
    pub fn reloader(&self) -> &crate::reload::Reloader {
        &self.reloader
    }

    /// Runs until SIGTERM or Ctrl-C, then shuts down gracefully; SIGHUP reloads the
    /// configuration meanwhile.
    pub async fn run_until_signal(self) {
        #[cfg(unix)]
        let hup = {
            let reloader = self.reloader.clone();
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(mut s) => Some(tokio::spawn(async move {
                    while s.recv().await.is_some() {
                        tracing::info!("SIGHUP: reloading the configuration");
                        reloader.reload("signal").await;
                    }
                })),
                Err(e) => {
                    tracing::warn!(error = %e, "SIGHUP cannot be handled: reload through the admin listener");
                    None
                }
            }
        };
        shutdown_signal().await;
        #[cfg(unix)]
        if let Some(h) = hup {
            h.abort();
        }
        tracing::info!("shutdown requested: draining");
        self.shutdown().await;
        tracing::info!("stopped");
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// The listener's time limits.
#[derive(Clone, Copy, Debug)]
struct Timeouts {
    /// How long shutdown waits for open exchanges.
    grace: Duration,
    /// How long a client may take to send a request head.
    header_read: Duration,
    /// Where hyper stops reading a request head (with a bare 431): above
    /// `server.max_header_bytes`, so that the router's check answers the heads in between
    /// with a JSON-RPC error.
    head_cap: usize,
    /// The silence after which an SSE stream gets a keep-alive comment (zero: never).
    sse_keepalive: Duration,
}

async fn accept_loop(
    listener: TcpListener,
    routers: ReloadHandle<Router>,
    tls: Option<ReloadHandle<tokio_rustls::TlsAcceptor>>,
    mut stopped: watch::Receiver<bool>,
    ready: Arc<AtomicBool>,
    timeouts: Timeouts,
    cutoff: Cutoff,
) {
    let grace = timeouts.grace;
    // Advances the coarse timers' clock (header reads, body reads, idle connections) while
    // this listener and its connections live.
    let _ticker = mcp_gateway_layers::rt::Ticker::start();
    // Every connection task, so that shutdown can wait for them to drain and cut those still
    // open when the grace period is over (aborted: nothing is polled per request for this),
    // and the exchanges they carried end as "cut at shutdown".
    let mut conns = tokio::task::JoinSet::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(mcp_gateway_layers::rt::CoarseTimer)
        .header_read_timeout(timeouts.header_read)
        .max_buf_size(timeouts.head_cap);
    // HTTP/2 has no header-read timeout: a connection with no request in progress is closed
    // by `serve` below after `header_read`, and a peer that stops answering PINGs (dead, or
    // stuck in the middle of a HEADERS block, where it may send nothing else) after
    // `header_read` twice.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(timeouts.header_read)
        .keep_alive_timeout(timeouts.header_read)
        .max_header_list_size(u32::try_from(timeouts.head_cap).unwrap_or(u32::MAX));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped.changed() => break,
        };
        // Forget finished connections (the set only tracks the open ones).
        while conns.try_join_next().is_some() {}
        let _ = stream.set_nodelay(true);
        let routers = routers.clone();
        let info = Arc::new(crate::router::ConnInfo::new(peer, tls.is_some()));
        let activity = mcp_gateway_layers::rt::Activity::new();
        let requests = activity.clone();
        let keepalive = timeouts.sse_keepalive;
        let svc = hyper::service::service_fn(move |req| {
            // The stack current when the request arrives serves it to its end, whatever a
            // reload installs meanwhile.
            let router = routers.current();
            let info = info.clone();
            // The connection is busy from the request's start until its answer is sent.
            let busy = requests.begin();
            async move {
                let resp = router.serve(req, &info).await?;
                // An SSE stream that waits gets a comment now and then (`sse_keepalive`).
                let every = resp
                    .headers()
                    .get(hyper::header::CONTENT_TYPE)
                    .is_some_and(mcp_gateway_core::headers::is_event_stream)
                    .then_some(keepalive);
                Ok::<_, std::convert::Infallible>(
                    resp.map(|body| BusyBody::new(KeepAlive::new(body, every), busy)),
                )
            }
        });
        let builder = builder.clone();
        let mut stopping = stopped.clone();
        let header_read = timeouts.header_read;
        // Serves the connection (plain or TLS) until it ends, closing it on shutdown or once it
        // has carried no request for `header_read` (HTTP/2 has no header-read timeout).
        macro_rules! serve_io {
            ($stream:expr) => {{
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new($stream), svc)
                    .into_owned();
                let stop = async move {
                    let _ = stopping.changed().await;
                };
                let shut = |c: Pin<&mut _>| GracefulConnection::graceful_shutdown(c);
                if let Err(e) = activity.drive(conn, shut, stop, header_read).await {
                    tracing::debug!(client = %peer, error = %e, "connection ended with error");
                }
            }};
        }
        match &tls {
            None => {
                conns.spawn(async move {
                    // hyper bounds the wait for a request head only once it knows the
                    // protocol, which takes the first bytes: a client that connects and sends
                    // nothing is bounded here, and closed at once on shutdown.
                    // (A peek, not `readable()`: readiness can be reported before any byte.)
                    let mut byte = [0u8; 1];
                    let first = tokio::select! {
                        r = tokio::time::timeout(header_read, stream.peek(&mut byte)) => r.is_ok(),
                        _ = stopping.changed() => false,
                    };
                    if !first {
                        tracing::debug!(client = %peer, "no request within header_read_timeout");
                        return;
                    }
                    serve_io!(stream);
                });
            }
            Some(acceptor) => {
                // The certificate current when the connection arrives (a reload swaps it).
                let acceptor = tokio_rustls::TlsAcceptor::clone(&acceptor.current());
                conns.spawn(async move {
                    let handshake = tokio::select! {
                        r = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)) => r,
                        _ = stopping.changed() => return,
                    };
                    let stream = match handshake {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(client = %peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    serve_io!(stream);
                });
            }
        }
    }
    ready.store(false, Ordering::Relaxed);
    drop(listener);
    // Every connection task closes gracefully on `stopped` (see `serve`): wait for them.
    let drained = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!(grace = ?grace, "shutdown grace period over: closing remaining connections");
        cutoff.trigger();
        conns.abort_all();
    }
    // Wait for the aborted tasks to be dropped, so their streams' ends are reported.
    while conns.join_next().await.is_some() {}
}
