//! The reference MCP gateway: configuration, routing to upstream servers, TLS, health
//! endpoints, logging and graceful shutdown, around the layers of `mcp-gateway-layers`.
//!
//! The binary is `mcp-gateway`; this library is what it runs, so tests and embedders can start
//! a gateway in-process:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use mcp_gateway::config::{parse_upstream_flag, Settings};
//!
//! let settings = Settings::from_flags(
//!     "127.0.0.1:0".parse()?,
//!     vec![parse_upstream_flag("demo=http://127.0.0.1:3001/mcp")?],
//! );
//! let gateway = mcp_gateway::Gateway::bind(settings).await?;
//! println!("serving on {}", gateway.local_addr());
//! gateway.shutdown().await;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod error;
pub mod integrity;
pub mod logging;
pub mod reload;
pub mod router;
pub mod server;
pub mod tls;

pub use error::StartError;
pub use server::Gateway;
