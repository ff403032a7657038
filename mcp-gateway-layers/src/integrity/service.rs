use super::approvals::{Approvals, PendingCall, PrincipalView, Verdict};
use super::canon;
use super::config::{ApprovalRule, IntegritySpec};
use super::pins::{Pin, Pins};
use super::{Kind, Mode};
use crate::govern::{Decision, Govern, Governed, Refusal};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use mcp_gateway_core::exchange::{Denial, DenialKind, Exchange};
use mcp_gateway_core::jsonrpc::{ErrorCode, JsonRpcError, RequestId};
use mcp_gateway_core::message::MessageKind;
use mcp_gateway_core::observe::{Head, ObservedMessage, Observer};
use mcp_gateway_core::{Era, McpRequest};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// The key of the input request by which the gateway asks a 2026-07-28 client to approve.
pub const APPROVAL_INPUT_KEY: &str = "mcp-gateway/approval";
/// How a `requestState` minted by the gateway starts.
const STATE_PREFIX: &str = "mcp-gateway-approval:";
/// How long an unpinned upstream's first list may take to complete, under
/// `trust_on_first_use`, before later definitions count as new.
const LEARNING_WINDOW: Duration = Duration::from_secs(300);

/// Tool integrity for calls through it: the [`Governed`] skeleton over the integrity
/// [`Governor`]. See the [module docs](super).
pub type ToolIntegrity<S> = Governed<Governor, super::held::HeldService<S>>;

/// A definition the gateway saw listed.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    pub(crate) digest: String,
    pub(crate) definition: Value,
    /// The digest last logged as a finding (one warning per change, however often listed).
    reported: Option<String>,
}

/// (upstream, kind, finding, mode).
type FindingKey = (String, &'static str, &'static str, &'static str);

/// Counters shown on `/metrics`.
#[derive(Default, Debug)]
pub(crate) struct Metrics {
    /// (upstream, kind, finding, mode) → definitions found changed or unpinned in lists.
    findings: Mutex<BTreeMap<FindingKey, u64>>,
    /// (upstream, reason) → calls refused.
    refused: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// (upstream, decision) → approval decisions.
    decisions: Mutex<BTreeMap<(String, &'static str), u64>>,
    pins_written: AtomicU64,
}

fn bump<K: Ord>(m: &Mutex<BTreeMap<K, u64>>, k: K) {
    *m.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(k)
        .or_default() += 1;
}

/// What outlives a reload: the definitions seen, the calls held, the counters.
#[derive(Default, Debug)]
pub(crate) struct State {
    /// By upstream and kind, then by name (a list is checked under one lookup).
    pub(crate) observed: Mutex<HashMap<(String, Kind), HashMap<String, Seen>>>,
    /// Upstreams whose first complete list is being pinned (`trust_on_first_use`).
    learning: Mutex<HashMap<(String, Kind), Instant>>,
    pub(crate) approvals: Approvals,
    pub(crate) metrics: Metrics,
    /// Legacy sessions whose client declared elicitation at `initialize` (by the session id
    /// the client sends), so that a held call can ask it.
    elicits: Mutex<HashSet<String>>,
}

/// The most legacy sessions remembered as able to answer elicitation (beyond it, an arbitrary
/// half is forgotten, and their held calls wait on the admin listener alone). A session is
/// forgotten when its client ends it (DELETE).
const MAX_ELICITING_SESSIONS: usize = 100_000;

/// The integrity settings and state one layer (and every route it serves) shares.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) spec: IntegritySpec,
    pub(crate) pins: RwLock<Pins>,
    pub(crate) state: Arc<State>,
    /// The upstream this layer serves, when it serves one (else the record's route).
    pub(crate) upstream: Option<Arc<str>>,
    /// Seals 2026-07-28 approval states so that any replica holding the key opens them.
    pub(crate) sealing: Option<Sealing>,
}

/// The key approval states are sealed with and the store that spends them, shared with
/// SessionAffinity: a state opens on any replica holding the key, and with a shared store
/// (Redis) it is spent on all of them. Without the `sessions` feature there is none, and
/// states live in the replica that minted them.
#[derive(Clone)]
pub(crate) struct Sealing {
    #[cfg(feature = "sessions")]
    pub(crate) keys: Arc<crate::sessions::Keyring>,
    #[cfg(feature = "sessions")]
    pub(crate) store: Arc<dyn crate::sessions::SessionStore>,
}

impl std::fmt::Debug for Sealing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealing").finish_non_exhaustive()
    }
}

/// The scope sealed approval states are bound to (they never open as session ids).
#[cfg(feature = "sessions")]
const SEAL_SCOPE: &[u8] = b"mcp-gateway/approval";
/// How a sealed state starts, after [`STATE_PREFIX`].
const SEALED: &str = "s.";

/// The deciding part of [`ToolIntegrity`]: checks list results against the pins (as the
/// response streams) and calls against what the lists showed, and holds calls that an
/// `[[approvals]]` rule names until they are decided. A handle on the layer's state.
#[derive(Clone, Debug)]
pub struct Governor {
    pub(crate) inner: Arc<Inner>,
}

/// How a definition compares with its pin.
#[derive(Debug, PartialEq, Eq)]
enum Verdict2 {
    Pinned,
    /// The upstream is not pinned (and nothing is learnt of it).
    Unpinned,
    Changed {
        pinned: String,
        current: String,
    },
    New {
        current: Option<String>,
    },
}

impl Inner {
    fn mode(&self, upstream: &str) -> Mode {
        self.spec
            .pins
            .as_ref()
            .map_or(Mode::Off, |p| p.mode_of(upstream))
    }

    fn pins(&self) -> std::sync::RwLockReadGuard<'_, Pins> {
        self.pins.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The digest of `upstream`'s `name` as last listed.
    fn seen_digest(&self, upstream: &str, kind: Kind, name: &str) -> Option<String> {
        lock(&self.state.observed)
            .get(&(upstream.to_owned(), kind))
            .and_then(|m| m.get(name))
            .map(|s| s.digest.clone())
    }

    /// How `upstream`'s `name` stands: by its pin and the definition last listed.
    fn verdict(&self, upstream: &str, kind: Kind, name: &str) -> Verdict2 {
        let seen = self.seen_digest(upstream, kind, name);
        let pins = self.pins();
        let Some(up) = pins.upstreams.get(upstream) else {
            return Verdict2::Unpinned;
        };
        match (up.of(kind).get(name), seen) {
            (Some(pin), Some(current)) if pin.digest != current => Verdict2::Changed {
                pinned: pin.digest.clone(),
                current,
            },
            (Some(_), _) => Verdict2::Pinned,
            (None, current) => Verdict2::New { current },
        }
    }

    /// The digest of the definition a call would use: as last listed, else as pinned.
    fn definition_digest(&self, upstream: &str, kind: Kind, name: &str) -> String {
        let seen = self.seen_digest(upstream, kind, name);
        seen.or_else(|| {
            self.pins()
                .upstreams
                .get(upstream)
                .and_then(|u| u.of(kind).get(name))
                .map(|p| p.digest.clone())
        })
        .unwrap_or_else(|| "unknown".to_owned())
    }

    fn rule(&self, upstream: &str, tool: &str) -> Option<&ApprovalRule> {
        self.spec.approvals.iter().find(|r| r.holds(upstream, tool))
    }

    fn refuse(
        &self,
        x: &Exchange,
        upstream: &str,
        reason: &'static str,
        message: String,
        data: Value,
    ) -> Refusal {
        bump(&self.state.metrics.refused, (upstream.to_owned(), reason));
        // A JSON-RPC error in a 200 answer, as a server answers a call it refuses: SDK
        // clients hand it to the agent with its code and data (an HTTP error status would
        // reach them as a transport failure).
        x.deny(Denial::new(
            "integrity",
            DenialKind::Forbidden,
            StatusCode::OK,
            reason,
        ));
        Refusal::new(
            StatusCode::OK,
            JsonRpcError::new(ErrorCode::FORBIDDEN, message).with_data(data),
        )
    }

    /// The refusal of a call to a changed or unpinned definition, in `block` mode.
    fn check_call(&self, x: &Exchange, upstream: &str, kind: Kind, name: &str) -> Option<Refusal> {
        if self.mode(upstream) != Mode::Block {
            return None;
        }
        match self.verdict(upstream, kind, name) {
            Verdict2::Pinned | Verdict2::Unpinned => None,
            Verdict2::Changed { pinned, current } => Some(self.refuse(
                x,
                upstream,
                "definition_changed",
                format!(
                    "the definition of {} {name:?} changed since it was approved; it is blocked until an operator approves the change",
                    kind.as_str()
                ),
                json!({"reason": "definition_changed", "upstream": upstream, kind.as_str(): name,
                       "pinned_digest": pinned, "current_digest": current}),
            )),
            Verdict2::New { current } => {
                // An upstream whose first list is being learnt has no quarantine yet.
                if self.learning(upstream, kind) {
                    return None;
                }
                Some(self.refuse(
                    x,
                    upstream,
                    "definition_unpinned",
                    format!(
                        "{} {name:?} is not approved on this upstream; it is quarantined until an operator approves it",
                        kind.as_str()
                    ),
                    json!({"reason": "definition_unpinned", "upstream": upstream, kind.as_str(): name,
                           "current_digest": current}),
                ))
            }
        }
    }

    fn learning(&self, upstream: &str, kind: Kind) -> bool {
        self.state
            .learning
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(upstream.to_owned(), kind))
            .is_some_and(|t| *t > Instant::now())
    }
}

fn note(x: &Exchange, value: Value) {
    x.update(
        |r| match r.notes.iter_mut().find(|(k, _)| *k == "integrity") {
            Some((_, Value::Object(old))) => {
                if let Value::Object(new) = value {
                    old.extend(new);
                }
            }
            _ => r.notes.push(("integrity", value)),
        },
    );
}

fn principal_of(x: &Exchange) -> PrincipalView {
    x.update(|r| match &r.principal {
        Some(p) => PrincipalView {
            agent: p.agent_key().to_owned(),
            subject: Some(p.subject().to_owned()),
        },
        None => PrincipalView {
            agent: "anonymous".to_owned(),
            subject: None,
        },
    })
}

type Req = Request<Full<Bytes>>;

impl Govern for Governor {
    fn admit(&self, req: Req, x: &Exchange) -> Decision<Req> {
        let inner = &self.inner;
        let Some(view) = McpRequest::from_extensions(req.extensions()).cloned() else {
            return Decision::Pass(req);
        };
        let session = view.protocol().session_id.as_deref().map(str::to_owned);
        let Some(parsed) = view.parsed() else {
            if req.method() == http::Method::DELETE {
                if let Some(sid) = &session {
                    lock(&inner.state.elicits).remove(sid);
                }
            }
            return Decision::Pass(req);
        };
        let upstream: Arc<str> = match &inner.upstream {
            Some(u) => u.clone(),
            None => match x.update(|r| r.route.clone()) {
                Some(r) => r,
                None => {
                    // Nothing names the upstream: nothing can be checked. Said loudly, once.
                    static SAID: std::sync::Once = std::sync::Once::new();
                    SAID.call_once(|| {
                        tracing::error!(target: "mcp_gateway::integrity", "ToolIntegrity: a request with no route and no ToolIntegrityLayer::upstream(NAME): its lists and calls pass unchecked");
                    });
                    return Decision::Pass(req);
                }
            },
        };
        let batch = parsed.is_batch();
        for msg in parsed.messages() {
            // A client's answer to the gateway's own elicitation: decided here, never
            // forwarded (the upstream did not ask).
            if matches!(
                msg.kind(),
                MessageKind::Response | MessageKind::ErrorResponse
            ) {
                let ours = msg
                    .id()
                    .filter(|id| id.is_string())
                    .and_then(|id| serde_json::from_str::<String>(id.as_raw()).ok())
                    .and_then(|id| id.strip_prefix(STATE_PREFIX).map(str::to_owned));
                if let Some(id) = ours {
                    answered(inner, &view, msg, &id, session.as_deref(), x);
                    return Decision::Refuse(Refusal::accepted());
                }
                continue;
            }
            if msg.method() == Some("initialize") {
                let elicits = view
                    .body()
                    .and_then(|b| serde_json::from_slice::<Value>(b).ok())
                    .is_some_and(|v| v.pointer("/params/capabilities/elicitation").is_some());
                if elicits {
                    x.observe(InitWatch {
                        inner: inner.clone(),
                    });
                }
                continue;
            }
            let (kind, listing) = match msg.method() {
                Some("tools/list") => (Kind::Tool, true),
                Some("prompts/list") => (Kind::Prompt, true),
                Some("tools/call") => (Kind::Tool, false),
                Some("prompts/get") => (Kind::Prompt, false),
                _ => continue,
            };
            if listing {
                let watched = inner.mode(&upstream) != Mode::Off
                    || inner.spec.approvals.iter().any(|r| r.upstream == *upstream);
                if let (Some(id), true) = (msg.id(), watched) {
                    x.observe(ListCheck {
                        inner: inner.clone(),
                        id: id.clone(),
                        upstream: upstream.clone(),
                        kind,
                        exchange: x.clone(),
                        // Only `block` changes lists; otherwise a JSON list streams through
                        // untouched and is read on the side.
                        removes: inner.mode(&upstream) == Mode::Block,
                    });
                }
                continue;
            }
            let name = msg.name().unwrap_or("");
            if let Some(r) = inner.check_call(x, &upstream, kind, name) {
                return Decision::Refuse(r);
            }
            if kind != Kind::Tool {
                continue;
            }
            let Some(rule) = inner.rule(&upstream, name) else {
                continue;
            };
            if batch {
                return Decision::Refuse(inner.refuse(
                    x,
                    &upstream,
                    "approval_required",
                    format!("tool {name:?} needs a person's approval; call it on its own, not in a batch"),
                    json!({"reason": "approval_required", "upstream": &*upstream, "tool": name}),
                ));
            }
            let rule = rule.clone();
            return gate(inner.clone(), req, x, &upstream, name, &rule);
        }
        Decision::Pass(req)
    }
}

/// A call an approval rule holds: asked of the client (2026-07-28, with elicitation), or
/// held for a decision on the admin listener.
fn gate(
    inner: Arc<Inner>,
    req: Req,
    x: &Exchange,
    upstream: &str,
    tool: &str,
    rule: &ApprovalRule,
) -> Decision<Req> {
    let Some(view) = McpRequest::from_extensions(req.extensions()).cloned() else {
        return Decision::Pass(req);
    };
    let body: Value = view
        .body()
        .and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or(Value::Null);
    let params = body.get("params");
    let arguments = params
        .and_then(|p| p.get("arguments"))
        .cloned()
        .unwrap_or_else(|| json!({}));
    let arguments_digest = canon::digest(&arguments);
    let definition_digest = inner.definition_digest(upstream, Kind::Tool, tool);
    let principal = principal_of(x);
    let modern = view.protocol().era == Era::Modern;
    let call = PendingCall {
        id: String::new(),
        upstream: upstream.to_owned(),
        tool: tool.to_owned(),
        arguments,
        arguments_digest,
        definition_digest,
        principal,
        requested_at: crate::audit::record::format_time(std::time::SystemTime::now()),
        expires_at: String::new(),
        session: None,
    };
    // A 2026-07-28 retry of a call the gateway asked about.
    let state = params
        .and_then(|p| p.get("requestState"))
        .and_then(Value::as_str)
        .and_then(|s| s.strip_prefix(STATE_PREFIX));
    if let (true, Some(id)) = (modern, state) {
        return retried(inner, req, x, &view, body.clone(), id, &call, rule.timeout);
    }
    let elicits = rule.ask_client
        && modern
        && params
            .and_then(|p| p.get("_meta"))
            .and_then(|m| m.get("io.modelcontextprotocol/clientCapabilities"))
            .and_then(|c| c.get("elicitation"))
            .is_some();
    let legacy_asks = rule.ask_client
        && !modern
        && view
            .protocol()
            .session_id
            .as_deref()
            .is_some_and(|sid| lock(&inner.state.elicits).contains(sid))
        && req
            .headers()
            .get(http::header::ACCEPT)
            .and_then(|a| a.to_str().ok())
            .is_some_and(|a| a.contains("text/event-stream"));
    if legacy_asks {
        let mut call = call;
        call.session = view.protocol().session_id.as_deref().map(str::to_owned);
        let with_mode = view
            .protocol()
            .version
            .as_deref()
            .is_some_and(|v| v >= "2025-11-25");
        return hold_asking(inner, req, x, call, rule, with_mode);
    }
    if elicits {
        let id = match mint(&inner, &call) {
            Some(sealed) => sealed,
            None => inner.state.approvals.ask(call.clone(), rule.timeout),
        };
        bump(
            &inner.state.metrics.decisions,
            (upstream.to_owned(), "asked"),
        );
        let audited = match id.strip_prefix(SEALED) {
            Some(sealed) => canon::digest_bytes(sealed.as_bytes()),
            None => id.clone(),
        };
        note(
            x,
            json!({"approval": {"id": audited, "decision": "asked", "arguments_digest": call.arguments_digest,
                                "definition_digest": call.definition_digest}}),
        );
        return Decision::Refuse(Refusal::answer(input_required(&call, &id)));
    }
    hold(inner, req, x, call, rule)
}

/// The `input_required` result asking a 2026-07-28 client to approve `call`.
fn input_required(call: &PendingCall, id: &str) -> Value {
    json!({
        "resultType": "input_required",
        "inputRequests": {
            APPROVAL_INPUT_KEY: {"method": "elicitation/create", "params": elicit_params(call, true)}
        },
        "requestState": format!("{STATE_PREFIX}{id}"),
    })
}

/// The elicitation that asks for approval of `call`: the tool, the exact arguments, the
/// digests, and one boolean to set. `mode` is sent to clients of 2025-11-25 and later.
fn elicit_params(call: &PendingCall, with_mode: bool) -> Value {
    let message = format!(
        "The gateway needs your approval to call tool {:?} on {:?} with these exact arguments: {}\n(definition {}, arguments {})",
        call.tool,
        call.upstream,
        String::from_utf8_lossy(&canon::canonical(&call.arguments)),
        call.definition_digest,
        call.arguments_digest,
    );
    let mut params = json!({
        "message": message,
        "requestedSchema": {
            "type": "object",
            "properties": {
                "approve": {"type": "boolean", "title": "Approve this call", "default": false}
            },
            "required": ["approve"]
        }
    });
    if with_mode {
        params["mode"] = json!("form");
    }
    params
}

/// Whether an elicitation answer approves: an accept with `approve: true`.
fn approves(answer: &Value) -> bool {
    answer.get("action").and_then(Value::as_str) == Some("accept")
        && answer.pointer("/content/approve").and_then(Value::as_bool) == Some(true)
}

use crate::lock;

/// A 2026-07-28 retry carrying the client's answer: approved only when it is the same
/// principal, the same arguments and the same definition, within the rule's timeout, once.
#[allow(clippy::too_many_arguments)]
fn retried(
    inner: Arc<Inner>,
    req: Req,
    x: &Exchange,
    view: &McpRequest,
    body: Value,
    id: &str,
    call: &PendingCall,
    timeout: Duration,
) -> Decision<Req> {
    let presented = match id.strip_prefix(SEALED) {
        Some(sealed) => open(&inner, sealed, timeout),
        None => inner
            .state
            .approvals
            .take_asked(id)
            .map(|asked| Presented {
                principal: agent_digest(&asked.principal.agent),
                upstream: asked.upstream,
                tool: asked.tool,
                arguments_digest: asked.arguments_digest,
                definition_digest: asked.definition_digest,
                spend: None,
            })
            .ok_or("it is unknown, used already, or expired"),
    };
    let asked = match presented {
        Ok(p) => p,
        Err(why) => return invalid(&inner, x, call, why),
    };
    if asked.principal != agent_digest(&call.principal.agent) {
        return invalid(&inner, x, call, "it was issued to another principal");
    }
    if asked.tool != call.tool || asked.upstream != call.upstream {
        return invalid(&inner, x, call, "it was issued for another tool");
    }
    if asked.arguments_digest != call.arguments_digest {
        return invalid(&inner, x, call, "it was issued for other arguments");
    }
    if asked.definition_digest != call.definition_digest {
        let upstream = call.upstream.as_str();
        return Decision::Refuse(inner.refuse(
            x,
            upstream,
            "definition_changed",
            "the tool's definition changed while the approval was asked; call it again".into(),
            json!({"reason": "definition_changed", "upstream": upstream, "tool": call.tool,
                   "asked_digest": asked.definition_digest, "current_digest": call.definition_digest}),
        ));
    }
    let Some(spend) = asked.spend else {
        return conclude(&inner, req, x, view, body, id, call);
    };
    // A sealed state is spent in the store the replicas share: the first to present it wins.
    let (x, view, id, call) = (x.clone(), view.clone(), id.to_owned(), call.clone());
    Decision::Wait(Box::pin(async move {
        let decided = match spend.await {
            Ok(true) => conclude(&inner, req, &x, &view, body, &id, &call),
            Ok(false) => invalid(&inner, &x, &call, "it was used already"),
            Err(e) => {
                tracing::warn!(target: "mcp_gateway::integrity", error = %e, "approval state: the store could not spend it; refused");
                invalid(&inner, &x, &call, "the gateway could not record its use")
            }
        };
        match decided {
            Decision::Pass(r) => Ok(r),
            Decision::Refuse(r) => Err(r),
            Decision::Wait(w) => w.await,
        }
    }))
}

/// The spending of a sealed state: true the first time, on any replica sharing the store.
type Spend = std::pin::Pin<Box<dyn std::future::Future<Output = Result<bool, String>> + Send>>;

/// An approval state as presented: what it was asked for, and (sealed) how to spend it.
struct Presented {
    principal: u64,
    upstream: String,
    tool: String,
    arguments_digest: String,
    definition_digest: String,
    /// Spends a sealed state in the shared store: true the first time.
    spend: Option<Spend>,
}

/// A digest of an agent, as states are bound to it.
fn agent_digest(agent: &str) -> u64 {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(agent.as_bytes());
    let mut w = [0u8; 8];
    w.copy_from_slice(&d[..8]);
    u64::from_be_bytes(w)
}

#[cfg(feature = "sessions")]
fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}

/// A sealed approval state for `call`, when the layer seals them.
fn mint(inner: &Inner, call: &PendingCall) -> Option<String> {
    #[cfg(feature = "sessions")]
    if let Some(s) = &inner.sealing {
        let claims = crate::sessions::Claims {
            instance: 0,
            issued_ms: now_ms(),
            principal: agent_digest(&call.principal.agent),
            upstream: format!(
                "{}\n{}\n{}\n{}",
                call.upstream, call.tool, call.arguments_digest, call.definition_digest
            )
            .into(),
        };
        match s.keys.seal(&claims, SEAL_SCOPE) {
            Ok((text, _)) => return Some(format!("{SEALED}{text}")),
            Err(e) => {
                tracing::warn!(target: "mcp_gateway::integrity", error = %e, "approval state not sealed; kept in this replica")
            }
        }
    }
    let _ = (inner, call);
    None
}

/// Opens a sealed state: what it was asked for, and the spending of it.
fn open(inner: &Inner, sealed: &str, timeout: Duration) -> Result<Presented, &'static str> {
    #[cfg(feature = "sessions")]
    if let Some(s) = &inner.sealing {
        let (claims, nonce) = s
            .keys
            .open(sealed.as_bytes(), SEAL_SCOPE)
            .map_err(|_| "it is not one this gateway issued")?;
        let expires_ms = claims
            .issued_ms
            .saturating_add(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        let now = now_ms();
        if now >= expires_ms {
            return Err("it expired");
        }
        let mut parts = claims.upstream.split('\n').map(str::to_owned);
        let mut next = || parts.next().unwrap_or_default();
        let (upstream, tool, arguments_digest, definition_digest) =
            (next(), next(), next(), next());
        let store = s.store.clone();
        let handle = crate::sessions::SessionHandle(nonce);
        let spend = Box::pin(async move {
            let u = crate::sessions::Use::new(now, None, expires_ms);
            store.claim(handle, u).await.map_err(|e| e.to_string())
        });
        return Ok(Presented {
            principal: claims.principal,
            upstream,
            tool,
            arguments_digest,
            definition_digest,
            spend: Some(spend),
        });
    }
    let _ = (inner, sealed, timeout);
    Err("it is not one this gateway issued")
}

/// The refusal of a state that does not hold.
fn invalid(inner: &Inner, x: &Exchange, call: &PendingCall, why: &str) -> Decision<Req> {
    let upstream = call.upstream.as_str();
    bump(
        &inner.state.metrics.refused,
        (upstream.to_owned(), "approval_invalid"),
    );
    x.deny(Denial::new(
        "integrity",
        DenialKind::BadRequest,
        StatusCode::OK,
        "approval_invalid",
    ));
    Decision::Refuse(Refusal::new(
        StatusCode::OK,
        JsonRpcError::new(
            ErrorCode::INVALID_PARAMS,
            format!("requestState refused: {why}; call the tool again without it to be asked anew"),
        )
        .with_data(json!({"reason": "approval_invalid", "upstream": upstream, "tool": call.tool})),
    ))
}

/// The client's answer to a state that holds: approved (the call goes on, without the
/// gateway's state) or denied.
fn conclude(
    inner: &Inner,
    req: Req,
    x: &Exchange,
    view: &McpRequest,
    mut body: Value,
    id: &str,
    call: &PendingCall,
) -> Decision<Req> {
    let upstream = call.upstream.as_str();
    // The id as audited: a sealed state is named by its digest, never by itself.
    let id = match id.strip_prefix(SEALED) {
        Some(sealed) => canon::digest_bytes(sealed.as_bytes()),
        None => id.to_owned(),
    };
    let answer = body
        .pointer(&format!(
            "/params/inputResponses/{}",
            APPROVAL_INPUT_KEY.replace('/', "~1")
        ))
        .cloned()
        .unwrap_or(Value::Null);
    let approved = approves(&answer);
    let decision = if approved { "approved" } else { "denied" };
    bump(
        &inner.state.metrics.decisions,
        (upstream.to_owned(), decision),
    );
    note(
        x,
        json!({"approval": {"id": id, "decision": decision, "by": format!("client:{}", call.principal.agent),
                            "at": crate::audit::record::format_time(std::time::SystemTime::now()),
                            "arguments_digest": call.arguments_digest, "definition_digest": call.definition_digest}}),
    );
    if !approved {
        return Decision::Refuse(inner.refuse(
            x,
            upstream,
            "approval_denied",
            format!("the call of tool {:?} was not approved", call.tool),
            json!({"reason": "approval_denied", "upstream": upstream, "tool": call.tool, "id": id}),
        ));
    }
    // The gateway's own input round is over: the upstream sees the call as first sent.
    if let Some(p) = body.get_mut("params").and_then(Value::as_object_mut) {
        p.remove("requestState");
        if let Some(Value::Object(r)) = p.get_mut("inputResponses") {
            r.remove(APPROVAL_INPUT_KEY);
            if r.is_empty() {
                p.remove("inputResponses");
            }
        }
    }
    let bytes = Bytes::from(body.to_string());
    let (mut parts, _) = req.into_parts();
    match view.with_body(bytes.clone()) {
        Ok(v) => {
            parts.extensions.insert(v.clone());
            x.update(|r| r.request = Some(v));
        }
        Err(_) => return invalid(inner, x, call, "the call could not be rewritten"),
    }
    parts.headers.remove(http::header::CONTENT_LENGTH);
    Decision::Pass(Request::from_parts(parts, Full::new(bytes)))
}

/// Holds a call until it is approved or denied on the admin listener, voided by a changed
/// definition, or the rule's timeout passes.
fn hold(
    inner: Arc<Inner>,
    req: Req,
    x: &Exchange,
    call: PendingCall,
    rule: &ApprovalRule,
) -> Decision<Req> {
    let wait = register(inner, x, call, rule).1;
    Decision::Wait(Box::pin(async move { wait.await.map(|()| req) }))
}

/// Holds a legacy call and asks its client, on the call's own response stream, with an
/// `elicitation/create` request; the admin listener can decide it too.
fn hold_asking(
    inner: Arc<Inner>,
    mut req: Req,
    x: &Exchange,
    call: PendingCall,
    rule: &ApprovalRule,
    with_mode: bool,
) -> Decision<Req> {
    let params = elicit_params(&call, with_mode);
    let upstream = call.upstream.clone();
    let (id, wait) = register(inner.clone(), x, call, rule);
    bump(&inner.state.metrics.decisions, (upstream, "asked"));
    let event = json!({"jsonrpc": "2.0", "id": format!("{STATE_PREFIX}{id}"), "method": "elicitation/create", "params": params});
    req.extensions_mut().insert(super::held::HeldCall {
        event: mcp_gateway_core::sse::SseEvent::data(event.to_string()).encode(),
        wait: Arc::new(Mutex::new(Some(wait))),
    });
    Decision::Pass(req)
}

/// Registers a held call (and announces it): its id, and the wait for its decision, which
/// writes the decision to the record and turns anything but an approval into a refusal.
fn register(
    inner: Arc<Inner>,
    x: &Exchange,
    call: PendingCall,
    rule: &ApprovalRule,
) -> (String, crate::govern::Waiting<()>) {
    let (call, rx) = inner.state.approvals.hold(call, rule.timeout);
    let id = call.id.clone();
    tracing::warn!(target: "mcp_gateway::integrity", id = %id, upstream = %call.upstream, tool = %call.tool,
        agent = %call.principal.agent, "call held for approval: POST /approvals/{id} on the admin listener decides it");
    if let Some(url) = rule.webhook.clone() {
        notify(url, &call);
    }
    let timeout = rule.timeout;
    let x = x.clone();
    let key = id.clone();
    let wait = Box::pin(async move {
        // The entry goes when this future does (the client went away) or ends.
        struct Forget(Arc<Inner>, String);
        impl Drop for Forget {
            fn drop(&mut self) {
                self.0.state.approvals.forget(&self.1);
            }
        }
        let _forget = Forget(inner.clone(), id.clone());
        let upstream = call.upstream.clone();
        let verdict = tokio::time::timeout(timeout, rx).await;
        let now = crate::audit::record::format_time(std::time::SystemTime::now());
        let (decision, by) = match &verdict {
            Ok(Ok(Verdict::Approved(by))) => ("approved", Some(by.clone())),
            Ok(Ok(Verdict::Denied(by))) => ("denied", Some(by.clone())),
            Ok(Ok(Verdict::Voided)) => ("voided", None),
            _ => ("timeout", None),
        };
        bump(&inner.state.metrics.decisions, (upstream.clone(), decision));
        note(
            &x,
            json!({"approval": {"id": id, "decision": decision, "by": by, "at": now,
                                "arguments_digest": call.arguments_digest, "definition_digest": call.definition_digest}}),
        );
        tracing::info!(target: "mcp_gateway::integrity", id = %id, upstream = %upstream, tool = %call.tool, decision, by = by.as_deref().unwrap_or("-"), "approval decided");
        let data = json!({"reason": format!("approval_{decision}"), "upstream": upstream, "tool": call.tool, "id": id});
        match decision {
            "approved" => Ok(()),
            "denied" => Err(inner.refuse(
                &x,
                &upstream,
                "approval_denied",
                format!(
                    "the call of tool {:?} was denied by {}",
                    call.tool,
                    by.unwrap_or_default()
                ),
                data,
            )),
            "voided" => Err(inner.refuse(
                &x,
                &upstream,
                "definition_changed",
                format!(
                    "the definition of tool {:?} changed while the call waited for approval",
                    call.tool
                ),
                data,
            )),
            _ => Err(inner.refuse(
                &x,
                &upstream,
                "approval_timeout",
                format!(
                    "no one approved the call of tool {:?} within {:?}",
                    call.tool, timeout
                ),
                data,
            )),
        }
    });
    (key, wait)
}

/// A legacy client's answer to the gateway's elicitation `id`: decides the held call when
/// it comes from the session that was asked.
fn answered(
    inner: &Inner,
    view: &McpRequest,
    msg: &mcp_gateway_core::McpMessage,
    id: &str,
    session: Option<&str>,
    x: &Exchange,
) {
    let result = if msg.kind() == MessageKind::Response {
        view.body()
            .and_then(|b| serde_json::from_slice::<Value>(b).ok())
            .and_then(|v| v.get("result").cloned())
            .unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    let agent = principal_of(x).agent;
    match inner.state.approvals.decide_asked(
        id,
        session,
        approves(&result),
        &format!("client:{agent}"),
    ) {
        Ok(()) => {}
        Err(e) => {
            tracing::warn!(target: "mcp_gateway::integrity", id, error = %e, "an elicitation answer that decides nothing")
        }
    }
}

/// Remembers the session an `initialize` that declared elicitation opened.
struct InitWatch {
    inner: Arc<Inner>,
}

impl Observer for InitWatch {
    fn on_head(&mut self, head: &Head<'_>) {
        let Some(sid) = head
            .headers
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
        else {
            return;
        };
        let mut set = lock(&self.inner.state.elicits);
        if set.len() >= MAX_ELICITING_SESSIONS {
            let drop: Vec<String> = set
                .iter()
                .take(MAX_ELICITING_SESSIONS / 2)
                .cloned()
                .collect();
            for d in drop {
                set.remove(&d);
            }
        }
        set.insert(sid.to_owned());
    }
}

/// POSTs the held call to the rule's webhook (once, in the background; a failure is logged).
fn notify(url: http::Uri, call: &PendingCall) {
    let body = json!({"event": "approval_pending", "call": call}).to_string();
    tokio::spawn(async move {
        let client = crate::http_client::AsClient::new(Duration::from_secs(10));
        let req = Request::post(url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body.into_bytes());
        let result = match req {
            Ok(r) => client.send(r).await.map(drop),
            Err(e) => Err(crate::http_client::HttpError::Url(e.to_string())),
        };
        if let Err(e) = result {
            tracing::warn!(target: "mcp_gateway::integrity", url = %url, error = %e, "approval webhook failed");
        }
    });
}

/// Checks one list result against the pins as it streams: records what was listed, learns
/// a first list under `trust_on_first_use`, reports changes, and in `block` mode removes
/// changed and unpinned entries.
struct ListCheck {
    inner: Arc<Inner>,
    id: RequestId,
    upstream: Arc<str>,
    kind: Kind,
    exchange: Exchange,
    removes: bool,
}

impl Observer for ListCheck {
    fn transforms(&self) -> bool {
        self.removes
    }

    fn on_message(&mut self, msg: &ObservedMessage<'_>) {
        if self.removes || msg.id() != Some(&self.id) {
            return;
        }
        if let Ok(mut v) = serde_json::from_slice::<Value>(msg.text()) {
            check_list(
                &self.inner,
                &self.upstream,
                self.kind,
                &mut v,
                &self.exchange,
            );
        }
    }

    fn transform(&mut self, msg: &ObservedMessage<'_>) -> Option<Bytes> {
        if msg.id() != Some(&self.id) {
            return None;
        }
        let mut v: Value = serde_json::from_slice(msg.text()).ok()?;
        let removed = check_list(
            &self.inner,
            &self.upstream,
            self.kind,
            &mut v,
            &self.exchange,
        );
        (removed > 0)
            .then(|| serde_json::to_vec(&v).ok().map(Bytes::from))
            .flatten()
    }
}

/// The check of one list result `v` (a whole JSON-RPC response); how many entries it removed.
pub(crate) fn check_list(
    inner: &Inner,
    upstream: &str,
    kind: Kind,
    v: &mut Value,
    x: &Exchange,
) -> usize {
    let mode = inner.mode(upstream);
    let Some(result) = v.get_mut("result").and_then(Value::as_object_mut) else {
        return 0;
    };
    let last_page = result.get("nextCursor").is_none_or(Value::is_null);
    let Some(items) = result
        .get_mut(kind.list_key())
        .and_then(Value::as_array_mut)
    else {
        return 0;
    };
    let spec = inner.spec.pins.as_ref();
    // Without pins (approvals alone) the definitions are only recorded: a held call names
    // the digest of the one it would use, and a change voids it.
    let checks = mode != Mode::Off;
    let tofu = checks && spec.is_some_and(|p| p.trust_on_first_use);
    // Trust on first use learns each kind's first complete list: tools learnt do not make
    // the upstream's prompts count as new, and the reverse.
    let pinned_kind = inner
        .pins()
        .upstreams
        .get(upstream)
        .is_some_and(|u| !u.of(kind).is_empty());
    let learning = tofu && (!pinned_kind || inner.learning(upstream, kind));
    let mut changed = Vec::new();
    let mut new = Vec::new();
    let mut learnt = Vec::new();
    let mut bad = Vec::new();
    // Digested before any lock is taken: the work per definition stays off the calls'
    // lookups.
    let digests: Vec<Option<String>> = items
        .iter()
        .map(|item| item.get("name").is_some().then(|| canon::digest(item)))
        .collect();
    {
        let pins = inner.pins();
        let up = pins.upstreams.get(upstream);
        let mut all = inner
            .state
            .observed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let observed = all.entry((upstream.to_owned(), kind)).or_default();
        for (i, item) in items.iter().enumerate() {
            let (Some(name), Some(digest)) =
                (item.get("name").and_then(Value::as_str), digests[i].clone())
            else {
                continue;
            };
            if !observed.contains_key(name) {
                observed.insert(
                    name.to_owned(),
                    Seen {
                        digest: String::new(),
                        definition: Value::Null,
                        reported: None,
                    },
                );
            }
            let Some(seen) = observed.get_mut(name) else {
                continue;
            };
            if seen.digest != digest {
                seen.digest.clone_from(&digest);
                seen.definition = item.clone();
                if kind == Kind::Tool {
                    let voided = inner.state.approvals.void_changed(upstream, name, &digest);
                    if voided > 0 {
                        tracing::warn!(target: "mcp_gateway::integrity", upstream, tool = name, voided, "definition changed: pending approvals voided");
                    }
                }
            }
            let fresh = seen.reported.as_deref() != Some(digest.as_str());
            if !checks {
                continue;
            }
            match up.and_then(|u| u.of(kind).get(name)) {
                Some(pin) if pin.digest == digest => {}
                Some(pin) => {
                    let diff = canon::diff(&pin.definition, item);
                    if fresh {
                        tracing::warn!(target: "mcp_gateway::integrity", upstream, kind = kind.as_str(), name, pinned = %pin.digest, current = %digest, mode = mode.as_str(),
                            "definition changed since it was pinned:\n{}", canon::render_diff(&diff));
                        seen.reported = Some(digest.clone());
                    }
                    changed.push(json!({"name": name, "pinned_digest": pin.digest, "current_digest": digest, "diff": diff}));
                    bad.push(i);
                }
                None if learning => learnt.push((name.to_owned(), item.clone())),
                None if up.is_some() => {
                    if fresh {
                        tracing::warn!(target: "mcp_gateway::integrity", upstream, kind = kind.as_str(), name, current = %digest, mode = mode.as_str(),
                            "definition not pinned (new); approve it with `mcp-gateway pins approve`");
                        seen.reported = Some(digest.clone());
                    }
                    new.push(json!({"name": name, "current_digest": digest}));
                    bad.push(i);
                }
                None => {}
            }
        }
    }
    if !learnt.is_empty() {
        learn(inner, upstream, kind, learnt);
    }
    if tofu {
        let mut l = inner
            .state
            .learning
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if learning && !last_page {
            l.entry((upstream.to_owned(), kind))
                .or_insert_with(|| Instant::now() + LEARNING_WINDOW);
        } else {
            l.remove(&(upstream.to_owned(), kind));
        }
    }
    if changed.is_empty() && new.is_empty() {
        return 0;
    }
    let m = &inner.state.metrics;
    for (list, finding) in [(&changed, "changed"), (&new, "unpinned")] {
        for _ in list.iter() {
            bump(
                &m.findings,
                (upstream.to_owned(), kind.as_str(), finding, mode.as_str()),
            );
        }
    }
    note(
        x,
        json!({"mode": mode.as_str(), "kind": kind.as_str(), "changed": changed, "unpinned": new}),
    );
    if mode != Mode::Block {
        return 0;
    }
    let mut i = 0;
    items.retain(|_| {
        let keep = !bad.contains(&i);
        i += 1;
        keep
    });
    bad.len()
}

/// Pins an upstream's definitions seen on its first list (`trust_on_first_use`).
fn learn(inner: &Inner, upstream: &str, kind: Kind, items: Vec<(String, Value)>) {
    let Some(spec) = inner.spec.pins.as_ref() else {
        return;
    };
    let count = items.len();
    let result = Pins::update(&spec.pins_file, |p| {
        let up = p.upstreams.entry(upstream.to_owned()).or_default();
        for (name, def) in items {
            up.of_mut(kind)
                .entry(name)
                .or_insert_with(|| Pin::of(def, "trust_on_first_use"));
        }
    });
    match result {
        Ok(((), pins)) => {
            *inner.pins.write().unwrap_or_else(PoisonError::into_inner) = pins;
            inner
                .state
                .metrics
                .pins_written
                .fetch_add(count as u64, Ordering::Relaxed);
            tracing::info!(target: "mcp_gateway::integrity", upstream, kind = kind.as_str(), count, file = %spec.pins_file.display(), "trust on first use: definitions pinned");
        }
        Err(e) => {
            tracing::error!(target: "mcp_gateway::integrity", upstream, error = %e, "trust on first use: the pins file could not be written; the definitions stay unpinned");
        }
    }
}

impl Governor {
    /// Appends the integrity metrics in the Prometheus text format.
    pub fn render_prometheus(&self, out: &mut String) {
        let m = &self.inner.state.metrics;
        let findings: Vec<(String, u64)> = lock(&m.findings)
            .iter()
            .map(|((u, k, f, mode), n)| {
                (
                    format!(
                        "upstream=\"{}\",kind=\"{k}\",finding=\"{f}\",mode=\"{mode}\"",
                        esc(u)
                    ),
                    *n,
                )
            })
            .collect();
        family(out, "mcp_gateway_integrity_findings_total", "counter",
            "Listed definitions that differ from their pin (changed) or have none (unpinned), by mode.", &findings);
        let refused: Vec<(String, u64)> = lock(&m.refused)
            .iter()
            .map(|((u, r), n)| (format!("upstream=\"{}\",reason=\"{r}\"", esc(u)), *n))
            .collect();
        family(
            out,
            "mcp_gateway_integrity_refused_total",
            "counter",
            "Calls refused by tool integrity, by reason.",
            &refused,
        );
        let decisions: Vec<(String, u64)> = lock(&m.decisions)
            .iter()
            .map(|((u, d), n)| (format!("upstream=\"{}\",decision=\"{d}\"", esc(u)), *n))
            .collect();
        family(
            out,
            "mcp_gateway_approvals_total",
            "counter",
            "Approval decisions (asked: a client was asked through MCP).",
            &decisions,
        );
        let pending = [(String::new(), self.inner.state.approvals.len() as u64)];
        family(
            out,
            "mcp_gateway_approvals_pending",
            "gauge",
            "Calls held for a decision.",
            &pending,
        );
        let learnt = [(String::new(), m.pins_written.load(Ordering::Relaxed))];
        family(
            out,
            "mcp_gateway_integrity_pins_learnt_total",
            "counter",
            "Definitions pinned on first use.",
            &learnt,
        );
    }
}

/// One metric family: its help, its type, and a sample per label set (`""`: no labels).
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, u64)]) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, n) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {n}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {n}");
        }
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
