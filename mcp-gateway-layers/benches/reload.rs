//! What the reload cell costs a request: a service called through `Reload` against the same
//! service called directly, and the same while another thread swaps the cell as fast as it
//! can (a reload storm; real reloads are seconds apart).
//!
//! `cargo bench -p mcp-gateway-layers --features reload --bench reload`
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{criterion_group, Criterion};
use mcp_gateway_layers::reload::ReloadLayer;
use std::convert::Infallible;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tower::{Layer, Service, ServiceExt};

/// A cheap service holding shared state, as a router does (its clone is a reference count).
#[derive(Clone)]
struct Inner(Arc<[u8; 64]>);

impl Service<u64> for Inner {
    type Response = u64;
    type Error = Infallible;
    type Future = std::future::Ready<Result<u64, Infallible>>;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: u64) -> Self::Future {
        std::future::ready(Ok(req + u64::from(self.0[0])))
    }
}

fn calls(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("reload");
    let direct = Inner(Arc::new([1; 64]));
    g.bench_function("direct call", |b| {
        b.iter(|| rt.block_on(direct.clone().oneshot(black_box(1))).unwrap());
    });
    let reload = ReloadLayer::new().layer(Inner(Arc::new([1; 64])));
    g.bench_function("through Reload", |b| {
        b.iter(|| rt.block_on(reload.clone().oneshot(black_box(1))).unwrap());
    });
    let handle = reload.handle().clone();
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                handle.swap(Inner(Arc::new([1; 64])));
                n += 1;
            }
            n
        }
    });
    g.bench_function("through Reload, swapped continuously", |b| {
        b.iter(|| rt.block_on(reload.clone().oneshot(black_box(1))).unwrap());
    });
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    eprintln!("swaps during the last measurement: {swaps}");
    g.finish();
}

criterion_group!(benches, calls);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
