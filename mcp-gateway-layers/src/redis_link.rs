//! The Redis connection the Redis-backed stores (limits, sessions) share the handling of:
//! opened lazily, so a gateway starts while Redis is down; every command bounded by a timeout;
//! and, after a failure, left alone for a second so a dead Redis costs no wait per request.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long Redis is left alone after a failure.
const BACKOFF: Duration = Duration::from_secs(1);

pub(crate) struct RedisLink {
    client: redis::Client,
    conn: OnceLock<ConnectionManager>,
    timeout: Duration,
    born: Instant,
    /// Milliseconds since `born` before which Redis is not tried again.
    down_until: AtomicU64,
}

impl RedisLink {
    /// A link to `url`; nothing is connected until first use.
    pub(crate) fn open(url: &str, timeout: Duration) -> Result<Self, String> {
        Ok(Self {
            client: redis::Client::open(url).map_err(|e| e.to_string())?,
            conn: OnceLock::new(),
            timeout,
            born: Instant::now(),
            down_until: AtomicU64::new(0),
        })
    }

    /// The longest wait for one answer.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sets the longest wait for one answer (before the first connection).
    pub(crate) fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The connection, or why Redis is not tried now.
    pub(crate) fn conn(&self) -> Result<ConnectionManager, String> {
        if self.now_ms() < self.down_until.load(Ordering::Relaxed) {
            return Err("unavailable (backing off after a failure)".into());
        }
        if let Some(c) = self.conn.get() {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(BACKOFF);
        let c = self
            .client
            .get_connection_manager_lazy(config)
            .map_err(|e| e.to_string())?;
        Ok(self.conn.get_or_init(|| c).clone())
    }

    /// Records a failure: Redis is not tried again for a second.
    pub(crate) fn failed(&self) {
        let until = self.now_ms().saturating_add(BACKOFF.as_millis() as u64);
        self.down_until.store(until, Ordering::Relaxed);
    }
}
