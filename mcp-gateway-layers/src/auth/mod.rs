//! [`OAuthGuard`]: makes any MCP server an OAuth 2.1 protected resource, at the edge.
//!
//! - **No or bad token → 401** with `WWW-Authenticate: Bearer resource_metadata="…",
//!   scope="…"` (and `error="invalid_token"` when a token was sent); **missing permission →
//!   403** `error="insufficient_scope"` naming every scope the call needs (step-up). Both carry a
//!   JSON-RPC error body with the request id (-32055, -32056). A token in the query string is
//!   refused (400 `invalid_request`); only the `Authorization` header is read.
//! - **Verification behind a trait** ([`TokenVerifier`]), implementations chainable
//!   ([`Chain`]): [`JwtVerifier`] (JWKS found by RFC 8414 / OIDC discovery, asymmetric
//!   algorithms only, `iss`/`exp`/`nbf` with leeway, one rate-limited JWKS re-fetch for an
//!   unknown `kid`), [`IntrospectionVerifier`] (RFC 7662, the gateway authenticating as its own
//!   client), [`ApiKeys`] (static keys stored hashed).
//! - **RFC 8707**: the token's audience must contain the route's resource URI, else 401.
//! - The same token twice costs a hash and a cache lookup ([`TokenCache`]): answers are kept
//!   until the token expires, bounded by a maximum lifetime (how long a revoked opaque token
//!   can go unseen); refusals for a few seconds.
//! - A verified token yields a [`Principal`](mcp_gateway_core::Principal) — user-delegated or
//!   service (client credentials), enforced identically — in the per-request record and in the
//!   request extensions.
//! - **Tool-level permissions** ([`Permissions`]): tool (prompt, resource) patterns per
//!   upstream need scopes; a denied `tools/call` gets 403, and `tools/list` (prompts, resources)
//!   results are filtered to what the caller may use, in JSON and SSE responses alike.
//! - **No token passthrough**: the caller's `Authorization` never reaches the upstream; what
//!   does is chosen per upstream ([`UpstreamCredentials`]): nothing, a static secret, a
//!   client-credentials token of the gateway's own, or an RFC 8693 exchanged token.
//! - [`OAuthGuardLayer::protected_resource_metadata`] is the RFC 9728 document to serve at
//!   [`metadata_url`] of the route.
//!
//! Alone, over a plain axum service, with API keys (no authorization server needed):
//!
//! ```
//! use axum::{routing::post, Extension, Router};
//! use bytes::Bytes;
//! use http::Request;
//! use http_body_util::{BodyExt, Full};
//! use mcp_gateway_layers::{Principal, PrincipalKind};
//! use mcp_gateway_layers::auth::{ApiKeys, OAuthGuardLayer};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let keys = ApiKeys::new().with_key(
//!     "s3cret",
//!     Principal::new("ci", PrincipalKind::Service).with_client_id("ci-bot").with_scopes(["mcp:tools"]),
//! );
//! let guard = OAuthGuardLayer::new(keys, "https://gw.example.com/mcp")
//!     .authorization_servers(["https://as.example.com"])
//!     .scopes(["mcp:tools"]);
//! let app = Router::new()
//!     .route("/mcp", post(|Extension(who): Extension<Principal>| async move {
//!         format!(r#"{{"jsonrpc":"2.0","id":1,"result":{{"agent":"{}"}}}}"#, who.agent_key())
//!     }))
//!     .layer(guard.clone())
//!     // The RFC 9728 document the 401 points at, served (unguarded) in one line.
//!     .route_service(&guard.metadata_path(), guard.metadata_service());
//! let call = |auth: Option<&str>| {
//!     let mut req = Request::post("/mcp").header("content-type", "application/json");
//!     if let Some(a) = auth {
//!         req = req.header("authorization", a);
//!     }
//!     req.body(Full::new(Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)))
//!         .unwrap()
//! };
//! let denied = app.clone().oneshot(call(None)).await.unwrap();
//! assert_eq!(denied.status(), 401);
//! let challenge = denied.headers()["www-authenticate"].to_str().unwrap();
//! assert!(challenge.contains(r#"resource_metadata="https://gw.example.com/.well-known/oauth-protected-resource/mcp""#));
//! let wrong = app.clone().oneshot(call(Some("Bearer not-a-key"))).await.unwrap();
//! assert_eq!(wrong.status(), 401);
//! let body = wrong.into_body().collect().await.unwrap().to_bytes();
//! assert!(String::from_utf8_lossy(&body).contains("unknown API key"));
//! let doc = app.clone().oneshot(
//!     Request::get("/.well-known/oauth-protected-resource/mcp").body(Full::new(Bytes::new())).unwrap(),
//! ).await.unwrap();
//! assert_eq!(doc.status(), 200);
//! let doc: serde_json::Value =
//!     serde_json::from_slice(&doc.into_body().collect().await.unwrap().to_bytes()).unwrap();
//! assert_eq!(doc["resource"], "https://gw.example.com/mcp");
//! assert_eq!(doc["authorization_servers"][0], "https://as.example.com");
//! let ok = app.oneshot(call(Some("Bearer s3cret"))).await.unwrap();
//! assert_eq!(ok.status(), 200);
//! let body = ok.into_body().collect().await.unwrap().to_bytes();
//! assert!(String::from_utf8_lossy(&body).contains("ci-bot"));
//! # }
//! ```

mod apikey;
mod cache;
pub mod config;
mod credentials;
mod discovery;
mod introspect;
mod jwt;
mod layer;
mod permissions;
mod service;
mod verify;

pub use crate::http_client::{AsClient, HttpError};
pub use apikey::{ApiKeys, ApiKeysError};
pub use cache::{CacheKey, CachePolicy, TokenCache};
pub use credentials::{
    ClientCredentialsSource, CredentialError, TokenExchangeSource, TokenSource,
    UpstreamCredentials, ACCESS_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT,
};
pub use discovery::{metadata_urls, AsMetadata, DiscoveryError, Issuer};
pub use introspect::{ClientCredentials, IntrospectionVerifier};
pub use jsonwebtoken::Algorithm;
pub use jwt::{JwtVerifier, DEFAULT_ALGORITHMS};
pub use layer::{metadata_url, MetadataService, OAuthGuardLayer};
pub use permissions::{glob, Permissions, Rule, Target};
pub use service::{principal, Governor, OAuthGuard, MAX_TOKEN_BYTES};
pub use verify::{Chain, TokenVerifier, Verified, VerifyError};
