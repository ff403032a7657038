//! AuditLog without the gateway: the chain against tampering, rotation and restarts, and
//! sinks that stall or fail.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use futures_util::FutureExt;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use mcp_gateway_layers::audit::{
    verify, AuditLogLayer, AuditRecord, AuditSink, AuditWriter, Event, FileSink, FsyncPolicy, Head,
    OnFull, VerifyError, WriterOptions,
};
use mcp_gateway_layers::ParseMcpLayer;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

fn record(i: u64) -> AuditRecord {
    let mut r = AuditRecord::new(
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + i),
        Event::Request,
        "POST",
    );
    r.agent = Some(format!("agent-{}", i % 3));
    r.method = Some("tools/call".into());
    r.tool = Some("echo".into());
    r.id = Some(i.to_string());
    r
}

fn options(fsync: FsyncPolicy, on_full: OnFull, queue: usize) -> WriterOptions {
    let mut o = WriterOptions::default();
    o.fsync = fsync;
    o.on_full = on_full;
    o.queue = queue;
    o
}

/// Writes `n` records through a writer over a file sink at `path`.
async fn write_records(path: &Path, from: u64, n: u64, rotate: u64) {
    let sink = FileSink::open(path).unwrap().rotate_size(rotate).keep(100);
    let w = AuditWriter::spawn(sink, options(FsyncPolicy::Always, OnFull::Block, 8)).unwrap();
    for i in from..from + n {
        let slot = w.reserve().await.unwrap();
        w.submit(slot, vec![record(i)]).unwrap().await.unwrap();
    }
    w.flush().await;
    assert_eq!(w.stats().written, n);
    assert_eq!(w.stats().dropped, 0);
}

fn all_files(path: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = mcp_gateway_layers::audit::sink::rotated_files(path)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    v.push(path.to_path_buf());
    v
}

fn broken_at(
    r: Result<mcp_gateway_layers::audit::VerifyReport, VerifyError>,
) -> (String, u64, String) {
    match r {
        Err(VerifyError::Broken {
            file,
            line,
            problem,
        }) => (
            file.file_name().unwrap().to_string_lossy().into_owned(),
            line,
            problem,
        ),
        other => panic!("expected a break, got {other:?}"),
    }
}

fn edit(path: &Path, f: impl FnOnce(&mut Vec<String>)) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    f(&mut lines);
    let mut out = lines.join("\n");
    out.push('\n');
    std::fs::write(path, out).unwrap();
}

#[tokio::test]
async fn the_chain_holds_across_rotation_and_restart_and_catches_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    // ~250-byte records, 1 KiB files: several rotations.
    write_records(&log, 1, 10, 1024).await;
    // A restart continues the chain.
    write_records(&log, 11, 10, 1024).await;
    let files = all_files(&log);
    assert!(files.len() >= 4, "{files:?}");
    let report = verify(&files).unwrap();
    assert_eq!(report.records, 20);
    assert_eq!(report.seqs, Some((1, 20)));
    assert_eq!(report.head.as_ref().unwrap().seq, 20);
    // Any order on the command line: files are put in chain order.
    let mut reversed = files.clone();
    reversed.reverse();
    assert_eq!(verify(&reversed).unwrap().records, 20);

    let pristine: Vec<(PathBuf, Vec<u8>)> = files
        .iter()
        .map(|f| (f.clone(), std::fs::read(f).unwrap()))
        .collect();
    let restore = || {
        for (f, bytes) in &pristine {
            std::fs::write(f, bytes).unwrap();
        }
    };
    let first = files[0].clone();
    let first_name = first.file_name().unwrap().to_string_lossy().into_owned();

    // An edited byte: the record's hash no longer matches the next record's prev.
    edit(&first, |l| l[1] = l[1].replace("agent-2", "agent-X"));
    let (f, line, p) = broken_at(verify(&files));
    assert_eq!((f.as_str(), line), (first_name.as_str(), 2), "{p}");
    assert!(p.contains("altered"), "{p}");
    restore();

    // A deleted line.
    edit(&first, |l| {
        l.remove(1);
    });
    let (f, line, p) = broken_at(verify(&files));
    assert_eq!((f.as_str(), line), (first_name.as_str(), 2), "{p}");
    assert!(p.contains("missing"), "{p}");
    restore();

    // A swapped pair.
    edit(&first, |l| l.swap(1, 2));
    let (_, line, p) = broken_at(verify(&files));
    assert_eq!(line, 2, "{p}");
    restore();

    // An inserted line (a copy of a real record, re-numbered: still caught).
    edit(&first, |l| {
        let forged = l[1].replace("\"seq\":2,", "\"seq\":3,");
        l.insert(2, forged);
    });
    let (_, line, p) = broken_at(verify(&files));
    assert_eq!(line, 3, "{p}");
    restore();

    // An edited last record: only the .head can tell.
    edit(&log, |l| {
        let n = l.len() - 1;
        l[n] = l[n].replace("agent-", "agent-Z");
    });
    let (f, _, p) = broken_at(verify(&files));
    assert_eq!(f, "audit.jsonl");
    assert!(p.contains(".head"), "{p}");
    restore();

    // A truncated file: its last records deleted.
    edit(&log, |l| {
        l.pop();
    });
    let (f, _, p) = broken_at(verify(&files));
    assert_eq!(f, "audit.jsonl");
    assert!(p.contains("truncated"), "{p}");
    restore();

    // A truncated rotated file: the next file's first record does not link to it.
    edit(&first, |l| {
        l.pop();
    });
    let (_, _, p) = broken_at(verify(&files));
    assert!(p.contains("missing"), "{p}");
    restore();

    // A line cut mid-way.
    let bytes = std::fs::read(&log).unwrap();
    std::fs::write(&log, &bytes[..bytes.len() - 10]).unwrap();
    let (_, _, p) = broken_at(verify(&files));
    assert!(p.contains("incomplete"), "{p}");
    restore();

    assert_eq!(verify(&files).unwrap().records, 20);
}

/// A sink whose writes wait for a go-ahead, recording what it was given.
struct Stalled {
    go: mpsc::Receiver<()>,
    lines: Arc<Mutex<Vec<u8>>>,
}

impl AuditSink for Stalled {
    fn write(&mut self, lines: &[u8]) -> io::Result<()> {
        self.go.recv().map_err(io::Error::other)?;
        self.lines.lock().unwrap().extend_from_slice(lines);
        Ok(())
    }
    fn sync(&mut self, _: &Head) -> io::Result<()> {
        Ok(())
    }
}

/// A sink that fails its first `failures` writes, then works.
struct Failing {
    failures: usize,
    lines: Arc<Mutex<Vec<u8>>>,
}

impl AuditSink for Failing {
    fn write(&mut self, lines: &[u8]) -> io::Result<()> {
        if self.failures > 0 {
            self.failures -= 1;
            return Err(io::Error::other("disk full"));
        }
        self.lines.lock().unwrap().extend_from_slice(lines);
        Ok(())
    }
    fn sync(&mut self, _: &Head) -> io::Result<()> {
        Ok(())
    }
}

fn count_lines(lines: &Mutex<Vec<u8>>) -> usize {
    lines
        .lock()
        .unwrap()
        .iter()
        .filter(|b| **b == b'\n')
        .count()
}

/// A gateway-shaped stack: the audit layer over a server answering every call.
fn stack(
    writer: AuditWriter,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<impl http_body::Body<Data = Bytes, Error = mcp_gateway_layers::BoxError>>,
    Error = std::convert::Infallible,
> + Clone {
    ServiceBuilder::new()
        .layer(AuditLogLayer::new(writer))
        .layer(ParseMcpLayer::new())
        .service(service_fn(|_req: Request<Full<Bytes>>| async {
            let body = r#"{"jsonrpc":"2.0","id":1,"result":{}}"#;
            let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
            resp.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            Ok::<_, std::convert::Infallible>(resp)
        }))
}

fn call(id: u32) -> Request<Full<Bytes>> {
    Request::post("/mcp")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo"}}}}"#
        ))))
        .unwrap()
}

#[tokio::test]
async fn a_stalled_sink_blocks_new_requests_and_loses_nothing() {
    let (go, rx) = mpsc::channel();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Stalled {
        go: rx,
        lines: lines.clone(),
    };
    let writer = AuditWriter::spawn(
        sink,
        options(
            FsyncPolicy::Interval(Duration::from_secs(1)),
            OnFull::Block,
            2,
        ),
    )
    .unwrap();
    let svc = stack(writer.clone());
    // Two exchanges fill the queue (the sink is stuck on the first batch).
    for id in 0..2 {
        let resp = svc.clone().oneshot(call(id)).await.unwrap();
        resp.into_body().collect().await.unwrap();
    }
    // The third waits for room: back-pressure, not a lost record.
    let mut third = Box::pin(svc.clone().oneshot(call(2)));
    assert!((&mut third).now_or_never().is_none());
    assert_eq!(writer.stats().in_flight, 2);
    // The sink comes back.
    for _ in 0..3 {
        go.send(()).unwrap();
    }
    let resp = third.await.unwrap();
    resp.into_body().collect().await.unwrap();
    writer.flush().await;
    assert_eq!(count_lines(&lines), 3);
    assert_eq!(writer.stats().dropped, 0);
    assert_eq!(writer.stats().written, 3);
}

#[tokio::test]
async fn a_stalled_sink_with_on_full_refuse_answers_503_and_counts_it() {
    let (go, rx) = mpsc::channel();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Stalled {
        go: rx,
        lines: lines.clone(),
    };
    let writer = AuditWriter::spawn(
        sink,
        options(
            FsyncPolicy::Interval(Duration::from_secs(1)),
            OnFull::Refuse,
            1,
        ),
    )
    .unwrap();
    let svc = stack(writer.clone());
    let resp = svc.clone().oneshot(call(1)).await.unwrap();
    resp.into_body().collect().await.unwrap();
    let refused = svc.clone().oneshot(call(2)).await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = refused.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], -32054);
    assert_eq!(v["id"], 2);
    // Counted (and logged): never silent.
    assert_eq!(writer.stats().dropped, 1);
    go.send(()).unwrap();
    writer.flush().await;
    assert_eq!(count_lines(&lines), 1);
}

#[tokio::test]
async fn a_failing_sink_is_retried_until_every_record_is_written() {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Failing {
        failures: 3,
        lines: lines.clone(),
    };
    let writer = AuditWriter::spawn(sink, options(FsyncPolicy::Always, OnFull::Block, 16)).unwrap();
    let svc = stack(writer.clone());
    for id in 0..5 {
        let resp = svc.clone().oneshot(call(id)).await.unwrap();
        resp.into_body().collect().await.unwrap();
    }
    writer.flush().await;
    let stats = writer.stats();
    assert_eq!(stats.sink_errors, 3);
    assert_eq!(stats.dropped, 0);
    assert_eq!(count_lines(&lines), 5);
    // And the chain is whole: seq 1..5, each linked to the one before.
    let text = String::from_utf8(lines.lock().unwrap().clone()).unwrap();
    let mut prev = mcp_gateway_layers::audit::record::GENESIS.to_owned();
    for (i, l) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["seq"], i as u64 + 1);
        assert_eq!(v["prev"], prev);
        prev = mcp_gateway_layers::audit::record::line_hash(l.as_bytes());
    }
}

#[tokio::test]
async fn with_fsync_always_the_answer_ends_only_once_its_record_is_written() {
    let (go, rx) = mpsc::channel();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Stalled {
        go: rx,
        lines: lines.clone(),
    };
    let writer = AuditWriter::spawn(sink, options(FsyncPolicy::Always, OnFull::Block, 4)).unwrap();
    let svc = stack(writer.clone());
    let resp = svc.oneshot(call(1)).await.unwrap();
    let mut body = Box::pin(resp.into_body().collect());
    // The sink holds the record: the body (its only frame included) is held back.
    assert!((&mut body).now_or_never().is_none());
    assert_eq!(count_lines(&lines), 0);
    go.send(()).unwrap();
    let bytes = body.await.unwrap().to_bytes();
    assert_eq!(count_lines(&lines), 1);
    assert!(bytes.starts_with(b"{\"jsonrpc\""));
}

/// The real file sink behind a switch: while `full` is set, every write and sync fails with
/// ENOSPC before touching the files (what a full disk answers), as the storage boundary would.
struct DiskFull {
    inner: FileSink,
    full: Arc<AtomicBool>,
}

impl DiskFull {
    fn check(&self) -> io::Result<()> {
        if self.full.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(28)); // ENOSPC
        }
        Ok(())
    }
}

impl AuditSink for DiskFull {
    fn write(&mut self, lines: &[u8]) -> io::Result<()> {
        self.check()?;
        self.inner.write(lines)
    }
    fn sync(&mut self, head: &Head) -> io::Result<()> {
        self.check()?;
        self.inner.sync(head)
    }
    fn last_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        self.inner.last_line()
    }
}

/// Waits (bounded) until the writer's health is `want`.
async fn health_becomes(writer: &AuditWriter, want: bool) {
    let t = Instant::now();
    while writer.healthy() != want {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "healthy() stayed {}",
            !want
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `fsync = "always"` over a disk that fills up and then frees: the call whose answer had
/// started is cut off (not held forever), later calls get 503 / -32054 after `write_timeout`,
/// the writer reports itself unhealthy, and once the disk has room every accepted record is
/// written and the chain verifies.
async fn a_full_disk_with_fsync_always(on_full: OnFull) {
    const LIMIT: Duration = Duration::from_millis(300);
    // Generous: the bound is what matters, not the exact time (a shared CI core is slow).
    const SLACK: Duration = Duration::from_secs(10);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let full = Arc::new(AtomicBool::new(false));
    let sink = DiskFull {
        inner: FileSink::open(&path).unwrap(),
        full: full.clone(),
    };
    let mut o = options(FsyncPolicy::Always, on_full, 16);
    o.write_timeout = LIMIT;
    let writer = AuditWriter::spawn(sink, o).unwrap();
    let svc = stack(writer.clone());

    let resp = svc.clone().oneshot(call(1)).await.unwrap();
    resp.into_body().collect().await.unwrap();
    assert!(writer.healthy());

    // The disk fills while a call is answered: its head is out, its end waits for the record,
    // and after `write_timeout` the body fails instead of hanging.
    full.store(true, Ordering::SeqCst);
    let resp = svc.clone().oneshot(call(2)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = tokio::time::timeout(LIMIT + SLACK, resp.into_body().collect())
        .await
        .expect("the answer's body hung behind its audit record");
    assert!(body.is_err(), "a complete answer whose record is not kept");
    health_becomes(&writer, false).await;
    let mut metrics = String::new();
    writer.stats().render_prometheus(&mut metrics);
    assert!(
        metrics.contains("\nmcp_gateway_audit_sink_healthy 0\n"),
        "{metrics}"
    );

    // A new call is refused before its answer starts, within `write_timeout` and slack.
    let t = Instant::now();
    let refused = tokio::time::timeout(LIMIT + SLACK, svc.clone().oneshot(call(3)))
        .await
        .expect("the call hung on the audit log")
        .unwrap();
    assert!(t.elapsed() < LIMIT + SLACK);
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body = refused.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], -32054);
    assert_eq!(v["id"], 3);
    assert!(!writer.healthy());

    // The disk has room again: the writer recovers by itself and calls flow.
    full.store(false, Ordering::SeqCst);
    health_becomes(&writer, true).await;
    let resp = svc.clone().oneshot(call(4)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body().collect().await.unwrap();
    writer.flush().await;

    let stats = writer.stats();
    assert_eq!(stats.dropped, 1, "the refused call, counted: {stats:?}");
    assert_eq!(stats.written, 4, "{stats:?}");
    assert!(stats.sink_errors >= 1, "{stats:?}");
    // Every accepted call's record — the cut-off one included, followed by the record that
    // says its answer was cut off — is on disk, in order, and the chain (with its .head)
    // verifies.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .collect();
    let seen: Vec<(serde_json::Value, serde_json::Value, serde_json::Value)> = lines
        .iter()
        .map(|l| (l["id"].clone(), l["event"].clone(), l["outcome"].clone()))
        .collect();
    let want = |id: u64, event: &str, outcome: &str| (id.into(), event.into(), outcome.into());
    assert_eq!(
        seen,
        [
            want(1, "request", "ok"),
            want(2, "request", "ok"),
            want(2, "answer_cut", "unavailable"),
            want(4, "request", "ok"),
        ]
    );
    assert_eq!(lines[2]["error_code"], -32054);
    assert_eq!(lines[2]["status"], 200);
    let report = verify(&[path]).unwrap();
    assert_eq!(report.records, 4);
    assert!(report.head.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_calls_with_503_and_recovers_losing_nothing() {
    a_full_disk_with_fsync_always(OnFull::Block).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_with_on_full_refuse_refuses_too_and_recovers_losing_nothing() {
    a_full_disk_with_fsync_always(OnFull::Refuse).await;
}

/// A full queue with `on_full = "block"` waits at most `write_timeout`, then refuses.
#[tokio::test]
async fn a_full_queue_blocks_at_most_write_timeout_then_answers_503() {
    let (go, rx) = mpsc::channel();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Stalled {
        go: rx,
        lines: lines.clone(),
    };
    let mut o = options(
        FsyncPolicy::Interval(Duration::from_secs(1)),
        OnFull::Block,
        1,
    );
    o.write_timeout = Duration::from_millis(200);
    let writer = AuditWriter::spawn(sink, o).unwrap();
    let svc = stack(writer.clone());
    let resp = svc.clone().oneshot(call(1)).await.unwrap();
    resp.into_body().collect().await.unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(10), svc.clone().oneshot(call(2)))
        .await
        .expect("blocked past write_timeout")
        .unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = refused.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], -32054);
    assert_eq!(writer.stats().dropped, 1);
    go.send(()).unwrap();
    writer.flush().await;
    assert_eq!(count_lines(&lines), 1);
}

#[test]
fn garbage_files_are_reported_not_panicked_on() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [&[u8]; 7] = [
        b"",
        b"\n",
        b"not json\n",
        b"{\"seq\":1,\"prev\":\"x\"}\n",
        b"{\"seq\":18446744073709551615,\"prev\":\"\"}\n{\"seq\":0,\"prev\":\"\"}\n",
        b"\xff\xfe\x00{\"seq\":1}\n",
        b"{\"seq\":1,\"time\":\"\",\"prev\":\"0000000000000000000000000000000000000000000000000000000000000000\"}",
    ];
    for (i, bytes) in cases.iter().enumerate() {
        let f = dir.path().join(format!("g{i}.jsonl"));
        std::fs::write(&f, bytes).unwrap();
        let files = vec![f];
        let r = verify(&files);
        if i == 0 {
            assert_eq!(r.unwrap().records, 0);
        } else {
            assert!(
                matches!(r, Err(VerifyError::Broken { .. })),
                "case {i}: {r:?}"
            );
        }
        let mut q = mcp_gateway_layers::audit::Query::default();
        q.since = Some(SystemTime::UNIX_EPOCH);
        q.outcome = Some("-1".into());
        let mut out = Vec::new();
        let n = mcp_gateway_layers::audit::query(
            &files,
            &q,
            mcp_gateway_layers::audit::Output::Table,
            &mut out,
        )
        .unwrap();
        assert_eq!(n, 0, "case {i}");
    }
    // A head that is not one is an error, not a panic.
    let f = dir.path().join("h.jsonl");
    std::fs::write(&f, b"").unwrap();
    std::fs::write(FileSink::head_path(&f), b"garbage").unwrap();
    assert!(verify(&[f]).is_err());
}

/// Issue 22: records gained a `subject` field. A log written before (lines without it, as
/// this old line) still verifies once new records follow it, and `query` finds the old
/// records by agent and the new ones by agent or subject.
#[tokio::test]
async fn logs_from_before_the_subject_field_verify_and_query() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let old = r#"{"seq":1,"time":"2026-11-29T19:38:27.730929Z","event":"request","agent":"ci-bot","client_id":"ci-bot","route":"demo","http_method":"POST","method":"tools/call","tool":"echo","id":3,"outcome":"ok","status":200,"latency_us":207,"prev":"0000000000000000000000000000000000000000000000000000000000000000"}"#;
    std::fs::write(&log, format!("{old}\n")).unwrap();
    let sink = FileSink::open(&log).unwrap();
    let w = AuditWriter::spawn(sink, options(FsyncPolicy::Always, OnFull::Block, 8)).unwrap();
    let mut r = record(2);
    r.agent = Some("ci-bot".into());
    r.subject = Some("team-ci".into());
    let slot = w.reserve().await.unwrap();
    w.submit(slot, vec![r]).unwrap().await.unwrap();
    w.flush().await;
    let files = vec![log.clone()];
    let report = verify(&files).unwrap();
    assert_eq!(report.records, 2);
    assert_eq!(report.seqs, Some((1, 2)));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text
        .lines()
        .nth(1)
        .unwrap()
        .contains(r#""agent":"ci-bot","subject":"team-ci""#));
    let run = |q: &mcp_gateway_layers::audit::Query| {
        let mut out = Vec::new();
        let n = mcp_gateway_layers::audit::query(
            &files,
            q,
            mcp_gateway_layers::audit::Output::Json,
            &mut out,
        )
        .unwrap();
        (n, String::from_utf8(out).unwrap())
    };
    let mut by_agent = mcp_gateway_layers::audit::Query::default();
    by_agent.agent = Some("ci-bot".into());
    assert_eq!(run(&by_agent).0, 2);
    let mut by_subject = mcp_gateway_layers::audit::Query::default();
    by_subject.subject = Some("team-ci".into());
    let (n, out) = run(&by_subject);
    assert_eq!(n, 1);
    assert!(out.starts_with("{\"seq\":2,"), "{out}");
    let mut both = by_subject.clone();
    both.agent = Some("team-ci".into());
    assert_eq!(run(&both).0, 0);
}

/// Issue 22: `audit query`'s table is aligned whatever the length of its cells.
#[tokio::test]
async fn the_query_table_is_aligned() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let sink = FileSink::open(&path).unwrap();
    let w = AuditWriter::spawn(sink, options(FsyncPolicy::Always, OnFull::Block, 8)).unwrap();
    for (i, (agent, tool)) in [
        ("a", "t"),
        ("a-much-longer-agent-name-than-sixteen", "echo"),
        ("bot", "a_tool_with_a_very_long_name_indeed_yes"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut r = record(i as u64);
        r.agent = Some(agent.into());
        r.tool = Some(tool.into());
        let slot = w.reserve().await.unwrap();
        w.submit(slot, vec![r]).unwrap().await.unwrap();
    }
    w.flush().await;
    let mut out = Vec::new();
    let n = mcp_gateway_layers::audit::query(
        &[path],
        &mcp_gateway_layers::audit::Query::default(),
        mcp_gateway_layers::audit::Output::Table,
        &mut out,
    )
    .unwrap();
    assert_eq!(n, 3);
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    // Every column starts where its header does: the cell before it ends in a space there.
    let starts: Vec<usize> = [
        "EVENT", "AGENT", "SUBJECT", "ROUTE", "METHOD", "TARGET", "OUTCOME",
    ]
    .iter()
    .map(|h| lines[0].find(h).unwrap())
    .collect();
    for line in &lines[1..] {
        assert_eq!(line.len(), lines[0].len(), "{text}");
        for &s in &starts {
            assert_eq!(&line[s - 1..s], " ", "{text}");
            assert_ne!(&line[s..=s], " ", "{text}");
        }
    }
}
