//! Runtime helpers for serving the layers with hyper: [`CoarseTimer`], a cheap timer for
//! hyper's HTTP/1 header-read timeout, which the `mcp-gateway` binary's listener uses, and
//! [`ReadTimeout`], a request body that fails with [`BodyReadTimeout`] when the client
//! stops sending it (the read of [`ParseMcp`](crate::ParseMcp) and of the governing chain
//! then answers 408), and [`Activity`], what a connection is doing, for closing it once it
//! has carried no request for a while (HTTP/2 has no header-read timeout of its own).
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
use crate::parse::BodyReadTimeout;
use crate::BoxError;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::rt::{Sleep, Timer};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
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

/// How many [`Ticker`]s are alive: with none, nothing advances the coarse clock, and the
/// body read limits ([`ReadTimeout`], the upstream's) use tokio's timer instead.
static TICKERS: AtomicUsize = AtomicUsize::new(0);

/// Advances the clock and fires due timeouts every tick, from a task on the current
/// runtime, until dropped. Several may run (one per listener): each tick is then just
/// taken more often.
pub struct Ticker(tokio::task::JoinHandle<()>);

impl Ticker {
    /// Starts ticking, on the current tokio runtime.
    pub fn start() -> Self {
        let clock = clock();
        TICKERS.fetch_add(1, Ordering::AcqRel);
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
        TICKERS.fetch_sub(1, Ordering::AcqRel);
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
        Box::pin(CoarseSleep::until(deadline))
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

impl CoarseSleep {
    fn until(deadline: Instant) -> Self {
        Self {
            deadline: clock().tick_of(deadline),
            slot: None,
        }
    }
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

pin_project! {
    /// A request body that fails with [`BodyReadTimeout`] when no frame arrives for `after`
    /// while it is being read: the bound on a client that starts a body and stalls (nginx's
    /// `client_body_timeout`). The time runs only while the body is polled and has nothing,
    /// so a body read at once — the common case, in the same packets as the head — arms no
    /// timer; it fires up to a quarter second late, never early. Uses the coarse timer while
    /// a [`Ticker`] runs (the binary's listener starts one), tokio's timer otherwise.
    ///
    /// ```no_run
    /// # async fn demo(req: http::Request<hyper::body::Incoming>) {
    /// use mcp_gateway_layers::rt::ReadTimeout;
    /// let req = req.map(|b| ReadTimeout::new(b, std::time::Duration::from_secs(60)));
    /// let read = mcp_gateway_layers::parse::read_request(req, 4 << 20).await; // 408 if it stalls
    /// # }
    /// ```
    #[derive(Debug)]
    pub struct ReadTimeout<B> {
        #[pin]
        body: B,
        stall: Stall,
    }
}

/// A limit on the silence between two frames of a body being read: the timer runs only
/// while the body is polled and has nothing, and starts afresh when a frame comes. The coarse
/// timer while a [`Ticker`] runs; tokio's otherwise (an embedder's runtime without one), so
/// the limit holds either way. Fires up to a quarter second late, never early. The timer is
/// chosen when a wait starts: a wait armed on the coarse timer whose last [`Ticker`] is then
/// dropped (its listener stopped) fires only when the body is polled again.
#[derive(Debug)]
pub(crate) struct Stall {
    after: Duration,
    sleep: Option<Wait>,
}

#[derive(Debug)]
enum Wait {
    Coarse(CoarseSleep),
    Tokio(Pin<Box<tokio::time::Sleep>>),
}

impl Stall {
    pub(crate) fn new(after: Duration) -> Self {
        Self { after, sleep: None }
    }

    /// The limit.
    pub(crate) fn after(&self) -> Duration {
        self.after
    }

    /// A frame (or the end) came: the next wait starts afresh.
    pub(crate) fn reset(&mut self) {
        self.sleep = None;
    }

    /// The body has nothing now: ready once it has had nothing for the limit.
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let after = self.after;
        // The real clock, not the ticker's lagging one, so that the limit is never cut short.
        let sleep = self.sleep.get_or_insert_with(|| {
            let deadline = Instant::now() + after;
            if TICKERS.load(Ordering::Acquire) > 0 {
                Wait::Coarse(CoarseSleep::until(deadline))
            } else {
                Wait::Tokio(Box::pin(tokio::time::sleep_until(deadline.into())))
            }
        });
        let expired = match sleep {
            Wait::Coarse(s) => Pin::new(s).poll(cx),
            Wait::Tokio(s) => s.as_mut().poll(cx),
        };
        if expired.is_ready() {
            self.sleep = None;
        }
        expired
    }

    #[cfg(test)]
    fn is_armed(&self) -> bool {
        self.sleep.is_some()
    }

    /// A limit armed now on tokio's timer, whatever tickers run (tests run in parallel).
    #[cfg(test)]
    fn on_tokio(after: Duration) -> Self {
        let deadline = Instant::now() + after;
        Self {
            after,
            sleep: Some(Wait::Tokio(Box::pin(tokio::time::sleep_until(
                deadline.into(),
            )))),
        }
    }
}

impl std::fmt::Debug for CoarseSleep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoarseSleep")
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl<B> ReadTimeout<B> {
    /// `body`, failing when it gives nothing for `after`.
    pub fn new(body: B, after: Duration) -> Self {
        Self {
            body,
            stall: Stall::new(after),
        }
    }
}

impl<B> Body for ReadTimeout<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let this = self.project();
        if let Poll::Ready(frame) = this.body.poll_frame(cx) {
            this.stall.reset();
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.stall.poll_expired(cx).is_ready() {
            let after = this.stall.after();
            return Poll::Ready(Some(Err(Box::new(BodyReadTimeout(after)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// What one connection is doing: the requests in progress on it, and when that last changed.
/// A listener closes a connection that has had none in progress for its idle limit — for
/// HTTP/2, which hyper bounds by no header-read timeout: a client that sent its preface and
/// nothing more, or stopped in the middle of a HEADERS block (no request has started), or
/// keeps an idle connection. Each request holds a [`Busy`] until its response body is done
/// ([`BusyBody`]).
///
/// ```no_run
/// # async fn demo() {
/// use mcp_gateway_layers::rt::Activity;
/// let activity = Activity::new();
/// let busy = activity.begin(); // a request starts; dropped when its answer is sent
/// drop(busy);
/// activity.idle(std::time::Duration::from_secs(30)).await; // nothing for 30 s: close it
/// # }
/// ```
#[derive(Debug)]
pub struct Activity {
    active: AtomicUsize,
    /// The ticker's tick when a request last started or ended (or the connection opened).
    last: AtomicU64,
}

impl Activity {
    /// A connection that has just opened.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            active: AtomicUsize::new(0),
            last: AtomicU64::new(clock().now_tick()),
        })
    }

    /// A request starts: the connection is busy until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> Busy {
        self.active.fetch_add(1, Ordering::SeqCst);
        self.last.store(clock().now_tick(), Ordering::SeqCst);
        Busy(self.clone())
    }

    /// Resolves once no request has been in progress for `after` (up to a quarter second
    /// late, never early). Needs a [`Ticker`] on the runtime.
    pub async fn idle(&self, after: Duration) {
        let clock = clock();
        // Rounded up, and one more for the ticker's lag behind the real time.
        let ticks = u64::try_from(after.as_nanos().div_ceil(u128::from(TICK_NANOS)))
            .unwrap_or(u64::MAX / 2)
            .saturating_add(1);
        loop {
            let last = self.last.load(Ordering::SeqCst);
            let from = if self.active.load(Ordering::SeqCst) > 0 {
                clock.now_tick()
            } else {
                last
            };
            CoarseSleep {
                deadline: from.saturating_add(ticks),
                slot: None,
            }
            .await;
            if self.active.load(Ordering::SeqCst) == 0 && self.last.load(Ordering::SeqCst) == last {
                return;
            }
        }
    }
}

impl Activity {
    /// Serves one connection (`conn`, a hyper connection future) until it ends, closing it
    /// gracefully with `shutdown` (hyper's `graceful_shutdown`: GOAWAY on HTTP/2, after the
    /// response in progress on HTTP/1.1) when `stop` resolves or when no request has been in
    /// progress for `idle`. A connection closed for idleness that is still open another `idle`
    /// later, still without a request in progress (an HTTP/2 peer that does not acknowledge
    /// the GOAWAY's PING), is dropped. After `stop`, the caller's own grace period bounds the
    /// rest.
    pub async fn drive<C, E>(
        &self,
        conn: C,
        shutdown: impl FnOnce(Pin<&mut C>),
        stop: impl Future<Output = ()>,
        idle: Duration,
    ) -> Result<(), E>
    where
        C: Future<Output = Result<(), E>>,
    {
        let mut conn = std::pin::pin!(conn);
        let mut stop = std::pin::pin!(stop);
        let mut waiting = std::pin::pin!(self.idle(idle));
        let stopped = std::future::poll_fn(|cx| {
            if let Poll::Ready(ended) = conn.as_mut().poll(cx) {
                return Poll::Ready(Err(ended));
            }
            if stop.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(true));
            }
            waiting.as_mut().poll(cx).map(|()| Ok(false))
        })
        .await;
        let stopped = match stopped {
            Ok(stopped) => stopped,
            Err(ended) => return ended,
        };
        shutdown(conn.as_mut());
        if stopped {
            return conn.await;
        }
        tracing::debug!("no request in progress for header_read_timeout: closing");
        let mut cut = std::pin::pin!(async {
            CoarseTimer.sleep(idle).await;
            self.idle(idle).await;
        });
        std::future::poll_fn(|cx| {
            if let Poll::Ready(ended) = conn.as_mut().poll(cx) {
                return Poll::Ready(ended);
            }
            cut.as_mut().poll(cx).map(|()| Ok(()))
        })
        .await
    }
}

/// A request in progress on a connection ([`Activity::begin`]).
#[derive(Debug)]
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        // The time first: whoever sees the count drop also sees the new time.
        self.0.last.store(clock().now_tick(), Ordering::SeqCst);
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

pin_project! {
    /// A response body that keeps its connection busy ([`Activity`]) until the server is done
    /// with it (sent or dropped).
    #[derive(Debug)]
    pub struct BusyBody<B> {
        #[pin]
        body: B,
        busy: Busy,
    }
}

impl<B> BusyBody<B> {
    /// `body`, holding `busy` until it is dropped.
    pub fn new(body: B, busy: Busy) -> Self {
        Self { body, busy }
    }
}

impl<B: Body> Body for BusyBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

pin_project! {
    /// A response body that sends an SSE comment (`: keep-alive`) whenever the stream has been
    /// silent for its interval, so that proxies and load balancers with idle timeouts do not
    /// cut an SSE stream that is only waiting. A comment goes out only between two events
    /// (never inside one an upstream is still sending), and never into a body of known length.
    /// Built with `None` (not SSE, or keep-alives off), it passes the body through untouched.
    ///
    /// ```no_run
    /// # fn demo(resp: http::Response<http_body_util::Full<bytes::Bytes>>) {
    /// use mcp_gateway_layers::rt::KeepAlive;
    /// let every = std::time::Duration::from_secs(15);
    /// let resp = resp.map(|body| KeepAlive::new(body, Some(every)));
    /// # }
    /// ```
    #[derive(Debug)]
    pub struct KeepAlive<B> {
        #[pin]
        body: B,
        stall: Option<Stall>,
        // The last four bytes sent, to tell whether the stream is between two events.
        tail: [u8; 4],
    }
}

/// The comment a silent SSE stream gets.
const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

impl<B: Body> KeepAlive<B> {
    /// `body`, with a comment after each `every` of silence (`None` or zero: none).
    pub fn new(body: B, every: Option<Duration>) -> Self {
        let stall = every
            .filter(|d| !d.is_zero() && body.size_hint().exact().is_none())
            .map(Stall::new);
        Self {
            body,
            stall,
            tail: *b"\n\n\n\n",
        }
    }
}

/// True when `tail` ends an SSE event (a blank line, in any of the three line endings), or
/// nothing has been sent yet.
fn between_events(tail: &[u8; 4]) -> bool {
    tail.ends_with(b"\n\n") || tail.ends_with(b"\r\r") || tail == b"\r\n\r\n"
}

impl<B> Body for KeepAlive<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        if let Poll::Ready(frame) = this.body.poll_frame(cx) {
            if let Some(Ok(f)) = &frame {
                if let Some(d) = f.data_ref() {
                    for &b in &d[d.len().saturating_sub(4)..] {
                        this.tail.rotate_left(1);
                        this.tail[3] = b;
                    }
                }
            }
            if let Some(stall) = this.stall.as_mut() {
                stall.reset();
            }
            return Poll::Ready(frame);
        }
        let Some(stall) = this.stall.as_mut() else {
            return Poll::Pending;
        };
        while stall.poll_expired(cx).is_ready() {
            if between_events(this.tail) {
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(KEEP_ALIVE)))));
            }
            // In the middle of an event: wait another interval (the loop arms it).
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
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

    /// A body that never sends anything.
    struct Stalled;

    impl Body for Stalled {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<bytes::Bytes>, Self::Error>>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_stalled_body_fails_with_body_read_timeout() {
        use http_body_util::BodyExt;
        let _ticker = Ticker::start();
        let started = Instant::now();
        let mut body = ReadTimeout::new(Stalled, Duration::from_millis(300));
        let err = body.frame().await.unwrap().unwrap_err();
        let took = started.elapsed();
        assert_eq!(
            err.downcast_ref::<BodyReadTimeout>(),
            Some(&BodyReadTimeout(Duration::from_millis(300)))
        );
        // Never early; up to a tick or two late.
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_millis(300) + 3 * TICK, "{took:?}");
        // A body that has its data is passed through, no timer armed.
        let mut body = ReadTimeout::new(
            http_body_util::Full::new(bytes::Bytes::from_static(b"x")),
            Duration::from_millis(1),
        );
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "x"
        );
        assert!(!body.stall.is_armed());
    }

    #[tokio::test]
    async fn without_a_ticker_the_limit_uses_tokios_timer() {
        use http_body_util::BodyExt;
        // Forced onto tokio's timer: other tests run tickers meanwhile (and stop them).
        let started = Instant::now();
        let mut body = ReadTimeout {
            body: Stalled,
            stall: Stall::on_tokio(Duration::from_millis(300)),
        };
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.downcast_ref::<BodyReadTimeout>().is_some());
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_millis(300) + 3 * TICK, "{took:?}");
    }

    #[tokio::test]
    async fn a_connection_is_idle_after_its_last_request_ends() {
        let _ticker = Ticker::start();
        let activity = Activity::new();
        let busy = activity.begin();
        // Busy: not idle, however long it takes.
        let waited = tokio::time::timeout(Duration::from_millis(800), activity.idle(TICK)).await;
        assert!(waited.is_err());
        drop(busy);
        let started = Instant::now();
        activity.idle(Duration::from_millis(500)).await;
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(500), "{took:?}");
        assert!(took < Duration::from_millis(500) + 4 * TICK, "{took:?}");
    }
}
