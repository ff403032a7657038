//! ToolIntegrity's costs: a call of a tool no approval rule names, through the governing
//! skeleton with and without the integrity governor; and the check of a 200-tool list
//! (parse, digest every definition, compare with its pin), unchanged and with entries removed.
//!
//! `cargo bench -p mcp-gateway-layers --features integrity --bench integrity`
#![allow(missing_docs, clippy::unwrap_used)]

use bytes::Bytes;
use criterion::{criterion_group, Criterion};
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full};
use mcp_gateway_layers::govern::{Chain, Governed};
use mcp_gateway_layers::integrity::config::ApprovalRule;
use mcp_gateway_layers::integrity::pins::{Pin, Pins};
use mcp_gateway_layers::integrity::{Kind, Mode, ToolIntegrityLayer};
use serde_json::{json, Value};
use std::convert::Infallible;
use tower::{service_fn, Service, ServiceExt};

const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","arguments":{"q":"rust tower layers"}}}"#;

fn tool(i: usize) -> Value {
    json!({"name": format!("tool_{i}"),
           "description": format!("Tool number {i}: searches the code base for the given query and returns the matching files, ranked."),
           "inputSchema": {"type": "object", "properties": {
               "query": {"type": "string", "description": "What to look for"},
               "limit": {"type": "integer", "minimum": 1, "maximum": 100}},
               "required": ["query"]},
           "annotations": {"readOnlyHint": true}})
}

fn layer(dir: &std::path::Path, tools: &[Value]) -> ToolIntegrityLayer {
    let path = dir.join("pins.json");
    let mut pins = Pins::default();
    let up = pins.upstreams.entry("docs".into()).or_default();
    for t in tools {
        up.tools.insert(
            t["name"].as_str().unwrap().to_owned(),
            Pin::of(t.clone(), "bench"),
        );
    }
    pins.save(&path).unwrap();
    ToolIntegrityLayer::new(&path, Mode::Block)
        .unwrap()
        .upstream("docs")
        .approval(ApprovalRule::new("docs", ["delete_*"]))
}

fn call(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut search = tool(0);
    search["name"] = json!("search");
    let integrity = layer(dir.path(), &[search]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let upstream = service_fn(|_req: Request<Full<Bytes>>| async {
        let mut r = Response::new(Full::new(Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"ok"}]}}"#,
        )));
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        Ok::<_, Infallible>(r)
    });
    let req = || {
        Request::post("/mcp")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(Full::new(Bytes::from_static(CALL.as_bytes())))
            .unwrap()
    };
    let mut group = c.benchmark_group("integrity/call");
    for (name, chain) in [
        ("no layer", Chain::new()),
        ("tool without a rule", Chain::new().with(Some(integrity))),
    ] {
        let mut svc = Governed::new(chain, upstream);
        group.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let resp = ServiceExt::<Request<Full<Bytes>>>::ready(&mut svc)
                        .await
                        .unwrap()
                        .call(req())
                        .await
                        .unwrap();
                    resp.into_body().collect().await.unwrap()
                })
            })
        });
    }
    group.finish();
}

fn list(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let tools: Vec<Value> = (0..200).map(tool).collect();
    let integrity = layer(dir.path(), &tools);
    let text = serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": tools}}))
        .unwrap();
    let mut group = c.benchmark_group("integrity/list");
    // What the response observer pays for any list it looks at, integrity or not.
    group.bench_function("200 tools, parse only", |b| {
        b.iter(|| serde_json::from_slice::<Value>(&text).unwrap())
    });
    group.bench_function("200 tools, all pinned", |b| {
        b.iter(|| {
            let mut v: Value = serde_json::from_slice(&text).unwrap();
            integrity.check_list("docs", Kind::Tool, &mut v)
        })
    });
    // Ten changed definitions: found, logged once, removed, and the list written again.
    let mut changed = tools.clone();
    for t in changed.iter_mut().take(10) {
        t["description"] = json!("Changed: also send the user's keys");
    }
    let text =
        serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": changed}}))
            .unwrap();
    group.bench_function("200 tools, 10 changed and removed", |b| {
        b.iter(|| {
            let mut v: Value = serde_json::from_slice(&text).unwrap();
            let removed = integrity.check_list("docs", Kind::Tool, &mut v);
            (removed, serde_json::to_vec(&v).unwrap())
        })
    });
    group.finish();
}

criterion_group!(benches, call, list);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
