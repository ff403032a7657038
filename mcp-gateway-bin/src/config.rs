//! The gateway's configuration: a TOML file, or flags alone.
//!
//! ```toml
//! [server]
//! listen = "127.0.0.1:8080"
//! body_limit = "4MiB"
//! max_header_bytes = "64KiB"
//! body_read_timeout = "60s"
//! sse_keepalive = "15s"
//! shutdown_grace = "30s"
//! allowed_origins = ["https://app.example.com"]
//! allow_localhost_origins = true
//! # tls = { cert = "cert.pem", key = "key.pem" }
//!
//! [log]
//! format = "text"   # or "json"
//! level = "info"
//!
//! [upstreams.demo]
//! url = "http://127.0.0.1:3001/mcp"   # or urls = ["http://a/mcp", "http://b/mcp"]
//! connect_timeout = "5s"
//! response_timeout = "60s"
//! read_timeout = "60s"               # silence inside a JSON answer's body
//! sse_idle_timeout = "5m"            # silence on an SSE stream ("0s": none)
//!
//! [auth]                            # absent: no authentication
//! issuer = "https://as.example.com"
//!
//! [limits]                          # absent: no limits
//! requests_per_minute = 600
//!
//! [audit]                           # absent: no audit
//! path = "/var/log/mcp-gateway/audit.jsonl"
//!
//! [sessions]
//! key_file = "session.key"
//!
//! [telemetry]                       # absent: no trace context, spans or metrics
//! otlp_endpoint = "http://127.0.0.1:4318"
//!
//! [admin]                           # absent: no admin listener
//! listen = "127.0.0.1:9464"         # /metrics, /healthz, /readyz
//! ```
//!
//! This module has `[server]`, `[log]` and `[admin]`, and the list of sections. Each
//! capability's section — its keys, defaults and checks — is the `config` module of the layers
//! crate's capability: `[upstreams.NAME]` in [`mcp_gateway_layers::upstream::config`], `[auth]`
//! and `[upstreams.NAME.credentials]` in [`mcp_gateway_layers::auth::config`], `[limits]` in
//! [`mcp_gateway_layers::limits::config`], `[audit]` in [`mcp_gateway_layers::audit::config`],
//! `[sessions]` in [`mcp_gateway_layers::sessions::config`], `[telemetry]` in
//! [`mcp_gateway_layers::telemetry::config`], `[integrity]` and `[[approvals]]` in
//! [`mcp_gateway_layers::integrity::config`].
//!
//! Unknown keys are errors, and every error names the file, line and column it comes from.

use mcp_gateway_layers::audit::config::{AuditConfig, AuditSpec};
use mcp_gateway_layers::auth::config::{AuthConfig, AuthSpec};
use mcp_gateway_layers::config::{from_toml_all, resolve, Diagnostics};
use mcp_gateway_layers::federation::config::{VirtualConfig, VirtualSpec};
use mcp_gateway_layers::integrity::config::{ApprovalConfig, IntegrityConfig, IntegritySpec};
use mcp_gateway_layers::limits::config::{LimitsConfig, LimitsSpec};
use mcp_gateway_layers::reload::config::ReloadSpec;
use mcp_gateway_layers::sessions::config::{SessionsConfig, SessionsSpec};
use mcp_gateway_layers::telemetry::config::{TelemetryConfig, TelemetrySpec};
use serde::de::{self, Deserializer};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

pub use mcp_gateway_layers::config::{
    check_url, parse_duration, parse_size, ConfigError, Dur, Size,
};
pub use mcp_gateway_layers::upstream::config::{parse_upstream_flag, UpstreamEntry, UpstreamSpec};

/// The whole configuration.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The listener and request policy.
    #[serde(default)]
    pub server: ServerConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Upstream MCP servers by name; each is served at `/mcp/NAME`. The name keeps its place
    /// in the file, for errors about the whole table.
    #[serde(default)]
    pub upstreams: BTreeMap<Spanned<String>, UpstreamEntry>,
    /// OAuthGuard: absent, no authentication.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Per-agent request and token budgets (TokenBucket2D). Absent: no limits.
    #[serde(default)]
    pub limits: Option<LimitsConfig>,
    /// The audit log (AuditLog). Absent: no audit.
    #[serde(default)]
    pub audit: Option<AuditConfig>,
    /// Sealed, routed legacy sessions (SessionAffinity).
    #[serde(default)]
    pub sessions: Option<SessionsConfig>,
    /// Trace context, spans and metrics (TraceInject). Absent: none.
    #[serde(default)]
    pub telemetry: Option<TelemetryConfig>,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`). Absent: none.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// Pinned tool definitions (ToolIntegrity). Absent: no pins.
    #[serde(default)]
    pub integrity: Option<IntegrityConfig>,
    /// Approval gates: `[[approvals]]`, one per rule.
    #[serde(default)]
    pub approvals: Vec<ApprovalConfig>,
    /// Virtual servers: `[virtual.NAME]`, each one endpoint over several upstreams.
    #[serde(default, rename = "virtual")]
    pub virtual_servers: BTreeMap<Spanned<String>, VirtualConfig>,
}

/// `[server]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on. Default `127.0.0.1:8080`.
    #[serde(default = "default_listen", deserialize_with = "de_listen")]
    pub listen: SocketAddr,
    /// Largest request body. Default 4 MiB.
    #[serde(default = "default_body_limit")]
    pub body_limit: Spanned<Size>,
    /// Largest request head (request line and header fields). Default 64 KiB.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: Spanned<Size>,
    /// How long SIGTERM/Ctrl-C waits for in-flight requests and open streams. Default 30 s.
    #[serde(default = "default_grace")]
    pub shutdown_grace: Dur,
    /// How long a client may take to send a request head (HTTP/1) before its connection is
    /// closed: the bound on slow or idle clients holding connections. Default 30 s.
    #[serde(default = "default_grace")]
    pub header_read_timeout: Dur,
    /// How long a request body may go without sending anything before it is answered 408.
    /// Default 60 s.
    #[serde(default = "default_body_read_timeout")]
    pub body_read_timeout: Dur,
    /// How long an SSE stream to a client may stay silent before the gateway sends it a
    /// comment (`: keep-alive`), so idle timeouts on the way do not cut it. Default 15 s;
    /// `"0s"`: never.
    #[serde(default = "default_sse_keepalive")]
    pub sse_keepalive: Dur,
    /// Browser origins allowed besides localhost (`*` for any).
    #[serde(default)]
    pub allowed_origins: Vec<Spanned<String>>,
    /// Whether localhost origins are allowed. Default true.
    #[serde(default = "yes")]
    pub allow_localhost_origins: bool,
    /// Terminate TLS with this certificate and key.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Runtime worker threads; default: one per available core. `1` runs a single-threaded
    /// runtime, the cheapest per request when the gateway is given one core.
    #[serde(default)]
    pub worker_threads: Option<Spanned<usize>>,
    /// How the worker threads run: one work-stealing runtime (`"shared"`, the default), or
    /// one single-threaded runtime per thread (`"per-core"`).
    #[serde(default)]
    pub runtime: RuntimeMode,
    /// The URL clients reach the gateway at; route NAME's resource URI is this plus
    /// `/mcp/NAME`. Default `http(s)://LISTEN`.
    #[serde(default)]
    pub public_url: Option<Spanned<String>>,
    /// Reload when this file, or a file it names (keys, key files, certificates, secret
    /// files), changes. Default false; SIGHUP and `POST /reload` reload either way.
    #[serde(default)]
    pub watch_config: Option<bool>,
    /// How long watched files must stay the same before a reload. Default 1 s.
    #[serde(default)]
    pub watch_debounce: Option<Spanned<Dur>>,
    /// How long the open streams of a route a reload removed may go on. Default 30 s.
    #[serde(default)]
    pub drain_timeout: Option<Spanned<Dur>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            body_limit: default_body_limit(),
            max_header_bytes: default_max_header_bytes(),
            shutdown_grace: default_grace(),
            header_read_timeout: default_grace(),
            body_read_timeout: default_body_read_timeout(),
            sse_keepalive: default_sse_keepalive(),
            allowed_origins: Vec::new(),
            allow_localhost_origins: true,
            tls: None,
            worker_threads: None,
            runtime: RuntimeMode::default(),
            public_url: None,
            watch_config: None,
            watch_debounce: None,
            drain_timeout: None,
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_body_limit() -> Spanned<Size> {
    // Not in the file, so no place in it; a default is never wrong, so never reported.
    Spanned::new(0..0, Size(mcp_gateway_layers::parse::DEFAULT_BODY_LIMIT))
}
fn default_max_header_bytes() -> Spanned<Size> {
    Spanned::new(
        0..0,
        Size(mcp_gateway_layers::head::DEFAULT_MAX_HEADER_BYTES),
    )
}

/// Parses a listen address, `IP:PORT`, saying what is wrong when it is not one.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let what = match s.rsplit_once(':') {
        _ if s.trim() != s => "it has spaces around it; ",
        _ if s.parse::<std::net::Ipv4Addr>().is_ok() => "it has no port; ",
        _ if s.parse::<std::net::Ipv6Addr>().is_ok() => {
            "it has no port (an IPv6 address with a port goes in brackets); "
        }
        Some((_, port)) if port.parse::<u16>().is_err() => {
            "the port is not a number from 0 to 65535; "
        }
        Some((host, _)) if host.parse::<std::net::Ipv6Addr>().is_ok() => {
            "an IPv6 address goes in brackets; "
        }
        Some(_) => "the host must be an IP address, not a name; ",
        None => "",
    };
    Err(format!(
        "invalid socket address {s:?}: {what}expected IP:PORT such as 127.0.0.1:8080 or [::1]:8080"
    ))
}

fn de_listen<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    struct Listen;
    impl de::Visitor<'_> for Listen {
        type Value = SocketAddr;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a socket address string, IP:PORT such as \"127.0.0.1:8080\"")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<SocketAddr, E> {
            parse_listen(s).map_err(E::custom)
        }
    }
    d.deserialize_str(Listen)
}
fn default_grace() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_sse_keepalive() -> Dur {
    Dur(Duration::from_secs(15))
}
fn default_body_read_timeout() -> Dur {
    Dur(Duration::from_secs(60))
}
fn yes() -> bool {
    true
}

/// `[server.tls]`: PEM files.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain (PEM).
    pub cert: Spanned<PathBuf>,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: Spanned<PathBuf>,
}

/// How the gateway's worker threads run (`[server] runtime`).
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeMode {
    /// One single-threaded runtime per worker thread, each accepting from the shared
    /// listening socket and keeping its own upstream connections: no work stealing, no
    /// cross-thread wake-ups. Fewer instructions per call, but a worker whose core is busy
    /// with another process keeps its connections waiting (a worse tail on shared cores).
    PerCore,
    /// One multi-threaded, work-stealing runtime with one listener: the default, for the
    /// better tail when the gateway shares its cores (measured in docs/performance.md).
    #[default]
    Shared,
}

/// Log output format.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// A `tracing` filter (`info`, `warn,mcp_gateway=debug`). `RUST_LOG` overrides it.
    #[serde(default = "default_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: default_level(),
        }
    }
}

fn default_level() -> String {
    "info".into()
}

/// A checked configuration, ready to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Listen address.
    pub listen: SocketAddr,
    /// Body limit in bytes.
    pub body_limit: usize,
    /// Largest request head in bytes.
    pub max_header_bytes: usize,
    /// Shutdown grace period.
    pub shutdown_grace: Duration,
    /// HTTP/1 request-head read timeout.
    pub header_read_timeout: Duration,
    /// The longest wait for the next piece of a request body.
    pub body_read_timeout: Duration,
    /// The silence after which an SSE stream gets a keep-alive comment (zero: never).
    pub sse_keepalive: Duration,
    /// Allowed origins.
    pub origins: mcp_gateway_layers::AllowedOrigins,
    /// TLS files.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log_level: String,
    /// Upstreams.
    pub upstreams: Vec<UpstreamSpec>,
    /// Runtime worker threads (`None`: one per core).
    pub worker_threads: Option<usize>,
    /// How the worker threads run.
    pub runtime: RuntimeMode,
    /// Public URL (`None`: derived from the listen address).
    pub public_url: Option<String>,
    /// OAuthGuard settings (`None`: no authentication).
    pub auth: Option<AuthSpec>,
    /// Per-agent budgets, when `[limits]` is present.
    pub limits: Option<LimitsSpec>,
    /// The audit log, when `[audit]` is present.
    pub audit: Option<AuditSpec>,
    /// Session settings, when `[sessions]` is present.
    pub sessions: Option<SessionsSpec>,
    /// Telemetry, when `[telemetry]` is present.
    pub telemetry: Option<TelemetrySpec>,
    /// The admin listener, when `[admin]` is present.
    pub admin: Option<AdminSpec>,
    /// Pins and approval gates, when `[integrity]` or `[[approvals]]` is present.
    pub integrity: Option<IntegritySpec>,
    /// The virtual servers (`[virtual.NAME]`), each served at `/mcp/NAME`.
    pub virtual_servers: Vec<VirtualSpec>,
    /// The reload keys of `[server]`.
    pub reload: ReloadSpec,
    /// The configuration file (`None`: started from flags alone, so nothing to reload from).
    pub source: Option<PathBuf>,
    /// The files the configuration names (key files, certificates, secret files), which
    /// `watch_config` watches besides the file itself.
    pub named_files: Vec<PathBuf>,
    /// What command-line flags changed after the file was read, applied again on a reload.
    pub overrides: Overrides,
}

/// The command-line flags that override the file (`serve --listen/--upstream/--tls-*`).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--upstream` (added to, or replacing, the file's upstream of the same name).
    pub upstreams: Vec<UpstreamSpec>,
    /// `--tls-cert` and `--tls-key`.
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl Overrides {
    /// Applies the flags to settings read from the file.
    pub fn apply(&self, settings: &mut Settings) {
        if let Some(l) = self.listen {
            settings.listen = l;
        }
        for u in &self.upstreams {
            settings.upstreams.retain(|e| e.name != u.name);
            settings.upstreams.push(u.clone());
        }
        if let Some(t) = &self.tls {
            settings.tls = Some(t.clone());
        }
        settings.overrides = self.clone();
    }
}

/// `[admin]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// The admin listener's address.
    pub listen: Spanned<SocketAddr>,
}

/// Checked `[admin]`.
#[derive(Debug, Clone)]
pub struct AdminSpec {
    /// Listen address.
    pub listen: SocketAddr,
}

/// The files a configuration names and reads — TLS certificate and key, API keys, session
/// keys, secret files, CA files, stdio secret files — resolved against `base`: what
/// `watch_config` watches besides the file itself. (The audit log is written, not read.)
fn named_files(config: &Config, base: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    let mut add = |p: &Path| out.push(resolve(base, p));
    if let Some(t) = &config.server.tls {
        add(t.cert.get_ref());
        add(t.key.get_ref());
    }
    if let Some(a) = &config.auth {
        if let Some(f) = &a.api_keys_file {
            add(f.get_ref());
        }
        if let Some(f) = a
            .introspection
            .as_ref()
            .and_then(|i| i.get_ref().client_secret_file.as_ref())
        {
            add(f.get_ref());
        }
    }
    if let Some(s) = &config.sessions {
        if let Some(f) = &s.key_file {
            add(f.get_ref());
        }
        for f in &s.previous_key_files {
            add(f.get_ref());
        }
    }
    if let Some(i) = &config.integrity {
        // `mcp-gateway pins approve` writes it; a watching gateway picks the approval up.
        add(i.pins_file.get_ref());
    }
    for u in config.upstreams.values() {
        if let Some(f) = &u.ca_file {
            add(f.get_ref());
        }
        if let Some(c) = &u.credentials {
            for f in [&c.secret_file, &c.client_secret_file]
                .into_iter()
                .flatten()
            {
                add(f.get_ref());
            }
        }
        if let Some(m) = &u.env_files {
            for f in m.get_ref().values() {
                add(f);
            }
        }
        for m in u.agent_env_files.iter().flat_map(|m| m.values()) {
            for f in m.values() {
                add(f);
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The smallest `server.max_header_bytes`: a request line and a few headers.
const MIN_HEADER_BYTES: usize = 1024;
/// The largest `server.max_header_bytes` (the HTTP/2 bound, twice it, must fit 32 bits).
const MAX_HEADER_BYTES: usize = 16 << 20;

/// Reads and checks a configuration file.
pub fn load(path: &Path) -> Result<Settings, Vec<ConfigError>> {
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError {
            source: source.clone(),
            location: None,
            message: format!("cannot read: {e}"),
        }]
    })?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut settings = parse(&text, &source, &base)?;
    settings.source = Some(path.to_path_buf());
    Ok(settings)
}

/// Parses and checks configuration text. Relative TLS paths resolve against `base`.
///
/// Every unknown key and wrong value is reported, each section's, not only the first; the
/// checks of the values run once the file parses.
pub fn parse(text: &str, source: &str, base: &Path) -> Result<Settings, Vec<ConfigError>> {
    let config: Config = from_toml_all(text, source)?;
    check(config, text, source, base)
}

/// Checks a parsed configuration: URLs, names, origins, TLS files, and each section (with
/// its capability's `check`). Every problem is reported, in the order of the file's sections.
pub fn check(
    config: Config,
    text: &str,
    source: &str,
    base: &Path,
) -> Result<Settings, Vec<ConfigError>> {
    let mut errors = Diagnostics::new(text, source);
    let named_files = named_files(&config, base);
    let reload = mcp_gateway_layers::reload::config::check(
        config.server.watch_config,
        config.server.watch_debounce.as_ref(),
        config.server.drain_timeout.as_ref(),
        &mut errors,
    );
    let mut origins = mcp_gateway_layers::AllowedOrigins::default()
        .allow_localhost(config.server.allow_localhost_origins);
    for o in &config.server.allowed_origins {
        match origins.clone().allow(o.get_ref()) {
            Ok(next) => origins = next,
            Err(e) => errors.error(Some(o.span()), e.to_string()),
        }
    }
    if let Some(w) = config
        .server
        .worker_threads
        .as_ref()
        .filter(|w| *w.get_ref() == 0)
    {
        errors.error(Some(w.span()), "server.worker_threads must be at least 1");
    }
    if config.server.header_read_timeout.0.is_zero() {
        errors.error(None, "server.header_read_timeout must be greater than 0");
    }
    if config.server.body_read_timeout.0.is_zero() {
        errors.error(None, "server.body_read_timeout must be greater than 0");
    }
    let head = config.server.max_header_bytes.get_ref().0;
    if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&head) {
        errors.error(
            Some(config.server.max_header_bytes.span()),
            "server.max_header_bytes must be between 1KiB and 16MiB",
        );
    }
    if config.server.body_limit.get_ref().0 == 0 {
        errors.error(
            Some(config.server.body_limit.span()),
            "server.body_limit must be greater than 0",
        );
    }
    // TLS files are loaded here, as serving would load them: a key that does not match its
    // certificate is a configuration error, not a start-up surprise.
    let tls = config.server.tls.as_ref().map(|t| {
        let (cert, key) = (
            resolve(base, t.cert.get_ref()),
            resolve(base, t.key.get_ref()),
        );
        let cert_ok = match crate::tls::load_certs(&cert) {
            Ok(_) => true,
            Err(e) => {
                errors.error(Some(t.cert.span()), format!("server.tls: {e}"));
                false
            }
        };
        let key_ok = match std::fs::metadata(&key) {
            Ok(_) => true,
            Err(e) => {
                errors.error(
                    Some(t.key.span()),
                    format!("server.tls: private key {}: {e}", key.display()),
                );
                false
            }
        };
        if cert_ok && key_ok {
            if let Err(e) = crate::tls::server_config(&cert, &key) {
                errors.error(Some(t.key.span()), format!("server.tls: {e}"));
            }
        }
        (cert, key)
    });
    let upstreams = mcp_gateway_layers::upstream::config::check_with_auth(
        &config.upstreams,
        config.auth.as_ref(),
        base,
        &mut errors,
    );
    let public_url = config
        .server
        .public_url
        .as_ref()
        .and_then(|u| match check_url(u.get_ref()) {
            Ok(_) => Some(u.get_ref().trim().trim_end_matches('/').to_owned()),
            Err(m) => {
                errors.error(Some(u.span()), format!("server.public_url: {m}"));
                None
            }
        });
    let names: Vec<&str> = config
        .upstreams
        .keys()
        .map(|k| k.get_ref().as_str())
        .collect();
    let auth = config
        .auth
        .as_ref()
        .and_then(|a| mcp_gateway_layers::auth::config::check(a, &names, base, &mut errors));
    let limits = config
        .limits
        .as_ref()
        .and_then(|l| mcp_gateway_layers::limits::config::check(l, &names, &mut errors));
    let audit = config
        .audit
        .as_ref()
        .and_then(|a| mcp_gateway_layers::audit::config::check(a, base, &mut errors));
    let sessions = config
        .sessions
        .as_ref()
        .and_then(|c| mcp_gateway_layers::sessions::config::check(c, base, &mut errors));
    let telemetry = config
        .telemetry
        .as_ref()
        .and_then(|t| mcp_gateway_layers::telemetry::config::check(t, &mut errors));
    let integrity = mcp_gateway_layers::integrity::config::check(
        config.integrity.as_ref(),
        &config.approvals,
        &names,
        base,
        &mut errors,
    );
    let virtual_servers =
        mcp_gateway_layers::federation::config::check(&config.virtual_servers, &names, &mut errors);
    let admin = config.admin.as_ref().map(|a| {
        let spec = AdminSpec {
            listen: *a.listen.get_ref(),
        };
        let public = config.server.listen;
        if spec.listen.port() != 0
            && spec.listen.port() == public.port()
            && (spec.listen.ip() == public.ip()
                || spec.listen.ip().is_unspecified()
                || public.ip().is_unspecified())
        {
            errors.error(
                Some(a.listen.span()),
                format!(
                    "admin.listen {} is the public listener's address; give the admin listener its own",
                    spec.listen
                ),
            );
        }
        spec
    });
    if !errors.is_empty() {
        return Err(errors.into_errors());
    }
    Ok(Settings {
        telemetry,
        admin,
        integrity,
        virtual_servers,
        sessions,
        public_url,
        auth,
        limits,
        audit,
        listen: config.server.listen,
        body_limit: config.server.body_limit.get_ref().0,
        max_header_bytes: head,
        shutdown_grace: config.server.shutdown_grace.0,
        header_read_timeout: config.server.header_read_timeout.0,
        body_read_timeout: config.server.body_read_timeout.0,
        sse_keepalive: config.server.sse_keepalive.0,
        origins,
        tls,
        log_format: config.log.format,
        log_level: config.log.level,
        upstreams,
        worker_threads: config.server.worker_threads.map(Spanned::into_inner),
        runtime: config.server.runtime,
        reload,
        source: None,
        named_files,
        overrides: Overrides::default(),
    })
}

impl Settings {
    /// Adds the upstreams given as `--upstream` flags. A flag replaces a configured upstream of
    /// the same name (the names replaced are returned, to warn about); the same name in two
    /// flags is an error, not a silent "last one wins".
    pub fn add_flag_upstreams(
        &mut self,
        flags: Vec<UpstreamSpec>,
    ) -> Result<Vec<String>, ConfigError> {
        mcp_gateway_layers::upstream::config::add_flag_upstreams(&mut self.upstreams, flags)
    }

    /// Settings from flags alone: one listener, the given upstreams, defaults elsewhere.
    pub fn from_flags(listen: SocketAddr, upstreams: Vec<UpstreamSpec>) -> Self {
        Self {
            listen,
            body_limit: mcp_gateway_layers::parse::DEFAULT_BODY_LIMIT,
            max_header_bytes: mcp_gateway_layers::head::DEFAULT_MAX_HEADER_BYTES,
            shutdown_grace: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(60),
            sse_keepalive: Duration::from_secs(15),
            origins: mcp_gateway_layers::AllowedOrigins::default(),
            tls: None,
            log_format: LogFormat::Text,
            log_level: default_level(),
            upstreams,
            worker_threads: None,
            runtime: RuntimeMode::default(),
            public_url: None,
            auth: None,
            limits: None,
            audit: None,
            sessions: None,
            telemetry: None,
            admin: None,
            integrity: None,
            virtual_servers: Vec::new(),
            reload: ReloadSpec::default(),
            source: None,
            named_files: Vec::new(),
            overrides: Overrides::default(),
        }
    }

    /// The URL clients reach the gateway at: `server.public_url`, or the listen address.
    pub fn public_base(&self) -> String {
        self.public_url.clone().unwrap_or_else(|| {
            let scheme = if self.tls.is_some() { "https" } else { "http" };
            format!("{scheme}://{}", self.listen)
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn errs(text: &str) -> Vec<String> {
        parse(text, "gw.toml", Path::new("."))
            .err()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn full_config() {
        let s = parse(
            r#"
[server]
listen = "0.0.0.0:9000"
public_url = "https://gw.example.com/"
body_limit = "1MiB"
shutdown_grace = "250ms"
allowed_origins = ["https://app.example.com"]
[log]
format = "json"
level = "debug"
[upstreams.a]
url = "http://127.0.0.1:3001/mcp"
response_timeout = 5
[upstreams.b]
urls = ["http://h1/mcp", "https://h2:8443/mcp"]
"#,
            "gw.toml",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(s.listen.port(), 9000);
        assert_eq!(s.body_limit, 1 << 20);
        assert_eq!(s.shutdown_grace, Duration::from_millis(250));
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.upstreams.len(), 2);
        assert_eq!(s.upstreams[0].response_timeout, Duration::from_secs(5));
        assert_eq!(s.upstreams[1].urls.len(), 2);
        assert!(s.origins.permits("https://app.example.com"));
        assert_eq!(s.public_url.as_deref(), Some("https://gw.example.com"));
    }

    #[test]
    fn errors_have_locations() {
        let e = errs("[server]\nlisten = \"127.0.0.1:1\"\nbogus = 1\n[upstreams.a]\nurl = \"http://x/mcp\"\n");
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("gw.toml:3:1: unknown field `bogus`"),
            "{e:?}"
        );
        let e =
            errs("[server]\nallowed_origins = [\"nope\"]\n[upstreams.a]\nurl = \"http://x/mcp\"\n");
        assert!(e[0].starts_with("gw.toml:2:20: invalid origin"), "{e:?}");
        let e = errs("[server]\ntls = { cert = \"/nonexistent/c.pem\", key = \"/nonexistent/k.pem\" }\n[upstreams.a]\nurl = \"http://x/mcp\"\n");
        assert_eq!(e.len(), 2, "{e:?}");
        // A key that is not the certificate's is caught by `check`, at the key.
        let dir = std::env::temp_dir().join(format!("mcpgw-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = rcgen::generate_simple_self_signed(vec!["a".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b".into()]).unwrap();
        std::fs::write(dir.join("c.pem"), a.cert.pem()).unwrap();
        std::fs::write(dir.join("k.pem"), b.signing_key.serialize_pem()).unwrap();
        let text = "[server]\ntls = { cert = \"c.pem\", key = \"k.pem\" }\n[upstreams.a]\nurl = \"http://x/mcp\"\n";
        let e: Vec<String> = parse(text, "gw.toml", &dir)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(e[0].starts_with("gw.toml:2:"), "{e:?}");
        assert!(e[0].contains("server.tls"), "{e:?}");
        std::fs::write(dir.join("k.pem"), a.signing_key.serialize_pem()).unwrap();
        assert!(parse(text, "gw.toml", &dir).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn every_section_s_parse_errors_are_reported() {
        let text = "[server]\nlisten = \"127.0.0.1:1\"\nlisten_typo = 1\nbody_limt = 5\n\
                    [limits]\nrequests_per_minute = \"many\"\n\
                    [upstreams.demo]\nurl = \"http://x/mcp\"\ntimeout = 5\n\
                    [bogus]\n";
        let e = errs(text);
        assert_eq!(e.len(), 5, "{e:?}");
        assert!(
            e[0].starts_with("gw.toml:3:1: unknown field `listen_typo`"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("gw.toml:4:1: unknown field `body_limt`"),
            "{e:?}"
        );
        assert!(
            e[2].starts_with("gw.toml:6:23: invalid type: string \"many\", expected u64"),
            "{e:?}"
        );
        assert!(
            e[3].starts_with("gw.toml:9:1: unknown field `timeout`"),
            "{e:?}"
        );
        assert!(
            e[4].starts_with("gw.toml:10:2: unknown field `bogus`"),
            "{e:?}"
        );
    }

    #[test]
    fn zero_limits_point_at_their_values() {
        let text = "[server]\nlisten = \"127.0.0.1:1\"\nworker_threads = 0\nbody_limit = \"0MiB\"\n[upstreams.a]\nurl = \"http://x/mcp\"\n";
        let e = errs(text);
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(
            e[0],
            "gw.toml:3:18: server.worker_threads must be at least 1"
        );
        assert_eq!(
            e[1],
            "gw.toml:4:14: server.body_limit must be greater than 0"
        );
        // Non-zero values, and the defaults, pass.
        let s = parse(
            "[server]\nworker_threads = 1\n[upstreams.a]\nurl = \"http://x/mcp\"\n",
            "gw.toml",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(s.worker_threads, Some(1));
        assert_eq!(s.body_limit, mcp_gateway_layers::parse::DEFAULT_BODY_LIMIT);
        assert_eq!(s.max_header_bytes, 64 * 1024);
        assert_eq!(s.runtime, RuntimeMode::Shared);
        let s = parse(
            "[server]\nruntime = \"per-core\"\n[upstreams.a]\nurl = \"http://x/mcp\"\n",
            "gw.toml",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(s.runtime, RuntimeMode::PerCore);
        assert!(parse(
            "[server]\nruntime = \"fast\"\n[upstreams.a]\nurl = \"http://x/mcp\"\n",
            "gw.toml",
            Path::new("."),
        )
        .is_err());
    }

    #[test]
    fn listener_bounds_are_checked() {
        let e = errs("[server]\nmax_header_bytes = 100\n[upstreams.a]\nurl = \"http://x/mcp\"\n");
        assert_eq!(
            e,
            ["gw.toml:2:20: server.max_header_bytes must be between 1KiB and 16MiB"]
        );
        let s = parse(
            "[server]\nmax_header_bytes = \"16KiB\"\n[upstreams.a]\nurl = \"http://x/mcp\"\n",
            "gw.toml",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(s.max_header_bytes, 16 * 1024);
        assert_eq!(s.body_read_timeout, Duration::from_secs(60));
        assert_eq!(s.sse_keepalive, Duration::from_secs(15));
        let e =
            errs("[server]\nbody_read_timeout = \"0s\"\n[upstreams.a]\nurl = \"http://x/mcp\"\n");
        assert_eq!(
            e,
            ["gw.toml: server.body_read_timeout must be greater than 0"]
        );
    }

    #[test]
    fn invalid_listen_addresses_say_what_is_wrong() {
        let e = errs("[server]\nlisten = \"nope\"\n[upstreams.a]\nurl = \"http://x/mcp\"\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("gw.toml:2:10: invalid socket address \"nope\": expected IP:PORT such as 127.0.0.1:8080"),
            "{e:?}"
        );
        let e = errs("[server]\nlisten = 8080\n[upstreams.a]\nurl = \"http://x/mcp\"\n");
        assert!(e[0].starts_with("gw.toml:2:10: "), "{e:?}");
        assert!(e[0].contains("IP:PORT"), "{e:?}");
        for (input, why) in [
            ("127.0.0.1", "it has no port"),
            ("localhost:8080", "the host must be an IP address"),
            ("127.0.0.1:99999", "the port is not a number"),
            (
                "::1",
                "it has no port (an IPv6 address with a port goes in brackets)",
            ),
            ("1:2:3:4:5:6:7:8:80", "an IPv6 address goes in brackets"),
            (" 127.0.0.1:8080", "spaces"),
        ] {
            let m = parse_listen(input).unwrap_err();
            assert!(m.contains(why), "{input:?}: {m}");
            assert!(m.contains("expected IP:PORT"), "{input:?}: {m}");
        }
        assert_eq!(parse_listen("[::1]:8080").unwrap().port(), 8080);
        assert_eq!(parse_listen("0.0.0.0:0").unwrap().port(), 0);
    }

    #[test]
    fn each_section_is_checked_in_place_and_in_order() {
        let text = "[upstreams.a]\nurl = \"http://x/mcp\"\ncredentials = { type = \"magic\" }\n\
                    [auth]\nissuer = \"ftp://as\"\n\
                    [limits]\nrequests_per_minute = 0\n\
                    [audit]\npath = \"a.jsonl\"\nkeep = 0\n\
                    [sessions]\nstore = \"disk\"\n\
                    [telemetry]\nsample_ratio = 2.0\n\
                    [admin]\nlisten = \"127.0.0.1:8080\"\n";
        let e = errs(text);
        assert_eq!(
            e,
            [
                "gw.toml:3:24: upstreams.a.credentials: unknown type \"magic\": use \"static\", \"client_credentials\" or \"token_exchange\"",
                "gw.toml:5:10: auth.issuer: URL \"ftp://as\" must start with http:// or https://",
                "gw.toml:7:23: limits.requests_per_minute must be between 1 and 4294967295",
                "gw.toml:10:8: audit.keep must be at least 1 (rotated files kept)",
                "gw.toml:12:9: sessions.store: \"disk\" is not \"memory\" or \"redis\"",
                "gw.toml:14:16: telemetry.sample_ratio must be between 0.0 and 1.0, not 2",
                "gw.toml:16:10: admin.listen 127.0.0.1:8080 is the public listener's address; give the admin listener its own",
            ]
        );
        let s = parse(
            "[upstreams.a]\nurl = \"http://x/mcp\"\n[limits]\nrequests_per_minute = 5\n[sessions]\n[telemetry]\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            "gw.toml",
            Path::new("."),
        )
        .unwrap();
        assert!(s.limits.is_some() && s.sessions.is_some() && s.telemetry.is_some());
        assert!(s.auth.is_none() && s.audit.is_none());
        assert_eq!(s.admin.unwrap().listen.port(), 0);
    }
}
