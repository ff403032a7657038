//! A virtual server's costs: a 2026-07-28 `tools/call` through it against the same call
//! straight to its member (the difference is what the virtual server adds per call), and a
//! merged `tools/list` over 10 members of 25 tools each (members answer at once: the cost is
//! the fan-out, the merge and the renaming).
//!
//! `cargo bench -p mcp-gateway-layers --features federation --bench federation`
#![allow(missing_docs, clippy::unwrap_used)]

use bytes::Bytes;
use criterion::{criterion_group, Criterion};
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full};
use mcp_gateway_layers::federation::{Member, ServiceMember, VirtualServerLayer};
use serde_json::{json, Value};
use std::convert::Infallible;
use tower::service_fn;

const META: &str = r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}"#;

fn request(body: String, method: &str, name: Option<&str>) -> Request<Full<Bytes>> {
    let mut b = Request::post("/mcp")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", method);
    if let Some(n) = name {
        b = b.header("mcp-name", n);
    }
    b.body(Full::new(Bytes::from(body))).unwrap()
}

/// A member answering calls and lists at once, from memory.
fn member(
    i: usize,
) -> ServiceMember<
    impl tower::Service<
            Request<Full<Bytes>>,
            Response = Response<Full<Bytes>>,
            Error = Infallible,
            Future = impl Send,
        > + Clone
        + Send
        + Sync
        + 'static,
> {
    let tools: Vec<Value> = (0..25)
        .map(|t| {
            json!({"name": format!("tool_{t}"), "description": format!("Tool {t} of server {i}"),
                        "inputSchema": {"type": "object", "properties": {"q": {"type": "string"}}}})
        })
        .collect();
    let list = Bytes::from(
        json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": tools, "ttlMs": 60000, "cacheScope": "public"}})
            .to_string(),
    );
    ServiceMember(service_fn(move |req: Request<Full<Bytes>>| {
        let list = list.clone();
        async move {
            let body = if req.headers()["mcp-method"] == "tools/list" {
                list
            } else {
                Bytes::from_static(
                    br#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"ok"}]}}"#,
                )
            };
            let mut r = Response::new(Full::new(body));
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            Ok::<_, Infallible>(r)
        }
    }))
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let one = member(0);
    let server = VirtualServerLayer::new("all").service([("docs", member(0))]);
    let call = |name: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{name}","arguments":{{"q":"rust tower layers"}},{META}}}}}"#
        )
    };
    let mut group = c.benchmark_group("federation/call");
    group.bench_function("member directly", |b| {
        b.iter(|| {
            rt.block_on(async {
                let resp = one
                    .call(request(call("tool_1"), "tools/call", Some("tool_1")))
                    .await;
                resp.into_body().collect().await.unwrap()
            })
        })
    });
    group.bench_function("through the virtual server", |b| {
        b.iter(|| {
            rt.block_on(async {
                let resp = server
                    .serve(request(
                        call("docs__tool_1"),
                        "tools/call",
                        Some("docs__tool_1"),
                    ))
                    .await;
                resp.into_body().collect().await.unwrap()
            })
        })
    });
    group.finish();

    let ten = VirtualServerLayer::new("all").service((0..10).map(|i| (format!("s{i}"), member(i))));
    let list = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{{{META}}}}}"#);
    let mut group = c.benchmark_group("federation/list");
    group.bench_function("10 members x 25 tools, merged", |b| {
        b.iter(|| {
            rt.block_on(async {
                let resp = ten.serve(request(list.clone(), "tools/list", None)).await;
                resp.into_body().collect().await.unwrap()
            })
        })
    });
    group.finish();
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
