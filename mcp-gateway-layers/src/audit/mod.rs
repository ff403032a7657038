//! AuditLog: a tamper-evident record of every MCP exchange — who called which tool, when, and
//! how it turned out — refusals included.
//!
//! [`AuditLogLayer`] sits outside the layers that refuse (authentication, limits, sessions)
//! and reads their decisions from the per-request [`Exchange`](mcp_gateway_core::Exchange)
//! when the exchange ends, so a 401, 403, 429 or 404 made below it is recorded with the
//! principal when one was established. Each exchange gives one [`AuditRecord`] (and a second
//! one for a session's start or end); the [`AuditWriter`] numbers them, links each to the one
//! before by the SHA-256 of its line, and hands them to an [`AuditSink`] on its own thread:
//!
//! - the request path never waits on the disk, unless the queue is full: then new requests
//!   wait ([`OnFull::Block`], the default) or are refused with 503 ([`OnFull::Refuse`]);
//! - with [`FsyncPolicy::Always`] the end of each answer waits until its record is synced, so
//!   a client never holds an answer whose record a crash could lose;
//! - a failing sink is retried, never skipped; records are dropped only when refused for want
//!   of room (counted in [`AuditStats::dropped`] and logged);
//! - no wait is unbounded: past [`WriterOptions::write_timeout`] a call that has not started
//!   answering is refused with 503 (JSON-RPC -32054), and an answer that has started ends
//!   with a body error; while the sink fails, [`AuditWriter::healthy`] is false (the
//!   gateway's `/readyz` answers 503) and new calls wait for it to recover, then are refused.
//!
//! [`verify()`] walks the chain and names the first altered, missing, reordered or inserted
//! record; [`query()`] streams the records matching filters. The `mcp-gateway audit` commands
//! call them. `docs/audit.md` describes the record format and its guarantees.
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use mcp_gateway_layers::audit::{AuditLogLayer, AuditSink, AuditWriter, Head, WriterOptions};
//! use mcp_gateway_layers::ParseMcpLayer;
//! use std::sync::{Arc, Mutex};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! /// A sink keeping the lines in memory.
//! #[derive(Clone, Default)]
//! struct Memory(Arc<Mutex<Vec<u8>>>);
//! impl AuditSink for Memory {
//!     fn write(&mut self, lines: &[u8]) -> std::io::Result<()> {
//!         self.0.lock().unwrap().extend_from_slice(lines);
//!         Ok(())
//!     }
//!     fn sync(&mut self, _head: &Head) -> std::io::Result<()> {
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let lines = Memory::default();
//! let writer = AuditWriter::spawn(lines.clone(), WriterOptions::default()).unwrap();
//! let svc = ServiceBuilder::new()
//!     .layer(AuditLogLayer::new(writer.clone()))
//!     .layer(ParseMcpLayer::new())
//!     .service(service_fn(|_req: Request<Full<Bytes>>| async {
//!         let body = r#"{"jsonrpc":"2.0","id":7,"result":{"content":[]}}"#;
//!         let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
//!         resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
//!         Ok::<_, std::convert::Infallible>(resp)
//!     }));
//! let call = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}"#;
//! let req = Request::post("/mcp")
//!     .header("content-type", "application/json")
//!     .body(Full::new(Bytes::from_static(call.as_bytes())))
//!     .unwrap();
//! let resp = svc.oneshot(req).await.unwrap();
//! resp.into_body().collect().await.unwrap(); // the record is made when the answer ends
//! writer.flush().await;
//!
//! let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
//! let record: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
//! assert_eq!(record["seq"], 1);
//! assert_eq!(record["method"], "tools/call");
//! assert_eq!(record["tool"], "echo");
//! assert_eq!(record["id"], 7);
//! assert_eq!(record["outcome"], "ok");
//! assert_eq!(record["args_sha256"].as_str().unwrap().len(), 64);
//! # }
//! ```

pub mod config;
mod layer;
pub mod query;
pub mod record;
mod service;
pub mod sink;
pub mod verify;
mod writer;

pub use layer::AuditLogLayer;
pub use query::{query, Output, Query};
pub use record::{ArgumentPolicy, AuditRecord, Event, Outcome};
pub use service::{AuditLog, Governor};
pub use sink::{sink_fn, AuditSink, FileSink, Head, SinkFn, StdoutSink};
pub use verify::{verify, VerifyError, VerifyReport};
pub use writer::{
    AuditStats, AuditWriter, FsyncPolicy, OnFull, Slot, WriterOptions, DEFAULT_WRITE_TIMEOUT,
};
