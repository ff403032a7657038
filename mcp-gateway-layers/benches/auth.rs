//! Criterion benchmarks of OAuthGuard's per-call costs: a call with a cached token through the
//! guard, and the first verification of an RS256 and an ES256 JWT (the signature check; the
//! issuer's keys are already loaded). Keys are fixed test keys (benches/fixtures/keys.json),
//! served as JWKS by a local HTTP server the bench starts.
//! Run with `cargo bench -p mcp-gateway-layers --features auth --bench auth`.
#![allow(missing_docs, clippy::unwrap_used)]

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use mcp_gateway_core::McpRequest;
use mcp_gateway_layers::auth::{AsClient, Issuer, JwtVerifier, OAuthGuardLayer, TokenVerifier};
use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tower::{service_fn, Layer, ServiceExt};

const KEYS: &str = include_str!("fixtures/keys.json");

/// Serves the issuer's metadata and JWKS; returns the issuer URL.
async fn issuer_server(keys: &serde_json::Value) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let meta =
        serde_json::json!({ "issuer": base, "jwks_uri": format!("{base}/jwks") }).to_string();
    let jwks =
        serde_json::json!({ "keys": [keys["RS256"]["jwk"], keys["ES256"]["jwk"]] }).to_string();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (meta, jwks) = (meta.clone(), jwks.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let body = if req.uri().path() == "/jwks" {
                        jwks.clone()
                    } else {
                        meta.clone()
                    };
                    async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    base
}

fn sign(keys: &serde_json::Value, alg: &str, issuer: &str, aud: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": issuer, "aud": aud, "sub": "agent-1", "client_id": "agent-1",
        "scope": "mcp:tools", "iat": now, "exp": now + 3600,
    });
    let pem = keys[alg]["pem"].as_str().unwrap().as_bytes();
    let (algorithm, key) = match alg {
        "RS256" => (
            jsonwebtoken::Algorithm::RS256,
            jsonwebtoken::EncodingKey::from_rsa_pem(pem).unwrap(),
        ),
        _ => (
            jsonwebtoken::Algorithm::ES256,
            jsonwebtoken::EncodingKey::from_ec_pem(pem).unwrap(),
        ),
    };
    let mut header = jsonwebtoken::Header::new(algorithm);
    header.kid = Some(keys[alg]["jwk"]["kid"].as_str().unwrap().to_owned());
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

fn auth(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let keys: serde_json::Value = serde_json::from_str(KEYS).unwrap();
    let issuer = rt.block_on(issuer_server(&keys));
    let resource = "https://gw.example.com/mcp/bench";
    let verifier = JwtVerifier::new(Arc::new(Issuer::new(
        issuer.clone(),
        AsClient::new(Duration::from_secs(5)),
    )));
    let rs = sign(&keys, "RS256", &issuer, resource);
    let es = sign(&keys, "ES256", &issuer, resource);
    // Loads the JWKS once.
    rt.block_on(verifier.verify(&rs)).unwrap();

    let mut g = c.benchmark_group("jwt_verify_first");
    g.bench_function("RS256", |b| {
        b.iter(|| rt.block_on(verifier.verify(black_box(&rs))).unwrap())
    });
    g.bench_function("ES256", |b| {
        b.iter(|| rt.block_on(verifier.verify(black_box(&es))).unwrap())
    });
    g.finish();

    // The guard over a trivial service, with the token cached after the first call. The
    // request carries its parsed view already, as it does behind ParseMcp in the gateway.
    let inner = service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
    });
    let svc = OAuthGuardLayer::new(verifier.clone(), resource)
        .scopes(["mcp:tools"])
        .layer(inner);
    let body = Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#);
    let bearer = format!("Bearer {rs}");
    let make = || {
        let mut req = Request::post("/mcp/bench")
            .header("content-type", "application/json")
            .header("authorization", &bearer)
            .body(Full::new(body.clone()))
            .unwrap();
        let view = McpRequest::parse(req.headers(), Some(body.clone())).unwrap();
        req.extensions_mut().insert(view);
        req
    };
    let first = rt.block_on(svc.clone().oneshot(make())).unwrap();
    assert_eq!(first.status(), 200);
    c.bench_function("guard_cached_token_call", |b| {
        b.iter(|| {
            let resp = rt.block_on(svc.clone().oneshot(black_box(make()))).unwrap();
            assert_eq!(resp.status(), 200);
        })
    });
}

criterion_group!(benches, auth);
criterion_main!(benches);
