//! TraceInject: the `_meta` splice on 1 KiB and 100 KiB `tools/call` bodies (alone, and with
//! the re-classification the layer does so that inner layers read the new body right), and
//! one call through the layer with spans recorded (to a processor that drops them) and
//! metrics counted.
//!
//! `cargo bench -p mcp-gateway-layers --features telemetry --bench telemetry`
#![allow(missing_docs, clippy::unwrap_used)]

use bytes::Bytes;
use criterion::{criterion_group, Criterion, Throughput};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use mcp_gateway_core::message::classify;
use mcp_gateway_core::meta::{set_meta_entries, set_meta_entries_with_edits};
use mcp_gateway_core::McpRequest;
use mcp_gateway_layers::telemetry::TraceInjectLayer;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SimpleSpanProcessor, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use std::convert::Infallible;
use tower::{service_fn, Layer, Service, ServiceExt};

fn body(args_bytes: usize) -> Bytes {
    let text = "x".repeat(args_bytes);
    Bytes::from(format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"{text}"}},"_meta":{{"progressToken":1}}}}}}"#
    ))
}

const TP: &str = "\"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\"";

fn splice(c: &mut Criterion) {
    for (label, n) in [("1KiB", 1024), ("100KiB", 100 * 1024)] {
        let b = body(n);
        let parsed = classify(&b).unwrap();
        let msg = parsed.single().unwrap().clone();
        let mut g = c.benchmark_group(format!("trace/meta injection/{label}"));
        g.throughput(Throughput::Bytes(b.len() as u64));
        g.bench_function("splice", |bch| {
            bch.iter(|| set_meta_entries(&b, &msg, &[("traceparent", TP)]).unwrap())
        });
        let view = McpRequest::parse(&http::HeaderMap::new(), Some(b.clone())).unwrap();
        g.bench_function("splice + re-classify", |bch| {
            bch.iter(|| {
                let out = set_meta_entries(&b, &msg, &[("traceparent", TP)]).unwrap();
                view.with_body(out).unwrap()
            })
        });
        g.bench_function("splice + moved spans (the layer's work)", |bch| {
            bch.iter(|| {
                let (out, edits) =
                    set_meta_entries_with_edits(&b, &msg, &[("traceparent", TP)]).unwrap();
                view.with_edited_body(out, &edits)
            })
        });
        g.finish();
    }
}

#[derive(Debug)]
struct Drop;
impl SpanExporter for Drop {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        std::hint::black_box(batch);
        Ok(())
    }
}

fn through_layer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = service_fn(|_req: Request<Full<Bytes>>| async {
        let mut r = Response::new(Full::new(Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hi"}]}}"#,
        )));
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        Ok::<_, Infallible>(r)
    });
    let call = body(200);
    for (label, layer) in [
        ("metrics only", TraceInjectLayer::new()),
        (
            "spans + metrics",
            TraceInjectLayer::new()
                .span_processor(SimpleSpanProcessor::new(Drop), &Resource::builder().build()),
        ),
    ] {
        let mut svc = layer.layer(server);
        c.bench_function(&format!("trace/one call through the layer/{label}"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let req = Request::post("/mcp")
                        .header("content-type", "application/json")
                        .body(Full::new(call.clone()))
                        .unwrap();
                    let resp = ServiceExt::<Request<Full<Bytes>>>::ready(&mut svc)
                        .await
                        .unwrap()
                        .call(req)
                        .await
                        .unwrap();
                    resp.into_body().collect().await.unwrap()
                })
            })
        });
    }
}

criterion_group!(benches, splice, through_layer);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
