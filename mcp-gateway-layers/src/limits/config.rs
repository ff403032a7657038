//! `[limits]`: per-agent request and token budgets (TokenBucket2D), as written in the
//! gateway's configuration file, checked with a location for every error, and built into a
//! [`TokenBucket2DLayer`].
//!
//! ```toml
//! [limits]                          # absent: no limits
//! key = "agent"                     # or "ip", or "header:x-agent-id"
//! requests_per_minute = 600
//! tokens_per_minute = 200000
//! # notifications_per_minute = 6000  # default: 10 × requests_per_minute; 0: unlimited
//! store = "memory"                  # or "redis" (feature `limits-redis`)
//! # redis_url = "redis://127.0.0.1:6379/0"
//! # redis_timeout = "100ms"
//! # redis_prefix = "mcpgw:"
//! # on_store_error = "local"        # or "deny"
//!
//! [[limits.rules]]
//! tools = ["analyze_*"]
//! tokens_per_minute = 50000
//! ```
//!
//! An app with its own TOML file reads the section with [`from_toml`], the binary's
//! validation ([`check`]) with errors located in the app's file, and builds the layer from it:
//!
//! ```
//! use mcp_gateway_layers::limits::config;
//!
//! let text = "[app]\nname = \"demo\"\n\n[limits]\nrequests_per_minute = 600\n";
//! let limits = config::from_toml(text, "app.toml")?.as_ref().map(config::layer);
//! assert!(limits.is_some()); // `tower::ServiceBuilder::option_layer(limits)`: none without [limits]
//!
//! let bad = "[app]\nname = \"demo\"\n\n[limits]\nrequests_per_minute = 0\n";
//! assert_eq!(
//!     config::from_toml(bad, "app.toml").unwrap_err().to_string(),
//!     "app.toml:5:23: limits.requests_per_minute must be between 1 and 4294967295"
//! );
//! # Ok::<(), mcp_gateway_layers::config::ConfigErrors>(())
//! ```

use super::{KeySource, Limits, OnStoreError, Rule, TokenBucket2DLayer};
use crate::config::{
    check_section, ConfigErrors, Diagnostics, Dur, Spanned, StoreDefaults, StoreKeys, StoreSpec,
};
use serde::Deserialize;
use std::time::Duration;

/// `[limits]` as written.
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
    /// Client notifications per minute per key. Default: ten times `requests_per_minute`
    /// (unlimited without it); 0: unlimited.
    #[serde(default)]
    pub notifications_per_minute: Option<u64>,
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

/// `[[limits.rules]]` as written.
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

/// Checked `[limits]`.
#[derive(Debug, Clone)]
pub struct LimitsSpec {
    /// The budgets.
    pub limits: Limits,
    /// Where they are kept.
    pub store: StoreSpec,
}

/// The Redis answer timeout when `redis_timeout` is not given.
#[cfg(feature = "limits-redis")]
const REDIS_TIMEOUT: Duration = super::redis::DEFAULT_TIMEOUT;
#[cfg(not(feature = "limits-redis"))]
const REDIS_TIMEOUT: Duration = Duration::from_millis(100);

/// Whether `url` can be a Redis store's.
fn open_redis(url: &str) -> Result<(), String> {
    #[cfg(feature = "limits-redis")]
    {
        super::redis::RedisStore::open(url)
            .map(drop)
            .map_err(|e| e.to_string())
    }
    #[cfg(not(feature = "limits-redis"))]
    {
        let _ = url;
        Err("Redis support is not built in (feature `limits-redis`)".into())
    }
}

/// Checks `[limits]`; `upstreams` are the configured upstream names (rules may name them).
/// Each problem is reported at its key; `None` when there was one.
pub fn check(
    l: &LimitsConfig,
    upstreams: &[&str],
    errors: &mut Diagnostics<'_>,
) -> Option<LimitsSpec> {
    let before = errors.count();
    let mut limits = Limits::new();
    if let Some(k) = &l.key {
        match k.get_ref().parse::<KeySource>() {
            Ok(key) => limits = limits.key(key),
            Err(m) => errors.error(Some(k.span()), format!("limits.key: {m}")),
        }
    }
    if let Some(n) = &l.requests_per_minute {
        match u32::try_from(*n.get_ref()) {
            Ok(v) if v > 0 => limits = limits.requests_per_minute(v),
            _ => errors.error(
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
            errors.error(
                Some(n.span()),
                "limits.tokens_per_minute must be greater than 0",
            );
        } else {
            limits = limits.tokens_per_minute(*n.get_ref());
        }
    }
    if let Some(n) = l.notifications_per_minute {
        limits = limits.notifications_per_minute(n);
    }
    if l.requests_per_minute.is_none() && l.tokens_per_minute.is_none() && l.rules.is_empty() {
        errors.error(
            l.key.as_ref().map(Spanned::span),
            "limits: set requests_per_minute, tokens_per_minute or a [[limits.rules]] entry",
        );
    }
    for (i, r) in l.rules.iter().enumerate() {
        if r.tools.get_ref().is_empty() || r.tools.get_ref().iter().any(String::is_empty) {
            errors.error(
                Some(r.tools.span()),
                format!("limits.rules[{i}].tools: give one or more non-empty tool name patterns"),
            );
        }
        if *r.tokens_per_minute.get_ref() == 0 {
            errors.error(
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
                if !upstreams.contains(&name.as_str()) {
                    errors.error(
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
        errors.error(None, "limits.rules: at most 254 rules");
    }
    if let Some(o) = &l.on_store_error {
        match o.get_ref().as_str() {
            "local" => limits = limits.on_store_error(OnStoreError::Local),
            "deny" => limits = limits.on_store_error(OnStoreError::Deny),
            other => errors.error(
                Some(o.span()),
                format!("limits.on_store_error: {other:?} is not \"local\" or \"deny\""),
            ),
        }
    }
    let store = StoreSpec::check(
        "limits",
        StoreKeys {
            store: l.store.as_ref(),
            redis_url: l.redis_url.as_ref(),
            redis_timeout: l.redis_timeout,
            redis_prefix: l.redis_prefix.as_deref(),
        },
        StoreDefaults {
            timeout: REDIS_TIMEOUT,
            prefix: "mcpgw:",
        },
        open_redis,
        errors,
    );
    (errors.count() == before).then_some(LimitsSpec { limits, store })
}

/// `[limits]` of the TOML `text` of the file `source`, checked by [`check`] as the binary
/// checks it (`[[limits.rules]]` may name the file's `[upstreams.NAME]`): every error,
/// located in `source`, or the spec — `None` when the file has no `[limits]`.
pub fn from_toml(text: &str, source: &str) -> Result<Option<LimitsSpec>, ConfigErrors> {
    check_section(text, source, "limits", |l, cx, e| {
        check(l, &cx.upstream_names(), e)
    })
}

/// The limits layer for checked `[limits]`: budgets in memory or in Redis (with this
/// process's memory as the fallback). One layer serves every route, so a key's budget is the
/// same whichever upstream it calls.
pub fn layer(spec: &LimitsSpec) -> TokenBucket2DLayer {
    let layer = TokenBucket2DLayer::new(spec.limits.clone());
    match &spec.store {
        StoreSpec::Memory => layer,
        #[cfg(feature = "limits-redis")]
        StoreSpec::Redis {
            url,
            timeout,
            prefix,
        } => match super::redis::RedisStore::open(url) {
            Ok(store) => layer.store(store.timeout(*timeout).prefix(prefix.clone())),
            // `check` validated the URL; should it fail now, this replica limits alone.
            Err(e) => {
                tracing::error!(target: "mcp_gateway::limits", error = %e, "limits: Redis store unusable; budgets are per replica");
                layer
            }
        },
        #[cfg(not(feature = "limits-redis"))]
        StoreSpec::Redis { .. } => {
            tracing::error!(target: "mcp_gateway::limits", "limits: Redis support is not built in (feature `limits-redis`); budgets are per replica");
            layer
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::testing::run;

    #[derive(Deserialize)]
    struct Doc {
        limits: Option<LimitsConfig>,
        #[serde(default)]
        upstreams: toml::Table,
    }

    fn parse(text: &str) -> Result<LimitsSpec, Vec<String>> {
        run(text, |d: &Doc, e| {
            let names: Vec<&str> = d.upstreams.keys().map(String::as_str).collect();
            check(d.limits.as_ref()?, &names, e)
        })
    }

    fn errs(text: &str) -> Vec<String> {
        parse(text).err().unwrap_or_default()
    }

    const BASE: &str = "[upstreams.a]\nurl = \"http://x/mcp\"\n";

    #[test]
    fn from_toml_locates_errors_in_the_apps_own_file() {
        // The app's file: its own sections, then the gateway's `[limits]`.
        let app = "[app]\nport = 3000\n\n[limits]\nrequests_per_minute = 0\nburst = 5\nkey = 7\n";
        let e: Vec<String> = from_toml(app, "conf/app.toml")
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("conf/app.toml:6:1: unknown field `burst`"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("conf/app.toml:7:7: invalid type: integer `7`"),
            "{e:?}"
        );
        let app = "[app]\nport = 3000\n[limits]\nrequests_per_minute = 0\n[[limits.rules]]\ntools = [\"x\"]\nupstreams = [\"b\"]\ntokens_per_minute = 5\n";
        let e = from_toml(app, "app.toml").unwrap_err().to_string();
        assert_eq!(
            e,
            "app.toml:4:23: limits.requests_per_minute must be between 1 and 4294967295\n\
             app.toml:7:13: limits.rules[0].upstreams: no upstream named \"b\""
        );
        // The rules may name the file's upstreams, as in the binary's file.
        let ok = format!("{BASE}[limits]\n[[limits.rules]]\ntools = [\"x\"]\nupstreams = [\"a\"]\ntokens_per_minute = 5\n");
        assert!(from_toml(&ok, "app.toml").unwrap().is_some());
        assert!(from_toml("[app]\n", "app.toml").unwrap().is_none());
    }

    #[test]
    fn limits() {
        let base = BASE;
        #[cfg(feature = "limits-redis")]
        {
            let l = parse(&format!("{base}[limits]\nkey = \"header:x-agent-id\"\nrequests_per_minute = 600\ntokens_per_minute = 200000\nstore = \"redis\"\nredis_url = \"redis://127.0.0.1:6379/0\"\non_store_error = \"deny\"\n[[limits.rules]]\ntools = [\"analyze_*\"]\ntokens_per_minute = 50000\n"))
            .unwrap();
            assert!(matches!(l.store, StoreSpec::Redis { .. }));
            assert_eq!(l.limits.requests_limit().unwrap().get(), 600);
        }
        let l = parse(&format!("{base}[limits]\nrequests_per_minute = 600\n")).unwrap();
        assert_eq!(l.store, StoreSpec::Memory);
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
}
