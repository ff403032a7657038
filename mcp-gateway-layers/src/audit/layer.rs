use super::service::{AuditLog, Governor};
use super::writer::AuditWriter;
use crate::govern::{Govern, Governed, IntoGovern};
use std::sync::Arc;
use tower_layer::Layer;

/// Applies [`AuditLog`]: one record per exchange, written by `writer`. See the [module
/// docs](super). Cheap to clone.
#[derive(Clone, Debug)]
pub struct AuditLogLayer {
    governor: Governor,
    body_limit: usize,
}

impl AuditLogLayer {
    /// A layer writing to `writer`.
    pub fn new(writer: AuditWriter) -> Self {
        Self {
            governor: Governor {
                writer: Arc::new(writer),
            },
            body_limit: crate::parse::DEFAULT_BODY_LIMIT,
        }
    }

    /// The largest request body read (to record the request, or to answer a refusal with
    /// the request's id). Default: 4 MiB.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// The writer (its counters, and `flush` at shutdown).
    pub fn writer(&self) -> &AuditWriter {
        &self.governor.writer
    }

    /// The deciding part, to stack in a [`Chain`](crate::govern::Chain).
    pub fn governor(&self) -> &Governor {
        &self.governor
    }
}

impl<S> Layer<S> for AuditLogLayer {
    type Service = AuditLog<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Governed::new(self.governor.clone(), inner).body_limit(self.body_limit)
    }
}

impl IntoGovern for AuditLogLayer {
    fn into_govern(self) -> Arc<dyn Govern> {
        Arc::new(self.governor)
    }
}
