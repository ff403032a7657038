//! `[limits]` through the real gateway: real `rmcp` clients and servers, and two gateway
//! processes sharing a real Redis.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use mcp_gateway_examples::demo_server::{self, DemoOptions};
use rmcp::model::ProtocolVersion;
use rmcp::model::{CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation};
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientLifecycleMode, ClientServiceExt, RoleClient};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A demo server counting the tool calls it serves, and a gateway in front of it with
/// `limits` (the body of a `[limits]` table).
async fn limited(
    opts: DemoOptions,
    limits: &str,
) -> (mcp_gateway::Gateway, String, Arc<AtomicU64>) {
    let (up, calls) = demo_server::spawn_counting("127.0.0.1:0".parse().unwrap(), opts)
        .await
        .unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.demo]\nurl = \"http://{up}/mcp\"\n[limits]\n{limits}\n"
    );
    let s = mcp_gateway::config::parse(&text, "test.toml", Path::new(".")).unwrap();
    let gw = gateway(s).await;
    let url = format!("http://{}/mcp/demo", gw.local_addr());
    (gw, url, calls)
}

/// An rmcp client (2026-07-28, no sessions) that names itself with `x-agent-id`.
async fn agent(url: &str, id: &str) -> RunningService<RoleClient, ClientConfig> {
    let mut info = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("limits-test", "0"),
    );
    info.protocol_version = ProtocolVersion::V_2026_07_28;
    let mut config = StreamableHttpClientTransportConfig::with_uri(url.to_owned());
    config
        .custom_headers
        .insert("x-agent-id".parse().unwrap(), id.parse().unwrap());
    info.serve_with_lifecycle(
        StreamableHttpClientTransport::from_config(config),
        ClientLifecycleMode::Discover {
            preferred_versions: vec![ProtocolVersion::V_2026_07_28],
        },
    )
    .await
    .expect("server/discover through the gateway")
}

async fn call(
    c: &RunningService<RoleClient, ClientConfig>,
    tool: &'static str,
    args: serde_json::Value,
) -> Result<(), String> {
    let mut p = CallToolRequestParams::new(tool);
    if let serde_json::Value::Object(m) = args {
        p = p.with_arguments(m);
    }
    c.call_tool(p).await.map(|_| ()).map_err(|e| e.to_string())
}

/// A raw `tools/call` as agent `id`: the refusal's wire form.
async fn raw_call(url: &str, id: &str) -> reqwest::Response {
    mcp_post(
        &client(),
        url,
        r#"{"jsonrpc":"2.0","id":"r-1","method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}"#,
    )
    .header("x-agent-id", id)
    .header("mcp-protocol-version", "2025-11-25")
    .send()
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_loop_is_cut_off_at_its_request_budget_and_others_are_unaffected() {
    let (gw, url, calls) = limited(
        DemoOptions::default(),
        "key = \"header:x-agent-id\"\nrequests_per_minute = 10",
    )
    .await;
    let looping = agent(&url, "looping").await;
    let mut admitted = 0;
    let mut refused = Vec::new();
    for i in 0..30 {
        match call(
            &looping,
            "echo",
            serde_json::json!({"text": format!("try {i}")}),
        )
        .await
        {
            Ok(()) => admitted += 1,
            Err(e) => refused.push(e),
        }
    }
    // server/discover is a request too: 9 tool calls fit in the budget of 10.
    assert_eq!(admitted, 9, "refusals: {refused:?}");
    assert_eq!(refused.len(), 21);
    assert!(refused.iter().all(|e| e.contains("429")), "{refused:?}");

    // Another agent is unaffected.
    let other = agent(&url, "other").await;
    for i in 0..5 {
        call(
            &other,
            "echo",
            serde_json::json!({"text": format!("hi {i}")}),
        )
        .await
        .unwrap();
    }
    // The server saw exactly the calls the gateway admitted.
    assert_eq!(calls.load(Ordering::SeqCst), 9 + 5);

    // The refusal on the wire: 429, Retry-After in whole seconds (10/min: one every 6 s),
    // the IETF fields, and a JSON-RPC error with the request's id.
    let resp = raw_call(&url, "looping").await;
    let h = resp.headers().clone();
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=6).contains(&retry), "{retry}");
    assert_eq!(h["ratelimit-policy"], "\"requests\";q=10;w=60");
    assert!(
        h["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"requests\";r=0;t="),
        "{:?}",
        h["ratelimit"]
    );
    let v = assert_error(resp, 429, -32052, serde_json::json!("r-1")).await;
    assert_eq!(v["error"]["data"]["budget"], "requests");
    assert_eq!(calls.load(Ordering::SeqCst), 14);
    looping.cancel().await.unwrap();
    other.cancel().await.unwrap();
    gw.shutdown().await;
}

async fn large_results_cut_off_by_tokens(opts: DemoOptions) {
    // 10 000 tokens a minute; each result is ~30 000 bytes, ~7 500 tokens by the default
    // estimate: the second call is admitted and leaves the agent ~5 000 tokens in debt.
    let (gw, url, calls) = limited(
        opts,
        "key = \"header:x-agent-id\"\nrequests_per_minute = 1000\ntokens_per_minute = 10000",
    )
    .await;
    let big = agent(&url, "big").await;
    let mut admitted = 0;
    for _ in 0..8 {
        if call(&big, "blob", serde_json::json!({"bytes": 30000}))
            .await
            .is_ok()
        {
            admitted += 1;
        }
    }
    // Cut off by tokens after 2 calls (3 at most, should a charge land after the next
    // decision), with 996 requests of the budget left.
    assert!((2..=3).contains(&admitted), "{admitted}");
    assert_eq!(calls.load(Ordering::SeqCst), admitted);
    let resp = raw_call(&url, "big").await;
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // ~5 000 tokens of debt at ~167 a second.
    assert!((15..=60).contains(&retry), "{retry}");
    let rl = resp.headers()["ratelimit"].to_str().unwrap().to_owned();
    assert!(rl.contains("\"tokens\";r=0"), "{rl}");
    let v = assert_error(resp, 429, -32052, serde_json::json!("r-1")).await;
    assert_eq!(v["error"]["data"]["budget"], "tokens");
    // Small calls of another agent still pass.
    let small = agent(&url, "small").await;
    call(&small, "echo", serde_json::json!({"text": "hi"}))
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), admitted + 1);
    big.cancel().await.unwrap();
    small.cancel().await.unwrap();
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_json_results_are_cut_off_by_the_token_budget() {
    large_results_cut_off_by_tokens(DemoOptions {
        stateless: true,
        json_response: true,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_sse_results_are_cut_off_by_the_token_budget() {
    large_results_cut_off_by_tokens(DemoOptions::default()).await;
}

// --- Two gateway processes sharing a real Redis -------------------------------------------

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis(port: u16) -> Option<Proc> {
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--bind", "127.0.0.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let p = Proc(child);
    wait_port(port);
    Some(p)
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn gateway_process(
    dir: &Path,
    name: &str,
    up: SocketAddr,
    redis: u16,
    on_error: &str,
) -> (Proc, String) {
    let port = free_port();
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            r#"[server]
listen = "127.0.0.1:{port}"
[log]
level = "warn"
[upstreams.demo]
url = "http://{up}/mcp"
[limits]
key = "header:x-agent-id"
requests_per_minute = 60
store = "redis"
redis_url = "redis://127.0.0.1:{redis}/0"
on_store_error = "{on_error}"
"#
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_mcp-gateway"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let p = Proc(child);
    wait_port(port);
    (p, format!("http://127.0.0.1:{port}/mcp/demo"))
}

/// Sends `n` calls as `id`, alternating between `urls`; returns the statuses.
async fn burst(urls: &[&str], id: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        let status = raw_call(urls[i % urls.len()], id).await.status().as_u16();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a decision hung for {:?}",
            started.elapsed()
        );
        out.push(status);
    }
    out
}

/// `EXISTS key` over a plain RESP connection.
fn redis_exists(port: u16, key: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let cmd = format!("*2\r\n$6\r\nEXISTS\r\n${}\r\n{key}\r\n", key.len());
    let mut buf = [0u8; 16];
    c.write_all(cmd.as_bytes()).is_ok()
        && c.read(&mut buf).is_ok_and(|n| buf[..n].starts_with(b":1"))
}

fn admitted(statuses: &[u16]) -> usize {
    statuses.iter().filter(|s| **s != 429 && **s != 503).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_budget_in_redis_and_survive_its_loss() {
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("\n!!! SKIPPED: redis-server is not installed (scripts/test installs it) !!!\n");
        return;
    }
    let rport = free_port();
    let mut rs = redis(rport).unwrap();
    let up = demo(DemoOptions {
        stateless: true,
        json_response: true,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (_a, a) = gateway_process(dir.path(), "a", up, rport, "local");
    let (_b, b) = gateway_process(dir.path(), "b", up, rport, "local");
    let (_c, c) = gateway_process(dir.path(), "c", up, rport, "deny");

    // One budget of 60 for both replicas (a few more may refill while the test runs).
    let started = Instant::now();
    let s = burst(&[&a, &b], "shared", 150).await;
    let refill = started.elapsed().as_secs() as usize + 1;
    let n = admitted(&s);
    assert!(
        (60..=60 + refill).contains(&n) && n <= 63,
        "admitted {n} of 150 through two replicas (one budget of 60)"
    );
    // Both replicas admitted some: the budget really is shared, not one replica's.
    assert!(
        s.iter().step_by(2).any(|x| *x != 429) && s.iter().skip(1).step_by(2).any(|x| *x != 429)
    );

    // Redis dies: "local" replicas decide alone (no hang), the "deny" one answers 503.
    drop(rs);
    let s = burst(&[&a], "after", 10).await;
    assert_eq!(admitted(&s), 10, "{s:?}");
    let s = burst(&[&c], "after", 3).await;
    assert_eq!(s, [503, 503, 503]);

    // Redis returns (empty): the replicas use it again, without a restart.
    rs = redis(rport).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let resp = raw_call(&c, "probe").await;
        if resp.status() != 503 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery after Redis returned"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Each "local" replica is back on Redis once its decisions land there again.
    for (url, probe) in [(&a, "probe-a"), (&b, "probe-b")] {
        let key = format!("mcpgw:{{header:{probe}}}:r");
        let deadline = Instant::now() + Duration::from_secs(15);
        while !redis_exists(rport, &key) {
            assert!(Instant::now() < deadline, "{url} never went back to Redis");
            let _ = raw_call(url, probe).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let s = burst(&[&a, &b], "again", 150).await;
    let n = admitted(&s);
    assert!(
        (60..=63).contains(&n),
        "after recovery: admitted {n} of 150 (one budget of 60)"
    );
    drop(rs);
}
