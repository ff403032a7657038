//! The audit log at scale: `query` over 1,000,000 generated records (filters by agent, tool,
//! outcome and time), `verify` over the same chain, and the writer's records per second.
//!
//! `cargo bench -p mcp-gateway-layers --features audit --bench audit_query`
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{criterion_group, Criterion, Throughput};
use mcp_gateway_layers::audit::record::{line_hash, GENESIS};
use mcp_gateway_layers::audit::{
    query, verify, ArgumentPolicy, AuditRecord, AuditWriter, Event, FileSink, FsyncPolicy, Outcome,
    Output, Query, WriterOptions,
};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

const RECORDS: u64 = 1_000_000;
const OUTCOMES: [Outcome; 5] = [
    Outcome::Ok,
    Outcome::Ok,
    Outcome::Ok,
    Outcome::RateLimited,
    Outcome::ToolError,
];

fn record(i: u64, start: SystemTime) -> AuditRecord {
    let mut r = AuditRecord::new(start + Duration::from_millis(i * 3), Event::Request, "POST");
    r.agent = Some(format!("agent-{}", i % 100));
    r.client_id = Some(format!("client-{}", i % 100));
    r.route = Some("github".into());
    r.method = Some("tools/call".into());
    r.tool = Some(format!("tool_{}", i % 20));
    r.id = Some(i.to_string());
    r.outcome = OUTCOMES[(i % 5) as usize];
    r.status = if r.outcome == Outcome::RateLimited {
        429
    } else {
        200
    };
    r.latency_us = 1000 + i % 5000;
    r.tokens_in = Some(40);
    r.tokens_out = Some(300);
    r.client = Some(([10, 0, 0, 7], 51234).into());
    r.trace_id = Some("4bf92f3577b34da6a3ce929d0e0e4736".into());
    r.span_id = Some("00f067aa0ba902b7".into());
    r.arguments = Some(bytes::Bytes::from(format!(r#"{{"query":"issue {i}"}}"#)));
    r
}

/// Writes the chain (what the writer would) straight to a file.
fn generate(path: &Path) -> u64 {
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut prev = GENESIS.to_owned();
    let policy = ArgumentPolicy::default();
    let mut bytes = 0;
    for i in 0..RECORDS {
        let line = record(i, start).to_line(i + 1, &prev, &policy);
        prev = line_hash(&line);
        bytes += line.len() as u64;
        out.write_all(&line).unwrap();
    }
    out.flush().unwrap();
    bytes
}

fn at_scale(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let bytes = generate(&path);
    eprintln!("{RECORDS} records, {} MiB", bytes >> 20);
    let files: Vec<PathBuf> = vec![path];
    let mut g = c.benchmark_group("audit/1M records");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(RECORDS));
    let cases: [(&str, Query); 4] = [
        ("query --agent", {
            let mut q = Query::default();
            q.agent = Some("agent-42".into());
            q
        }),
        ("query --agent --tool --outcome", {
            let mut q = Query::default();
            q.agent = Some("agent-42".into());
            q.tool = Some("tool_2".into());
            q.outcome = Some("ok".into());
            q
        }),
        ("query --since (last 10%)", {
            let mut q = Query::default();
            q.since = Some(
                SystemTime::UNIX_EPOCH
                    + Duration::from_secs(1_790_000_000)
                    + Duration::from_millis(RECORDS * 3 * 9 / 10),
            );
            q
        }),
        ("query --outcome rate_limited (20%)", {
            let mut q = Query::default();
            q.outcome = Some("rate_limited".into());
            q
        }),
    ];
    for (name, q) in &cases {
        g.bench_function(*name, |b| {
            b.iter(|| query(&files, q, Output::Json, &mut std::io::sink()).unwrap())
        });
    }
    g.bench_function("verify", |b| b.iter(|| verify(&files).unwrap()));
    g.finish();

    // The writer: records per second to a file (fsync every second), end to end.
    let mut g = c.benchmark_group("audit/writer");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    const BATCH: u64 = 100_000;
    g.throughput(Throughput::Elements(BATCH));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let log = dir.path().join("written.jsonl");
    let mut options = WriterOptions::default();
    options.fsync = FsyncPolicy::Interval(Duration::from_secs(1));
    let writer = AuditWriter::spawn(FileSink::open(&log).unwrap(), options).unwrap();
    let start = SystemTime::now();
    g.bench_function("records to a file", |b| {
        b.iter(|| {
            rt.block_on(async {
                for i in 0..BATCH {
                    let slot = writer.reserve().await.unwrap();
                    writer.submit(slot, vec![record(i, start)]);
                }
                writer.flush().await;
            })
        })
    });
    g.finish();
}

criterion_group!(benches, at_scale);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
