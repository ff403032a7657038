//! All five governing layers inside an axum application, stacked in the order the gateway
//! binary uses, in front of a real MCP server — next to a route of the app's own, the RFC 9728
//! document OAuthGuard's challenges point at, and `/metrics`.
//!
//! ```text
//! /mcp      OriginGuard → AuditLog → TraceInject → OAuthGuard → TokenBucket2D
//!           → SessionAffinity → Upstream
//! /.well-known/oauth-protected-resource/mcp   the guard's metadata document
//! /metrics  every layer's metrics (Prometheus text)
//! /hello    the app's own handler
//! ```
//!
//! Serve it with the client's address (`into_make_service_with_connect_info::<SocketAddr>()`):
//! limits are kept per client address here, and audit records name the client. Stop it with
//! its [`Shutdown`]: `axum::serve(..).with_graceful_shutdown(app.shutdown.requested())`, then
//! `app.shutdown.run(grace)` — open streams get `grace` to finish, the rest are ended, every
//! audit record is written and the queued spans exported.

use axum::routing::get;
use axum::Router;
use mcp_gateway_layers::audit::{AuditLogLayer, AuditWriter, FileSink, FsyncPolicy, WriterOptions};
use mcp_gateway_layers::auth::{ApiKeys, OAuthGuardLayer};
use mcp_gateway_layers::govern::{Chain, GovernedLayer};
use mcp_gateway_layers::limits::{KeySource, Limits, TokenBucket2DLayer};
use mcp_gateway_layers::prometheus::Prometheus;
use mcp_gateway_layers::sessions::{SessionAffinityLayer, SessionKey};
use mcp_gateway_layers::shutdown::Shutdown;
use mcp_gateway_layers::telemetry::TraceInjectLayer;
use mcp_gateway_layers::upstream::{Upstream, UpstreamConfig};
use mcp_gateway_layers::{AllowedOrigins, OriginGuardLayer};
use std::path::PathBuf;
use std::time::Duration;
use tower::ServiceBuilder;

/// What the app is built from.
#[derive(Debug)]
pub struct Options {
    /// The MCP server's endpoint.
    pub upstream: http::Uri,
    /// The URL clients reach the app at (`https://host[:port]`): the resource is this + `/mcp`.
    pub public_url: String,
    /// The API keys clients present as bearer tokens.
    pub keys: ApiKeys,
    /// Requests per minute per client address.
    pub requests_per_minute: u32,
    /// The audit log file.
    pub audit_log: PathBuf,
}

/// The app, and the handles its owner keeps for shutdown.
#[derive(Debug)]
pub struct FullApp {
    /// The routes.
    pub router: Router,
    /// The audit log's writer.
    pub audit: AuditWriter,
    /// The telemetry layer (its span processor, if one is set, and its metrics).
    pub telemetry: TraceInjectLayer,
    /// Stops it: give `shutdown.requested()` to the server's graceful shutdown, and call
    /// `shutdown.run(grace)` to stop.
    pub shutdown: Shutdown,
}

impl FullApp {
    /// Builds the app.
    pub fn new(o: Options) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let audit = AuditWriter::spawn(
            FileSink::open(&o.audit_log)?,
            WriterOptions::default().fsync(FsyncPolicy::Interval(Duration::from_millis(200))),
        )?;
        let telemetry = TraceInjectLayer::new();
        let guard =
            OAuthGuardLayer::new(o.keys, format!("{}/mcp", o.public_url)).scopes(["mcp:tools"]);
        let limits = TokenBucket2DLayer::new(
            Limits::new()
                .key(KeySource::Ip)
                .requests_per_minute(o.requests_per_minute),
        );
        let sessions = SessionAffinityLayer::new(SessionKey::generate()?).scope("mcp");
        let upstream = Upstream::new("demo", [o.upstream], UpstreamConfig::default())?;

        // The governors, outermost first, run as one future with one read of the request.
        let chain = Chain::new()
            // AuditLog outermost: every refusal below it is recorded.
            .with(Some(AuditLogLayer::new(audit.clone())))
            // TraceInject outside every refusing layer, so that refusals are traced too.
            .with(Some(telemetry.clone()))
            // OAuthGuard first of the deciders: its principal keys what follows.
            .with(Some(guard.clone()))
            // TokenBucket2D before sessions: a refused call touches no session state.
            .with(Some(limits.clone()));
        let shutdown = Shutdown::new()
            .audit(audit.clone())
            .telemetry(telemetry.clone());
        let mcp = ServiceBuilder::new()
            // Outermost: ends the answers still open when the shutdown's grace is over.
            .layer(shutdown.layer())
            .layer(OriginGuardLayer::new(AllowedOrigins::default()))
            .layer(GovernedLayer::new(chain))
            // SessionAffinity innermost, over the upstream's instances.
            .service(sessions.clone().service(upstream.instances()));

        let metrics = Prometheus::new()
            .with(telemetry.clone())
            .with(audit.clone())
            .with(limits)
            .with(sessions);
        let router = Router::new()
            .route("/hello", get(|| async { "hello from the host app\n" }))
            .route_service("/mcp", mcp)
            .route_service(&guard.metadata_path(), guard.metadata_service())
            .route_service("/metrics", metrics.service());
        Ok(Self {
            router,
            audit,
            telemetry,
            shutdown,
        })
    }
}
