//! `[telemetry]` and `[admin]` end to end: a real rmcp server behind the gateway receives the
//! CLIENT span's context in `_meta`; spans reach an OTLP/HTTP endpoint and are decoded from
//! protobuf with the `opentelemetry-proto` types; `/metrics` on the admin listener shows the
//! histogram per tool and agent and every metric the Grafana dashboard queries; without
//! `[telemetry]` an agent's own `_meta` passes untouched.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use bytes::Bytes;
use common::{client, gateway, mcp_post, TestBody};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use mcp_gateway_examples::demo_server::{self, DemoOptions};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use rmcp::model::{CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use sha2::Digest;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One exported span, flattened from the protobuf.
#[derive(Clone, Debug)]
struct Got {
    service: String,
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent: String,
    attrs: HashMap<String, String>,
    links: usize,
    status_code: i32,
}

type Spans = Arc<Mutex<Vec<Got>>>;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn value(v: &opentelemetry_proto::tonic::common::v1::AnyValue) -> String {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// An OTLP/HTTP endpoint: takes `POST /v1/traces` (protobuf), decodes every span.
async fn otlp_receiver() -> (SocketAddr, Spans, Arc<Mutex<Vec<String>>>) {
    let spans = Spans::default();
    let content_types = Arc::new(Mutex::new(Vec::new()));
    let (s, ct) = (spans.clone(), content_types.clone());
    let addr = common::raw_upstream(move |req| {
        let spans = s.clone();
        let ct = ct.clone();
        async move {
            assert_eq!(req.uri().path(), "/v1/traces");
            ct.lock().unwrap().push(
                req.headers()
                    .get("content-type")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default(),
            );
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let export = ExportTraceServiceRequest::decode(body).unwrap();
            for rs in export.resource_spans {
                let service = rs
                    .resource
                    .as_ref()
                    .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                    .and_then(|a| a.value.as_ref())
                    .map(value)
                    .unwrap_or_default();
                for ss in rs.scope_spans {
                    for sp in ss.spans {
                        spans.lock().unwrap().push(Got {
                            service: service.clone(),
                            name: sp.name.clone(),
                            kind: sp.kind,
                            trace_id: hex(&sp.trace_id),
                            span_id: hex(&sp.span_id),
                            parent: hex(&sp.parent_span_id),
                            attrs: sp
                                .attributes
                                .iter()
                                .map(|a| {
                                    (
                                        a.key.clone(),
                                        a.value.as_ref().map(value).unwrap_or_default(),
                                    )
                                })
                                .collect(),
                            links: sp.links.len(),
                            status_code: sp.status.as_ref().map_or(0, |s| s.code),
                        });
                    }
                }
            }
            let mut r = Response::new(
                Full::new(Bytes::new())
                    .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { match e {} })
                    .boxed(),
            );
            r.headers_mut()
                .insert("content-type", "application/x-protobuf".parse().unwrap());
            let r: Response<TestBody> = r;
            r
        }
    })
    .await;
    (addr, spans, content_types)
}

/// Waits (bounded) until `pred` holds for the spans received.
async fn wait_for(spans: &Spans, what: &str, pred: impl Fn(&[Got]) -> bool) -> Vec<Got> {
    for _ in 0..200 {
        {
            let s = spans.lock().unwrap();
            if pred(&s) {
                return s.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not received; got {:#?}", spans.lock().unwrap());
}

async fn rmcp_client(url: &str) -> rmcp::service::RunningService<rmcp::RoleClient, ClientConfig> {
    let info = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("telemetry-test", "0"),
    );
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(url.to_owned()),
    );
    rmcp::ServiceExt::serve(info, transport).await.unwrap()
}

fn tool_text(r: &rmcp::model::CallToolResult) -> String {
    r.content
        .first()
        .and_then(|c| c.as_text())
        .map(|t| t.text.clone())
        .unwrap()
}

/// The rmcp demo server without sessions, answering JSON.
async fn stateless_demo() -> SocketAddr {
    demo_server::spawn(
        "127.0.0.1:0".parse().unwrap(),
        DemoOptions {
            stateless: true,
            json_response: true,
        },
    )
    .await
    .unwrap()
}

/// An `echo` tools/call with id `i`, as a stateless 2025-06-18 client sends it.
async fn echo_call(c: &reqwest::Client, url: &str, i: u32) -> reqwest::Response {
    mcp_post(
        c,
        url,
        &format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"x"}}}}}}"#),
    )
    .header("mcp-protocol-version", "2025-06-18")
    .send()
    .await
    .unwrap()
}

/// Calls the demo's `trace_context` tool with `body` (a `tools/call`); returns the trace keys
/// the server saw in its `_meta`.
async fn trace_context_seen(url: &str, body: &str, headers: &[(&str, &str)]) -> serde_json::Value {
    let mut req = mcp_post(&client(), url, body).header("mcp-protocol-version", "2025-06-18");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let answer: serde_json::Value = resp.json().await.unwrap();
    serde_json::from_str(answer["result"]["content"][0]["text"].as_str().unwrap()).unwrap()
}

/// Settings from `text`, the public listener on a free port.
fn settings(text: &str) -> mcp_gateway::config::Settings {
    let text = format!("[server]\nlisten = \"127.0.0.1:0\"\n{text}");
    mcp_gateway::config::parse(&text, "test.toml", Path::new(".")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmcp_server_receives_the_client_span_and_spans_reach_the_otlp_endpoint() {
    let (otlp, spans, content_types) = otlp_receiver().await;
    let up = demo_server::spawn("127.0.0.1:0".parse().unwrap(), DemoOptions::default())
        .await
        .unwrap();
    let gw = gateway(settings(&format!(
        r#"
[upstreams.demo]
url = "http://{up}/mcp"
[telemetry]
otlp_endpoint = "http://{otlp}"
service_name = "gw-under-test"
sample_ratio = 1.0
[admin]
listen = "127.0.0.1:0"
"#
    )))
    .await;
    let url = format!("http://{}/mcp/demo", gw.local_addr());

    // The official Rust SDK on both sides, legacy session.
    let c = rmcp_client(&url).await;
    let seen = tool_text(
        &c.call_tool(CallToolRequestParams::new("trace_context"))
            .await
            .unwrap(),
    );
    let seen: serde_json::Value = serde_json::from_str(&seen).unwrap();
    let tp = seen["traceparent"]
        .as_str()
        .expect("the server got a traceparent")
        .to_owned();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    let (trace_id, parent_id) = (parts[1].to_owned(), parts[2].to_owned());
    assert_eq!(parts[3], "01", "sampled at ratio 1.0");

    let got = wait_for(&spans, "the tools/call span pair", |s| {
        s.iter().any(|g| g.span_id == parent_id)
            && s.iter()
                .any(|g| g.kind == SpanKind::Server as i32 && g.name == "tools/call trace_context")
    })
    .await;
    let client_span = got.iter().find(|g| g.span_id == parent_id).unwrap();
    let server_span = got
        .iter()
        .find(|g| g.kind == SpanKind::Server as i32 && g.name == "tools/call trace_context")
        .unwrap();
    // What the server received is exactly the gateway's CLIENT span.
    assert_eq!(client_span.kind, SpanKind::Client as i32);
    assert_eq!(client_span.trace_id, trace_id);
    assert_eq!(client_span.name, "tools/call trace_context");
    assert_eq!(client_span.parent, server_span.span_id);
    assert_eq!(server_span.trace_id, trace_id);
    assert_eq!(
        server_span.parent, "",
        "a root span: the client sent no context"
    );
    assert_eq!(server_span.service, "gw-under-test");
    for (k, v) in [
        ("mcp.method.name", "tools/call"),
        ("gen_ai.tool.name", "trace_context"),
        ("gen_ai.operation.name", "execute_tool"),
        ("mcp.protocol.version", "2025-11-25"),
        ("network.transport", "tcp"),
        ("mcp_gateway.agent", "anonymous"),
        ("mcp_gateway.route", "demo"),
        ("mcp_gateway.outcome", "ok"),
    ] {
        assert_eq!(server_span.attrs.get(k).map(String::as_str), Some(v), "{k}");
    }
    assert!(
        server_span.attrs.contains_key("mcp.session.id"),
        "legacy session named"
    );
    assert!(server_span.attrs.contains_key("jsonrpc.request.id"));
    assert!(server_span.attrs.contains_key("client.address"));
    // initialize and notifications/initialized were traced too.
    wait_for(&spans, "initialize", |s| {
        s.iter().any(|g| g.name == "initialize")
    })
    .await;
    assert!(content_types
        .lock()
        .unwrap()
        .iter()
        .all(|ct| ct == "application/x-protobuf"));

    // A JSON-RPC error: error.type and an error status, exported.
    let err = c
        .call_tool(CallToolRequestParams::new("no_such_tool"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("-32602"), "{err}");
    let got = wait_for(&spans, "the failed call", |s| {
        s.iter()
            .any(|g| g.kind == SpanKind::Server as i32 && g.name == "tools/call no_such_tool")
    })
    .await;
    let failed = got
        .iter()
        .find(|g| g.kind == SpanKind::Server as i32 && g.name == "tools/call no_such_tool")
        .unwrap();
    assert!(failed.attrs.contains_key("error.type"), "{failed:?}");
    assert_eq!(failed.status_code, 2, "STATUS_CODE_ERROR");
    c.cancel().await.unwrap();
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_trace_is_continued_and_a_different_http_context_is_linked() {
    let (otlp, spans, _) = otlp_receiver().await;
    let up = stateless_demo().await;
    let gw = gateway(settings(&format!(
        r#"
[upstreams.demo]
url = "http://{up}/mcp"
[telemetry]
otlp_endpoint = "http://{otlp}/v1/traces"
"#
    )))
    .await;
    let url = format!("http://{}/mcp/demo", gw.local_addr());
    let agent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"trace_context","arguments":{{}},"_meta":{{"traceparent":"{agent}","tracestate":"vendor=1","baggage":"tenant=acme","app.example/keep":true}}}}}}"#
    );
    let seen = trace_context_seen(
        &url,
        &body,
        &[(
            "traceparent",
            "00-11111111111111111111111111111111-2222222222222222-01",
        )],
    )
    .await;
    let tp = seen["traceparent"].as_str().unwrap();
    assert!(
        tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{tp}"
    );
    assert!(
        !tp.contains("b7ad6b7169203331"),
        "the hop has its own span id"
    );
    assert_eq!(seen["tracestate"], "vendor=1");
    assert_eq!(seen["baggage"], "tenant=acme");
    let hop = tp.split('-').nth(2).unwrap().to_owned();

    let got = wait_for(&spans, "the continued trace", |s| {
        s.iter().any(|g| g.span_id == hop) && s.iter().any(|g| g.kind == SpanKind::Server as i32)
    })
    .await;
    let server = got
        .iter()
        .find(|g| g.kind == SpanKind::Server as i32)
        .unwrap();
    assert_eq!(server.trace_id, "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(
        server.parent, "b7ad6b7169203331",
        "the agent's span is the parent"
    );
    assert_eq!(server.links, 1, "the different HTTP context is a link");
    let hop_span = got.iter().find(|g| g.span_id == hop).unwrap();
    assert_eq!(hop_span.parent, server.span_id);
    gw.shutdown().await;
}

/// The metric names a PromQL expression uses: identifiers starting `mcp_` followed by a
/// selector (`{`) or a range (`[`); label names are followed by `=`, `,` or `)`.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let start_ok = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        if start_ok && expr[i..].starts_with("mcp_") {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(expr.len(), |n| i + n);
            if matches!(b.get(end), Some(b'{' | b'[')) {
                out.push(expr[i..end].to_owned());
            }
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                if k == "expr" {
                    out.push(x.as_str().unwrap().to_owned());
                } else {
                    exprs(x, out);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_on_the_admin_listener_cover_every_dashboard_query() {
    let up = demo_server::spawn("127.0.0.1:0".parse().unwrap(), DemoOptions::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    std::fs::write(
        &keys,
        format!(
            "[[keys]]\nsha256 = \"{}\"\nagent = \"alice\"\nscopes = [\"mcp:tools\"]\n",
            sha2::Sha256::digest(b"alice-key-0123456789")
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mcp-gateway"))
        .args(["keygen", "--out"])
        .arg(dir.path().join("session.key"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // Every layer on, so the dashboard's audit, limits and sessions panels have their series.
    let gw = gateway(settings(&format!(
        r#"
[upstreams.demo]
url = "http://{up}/mcp"
[auth]
scopes = ["mcp:tools"]
api_keys_file = "{keys}"
[limits]
requests_per_minute = 1000
tokens_per_minute = 1000000
[audit]
path = "{log}"
[sessions]
key_file = "{key}"
[telemetry]
[admin]
listen = "127.0.0.1:0"
"#,
        keys = keys.display(),
        log = dir.path().join("audit.jsonl").display(),
        key = dir.path().join("session.key").display(),
    )))
    .await;
    let url = format!("http://{}/mcp/demo", gw.local_addr());
    let admin = gw.admin_addr().unwrap();

    let mut config = StreamableHttpClientTransportConfig::with_uri(url.clone());
    config.custom_headers.insert(
        "authorization".parse().unwrap(),
        "Bearer alice-key-0123456789".parse().unwrap(),
    );
    let info = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("telemetry-test", "0"),
    );
    let c = rmcp::ServiceExt::serve(info, StreamableHttpClientTransport::from_config(config))
        .await
        .unwrap();
    for _ in 0..3 {
        let mut args = serde_json::Map::new();
        args.insert("text".into(), "hello".into());
        c.call_tool(CallToolRequestParams::new("echo").with_arguments(args))
            .await
            .unwrap();
    }
    // A refusal: no token.
    let resp = mcp_post(
        &client(),
        &url,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 401);
    c.cancel().await.unwrap();

    let http = client();
    let scrape = http
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(scrape.status(), 200);
    assert!(scrape.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = scrape.text().await.unwrap();
    let echo = r#"mcp_method_name="tools/call",gen_ai_tool_name="echo",agent="alice",route="demo",outcome="ok",error_type="""#;
    assert!(
        text.contains(&format!(
            "mcp_server_operation_duration_seconds_count{{{echo}}} 3\n"
        )),
        "{text}"
    );
    assert!(text.contains(&format!(
        "mcp_server_operation_duration_seconds_bucket{{{echo},le=\"+Inf\"}} 3\n"
    )));
    assert!(text.contains(
        r#"mcp_gateway_requests_total{mcp_method_name="tools/call",gen_ai_tool_name="echo",agent="anonymous",route="demo",outcome="denied_auth",error_type="-32055"} 1"#
    ), "{text}");
    assert!(text.contains(r#"mcp_gateway_tokens_total{mcp_method_name="tools/call",gen_ai_tool_name="echo",agent="alice",route="demo",direction="input"}"#));

    // Every metric the Grafana dashboard queries is in the scrape.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../docs/grafana/mcp-gateway-dashboard.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    assert!(all.len() >= 10, "the dashboard's queries were found");
    let mut names: Vec<String> = all.iter().flat_map(|e| metric_names(e)).collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 6, "{names:?}");
    for name in &names {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))),
            "the dashboard queries {name}, which /metrics does not show"
        );
    }

    // Health on the admin listener; /metrics is not on the public one.
    for path in ["healthz", "readyz"] {
        let r = http
            .get(format!("http://{admin}/{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let public = http
        .get(format!("http://{}/metrics", gw.local_addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), StatusCode::NOT_FOUND);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_telemetry_the_agents_meta_passes_untouched() {
    let up = stateless_demo().await;
    let gw = gateway(common::settings(&[format!("demo=http://{up}/mcp")])).await;
    let url = format!("http://{}/mcp/demo", gw.local_addr());
    let agent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"trace_context","arguments":{{}},"_meta":{{"traceparent":"{agent}","baggage":"k=v"}}}}}}"#
    );
    let seen = trace_context_seen(&url, &body, &[]).await;
    assert_eq!(
        seen,
        serde_json::json!({"traceparent": agent, "baggage": "k=v"})
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_collector_never_holds_a_call_up() {
    // A collector that accepts, reads and never answers: every export hangs until its timeout.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = hole.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = hole.accept().await {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while tokio::io::AsyncReadExt::read(&mut s, &mut buf)
                    .await
                    .is_ok_and(|n| n > 0)
                {}
            }));
        }
    });
    let up = stateless_demo().await;
    let gw = gateway(settings(&format!(
        r#"
[upstreams.demo]
url = "http://{up}/mcp"
[telemetry]
otlp_endpoint = "http://{dead}"
export_timeout = "10s"
"#
    )))
    .await;
    let url = format!("http://{}/mcp/demo", gw.local_addr());
    let c = client();
    // Calls spread over about 2 s, so exports (every 500 ms) hang while calls are served.
    for i in 0..40 {
        let started = std::time::Instant::now();
        let resp = echo_call(&c, &url, i).await;
        assert_eq!(resp.status(), 200);
        // A call that waited for the hung export would take the 10 s export timeout.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "call {i} waited {:?}: span export held it up",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        accepted.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "the gateway tried to export to the hung collector"
    );
    gw.shutdown().await;
}

#[test]
fn telemetry_and_admin_config_errors_name_their_place() {
    let bad = [
        (
            "[upstreams.a]\nurl = \"http://x/mcp\"\n[telemetry]\nsample_ratio = 1.5\n",
            "test.toml:4:16: telemetry.sample_ratio must be between 0.0 and 1.0, not 1.5",
        ),
        (
            "[upstreams.a]\nurl = \"http://x/mcp\"\n[telemetry]\notlp_endpoint = \"grpc://x:4317\"\n",
            "test.toml:4:17: telemetry.otlp_endpoint: \"grpc://x:4317\" is not an http:// or https:// URL",
        ),
        (
            "[server]\nlisten = \"127.0.0.1:9000\"\n[upstreams.a]\nurl = \"http://x/mcp\"\n[admin]\nlisten = \"127.0.0.1:9000\"\n",
            "test.toml:6:10: admin.listen 127.0.0.1:9000 is the public listener's address; give the admin listener its own",
        ),
        (
            "[upstreams.a]\nurl = \"http://x/mcp\"\n[telemetry]\nexporter = \"otlp\"\n",
            "unknown field `exporter`",
        ),
    ];
    for (text, want) in bad {
        let errs = mcp_gateway::config::parse(text, "test.toml", Path::new(".")).unwrap_err();
        let all: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert!(
            all.iter().any(|e| e.contains(want)),
            "{all:?} should contain {want}"
        );
    }
    let ok = settings(
        "[upstreams.a]\nurl = \"http://x/mcp\"\n[telemetry]\notlp_endpoint = \"https://collector:4318/\"\nheaders = { Authorization = \"Basic abc\" }\n",
    );
    let t = ok.telemetry.unwrap();
    assert_eq!(
        t.traces_url.as_deref(),
        Some("https://collector:4318/v1/traces")
    );
    assert_eq!(t.service_name, "mcp-gateway");
    assert_eq!(
        t.headers,
        vec![("Authorization".to_owned(), "Basic abc".to_owned())]
    );
}

/// One export as a collector received it.
struct Received {
    headers: http::HeaderMap,
    export: ExportTraceServiceRequest,
}

/// A collector answering each export with the next of `statuses` (the last one repeated),
/// keeping what it received.
async fn collector(statuses: Vec<u16>) -> (SocketAddr, Arc<Mutex<Vec<Received>>>) {
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let g = got.clone();
    let addr = common::raw_upstream(move |req| {
        let got = g.clone();
        let statuses = statuses.clone();
        async move {
            let headers = req.headers().clone();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let export = ExportTraceServiceRequest::decode(body).unwrap();
            let n = {
                let mut got = got.lock().unwrap();
                got.push(Received { headers, export });
                got.len()
            };
            let status = statuses[(n - 1).min(statuses.len() - 1)];
            let mut r = Response::new(
                Full::new(Bytes::from_static(b"no"))
                    .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { match e {} })
                    .boxed(),
            );
            *r.status_mut() = StatusCode::from_u16(status).unwrap();
            let r: Response<TestBody> = r;
            r
        }
    })
    .await;
    (addr, got)
}

/// A finished span, as the batch processor hands it to the exporter.
fn span_data(name: &'static str) -> opentelemetry_sdk::trace::SpanData {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    opentelemetry_sdk::trace::SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes([1; 16]),
            SpanId::from_bytes([2; 8]),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        ),
        parent_span_id: SpanId::INVALID,
        parent_span_is_remote: false,
        span_kind: opentelemetry::trace::SpanKind::Server,
        name: name.into(),
        start_time: std::time::SystemTime::now(),
        end_time: std::time::SystemTime::now(),
        attributes: vec![opentelemetry::KeyValue::new(
            "mcp.method.name",
            "tools/call",
        )],
        dropped_attributes_count: 0,
        events: Default::default(),
        links: Default::default(),
        status: opentelemetry::trace::Status::Unset,
        instrumentation_scope: opentelemetry::InstrumentationScope::builder("test").build(),
    }
}

fn exporter(url: &str, timeout: Duration) -> mcp_gateway_layers::telemetry::otlp::OtlpHttpExporter {
    mcp_gateway_layers::telemetry::otlp::OtlpHttpExporter::new(
        url,
        &[("X-Tenant".to_owned(), "acme".to_owned())],
        timeout,
        tokio::runtime::Handle::current(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_the_collector_refuses_fails_with_its_status() {
    use opentelemetry_sdk::trace::SpanExporter;
    for status in [400, 500] {
        let (addr, got) = collector(vec![status]).await;
        let url = format!("http://{addr}/v1/traces");
        let e = exporter(&url, Duration::from_secs(5));
        let err = e.export(vec![span_data("refused")]).await.unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&format!("HTTP {status}")), "{msg}");
        assert!(msg.contains(&url), "{msg}");
        assert_eq!(got.lock().unwrap().len(), 1, "{status} is not retried");
        let got = got.lock().unwrap();
        let h = &got[0].headers;
        assert_eq!(h["content-type"], "application/x-protobuf");
        assert_eq!(h["x-tenant"], "acme");
        let spans = &got[0].export.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans[0].name, "refused");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_collector_is_retried_and_a_closed_port_fails() {
    use opentelemetry_sdk::trace::SpanExporter;
    let (addr, got) = collector(vec![503, 502, 200]).await;
    let e = exporter(&format!("http://{addr}/v1/traces"), Duration::from_secs(5));
    e.export(vec![span_data("retried")]).await.unwrap();
    assert_eq!(got.lock().unwrap().len(), 3, "503 and 502 retried");
    assert!(got
        .lock()
        .unwrap()
        .iter()
        .all(|r| r.export.resource_spans[0].scope_spans[0].spans[0].name == "retried"));

    // Nothing listening: a transport error once the retries run out of time.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let e = exporter(
        &format!("http://127.0.0.1:{port}/v1/traces"),
        Duration::from_millis(500),
    );
    let started = std::time::Instant::now();
    let err = e.export(vec![span_data("lost")]).await.unwrap_err();
    assert!(err.to_string().contains("OTLP export to"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "bounded by the timeout"
    );
    e.shutdown().unwrap();
    assert!(
        e.export(vec![span_data("late")]).await.is_err(),
        "after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_collector_leaves_calls_alone_and_gets_the_configured_headers() {
    let (otlp, got) = collector(vec![500]).await;
    let up = stateless_demo().await;
    let gw = gateway(settings(&format!(
        r#"
[upstreams.demo]
url = "http://{up}/mcp"
[telemetry]
otlp_endpoint = "http://{otlp}"
service_name = "gw-headers"
headers = {{ Authorization = "Basic abc", X-Tenant = "acme" }}
"#
    )))
    .await;
    let url = format!("http://{}/mcp/demo", gw.local_addr());
    let c = client();
    for i in 0..20 {
        let resp = echo_call(&c, &url, i).await;
        assert_eq!(resp.status(), 200, "call {i}");
        let answer: serde_json::Value = resp.json().await.unwrap();
        assert!(answer["result"].is_object(), "call {i}: {answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..100 {
        if got.lock().unwrap().len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = std::mem::take(&mut *got.lock().unwrap());
    assert!(got.len() >= 2, "exports kept coming after a failed one");
    for r in got.iter() {
        assert_eq!(r.headers["authorization"], "Basic abc");
        assert_eq!(r.headers["x-tenant"], "acme");
        assert_eq!(r.headers["content-type"], "application/x-protobuf");
        let resource = r.export.resource_spans[0].resource.as_ref().unwrap();
        let attr = |k: &str| {
            resource
                .attributes
                .iter()
                .find(|a| a.key == k)
                .and_then(|a| a.value.as_ref())
                .map(value)
        };
        assert_eq!(attr("service.name").as_deref(), Some("gw-headers"));
        assert_eq!(
            attr("service.version").as_deref(),
            Some(env!("CARGO_PKG_VERSION"))
        );
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_through_a_virtual_server_is_spanned_with_its_upstream_and_both_names() {
    let (otlp, spans, _) = otlp_receiver().await;
    let up = stateless_demo().await;
    let gw = gateway(settings(&format!(
        r#"
[upstreams.demo]
url = "http://{up}/mcp"
[virtual.all]
upstreams = ["demo"]
[telemetry]
otlp_endpoint = "http://{otlp}/v1/traces"
"#
    )))
    .await;
    let url = format!("http://{}/mcp/all", gw.local_addr());
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"demo__echo","arguments":{"text":"x"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#;
    let resp = common::client()
        .post(&url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "demo__echo")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().contains("\"x\""));
    let got = wait_for(&spans, "the call's span", |s| {
        s.iter()
            .any(|g| g.kind == SpanKind::Server as i32 && g.name == "tools/call echo")
    })
    .await;
    let span = got
        .iter()
        .find(|g| g.kind == SpanKind::Server as i32 && g.name == "tools/call echo")
        .unwrap();
    assert_eq!(span.attrs["gen_ai.tool.name"], "echo", "{span:?}");
    assert_eq!(span.attrs["mcp_gateway.route"], "demo");
    assert_eq!(span.attrs["mcp_gateway.virtual.server"], "all");
    assert_eq!(span.attrs["mcp_gateway.virtual.name"], "demo__echo");
    gw.shutdown().await;
}
