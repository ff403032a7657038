//! stdio upstreams through the gateway process: local MCP servers on the official Python SDK
//! (and the rmcp conformance fixture) run as supervised children. Crashes, back-off and
//! readiness, process hygiene (no orphans, no zombies, no leaked descriptors, nothing left
//! after a SIGKILL of the gateway), environment isolation (per agent too), secrets kept out of
//! logs, oversized and non-JSON output, max_processes.
#![allow(clippy::unwrap_used, missing_docs)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"0"}}}"#;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The Python of the project's tool folder, with the official MCP SDK (installed by
/// `scripts/test`, through scripts/interop/setup.sh).
fn python() -> PathBuf {
    let p = root().join(".tools/venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/test, which installs the Python SDK the stdio tests use",
        p.display()
    );
    p
}

fn server_py() -> PathBuf {
    root().join("mcp-gateway-bin/tests/fixtures/stdio_server.py")
}

/// The TOML array running the Python test server, with `extra` arguments.
fn py_command(extra: &[&str]) -> String {
    let mut argv = vec![
        python().display().to_string(),
        server_py().display().to_string(),
    ];
    argv.extend(extra.iter().map(|s| (*s).to_owned()));
    toml_array(&argv)
}

fn toml_array(argv: &[String]) -> String {
    format!(
        "[{}]",
        argv.iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A gateway process; killed (SIGKILL) when dropped unless stopped.
struct Gw {
    child: Option<Child>,
    port: u16,
    admin: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Gw {
    /// Starts `mcp-gateway serve` with `body` (the file without `[server]` and `[admin]`);
    /// `{dir}` in it is the config's folder.
    fn start(body: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let admin = free_port();
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_grace = \"2s\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n[log]\nlevel = \"debug\"\n{}",
            body.replace("{dir}", &dir.path().display().to_string())
        );
        let cfg = dir.path().join("gw.toml");
        std::fs::write(&cfg, text).unwrap();
        let log = dir.path().join("gw.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_mcp-gateway"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .envs(env.iter().copied())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the gateway did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child: Some(child),
            port,
            admin,
            log,
            _dir: dir,
        }
    }

    fn url(&self, route: &str) -> String {
        format!("http://127.0.0.1:{}/mcp/{route}", self.port)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn admin_get(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("http://127.0.0.1:{}{path}", self.admin))
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// SIGTERM, then waits for the gateway to exit.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().build().unwrap()
}

async fn post(
    c: &reqwest::Client,
    url: &str,
    session: Option<&str>,
    body: &str,
) -> reqwest::Response {
    let mut r = c
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body.to_owned());
    if let Some(s) = session {
        r = r
            .header("mcp-session-id", s)
            .header("mcp-protocol-version", "2025-11-25");
    }
    r.send().await.unwrap()
}

/// A legacy session: its id.
async fn initialize(c: &reqwest::Client, url: &str) -> String {
    let r = post(c, url, None, INIT).await;
    assert_eq!(r.status(), 200);
    let sid = r.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["result"]["serverInfo"]["name"].is_string(), "{v}");
    let r = post(
        c,
        url,
        Some(&sid),
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    )
    .await;
    assert_eq!(r.status(), 202);
    sid
}

fn call_body(tool: &str, args: serde_json::Value) -> String {
    serde_json::json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":tool,"arguments":args}}).to_string()
}

/// A tool call's answer: the JSON body, or the last event of an SSE one.
async fn call(
    c: &reqwest::Client,
    url: &str,
    sid: &str,
    tool: &str,
    args: serde_json::Value,
) -> (u16, serde_json::Value) {
    let r = post(c, url, Some(sid), &call_body(tool, args)).await;
    let status = r.status().as_u16();
    let sse = r
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap().starts_with("text/event-stream"));
    let body = r.text().await.unwrap();
    let json = if sse {
        body.lines()
            .rev()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap_or("null")
            .to_owned()
    } else {
        body
    };
    (status, serde_json::from_str(&json).unwrap())
}

fn text(v: &serde_json::Value) -> String {
    v["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// Every process: (pid, state, parent pid, process group), from `/proc/PID/stat`.
fn processes() -> Vec<(u32, String, u32, u32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // After the command name in parentheses: state, ppid, pgrp, …
        let rest: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let num = |i: usize| rest.get(i).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
        out.push((p, rest.first().unwrap_or(&"?").to_string(), num(1), num(2)));
    }
    out
}

/// The processes whose parent is `pid`, and how many of them are zombies.
fn children_of(pid: u32) -> (Vec<u32>, usize) {
    let kids: Vec<_> = processes().into_iter().filter(|p| p.2 == pid).collect();
    let zombies = kids.iter().filter(|p| p.1 == "Z").count();
    (kids.into_iter().map(|p| p.0).collect(), zombies)
}

fn fds_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

async fn wait_until<F: FnMut() -> bool>(what: &str, limit: Duration, mut f: F) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_killed_mid_call_fails_the_call_at_once_and_the_next_call_succeeds() {
    let gw = Gw::start(
        &format!("[upstreams.t]\ncommand = {}\n", py_command(&[])),
        &[],
    );
    let c = client();
    let url = gw.url("t");
    let sid = initialize(&c, &url).await;
    let (_, v) = call(&c, &url, &sid, "pid", serde_json::json!({})).await;
    let pid: u32 = text(&v).parse().unwrap();
    // A call that would take 30 s; the child is killed under it.
    let slow = tokio::spawn({
        let (c, url, sid) = (c.clone(), url.clone(), sid.clone());
        async move {
            let r = call(&c, &url, &sid, "slow", serde_json::json!({"ms": 30000})).await;
            (r, Instant::now())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = Instant::now();
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let ((status, v), answered) = slow.await.unwrap();
    let latency = answered.duration_since(killed);
    eprintln!("error reached the client {latency:?} after the kill");
    assert_eq!(status, 502, "{v}");
    assert_eq!(v["error"]["code"], -32050);
    assert_eq!(v["id"], 7);
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("exited (signal 9)"), "{msg}");
    // Far below any timeout: the exit is seen, not waited out.
    assert!(latency < Duration::from_secs(2), "{latency:?}");
    // The next call waits out the short back-off and reaches a new child.
    let (status, v) = call(&c, &url, &sid, "pid", serde_json::json!({})).await;
    assert_eq!(status, 200, "{v}");
    let new_pid: u32 = text(&v).parse().unwrap();
    assert_ne!(new_pid, pid);
    let (_, m) = gw.admin_get("/metrics").await;
    assert!(
        m.contains("mcp_gateway_stdio_crashes_total{upstream=\"t\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("mcp_gateway_stdio_restarts_total{upstream=\"t\"} 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_exits_at_once_backs_off_and_readyz_names_it() {
    let gw = Gw::start(
        &format!(
            "[upstreams.good]\ncommand = {}\n[upstreams.bad]\ncommand = {}\nqueue_timeout = \"100ms\"\n",
            py_command(&[]),
            py_command(&["--exit-at-once"])
        ),
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let (status, body) = gw.admin_get("/readyz").await;
        if status == 503 {
            break body;
        }
        assert!(Instant::now() < deadline, "never unready: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        body.contains("stdio upstream bad is crash-looping"),
        "{body}"
    );
    assert!(body.contains("exit code 3"), "{body}");
    // Back-off: the delays double, so a few seconds hold only a handful of starts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, m) = gw.admin_get("/metrics").await;
    let starts: u64 = m
        .lines()
        .find(|l| l.starts_with("mcp_gateway_stdio_starts_total{upstream=\"bad\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!((4..=12).contains(&starts), "{starts} starts\n{m}");
    let delays: Vec<u64> = gw
        .log()
        .lines()
        .filter(|l| l.contains("back-off") && l.contains("upstream=bad"))
        .filter_map(|l| l.split("restart_in_ms=").nth(1))
        .filter_map(|v| v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect();
    assert!(delays.len() >= 4, "{delays:?}");
    // Jittered between half and all of a doubling delay: the fourth is above the first's cap.
    assert!(delays[3] > 100, "{delays:?}");
    // A call to it is refused at once, with when to retry.
    let c = client();
    let r = post(&c, &gw.url("bad"), None, INIT).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], -32054);
    // The other upstream still serves.
    let sid = initialize(&c, &gw.url("good")).await;
    let (status, _) = call(
        &c,
        &gw.url("good"),
        &sid,
        "echo",
        serde_json::json!({"text": "x"}),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_is_only_what_the_config_gives_and_secrets_stay_out_of_every_output() {
    const SECRET: &str = "s3cret-0f-the-file-7e1d";
    const AGENT_A: &str = "alice-token-91c2";
    const AGENT_B: &str = "bob-token-5d0e";
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), format!("{SECRET}\n")).unwrap();
    let key = |k: &str| {
        use sha2::Digest;
        sha2::Sha256::digest(k.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let keys = dir.path().join("keys.toml");
    std::fs::write(
        &keys,
        format!(
            "[[keys]]\nsha256 = \"{}\"\nagent = \"alice\"\n[[keys]]\nsha256 = \"{}\"\nagent = \"bob\"\n",
            key("key-a"),
            key("key-b")
        ),
    )
    .unwrap();
    let audit = dir.path().join("audit.jsonl");
    let gw = Gw::start(
        &format!(
            r#"[auth]
api_keys_file = "{keys}"
[audit]
path = "{audit}"
[telemetry]
[upstreams.shared]
command = {cmd}
env = {{ GIVEN = "given-value" }}
env_files = {{ API_TOKEN = "{token}" }}
inherit_env = ["PASSED_ON"]
[upstreams.agents]
command = {cmd}
mode = "per_agent"
[upstreams.agents.agent_env.alice]
AGENT_TOKEN = "{AGENT_A}"
[upstreams.agents.agent_env.bob]
AGENT_TOKEN = "{AGENT_B}"
"#,
            keys = keys.display(),
            audit = audit.display(),
            token = dir.path().join("token").display(),
            cmd = py_command(&[]),
        ),
        &[
            ("PASSED_ON", "yes"),
            ("NOT_PASSED", "leak"),
            ("LANG", "C.UTF-8"),
        ],
    );
    let c = client();
    let env_of = |route: &'static str, key: &'static str| {
        let (c, url) = (c.clone(), gw.url(route));
        async move {
            let r = c
                .post(&url)
                .bearer_auth(key)
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .body(call_body("env", serde_json::json!({})))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let v: serde_json::Value = r.json().await.unwrap();
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&text(&v)).unwrap()
        }
    };
    let env = env_of("shared", "key-a").await;
    let mut names: Vec<&str> = env.keys().map(String::as_str).collect();
    names.sort_unstable();
    let allowed = [
        "API_TOKEN",
        "GIVEN",
        "HOME",
        "LANG",
        "PASSED_ON",
        "PATH",
        "TZ",
    ];
    assert!(names.iter().all(|n| allowed.contains(n)), "{names:?}");
    for must in ["API_TOKEN", "GIVEN", "PASSED_ON", "PATH", "LANG"] {
        assert!(names.contains(&must), "{must} missing: {names:?}");
    }
    assert_eq!(env["API_TOKEN"], SECRET);
    assert_eq!(env["GIVEN"], "given-value");
    assert!(!env.contains_key("NOT_PASSED"));
    // per_agent: each agent's child has its own token, and never the other's.
    let a = env_of("agents", "key-a").await;
    let b = env_of("agents", "key-b").await;
    assert_eq!(a["AGENT_TOKEN"], AGENT_A);
    assert_eq!(b["AGENT_TOKEN"], AGENT_B);
    assert!(!serde_json::to_string(&a).unwrap().contains(AGENT_B));
    assert!(!serde_json::to_string(&b).unwrap().contains(AGENT_A));
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains("mcp_gateway_stdio_processes{upstream=\"agents\"} 2"),
        "{metrics}"
    );
    let mut gw = gw;
    gw.stop();
    // The values were answered to the callers (that is what the test tool does), but no log
    // line, audit record, span or metric of the gateway carries them.
    let log = gw.log();
    let audit = std::fs::read_to_string(&audit).unwrap();
    assert!(audit.lines().count() >= 3, "{audit}");
    for secret in [SECRET, AGENT_A, AGENT_B] {
        assert!(!log.contains(secret), "{secret} in the log");
        assert!(!audit.contains(secret), "{secret} in the audit log");
        assert!(!metrics.contains(secret), "{secret} in /metrics");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_non_json_output_fail_one_call_not_the_process() {
    let gw = Gw::start(
        &format!(
            "[upstreams.t]\ncommand = {}\nmax_message_size = \"64KiB\"\n",
            py_command(&[])
        ),
        &[],
    );
    let c = client();
    let url = gw.url("t");
    let sid = initialize(&c, &url).await;
    let (_, v) = call(&c, &url, &sid, "pid", serde_json::json!({})).await;
    let pid = text(&v);
    let (status, v) = call(&c, &url, &sid, "big", serde_json::json!({"size": 200_000})).await;
    assert_eq!(status, 502, "{v}");
    assert_eq!(v["error"]["code"], -32050);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_message_size"),
        "{v}"
    );
    let (status, v) = call(&c, &url, &sid, "noise", serde_json::json!({"lines": 2})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(text(&v), "noisy");
    let (_, v) = call(&c, &url, &sid, "pid", serde_json::json!({})).await;
    assert_eq!(text(&v), pid, "the process was not restarted");
    let log = gw.log();
    assert!(log.contains("not a JSON-RPC message: dropped"), "{log}");
    assert!(log.contains("stderr: noise line 1"), "{log}");
    assert!(log.contains("upstream=t"), "{log}");
}

/// The TOML array running the rmcp fixture over stdio.
fn fixture_command() -> String {
    toml_array(&[fixture().display().to_string(), "--stdio".into()])
}

/// The rmcp conformance fixture (a Rust SDK stdio server), built by `cargo test --workspace`.
fn fixture() -> PathBuf {
    let dir =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    let bin = dir.join("debug/conformance-server");
    if !bin.exists() {
        let ok = Command::new(env!("CARGO"))
            .args([
                "build",
                "-q",
                "-p",
                "mcp-gateway-examples",
                "--bin",
                "conformance-server",
            ])
            .current_dir(root())
            .status()
            .unwrap();
        assert!(ok.success());
    }
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_session_cycles_leave_no_process_zombie_or_descriptor_behind() {
    let cycles: usize = std::env::var("STDIO_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let gw = Gw::start(
        &format!(
            "[upstreams.t]\ncommand = {}\nmode = \"per_session\"\nmax_processes = 4\nstop_timeout = \"1s\"\n",
            fixture_command()
        ),
        &[],
    );
    let c = client();
    let url = gw.url("t");
    // One cycle first, so the gateway's own lazily opened descriptors exist at the baseline.
    for _ in 0..2 {
        let sid = initialize(&c, &url).await;
        c.delete(&url)
            .header("mcp-session-id", &sid)
            .send()
            .await
            .unwrap();
    }
    wait_until(
        "the warm-up children to exit",
        Duration::from_secs(10),
        || children_of(gw.pid()).0.is_empty(),
    )
    .await;
    let fds = fds_of(gw.pid());
    for i in 0..cycles {
        let sid = initialize(&c, &url).await;
        let r = post(
            &c,
            &url,
            Some(&sid),
            &call_body("echo", serde_json::json!({"text": format!("cycle {i}")})),
        )
        .await;
        assert_eq!(r.status(), 200);
        let r = c
            .delete(&url)
            .header("mcp-session-id", &sid)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        // The ended session is gone.
        let r = post(
            &c,
            &url,
            Some(&sid),
            &call_body("echo", serde_json::json!({"text": "x"})),
        )
        .await;
        assert_eq!(r.status(), 404);
    }
    wait_until("every child to exit", Duration::from_secs(10), || {
        let (kids, zombies) = children_of(gw.pid());
        kids.is_empty() && zombies == 0
    })
    .await;
    let after = fds_of(gw.pid());
    eprintln!("{cycles} cycles: descriptors {fds} before, {after} after");
    assert!(after <= fds + 2, "descriptors {fds} → {after}");
    let (_, m) = gw.admin_get("/metrics").await;
    assert!(
        m.contains(&format!(
            "mcp_gateway_stdio_starts_total{{upstream=\"t\"}} {}",
            cycles + 2
        )),
        "{m}"
    );
    assert!(
        m.contains("mcp_gateway_stdio_processes{upstream=\"t\"} 0"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_processes_makes_new_work_wait_then_refuses_it() {
    let gw = Gw::start(
        &format!(
            "[upstreams.t]\ncommand = {}\nmode = \"per_session\"\nmax_processes = 1\nqueue_timeout = \"300ms\"\n",
            fixture_command()
        ),
        &[],
    );
    let c = client();
    let url = gw.url("t");
    let first = initialize(&c, &url).await;
    let started = Instant::now();
    let r = post(&c, &url, None, INIT).await;
    assert_eq!(r.status(), 503);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(r.headers().contains_key("retry-after"));
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], -32054);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_processes"),
        "{v}"
    );
    // A session that ends frees its process for the next one.
    c.delete(&url)
        .header("mcp-session-id", &first)
        .send()
        .await
        .unwrap();
    let second = initialize(&c, &url).await;
    assert_ne!(first, second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_with_sigkill_leaves_no_child_behind() {
    // `wrapped` starts a helper of its own in the background (what launchers and shell
    // wrappers do): it must go too, though the kernel's parent-death signal does not reach it.
    let wrapped = format!(
        "sleep 300 & exec {} {}",
        python().display(),
        server_py().display()
    );
    let mut gw = Gw::start(
        &format!(
            "[upstreams.py]\ncommand = {}\n[upstreams.rs]\ncommand = {}\nmode = \"per_session\"\n[upstreams.wrapped]\ncommand = {}\n",
            py_command(&[]),
            fixture_command(),
            toml_array(&["sh".into(), "-c".into(), wrapped]),
        ),
        &[],
    );
    let c = client();
    let sid = initialize(&c, &gw.url("py")).await;
    let _ = call(
        &c,
        &gw.url("py"),
        &sid,
        "echo",
        serde_json::json!({"text": "x"}),
    )
    .await;
    let _rs = initialize(&c, &gw.url("rs")).await;
    let _w = initialize(&c, &gw.url("wrapped")).await;
    // Every process of every child's group: the servers, the helper, the watchdogs.
    let groups: Vec<u32> = children_of(gw.pid()).0;
    let members: Vec<u32> = groups.iter().flat_map(|g| group_members(*g)).collect();
    assert!(members.len() >= 7, "{members:?}");
    let mut child = gw.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    wait_until(
        "every process the gateway started to die with it",
        Duration::from_secs(5),
        || members.iter().all(|p| !alive(*p)),
    )
    .await;
}

/// The processes of process group `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|p| p.3 == pgid)
        .map(|p| p.0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_ends_children_by_the_stdio_shutdown() {
    let mut gw = Gw::start(
        &format!("[upstreams.py]\ncommand = {}\n", py_command(&[])),
        &[],
    );
    let c = client();
    let sid = initialize(&c, &gw.url("py")).await;
    let (_, v) = call(&c, &gw.url("py"), &sid, "pid", serde_json::json!({})).await;
    let pid: u32 = text(&v).parse().unwrap();
    gw.stop();
    assert!(!alive(pid));
    let log = gw.log();
    // stdin closed was enough: the SDK server exits on its own, with status 0.
    assert!(
        log.contains("stdio server stopped") && log.contains("exit code 0"),
        "{log}"
    );
}

#[test]
fn check_reports_stdio_mistakes_with_their_place() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gw.toml");
    std::fs::write(
        &cfg,
        "[upstreams.a]\ncommand = [\"no-such-program-4711\"]\nmode = \"sometimes\"\n[upstreams.b]\nurl = \"http://x/mcp\"\nenv = { A = \"1\" }\n[upstreams.c]\ncommand = [\"true\"]\nenv_files = { T = \"missing-file\" }\nconnect_timeout = \"1s\"\n",
    )
    .unwrap();
    let mut out = String::new();
    let o = Command::new(env!("CARGO_BIN_EXE_mcp-gateway"))
        .args(["check", "--config"])
        .arg(&cfg)
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut o = o;
    o.stderr.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(!o.wait().unwrap().success());
    for want in [
        "gw.toml:2:11: upstream \"a\": program \"no-such-program-4711\" not found on PATH",
        "gw.toml:3:8: upstream \"a\": mode \"sometimes\"",
        "gw.toml:4:12: upstream \"b\": env, env_files",
        "gw.toml:9:13: upstream \"c\": env_files.T: cannot read",
        "gw.toml:8:11: upstream \"c\": connect_timeout apply to HTTP upstreams",
    ] {
        assert!(out.contains(want), "{want:?} not in:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_sessions_the_ids_a_stdio_upstream_issues_are_sealed() {
    let gw = Gw::start(
        &format!(
            "[sessions]\n[upstreams.t]\ncommand = {}\nmode = \"per_session\"\n",
            fixture_command()
        ),
        &[],
    );
    let c = client();
    let url = gw.url("t");
    let sid = initialize(&c, &url).await;
    // Not the upstream's 32 hex digits: the sealed form.
    assert!(sid.len() > 40, "{sid}");
    let (status, v) = call(
        &c,
        &url,
        &sid,
        "echo",
        serde_json::json!({"text": "sealed"}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(text(&v), "sealed");
    // A forged id never reaches the upstream.
    let mut forged = sid.clone();
    forged.replace_range(10..11, if &sid[10..11] == "A" { "B" } else { "A" });
    let (status, _) = call(&c, &url, &forged, "echo", serde_json::json!({"text": "x"})).await;
    assert_eq!(status, 404);
    let r = c
        .delete(&url)
        .header("mcp-session-id", &sid)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let (status, _) = call(&c, &url, &sid, "echo", serde_json::json!({"text": "x"})).await;
    assert_eq!(status, 404);
    wait_until(
        "the session's child to stop",
        Duration::from_secs(5),
        || children_of(gw.pid()).0.is_empty(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_cancel_another_clients_call_on_a_shared_child() {
    let gw = Gw::start(
        &format!("[upstreams.t]\ncommand = {}\n", py_command(&[])),
        &[],
    );
    let c = client();
    let url = gw.url("t");
    let a = initialize(&c, &url).await;
    let b = initialize(&c, &url).await;
    // Both clients use request id 7; B's call is slow.
    let slow = tokio::spawn({
        let (c, url, b) = (c.clone(), url.clone(), b.clone());
        async move { call(&c, &url, &b, "slow", serde_json::json!({"ms": 800})).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cancel = r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":7,"reason":"not yours"}}"#;
    assert_eq!(post(&c, &url, Some(&a), cancel).await.status(), 202);
    let (status, v) = slow.await.unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        text(&v),
        "done",
        "another session's cancellation reached B's call: {v}"
    );
    // B's own cancellation does reach it: its call ends at once, not after 30 s.
    let slow = tokio::spawn({
        let (c, url, b) = (c.clone(), url.clone(), b.clone());
        async move { call(&c, &url, &b, "slow", serde_json::json!({"ms": 30000})).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    assert_eq!(post(&c, &url, Some(&b), cancel).await.status(), 202);
    let (status, _) = slow.await.unwrap();
    assert_ne!(status, 200);
    assert!(started.elapsed() < Duration::from_secs(5));
}
