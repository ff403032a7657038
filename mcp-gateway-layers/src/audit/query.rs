//! `audit query`: the records matching filters, streamed — each line is searched for the
//! filters' exact JSON text first, and parsed only when it may match.

use super::record::{format_time, parse_time};
use super::verify::{in_chain_order, VerifyError};
use memchr::memmem::Finder;
use serde::Deserialize;
use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// The filters of a query; all given must match.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Query {
    /// The agent (`Principal::agent_key`: the client id, else the subject) — the key limits
    /// and metrics name.
    pub agent: Option<String>,
    /// The principal's subject.
    pub subject: Option<String>,
    /// The tool.
    pub tool: Option<String>,
    /// Records at or after this time.
    pub since: Option<SystemTime>,
    /// The outcome (`ok`, `rate_limited`, …) or a JSON-RPC error code (`-32602`).
    pub outcome: Option<String>,
}

impl Query {
    /// The filters as `audit query` takes them from its command line: `since` is read by
    /// [`parse_since`] against `now`, whose message is the error.
    pub fn from_flags(
        agent: Option<String>,
        tool: Option<String>,
        since: Option<&str>,
        outcome: Option<String>,
        now: SystemTime,
    ) -> Result<Self, String> {
        Ok(Self {
            agent,
            subject: None,
            tool,
            since: since.map(|s| parse_since(s, now)).transpose()?,
            outcome: outcome.as_deref().map(parse_outcome).transpose()?,
        })
    }
}

/// Reads `--outcome`: an outcome's name, with `_` or `-` between words (`rate_limited`,
/// `rate-limited`), in any case; or a JSON-RPC error code (`-32602`). Anything else is an
/// error that lists the valid names.
pub fn parse_outcome(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.parse::<i64>().is_ok() {
        return Ok(s.to_owned());
    }
    let name = s.to_ascii_lowercase().replace('-', "_");
    let all = mcp_gateway_core::outcome::Outcome::ALL;
    if all.iter().any(|o| o.as_str() == name) {
        return Ok(name);
    }
    let names: Vec<&str> = all.iter().map(|o| o.as_str()).collect();
    Err(format!(
        "--outcome {s:?} is not an outcome; give one of {}, or a JSON-RPC error code such as -32602",
        names.join(", ")
    ))
}

/// How matches are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// An aligned table with a header.
    Table,
    /// The records' lines, unchanged.
    Json,
}

/// Parses `--since`: a duration back from `now` (`90s`, `15m`, `1h`, `7d`) or an RFC 3339
/// time.
pub fn parse_since(s: &str, now: SystemTime) -> Result<SystemTime, String> {
    let s = s.trim();
    if let Some(t) = parse_time(s) {
        return Ok(t);
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("--since {s:?}: give a duration (90s, 15m, 1h, 7d) or an RFC 3339 time")
    })?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("--since {s:?}: the unit must be s, m, h or d")),
    };
    Ok(now
        .checked_sub(Duration::from_secs(secs))
        .unwrap_or(SystemTime::UNIX_EPOCH))
}

#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow)]
    time: Cow<'a, str>,
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow, default)]
    agent: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    subject: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    route: Option<Cow<'a, str>>,
    #[serde(borrow)]
    http_method: Cow<'a, str>,
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    resource: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    prompt: Option<Cow<'a, str>>,
    #[serde(borrow)]
    outcome: Cow<'a, str>,
    #[serde(default)]
    error_code: Option<i64>,
    status: u16,
    latency_us: u64,
}

struct Filter {
    agent: Option<(Finder<'static>, String)>,
    subject: Option<(Finder<'static>, String)>,
    tool: Option<(Finder<'static>, String)>,
    outcome: Option<(Finder<'static>, String)>,
    code: Option<i64>,
    since: Option<String>,
}

fn needle(key: &str, value: &str) -> Finder<'static> {
    let v = serde_json::to_string(value).unwrap_or_default();
    Finder::new(format!("\"{key}\":{v}").as_bytes()).into_owned()
}

impl Filter {
    fn new(q: &Query) -> Self {
        let code = q.outcome.as_deref().and_then(|o| o.parse::<i64>().ok());
        Self {
            agent: q.agent.as_ref().map(|a| (needle("agent", a), a.clone())),
            subject: q
                .subject
                .as_ref()
                .map(|s| (needle("subject", s), s.clone())),
            tool: q.tool.as_ref().map(|t| (needle("tool", t), t.clone())),
            outcome: match (&q.outcome, code) {
                (Some(o), None) => Some((needle("outcome", o), o.clone())),
                _ => None,
            },
            code,
            since: q.since.map(format_time),
        }
    }

    /// Quick test on the raw line: false means it cannot match.
    fn may_match(&self, line: &[u8]) -> bool {
        if let Some(since) = &self.since {
            // `"time":"` sits right after the seq, near the start of every line.
            let head = &line[..line.len().min(64)];
            let Some(at) = memchr::memmem::find(head, b"\"time\":\"") else {
                return false;
            };
            let t = line.get(at + 8..at + 8 + since.len());
            if t.is_none_or(|t| t < since.as_bytes()) {
                return false;
            }
        }
        for (f, _) in [&self.agent, &self.subject, &self.tool, &self.outcome]
            .into_iter()
            .flatten()
        {
            if f.find(line).is_none() {
                return false;
            }
        }
        if let Some(c) = self.code {
            if memchr::memmem::find(line, format!("\"error_code\":{c},").as_bytes()).is_none() {
                return false;
            }
        }
        true
    }

    /// Exact test on the parsed record.
    fn matches(&self, r: &Fields<'_>) -> bool {
        self.agent
            .as_ref()
            .is_none_or(|(_, a)| r.agent.as_deref() == Some(a))
            && self
                .subject
                .as_ref()
                .is_none_or(|(_, s)| r.subject.as_deref() == Some(s))
            && self
                .tool
                .as_ref()
                .is_none_or(|(_, t)| r.tool.as_deref() == Some(t))
            && self.outcome.as_ref().is_none_or(|(_, o)| r.outcome == *o)
            && self.code.is_none_or(|c| r.error_code == Some(c))
            && self
                .since
                .as_ref()
                .is_none_or(|s| r.time.as_ref() >= s.as_str())
    }
}

/// Prints the records of `files` (put in chain order) that match `q` to `out`; returns how
/// many matched. Lines that are not records are skipped.
pub fn query(
    files: &[PathBuf],
    q: &Query,
    output: Output,
    out: &mut dyn Write,
) -> Result<u64, VerifyError> {
    let filter = Filter::new(q);
    let files = in_chain_order(files)?;
    let mut matched = 0u64;
    let mut line = Vec::with_capacity(1024);
    let mut out = io::BufWriter::with_capacity(1 << 16, out);
    let werr = |source| VerifyError::Io {
        file: PathBuf::from("<stdout>"),
        source,
    };
    let mut table = Table::default();
    for file in &files {
        let io = |source| VerifyError::Io {
            file: file.clone(),
            source,
        };
        let mut reader = BufReader::with_capacity(1 << 20, File::open(file).map_err(io)?);
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line).map_err(io)? == 0 {
                break;
            }
            if !filter.may_match(&line) {
                continue;
            }
            let Ok(r) = serde_json::from_slice::<Fields<'_>>(&line) else {
                continue;
            };
            if !filter.matches(&r) {
                continue;
            }
            matched += 1;
            match output {
                Output::Json => out.write_all(&line).map_err(werr)?,
                Output::Table => {
                    let outcome = match r.error_code {
                        Some(c) => format!("{}({c})", r.outcome),
                        None => r.outcome.into_owned(),
                    };
                    let method = r.method.as_deref().unwrap_or(&r.http_method);
                    let target = r
                        .tool
                        .as_deref()
                        .or(r.prompt.as_deref())
                        .or(r.resource.as_deref())
                        .unwrap_or("-");
                    table.push([
                        r.time.into_owned(),
                        r.event.into_owned(),
                        r.agent.as_deref().unwrap_or("-").to_owned(),
                        r.subject.as_deref().unwrap_or("-").to_owned(),
                        r.route.as_deref().unwrap_or("-").to_owned(),
                        method.to_owned(),
                        target.to_owned(),
                        outcome,
                        r.status.to_string(),
                        format!("{:.1}", r.latency_us as f64 / 1000.0),
                    ]);
                    if table.rows.len() >= Table::BATCH {
                        table.flush(&mut out).map_err(werr)?;
                    }
                }
            }
        }
    }
    if output == Output::Table {
        table.flush(&mut out).map_err(werr)?;
    }
    out.flush().map_err(werr)?;
    Ok(matched)
}

/// The rows of `audit query`'s table, printed in batches with each column as wide as its
/// widest cell (so far: the widths only grow), the header before the first batch.
#[derive(Default)]
struct Table {
    rows: Vec<[String; 10]>,
    widths: [usize; 10],
    started: bool,
}

impl Table {
    /// Rows held before they are printed: enough to align a screenful and more, little memory.
    const BATCH: usize = 10_000;
    const HEADER: [&'static str; 10] = [
        "TIME",
        "EVENT",
        "AGENT",
        "SUBJECT",
        "ROUTE",
        "METHOD",
        "TARGET",
        "OUTCOME",
        "STATUS",
        "LATENCY_MS",
    ];

    fn push(&mut self, row: [String; 10]) {
        self.rows.push(row);
    }

    fn flush(&mut self, out: &mut dyn Write) -> io::Result<()> {
        for row in &self.rows {
            for (w, cell) in self.widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        if !self.started {
            self.started = true;
            for (w, h) in self.widths.iter_mut().zip(Self::HEADER) {
                *w = (*w).max(h.len());
            }
            let header = Self::HEADER.map(str::to_owned);
            self.line(out, &header)?;
        }
        for row in std::mem::take(&mut self.rows) {
            self.line(out, &row)?;
        }
        Ok(())
    }

    /// One line: text columns left-aligned, the two numbers (status, latency) right-aligned.
    fn line(&self, out: &mut dyn Write, row: &[String; 10]) -> io::Result<()> {
        let mut text = String::with_capacity(160);
        for (i, (cell, &w)) in row.iter().zip(&self.widths).enumerate() {
            if i > 0 {
                text.push(' ');
            }
            let pad = w.saturating_sub(cell.chars().count());
            if i >= 8 {
                text.extend(std::iter::repeat_n(' ', pad));
                text.push_str(cell);
            } else {
                text.push_str(cell);
                text.extend(std::iter::repeat_n(' ', pad));
            }
        }
        writeln!(out, "{text}")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn filters_from_flags() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        let q =
            Query::from_flags(Some("a".into()), None, Some("90s"), Some("ok".into()), now).unwrap();
        assert_eq!(q.agent.as_deref(), Some("a"));
        assert_eq!(q.tool, None);
        assert_eq!(q.since, Some(now - Duration::from_secs(90)));
        assert_eq!(q.outcome.as_deref(), Some("ok"));
        assert!(Query::from_flags(None, None, None, None, now)
            .unwrap()
            .since
            .is_none());
        assert_eq!(
            Query::from_flags(None, None, Some("5y"), None, now).unwrap_err(),
            "--since \"5y\": the unit must be s, m, h or d"
        );
    }

    #[test]
    fn outcomes_take_either_spelling_and_unknown_ones_are_refused() {
        let now = SystemTime::UNIX_EPOCH;
        let outcome = |o: &str| Query::from_flags(None, None, None, Some(o.into()), now);
        for o in ["rate_limited", "rate-limited", "Rate-Limited"] {
            assert_eq!(outcome(o).unwrap().outcome.as_deref(), Some("rate_limited"));
        }
        assert_eq!(
            outcome("-32602").unwrap().outcome.as_deref(),
            Some("-32602")
        );
        let e = outcome("no-such-value").unwrap_err();
        assert!(
            e.starts_with("--outcome \"no-such-value\" is not an outcome; give one of ok, "),
            "{e}"
        );
        assert!(
            e.contains("rate_limited") && e.contains("upstream_error"),
            "{e}"
        );
    }
}
