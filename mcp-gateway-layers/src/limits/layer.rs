use super::counter::{ByteEstimate, TokenCounter};
use super::policy::{Costs, Limits};
use super::service::{Shared, TokenBucket2D};
use super::store::{LimitStore, MemoryStore};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use tower_layer::Layer;

/// Applies [`TokenBucket2D`]: per-key request and token budgets. See the [module
/// docs](super). Cheap to clone; clones (and every service they make) share the budgets and
/// the cost ledger.
#[derive(Clone)]
pub struct TokenBucket2DLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for TokenBucket2DLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenBucket2DLayer")
            .field("limits", &self.shared.limits)
            .finish_non_exhaustive()
    }
}

impl TokenBucket2DLayer {
    /// Budgets kept in this process's memory, tokens estimated with [`ByteEstimate`].
    pub fn new(limits: Limits) -> Self {
        let memory = Arc::new(MemoryStore::new(limits.requests_limit()));
        Self {
            shared: Arc::new(Shared {
                store: memory.clone(),
                fallback: memory,
                limits,
                counter: Arc::new(ByteEstimate),
                costs: Arc::new(Costs::default()),
                store_errors: Arc::new(AtomicU64::new(0)),
                degraded: Arc::new(AtomicBool::new(false)),
                body_limit: crate::parse::DEFAULT_BODY_LIMIT,
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Shared)) -> Self {
        match Arc::get_mut(&mut self.shared) {
            Some(s) => f(s),
            None => {
                let mut s = Shared::clone(&self.shared);
                f(&mut s);
                self.shared = Arc::new(s);
            }
        }
        self
    }

    /// Keeps budgets in `store` (a shared store such as Redis). This process's in-memory
    /// budgets remain the fallback for [`OnStoreError::Local`](super::OnStoreError::Local).
    pub fn store(self, store: impl LimitStore) -> Self {
        let store: Arc<dyn LimitStore> = Arc::new(store);
        self.edit(|s| s.store = store)
    }

    /// Counts tokens with `counter` instead of [`ByteEstimate`].
    pub fn counter(self, counter: impl TokenCounter) -> Self {
        let counter: Arc<dyn TokenCounter> = Arc::new(counter);
        self.edit(|s| s.counter = counter)
    }

    /// The largest request body read when no layer above has read it. Default: 4 MiB.
    pub fn body_limit(self, bytes: usize) -> Self {
        self.edit(|s| s.body_limit = bytes)
    }

    /// Requests and tokens per key and tool, so far.
    pub fn costs(&self) -> &Costs {
        &self.shared.costs
    }

    /// How many decisions the store could not make (each logged and decided by
    /// [`OnStoreError`](super::OnStoreError)).
    pub fn store_errors(&self) -> u64 {
        self.shared
            .store_errors
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl<S> Layer<S> for TokenBucket2DLayer {
    type Service = TokenBucket2D<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TokenBucket2D::new(inner, self.shared.clone())
    }
}
