//! `[sessions]`: how legacy MCP sessions are sealed, expired and shared across replicas, as
//! written in the gateway's configuration file, checked with a location for every error, and
//! built into a [`SessionAffinityLayer`].
//!
//! ```toml
//! [sessions]
//! key_file = "session.key"          # base64 of 32 bytes; `mcp-gateway keygen` writes one
//! previous_key_files = ["old.key"]  # ids sealed with these still open (key rotation)
//! idle_timeout = "30m"              # 0: sessions never go idle
//! max_lifetime = "24h"
//! store = "memory"                  # or "redis" (feature `sessions-redis`)
//! # redis_url = "redis://127.0.0.1:6379/0"
//! # redis_timeout = "100ms"
//! # redis_prefix = "mcpgw:s:"
//! ```
//!
//! Without `key_file` a random per-process key is used (logged as a warning at start):
//! sessions then end when the process restarts and do not span replicas. Without a
//! `[sessions]` section, upstreams with several instances get the layer with such a key and
//! the defaults; single-instance upstreams pass session ids through untouched.
//!
//! An app with its own TOML file reads the section with [`from_toml`] (the binary's
//! validation, [`check`], with errors located in the app's file):
//!
//! ```
//! use mcp_gateway_layers::sessions::config;
//!
//! let spec = config::from_toml("[sessions]\nidle_timeout = \"10m\"\n", "app.toml")?;
//! let sessions = config::layer(spec.as_ref(), true);
//! assert!(sessions.is_some());
//!
//! let bad = "[sessions]\nstore = \"disk\"\n";
//! assert_eq!(
//!     config::from_toml(bad, "app.toml").unwrap_err().to_string(),
//!     "app.toml:2:9: sessions.store: \"disk\" is not \"memory\" or \"redis\""
//! );
//! # Ok::<(), mcp_gateway_layers::config::ConfigErrors>(())
//! ```

use super::{SessionAffinityLayer, SessionKey, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_LIFETIME};
use crate::config::{
    check_section, resolve, ConfigErrors, Diagnostics, Dur, Spanned, StoreDefaults, StoreKeys,
    StoreSpec,
};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `[sessions]` as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SessionsConfig {
    /// The key file (base64 of 32 bytes). Absent: a random per-process key.
    #[serde(default)]
    pub key_file: Option<Spanned<PathBuf>>,
    /// Older key files whose ids still open.
    #[serde(default)]
    pub previous_key_files: Vec<Spanned<PathBuf>>,
    /// Sessions unused this long end. Default 30 minutes; 0 turns idle expiry off.
    #[serde(default)]
    pub idle_timeout: Option<Spanned<Dur>>,
    /// Sessions end this long after they were issued. Default 24 hours.
    #[serde(default)]
    pub max_lifetime: Option<Spanned<Dur>>,
    /// `memory` (default) or `redis`.
    #[serde(default)]
    pub store: Option<Spanned<String>>,
    /// The Redis server, for `store = "redis"`.
    #[serde(default)]
    pub redis_url: Option<Spanned<String>>,
    /// How long a Redis answer may take before routing goes on without it. Default 100 ms.
    #[serde(default)]
    pub redis_timeout: Option<Dur>,
    /// Prefix of the Redis keys. Default `mcpgw:s:`.
    #[serde(default)]
    pub redis_prefix: Option<String>,
}

/// Checked `[sessions]`.
#[derive(Debug, Clone)]
pub struct SessionsSpec {
    /// The current key (`None`: random per process).
    pub key: Option<SessionKey>,
    /// Older keys still accepted.
    pub previous: Vec<SessionKey>,
    /// Idle timeout (`None`: off).
    pub idle_timeout: Option<Duration>,
    /// Lifetime of a session.
    pub max_lifetime: Duration,
    /// The store.
    pub store: StoreSpec,
}

fn read_key(path: &Path) -> Result<SessionKey, String> {
    SessionKey::load(path).map_err(|e| e.to_string())
}

/// The Redis answer timeout when `redis_timeout` is not given.
#[cfg(feature = "sessions-redis")]
const REDIS_TIMEOUT: Duration = super::redis::DEFAULT_TIMEOUT;
#[cfg(not(feature = "sessions-redis"))]
const REDIS_TIMEOUT: Duration = Duration::from_millis(100);

/// Whether `url` can be a Redis store's.
fn open_redis(url: &str) -> Result<(), String> {
    #[cfg(feature = "sessions-redis")]
    {
        super::redis::RedisStore::open(url)
            .map(drop)
            .map_err(|e| e.to_string())
    }
    #[cfg(not(feature = "sessions-redis"))]
    {
        let _ = url;
        Err("Redis support is not built in (feature `sessions-redis`)".into())
    }
}

/// Checks `[sessions]`, reading the key files (relative to `base`, the configuration file's
/// folder, unless absolute). Each problem is reported at its key; `None` when there was one.
pub fn check(
    c: &SessionsConfig,
    base: &Path,
    errors: &mut Diagnostics<'_>,
) -> Option<SessionsSpec> {
    let before = errors.count();
    let key = c
        .key_file
        .as_ref()
        .and_then(|k| match read_key(&resolve(base, k.get_ref())) {
            Ok(key) => Some(key),
            Err(m) => {
                errors.error(Some(k.span()), format!("sessions.key_file: {m}"));
                None
            }
        });
    let mut previous = Vec::new();
    for p in &c.previous_key_files {
        match read_key(&resolve(base, p.get_ref())) {
            Ok(k) => previous.push(k),
            Err(m) => errors.error(Some(p.span()), format!("sessions.previous_key_files: {m}")),
        }
    }
    if !c.previous_key_files.is_empty() && c.key_file.is_none() {
        errors.error(
            c.previous_key_files.first().map(Spanned::span),
            "sessions.previous_key_files needs key_file (the key new ids are sealed with)",
        );
    }
    let idle_timeout = match &c.idle_timeout {
        None => Some(DEFAULT_IDLE_TIMEOUT),
        Some(d) if d.get_ref().0.is_zero() => None,
        Some(d) => Some(d.get_ref().0),
    };
    let max_lifetime = match &c.max_lifetime {
        None => DEFAULT_MAX_LIFETIME,
        Some(d) if d.get_ref().0.is_zero() => {
            errors.error(
                Some(d.span()),
                "sessions.max_lifetime must be greater than 0",
            );
            DEFAULT_MAX_LIFETIME
        }
        Some(d) => d.get_ref().0,
    };
    let store = StoreSpec::check(
        "sessions",
        StoreKeys {
            store: c.store.as_ref(),
            redis_url: c.redis_url.as_ref(),
            redis_timeout: c.redis_timeout,
            redis_prefix: c.redis_prefix.as_deref(),
        },
        StoreDefaults {
            timeout: REDIS_TIMEOUT,
            prefix: "mcpgw:s:",
        },
        open_redis,
        errors,
    );
    (errors.count() == before).then_some(SessionsSpec {
        key,
        previous,
        idle_timeout,
        max_lifetime,
        store,
    })
}

/// `[sessions]` of the TOML `text` of the file `source`, checked by [`check`] as the binary
/// checks it (key files are relative to `source`'s folder): every error, located in
/// `source`, or the spec — `None` when the file has no `[sessions]`.
pub fn from_toml(text: &str, source: &str) -> Result<Option<SessionsSpec>, ConfigErrors> {
    check_section(text, source, "sessions", |c, cx, e| check(c, &cx.base, e))
}

/// The sessions layer: from checked `[sessions]` (`spec`), or — with no `[sessions]` — with a
/// random per-process key when some upstream has several instances (`several_instances`:
/// their sessions must be routed); `None` when nothing needs it, or when no key can be made
/// (logged). One layer serves every route that routes sessions.
pub fn layer(spec: Option<&SessionsSpec>, several_instances: bool) -> Option<SessionAffinityLayer> {
    if spec.is_none() && !several_instances {
        return None;
    }
    let key = match spec.and_then(|s| s.key.clone()) {
        Some(k) => {
            tracing::info!(target: "mcp_gateway::sessions", key = %k.fingerprint(), "sessions sealed with the key file's key");
            k
        }
        None => {
            tracing::warn!(target: "mcp_gateway::sessions", "no [sessions] key_file: session ids are sealed with a random per-process key; they end when this process restarts and do not span replicas (`mcp-gateway keygen` writes a key file)");
            match SessionKey::generate() {
                Ok(k) => k,
                Err(e) => {
                    tracing::error!(target: "mcp_gateway::sessions", error = %e, "no session key: sessions are not routed");
                    return None;
                }
            }
        }
    };
    let mut layer = SessionAffinityLayer::new(key);
    let Some(spec) = spec else {
        return Some(layer);
    };
    layer = layer
        .previous_keys(spec.previous.clone())
        .idle_timeout(spec.idle_timeout)
        .max_lifetime(spec.max_lifetime);
    match &spec.store {
        StoreSpec::Memory => {}
        #[cfg(feature = "sessions-redis")]
        StoreSpec::Redis {
            url,
            timeout,
            prefix,
        } => match super::redis::RedisStore::open(url) {
            Ok(store) => layer = layer.store(store.timeout(*timeout).prefix(prefix.clone())),
            // `check` validated the URL; should it fail now, ends are seen by this replica only.
            Err(e) => {
                tracing::error!(target: "mcp_gateway::sessions", error = %e, "sessions: Redis store unusable; session ends are per replica");
            }
        },
        #[cfg(not(feature = "sessions-redis"))]
        StoreSpec::Redis { .. } => {
            tracing::error!(target: "mcp_gateway::sessions", "sessions: Redis support is not built in (feature `sessions-redis`); session ends are per replica");
        }
    }
    Some(layer)
}

/// Writes a new session key to `path` (mode 0600), refusing to overwrite one unless `force`
/// (`mcp-gateway keygen`). Returns the key's fingerprint.
pub fn keygen(path: impl AsRef<Path>, force: bool) -> Result<String, String> {
    let path = path.as_ref();
    use std::io::Write;
    let key = SessionKey::generate().map_err(|e| e.to_string())?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    writeln!(f, "{}", key.to_base64()).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(key.fingerprint())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::testing::run;

    #[derive(Deserialize)]
    struct Doc {
        sessions: Option<SessionsConfig>,
        #[serde(default, rename = "upstreams")]
        _upstreams: toml::Table,
    }

    fn parse(text: &str, base: &Path) -> Result<SessionsSpec, Vec<String>> {
        run(text, |d: &Doc, e| check(d.sessions.as_ref()?, base, e))
    }

    fn errs(text: &str, base: &Path) -> Vec<String> {
        parse(text, base).unwrap_err()
    }

    #[test]
    fn sessions_section() {
        let dir = tempfile::tempdir().unwrap();
        let fp = keygen(dir.path().join("k"), false).unwrap();
        assert_eq!(fp.len(), 8);
        assert!(
            keygen(dir.path().join("k"), false).is_err(),
            "overwrote a key"
        );
        std::fs::write(dir.path().join("short"), "c2hvcnQ=\n").unwrap();
        let base = "[upstreams.a]\nurl = \"http://127.0.0.1:1/mcp\"\n";
        let spec = parse(
            &format!(
                "{base}[sessions]\nkey_file = \"k\"\nidle_timeout = \"0\"\nmax_lifetime = \"2h\"\n"
            ),
            dir.path(),
        )
        .unwrap();
        assert!(spec.key.is_some() && spec.idle_timeout.is_none());
        assert_eq!(spec.max_lifetime.as_secs(), 7200);
        assert_eq!(spec.store, StoreSpec::Memory);
        let e = errs(
            &format!("{base}[sessions]\nkey_file = \"short\"\n"),
            dir.path(),
        );
        assert!(e[0].starts_with("gw.toml:4:12: sessions.key_file"), "{e:?}");
        assert!(e[0].contains("32 bytes"), "{e:?}");
        let e = errs(
            &format!("{base}[sessions]\nkey_file = \"missing\"\n"),
            dir.path(),
        );
        assert!(
            e[0].starts_with("gw.toml:4:12: sessions.key_file: cannot read"),
            "{e:?}"
        );
        let e = errs(&format!("{base}[sessions]\nstore = \"disk\"\n"), dir.path());
        assert!(e[0].starts_with("gw.toml:4:9: sessions.store"), "{e:?}");
        let e = errs(
            &format!("{base}[sessions]\nstore = \"redis\"\n"),
            dir.path(),
        );
        assert!(e[0].contains("needs redis_url"), "{e:?}");
        let e = errs(
            &format!("{base}[sessions]\nmax_lifetime = \"0s\"\n"),
            dir.path(),
        );
        assert!(
            e[0].starts_with("gw.toml:4:16: sessions.max_lifetime"),
            "{e:?}"
        );
        let e = errs(
            &format!("{base}[sessions]\nprevious_key_files = [\"k\"]\n"),
            dir.path(),
        );
        assert!(e[0].contains("needs key_file"), "{e:?}");
        let e = errs(&format!("{base}[sessions]\nkey_fle = \"k\"\n"), dir.path());
        assert!(e[0].starts_with("gw.toml:4:1"), "{e:?}");
    }

    #[test]
    fn the_layer_is_built_when_needed() {
        assert!(layer(None, false).is_none());
        assert!(layer(None, true).is_some());
        let dir = tempfile::tempdir().unwrap();
        keygen(dir.path().join("k"), false).unwrap();
        let spec = parse("[sessions]\nkey_file = \"k\"\n", dir.path()).unwrap();
        assert!(layer(Some(&spec), false).is_some());
    }
}
