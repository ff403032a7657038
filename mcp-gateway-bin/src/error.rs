//! Why the gateway, or its TLS, could not start. Depends on no other module of the crate, so
//! that the modules starting parts of the gateway (server, router, admin, tls) need not import
//! each other for it.

use std::net::SocketAddr;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// TLS files are unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// An upstream is misconfigured.
    #[error(transparent)]
    Upstream(#[from] mcp_gateway_layers::upstream::UpstreamError),
    /// Authentication is misconfigured.
    #[error("auth: {0}")]
    Auth(#[from] mcp_gateway_layers::auth::config::AuthBuildError),
    /// The audit log cannot be opened.
    #[error("audit: {0}")]
    Audit(#[source] std::io::Error),
    /// The pins file cannot be read.
    #[error("integrity: {0}")]
    Integrity(#[from] mcp_gateway_layers::integrity::pins::PinsError),
    /// A virtual server names what is not there.
    #[error("{0}")]
    Virtual(String),
    /// Telemetry cannot start.
    #[error(transparent)]
    Telemetry(#[from] mcp_gateway_layers::telemetry::config::TelemetryError),
    /// The admin listener could not be bound.
    #[error("cannot listen on {addr} (admin): {source}")]
    AdminBind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The certificate file could not be read or holds no certificate.
    #[error(transparent)]
    Cert(#[from] mcp_gateway_layers::upstream::config::CertError),
    /// The key file could not be read or holds no private key.
    #[error("private key {path}: {reason}")]
    Key {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// rustls refused the pair (say, the key does not match the certificate).
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}
