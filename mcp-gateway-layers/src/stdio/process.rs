//! Starting and stopping one child process, cleanly: argv without a shell, an environment
//! built from nothing, its own process group, death with the gateway, and the MCP stdio
//! shutdown sequence applied to the whole group.
//!
//! The only `unsafe` code of the crate is here, in two small functions: the `pre_exec` hook
//! that asks the kernel to kill the child when the gateway dies, and the `kill(2)` of a process
//! group. Both call a single async-signal-safe libc function.

use super::StdioSpec;
use std::collections::BTreeMap;
use std::io;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};

/// The variables a child gets from the gateway's own environment without being named: what
/// a program needs to find itself, its home and its locale. Everything else is given by the
/// configuration (`env`, `env_files`, `inherit_env`, the agent's own).
pub const BASE_ENV: [&str; 4] = ["PATH", "HOME", "LANG", "TZ"];

/// The environment of one child: the base variables, then `inherit_env`, `env`, `env_files`
/// and finally the agent's own (`agent`, in `per_agent` mode), later ones winning. A file's
/// value is its content without the trailing newline. Errors name the variable and the file,
/// never a value.
pub(crate) fn environment(
    spec: &StdioSpec,
    agent: Option<&str>,
) -> Result<BTreeMap<String, String>, String> {
    let mut env = BTreeMap::new();
    for name in BASE_ENV
        .iter()
        .copied()
        .chain(spec.inherit_env.iter().map(String::as_str))
    {
        if let Some(v) = std::env::var_os(name) {
            if let Some(v) = v.to_str() {
                env.insert(name.to_owned(), v.to_owned());
            }
        }
    }
    env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let read = |name: &str, path: &std::path::Path| -> Result<String, String> {
        std::fs::read_to_string(path)
            .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
            .map_err(|e| format!("{name}: cannot read {}: {}", path.display(), e.kind()))
    };
    for (k, path) in &spec.env_files {
        env.insert(k.clone(), read(k, path)?);
    }
    if let Some(agent) = agent {
        if let Some(vars) = spec.agent_env.get(agent) {
            env.extend(vars.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        if let Some(files) = spec.agent_env_files.get(agent) {
            for (k, path) in files {
                env.insert(k.clone(), read(k, path)?);
            }
        }
    }
    Ok(env)
}

/// Starts the configured command with `env`, its stdio piped, in a process group of its own.
pub(crate) fn spawn(spec: &StdioSpec, env: &BTreeMap<String, String>) -> io::Result<Child> {
    let (program, args) = spec
        .command
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group: the shutdown signals reach every process it started, and a signal
        // sent to the gateway's group (a terminal's Ctrl-C) does not reach it directly.
        .process_group(0)
        // Reaped by the task that waits for it; never killed behind the supervisor's back.
        .kill_on_drop(false);
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    die_with_parent(&mut cmd);
    cmd.spawn()
}

/// Starts the watchdog of process group `pgid`: a `/bin/sh` in that group, blocked reading a
/// pipe that only the gateway holds open. When the gateway dies — even by SIGKILL, which gives
/// it no chance to stop anything — the pipe closes and the watchdog kills the whole group: what
/// the server started (a launcher's child, a background helper) goes too, not only the process
/// the kernel's parent-death signal reaches. It goes with the group when the gateway stops it.
/// `None` (and the group relies on the death signal and stdin closing) when it cannot start.
pub(crate) fn watchdog(pgid: u32) -> Option<Child> {
    let group = i32::try_from(pgid).ok()?;
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "read -r _; kill -s KILL 0"])
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(group)
        .kill_on_drop(false);
    match cmd.spawn() {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::debug!(target: "mcp_gateway::stdio", pgid, error = %e, "no watchdog for the process group");
            None
        }
    }
}

/// Asks the kernel to SIGKILL the child when the thread that started it — a runtime worker,
/// which lives as long as the gateway — ends, so a gateway killed without a chance to stop its
/// children (SIGKILL, a crash) leaves none behind.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the hook runs in the forked child before exec and calls only prctl(2) and
    // getppid(2), both async-signal-safe; it allocates nothing and touches no lock.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The gateway died between fork and prctl: the signal will never come.
            if libc::getppid() as u32 != parent {
                return Err(io::Error::other(
                    "the gateway exited while starting the server",
                ));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut Command) {}

/// Sends `signal` to the process group `pgid` (the child's pid: it leads its group). A group
/// that no longer exists is not an error.
#[allow(unsafe_code)]
pub(crate) fn signal_group(pgid: u32, signal: i32) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    if pgid <= 1 {
        return;
    }
    // SAFETY: kill(2) with a negative pid signals a process group; it takes plain integers
    // and has no memory effects in this process.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// SIGTERM, as `i32`.
pub(crate) const SIGTERM: i32 = libc::SIGTERM;
/// SIGKILL, as `i32`.
pub(crate) const SIGKILL: i32 = libc::SIGKILL;

/// Copies the child's stderr to the gateway's log, one event per line, labelled with the
/// upstream and the pid: each line cut at 2 KiB, and at most 50 lines a second (a bucket
/// of 100), the lines over that counted and reported once the flood stops.
pub(crate) async fn pump_stderr(upstream: std::sync::Arc<str>, pid: u32, stderr: ChildStderr) {
    const MAX_LINE: usize = 2048;
    const RATE: f64 = 50.0;
    const BURST: f64 = 100.0;
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::with_capacity(256);
    let mut tokens = BURST;
    let mut last = tokio::time::Instant::now();
    let mut suppressed: u64 = 0;
    loop {
        line.clear();
        match read_bounded_line(&mut reader, &mut line, MAX_LINE).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let now = tokio::time::Instant::now();
        tokens = (tokens + now.duration_since(last).as_secs_f64() * RATE).min(BURST);
        last = now;
        if tokens < 1.0 {
            suppressed += 1;
            continue;
        }
        tokens -= 1.0;
        if suppressed > 0 {
            tracing::warn!(target: "mcp_gateway::stdio", upstream = %upstream, pid, suppressed, "stderr lines dropped: the server writes faster than 50 lines a second");
            suppressed = 0;
        }
        let text = String::from_utf8_lossy(&line);
        tracing::info!(target: "mcp_gateway::stdio", upstream = %upstream, pid, "stderr: {}", text.trim_end());
    }
    if suppressed > 0 {
        tracing::warn!(target: "mcp_gateway::stdio", upstream = %upstream, pid, suppressed, "stderr lines dropped: the server writes faster than 50 lines a second");
    }
}

/// Reads one line into `out`, keeping at most `max` bytes of it (the rest is read and
/// dropped, marked with `…`). Returns the bytes read, 0 at the end.
async fn read_bounded_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    out: &mut Vec<u8>,
    max: usize,
) -> io::Result<usize> {
    let mut total = 0;
    let mut cut = false;
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(total);
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        let room = max.saturating_sub(out.len());
        out.extend_from_slice(&buf[..take.min(room)]);
        if take > room {
            cut = true;
        }
        r.consume(take);
        total += take;
        if done {
            if cut {
                out.extend_from_slice("…".as_bytes());
            }
            return Ok(total);
        }
    }
}

/// A child's exit status as logs and errors name it: `exit code N` or `signal N`.
pub(crate) fn describe(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "unknown status".into(),
    }
}
