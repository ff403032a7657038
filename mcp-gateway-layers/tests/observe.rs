//! The response observer through stacked layers: one decode per message however many layers
//! observe, streaming preserved, transformers, and the end-of-stream hook for every ending.
#![allow(clippy::unwrap_used, missing_docs)]

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full, StreamBody};
use mcp_gateway_core::exchange::ExchangeContext;
use mcp_gateway_core::observe::{Cutoff, EndReason, Ending, ObservedMessage, Observer};
use mcp_gateway_core::Exchange;
use mcp_gateway_layers::ObserveLayer;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tower::{service_fn, ServiceBuilder, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Chunk = Result<Frame<Bytes>, BoxError>;

/// What one observer saw.
#[derive(Default)]
struct Seen {
    heads: usize,
    /// (address of the message text, id, method) per message.
    messages: Vec<(usize, Option<String>, Option<String>)>,
    ends: Vec<Ending>,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Seen>>);

impl Observer for Recorder {
    fn on_head(&mut self, _head: &mcp_gateway_core::observe::Head<'_>) {
        self.0.lock().unwrap().heads += 1;
    }
    fn on_message(&mut self, msg: &ObservedMessage<'_>) {
        self.0.lock().unwrap().messages.push((
            msg.text().as_ptr() as usize,
            msg.id().map(|i| i.as_raw().to_owned()),
            msg.method().map(str::to_owned),
        ));
    }
    fn on_end(&mut self, end: &Ending) {
        self.0.lock().unwrap().ends.push(end.clone());
    }
}

/// Removes one tool from a `tools/list` result.
struct DropTool(&'static str);

impl Observer for DropTool {
    fn transforms(&self) -> bool {
        true
    }
    fn transform(&mut self, msg: &ObservedMessage<'_>) -> Option<Bytes> {
        let mut v: serde_json::Value = serde_json::from_slice(msg.text()).ok()?;
        let tools = v.get_mut("result")?.get_mut("tools")?.as_array_mut()?;
        let before = tools.len();
        tools.retain(|t| t["name"] != self.0);
        (tools.len() != before).then(|| Bytes::from(serde_json::to_vec(&v).unwrap()))
    }
}

fn channel_body() -> (
    mpsc::Sender<Chunk>,
    StreamBody<futures_util::stream::BoxStream<'static, Chunk>>,
) {
    let (tx, rx) = mpsc::channel::<Chunk>(16);
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    (tx, StreamBody::new(Box::pin(stream) as _))
}

fn sse_event(data: &str) -> Chunk {
    Ok(Frame::data(Bytes::from(format!("data: {data}\n\n"))))
}

fn with_type<B>(mut resp: Response<B>, ct: &'static str) -> Response<B> {
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    resp
}

/// A `tools/list` call: the observing layers read and classify the request like every
/// governing layer, so it must be MCP.
fn mcp_post() -> Request<Full<Bytes>> {
    Request::post("/mcp")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        )))
        .unwrap()
}

fn recorder_layer(
    r: &Recorder,
) -> ObserveLayer<impl Fn(&http::request::Parts) -> Option<Recorder>> {
    let r = r.clone();
    ObserveLayer::new(move |_: &http::request::Parts| Some(r.clone()))
}

#[tokio::test]
async fn four_observers_share_one_decode_and_the_stream_is_not_held() {
    let recorders: Vec<Recorder> = (0..4).map(|_| Recorder::default()).collect();
    let (tx, body) = channel_body();
    let body = Arc::new(Mutex::new(Some(body)));
    let svc = ServiceBuilder::new()
        .layer(recorder_layer(&recorders[0]))
        .layer(recorder_layer(&recorders[1]))
        .layer(recorder_layer(&recorders[2]))
        .layer(recorder_layer(&recorders[3]))
        .service(service_fn(move |_req: Request<Full<Bytes>>| {
            let body = body.lock().unwrap().take().unwrap();
            async move { Ok::<_, Infallible>(with_type(Response::new(body), "text/event-stream")) }
        }));
    let resp = svc.oneshot(mcp_post()).await.unwrap();
    let mut body = resp.into_body();
    tx.send(sse_event(
        r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}"#,
    ))
    .await
    .unwrap();
    // Event 1 reaches the client while the upstream has sent nothing else.
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(first.starts_with(b"data: {\"jsonrpc\""), "{first:?}");
    let sender = tokio::spawn(async move {
        for i in 2..=1000 {
            let ev = if i == 1000 {
                r#"{"jsonrpc":"2.0","id":7,"result":{"content":[]}}"#.to_owned()
            } else {
                format!(
                    r#"{{"jsonrpc":"2.0","method":"notifications/progress","params":{{"progress":{i}}}}}"#
                )
            };
            tx.send(sse_event(&ev)).await.unwrap();
        }
    });
    let rest = body.collect().await.unwrap().to_bytes();
    sender.await.unwrap();
    assert_eq!(
        bytecount(&first) + bytecount(&rest),
        1000,
        "every event reached the client"
    );
    let seen: Vec<_> = recorders.iter().map(|r| r.0.lock().unwrap()).collect();
    for s in &seen {
        assert_eq!(s.heads, 1);
        assert_eq!(s.messages.len(), 1000);
        assert_eq!(s.ends.len(), 1);
        assert_eq!(s.ends[0].reason, EndReason::Completed);
        assert_eq!(s.ends[0].messages, 1000, "decoded once per event");
    }
    // The four observers were shown the very same decoded text: one decode per event.
    for i in 0..1000 {
        let addr = seen[0].messages[i].0;
        assert!(seen.iter().all(|s| s.messages[i].0 == addr), "event {i}");
    }
    assert_eq!(seen[0].messages[999].1.as_deref(), Some("7"));
    assert_eq!(
        seen[0].messages[0].2.as_deref(),
        Some("notifications/progress")
    );
}

fn bytecount(b: &[u8]) -> usize {
    b.windows(6).filter(|w| w == b"data: ").count()
}

const LIST: &str = r#"{"jsonrpc":"2.0","id":3,"result":{"tools":[{"name":"echo","inputSchema":{"type":"object"}},{"name":"secret","inputSchema":{"type":"object"}}]}}"#;

#[tokio::test]
async fn transformer_filters_a_json_list_and_fixes_content_length() {
    let after = Recorder::default();
    let svc = ServiceBuilder::new()
        .layer(recorder_layer(&after))
        .layer(ObserveLayer::new(|_: &http::request::Parts| {
            Some(DropTool("secret"))
        }))
        .service(service_fn(|_req: Request<Full<Bytes>>| async {
            let mut resp = with_type(
                Response::new(Full::new(Bytes::from_static(LIST.as_bytes()))),
                "application/json",
            );
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(LIST.len()));
            Ok::<_, Infallible>(resp)
        }));
    let resp = svc.oneshot(mcp_post()).await.unwrap();
    let declared: usize = resp.headers()[header::CONTENT_LENGTH]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        declared,
        body.len(),
        "Content-Length matches the filtered body"
    );
    assert!(body.len() < LIST.len());
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let names: Vec<_> = v["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["echo"]);
    assert_eq!(v["id"], 3);
    let seen = after.0.lock().unwrap();
    assert_eq!(seen.messages.len(), 1);
    assert_eq!(seen.ends[0].reason, EndReason::Completed);
    assert_eq!(seen.ends[0].body_bytes, body.len() as u64);
}

#[tokio::test]
async fn transformer_filters_an_sse_list_after_a_progress_notification() {
    let (tx, body) = channel_body();
    let body = Arc::new(Mutex::new(Some(body)));
    let svc = ServiceBuilder::new()
        .layer(ObserveLayer::new(|_: &http::request::Parts| {
            Some(DropTool("secret"))
        }))
        .service(service_fn(move |_req: Request<Full<Bytes>>| {
            let body = body.lock().unwrap().take().unwrap();
            async move { Ok::<_, Infallible>(with_type(Response::new(body), "text/event-stream")) }
        }));
    let resp = svc.oneshot(mcp_post()).await.unwrap();
    assert!(resp.headers().get(header::CONTENT_LENGTH).is_none());
    let mut body = resp.into_body();
    // A priming event, a keep-alive and a progress notification, split across chunks.
    tx.send(Ok(Frame::data(Bytes::from_static(
        b"id: 0\nretry: 500\ndata:\n\n: ping\n\n",
    ))))
    .await
    .unwrap();
    tx.send(Ok(Frame::data(Bytes::from_static(
        b"data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progress\":1}}\n",
    ))))
    .await
    .unwrap();
    tx.send(Ok(Frame::data(Bytes::from_static(b"\n"))))
        .await
        .unwrap();
    let mut early = Vec::new();
    while !String::from_utf8_lossy(&early).contains("notifications/progress") {
        early.extend_from_slice(&body.frame().await.unwrap().unwrap().into_data().unwrap());
    }
    // The notification went out before the list exists: nothing was held back.
    let text = String::from_utf8(early).unwrap();
    assert!(text.contains("id: 0"), "{text}");
    assert!(text.contains(":ping") || text.contains(": ping"), "{text}");
    let (a, b) = LIST.split_at(40);
    tx.send(Ok(Frame::data(Bytes::from(format!("id: 1\ndata: {a}")))))
        .await
        .unwrap();
    tx.send(Ok(Frame::data(Bytes::from(format!("{b}\n\n")))))
        .await
        .unwrap();
    drop(tx);
    let rest = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
    let data = rest.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
    let v: serde_json::Value = serde_json::from_str(data).unwrap();
    assert_eq!(v["result"]["tools"].as_array().unwrap().len(), 1);
    assert_eq!(v["result"]["tools"][0]["name"], "echo");
    assert!(rest.contains("id: 1\n"), "{rest}");
}

/// A service answering with `body` as an SSE stream, with a recorder attached.
async fn observed(
    body: StreamBody<futures_util::stream::BoxStream<'static, Chunk>>,
    rec: &Recorder,
    ctx: Option<ExchangeContext>,
) -> mcp_gateway_layers::ResponseBody<StreamBody<futures_util::stream::BoxStream<'static, Chunk>>> {
    let body = Arc::new(Mutex::new(Some(body)));
    let svc = ServiceBuilder::new()
        .layer(recorder_layer(rec))
        .service(service_fn(move |_req: Request<Full<Bytes>>| {
            let body = body.lock().unwrap().take().unwrap();
            async move { Ok::<_, Infallible>(with_type(Response::new(body), "text/event-stream")) }
        }));
    let mut req = mcp_post();
    if let Some(ctx) = ctx {
        req.extensions_mut().insert(ctx);
    }
    svc.oneshot(req).await.unwrap().into_body()
}

fn ends(rec: &Recorder) -> Vec<EndReason> {
    rec.0
        .lock()
        .unwrap()
        .ends
        .iter()
        .map(|e| e.reason)
        .collect()
}

const NOTE: &str = r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}"#;

#[tokio::test]
async fn end_hook_completed() {
    let rec = Recorder::default();
    let (tx, body) = channel_body();
    let body = observed(body, &rec, None).await;
    tx.send(sse_event(NOTE)).await.unwrap();
    drop(tx);
    body.collect().await.unwrap();
    assert_eq!(ends(&rec), [EndReason::Completed]);
}

#[tokio::test]
async fn end_hook_client_gone() {
    let rec = Recorder::default();
    let (tx, body) = channel_body();
    let mut body = observed(body, &rec, None).await;
    tx.send(sse_event(NOTE)).await.unwrap();
    body.frame().await.unwrap().unwrap();
    assert!(ends(&rec).is_empty(), "not ended while the stream is open");
    drop(body);
    assert_eq!(ends(&rec), [EndReason::ClientGone]);
    // The upstream side finding out later changes nothing.
    drop(tx);
    assert_eq!(ends(&rec).len(), 1);
}

#[tokio::test]
async fn end_hook_upstream_failed_mid_stream() {
    let rec = Recorder::default();
    let (tx, body) = channel_body();
    let mut body = observed(body, &rec, None).await;
    tx.send(sse_event(NOTE)).await.unwrap();
    tx.send(Err("connection reset by upstream".into()))
        .await
        .unwrap();
    body.frame().await.unwrap().unwrap();
    let err = body.frame().await.unwrap().unwrap_err();
    assert!(err.to_string().contains("reset"));
    drop(body);
    let seen = rec.0.lock().unwrap();
    assert_eq!(seen.ends.len(), 1);
    assert_eq!(seen.ends[0].reason, EndReason::UpstreamFailed);
    assert!(seen.ends[0].error.as_deref().unwrap().contains("reset"));
    assert_eq!(seen.ends[0].messages, 1);
}

#[tokio::test]
async fn end_hook_cut_at_shutdown() {
    let rec = Recorder::default();
    let (tx, body) = channel_body();
    let cutoff = Cutoff::new();
    let ctx = ExchangeContext::new(None, Some("demo".into()), Some(cutoff.clone()));
    let mut body = observed(body, &rec, Some(ctx)).await;
    tx.send(sse_event(NOTE)).await.unwrap();
    body.frame().await.unwrap().unwrap();
    cutoff.trigger();
    drop(body);
    assert_eq!(ends(&rec), [EndReason::Shutdown]);
}

#[tokio::test]
async fn end_hook_dropped_unpolled() {
    let rec = Recorder::default();
    let (_tx, body) = channel_body();
    let body = observed(body, &rec, None).await;
    drop(body);
    assert_eq!(ends(&rec), [EndReason::DroppedUnpolled]);
}

#[tokio::test]
async fn empty_202_completes_and_refusals_are_observed_with_the_record() {
    // A 202 with no body still reports completion once its (empty) body is read.
    let rec = Recorder::default();
    let svc = ServiceBuilder::new()
        .layer(recorder_layer(&rec))
        .service(service_fn(|_req: Request<Full<Bytes>>| async {
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = StatusCode::ACCEPTED;
            Ok::<_, Infallible>(resp)
        }));
    let resp = svc.oneshot(mcp_post()).await.unwrap();
    assert!(!resp.body().is_end_stream());
    resp.into_body().collect().await.unwrap();
    assert_eq!(ends(&rec), [EndReason::Completed]);

    // An observer outside ParseMcp sees its refusal, and the record says who refused.
    let rec = Recorder::default();
    let watcher = rec.clone();
    let record: Arc<Mutex<Option<Exchange>>> = Arc::default();
    let keep = record.clone();
    let svc = ServiceBuilder::new()
        .layer(ObserveLayer::new(move |parts: &http::request::Parts| {
            *keep.lock().unwrap() = Exchange::from_extensions(&parts.extensions).cloned();
            Some(watcher.clone())
        }))
        .layer(mcp_gateway_layers::ParseMcpLayer::new())
        .service(service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        }));
    let req = Request::post("/mcp")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(b"{not json")))
        .unwrap();
    let resp = svc.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    resp.into_body().collect().await.unwrap();
    let denial = record
        .lock()
        .unwrap()
        .as_ref()
        .unwrap()
        .snapshot()
        .denial
        .unwrap();
    assert_eq!(denial.by, "parse");
    assert_eq!(denial.status, StatusCode::BAD_REQUEST);
    assert_eq!(ends(&rec), [EndReason::Completed]);
    assert_eq!(
        rec.0.lock().unwrap().messages.len(),
        1,
        "the -32700 answer was observed"
    );
}

/// A server may stop polling a body once it has sent the `Content-Length` it declared (hyper
/// does): the JSON message is still seen, and the exchange still counts as completed.
#[tokio::test]
async fn json_body_dropped_after_its_declared_length_is_observed_and_completed() {
    let rec = Recorder::default();
    let json = r#"{"jsonrpc":"2.0","id":7,"result":{"content":[]}}"#;
    let svc = ServiceBuilder::new()
        .layer(recorder_layer(&rec))
        .service(service_fn(move |_req: Request<Full<Bytes>>| async move {
            let mut resp = with_type(
                Response::new(Full::new(Bytes::from_static(json.as_bytes()))),
                "application/json",
            );
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(json.len()));
            Ok::<_, Infallible>(resp)
        }));
    let req = mcp_post();
    let mut body = svc.oneshot(req).await.unwrap().into_body();
    // Take the one data frame, then drop the body without polling for its end.
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap().len(), json.len());
    drop(body);
    let seen = rec.0.lock().unwrap();
    assert_eq!(seen.messages.len(), 1);
    assert_eq!(seen.messages[0].1.as_deref(), Some("7"));
    drop(seen);
    assert_eq!(ends(&rec), [EndReason::Completed]);
}
