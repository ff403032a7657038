//! OAuthGuard through the gateway against a real authorization server (`oidc-provider`,
//! started by the tests) and real `rmcp` servers: discovery, M2M and user tokens, audience,
//! scopes and list filtering, introspection caching and revocation, key rotation, and the
//! credentials each upstream sees — never the caller's token.
#![allow(clippy::unwrap_used)]

mod common;

use common::oauth::As;
use common::*;
use mcp_gateway::Gateway;
use mcp_gateway_examples::demo_server::{self, DemoOptions};
use rmcp::model::{CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::ServiceExt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

const SCOPE: &str = "mcp:tools";

/// A demo server that records the `Authorization` header of every request it gets.
async fn recording_demo(opts: DemoOptions) -> (SocketAddr, Arc<Mutex<Vec<Option<String>>>>) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tower::ServiceExt as _;
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = demo_server::service(opts);
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let svc = svc.clone();
            let record = record.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        record.lock().unwrap().push(
                            req.headers()
                                .get("authorization")
                                .map(|v| v.to_str().unwrap().to_owned()),
                        );
                        svc.clone().oneshot(req)
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// A gateway from TOML text (the configuration contract itself), with `{ISSUER}` replaced.
async fn gateway_from(toml: &str, issuer: &str) -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    // Tests pick the port first so that public_url (the resource URIs) is known up front.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = toml
        .replace("{ISSUER}", issuer)
        .replace("{PORT}", &port.to_string());
    let settings = mcp_gateway::config::parse(&text, "gw.toml", dir.path())
        .unwrap_or_else(|e| panic!("{e:?}"));
    (Gateway::bind(settings).await.unwrap(), dir)
}

fn route(gw: &Gateway, name: &str) -> String {
    format!("http://{}/mcp/{name}", gw.local_addr())
}

async fn rmcp_call(url: &str, token: &str, tool: &str, args: serde_json::Value) -> String {
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(url.to_owned()).auth_header(token.to_owned()),
    );
    let client = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("auth-test", "0"),
    )
    .serve(transport)
    .await
    .expect("initialize through the gateway with a token");
    let mut params = CallToolRequestParams::new(tool.to_owned());
    params.arguments = args.as_object().cloned();
    let r = client.call_tool(params).await.unwrap();
    let text = serde_json::to_value(&r.content).unwrap()[0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let _ = client.cancel().await;
    text
}

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"auth","version":"0"}}}"#;
const LIST: &str = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;

fn www_authenticate(resp: &reqwest::Response) -> String {
    resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m2m_discovery_to_call_and_user_token_from_the_code_flow() {
    let auth_server = As::start(&[]);
    let (up, seen) = recording_demo(DemoOptions::default()).await;
    let (gw, _dir) = gateway_from(
        &format!(
            r#"
[server]
listen = "127.0.0.1:{{PORT}}"
public_url = "http://127.0.0.1:{{PORT}}"
[auth]
issuer = "{{ISSUER}}"
scopes = ["{SCOPE}"]
[upstreams.demo]
url = "http://{up}/mcp"
"#
        ),
        &auth_server.issuer,
    )
    .await;
    let url = route(&gw, "demo");
    let c = client();

    // 1. No token: 401 naming the metadata and the scope, with a JSON-RPC body and the id.
    let resp = mcp_post(&c, &url, INIT).send().await.unwrap();
    let challenge = www_authenticate(&resp);
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(
        challenge.contains(&format!("scope=\"{SCOPE}\"")),
        "{challenge}"
    );
    assert!(
        !challenge.contains("error="),
        "no token sent: no error attribute: {challenge}"
    );
    let prm_url = challenge
        .split("resource_metadata=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(
        prm_url,
        format!(
            "http://{}/.well-known/oauth-protected-resource/mcp/demo",
            gw.local_addr()
        )
    );
    assert_error(resp, 401, -32055, serde_json::json!(1)).await;

    // 2. Protected resource metadata (RFC 9728) → authorization server metadata (RFC 8414).
    let prm = c.get(&prm_url).send().await.unwrap().json_value().await;
    assert_eq!(prm["resource"], url);
    assert_eq!(prm["authorization_servers"][0], auth_server.issuer);
    assert_eq!(prm["bearer_methods_supported"][0], "header");
    assert!(prm["scopes_supported"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!(SCOPE)));
    let as_meta = auth_server.metadata().await;
    assert!(as_meta["registration_endpoint"].is_string());

    // 3. Register (RFC 7591), token for the route (RFC 8707 resource), call through rmcp.
    let m2m = auth_server.register(&["client_credentials"], SCOPE).await;
    let token = auth_server.cc_token(&m2m, &url, SCOPE).await;
    assert_eq!(
        rmcp_call(&url, &token, "echo", serde_json::json!({"text": "m2m"})).await,
        "m2m"
    );

    // 4. A user token from authorization code + PKCE works the same way.
    let app = auth_server.register(&["authorization_code"], SCOPE).await;
    let user_token = auth_server
        .code_flow_token(&app, "alice", &url, SCOPE)
        .await;
    assert_ne!(user_token, token);
    assert_eq!(
        rmcp_call(
            &url,
            &user_token,
            "echo",
            serde_json::json!({"text": "alice"})
        )
        .await,
        "alice"
    );

    // 5. The server never saw a caller's token (nor any Authorization: none is configured).
    let seen = seen.lock().unwrap();
    assert!(seen.len() >= 4, "{seen:?}");
    assert!(seen.iter().all(Option::is_none), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audience_scopes_and_filtered_lists() {
    let auth_server = As::start(&[]);
    let sse_up = demo(DemoOptions::default()).await;
    let json_up = demo(DemoOptions {
        stateless: true,
        json_response: true,
    })
    .await;
    let (gw, _dir) = gateway_from(
        &format!(
            r#"
[server]
listen = "127.0.0.1:{{PORT}}"
public_url = "http://127.0.0.1:{{PORT}}"
[auth]
issuer = "{{ISSUER}}"
scopes = ["{SCOPE}"]
[[auth.permissions]]
tools = ["incr*"]
scopes = ["admin"]
[upstreams.sse]
url = "http://{sse_up}/mcp"
[upstreams.json]
url = "http://{json_up}/mcp"
"#
        ),
        &auth_server.issuer,
    )
    .await;
    let (sse, json) = (route(&gw, "sse"), route(&gw, "json"));
    let c = client();
    let m2m = auth_server
        .register(&["client_credentials"], "mcp:tools admin")
        .await;

    // A token for another resource is refused: 401 invalid_token.
    let other = auth_server.cc_token(&m2m, &json, SCOPE).await;
    let resp = mcp_post(&c, &sse, INIT)
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert!(www_authenticate(&resp).contains("error=\"invalid_token\""));
    let v = assert_error(resp, 401, -32055, serde_json::json!(1)).await;
    assert!(
        v["error"]["message"].as_str().unwrap().contains("audience"),
        "{v}"
    );

    // mcp:tools only: `increment` needs admin → 403 naming every scope the call needs.
    let reader = auth_server.cc_token(&m2m, &sse, SCOPE).await;
    let resp = mcp_post(&c, &sse, INIT)
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let sid = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    drop(resp.bytes().await.unwrap());
    let call = r#"{"jsonrpc":"2.0","id":"c1","method":"tools/call","params":{"name":"increment","arguments":{}}}"#;
    let resp = mcp_post(&c, &sse, call)
        .bearer_auth(&reader)
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    let challenge = www_authenticate(&resp);
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(
        challenge.contains("scope=\"admin mcp:tools\""),
        "{challenge}"
    );
    assert_error(resp, 403, -32056, serde_json::json!("c1")).await;

    // The list it gets (SSE from the stateful server) omits what it may not call.
    let resp = mcp_post(&c, &sse, LIST)
        .bearer_auth(&reader)
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let msgs = sse_messages(&resp.bytes().await.unwrap());
    let names = |v: &serde_json::Value| -> Vec<String> {
        v["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let listed = names(msgs.last().unwrap());
    assert!(listed.contains(&"echo".to_owned()), "{listed:?}");
    assert!(!listed.contains(&"increment".to_owned()), "{listed:?}");

    // The same from the JSON server; Content-Length matches the filtered body.
    let json_reader = auth_server.cc_token(&m2m, &json, SCOPE).await;
    let resp = mcp_post(&c, &json, LIST)
        .bearer_auth(&json_reader)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let declared: usize = resp.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = resp.bytes().await.unwrap();
    assert_eq!(declared, body.len());
    let listed = names(&serde_json::from_slice(&body).unwrap());
    // echo, slow_count, blob: everything but `increment`.
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert!(!listed.contains(&"increment".to_owned()));

    // With admin, the whole list and the call.
    let admin = auth_server.cc_token(&m2m, &json, "mcp:tools admin").await;
    let resp = mcp_post(&c, &json, LIST)
        .bearer_auth(&admin)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert_eq!(names(&resp.json_value().await).len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tokens_are_introspected_once_and_revocation_is_seen_when_the_cache_ends() {
    let auth_server = As::start(&[]);
    std::env::set_var("AUTH_TEST_GATEWAY_SECRET", "gateway-secret");
    let up = demo(DemoOptions {
        stateless: true,
        json_response: true,
    })
    .await;
    let (gw, _dir) = gateway_from(
        &format!(
            r#"
[server]
listen = "127.0.0.1:{{PORT}}"
public_url = "http://127.0.0.1:{{PORT}}"
[auth]
issuer = "{{ISSUER}}"
scopes = ["{SCOPE}"]
introspection = {{ client_id = "gateway", client_secret_env = "AUTH_TEST_GATEWAY_SECRET" }}
cache_ttl = "1s"
[upstreams.opaque]
url = "http://{up}/mcp"
"#
        ),
        &auth_server.issuer,
    )
    .await;
    let url = route(&gw, "opaque");
    let c = client();
    let m2m = auth_server.register(&["client_credentials"], SCOPE).await;
    // The harness issues opaque tokens for resources whose path has an `opaque` segment.
    let token = auth_server.cc_token(&m2m, &url, SCOPE).await;
    assert_eq!(token.matches('.').count(), 0, "an opaque token: {token}");
    let before = auth_server.stats().await["requests"]["introspection"]
        .as_u64()
        .unwrap_or(0);
    for i in 0..20 {
        let resp = mcp_post(&c, &url, LIST)
            .bearer_auth(&token)
            .header("mcp-protocol-version", "2025-11-25")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "call {i}");
    }
    let after = auth_server.stats().await["requests"]["introspection"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(after - before, 1, "one introspection for twenty calls");

    // Revoked: refused once the cache entry (1 s) has ended.
    auth_server.revoke(&token).await;
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let resp = mcp_post(&c, &url, LIST)
        .bearer_auth(&token)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert!(www_authenticate(&resp).contains("invalid_token"));
    assert_error(resp, 401, -32055, serde_json::json!(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_costs_no_failed_call() {
    let auth_server = As::start(&[]);
    let up = demo(DemoOptions {
        stateless: true,
        json_response: true,
    })
    .await;
    let (gw, _dir) = gateway_from(
        &format!(
            r#"
[server]
listen = "127.0.0.1:{{PORT}}"
public_url = "http://127.0.0.1:{{PORT}}"
[auth]
issuer = "{{ISSUER}}"
[upstreams.demo]
url = "http://{up}/mcp"
"#
        ),
        &auth_server.issuer,
    )
    .await;
    let url = route(&gw, "demo");
    let c = client();
    let m2m = auth_server.register(&["client_credentials"], SCOPE).await;
    let call = |token: String| {
        let c = c.clone();
        let url = url.clone();
        async move {
            mcp_post(&c, &url, LIST)
                .bearer_auth(token)
                .header("mcp-protocol-version", "2025-11-25")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let old = auth_server.cc_token(&m2m, &url, SCOPE).await;
    assert_eq!(call(old.clone()).await, 200);
    let jwks_before = auth_server.stats().await["requests"]["jwks"]
        .as_u64()
        .unwrap();
    auth_server.rotate().await;
    // Every call after the rotation succeeds: old-key tokens and new-key tokens alike.
    let mut failed = 0;
    for _ in 0..5 {
        let fresh = auth_server.cc_token(&m2m, &url, SCOPE).await;
        for t in [fresh, old.clone()] {
            if call(t).await != 200 {
                failed += 1;
            }
        }
    }
    assert_eq!(failed, 0);
    let jwks_after = auth_server.stats().await["requests"]["jwks"]
        .as_u64()
        .unwrap();
    assert_eq!(
        jwks_after - jwks_before,
        1,
        "one JWKS fetch for the new key id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_upstream_credential_type_and_never_the_callers_token() {
    let auth_server = As::start(&[]);
    let opts = DemoOptions {
        stateless: true,
        json_response: true,
    };
    let (st_up, st_seen) = recording_demo(opts).await;
    let (cc_up, cc_seen) = recording_demo(opts).await;
    let (te_up, te_seen) = recording_demo(opts).await;
    std::env::set_var("AUTH_TEST_STATIC_SECRET", "static-upstream-secret");
    std::env::set_var("AUTH_TEST_GATEWAY_SECRET", "gateway-secret");
    let (gw, _dir) = gateway_from(
        &format!(
            r#"
[server]
listen = "127.0.0.1:{{PORT}}"
public_url = "http://127.0.0.1:{{PORT}}"
[auth]
issuer = "{{ISSUER}}"
scopes = ["{SCOPE}"]
introspection = {{ client_id = "gateway", client_secret_env = "AUTH_TEST_GATEWAY_SECRET" }}
[upstreams.st]
url = "http://{st_up}/mcp"
credentials = {{ type = "static", secret_env = "AUTH_TEST_STATIC_SECRET" }}
[upstreams.cc]
url = "http://{cc_up}/mcp"
credentials = {{ type = "client_credentials", scopes = ["{SCOPE}"] }}
[upstreams.te]
url = "http://{te_up}/mcp"
credentials = {{ type = "token_exchange", scopes = ["{SCOPE}"] }}
"#
        ),
        &auth_server.issuer,
    )
    .await;
    let c = client();
    let app = auth_server.register(&["authorization_code"], SCOPE).await;
    let mut callers = Vec::new();
    for name in ["st", "cc", "te"] {
        let url = route(&gw, name);
        let token = auth_server.code_flow_token(&app, "bob", &url, SCOPE).await;
        for _ in 0..2 {
            let resp = mcp_post(&c, &url, LIST)
                .bearer_auth(&token)
                .header("mcp-protocol-version", "2025-11-25")
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{name}");
        }
        callers.push(token);
    }
    let never_callers = |seen: &[Option<String>]| {
        for s in seen.iter().flatten() {
            for t in &callers {
                assert!(
                    !s.contains(t.as_str()),
                    "a caller's token reached an upstream"
                );
            }
        }
    };
    let st = st_seen.lock().unwrap().clone();
    assert_eq!(
        st,
        vec![Some("Bearer static-upstream-secret".to_owned()); 2]
    );
    never_callers(&st);

    // Client credentials: the gateway's own token (sub = gateway), obtained once.
    let cc = cc_seen.lock().unwrap().clone();
    assert_eq!(cc.len(), 2);
    assert_eq!(cc[0], cc[1], "one token reused until it expires");
    let claims = jwt_claims(cc[0].as_deref().unwrap());
    assert_eq!(claims["sub"], "gateway");
    assert_eq!(claims["aud"], format!("http://{cc_up}/mcp"));
    never_callers(&cc);

    // Token exchange: minted for the upstream, on bob's behalf, acted by the gateway.
    let te = te_seen.lock().unwrap().clone();
    let claims = jwt_claims(te[0].as_deref().unwrap());
    assert_eq!(claims["sub"], "bob");
    assert_eq!(claims["aud"], format!("http://{te_up}/mcp"));
    assert_eq!(claims["act"]["sub"], "gateway");
    never_callers(&te);
    let stats = auth_server.stats().await;
    assert_eq!(
        stats["token_by_grant_type"]["urn:ietf:params:oauth:grant-type:token-exchange"], 1,
        "exchanged once, then cached: {stats}"
    );
}

/// The claims of a JWT in an `Authorization: Bearer` value (not verified: what the server saw).
fn jwt_claims(header: &str) -> serde_json::Value {
    use base64::Engine;
    let token = header.strip_prefix("Bearer ").unwrap();
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}
