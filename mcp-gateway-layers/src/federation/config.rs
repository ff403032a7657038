//! `[virtual.NAME]`: virtual servers as written in the gateway's configuration file, checked
//! with a location for every error.
//!
//! ```toml
//! [virtual.all]                     # served at /mcp/all, like an upstream route
//! upstreams = ["github", "jira", "docs"]
//! prefix = "always"                 # "always" (default) | "conditional" | "never"
//! list_timeout = "5s"               # per upstream, for lists fanned out (default 5s)
//! on_upstream_error = "omit"        # "omit" (default: named in _meta) | "fail"
//! ```
//!
//! ```
//! use mcp_gateway_layers::federation::{config, Prefix};
//!
//! let text = "[upstreams.a]\nurl = \"http://a/mcp\"\n[upstreams.b]\nurl = \"http://b/mcp\"\n\n[virtual.all]\nupstreams = [\"a\", \"b\"]\nprefix = \"never\"\n";
//! let specs = config::from_toml(text, "app.toml")?;
//! assert_eq!(specs[0].upstreams, ["a", "b"]);
//! assert_eq!(specs[0].prefix, Prefix::Never);
//!
//! let bad = "[upstreams.a]\nurl = \"http://a/mcp\"\n\n[virtual.all]\nupstreams = [\"a\", \"c\"]\n";
//! assert_eq!(
//!     config::from_toml(bad, "app.toml").unwrap_err().to_string(),
//!     "app.toml:5:19: virtual.all.upstreams: no upstream named \"c\""
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use super::layer::DEFAULT_LIST_TIMEOUT;
use super::{OnUpstreamError, Prefix, VirtualServerLayer};
use crate::config::{ConfigErrors, Diagnostics, Dur, SectionContext, Spanned};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// `[virtual.NAME]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualConfig {
    /// The upstreams it federates, by name; their names are the aliases of exposed names.
    pub upstreams: Spanned<Vec<Spanned<String>>>,
    /// `always` (default), `conditional` or `never`.
    #[serde(default)]
    pub prefix: Option<Spanned<String>>,
    /// How long a list waits for each upstream. Default 5s.
    #[serde(default)]
    pub list_timeout: Option<Spanned<Dur>>,
    /// `omit` (default) or `fail`.
    #[serde(default)]
    pub on_upstream_error: Option<Spanned<String>>,
}

/// One checked virtual server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualSpec {
    /// Its name: the route `/mcp/NAME`.
    pub name: String,
    /// Its upstreams, in order (merged lists follow it).
    pub upstreams: Vec<String>,
    /// Which names carry an alias.
    pub prefix: Prefix,
    /// How long a list waits for each upstream.
    pub list_timeout: Duration,
    /// What a list does when an upstream fails.
    pub on_upstream_error: OnUpstreamError,
}

impl VirtualSpec {
    /// The layer these settings describe (cursors sealed with a random key until
    /// [`VirtualServerLayer::cursor_secret`] is given).
    pub fn layer(&self) -> VirtualServerLayer {
        VirtualServerLayer::new(self.name.as_str())
            .prefix(self.prefix)
            .list_timeout(self.list_timeout)
            .on_upstream_error(self.on_upstream_error)
    }
}

/// Checks `[virtual.*]`; `upstreams` are the configured upstream names (a virtual server's
/// name must not be one of them: both would be `/mcp/NAME`).
pub fn check(
    servers: &BTreeMap<Spanned<String>, VirtualConfig>,
    upstreams: &[&str],
    errors: &mut Diagnostics<'_>,
) -> Vec<VirtualSpec> {
    let mut out = Vec::new();
    for (name, c) in servers {
        let n = name.get_ref();
        let before = errors.count();
        if !crate::upstream::config::valid_name(n) {
            errors.error(
                Some(name.span()),
                format!("virtual.{n}: a name is letters, digits, '-', '_' and '.' (it is the route /mcp/NAME)"),
            );
        } else if upstreams.contains(&n.as_str()) {
            errors.error(
                Some(name.span()),
                format!("virtual.{n}: an upstream is already named {n:?} (both would be /mcp/{n}); rename one"),
            );
        }
        let key = format!("virtual.{n}");
        let mut members: Vec<String> = Vec::new();
        if c.upstreams.get_ref().is_empty() {
            errors.error(
                Some(c.upstreams.span()),
                format!("{key}.upstreams: name one or more upstreams"),
            );
        }
        for u in c.upstreams.get_ref() {
            let un = u.get_ref();
            if !upstreams.contains(&un.as_str()) {
                errors.error(
                    Some(u.span()),
                    format!("{key}.upstreams: no upstream named {un:?}"),
                );
            } else if members.contains(un) {
                errors.error(
                    Some(u.span()),
                    format!("{key}.upstreams: {un:?} is named twice"),
                );
            } else {
                members.push(un.clone());
            }
        }
        let prefix = match c.prefix.as_ref().map(|p| (p, p.get_ref().as_str())) {
            None | Some((_, "always")) => Prefix::Always,
            Some((_, "conditional")) => Prefix::Conditional,
            Some((_, "never")) => Prefix::Never,
            Some((p, other)) => {
                errors.error(
                    Some(p.span()),
                    format!(
                        "{key}.prefix: {other:?} is not \"always\", \"conditional\" or \"never\""
                    ),
                );
                Prefix::Always
            }
        };
        let on_upstream_error = match c
            .on_upstream_error
            .as_ref()
            .map(|p| (p, p.get_ref().as_str()))
        {
            None | Some((_, "omit")) => OnUpstreamError::Omit,
            Some((_, "fail")) => OnUpstreamError::Fail,
            Some((p, other)) => {
                errors.error(
                    Some(p.span()),
                    format!("{key}.on_upstream_error: {other:?} is not \"omit\" or \"fail\""),
                );
                OnUpstreamError::Omit
            }
        };
        let list_timeout = match &c.list_timeout {
            None => DEFAULT_LIST_TIMEOUT,
            Some(t) if t.get_ref().0.is_zero() => {
                errors.error(
                    Some(t.span()),
                    format!("{key}.list_timeout: give a duration above zero"),
                );
                DEFAULT_LIST_TIMEOUT
            }
            Some(t) => t.get_ref().0,
        };
        if errors.count() == before {
            out.push(VirtualSpec {
                name: n.clone(),
                upstreams: members,
                prefix,
                list_timeout,
                on_upstream_error,
            });
        }
    }
    out
}

/// Reads and checks `[virtual.*]` of a TOML file (`source` names it in errors).
pub fn from_toml(text: &str, source: &str) -> Result<Vec<VirtualSpec>, ConfigErrors> {
    let servers = crate::config::section::<BTreeMap<Spanned<String>, VirtualConfig>>(
        text, source, "virtual",
    )?
    .unwrap_or_default();
    let context = SectionContext::of(text, source);
    let mut errors = Diagnostics::new(text, source);
    let specs = check(&servers, &context.upstream_names(), &mut errors);
    if errors.is_empty() {
        Ok(specs)
    } else {
        Err(ConfigErrors(errors.into_errors()))
    }
}
