//! stdio upstream costs: one small `tools/call` through `StdioUpstream` (shared mode) and back,
//! the child being this very binary in its responder role (one JSON line in, one out), so the
//! figure is the gateway's side — request parse and id rewrite, the pipe writes and reads, the
//! answer's id restored — plus two pipe hops and the responder's own parse. Compare with
//! `cargo bench --bench sessions` style in-process figures, not with network round trips.
#![allow(missing_docs, clippy::unwrap_used)]

use bytes::Bytes;
use criterion::{criterion_group, Criterion};
use http::Request;
use http_body_util::{BodyExt, Full};
use mcp_gateway_layers::stdio::StdioBuilder;
use std::io::{BufRead, Write};

const CHILD: &str = "MCP_GATEWAY_STDIO_BENCH_CHILD";

/// The responder: answers every request line with a small result carrying its id.
fn respond() {
    let stdin = std::io::stdin().lock();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for line in stdin.lines() {
        let Ok(line) = line else { return };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let (Some(id), Some(method)) = (v.get("id"), v.get("method").and_then(|m| m.as_str()))
        else {
            continue;
        };
        let result = if method == "initialize" {
            r#"{"protocolVersion":"2025-11-25","capabilities":{"tools":{}},"serverInfo":{"name":"bench","version":"0"}}"#
        } else {
            r#"{"content":[{"type":"text","text":"ok"}],"isError":false}"#
        };
        let _ = writeln!(out, r#"{{"jsonrpc":"2.0","id":{id},"result":{result}}}"#);
        let _ = out.flush();
    }
}

fn call(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let exe = std::env::current_exe().unwrap();
    let up = rt.block_on(async {
        StdioBuilder::new("bench", [exe.display().to_string()])
            .env(CHILD, "1")
            .build()
    });
    let body = Bytes::from_static(
        br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"}}}"#,
    );
    let once = || {
        let req = Request::post("/mcp")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(Full::new(body.clone()))
            .unwrap();
        let up = up.clone();
        async move {
            let resp = up.forward(req).await;
            assert_eq!(resp.status(), 200);
            resp.into_body().collect().await.unwrap().to_bytes()
        }
    };
    // The gateway's own initialize of the child, once, outside the measurement.
    rt.block_on(once());
    c.bench_function("stdio/tools_call_shared", |b| {
        b.iter(|| rt.block_on(once()));
    });
    rt.block_on(up.stop());
}

criterion_group!(benches, call);

fn main() {
    if std::env::var_os(CHILD).is_some() {
        respond();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
