//! The shell both Redis-backed stores (limits, sessions) are built on: the connection, opened
//! lazily so a gateway starts while Redis is down; every command bounded by a timeout; after a
//! failure, Redis left alone for a second so a dead Redis costs no wait per request; and the
//! key prefix.
//!
//! The settings (`timeout`, `prefix`) are plain fields of the shell, so a store's builder sets
//! them on its own value: a store that was cloned before keeps what its clone was given, and
//! never silently drops a setting.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How long Redis is left alone after a failure.
const BACKOFF: Duration = Duration::from_secs(1);

/// The connection to one Redis server, shared by every clone of a store.
struct Link {
    client: redis::Client,
    conn: OnceLock<ConnectionManager>,
    born: Instant,
    /// Milliseconds since `born` before which Redis is not tried again.
    down_until: AtomicU64,
}

/// A Redis store's connection and settings. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub(crate) struct RedisShell {
    link: Arc<Link>,
    timeout: Duration,
    prefix: Arc<str>,
}

impl std::fmt::Debug for RedisShell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisShell")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisShell {
    /// A shell for `url` with these defaults; nothing is connected until first use.
    pub(crate) fn open(url: &str, timeout: Duration, prefix: &str) -> Result<Self, String> {
        Ok(Self {
            link: Arc::new(Link {
                client: redis::Client::open(url).map_err(|e| e.to_string())?,
                conn: OnceLock::new(),
                born: Instant::now(),
                down_until: AtomicU64::new(0),
            }),
            timeout,
            prefix: Arc::from(prefix),
        })
    }

    /// The longest wait for one answer.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sets the longest wait for one answer.
    pub(crate) fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The prefix of every key.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Sets the prefix of every key.
    pub(crate) fn set_prefix(&mut self, prefix: &str) {
        self.prefix = Arc::from(prefix);
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.link.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The connection, or why Redis is not tried now.
    pub(crate) fn conn(&self) -> Result<ConnectionManager, String> {
        if self.now_ms() < self.link.down_until.load(Ordering::Relaxed) {
            return Err("unavailable (backing off after a failure)".into());
        }
        if let Some(c) = self.link.conn.get() {
            return Ok(c.clone());
        }
        // Each command is bounded by the shell's own timeout (`run`); the connection's are
        // only a backstop.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout.saturating_mul(2)))
            .set_number_of_retries(1)
            .set_max_delay(BACKOFF);
        let c = self
            .link
            .client
            .get_connection_manager_lazy(config)
            .map_err(|e| e.to_string())?;
        Ok(self.link.conn.get_or_init(|| c).clone())
    }

    /// Records a failure: Redis is not tried again for a second.
    pub(crate) fn failed(&self) {
        let until = self.now_ms().saturating_add(BACKOFF.as_millis() as u64);
        self.link.down_until.store(until, Ordering::Relaxed);
    }

    /// Runs one command within the timeout; a failure or no answer backs off.
    pub(crate) async fn run<T>(
        &self,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.failed();
                Err(e.to_string())
            }
            Err(_) => {
                self.failed();
                Err(format!("no answer within {:?}", self.timeout))
            }
        }
    }
}
