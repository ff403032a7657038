//! `bench-load`: an MCP-speaking load generator.
//!
//! ```text
//! bench-load --url http://127.0.0.1:8080/mcp/bench [--closed | --rate R]
//!            [--connections 32] [--duration 10s] [--warmup 2s]
//!            [--era legacy|modern] [--size 200] [--format json|sse]
//!            [--tool payload] [--token T] [--threads 1] [--label NAME]
//! ```
//!
//! Each connection is one HTTP/1.1 keep-alive connection. In the legacy era it first runs
//! `initialize` and `notifications/initialized` and then sends every call with its live
//! `Mcp-Session-Id`; in the modern era (2026-07-28) every call is sessionless with `_meta`
//! and the `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name` headers.
//!
//! - Closed loop (`--closed`, the default): each connection sends its next call when the
//!   previous answer is complete. Reports throughput.
//! - Open loop (`--rate R`): calls are due at a fixed total rate spread over the connections;
//!   latency is measured from when a call was *due*, not when it was sent, so a stalled
//!   server is charged for the calls it delayed (no coordinated omission).
//!
//! Prints one JSON object: counts, throughput, and latency percentiles in microseconds from an
//! HDR histogram.

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{header, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Era {
    Legacy,
    Modern,
}

#[derive(Clone, Debug)]
struct Opts {
    url: Uri,
    rate: Option<f64>,
    connections: usize,
    duration: Duration,
    warmup: Duration,
    era: Era,
    size: usize,
    sse: bool,
    tool: String,
    token: Option<String>,
    threads: usize,
    label: String,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let (n, mul) = if let Some(ms) = s.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(sec) = s.strip_suffix('s') {
        (sec, 1.0)
    } else {
        (s, 1.0)
    };
    n.parse::<f64>()
        .map(|v| Duration::from_secs_f64(v * mul))
        .map_err(|e| format!("bad duration {s:?}: {e}"))
}

fn opts() -> Result<Opts, String> {
    let mut o = Opts {
        url: "http://127.0.0.1:8080/mcp/bench"
            .parse()
            .map_err(|e| format!("{e}"))?,
        rate: None,
        connections: 32,
        duration: Duration::from_secs(10),
        warmup: Duration::from_secs(2),
        era: Era::Legacy,
        size: 200,
        sse: false,
        tool: "payload".into(),
        token: None,
        threads: 1,
        label: String::new(),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--url" => o.url = val()?.parse().map_err(|e| format!("--url: {e}"))?,
            "--closed" => o.rate = None,
            "--rate" => o.rate = Some(val()?.parse().map_err(|e| format!("--rate: {e}"))?),
            "--connections" => o.connections = val()?.parse().map_err(|e| format!("{e}"))?,
            "--duration" => o.duration = parse_secs(&val()?)?,
            "--warmup" => o.warmup = parse_secs(&val()?)?,
            "--era" => {
                o.era = match val()?.as_str() {
                    "legacy" => Era::Legacy,
                    "modern" => Era::Modern,
                    other => return Err(format!("--era: {other:?} is not legacy or modern")),
                }
            }
            "--size" => o.size = val()?.parse().map_err(|e| format!("{e}"))?,
            "--format" => o.sse = val()? == "sse",
            "--tool" => o.tool = val()?,
            "--token" => o.token = Some(val()?),
            "--threads" => o.threads = val()?.parse().map_err(|e| format!("{e}"))?,
            "--label" => o.label = val()?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if o.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    Ok(o)
}

struct Conn {
    send: SendRequest<Full<Bytes>>,
    session: Option<HeaderValue>,
}

fn base_request(o: &Opts, body: Bytes) -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = o.url.path_and_query().map_or_else(
        || Uri::from_static("/"),
        |pq| pq.as_str().parse().unwrap_or_default(),
    );
    let h = req.headers_mut();
    if let Some(a) = o.url.authority() {
        if let Ok(v) = HeaderValue::from_str(a.as_str()) {
            h.insert(header::HOST, v);
        }
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::ACCEPT,
        HeaderValue::from_static("application/json, text/event-stream"),
    );
    if let Some(t) = &o.token {
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {t}")) {
            h.insert(header::AUTHORIZATION, v);
        }
    }
    req
}

async fn connect(o: &Opts) -> Result<Conn, String> {
    let host = o.url.host().ok_or("URL has no host")?;
    let port = o.url.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let mut c = Conn {
        send,
        session: None,
    };
    if o.era == Era::Legacy {
        let init = br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench-load","version":"0"}}}"#;
        let resp = c
            .send
            .send_request(base_request(o, Bytes::from_static(init)))
            .await
            .map_err(|e| format!("initialize: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("initialize answered {}", resp.status()));
        }
        c.session = resp.headers().get("mcp-session-id").cloned();
        resp.into_body()
            .collect()
            .await
            .map_err(|e| format!("initialize body: {e}"))?;
        let mut req = base_request(
            o,
            Bytes::from_static(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#),
        );
        add_session(&mut req, &c);
        let resp = c
            .send
            .send_request(req)
            .await
            .map_err(|e| format!("initialized: {e}"))?;
        resp.into_body()
            .collect()
            .await
            .map_err(|e| format!("initialized body: {e}"))?;
    }
    Ok(c)
}

fn add_session(req: &mut Request<Full<Bytes>>, c: &Conn) {
    let h = req.headers_mut();
    if let Some(s) = &c.session {
        h.insert("mcp-session-id", s.clone());
    }
    h.insert(
        "mcp-protocol-version",
        HeaderValue::from_static("2025-11-25"),
    );
}

fn call_body(o: &Opts, id: usize) -> Bytes {
    let format = if o.sse { "sse" } else { "json" };
    let args = format!(r#"{{"size":{},"format":"{format}"}}"#, o.size);
    let tool = serde_json::to_string(&o.tool).unwrap_or_else(|_| "\"payload\"".into());
    Bytes::from(match o.era {
        Era::Legacy => format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":{tool},"arguments":{args}}}}}"#
        ),
        Era::Modern => format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":{tool},"arguments":{args},"_meta":{{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{{"name":"bench-load","version":"0"}},"io.modelcontextprotocol/clientCapabilities":{{}}}}}}}}"#
        ),
    })
}

fn call_request(o: &Opts, c: &Conn, body: &Bytes) -> Request<Full<Bytes>> {
    let mut req = base_request(o, body.clone());
    match o.era {
        Era::Legacy => add_session(&mut req, c),
        Era::Modern => {
            let h = req.headers_mut();
            h.insert(
                "mcp-protocol-version",
                HeaderValue::from_static("2026-07-28"),
            );
            h.insert("mcp-method", HeaderValue::from_static("tools/call"));
            if let Ok(v) = HeaderValue::from_str(&o.tool) {
                h.insert("mcp-name", v);
            }
        }
    }
    req
}

/// One call: Ok(bytes received) when the answer is a complete 200 with a body.
async fn call(o: &Opts, c: &mut Conn, body: &Bytes) -> Result<usize, String> {
    c.send.ready().await.map_err(|e| format!("{e}"))?;
    let resp = c
        .send
        .send_request(call_request(o, c, body))
        .await
        .map_err(|e| format!("{e}"))?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{e}"))?
        .to_bytes();
    if status != 200 || bytes.is_empty() {
        return Err(format!("status {status}, {} bytes", bytes.len()));
    }
    Ok(bytes.len())
}

#[derive(Default)]
struct Tally {
    ok: u64,
    all: u64,
    errors: u64,
    bytes: u64,
    first_error: Option<String>,
}

async fn worker(
    o: Arc<Opts>,
    idx: usize,
    start: Instant,
    measure_from: Instant,
    end: Instant,
) -> (Histogram<u64>, Tally) {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("valid bounds");
    let mut tally = Tally::default();
    let body = call_body(&o, idx + 1);
    let mut conn: Option<Conn> = None;
    let interval = o
        .rate
        .map(|r| Duration::from_secs_f64(o.connections as f64 / r));
    let offset = o.rate.map(|r| Duration::from_secs_f64(idx as f64 / r));
    let mut k: u32 = 0;
    loop {
        let due = match (interval, offset) {
            (Some(iv), Some(off)) => {
                let due = start + off + iv * k;
                k += 1;
                if due >= end {
                    break;
                }
                // The runtime's timer ticks in whole milliseconds: sleep to just before the
                // due time, then yield until it, so calls leave on time (the load generator
                // has a core of its own) and latency is not inflated by timer lateness.
                if let Some(early) = due.checked_sub(Duration::from_millis(2)) {
                    tokio::time::sleep_until(early).await;
                }
                while Instant::now() < due {
                    tokio::task::yield_now().await;
                }
                due
            }
            _ => {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                now
            }
        };
        if conn.is_none() {
            match connect(&o).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tally.errors += 1;
                    tally.first_error.get_or_insert(e);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let res = call(&o, c, &body).await;
        let done = Instant::now();
        let measured = due >= measure_from;
        match res {
            Ok(n) => {
                tally.all += 1;
                if measured {
                    tally.ok += 1;
                    tally.bytes += n as u64;
                    let us =
                        u64::try_from(done.duration_since(due).as_micros()).unwrap_or(u64::MAX);
                    let _ = hist.record(us.clamp(1, 120_000_000));
                }
            }
            Err(e) => {
                if measured {
                    tally.errors += 1;
                    tally.first_error.get_or_insert(e);
                }
                conn = None;
            }
        }
    }
    (hist, tally)
}

fn main() {
    let o = match opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench-load: {e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(o.threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    let o = Arc::new(o);
    let (hist, tally, secs) = rt.block_on(async {
        let start = Instant::now() + Duration::from_millis(200);
        let measure_from = start + o.warmup;
        let end = measure_from + o.duration;
        let tasks: Vec<_> = (0..o.connections)
            .map(|i| tokio::spawn(worker(o.clone(), i, start, measure_from, end)))
            .collect();
        let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("valid bounds");
        let mut total = Tally::default();
        for t in tasks {
            if let Ok((h, tally)) = t.await {
                let _ = hist.add(&h);
                total.ok += tally.ok;
                total.all += tally.all;
                total.errors += tally.errors;
                total.bytes += tally.bytes;
                if total.first_error.is_none() {
                    total.first_error = tally.first_error;
                }
            }
        }
        // Calls due before the end may finish after it; count the time they took.
        let secs = Instant::now()
            .duration_since(measure_from)
            .as_secs_f64()
            .max(o.duration.as_secs_f64());
        (hist, total, secs)
    });
    let pct = |q: f64| hist.value_at_quantile(q);
    let percentiles: Vec<(f64, u64)> = [50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.99, 100.0]
        .iter()
        .map(|p| (*p, pct(p / 100.0)))
        .collect();
    let out = serde_json::json!({
        "label": o.label,
        "url": o.url.to_string(),
        "mode": if o.rate.is_some() { "open" } else { "closed" },
        "rate": o.rate,
        "connections": o.connections,
        "era": if o.era == Era::Legacy { "legacy" } else { "modern" },
        "size": o.size,
        "format": if o.sse { "sse" } else { "json" },
        "seconds": secs,
        "requests": tally.ok,
        "all_requests": tally.all,
        "errors": tally.errors,
        "first_error": tally.first_error,
        "bytes": tally.bytes,
        "throughput": tally.ok as f64 / secs,
        "latency_us": {
            "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "p999": pct(0.999),
            "max": hist.max(), "mean": hist.mean(),
        },
        "percentiles": percentiles,
    });
    println!("{out}");
}
