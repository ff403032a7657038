//! `[audit]` through the real gateway: real `rmcp` clients and server, OAuthGuard (API keys)
//! and TokenBucket2D deciding, every exchange recorded once; the `audit` CLI; and `kill -9` of
//! the real binary under load with `fsync = "always"`.
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
use serde_json::Value;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mcp-gateway"))
}

/// An API-keys file: alice and bob, both with `mcp:tools`.
fn keys(dir: &Path) -> PathBuf {
    let path = dir.join("keys.toml");
    std::fs::write(
        &path,
        format!(
            "[[keys]]\nsha256 = \"{}\"\nagent = \"alice\"\nscopes = [\"mcp:tools\"]\n[[keys]]\nsha256 = \"{}\"\nagent = \"bob\"\nscopes = [\"mcp:tools\"]\n",
            sha256_hex("alice-key-0123456789"),
            sha256_hex("bob-key-0123456789")
        ),
    )
    .unwrap();
    path
}

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn rmcp_client(
    url: &str,
    key: &str,
    modern: bool,
) -> RunningService<RoleClient, ClientConfig> {
    let mut info = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("audit-test", "0"),
    );
    let mut config = StreamableHttpClientTransportConfig::with_uri(url.to_owned());
    config.custom_headers.insert(
        "authorization".parse().unwrap(),
        format!("Bearer {key}").parse().unwrap(),
    );
    let transport = StreamableHttpClientTransport::from_config(config);
    if modern {
        info.protocol_version = ProtocolVersion::V_2026_07_28;
        info.serve_with_lifecycle(
            transport,
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .unwrap()
    } else {
        rmcp::ServiceExt::serve(info, transport).await.unwrap()
    }
}

async fn echo(c: &RunningService<RoleClient, ClientConfig>, text: &str) -> Result<(), String> {
    let mut args = serde_json::Map::new();
    args.insert("text".into(), Value::String(text.into()));
    c.call_tool(CallToolRequestParams::new("echo").with_arguments(args))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_refusal_and_session_event_is_recorded_once() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path());
    let log = dir.path().join("audit").join("audit.jsonl");
    let up = demo_server::spawn("127.0.0.1:0".parse().unwrap(), DemoOptions::default())
        .await
        .unwrap();
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[upstreams.demo]
url = "http://{up}/mcp"
[auth]
scopes = ["mcp:tools"]
api_keys_file = "{keys}"
[[auth.permissions]]
tools = ["incr*"]
scopes = ["admin"]
[limits]
key = "agent"
requests_per_minute = 3
[audit]
path = "{log}"
record_arguments = true
redact = ["secret"]
"#,
        keys = keys.display(),
        log = log.display()
    );
    let s = mcp_gateway::config::parse(&text, "test.toml", Path::new(".")).unwrap();
    let gw = gateway(s).await;
    let url = format!("http://{}/mcp/demo", gw.local_addr());

    // alice, legacy with a session: two calls, one forbidden tool, then the session ends.
    let alice = rmcp_client(&url, "alice-key-0123456789", false).await;
    echo(&alice, "one").await.unwrap();
    let mut args = serde_json::Map::new();
    args.insert("text".into(), Value::String("two".into()));
    args.insert("secret".into(), Value::String("hunter2".into()));
    let _ = alice
        .call_tool(CallToolRequestParams::new("echo").with_arguments(args))
        .await;
    let denied = alice
        .call_tool(CallToolRequestParams::new("increment"))
        .await;
    assert!(denied.is_err());
    alice.cancel().await.unwrap();

    // bob, 2026-07-28: discover and two calls fit in 3 requests a minute; the third is 429.
    let bob = rmcp_client(&url, "bob-key-0123456789", true).await;
    echo(&bob, "a").await.unwrap();
    echo(&bob, "b").await.unwrap();
    let limited = echo(&bob, "c").await;
    assert!(limited.unwrap_err().contains("429"));

    // No token, and a body that is not JSON.
    let c = client();
    let resp = mcp_post(
        &c,
        &url,
        r#"{"jsonrpc":"2.0","id":"anon","method":"tools/call","params":{"name":"echo"}}"#,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = mcp_post(&c, &url, "{not json")
        .header("authorization", "Bearer alice-key-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    gw.shutdown().await;
    let all = records(&log);
    // GET streams the SDK may open are exchanges too; the checks below are about the rest.
    let rs: Vec<&Value> = all.iter().filter(|r| r["http_method"] != "GET").collect();
    let find = |pred: &dyn Fn(&Value) -> bool| -> Vec<&Value> {
        rs.iter().copied().filter(|r| pred(r)).collect()
    };
    let one = |what: &str, pred: &dyn Fn(&Value) -> bool| -> Value {
        let found = find(pred);
        assert_eq!(found.len(), 1, "{what}: {found:#?}\nall: {all:#?}");
        found[0].clone()
    };

    // Session start and end, once each, with the same session id.
    let start = one("session start", &|r| r["event"] == "session_start");
    let session = start["session"].as_str().unwrap().to_owned();
    assert_eq!(start["agent"], "alice");
    let init = one("initialize", &|r| {
        r["method"] == "initialize" && r["event"] == "request"
    });
    assert_eq!(init["session"], session.as_str());
    assert_eq!(init["outcome"], "ok");
    let end = one("session end", &|r| r["event"] == "session_end");
    assert_eq!(end["session"], session.as_str());
    assert_eq!(end["agent"], "alice");
    assert_eq!(end["http_method"], "DELETE");
    one("the DELETE", &|r| {
        r["http_method"] == "DELETE" && r["event"] == "request"
    });

    // alice's calls.
    let ok = find(&|r| r["agent"] == "alice" && r["tool"] == "echo" && r["outcome"] == "ok");
    assert_eq!(ok.len(), 2, "{all:#?}");
    for r in &ok {
        assert_eq!(r["session"], session.as_str());
        assert_eq!(r["route"], "demo");
        assert_eq!(r["status"], 200);
        assert!(r["client"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert!(r["tokens_in"].as_u64().unwrap() > 0);
        assert!(r["tokens_out"].as_u64().unwrap() > 0);
        assert_eq!(r["args_sha256"].as_str().unwrap().len(), 64);
        assert!(r["id"].is_number() || r["id"].is_string());
        assert!(r["latency_us"].as_u64().is_some());
        assert!(r["time"].as_str().unwrap().ends_with('Z'));
    }
    let redacted = one("redacted call", &|r| r["args"]["text"] == "two");
    assert_eq!(redacted["args"]["secret"], "[redacted]");
    let forbidden = one("forbidden", &|r| r["tool"] == "increment");
    assert_eq!(forbidden["outcome"], "denied_permission");
    assert_eq!(forbidden["status"], 403);
    assert_eq!(forbidden["error_code"], -32056, "{all:#?}");
    assert_eq!(forbidden["agent"], "alice");
    assert_eq!(forbidden["denied_by"], "auth");

    // bob's.
    one("discover", &|r| {
        r["agent"] == "bob" && r["method"] == "server/discover"
    });
    let bob_ok = find(&|r| r["agent"] == "bob" && r["tool"] == "echo" && r["outcome"] == "ok");
    assert_eq!(bob_ok.len(), 2, "{all:#?}");
    assert!(bob_ok.iter().all(|r| r.get("session").is_none()));
    let limited = one("rate limited", &|r| r["outcome"] == "rate_limited");
    assert_eq!(limited["agent"], "bob");
    assert_eq!(limited["status"], 429);
    assert_eq!(limited["tool"], "echo");
    assert_eq!(limited["denied_by"], "limits");

    // The refusals before anyone is known.
    let anon = one("no token", &|r| r["outcome"] == "denied_auth");
    assert_eq!(anon["id"], "anon");
    assert_eq!(anon["status"], 401);
    assert!(anon.get("agent").is_none());
    let bad = one("bad input", &|r| r["outcome"] == "bad_input");
    assert_eq!(bad["status"], 400);

    // Nothing recorded twice: (seq) unique and contiguous.
    let seqs: Vec<u64> = all.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=all.len() as u64).collect::<Vec<_>>());

    // The CLI: the chain verifies, and a query finds bob's refusal.
    let out = bin().args(["audit", "verify"]).arg(&log).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = bin()
        .args([
            "audit",
            "query",
            "--agent",
            "bob",
            "--outcome",
            "rate_limited",
            "--json",
        ])
        .arg(&log)
        .output()
        .unwrap();
    assert!(out.status.success());
    let lines: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let out = bin()
        .args(["audit", "query", "--tool", "echo", "--since", "1h"])
        .arg(&log)
        .output()
        .unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.starts_with("TIME"), "{table}");
    assert_eq!(table.lines().count(), 1 + 2 + 2 + 1 + 1, "{table}");

    // An edited byte makes verify fail, naming the line.
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(
        &log,
        text.replacen("\"agent\":\"bob\"", "\"agent\":\"eve\"", 1),
    )
    .unwrap();
    let out = bin().args(["audit", "verify"]).arg(&log).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("audit.jsonl:") && err.contains("altered"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_record_of_an_answered_call() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    // An upstream answering every call at once, echoing its id.
    let up = raw_upstream(|req: http::Request<hyper::body::Incoming>| async move {
        use http_body_util::BodyExt;
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap();
        let answer = serde_json::json!({"jsonrpc":"2.0","id":v["id"],"result":{"content":[]}});
        http::Response::builder()
            .header("content-type", "application/json")
            .body(full(answer.to_string()))
            .unwrap()
    })
    .await;
    let port = free_port();
    let config = dir.path().join("gw.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[log]\nlevel = \"warn\"\n[upstreams.up]\nurl = \"http://{up}/mcp\"\n[audit]\npath = \"{}\"\nfsync = \"always\"\nrotate_size = \"64KiB\"\n",
            log.display()
        ),
    )
    .unwrap();
    let mut child = start(&config, port).await;
    let url = format!("http://127.0.0.1:{port}/mcp/up");
    let c = client();
    // Eight clients call in a loop; every answer received in full is noted.
    let answered = Arc::new(Mutex::new(HashSet::new()));
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let (c, url, answered) = (client(), url.clone(), answered.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let id = t * 1_000_000 + i;
                let body = format!(
                    r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"i":{i}}}}}}}"#
                );
                let Ok(resp) = mcp_post(&c, &url, &body)
                    .header("mcp-protocol-version", "2025-11-25")
                    .send()
                    .await
                else {
                    return;
                };
                let Ok(bytes) = resp.bytes().await else {
                    return;
                };
                let v: Value = match serde_json::from_slice(&bytes) {
                    Ok(v) => v,
                    Err(_) => return,
                };
                assert_eq!(v["id"], id);
                answered.lock().unwrap().insert(id);
            }
        }));
    }
    while answered.lock().unwrap().len() < 400 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let answered = answered.lock().unwrap().clone();
    let files = || {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                name.starts_with("audit.jsonl") && !name.ends_with(".head")
            })
            .collect();
        v.sort();
        v
    };
    assert!(files().len() > 1, "rotated: {:?}", files());
    let recorded: HashSet<u64> = files()
        .iter()
        .flat_map(|f| records(f))
        .filter_map(|r| r["id"].as_u64())
        .collect();
    let missing: Vec<&u64> = answered.difference(&recorded).collect();
    assert!(missing.is_empty(), "answered but not recorded: {missing:?}");
    // The chain verifies up to the cut, across the rotations.
    let verify = || {
        let out = bin()
            .args(["audit", "verify"])
            .args(files())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let before = verify();
    // A restart continues the chain; a graceful stop flushes.
    let child = start(&config, port).await;
    for i in 0..20 {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{},"method":"tools/call","params":{{"name":"echo"}}}}"#,
            900_000_000 + i
        );
        let resp = mcp_post(&c, &url, &body)
            .header("mcp-protocol-version", "2025-11-25")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut child = child;
    assert!(child.wait().unwrap().success());
    let after = verify();
    let count = |s: &str| -> u64 { s.split_whitespace().nth(1).unwrap().parse().unwrap() };
    assert_eq!(count(&after), count(&before) + 20, "{before} / {after}");
}

/// Starts the real binary on `port` and waits until it answers.
async fn start(config: &Path, port: u16) -> std::process::Child {
    let mut child = bin()
        .args(["serve", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let c = client();
    for _ in 0..200 {
        if c.get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .is_ok()
        {
            return child;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the gateway did not start");
}

/// `GET /readyz` on the public listener: its status.
async fn readyz(c: &reqwest::Client, base: &str) -> u16 {
    c.get(format!("{base}/readyz"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Polls `/readyz` until it answers `want` (bounded: generous for a shared CI machine).
async fn readyz_becomes(c: &reqwest::Client, base: &str, want: u16) {
    let t = std::time::Instant::now();
    loop {
        let got = readyz(c, base).await;
        if got == want {
            return;
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(20),
            "/readyz stayed {got}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// `fsync = "always"` and an audit folder that stops being writable, for real: the folder is
/// moved away and a file put at its path (the open log keeps taking bytes, but its `.head`
/// seal cannot be created, so no record can be made durable — what a full or read-only disk
/// looks like to the writer; done this way because root ignores folder permissions). The
/// call in flight is cut off after `write_timeout` instead of hanging behind its 200,
/// `/readyz` turns 503, new calls get 503 / -32054; once the folder is back, the gateway
/// recovers by itself: `/readyz` 200, calls flow, every accepted record is written and
/// `audit verify` passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_audit_folder_turns_readyz_503_refuses_calls_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("audit");
    let moved = dir.path().join("audit.moved");
    let log = folder.join("audit.jsonl");
    let up = raw_upstream(|req: http::Request<hyper::body::Incoming>| async move {
        use http_body_util::BodyExt;
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap();
        let answer = serde_json::json!({"jsonrpc":"2.0","id":v["id"],"result":{}});
        http::Response::builder()
            .header("content-type", "application/json")
            .body(full(answer.to_string()))
            .unwrap()
    })
    .await;
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[upstreams.demo]
url = "http://{up}/mcp"
[audit]
path = "{log}"
fsync = "always"
write_timeout = "500ms"
"#,
        log = log.display()
    );
    let s = mcp_gateway::config::parse(&text, "test.toml", Path::new(".")).unwrap();
    let gw = gateway(s).await;
    let base = format!("http://{}", gw.local_addr());
    let url = format!("{base}/mcp/demo");
    let c = client();
    let ping = |id: u32| format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#);
    // Generous bounds: what is checked is that nothing hangs, not how fast it fails.
    let bound = std::time::Duration::from_secs(15);

    let resp = mcp_post(&c, &url, &ping(1)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
    assert_eq!(readyz(&c, &base).await, 200);

    // The folder goes.
    std::fs::rename(&folder, &moved).unwrap();
    std::fs::write(&folder, b"not a folder").unwrap();
    let resp = mcp_post(&c, &url, &ping(2)).send().await.unwrap();
    assert_eq!(
        resp.status(),
        200,
        "the answer started before the record failed"
    );
    let body = tokio::time::timeout(bound, resp.bytes())
        .await
        .expect("the answer hung behind its audit record");
    assert!(
        body.is_err(),
        "a complete answer whose record is not durable"
    );
    readyz_becomes(&c, &base, 503).await;
    let t = std::time::Instant::now();
    let resp = tokio::time::timeout(bound, mcp_post(&c, &url, &ping(3)).send())
        .await
        .expect("the call hung on the audit log")
        .unwrap();
    assert!(t.elapsed() < bound);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_error(resp, 503, -32054, Value::from(3)).await;
    assert_eq!(readyz(&c, &base).await, 503);

    // The folder is back: the gateway recovers by itself.
    std::fs::remove_file(&folder).unwrap();
    std::fs::rename(&moved, &folder).unwrap();
    readyz_becomes(&c, &base, 200).await;
    let resp = mcp_post(&c, &url, &ping(4)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();

    gw.shutdown().await;
    // Every accepted call's record, the cut-off one included and followed by the record that
    // says its answer was cut off; the refused one is not a record.
    let seen: Vec<(Value, Value)> = records(&log)
        .iter()
        .map(|r| (r["id"].clone(), r["event"].clone()))
        .collect();
    let want = |id: u64, event: &str| (Value::from(id), Value::from(event));
    assert_eq!(
        seen,
        [
            want(1, "request"),
            want(2, "request"),
            want(2, "answer_cut"),
            want(4, "request")
        ]
    );
    let out = bin().args(["audit", "verify"]).arg(&log).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("head checked"));
}

/// A legacy MCP POST with an API key, in session `sid` when given.
async fn legacy_post(
    c: &reqwest::Client,
    url: &str,
    key: &str,
    sid: Option<&str>,
    body: String,
) -> reqwest::Response {
    let mut req = c
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("authorization", format!("Bearer {key}"))
        .body(body);
    if let Some(s) = sid {
        req = req
            .header("mcp-session-id", s)
            .header("mcp-protocol-version", "2025-11-25");
    }
    req.send().await.unwrap()
}

/// Issue 22. An API key whose entry names `agent = "ci-bot"` and `subject = "team-ci"`: the
/// audit records name the agent `ci-bot` — as the limits and the metrics do — and the
/// subject `team-ci` in its own field, so `audit query --agent ci-bot` finds the calls. And
/// a session is named by its handle everywhere: its `session_start` record carries the
/// same 24-hex handle as its calls — a call refused by `[limits]` before SessionAffinity
/// included — and no line of the log holds the sealed id the client was given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_name_the_agent_key_and_the_session_handle_never_the_id() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    std::fs::write(
        &keys,
        format!(
            "[[keys]]\nsha256 = \"{}\"\nagent = \"ci-bot\"\nsubject = \"team-ci\"\nscopes = [\"mcp:tools\"]\n",
            sha256_hex("ci-bot-key-0123456789")
        ),
    )
    .unwrap();
    let log = dir.path().join("audit.jsonl");
    let up = demo_server::spawn("127.0.0.1:0".parse().unwrap(), DemoOptions::default())
        .await
        .unwrap();
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[upstreams.demo]
url = "http://{up}/mcp"
[auth]
scopes = ["mcp:tools"]
api_keys_file = "{keys}"
[limits]
key = "agent"
requests_per_minute = 3
[sessions]
[audit]
path = "{log}"
"#,
        keys = keys.display(),
        log = log.display()
    );
    let s = mcp_gateway::config::parse(&text, "test.toml", Path::new(".")).unwrap();
    let gw = gateway(s).await;
    let url = format!("http://{}/mcp/demo", gw.local_addr());
    let key = "ci-bot-key-0123456789";
    let c = client();

    let init = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"0"}}}"#;
    let resp = legacy_post(&c, &url, key, None, init.into()).await;
    assert_eq!(resp.status(), 200);
    let sid = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    resp.bytes().await.unwrap();
    assert!(sid.len() > 100, "a sealed id: {sid}");
    let initialized = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    let resp = legacy_post(&c, &url, key, Some(&sid), initialized.into()).await;
    assert_eq!(resp.status(), 202);
    // Calls until the budget of three requests a minute refuses one (429, before
    // SessionAffinity sees it).
    let mut statuses = Vec::new();
    for id in 1..=4 {
        let call = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"hi"}}}}}}"#
        );
        let resp = legacy_post(&c, &url, key, Some(&sid), call).await;
        statuses.push(resp.status().as_u16());
        resp.bytes().await.unwrap();
        if statuses.last() == Some(&429) {
            break;
        }
    }
    assert_eq!(statuses.first(), Some(&200), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    gw.shutdown().await;

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains(&sid),
        "the audit log holds the sealed id:\n{text}"
    );
    let all = records(&log);
    let start = all
        .iter()
        .find(|r| r["event"] == "session_start")
        .unwrap_or_else(|| panic!("no session_start: {all:#?}"));
    let handle = start["session"].as_str().unwrap();
    assert_eq!(handle.len(), 24, "{all:#?}");
    assert!(handle.bytes().all(|b| b.is_ascii_hexdigit()), "{handle}");
    let ok: Vec<&Value> = all
        .iter()
        .filter(|r| r["tool"] == "echo" && r["outcome"] == "ok")
        .collect();
    assert!(!ok.is_empty(), "{all:#?}");
    let limited: Vec<&Value> = all
        .iter()
        .filter(|r| r["outcome"] == "rate_limited")
        .collect();
    assert_eq!(limited.len(), 1, "{all:#?}");
    assert_eq!(limited[0]["denied_by"], "limits");
    for r in all.iter().filter(|r| r["http_method"] == "POST") {
        assert_eq!(r["session"], handle, "every record of the session: {r}");
        assert_eq!(r["agent"], "ci-bot", "{r}");
        assert_eq!(r["subject"], "team-ci", "{r}");
    }

    // The CLI: the chain verifies; the agent (and the subject) find every record.
    let out = bin().args(["audit", "verify"]).arg(&log).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let query = |args: &[&str]| -> Vec<Value> {
        let out = bin()
            .args(["audit", "query", "--json"])
            .args(args)
            .arg(&log)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::str::from_utf8(&out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let named = all.iter().filter(|r| r.get("agent").is_some()).count();
    assert!(named >= 5, "{all:#?}");
    assert_eq!(query(&["--agent", "ci-bot"]).len(), named);
    assert_eq!(query(&["--subject", "team-ci"]).len(), named);
    assert!(query(&["--agent", "team-ci"]).is_empty());
    let limited = query(&["--agent", "ci-bot", "--outcome", "rate_limited"]);
    assert_eq!(limited.len(), 1);
    assert_eq!(limited[0]["session"], handle);
    // The table shows both.
    let out = bin()
        .args([
            "audit",
            "query",
            "--agent",
            "ci-bot",
            "--outcome",
            "rate_limited",
        ])
        .arg(&log)
        .output()
        .unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.lines().next().unwrap().contains("SUBJECT"), "{table}");
    let row = table.lines().nth(1).unwrap();
    assert!(row.contains("ci-bot") && row.contains("team-ci"), "{table}");
}
