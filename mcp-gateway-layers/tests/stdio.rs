//! The stdio keys of `[upstreams.NAME]` read by an app from its own file, checked as the
//! binary checks them; the spec's `Debug` never shows a value; a program that exits at once
//! gets its callers a clear error, never a hang.
#![allow(clippy::unwrap_used, missing_docs)]

use mcp_gateway_layers::stdio::{Mode, StdioBuilder};
use mcp_gateway_layers::upstream::config;

#[test]
fn an_app_reads_stdio_upstreams_from_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("token");
    std::fs::write(&secret, "hunter2-value\n").unwrap();
    let text = format!(
        "[upstreams.local]\ncommand = [\"true\", \"--flag\"]\nenv = {{ A = \"value-a\" }}\nenv_files = {{ T = {:?} }}\nmode = \"per_agent\"\nmax_processes = 3\nstartup_timeout = \"2s\"\n[upstreams.local.agent_env.alice]\nK = \"alice-value\"\n",
        secret.display().to_string()
    );
    let specs = config::from_toml(&text, "app.toml").unwrap();
    let s = specs[0].stdio.as_ref().unwrap();
    assert!(specs[0].urls.is_empty());
    assert_eq!(s.command, ["true", "--flag"]);
    assert_eq!(s.mode, Mode::PerAgent);
    assert_eq!(s.max_processes, 3);
    assert_eq!(s.agent_env["alice"]["K"], "alice-value");
    // Names, never values.
    let shown = format!("{s:?}");
    assert!(
        shown.contains("\"A\"") && shown.contains("alice"),
        "{shown}"
    );
    for value in ["value-a", "hunter2", "alice-value"] {
        assert!(!shown.contains(value), "{value} in {shown}");
    }
}

#[test]
fn stdio_mistakes_are_located_and_never_quote_a_secret_file() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[upstreams.a]\ncommand = []\n[upstreams.b]\ncommand = [\"true\"]\nurl = \"http://x/mcp\"\nmax_processes = 0\n[upstreams.c]\ncommand = [\"true\"]\nagent_env = {{ bob = {{ K = \"v\" }} }}\ncwd = {:?}\n",
        dir.path().join("nope").display().to_string()
    );
    let err = config::from_toml(&text, "app.toml")
        .unwrap_err()
        .to_string();
    for want in [
        "app.toml:2:11: upstream \"a\": command needs at least the program",
        "upstream \"b\": give url, urls or command, not several",
        "upstream \"b\": max_processes must be between 1 and 100000",
        "upstream \"c\": agent_env is only used with mode = \"per_agent\"",
        "upstream \"c\": cwd",
    ] {
        assert!(err.contains(want), "{want:?} not in\n{err}");
    }
}

#[tokio::test]
async fn a_server_that_exits_at_once_gets_a_clear_error() {
    let up = StdioBuilder::new("gone", ["false"])
        .queue_timeout(std::time::Duration::from_millis(50))
        .build();
    let req = http::Request::post("/mcp")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"0"}}}"#,
        )))
        .unwrap();
    let resp = up.forward(req).await;
    let status = resp.status().as_u16();
    use http_body_util::BodyExt;
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!([502, 503].contains(&status), "{status} {v}");
    assert_eq!(v["id"], 1);
    assert!(
        [-32050, -32054].contains(&v["error"]["code"].as_i64().unwrap()),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("gone"),
        "{v}"
    );
    up.stop().await;
}
