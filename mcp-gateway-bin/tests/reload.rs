//! Configuration reload against real peers (the rmcp demo server, the gateway's own binary):
//! routes added, removed and changed under open streams and calls in flight; keys revoked,
//! permissions and rates changed; a session key rotated; a certificate swapped; a broken
//! file; SIGHUP and a watched file on a running process.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::{client, demo, mcp_post, session, sha256_hex};
use mcp_gateway::Gateway;
use mcp_gateway_examples::demo_server::DemoOptions;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

const PV: &str = "2025-11-25";
const LIST: &str = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
const SCOPE: &str = "mcp:tools";

fn write(dir: &Path, name: &str, text: &str) {
    // Written aside and renamed over: a reader never sees half a file.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

async fn start(dir: &Path, text: &str) -> Gateway {
    write(dir, "gw.toml", text);
    let settings = mcp_gateway::config::load(&dir.join("gw.toml")).unwrap();
    Gateway::bind(settings).await.unwrap()
}

fn route(gw: &Gateway, name: &str) -> String {
    format!("http://{}/mcp/{name}", gw.local_addr())
}

async fn stateful() -> SocketAddr {
    demo(DemoOptions::default()).await
}

async fn stateless() -> SocketAddr {
    demo(DemoOptions {
        stateless: true,
        json_response: true,
    })
    .await
}

/// Opens the session's GET stream.
async fn get_stream(c: &reqwest::Client, url: &str, sid: &str) -> reqwest::Response {
    let resp = c
        .get(url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", sid)
        .header("mcp-protocol-version", PV)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp
}

/// Reads `stream` until `needle` shows up (true) or it ends (false), within `limit`.
async fn read_until(stream: &mut reqwest::Response, needle: &str, limit: Duration) -> Option<bool> {
    let mut seen = String::new();
    tokio::time::timeout(limit, async {
        loop {
            match stream.chunk().await {
                Ok(Some(c)) => {
                    seen.push_str(&String::from_utf8_lossy(&c));
                    if seen.contains(needle) {
                        return true;
                    }
                }
                Ok(None) | Err(_) => return false,
            }
        }
    })
    .await
    .ok()
}

fn call(id: u32, tool: &str, args: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{args}}}}}"#
    )
}

async fn admin_reload(gw: &Gateway) -> (u16, serde_json::Value) {
    let resp = client()
        .post(format!("http://{}/reload", gw.admin_addr().unwrap()))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

async fn metrics(gw: &Gateway) -> String {
    client()
        .get(format!("http://{}/metrics", gw.admin_addr().unwrap()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_are_added_removed_and_changed_without_dropping_what_runs() {
    let (a, b, c_up) = (stateful().await, stateful().await, stateless().await);
    let dir = tempfile::tempdir().unwrap();
    let gw = start(
        dir.path(),
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndrain_timeout = \"2s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [upstreams.a]\nurl = \"http://{a}/mcp\"\n[upstreams.b]\nurl = \"http://{b}/mcp\"\n"
        ),
    )
    .await;
    let c = client();
    let (url_a, url_b) = (route(&gw, "a"), route(&gw, "b"));
    let sid_a = session(&c, &url_a).await;
    let sid_b = session(&c, &url_b).await;
    let mut stream_a = get_stream(&c, &url_a, &sid_a).await;
    let mut stream_b = get_stream(&c, &url_b, &sid_b).await;
    // A call on b in flight across the reload: about 1.2 s, inside the 2 s drain.
    let slow = tokio::spawn({
        let (c, url_b, sid_b) = (c.clone(), url_b.clone(), sid_b.clone());
        async move {
            let started = Instant::now();
            let resp = mcp_post(
                &c,
                &url_b,
                &call(7, "slow_count", r#"{"n":4,"delay_ms":300}"#),
            )
            .header("mcp-session-id", &sid_b)
            .header("mcp-protocol-version", PV)
            .send()
            .await
            .unwrap();
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap(), started.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    // b removed, a changed (another timeout), c added.
    write(
        dir.path(),
        "gw.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndrain_timeout = \"2s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [upstreams.a]\nurl = \"http://{a}/mcp\"\nresponse_timeout = \"45s\"\n[upstreams.c]\nurl = \"http://{c_up}/mcp\"\n"
        ),
    );
    let reloaded_at = Instant::now();
    let (status, report) = admin_reload(&gw).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["result"], "ok");
    assert_eq!(report["added"], serde_json::json!(["c"]));
    assert_eq!(report["removed"], serde_json::json!(["b"]));
    assert_eq!(report["changed"], serde_json::json!(["a"]));
    // The listen addresses are the file's `:0`, unchanged: nothing is reported as kept.
    assert_eq!(report["not_applied"], serde_json::json!([]), "{report}");

    // The new route serves at once; the removed one is 404 for new calls.
    let resp = mcp_post(&c, &route(&gw, "c"), LIST)
        .header("mcp-protocol-version", PV)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().contains("slow_count"));
    let resp = mcp_post(&c, &url_b, LIST)
        .header("mcp-session-id", &sid_b)
        .header("mcp-protocol-version", PV)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    // The changed route's open stream hears list_changed; its session keeps working.
    assert_eq!(
        read_until(
            &mut stream_a,
            "notifications/tools/list_changed",
            Duration::from_secs(5)
        )
        .await,
        Some(true)
    );
    let resp = mcp_post(&c, &url_a, &call(3, "increment", "{}"))
        .header("mcp-session-id", &sid_a)
        .header("mcp-protocol-version", PV)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // The call in flight on the removed route finished on the stack it started on.
    let (status, body, _) = slow.await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("counted to 4"), "{body}");

    // The removed route's stream ends cleanly once the drain is over, not before.
    assert_eq!(
        read_until(&mut stream_b, "never sent", Duration::from_secs(6)).await,
        Some(false),
        "the removed route's stream ends"
    );
    let ended = reloaded_at.elapsed();
    assert!(
        ended >= Duration::from_millis(1900),
        "ended after {ended:?}, before the drain"
    );
    // The unchanged... the changed route's stream is still open.
    assert_eq!(
        read_until(&mut stream_a, "never sent", Duration::from_millis(500)).await,
        None,
        "a's stream is still open"
    );
    let m = metrics(&gw).await;
    assert!(
        m.contains("mcp_gateway_config_reloads_total{result=\"ok\"} 1"),
        "{m}"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_changes_nothing_and_its_errors_are_located() {
    let up = stateless().await;
    let dir = tempfile::tempdir().unwrap();
    let good = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstreams.demo]\nurl = \"http://{up}/mcp\"\n"
    );
    let gw = start(dir.path(), &good).await;
    // Line 6: a bad URL for the route; line 8: another for a new route.
    write(
        dir.path(),
        "gw.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstreams.demo]\nurl = \"ftp://nowhere\"\n[upstreams.other]\nurl = \"not a url\"\n",
    );
    let (status, report) = admin_reload(&gw).await;
    assert_eq!(status, 422, "{report}");
    assert_eq!(report["result"], "error");
    let errors: Vec<String> = report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_owned())
        .collect();
    assert!(
        errors.iter().any(|e| e.contains("gw.toml:6:")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("gw.toml:8:")),
        "{errors:?}"
    );
    // Nothing changed: the old route serves, the new one does not exist.
    let c = client();
    let resp = mcp_post(&c, &route(&gw, "demo"), LIST)
        .header("mcp-protocol-version", PV)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = mcp_post(&c, &route(&gw, "other"), LIST)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let m = metrics(&gw).await;
    assert!(
        m.contains("mcp_gateway_config_reloads_total{result=\"error\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("mcp_gateway_config_reloads_total{result=\"ok\"} 0"),
        "{m}"
    );
    // The same through the API, and a file that cannot be read at all.
    std::fs::remove_file(dir.path().join("gw.toml")).unwrap();
    let report = gw.reload().await;
    assert!(!report.applied());
    assert!(
        report.errors[0].contains("cannot read"),
        "{:?}",
        report.errors
    );
    gw.shutdown().await;
}

fn keys(agents: &[(&str, &str)]) -> String {
    agents
        .iter()
        .map(|(key, agent)| {
            format!(
                "[[keys]]\nsha256 = \"{}\"\nagent = \"{agent}\"\nscopes = [\"{SCOPE}\"]\n",
                sha256_hex(key)
            )
        })
        .collect()
}

fn auth_config(up: SocketAddr, rpm: u32, permissions: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[auth]\nscopes = [\"{SCOPE}\"]\napi_keys_file = \"keys.toml\"\n{permissions}\n\
         [limits]\nkey = \"agent\"\nrequests_per_minute = {rpm}\n[upstreams.demo]\nurl = \"http://{up}/mcp\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_permissions_and_rates_change_at_the_next_request_and_budgets_carry_over() {
    let up = stateless().await;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "keys.toml",
        &keys(&[("key-a", "alice"), ("key-b", "bob")]),
    );
    let gw = start(dir.path(), &auth_config(up, 100, "")).await;
    let url = route(&gw, "demo");
    let c = client();
    let send = |token: &'static str, body: String| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let resp = mcp_post(&c, &url, &body)
                .bearer_auth(token)
                .header("mcp-protocol-version", PV)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap())
        }
    };
    assert_eq!(
        send("key-a", call(1, "echo", r#"{"text":"x"}"#)).await.0,
        200
    );
    // alice's call in flight while her key is revoked.
    let in_flight = tokio::spawn(send(
        "key-a",
        call(2, "slow_count", r#"{"n":3,"delay_ms":300}"#),
    ));
    tokio::time::sleep(Duration::from_millis(150)).await;
    write(dir.path(), "keys.toml", &keys(&[("key-b", "bob")]));
    let perm =
        "[[auth.permissions]]\nupstream = \"demo\"\ntools = [\"echo\"]\nscopes = [\"mcp:admin\"]\n";
    write(dir.path(), "gw.toml", &auth_config(up, 100, perm));
    let report = gw.reload().await;
    assert!(report.applied(), "{report:?}");
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, 200, "the call in flight finishes");
    assert!(body.contains("counted to 3"), "{body}");
    assert_eq!(
        send("key-a", call(3, "echo", r#"{"text":"x"}"#)).await.0,
        401
    );
    // The new permission: echo needs a scope bob's key lacks; other tools still pass.
    assert_eq!(
        send("key-b", call(4, "echo", r#"{"text":"x"}"#)).await.0,
        403
    );
    assert_eq!(
        send("key-b", call(5, "slow_count", r#"{"n":1,"delay_ms":1}"#))
            .await
            .0,
        200
    );

    // A new rate: at the next request.
    write(dir.path(), "gw.toml", &auth_config(up, 2, ""));
    assert!(gw.reload().await.applied());
    assert_eq!(
        send("key-b", call(6, "echo", r#"{"text":"x"}"#)).await.0,
        200
    );
    assert_eq!(
        send("key-b", call(7, "echo", r#"{"text":"x"}"#)).await.0,
        200
    );
    assert_eq!(
        send("key-b", call(8, "echo", r#"{"text":"x"}"#)).await.0,
        429
    );
    // An unchanged rule keeps its budgets: another reload does not refill bob's.
    write(
        dir.path(),
        "gw.toml",
        &format!("# touched\n{}", auth_config(up, 2, "")),
    );
    assert!(gw.reload().await.applied());
    assert_eq!(
        send("key-b", call(9, "echo", r#"{"text":"x"}"#)).await.0,
        429
    );
    gw.shutdown().await;
}

fn sessions_config(a: SocketAddr, b: SocketAddr, key: &str, previous: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[sessions]\nkey_file = \"{key}\"\nprevious_key_files = [{previous}]\n\
         [upstreams.demo]\nurls = [\"http://{a}/mcp\", \"http://{b}/mcp\"]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_session_key_keeps_old_sessions_routing() {
    let (a, b) = (stateful().await, stateful().await);
    let dir = tempfile::tempdir().unwrap();
    mcp_gateway_layers::sessions::config::keygen(dir.path().join("k1.key"), false).unwrap();
    mcp_gateway_layers::sessions::config::keygen(dir.path().join("k2.key"), false).unwrap();
    let gw = start(dir.path(), &sessions_config(a, b, "k1.key", "")).await;
    let url = route(&gw, "demo");
    let c = client();
    let counter = |sid: String, id: u32| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let resp = mcp_post(&c, &url, &call(id, "increment", "{}"))
                .header("mcp-session-id", &sid)
                .header("mcp-protocol-version", PV)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap())
        }
    };
    let old = session(&c, &url).await;
    let (status, body) = counter(old.clone(), 2).await;
    assert_eq!(status, 200);
    assert!(body.contains(r#""text":"1""#), "{body}");
    // Rotation: new ids sealed with k2, ids sealed with k1 still open.
    write(
        dir.path(),
        "gw.toml",
        &sessions_config(a, b, "k2.key", "\"k1.key\""),
    );
    assert!(gw.reload().await.applied());
    let (status, body) = counter(old.clone(), 4).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(r#""text":"2""#),
        "the same session on its instance: {body}"
    );
    let new = session(&c, &url).await;
    assert_ne!(new, old);
    assert_eq!(counter(new.clone(), 5).await.0, 200);
    // k1 retired: its sessions end (404), k2's go on.
    write(dir.path(), "gw.toml", &sessions_config(a, b, "k2.key", ""));
    assert!(gw.reload().await.applied());
    assert_eq!(counter(old, 6).await.0, 404);
    assert_eq!(counter(new, 7).await.0, 200);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_certificate_serves_new_handshakes() {
    use std::sync::Arc;
    let up = stateless().await;
    let dir = tempfile::tempdir().unwrap();
    let cert = |dir: &Path| {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        write(dir, "cert.pem", &c.cert.pem());
        write(dir, "key.pem", &c.signing_key.serialize_pem());
        c.cert.der().clone()
    };
    let first = cert(dir.path());
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ntls = {{ cert = \"cert.pem\", key = \"key.pem\" }}\n[upstreams.demo]\nurl = \"http://{up}/mcp\"\n"
    );
    let gw = start(dir.path(), &text).await;
    let handshake = |trusted: rustls::pki_types::CertificateDer<'static>| {
        let addr = gw.local_addr();
        async move {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(trusted).unwrap();
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect("localhost".try_into().unwrap(), tcp)
                .await
                .is_ok()
        }
    };
    assert!(handshake(first.clone()).await);
    let second = cert(dir.path());
    assert!(gw.reload().await.applied());
    assert!(
        handshake(second).await,
        "new handshakes get the new certificate"
    );
    assert!(!handshake(first).await, "and no longer the old one");
    // A broken key: refused, the certificate in use stays.
    write(dir.path(), "key.pem", "not a key");
    let report = gw.reload().await;
    assert!(!report.applied());
    assert!(
        report.errors.iter().any(|e| e.contains("key.pem")),
        "{:?}",
        report.errors
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_change_is_kept_and_said_while_the_rest_applies() {
    let up = stateless().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = start(
        dir.path(),
        &format!("[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.a]\nurl = \"http://{up}/mcp\"\n"),
    )
    .await;
    write(
        dir.path(),
        "gw.toml",
        &format!("[server]\nlisten = \"127.0.0.1:1\"\n[upstreams.a]\nurl = \"http://{up}/mcp\"\n[upstreams.b]\nurl = \"http://{up}/mcp\"\n"),
    );
    let report = gw.reload().await;
    assert!(report.applied(), "{report:?}");
    assert!(
        report
            .not_applied
            .iter()
            .any(|n| n.contains("server.listen") && n.contains("restart")),
        "{report:?}"
    );
    let resp = mcp_post(&client(), &route(&gw, "b"), LIST)
        .header("mcp-protocol-version", PV)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the rest applied, on the same socket");
    gw.shutdown().await;
}

/// The real binary: SIGHUP, and a watched file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_a_watched_file_reload_a_running_process() {
    let up = stateless().await;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = |watch: bool| {
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nwatch_config = {watch}\nwatch_debounce = \"200ms\"\n"
        )
    };
    let up_a = format!("[upstreams.a]\nurl = \"http://{up}/mcp\"\n");
    let up_b = format!("[upstreams.b]\nurl = \"http://{up}/mcp\"\n");
    let up_c = format!("[upstreams.c]\nurl = \"http://{up}/mcp\"\n");
    write(dir.path(), "gw.toml", &format!("{}{up_a}", server(false)));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mcp-gateway"))
        .args(["serve", "--config"])
        .arg(dir.path().join("gw.toml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let c = client();
    let status = |name: &'static str| {
        let c = c.clone();
        async move {
            match mcp_post(&c, &format!("http://127.0.0.1:{port}/mcp/{name}"), LIST)
                .header("mcp-protocol-version", PV)
                .send()
                .await
            {
                Ok(r) => r.status().as_u16(),
                Err(_) => 0,
            }
        }
    };
    let wait_for = |name: &'static str, want: u16| async move {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let s = status(name).await;
            if s == want || Instant::now() > deadline {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    assert_eq!(wait_for("a", 200).await, 200);
    // SIGHUP.
    write(
        dir.path(),
        "gw.toml",
        &format!("{}{up_a}{up_b}", server(true)),
    );
    assert_eq!(
        status("b").await,
        404,
        "nothing reloads by itself before the signal"
    );
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    assert_eq!(wait_for("b", 200).await, 200, "SIGHUP reloaded");
    // watch_config is now on: a change of the file alone reloads.
    write(
        dir.path(),
        "gw.toml",
        &format!("{}{up_a}{up_c}", server(true)),
    );
    assert_eq!(wait_for("c", 200).await, 200, "the watched file reloaded");
    assert_eq!(wait_for("b", 404).await, 404);
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP did not end the process"
    );
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_audit_log_continues_the_chain_in_the_new_file() {
    let up = stateless().await;
    let dir = tempfile::tempdir().unwrap();
    let text = |file: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[audit]\npath = \"{file}\"\nfsync = \"always\"\n[upstreams.demo]\nurl = \"http://{up}/mcp\"\n"
        )
    };
    let gw = start(dir.path(), &text("one.jsonl")).await;
    let c = client();
    let list = || {
        let (c, url) = (c.clone(), route(&gw, "demo"));
        async move {
            let resp = mcp_post(&c, &url, LIST)
                .header("mcp-protocol-version", PV)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let _ = resp.bytes().await.unwrap();
        }
    };
    for _ in 0..3 {
        list().await;
    }
    write(dir.path(), "gw.toml", &text("two.jsonl"));
    assert!(gw.reload().await.applied());
    for _ in 0..2 {
        list().await;
    }
    // A file that already holds another chain is refused, and nothing changes.
    std::fs::copy(dir.path().join("one.jsonl"), dir.path().join("three.jsonl")).unwrap();
    write(dir.path(), "gw.toml", &text("three.jsonl"));
    let report = gw.reload().await;
    assert!(!report.applied());
    assert!(
        report.errors[0].contains("another chain"),
        "{:?}",
        report.errors
    );
    list().await;
    gw.shutdown().await;
    let (one, two) = (dir.path().join("one.jsonl"), dir.path().join("two.jsonl"));
    let lines = |p: &Path| std::fs::read_to_string(p).unwrap().lines().count();
    assert_eq!(lines(&one), 3);
    assert_eq!(
        lines(&two),
        3,
        "the calls after the move, the refused reload's included"
    );
    let report = mcp_gateway_layers::audit::verify(&[one, two]).unwrap();
    assert_eq!(report.records, 6, "{report}");
}

fn python_command() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let python = root.join(".tools/venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/test, which installs the Python SDK",
        python.display()
    );
    let server = root.join("mcp-gateway-bin/tests/fixtures/stdio_server.py");
    format!(
        "[{:?}, {:?}]",
        python.display().to_string(),
        server.display().to_string()
    )
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// A stdio upstream: an unchanged one keeps its child across reloads; a removed one's child
/// stops once its drain is over, after its call in flight finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_children_are_kept_when_unchanged_and_stopped_after_the_drain_when_removed() {
    let cmd = python_command();
    let dir = tempfile::tempdir().unwrap();
    let text = |with_gone: bool| {
        let mut t = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndrain_timeout = \"1s\"\n[upstreams.local]\ncommand = {cmd}\n"
        );
        if with_gone {
            t += &format!("[upstreams.gone]\ncommand = {cmd}\n");
        }
        t
    };
    let gw = start(dir.path(), &text(true)).await;
    let c = client();
    let sid_local = session(&c, &route(&gw, "local")).await;
    let sid_gone = session(&c, &route(&gw, "gone")).await;
    let answer = |name: &'static str, sid: String, body: String| {
        let (c, url) = (c.clone(), route(&gw, name));
        async move {
            let resp = mcp_post(&c, &url, &body)
                .header("mcp-session-id", sid)
                .header("mcp-protocol-version", PV)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap();
            // JSON, or the last event of an SSE answer.
            let json = body
                .lines()
                .rev()
                .find_map(|l| l.strip_prefix("data: "))
                .map_or(body.clone(), str::to_owned);
            (
                status,
                serde_json::from_str::<serde_json::Value>(&json).unwrap(),
            )
        }
    };
    let pid_of = |name: &'static str, sid: &str| {
        let fut = answer(name, sid.to_owned(), call(9, "pid", "{}"));
        async move {
            let (status, v) = fut.await;
            assert_eq!(status, 200, "{name}: {v}");
            v["result"]["content"][0]["text"]
                .as_str()
                .unwrap()
                .trim()
                .parse::<u32>()
                .unwrap()
        }
    };
    let (local, gone) = (
        pid_of("local", &sid_local).await,
        pid_of("gone", &sid_gone).await,
    );
    // A call in flight on the route the reload removes.
    let slow = tokio::spawn(answer(
        "gone",
        sid_gone.clone(),
        call(10, "slow", r#"{"ms":500}"#),
    ));
    tokio::time::sleep(Duration::from_millis(150)).await;
    write(dir.path(), "gw.toml", &text(false));
    let report = gw.reload().await;
    assert!(report.applied(), "{report:?}");
    assert_eq!(report.removed, vec!["gone".to_owned()]);
    assert!(report.changed.is_empty(), "{report:?}");
    let (status, v) = slow.await.unwrap();
    assert_eq!(status, 200, "{v}");
    assert!(v["result"].is_object(), "{v}");
    assert_eq!(
        pid_of("local", &sid_local).await,
        local,
        "the unchanged upstream kept its child, and the session its place"
    );
    assert!(
        pid_alive(gone),
        "the removed upstream's child lives through the drain"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while pid_alive(gone) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !pid_alive(gone),
        "the removed upstream's child stopped after the drain"
    );
    assert!(pid_alive(local));
    gw.shutdown().await;
    assert!(!pid_alive(local), "and the kept one at shutdown");
}
