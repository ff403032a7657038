//! Span export over OTLP/HTTP (protobuf), feature `telemetry-otlp`: an `opentelemetry_sdk`
//! span exporter that writes a batch of spans straight into the bytes of an
//! `ExportTraceServiceRequest` and POSTs them with this crate's own HTTP client
//! ([`AsClient`]), the batch processor `[telemetry]` builds over
//! it ([`batch_processor`]), and the flush at shutdown ([`shutdown`]).
//!
//! The encoding walks each [`SpanData`] once and writes the protobuf wire format directly: no
//! intermediate message structs and no copy of a span's strings. Attribute sizes are computed
//! before they are written; the length of each larger message (span, event, link, scope,
//! resource) is back-patched once its content is written. The output is what
//! `opentelemetry-proto`'s transform followed by `prost` encoding produces, byte for byte:
//! spans grouped by instrumentation scope in order of first appearance, fields in field-number
//! order, proto3 defaults left out.

use super::config::{TelemetryError, TelemetrySpec};
use super::TraceInjectLayer;
use crate::http_client::{AsClient, HttpError};
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, USER_AGENT};
use http::{HeaderMap, Method, Request, Uri};
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Retries after the first attempt, for answers that OTLP/HTTP says may be retried.
const MAX_RETRIES: u32 = 3;
/// The wait before the first retry; it doubles for each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between two attempts the gateway chooses itself.
const MAX_BACKOFF: Duration = Duration::from_millis(1600);
/// The longest wait a collector's `Retry-After` may ask for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Exports spans to an OTLP/HTTP collector as `application/x-protobuf`.
///
/// Each batch is one POST with the configured headers, bounded by the export timeout. A
/// collector's 429, 502, 503 or 504 answer and a failed connection are retried up to three
/// times with a growing backoff (honouring `Retry-After` in seconds) while the timeout allows;
/// any other non-2xx answer fails the export at once. A failed export is an error for the batch
/// processor and is logged once when exports start failing and once when they work again.
#[derive(Debug)]
pub struct OtlpHttpExporter {
    client: AsClient,
    runtime: tokio::runtime::Handle,
    url: Uri,
    headers: HeaderMap,
    timeout: Duration,
    encoder: Encoder,
    /// The last request's size: the next one's buffer starts this large.
    last_len: AtomicUsize,
    failing: AtomicBool,
    shut_down: AtomicBool,
}

impl OtlpHttpExporter {
    /// An exporter POSTing to `url` (the full `…/v1/traces` URL) with `headers`, each export
    /// taking at most `timeout`. Requests run on `runtime`: the batch processor calls the
    /// exporter from its own thread, outside the runtime.
    pub fn new(
        url: &str,
        headers: &[(String, String)],
        timeout: Duration,
        runtime: tokio::runtime::Handle,
    ) -> Result<Self, String> {
        let url: Uri = url
            .parse()
            .map_err(|e| format!("OTLP endpoint {url:?}: {e}"))?;
        let mut map = HeaderMap::new();
        map.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        map.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("mcp-gateway/", env!("CARGO_PKG_VERSION"))),
        );
        for (k, v) in headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("OTLP header {k:?} is not a valid header name"))?;
            let value = HeaderValue::from_str(v)
                .map_err(|_| format!("OTLP header {k:?} has a value that is not valid"))?;
            map.insert(name, value);
        }
        Ok(Self {
            client: AsClient::new(timeout),
            runtime,
            url,
            headers: map,
            timeout,
            encoder: Encoder::new(&Resource::builder_empty().build()),
            last_len: AtomicUsize::new(0),
            failing: AtomicBool::new(false),
            shut_down: AtomicBool::new(false),
        })
    }

    /// One POST of `body`, bounded by `budget`.
    async fn post(&self, body: Vec<u8>, budget: Duration) -> Result<(), Failure> {
        let mut req = Request::new(body);
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.url.clone();
        *req.headers_mut() = self.headers.clone();
        let client = self.client.clone();
        // Spawned on the runtime (the caller is the batch processor's thread) and awaited here.
        let answer = self
            .runtime
            .spawn(async move { tokio::time::timeout(budget, client.send(req)).await })
            .await;
        let answer = match answer {
            Ok(Ok(Ok(answer))) => answer,
            Ok(Ok(Err(HttpError::Timeout(_)))) | Ok(Err(_)) => {
                return Err(Failure::final_(OTelSdkError::Timeout(self.timeout)))
            }
            Ok(Ok(Err(e))) => {
                return Err(Failure {
                    error: self.failure(format_args!("{e}")),
                    retry: true,
                    retry_after: None,
                })
            }
            Err(e) => {
                return Err(Failure::final_(
                    self.failure(format_args!("the runtime did not run the export: {e}")),
                ))
            }
        };
        let status = answer.status();
        if status.is_success() {
            return Ok(());
        }
        let retry = matches!(status.as_u16(), 429 | 502 | 503 | 504);
        let retry_after = if matches!(status.as_u16(), 429 | 503) {
            answer
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER))
        } else {
            None
        };
        Err(Failure {
            error: self.failure(format_args!("the collector answered HTTP {status}")),
            retry,
            retry_after,
        })
    }

    fn failure(&self, why: std::fmt::Arguments<'_>) -> OTelSdkError {
        OTelSdkError::InternalFailure(format!("OTLP export to {}: {why}", self.url))
    }

    /// Logs the first failure of a run of failures, and the recovery after one.
    fn note(&self, result: &OTelSdkResult) {
        match result {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(target: "mcp_gateway::telemetry", endpoint = %self.url, "span export works again");
                }
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(target: "mcp_gateway::telemetry", error = %e, "span export failing; spans are dropped until it works again");
                }
            }
        }
    }

    /// Encodes `batch` into a buffer sized after the previous request.
    fn encode(&self, batch: &[SpanData]) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.last_len.load(Ordering::Relaxed) + 256);
        self.encoder.encode(batch, &mut body);
        self.last_len.store(body.len(), Ordering::Relaxed);
        body
    }

    async fn export_batch(&self, batch: &[SpanData]) -> OTelSdkResult {
        let started = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 0;
        loop {
            // Encoded again for a retry (rare) rather than copied for every first attempt.
            let body = self.encode(batch);
            let budget = self.timeout.saturating_sub(started.elapsed());
            let failure = match self.post(body, budget).await {
                Ok(()) => return Ok(()),
                Err(f) => f,
            };
            if !failure.retry || attempt >= MAX_RETRIES {
                return Err(failure.error);
            }
            let wait = match failure.retry_after {
                Some(asked) => asked.max(backoff),
                None => backoff + jitter(),
            };
            if started.elapsed() + wait >= self.timeout {
                return Err(failure.error);
            }
            let _ = self.runtime.spawn(tokio::time::sleep(wait)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            attempt += 1;
        }
    }
}

/// The batch processor of checked `[telemetry]` exporting to `url` (the full `…/v1/traces`
/// URL), and the resource its spans are exported with (`service.name`, `service.version`).
/// Spans are batched on the processor's own thread and sent with this crate's HTTP client on
/// the current Tokio runtime, which must exist.
pub fn batch_processor(
    url: &str,
    spec: &TelemetrySpec,
) -> Result<(BatchSpanProcessor, Resource), TelemetryError> {
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| TelemetryError("no async runtime to export spans from".into()))?;
    let exporter = OtlpHttpExporter::new(url, &spec.headers, spec.export_timeout, runtime)
        .map_err(TelemetryError)?;
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(spec.max_queue)
                .with_scheduled_delay(Duration::from_millis(500))
                .build(),
        )
        .build();
    let resource = Resource::builder()
        .with_service_name(spec.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    Ok((processor, resource))
}

/// Exports the spans still queued in `layer` and stops its exporter, waiting at most
/// `timeout`. Runs the blocking flush off the runtime's threads, which must keep driving the
/// export itself.
pub async fn shutdown(layer: &TraceInjectLayer, timeout: Duration) {
    let layer = layer.clone();
    let done = tokio::task::spawn_blocking(move || layer.shutdown(timeout)).await;
    match done {
        Ok(Ok(())) => tracing::debug!(target: "mcp_gateway::telemetry", "spans flushed"),
        Ok(Err(e)) => {
            tracing::warn!(target: "mcp_gateway::telemetry", error = %e, "spans not all exported at shutdown");
        }
        Err(e) => tracing::warn!(target: "mcp_gateway::telemetry", error = %e, "span flush failed"),
    }
}

/// Up to 100 ms, so that gateways retrying together spread out.
fn jitter() -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    Duration::from_millis(u64::from(nanos % 101))
}

/// Why one attempt failed, and whether another may follow.
struct Failure {
    error: OTelSdkError,
    retry: bool,
    retry_after: Option<Duration>,
}

impl Failure {
    fn final_(error: OTelSdkError) -> Self {
        Self {
            error,
            retry: false,
            retry_after: None,
        }
    }
}

impl SpanExporter for OtlpHttpExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if self.shut_down.load(Ordering::Relaxed) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        if batch.is_empty() {
            return Ok(());
        }
        let result = self.export_batch(&batch).await;
        self.note(&result);
        result
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        if self.shut_down.swap(true, Ordering::Relaxed) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.encoder = Encoder::new(resource);
    }
}

/// Writes `ExportTraceServiceRequest`s for one resource, whose encoding is kept ready.
#[derive(Debug, Clone)]
pub struct Encoder {
    /// `ResourceSpans.resource` (field 1), tag and length included.
    resource: Vec<u8>,
    /// `ResourceSpans.schema_url` (field 3), empty without a schema URL.
    schema_url: Vec<u8>,
}

impl Encoder {
    /// An encoder for spans of `resource`.
    pub fn new(resource: &Resource) -> Self {
        let mut r = Vec::new();
        let m = open(&mut r, 1, 1);
        for (k, v) in resource.iter() {
            put_key_value(&mut r, 1, k.as_str(), v);
        }
        close(&mut r, m);
        let mut schema_url = Vec::new();
        if let Some(s) = resource.schema_url().filter(|s| !s.is_empty()) {
            put_str(&mut schema_url, 3, s);
        }
        Self {
            resource: r,
            schema_url,
        }
    }

    /// Appends the `ExportTraceServiceRequest` carrying `spans` to `out`: one `ResourceSpans`
    /// with a `ScopeSpans` per instrumentation scope, in order of first appearance.
    pub fn encode(&self, spans: &[SpanData], out: &mut Vec<u8>) {
        let rs = open(out, 1, 3);
        out.extend_from_slice(&self.resource);
        match spans.first() {
            None => {}
            Some(first)
                if spans.iter().all(|s| {
                    same_scope(&s.instrumentation_scope, &first.instrumentation_scope)
                }) =>
            {
                put_scope_spans(out, &first.instrumentation_scope, spans.iter());
            }
            Some(_) => {
                // Several scopes: each span's scope index, then one ScopeSpans per scope.
                let mut scopes: Vec<&InstrumentationScope> = Vec::new();
                let mut which: Vec<usize> = Vec::with_capacity(spans.len());
                for s in spans {
                    let scope = &s.instrumentation_scope;
                    let i = match scopes.iter().position(|known| same_scope(known, scope)) {
                        Some(i) => i,
                        None => {
                            scopes.push(scope);
                            scopes.len() - 1
                        }
                    };
                    which.push(i);
                }
                for (i, scope) in scopes.iter().enumerate() {
                    let mine = spans.iter().zip(&which).filter(|(_, w)| **w == i);
                    put_scope_spans(out, scope, mine.map(|(s, _)| s));
                }
            }
        }
        out.extend_from_slice(&self.schema_url);
        close(out, rs);
    }
}

/// Whether two scopes are the same, as the SDK's grouping decides; the common case compares
/// no attributes and allocates nothing.
fn same_scope(a: &InstrumentationScope, b: &InstrumentationScope) -> bool {
    if a.name() != b.name() || a.version() != b.version() || a.schema_url() != b.schema_url() {
        return false;
    }
    let (mut x, mut y) = (a.attributes(), b.attributes());
    match (x.next(), y.next()) {
        (None, None) => true,
        _ => a == b,
    }
}

/// `ScopeSpans` (field 2 of `ResourceSpans`).
fn put_scope_spans<'a>(
    out: &mut Vec<u8>,
    scope: &InstrumentationScope,
    spans: impl Iterator<Item = &'a SpanData>,
) {
    let ss = open(out, 2, 3);
    let sc = open(out, 1, 1);
    put_str(out, 1, scope.name());
    put_str(out, 2, scope.version().unwrap_or_default());
    for kv in scope.attributes() {
        put_key_value(out, 3, kv.key.as_str(), &kv.value);
    }
    close(out, sc);
    for span in spans {
        put_span(out, span);
    }
    put_str(out, 3, scope.schema_url().unwrap_or_default());
    close(out, ss);
}

/// `Span` (field 2 of `ScopeSpans`).
fn put_span(out: &mut Vec<u8>, span: &SpanData) {
    let m = open(out, 2, 2);
    let cx = &span.span_context;
    put_bytes(out, 1, &cx.trace_id().to_bytes());
    put_bytes(out, 2, &cx.span_id().to_bytes());
    put_trace_state(out, 3, cx);
    if span.parent_span_id != SpanId::INVALID {
        put_bytes(out, 4, &span.parent_span_id.to_bytes());
    }
    put_str(out, 5, &span.name);
    put_uint(out, 6, kind(&span.span_kind));
    put_fixed64(out, 7, nanos(span.start_time));
    put_fixed64(out, 8, nanos(span.end_time));
    for kv in &span.attributes {
        put_key_value(out, 9, kv.key.as_str(), &kv.value);
    }
    put_uint(out, 10, u64::from(span.dropped_attributes_count));
    for event in span.events.iter() {
        let e = open(out, 11, 1);
        put_fixed64(out, 1, nanos(event.timestamp));
        put_str(out, 2, &event.name);
        put_attributes(out, 3, &event.attributes);
        put_uint(out, 4, u64::from(event.dropped_attributes_count));
        close(out, e);
    }
    put_uint(out, 12, u64::from(span.events.dropped_count));
    for link in span.links.iter() {
        let l = open(out, 13, 1);
        let lcx = &link.span_context;
        put_bytes(out, 1, &lcx.trace_id().to_bytes());
        put_bytes(out, 2, &lcx.span_id().to_bytes());
        put_trace_state(out, 3, lcx);
        put_attributes(out, 4, &link.attributes);
        put_uint(out, 5, u64::from(link.dropped_attributes_count));
        put_fixed32(out, 6, flags(lcx.is_remote(), lcx));
        close(out, l);
    }
    put_uint(out, 14, u64::from(span.links.dropped_count));
    // Status is always present, even when unset.
    let (code, message) = match &span.status {
        Status::Unset => (0, ""),
        Status::Ok => (1, ""),
        Status::Error { description } => (2, description.as_ref()),
    };
    let status_len = str_field_len(message) + if code == 0 { 0 } else { 2 };
    put_len_tag(out, 15, status_len);
    put_str(out, 2, message);
    put_uint(out, 3, code);
    put_fixed32(out, 16, flags(span.parent_span_is_remote, cx));
    close(out, m);
}

fn put_attributes(out: &mut Vec<u8>, field: u32, attributes: &[KeyValue]) {
    for kv in attributes {
        put_key_value(out, field, kv.key.as_str(), &kv.value);
    }
}

/// OTLP's span kind numbers.
fn kind(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

/// The W3C trace flags, with OTLP's bits saying whether the parent (or a link's context) is
/// remote: "has is-remote" (0x100) always, "is remote" (0x200) when it is.
fn flags(remote: bool, cx: &SpanContext) -> u32 {
    let base = u32::from(cx.trace_flags().to_u8()) | 0x100;
    if remote {
        base | 0x200
    } else {
        base
    }
}

/// Nanoseconds since the Unix epoch; 0 for a time before it.
fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The W3C `tracestate` header value (`k=v,k=v`), written without building it first.
fn put_trace_state(out: &mut Vec<u8>, field: u32, cx: &SpanContext) {
    let ts = cx.trace_state();
    let mut len = 0;
    let mut n = 0;
    for (k, v) in ts {
        len += k.len() + 1 + v.len();
        n += 1;
    }
    if n == 0 {
        return;
    }
    len += n - 1;
    put_len_tag(out, field, len);
    for (i, (k, v)) in ts.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_bytes());
    }
}

// ---- attributes: sizes computed, then written ----

/// A `KeyValue` message as field `field`.
fn put_key_value(out: &mut Vec<u8>, field: u32, key: &str, value: &Value) {
    let (any_len, array_len) = any_value_len(value);
    let len = str_field_len(key) + 1 + varint_len(any_len as u64) + any_len;
    put_len_tag(out, field, len);
    put_str(out, 1, key);
    put_len_tag(out, 2, any_len);
    put_any_value(out, value, array_len);
}

/// The length of `value` as an `AnyValue`, and of its `ArrayValue` for an array.
fn any_value_len(value: &Value) -> (usize, usize) {
    match value {
        Value::Bool(_) => (2, 0),
        Value::I64(i) => (1 + varint_len(*i as u64), 0),
        Value::F64(_) => (9, 0),
        Value::String(s) => (1 + len_delimited(s.as_str().len()), 0),
        Value::Array(a) => {
            let n = array_len(a);
            (1 + len_delimited(n), n)
        }
        // A kind of value newer than this encoder: sent as its text.
        other => (1 + len_delimited(other.as_str().len()), 0),
    }
}

/// The length of an `ArrayValue`'s content: each element an `AnyValue` in field 1.
fn array_len(array: &Array) -> usize {
    match array {
        // Each element: tag, length (one byte), oneof tag, value.
        Array::Bool(v) => v.len() * 4,
        Array::I64(v) => v.iter().map(|i| 3 + varint_len(*i as u64)).sum(),
        Array::F64(v) => v.len() * 11,
        Array::String(v) => v
            .iter()
            .map(|s| len_delimited(1 + len_delimited(s.as_str().len())))
            .map(|n| 1 + n)
            .sum(),
        // A kind of array newer than this encoder: sent empty.
        _ => 0,
    }
}

/// The content of an `AnyValue`; `array_len` is its `ArrayValue`'s length for an array.
fn put_any_value(out: &mut Vec<u8>, value: &Value, array_len: usize) {
    match value {
        Value::Bool(b) => {
            out.push(key(2, VARINT) as u8);
            out.push(u8::from(*b));
        }
        Value::I64(i) => {
            out.push(key(3, VARINT) as u8);
            put_varint(out, *i as u64);
        }
        Value::F64(f) => {
            out.push(key(4, FIXED64) as u8);
            out.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        Value::String(s) => put_str_always(out, 1, s.as_str()),
        Value::Array(a) => {
            put_len_tag(out, 5, array_len);
            match a {
                Array::Bool(v) => {
                    for b in v {
                        out.extend_from_slice(&[key(1, LEN) as u8, 2, key(2, VARINT) as u8]);
                        out.push(u8::from(*b));
                    }
                }
                Array::I64(v) => {
                    for i in v {
                        let n = varint_len(*i as u64);
                        out.extend_from_slice(&[key(1, LEN) as u8, 1 + n as u8]);
                        out.push(key(3, VARINT) as u8);
                        put_varint(out, *i as u64);
                    }
                }
                Array::F64(v) => {
                    for f in v {
                        out.extend_from_slice(&[key(1, LEN) as u8, 9, key(4, FIXED64) as u8]);
                        out.extend_from_slice(&f.to_bits().to_le_bytes());
                    }
                }
                Array::String(v) => {
                    for s in v {
                        put_len_tag(out, 1, 1 + len_delimited(s.as_str().len()));
                        put_str_always(out, 1, s.as_str());
                    }
                }
                _ => {}
            }
        }
        other => put_str_always(out, 1, &other.as_str()),
    }
}

// ---- wire format ----

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

/// A field's key: its number and wire type.
const fn key(field: u32, wire: u32) -> u64 {
    ((field << 3) | wire) as u64
}

fn varint_len(v: u64) -> usize {
    // 1 byte per started group of 7 bits; 0 takes one byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// The bytes a length-delimited value of `n` bytes takes after its key.
fn len_delimited(n: usize) -> usize {
    varint_len(n as u64) + n
}

/// The bytes a string field takes, key included; proto3 leaves an empty string out.
fn str_field_len(s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        1 + len_delimited(s.len())
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_len_tag(out: &mut Vec<u8>, field: u32, len: usize) {
    put_varint(out, key(field, LEN));
    put_varint(out, len as u64);
}

/// A string field, left out when empty (proto3).
fn put_str(out: &mut Vec<u8>, field: u32, s: &str) {
    if !s.is_empty() {
        put_str_always(out, field, s);
    }
}

/// A string field written even when empty (a oneof member).
fn put_str_always(out: &mut Vec<u8>, field: u32, s: &str) {
    put_len_tag(out, field, s.len());
    out.extend_from_slice(s.as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    put_len_tag(out, field, b.len());
    out.extend_from_slice(b);
}

/// A varint field, left out when 0 (proto3).
fn put_uint(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        put_varint(out, key(field, VARINT));
        put_varint(out, v);
    }
}

/// A fixed64 field, left out when 0 (proto3).
fn put_fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        put_varint(out, key(field, FIXED64));
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// A fixed32 field, left out when 0 (proto3).
fn put_fixed32(out: &mut Vec<u8>, field: u32, v: u32) {
    if v != 0 {
        put_varint(out, key(field, FIXED32));
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// A message being written whose length is not known yet: where its length goes, and how
/// many bytes were set aside for it.
#[derive(Clone, Copy)]
struct Open {
    at: usize,
    reserved: usize,
}

/// Starts a message in field `field`, setting aside `reserved` bytes for its length (a guess:
/// the content moves if the length needs another size).
fn open(out: &mut Vec<u8>, field: u32, reserved: usize) -> Open {
    put_varint(out, key(field, LEN));
    let at = out.len();
    out.resize(at + reserved, 0);
    Open { at, reserved }
}

/// Ends the message begun with `m`: writes its length, moving the content if the length takes
/// more or fewer bytes than were set aside.
fn close(out: &mut Vec<u8>, m: Open) {
    let start = m.at + m.reserved;
    let len = out.len() - start;
    let need = varint_len(len as u64);
    if need > m.reserved {
        let more = need - m.reserved;
        let end = out.len();
        out.resize(end + more, 0);
        out.copy_within(start..end, start + more);
    } else if need < m.reserved {
        let less = m.reserved - need;
        let end = out.len();
        out.copy_within(start..end, start - less);
        out.truncate(end - less);
    }
    let mut v = len as u64;
    for b in &mut out[m.at..m.at + need] {
        *b = (v as u8 & 0x7f) | 0x80;
        v >>= 7;
    }
    out[m.at + need - 1] &= 0x7f;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use opentelemetry::trace::{Event, Link, SpanId, TraceFlags, TraceId, TraceState};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use prost::Message;
    use std::borrow::Cow;

    fn at(nanos: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(nanos)
    }

    fn context(trace: u8, span: u8, flags: u8, remote: bool, state: &str) -> SpanContext {
        SpanContext::new(
            TraceId::from_bytes([trace; 16]),
            SpanId::from_bytes([span; 8]),
            TraceFlags::new(flags),
            remote,
            state.parse::<TraceState>().unwrap(),
        )
    }

    /// Every kind of attribute value, edge values included.
    fn every_value() -> Vec<KeyValue> {
        vec![
            KeyValue::new("bool.true", true),
            KeyValue::new("bool.false", false),
            KeyValue::new("int", 42_i64),
            KeyValue::new("int.zero", 0_i64),
            KeyValue::new("int.negative", -7_i64),
            KeyValue::new("int.max", i64::MAX),
            KeyValue::new("int.min", i64::MIN),
            KeyValue::new("float", 1.5_f64),
            KeyValue::new("float.zero", 0.0_f64),
            KeyValue::new("float.negative", -2.25e300_f64),
            KeyValue::new("string", "héllo"),
            KeyValue::new("string.empty", ""),
            KeyValue::new("string.owned", String::from("owned")),
            KeyValue::new("", "an empty key"),
            KeyValue::new("array.bool", Value::Array(vec![true, false, true].into())),
            KeyValue::new(
                "array.int",
                Value::Array(vec![1_i64, -1, 0, i64::MAX, 300].into()),
            ),
            KeyValue::new(
                "array.float",
                Value::Array(vec![0.0_f64, -1.5, 1e-9].into()),
            ),
            KeyValue::new(
                "array.string",
                Value::Array(
                    vec![
                        opentelemetry::StringValue::from("a"),
                        "".into(),
                        "x".repeat(200).into(),
                    ]
                    .into(),
                ),
            ),
            KeyValue::new("array.empty", Value::Array(Vec::<bool>::new().into())),
            KeyValue::new(
                "array.string.empty",
                Value::Array(Vec::<opentelemetry::StringValue>::new().into()),
            ),
        ]
    }

    fn scope_a() -> InstrumentationScope {
        InstrumentationScope::builder("mcp-gateway")
            .with_version("1.2.3")
            .with_schema_url("https://opentelemetry.io/schemas/1.30.0")
            .with_attributes([KeyValue::new("scope.attr", true), KeyValue::new("n", 3_i64)])
            .build()
    }

    fn scope_b() -> InstrumentationScope {
        InstrumentationScope::builder("another").build()
    }

    #[allow(clippy::too_many_arguments)]
    fn span(
        name: &'static str,
        kind: SpanKind,
        cx: SpanContext,
        parent: u8,
        parent_remote: bool,
        status: Status,
        scope: InstrumentationScope,
    ) -> SpanData {
        SpanData {
            span_context: cx,
            parent_span_id: if parent == 0 {
                SpanId::INVALID
            } else {
                SpanId::from_bytes([parent; 8])
            },
            parent_span_is_remote: parent_remote,
            span_kind: kind,
            name: Cow::Borrowed(name),
            start_time: at(1_700_000_000_000_000_001),
            end_time: at(1_700_000_000_123_456_789),
            attributes: vec![KeyValue::new("mcp.method.name", "tools/call")],
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: scope,
        }
    }

    /// Spans covering every field: each kind, root/local/remote parents, a tracestate, events,
    /// links, each status, dropped counts, two scopes interleaved, sizes around the length
    /// boundaries.
    fn batch() -> Vec<SpanData> {
        let mut full = span(
            "tools/call echo",
            SpanKind::Server,
            context(0xab, 1, 1, false, "vendor=1,other=x-y"),
            0,
            false,
            Status::error("boom: the upstream failed"),
            scope_a(),
        );
        full.attributes = every_value();
        full.dropped_attributes_count = 3;
        let mut events = SpanEvents::default();
        events.events = vec![
            Event::new("exception", at(1_700_000_000_000_000_500), every_value(), 2),
            Event::new("bare", at(5), Vec::new(), 0),
            // An event longer than 127 bytes: its length takes two bytes.
            Event::new(
                "long",
                at(6),
                vec![KeyValue::new("text", "y".repeat(300))],
                0,
            ),
        ];
        events.dropped_count = 4;
        full.events = events;
        let mut links = SpanLinks::default();
        links.links = vec![
            Link::new(
                context(0x11, 0x22, 1, true, "k=v"),
                vec![KeyValue::new("link.attr", 9_i64)],
                1,
            ),
            Link::new(context(0x33, 0x44, 0, false, ""), Vec::new(), 0),
        ];
        links.dropped_count = 5;
        full.links = links;

        let mut unset = span(
            "",
            SpanKind::Internal,
            context(0xab, 3, 0, true, ""),
            1,
            true,
            Status::Unset,
            scope_a(),
        );
        // Times at and before the epoch are 0, left out.
        unset.start_time = UNIX_EPOCH;
        unset.end_time = UNIX_EPOCH - Duration::from_secs(1);
        unset.attributes.clear();

        let mut huge = span(
            "huge",
            SpanKind::Producer,
            context(7, 8, 1, false, ""),
            9,
            false,
            Status::Ok,
            scope_a(),
        );
        // A span over 16383 bytes: its length takes three bytes.
        huge.attributes
            .push(KeyValue::new("big", "z".repeat(20_000)));

        vec![
            full,
            span(
                "tools/call echo",
                SpanKind::Client,
                context(0xab, 2, 1, false, "vendor=1"),
                1,
                false,
                Status::Ok,
                scope_b(),
            ),
            unset,
            span(
                "consume",
                SpanKind::Consumer,
                context(5, 6, 1, false, ""),
                4,
                true,
                Status::error(""),
                scope_b(),
            ),
            huge,
        ]
    }

    fn resource() -> Resource {
        Resource::builder_empty()
            .with_schema_url(
                [
                    KeyValue::new("service.name", "gw"),
                    KeyValue::new("service.version", "0.1.0"),
                    KeyValue::new("host.cores", 2_i64),
                ],
                "https://opentelemetry.io/schemas/1.30.0",
            )
            .build()
    }

    /// What `opentelemetry-proto`'s transform makes of the same spans.
    fn reference(spans: &[SpanData], resource: &Resource) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(
                spans.to_vec(),
                &ResourceAttributesWithSchema::from(resource),
            ),
        }
    }

    fn ours(spans: &[SpanData], resource: &Resource) -> Vec<u8> {
        let mut out = Vec::new();
        Encoder::new(resource).encode(spans, &mut out);
        out
    }

    fn assert_same(spans: &[SpanData], resource: &Resource) {
        let want = reference(spans, resource);
        let got = ours(spans, resource);
        let decoded = ExportTraceServiceRequest::decode(got.as_slice()).unwrap();
        assert_eq!(decoded, want);
        assert_eq!(got, want.encode_to_vec(), "byte for byte");
    }

    #[test]
    fn a_batch_with_every_field_encodes_as_the_reference_transform_does() {
        let spans = batch();
        assert_same(&spans, &resource());
        // The fixture covers what it claims.
        let decoded =
            ExportTraceServiceRequest::decode(ours(&spans, &resource()).as_slice()).unwrap();
        let rs = &decoded.resource_spans[0];
        assert_eq!(rs.scope_spans.len(), 2, "grouped by scope");
        assert_eq!(rs.scope_spans[0].spans.len(), 3);
        assert_eq!(rs.scope_spans[1].spans.len(), 2);
        let full = &rs.scope_spans[0].spans[0];
        assert_eq!(full.trace_state, "vendor=1,other=x-y");
        assert_eq!(full.flags, 0x101, "sampled, local parent");
        assert_eq!(rs.scope_spans[0].spans[1].flags, 0x300, "remote parent");
        assert_eq!(full.links[0].flags, 0x301, "remote link context");
        assert_eq!(
            full.status.as_ref().unwrap().message,
            "boom: the upstream failed"
        );
        assert_eq!(full.attributes.len(), every_value().len());
        assert!(rs.scope_spans[0].spans[2].encoded_len() > 16_383);
    }

    #[test]
    fn each_span_alone_encodes_as_the_reference_transform_does() {
        for s in batch() {
            assert_same(&[s], &resource());
        }
    }

    #[test]
    fn an_empty_batch_and_an_empty_resource() {
        assert_same(&[], &resource());
        assert_same(&[], &Resource::builder_empty().build());
        assert_same(&batch(), &Resource::builder_empty().build());
        // What the gateway itself sends.
        let gateway = Resource::builder()
            .with_service_name("mcp-gateway")
            .with_attribute(KeyValue::new("service.version", "0.1.0"))
            .build();
        assert_same(&batch(), &gateway);
    }

    #[test]
    fn scopes_differing_only_in_attributes_are_apart() {
        let plain = InstrumentationScope::builder("mcp-gateway")
            .with_version("1.2.3")
            .with_schema_url("https://opentelemetry.io/schemas/1.30.0")
            .build();
        let mut spans = batch();
        spans[1].instrumentation_scope = plain.clone();
        spans[3].instrumentation_scope = scope_a();
        spans[4].instrumentation_scope = plain;
        assert_same(&spans, &resource());
        assert!(!same_scope(&scope_a(), &spans[1].instrumentation_scope));
        assert!(same_scope(&scope_a(), &scope_a()));
    }

    #[test]
    fn varints_and_back_patched_lengths_match_prost() {
        for v in [
            0_u64,
            1,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            u64::MAX,
        ] {
            let mut ours = Vec::new();
            put_varint(&mut ours, v);
            let mut theirs = Vec::new();
            prost::encoding::encode_varint(v, &mut theirs);
            assert_eq!(ours, theirs, "{v}");
            assert_eq!(varint_len(v), theirs.len(), "{v}");
        }
        for reserved in 1..=3 {
            for len in [0_usize, 1, 127, 128, 16_383, 16_384, 2_097_152] {
                let mut out = vec![0xee];
                let m = open(&mut out, 2, reserved);
                out.extend((0..len).map(|i| i as u8));
                out.push(0);
                out.pop();
                close(&mut out, m);
                let mut want = vec![0xee, 0x12];
                prost::encoding::encode_varint(len as u64, &mut want);
                want.extend((0..len).map(|i| i as u8));
                assert_eq!(out, want, "reserved {reserved}, length {len}");
            }
        }
    }
}
