//! Wire-level checks of the gateway: exact statuses, headers and bodies of legacy session
//! traffic, 2026-07-28 requests, SSE streaming and every error path.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use http::{Response, StatusCode};
use mcp_gateway_examples::demo_server::DemoOptions;
use serde_json::json;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"wire","version":"0"}}}"#;

fn modern_call(id: u32, tool: &str, args: serde_json::Value) -> String {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":args,"_meta":{
        "io.modelcontextprotocol/protocolVersion":"2026-07-28",
        "io.modelcontextprotocol/clientInfo":{"name":"wire","version":"0"},
        "io.modelcontextprotocol/clientCapabilities":{}}}})
    .to_string()
}

fn modern_post(
    c: &reqwest::Client,
    url: &str,
    body: &str,
    method: &str,
    name: Option<&str>,
) -> reqwest::RequestBuilder {
    let mut b = mcp_post(c, url, body)
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", method);
    if let Some(n) = name {
        b = b.header("mcp-name", n);
    }
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_session_on_the_wire() {
    let (gw, url) = gateway_for_demo(DemoOptions::default()).await;
    let c = client();
    let resp = mcp_post(&c, &url, INIT).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(resp.headers()["x-accel-buffering"], "no");
    let sid = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let msgs = sse_messages(&resp.bytes().await.unwrap());
    assert_eq!(
        msgs.last().unwrap()["result"]["protocolVersion"],
        "2025-11-25"
    );

    let with_session = |b: reqwest::RequestBuilder| {
        b.header("mcp-session-id", &sid)
            .header("mcp-protocol-version", "2025-11-25")
    };
    // Notification → 202, no body.
    let resp = with_session(mcp_post(
        &c,
        &url,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    ))
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert!(resp.bytes().await.unwrap().is_empty());

    // tools/call → SSE with the result.
    let resp = with_session(mcp_post(&c, &url, r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"text":"wire"}}}"#))
        .send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let msgs = sse_messages(&resp.bytes().await.unwrap());
    let result = msgs.iter().find(|m| m["id"] == 2).unwrap();
    assert_eq!(result["result"]["content"][0]["text"], "wire");

    // GET opens the server→client stream.
    let get = with_session(c.get(&url).header("accept", "text/event-stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200);
    assert!(get.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    drop(get);

    // DELETE ends the session; the session is then unknown (404), as the client must learn.
    let del = with_session(c.delete(&url)).send().await.unwrap();
    assert!(del.status().is_success(), "{}", del.status());
    let after = with_session(mcp_post(
        &c,
        &url,
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/list"}"#,
    ))
    .send()
    .await
    .unwrap();
    assert_eq!(after.status(), 404);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_responses_pass_through() {
    let (gw, url) = gateway_for_demo(DemoOptions {
        stateless: true,
        json_response: true,
    })
    .await;
    let c = client();
    // Legacy, stateless server: initialize answered with application/json.
    let resp = mcp_post(&c, &url, INIT).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let v = resp.json_value().await;
    assert_eq!(v["id"], 1);
    // Legacy tools/call (no session: the server runs stateless) answered with application/json.
    let resp = mcp_post(
        &c,
        &url,
        r#"{"jsonrpc":"2.0","id":"j1","method":"tools/call","params":{"name":"echo","arguments":{"text":"legacy-json"}}}"#,
    )
    .header("mcp-protocol-version", "2025-11-25")
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let v = resp.json_value().await;
    assert_eq!(v["id"], "j1");
    assert_eq!(v["result"]["content"][0]["text"], "legacy-json");
    // 2026-07-28 sessionless tools/call answered with application/json.
    let resp = modern_post(
        &c,
        &url,
        &modern_call(9, "echo", json!({"text": "j"})),
        "tools/call",
        Some("echo"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let v = resp.json_value().await;
    assert_eq!(v["id"], 9);
    assert_eq!(v["result"]["content"][0]["text"], "j");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modern_header_mismatch_is_refused_before_the_upstream() {
    let (gw, url) = gateway_for_demo(DemoOptions::default()).await;
    let c = client();
    let body = modern_call(5, "echo", json!({"text": "x"}));
    let resp = modern_post(&c, &url, &body, "tools/call", Some("not-echo"))
        .send()
        .await
        .unwrap();
    assert_error(resp, 400, -32020, json!(5)).await;
    let resp = modern_post(&c, &url, &body, "tools/list", Some("echo"))
        .send()
        .await
        .unwrap();
    assert_error(resp, 400, -32020, json!(5)).await;
    let resp = mcp_post(&c, &url, &body)
        .header("mcp-method", "tools/call")
        .header("mcp-name", "echo")
        .send()
        .await
        .unwrap();
    assert_error(resp, 400, -32020, json!(5)).await;
    // A 2026-07-28 header on a request whose _meta has no protocol version: -32602, as the
    // protocol has servers answer (SEP-2575), keeping the id.
    let resp = modern_post(
        &c,
        &url,
        r#"{"jsonrpc":"2.0","id":101,"method":"server/discover","params":{}}"#,
        "server/discover",
        None,
    )
    .send()
    .await
    .unwrap();
    assert_error(resp, 400, -32602, json!(101)).await;
    // Base64-encoded Mcp-Name is decoded before comparing.
    let resp = modern_post(&c, &url, &body, "tools/call", Some("=?base64?ZWNobw==?="))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_paths() {
    let (gw, url) = gateway_for_demo(DemoOptions::default()).await;
    let base = format!("http://{}", gw.local_addr());
    let c = client();
    // Malformed JSON → 400 / -32700.
    assert_error(
        mcp_post(&c, &url, "{\"jsonrpc\":").send().await.unwrap(),
        400,
        -32700,
        json!(null),
    )
    .await;
    // JSON but not JSON-RPC → 400 / -32600, keeping nothing it cannot read.
    assert_error(
        mcp_post(&c, &url, "[]").send().await.unwrap(),
        400,
        -32600,
        json!(null),
    )
    .await;
    assert_error(
        mcp_post(&c, &url, r#"{"jsonrpc":"1.0","id":4,"method":"x"}"#)
            .send()
            .await
            .unwrap(),
        400,
        -32600,
        json!(null),
    )
    .await;
    // A key the gateway acts on, sent twice → 400 / -32600 (no parser-disagreement smuggling).
    let resp = mcp_post(
        &c,
        &url,
        r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"echo","name":"slow_count"}}"#,
    )
    .send()
    .await
    .unwrap();
    assert_error(resp, 400, -32600, json!(null)).await;
    // A batch outside 2025-03-26 → 400 / -32600.
    let resp = mcp_post(&c, &url, r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert_error(resp, 400, -32600, json!(null)).await;
    // Oversized body → 413, both with Content-Length and streamed without it.
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"{}"}}}}}}"#,
        "a".repeat(5 << 20)
    );
    let v = assert_error(
        mcp_post(&c, &url, &big).send().await.unwrap(),
        413,
        -32600,
        json!(null),
    )
    .await;
    assert_eq!(v["error"]["data"]["limit"], 4 << 20);
    let chunks: Vec<Result<Bytes, std::io::Error>> = (0..6)
        .map(|_| Ok(Bytes::from(vec![b' '; 1 << 20])))
        .collect();
    let resp = c
        .post(&url)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_error(resp, 413, -32600, json!(null)).await;
    // Wrong media type → 415; wrong method → 405 with Allow.
    let resp = c
        .post(&url)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_error(resp, 415, -32600, json!(null)).await;
    let resp = c.put(&url).body("{}").send().await.unwrap();
    assert_eq!(resp.headers()["allow"], "GET, POST, DELETE");
    assert_error(resp, 405, -32600, json!(null)).await;
    // Unknown route → 404 / -32053.
    assert_error(
        mcp_post(&c, &format!("{base}/mcp/nope"), INIT)
            .send()
            .await
            .unwrap(),
        404,
        -32053,
        json!(null),
    )
    .await;
    assert_error(
        c.get(format!("{base}/")).send().await.unwrap(),
        404,
        -32053,
        json!(null),
    )
    .await;
    // Foreign browser origin → 403; localhost origin passes.
    let resp = mcp_post(&c, &url, INIT)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_error(resp, 403, -32052, json!(null)).await;
    let resp = mcp_post(&c, &url, INIT)
        .header("origin", "http://localhost:6274")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Forged session id → the upstream's 404, passed through.
    let resp = mcp_post(
        &c,
        &url,
        r#"{"jsonrpc":"2.0","id":8,"method":"tools/list"}"#,
    )
    .header("mcp-session-id", "forged-session")
    .header("mcp-protocol-version", "2025-11-25")
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 404);
    // Health endpoints.
    assert_eq!(
        c.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_and_slow_upstreams() {
    // Dead: a port with nothing listening.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    // Slow: accepts and never answers.
    let slow = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow_addr = slow.local_addr().unwrap();
    let (hold_tx, hold_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut held = Vec::new();
        let accept = async {
            loop {
                if let Ok((s, _)) = slow.accept().await {
                    held.push(s);
                }
            }
        };
        tokio::select! { () = accept => {}, _ = hold_rx => {} }
    });
    let mut s = settings(&[
        format!("dead=http://{dead_addr}/mcp"),
        format!("slow=http://{slow_addr}/mcp"),
    ]);
    s.upstreams[1].response_timeout = Duration::from_millis(300);
    let gw = gateway(s).await;
    let c = client();
    let body = r#"{"jsonrpc":"2.0","id":"call-7","method":"tools/list"}"#;
    let resp = mcp_post(&c, &format!("http://{}/mcp/dead", gw.local_addr()), body)
        .send()
        .await
        .unwrap();
    assert_error(resp, 502, -32050, json!("call-7")).await;
    let resp = mcp_post(&c, &format!("http://{}/mcp/slow", gw.local_addr()), body)
        .send()
        .await
        .unwrap();
    assert_error(resp, 504, -32051, json!("call-7")).await;
    let _ = hold_tx.send(());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_forwarded_and_withheld() {
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<http::HeaderMap>();
    let up = raw_upstream(move |req| {
        let seen_tx = seen_tx.clone();
        async move {
            let _ = seen_tx.send(req.headers().clone());
            Response::builder()
                .header("content-type", "application/json")
                .header("connection", "x-upstream-private")
                .header("x-upstream-private", "1")
                .header("mcp-session-id", "s-1")
                .body(full(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#))
                .unwrap()
        }
    })
    .await;
    let gw = gateway(settings(&[format!("raw=http://{up}/mcp")])).await;
    let url = format!("http://{}/mcp/raw", gw.local_addr());
    let resp = client()
        .post(&url)
        .header("content-type", "application/json")
        .header("authorization", "Bearer client-secret")
        .header("proxy-authorization", "Basic x")
        .header("mcp-param-region", "eu-west")
        .header("mcp-session-id", "s-1")
        .header("connection", "x-hop")
        .header("x-hop", "1")
        .header("x-custom", "kept")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["mcp-session-id"], "s-1");
    assert!(resp.headers().get("x-upstream-private").is_none());
    let seen = seen_rx.recv().await.unwrap();
    assert!(
        seen.get("authorization").is_none(),
        "token passed through: {seen:?}"
    );
    assert!(seen.get("proxy-authorization").is_none());
    assert!(seen.get("x-hop").is_none());
    assert_eq!(seen["mcp-param-region"], "eu-west");
    assert_eq!(seen["mcp-session-id"], "s-1");
    assert_eq!(seen["x-custom"], "kept");
    assert_eq!(seen["host"], up.to_string());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_arrive_one_by_one() {
    // The upstream sends the first event, then waits until the test has seen it through the
    // gateway before sending the other 999: a buffering gateway would deadlock here.
    let (release_tx, release_rx) = mpsc::unbounded_channel::<()>();
    let release_rx = std::sync::Arc::new(tokio::sync::Mutex::new(release_rx));
    let up = sse_upstream(move |tx| {
        let release_rx = release_rx.clone();
        async move {
            let event = |i: usize| {
                Ok(http_body::Frame::data(Bytes::from(format!(
                    "id: {i}\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{{\"progressToken\":1,\"progress\":{i}}}}}\n\n"
                ))))
            };
            let _ = tx.send(event(0)).await;
            let _ = release_rx.lock().await.recv().await;
            for i in 1..1000 {
                if tx.send(event(i)).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let (gw, resp) = call_through(up).await;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut dec = mcp_gateway_core::sse::SseDecoder::new(1 << 16);
    let mut ids = Vec::new();
    let mut released = false;
    let read = async {
        while let Some(chunk) = stream.next().await {
            dec.feed(&chunk.unwrap(), &mut |item| {
                if let mcp_gateway_core::sse::SseItem::Event(e) = item {
                    ids.push(e.id.unwrap().parse::<usize>().unwrap());
                }
            })
            .unwrap();
            if !released && !ids.is_empty() {
                // The first event came through while the upstream still held the rest.
                assert_eq!(ids, [0]);
                released = true;
                release_tx.send(()).unwrap();
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("stream stalled: buffered?");
    assert_eq!(ids, (0..1000).collect::<Vec<_>>());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_cancels_the_upstream_stream() {
    // Closing the response stream is cancellation in 2026-07-28: the upstream must see it.
    let (closed_tx, mut closed_rx) = mpsc::unbounded_channel::<()>();
    let up = sse_upstream(move |tx| {
        let closed_tx = closed_tx.clone();
        async move {
            let _ = tx
                .send(Ok(http_body::Frame::data(Bytes::from_static(
                    b": open\n\n",
                ))))
                .await;
            tx.closed().await;
            let _ = closed_tx.send(());
        }
    })
    .await;
    let (gw, resp) = call_through(up).await;
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(&first[..], b": open\n\n");
    drop(stream);
    tokio::time::timeout(Duration::from_secs(10), closed_rx.recv())
        .await
        .expect("upstream stream was not closed after the client left");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_breaking_mid_stream_is_not_reported_as_complete() {
    let up = sse_upstream(|tx| async move {
        let _ = tx
            .send(Ok(http_body::Frame::data(Bytes::from_static(
                b"data: {\"jsonrpc\":\"2.0\",\"method\":\"n\"}\n\n",
            ))))
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = tx.send(Err("upstream died".into())).await;
    })
    .await;
    let (gw, resp) = call_through(up).await;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    let mut ended_with_error = false;
    while let Some(chunk) = stream.next().await {
        if chunk.is_err() {
            ended_with_error = true;
            break;
        }
    }
    assert!(
        ended_with_error,
        "a broken upstream stream looked complete to the client"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_name_the_client() {
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<http::HeaderMap>();
    let up = raw_upstream(move |req| {
        let seen_tx = seen_tx.clone();
        async move {
            let _ = seen_tx.send(req.headers().clone());
            Response::builder().status(202).body(full("")).unwrap()
        }
    })
    .await;
    let gw = gateway(settings(&[format!("raw=http://{up}/mcp")])).await;
    let url = format!("http://{}/mcp/raw", gw.local_addr());
    let resp = mcp_post(
        &client(),
        &url,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    )
    .header("x-forwarded-for", "203.0.113.9")
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 202);
    let seen = seen_rx.recv().await.unwrap();
    assert_eq!(seen["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], gw.local_addr().to_string());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(
                        Response::builder()
                            .header("content-type", "application/json")
                            .body(full(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let gw = gateway(settings(&[format!("raw=http://{up}/mcp")])).await;
    let url = format!("http://{}/mcp/raw", gw.local_addr());
    let c = client();
    for _ in 0..50 {
        let resp = mcp_post(&c, &url, r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.bytes().await.unwrap().len(), 36);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "sequential calls should share one upstream connection"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_idle_connections_loses_no_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Answers one request per connection as keep-alive, then closes: the gateway's pooled
    // connection is dead by the next call, which must still succeed.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                loop {
                    let Ok(n) = stream.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    if let Some(head_end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if got.len() >= head_end + 4 + len {
                            break;
                        }
                    }
                }
                let body = r#"{"jsonrpc":"2.0","id":1,"result":{}}"#;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(resp.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    let gw = gateway(settings(&[format!("raw=http://{up}/mcp")])).await;
    let url = format!("http://{}/mcp/raw", gw.local_addr());
    let c = client();
    for i in 0..30 {
        let resp = mcp_post(&c, &url, r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "call {i}");
        // Give the close a moment to land half the time, to hit both orders of events.
        if i % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn per_core_workers_serve_and_drain() {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = calls.clone();
    let up = raw_upstream(move |_req| {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async {
            Response::builder()
                .header("content-type", "application/json")
                .body(full(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#))
                .unwrap()
        }
    })
    .await;
    let gw = mcp_gateway::Gateway::bind_per_core(settings(&[format!("raw=http://{up}/mcp")]), 2)
        .await
        .unwrap();
    let url = format!("http://{}/mcp/raw", gw.local_addr());
    // Separate connections, so that both workers get some.
    for _ in 0..20 {
        let resp = mcp_post(
            &client(),
            &url,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
        )
        .send()
        .await
        .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.bytes().await.unwrap().len(), 36);
    }
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 20);
    // Refusals are the same on every worker.
    let resp = mcp_post(&client(), &url, "{not json").send().await.unwrap();
    assert_eq!(resp.status(), 400);
    tokio::time::timeout(Duration::from_secs(10), gw.shutdown())
        .await
        .expect("every worker drains");
}

/// A client that sends half a request head, or nothing, is cut at `header_read_timeout`; one
/// that completes its head in time is served, and its connection stays open for the next.
#[tokio::test]
async fn slow_and_idle_clients_are_cut_at_the_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = raw_upstream(|_req| async {
        Response::builder()
            .header("content-type", "application/json")
            .body(full(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#))
            .unwrap()
    })
    .await;
    let mut s = settings(&[format!("raw=http://{up}/mcp")]);
    s.header_read_timeout = Duration::from_secs(1);
    let gw = gateway(s).await;
    let addr = gw.local_addr();
    // How long until the gateway closes a connection that got `sent` and nothing more.
    let closed_after = |sent: &'static [u8]| async move {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(sent).await.unwrap();
        let started = std::time::Instant::now();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "still open after 10 s");
        (started.elapsed(), buf)
    };
    let (half, answer) = closed_after(b"POST /mcp/raw HTTP/1.1\r\nHost: gw\r\nContent-Ty").await;
    // One second, checked in quarter-second steps.
    assert!(half >= Duration::from_millis(700), "{half:?}");
    assert!(half < Duration::from_millis(2500), "{half:?}");
    // No response was started for a head that never came (hyper may answer 408).
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    let (idle, _) = closed_after(b"").await;
    assert!(idle >= Duration::from_millis(700), "{idle:?}");
    assert!(idle < Duration::from_millis(2500), "{idle:?}");
    // A head sent in time is served, and the connection is kept for the next request.
    let c = client();
    let url = format!("http://{addr}/mcp/raw");
    for _ in 0..2 {
        let resp = mcp_post(&c, &url, r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    gw.shutdown().await;
}

/// An upstream that answers every request with `reply` (a head and part of a body) and then
/// sends nothing more, holding the connection open: no MCP server stalls on demand. The
/// receiver hears of each connection the gateway closes.
async fn stalling_upstream(
    reply: &'static [u8],
) -> (std::net::SocketAddr, mpsc::UnboundedReceiver<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed_tx, closed_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(reply).await;
                // Silence, until the gateway closes the connection.
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                let _ = closed_tx.send(());
            });
        }
    });
    (addr, closed_rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_stalling_mid_body_fails_the_answer_at_read_timeout() {
    // 200 with Content-Length 200, 22 bytes, then silence: before read_timeout, the client's
    // answer stayed open for as long as the upstream kept the connection.
    let (up, mut closed) = stalling_upstream(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n\
          {\"jsonrpc\":\"2.0\",\"id\":",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.stall]\nurl = \"http://{up}/mcp\"\n\
         read_timeout = \"500ms\"\n[audit]\npath = \"{}\"\n",
        log.display()
    );
    let s = mcp_gateway::config::parse(&text, "test.toml", std::path::Path::new(".")).unwrap();
    let gw = gateway(s).await;
    let url = format!("http://{}/mcp/stall", gw.local_addr());
    let started = std::time::Instant::now();
    let resp = mcp_post(
        &client(),
        &url,
        r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"t"}}"#,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(10), resp.bytes())
        .await
        .expect("the client's answer hung on a stalled upstream");
    assert!(body.is_err(), "a cut answer looked complete: {body:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The upstream connection, in the middle of a body, is closed rather than pooled.
    tokio::time::timeout(Duration::from_secs(10), closed.recv())
        .await
        .expect("the stalled upstream connection was kept open");
    // The exchange is recorded, as an upstream error.
    let mut record = None;
    for _ in 0..100 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        record = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|r| r["tool"] == "t");
        if record.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let record = record.expect("no audit record of the stalled exchange");
    assert_eq!(record["outcome"], "upstream_error", "{record}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_end_after_sse_idle_timeout_and_not_while_events_flow() {
    let event = |i: usize| -> FrameResult {
        Ok(http_body::Frame::data(Bytes::from(format!(
            "data: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{{\"progressToken\":1,\"progress\":{i}}}}}\n\n"
        ))))
    };
    // One event, then silence until the gateway lets go.
    let quiet = sse_upstream(move |tx| async move {
        let _ = tx.send(event(0)).await;
        tx.closed().await;
    })
    .await;
    // Twelve events 150 ms apart (1.8 s in all, longer than the limit), then the end.
    let steady = sse_upstream(move |tx| async move {
        for i in 0..12 {
            if tx.send(event(i)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    })
    .await;
    let mut s = settings(&[
        format!("quiet=http://{quiet}/mcp"),
        format!("steady=http://{steady}/mcp"),
    ]);
    for u in &mut s.upstreams {
        u.sse_idle_timeout = Duration::from_millis(500);
    }
    let gw = gateway(s).await;
    let call = |name: &str| {
        mcp_post(
            &client(),
            &format!("http://{}/mcp/{name}", gw.local_addr()),
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t"}}"#,
        )
        .send()
    };
    // Quiet: the first event arrives, then the stream ends with an error, not a hang.
    let resp = call("quiet").await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    let rest = tokio::time::timeout(Duration::from_secs(10), async {
        let mut failed = false;
        while let Some(chunk) = stream.next().await {
            failed |= chunk.is_err();
        }
        failed
    })
    .await
    .expect("the SSE stream outlived sse_idle_timeout");
    assert!(rest, "an idle-cut stream looked complete");
    // Steady: every event, and a clean end.
    let resp = call("steady").await.unwrap();
    let body = tokio::time::timeout(Duration::from_secs(20), resp.bytes())
        .await
        .unwrap()
        .expect("a stream with events more often than the limit was cut");
    assert_eq!(sse_messages(&body).len(), 12);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_but_steady_json_body_is_delivered_whole() {
    let answer = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"slow but steady"}]}}"#;
    let up = raw_upstream(move |_req| async move {
        let (tx, mut rx) = mpsc::channel::<FrameResult>(1);
        tokio::spawn(async move {
            for piece in answer.as_bytes().chunks(10) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let frame = http_body::Frame::data(Bytes::copy_from_slice(piece));
                if tx.send(Ok(frame)).await.is_err() {
                    return;
                }
            }
        });
        let frames = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        Response::builder()
            .header("content-type", "application/json")
            .header("content-length", answer.len())
            .body(http_body_util::BodyExt::boxed(
                http_body_util::StreamBody::new(frames),
            ))
            .unwrap()
    })
    .await;
    let mut s = settings(&[format!("slow=http://{up}/mcp")]);
    s.upstreams[0].read_timeout = Duration::from_millis(500);
    let gw = gateway(s).await;
    let resp = mcp_post(
        &client(),
        &format!("http://{}/mcp/slow", gw.local_addr()),
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t"}}"#,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.bytes().await.expect("a steady body was cut");
    assert_eq!(&body[..], answer.as_bytes());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_sse_stream_gets_keep_alive_comments_between_events_only() {
    let data = |s: &'static str| -> FrameResult { Ok(http_body::Frame::data(Bytes::from(s))) };
    // An event, 1.2 s of silence, then an event sent in two halves 1.2 s apart, then the
    // answer: the gateway (keep-alive every 300 ms) may comment in the first silence, never in
    // the middle of the split event.
    let up = sse_upstream(move |tx| async move {
        let _ = tx
            .send(data(
                "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":1,\"progress\":1}}\n\n",
            ))
            .await;
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let _ = tx
            .send(data("data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\","))
            .await;
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let _ = tx
            .send(data("\"params\":{\"progressToken\":1,\"progress\":2}}\n\n"))
            .await;
        let _ = tx
            .send(data(
                "data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"content\":[]}}\n\n",
            ))
            .await;
    })
    .await;
    let mut s = settings(&[format!("ka=http://{up}/mcp")]);
    s.sse_keepalive = Duration::from_millis(300);
    let gw = gateway(s).await;
    let resp = mcp_post(
        &client(),
        &format!("http://{}/mcp/ka", gw.local_addr()),
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t"}}"#,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(10), resp.bytes())
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&body);
    let comments = text.matches(": keep-alive\n\n").count();
    assert!(comments >= 2, "no keep-alive in 1.2 s of silence: {text}");
    // Every comment stands between two events: the three messages decode whole.
    assert_eq!(sse_messages(&body).len(), 3, "{text}");
    let split = text
        .find("\"method\":\"notifications/progress\",")
        .and_then(|_| text.rfind("\"method\":\"notifications/progress\","))
        .unwrap();
    let rest = &text[split..];
    let event_end = rest.find("\n\n").unwrap();
    assert!(
        !rest[..event_end].contains("keep-alive"),
        "a comment inside an event: {text}"
    );
    // Off: no comments at all.
    let mut s = settings(&[format!("ka=http://{up}/mcp")]);
    s.sse_keepalive = Duration::ZERO;
    let gw2 = gateway(s).await;
    let resp = mcp_post(
        &client(),
        &format!("http://{}/mcp/ka", gw2.local_addr()),
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t"}}"#,
    )
    .send()
    .await
    .unwrap();
    let body = tokio::time::timeout(Duration::from_secs(10), resp.bytes())
        .await
        .unwrap()
        .unwrap();
    assert!(!String::from_utf8_lossy(&body).contains("keep-alive"));
    gw.shutdown().await;
    gw2.shutdown().await;
}
