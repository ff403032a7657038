use super::counter::TokenCounter;
use super::policy::{ceil_secs, ratelimit_header, Costs, KeySource, Limits, OnStoreError};
use super::store::{Demand, Dimension, LimitStore, MemoryStore, TokenCheck, Verdict};
use crate::body::{reject, ResponseBody};
use crate::parse::read_request;
use crate::scope::Scope;
use crate::BoxError;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::Full;
use mcp_gateway_core::exchange::{Denial, DenialKind, Exchange};
use mcp_gateway_core::jsonrpc::{ErrorCode, JsonRpcError};
use mcp_gateway_core::message::MessageKind;
use mcp_gateway_core::observe::{Ending, ObservedMessage, Observer};
use mcp_gateway_core::McpRequest;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower_service::Service;

/// `RateLimit-Policy` (IETF draft-ietf-httpapi-ratelimit-headers).
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (IETF draft-ietf-httpapi-ratelimit-headers).
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// What every service of one layer shares.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) limits: Limits,
    pub(crate) store: Arc<dyn LimitStore>,
    pub(crate) fallback: Arc<MemoryStore>,
    pub(crate) counter: Arc<dyn TokenCounter>,
    pub(crate) costs: Arc<Costs>,
    pub(crate) store_errors: Arc<AtomicU64>,
    pub(crate) degraded: Arc<AtomicBool>,
    pub(crate) body_limit: usize,
}

/// Per-key request and token budgets, decided before the call reaches the server. See the
/// [module docs](super).
pub struct TokenBucket2D<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: Clone> Clone for TokenBucket2D<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for TokenBucket2D<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenBucket2D")
            .field("inner", &self.inner)
            .field("limits", &self.shared.limits)
            .finish()
    }
}

impl<S> TokenBucket2D<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }
}

/// What one request will be charged, worked out before deciding.
struct Plan {
    demand: Demand,
    tool: Arc<str>,
    tokens_in: u64,
    tool_calls: bool,
}

impl Shared {
    /// The key this request's budgets are kept under, and its route.
    fn key(&self, headers: &HeaderMap, exchange: &Exchange) -> (Arc<str>, Option<Arc<str>>) {
        // Each key is written once into one buffer (no `format!`, no copy of the agent's
        // name on the way): this runs on every call.
        let keyed = |prefix: &[u8], name: &[u8]| {
            let mut s = Vec::with_capacity(prefix.len() + name.len());
            s.extend_from_slice(prefix);
            s.extend_from_slice(name);
            Arc::<str>::from(String::from_utf8_lossy(&s))
        };
        let ip = |client: Option<std::net::SocketAddr>| match client {
            Some(c) => {
                let mut s = Vec::with_capacity(24);
                s.extend_from_slice(b"ip:");
                crate::ascii::push_ip(&mut s, c.ip());
                Arc::<str>::from(String::from_utf8_lossy(&s))
            }
            None => Arc::from("ip:unknown"),
        };
        exchange.update(|r| {
            let key = match &self.limits.key {
                KeySource::Agent => r.principal.as_ref().map_or_else(
                    || ip(r.client),
                    |p| keyed(b"agent:", p.agent_key().as_bytes()),
                ),
                KeySource::Ip => ip(r.client),
                KeySource::Header(name) => headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .filter(|v| !v.is_empty())
                    .map_or_else(|| ip(r.client), |v| keyed(b"header:", v.as_bytes())),
            };
            (key, r.route.clone())
        })
    }

    /// None: nothing here is charged (notifications, responses, `initialize`, GET, DELETE).
    fn plan(&self, view: Option<&McpRequest>, key: Arc<str>, route: Option<&str>) -> Option<Plan> {
        let body = view?.body()?;
        let parsed = view?.parsed()?;
        let mut requests = 0u32;
        let mut tokens_in = 0u64;
        let mut tool: Option<Arc<str>> = None;
        let mut rule_cost = vec![0u64; self.limits.rules.len()];
        let mut tool_calls = false;
        for msg in parsed.messages() {
            if msg.kind() != MessageKind::Request || msg.method() == Some("initialize") {
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
        if requests == 0 {
            return None;
        }
        let mut tokens = Vec::new();
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

    /// Asks the store; on a store failure, does what `on_store_error` says. `Err` carries the
    /// 503 to send when refusing for want of a store.
    async fn decide(&self, demand: &Demand) -> Result<(Verdict, bool), ()> {
        match self.store.decide(demand).await {
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
    shared: Arc<Shared>,
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
                .saturating_add(self.shared.counter.count(result));
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
                self.shared.fallback.charge_now(&self.key, &charges);
            } else {
                self.shared.store.charge(self.key.clone(), charges);
            }
        }
        self.exchange.update(|r| {
            r.tokens_in = Some(tokens_in);
            r.tokens_out = Some(tokens_out);
        });
        // One ledger update per call: the admission is counted with its tokens.
        self.shared.costs.add(&self.key, &self.tool, |c| {
            c.admitted += 1;
            c.tokens_in += tokens_in;
            c.tokens_out += tokens_out;
        });
    }
}

fn refusal(shared: &Shared, view: Option<&McpRequest>, verdict: &Verdict) -> Response<Full<Bytes>> {
    let secs = ceil_secs(verdict.retry_after).max(1);
    let budget = match verdict.denied_by {
        Some(Dimension::Requests) => "requests".to_owned(),
        Some(Dimension::Tokens(0)) => "tokens".to_owned(),
        Some(Dimension::Tokens(i)) => format!("rule {}", i - 1),
        None => "-".to_owned(),
    };
    let err = JsonRpcError::new(
        ErrorCode::GATEWAY_REFUSED,
        format!("rate limited: over the {budget} budget; retry in {secs} s"),
    )
    .with_data(serde_json::json!({ "budget": budget, "retryAfter": secs }));
    let mut resp = err.into_response(
        StatusCode::TOO_MANY_REQUESTS,
        view.and_then(McpRequest::reply_id),
    );
    resp.headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    shared.headers(resp.headers_mut(), verdict);
    resp
}

fn unavailable(view: Option<&McpRequest>) -> Response<Full<Bytes>> {
    let err = JsonRpcError::new(
        ErrorCode::UNAVAILABLE,
        "rate-limit store unavailable; retry shortly",
    );
    let mut resp = err.into_response(
        StatusCode::SERVICE_UNAVAILABLE,
        view.and_then(McpRequest::reply_id),
    );
    resp.headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

impl<S, B, ResBody> Service<Request<B>> for TokenBucket2D<S>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Never waits for budget here: a call over budget is answered 429 in `call`.
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let scope = Scope::enter(&mut req);
        // Take the service that was driven to readiness; leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        Box::pin(async move {
            let req = match read_request(req, shared.body_limit).await {
                Ok(req) => req,
                Err(resp) => return Ok(scope.finish(reject(resp)).await),
            };
            let exchange = scope.exchange().clone();
            let view = McpRequest::from_extensions(req.extensions()).cloned();
            let (key, route) = shared.key(req.headers(), &exchange);
            let Some(plan) = shared.plan(view.as_ref(), key, route.as_deref()) else {
                let resp = inner.call(req).await?.map(ResponseBody::inner);
                return Ok(scope.finish(resp).await);
            };
            let (verdict, local) = match shared.decide(&plan.demand).await {
                Ok(v) => v,
                Err(()) => {
                    exchange.deny(Denial::new(
                        "limits",
                        DenialKind::Unavailable,
                        StatusCode::SERVICE_UNAVAILABLE,
                        "rate-limit store unavailable",
                    ));
                    return Ok(scope.finish(reject(unavailable(view.as_ref()))).await);
                }
            };
            if !verdict.admitted() {
                let resp = refusal(&shared, view.as_ref(), &verdict);
                exchange.update(|r| {
                    r.tokens_in = Some(plan.tokens_in);
                    r.tokens_out = Some(0);
                });
                exchange.deny(Denial::new(
                    "limits",
                    DenialKind::RateLimited,
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "{} over its {} budget; retry after {:?}",
                        plan.demand.key,
                        match verdict.denied_by {
                            Some(Dimension::Requests) => "request",
                            _ => "token",
                        },
                        verdict.retry_after
                    ),
                ));
                shared
                    .costs
                    .add(&plan.demand.key, &plan.tool, |c| c.refused += 1);
                return Ok(scope.finish(reject(resp)).await);
            }
            exchange.update(|r| r.tokens_in = Some(plan.tokens_in));
            if !plan.tool_calls {
                shared
                    .costs
                    .add(&plan.demand.key, &plan.tool, |c| c.admitted += 1);
            } else {
                exchange.observe(Meter {
                    shared: shared.clone(),
                    exchange: exchange.clone(),
                    key: plan.demand.key.clone(),
                    tool: plan.tool.clone(),
                    checks: plan.demand.tokens.clone(),
                    tokens_in: plan.tokens_in,
                    counted_out: 0,
                    usage_in: None,
                    usage_out: None,
                    local,
                    responses_left: exchange
                        .update(|r| {
                            r.request.as_ref().and_then(|v| v.parsed()).map(|p| {
                                p.messages()
                                    .iter()
                                    .filter(|m| m.kind().expects_response())
                                    .count()
                            })
                        })
                        .unwrap_or(1)
                        .max(1),
                    settled: false,
                });
            }
            let mut resp = inner.call(req).await?.map(ResponseBody::inner);
            shared.headers(resp.headers_mut(), &verdict);
            Ok(scope.finish(resp).await)
        })
    }
}

/// The wait a refusal announces, in whole seconds (at least 1).
pub fn retry_after_secs(wait: Duration) -> u64 {
    ceil_secs(wait).max(1)
}
