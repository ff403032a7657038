//! The Redis stores' builder settings hold on a store that was cloned before they were set
//! (they used to be dropped silently then), checked against a real Redis for the key prefix
//! and against a server that never answers for the timeout.
#![allow(clippy::unwrap_used, missing_docs)]

use mcp_gateway_layers::limits::redis::RedisStore as LimitsRedis;
use mcp_gateway_layers::limits::{Demand, LimitStore};
use mcp_gateway_layers::sessions::redis::RedisStore as SessionsRedis;
use mcp_gateway_layers::sessions::{SessionHandle, SessionStore, Use};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// A real Redis on a free port (scripts/test installs `redis-server`).
fn redis() -> (Proc, u16) {
    let port = free_port();
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
        .expect("redis-server must be installed (scripts/test installs it)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "redis-server never opened its port"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (Proc(child), port)
}

fn keys(port: u16) -> Vec<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/0")).unwrap();
    let mut conn = client.get_connection().unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    keys.sort();
    keys
}

fn demand(key: &str) -> Demand {
    Demand {
        key: Arc::from(key),
        requests: 1,
        requests_per_minute: std::num::NonZeroU32::new(600),
        tokens: Vec::new(),
    }
}

fn usage() -> Use {
    Use::new(1_000, None, 3_600_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_store_prefix_holds_on_a_cloned_store() {
    let (_redis, port) = redis();
    let url = format!("redis://127.0.0.1:{port}/0");
    let first = LimitsRedis::open(&url).unwrap();
    let _kept = first.clone();
    let store = first.prefix("team-a:");
    let v = store.decide(&demand("agent:ci")).await.unwrap();
    assert!(v.admitted());
    assert_eq!(keys(port), ["team-a:{agent:ci}:r"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_store_prefix_holds_on_a_cloned_store() {
    let (_redis, port) = redis();
    let url = format!("redis://127.0.0.1:{port}/0");
    let first = SessionsRedis::open(&url).unwrap();
    let _kept = first.clone();
    let store = first.prefix("team-b:");
    let h = SessionHandle([7; 12]);
    store.touch(h, usage()).await.unwrap();
    assert_eq!(keys(port), [format!("team-b:{}", h.to_hex())]);
}

/// A handle claimed once: the first claim, from either of two stores on one Redis, wins;
/// every later one finds it; a handle the store knows (an ended session) is not claimed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_store_claims_a_handle_once_across_stores() {
    let (_redis, port) = redis();
    let url = format!("redis://127.0.0.1:{port}/0");
    let (a, b) = (
        SessionsRedis::open(&url).unwrap(),
        SessionsRedis::open(&url).unwrap(),
    );
    let h = SessionHandle([9; 12]);
    let (x, y) = tokio::join!(a.claim(h, usage()), b.claim(h, usage()));
    let (x, y) = (x.unwrap(), y.unwrap());
    assert!(x ^ y, "exactly one of two concurrent claims wins: {x} {y}");
    assert!(!a.claim(h, usage()).await.unwrap());
    let ended = SessionHandle([10; 12]);
    b.end(ended, usage()).await.unwrap();
    assert!(!a.claim(ended, usage()).await.unwrap());
}

/// A server that accepts connections and never answers.
async fn silent_server() -> (tokio::task::JoinHandle<()>, u16) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    (task, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_store_timeout_holds_on_a_cloned_store() {
    let (_server, port) = silent_server().await;
    let first = LimitsRedis::open(&format!("redis://127.0.0.1:{port}/0")).unwrap();
    let _kept = first.clone();
    let store = first.timeout(Duration::from_millis(350));
    let e = store.decide(&demand("agent:ci")).await.unwrap_err();
    assert!(e.to_string().contains("350ms"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_store_timeout_holds_on_a_cloned_store() {
    let (_server, port) = silent_server().await;
    let first = SessionsRedis::open(&format!("redis://127.0.0.1:{port}/0")).unwrap();
    let _kept = first.clone();
    let store = first.timeout(Duration::from_millis(350));
    let e = store
        .touch(SessionHandle([1; 12]), usage())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("350ms"), "{e}");
}
