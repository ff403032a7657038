use arc_swap::ArcSwap;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_service::Service;

/// The shared cell holding the current service. Cheap to clone: clones share the cell.
pub struct ReloadHandle<S> {
    cell: Arc<ArcSwap<S>>,
}

impl<S> Clone for ReloadHandle<S> {
    fn clone(&self) -> Self {
        Self {
            cell: self.cell.clone(),
        }
    }
}

impl<S> std::fmt::Debug for ReloadHandle<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadHandle").finish_non_exhaustive()
    }
}

impl<S> ReloadHandle<S> {
    /// A cell holding `service`.
    pub fn new(service: S) -> Self {
        Self {
            cell: Arc::new(ArcSwap::from_pointee(service)),
        }
    }

    /// Installs `service` for every request from now on; returns the one it replaces.
    /// Requests already running keep theirs.
    pub fn swap(&self, service: S) -> Arc<S> {
        self.cell.swap(Arc::new(service))
    }

    /// The current service.
    pub fn current(&self) -> Arc<S> {
        self.cell.load_full()
    }
}

/// The service [`ReloadLayer`](super::ReloadLayer) makes: each request is served by the
/// service current when it is made ready, and finishes on it.
pub struct Reload<S> {
    handle: ReloadHandle<S>,
    /// The service taken (and made ready) for the next call.
    ready: Option<S>,
}

impl<S> Clone for Reload<S> {
    fn clone(&self) -> Self {
        Self::new(self.handle.clone())
    }
}

impl<S> std::fmt::Debug for Reload<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reload").finish_non_exhaustive()
    }
}

impl<S> Reload<S> {
    /// A service over `handle`'s cell.
    pub fn new(handle: ReloadHandle<S>) -> Self {
        Self {
            handle,
            ready: None,
        }
    }

    /// The handle that replaces what this service (and its clones) serve.
    pub fn handle(&self) -> &ReloadHandle<S> {
        &self.handle
    }
}

impl<S, Req> Service<Req> for Reload<S>
where
    S: Service<Req> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let s = self
            .ready
            .get_or_insert_with(|| S::clone(&self.handle.cell.load()));
        s.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.ready.take() {
            Some(mut s) => s.call(req),
            // Called without `poll_ready` (which tower's contract asks for): the current
            // service, as a service that is always ready allows.
            None => S::clone(&self.handle.cell.load()).call(req),
        }
    }
}
