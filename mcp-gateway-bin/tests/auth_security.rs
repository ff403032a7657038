//! Bad tokens against the OAuthGuard, with a real authorization server's keys: each gets the
//! answer docs/security.md lists (run with `--nocapture` to print the table).
#![allow(clippy::unwrap_used)]

mod common;

use common::oauth::As;
use common::*;
use mcp_gateway::Gateway;
use mcp_gateway_examples::demo_server::DemoOptions;
use std::time::{SystemTime, UNIX_EPOCH};

const LIST: &str = r#"{"jsonrpc":"2.0","id":9,"method":"tools/list"}"#;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct Case {
    name: &'static str,
    auth: Option<String>,
    query: &'static str,
    status: u16,
    says: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_the_documented_answers() {
    let auth_server = As::start(&[]);
    let up = demo(DemoOptions {
        stateless: true,
        json_response: true,
    })
    .await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
[auth]
issuer = "{}"
scopes = ["mcp:tools"]
jwks_refetch_interval = "60s"
[upstreams.demo]
url = "http://{up}/mcp"
"#,
        auth_server.issuer
    );
    let settings = mcp_gateway::config::parse(&text, "gw.toml", std::path::Path::new(".")).unwrap();
    let gw = Gateway::bind(settings).await.unwrap();
    let url = format!("http://{}/mcp/demo", gw.local_addr());
    let iss = auth_server.issuer.clone();
    let good = |extra: serde_json::Value| {
        let mut c = serde_json::json!({
            "iss": iss, "sub": "mallory", "client_id": "mallory", "aud": url,
            "scope": "mcp:tools", "iat": now(), "exp": now() + 600,
        });
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let sign =
        |claims: serde_json::Value, alg: &str| serde_json::json!({ "claims": claims, "alg": alg });
    let bearer = |t: String| Some(format!("Bearer {t}"));

    // HS256 with the server's RSA public key as the HMAC secret (key confusion).
    let pem = auth_server.public_pem("RS256").await;
    let keys = auth_server
        .get(&format!("{}/_test/keys", auth_server.issuer))
        .await
        .1;
    let rs_kid = keys["active"]["RS256"].as_str().unwrap().to_owned();
    let mut hs_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs_header.kid = Some(rs_kid.clone());
    let hs256 = jsonwebtoken::encode(
        &hs_header,
        &good(serde_json::json!({})),
        &jsonwebtoken::EncodingKey::from_secret(pem.as_bytes()),
    )
    .unwrap();
    // An ES256 signature presented as RS256 under the RSA key's id.
    let es = auth_server
        .sign(sign(good(serde_json::json!({})), "ES256"))
        .await;
    let mut parts: Vec<String> = es.split('.').map(str::to_owned).collect();
    parts[0] = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::json!({"alg": "RS256", "typ": "at+jwt", "kid": rs_kid}).to_string())
    };
    let alg_swap = parts.join(".");

    let cases = vec![
        Case {
            name: "valid RS256 token (control)",
            auth: bearer(
                auth_server
                    .sign(sign(good(serde_json::json!({})), "RS256"))
                    .await,
            ),
            query: "",
            status: 200,
            says: "",
        },
        Case {
            name: "valid ES256 token (control)",
            auth: bearer(es.clone()),
            query: "",
            status: 200,
            says: "",
        },
        Case {
            name: "no token",
            auth: None,
            query: "",
            status: 401,
            says: "authorization required",
        },
        Case {
            name: "`alg: none`, unsigned",
            auth: bearer(
                auth_server
                    .sign(sign(good(serde_json::json!({})), "none"))
                    .await,
            ),
            query: "",
            status: 401,
            says: "\"none\" is not accepted",
        },
        Case {
            name: "HS256 signed with the server's RSA public key",
            auth: bearer(hs256),
            query: "",
            status: 401,
            says: "HS256 is not accepted",
        },
        Case {
            name: "ES256 signature relabelled RS256 under the RSA key id",
            auth: bearer(alg_swap),
            query: "",
            status: 401,
            says: "signature invalid",
        },
        Case {
            name: "expired (`exp` an hour ago)",
            auth: bearer(
                auth_server
                    .sign(sign(
                        good(serde_json::json!({"exp": now() - 3600})),
                        "RS256",
                    ))
                    .await,
            ),
            query: "",
            status: 401,
            says: "token expired",
        },
        Case {
            name: "not yet valid (`nbf` in an hour)",
            auth: bearer(
                auth_server
                    .sign(sign(
                        good(serde_json::json!({"nbf": now() + 3600})),
                        "RS256",
                    ))
                    .await,
            ),
            query: "",
            status: 401,
            says: "not valid yet",
        },
        Case {
            name: "no `exp`",
            auth: bearer(
                auth_server
                    .sign(sign(good(serde_json::json!({"exp": null})), "RS256"))
                    .await,
            ),
            query: "",
            status: 401,
            says: "no \"exp\" claim",
        },
        Case {
            name: "wrong `iss`",
            auth: bearer(
                auth_server
                    .sign(sign(
                        good(serde_json::json!({"iss": "http://evil.example"})),
                        "RS256",
                    ))
                    .await,
            ),
            query: "",
            status: 401,
            says: "issuer is not trusted",
        },
        Case {
            name: "wrong `aud` (another resource)",
            auth: bearer(
                auth_server
                    .sign(sign(
                        good(serde_json::json!({"aud": "http://127.0.0.1:1/mcp/other"})),
                        "RS256",
                    ))
                    .await,
            ),
            query: "",
            status: 401,
            says: "audience",
        },
        Case {
            name: "no `aud`",
            auth: bearer(
                auth_server
                    .sign(sign(good(serde_json::json!({"aud": null})), "RS256"))
                    .await,
            ),
            query: "",
            status: 401,
            says: "audience",
        },
        Case {
            name: "missing the route's scope",
            auth: bearer(
                auth_server
                    .sign(sign(
                        good(serde_json::json!({"scope": "github:read"})),
                        "RS256",
                    ))
                    .await,
            ),
            query: "",
            status: 403,
            says: "needs scope mcp:tools",
        },
        Case {
            name: "malformed (three dots of garbage)",
            auth: Some("Bearer abc.def.ghi".into()),
            query: "",
            status: 401,
            says: "malformed token",
        },
        Case {
            name: "opaque token, no introspection configured",
            auth: Some("Bearer some-opaque-token".into()),
            query: "",
            status: 401,
            says: "not recognised",
        },
        Case {
            name: "not a Bearer token (Basic)",
            auth: Some("Basic bWFsbG9yeTpwdw==".into()),
            query: "",
            status: 401,
            says: "only Bearer",
        },
        Case {
            // Four times the verifier's cap, and inside the listener's head limit
            // (`max_header_bytes`, 64 KiB), which answers a larger head 431 before any layer.
            name: "32 KiB token",
            auth: Some(format!("Bearer {}", "A".repeat(32 * 1024))),
            query: "",
            status: 401,
            says: "longer than",
        },
        Case {
            name: "token in the query string",
            auth: None,
            query: "?access_token=whatever",
            status: 400,
            says: "only in the Authorization header",
        },
    ];
    let c = client();
    println!("| token | HTTP | JSON-RPC | answer |");
    println!("|---|---|---|---|");
    for case in &cases {
        let mut req = mcp_post(&c, &format!("{url}{}", case.query), LIST)
            .header("mcp-protocol-version", "2025-11-25");
        if let Some(a) = &case.auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned());
        let v = resp.json_value().await;
        let message = v["error"]["message"].as_str().unwrap_or("").to_owned();
        println!(
            "| {} | {status} | {} | {} |",
            case.name,
            v["error"]["code"],
            if status == 200 { "served" } else { &message }
        );
        assert_eq!(status, case.status, "{}: {v}", case.name);
        if status != 200 {
            assert!(message.contains(case.says), "{}: {message}", case.name);
            assert_eq!(v["id"], 9, "{}", case.name);
            let challenge = challenge.unwrap_or_else(|| panic!("{}: no challenge", case.name));
            assert!(challenge.contains("resource_metadata=\""), "{challenge}");
            if case
                .auth
                .as_deref()
                .is_some_and(|a| a.starts_with("Bearer "))
                && status == 401
            {
                assert!(
                    challenge.contains("error=\"invalid_token\""),
                    "{}: {challenge}",
                    case.name
                );
            }
        }
    }

    // A flood of made-up key ids costs at most one JWKS fetch per interval (60 s here).
    let before = auth_server.stats().await["requests"]["jwks"]
        .as_u64()
        .unwrap();
    let valid = auth_server
        .sign(sign(good(serde_json::json!({})), "RS256"))
        .await;
    for i in 0..40 {
        let t = auth_server
            .sign(serde_json::json!({
                "claims": good(serde_json::json!({"jti": format!("flood-{i}")})),
                "alg": "RS256",
                "kid": format!("made-up-{i}"),
            }))
            .await;
        let resp = mcp_post(&c, &url, LIST)
            .header("mcp-protocol-version", "2025-11-25")
            .bearer_auth(t)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
    }
    let after = auth_server.stats().await["requests"]["jwks"]
        .as_u64()
        .unwrap();
    println!(
        "| 40 tokens with made-up key ids | 401 each | -32055 | JWKS fetched {} time(s) |",
        after - before
    );
    assert!(after - before <= 1, "JWKS fetched {} times", after - before);
    // Real tokens still pass during the flood.
    let resp = mcp_post(&c, &url, LIST)
        .header("mcp-protocol-version", "2025-11-25")
        .bearer_auth(valid)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}
