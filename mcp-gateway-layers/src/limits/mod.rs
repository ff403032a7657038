//! [`TokenBucket2D`]: per-key budgets of **requests** and **tokens**, decided before a call
//! reaches the server, with cost attribution.
//!
//! One agent in a retry loop must not starve the others, and one whose tool calls return huge
//! results must not either, so two dimensions are counted per key (the agent, the client IP,
//! or a header — [`KeySource`]):
//!
//! - **requests** per minute: every JSON-RPC request except `initialize` (notifications and
//!   responses are never charged). The bucket is `governor`'s GCRA.
//! - **tokens** per minute, of tool calls: the input tokens of `params.arguments`, charged when
//!   the call is admitted, and the output tokens of the result, counted **as the response
//!   streams** (JSON or SSE, through the shared response observer — nothing is buffered) and
//!   charged when it ends. A big result may put the key in debt: its next calls wait until the
//!   debt is repaid. Usage a server reports in `result._meta` (`usage.input_tokens`,
//!   `usage.output_tokens`) wins over the [`TokenCounter`]'s estimate.
//! - finer token budgets for tools matching a pattern, optionally on some upstreams
//!   ([`Rule`]).
//!
//! A call over any budget is answered at once, never queued: **429** with `Retry-After`
//! (whole seconds until it would be admitted), the IETF `RateLimit-Policy` and `RateLimit`
//! fields (draft-ietf-httpapi-ratelimit-headers), and a JSON-RPC error (-32052) carrying the
//! request's id. Admitted responses carry the same two fields with what is left. The
//! per-request [`Exchange`](mcp_gateway_core::Exchange) gets the refusal and the call's
//! tokens in and out; [`Costs`] adds them up per key and tool.
//!
//! Budgets live in a [`LimitStore`]: [`MemoryStore`] by default (bounded: idle keys are
//! evicted), or, with the `limits-redis` feature, a Redis store shared by every replica, with
//! this replica's memory as the fallback when Redis cannot answer ([`OnStoreError`]).
//!
//! The layer works alone: with no parsed request in the extensions it reads the body itself.
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use mcp_gateway_layers::limits::{KeySource, Limits, TokenBucket2DLayer};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let limits = Limits::new()
//!     .key("header:x-agent-id".parse().unwrap())
//!     .requests_per_minute(2)
//!     .tokens_per_minute(10_000);
//! let svc = ServiceBuilder::new()
//!     .layer(TokenBucket2DLayer::new(limits))
//!     .service(service_fn(|_req: Request<Full<Bytes>>| async {
//!         let mut resp = Response::new(Full::new(Bytes::from_static(
//!             br#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#,
//!         )));
//!         resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
//!         Ok::<_, std::convert::Infallible>(resp)
//!     }));
//! let call = |agent: &str| {
//!     Request::post("/mcp")
//!         .header("content-type", "application/json")
//!         .header("x-agent-id", agent)
//!         .body(Full::new(Bytes::from_static(
//!             br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{}}}"#,
//!         )))
//!         .unwrap()
//! };
//! let statuses = [
//!     svc.clone().oneshot(call("a")).await.unwrap().status(),
//!     svc.clone().oneshot(call("a")).await.unwrap().status(),
//!     svc.clone().oneshot(call("a")).await.unwrap().status(),
//!     svc.clone().oneshot(call("b")).await.unwrap().status(),
//! ];
//! assert_eq!(statuses.map(|s| s.as_u16()), [200, 200, 429, 200]);
//! # }
//! ```

pub mod config;
mod counter;
mod layer;
mod policy;
#[cfg(feature = "limits-redis")]
pub mod redis;
mod service;
mod store;

#[cfg(feature = "limits-tiktoken")]
pub use counter::Tiktoken;
pub use counter::{ByteEstimate, TokenCounter};
pub use layer::TokenBucket2DLayer;
pub use policy::{Cost, Costs, KeySource, Limits, OnStoreError, Rule};
pub use service::{retry_after_secs, Governor, TokenBucket2D, RATELIMIT, RATELIMIT_POLICY};
pub use store::{
    Demand, Dimension, LimitStore, MemoryStore, Remaining, StoreError, StoreFuture, TokenCheck,
    Verdict,
};
