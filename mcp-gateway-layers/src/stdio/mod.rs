//! stdio upstreams: local MCP servers run as supervised child processes and served over
//! Streamable HTTP, to clients of both protocol eras (feature `stdio`, the `command` keys of
//! `[upstreams.NAME]`).
//!
//! [`StdioUpstream`] is a route's innermost service, like [`crate::upstream::Upstream`]: it
//! answers MCP over HTTP by writing newline-delimited JSON-RPC to a child's stdin and reading
//! its stdout. Every governing layer stacks over it as over an HTTP upstream.
//!
//! - **Modes** ([`Mode`]): `shared` — one child for every client (ids and progress tokens
//!   rewritten so clients never collide, one `initialize` by the gateway for legacy clients);
//!   `per_session` — one child per legacy session, forwarded the client's own `initialize`,
//!   stopped when the session ends; `per_agent` — one child per authenticated agent, with
//!   that agent's own environment. Beyond `max_processes`, new work waits `queue_timeout`,
//!   then gets 503.
//! - **Hygiene**: argv without a shell; an environment built from nothing ([`BASE_ENV`],
//!   `env`, `env_files`, `inherit_env`, the agent's own); its own process group; SIGKILL when
//!   the gateway dies (Linux); stopped by the MCP stdio shutdown — stdin closed, SIGTERM to
//!   the group, SIGKILL to the group, `stop_timeout` apart.
//! - **Supervision**: a child that exits fails its calls at once (502, JSON-RPC -32050),
//!   the shared child is started again after a capped, jittered exponential back-off, and
//!   three quick exits in a row are a crash loop ([`StdioUpstream::unready`] names it). stderr
//!   goes to the log (target `mcp_gateway::stdio`), labelled, cut at 2 KiB a line and 50
//!   lines a second. A stdout line that is not JSON-RPC is logged and dropped; an answer over
//!   `max_message_size` fails its call, not the process.
//!
//! The stdio capability forwards rather than decides, so its `layer.rs` holds the builder
//! ([`StdioBuilder`]) rather than a tower `Layer`.
//!
//! Used alone, mounted in an axum app (the example's server is a one-line Python program
//! that answers `initialize`):
//!
//! ```no_run
//! use mcp_gateway_layers::stdio::{Mode, StdioBuilder};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let github = StdioBuilder::new("github", ["npx", "-y", "@modelcontextprotocol/server-github"])
//!     .env_file("GITHUB_PERSONAL_ACCESS_TOKEN", "/run/secrets/github-token")
//!     .inherit_env(["HTTPS_PROXY"])
//!     .mode(Mode::Shared)
//!     .build();
//! let app = axum::Router::new().route_service("/mcp", github.clone());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! github.shutdown();
//! # Ok(())
//! # }
//! ```
//!
//! In front of it, [`crate::ParseMcp`] bounds and classifies the body once (without it,
//! `StdioUpstream` reads the body itself, bounded by `max_message_size`).

mod child;
pub mod config;
mod frame;
mod layer;
mod pool;
mod process;
mod service;

pub use layer::StdioBuilder;
pub use process::BASE_ENV;
pub use service::{StdioBody, StdioMetrics, StdioUpstream};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Which clients a child serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Mode {
    /// One child for every client: for stateless servers (most of them).
    #[default]
    Shared,
    /// One child per legacy session, ended with it: for servers that keep state per
    /// connection. 2026-07-28 requests (sessionless) share one child.
    PerSession,
    /// One child per authenticated agent, with that agent's environment: per-agent
    /// credentials for servers that only know a static key.
    PerAgent,
}

impl Mode {
    /// The mode as the configuration names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Shared => "shared",
            Self::PerSession => "per_session",
            Self::PerAgent => "per_agent",
        }
    }
}

/// A checked stdio upstream. Its `Debug` shows the names of variables, never their values.
/// Two specs are equal when every key is (a reload keeps the children of an unchanged one).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StdioSpec {
    /// Name (route `/mcp/NAME`).
    pub name: String,
    /// The program and its arguments (no shell).
    pub command: Vec<String>,
    /// Variables given as values.
    pub env: BTreeMap<String, String>,
    /// Variables whose values are read from files at each start.
    pub env_files: BTreeMap<String, PathBuf>,
    /// Variables passed on from the gateway's environment.
    pub inherit_env: Vec<String>,
    /// The child's working folder.
    pub cwd: Option<PathBuf>,
    /// Which clients a child serves.
    pub mode: Mode,
    /// The most children at once.
    pub max_processes: usize,
    /// The longest wait for a child's answer to `initialize`.
    pub startup_timeout: Duration,
    /// The longest wait for a call's answer (JSON), or between two events (SSE).
    pub response_timeout: Duration,
    /// How long new work waits for a free child or a restart before 503.
    pub queue_timeout: Duration,
    /// How long an unused session or agent child lives.
    pub idle_timeout: Duration,
    /// Each step of the shutdown (stdin closed, SIGTERM, SIGKILL).
    pub stop_timeout: Duration,
    /// The largest message read from a child (and request written to it).
    pub max_message_size: usize,
    /// `per_agent`: each agent's own variables.
    pub agent_env: BTreeMap<String, BTreeMap<String, String>>,
    /// `per_agent`: each agent's own variables, read from files.
    pub agent_env_files: BTreeMap<String, BTreeMap<String, PathBuf>>,
}

impl std::fmt::Debug for StdioSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdioSpec")
            .field("name", &self.name)
            .field("command", &self.command)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("env_files", &self.env_files)
            .field("inherit_env", &self.inherit_env)
            .field("cwd", &self.cwd)
            .field("mode", &self.mode)
            .field("max_processes", &self.max_processes)
            .field(
                "agents",
                &self
                    .agent_env
                    .keys()
                    .chain(self.agent_env_files.keys())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}
