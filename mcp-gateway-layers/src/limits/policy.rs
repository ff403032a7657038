//! What is limited, per what key: [`Limits`], [`KeySource`], [`Rule`], and the cost ledger
//! ([`Costs`]).

use super::store::Remaining;
use crate::ascii::push_u64;
use http::HeaderValue;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};

/// Whom budgets are kept for.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeySource {
    /// The authenticated agent (`Principal::agent_key`) when an authentication layer put one
    /// in the per-request record; the client IP otherwise.
    Agent,
    /// The client IP.
    Ip,
    /// The value of a request header (set by an authenticating proxy in front); the client IP
    /// when the header is absent.
    Header(http::HeaderName),
}

impl std::str::FromStr for KeySource {
    type Err = String;
    /// `agent`, `ip`, or `header:NAME`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "agent" => Ok(Self::Agent),
            "ip" => Ok(Self::Ip),
            _ => match s.strip_prefix("header:") {
                Some(name) => http::HeaderName::from_bytes(name.trim().as_bytes())
                    .map(Self::Header)
                    .map_err(|_| format!("invalid header name {name:?} in key {s:?}")),
                None => Err(format!(
                    "invalid key {s:?}: expected \"agent\", \"ip\" or \"header:NAME\""
                )),
            },
        }
    }
}

/// What to do when a shared store cannot decide (unreachable, too slow).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnStoreError {
    /// Decide with this replica's own in-memory budgets meanwhile (the default).
    #[default]
    Local,
    /// Refuse the call (503, `Retry-After: 1`).
    Deny,
}

/// A finer token budget for some tools (and optionally some upstreams), on top of the key's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    tools: Vec<String>,
    upstreams: Vec<String>,
    tokens_per_minute: u64,
}

impl Rule {
    /// A rule for tools whose name matches one of `tools` (`*` matches any run of characters).
    pub fn new<I, S>(tools: I, tokens_per_minute: u64) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            tools: tools.into_iter().map(Into::into).collect(),
            upstreams: Vec::new(),
            tokens_per_minute,
        }
    }

    /// Applies the rule only on these upstreams (routes); all of them when empty.
    pub fn upstreams<I, S>(mut self, upstreams: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.upstreams = upstreams.into_iter().map(Into::into).collect();
        self
    }

    /// Tokens per minute for the matching tools, per key.
    pub fn tokens_per_minute(&self) -> u64 {
        self.tokens_per_minute
    }

    /// True when the rule applies to `tool` on `route`.
    pub fn matches(&self, tool: &str, route: Option<&str>) -> bool {
        let route_ok = self.upstreams.is_empty()
            || route.is_some_and(|r| self.upstreams.iter().any(|u| u == r));
        route_ok && self.tools.iter().any(|p| glob(p, tool))
    }
}

pub(crate) use crate::glob::glob;

/// The budgets: per key, requests and tokens per minute, and finer rules.
#[derive(Clone, Debug)]
pub struct Limits {
    pub(crate) key: KeySource,
    pub(crate) requests_per_minute: Option<NonZeroU32>,
    pub(crate) tokens_per_minute: Option<u64>,
    pub(crate) notifications_per_minute: Option<u64>,
    pub(crate) rules: Vec<Rule>,
    pub(crate) on_store_error: OnStoreError,
    pub(crate) policy_header: Option<HeaderValue>,
}

impl Default for Limits {
    fn default() -> Self {
        Self::new()
    }
}

impl Limits {
    /// No budget yet, keyed by agent.
    pub fn new() -> Self {
        Self {
            key: KeySource::Agent,
            requests_per_minute: None,
            tokens_per_minute: None,
            notifications_per_minute: None,
            rules: Vec::new(),
            on_store_error: OnStoreError::Local,
            policy_header: None,
        }
        .with_policy_header()
    }

    /// Whom budgets are kept for.
    pub fn key(mut self, key: KeySource) -> Self {
        self.key = key;
        self
    }

    /// Requests per minute per key (a bucket of this size, refilled evenly over the minute).
    pub fn requests_per_minute(mut self, n: u32) -> Self {
        self.requests_per_minute = NonZeroU32::new(n);
        self.with_policy_header()
    }

    /// Tokens (input + output of tool calls) per minute per key.
    pub fn tokens_per_minute(mut self, n: u64) -> Self {
        self.tokens_per_minute = (n > 0).then_some(n);
        self.with_policy_header()
    }

    /// Client notifications (`notifications/initialized`, `…/cancelled`, `…/progress`, …) per
    /// minute per key: their own budget, so that a key over its request budget cannot keep
    /// sending them to the server. Unset, it is ten times `requests_per_minute` (and
    /// unlimited when that is unset too); 0 leaves notifications unlimited.
    pub fn notifications_per_minute(mut self, n: u64) -> Self {
        self.notifications_per_minute = Some(n);
        self
    }

    /// The notification budget in force (see [`Limits::notifications_per_minute`]).
    pub(crate) fn notification_budget(&self) -> Option<u64> {
        match self.notifications_per_minute {
            Some(0) => None,
            Some(n) => Some(n),
            None => self
                .requests_per_minute
                .map(|r| u64::from(r.get()).saturating_mul(10)),
        }
    }

    /// Adds a finer rule. At most 254 rules are applied.
    pub fn rule(mut self, rule: Rule) -> Self {
        if self.rules.len() < usize::from(u8::MAX - 1) {
            self.rules.push(rule);
        }
        self
    }

    /// What to do when a shared store cannot decide.
    pub fn on_store_error(mut self, on: OnStoreError) -> Self {
        self.on_store_error = on;
        self
    }

    /// Requests per minute, when limited.
    pub fn requests_limit(&self) -> Option<NonZeroU32> {
        self.requests_per_minute
    }

    fn with_policy_header(mut self) -> Self {
        let mut s = String::new();
        if let Some(n) = self.requests_per_minute {
            let _ = write!(s, "\"requests\";q={n};w=60");
        }
        if let Some(n) = self.tokens_per_minute {
            if !s.is_empty() {
                s.push_str(", ");
            }
            let _ = write!(s, "\"tokens\";q={n};w=60");
        }
        self.policy_header = HeaderValue::from_str(&s).ok().filter(|_| !s.is_empty());
        self
    }
}

/// Whole seconds, rounded up (what `Retry-After` and `t=` carry).
pub(crate) fn ceil_secs(d: std::time::Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The `RateLimit` field: what is left of each budget and when it is full again.
pub(crate) fn ratelimit_header(
    requests: Option<Remaining>,
    tokens: Option<Remaining>,
) -> Option<HeaderValue> {
    // Written by hand: `format!` was a tenth of the layer's cost per call.
    let mut s = Vec::with_capacity(64);
    for (name, r) in [
        (&b"\"requests\";r="[..], requests),
        (b"\"tokens\";r=", tokens),
    ] {
        let Some(r) = r else { continue };
        if !s.is_empty() {
            s.extend_from_slice(b", ");
        }
        s.extend_from_slice(name);
        push_u64(&mut s, r.remaining.max(0).unsigned_abs());
        s.extend_from_slice(b";t=");
        push_u64(&mut s, ceil_secs(r.reset));
    }
    if s.is_empty() {
        return None;
    }
    HeaderValue::from_maybe_shared(bytes::Bytes::from(s)).ok()
}

/// Requests and tokens of one agent on one tool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Cost {
    /// Calls admitted.
    pub admitted: u64,
    /// Calls refused for being over budget.
    pub refused: u64,
    /// Input tokens counted.
    pub tokens_in: u64,
    /// Output tokens counted.
    pub tokens_out: u64,
}

/// (key, tool).
type CostKey = (Arc<str>, Arc<str>);

/// Cost attribution: requests and tokens per key and tool, for metrics and audit.
///
/// Bounded: past `max_entries` pairs, new pairs are added up under the key `(other)`.
#[derive(Debug)]
pub struct Costs {
    max_entries: usize,
    map: Mutex<HashMap<CostKey, Cost>>,
}

impl Default for Costs {
    fn default() -> Self {
        Self::new(10_000)
    }
}

impl Costs {
    /// A ledger of at most `max_entries` (key, tool) pairs.
    pub fn new(max_entries: usize) -> Self {
        Self {
            max_entries,
            map: Mutex::default(),
        }
    }

    pub(crate) fn add(&self, key: &Arc<str>, tool: &Arc<str>, f: impl FnOnce(&mut Cost)) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let id = (key.clone(), tool.clone());
        if let Some(c) = map.get_mut(&id) {
            return f(c);
        }
        let id = if map.len() < self.max_entries {
            id
        } else {
            (Arc::from("(other)"), Arc::from("(other)"))
        };
        f(map.entry(id).or_default());
    }

    /// The ledger now: `(key, tool, cost)`, sorted by key then tool. The tool is `-` for
    /// calls other than `tools/call`.
    pub fn snapshot(&self) -> Vec<(Arc<str>, Arc<str>, Cost)> {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let mut v: Vec<_> = map
            .iter()
            .map(|((k, t), c)| (k.clone(), t.clone(), *c))
            .collect();
        v.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        v
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!("agent".parse(), Ok(KeySource::Agent));
        assert_eq!("ip".parse(), Ok(KeySource::Ip));
        assert_eq!(
            "header:X-Agent-Id".parse(),
            Ok(KeySource::Header(http::HeaderName::from_static(
                "x-agent-id"
            )))
        );
        assert!("header:bad name".parse::<KeySource>().is_err());
        assert!("user".parse::<KeySource>().is_err());
    }

    #[test]
    fn headers() {
        let l = Limits::new()
            .requests_per_minute(600)
            .tokens_per_minute(200_000);
        assert_eq!(
            l.policy_header.unwrap(),
            "\"requests\";q=600;w=60, \"tokens\";q=200000;w=60"
        );
        let r = Remaining {
            remaining: -5,
            reset: std::time::Duration::from_millis(1500),
        };
        assert_eq!(
            ratelimit_header(Some(r), None).unwrap(),
            "\"requests\";r=0;t=2"
        );
        let t = Remaining {
            remaining: 1234567890,
            reset: std::time::Duration::ZERO,
        };
        assert_eq!(
            ratelimit_header(Some(r), Some(t)).unwrap(),
            "\"requests\";r=0;t=2, \"tokens\";r=1234567890;t=0"
        );
        assert!(ratelimit_header(None, None).is_none());
    }
}
