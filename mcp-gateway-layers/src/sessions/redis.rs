//! [`RedisStore`]: session ends and last use in Redis, shared by every gateway replica
//! (feature `sessions-redis`).
//!
//! One key per session that has been used or ended, `PREFIX` + hex handle, holding the last
//! use (ms) or `e` when ended, and expiring with the session's `max_lifetime`. One round trip
//! (a Lua script) per session request. When Redis does not answer within the timeout the layer
//! routes by the sealed id alone (fail open), logs and counts it; after a failure the store is
//! not asked again for a second, so an outage costs no timeout per request.
//!
//! ```no_run
//! use mcp_gateway_layers::sessions::{redis::RedisStore, SessionAffinityLayer, SessionKey};
//!
//! let store = RedisStore::open("redis://127.0.0.1:6379/0").unwrap();
//! let layer = SessionAffinityLayer::new(SessionKey::generate().unwrap()).store(store);
//! # let _ = layer;
//! ```

use super::store::{SessionHandle, SessionState, SessionStore, StoreError, StoreFuture, Use};
use crate::redis_link::RedisShell;
use futures_util::future::Either;
use futures_util::FutureExt;
use std::sync::Arc;
use std::time::Duration;

/// The default wait for an answer: 100 ms.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(100);

/// KEYS[1] the session; ARGV: now ms, idle ms (0: none), ttl ms.
const TOUCH: &str = r"
local v = redis.call('GET', KEYS[1])
if v == 'e' then return 2 end
local now, idle, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if v and idle > 0 and now - tonumber(v) > idle then return 1 end
if (not v) or tonumber(v) < now then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
end
return 0
";

/// Session state in Redis. See the [module docs](self). Cheap to clone: clones share the
/// connection; each keeps its own settings.
#[derive(Clone)]
pub struct RedisStore {
    shell: RedisShell,
    touch: Arc<redis::Script>,
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
    /// A store at `url` (`redis://host:port/db`). Connects lazily, on first use.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        Ok(Self {
            shell: RedisShell::open(url, DEFAULT_TIMEOUT, "mcpgw:s:").map_err(StoreError)?,
            touch: Arc::new(redis::Script::new(TOUCH)),
        })
    }

    /// The longest wait for an answer. Default 100 ms.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.shell.set_timeout(timeout);
        self
    }

    /// The prefix of every key. Default `mcpgw:s:`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.shell.set_prefix(&prefix.into());
        self
    }

    fn key(&self, h: SessionHandle) -> String {
        format!("{}{}", self.shell.prefix(), h.to_hex())
    }
}

fn ttl(u: &Use) -> u64 {
    u.expires_ms.saturating_sub(u.now_ms).max(1)
}

impl SessionStore for RedisStore {
    fn touch(&self, session: SessionHandle, u: Use) -> StoreFuture<SessionState> {
        let mut conn = match self.shell.conn() {
            Ok(c) => c,
            Err(e) => return Either::Left(futures_util::future::ready(Err(StoreError(e)))),
        };
        let store = self.clone();
        let key = self.key(session);
        Either::Right(
            async move {
                let mut inv = store.touch.prepare_invoke();
                inv.key(key);
                inv.arg(u.now_ms);
                inv.arg(u.idle_timeout.map_or(0, |d| d.as_millis() as u64));
                inv.arg(ttl(&u));
                let code: i64 = store
                    .shell
                    .run(inv.invoke_async(&mut conn))
                    .await
                    .map_err(StoreError)?;
                Ok(match code {
                    0 => SessionState::Alive,
                    1 => SessionState::Idle,
                    _ => SessionState::Ended,
                })
            }
            .boxed(),
        )
    }

    fn end(&self, session: SessionHandle, u: Use) -> StoreFuture<()> {
        match self.mark_ended(session, u, false) {
            Either::Left(r) => Either::Left(futures_util::future::ready(r.into_inner().map(drop))),
            Either::Right(f) => Either::Right(async move { f.await.map(drop) }.boxed()),
        }
    }

    /// One command: `SET key e NX PX ttl` sets only a key that does not exist — the first
    /// replica to present the handle sets it, every later one finds it.
    fn claim(&self, session: SessionHandle, u: Use) -> StoreFuture<bool> {
        self.mark_ended(session, u, true)
    }

    /// One command: `SET key:field value NX GET PX ttl` (Redis 7) sets the field unless it
    /// is set and answers the value it had: nil when this replica's value was bound.
    fn bind(
        &self,
        session: SessionHandle,
        field: &str,
        value: &str,
        u: Use,
    ) -> StoreFuture<String> {
        let mut conn = match self.shell.conn() {
            Ok(c) => c,
            Err(e) => return Either::Left(futures_util::future::ready(Err(StoreError(e)))),
        };
        let store = self.clone();
        let mut cmd = redis::cmd("SET");
        cmd.arg(format!("{}:{field}", self.key(session)))
            .arg(value)
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(ttl(&u));
        let value = value.to_owned();
        Either::Right(
            async move {
                let before: Option<String> = store
                    .shell
                    .run(cmd.query_async(&mut conn))
                    .await
                    .map_err(StoreError)?;
                Ok(before.unwrap_or(value))
            }
            .boxed(),
        )
    }

    fn bound(&self, session: SessionHandle, field: &str) -> StoreFuture<Option<String>> {
        let mut conn = match self.shell.conn() {
            Ok(c) => c,
            Err(e) => return Either::Left(futures_util::future::ready(Err(StoreError(e)))),
        };
        let store = self.clone();
        let mut cmd = redis::cmd("GET");
        cmd.arg(format!("{}:{field}", self.key(session)));
        Either::Right(
            async move {
                store
                    .shell
                    .run(cmd.query_async(&mut conn))
                    .await
                    .map_err(StoreError)
            }
            .boxed(),
        )
    }
}

impl RedisStore {
    /// `SET key e PX ttl` (with `NX`: only when the key does not exist): whether it was set.
    fn mark_ended(&self, session: SessionHandle, u: Use, nx: bool) -> StoreFuture<bool> {
        let mut conn = match self.shell.conn() {
            Ok(c) => c,
            Err(e) => return Either::Left(futures_util::future::ready(Err(StoreError(e)))),
        };
        let store = self.clone();
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(session)).arg("e");
        if nx {
            cmd.arg("NX");
        }
        cmd.arg("PX").arg(ttl(&u));
        Either::Right(
            async move {
                let set: Option<String> = store
                    .shell
                    .run(cmd.query_async(&mut conn))
                    .await
                    .map_err(StoreError)?;
                Ok(set.is_some())
            }
            .boxed(),
        )
    }
}
