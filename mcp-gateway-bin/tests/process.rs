//! Process concerns: TLS termination, graceful drain, readiness, and the `mcp-gateway` CLI.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use mcp_gateway_examples::demo_server::DemoOptions;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"0"}}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_termination_with_a_generated_certificate() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();

    let up = demo(DemoOptions::default()).await;
    let mut s = settings(&[format!("demo=http://{up}/mcp")]);
    s.tls = Some((cert_path, key_path));
    let gw = gateway(s).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, Full<Bytes>>(https);
    let uri = format!("https://localhost:{}/mcp/demo", gw.local_addr().port());
    let req = http::Request::post(&uri)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(Full::new(Bytes::from_static(INIT.as_bytes())))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("mcp-session-id"));
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let msgs = sse_messages(&body);
    assert_eq!(
        msgs.last().unwrap()["result"]["serverInfo"]["name"],
        "mcp-gateway-demo"
    );

    // Plain HTTP to the TLS port fails the handshake and does not reach the upstream.
    let plain = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{}/mcp/demo",
            gw.local_addr().port()
        ))
        .body(INIT)
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests() {
    let (gw, url) = gateway_for_demo(DemoOptions::default()).await;
    let base = format!("http://{}", gw.local_addr());
    let c = client();
    let resp = mcp_post(&c, &url, INIT).send().await.unwrap();
    let sid = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    drop(resp.bytes().await.unwrap());
    // A call that takes a while (5 × 60 ms) is in flight when shutdown starts: its response
    // head has arrived, its body (progress, then the result) has not.
    let resp = mcp_post(
        &c,
        &url,
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"slow_count","arguments":{"n":5,"delay_ms":60}}}"#,
    )
    .header("mcp-session-id", &sid)
    .header("mcp-protocol-version", "2025-11-25")
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let in_flight = tokio::spawn(async move { sse_messages(&resp.bytes().await.unwrap()) });
    gw.shutdown().await;
    let msgs = in_flight.await.unwrap();
    assert_eq!(
        msgs.last().unwrap()["result"]["content"][0]["text"],
        "counted to 5"
    );
    // The listener is closed now.
    assert!(reqwest::Client::new()
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_open_streams_at_the_deadline() {
    let up = demo(DemoOptions::default()).await;
    let mut s = settings(&[format!("demo=http://{up}/mcp")]);
    s.shutdown_grace = Duration::from_millis(200);
    let gw = gateway(s).await;
    let url = format!("http://{}/mcp/demo", gw.local_addr());
    let c = client();
    let resp = mcp_post(&c, &url, INIT).send().await.unwrap();
    let sid = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    drop(resp.bytes().await.unwrap());
    let stream = c
        .get(&url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    // The GET stream never ends by itself; shutdown must still return.
    tokio::time::timeout(Duration::from_secs(10), gw.shutdown())
        .await
        .expect("shutdown waited past its deadline");
    drop(stream);
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mcp-gateway"))
}

#[test]
fn check_reports_errors_with_locations() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[upstreams.demo]\nurl = \"http://127.0.0.1:3001/mcp\"\n",
    )
    .unwrap();
    let out = bin()
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 upstream: demo)"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[server]\nlisten = \"127.0.0.1:8080\"\nlisten_typo = 1\n[upstreams.demo]\nurl = \"http://127.0.0.1:3001/mcp\"\n").unwrap();
    let out = bin()
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:3:1: unknown field `listen_typo`"),
        "{err}"
    );

    // Every section's mistakes at once, not only the first one serde meets (issue 22).
    let bad = dir.path().join("bad_many.toml");
    std::fs::write(&bad, "[server]\nlisten = \"127.0.0.1:8080\"\nlisten_typo = 1\n[limits]\nrequests_per_minute = \"ten\"\n[upstreams.demo]\nurl = \"http://127.0.0.1:3001/mcp\"\nretries = 3\n").unwrap();
    let out = bin()
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad_many.toml:3:1: unknown field `listen_typo`"),
        "{err}"
    );
    assert!(
        err.contains("bad_many.toml:5:23: invalid type: string \"ten\", expected u64"),
        "{err}"
    );
    assert!(
        err.contains("bad_many.toml:8:1: unknown field `retries`"),
        "{err}"
    );

    let bad = dir.path().join("bad2.toml");
    std::fs::write(&bad, "[upstreams.demo]\nurl = \"tcp://nope\"\n[upstreams.other]\nurls = [\"http://ok/mcp\", \"://\"]\n").unwrap();
    let out = bin()
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad2.toml:2:7:"), "{err}");
    assert!(err.contains("bad2.toml:4:26:"), "{err}");

    // An error inside the API keys file names that file and its line, not the config's.
    std::fs::write(
        dir.path().join("keys.toml"),
        "[[keys]]\nagent = \"ci-bot\"\nsha256 = \"not-hex\"\n",
    )
    .unwrap();
    let bad = dir.path().join("bad3.toml");
    std::fs::write(&bad, "[upstreams.demo]\nurl = \"http://127.0.0.1:3001/mcp\"\n[auth]\napi_keys_file = \"keys.toml\"\n").unwrap();
    let out = bin()
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("keys.toml:3:10: \"not-hex\" is not a SHA-256 digest"),
        "{err}"
    );
    assert!(!err.contains("bad3.toml:4"), "{err}");

    let out = bin()
        .args(["check", "--config", "/nonexistent/gw.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn serve_refuses_bad_flags_clearly() {
    let out = bin().args(["serve"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--upstream"));
    let out = bin()
        .args(["serve", "--upstream", "demo"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NAME=URL"));
}

#[test]
fn binary_serves_and_stops_on_sigterm() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = rt.block_on(demo(DemoOptions::default()));
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let child = bin()
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--upstream",
            &format!("demo=http://{up}/mcp"),
            "--log-json",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/mcp/demo");
    let ok = rt.block_on(async {
        for _ in 0..400 {
            if let Ok(r) = mcp_post(&client(), &url, INIT).send().await {
                return r.status().as_u16();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        0
    });
    assert_eq!(ok, 200);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    let logs = String::from_utf8_lossy(&out.stderr);
    // JSON logs: one object per line, with the access log of the call above.
    let access = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["target"] == "mcp_gateway::access")
        .unwrap_or_else(|| panic!("no JSON access log in {logs}"));
    assert_eq!(access["status"], 200);
    assert_eq!(access["upstream"], "demo");
    // What the call was, named without a second parse.
    assert_eq!(access["mcp_method"], "initialize", "{access}");
    assert_eq!(access["id"], "1", "{access}");
    assert_eq!(access["era"], "legacy", "{access}");
    assert_eq!(access["agent"], "-", "{access}");
    assert!(logs.contains("draining"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_trusted_through_ca_file() {
    // An internal CA signs the upstream's certificate; only a gateway told about the CA
    // (ca_file) may talk to it.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (ca_path, cert_path, key_path) = (
        dir.path().join("ca.pem"),
        dir.path().join("up.pem"),
        dir.path().join("up.key"),
    );
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();
    std::fs::write(&cert_path, leaf.pem()).unwrap();
    std::fs::write(&key_path, leaf_key.serialize_pem()).unwrap();

    let acceptor = tokio_rustls::TlsAcceptor::from(
        mcp_gateway::tls::server_config(&cert_path, &key_path).unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(
                        http::Response::builder()
                            .header("content-type", "application/json")
                            .body(full(r#"{"jsonrpc":"2.0","id":1,"result":{"tls":true}}"#))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });

    let url = format!("https://localhost:{port}/mcp");
    let dir_path = dir.path().to_path_buf();
    let toml = format!(
        "[upstreams.trusted]\nurl = \"{url}\"\nca_file = \"ca.pem\"\n[upstreams.untrusted]\nurl = \"{url}\"\n"
    );
    let mut s = mcp_gateway::config::parse(&toml, "gw.toml", &dir_path).unwrap();
    s.listen = "127.0.0.1:0".parse().unwrap();
    let gw = gateway(s).await;
    let c = client();
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let ok = mcp_post(&c, &format!("http://{}/mcp/trusted", gw.local_addr()), body)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.json_value().await["result"]["tls"], true);
    let refused = mcp_post(
        &c,
        &format!("http://{}/mcp/untrusted", gw.local_addr()),
        body,
    )
    .send()
    .await
    .unwrap();
    assert_error(refused, 502, -32050, serde_json::json!(1)).await;
    // A ca_file without certificates is a config error, with its location.
    std::fs::write(dir.path().join("empty.pem"), "").unwrap();
    let err = mcp_gateway::config::parse(
        &format!("[upstreams.a]\nurl = \"{url}\"\nca_file = \"empty.pem\"\n"),
        "gw.toml",
        &dir_path,
    )
    .unwrap_err();
    assert!(
        err[0]
            .to_string()
            .starts_with("gw.toml:3:11: upstream \"a\": ca_file"),
        "{err:?}"
    );
    gw.shutdown().await;
}

#[test]
fn serve_refuses_a_repeated_upstream_name() {
    // On a busy port, a gateway that wrongly accepted the flags stops instead of serving on.
    let (_held, port) = busy_port();
    let out = bin()
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--upstream",
            "demo=http://127.0.0.1:1/mcp",
            "--upstream",
            "demo=http://127.0.0.1:2/mcp",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("error: --upstream: upstream \"demo\" is given twice"),
        "{err}"
    );
}

/// A port another socket listens on, held for as long as the listener lives.
fn busy_port() -> (std::net::TcpListener, u16) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

#[test]
fn busy_port_is_reported_once_with_its_cause() {
    let (_held, port) = busy_port();
    let out = bin()
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--upstream",
            "demo=http://127.0.0.1:1/mcp",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let cause = format!("cannot listen on 127.0.0.1:{port}: Address already in use");
    assert_eq!(err.matches(&cause).count(), 1, "{err}");
    assert!(err.contains(&format!("error: {cause}")), "{err}");
}

#[test]
fn serve_warns_when_a_flag_replaces_a_configured_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gw.toml");
    std::fs::write(
        &cfg,
        "[upstreams.demo]\nurl = \"http://127.0.0.1:1/mcp\"\n[upstreams.other]\nurl = \"http://127.0.0.1:2/mcp\"\n",
    )
    .unwrap();
    // A busy port makes serve stop right after start-up, once its warnings are out.
    let (_held, port) = busy_port();
    let out = bin()
        .args(["serve", "--config"])
        .arg(&cfg)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--upstream",
            "demo=http://127.0.0.1:3/mcp",
        ])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].contains("--upstream demo=… replaces upstream \"demo\" of"),
        "{err}"
    );
    assert!(warnings[0].contains("gw.toml"), "{err}");
}

#[test]
fn an_audit_log_that_cannot_be_opened_is_reported_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the audit folder should be: no folder can be made there, even as root.
    std::fs::write(dir.path().join("blocker"), "not a folder").unwrap();
    let log = dir.path().join("blocker").join("audit.jsonl");
    let cfg = dir.path().join("gw.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.demo]\nurl = \"http://127.0.0.1:1/mcp\"\n[audit]\npath = {:?}\n",
            log.display().to_string()
        ),
    )
    .unwrap();
    let out = bin()
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("audit:"), "{err}");
    assert!(err.contains(&log.display().to_string()), "{err}");
}
