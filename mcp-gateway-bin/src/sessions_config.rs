//! `[sessions]`: how legacy MCP sessions are sealed, expired and shared across replicas.
//!
//! ```toml
//! [sessions]
//! key_file = "session.key"          # base64 of 32 bytes; `mcp-gateway keygen` writes one
//! previous_key_files = ["old.key"]  # ids sealed with these still open (key rotation)
//! idle_timeout = "30m"              # 0: sessions never go idle
//! max_lifetime = "24h"
//! store = "memory"                  # or "redis"
//! # redis_url = "redis://127.0.0.1:6379/0"
//! # redis_timeout = "100ms"
//! # redis_prefix = "mcpgw:s:"
//! ```
//!
//! Without `key_file` a random per-process key is used (logged as a warning at start):
//! sessions then end when the process restarts and do not span replicas. Without a
//! `[sessions]` section, upstreams with several instances get the layer with such a key and
//! the defaults; single-instance upstreams pass session ids through untouched.

use crate::config::{ConfigError, Dur};
use mcp_gateway_layers::sessions::{SessionKey, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_LIFETIME};
use serde::Deserialize;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

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

/// Where checked sessions keep their shared state.
#[derive(Debug, Clone)]
pub enum SessionStoreSpec {
    /// This process's memory.
    Memory,
    /// A shared Redis.
    Redis {
        /// The server URL.
        url: String,
        /// Answer timeout.
        timeout: Duration,
        /// Key prefix.
        prefix: String,
    },
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
    pub store: SessionStoreSpec,
}

fn read_key(path: &Path) -> Result<SessionKey, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    SessionKey::from_base64(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Checks `[sessions]`, reading the key files; reports each problem at its key.
pub(crate) fn check_sessions(
    c: &SessionsConfig,
    base: &Path,
    text: &str,
    source: &str,
) -> Result<SessionsSpec, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut bad = |span: Option<Range<usize>>, message: String| {
        errors.push(ConfigError {
            source: source.to_owned(),
            location: span.map(|s| crate::config::line_col(text, s.start)),
            message,
        });
    };
    let resolve = |p: &Spanned<PathBuf>| {
        let p = p.get_ref();
        if p.is_absolute() {
            p.clone()
        } else {
            base.join(p)
        }
    };
    let key = c
        .key_file
        .as_ref()
        .and_then(|k| match read_key(&resolve(k)) {
            Ok(key) => Some(key),
            Err(m) => {
                bad(Some(k.span()), format!("sessions.key_file: {m}"));
                None
            }
        });
    let mut previous = Vec::new();
    for p in &c.previous_key_files {
        match read_key(&resolve(p)) {
            Ok(k) => previous.push(k),
            Err(m) => bad(Some(p.span()), format!("sessions.previous_key_files: {m}")),
        }
    }
    if !c.previous_key_files.is_empty() && c.key_file.is_none() {
        bad(
            c.previous_key_files.first().map(Spanned::span),
            "sessions.previous_key_files needs key_file (the key new ids are sealed with)".into(),
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
            bad(
                Some(d.span()),
                "sessions.max_lifetime must be greater than 0".into(),
            );
            DEFAULT_MAX_LIFETIME
        }
        Some(d) => d.get_ref().0,
    };
    let open = |u: &str| {
        mcp_gateway_layers::sessions::redis::RedisStore::open(u)
            .map(drop)
            .map_err(|e| e.to_string())
    };
    let store = match crate::config::check_store(
        "sessions",
        c.store.as_ref(),
        c.redis_url.as_ref(),
        open,
        &mut bad,
    ) {
        None => SessionStoreSpec::Memory,
        Some(url) => SessionStoreSpec::Redis {
            url,
            timeout: c
                .redis_timeout
                .map_or(mcp_gateway_layers::sessions::redis::DEFAULT_TIMEOUT, |d| {
                    d.0
                }),
            prefix: c.redis_prefix.clone().unwrap_or_else(|| "mcpgw:s:".into()),
        },
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(SessionsSpec {
        key,
        previous,
        idle_timeout,
        max_lifetime,
        store,
    })
}

/// `mcp-gateway keygen`: writes a new key to `path` (mode 0600), refusing to overwrite one
/// unless `force`. Returns the key's fingerprint.
pub fn keygen(path: &Path, force: bool) -> Result<String, String> {
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
    use crate::config::parse;

    fn errs(text: &str, base: &std::path::Path) -> Vec<String> {
        parse(text, "gw.toml", base)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn sessions_section() {
        let dir = tempfile::tempdir().unwrap();
        let fp = super::keygen(&dir.path().join("k"), false).unwrap();
        assert_eq!(fp.len(), 8);
        assert!(
            super::keygen(&dir.path().join("k"), false).is_err(),
            "overwrote a key"
        );
        std::fs::write(dir.path().join("short"), "c2hvcnQ=\n").unwrap();
        let base = "[upstreams.a]\nurl = \"http://127.0.0.1:1/mcp\"\n";
        let s = parse(
            &format!(
                "{base}[sessions]\nkey_file = \"k\"\nidle_timeout = \"0\"\nmax_lifetime = \"2h\"\n"
            ),
            "gw.toml",
            dir.path(),
        )
        .unwrap();
        let spec = s.sessions.unwrap();
        assert!(spec.key.is_some() && spec.idle_timeout.is_none());
        assert_eq!(spec.max_lifetime.as_secs(), 7200);
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
}
