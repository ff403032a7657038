//! [`SessionAffinity`]: legacy MCP sessions routed to the instance that owns them, across
//! gateway replicas, with session ids that cannot be read, forged or moved.
//!
//! The layer sits over a **set** of inner services, one per instance of an MCP server (like
//! tower's balancers), so it works over any hyper or axum services —
//! [`Upstream::instances`](crate::upstream::Upstream::instances) gives one per configured URL.
//!
//! - **New work** — `initialize`, a sessionless request, every 2026-07-28 request — goes to the
//!   instance with fewer outstanding requests (sent, and their response — a streamed SSE
//!   answer included — not yet over; GET listeners do not count) of two picked at random
//!   (power of two choices),
//!   skipping instances that could not be reached recently (passive ejection: 1 s after a
//!   failure, doubling to 30 s while failures continue). 2026-07-28 requests have no
//!   sessions: they are balanced one by one and any `Mcp-Session-Id` they carry is dropped
//!   (the era is read from the [`McpRequest`](crate::McpRequest) a layer above such as
//!   [`ParseMcp`](crate::ParseMcp) put in the extensions; without one, every request is taken
//!   as legacy).
//! - The request that finds an instance unreachable (the [`InstanceUnreachable`] response
//!   extension, or 502) ejects it: a session request gets 404, new work gets the inner
//!   service's answer (502), and the next requests avoid the instance until its back-off ends.
//!   With [`SessionAffinity::serve_retrying`] (what the binary uses), new work that never
//!   reached its instance ([`InstanceUnreachable`]: not a byte was sent) is sent once more to
//!   another live instance instead of failing.
//!
//! [`InstanceUnreachable`]: mcp_gateway_core::InstanceUnreachable
//! - **Sealed ids.** When an instance issues a session (`Mcp-Session-Id` on its answer), the
//!   client gets instead an id sealed with ChaCha20-Poly1305: the instance (a digest of its
//!   name), the upstream's own id, the issue time and a digest of the caller's
//!   [`Principal`](crate::Principal) when an authentication layer above recorded one. Any
//!   replica holding the same [`SessionKey`] routes it, with no shared store. The upstream's id
//!   never reaches the client and the client's id never reaches the upstream (the header is
//!   rewritten both ways, on POST, GET streams — `Last-Event-ID` resumption included — and
//!   DELETE).
//! - **404, with a JSON-RPC error** (-32001), so that compliant clients re-initialize, when the
//!   id is forged or tampered with, past `max_lifetime` or `idle_timeout`, presented by another
//!   principal, ended (DELETE, or the upstream answered 404), or its instance is gone, ejected,
//!   or cannot be reached. Never a hang, a 5xx, or a silent move to another instance.
//! - **Shared state** is only what a sealed id cannot carry — last use and ends — in a
//!   [`SessionStore`]: [`MemoryStore`] (sharded, no global lock) by default, `RedisStore`
//!   (feature `sessions-redis`) across replicas. When the store cannot answer, routing fails
//!   open: the sealed id still routes; the error is logged and counted.
//! - The instance set can change ([`SessionAffinity::insert`], [`SessionAffinity::remove`])
//!   without disturbing the sessions of the other instances.
//! - **Key rotation**: [`SessionAffinityLayer::previous_keys`] still open ids sealed with
//!   older keys; new ids use the current key.
//! - The layer writes the session's handle (the nonce of its id, in hex — it names the session
//!   in logs without being usable as an id), the chosen instance and its refusals (with
//!   [`DenialKind::UnknownSession`](mcp_gateway_core::DenialKind::UnknownSession)) to the
//!   per-request [`Exchange`](mcp_gateway_core::Exchange) when a layer above created one; it
//!   needs no response observer (the session header is on the response head).
//!
//! Costs per request: one AEAD open (about a microsecond) and one store lookup for a session
//! request; one AEAD seal per `initialize`. Keys are expanded once, when the layer is built.
//!
//! ```
//! use axum::{response::IntoResponse, routing::post, Router};
//! use bytes::Bytes;
//! use http::{HeaderMap, Request};
//! use http_body_util::{BodyExt, Full};
//! use mcp_gateway_layers::sessions::{SessionAffinityLayer, SessionKey};
//! use tower::{Layer, ServiceExt};
//!
//! // A stand-in MCP server: issues a session when asked without one, says who serves it.
//! fn instance(name: &'static str) -> Router {
//!     Router::new().route("/mcp", post(move |headers: HeaderMap| async move {
//!         match headers.get("mcp-session-id") {
//!             None => ([("mcp-session-id", format!("{name}-1"))], "{}").into_response(),
//!             Some(id) => format!("{name} has {}", id.to_str().unwrap()).into_response(),
//!         }
//!     }))
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let layer = SessionAffinityLayer::new(SessionKey::generate().unwrap());
//! let svc = layer.layer([("http://a/mcp", instance("a")), ("http://b/mcp", instance("b"))]);
//! let post = |sid: Option<&str>| {
//!     let mut req = Request::post("/mcp");
//!     if let Some(sid) = sid {
//!         req = req.header("mcp-session-id", sid);
//!     }
//!     req.body(Full::<Bytes>::default()).unwrap()
//! };
//!
//! // initialize: the client gets a sealed id, not the instance's own.
//! let init = svc.clone().oneshot(post(None)).await.unwrap();
//! let sealed = init.headers()["mcp-session-id"].to_str().unwrap().to_owned();
//! assert!(!sealed.ends_with("-1"));
//!
//! // Every call of the session reaches the instance that issued it, with the instance's id.
//! let mut answers = Vec::new();
//! for _ in 0..4 {
//!     let resp = svc.clone().oneshot(post(Some(&sealed))).await.unwrap();
//!     answers.push(resp.into_body().collect().await.unwrap().to_bytes());
//! }
//! assert!(answers[0] == "a has a-1" || answers[0] == "b has b-1");
//! assert!(answers.iter().all(|a| *a == answers[0]));
//!
//! // A forged id: 404, and the client knows to initialize again.
//! let resp = svc.clone().oneshot(post(Some("forged"))).await.unwrap();
//! assert_eq!(resp.status(), 404);
//! # }
//! ```

mod body;
pub mod config;
mod layer;
#[cfg(feature = "sessions-redis")]
pub mod redis;
mod seal;
mod service;
mod store;

pub use body::CountedBody;
pub use layer::{SessionAffinityLayer, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_LIFETIME};
pub use seal::{Claims, KeyError, Keyring, OpenError, SessionKey};
pub use service::{AffinityBody, AffinityFuture, Routed, SessionAffinity};
pub use store::{
    Clock, ManualClock, MemoryStore, SessionHandle, SessionState, SessionStore, StoreError,
    StoreFuture, SystemClock, Use,
};
