//! TraceInject over a plain service, spans caught by the SDK's in-memory exporter: names,
//! kinds, attributes and parent/child links for the MCP methods, errors, tool errors, a
//! refusal by a layer below, an SSE response whose span ends with the stream, and what the
//! server receives (the CLIENT span's context in `_meta` and the headers, nothing else moved).
#![allow(clippy::unwrap_used, missing_docs)]

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use mcp_gateway_layers::limits::{Limits, TokenBucket2DLayer};
use mcp_gateway_layers::telemetry::{TraceInjectLayer, TraceParent};
use mcp_gateway_layers::BoxError;
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::Value;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SimpleSpanProcessor, SpanData};
use opentelemetry_sdk::Resource;
use serde_json::json;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tower::{service_fn, Layer, Service, ServiceExt};

type Body = UnsyncBoxBody<Bytes, BoxError>;
type Seen = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;
type Stream = Arc<Mutex<Option<mpsc::Receiver<Bytes>>>>;

fn json_body(v: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(v.to_string()))
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

/// A server answering by method and tool name; `stream` answers with the events the test
/// sends through the channel.
fn server(
    seen: Seen,
    stream: Stream,
) -> impl Service<Request<Full<Bytes>>, Response = Response<Body>, Error = BoxError, Future: Send>
       + Clone
       + Send
       + 'static {
    service_fn(move |req: Request<Full<Bytes>>| {
        let seen = seen.clone();
        let stream = stream.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await?.to_bytes();
            // The view the layers below read matches the bytes sent: spans moved right.
            if let Some(view) = mcp_gateway_layers::McpRequest::from_extensions(&parts.extensions) {
                assert_eq!(view.body(), Some(&body));
                assert_eq!(
                    view.parsed(),
                    Some(&mcp_gateway_layers::core::message::classify(&body).unwrap())
                );
            }
            seen.lock().unwrap().push((parts.headers, body.clone()));
            let v: serde_json::Value = serde_json::from_slice(&body)?;
            if v.is_array() || v.get("id").is_none() {
                let mut r = Response::new(
                    Full::new(Bytes::new())
                        .map_err(|e| match e {})
                        .boxed_unsync(),
                );
                *r.status_mut() = StatusCode::ACCEPTED;
                return Ok(r);
            }
            let id = v["id"].clone();
            let method = v["method"].as_str().unwrap_or("");
            let name = v["params"]["name"].as_str().unwrap_or("");
            Ok(match (method, name) {
                ("tools/call", "fail") => json_body(
                    json!({"jsonrpc":"2.0","id":id,"error":{"code":-32602,"message":"bad arguments"}}),
                ),
                ("tools/call", "oops") => json_body(
                    json!({"jsonrpc":"2.0","id":id,"result":{"content":[],"isError":true}}),
                ),
                ("tools/call", "stream") => {
                    let rx = stream.lock().unwrap().take().unwrap();
                    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
                        let b = rx.recv().await?;
                        Some((Ok::<_, BoxError>(http_body::Frame::data(b)), rx))
                    });
                    let mut r = Response::new(StreamBody::new(frames).boxed_unsync());
                    r.headers_mut()
                        .insert("content-type", "text/event-stream".parse().unwrap());
                    r
                }
                ("tools/call", _) => json_body(json!({"jsonrpc":"2.0","id":id,"result":{
                    "content":[{"type":"text","text":"hi"}],
                    "_meta":{"usage":{"inputTokens":3,"outputTokens":7}}}})),
                _ => json_body(json!({"jsonrpc":"2.0","id":id,"result":{}})),
            })
        }
    })
}

struct Rig {
    spans: InMemorySpanExporter,
    seen: Seen,
    stream: Stream,
    layer: TraceInjectLayer,
}

impl Rig {
    fn new() -> Self {
        let spans = InMemorySpanExporter::default();
        let layer = TraceInjectLayer::new().span_processor(
            SimpleSpanProcessor::new(spans.clone()),
            &Resource::builder().with_service_name("gw-test").build(),
        );
        Self {
            spans,
            seen: Seen::default(),
            stream: Stream::default(),
            layer,
        }
    }

    async fn call(&self, body: &str, headers: &[(&str, &str)]) -> (StatusCode, Bytes) {
        let svc = self
            .layer
            .layer(server(self.seen.clone(), self.stream.clone()));
        send(svc, body, headers).await
    }

    fn finished(&self) -> Vec<SpanData> {
        self.spans.get_finished_spans().unwrap()
    }

    /// The (SERVER, CLIENT) spans of the last exchange.
    fn pair(&self) -> (SpanData, Option<SpanData>) {
        let all = self.finished();
        let server = all
            .iter()
            .rev()
            .find(|s| s.span_kind == SpanKind::Server)
            .unwrap()
            .clone();
        let client = all
            .iter()
            .find(|s| {
                s.span_kind == SpanKind::Client && s.parent_span_id == server.span_context.span_id()
            })
            .cloned();
        (server, client)
    }

    fn last_seen(&self) -> (HeaderMap, serde_json::Value) {
        let (h, b) = self.seen.lock().unwrap().last().unwrap().clone();
        (h, serde_json::from_slice(&b).unwrap())
    }
}

async fn send<S, RB>(svc: S, body: &str, headers: &[(&str, &str)]) -> (StatusCode, Bytes)
where
    S: Service<Request<Full<Bytes>>, Response = Response<RB>>,
    S::Error: std::fmt::Debug,
    RB: http_body::Body<Data = Bytes>,
    RB::Error: std::fmt::Debug,
{
    let mut req = Request::post("/mcp")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let resp = svc.oneshot(req).await.unwrap();
    let status = resp.status();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

fn attr(span: &SpanData, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.clone())
}

fn s(v: &str) -> Option<Value> {
    Some(Value::from(v.to_owned()))
}

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test]
async fn tools_call_continues_the_callers_trace_and_hands_the_client_span_to_the_server() {
    let rig = Rig::new();
    let call = format!(
        r#"{{"jsonrpc":"2.0","id":"a-1","method":"tools/call","params":{{"name":"echo","arguments":{{"x":1}},"_meta":{{"progressToken":5,"traceparent":"{PARENT}","tracestate":"v=1","baggage":"user=bob"}}}}}}"#
    );
    let (status, _) = rig.call(&call, &[]).await;
    assert_eq!(status, 200);
    let (server, client) = rig.pair();
    let client = client.expect("a CLIENT span for the hop");

    assert_eq!(server.name, "tools/call echo");
    assert_eq!(client.name, "tools/call echo");
    assert_eq!(server.span_kind, SpanKind::Server);
    // The caller's trace continues: same trace id, the caller's span is the parent.
    assert_eq!(
        server.span_context.trace_id().to_string(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(server.parent_span_id.to_string(), "00f067aa0ba902b7");
    assert!(server.parent_span_is_remote);
    assert_eq!(
        client.span_context.trace_id(),
        server.span_context.trace_id()
    );
    assert_eq!(client.parent_span_id, server.span_context.span_id());
    assert!(server.links.is_empty());
    assert!(client.start_time >= server.start_time && client.end_time <= server.end_time);

    for (k, v) in [
        ("mcp.method.name", s("tools/call")),
        ("gen_ai.tool.name", s("echo")),
        ("gen_ai.operation.name", s("execute_tool")),
        ("jsonrpc.request.id", s("a-1")),
        ("network.transport", s("tcp")),
        ("network.protocol.name", s("http")),
        ("mcp_gateway.agent", s("anonymous")),
        ("mcp_gateway.outcome", s("ok")),
        ("gen_ai.usage.input_tokens", Some(Value::I64(3))),
        ("gen_ai.usage.output_tokens", Some(Value::I64(7))),
        ("http.response.status_code", Some(Value::I64(200))),
    ] {
        assert_eq!(attr(&server, k), v, "{k}");
    }
    assert_eq!(attr(&server, "error.type"), None);
    assert_eq!(server.status, Status::Unset);

    // The server got the CLIENT span's context in `_meta` and in the headers; its other
    // `_meta` keys and the arguments are untouched.
    let (headers, body) = rig.last_seen();
    let expected = format!(
        "00-{}-{}-01",
        client.span_context.trace_id(),
        client.span_context.span_id()
    );
    assert_eq!(body["params"]["_meta"]["traceparent"], expected.as_str());
    assert_eq!(body["params"]["_meta"]["tracestate"], "v=1");
    assert_eq!(body["params"]["_meta"]["baggage"], "user=bob");
    assert_eq!(body["params"]["_meta"]["progressToken"], 5);
    assert_eq!(body["params"]["arguments"], json!({"x":1}));
    assert_eq!(headers["traceparent"], expected.as_str());
    assert_eq!(headers["tracestate"], "v=1");
    assert_eq!(headers["baggage"], "user=bob");
    let sent_len: usize = headers["content-length"].to_str().unwrap().parse().unwrap();
    let raw = rig.seen.lock().unwrap().last().unwrap().1.clone();
    assert_eq!(sent_len, raw.len());

    // The metrics counted it by tool and agent.
    assert_eq!(rig.layer.metrics().count("tools/call", "anonymous"), 1);
}

#[tokio::test]
async fn every_byte_outside_the_trace_keys_keeps_its_place() {
    let rig = Rig::new();
    // Odd spacing and key order, unicode, an existing (stale) traceparent to replace.
    let call = r#"{ "params" : { "_meta" : { "z" : [1, 2], "traceparent" : "00-11111111111111111111111111111111-2222222222222222-00" }, "name" : "echo", "arguments" : {"t":"é\n"} }, "method":"tools/call", "id" : 9, "jsonrpc":"2.0" }"#;
    rig.call(call, &[]).await;
    let raw = rig.seen.lock().unwrap().last().unwrap().1.clone();
    let raw = std::str::from_utf8(&raw).unwrap();
    let (_, body) = rig.last_seen();
    let sent =
        TraceParent::parse(body["params"]["_meta"]["traceparent"].as_str().unwrap()).unwrap();
    let tp = format!("00-11111111111111111111111111111111-{}-00", sent.span_id);
    // Unsampled caller: the trace continues unsampled, but the context still goes on.
    let expected = call.replace(
        "00-11111111111111111111111111111111-2222222222222222-00",
        &tp,
    );
    assert_eq!(raw, expected);
}

#[tokio::test]
async fn unsampled_caller_means_no_spans_but_context_and_metrics() {
    let rig = Rig::new();
    let call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","_meta":{"traceparent":"00-11111111111111111111111111111111-2222222222222222-00"}}}"#;
    rig.call(call, &[]).await;
    assert!(rig.finished().is_empty());
    let (headers, body) = rig.last_seen();
    let tp = TraceParent::parse(body["params"]["_meta"]["traceparent"].as_str().unwrap()).unwrap();
    assert!(!tp.is_sampled());
    assert_eq!(tp.trace_id.to_string(), "11111111111111111111111111111111");
    assert_ne!(tp.span_id.to_string(), "2222222222222222");
    assert_eq!(
        headers["traceparent"],
        body["params"]["_meta"]["traceparent"].as_str().unwrap()
    );
    assert_eq!(rig.layer.metrics().count("tools/call", "anonymous"), 1);
}

#[tokio::test]
async fn http_context_is_the_parent_without_meta_and_a_link_when_it_differs() {
    let rig = Rig::new();
    let other = "00-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-bbbbbbbbbbbbbbbb-01";
    // HTTP only: the HTTP context is the parent.
    let call =
        r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///a.txt"}}"#;
    rig.call(call, &[("traceparent", other)]).await;
    let (server, client) = rig.pair();
    assert_eq!(server.name, "resources/read");
    assert_eq!(
        server.span_context.trace_id().to_string(),
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
    );
    assert_eq!(server.parent_span_id.to_string(), "bbbbbbbbbbbbbbbb");
    assert_eq!(attr(&server, "mcp.resource.uri"), s("file:///a.txt"));
    assert!(client.is_some());

    // Both, different: `_meta` is the parent, HTTP a link.
    rig.spans.reset();
    let call = format!(
        r#"{{"jsonrpc":"2.0","id":2,"method":"prompts/get","params":{{"name":"greet","_meta":{{"traceparent":"{PARENT}"}}}}}}"#
    );
    rig.call(&call, &[("traceparent", other)]).await;
    let (server, _) = rig.pair();
    assert_eq!(server.name, "prompts/get greet");
    assert_eq!(attr(&server, "gen_ai.prompt.name"), s("greet"));
    assert_eq!(server.parent_span_id.to_string(), "00f067aa0ba902b7");
    assert_eq!(server.links.len(), 1);
    assert_eq!(
        server.links[0].span_context.span_id().to_string(),
        "bbbbbbbbbbbbbbbb"
    );

    // Neither: a new root trace.
    rig.spans.reset();
    rig.call(r#"{"jsonrpc":"2.0","id":3,"method":"tools/list"}"#, &[])
        .await;
    let (server, client) = rig.pair();
    assert_eq!(server.name, "tools/list");
    assert_eq!(server.parent_span_id.to_string(), "0000000000000000");
    assert!(!server.parent_span_is_remote);
    let (_, body) = rig.last_seen();
    let tp = TraceParent::parse(body["params"]["_meta"]["traceparent"].as_str().unwrap()).unwrap();
    assert_eq!(tp.span_id, client.unwrap().span_context.span_id());
}

#[tokio::test]
async fn jsonrpc_errors_and_tool_errors_set_error_type() {
    let rig = Rig::new();
    rig.call(
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"fail"}}"#,
        &[],
    )
    .await;
    let (server, client) = rig.pair();
    assert_eq!(attr(&server, "error.type"), s("-32602"));
    assert_eq!(attr(&server, "rpc.response.status_code"), s("-32602"));
    assert_eq!(attr(&server, "mcp_gateway.outcome"), s("error"));
    assert!(matches!(server.status, Status::Error { .. }));
    assert_eq!(attr(&client.unwrap(), "error.type"), s("-32602"));

    rig.call(
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"oops"}}"#,
        &[],
    )
    .await;
    let (server, _) = rig.pair();
    assert_eq!(server.name, "tools/call oops");
    assert_eq!(attr(&server, "error.type"), s("tool_error"));
    assert_eq!(attr(&server, "mcp_gateway.outcome"), s("tool_error"));
    assert!(matches!(server.status, Status::Error { .. }));

    let mut prom = String::new();
    rig.layer.metrics().render_prometheus(&mut prom);
    assert!(prom.contains(r#"mcp_gateway_requests_total{mcp_method_name="tools/call",gen_ai_tool_name="fail",agent="anonymous",route="",outcome="error",error_type="-32602"} 1"#), "{prom}");
    assert!(prom.contains(r#"gen_ai_tool_name="oops",agent="anonymous",route="",outcome="tool_error",error_type="tool_error"} 1"#), "{prom}");
}

#[tokio::test]
async fn a_refusal_below_is_a_server_span_with_error_type_and_no_hop() {
    let rig = Rig::new();
    // Keyed by a header: no server here provides a client address.
    let limits = TokenBucket2DLayer::new(
        Limits::new()
            .key("header:x-agent".parse().unwrap())
            .requests_per_minute(1),
    );
    let svc = rig
        .layer
        .layer(limits.layer(server(rig.seen.clone(), rig.stream.clone())));
    let call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#;
    let (status, _) = send(svc.clone(), call, &[("x-agent", "a")]).await;
    assert_eq!(status, 200);
    let (status, _) = send(svc, call, &[("x-agent", "a")]).await;
    assert_eq!(status, 429);
    assert_eq!(
        rig.seen.lock().unwrap().len(),
        1,
        "the refused call never reached the server"
    );
    let (server, client) = rig.pair();
    assert!(
        client.is_none(),
        "no CLIENT span for a call that never left"
    );
    assert_eq!(attr(&server, "error.type"), s("-32052"));
    assert_eq!(attr(&server, "mcp_gateway.outcome"), s("rate_limited"));
    assert_eq!(attr(&server, "mcp_gateway.denied_by"), s("limits"));
    assert_eq!(
        attr(&server, "http.response.status_code"),
        Some(Value::I64(429))
    );
    assert!(matches!(server.status, Status::Error { .. }));
    assert_eq!(rig.finished().len(), 3, "SERVER+CLIENT, then SERVER alone");
}

#[tokio::test]
async fn an_sse_response_span_ends_when_the_stream_ends() {
    let rig = Rig::new();
    let (tx, rx) = mpsc::channel(4);
    *rig.stream.lock().unwrap() = Some(rx);
    let svc = rig
        .layer
        .layer(server(rig.seen.clone(), rig.stream.clone()));
    let req = Request::post("/mcp")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"stream"}}"#,
        )))
        .unwrap();
    let resp = svc.oneshot(req).await.unwrap();
    let mut body = resp.into_body();
    tx.send(Bytes::from_static(
        b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progress\":1}}\n\n",
    ))
    .await
    .unwrap();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.data_ref().is_some());
    assert!(
        rig.finished().is_empty(),
        "the span is still open mid-stream"
    );
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    tx.send(Bytes::from_static(
        b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":4,\"result\":{\"content\":[]}}\n\n",
    ))
    .await
    .unwrap();
    drop(tx);
    while let Some(f) = body.frame().await {
        f.unwrap();
    }
    let (server, client) = rig.pair();
    let client = client.unwrap();
    assert_eq!(server.name, "tools/call stream");
    let lasted = server.end_time.duration_since(server.start_time).unwrap();
    assert!(lasted >= std::time::Duration::from_millis(50), "{lasted:?}");
    assert_eq!(attr(&server, "mcp_gateway.outcome"), s("ok"));
    assert_eq!(client.end_time, server.end_time);
}

#[tokio::test]
async fn notifications_and_batches_carry_the_context_responses_pass_untouched() {
    let rig = Rig::new();
    rig.call(
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        &[("mcp-protocol-version", "2025-03-26")],
    )
    .await;
    let (server, client) = rig.pair();
    assert_eq!(server.name, "notifications/initialized");
    let (_, body) = rig.last_seen();
    let tp = TraceParent::parse(body["params"]["_meta"]["traceparent"].as_str().unwrap()).unwrap();
    assert_eq!(tp.span_id, client.unwrap().span_context.span_id());

    // A 2025-03-26 batch: every request and notification gets the context, the response
    // (to a server's request) is left alone.
    let batch = r#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":"s1","result":{}},{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}]"#;
    rig.call(batch, &[("mcp-protocol-version", "2025-03-26")])
        .await;
    let (server, _) = rig.pair();
    assert_eq!(server.name, "tools/list");
    assert_eq!(attr(&server, "mcp_gateway.batch.size"), Some(Value::I64(3)));
    let (_, body) = rig.last_seen();
    let tp0 = body[0]["params"]["_meta"]["traceparent"].as_str().unwrap();
    let tp2 = body[2]["params"]["_meta"]["traceparent"].as_str().unwrap();
    assert_eq!(tp0, tp2);
    assert_eq!(body[1], json!({"jsonrpc":"2.0","id":"s1","result":{}}));
    assert_eq!(body[2]["params"]["progressToken"], 1);

    // Only responses: passed byte for byte, no span.
    rig.spans.reset();
    let only = r#"{"jsonrpc":"2.0","id":"s2","result":{}}"#;
    rig.call(only, &[]).await;
    assert!(rig.finished().is_empty());
    let raw = rig.seen.lock().unwrap().last().unwrap().1.clone();
    assert_eq!(&raw[..], only.as_bytes());
}

#[tokio::test]
async fn sample_ratio_zero_records_no_new_trace_but_follows_a_sampled_parent() {
    let spans = InMemorySpanExporter::default();
    let layer = TraceInjectLayer::new()
        .span_processor(
            SimpleSpanProcessor::new(spans.clone()),
            &Resource::builder().build(),
        )
        .sample_ratio(0.0);
    let seen = Seen::default();
    let svc = layer.layer(server(seen.clone(), Stream::default()));
    send(
        svc.clone(),
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        &[],
    )
    .await;
    assert!(spans.get_finished_spans().unwrap().is_empty());
    let body: serde_json::Value =
        serde_json::from_slice(&seen.lock().unwrap().last().unwrap().1).unwrap();
    assert!(body["params"]["_meta"]["traceparent"]
        .as_str()
        .unwrap()
        .ends_with("-00"));
    let call = format!(
        r#"{{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{{"_meta":{{"traceparent":"{PARENT}"}}}}}}"#
    );
    send(svc, &call, &[]).await;
    assert_eq!(spans.get_finished_spans().unwrap().len(), 2);
}
