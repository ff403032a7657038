//! Criterion micro-benchmarks of the per-request hot paths in the core:
//! classification (small and 64 KiB arguments), era detection, `_meta` injection, and SSE
//! decoding, and the response observer (one message observed, JSON and SSE). Run with
//! `cargo bench -p mcp-gateway-core`.
#![allow(missing_docs, clippy::unwrap_used)]

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::StatusCode;
use http::{HeaderMap, HeaderValue};
use mcp_gateway_core::era::detect;
use mcp_gateway_core::message::classify;
use mcp_gateway_core::meta::set_meta_entries;
use mcp_gateway_core::observe::{Observation, ObservedMessage, Observer};
use mcp_gateway_core::sse::SseDecoder;
use std::hint::black_box;

fn tools_call(arg_bytes: usize) -> Bytes {
    let text = "x".repeat(arg_bytes);
    Bytes::from(format!(
        r#"{{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{{"name":"search","arguments":{{"query":"{text}","limit":10,"filters":{{"lang":["en","de"],"after":"2026-01-01"}}}},"_meta":{{"progressToken":"p-42","io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{{}}}}}}}}"#
    ))
}

fn classification(c: &mut Criterion) {
    let mut g = c.benchmark_group("classify");
    for size in [64usize, 64 * 1024] {
        let body = tools_call(size);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(body.len()), &body, |b, body| {
            b.iter(|| classify(black_box(body)).unwrap())
        });
    }
    g.finish();
}

fn era_detection(c: &mut Criterion) {
    let body = tools_call(64);
    let parsed = classify(&body).unwrap();
    let mut h = HeaderMap::new();
    h.insert(
        "mcp-protocol-version",
        HeaderValue::from_static("2026-07-28"),
    );
    h.insert("mcp-method", HeaderValue::from_static("tools/call"));
    h.insert("mcp-name", HeaderValue::from_static("search"));
    c.bench_function("era_detect_modern", |b| {
        b.iter(|| detect(black_box(&h), Some(black_box(&parsed))).unwrap())
    });
}

fn meta_injection(c: &mut Criterion) {
    let mut g = c.benchmark_group("meta_inject_traceparent");
    for size in [64usize, 64 * 1024] {
        let body = tools_call(size);
        let msg = classify(&body).unwrap().single().unwrap().clone();
        let tp = "\"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\"";
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(body.len()), &body, |b, body| {
            b.iter(|| set_meta_entries(black_box(body), &msg, &[("traceparent", tp)]).unwrap())
        });
    }
    g.finish();
}

fn sse_decoding(c: &mut Criterion) {
    let event = format!(
        "id: 7\ndata: {}\n\n",
        r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":5}}"#
    );
    let stream = event.repeat(512);
    let mut g = c.benchmark_group("sse_decode");
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.bench_function("512_events_in_1k_chunks", |b| {
        b.iter(|| {
            let mut dec = SseDecoder::new(1 << 20);
            let mut n = 0usize;
            for chunk in stream.as_bytes().chunks(1024) {
                dec.feed(black_box(chunk), &mut |_| n += 1).unwrap();
            }
            n
        })
    });
    g.finish();
}

/// An observer that looks at what every governing layer looks at.
struct Outcome(u64);
impl Observer for Outcome {
    fn on_message(&mut self, msg: &ObservedMessage<'_>) {
        self.0 += msg.len() as u64 + u64::from(msg.is_tool_error());
        if let Some(c) = msg.error_code() {
            self.0 += c.unsigned_abs();
        }
    }
}

fn observing(c: &mut Criterion) {
    let result = r#"{"jsonrpc":"2.0","id":42,"result":{"content":[{"type":"text","text":"hello from the tool, a 200-byte answer of the kind the benchmarks proxy........................................"}],"isError":false}}"#;
    let mut json = HeaderMap::new();
    json.insert("content-type", HeaderValue::from_static("application/json"));
    let mut sse = HeaderMap::new();
    sse.insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    let event = Bytes::from(format!("id: 1\ndata: {result}\n\n"));
    let body = Bytes::from_static(result.as_bytes());
    let mut g = c.benchmark_group("observe_one_message");
    g.bench_function("json_1_observer", |b| {
        b.iter(|| {
            let mut o =
                Observation::new(vec![Box::new(Outcome(0))], StatusCode::OK, black_box(&json));
            o.on_data(black_box(body.clone())).unwrap();
            o.complete();
        })
    });
    g.bench_function("sse_1_observer", |b| {
        b.iter(|| {
            let mut o =
                Observation::new(vec![Box::new(Outcome(0))], StatusCode::OK, black_box(&sse));
            o.on_data(black_box(event.clone())).unwrap();
            o.complete();
        })
    });
    g.bench_function("sse_4_observers", |b| {
        b.iter(|| {
            let observers: Vec<Box<dyn Observer>> = (0..4)
                .map(|_| Box::new(Outcome(0)) as Box<dyn Observer>)
                .collect();
            let mut o = Observation::new(observers, StatusCode::OK, black_box(&sse));
            o.on_data(black_box(event.clone())).unwrap();
            o.complete();
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    observing,
    classification,
    era_detection,
    meta_injection,
    sse_decoding
);
criterion_main!(benches);
