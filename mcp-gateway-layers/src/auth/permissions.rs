//! Tool-level permissions: rules that map tool (prompt, resource) patterns to the scopes they
//! need, and the filter that removes from `tools/list` (`prompts/list`, `resources/list`)
//! results what the caller may not use.
//!
//! A rule applies to one upstream, or to all when it names none. A tool that no rule matches
//! needs only the route's scopes; a tool that several rules match needs the scopes of all of
//! them. Patterns are globs: `*` matches any run of characters, `?` one character.

use bytes::Bytes;
use mcp_gateway_core::observe::{ObservedMessage, Observer};
use mcp_gateway_core::{Principal, RequestId};
use std::collections::BTreeSet;

/// What a rule's patterns name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Target {
    /// Tools (`tools/call`, `tools/list`), by name.
    Tool,
    /// Prompts (`prompts/get`, `prompts/list`), by name.
    Prompt,
    /// Resources (`resources/read`, `resources/list`), by URI.
    Resource,
}

impl Target {
    /// The target a method acts on or lists, if any.
    pub fn of_method(method: &str) -> Option<(Self, bool)> {
        Some(match method {
            "tools/call" => (Self::Tool, false),
            "tools/list" => (Self::Tool, true),
            "prompts/get" => (Self::Prompt, false),
            "prompts/list" => (Self::Prompt, true),
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                (Self::Resource, false)
            }
            "resources/list" => (Self::Resource, true),
            _ => return None,
        })
    }

    fn list_key(self) -> (&'static str, &'static str) {
        match self {
            Self::Tool => ("tools", "name"),
            Self::Prompt => ("prompts", "name"),
            Self::Resource => ("resources", "uri"),
        }
    }
}

/// One permission rule.
#[derive(Clone, Debug)]
pub struct Rule {
    upstream: Option<String>,
    target: Target,
    patterns: Vec<String>,
    scopes: Vec<String>,
}

impl Rule {
    /// A rule: `patterns` of `target` on `upstream` (all upstreams when `None`) need `scopes`.
    pub fn new(
        upstream: Option<&str>,
        target: Target,
        patterns: impl IntoIterator<Item = impl Into<String>>,
        scopes: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            upstream: upstream.map(str::to_owned),
            target,
            patterns: patterns.into_iter().map(Into::into).collect(),
            scopes: scopes.into_iter().map(Into::into).collect(),
        }
    }

    fn applies(&self, upstream: &str, target: Target) -> bool {
        self.target == target && self.upstream.as_deref().is_none_or(|u| u == upstream)
    }
}

pub use crate::glob::glob;

/// The rules of a gateway.
#[derive(Clone, Debug, Default)]
pub struct Permissions {
    rules: Vec<Rule>,
}

impl Permissions {
    /// No rules: every tool needs only the route's scopes.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a rule.
    pub fn with(mut self, rule: Rule) -> Self {
        self.rules.push(rule);
        self
    }
    /// True without rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The scopes `name` (a tool, prompt or resource) on `upstream` needs beyond the route's.
    pub fn needed(&self, upstream: &str, target: Target, name: &str) -> BTreeSet<&str> {
        self.rules
            .iter()
            .filter(|r| r.applies(upstream, target) && r.patterns.iter().any(|p| glob(p, name)))
            .flat_map(|r| r.scopes.iter().map(String::as_str))
            .collect()
    }

    /// Every scope the rules for `upstream` mention (advertised in the resource metadata).
    pub fn scopes_for(&self, upstream: &str) -> BTreeSet<&str> {
        self.rules
            .iter()
            .filter(|r| r.upstream.as_deref().is_none_or(|u| u == upstream))
            .flat_map(|r| r.scopes.iter().map(String::as_str))
            .collect()
    }

    /// True when some rule applies to `upstream`'s lists of `target`: such a list depends on
    /// who asks, so it is never marked shareable between callers.
    pub fn filters(&self, upstream: &str, target: Target) -> bool {
        self.rules.iter().any(|r| r.applies(upstream, target))
    }

    /// True when some rule for `upstream` and `target` needs a scope `who` lacks: only then
    /// can a list need filtering.
    pub fn may_restrict(&self, upstream: &str, target: Target, who: &Principal) -> bool {
        self.rules
            .iter()
            .filter(|r| r.applies(upstream, target))
            .any(|r| r.scopes.iter().any(|s| !who.has_scope(s)))
    }
}

/// Removes from one list result the entries the caller may not use.
pub(crate) struct ListFilter {
    pub(crate) id: RequestId,
    pub(crate) target: Target,
    pub(crate) upstream: String,
    pub(crate) principal: Principal,
    pub(crate) permissions: std::sync::Arc<Permissions>,
    /// Whether entries can be removed for this caller (else only the cache scope is set).
    pub(crate) restricts: bool,
    /// A 2026-07-28 request: its list result says `cacheScope`, which must be `private`.
    pub(crate) modern: bool,
}

impl Observer for ListFilter {
    fn transforms(&self) -> bool {
        true
    }

    fn transform(&mut self, msg: &ObservedMessage<'_>) -> Option<Bytes> {
        if msg.id() != Some(&self.id) {
            return None;
        }
        let mut v: serde_json::Value = serde_json::from_slice(msg.text()).ok()?;
        let (list, key) = self.target.list_key();
        let result = v.get_mut("result")?.as_object_mut()?;
        let mut changed = false;
        if self.restricts {
            let items = result.get_mut(list)?.as_array_mut()?;
            let before = items.len();
            items.retain(|item| {
                let Some(name) = item.get(key).and_then(|n| n.as_str()) else {
                    return false;
                };
                self.permissions
                    .needed(&self.upstream, self.target, name)
                    .iter()
                    .all(|s| self.principal.has_scope(s))
            });
            changed = items.len() != before;
        }
        // The list depends on the caller's permissions, whether or not this caller lost
        // entries: a shared cache must never hand it to a caller with other permissions.
        let scope = result.get("cacheScope").and_then(|s| s.as_str());
        if (self.modern || scope.is_some()) && scope != Some("private") {
            result.insert("cacheScope".to_owned(), "private".into());
            changed = true;
        }
        if !changed {
            return None;
        }
        serde_json::to_vec(&v).ok().map(Bytes::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needed_scopes() {
        let p = Permissions::new()
            .with(Rule::new(
                Some("github"),
                Target::Tool,
                ["search_*", "get_issue"],
                ["github:read"],
            ))
            .with(Rule::new(None, Target::Tool, ["*delete*"], ["admin"]));
        assert_eq!(
            p.needed("github", Target::Tool, "search_code")
                .into_iter()
                .collect::<Vec<_>>(),
            ["github:read"]
        );
        assert!(p.needed("other", Target::Tool, "search_code").is_empty());
        assert_eq!(p.needed("other", Target::Tool, "delete_repo").len(), 1);
        assert!(p.needed("github", Target::Prompt, "search_x").is_empty());
        let reader =
            Principal::new("u", mcp_gateway_core::PrincipalKind::User).with_scopes(["github:read"]);
        assert!(p.may_restrict("github", Target::Tool, &reader));
        assert!(!p.may_restrict("github", Target::Prompt, &reader));
    }
}
