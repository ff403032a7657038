use super::counter::TokenCounter;
use super::policy::{ceil_secs, ratelimit_header, Costs, KeySource, Limits, OnStoreError};
use super::store::StoreError;
use super::store::{Demand, Dimension, LimitStore, MemoryStore, TokenCheck, Verdict};
use crate::govern::{Decision, Govern, Governed, Refusal};
use bytes::Bytes;
use futures_util::future::Either;
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use http_body_util::Full;
use mcp_gateway_core::exchange::{Denial, DenialKind, Exchange};
use mcp_gateway_core::jsonrpc::{ErrorCode, JsonRpcError};
use mcp_gateway_core::message::MessageKind;
use mcp_gateway_core::observe::{Ending, ObservedMessage, Observer};
use mcp_gateway_core::McpRequest;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// `RateLimit-Policy` (IETF draft-ietf-httpapi-ratelimit-headers).
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (IETF draft-ietf-httpapi-ratelimit-headers).
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The budgets, the store they live in and the ledger: what every request of one layer
/// shares.
#[derive(Clone)]
pub(crate) struct Budgets {
    pub(crate) limits: Limits,
    pub(crate) store: Arc<dyn LimitStore>,
    pub(crate) fallback: Arc<MemoryStore>,
    pub(crate) counter: Arc<dyn TokenCounter>,
    pub(crate) costs: Arc<Costs>,
    pub(crate) store_errors: Arc<AtomicU64>,
    pub(crate) degraded: Arc<AtomicBool>,
}

/// The deciding part of [`TokenBucket2D`]: charges each request to its key's budgets and
/// refuses it (429) when one is spent. A handle on the layer's shared budgets.
#[derive(Clone)]
pub struct Governor {
    pub(crate) budgets: Arc<Budgets>,
}

impl std::fmt::Debug for Governor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Governor")
            .field("limits", &self.budgets.limits)
            .finish_non_exhaustive()
    }
}

/// Per-key request and token budgets, decided before the call reaches the server: the
/// [`Governed`] skeleton over the limits [`Governor`]. See the [module docs](super).
pub type TokenBucket2D<S> = Governed<Governor, S>;

/// What one request will be charged, worked out before deciding.
struct Plan {
    demand: Demand,
    tool: Arc<str>,
    tokens_in: u64,
    tool_calls: bool,
}

impl Budgets {
    /// The key this request's budgets are kept under (none when it is the client's address
    /// and the server did not provide one), and its route.
    fn key(
        &self,
        headers: &HeaderMap,
        exchange: &Exchange,
    ) -> (Option<Arc<str>>, Option<Arc<str>>) {
        // Each key is written once into one buffer (no `format!`, no copy of the agent's
        // name on the way): this runs on every call.
        let keyed = |prefix: &[u8], name: &[u8]| {
            let mut s = Vec::with_capacity(prefix.len() + name.len());
            s.extend_from_slice(prefix);
            s.extend_from_slice(name);
            Arc::<str>::from(String::from_utf8_lossy(&s))
        };
        // No address, no key: one shared `ip:unknown` budget would pool every client.
        let ip = |client: Option<std::net::SocketAddr>| {
            client.map(|c| {
                let mut s = Vec::with_capacity(24);
                s.extend_from_slice(b"ip:");
                crate::ascii::push_ip(&mut s, c.ip());
                Arc::<str>::from(String::from_utf8_lossy(&s))
            })
        };
        exchange.update(|r| {
            let key = match &self.limits.key {
                KeySource::Agent => r.principal.as_ref().map_or_else(
                    || ip(r.client),
                    |p| Some(keyed(b"agent:", p.agent_key().as_bytes())),
                ),
                KeySource::Ip => ip(r.client),
                KeySource::Header(name) => headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .filter(|v| !v.is_empty())
                    .map_or_else(|| ip(r.client), |v| Some(keyed(b"header:", v.as_bytes()))),
            };
            (key, r.route.clone())
        })
    }

    /// None: nothing here is charged (responses, GET, DELETE, or notifications when they have
    /// no budget). `initialize` is a request like any other: it creates server state.
    fn plan(&self, view: Option<&McpRequest>, key: Arc<str>, route: Option<&str>) -> Option<Plan> {
        let body = view?.body()?;
        let parsed = view?.parsed()?;
        let mut requests = 0u32;
        let mut tokens_in = 0u64;
        let mut tool: Option<Arc<str>> = None;
        let mut rule_cost = vec![0u64; self.limits.rules.len()];
        let mut tool_calls = false;
        let mut notifications = 0u64;
        for msg in parsed.messages() {
            if msg.kind() == MessageKind::Notification {
                notifications += 1;
                continue;
            }
            if msg.kind() != MessageKind::Request {
                continue;
            }
            requests = requests.saturating_add(1);
            if msg.method() != Some("tools/call") {
                continue;
            }
            tool_calls = true;
            let name = msg.name().unwrap_or("");
            tool.get_or_insert_with(|| Arc::from(name));
            let args = msg
                .arguments_span()
                .and_then(|s| body.get(s))
                .unwrap_or_default();
            let n = self.counter.count(args);
            tokens_in = tokens_in.saturating_add(n);
            for (i, rule) in self.limits.rules.iter().enumerate() {
                if rule.matches(name, route) {
                    rule_cost[i] = rule_cost[i].saturating_add(n);
                }
            }
        }
        let notification_budget = self.limits.notification_budget();
        if requests == 0 && (notifications == 0 || notification_budget.is_none()) {
            return None;
        }
        let mut tokens = Vec::new();
        if let Some(per_minute) = notification_budget.filter(|_| notifications > 0) {
            tokens.push(TokenCheck {
                bucket: NOTIFICATIONS,
                per_minute,
                cost: notifications,
            });
        }
        if tool_calls {
            if let Some(per_minute) = self.limits.tokens_per_minute {
                tokens.push(TokenCheck {
                    bucket: 0,
                    per_minute,
                    cost: tokens_in,
                });
            }
            for (i, rule) in self.limits.rules.iter().enumerate() {
                if rule.matches_any_call(parsed, route) {
                    tokens.push(TokenCheck {
                        bucket: u8::try_from(i + 1).unwrap_or(u8::MAX),
                        per_minute: rule.tokens_per_minute(),
                        cost: rule_cost[i],
                    });
                }
            }
        }
        Some(Plan {
            demand: Demand {
                key,
                requests,
                requests_per_minute: self.limits.requests_per_minute,
                tokens,
            },
            tool: tool.unwrap_or_else(|| Arc::from("-")),
            tokens_in,
            tool_calls,
        })
    }

    /// What the store answered; on a store failure, what `on_store_error` says. `Err`: refuse
    /// for want of a store (503).
    fn decided(
        &self,
        answer: Result<Verdict, StoreError>,
        demand: &Demand,
    ) -> Result<(Verdict, bool), ()> {
        match answer {
            Ok(v) => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!(target: "mcp_gateway::limits", "rate-limit store reachable again; shared budgets resume");
                }
                Ok((v, false))
            }
            Err(e) => {
                self.store_errors.fetch_add(1, Ordering::Relaxed);
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        target: "mcp_gateway::limits",
                        error = %e,
                        on_store_error = ?self.limits.on_store_error,
                        "rate-limit store unavailable"
                    );
                }
                match self.limits.on_store_error {
                    OnStoreError::Local => Ok((self.fallback.decide_now(demand), true)),
                    OnStoreError::Deny => Err(()),
                }
            }
        }
    }

    fn headers(&self, headers: &mut HeaderMap, v: &Verdict) {
        if let Some(p) = &self.limits.policy_header {
            headers.insert(RATELIMIT_POLICY.clone(), p.clone());
        }
        if let Some(r) = ratelimit_header(v.requests, v.tokens) {
            headers.insert(RATELIMIT.clone(), r);
        }
    }
}

impl super::policy::Rule {
    /// True when the rule applies to some `tools/call` of the body.
    fn matches_any_call(
        &self,
        parsed: &mcp_gateway_core::message::ParsedBody,
        route: Option<&str>,
    ) -> bool {
        parsed.messages().iter().any(|m| {
            m.kind() == MessageKind::Request
                && m.method() == Some("tools/call")
                && self.matches(m.name().unwrap_or(""), route)
        })
    }
}

/// Counts a response's output tokens as it streams and charges them when it ends.
struct Meter {
    budgets: Arc<Budgets>,
    exchange: Exchange,
    key: Arc<str>,
    tool: Arc<str>,
    checks: Vec<TokenCheck>,
    tokens_in: u64,
    counted_out: u64,
    usage_in: Option<u64>,
    usage_out: Option<u64>,
    local: bool,
    /// Responses still expected (one per request message of the body). When the last one has
    /// been seen the call is settled at once, not when the stream ends: a client has what it
    /// needs at that point and may already be sending its next call.
    responses_left: usize,
    settled: bool,
}

impl Observer for Meter {
    fn on_message(&mut self, msg: &ObservedMessage<'_>) {
        match msg.kind() {
            MessageKind::Response => {}
            MessageKind::ErrorResponse => {
                self.responses_left = self.responses_left.saturating_sub(1);
                if self.responses_left == 0 {
                    self.settle();
                }
                return;
            }
            // Progress and other server-to-client messages carry no result.
            _ => return,
        }
        if let Some(u) = msg.usage() {
            self.usage_in = u.input_tokens.or(self.usage_in);
            self.usage_out = u.output_tokens.or(self.usage_out);
        }
        if let Some(result) = msg.result_text() {
            self.counted_out = self
                .counted_out
                .saturating_add(self.budgets.counter.count(result));
        }
        self.responses_left = self.responses_left.saturating_sub(1);
        if self.responses_left == 0 {
            self.settle();
        }
    }

    fn on_end(&mut self, _end: &Ending) {
        self.settle();
    }
}

impl Meter {
    /// Charges the call's tokens and records them (once).
    fn settle(&mut self) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        // Usage the server reported wins over the estimates.
        let tokens_out = self.usage_out.unwrap_or(self.counted_out);
        let tokens_in = self.usage_in.unwrap_or(self.tokens_in);
        let extra_in = i64::try_from(tokens_in).unwrap_or(i64::MAX)
            - i64::try_from(self.tokens_in).unwrap_or(i64::MAX);
        let charge = i64::try_from(tokens_out)
            .unwrap_or(i64::MAX)
            .saturating_add(extra_in);
        if charge != 0 && !self.checks.is_empty() {
            let charges: Vec<(TokenCheck, i64)> = std::mem::take(&mut self.checks)
                .into_iter()
                .map(|c| (c, charge))
                .collect();
            if self.local {
                self.budgets.fallback.charge_now(&self.key, &charges);
            } else {
                self.budgets.store.charge(self.key.clone(), charges);
            }
        }
        self.exchange.update(|r| {
            r.tokens_in = Some(tokens_in);
            r.tokens_out = Some(tokens_out);
        });
        // One ledger update per call: the admission is counted with its tokens.
        self.budgets.costs.add(&self.key, &self.tool, |c| {
            c.admitted += 1;
            c.tokens_in += tokens_in;
            c.tokens_out += tokens_out;
        });
    }
}

/// The token-bucket id of the notification budget (rules take 1 to 254).
const NOTIFICATIONS: u8 = u8::MAX;

fn refusal(budgets: &Budgets, verdict: &Verdict) -> Refusal {
    let secs = ceil_secs(verdict.retry_after).max(1);
    let budget = match verdict.denied_by {
        Some(Dimension::Requests) => "requests".to_owned(),
        Some(Dimension::Tokens(0)) => "tokens".to_owned(),
        Some(Dimension::Tokens(NOTIFICATIONS)) => "notifications".to_owned(),
        Some(Dimension::Tokens(i)) => format!("rule {}", i - 1),
        None => "-".to_owned(),
    };
    let err = JsonRpcError::new(
        ErrorCode::GATEWAY_REFUSED,
        format!("rate limited: over the {budget} budget; retry in {secs} s"),
    )
    .with_data(serde_json::json!({ "budget": budget, "retryAfter": secs }));
    let mut headers = HeaderMap::new();
    budgets.headers(&mut headers, verdict);
    Refusal::new(StatusCode::TOO_MANY_REQUESTS, err)
        .header(http::header::RETRY_AFTER, HeaderValue::from(secs))
        .headers(headers)
}

/// The refusal of a charged request keyed by the client's address when the server provides
/// none: a setup error of the embedding app, said loudly (logged once) and answered 500.
fn no_client_address(x: &Exchange) -> Refusal {
    const WHY: &str = "rate limiting by client address, but the server provides no client \
                       address: serve an axum app with `into_make_service_with_connect_info::<SocketAddr>()` \
                       (cargo feature `axum`), or insert the peer `SocketAddr` or an `ExchangeContext` \
                       into each request's extensions";
    static SAID: AtomicBool = AtomicBool::new(false);
    if !SAID.swap(true, Ordering::Relaxed) {
        tracing::error!(target: "mcp_gateway::limits", "{WHY}; every such request is refused (500)");
    }
    x.deny(Denial::new(
        "limits",
        DenialKind::Unavailable,
        StatusCode::INTERNAL_SERVER_ERROR,
        WHY,
    ));
    Refusal::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        JsonRpcError::new(
            ErrorCode::INTERNAL_ERROR,
            "gateway misconfigured: rate limiting needs the client's address, which this server does not provide",
        ),
    )
}

fn unavailable() -> Refusal {
    let err = JsonRpcError::new(
        ErrorCode::UNAVAILABLE,
        "rate-limit store unavailable; retry shortly",
    );
    Refusal::new(StatusCode::SERVICE_UNAVAILABLE, err)
        .header(http::header::RETRY_AFTER, HeaderValue::from_static("1"))
}

impl Governor {
    /// Settles a decision: refuses, or admits and registers the output-token meter.
    fn settle(
        &self,
        answer: Result<Verdict, StoreError>,
        plan: Plan,
        x: &Exchange,
    ) -> Result<(), Refusal> {
        let budgets = &self.budgets;
        let Ok((verdict, local)) = budgets.decided(answer, &plan.demand) else {
            x.deny(Denial::new(
                "limits",
                DenialKind::Unavailable,
                StatusCode::SERVICE_UNAVAILABLE,
                "rate-limit store unavailable",
            ));
            return Err(unavailable());
        };
        if !verdict.admitted() {
            x.update(|r| {
                r.tokens_in = Some(plan.tokens_in);
                r.tokens_out = Some(0);
            });
            x.deny(Denial::new(
                "limits",
                DenialKind::RateLimited,
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "{} over its {} budget; retry after {:?}",
                    plan.demand.key,
                    match verdict.denied_by {
                        Some(Dimension::Requests) => "request",
                        Some(Dimension::Tokens(NOTIFICATIONS)) => "notification",
                        _ => "token",
                    },
                    verdict.retry_after
                ),
            ));
            budgets
                .costs
                .add(&plan.demand.key, &plan.tool, |c| c.refused += 1);
            return Err(refusal(budgets, &verdict));
        }
        // The answer carries what is left (added by the layer that finishes the exchange).
        let mut headers = HeaderMap::new();
        budgets.headers(&mut headers, &verdict);
        let responses_left = x.update(|r| {
            r.tokens_in = Some(plan.tokens_in);
            r.response_headers.extend(headers);
            r.request
                .as_ref()
                .and_then(|v| v.parsed())
                .map(|p| {
                    p.messages()
                        .iter()
                        .filter(|m| m.kind().expects_response())
                        .count()
                })
                .unwrap_or(1)
                .max(1)
        });
        if !plan.tool_calls {
            budgets
                .costs
                .add(&plan.demand.key, &plan.tool, |c| c.admitted += 1);
        } else {
            x.observe(Meter {
                budgets: budgets.clone(),
                exchange: x.clone(),
                key: plan.demand.key.clone(),
                tool: plan.tool.clone(),
                checks: plan.demand.tokens,
                tokens_in: plan.tokens_in,
                counted_out: 0,
                usage_in: None,
                usage_out: None,
                local,
                responses_left,
                settled: false,
            });
        }
        Ok(())
    }
}

impl Govern for Governor {
    fn admit(&self, req: Request<Full<Bytes>>, x: &Exchange) -> Decision<Request<Full<Bytes>>> {
        // Part of a client request charged once, by another request made for it.
        if req
            .extensions()
            .get::<mcp_gateway_core::ChargedElsewhere>()
            .is_some()
        {
            return Decision::Pass(req);
        }
        let budgets = &self.budgets;
        let (key, route) = budgets.key(req.headers(), x);
        let view = McpRequest::from_extensions(req.extensions());
        let Some(key) = key else {
            // Nothing to charge (a GET stream, a DELETE) passes; a charged request cannot be
            // keyed, and is refused rather than put in a budget shared by every client.
            if budgets
                .plan(view, Arc::from(""), route.as_deref())
                .is_none()
            {
                return Decision::Pass(req);
            }
            return Decision::Refuse(no_client_address(x));
        };
        let Some(plan) = budgets.plan(view, key, route.as_deref()) else {
            return Decision::Pass(req);
        };
        match budgets.store.decide(&plan.demand) {
            // In memory: decided now, no future.
            Either::Left(now) => match self.settle(now.into_inner(), plan, x) {
                Ok(()) => Decision::Pass(req),
                Err(r) => Decision::Refuse(r),
            },
            Either::Right(later) => {
                let this = self.clone();
                let x = x.clone();
                Decision::Wait(Box::pin(async move {
                    this.settle(later.await, plan, &x)?;
                    Ok(req)
                }))
            }
        }
    }
}

/// The wait a refusal announces, in whole seconds (at least 1).
pub fn retry_after_secs(wait: Duration) -> u64 {
    ceil_secs(wait).max(1)
}
