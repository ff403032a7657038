//! One outcome, whoever reports it: every ending the gateway knows is driven through the full
//! stack — AuditLog, TraceInject, OAuthGuard and TokenBucket2D in one chain over
//! SessionAffinity, as the binary stacks them — and the audit record's `outcome`, the SERVER
//! span's `mcp_gateway.outcome` and `error.type`, and the metrics' `outcome` and `error_type`
//! labels must name the same thing.
#![allow(clippy::unwrap_used, missing_docs)]

use bytes::Bytes;
use futures_util::FutureExt;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use mcp_gateway_core::exchange::ExchangeContext;
use mcp_gateway_core::observe::Cutoff;
use mcp_gateway_core::{Principal, PrincipalKind};
use mcp_gateway_layers::audit::{sink_fn, AuditLogLayer, AuditWriter, WriterOptions};
use mcp_gateway_layers::auth::{OAuthGuardLayer, Permissions, Rule, Target, Verified, VerifyError};
use mcp_gateway_layers::govern::{Chain, GovernedLayer};
use mcp_gateway_layers::limits::{Limits, TokenBucket2DLayer};
use mcp_gateway_layers::sessions::{SessionAffinityLayer, SessionKey};
use mcp_gateway_layers::telemetry::TraceInjectLayer;
use mcp_gateway_layers::BoxError;
use opentelemetry::trace::SpanKind;
use opentelemetry::Value;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SimpleSpanProcessor, SpanData};
use opentelemetry_sdk::Resource;
use serde_json::json;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use tower::{service_fn, Layer, Service, ServiceExt};

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

fn json(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(v.to_string()))
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

/// An SSE body: one progress event, then `end` (an error, or nothing: it stays open).
fn sse(fail: bool) -> Response<Body> {
    let first: Result<Frame<Bytes>, BoxError> = Ok(Frame::data(Bytes::from_static(
        b"data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progress\":1}}\n\n",
    )));
    let rest = futures_util::stream::once(async move {
        if fail {
            Err::<Frame<Bytes>, BoxError>("upstream reset the stream".into())
        } else {
            futures_util::future::pending::<()>().await;
            Err("unreachable".into())
        }
    });
    let stream = futures_util::stream::iter([first]).chain(rest);
    let mut r = Response::new(StreamBody::new(stream).boxed_unsync());
    r.headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    r
}

use futures_util::StreamExt;

/// The session id the upstream issues on `initialize`.
const UPSTREAM_SESSION: &str = "upstream-session-4b1f0c1d-7a40-4e1e-9d6c";

/// The upstream: what it answers depends on the tool called.
fn upstream() -> impl Service<Request<Full<Bytes>>, Response = Response<Body>, Error = Infallible>
       + Clone
       + Send
       + Sync
       + 'static {
    service_fn(|req: Request<Full<Bytes>>| async move {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let call: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let id = call["id"].clone();
        let tool = call["params"]["name"].as_str().unwrap_or("").to_owned();
        if call["method"] == "initialize" {
            // A legacy session: the upstream's own id, which SessionAffinity seals.
            let mut r = json(
                StatusCode::OK,
                json!({"jsonrpc":"2.0","id":id,"result":{"protocolVersion":"2025-11-25","capabilities":{},"serverInfo":{"name":"up","version":"0"}}}),
            );
            r.headers_mut()
                .insert("mcp-session-id", UPSTREAM_SESSION.parse().unwrap());
            return Ok(r);
        }
        if tool == "hang" {
            futures_util::future::pending::<()>().await;
        }
        Ok::<_, Infallible>(match tool.as_str() {
            "error" => json(
                StatusCode::OK,
                json!({"jsonrpc":"2.0","id":id,"error":{"code":-32602,"message":"bad arguments"}}),
            ),
            "tool_error" => json(
                StatusCode::OK,
                json!({"jsonrpc":"2.0","id":id,"result":{"content":[],"isError":true}}),
            ),
            "bad_gateway" => json(
                StatusCode::BAD_GATEWAY,
                json!({"jsonrpc":"2.0","id":id,"error":{"code":-32050,"message":"unreachable"}}),
            ),
            "http_500" => {
                let mut r = Response::new(
                    Full::new(Bytes::from_static(b"oops"))
                        .map_err(|e| match e {})
                        .boxed_unsync(),
                );
                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                r
            }
            "html" | "not_json_rpc" => {
                let (ct, body): (&str, &'static [u8]) = if tool == "html" {
                    ("text/html", b"<html><body>502 Bad Gateway</body></html>")
                } else {
                    ("application/json", b"{\"hello\":\"world\"}")
                };
                let mut r = Response::new(
                    Full::new(Bytes::from_static(body))
                        .map_err(|e| match e {})
                        .boxed_unsync(),
                );
                r.headers_mut().insert("content-type", ct.parse().unwrap());
                r
            }
            "broken" => sse(true),
            "slow" | "cut" => sse(false),
            _ => json(
                StatusCode::OK,
                json!({"jsonrpc":"2.0","id":id,"result":{"content":[{"type":"text","text":"hi"}]}}),
            ),
        })
    })
}

struct Rig {
    spans: InMemorySpanExporter,
    telemetry: TraceInjectLayer,
    writer: AuditWriter,
    lines: Arc<Mutex<Vec<u8>>>,
    layer: GovernedLayer<Chain>,
    sessions: SessionAffinityLayer,
}

impl Rig {
    fn new() -> Self {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = {
            let lines = lines.clone();
            sink_fn(move |b: &[u8]| {
                lines.lock().unwrap().extend_from_slice(b);
                Ok(())
            })
        };
        let writer = AuditWriter::spawn(sink, WriterOptions::default()).unwrap();
        let spans = InMemorySpanExporter::default();
        let telemetry = TraceInjectLayer::new().span_processor(
            SimpleSpanProcessor::new(spans.clone()),
            &Resource::builder().with_service_name("outcomes").build(),
        );
        // Tokens: `down` cannot be checked now; any other names its agent (no `admin` scope).
        let verifier = |token: &str| -> Result<Verified, VerifyError> {
            match token {
                "down" => Err(VerifyError::Unavailable(
                    "the authorization server is down".into(),
                )),
                // `SUBJECT@CLIENT`: a subject acting through an agent with its own client id.
                t => Ok(Verified::new(
                    match t.split_once('@') {
                        Some((subject, client)) => {
                            Principal::new(subject.to_owned(), PrincipalKind::Service)
                                .with_client_id(client.to_owned())
                        }
                        None => Principal::new(t.to_owned(), PrincipalKind::Service),
                    }
                    .with_scopes(["mcp"]),
                    None,
                    None,
                )),
            }
        };
        let auth = OAuthGuardLayer::new(verifier, "https://gw.example/mcp/r")
            .upstream("r")
            .permissions(Arc::new(Permissions::new().with(Rule::new(
                None,
                Target::Tool,
                ["secret"],
                ["admin"],
            ))));
        let limits = TokenBucket2DLayer::new(Limits::new().requests_per_minute(3));
        let chain = Chain::new()
            .with(Some(AuditLogLayer::new(writer.clone())))
            .with(Some(telemetry.clone()))
            .with(Some(auth))
            .with(Some(limits));
        Self {
            spans,
            telemetry,
            writer,
            lines,
            layer: GovernedLayer::new(chain),
            sessions: SessionAffinityLayer::new(SessionKey::generate().unwrap()).scope("r"),
        }
    }

    fn service(
        &self,
    ) -> impl Service<
        Request<Full<Bytes>>,
        Response = Response<impl http_body::Body<Data = Bytes, Error = BoxError>>,
        Error = Infallible,
    > {
        let instances = vec![("a", upstream()), ("b", upstream())];
        self.layer.layer(self.sessions.service(instances))
    }
}

fn call(tool: &str, token: Option<&str>, id: u64) -> Request<Full<Bytes>> {
    let body = json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":{}}});
    let mut r = Request::post("/mcp/r")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    if let Some(t) = token {
        r = r.header("authorization", format!("Bearer {t}"));
    }
    r.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

/// How the client treats the answer.
enum Read {
    Whole,
    /// The head, then the body dropped.
    HeadOnly,
    /// The head, then the server cuts the stream at shutdown.
    Cut(Cutoff),
    /// Gone before the head: the response future is dropped.
    NoHead,
}

async fn drive(rig: &Rig, mut req: Request<Full<Bytes>>, read: &Read) {
    if let Read::Cut(c) = read {
        req.extensions_mut()
            .insert(ExchangeContext::new(None, None, Some(c.clone())));
    }
    let fut = rig.service().oneshot(req);
    match read {
        Read::NoHead => {
            let mut fut = Box::pin(fut);
            // Let it reach the upstream (which never answers), then leave.
            for _ in 0..20 {
                assert!((&mut fut).now_or_never().is_none());
                tokio::task::yield_now().await;
            }
            drop(fut);
        }
        Read::Whole => {
            let resp = fut.await.unwrap();
            let _ = resp.into_body().collect().await;
        }
        Read::HeadOnly | Read::Cut(_) => {
            let resp = fut.await.unwrap();
            let mut body = resp.into_body();
            let first = body.frame().await.unwrap().unwrap();
            assert!(first.is_data());
            if let Read::Cut(c) = read {
                c.trigger();
            }
            drop(body);
        }
    }
}

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| match &kv.value {
            Value::String(s) => s.as_str().to_owned(),
            other => other.to_string(),
        })
}

/// `outcome` and `error_type` of the metric series of `tool` (by `gen_ai_tool_name`, or
/// `mcp_method_name="unknown"` for a request that could not be read).
fn metric_labels(telemetry: &TraceInjectLayer, tool: Option<&str>) -> (String, String) {
    let mut out = String::new();
    telemetry.metrics().render_prometheus(&mut out);
    let wanted = match tool {
        Some(t) => format!("gen_ai_tool_name=\"{t}\""),
        None => "mcp_method_name=\"unknown\"".to_owned(),
    };
    let line = out
        .lines()
        .find(|l| l.starts_with("mcp_gateway_requests_total{") && l.contains(&wanted))
        .unwrap_or_else(|| panic!("no series for {wanted} in\n{out}"));
    let label = |name: &str| {
        let start = line.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
        line[start..start + line[start..].find('"').unwrap()].to_owned()
    };
    (label("outcome"), label("error_type"))
}

struct Row {
    what: &'static str,
    req: Request<Full<Bytes>>,
    read: Read,
    outcome: &'static str,
    /// The tool the row calls (None: the request cannot be read).
    tool: Option<&'static str>,
    /// Whether a span is expected (not for a request that cannot be read).
    span: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_spans_and_metrics_agree_on_every_ending() {
    let rig = Rig::new();
    // Budget: three calls a minute per agent; "limited" spends it first.
    for i in 0..3 {
        drive(
            &rig,
            call("warm_up", Some("limited"), 900 + i),
            &Read::Whole,
        )
        .await;
    }
    let mut forged = call("bad_session", Some("agent-s"), 7);
    forged
        .headers_mut()
        .insert("mcp-session-id", "forged-session-id".parse().unwrap());
    let bad_input = Request::post("/mcp/r")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{not json")))
        .unwrap();
    let rows = vec![
        Row {
            what: "answered",
            req: call("ok", Some("agent-1"), 1),
            read: Read::Whole,
            outcome: "ok",
            tool: Some("ok"),
            span: true,
        },
        Row {
            what: "JSON-RPC error",
            req: call("error", Some("agent-2"), 2),
            read: Read::Whole,
            outcome: "error",
            tool: Some("error"),
            span: true,
        },
        Row {
            what: "tool error",
            req: call("tool_error", Some("agent-3"), 3),
            read: Read::Whole,
            outcome: "tool_error",
            tool: Some("tool_error"),
            span: true,
        },
        Row {
            what: "no token",
            req: call("denied_auth", None, 4),
            read: Read::Whole,
            outcome: "denied_auth",
            tool: Some("denied_auth"),
            span: true,
        },
        Row {
            what: "missing scope",
            req: call("secret", Some("agent-5"), 5),
            read: Read::Whole,
            outcome: "denied_permission",
            tool: Some("secret"),
            span: true,
        },
        Row {
            what: "over budget",
            req: call("rate_limited", Some("limited"), 6),
            read: Read::Whole,
            outcome: "rate_limited",
            tool: Some("rate_limited"),
            span: true,
        },
        Row {
            what: "forged session",
            req: forged,
            read: Read::Whole,
            outcome: "bad_session",
            tool: Some("bad_session"),
            span: true,
        },
        Row {
            what: "unreadable body",
            req: bad_input,
            read: Read::Whole,
            outcome: "bad_input",
            tool: None,
            span: false,
        },
        Row {
            what: "verifier down",
            req: call("unavailable", Some("down"), 9),
            read: Read::Whole,
            outcome: "unavailable",
            tool: Some("unavailable"),
            span: true,
        },
        Row {
            what: "502 from the upstream hop",
            req: call("bad_gateway", Some("agent-10"), 10),
            read: Read::Whole,
            outcome: "upstream_error",
            tool: Some("bad_gateway"),
            span: true,
        },
        Row {
            what: "stream broken by the upstream",
            req: call("broken", Some("agent-11"), 11),
            read: Read::Whole,
            outcome: "upstream_error",
            tool: Some("broken"),
            span: true,
        },
        Row {
            what: "200 over an HTML page",
            req: call("html", Some("agent-16"), 16),
            read: Read::Whole,
            outcome: "upstream_error",
            tool: Some("html"),
            span: true,
        },
        Row {
            what: "200 over JSON that is not JSON-RPC",
            req: call("not_json_rpc", Some("agent-17"), 17),
            read: Read::Whole,
            outcome: "upstream_error",
            tool: Some("not_json_rpc"),
            span: true,
        },
        Row {
            what: "500 without JSON-RPC",
            req: call("http_500", Some("agent-12"), 12),
            read: Read::Whole,
            outcome: "http_error",
            tool: Some("http_500"),
            span: true,
        },
        Row {
            what: "client left mid-stream",
            req: call("slow", Some("agent-13"), 13),
            read: Read::HeadOnly,
            outcome: "client_gone",
            tool: Some("slow"),
            span: true,
        },
        Row {
            what: "cut at shutdown",
            req: call("cut", Some("agent-14"), 14),
            read: Read::Cut(Cutoff::new()),
            outcome: "shutdown",
            tool: Some("cut"),
            span: true,
        },
        Row {
            what: "client left before the head",
            req: call("hang", Some("agent-15"), 15),
            read: Read::NoHead,
            outcome: "client_gone",
            tool: Some("hang"),
            span: true,
        },
    ];
    let mut expected = Vec::new();
    for row in rows {
        drive(&rig, row.req, &row.read).await;
        expected.push((row.what, row.outcome, row.tool, row.span));
    }
    rig.writer.flush().await;
    let text = String::from_utf8(rig.lines.lock().unwrap().clone()).unwrap();
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let spans = rig.spans.get_finished_spans().unwrap();
    for (what, outcome, tool, span) in expected {
        // The audit record.
        let record = records
            .iter()
            .find(|r| match tool {
                Some(t) => r["tool"] == t,
                None => r["method"].is_null() && r["outcome"] == "bad_input",
            })
            .unwrap_or_else(|| panic!("{what}: no audit record in\n{text}"));
        assert_eq!(record["outcome"], outcome, "{what}: audit");
        // The metrics.
        let (m_outcome, m_error_type) = metric_labels(&rig.telemetry, tool);
        assert_eq!(m_outcome, outcome, "{what}: metric outcome");
        assert_eq!(
            m_error_type.is_empty(),
            outcome == "ok",
            "{what}: metric error_type"
        );
        // The SERVER span.
        if span {
            let server = spans
                .iter()
                .find(|s| {
                    s.span_kind == SpanKind::Server
                        && attr(s, "gen_ai.tool.name").as_deref() == tool
                })
                .unwrap_or_else(|| panic!("{what}: no span"));
            assert_eq!(
                attr(server, "mcp_gateway.outcome").as_deref(),
                Some(outcome),
                "{what}: span outcome"
            );
            assert_eq!(
                attr(server, "error.type").unwrap_or_default(),
                m_error_type,
                "{what}: span error.type vs metric error_type"
            );
        }
    }
}

/// A legacy request of the session `sid` (`None`: `initialize`, which has none yet).
fn legacy(body: serde_json::Value, token: &str, sid: Option<&str>) -> Request<Full<Bytes>> {
    let mut r = Request::post("/mcp/r")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("authorization", format!("Bearer {token}"));
    if let Some(s) = sid {
        r = r
            .header("mcp-session-id", s)
            .header("mcp-protocol-version", "2025-11-25");
    }
    r.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

/// Issue 22: every layer names the same agent (`Principal::agent_key`, the client id when
/// there is one) and the same session handle — the audit record (with the subject as its own
/// field), the span and the metrics — and no record holds the id the client presents, not
/// even for a call refused before SessionAffinity saw it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_spans_and_metrics_name_one_agent_and_one_session_handle() {
    let rig = Rig::new();
    let token = "team-ci@ci-bot";
    let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"0"}}});
    let resp = rig
        .service()
        .oneshot(legacy(init, token, None))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let sid = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let _ = resp.into_body().collect().await;
    assert_ne!(sid, UPSTREAM_SESSION, "the id is sealed");
    // Two calls fit the budget of three requests a minute; the third is refused by the
    // limits, before SessionAffinity.
    let mut statuses = Vec::new();
    for (i, tool) in ["session_ok_1", "session_ok_2", "session_limited"]
        .into_iter()
        .enumerate()
    {
        let body = json!({"jsonrpc":"2.0","id":i + 1,"method":"tools/call","params":{"name":tool,"arguments":{}}});
        let resp = rig
            .service()
            .oneshot(legacy(body, token, Some(&sid)))
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
        let _ = resp.into_body().collect().await;
    }
    assert_eq!(statuses, [200, 200, 429]);
    rig.writer.flush().await;
    let text = String::from_utf8(rig.lines.lock().unwrap().clone()).unwrap();
    assert!(
        !text.contains(&sid),
        "a presentable id in the audit log:\n{text}"
    );
    assert!(!text.contains(UPSTREAM_SESSION), "{text}");
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 5, "{text}");
    let start = records
        .iter()
        .find(|r| r["event"] == "session_start")
        .unwrap_or_else(|| panic!("no session_start in\n{text}"));
    let handle = start["session"].as_str().unwrap().to_owned();
    assert_eq!(handle.len(), 24, "{text}");
    assert!(handle.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(handle, mcp_gateway_core::session::handle_of(&sid));
    for r in &records {
        assert_eq!(r["session"], handle.as_str(), "{r}");
        assert_eq!(r["agent"], "ci-bot", "{r}");
        assert_eq!(r["subject"], "team-ci", "{r}");
        assert_eq!(r["client_id"], "ci-bot", "{r}");
    }
    let limited = records
        .iter()
        .find(|r| r["tool"] == "session_limited")
        .unwrap();
    assert_eq!(limited["outcome"], "rate_limited");
    assert_eq!(limited["denied_by"], "limits");
    // The spans: the same agent, the same handle, for the refused call too.
    let spans = rig.spans.get_finished_spans().unwrap();
    for tool in ["session_ok_1", "session_ok_2", "session_limited"] {
        let server = spans
            .iter()
            .find(|s| {
                s.span_kind == SpanKind::Server
                    && attr(s, "gen_ai.tool.name").as_deref() == Some(tool)
            })
            .unwrap_or_else(|| panic!("{tool}: no span"));
        assert_eq!(
            attr(server, "mcp.session.id").as_deref(),
            Some(handle.as_str()),
            "{tool}"
        );
        assert_eq!(
            attr(server, "mcp_gateway.agent").as_deref(),
            Some("ci-bot"),
            "{tool}"
        );
    }
    for s in &spans {
        for kv in &s.attributes {
            assert!(!kv.value.to_string().contains(&sid), "{kv:?}");
        }
    }
    // The metrics.
    let mut prom = String::new();
    rig.telemetry.metrics().render_prometheus(&mut prom);
    assert!(prom.contains("agent=\"ci-bot\""), "{prom}");
    assert!(!prom.contains("team-ci"), "{prom}");
}
