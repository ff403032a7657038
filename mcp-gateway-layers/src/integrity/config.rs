//! `[integrity]` and `[[approvals]]`: pinned definitions and approval gates, as written in
//! the gateway's configuration file, checked with a location for every error, and built
//! into a [`ToolIntegrityLayer`].
//!
//! ```toml
//! [integrity]                       # absent: no pins (approvals still apply)
//! pins_file = "pins.json"           # relative to the configuration file; written by `mcp-gateway pins approve`
//! mode = "block"                    # "off" | "warn" | "block" (default)
//! trust_on_first_use = false        # true: an upstream's first complete list pins it
//!
//! [integrity.upstreams.docs]        # a per-upstream mode
//! mode = "warn"
//!
//! [[approvals]]
//! upstream = "github"
//! tools = ["delete_*", "merge_pull_request"]
//! timeout = "10m"                   # no answer → denied (default 10m)
//! # webhook = "https://hooks.example.com/approvals"   # POSTed each pending call
//! # ask_client = false              # never ask the calling client: the admin listener decides
//! ```
//!
//! An app with its own TOML file reads both sections with [`from_toml`]:
//!
//! ```
//! use mcp_gateway_layers::integrity::config;
//!
//! let text = "[upstreams.github]\nurl = \"http://x/mcp\"\n\n[[approvals]]\nupstream = \"github\"\ntools = [\"delete_*\"]\n";
//! let spec = config::from_toml(text, "app.toml")?.expect("approvals are configured");
//! assert_eq!(spec.approvals.len(), 1);
//! let layer = config::layer(&spec)?;
//! # let _ = layer;
//!
//! let bad = "[[approvals]]\nupstream = \"github\"\ntools = []\n";
//! assert_eq!(
//!     config::from_toml(bad, "app.toml").unwrap_err().to_string(),
//!     "app.toml:2:12: approvals[0].upstream: no upstream named \"github\"\napp.toml:3:9: approvals[0].tools: give one or more non-empty tool name patterns"
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use super::pins::{Pins, PinsError};
use super::{Mode, ToolIntegrityLayer};
use crate::config::{
    resolve, ConfigError, ConfigErrors, Diagnostics, Dur, SectionContext, Spanned,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a held call waits for a decision when `timeout` is not given.
pub const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(600);

/// `[integrity]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntegrityConfig {
    /// The pins file (relative paths resolve against the configuration file's folder).
    pub pins_file: Spanned<PathBuf>,
    /// `off`, `warn` or `block` (default).
    #[serde(default)]
    pub mode: Option<Spanned<String>>,
    /// Pin an unpinned upstream's definitions the first time they are listed. Default false.
    #[serde(default)]
    pub trust_on_first_use: bool,
    /// Per-upstream settings.
    #[serde(default)]
    pub upstreams: BTreeMap<Spanned<String>, UpstreamIntegrityConfig>,
}

/// `[integrity.upstreams.NAME]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamIntegrityConfig {
    /// This upstream's mode.
    pub mode: Spanned<String>,
}

/// `[[approvals]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalConfig {
    /// The upstream whose tools the rule holds.
    pub upstream: Spanned<String>,
    /// Tool name patterns (`*` any run of characters, `?` one character).
    pub tools: Spanned<Vec<String>>,
    /// How long a held call waits for a decision; then it is denied. Default 10m.
    #[serde(default)]
    pub timeout: Option<Spanned<Dur>>,
    /// A URL POSTed a JSON description of each call held by the rule.
    #[serde(default)]
    pub webhook: Option<Spanned<String>>,
    /// Ask a client that declared elicitation (default true); false: only the admin
    /// listener decides (the agent's own client never approves its calls).
    #[serde(default)]
    pub ask_client: Option<bool>,
}

/// One checked approval rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovalRule {
    /// The upstream.
    pub upstream: String,
    /// Tool name patterns.
    pub tools: Vec<String>,
    /// How long a held call waits.
    pub timeout: Duration,
    /// Where pending calls are announced.
    pub webhook: Option<http::Uri>,
    /// Whether a client that declared elicitation is asked (else only the admin listener
    /// decides).
    pub ask_client: bool,
}

impl ApprovalRule {
    /// A rule holding calls of `upstream`'s tools matching `tools`, for up to 10 minutes.
    pub fn new(
        upstream: impl Into<String>,
        tools: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            upstream: upstream.into(),
            tools: tools.into_iter().map(Into::into).collect(),
            timeout: DEFAULT_APPROVAL_TIMEOUT,
            webhook: None,
            ask_client: true,
        }
    }

    /// Holds calls for `timeout` at most.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Never asks the calling client: only the admin listener decides.
    pub fn admin_only(mut self) -> Self {
        self.ask_client = false;
        self
    }

    /// Whether the rule holds a call of `tool` on `upstream`.
    pub fn holds(&self, upstream: &str, tool: &str) -> bool {
        self.upstream == upstream && self.tools.iter().any(|p| crate::glob::glob(p, tool))
    }
}

/// The checked pins settings (`[integrity]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinsSpec {
    /// The pins file, resolved.
    pub pins_file: PathBuf,
    /// The mode of upstreams without their own.
    pub mode: Mode,
    /// Per-upstream modes.
    pub modes: BTreeMap<String, Mode>,
    /// Pin an unpinned upstream's first complete list.
    pub trust_on_first_use: bool,
}

impl PinsSpec {
    /// The mode of `upstream`.
    pub fn mode_of(&self, upstream: &str) -> Mode {
        self.modes.get(upstream).copied().unwrap_or(self.mode)
    }
}

/// Checked `[integrity]` and `[[approvals]]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IntegritySpec {
    /// Pins, when `[integrity]` is present.
    pub pins: Option<PinsSpec>,
    /// The approval rules, in file order (the first that holds a call applies).
    pub approvals: Vec<ApprovalRule>,
}

fn parse_mode(m: &Spanned<String>, key: &str, errors: &mut Diagnostics<'_>) -> Option<Mode> {
    match m.get_ref().as_str() {
        "off" => Some(Mode::Off),
        "warn" => Some(Mode::Warn),
        "block" => Some(Mode::Block),
        other => {
            errors.error(
                Some(m.span()),
                format!("{key}: {other:?} is not \"off\", \"warn\" or \"block\""),
            );
            None
        }
    }
}

/// Checks `[integrity]` and `[[approvals]]`; `upstreams` are the configured upstream names,
/// `base` the configuration file's folder. `None` when there was an error or neither section
/// is present.
pub fn check(
    integrity: Option<&IntegrityConfig>,
    approvals: &[ApprovalConfig],
    upstreams: &[&str],
    base: &Path,
    errors: &mut Diagnostics<'_>,
) -> Option<IntegritySpec> {
    let before = errors.count();
    let pins = integrity.map(|c| {
        let mode = c
            .mode
            .as_ref()
            .and_then(|m| parse_mode(m, "integrity.mode", errors))
            .unwrap_or(Mode::Block);
        let mut modes = BTreeMap::new();
        for (name, u) in &c.upstreams {
            if !upstreams.contains(&name.get_ref().as_str()) {
                errors.error(
                    Some(name.span()),
                    format!(
                        "integrity.upstreams: no upstream named {:?}",
                        name.get_ref()
                    ),
                );
            }
            let key = format!("integrity.upstreams.{}.mode", name.get_ref());
            if let Some(m) = parse_mode(&u.mode, &key, errors) {
                modes.insert(name.get_ref().clone(), m);
            }
        }
        let pins_file = resolve(base, c.pins_file.get_ref());
        if let Err(e) = Pins::load(&pins_file) {
            errors.error(
                Some(c.pins_file.span()),
                format!("integrity.pins_file: {e}"),
            );
        } else if let Some(dir) = pins_file.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                errors.error(
                    Some(c.pins_file.span()),
                    format!(
                        "integrity.pins_file: folder {} does not exist",
                        dir.display()
                    ),
                );
            }
        }
        PinsSpec {
            pins_file,
            mode,
            modes,
            trust_on_first_use: c.trust_on_first_use,
        }
    });
    let mut rules = Vec::new();
    for (i, a) in approvals.iter().enumerate() {
        if !upstreams.contains(&a.upstream.get_ref().as_str()) {
            errors.error(
                Some(a.upstream.span()),
                format!(
                    "approvals[{i}].upstream: no upstream named {:?}",
                    a.upstream.get_ref()
                ),
            );
        }
        if a.tools.get_ref().is_empty() || a.tools.get_ref().iter().any(String::is_empty) {
            errors.error(
                Some(a.tools.span()),
                format!("approvals[{i}].tools: give one or more non-empty tool name patterns"),
            );
        }
        let timeout = a
            .timeout
            .as_ref()
            .map_or(DEFAULT_APPROVAL_TIMEOUT, |d| d.get_ref().0);
        if timeout.is_zero() {
            errors.error(
                a.timeout.as_ref().map(Spanned::span),
                format!("approvals[{i}].timeout must be more than 0"),
            );
        }
        let webhook =
            a.webhook
                .as_ref()
                .and_then(|w| match crate::config::check_url(w.get_ref()) {
                    Ok(u) => Some(u),
                    Err(m) => {
                        errors.error(Some(w.span()), format!("approvals[{i}].webhook: {m}"));
                        None
                    }
                });
        rules.push(ApprovalRule {
            upstream: a.upstream.get_ref().clone(),
            tools: a.tools.get_ref().clone(),
            timeout,
            webhook,
            ask_client: a.ask_client.unwrap_or(true),
        });
    }
    if errors.count() != before || (pins.is_none() && rules.is_empty()) {
        return None;
    }
    Some(IntegritySpec {
        pins,
        approvals: rules,
    })
}

/// `[integrity]` and `[[approvals]]` of the TOML `text` of the file `source`, checked as the
/// binary checks them: every error, located in `source`, or the spec — `None` when the file
/// has neither.
pub fn from_toml(text: &str, source: &str) -> Result<Option<IntegritySpec>, ConfigErrors> {
    let integrity = crate::config::section::<IntegrityConfig>(text, source, "integrity")?;
    let approvals = crate::config::section::<Vec<ApprovalConfig>>(text, source, "approvals")?
        .unwrap_or_default();
    let context = SectionContext::of(text, source);
    let mut errors = Diagnostics::new(text, source);
    let spec = check(
        integrity.as_ref(),
        &approvals,
        &context.upstream_names(),
        &context.base,
        &mut errors,
    );
    if errors.is_empty() {
        Ok(spec)
    } else {
        Err(ConfigErrors(errors.into_errors()))
    }
}

/// The layer for checked sections: its pins read from the pins file.
pub fn layer(spec: &IntegritySpec) -> Result<ToolIntegrityLayer, PinsError> {
    ToolIntegrityLayer::from_spec(spec.clone())
}

/// A [`PinsError`] as a configuration error of `source` (for a reload that finds the pins
/// file changed and broken).
pub fn pins_error(source: &str, e: &PinsError) -> ConfigError {
    ConfigError {
        source: source.to_owned(),
        location: None,
        message: format!("integrity.pins_file: {e}"),
    }
}
