use super::record::{AuditRecord, Event};
use super::writer::{AuditWriter, FsyncPolicy, OnFull, Slot};
use crate::govern::{Decision, Govern, Governed, Refusal};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use mcp_gateway_core::exchange::Exchange;
use mcp_gateway_core::jsonrpc::{ErrorCode, JsonRpcError};
use mcp_gateway_core::observe::{EndGate, Ending, Head, Observer};
use mcp_gateway_core::outcome::{outcome, Outcome};
use mcp_gateway_core::session::handle_of;
use mcp_gateway_core::McpRequest;
use std::sync::Arc;
use tokio::sync::oneshot;

/// The deciding part of [`AuditLog`]: takes a place in the audit queue for each request
/// (waiting for one, or refusing with 503 when the queue is full, as [`OnFull`] says) and
/// registers the observer that writes its record when the exchange ends. A handle on the
/// layer's writer.
#[derive(Clone, Debug)]
pub struct Governor {
    pub(crate) writer: Arc<AuditWriter>,
}

/// Records every exchange that passes through it: the [`Governed`] skeleton over the audit
/// [`Governor`]. See the [module docs](super).
pub type AuditLog<S> = Governed<Governor, S>;

/// What the record of one exchange is made from, gathered as the answer streams.
struct Auditor {
    writer: Arc<AuditWriter>,
    exchange: Exchange,
    slot: Option<Slot>,
    http_method: Method,
    /// The session id the answer carried (only its handle is ever recorded).
    new_session: Option<String>,
    ack: Option<oneshot::Receiver<()>>,
    /// With `fsync = "always"`: the record to append if the answer is cut off.
    cut: Option<AuditRecord>,
}

impl Auditor {
    /// Builds the records and queues them (once).
    fn submit(&mut self, end: &Ending) {
        let Some(slot) = self.slot.take() else {
            return;
        };
        // The session named by its handle, derived once for every layer that names it.
        let snap = self.exchange.update(|r| {
            r.session_handle();
            r.clone()
        });
        if snap.audited_elsewhere {
            // Its record is another exchange's; the place in the queue is given back.
            drop(slot);
            return;
        }
        let mut r = AuditRecord::new(
            self.exchange.started_at(),
            Event::Request,
            self.http_method.as_str(),
        );
        let latency = self.exchange.started().elapsed();
        r.latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        r.status = end.status.as_u16();
        if let Some(p) = &snap.principal {
            // The agent is the one the limits, the metrics, the spans and the access log
            // name: `agent_key` (the client id, else the subject). The subject is its own
            // field.
            r.agent = Some(p.agent_key().to_owned());
            r.subject = Some(p.subject().to_owned());
            r.client_id = p.client_id().map(str::to_owned);
        }
        r.route = snap.route.as_deref().map(str::to_owned);
        r.instance = snap.instance.as_deref().map(str::to_owned);
        r.tokens_in = snap.tokens_in;
        r.tokens_out = snap.tokens_out;
        r.trace_id.clone_from(&snap.trace_id);
        r.span_id.clone_from(&snap.span_id);
        r.client = snap.client;
        r.notes.clone_from(&snap.notes);
        // Sessions are named by their handle, never by an id someone could present:
        // SessionAffinity writes the handle to the record; a call it did not see (refused
        // before it, or no session layer in the route) is named by the handle of the id it
        // carried — the same handle.
        r.session = snap.session.as_deref().map(str::to_owned);
        if let Some(view) = &snap.request {
            describe(&mut r, view);
        }
        r.error_code = end.error_code;
        r.denied_by = snap.denial.as_ref().map(|d| d.by);
        r.outcome = outcome(&snap, end);
        if self.gates() {
            let mut cut = r.clone();
            cut.event = Event::AnswerCut;
            cut.outcome = Outcome::Unavailable;
            cut.error_code = Some(i64::from(ErrorCode::UNAVAILABLE.0));
            cut.arguments = None;
            self.cut = Some(cut);
        }
        let mut records = Vec::with_capacity(2);
        let ok = end.status.is_success();
        if let (Some(id), true, Some("initialize")) = (&self.new_session, ok, r.method.as_deref()) {
            r.session = Some(handle_of(id));
            let mut start = r.clone();
            start.event = Event::SessionStart;
            start.arguments = None;
            records.push(r);
            records.push(start);
        } else if ok && self.http_method == Method::DELETE && r.session.is_some() {
            let mut end = r.clone();
            end.event = Event::SessionEnd;
            records.push(r);
            records.push(end);
        } else {
            records.push(r);
        }
        self.ack = self.writer.submit(slot, records);
    }
}

/// Method, target, id and arguments of the request.
fn describe(r: &mut AuditRecord, view: &McpRequest) {
    let Some(parsed) = view.parsed() else {
        return;
    };
    if parsed.is_batch() {
        r.method = Some("batch".into());
        return;
    }
    let Some(msg) = parsed.single() else {
        return;
    };
    r.method = msg.method().map(str::to_owned);
    r.id = msg.id().map(|id| id.as_raw().to_owned());
    match msg.method() {
        Some("tools/call") => {
            r.tool = msg.name().map(str::to_owned);
            r.arguments = msg
                .arguments_span()
                .and_then(|s| view.body().map(|b| b.slice(s)));
        }
        Some("prompts/get") => r.prompt = msg.name().map(str::to_owned),
        Some(m) if m.starts_with("resources/") => r.resource = msg.uri().map(str::to_owned),
        _ => {}
    }
}

impl Observer for Auditor {
    fn on_head(&mut self, head: &Head<'_>) {
        self.new_session = head
            .headers
            .get(mcp_gateway_core::headers::MCP_SESSION_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
    }

    fn on_end(&mut self, end: &Ending) {
        self.submit(end);
    }

    fn gates(&self) -> bool {
        self.writer.options().fsync == FsyncPolicy::Always
    }

    fn gate(&mut self) -> Option<EndGate> {
        let ack = self.ack.take()?;
        let limit = self.writer.options().write_timeout;
        let cut = self.cut.take();
        let writer = self.writer.clone();
        Some(Box::pin(async move {
            match tokio::time::timeout(limit, ack).await {
                Ok(Ok(())) => Ok(()),
                // The record is not (yet) durable: the client must not hold a complete answer
                // as if it were. The record stays queued and is written once the sink recovers,
                // followed by one that says the answer was cut off.
                Ok(Err(_)) | Err(_) => {
                    if let Some(cut) = cut {
                        writer.append(vec![cut]);
                    }
                    tracing::warn!(target: "mcp_gateway::audit", timeout = ?limit, "audit record not synced within write_timeout: the answer was cut off");
                    Err("the audit record of this answer could not be written in time".into())
                }
            }
        }))
    }
}

impl Governor {
    fn auditor(&self, slot: Slot, http_method: Method, x: &Exchange) -> Auditor {
        Auditor {
            writer: self.writer.clone(),
            exchange: x.clone(),
            slot: Some(slot),
            http_method,
            new_session: None,
            ack: None,
            cut: None,
        }
    }

    /// The refusal when the queue is full and `on_full = "refuse"` (or stayed full for
    /// `write_timeout`): 503, -32054.
    fn full(&self) -> Refusal {
        self.writer.dropped(
            1,
            "the audit queue is full; the request was refused with 503",
        );
        Self::refusal("the audit log cannot keep up; retry shortly")
    }

    /// The refusal when the sink failed and did not recover within `write_timeout`: 503,
    /// -32054.
    fn unavailable(&self) -> Refusal {
        self.writer.dropped(
            1,
            "the audit sink cannot write; the request was refused with 503",
        );
        Self::refusal("the audit log cannot be written; retry later")
    }

    fn refusal(message: &str) -> Refusal {
        let err = JsonRpcError::new(ErrorCode::UNAVAILABLE, message);
        Refusal::new(StatusCode::SERVICE_UNAVAILABLE, err).header(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("1"),
        )
    }
}

impl Govern for Governor {
    fn enter(&self, head: &http::request::Parts, x: &Exchange) -> Decision<()> {
        // Registered first of all observers, so its end hook runs last: the record sees
        // what every inner layer settled (tokens counted, say).
        let healthy = self.writer.healthy();
        if healthy {
            if let Some(slot) = self.writer.try_reserve() {
                x.observe(self.auditor(slot, head.method.clone(), x));
                return Decision::Pass(());
            }
            if self.writer.options().on_full == OnFull::Refuse {
                return Decision::Refuse(self.full());
            }
        }
        // The sink is failing, or the queue is full and `on_full = "block"`: wait for it to
        // recover and for room — at most `write_timeout`, then refuse before the answer starts
        // (a call let through now would have its answer held behind a record that cannot be
        // written).
        let this = self.clone();
        let x = x.clone();
        let method = head.method.clone();
        Decision::Wait(Box::pin(async move {
            let writer = &this.writer;
            let limit = writer.options().write_timeout;
            let place = async {
                writer.wait_healthy().await;
                writer.reserve().await
            };
            match tokio::time::timeout(limit, place).await {
                Ok(Some(slot)) => {
                    x.observe(this.auditor(slot, method, &x));
                    Ok(())
                }
                Ok(None) => Err(this.full()),
                Err(_) if writer.healthy() => Err(this.full()),
                Err(_) => Err(this.unavailable()),
            }
        }))
    }

    fn admit(&self, req: Request<Full<Bytes>>, _x: &Exchange) -> Decision<Request<Full<Bytes>>> {
        Decision::Pass(req)
    }
}
