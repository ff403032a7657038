//! Reload: replace a running stack — its routes, keys, policies — without dropping a call.
//!
//! [`ReloadLayer`] puts a swappable cell in front of any service. Each request takes the
//! service that is current when it arrives and finishes on it, whatever happens to the cell
//! afterwards: requests and streams already running keep the stack they started on, new ones
//! take the new one. [`ReloadHandle::swap`] (from [`Reload::handle`]) installs a new service
//! and returns the old one, for the caller to retire once what runs on it is over. The
//! per-request cost is one atomic load of the cell and one clone of the current service.
//!
//! The gateway binary builds its whole stack from the configuration file in one place and, on
//! a reload (SIGHUP, `POST /reload` on the admin listener, or a change of a watched file with
//! `[server] watch_config = true`), checks the new file completely, builds a new stack, and
//! swaps it in through the same cell. [`FileWatch`] is the watcher it uses: it polls the files'
//! metadata (size, modification time, inode), which sees an editor's atomic rename and a
//! Kubernetes ConfigMap's symlink swap alike, and reports a change once it has settled.
//!
//! ```toml
//! [server]
//! watch_config = true     # reload when the file, or a file it names, changes
//! drain_timeout = "30s"   # how long a removed route's open streams may go on
//! ```
//!
//! # Example: an axum service replaced while it serves
//!
//! ```
//! use axum::{routing::get, Router};
//! use mcp_gateway_layers::reload::ReloadLayer;
//! use tower::{Layer, ServiceExt};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let svc = ReloadLayer::new().layer(Router::new().route("/", get(|| async { "v1" })));
//! let handle = svc.handle().clone();
//!
//! let get_root = || http::Request::get("/").body(axum::body::Body::empty()).unwrap();
//! let resp = svc.clone().oneshot(get_root()).await.unwrap();
//! let body = axum::body::to_bytes(resp.into_body(), 64).await.unwrap();
//! assert_eq!(&body[..], b"v1");
//!
//! // A new stack: requests from now on are served by it.
//! let _old = handle.swap(Router::new().route("/", get(|| async { "v2" })));
//! let resp = svc.oneshot(get_root()).await.unwrap();
//! let body = axum::body::to_bytes(resp.into_body(), 64).await.unwrap();
//! assert_eq!(&body[..], b"v2");
//! # }
//! ```

pub mod config;
mod layer;
mod service;
mod watch;

pub use layer::ReloadLayer;
pub use service::{Reload, ReloadHandle};
pub use watch::FileWatch;
