//! Runtime helpers for serving the layers with hyper: [`CoarseTimer`], a cheap timer for
//! hyper's HTTP/1 header-read timeout, which the `mcp-gateway` binary's listener uses.
//!
//! hyper arms that timeout for every request head it waits for (an idle keep-alive connection
//! included) and drops it once the head has arrived, so with tokio's timer each request pays
//! clock reads and a timer-wheel insert and removal. Here a deadline is a tick count compared
//! with a shared clock that a task of each listener ([`Ticker`]) advances every quarter second,
//! and a waiting timeout is a slot in a per-thread table that the same task scans each tick: a
//! timeout fires up to one tick late, which does not matter for a 30 s limit. (A task rather
//! than a thread: a second thread would make the C library pay for thread cancellation on every
//! system call of a single-threaded server.)
//!
//! ```no_run
//! # async fn demo(io: hyper_util::rt::TokioIo<tokio::net::TcpStream>) {
//! use mcp_gateway_layers::rt::{CoarseTimer, Ticker};
//! let _ticker = Ticker::start(); // on the runtime that serves the connections
//! let mut http1 = hyper::server::conn::http1::Builder::new();
//! http1.timer(CoarseTimer).header_read_timeout(std::time::Duration::from_secs(30));
//! # }
//! ```
use hyper::rt::{Sleep, Timer};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

const TICK: Duration = Duration::from_millis(250);
const TICK_NANOS: u32 = 250_000_000;
const TICKS_PER_SEC: u64 = 4;

struct Clock {
    start: Instant,
    /// Ticks since `start`, as last advanced by the ticker.
    now: AtomicU64,
    shards: Box<[Mutex<Shard>]>,
}

#[derive(Default)]
struct Shard {
    /// Waiting timeouts: deadline tick and the waker to call then (taken when called).
    slots: Vec<Option<(u64, Option<Waker>)>>,
    free: Vec<usize>,
}

fn clock() -> &'static Clock {
    static CLOCK: OnceLock<Clock> = OnceLock::new();
    CLOCK.get_or_init(|| {
        let shards = std::thread::available_parallelism().map_or(1, |n| n.get());
        Clock {
            start: Instant::now(),
            now: AtomicU64::new(0),
            shards: (0..shards).map(|_| Mutex::default()).collect(),
        }
    })
}

/// Advances the clock and fires due timeouts every tick, from a task on the current
/// runtime, until dropped. Several may run (one per listener): each tick is then just
/// taken more often.
pub struct Ticker(tokio::task::JoinHandle<()>);

impl Ticker {
    /// Starts ticking, on the current tokio runtime.
    pub fn start() -> Self {
        let clock = clock();
        Self(tokio::spawn(async move {
            let mut every = tokio::time::interval(TICK);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                clock.advance();
            }
        }))
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Clock {
    fn now_tick(&self) -> u64 {
        self.now.load(Ordering::Acquire)
    }

    /// Ticks from `start` to `at`, rounded up.
    fn tick_of(&self, at: Instant) -> u64 {
        let d = at.saturating_duration_since(self.start);
        d.as_secs() * TICKS_PER_SEC + u64::from(d.subsec_nanos().div_ceil(TICK_NANOS))
    }

    fn advance(&self) {
        let d = self.start.elapsed();
        let now = d.as_secs() * TICKS_PER_SEC + u64::from(d.subsec_nanos() / TICK_NANOS);
        self.now.fetch_max(now, Ordering::AcqRel);
        for shard in self.shards.iter() {
            let mut due = Vec::new();
            {
                let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
                for (deadline, waker) in shard.slots.iter_mut().flatten() {
                    if *deadline <= now {
                        if let Some(w) = waker.take() {
                            due.push(w);
                        }
                    }
                }
            }
            for w in due {
                w.wake();
            }
        }
    }
}

/// This thread's table.
fn shard_index(clock: &Clock) -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    INDEX.with(|i| *i) % clock.shards.len()
}

/// The timer handed to hyper's HTTP/1 server.
#[derive(Clone, Copy, Debug)]
pub struct CoarseTimer;

impl Timer for CoarseTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        let clock = clock();
        Box::pin(CoarseSleep {
            deadline: clock.tick_of(deadline),
            slot: None,
        })
    }

    /// The ticker's time (up to one tick behind): no clock read per request.
    fn now(&self) -> Instant {
        let clock = clock();
        let t = clock.now_tick();
        clock.start + Duration::new(t / TICKS_PER_SEC, (t % TICKS_PER_SEC) as u32 * TICK_NANOS)
    }
}

struct CoarseSleep {
    deadline: u64,
    /// Shard and slot once registered.
    slot: Option<(usize, usize)>,
}

impl Sleep for CoarseSleep {}

impl Future for CoarseSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let clock = clock();
        if clock.now_tick() >= self.deadline {
            return Poll::Ready(());
        }
        let deadline = self.deadline;
        let (shard_i, idx) = match self.slot {
            Some(at) => at,
            None => (shard_index(clock), usize::MAX),
        };
        let mut shard = clock.shards[shard_i]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let idx = if idx != usize::MAX {
            match &mut shard.slots[idx] {
                Some((_, Some(w))) if w.will_wake(cx.waker()) => {}
                slot => *slot = Some((deadline, Some(cx.waker().clone()))),
            }
            idx
        } else if let Some(i) = shard.free.pop() {
            let entry = Some((deadline, Some(cx.waker().clone())));
            shard.slots[i] = entry;
            i
        } else {
            shard.slots.push(Some((deadline, Some(cx.waker().clone()))));
            shard.slots.len() - 1
        };
        drop(shard);
        self.slot = Some((shard_i, idx));
        // The ticker may have passed the deadline while this registered.
        if clock.now_tick() >= self.deadline {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl Drop for CoarseSleep {
    fn drop(&mut self) {
        if let Some((shard_i, idx)) = self.slot.take() {
            let mut shard = clock().shards[shard_i]
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            shard.slots[idx] = None;
            shard.free.push(idx);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_after_its_deadline_and_not_before() {
        let _ticker = Ticker::start();
        let timer = CoarseTimer;
        let started = Instant::now();
        timer.sleep(Duration::from_millis(600)).await;
        let took = started.elapsed();
        // Up to a tick early (the timer's now lags) and a tick or two late.
        assert!(took >= Duration::from_millis(600) - TICK, "{took:?}");
        assert!(took < Duration::from_millis(600) + 3 * TICK, "{took:?}");
        // A dropped timeout frees its slot for the next one.
        let mut s = timer.sleep(Duration::from_secs(30));
        let waker = Waker::noop();
        assert!(s
            .as_mut()
            .poll(&mut Context::from_waker(waker))
            .is_pending());
        drop(s);
        let clock = clock();
        let free: usize = clock
            .shards
            .iter()
            .map(|s| s.lock().unwrap().free.len())
            .sum();
        assert!(free >= 1);
    }
}
