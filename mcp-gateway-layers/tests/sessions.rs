//! SessionAffinity over in-process instances: routing, refusals, instance set changes,
//! ejection and key rotation, with an injected clock (no sleeps).
#![allow(clippy::unwrap_used, missing_docs)]

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use mcp_gateway_layers::core::exchange::{DenialKind, Exchange};
use mcp_gateway_layers::core::{InstanceUnreachable, Principal};
use mcp_gateway_layers::sessions::{
    ManualClock, MemoryStore, SessionAffinity, SessionAffinityLayer, SessionKey,
};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tower::{service_fn, ServiceExt};

type Svc =
    tower::util::BoxCloneSyncService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>;

/// An instance named `name`: issues `name-N` ids, answers 404 for ids it did not issue or
/// ended, echoes who served what; `down` makes it unreachable.
fn instance(name: &'static str, down: Arc<AtomicBool>) -> Svc {
    let ended = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    tower::util::BoxCloneSyncService::new(service_fn(move |req: Request<Full<Bytes>>| {
        let (down, ended) = (down.clone(), ended.clone());
        async move {
            if down.load(Ordering::Relaxed) {
                let mut r = Response::new(Full::new(Bytes::from_static(b"{}")));
                *r.status_mut() = StatusCode::BAD_GATEWAY;
                r.extensions_mut().insert(InstanceUnreachable);
                return Ok(r);
            }
            let sid = req
                .headers()
                .get("mcp-session-id")
                .map(|v| v.to_str().unwrap().to_owned());
            let mut resp = match sid {
                None => {
                    let mut r = Response::new(Full::new(Bytes::from_static(b"{}")));
                    r.headers_mut()
                        .insert("mcp-session-id", format!("{name}-1").parse().unwrap());
                    r
                }
                Some(s) if !s.starts_with(name) || ended.lock().unwrap().contains(&s) => {
                    let mut r = Response::new(Full::new(Bytes::from_static(b"gone")));
                    *r.status_mut() = StatusCode::NOT_FOUND;
                    r
                }
                Some(s) => {
                    if req.method() == Method::DELETE {
                        ended.lock().unwrap().push(s.clone());
                    }
                    Response::new(Full::new(Bytes::from(format!("{name}:{s}"))))
                }
            };
            resp.headers_mut()
                .insert("x-served-by", name.parse().unwrap());
            Ok::<_, Infallible>(resp)
        }
    }))
}

struct Fixture {
    svc: SessionAffinity<Svc>,
    clock: ManualClock,
    down: [Arc<AtomicBool>; 3],
}

fn fixture(layer: SessionAffinityLayer) -> Fixture {
    let down = [
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    ];
    let svc = layer.service([
        ("a", instance("a", down[0].clone())),
        ("b", instance("b", down[1].clone())),
        ("c", instance("c", down[2].clone())),
    ]);
    Fixture {
        svc,
        clock: ManualClock::default(),
        down,
    }
}

fn layer(key: u8, clock: &ManualClock) -> SessionAffinityLayer {
    SessionAffinityLayer::new(SessionKey::from_bytes([key; 32]))
        .clock(clock.clone())
        .idle_timeout(Some(Duration::from_secs(60)))
        .max_lifetime(Duration::from_secs(3600))
        .scope("demo")
}

async fn send(
    svc: &SessionAffinity<Svc>,
    method: Method,
    sid: Option<&str>,
    principal: Option<Principal>,
) -> (StatusCode, Option<String>, String, Option<Exchange>) {
    let mut req = Request::builder().method(method).uri("/mcp");
    if let Some(s) = sid {
        req = req.header("mcp-session-id", s);
    }
    let mut req = req.body(Full::new(Bytes::new())).unwrap();
    let exchange = principal.map(|p| {
        let (x, _) = Exchange::get_or_insert(req.extensions_mut());
        x.update(|r| r.principal = Some(p));
        x
    });
    let resp = svc.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let sid = resp
        .headers()
        .get("mcp-session-id")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = resp.into_body().collect().await.unwrap();
    (
        status,
        sid,
        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        exchange,
    )
}

async fn init(f: &Fixture, p: Option<Principal>) -> String {
    let (status, sid, _, _) = send(&f.svc, Method::POST, None, p).await;
    assert_eq!(status, 200);
    let sid = sid.unwrap();
    assert!(
        sid.len() > 40 && !["a-1", "b-1", "c-1", "d-1"].contains(&sid.as_str()),
        "upstream id leaked: {sid}"
    );
    sid
}

async fn owner(f: &Fixture, sid: &str, p: Option<Principal>) -> (StatusCode, String) {
    let (status, _, body, _) = send(&f.svc, Method::POST, Some(sid), p).await;
    (status, body)
}

#[tokio::test]
async fn sessions_stick_and_refusals_are_404() {
    let clock = ManualClock::new(1_000_000);
    let mut f = fixture(layer(1, &clock));
    f.clock = clock.clone();
    let mut sids = Vec::new();
    for _ in 0..12 {
        sids.push(init(&f, None).await);
    }
    let mut owners = std::collections::HashSet::new();
    for sid in &sids {
        let (s, first) = owner(&f, sid, None).await;
        assert_eq!(s, 200);
        owners.insert(first[..1].to_owned());
        for _ in 0..3 {
            assert_eq!(owner(&f, sid, None).await, (StatusCode::OK, first.clone()));
        }
    }
    assert!(owners.len() >= 2, "initialize was not spread: {owners:?}");

    // Forged, tampered (one character), from another key, from another scope: 404.
    let sid = &sids[0];
    let mut tampered = sid.clone().into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let other_key = fixture(layer(2, &clock));
    let other_scope = fixture(layer(1, &clock).scope("elsewhere"));
    for (svc, id) in [
        (&f.svc, "forged"),
        (&f.svc, tampered.as_str()),
        (&other_key.svc, sid.as_str()),
        (&other_scope.svc, sid.as_str()),
    ] {
        let (status, _, body, _) = send(svc, Method::POST, Some(id), None).await;
        assert_eq!(status, 404, "{id}");
        assert!(body.contains("-32001"), "{body}");
    }
    // The same key on another "replica" (another layer, another store): routes.
    let replica = fixture(layer(1, &clock));
    assert_eq!(owner(&replica, sid, None).await.0, 200);

    // Idle: 61 s without use.
    clock.advance(Duration::from_secs(61));
    assert_eq!(owner(&f, &sids[1], None).await.0, 404);
    // Used within the idle timeout, for longer than max_lifetime in all: expires.
    let fresh = init(&f, None).await;
    for _ in 0..61 {
        clock.advance(Duration::from_secs(59));
        assert_eq!(owner(&f, &fresh, None).await.0, 200);
    }
    clock.advance(Duration::from_secs(59));
    assert_eq!(owner(&f, &fresh, None).await.0, 404);
}

#[tokio::test]
async fn principal_delete_and_record() {
    let clock = ManualClock::new(1_000_000);
    let store = Arc::new(MemoryStore::new());
    let l = layer(1, &clock).store(store.clone());
    let f = fixture(l.clone());
    let alice = || {
        Some(Principal::new(
            "alice",
            mcp_gateway_layers::core::PrincipalKind::User,
        ))
    };
    let bob = || {
        Some(Principal::new(
            "bob",
            mcp_gateway_layers::core::PrincipalKind::User,
        ))
    };
    let sid = init(&f, alice()).await;
    assert_eq!(owner(&f, &sid, alice()).await.0, 200);
    let (status, _, _, x) = send(&f.svc, Method::POST, Some(&sid), bob()).await;
    assert_eq!(status, 404);
    let rec = x.unwrap().snapshot();
    assert_eq!(rec.denial.unwrap().kind, DenialKind::UnknownSession);
    assert_eq!(
        owner(&f, &sid, None).await.0,
        404,
        "anonymous is another principal"
    );
    // The record holds the client's id and the instance.
    let (_, _, _, x) = send(&f.svc, Method::POST, Some(&sid), alice()).await;
    let rec = x.unwrap().snapshot();
    // The record names the session by its handle (the id's nonce), never by the id itself.
    let handle = rec.session.unwrap();
    assert_eq!(handle.len(), 24);
    // The handle anyone can compute from the id (audit and spans, for calls the layer did
    // not see) is that one.
    assert_eq!(&*handle, mcp_gateway_core::session::handle_of(&sid));
    assert!(!sid.contains(&*handle));
    assert!(rec.instance.is_some());
    // DELETE reaches the owner; afterwards the id is dead here and on a replica sharing the store.
    let (status, _, body, _) = send(&f.svc, Method::DELETE, Some(&sid), alice()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(owner(&f, &sid, alice()).await.0, 404);
    let replica = fixture(l);
    assert_eq!(owner(&replica, &sid, alice()).await.0, 404);
}

#[tokio::test]
async fn instance_set_changes_and_ejection() {
    let clock = ManualClock::new(1_000_000);
    let mut f = fixture(layer(1, &clock));
    f.clock = clock.clone();
    let mut by_owner: std::collections::HashMap<String, Vec<String>> = Default::default();
    for _ in 0..30 {
        let sid = init(&f, None).await;
        let o = owner(&f, &sid, None).await.1[..1].to_owned();
        by_owner.entry(o).or_default().push(sid);
    }
    assert_eq!(by_owner.len(), 3, "{:?}", by_owner.keys());
    // Remove b: its sessions get 404, the others are untouched.
    assert!(f.svc.remove("b"));
    for sid in &by_owner["b"] {
        assert_eq!(owner(&f, sid, None).await.0, 404);
    }
    for o in ["a", "c"] {
        for sid in &by_owner[o] {
            assert_eq!(owner(&f, sid, None).await.1[..1], *o);
        }
    }
    // New work avoids the removed instance; add d: it takes new sessions, the others stay.
    for _ in 0..10 {
        let sid = init(&f, None).await;
        assert_ne!(&owner(&f, &sid, None).await.1[..1], "b");
    }
    f.svc
        .insert("d", instance("d", Arc::new(AtomicBool::new(false))));
    let mut seen_d = false;
    for _ in 0..30 {
        let sid = init(&f, None).await;
        seen_d |= owner(&f, &sid, None).await.1.starts_with('d');
    }
    assert!(seen_d);
    for sid in &by_owner["a"] {
        assert_eq!(owner(&f, sid, None).await.0, 200);
    }

    // c goes down: its sessions get 404 at once (not 502), c is ejected, new work avoids it.
    f.down[2].store(true, Ordering::Relaxed);
    for sid in &by_owner["c"] {
        assert_eq!(owner(&f, sid, None).await.0, 404);
    }
    for _ in 0..20 {
        let sid = init(&f, None).await;
        let served = owner(&f, &sid, None).await.1;
        assert!(!served.starts_with('c'), "{served}");
    }
    for sid in &by_owner["a"] {
        assert_eq!(owner(&f, sid, None).await.0, 200);
    }
    // After the back-off c is tried again, and serves once it is back.
    f.down[2].store(false, Ordering::Relaxed);
    clock.advance(Duration::from_secs(2));
    let mut back = false;
    for _ in 0..30 {
        let sid = init(&f, None).await;
        back |= owner(&f, &sid, None).await.1.starts_with('c');
    }
    assert!(back);
}

#[tokio::test]
async fn key_rotation() {
    let clock = ManualClock::new(1_000_000);
    let old = fixture(layer(1, &clock));
    let sid = init(&old, None).await;
    let rotated = fixture(
        SessionAffinityLayer::new(SessionKey::from_bytes([2; 32]))
            .previous_keys(vec![SessionKey::from_bytes([1; 32])])
            .clock(clock.clone())
            .scope("demo"),
    );
    assert_eq!(owner(&rotated, &sid, None).await.0, 200);
    let new_sid = init(&rotated, None).await;
    assert_eq!(owner(&rotated, &new_sid, None).await.0, 200);
    assert_eq!(owner(&old, &new_sid, None).await.0, 404);
}

#[tokio::test]
async fn modern_requests_are_balanced_one_by_one_and_carry_no_session() {
    use mcp_gateway_layers::ParseMcpLayer;
    use tower::Layer;
    let clock = ManualClock::new(1_000_000);
    let f = fixture(layer(1, &clock));
    let svc = ParseMcpLayer::new().layer(f.svc.clone());
    let mut served = std::collections::HashSet::new();
    for i in 0..30 {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/list","params":{{"_meta":{{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{{}}}}}}}}"#
        );
        let req = Request::post("/mcp")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/list")
            // A stray id: the 2026-07-28 server must not see it, and no 404 for it.
            .header("mcp-session-id", "stray")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        served.insert(resp.headers()["x-served-by"].to_str().unwrap().to_owned());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"{}", "the instance saw a session id");
    }
    assert_eq!(served.len(), 3, "{served:?}");
}

#[tokio::test]
async fn ejection_backs_off_doubling_while_failures_continue() {
    let clock = ManualClock::new(1_000_000);
    let f = fixture(layer(1, &clock).ejection(Duration::from_secs(1), Duration::from_secs(4)));
    f.down[2].store(true, Ordering::Relaxed);
    // New work until c is tried (and fails with the inner 502): 1 s of ejection.
    let probe = |n: usize| {
        let svc = f.svc.clone();
        async move {
            let mut failures = 0;
            for _ in 0..n {
                if send(&svc, Method::POST, None, None).await.0 == StatusCode::BAD_GATEWAY {
                    failures += 1;
                }
            }
            failures
        }
    };
    assert!(probe(60).await >= 1, "c was never tried");
    assert_eq!(probe(30).await, 0, "an ejected instance got new work");
    // After 1 s it is tried again, fails again: now 2 s.
    clock.advance(Duration::from_millis(1_100));
    assert!(probe(60).await >= 1);
    clock.advance(Duration::from_millis(1_500));
    assert_eq!(probe(30).await, 0, "the back-off did not double");
    clock.advance(Duration::from_millis(600));
    assert!(probe(60).await >= 1);
    // Then 4 s (the maximum), and 4 s again.
    for _ in 0..2 {
        clock.advance(Duration::from_millis(3_900));
        assert_eq!(probe(30).await, 0);
        clock.advance(Duration::from_millis(200));
        assert!(probe(60).await >= 1);
    }
}

#[tokio::test]
async fn a_streaming_answer_counts_until_it_is_over() {
    use http_body_util::combinators::BoxBody;
    use http_body_util::StreamBody;
    type B = BoxBody<Bytes, Infallible>;
    // Each instance answers a request carrying `x-hold` with a body that never ends (an SSE
    // answer still streaming), anything else at once; it names itself in `x-served-by`.
    let instance = |name: &'static str| {
        service_fn(move |req: Request<Full<Bytes>>| async move {
            let body: B = if req.headers().contains_key("x-hold") {
                BoxBody::new(StreamBody::new(futures_util::stream::pending::<
                    Result<http_body::Frame<Bytes>, Infallible>,
                >()))
            } else {
                BoxBody::new(Full::new(Bytes::from_static(b"{}")))
            };
            let mut r = Response::new(body);
            r.headers_mut().insert("x-served-by", name.parse().unwrap());
            Ok::<_, Infallible>(r)
        })
    };
    let svc = SessionAffinityLayer::new(SessionKey::from_bytes([1; 32])).service([
        ("a", instance("a")),
        ("b", instance("b")),
        ("c", instance("c")),
    ]);
    let held_req = Request::post("/mcp")
        .header("x-hold", "1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let held = svc.clone().oneshot(held_req).await.unwrap();
    let busy = held.headers()["x-served-by"].to_str().unwrap().to_owned();
    // While its answer streams, the busy instance loses every choice it takes part in.
    for _ in 0..40 {
        let resp = svc
            .clone()
            .oneshot(Request::post("/mcp").body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        assert_ne!(resp.headers()["x-served-by"], busy.as_str());
        resp.into_body().collect().await.unwrap();
    }
    // Once the stream is over (here: dropped), it takes work again.
    drop(held);
    let mut seen = false;
    for _ in 0..40 {
        let resp = svc
            .clone()
            .oneshot(Request::post("/mcp").body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        seen |= resp.headers()["x-served-by"] == busy.as_str();
        resp.into_body().collect().await.unwrap();
    }
    assert!(seen);
}
