//! [`AuditWriter`]: the queue between the request path and the sink, and the thread that
//! numbers, chains, writes and syncs the records.

use super::record::{line_hash, ArgumentPolicy, AuditRecord, GENESIS};
use super::sink::{AuditSink, Head};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};

/// When the sink makes records durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// After every batch, before the client gets the end of the answer.
    Always,
    /// At most this long after a record is written.
    Interval(Duration),
}

/// What happens when the queue is full (the sink is slower than the traffic).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFull {
    /// New requests wait for room, at most [`WriterOptions::write_timeout`] (then 503):
    /// back-pressure.
    Block,
    /// New requests are refused with 503 (JSON-RPC -32054).
    Refuse,
}

/// The default [`WriterOptions::write_timeout`]: 5 s.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// How the writer works.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WriterOptions {
    /// When to sync. Default: every second.
    pub fsync: FsyncPolicy,
    /// What to do when full. Default: block.
    pub on_full: OnFull,
    /// How many exchanges may hold a place in the queue (from their start until their record
    /// is written). Default 65 536.
    pub queue: usize,
    /// Tool arguments: recorded or not, and which keys are redacted.
    pub arguments: ArgumentPolicy,
    /// With [`FsyncPolicy::Interval`], how long the writer waits after the first record of a
    /// batch before taking the queue, so that it wakes once per batch instead of once per
    /// record (a wake-up per call costs the request path a context switch when the writer
    /// shares its core). Records reach the sink at most this much later; it does not change
    /// when they are synced. Default 2 ms; zero writes each record as soon as it comes.
    /// [`FsyncPolicy::Always`] never lingers: the answer's end waits for the sync.
    pub linger: Duration,
    /// The longest a call waits on the audit log: for a place in the queue
    /// ([`OnFull::Block`]), for a failing sink to recover before it starts, and — with
    /// [`FsyncPolicy::Always`] — for its record to be synced before the end of its answer.
    /// Past it, a call that has not started answering is refused with 503 (JSON-RPC -32054,
    /// `Retry-After`), and an answer that has started is cut off (its body ends with an
    /// error): never a hang. Records already queued are kept and written once the sink
    /// recovers. Default 5 s ([`DEFAULT_WRITE_TIMEOUT`]).
    pub write_timeout: Duration,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            fsync: FsyncPolicy::Interval(Duration::from_secs(1)),
            on_full: OnFull::Block,
            queue: 65_536,
            arguments: ArgumentPolicy::default(),
            linger: Duration::from_millis(2),
            write_timeout: DEFAULT_WRITE_TIMEOUT,
        }
    }
}

/// Builder methods, one per field: `#[non_exhaustive]` keeps struct literals (and
/// `..Default::default()`) out of other crates, so start from [`WriterOptions::default`] and
/// change what you need.
///
/// ```
/// use mcp_gateway_layers::audit::{FsyncPolicy, OnFull, WriterOptions};
/// use std::time::Duration;
///
/// let o = WriterOptions::default()
///     .fsync(FsyncPolicy::Always)
///     .on_full(OnFull::Refuse)
///     .queue(1024)
///     .write_timeout(Duration::from_secs(2));
/// assert_eq!(o.queue, 1024);
/// assert_eq!(o.fsync, FsyncPolicy::Always);
/// ```
impl WriterOptions {
    /// When to sync.
    pub fn fsync(mut self, fsync: FsyncPolicy) -> Self {
        self.fsync = fsync;
        self
    }
    /// What to do when the queue is full.
    pub fn on_full(mut self, on_full: OnFull) -> Self {
        self.on_full = on_full;
        self
    }
    /// How many exchanges may hold a place in the queue (at least 1).
    pub fn queue(mut self, queue: usize) -> Self {
        self.queue = queue.max(1);
        self
    }
    /// Tool arguments: recorded or not, and which keys are redacted.
    pub fn arguments(mut self, arguments: ArgumentPolicy) -> Self {
        self.arguments = arguments;
        self
    }
    /// How long the writer lingers after the first record of a batch.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }
    /// The longest a call waits on the audit log.
    pub fn write_timeout(mut self, write_timeout: Duration) -> Self {
        self.write_timeout = write_timeout;
        self
    }
}

/// Counters of the writer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditStats {
    /// Records written to the sink.
    pub written: u64,
    /// Records that could not be kept (refused for want of room: their request was refused
    /// too, and each is logged). Never records of calls that were served.
    pub dropped: u64,
    /// Sink failures (each retried until it succeeds).
    pub sink_errors: u64,
    /// Records waiting to be written, or whose exchange is still running.
    pub in_flight: u64,
    /// [`AuditWriter::healthy`]: false while the sink fails.
    pub healthy: bool,
}

impl AuditStats {
    /// Appends the counters in the Prometheus text format, as the gateway's `/metrics` shows
    /// them: records written and dropped, sink errors (`mcp_gateway_audit_*_total`), and
    /// whether the sink writes (`mcp_gateway_audit_sink_healthy`, a gauge).
    pub fn render_prometheus(&self, out: &mut String) {
        crate::ascii::push_counter(
            out,
            "mcp_gateway_audit_records_written_total",
            "Audit records written to the sink.",
            self.written,
        );
        crate::ascii::push_counter(
            out,
            "mcp_gateway_audit_records_dropped_total",
            "Audit records that could not be kept (their requests were refused).",
            self.dropped,
        );
        crate::ascii::push_counter(
            out,
            "mcp_gateway_audit_sink_errors_total",
            "Audit sink failures (each retried).",
            self.sink_errors,
        );
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "# HELP mcp_gateway_audit_sink_healthy 1 while the audit sink writes, 0 while it fails (calls are then refused after write_timeout)."
        );
        let _ = writeln!(out, "# TYPE mcp_gateway_audit_sink_healthy gauge");
        let _ = writeln!(
            out,
            "mcp_gateway_audit_sink_healthy {}",
            u8::from(self.healthy)
        );
    }
}

#[derive(Default)]
struct Counters {
    written: AtomicU64,
    dropped: AtomicU64,
    sink_errors: AtomicU64,
}

enum Msg {
    Records {
        records: Vec<AuditRecord>,
        /// None for records that follow one already queued ([`AuditWriter::append`]).
        _slot: Option<OwnedSemaphorePermit>,
        ack: Option<oneshot::Sender<()>>,
    },
    Flush(oneshot::Sender<()>),
    /// Writes what came before to the current sink, syncs it, and continues the chain in
    /// `sink` (a reload that moved the log).
    Switch(Box<dyn AuditSink>, oneshot::Sender<()>),
}

/// A reserved place in the queue, held by one exchange until its record is written.
#[derive(Debug)]
pub struct Slot(OwnedSemaphorePermit);

/// The handle to the writer thread. Cheap to clone.
#[derive(Clone)]
pub struct AuditWriter {
    tx: mpsc::Sender<Msg>,
    slots: Arc<Semaphore>,
    capacity: usize,
    counters: Arc<Counters>,
    options: Arc<WriterOptions>,
    /// False from a failed write or sync of the sink until its next successful batch.
    health: watch::Receiver<bool>,
}

impl std::fmt::Debug for AuditWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditWriter")
            .field("options", &self.options)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl AuditWriter {
    /// Starts the writer thread over `sink`. The chain continues from the sink's last line.
    pub fn spawn(mut sink: impl AuditSink, options: WriterOptions) -> io::Result<Self> {
        let (seq, prev) = match sink.last_line()? {
            Some(line) => {
                let seq = serde_json::from_slice::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| v.get("seq")?.as_u64())
                    .unwrap_or(0);
                (seq, line_hash(&line))
            }
            None => (0, GENESIS.to_owned()),
        };
        let (tx, rx) = mpsc::channel();
        let capacity = options.queue.clamp(1, Semaphore::MAX_PERMITS);
        let counters = Arc::new(Counters::default());
        let options = Arc::new(options);
        let (health_tx, health) = watch::channel(true);
        let thread = Thread {
            sink: Box::new(sink) as Box<dyn AuditSink>,
            rx,
            options: options.clone(),
            counters: counters.clone(),
            health: health_tx,
            seq,
            prev,
        };
        std::thread::Builder::new()
            .name("mcp-gateway-audit".into())
            .spawn(move || thread.run())?;
        Ok(Self {
            tx,
            slots: Arc::new(Semaphore::new(capacity)),
            capacity,
            counters,
            options,
            health,
        })
    }

    /// False while the sink cannot write: from a failed write or sync (which the writer
    /// retries, keeping every record) until the next batch is written and, when due, synced.
    /// A gateway reports itself not ready meanwhile (`/readyz` answers 503).
    pub fn healthy(&self) -> bool {
        *self.health.borrow()
    }

    /// Resolves once the sink is [healthy](Self::healthy) (at once when it is).
    pub async fn wait_healthy(&self) {
        let mut rx = self.health.clone();
        // An error only when the writer thread is gone: then nothing will change.
        let _ = rx.wait_for(|ok| *ok).await;
    }

    /// The options it runs with.
    pub fn options(&self) -> &WriterOptions {
        &self.options
    }

    /// A place in the queue: waits for one ([`OnFull::Block`]) or returns `None` when there
    /// is none ([`OnFull::Refuse`]).
    pub async fn reserve(&self) -> Option<Slot> {
        match self.options.on_full {
            OnFull::Block => self.slots.clone().acquire_owned().await.ok().map(Slot),
            OnFull::Refuse => self.slots.clone().try_acquire_owned().ok().map(Slot),
        }
    }

    /// A place in the queue now, if there is one; never waits.
    pub fn try_reserve(&self) -> Option<Slot> {
        self.slots.clone().try_acquire_owned().ok().map(Slot)
    }

    /// Queues the records of one exchange. With [`FsyncPolicy::Always`] the receiver
    /// resolves once they are durable.
    pub fn submit(&self, slot: Slot, records: Vec<AuditRecord>) -> Option<oneshot::Receiver<()>> {
        let (ack, rx) = match self.options.fsync {
            FsyncPolicy::Always => {
                let (a, r) = oneshot::channel();
                (Some(a), Some(r))
            }
            FsyncPolicy::Interval(_) => (None, None),
        };
        let n = records.len() as u64;
        let msg = Msg::Records {
            records,
            _slot: Some(slot.0),
            ack,
        };
        if self.tx.send(msg).is_err() {
            // Only when the writer thread died (a panic in a sink): count and say so.
            self.dropped(n, "the audit writer has stopped");
            return None;
        }
        rx
    }

    /// Queues records that must follow one already queued, without a place in the queue (a
    /// full queue cannot refuse them), and without waiting for them: what the audit layer
    /// uses to record that an answer was cut off ([`Event::AnswerCut`](super::Event::AnswerCut)).
    /// Each such record follows an exchange that still holds its own place, so they are
    /// bounded by the queue's size.
    pub fn append(&self, records: Vec<AuditRecord>) {
        let n = records.len() as u64;
        let msg = Msg::Records {
            records,
            _slot: None,
            ack: None,
        };
        if self.tx.send(msg).is_err() {
            self.dropped(n, "the audit writer has stopped");
        }
    }

    /// Counts `n` records that could not be kept, and logs why.
    pub fn dropped(&self, n: u64, why: &str) {
        let total = self.counters.dropped.fetch_add(n, Ordering::Relaxed) + n;
        tracing::error!(target: "mcp_gateway::audit", dropped = n, total, "audit records dropped: {why}");
    }

    /// Moves the log to `sink` (a reload that changed the audit path): the records queued
    /// before this call are written and synced where they were, the later ones go to `sink`,
    /// and the chain continues there — its first record links to the last one written before
    /// — so `verify` over both files, in order, checks one unbroken chain. Refused when `sink`
    /// already holds records (their chain is another one). Returns once the switch is made.
    pub async fn switch_sink(&self, mut sink: impl AuditSink) -> io::Result<()> {
        if sink.last_line()?.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the new audit file already holds records of another chain; name a new file",
            ));
        }
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Switch(Box::new(sink), tx))
            .map_err(|_| io::Error::other("the audit writer has stopped"))?;
        rx.await
            .map_err(|_| io::Error::other("the audit writer has stopped"))
    }

    /// Waits until every record queued before this call is written and synced.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// The counters.
    pub fn stats(&self) -> AuditStats {
        AuditStats {
            written: self.counters.written.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
            sink_errors: self.counters.sink_errors.load(Ordering::Relaxed),
            in_flight: (self.capacity - self.slots.available_permits()) as u64,
            healthy: self.healthy(),
        }
    }
}

struct Thread {
    sink: Box<dyn AuditSink>,
    rx: mpsc::Receiver<Msg>,
    options: Arc<WriterOptions>,
    counters: Arc<Counters>,
    health: watch::Sender<bool>,
    seq: u64,
    prev: String,
}

impl Thread {
    fn run(mut self) {
        let (interval, linger) = match self.options.fsync {
            FsyncPolicy::Always => (Duration::ZERO, Duration::ZERO),
            FsyncPolicy::Interval(d) => (d, self.options.linger),
        };
        let mut dirty = false;
        let mut last_sync = Instant::now();
        let mut msgs = Vec::new();
        let mut buf = Vec::new();
        loop {
            let wait = if dirty {
                interval.saturating_sub(last_sync.elapsed())
            } else {
                Duration::from_secs(3600)
            };
            match self.rx.recv_timeout(wait) {
                Ok(m) => {
                    msgs.push(m);
                    if !linger.is_zero() {
                        // Let the batch gather: senders do not wake a thread that is not
                        // waiting on the queue.
                        std::thread::sleep(linger);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    if dirty {
                        self.retry("sync", |s, h| s.sync(h));
                    }
                    return;
                }
            }
            while msgs.len() < 4096 {
                match self.rx.try_recv() {
                    Ok(m) => msgs.push(m),
                    Err(_) => break,
                }
            }
            let mut done = Vec::new();
            let mut force = false;
            let mut n = 0u64;
            for m in msgs.drain(..) {
                match m {
                    Msg::Records {
                        records,
                        _slot,
                        ack,
                    } => {
                        for r in &records {
                            self.seq = self.seq.saturating_add(1);
                            let line = r.to_line(self.seq, &self.prev, &self.options.arguments);
                            self.prev = line_hash(&line);
                            buf.extend_from_slice(&line);
                            n += 1;
                        }
                        done.push((_slot, ack));
                    }
                    Msg::Flush(ack) => {
                        force = true;
                        done.push((None, Some(ack)));
                    }
                    Msg::Switch(sink, ack) => {
                        // Everything before the switch stays in the old sink, synced.
                        self.write_batch(&mut buf, std::mem::take(&mut n));
                        self.retry("sync", |s, h| s.sync(h));
                        dirty = false;
                        last_sync = Instant::now();
                        self.sink = sink;
                        tracing::info!(target: "mcp_gateway::audit", seq = self.seq, "audit log moved: the chain continues in the new sink");
                        let _ = ack.send(());
                    }
                }
            }
            if self.write_batch(&mut buf, n) {
                dirty = true;
            }
            if dirty && (force || last_sync.elapsed() >= interval) {
                self.retry("sync", |s, h| s.sync(h));
                dirty = false;
                last_sync = Instant::now();
            }
            // The batch is kept: the sink works (again).
            self.set_healthy(true);
            // Room in the queue, and the answers' ends, only once the records are kept.
            for (slot, ack) in done {
                drop(slot);
                if let Some(a) = ack {
                    let _ = a.send(());
                }
            }
        }
    }

    /// Writes the `n` records in `buf` (retrying until the sink takes them) and empties it,
    /// keeping its allocation; whether there was anything to write.
    fn write_batch(&mut self, buf: &mut Vec<u8>, n: u64) -> bool {
        if buf.is_empty() {
            return false;
        }
        let lines = std::mem::take(buf);
        self.retry("write", |s, _| s.write(&lines));
        *buf = lines;
        buf.clear();
        self.counters.written.fetch_add(n, Ordering::Relaxed);
        true
    }

    fn set_healthy(&self, ok: bool) {
        self.health
            .send_if_modified(|h| std::mem::replace(h, ok) != ok);
    }

    /// Runs `op` until it succeeds: a record is never given up. Failures are counted and
    /// logged (the first of a run, then every 10 s); the queue fills meanwhile, and
    /// `on_full` decides what new requests see.
    fn retry(
        &mut self,
        what: &str,
        mut op: impl FnMut(&mut dyn AuditSink, &Head) -> io::Result<()>,
    ) {
        let head = Head {
            seq: self.seq,
            hash: self.prev.clone(),
        };
        let mut backoff = Duration::from_millis(1);
        let mut logged: Option<Instant> = None;
        loop {
            match op(&mut *self.sink, &head) {
                Ok(()) => {
                    if logged.is_some() {
                        tracing::info!(target: "mcp_gateway::audit", "audit sink recovered");
                    }
                    return;
                }
                Err(e) => {
                    self.counters.sink_errors.fetch_add(1, Ordering::Relaxed);
                    self.set_healthy(false);
                    if logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        tracing::error!(target: "mcp_gateway::audit", error = %e, "audit sink {what} failed; retrying (records are kept)");
                        logged = Some(Instant::now());
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}
