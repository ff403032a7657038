//! RED metrics per method, tool, agent and outcome, kept in atomics and rendered in the
//! Prometheus text format — no collector pipeline needed to see rate, errors and duration per
//! tool and per agent.
//!
//! | Prometheus name | type | labels |
//! |---|---|---|
//! | `mcp_server_operation_duration_seconds` | histogram (the MCP conventions' buckets) | `mcp_method_name`, `gen_ai_tool_name`, `agent`, `route`, `outcome`, `error_type` |
//! | `mcp_gateway_requests_total` | counter | the same |
//! | `mcp_gateway_tokens_total` | counter | `mcp_method_name`, `gen_ai_tool_name`, `agent`, `route`, `direction` (`input`, `output`) |
//! | `mcp_gateway_metric_series_overflow_total` | counter | — |
//!
//! `mcp_server_operation_duration_seconds` is the OpenTelemetry MCP convention's
//! `mcp.server.operation.duration` under the usual OpenTelemetry → Prometheus name mapping.
//! The number of label sets is bounded ([`MetricsOptions::max_series`]); operations past the
//! bound are counted under `agent="_other"`, `gen_ai_tool_name="_other"` and in the
//! overflow counter, so a client inventing tool names cannot grow the gateway's memory.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Bucket bounds of `mcp.server.operation.duration`, in seconds, as the OpenTelemetry MCP
/// semantic conventions give them.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
const BUCKETS_NS: [u64; 14] = [
    10_000_000,
    20_000_000,
    50_000_000,
    100_000_000,
    200_000_000,
    500_000_000,
    1_000_000_000,
    2_000_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
    60_000_000_000,
    120_000_000_000,
    300_000_000_000,
];
const SHARDS: usize = 16;
const OTHER: &str = "_other";

/// One finished operation, as the metrics see it.
#[derive(Clone, Debug)]
pub struct Operation<'a> {
    /// `mcp.method.name` (`tools/call`, …; `unknown` for a request that could not be read).
    pub method: &'a str,
    /// The tool name, for `tools/call`; empty otherwise.
    pub tool: &'a str,
    /// The agent (the principal's agent key; `anonymous` without authentication).
    pub agent: &'a str,
    /// The route (upstream name); empty when unknown.
    pub route: &'a str,
    /// The exchange's [`Outcome`](mcp_gateway_core::Outcome) (`ok`, `error`, `tool_error`,
    /// `denied_auth`, `rate_limited`, `upstream_error`, …): the audit log's, by the same rules.
    pub outcome: &'a str,
    /// `error.type`: the JSON-RPC error code, `tool_error`, the HTTP status, the outcome —
    /// empty exactly when the outcome is `ok`.
    pub error_type: &'a str,
    /// From arrival to the end of the response.
    pub duration: Duration,
    /// Input tokens, when known.
    pub tokens_in: Option<u64>,
    /// Output tokens, when known.
    pub tokens_out: Option<u64>,
}

/// Bounds of the registry.
#[derive(Clone, Copy, Debug)]
pub struct MetricsOptions {
    /// The most label sets kept (default 10,000).
    pub max_series: usize,
}

impl Default for MetricsOptions {
    fn default() -> Self {
        Self { max_series: 10_000 }
    }
}

#[derive(Debug, Default)]
struct Series {
    buckets: [AtomicU64; 14],
    count: AtomicU64,
    sum_ns: AtomicU64,
    tokens_in: AtomicU64,
    tokens_out: AtomicU64,
    tokens_seen: AtomicU64,
}

type Shard = Mutex<HashMap<Box<str>, Arc<Series>>>;

#[derive(Debug)]
struct Registry {
    shards: [Shard; SHARDS],
    hasher: std::collections::hash_map::RandomState,
    len: AtomicU64,
    overflow: AtomicU64,
    options: MetricsOptions,
}

/// The RED metrics registry. Cheap to clone; clones share the counts. See the [module
/// docs](self).
#[derive(Clone, Debug)]
pub struct Metrics(Arc<Registry>);

impl Default for Metrics {
    fn default() -> Self {
        Self::new(MetricsOptions::default())
    }
}

const SEP: char = '\u{1f}';

fn key(op: &Operation<'_>, tool: &str, agent: &str) -> String {
    let mut k = String::with_capacity(
        op.method.len()
            + tool.len()
            + agent.len()
            + op.route.len()
            + op.outcome.len()
            + op.error_type.len()
            + 5,
    );
    for (i, part) in [op.method, tool, agent, op.route, op.outcome, op.error_type]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            k.push(SEP);
        }
        k.push_str(part);
    }
    k
}

use crate::lock;

impl Metrics {
    /// An empty registry.
    pub fn new(options: MetricsOptions) -> Self {
        Self(Arc::new(Registry {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            hasher: std::collections::hash_map::RandomState::new(),
            len: AtomicU64::new(0),
            overflow: AtomicU64::new(0),
            options,
        }))
    }

    fn series(&self, op: &Operation<'_>) -> Arc<Series> {
        let r = &self.0;
        let k = key(op, op.tool, op.agent);
        let shard = &r.shards[(r.hasher.hash_one(&k) as usize) % SHARDS];
        if let Some(s) = lock(shard).get(k.as_str()) {
            return s.clone();
        }
        let full = r.len.load(Ordering::Relaxed) >= r.options.max_series as u64;
        let k = if full {
            r.overflow.fetch_add(1, Ordering::Relaxed);
            key(op, OTHER, OTHER)
        } else {
            k
        };
        let shard = &r.shards[(r.hasher.hash_one(&k) as usize) % SHARDS];
        let mut map = lock(shard);
        if let Some(s) = map.get(k.as_str()) {
            return s.clone();
        }
        r.len.fetch_add(1, Ordering::Relaxed);
        let s = Arc::new(Series::default());
        map.insert(k.into_boxed_str(), s.clone());
        s
    }

    /// Counts one finished operation.
    pub fn record(&self, op: &Operation<'_>) {
        let s = self.series(op);
        let ns = u64::try_from(op.duration.as_nanos()).unwrap_or(u64::MAX);
        if let Some(i) = BUCKETS_NS.iter().position(|b| ns <= *b) {
            s.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        s.count.fetch_add(1, Ordering::Relaxed);
        s.sum_ns.fetch_add(ns, Ordering::Relaxed);
        if op.tokens_in.is_some() || op.tokens_out.is_some() {
            s.tokens_seen.store(1, Ordering::Relaxed);
            s.tokens_in
                .fetch_add(op.tokens_in.unwrap_or(0), Ordering::Relaxed);
            s.tokens_out
                .fetch_add(op.tokens_out.unwrap_or(0), Ordering::Relaxed);
        }
    }

    /// How many operations were counted under `_other` for want of room.
    pub fn overflowed(&self) -> u64 {
        self.0.overflow.load(Ordering::Relaxed)
    }

    /// The operations counted so far for `method` and `agent` (all tools, outcomes, routes).
    pub fn count(&self, method: &str, agent: &str) -> u64 {
        let mut n = 0;
        for shard in &self.0.shards {
            for (k, s) in lock(shard).iter() {
                let mut parts = k.split(SEP);
                if parts.next() == Some(method) && parts.nth(1) == Some(agent) {
                    n += s.count.load(Ordering::Relaxed);
                }
            }
        }
        n
    }

    /// Appends the Prometheus text exposition (format 0.0.4) of every series to `out`.
    pub fn render_prometheus(&self, out: &mut String) {
        let mut all: Vec<(Box<str>, Arc<Series>)> = Vec::new();
        for shard in &self.0.shards {
            all.extend(lock(shard).iter().map(|(k, s)| (k.clone(), s.clone())));
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let labels: Vec<String> = all.iter().map(|(k, _)| label_set(k, &LABELS)).collect();

        let name = "mcp_server_operation_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Duration of MCP operations through the gateway, from arrival to the end of the response (OpenTelemetry mcp.server.operation.duration)."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        for ((_, s), l) in all.iter().zip(&labels) {
            let mut cumulative = 0;
            for (i, le) in DURATION_BUCKETS.iter().enumerate() {
                cumulative += s.buckets[i].load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}_bucket{{{l},le=\"{le}\"}} {cumulative}");
            }
            let count = s.count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{l},le=\"+Inf\"}} {count}");
            let sum = s.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(out, "{name}_sum{{{l}}} {sum}");
            let _ = writeln!(out, "{name}_count{{{l}}} {count}");
        }

        let name = "mcp_gateway_requests_total";
        let _ = writeln!(
            out,
            "# HELP {name} MCP operations through the gateway, by method, tool, agent, route and outcome."
        );
        let _ = writeln!(out, "# TYPE {name} counter");
        for ((_, s), l) in all.iter().zip(&labels) {
            let _ = writeln!(out, "{name}{{{l}}} {}", s.count.load(Ordering::Relaxed));
        }

        let name = "mcp_gateway_tokens_total";
        let _ = writeln!(
            out,
            "# HELP {name} Tokens of MCP tool calls (counted by the limits layer, or reported by the server), by agent and tool."
        );
        let _ = writeln!(out, "# TYPE {name} counter");
        // Token series drop the outcome labels: sum per method, tool, agent and route.
        let mut tokens: Vec<(String, u64, u64)> = Vec::new();
        for (k, s) in &all {
            if s.tokens_seen.load(Ordering::Relaxed) == 0 {
                continue;
            }
            // Token series drop the outcome labels.
            let l = label_set(k, &LABELS[..4]);
            let (i, o) = (
                s.tokens_in.load(Ordering::Relaxed),
                s.tokens_out.load(Ordering::Relaxed),
            );
            match tokens.last_mut() {
                Some(last) if last.0 == l => {
                    last.1 += i;
                    last.2 += o;
                }
                _ => tokens.push((l, i, o)),
            }
        }
        for (l, i, o) in tokens {
            let _ = writeln!(out, "{name}{{{l},direction=\"input\"}} {i}");
            let _ = writeln!(out, "{name}{{{l},direction=\"output\"}} {o}");
        }

        let name = "mcp_gateway_metric_series_overflow_total";
        let _ = writeln!(
            out,
            "# HELP {name} Operations counted under _other because the series limit was reached."
        );
        let _ = writeln!(out, "# TYPE {name} counter");
        let _ = writeln!(out, "{name} {}", self.overflowed());
    }
}

/// `name="value",…` for the first `names.len()` parts of a series key.
fn label_set(key: &str, names: &[&str]) -> String {
    let mut parts = key.split(SEP);
    let mut l = String::new();
    for name in names {
        if !l.is_empty() {
            l.push(',');
        }
        l.push_str(name);
        l.push_str("=\"");
        escape(&mut l, parts.next().unwrap_or(""));
        l.push('"');
    }
    l
}

const LABELS: [&str; 6] = [
    "mcp_method_name",
    "gen_ai_tool_name",
    "agent",
    "route",
    "outcome",
    "error_type",
];

fn escape(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn op<'a>(tool: &'a str, agent: &'a str, ms: u64) -> Operation<'a> {
        Operation {
            method: "tools/call",
            tool,
            agent,
            route: "r",
            outcome: "ok",
            error_type: "",
            duration: Duration::from_millis(ms),
            tokens_in: Some(3),
            tokens_out: Some(5),
        }
    }

    #[test]
    fn histogram_is_cumulative_and_labelled() {
        let m = Metrics::default();
        m.record(&op("echo", "a\"b", 5));
        m.record(&op("echo", "a\"b", 15));
        m.record(&op("echo", "a\"b", 400_000));
        let mut s = String::new();
        m.render_prometheus(&mut s);
        let l = r#"mcp_method_name="tools/call",gen_ai_tool_name="echo",agent="a\"b",route="r",outcome="ok",error_type="""#;
        assert!(s.contains(&format!(
            "mcp_server_operation_duration_seconds_bucket{{{l},le=\"0.01\"}} 1\n"
        )));
        assert!(s.contains(&format!(
            "mcp_server_operation_duration_seconds_bucket{{{l},le=\"0.02\"}} 2\n"
        )));
        assert!(s.contains(&format!(
            "mcp_server_operation_duration_seconds_bucket{{{l},le=\"300\"}} 2\n"
        )));
        assert!(s.contains(&format!(
            "mcp_server_operation_duration_seconds_bucket{{{l},le=\"+Inf\"}} 3\n"
        )));
        assert!(s.contains(&format!("mcp_gateway_requests_total{{{l}}} 3\n")));
        assert!(s.contains(
            r#"mcp_gateway_tokens_total{mcp_method_name="tools/call",gen_ai_tool_name="echo",agent="a\"b",route="r",direction="output"} 15"#
        ));
        assert_eq!(m.count("tools/call", "a\"b"), 3);
    }

    #[test]
    fn series_are_bounded() {
        let m = Metrics::new(MetricsOptions { max_series: 2 });
        for i in 0..10 {
            m.record(&op(&format!("t{i}"), "a", 1));
        }
        assert_eq!(m.overflowed(), 8);
        let mut s = String::new();
        m.render_prometheus(&mut s);
        assert!(s.contains(r#"gen_ai_tool_name="_other",agent="_other""#));
        assert!(s.contains("mcp_gateway_metric_series_overflow_total 8"));
    }
}
