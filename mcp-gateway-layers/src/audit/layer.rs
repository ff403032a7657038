use super::service::{AuditLog, Shared};
use super::writer::AuditWriter;
use std::sync::Arc;
use tower_layer::Layer;

/// Applies [`AuditLog`]: one record per exchange, written by `writer`. See the [module
/// docs](super). Cheap to clone.
#[derive(Clone, Debug)]
pub struct AuditLogLayer {
    shared: Arc<Shared>,
}

impl AuditLogLayer {
    /// A layer writing to `writer`.
    pub fn new(writer: AuditWriter) -> Self {
        Self {
            shared: Arc::new(Shared {
                writer,
                body_limit: crate::parse::DEFAULT_BODY_LIMIT,
            }),
        }
    }

    /// The largest request body read to answer a refusal (queue full) with the request's
    /// id. Default: 4 MiB.
    pub fn body_limit(self, bytes: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                writer: self.shared.writer.clone(),
                body_limit: bytes,
            }),
        }
    }

    /// The writer (its counters, and `flush` at shutdown).
    pub fn writer(&self) -> &AuditWriter {
        &self.shared.writer
    }
}

impl<S> Layer<S> for AuditLogLayer {
    type Service = AuditLog<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuditLog::new(inner, self.shared.clone())
    }
}
