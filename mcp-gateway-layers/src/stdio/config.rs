//! The stdio keys of `[upstreams.NAME]`: a local MCP server run as a child process instead of
//! reached at a URL.
//!
//! ```toml
//! [upstreams.github]
//! command = ["npx", "-y", "@modelcontextprotocol/server-github"]   # argv, no shell
//! env = { GITHUB_API_URL = "https://api.github.com" }
//! env_files = { GITHUB_PERSONAL_ACCESS_TOKEN = "/run/secrets/github-token" }
//! inherit_env = ["HTTPS_PROXY", "NO_PROXY", "SSL_CERT_FILE"]
//! cwd = "/srv/mcp"
//! mode = "shared"             # "shared" | "per_session" | "per_agent"
//! max_processes = 16
//! startup_timeout = "10s"
//! # response_timeout = "60s"  # a call's answer; queue_timeout = "5s"; idle_timeout = "15m"
//! # stop_timeout = "2s"       # each step of the shutdown; max_message_size = "16MiB"
//!
//! [upstreams.github.agent_env.alice]        # per_agent: alice's process gets these too
//! GITHUB_PERSONAL_ACCESS_TOKEN = "…"
//! [upstreams.github.agent_env_files.bob]    # or read from files
//! GITHUB_PERSONAL_ACCESS_TOKEN = "/run/secrets/github-token-bob"
//! ```
//!
//! `command` replaces `url`/`urls`; the HTTP-only keys (`connect_timeout`, `read_timeout`,
//! `sse_idle_timeout`, `ca_file`, `credentials`) are refused beside it. Checked here, located:
//! a program that is not found (on `PATH`, or at its path), a missing `cwd`, an unreadable
//! `env_files` entry (the message names the file, never its content), variable names, the
//! mode, and agent tables outside `per_agent` mode.

use super::{Mode, StdioSpec};
use crate::config::{resolve, Diagnostics, Dur, Size, Spanned};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Defaults of the stdio keys.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long new work waits for a free process (`max_processes`) or a restart, by default.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an unused `per_session`/`per_agent` process lives, by default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Each step of the shutdown (stdin closed → SIGTERM → SIGKILL), by default.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest message a child may write, by default.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 << 20;
/// The most processes of one upstream, by default.
pub const DEFAULT_MAX_PROCESSES: usize = 16;

/// The stdio keys of one `[upstreams.NAME]` table as written (each borrowed from the table).
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct StdioKeys<'a> {
    /// `command`: the argv.
    pub command: Option<&'a Spanned<Vec<String>>>,
    /// `env`.
    pub env: Option<&'a Spanned<BTreeMap<String, String>>>,
    /// `env_files`.
    pub env_files: Option<&'a Spanned<BTreeMap<String, PathBuf>>>,
    /// `inherit_env`.
    pub inherit_env: Option<&'a Spanned<Vec<String>>>,
    /// `cwd`.
    pub cwd: Option<&'a Spanned<PathBuf>>,
    /// `mode`.
    pub mode: Option<&'a Spanned<String>>,
    /// `max_processes`.
    pub max_processes: Option<&'a Spanned<i64>>,
    /// `startup_timeout`.
    pub startup_timeout: Option<Dur>,
    /// `response_timeout` (shared with HTTP upstreams).
    pub response_timeout: Option<Dur>,
    /// `queue_timeout`.
    pub queue_timeout: Option<Dur>,
    /// `idle_timeout`.
    pub idle_timeout: Option<Dur>,
    /// `stop_timeout`.
    pub stop_timeout: Option<Dur>,
    /// `max_message_size`.
    pub max_message_size: Option<Size>,
    /// `agent_env`.
    pub agent_env: Option<&'a BTreeMap<Spanned<String>, BTreeMap<String, String>>>,
    /// `agent_env_files`.
    pub agent_env_files: Option<&'a BTreeMap<Spanned<String>, BTreeMap<String, PathBuf>>>,
}

impl StdioKeys<'_> {
    /// Whether any stdio-only key is set (without `command`, they are an error).
    pub fn any_set(&self) -> bool {
        self.env.is_some()
            || self.env_files.is_some()
            || self.inherit_env.is_some()
            || self.cwd.is_some()
            || self.mode.is_some()
            || self.max_processes.is_some()
            || self.startup_timeout.is_some()
            || self.queue_timeout.is_some()
            || self.idle_timeout.is_some()
            || self.stop_timeout.is_some()
            || self.max_message_size.is_some()
            || self.agent_env.is_some()
            || self.agent_env_files.is_some()
    }
}

/// Checks the stdio keys of upstream `name` (relative paths from `base`, the configuration
/// file's folder); `None` when one was wrong (each reported, located).
pub fn check(
    name: &str,
    keys: &StdioKeys<'_>,
    default_response_timeout: Duration,
    base: &Path,
    errors: &mut Diagnostics<'_>,
) -> Option<StdioSpec> {
    let before = errors.count();
    let command = keys.command?;
    let argv = command.get_ref();
    match argv.first() {
        None => errors.error(
            Some(command.span()),
            format!("upstream {name:?}: command needs at least the program"),
        ),
        Some(program) if program.is_empty() => errors.error(
            Some(command.span()),
            format!("upstream {name:?}: command's program is empty"),
        ),
        Some(program) => {
            if find_program(program, keys, base).is_none() {
                errors.error(
                    Some(command.span()),
                    format!(
                        "upstream {name:?}: program {program:?} not found{}",
                        if program.contains('/') {
                            ""
                        } else {
                            " on PATH"
                        }
                    ),
                );
            }
        }
    }
    let mut env = BTreeMap::new();
    if let Some(e) = keys.env {
        for (k, v) in e.get_ref() {
            if !valid_var(k) {
                errors.error(
                    Some(e.span()),
                    format!("upstream {name:?}: env: {k:?} is not a variable name"),
                );
            }
            env.insert(k.clone(), v.clone());
        }
    }
    let mut env_files = BTreeMap::new();
    if let Some(e) = keys.env_files {
        for (k, p) in e.get_ref() {
            check_var_file(name, "env_files", k, p, base, Some(e.span()), errors);
            env_files.insert(k.clone(), resolve(base, p));
        }
    }
    let mut inherit_env = Vec::new();
    if let Some(e) = keys.inherit_env {
        for k in e.get_ref() {
            if !valid_var(k) {
                errors.error(
                    Some(e.span()),
                    format!("upstream {name:?}: inherit_env: {k:?} is not a variable name"),
                );
            }
            inherit_env.push(k.clone());
        }
    }
    let cwd = keys.cwd.map(|c| {
        let full = resolve(base, c.get_ref());
        if !full.is_dir() {
            errors.error(
                Some(c.span()),
                format!("upstream {name:?}: cwd {} is not a folder", full.display()),
            );
        }
        full
    });
    let mode = match keys.mode {
        None => Mode::Shared,
        Some(m) => match m.get_ref().as_str() {
            "shared" => Mode::Shared,
            "per_session" => Mode::PerSession,
            "per_agent" => Mode::PerAgent,
            other => {
                errors.error(
                    Some(m.span()),
                    format!("upstream {name:?}: mode {other:?}: use \"shared\", \"per_session\" or \"per_agent\""),
                );
                Mode::Shared
            }
        },
    };
    let max_processes = match keys.max_processes {
        None => DEFAULT_MAX_PROCESSES,
        Some(n) => match usize::try_from(*n.get_ref()) {
            Ok(v) if (1..=100_000).contains(&v) => v,
            _ => {
                errors.error(
                    Some(n.span()),
                    format!("upstream {name:?}: max_processes must be between 1 and 100000"),
                );
                1
            }
        },
    };
    let mut agent_env = BTreeMap::new();
    let mut agent_env_files = BTreeMap::new();
    for (table, present) in [
        (
            "agent_env",
            keys.agent_env.map(|t| t.keys().collect::<Vec<_>>()),
        ),
        (
            "agent_env_files",
            keys.agent_env_files.map(|t| t.keys().collect::<Vec<_>>()),
        ),
    ] {
        for agent in present.into_iter().flatten() {
            if mode != Mode::PerAgent {
                errors.error(
                    Some(agent.span()),
                    format!("upstream {name:?}: {table} is only used with mode = \"per_agent\""),
                );
            }
        }
    }
    if let Some(t) = keys.agent_env {
        for (agent, vars) in t {
            for k in vars.keys() {
                if !valid_var(k) {
                    errors.error(
                        Some(agent.span()),
                        format!(
                            "upstream {name:?}: agent_env.{}: {k:?} is not a variable name",
                            agent.get_ref()
                        ),
                    );
                }
            }
            agent_env.insert(agent.get_ref().clone(), vars.clone());
        }
    }
    if let Some(t) = keys.agent_env_files {
        for (agent, files) in t {
            let mut resolved = BTreeMap::new();
            for (k, p) in files {
                check_var_file(
                    name,
                    &format!("agent_env_files.{}", agent.get_ref()),
                    k,
                    p,
                    base,
                    Some(agent.span()),
                    errors,
                );
                resolved.insert(k.clone(), resolve(base, p));
            }
            agent_env_files.insert(agent.get_ref().clone(), resolved);
        }
    }
    let positive = |d: Option<Dur>, default: Duration, key: &str, errors: &mut Diagnostics<'_>| {
        let v = d.map_or(default, |d| d.0);
        if v.is_zero() {
            errors.error(
                Some(command.span()),
                format!("upstream {name:?}: {key} must be more than 0"),
            );
        }
        v
    };
    let startup_timeout = positive(
        keys.startup_timeout,
        DEFAULT_STARTUP_TIMEOUT,
        "startup_timeout",
        errors,
    );
    let response_timeout = positive(
        keys.response_timeout,
        default_response_timeout,
        "response_timeout",
        errors,
    );
    let queue_timeout = keys.queue_timeout.map_or(DEFAULT_QUEUE_TIMEOUT, |d| d.0);
    let idle_timeout = positive(
        keys.idle_timeout,
        DEFAULT_IDLE_TIMEOUT,
        "idle_timeout",
        errors,
    );
    let stop_timeout = positive(
        keys.stop_timeout,
        DEFAULT_STOP_TIMEOUT,
        "stop_timeout",
        errors,
    );
    let max_message_size = keys
        .max_message_size
        .map_or(DEFAULT_MAX_MESSAGE_SIZE, |s| s.0);
    if max_message_size < 1024 {
        errors.error(
            Some(command.span()),
            format!("upstream {name:?}: max_message_size must be at least 1KiB"),
        );
    }
    // A program given as a path is resolved now, so `cwd` cannot change which one runs.
    let mut command_line = argv.clone();
    if let Some(first) = command_line.first_mut() {
        if first.contains('/') {
            if let Some(full) = find_program(first, keys, base) {
                *first = full.to_string_lossy().into_owned();
            }
        }
    }
    (errors.count() == before).then(|| StdioSpec {
        name: name.to_owned(),
        command: command_line,
        env,
        env_files,
        inherit_env,
        cwd,
        mode,
        max_processes,
        startup_timeout,
        response_timeout,
        queue_timeout,
        idle_timeout,
        stop_timeout,
        max_message_size,
        agent_env,
        agent_env_files,
    })
}

fn check_var_file(
    name: &str,
    table: &str,
    var: &str,
    path: &Path,
    base: &Path,
    span: Option<std::ops::Range<usize>>,
    errors: &mut Diagnostics<'_>,
) {
    if !valid_var(var) {
        errors.error(
            span.clone(),
            format!("upstream {name:?}: {table}: {var:?} is not a variable name"),
        );
    }
    let full = resolve(base, path);
    if let Err(e) = std::fs::metadata(&full).and_then(|m| {
        if m.is_file() {
            std::fs::File::open(&full).map(drop)
        } else {
            Err(std::io::Error::other("not a file"))
        }
    }) {
        errors.error(
            span,
            format!(
                "upstream {name:?}: {table}.{var}: cannot read {}: {e}",
                full.display()
            ),
        );
    }
}

/// A variable name as POSIX shells accept them: letters, digits and `_`, not starting with a
/// digit.
fn valid_var(k: &str) -> bool {
    !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Where `program` is: a path (relative to `cwd`, else the file's folder) or a name looked up
/// on the `PATH` the child gets (`env`'s, else the gateway's).
fn find_program(program: &str, keys: &StdioKeys<'_>, base: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let dir = keys
            .cwd
            .map_or_else(|| base.to_path_buf(), |c| resolve(base, c.get_ref()));
        let full = resolve(&dir, Path::new(program));
        return runnable(&full).then_some(full);
    }
    let path = keys
        .env
        .and_then(|e| e.get_ref().get("PATH").cloned())
        .or_else(|| std::env::var("PATH").ok())?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| runnable(p))
}

/// The stdio spec of a program given alone, with every default: for embedders and tests.
pub fn spec(name: &str, command: Vec<String>) -> StdioSpec {
    StdioSpec {
        name: name.to_owned(),
        command,
        env: BTreeMap::new(),
        env_files: BTreeMap::new(),
        inherit_env: Vec::new(),
        cwd: None,
        mode: Mode::Shared,
        max_processes: DEFAULT_MAX_PROCESSES,
        startup_timeout: DEFAULT_STARTUP_TIMEOUT,
        response_timeout: Duration::from_secs(60),
        queue_timeout: DEFAULT_QUEUE_TIMEOUT,
        idle_timeout: DEFAULT_IDLE_TIMEOUT,
        stop_timeout: DEFAULT_STOP_TIMEOUT,
        max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        agent_env: BTreeMap::new(),
        agent_env_files: BTreeMap::new(),
    }
}
