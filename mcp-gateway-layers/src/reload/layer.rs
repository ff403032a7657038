use super::service::{Reload, ReloadHandle};
use tower_layer::Layer;

/// Puts a swappable cell in front of a service: see the [module docs](super).
///
/// Each [`Layer::layer`] call makes a new cell holding the service given;
/// [`Reload::handle`] replaces what that service (and its clones) serve.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReloadLayer {
    _private: (),
}

impl ReloadLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for ReloadLayer {
    type Service = Reload<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Reload::new(ReloadHandle::new(inner))
    }
}
