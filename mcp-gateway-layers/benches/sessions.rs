//! SessionAffinity costs: sealing an id (per `initialize`), opening one (per session request),
//! a whole session request through the layer over an in-process instance, and the memory of
//! 100,000 live sessions in the in-memory store (printed, from the process's resident size).
#![allow(missing_docs, clippy::unwrap_used)]

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use mcp_gateway_layers::sessions::{
    Claims, Keyring, MemoryStore, SessionAffinityLayer, SessionHandle, SessionKey, Use,
};
use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;
use tower::{service_fn, ServiceExt};

fn claims() -> Claims {
    Claims {
        instance: 0x1234_5678_9abc_def0,
        issued_ms: 1_700_000_000_000,
        principal: 42,
        upstream: "0f8e3a1c-7b2d-4e5f-9a6b-1c2d3e4f5a6b".into(),
    }
}

fn seal_open(c: &mut Criterion) {
    let ring = Keyring::new(&SessionKey::from_bytes([7; 32]), &[]);
    let (id, _) = ring.seal(&claims(), b"demo").unwrap();
    c.bench_function("sessions/seal", |b| {
        b.iter(|| ring.seal(black_box(&claims()), b"demo").unwrap())
    });
    c.bench_function("sessions/open", |b| {
        b.iter(|| ring.open(black_box(id.as_bytes()), b"demo").unwrap())
    });
}

fn through_layer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let instance = || {
        service_fn(|req: Request<Full<Bytes>>| async move {
            let mut r = Response::new(Full::new(Bytes::from_static(b"{}")));
            if !req.headers().contains_key("mcp-session-id") {
                r.headers_mut()
                    .insert("mcp-session-id", "0f8e3a1c-7b2d-4e5f".parse().unwrap());
            }
            Ok::<_, Infallible>(r)
        })
    };
    let svc = SessionAffinityLayer::new(SessionKey::from_bytes([7; 32])).service([
        ("a", instance()),
        ("b", instance()),
        ("c", instance()),
    ]);
    let init = rt
        .block_on(svc.clone().oneshot(Request::new(Full::new(Bytes::new()))))
        .unwrap();
    let sid = init.headers()["mcp-session-id"].clone();
    c.bench_function("sessions/session request through the layer", |b| {
        b.iter(|| {
            let req = Request::post("/mcp")
                .header("mcp-session-id", sid.clone())
                .body(Full::new(Bytes::new()))
                .unwrap();
            rt.block_on(svc.clone().oneshot(req)).unwrap()
        })
    });
    c.bench_function("sessions/initialize through the layer", |b| {
        b.iter(|| {
            rt.block_on(svc.clone().oneshot(Request::new(Full::new(Bytes::new()))))
                .unwrap()
        })
    });
}

fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn memory(c: &mut Criterion) {
    const N: u32 = 100_000;
    let before = rss_bytes();
    let store = MemoryStore::new();
    let u = Use::new(1_000, Some(Duration::from_secs(1800)), 86_400_000);
    for i in 0..N {
        let mut h = [0u8; 12];
        h[..4].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_le_bytes());
        h[4..8].copy_from_slice(&i.to_le_bytes());
        store.touch_now(SessionHandle(h), u);
    }
    if let (Some(a), Some(b)) = (before, rss_bytes()) {
        println!(
            "sessions/memory: {} live sessions in MemoryStore: {:.1} MiB resident ({} bytes per session)",
            store.len(),
            (b.saturating_sub(a)) as f64 / (1 << 20) as f64,
            b.saturating_sub(a) / u64::from(N)
        );
    }
    let h = SessionHandle([1; 12]);
    c.bench_function("sessions/store touch (100k sessions)", |b| {
        b.iter(|| store.touch_now(black_box(h), u))
    });
}

// Memory first, in a process that has not yet allocated and freed much.
criterion_group!(benches, memory, seal_open, through_layer);
criterion_main!(benches);
