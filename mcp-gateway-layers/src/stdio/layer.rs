//! [`StdioBuilder`]: a stdio upstream set up in code, key by key, as `[upstreams.NAME]` sets
//! it up from a file.

use super::{config, Mode, StdioSpec, StdioUpstream};
use std::path::PathBuf;
use std::time::Duration;

/// Builds a [`StdioUpstream`]; every setting not given has the configuration file's default.
#[derive(Clone, Debug)]
pub struct StdioBuilder {
    spec: StdioSpec,
}

impl StdioBuilder {
    /// A stdio upstream named `name` running `command` (the program, then its arguments).
    pub fn new<I, S>(name: &str, command: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            spec: config::spec(name, command.into_iter().map(Into::into).collect()),
        }
    }

    /// From a checked spec (`stdio::config::check`).
    pub fn from_spec(spec: StdioSpec) -> Self {
        Self { spec }
    }

    /// Sets variable `name` to `value`.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.spec.env.insert(name.into(), value.into());
        self
    }

    /// Sets variable `name` to the content of `path` (read at each start, trailing newline
    /// removed).
    pub fn env_file(mut self, name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        self.spec.env_files.insert(name.into(), path.into());
        self
    }

    /// Passes these variables on from the gateway's environment.
    pub fn inherit_env<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.spec
            .inherit_env
            .extend(names.into_iter().map(Into::into));
        self
    }

    /// Agent `agent`'s own variable (`per_agent` mode).
    pub fn agent_env(
        mut self,
        agent: impl Into<String>,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        self.spec
            .agent_env
            .entry(agent.into())
            .or_default()
            .insert(name.into(), value.into());
        self
    }

    /// The child's working folder.
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.spec.cwd = Some(dir.into());
        self
    }

    /// Which clients a child serves.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.spec.mode = mode;
        self
    }

    /// The most children at once (at least 1).
    pub fn max_processes(mut self, n: usize) -> Self {
        self.spec.max_processes = n.max(1);
        self
    }

    /// The longest wait for `initialize`'s answer.
    pub fn startup_timeout(mut self, d: Duration) -> Self {
        self.spec.startup_timeout = d;
        self
    }

    /// The longest wait for a call's answer.
    pub fn response_timeout(mut self, d: Duration) -> Self {
        self.spec.response_timeout = d;
        self
    }

    /// How long new work waits for a free child or a restart.
    pub fn queue_timeout(mut self, d: Duration) -> Self {
        self.spec.queue_timeout = d;
        self
    }

    /// How long an unused session or agent child lives.
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.spec.idle_timeout = d;
        self
    }

    /// Each step of the shutdown.
    pub fn stop_timeout(mut self, d: Duration) -> Self {
        self.spec.stop_timeout = d;
        self
    }

    /// The largest message read from a child.
    pub fn max_message_size(mut self, n: usize) -> Self {
        self.spec.max_message_size = n.max(1024);
        self
    }

    /// The spec as built.
    pub fn spec(&self) -> &StdioSpec {
        &self.spec
    }

    /// Starts serving (inside a Tokio runtime).
    pub fn build(self) -> StdioUpstream {
        StdioUpstream::new(self.spec)
    }
}
