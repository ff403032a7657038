use super::counter::{ByteEstimate, TokenCounter};
use super::policy::{Costs, Limits};
use super::service::{Budgets, Governor, TokenBucket2D};
use super::store::{LimitStore, MemoryStore};
use crate::govern::{Govern, Governed, IntoGovern};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tower_layer::Layer;

/// Applies [`TokenBucket2D`]: per-key request and token budgets. See the [module
/// docs](super). Cheap to clone; clones (and every service they make) share the budgets and
/// the cost ledger.
#[derive(Clone)]
pub struct TokenBucket2DLayer {
    governor: Governor,
    body_limit: usize,
}

impl std::fmt::Debug for TokenBucket2DLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenBucket2DLayer")
            .field("limits", &self.governor.budgets.limits)
            .finish_non_exhaustive()
    }
}

impl TokenBucket2DLayer {
    /// Budgets kept in this process's memory, tokens estimated with [`ByteEstimate`].
    pub fn new(limits: Limits) -> Self {
        let memory = Arc::new(MemoryStore::new(limits.requests_limit()));
        Self {
            governor: Governor {
                budgets: Arc::new(Budgets {
                    store: memory.clone(),
                    fallback: memory,
                    limits,
                    counter: Arc::new(ByteEstimate),
                    costs: Arc::new(Costs::default()),
                    store_errors: Arc::new(AtomicU64::new(0)),
                    degraded: Arc::new(AtomicBool::new(false)),
                }),
            },
            body_limit: crate::parse::DEFAULT_BODY_LIMIT,
        }
    }

    /// Changes the budgets' settings. Called on a layer whose budgets are already shared (a
    /// clone was taken), the change applies to this layer only, from a copy of the settings
    /// that keeps every earlier one.
    fn edit(mut self, f: impl FnOnce(&mut Budgets)) -> Self {
        f(Arc::make_mut(&mut self.governor.budgets));
        self
    }

    /// Keeps budgets in `store` (a shared store such as Redis). This process's in-memory
    /// budgets remain the fallback for [`OnStoreError::Local`](super::OnStoreError::Local).
    pub fn store(self, store: impl LimitStore) -> Self {
        let store: Arc<dyn LimitStore> = Arc::new(store);
        self.edit(|b| b.store = store)
    }

    /// Takes over `earlier`'s budgets — the spent part of every key's request and token
    /// buckets, and the cost ledger — as a reload does when the budgets' meaning did not
    /// change. With `requests` false the request buckets start full (their rate changed: the
    /// in-memory request buckets are sized by it), and so do the in-memory token buckets that
    /// share their store; the cost ledger carries over either way.
    pub fn carry_over(self, earlier: &TokenBucket2DLayer, requests: bool) -> Self {
        let old = &earlier.governor.budgets;
        let (store, fallback, costs, errors) = (
            old.store.clone(),
            old.fallback.clone(),
            old.costs.clone(),
            old.store_errors.clone(),
        );
        self.edit(|b| {
            if requests {
                b.store = store;
                b.fallback = fallback;
            }
            b.costs = costs;
            b.store_errors = errors;
        })
    }

    /// Counts tokens with `counter` instead of [`ByteEstimate`].
    pub fn counter(self, counter: impl TokenCounter) -> Self {
        let counter: Arc<dyn TokenCounter> = Arc::new(counter);
        self.edit(|b| b.counter = counter)
    }

    /// The largest request body read when no layer above has read it. Default: 4 MiB.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Requests and tokens per key and tool, so far.
    pub fn costs(&self) -> &Costs {
        &self.governor.budgets.costs
    }

    /// How many decisions the store could not make (each logged and decided by
    /// [`OnStoreError`](super::OnStoreError)).
    pub fn store_errors(&self) -> u64 {
        self.governor.budgets.store_errors.load(Ordering::Relaxed)
    }

    /// Appends the layer's counter in the Prometheus text format, as the gateway's `/metrics`
    /// shows it: the decisions the store could not make
    /// (`mcp_gateway_limits_store_errors_total`).
    pub fn render_prometheus(&self, out: &mut String) {
        crate::ascii::push_counter(
            out,
            "mcp_gateway_limits_store_errors_total",
            "Rate-limit decisions the shared store could not make.",
            self.store_errors(),
        );
    }

    /// The deciding part, to stack in a [`Chain`](crate::govern::Chain).
    pub fn governor(&self) -> &Governor {
        &self.governor
    }
}

impl<S> Layer<S> for TokenBucket2DLayer {
    type Service = TokenBucket2D<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Governed::new(self.governor.clone(), inner).body_limit(self.body_limit)
    }
}

impl IntoGovern for TokenBucket2DLayer {
    fn into_govern(self) -> Arc<dyn Govern> {
        Arc::new(self.governor)
    }
}
