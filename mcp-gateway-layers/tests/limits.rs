//! TokenBucket2D used alone over a plain service, on an injected clock: the wire form of
//! admissions and refusals, output tokens counted as JSON and SSE bodies stream, usage reported
//! by the server, what is never charged, and the per-request record.
#![allow(clippy::unwrap_used, missing_docs)]

use bytes::Bytes;
use governor::clock::FakeRelativeClock;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use mcp_gateway_core::exchange::{DenialKind, ExchangeContext};
use mcp_gateway_core::Exchange;
use mcp_gateway_layers::limits::{KeySource, Limits, MemoryStore, Rule, TokenBucket2DLayer};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::{service_fn, Layer, Service, ServiceExt};

type Chunk = Result<http_body::Frame<Bytes>, Infallible>;
type Body = StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Chunk>>>;

/// One answer: content type and body chunks.
type Answer = (&'static str, Vec<String>);

/// The server's answers, in turn.
#[derive(Clone, Default)]
struct Script(Arc<Mutex<Vec<Answer>>>);

impl Script {
    fn push(&self, ct: &'static str, chunks: &[&str]) {
        self.0
            .lock()
            .unwrap()
            .push((ct, chunks.iter().map(|s| (*s).to_owned()).collect()));
    }
}

fn server(
    script: Script,
    calls: Arc<Mutex<u32>>,
) -> impl Service<Request<Full<Bytes>>, Response = Response<Body>, Error = Infallible, Future: Send>
       + Clone
       + Send
       + 'static {
    service_fn(move |_req: Request<Full<Bytes>>| {
        let script = script.clone();
        let calls = calls.clone();
        async move {
            *calls.lock().unwrap() += 1;
            let (ct, chunks) = {
                let mut s = script.0.lock().unwrap();
                if s.is_empty() {
                    (
                        "application/json",
                        vec![r#"{"jsonrpc":"2.0","id":1,"result":{}}"#.to_owned()],
                    )
                } else {
                    s.remove(0)
                }
            };
            let frames: Vec<Chunk> = chunks
                .into_iter()
                .map(|c| Ok(http_body::Frame::data(Bytes::from(c))))
                .collect();
            let mut resp = Response::new(StreamBody::new(futures_util::stream::iter(frames)));
            resp.headers_mut()
                .insert("content-type", ct.parse().unwrap());
            Ok::<_, Infallible>(resp)
        }
    })
}

fn request(agent: &str, body: &str) -> Request<Full<Bytes>> {
    let mut req = Request::post("/mcp")
        .header("content-type", "application/json")
        .header("x-agent-id", agent)
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    req.extensions_mut().insert(ExchangeContext::new(
        Some("10.0.0.1:5000".parse().unwrap()),
        Some("demo".into()),
        None,
    ));
    req
}

fn tool_call(id: u32, name: &str, args: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{name}","arguments":{args}}}}}"#
    )
}

struct Rig {
    clock: FakeRelativeClock,
    layer: TokenBucket2DLayer,
    script: Script,
    calls: Arc<Mutex<u32>>,
}

impl Rig {
    fn new(limits: Limits) -> Self {
        let clock = FakeRelativeClock::default();
        let store = MemoryStore::with_clock(limits.requests_limit(), clock.clone());
        Self {
            clock,
            layer: TokenBucket2DLayer::new(limits).store(store),
            script: Script::default(),
            calls: Arc::default(),
        }
    }

    /// Sends one request and reads the whole response (so its output is charged).
    async fn send(
        &self,
        req: Request<Full<Bytes>>,
    ) -> (StatusCode, http::HeaderMap, String, Exchange) {
        let svc = self
            .layer
            .layer(server(self.script.clone(), self.calls.clone()));
        let resp = svc.oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let x = parts.extensions.get::<Exchange>().unwrap().clone();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&body).into_owned(),
            x,
        )
    }
}

fn limits() -> Limits {
    Limits::new().key(KeySource::Header("x-agent-id".parse().unwrap()))
}

#[tokio::test]
async fn admissions_and_refusals_on_the_wire() {
    let rig = Rig::new(limits().requests_per_minute(3).tokens_per_minute(6000));
    let call = tool_call(7, "echo", r#"{"text":"12345678"}"#); // 19 bytes: 5 tokens
    let (status, h, _, x) = rig.send(request("a", &call)).await;
    assert_eq!(status, 200);
    assert_eq!(
        h["ratelimit-policy"],
        "\"requests\";q=3;w=60, \"tokens\";q=6000;w=60"
    );
    // 2 requests left, full again in 20 s; 6000 - 5 tokens, full again in 50 ms (→ 1 s).
    assert_eq!(
        h["ratelimit"],
        "\"requests\";r=2;t=20, \"tokens\";r=5995;t=1"
    );
    let r = x.snapshot();
    assert_eq!(r.tokens_in, Some(5));
    // The result `{}`: 2 bytes, 1 token.
    assert_eq!(r.tokens_out, Some(1));
    rig.send(request("a", &call)).await;
    rig.send(request("a", &call)).await;
    let (status, h, body, x) = rig.send(request("a", &call)).await;
    assert_eq!(status, 429);
    assert_eq!(h["retry-after"], "20");
    assert!(h["ratelimit"]
        .to_str()
        .unwrap()
        .starts_with("\"requests\";r=0;"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["id"], 7);
    assert_eq!(v["error"]["code"], -32052);
    assert_eq!(v["error"]["data"]["retryAfter"], 20);
    let d = x.snapshot().denial.unwrap();
    assert_eq!(
        (d.by, d.kind, d.status),
        (
            "limits",
            DenialKind::RateLimited,
            StatusCode::TOO_MANY_REQUESTS
        )
    );
    // The refused call never reached the server.
    assert_eq!(*rig.calls.lock().unwrap(), 3);
    // 19.5 s later: 1 s to wait (rounded up); 0.5 s later: admitted.
    rig.clock.advance(Duration::from_millis(19_500));
    assert_eq!(rig.send(request("a", &call)).await.1["retry-after"], "1");
    rig.clock.advance(Duration::from_millis(500));
    assert_eq!(rig.send(request("a", &call)).await.0, 200);
    // Another agent has its own budget.
    assert_eq!(rig.send(request("b", &call)).await.0, 200);
    let costs = rig.layer.costs().snapshot();
    let a = costs.iter().find(|(k, _, _)| &**k == "header:a").unwrap().2;
    assert_eq!((a.admitted, a.refused), (4, 2));
}

#[tokio::test]
async fn sse_output_is_counted_as_it_streams_and_leaves_debt() {
    let rig = Rig::new(limits().tokens_per_minute(600)); // 10 tokens a second
    let big = "x".repeat(4000);
    let event = format!(
        "data: {{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{{\"content\":[{{\"type\":\"text\",\"text\":\"{big}\"}}]}}}}\n\n"
    );
    let progress = "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progress\":1}}\n\n";
    // The event arrives in three chunks, after a progress notification.
    let (a, b) = event.split_at(2000);
    rig.script.push("text/event-stream", &[progress, a, b]);
    let (status, _, _, x) = rig.send(request("a", &tool_call(1, "blob", "{}"))).await;
    assert_eq!(status, 200);
    let out = x.snapshot().tokens_out.unwrap();
    // The result's text: 4000 x plus its JSON wrapping, a quarter of it; notifications not counted.
    assert_eq!(out, 4039_u64.div_ceil(4));
    // 1 input token + 1010 output: 411 tokens of debt at 10 a second.
    let (status, h, _, _) = rig.send(request("a", &tool_call(2, "blob", "{}"))).await;
    assert_eq!(status, 429);
    assert_eq!(h["retry-after"], "42");
    rig.clock.advance(Duration::from_secs(41));
    assert_eq!(
        rig.send(request("a", &tool_call(3, "blob", "{}"))).await.1["retry-after"],
        "1"
    );
    rig.clock.advance(Duration::from_secs(1));
    assert_eq!(
        rig.send(request("a", &tool_call(4, "blob", "{}"))).await.0,
        200
    );
}

#[tokio::test]
async fn usage_reported_by_the_server_wins_over_the_estimate() {
    let rig = Rig::new(limits().tokens_per_minute(1000));
    rig.script.push(
        "application/json",
        &[r#"{"jsonrpc":"2.0","id":1,"result":{"content":[],"_meta":{"usage":{"input_tokens":100,"output_tokens":900}}}}"#],
    );
    let (_, _, _, x) = rig.send(request("a", &tool_call(1, "t", "{}"))).await;
    let r = x.snapshot();
    assert_eq!((r.tokens_in, r.tokens_out), (Some(100), Some(900)));
    // 1000 of 1000 spent: the next call waits for its one input token (60 ms → 1 s).
    let (status, h, _, _) = rig.send(request("a", &tool_call(2, "t", "{}"))).await;
    assert_eq!(status, 429);
    assert_eq!(h["retry-after"], "1");
}

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"0"}}}"#;
const NOTE: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;

#[tokio::test]
async fn initialize_and_notifications_are_bounded_for_an_agent_over_its_budget() {
    // `initialize` is a request (it creates state on the server): it takes the request budget,
    // and once that is spent the agent reaches the server with nothing more.
    let rig = Rig::new(limits().requests_per_minute(2).tokens_per_minute(10));
    assert_eq!(rig.send(request("a", INIT)).await.0, 200);
    // tools/list is a request (charged) but spends no tokens.
    let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
    assert_eq!(rig.send(request("a", list)).await.0, 200);
    let (status, h, _, x) = rig.send(request("a", INIT)).await;
    assert_eq!(status, 429);
    assert!(h.contains_key("retry-after"));
    assert_eq!(x.snapshot().denial.unwrap().kind, DenialKind::RateLimited);
    // Notifications have their own budget, ten times the request budget by default.
    for i in 0..20 {
        assert_eq!(
            rig.send(request("a", NOTE)).await.0,
            200,
            "notification {i}"
        );
    }
    let (status, _, body, _) = rig.send(request("a", NOTE)).await;
    assert_eq!(status, 429);
    assert!(body.contains("\"budget\":\"notifications\""), "{body}");
    // Another key is untouched.
    assert_eq!(rig.send(request("b", INIT)).await.0, 200);
    // A body that is not JSON is refused by the parse step, and never charged.
    let (status, _, _, x) = rig.send(request("c", "nope")).await;
    assert_eq!(status, 400);
    assert_eq!(x.snapshot().denial.unwrap().kind, DenialKind::BadRequest);
}

#[tokio::test]
async fn the_notification_budget_can_be_set_or_lifted() {
    let rig = Rig::new(limits().requests_per_minute(1).notifications_per_minute(3));
    for _ in 0..3 {
        assert_eq!(rig.send(request("a", NOTE)).await.0, 200);
    }
    assert_eq!(rig.send(request("a", NOTE)).await.0, 429);
    // 0: unlimited (the request budget still applies to requests).
    let rig = Rig::new(limits().requests_per_minute(1).notifications_per_minute(0));
    for _ in 0..50 {
        assert_eq!(rig.send(request("a", NOTE)).await.0, 200);
    }
    assert_eq!(rig.send(request("a", INIT)).await.0, 200);
    assert_eq!(rig.send(request("a", INIT)).await.0, 429);
    // Without a request budget, notifications are unlimited unless a budget is set.
    let rig = Rig::new(limits().tokens_per_minute(10));
    for _ in 0..50 {
        assert_eq!(rig.send(request("a", NOTE)).await.0, 200);
    }
}

#[tokio::test]
async fn rules_limit_matching_tools_only() {
    let rig = Rig::new(
        limits()
            .tokens_per_minute(1_000_000)
            .rule(Rule::new(["analyze_*"], 60).upstreams(["demo"])),
    );
    let args = format!(r#"{{"text":"{}"}}"#, "y".repeat(200)); // 55 tokens
    assert_eq!(
        rig.send(request("a", &tool_call(1, "analyze_repo", &args)))
            .await
            .0,
        200
    );
    let (status, _, body, _) = rig
        .send(request("a", &tool_call(2, "analyze_repo", &args)))
        .await;
    assert_eq!(status, 429);
    assert!(body.contains("\"budget\":\"rule 0\""), "{body}");
    // Other tools only use the key's budget.
    assert_eq!(
        rig.send(request("a", &tool_call(3, "echo", &args))).await.0,
        200
    );
}

#[tokio::test]
async fn keyed_by_client_ip_without_a_principal() {
    let rig = Rig::new(Limits::new().requests_per_minute(1));
    let call = tool_call(1, "echo", "{}");
    assert_eq!(rig.send(request("a", &call)).await.0, 200);
    // Same client address, another header: keyed by agent → no principal → IP.
    assert_eq!(rig.send(request("b", &call)).await.0, 429);
    let costs = rig.layer.costs().snapshot();
    assert_eq!(&*costs[0].0, "ip:10.0.0.1");
}
