//! The gateway's configuration: a TOML file, or flags alone.
//!
//! ```toml
//! [server]
//! listen = "127.0.0.1:8080"
//! body_limit = "4MiB"
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
//!
//! [limits]                          # absent: no limits
//! key = "agent"                     # or "ip", or "header:x-agent-id"
//! requests_per_minute = 600
//! tokens_per_minute = 200000
//! store = "memory"                  # or "redis"
//! # redis_url = "redis://127.0.0.1:6379/0"
//! # on_store_error = "local"        # or "deny"
//!
//! [[limits.rules]]
//! tools = ["analyze_*"]
//! tokens_per_minute = 50000
//!
//! [audit]                           # absent: no audit (see audit_config)
//! path = "/var/log/mcp-gateway/audit.jsonl"
//! [sessions]                        # see sessions_config
//! key_file = "session.key"
//!
//! [telemetry]                       # absent: no trace context, spans or metrics (telemetry_config)
//! otlp_endpoint = "http://127.0.0.1:4318"
//! service_name = "mcp-gateway"
//! sample_ratio = 1.0
//!
//! [admin]                           # absent: no admin listener
//! listen = "127.0.0.1:9464"         # /metrics, /healthz, /readyz
//! ```
//!
//! Unknown keys are errors, and every error names the file, line and column it comes from.

use serde::de::{self, Deserializer};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// A configuration problem, with where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or `<flags>` for the command line).
    pub source: String,
    /// 1-based line and column, when known.
    pub location: Option<(usize, usize)>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some((l, c)) => write!(f, "{}:{l}:{c}: {}", self.source, self.message),
            None => write!(f, "{}: {}", self.source, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// A duration written as `250ms`, `30s`, `5m`, `1h`, or a whole number of seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

/// Parses `250ms`, `30s`, `5m`, `1h` or `30`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 250ms, 30s, 5m, 1h"))?;
    let d = match unit.trim() {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        other => {
            return Err(format!(
                "invalid duration unit {other:?} in {s:?}: use ms, s, m or h"
            ))
        }
    };
    Ok(d)
}

/// Parses `4MiB`, `512KiB`, `1MB`, `1GiB` or a number of bytes.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected e.g. 4MiB, 512KiB, 1000000"))?;
    let mul: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "invalid size unit {other:?} in {s:?}: use B, KiB, MiB, GiB, KB, MB or GB"
            ))
        }
    };
    n.checked_mul(mul)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrStr {
    Num(u64),
    Str(String),
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumOrStr::deserialize(d)? {
            NumOrStr::Num(n) => Ok(Dur(Duration::from_secs(n))),
            NumOrStr::Str(s) => parse_duration(&s).map(Dur).map_err(de::Error::custom),
        }
    }
}

/// A size in bytes written as `4MiB` or a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub usize);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumOrStr::deserialize(d)? {
            NumOrStr::Num(n) => usize::try_from(n).map(Size).map_err(de::Error::custom),
            NumOrStr::Str(s) => parse_size(&s).map(Size).map_err(de::Error::custom),
        }
    }
}

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
    pub auth: Option<crate::auth_config::AuthConfig>,
    /// Per-agent request and token budgets (TokenBucket2D). Absent: no limits.
    #[serde(default)]
    pub limits: Option<LimitsConfig>,
    /// The audit log (AuditLog). Absent: no audit.
    #[serde(default)]
    pub audit: Option<crate::audit_config::AuditConfig>,
    /// Sealed, routed legacy sessions (SessionAffinity); see `sessions_config`.
    #[serde(default)]
    pub sessions: Option<crate::sessions_config::SessionsConfig>,
    /// Trace context, spans and metrics (TraceInject). Absent: none.
    #[serde(default)]
    pub telemetry: Option<crate::telemetry_config::TelemetryConfig>,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`). Absent: none.
    #[serde(default)]
    pub admin: Option<crate::telemetry_config::AdminConfig>,
}

/// `[limits]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// `agent` (default), `ip`, or `header:NAME`.
    #[serde(default)]
    pub key: Option<Spanned<String>>,
    /// Requests per minute per key.
    #[serde(default)]
    pub requests_per_minute: Option<Spanned<u64>>,
    /// Tokens (input + output of tool calls) per minute per key.
    #[serde(default)]
    pub tokens_per_minute: Option<Spanned<u64>>,
    /// `memory` (default) or `redis`.
    #[serde(default)]
    pub store: Option<Spanned<String>>,
    /// The Redis server, for `store = "redis"`.
    #[serde(default)]
    pub redis_url: Option<Spanned<String>>,
    /// How long a Redis decision may take before `on_store_error` applies. Default 100 ms.
    #[serde(default)]
    pub redis_timeout: Option<Dur>,
    /// Prefix of the Redis keys. Default `mcpgw:`.
    #[serde(default)]
    pub redis_prefix: Option<String>,
    /// `local` (default: this replica's own budgets) or `deny` (503) when Redis cannot answer.
    #[serde(default)]
    pub on_store_error: Option<Spanned<String>>,
    /// Finer token budgets per tool pattern.
    #[serde(default)]
    pub rules: Vec<LimitRuleConfig>,
}

/// `[[limits.rules]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitRuleConfig {
    /// Tool name patterns (`*` matches any run of characters).
    pub tools: Spanned<Vec<String>>,
    /// Only on these upstreams (all when absent).
    #[serde(default)]
    pub upstreams: Option<Spanned<Vec<String>>>,
    /// Tokens per minute per key for the matching tools.
    pub tokens_per_minute: Spanned<u64>,
}

/// Where checked limits keep their budgets.
#[derive(Debug, Clone)]
pub enum LimitStoreSpec {
    /// This process's memory.
    Memory,
    /// A shared Redis.
    Redis {
        /// The server URL.
        url: String,
        /// Decision timeout.
        timeout: Duration,
        /// Key prefix.
        prefix: String,
    },
}

/// Checked `[limits]`.
#[derive(Debug, Clone)]
pub struct LimitsSpec {
    /// The budgets.
    pub limits: mcp_gateway_layers::limits::Limits,
    /// Where they are kept.
    pub store: LimitStoreSpec,
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
    /// How long SIGTERM/Ctrl-C waits for in-flight requests and open streams. Default 30 s.
    #[serde(default = "default_grace")]
    pub shutdown_grace: Dur,
    /// How long a client may take to send a request head (HTTP/1) before its connection is
    /// closed: the bound on slow or idle clients holding connections. Default 30 s.
    #[serde(default = "default_grace")]
    pub header_read_timeout: Dur,
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
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            body_limit: default_body_limit(),
            shutdown_grace: default_grace(),
            header_read_timeout: default_grace(),
            allowed_origins: Vec::new(),
            allow_localhost_origins: true,
            tls: None,
            worker_threads: None,
            runtime: RuntimeMode::default(),
            public_url: None,
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

/// `[upstreams.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamEntry {
    /// One instance URL.
    #[serde(default)]
    pub url: Option<Spanned<String>>,
    /// Several instance URLs of the same server.
    #[serde(default)]
    pub urls: Vec<Spanned<String>>,
    /// Connect timeout. Default 5 s.
    #[serde(default)]
    pub connect_timeout: Option<Dur>,
    /// Response-start timeout. Default 60 s.
    #[serde(default)]
    pub response_timeout: Option<Dur>,
    /// PEM file of CA certificates trusted for `https://` instances, besides the system's.
    #[serde(default)]
    pub ca_file: Option<Spanned<PathBuf>>,
    /// What the gateway presents to this upstream (never the caller's token).
    #[serde(default)]
    pub credentials: Option<crate::auth_config::CredentialsConfig>,
}

/// A checked upstream.
#[derive(Debug, Clone)]
pub struct UpstreamSpec {
    /// Name (route `/mcp/NAME`).
    pub name: String,
    /// Instance URLs.
    pub urls: Vec<http::Uri>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Response-start timeout.
    pub response_timeout: Duration,
    /// Extra CA certificates (PEM file) for `https://` instances.
    pub ca_file: Option<PathBuf>,
    /// Credentials presented to the upstream.
    pub credentials: Option<crate::auth_config::CredentialsSpec>,
}

/// A checked configuration, ready to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Listen address.
    pub listen: SocketAddr,
    /// Body limit in bytes.
    pub body_limit: usize,
    /// Shutdown grace period.
    pub shutdown_grace: Duration,
    /// HTTP/1 request-head read timeout.
    pub header_read_timeout: Duration,
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
    pub auth: Option<crate::auth_config::AuthSettings>,
    /// Per-agent budgets, when `[limits]` is present.
    pub limits: Option<LimitsSpec>,
    /// The audit log, when `[audit]` is present.
    pub audit: Option<crate::audit_config::AuditSpec>,
    /// Session settings, when `[sessions]` is present.
    pub sessions: Option<crate::sessions_config::SessionsSpec>,
    /// Telemetry, when `[telemetry]` is present.
    pub telemetry: Option<crate::telemetry_config::TelemetrySpec>,
    /// The admin listener, when `[admin]` is present.
    pub admin: Option<crate::telemetry_config::AdminSpec>,
}

pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, col)
}

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
    parse(&text, &source, &base)
}

/// Parses and checks configuration text. Relative TLS paths resolve against `base`.
pub fn parse(text: &str, source: &str, base: &Path) -> Result<Settings, Vec<ConfigError>> {
    let config: Config = toml::from_str(text).map_err(|e| {
        vec![ConfigError {
            source: source.to_owned(),
            location: e.span().map(|s| line_col(text, s.start)),
            message: e.message().trim().to_owned(),
        }]
    })?;
    check(config, text, source, base)
}

/// Checks a parsed configuration: URLs, names, origins, TLS files.
pub fn check(
    config: Config,
    text: &str,
    source: &str,
    base: &Path,
) -> Result<Settings, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let err_at = |span: Option<std::ops::Range<usize>>, message: String| ConfigError {
        source: source.to_owned(),
        location: span.map(|s| line_col(text, s.start)),
        message,
    };
    let mut origins = mcp_gateway_layers::AllowedOrigins::default()
        .allow_localhost(config.server.allow_localhost_origins);
    for o in &config.server.allowed_origins {
        match origins.clone().allow(o.get_ref()) {
            Ok(next) => origins = next,
            Err(e) => errors.push(err_at(Some(o.span()), e.to_string())),
        }
    }
    if let Some(w) = config
        .server
        .worker_threads
        .as_ref()
        .filter(|w| *w.get_ref() == 0)
    {
        errors.push(err_at(
            Some(w.span()),
            "server.worker_threads must be at least 1".into(),
        ));
    }
    if config.server.header_read_timeout.0.is_zero() {
        errors.push(err_at(
            None,
            "server.header_read_timeout must be greater than 0".into(),
        ));
    }
    if config.server.body_limit.get_ref().0 == 0 {
        errors.push(err_at(
            Some(config.server.body_limit.span()),
            "server.body_limit must be greater than 0".into(),
        ));
    }
    // TLS files are loaded here, as serving would load them: a key that does not match its
    // certificate is a configuration error, not a start-up surprise.
    let tls = config.server.tls.as_ref().map(|t| {
        let (cert, key) = (resolve(base, &t.cert), resolve(base, &t.key));
        let cert_ok = match crate::tls::load_certs(&cert) {
            Ok(_) => true,
            Err(e) => {
                errors.push(err_at(Some(t.cert.span()), format!("server.tls: {e}")));
                false
            }
        };
        let key_ok = match std::fs::metadata(&key) {
            Ok(_) => true,
            Err(e) => {
                errors.push(err_at(
                    Some(t.key.span()),
                    format!("server.tls: private key {}: {e}", key.display()),
                ));
                false
            }
        };
        if cert_ok && key_ok {
            if let Err(e) = crate::tls::server_config(&cert, &key) {
                errors.push(err_at(Some(t.key.span()), format!("server.tls: {e}")));
            }
        }
        (cert, key)
    });
    let mut upstreams = Vec::new();
    if config.upstreams.is_empty() {
        errors.push(err_at(
            None,
            "no upstreams: add an [upstreams.NAME] table with a url".into(),
        ));
    }
    for (spanned_name, entry) in &config.upstreams {
        let name = spanned_name.get_ref();
        if !valid_name(name) {
            errors.push(err_at(
                Some(spanned_name.span()),
                format!("upstream name {name:?} must use only letters, digits, '-', '_' and '.'"),
            ));
        }
        let mut raw: Vec<&Spanned<String>> = entry.url.iter().collect();
        raw.extend(entry.urls.iter());
        if raw.is_empty() {
            errors.push(err_at(
                Some(spanned_name.span()),
                format!("upstream {name:?} needs url or urls"),
            ));
        }
        if entry.url.is_some() && !entry.urls.is_empty() {
            errors.push(err_at(
                entry.url.as_ref().map(Spanned::span),
                format!("upstream {name:?}: give url or urls, not both"),
            ));
        }
        let mut urls = Vec::new();
        for u in raw {
            match check_url(u.get_ref()) {
                Ok(uri) => urls.push(uri),
                Err(m) => errors.push(err_at(Some(u.span()), format!("upstream {name:?}: {m}"))),
            }
        }
        let ca_file = entry.ca_file.as_ref().map(|p| {
            let full = resolve(base, p);
            if let Err(e) = crate::tls::load_certs(&full) {
                errors.push(err_at(
                    Some(p.span()),
                    format!("upstream {name:?}: ca_file: {e}"),
                ));
            }
            full
        });
        let credentials = entry.credentials.as_ref().and_then(|c| {
            let mut e = crate::auth_config::Errs {
                text,
                source,
                list: Vec::new(),
            };
            let default_resource = urls.first().map(ToString::to_string);
            let spec = crate::auth_config::check_credentials(
                name,
                c,
                config.auth.as_ref(),
                default_resource,
                base,
                &mut e,
            );
            errors.extend(e.list);
            spec
        });
        upstreams.push(UpstreamSpec {
            name: name.clone(),
            ca_file,
            credentials,
            urls,
            connect_timeout: entry
                .connect_timeout
                .map_or(Duration::from_secs(5), |d| d.0),
            response_timeout: entry
                .response_timeout
                .map_or(Duration::from_secs(60), |d| d.0),
        });
    }
    let public_url = config
        .server
        .public_url
        .as_ref()
        .and_then(|u| match check_url(u.get_ref()) {
            Ok(_) => Some(u.get_ref().trim().trim_end_matches('/').to_owned()),
            Err(m) => {
                errors.push(err_at(Some(u.span()), format!("server.public_url: {m}")));
                None
            }
        });
    let auth = config.auth.as_ref().and_then(|a| {
        let names: Vec<&str> = config
            .upstreams
            .keys()
            .map(|k| k.get_ref().as_str())
            .collect();
        let mut e = crate::auth_config::Errs {
            text,
            source,
            list: Vec::new(),
        };
        let settings = crate::auth_config::check_auth(a, &names, base, &mut e);
        errors.extend(e.list);
        settings
    });
    let limits = config.limits.as_ref().and_then(|l| {
        check_limits(l, &config.upstreams, &mut |span, m| {
            errors.push(err_at(span, m))
        })
    });
    let audit = config.audit.as_ref().and_then(|a| {
        let mut e = crate::auth_config::Errs {
            text,
            source,
            list: Vec::new(),
        };
        let spec = crate::audit_config::check_audit(a, base, &mut e);
        errors.extend(e.list);
        spec
    });
    let sessions = config.sessions.as_ref().and_then(|c| {
        match crate::sessions_config::check_sessions(c, base, text, source) {
            Ok(spec) => Some(spec),
            Err(e) => {
                errors.extend(e);
                None
            }
        }
    });
    let telemetry = config.telemetry.as_ref().and_then(|t| {
        let mut e = crate::auth_config::Errs {
            text,
            source,
            list: Vec::new(),
        };
        let spec = crate::telemetry_config::check_telemetry(t, &mut e);
        errors.extend(e.list);
        spec
    });
    let admin = config.admin.as_ref().map(|a| {
        let spec = crate::telemetry_config::check_admin(a);
        let public = config.server.listen;
        if spec.listen.port() != 0
            && spec.listen.port() == public.port()
            && (spec.listen.ip() == public.ip()
                || spec.listen.ip().is_unspecified()
                || public.ip().is_unspecified())
        {
            errors.push(err_at(
                Some(a.listen.span()),
                format!(
                    "admin.listen {} is the public listener's address; give the admin listener its own",
                    spec.listen
                ),
            ));
        }
        spec
    });
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Settings {
        telemetry,
        admin,
        sessions,
        public_url,
        auth,
        limits,
        audit,
        listen: config.server.listen,
        body_limit: config.server.body_limit.get_ref().0,
        shutdown_grace: config.server.shutdown_grace.0,
        header_read_timeout: config.server.header_read_timeout.0,
        origins,
        tls,
        log_format: config.log.format,
        log_level: config.log.level,
        upstreams,
        worker_threads: config.server.worker_threads.map(Spanned::into_inner),
        runtime: config.server.runtime,
    })
}

/// `store = "memory" | "redis"` and `redis_url`, checked alike for every section that has a
/// store: the Redis URL when the store is Redis (and usable), `None` for memory.
pub(crate) fn check_store(
    section: &str,
    store: Option<&Spanned<String>>,
    redis_url: Option<&Spanned<String>>,
    open: impl Fn(&str) -> Result<(), String>,
    bad: &mut dyn FnMut(Option<std::ops::Range<usize>>, String),
) -> Option<String> {
    match store.map(|s| (s.get_ref().as_str(), s.span())) {
        None | Some(("memory", _)) => {
            if let Some(u) = redis_url {
                bad(
                    Some(u.span()),
                    format!("{section}.redis_url is set but store is not \"redis\""),
                );
            }
            None
        }
        Some(("redis", span)) => match redis_url {
            None => {
                bad(
                    Some(span),
                    format!("{section}: store = \"redis\" needs redis_url"),
                );
                None
            }
            Some(u) => {
                if let Err(e) = open(u.get_ref()) {
                    bad(Some(u.span()), format!("{section}.redis_url: {e}"));
                }
                Some(u.get_ref().clone())
            }
        },
        Some((other, span)) => {
            bad(
                Some(span),
                format!("{section}.store: {other:?} is not \"memory\" or \"redis\""),
            );
            None
        }
    }
}

/// Checks `[limits]`; reports each problem at its key.
fn check_limits(
    l: &LimitsConfig,
    upstreams: &BTreeMap<Spanned<String>, UpstreamEntry>,
    err: &mut dyn FnMut(Option<std::ops::Range<usize>>, String),
) -> Option<LimitsSpec> {
    use mcp_gateway_layers::limits::{KeySource, Limits, OnStoreError, Rule};
    let mut ok = true;
    let mut bad = |span: Option<std::ops::Range<usize>>, m: String| {
        ok = false;
        err(span, m);
    };
    let mut limits = Limits::new();
    if let Some(k) = &l.key {
        match k.get_ref().parse::<KeySource>() {
            Ok(key) => limits = limits.key(key),
            Err(m) => bad(Some(k.span()), format!("limits.key: {m}")),
        }
    }
    if let Some(n) = &l.requests_per_minute {
        match u32::try_from(*n.get_ref()) {
            Ok(v) if v > 0 => limits = limits.requests_per_minute(v),
            _ => bad(
                Some(n.span()),
                format!(
                    "limits.requests_per_minute must be between 1 and {}",
                    u32::MAX
                ),
            ),
        }
    }
    if let Some(n) = &l.tokens_per_minute {
        if *n.get_ref() == 0 {
            bad(
                Some(n.span()),
                "limits.tokens_per_minute must be greater than 0".into(),
            );
        } else {
            limits = limits.tokens_per_minute(*n.get_ref());
        }
    }
    if l.requests_per_minute.is_none() && l.tokens_per_minute.is_none() && l.rules.is_empty() {
        bad(
            l.key.as_ref().map(Spanned::span),
            "limits: set requests_per_minute, tokens_per_minute or a [[limits.rules]] entry".into(),
        );
    }
    for (i, r) in l.rules.iter().enumerate() {
        if r.tools.get_ref().is_empty() || r.tools.get_ref().iter().any(String::is_empty) {
            bad(
                Some(r.tools.span()),
                format!("limits.rules[{i}].tools: give one or more non-empty tool name patterns"),
            );
        }
        if *r.tokens_per_minute.get_ref() == 0 {
            bad(
                Some(r.tokens_per_minute.span()),
                format!("limits.rules[{i}].tokens_per_minute must be greater than 0"),
            );
        }
        let mut rule = Rule::new(
            r.tools.get_ref().iter().cloned(),
            *r.tokens_per_minute.get_ref(),
        );
        if let Some(u) = &r.upstreams {
            for name in u.get_ref() {
                if !upstreams.contains_key(name.as_str()) {
                    bad(
                        Some(u.span()),
                        format!("limits.rules[{i}].upstreams: no upstream named {name:?}"),
                    );
                }
            }
            rule = rule.upstreams(u.get_ref().iter().cloned());
        }
        limits = limits.rule(rule);
    }
    if l.rules.len() > 254 {
        bad(None, "limits.rules: at most 254 rules".into());
    }
    if let Some(o) = &l.on_store_error {
        match o.get_ref().as_str() {
            "local" => limits = limits.on_store_error(OnStoreError::Local),
            "deny" => limits = limits.on_store_error(OnStoreError::Deny),
            other => bad(
                Some(o.span()),
                format!("limits.on_store_error: {other:?} is not \"local\" or \"deny\""),
            ),
        }
    }
    let open = |u: &str| {
        mcp_gateway_layers::limits::redis::RedisStore::open(u)
            .map(drop)
            .map_err(|e| e.to_string())
    };
    let store = match check_store(
        "limits",
        l.store.as_ref(),
        l.redis_url.as_ref(),
        open,
        &mut bad,
    ) {
        None => LimitStoreSpec::Memory,
        Some(url) => LimitStoreSpec::Redis {
            url,
            timeout: l
                .redis_timeout
                .map_or(mcp_gateway_layers::limits::redis::DEFAULT_TIMEOUT, |d| d.0),
            prefix: l.redis_prefix.clone().unwrap_or_else(|| "mcpgw:".into()),
        },
    };
    ok.then_some(LimitsSpec { limits, store })
}

/// A configured path, relative to the configuration file's folder unless absolute.
fn resolve(base: &Path, p: &Spanned<PathBuf>) -> PathBuf {
    if p.get_ref().is_absolute() {
        p.get_ref().clone()
    } else {
        base.join(p.get_ref())
    }
}

/// Whether `name` can be an upstream name (and so a `/mcp/NAME` route).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Checks one upstream instance URL: absolute `http://` or `https://` with a host.
pub fn check_url(s: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = s
        .trim()
        .parse()
        .map_err(|e| format!("invalid URL {s:?}: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("URL {s:?} must start with http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("URL {s:?} has no host"));
    }
    Ok(uri)
}

/// Parses a `--upstream NAME=URL[,URL…]` flag.
pub fn parse_upstream_flag(flag: &str) -> Result<UpstreamSpec, ConfigError> {
    let bad = |message: String| ConfigError {
        source: "--upstream".into(),
        location: None,
        message,
    };
    let (name, urls) = flag
        .split_once('=')
        .ok_or_else(|| bad(format!("{flag:?}: expected NAME=URL[,URL...]")))?;
    let name = name.trim();
    if !valid_name(name) {
        return Err(bad(format!(
            "upstream name {name:?} must use only letters, digits, '-', '_' and '.'"
        )));
    }
    let urls = urls
        .split(',')
        .filter(|u| !u.trim().is_empty())
        .map(|u| check_url(u).map_err(&bad))
        .collect::<Result<Vec<_>, _>>()?;
    if urls.is_empty() {
        return Err(bad(format!("upstream {name:?} has no URL")));
    }
    Ok(UpstreamSpec {
        name: name.to_owned(),
        urls,
        connect_timeout: Duration::from_secs(5),
        response_timeout: Duration::from_secs(60),
        ca_file: None,
        credentials: None,
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
        let mut seen = std::collections::BTreeSet::new();
        let mut replaced = Vec::new();
        for spec in flags {
            if !seen.insert(spec.name.clone()) {
                return Err(ConfigError {
                    source: "--upstream".into(),
                    location: None,
                    message: format!(
                        "upstream {:?} is given twice; give each name once (several instances: \
                         NAME=URL,URL)",
                        spec.name
                    ),
                });
            }
            let before = self.upstreams.len();
            self.upstreams.retain(|u| u.name != spec.name);
            if self.upstreams.len() != before {
                replaced.push(spec.name.clone());
            }
            self.upstreams.push(spec);
        }
        Ok(replaced)
    }

    /// Settings from flags alone: one listener, the given upstreams, defaults elsewhere.
    pub fn from_flags(listen: SocketAddr, upstreams: Vec<UpstreamSpec>) -> Self {
        Self {
            listen,
            body_limit: mcp_gateway_layers::parse::DEFAULT_BODY_LIMIT,
            shutdown_grace: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(30),
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
    }

    #[test]
    fn errors_have_locations() {
        let e = errs("[server]\nlisten = \"127.0.0.1:1\"\nbogus = 1\n[upstreams.a]\nurl = \"http://x/mcp\"\n");
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("gw.toml:3:1: unknown field `bogus`"),
            "{e:?}"
        );
        let e = errs("[upstreams.a]\nurl = \"ftp://x/mcp\"\n");
        assert!(e[0].starts_with("gw.toml:2:7: upstream \"a\""), "{e:?}");
        let e = errs("[upstreams.a]\nurl = \"http://x/mcp\"\nconnect_timeout = \"5 parsecs\"\n");
        assert!(e[0].starts_with("gw.toml:3:"), "{e:?}");
        assert!(e[0].contains("invalid duration unit"), "{e:?}");
        let e =
            errs("[server]\nallowed_origins = [\"nope\"]\n[upstreams.a]\nurl = \"http://x/mcp\"\n");
        assert!(e[0].starts_with("gw.toml:2:20: invalid origin"), "{e:?}");
        let e = errs("");
        assert!(e[0].contains("no upstreams"), "{e:?}");
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
        let e = errs("[upstreams.\"a b\"]\nurl = \"http://x/mcp\"\n");
        assert!(e[0].contains("must use only"), "{e:?}");
    }

    /// The 1-based line and column of the first occurrence of `needle` in `text`.
    fn at(text: &str, needle: &str) -> String {
        let (l, c) = line_col(text, text.find(needle).unwrap());
        format!("gw.toml:{l}:{c}: ")
    }

    #[test]
    fn whole_table_errors_point_at_the_upstream_name() {
        let text = "[upstreams.good]\nurl = \"http://x/mcp\"\n\n[upstreams.\"bad name\"]\nurl = \"http://y/mcp\"\n";
        let e = errs(text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with(&at(text, "\"bad name\"")), "{e:?}");
        assert!(e[0].starts_with("gw.toml:4:12: "), "{e:?}");
        assert!(
            e[0].contains("upstream name \"bad name\" must use only"),
            "{e:?}"
        );

        let text =
            "[upstreams.a]\nurl = \"http://x/mcp\"\n[upstreams.e]\nconnect_timeout = \"1s\"\n";
        let e = errs(text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("gw.toml:3:12: "), "{e:?}");
        assert!(e[0].ends_with("upstream \"e\" needs url or urls"), "{e:?}");

        // A dotted key names the upstream too.
        let text = "upstreams.e.connect_timeout = \"1s\"\n";
        let e = errs(text);
        assert!(e[0].starts_with("gw.toml:1:11: "), "{e:?}");
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
    fn limits() {
        let base = "[upstreams.a]\nurl = \"http://x/mcp\"\n";
        let s = parse(
            &format!("{base}[limits]\nkey = \"header:x-agent-id\"\nrequests_per_minute = 600\ntokens_per_minute = 200000\nstore = \"redis\"\nredis_url = \"redis://127.0.0.1:6379/0\"\non_store_error = \"deny\"\n[[limits.rules]]\ntools = [\"analyze_*\"]\ntokens_per_minute = 50000\n"),
            "gw.toml",
            Path::new("."),
        )
        .unwrap();
        let l = s.limits.unwrap();
        assert!(matches!(l.store, LimitStoreSpec::Redis { .. }));
        assert_eq!(l.limits.requests_limit().unwrap().get(), 600);
        assert!(parse(base, "gw.toml", Path::new("."))
            .unwrap()
            .limits
            .is_none());
        // Each mistake is reported at its key.
        let e = errs(&format!(
            "{base}[limits]\nkey = \"user\"\nrequests_per_minute = 1\n"
        ));
        assert!(e[0].starts_with("gw.toml:4:7: limits.key"), "{e:?}");
        let e = errs(&format!("{base}[limits]\nrequests_per_minute = 0\n"));
        assert!(
            e[0].starts_with("gw.toml:4:23: limits.requests_per_minute"),
            "{e:?}"
        );
        let e = errs(&format!(
            "{base}[limits]\nrequests_per_minute = 1\nstore = \"disk\"\n"
        ));
        assert!(e[0].starts_with("gw.toml:5:9: limits.store"), "{e:?}");
        let e = errs(&format!(
            "{base}[limits]\nrequests_per_minute = 1\nstore = \"redis\"\n"
        ));
        assert!(e[0].contains("needs redis_url"), "{e:?}");
        let e = errs(&format!("{base}[limits]\nrequests_per_minute = 1\nstore = \"redis\"\nredis_url = \"http://x\"\n"));
        assert!(e[0].starts_with("gw.toml:6:13: limits.redis_url"), "{e:?}");
        let e = errs(&format!(
            "{base}[limits]\nrequests_per_minute = 1\non_store_error = \"retry\"\n"
        ));
        assert!(
            e[0].starts_with("gw.toml:5:18: limits.on_store_error"),
            "{e:?}"
        );
        let e = errs(&format!("{base}[limits]\n[[limits.rules]]\ntools = []\ntokens_per_minute = 5\nupstreams = [\"b\"]\n"));
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("gw.toml:5:9: limits.rules[0].tools"),
            "{e:?}"
        );
        assert!(e[1].contains("no upstream named \"b\""), "{e:?}");
        let e = errs(&format!("{base}[limits]\nkey = \"ip\"\n"));
        assert!(e[0].contains("set requests_per_minute"), "{e:?}");
        let e = errs(&format!(
            "{base}[limits]\nrequests_per_minute = 1\nbogus = 1\n"
        ));
        assert!(
            e[0].starts_with("gw.toml:5:1: unknown field `bogus`"),
            "{e:?}"
        );
    }

    #[test]
    fn flags() {
        let u = parse_upstream_flag("demo=http://127.0.0.1:3001/mcp,http://127.0.0.1:3002/mcp")
            .unwrap();
        assert_eq!(u.urls.len(), 2);
        assert!(parse_upstream_flag("demo").is_err());
        assert!(parse_upstream_flag("=http://x").is_err());
        assert!(parse_upstream_flag("d=ftp://x").is_err());
        assert!(parse_upstream_flag("d=").is_err());
    }

    #[test]
    fn flag_upstreams_replace_configured_ones_and_must_not_repeat() {
        let mut s = parse(
            "[upstreams.demo]\nurl = \"http://config/mcp\"\n[upstreams.other]\nurl = \"http://o/mcp\"\n",
            "gw.toml",
            Path::new("."),
        )
        .unwrap();
        let replaced = s
            .add_flag_upstreams(vec![
                parse_upstream_flag("demo=http://flag/mcp").unwrap(),
                parse_upstream_flag("new=http://n/mcp").unwrap(),
            ])
            .unwrap();
        assert_eq!(replaced, ["demo"]);
        let demo: Vec<_> = s.upstreams.iter().filter(|u| u.name == "demo").collect();
        assert_eq!(demo.len(), 1);
        assert_eq!(demo[0].urls[0].host(), Some("flag"));
        assert_eq!(s.upstreams.len(), 3);

        let mut s = Settings::from_flags(default_listen(), Vec::new());
        let e = s
            .add_flag_upstreams(vec![
                parse_upstream_flag("demo=http://a/mcp").unwrap(),
                parse_upstream_flag("demo=http://b/mcp").unwrap(),
            ])
            .unwrap_err();
        assert_eq!(e.source, "--upstream");
        assert!(e.message.contains("\"demo\" is given twice"), "{e}");
    }

    #[test]
    fn units() {
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("x").is_err());
        assert_eq!(parse_size("4MiB").unwrap(), 4 << 20);
        assert_eq!(parse_size("10KB").unwrap(), 10_000);
        assert!(parse_size("4 furlongs").is_err());
    }
}
