//! The admin listener (`[admin] listen`): `/metrics` (Prometheus text format), `/healthz` and
//! `/readyz`, on an address of its own so that operators' endpoints never share the public
//! listener with agents.
//!
//! - `GET /metrics`: the RED metrics of `[telemetry]` (see `mcp_gateway_layers::telemetry::metrics`)
//!   and the gateway's own counters (`mcp_gateway_up`, `mcp_gateway_build_info`, audit
//!   records written and dropped, store errors of limits and sessions).
//! - `GET /healthz`: 200 while the process serves.
//! - `GET /readyz`: 200 while the gateway takes traffic, 503 once it drains at shutdown or
//!   while the audit log cannot be written.
//! - `POST /reload`: reloads the configuration file ([`crate::reload`]) and answers what it
//!   did as JSON — 200 with `"result": "ok"` (and what only a restart applies, under
//!   `not_applied`), or 422 with `"result": "error"` and the file's errors, located, when
//!   nothing changed.
//! - `GET /approvals`: the calls held for a person's decision (`[[approvals]]`), a JSON
//!   array, oldest first: each with its `id`, `upstream`, `tool`, `arguments`,
//!   `arguments_digest`, `definition_digest`, `principal`, `requested_at` and `expires_at`.
//! - `POST /approvals/ID` with `{"decision": "approve"}` or `{"decision": "deny"}` (and
//!   optionally `"by"`, and the `arguments_digest` / `definition_digest` the decision was
//!   made for, which must be the call's): 200 with the call decided, 404 when no call is
//!   pending under that id (decided already, expired, or its client went away), 409 when a
//!   digest named is not the call's, 400 for a body that is not such a decision.
//! - `GET /integrity` (`?upstream=NAME`; 404 for one neither pinned nor listed yet): what each
//!   upstream's lists showed against its pins
//!   (`mcp-gateway pins diff` reads it).

use crate::reload::Reloader;
use crate::router::Router;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running admin listener.
#[derive(Debug)]
pub struct Admin {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Admin {
    /// Binds `addr` and serves the admin endpoints for the layers of `reloader`'s current
    /// router.
    pub async fn bind(
        addr: SocketAddr,
        reloader: Reloader,
        ready: Arc<AtomicBool>,
    ) -> Result<Self, crate::error::StartError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| crate::error::StartError::AdminBind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| crate::error::StartError::AdminBind { addr, source })?;
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let (stream, _) = tokio::select! {
                    a = listener.accept() => match a {
                        Ok(s) => s,
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    _ = stopped.changed() => break,
                };
                while conns.try_join_next().is_some() {}
                let reloader = reloader.clone();
                let ready = ready.clone();
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let reloader = reloader.clone();
                    let ready = ready.clone();
                    async move {
                        if req.uri().path() == "/reload" && req.method() == Method::POST {
                            let report = reloader.reload("admin").await;
                            let status = if report.applied() {
                                StatusCode::OK
                            } else {
                                StatusCode::UNPROCESSABLE_ENTITY
                            };
                            let body = serde_json::to_vec_pretty(&report).unwrap_or_default();
                            return Ok::<_, Infallible>(text(status, body, "application/json"));
                        }
                        let router = reloader.current();
                        let path = req.uri().path();
                        if path == "/approvals"
                            || path.starts_with("/approvals/")
                            || path == "/integrity"
                        {
                            return Ok::<_, Infallible>(integrity(req, &router).await);
                        }
                        Ok::<_, Infallible>(answer(&req, &router, &reloader, &ready))
                    }
                });
                conns.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(10))
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            conns.abort_all();
        });
        tracing::info!(addr = %local, "admin listener: /metrics /healthz /readyz /reload /approvals /integrity");
        Ok(Self {
            addr: local,
            stop,
            task,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the listener.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    text(status, body, "application/json")
}

/// A decision on a held call, as `POST /approvals/ID` takes it.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    decision: String,
    #[serde(default)]
    by: Option<String>,
    #[serde(default)]
    arguments_digest: Option<String>,
    #[serde(default)]
    definition_digest: Option<String>,
}

/// `/approvals`, `/approvals/ID` and `/integrity`.
async fn integrity(req: Request<Incoming>, router: &Router) -> Response<Full<Bytes>> {
    use http_body_util::BodyExt as _;
    use mcp_gateway_layers::integrity::DecideError;
    use serde_json::json;
    let Some(layer) = router.integrity() else {
        return json(
            StatusCode::NOT_FOUND,
            &json!({"error": "no [integrity] or [[approvals]] is configured"}),
        );
    };
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    if path == "/integrity" {
        if method != Method::GET {
            return json(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"error": "GET only"}),
            );
        }
        let upstream = req.uri().query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("upstream="))
                .map(str::to_owned)
        });
        let report = layer.report(upstream.as_deref());
        if let Some(u) = upstream.filter(|u| report.get(u).is_none()) {
            return json(
                StatusCode::NOT_FOUND,
                &json!({"error": format!("{u:?} is neither pinned nor listed through this gateway yet")}),
            );
        }
        return json(StatusCode::OK, &report);
    }
    if path == "/approvals" {
        if method != Method::GET {
            return json(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"error": "GET /approvals lists; POST /approvals/ID decides"}),
            );
        }
        return json(StatusCode::OK, &json!(layer.approvals().list()));
    }
    let id = path.trim_start_matches("/approvals/").to_owned();
    if method != Method::POST {
        return json(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "POST /approvals/ID decides a held call"}),
        );
    }
    let body = match http_body_util::Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return json(
                StatusCode::BAD_REQUEST,
                &json!({"error": format!("unreadable body: {e}")}),
            )
        }
    };
    let decision: DecisionBody = match serde_json::from_slice(&body) {
        Ok(d) => d,
        Err(e) => {
            return json(
                StatusCode::BAD_REQUEST,
                &json!({"error": format!("expected {{\"decision\": \"approve\"}} or {{\"decision\": \"deny\"}}: {e}")}),
            )
        }
    };
    let approve = match decision.decision.as_str() {
        "approve" => true,
        "deny" => false,
        other => {
            return json(
                StatusCode::BAD_REQUEST,
                &json!({"error": format!("decision {other:?} is not \"approve\" or \"deny\"")}),
            )
        }
    };
    let by = decision.by.unwrap_or_else(|| "admin".to_owned());
    match layer.approvals().decide(
        &id,
        approve,
        &format!("admin:{by}"),
        decision.arguments_digest.as_deref(),
        decision.definition_digest.as_deref(),
    ) {
        Ok(call) => json(
            StatusCode::OK,
            &json!({"id": id, "decision": if approve { "approved" } else { "denied" }, "by": format!("admin:{by}"), "call": call}),
        ),
        Err(e @ DecideError::NotFound(_)) => {
            json(StatusCode::NOT_FOUND, &json!({"error": e.to_string()}))
        }
        Err(e @ DecideError::Mismatch { .. }) => {
            json(StatusCode::CONFLICT, &json!({"error": e.to_string()}))
        }
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>, ct: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    resp
}

fn answer(
    req: &Request<Incoming>,
    router: &Router,
    reloader: &Reloader,
    ready: &AtomicBool,
) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.uri().path() == "/reload" {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "POST /reload reloads the configuration\n",
            PLAIN,
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n", PLAIN);
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/metrics" => {
            let mut out = String::with_capacity(16 * 1024);
            render(router, &mut out);
            reloader.render_prometheus(&mut out);
            text(
                StatusCode::OK,
                out,
                "text/plain; version=0.0.4; charset=utf-8",
            )
        }
        "/healthz" => text(StatusCode::OK, "ok\n", PLAIN),
        "/readyz" => {
            let (status, body) = router.readiness(ready.load(Ordering::Relaxed));
            text(status, body.into_owned(), PLAIN)
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: the admin listener serves /metrics, /healthz, /readyz, POST /reload, /approvals and /integrity\n",
            PLAIN,
        ),
    }
}

/// Everything `/metrics` shows: the gateway's own gauges, then each layer's metrics.
fn render(router: &Router, out: &mut String) {
    let _ = writeln!(out, "# HELP mcp_gateway_up 1 while the gateway serves.");
    let _ = writeln!(out, "# TYPE mcp_gateway_up gauge");
    let _ = writeln!(out, "mcp_gateway_up 1");
    let _ = writeln!(out, "# HELP mcp_gateway_build_info The gateway's version.");
    let _ = writeln!(out, "# TYPE mcp_gateway_build_info gauge");
    let _ = writeln!(
        out,
        "mcp_gateway_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    // The same rendering an embedding app gets from the library.
    mcp_gateway_layers::prometheus::Prometheus::new()
        .with_some(router.telemetry().cloned())
        .with_some(router.audit().cloned())
        .with_some(router.limits().cloned())
        .with_some(router.integrity().cloned())
        .with_some(router.sessions().cloned())
        .with_some(router.stdio_metrics())
        .with(router.virtuals().to_vec())
        .render_into(out);
}
