//! [`RedisStore`]: budgets shared by every gateway replica, in Redis.
//!
//! One decision is **one round trip**: a Lua script (sent by hash, `EVALSHA`) tests every
//! bucket of the call and, only when all admit, charges them all — atomically, on Redis's own
//! clock (`TIME`), so replicas with skewed clocks still agree. Output tokens are charged after
//! the response by a second script, sent in the background. Keys are
//! `PREFIX{KEY}:r` (requests) and `PREFIX{KEY}:tN` (token bucket N), one number each (the
//! bucket's theoretical arrival time), expiring when the bucket is full again — Redis memory
//! is bounded like the in-memory store's. The braces keep one key's buckets in one Redis
//! Cluster slot.
//!
//! When Redis cannot answer within the timeout, the decision fails ([`StoreError`]) and the
//! layer falls back as configured ([`OnStoreError`](super::OnStoreError)). After a failure
//! Redis is left alone for a second (calls go straight to the fallback, without waiting), then
//! tried again: recovery needs no restart.
//!
//! ```no_run
//! use mcp_gateway_layers::limits::redis::RedisStore;
//! use mcp_gateway_layers::limits::{Limits, TokenBucket2DLayer};
//!
//! let store = RedisStore::open("redis://127.0.0.1:6379/0").unwrap();
//! let layer = TokenBucket2DLayer::new(Limits::new().requests_per_minute(600)).store(store);
//! # let _ = layer;
//! ```

use super::store::{
    Demand, Dimension, LimitStore, Remaining, StoreError, StoreFuture, TokenCheck, Verdict,
};
use crate::redis_link::RedisShell;
use futures_util::future::Either;
use futures_util::FutureExt;
use std::sync::Arc;
use std::time::Duration;

/// The default time a decision may take before the fallback decides: 100 ms.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(100);

const DECIDE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local W = 60000000
local function tat_of(key)
  local v = redis.call('GET', key)
  if v then return tonumber(v) end
  return 0
end
local function left(per, tat)
  local used = math.max(tat - now, 0)
  return math.floor((W - used) * per / W)
end
local wait, denied = 0, -1
local news = {}
local req_rem, req_reset, tok_rem, tok_reset = -1, 0, -1, 0
local nreq, rpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local checks = {}
if rpm > 0 and nreq > 0 then
  checks[#checks + 1] = {KEYS[1], rpm, nreq, 0, 0}
end
for i = 2, #KEYS do
  local a = 3 + (i - 2) * 3
  checks[#checks + 1] = {KEYS[i], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), 1, tonumber(ARGV[a])}
end
for i, c in ipairs(checks) do
  local key, per, n = c[1], c[2], c[3]
  local tat = tat_of(key)
  local start = math.max(tat, now)
  local unit = W / per
  local check = start + math.min(n, per) * unit
  if check > now + W then
    local w = check - now - W
    if w >= wait then
      wait = w
      denied = c[4] * 1000 + c[5]
    end
    news[i] = tat
  else
    news[i] = start + n * unit
  end
end
if denied < 0 then
  for i, c in ipairs(checks) do
    local new = news[i]
    redis.call('SET', c[1], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000) + 1000)
  end
end
for i, c in ipairs(checks) do
  local new = news[i]
  if c[4] == 0 then
    req_rem, req_reset = left(c[2], new), math.max(new - now, 0)
  elseif c[5] == 0 then
    tok_rem, tok_reset = left(c[2], new), math.max(new - now, 0)
  end
end
return {denied, math.ceil(wait), req_rem, math.ceil(req_reset), tok_rem, math.ceil(tok_reset)}
";

const CHARGE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local W = 60000000
for i, key in ipairs(KEYS) do
  local per, n = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local v = redis.call('GET', key)
  local tat = 0
  if v then tat = tonumber(v) end
  local new = math.max(tat, now) + n * W / per
  if new > now then
    redis.call('SET', key, string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000) + 1000)
  else
    redis.call('DEL', key)
  end
end
return 1
";

/// Budgets in Redis, shared by every replica. See the [module docs](self). Cheap to clone:
/// clones share the connection; each keeps its own settings.
#[derive(Clone)]
pub struct RedisStore {
    shell: RedisShell,
    decide: Arc<redis::Script>,
    charge: Arc<redis::Script>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.shell.prefix())
            .field("timeout", &self.shell.timeout())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store at `url` (`redis://host:port/db`, `rediss://…`). Nothing is connected until the
    /// first decision, so a gateway starts while Redis is down (and falls back meanwhile).
    pub fn open(url: &str) -> Result<Self, StoreError> {
        Ok(Self {
            shell: RedisShell::open(url, DEFAULT_TIMEOUT, "mcpgw:").map_err(StoreError)?,
            decide: Arc::new(redis::Script::new(DECIDE)),
            charge: Arc::new(redis::Script::new(CHARGE)),
        })
    }

    /// How long a decision may take before it fails over. Default [`DEFAULT_TIMEOUT`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.shell.set_timeout(timeout);
        self
    }

    /// The prefix of every key (default `mcpgw:`): separate gateways sharing one Redis.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.shell.set_prefix(&prefix.into());
        self
    }

    fn key(&self, key: &str, suffix: &str) -> String {
        format!("{}{{{key}}}:{suffix}", self.shell.prefix())
    }

    async fn decide_remote(
        self,
        keys: Vec<String>,
        args: Vec<u64>,
        limited_requests: bool,
        limited_tokens: bool,
    ) -> Result<Verdict, StoreError> {
        let mut conn = self.shell.conn().map_err(StoreError)?;
        let mut inv = self.decide.prepare_invoke();
        for k in keys {
            inv.key(k);
        }
        for a in args {
            inv.arg(a);
        }
        let v: Vec<i64> = self
            .shell
            .run(inv.invoke_async(&mut conn))
            .await
            .map_err(StoreError)?;
        let [denied, wait, req_rem, req_reset, tok_rem, tok_reset] = v[..] else {
            return Err(StoreError(format!("unexpected script reply {v:?}")));
        };
        let us = |n: i64| Duration::from_micros(u64::try_from(n).unwrap_or(0));
        Ok(Verdict {
            denied_by: match denied {
                d if d < 0 => None,
                0 => Some(Dimension::Requests),
                d => Some(Dimension::Tokens(u8::try_from(d - 1000).unwrap_or(u8::MAX))),
            },
            retry_after: us(wait),
            requests: (req_rem >= 0 || limited_requests).then(|| Remaining {
                remaining: req_rem.max(0),
                reset: us(req_reset),
            }),
            tokens: limited_tokens.then_some(Remaining {
                remaining: tok_rem,
                reset: us(tok_reset),
            }),
        })
    }
}

impl LimitStore for RedisStore {
    fn decide(&self, demand: &Demand) -> StoreFuture {
        // Keys and arguments are laid out now, so the future owns what it sends.
        let mut keys = Vec::with_capacity(1 + demand.tokens.len());
        let mut args = Vec::with_capacity(2 + 3 * demand.tokens.len());
        keys.push(self.key(&demand.key, "r"));
        args.push(u64::from(demand.requests));
        args.push(u64::from(
            demand
                .requests_per_minute
                .map_or(0, std::num::NonZeroU32::get),
        ));
        for t in &demand.tokens {
            keys.push(self.key(&demand.key, &format!("t{}", t.bucket)));
            args.extend([u64::from(t.bucket), t.per_minute, t.cost]);
        }
        let limited_requests = demand.requests_per_minute.is_some() && demand.requests > 0;
        let limited_tokens = demand.tokens.iter().any(|t| t.bucket == 0);
        Either::Right(
            self.clone()
                .decide_remote(keys, args, limited_requests, limited_tokens)
                .boxed(),
        )
    }

    fn charge(&self, key: Arc<str>, charges: Vec<(TokenCheck, i64)>) {
        if charges.is_empty() {
            return;
        }
        let Ok(mut conn) = self.shell.conn() else {
            return;
        };
        let store = self.clone();
        let (keys, args) = (inv_keys(&charges, &key, &store), inv_args(&charges));
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let mut inv = store.charge.prepare_invoke();
            for k in keys {
                inv.key(k);
            }
            for a in args {
                inv.arg(a);
            }
            let r = store.shell.run(inv.invoke_async::<i64>(&mut conn)).await;
            if r.is_err() {
                tracing::warn!(target: "mcp_gateway::limits", "output tokens not charged to Redis: store unavailable");
            }
        });
    }
}

fn inv_keys(charges: &[(TokenCheck, i64)], key: &str, store: &RedisStore) -> Vec<String> {
    charges
        .iter()
        .map(|(t, _)| store.key(key, &format!("t{}", t.bucket)))
        .collect()
}

fn inv_args(charges: &[(TokenCheck, i64)]) -> Vec<i64> {
    charges
        .iter()
        .flat_map(|(t, n)| [i64::try_from(t.per_minute).unwrap_or(i64::MAX), *n])
        .collect()
}
