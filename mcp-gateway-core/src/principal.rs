//! The identity of the caller, as authentication establishes it.
//!
//! The authentication layer (OAuthGuard) writes the [`Principal`] to the per-request record
//! ([`Exchange`](crate::exchange::Exchange), field `principal`): the layers inside and outside
//! it — rate limits, sessions, tracing, audit — read it from there, so every layer agrees on
//! who is calling. It is also put in the request extensions for handlers behind the gateway
//! (an axum `Extension<Principal>`). Its [`agent_key`](Principal::agent_key) — the OAuth client
//! id when the token names one, else the subject — is *the* agent: what budgets and metrics
//! are kept by, and what the spans, the access log and the audit log's `agent` name. The
//! subject is recorded beside it, never instead of it.
//!
//! ```
//! use mcp_gateway_core::{Principal, PrincipalKind};
//!
//! let p = Principal::new("user-42", PrincipalKind::User)
//!     .with_client_id("agent-a")
//!     .with_scopes(["tools:read", "tools:call"]);
//! assert!(p.has_scope("tools:call"));
//! assert_eq!(p.agent_key(), "agent-a");
//! ```

use std::collections::BTreeSet;
use std::sync::Arc;

/// Whether a principal is a person acting through an agent, or a machine acting for itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PrincipalKind {
    /// A token delegated by a user (authorization code flow).
    User,
    /// A machine-to-machine token (client credentials).
    Service,
    /// No authentication configured: the caller is anonymous.
    Anonymous,
}

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    subject: Arc<str>,
    client_id: Option<Arc<str>>,
    scopes: Arc<BTreeSet<String>>,
    kind: PrincipalKind,
}

impl Principal {
    /// A principal with a subject and a kind, no client id and no scopes.
    pub fn new(subject: impl Into<Arc<str>>, kind: PrincipalKind) -> Self {
        Self {
            subject: subject.into(),
            client_id: None,
            scopes: Arc::default(),
            kind,
        }
    }

    /// The anonymous principal.
    pub fn anonymous() -> Self {
        Self::new("anonymous", PrincipalKind::Anonymous)
    }

    /// Sets the OAuth client id (the agent).
    pub fn with_client_id(mut self, client_id: impl Into<Arc<str>>) -> Self {
        self.client_id = Some(client_id.into());
        self
    }

    /// Sets the granted scopes.
    pub fn with_scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scopes = Arc::new(scopes.into_iter().map(Into::into).collect());
        self
    }

    /// The subject (`sub`).
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The OAuth client id, when known.
    pub fn client_id(&self) -> Option<&str> {
        self.client_id.as_deref()
    }

    /// The granted scopes.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scopes.iter().map(String::as_str)
    }

    /// True when `scope` was granted.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.contains(scope)
    }

    /// The kind of principal.
    pub fn kind(&self) -> PrincipalKind {
        self.kind
    }

    /// The agent: the key that limits, costs, metrics, spans, the access log and the audit
    /// log attribute calls to — the client id when known, else the subject.
    pub fn agent_key(&self) -> &str {
        self.client_id.as_deref().unwrap_or(&self.subject)
    }
}

/// The `Authorization` value the gateway itself presents to the upstream for one request —
/// never the caller's token. An authentication layer puts it in the request extensions; the
/// forwarding service sends it after removing whatever the client sent.
#[derive(Clone, Debug)]
pub struct UpstreamAuthorization(pub http::HeaderValue);

/// A response extension an instance's service sets when the instance could not be reached
/// (connection refused or timed out, nothing sent): balancing layers eject the instance for a
/// while, and a session layer answers 404 for the sessions it owned instead of a 5xx.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InstanceUnreachable;

/// A request extension: this request is part of a client request that is charged to its
/// budgets once, by another request made for it — a virtual server's fan-out to its
/// upstreams beyond the first, or a request the gateway makes on its own behalf (opening an
/// upstream's session, resending after the upstream lost it, looking up a name). A limits
/// layer lets it pass without charging it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChargedElsewhere;

/// A response extension an instance's service sets when the instance closed the connection
/// after the request was written and before any byte of an answer (typically an instance
/// that has just died, on a connection reused from the pool). The request may have reached
/// it, so only a request that is safe to repeat elsewhere is sent again: a session layer
/// resends a legacy `initialize` (at worst the first instance keeps a session nobody uses).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionLost;
