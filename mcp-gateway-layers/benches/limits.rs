//! TokenBucket2D decisions: in memory (one hot key, many keys), with Redis when a
//! `redis-server` is installed, and the memory one tracked key costs.
//!
//! `cargo bench -p mcp-gateway-layers --features limits-redis --bench limits`
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{criterion_group, Criterion};
use mcp_gateway_layers::limits::{Demand, MemoryStore, TokenCheck};
use std::num::NonZeroU32;
use std::sync::Arc;

fn demand(key: Arc<str>) -> Demand {
    Demand {
        key,
        requests: 1,
        requests_per_minute: NonZeroU32::new(1_000_000_000),
        tokens: vec![TokenCheck {
            bucket: 0,
            per_minute: 1_000_000_000_000,
            cost: 50,
        }],
    }
}

fn memory(c: &mut Criterion) {
    let store = MemoryStore::new(NonZeroU32::new(1_000_000_000));
    let hot = demand("agent:hot".into());
    c.bench_function("limit/memory/one key", |b| {
        b.iter(|| store.decide_now(std::hint::black_box(&hot)))
    });
    let keys: Vec<Demand> = (0..100_000)
        .map(|i| demand(format!("agent:{i}").into()))
        .collect();
    let mut i = 0;
    c.bench_function("limit/memory/100k keys", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            store.decide_now(&keys[i])
        })
    });
}

#[cfg(feature = "limits-redis")]
fn redis(c: &mut Criterion) {
    use mcp_gateway_layers::limits::redis::RedisStore;
    use mcp_gateway_layers::limits::LimitStore;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let Ok(mut child) = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
    else {
        eprintln!("redis-server not installed: Redis benchmark skipped");
        return;
    };
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = rt.block_on(async {
        RedisStore::open(&format!("redis://127.0.0.1:{port}/0"))
            .unwrap()
            .timeout(std::time::Duration::from_secs(1))
    });
    let hot = demand("agent:hot".into());
    c.bench_function("limit/redis/one key (round trip)", |b| {
        b.iter(|| rt.block_on(store.decide(&hot)).unwrap())
    });
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(not(feature = "limits-redis"))]
fn redis(_c: &mut Criterion) {}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Bytes of memory per tracked key (request and token buckets), with 1 M distinct keys.
fn memory_per_key() {
    const N: usize = 1_000_000;
    let store = MemoryStore::new(NonZeroU32::new(600));
    let before = rss_kib();
    for i in 0..N {
        store.decide_now(&demand(
            format!("ip:10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255).into(),
        ));
    }
    let after = rss_kib();
    println!(
        "limit/memory per tracked key: {} bytes ({} keys, RSS +{} MiB)",
        (after.saturating_sub(before)) * 1024 / N as u64,
        N,
        (after.saturating_sub(before)) / 1024
    );
}

criterion_group!(benches, memory, redis);

fn main() {
    benches();
    memory_per_key();
    Criterion::default().configure_from_args().final_summary();
}
