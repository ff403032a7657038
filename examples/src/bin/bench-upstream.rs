//! `bench-upstream [--listen ADDR] [--threads N]`: the fastest MCP server we can write, so
//! that in benchmarks the upstream is never the bottleneck.
//!
//! It answers `initialize` (issuing a session id), notifications (202), and
//! `tools/call` of the tool `payload` with a result of `arguments.size` bytes of text, as
//! `application/json` or — with `arguments.format = "sse"` — as one SSE event. Any other
//! request gets an empty result. Sessions are not checked: every id is accepted.
//!
//! It is also the benchmarks' token issuer: `GET …/.well-known/openid-configuration` and
//! `GET /jwks` describe a fixed RSA key (a benchmark key, not a secret), and
//! `GET /token?aud=RESOURCE` answers an RS256 JWT for that audience, issued by
//! `http://HOST/mcp`, with scope `mcp:tools`, valid for a day.
//!
//! `bench-upstream --stdio` is the same server over stdio (one JSON-RPC message per line on
//! stdin and stdout), for the stdio upstream benchmarks: every answer is one line.
//!
//! It is also the benchmarks' local OpenTelemetry sink: a POST to a path ending in
//! `/v1/traces` (OTLP/HTTP) is read whole and answered 200 with an empty export response.

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use mcp_gateway_core::message::{ClassifiedBody, MessageKind};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

static SESSIONS: AtomicU64 = AtomicU64::new(1);

fn respond(status: StatusCode, ctype: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

fn result(id: &str, result: &str) -> String {
    format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{result}}}"#)
}

fn payload_result(id: &str, args: Option<&str>) -> (String, bool) {
    #[derive(serde::Deserialize)]
    struct Args {
        #[serde(default)]
        size: usize,
        #[serde(default)]
        format: Option<String>,
    }
    let a: Args = args
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or(Args {
            size: 0,
            format: None,
        });
    let sse = a.format.as_deref() == Some("sse");
    // Fill so that the whole JSON-RPC message is about `size` bytes.
    let frame = result(
        id,
        r#"{"content":[{"type":"text","text":""}],"isError":false}"#,
    );
    let fill = a.size.saturating_sub(frame.len());
    let text = "x".repeat(fill);
    let body = result(
        id,
        &format!(r#"{{"content":[{{"type":"text","text":"{text}"}}],"isError":false}}"#),
    );
    (body, sse)
}

/// The benchmark signing key (PKCS#1 DER) and its modulus (base64url).
const KEY_DER: &[u8] = include_bytes!("../../data/bench-jwt-key.der");
const KEY_N: &str = include_str!("../../data/bench-jwt-key.n");

fn issuer(req: &Request<Incoming>) -> String {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    format!("http://{host}/mcp")
}

/// The issuer's endpoints: discovery, keys, and a token for the audience asked.
fn issue(req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let path = req.uri().path();
    let iss = issuer(req);
    if path.ends_with("/.well-known/openid-configuration")
        || path.starts_with("/.well-known/oauth-authorization-server")
    {
        let base = iss.trim_end_matches("/mcp");
        let doc = serde_json::json!({
            "issuer": iss,
            "jwks_uri": format!("{base}/jwks"),
            "token_endpoint": format!("{base}/token"),
        });
        return Some(respond(
            StatusCode::OK,
            "application/json",
            Bytes::from(doc.to_string()),
        ));
    }
    if path == "/jwks" {
        let jwks = serde_json::json!({"keys": [{
            "kty": "RSA", "kid": "bench", "alg": "RS256", "use": "sig",
            "n": KEY_N.trim(), "e": "AQAB",
        }]});
        return Some(respond(
            StatusCode::OK,
            "application/json",
            Bytes::from(jwks.to_string()),
        ));
    }
    if path == "/token" {
        let aud = req
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("aud=")))
            .unwrap_or("")
            .replace("%3A", ":")
            .replace("%2F", "/");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = serde_json::json!({
            "iss": iss, "sub": "bench-agent", "aud": aud, "scope": "mcp:tools",
            "client_id": "bench", "iat": now, "exp": now + 86_400,
        });
        let mut head = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        head.kid = Some("bench".into());
        let token = jsonwebtoken::encode(
            &head,
            &claims,
            &jsonwebtoken::EncodingKey::from_rsa_der(KEY_DER),
        )
        .ok()?;
        return Some(respond(StatusCode::OK, "text/plain", Bytes::from(token)));
    }
    None
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() == http::Method::GET {
        if let Some(resp) = issue(&req) {
            return Ok(resp);
        }
    }
    if req.method() != http::Method::POST {
        return Ok(respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            Bytes::new(),
        ));
    }
    let otlp = req.uri().path().ends_with("/v1/traces");
    let Ok(body) = req.into_body().collect().await.map(|c| c.to_bytes()) else {
        return Ok(respond(StatusCode::BAD_REQUEST, "text/plain", Bytes::new()));
    };
    if otlp {
        // An empty ExportTraceServiceResponse: full success.
        return Ok(respond(
            StatusCode::OK,
            "application/x-protobuf",
            Bytes::new(),
        ));
    }
    let Ok(view) = ClassifiedBody::new(body) else {
        return Ok(respond(StatusCode::BAD_REQUEST, "text/plain", Bytes::new()));
    };
    let Some(msg) = view.parsed().single() else {
        return Ok(respond(StatusCode::BAD_REQUEST, "text/plain", Bytes::new()));
    };
    if msg.kind() != MessageKind::Request {
        return Ok(respond(StatusCode::ACCEPTED, "text/plain", Bytes::new()));
    }
    let id = msg.id().map_or("null", |i| i.as_raw());
    match msg.method() {
        Some("initialize") => {
            let mut r = respond(
                StatusCode::OK,
                "application/json",
                Bytes::from(result(
                    id,
                    r#"{"protocolVersion":"2025-11-25","capabilities":{"tools":{}},"serverInfo":{"name":"bench-upstream","version":"0"}}"#,
                )),
            );
            let sid = SESSIONS.fetch_add(1, Ordering::Relaxed);
            if let Ok(v) = HeaderValue::from_str(&format!("bench-{sid}")) {
                r.headers_mut().insert("mcp-session-id", v);
            }
            Ok(r)
        }
        Some("tools/call") => {
            let (body, sse) = payload_result(id, view.arguments_text(msg));
            if sse {
                Ok(respond(
                    StatusCode::OK,
                    "text/event-stream",
                    Bytes::from(format!("data: {body}\n\n")),
                ))
            } else {
                Ok(respond(
                    StatusCode::OK,
                    "application/json",
                    Bytes::from(body),
                ))
            }
        }
        Some("tools/list") => Ok(respond(
            StatusCode::OK,
            "application/json",
            Bytes::from(result(
                id,
                r#"{"tools":[{"name":"payload","description":"returns size bytes","inputSchema":{"type":"object","properties":{"size":{"type":"integer"},"format":{"type":"string"}}}}]}"#,
            )),
        )),
        _ => Ok(respond(
            StatusCode::OK,
            "application/json",
            Bytes::from(result(id, "{}")),
        )),
    }
}

/// The stdio server: answers each request line with one line, in order, flushed at once.
fn serve_stdio() -> std::io::Result<()> {
    use std::io::{BufRead, Write};
    let stdin = std::io::stdin().lock();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for line in stdin.lines() {
        let line = line?;
        let Ok(view) = ClassifiedBody::new(Bytes::from(line)) else {
            continue;
        };
        let Some(msg) = view.parsed().single() else {
            continue;
        };
        if msg.kind() != MessageKind::Request {
            continue;
        }
        let id = msg.id().map_or("null", |i| i.as_raw());
        let answer = match msg.method() {
            Some("initialize") => result(
                id,
                r#"{"protocolVersion":"2025-11-25","capabilities":{"tools":{}},"serverInfo":{"name":"bench-upstream","version":"0"}}"#,
            ),
            Some("tools/call") => payload_result(id, view.arguments_text(msg)).0,
            _ => result(id, "{}"),
        };
        out.write_all(answer.as_bytes())?;
        out.write_all(b"\n")?;
        out.flush()?;
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().nth(1).as_deref() == Some("--stdio") {
        return Ok(serve_stdio()?);
    }
    let mut addr: SocketAddr = "127.0.0.1:3101".parse()?;
    let mut threads = 1usize;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--listen" => addr = it.next().ok_or("--listen needs ADDR")?.parse()?,
            "--threads" => threads = it.next().ok_or("--threads needs N")?.parse()?,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        eprintln!("bench-upstream on http://{}/mcp", listener.local_addr()?);
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(
                        hyper_util::rt::TokioIo::new(stream),
                        hyper::service::service_fn(handle),
                    )
                    .await;
            });
        }
    })
}
