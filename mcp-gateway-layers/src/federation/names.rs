//! Exposed names: `alias__name` for tools and prompts, `mcp-gateway://alias/URI` for
//! resources, and the catalog that turns an exposed name back into its upstream and original.

use super::Prefix;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};

/// What separates the alias from the original name.
pub const SEPARATOR: &str = "__";
/// The scheme of a prefixed resource URI: `mcp-gateway://ALIAS/ORIGINAL`.
pub const URI_PREFIX: &str = "mcp-gateway://";
/// The longest exposed tool or prompt name.
pub const MAX_NAME: usize = 64;

/// Whether `s` matches `^[A-Za-z0-9_-]{1,64}$` (what LLM providers accept as a tool name).
pub fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The exposed name of `name` (of upstream `alias` when prefixed): `alias__name`, or, when
/// that is not a valid name (too long, or characters outside `[A-Za-z0-9_-]`), the same
/// with those characters replaced by `_`, cut to 55 characters and ended with `-` and 8 hex
/// digits of the SHA-256 of the alias and the original name. The same input always gives
/// the same name; the catalog maps it back.
pub fn expose(alias: Option<&str>, name: &str) -> String {
    let full = match alias {
        Some(a) => format!("{a}{SEPARATOR}{name}"),
        None => name.to_owned(),
    };
    if is_valid_name(&full) {
        return full;
    }
    let mut h = Sha256::new();
    h.update(alias.unwrap_or("").as_bytes());
    h.update([0]);
    h.update(name.as_bytes());
    let digest = h.finalize();
    let mut out: String = full
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(MAX_NAME - 9)
        .collect();
    if out.is_empty() {
        out.push('_');
    }
    out.push('-');
    for b in &digest[..4] {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    out
}

/// Whether `name` has the form of a shortened name (`-` and 8 lowercase hex digits at its
/// end): only the names the upstreams listed map such a name back.
pub fn is_shortened(name: &str) -> bool {
    name.len() > 9
        && name.as_bytes()[name.len() - 9] == b'-'
        && name[name.len() - 8..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The exposed URI of resource `uri` of upstream `alias`.
pub fn expose_uri(alias: Option<&str>, uri: &str) -> String {
    match alias {
        Some(a) => format!("{URI_PREFIX}{a}/{uri}"),
        None => uri.to_owned(),
    }
}

/// `(alias, original)` of a prefixed URI.
pub fn split_uri(uri: &str) -> Option<(&str, &str)> {
    uri.strip_prefix(URI_PREFIX)?.split_once('/')
}

/// The four kinds of list a virtual server merges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `tools/list`: entries named by `name`.
    Tools,
    /// `prompts/list`: entries named by `name`.
    Prompts,
    /// `resources/list`: entries named by `uri`.
    Resources,
    /// `resources/templates/list`: entries named by `uriTemplate`.
    Templates,
}

impl Kind {
    /// The kind a list method returns.
    pub fn of_list(method: &str) -> Option<Self> {
        Some(match method {
            "tools/list" => Self::Tools,
            "prompts/list" => Self::Prompts,
            "resources/list" => Self::Resources,
            "resources/templates/list" => Self::Templates,
            _ => return None,
        })
    }
    /// The list method.
    pub fn method(self) -> &'static str {
        match self {
            Self::Tools => "tools/list",
            Self::Prompts => "prompts/list",
            Self::Resources => "resources/list",
            Self::Templates => "resources/templates/list",
        }
    }
    /// The result member holding the entries.
    pub fn key(self) -> &'static str {
        match self {
            Self::Tools => "tools",
            Self::Prompts => "prompts",
            Self::Resources => "resources",
            Self::Templates => "resourceTemplates",
        }
    }
    /// The entry member that names it.
    pub fn field(self) -> &'static str {
        match self {
            Self::Tools | Self::Prompts => "name",
            Self::Resources => "uri",
            Self::Templates => "uriTemplate",
        }
    }
    /// Whether entries are URIs (mapped with [`expose_uri`]) rather than names.
    pub fn is_uri(self) -> bool {
        matches!(self, Self::Resources | Self::Templates)
    }
    pub(crate) fn index(self) -> usize {
        self as usize
    }
    /// A short label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Tools => "tool",
            Self::Prompts => "prompt",
            Self::Resources => "resource",
            Self::Templates => "resource_template",
        }
    }
}

/// Who owns an exposed name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// One upstream (its index) and the original name.
    One(usize, String),
    /// Several entries have this exposed name (upstreams that list the same original name
    /// under `never`, or names that collide once exposed): refused.
    Ambiguous(Vec<usize>),
}

/// The names each upstream listed last, per kind, and the exposed names they give.
#[derive(Debug, Default)]
pub struct Catalog {
    kinds: [KindCatalog; 4],
}

#[derive(Debug, Default)]
struct KindCatalog {
    /// Per upstream: the original names of its last complete (or growing) list.
    names: BTreeMap<usize, Vec<String>>,
    /// Exposed name → owner.
    exposed: HashMap<String, Owner>,
    /// Original names listed by more than one upstream.
    clashes: HashMap<String, Vec<usize>>,
    /// Exposed names that several entries would have.
    collisions: HashMap<String, Vec<usize>>,
}

impl Catalog {
    /// Records a page of `member`'s list of `kind`; `first` when it is the list's first page
    /// (it replaces what the member listed before).
    pub fn record(
        &mut self,
        kind: Kind,
        member: usize,
        first: bool,
        names: impl IntoIterator<Item = String>,
    ) {
        let k = &mut self.kinds[kind.index()];
        let list = k.names.entry(member).or_default();
        if first {
            list.clear();
        }
        list.extend(names);
    }

    /// Forgets what `member` listed of `kind` (it announced that the list changed).
    pub fn forget(&mut self, kind: Kind, member: usize) {
        self.kinds[kind.index()].names.remove(&member);
    }

    /// Rebuilds the exposed names of `kind` for `prefix`, `aliases` naming the upstreams.
    /// Returns the clashes that are new since the last rebuild: original names several
    /// upstreams list, and exposed names several entries would have.
    pub fn rebuild(
        &mut self,
        kind: Kind,
        prefix: Prefix,
        aliases: &[std::sync::Arc<str>],
    ) -> Vec<(String, Vec<usize>)> {
        let k = &mut self.kinds[kind.index()];
        let mut owners: HashMap<&str, Vec<usize>> = HashMap::new();
        for (m, names) in &k.names {
            for n in names {
                let o = owners.entry(n.as_str()).or_default();
                if !o.contains(m) {
                    o.push(*m);
                }
            }
        }
        let clashes: HashMap<String, Vec<usize>> = owners
            .iter()
            .filter(|(_, o)| o.len() > 1)
            .map(|(n, o)| ((*n).to_owned(), o.clone()))
            .collect();
        let fresh = clashes
            .iter()
            .filter(|(n, o)| k.clashes.get(*n) != Some(*o))
            .map(|(n, o)| (n.clone(), o.clone()))
            .collect();
        let mut fresh: Vec<(String, Vec<usize>)> = fresh;
        let mut exposed: HashMap<String, Owner> = HashMap::with_capacity(owners.len());
        for (m, names) in &k.names {
            for n in names {
                let clash = clashes.contains_key(n.as_str());
                let alias = match prefix {
                    Prefix::Always => Some(&*aliases[*m]),
                    Prefix::Conditional if clash => Some(&*aliases[*m]),
                    Prefix::Never if clash => {
                        exposed.insert(
                            exposed_of(kind, None, n),
                            Owner::Ambiguous(clashes[n.as_str()].clone()),
                        );
                        continue;
                    }
                    _ => None,
                };
                let name = exposed_of(kind, alias, n);
                // Two entries exposed under one name (an alias with `__` in it, a name equal
                // to another's prefixed form, a hash collision): neither can be told apart,
                // so both are withheld, as a clash under `never` is.
                match exposed.get_mut(&name) {
                    None => {
                        exposed.insert(name, Owner::One(*m, n.clone()));
                    }
                    Some(Owner::One(other, o)) if *other == *m && o == n => {}
                    Some(owner) => {
                        let mut ms = match owner {
                            Owner::One(other, _) => vec![*other],
                            Owner::Ambiguous(v) => v.clone(),
                        };
                        if !ms.contains(m) {
                            ms.push(*m);
                        }
                        if k.collisions.get(&name) != Some(&ms) {
                            fresh.push((name.clone(), ms.clone()));
                        }
                        k.collisions.insert(name.clone(), ms.clone());
                        *owner = Owner::Ambiguous(ms);
                    }
                }
            }
        }
        k.exposed = exposed;
        k.clashes = clashes;
        fresh
    }

    /// The exposed name of `member`'s entry `name` as the last rebuild decided; `None` when
    /// it is withheld (a clash under `never`, or a name several entries would have).
    pub fn exposed(
        &self,
        kind: Kind,
        prefix: Prefix,
        aliases: &[std::sync::Arc<str>],
        member: usize,
        name: &str,
    ) -> Option<String> {
        let k = &self.kinds[kind.index()];
        let clash = k.clashes.contains_key(name);
        let alias = match prefix {
            Prefix::Always => Some(&*aliases[member]),
            Prefix::Conditional if clash => Some(&*aliases[member]),
            Prefix::Never if clash => return None,
            _ => None,
        };
        let exposed = exposed_of(kind, alias, name);
        match k.exposed.get(&exposed) {
            Some(Owner::Ambiguous(_)) => None,
            _ => Some(exposed),
        }
    }

    /// Who owns exposed `name` of `kind`.
    pub fn owner(&self, kind: Kind, name: &str) -> Option<&Owner> {
        self.kinds[kind.index()].exposed.get(name)
    }

    /// The upstreams whose resource templates could produce `uri` (their text before the
    /// first `{` starts it).
    pub fn template_owners(&self, uri: &str) -> Vec<usize> {
        let k = &self.kinds[Kind::Templates.index()];
        let mut out = Vec::new();
        for (m, names) in &k.names {
            if names.iter().any(|t| {
                let lit = t.split('{').next().unwrap_or(t);
                !lit.is_empty() && uri.starts_with(lit)
            }) {
                out.push(*m);
            }
        }
        out
    }
}

fn exposed_of(kind: Kind, alias: Option<&str>, name: &str) -> String {
    if kind.is_uri() {
        expose_uri(alias, name)
    } else {
        expose(alias, name)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn names_are_valid_and_stable() {
        assert_eq!(
            expose(Some("github"), "create_issue"),
            "github__create_issue"
        );
        assert_eq!(expose(None, "echo"), "echo");
        let long = "x".repeat(80);
        let a = expose(Some("docs"), &long);
        assert!(is_valid_name(&a), "{a}");
        assert_eq!(a.len(), 64);
        assert_eq!(a, expose(Some("docs"), &long));
        assert_ne!(a, expose(Some("docs"), &"x".repeat(81)));
        let dotted = expose(Some("fs"), "read.file");
        assert!(is_valid_name(&dotted), "{dotted}");
        assert!(dotted.starts_with("fs__read_file-"));
        assert_ne!(dotted, expose(Some("fs"), "read/file"));
        assert!(is_valid_name(&expose(None, "")));
    }

    #[test]
    fn shortened_names_are_recognised() {
        assert!(is_shortened(&expose(Some("fs"), "read.file")));
        assert!(is_shortened(&expose(Some("docs"), &"x".repeat(80))));
        assert!(!is_shortened("github__create_issue"));
        assert!(!is_shortened("-1234abcd"));
    }

    #[test]
    fn uris_round_trip() {
        let u = expose_uri(Some("docs"), "file:///a/b?c=d");
        assert_eq!(u, "mcp-gateway://docs/file:///a/b?c=d");
        assert_eq!(split_uri(&u), Some(("docs", "file:///a/b?c=d")));
        assert_eq!(split_uri("file:///x"), None);
    }

    #[test]
    fn colliding_exposed_names_are_withheld() {
        // Alias "a__b" with tool "c" and alias "a" with tool "b__c" both expose "a__b__c".
        let aliases: Vec<Arc<str>> = vec!["a__b".into(), "a".into()];
        let mut c = Catalog::default();
        c.record(Kind::Tools, 0, true, ["c".into()]);
        c.record(Kind::Tools, 1, true, ["b__c".into(), "d".into()]);
        let fresh = c.rebuild(Kind::Tools, Prefix::Always, &aliases);
        assert_eq!(fresh, vec![("a__b__c".to_owned(), vec![0, 1])]);
        assert_eq!(
            c.exposed(Kind::Tools, Prefix::Always, &aliases, 0, "c"),
            None
        );
        assert_eq!(
            c.exposed(Kind::Tools, Prefix::Always, &aliases, 1, "b__c"),
            None
        );
        assert_eq!(
            c.exposed(Kind::Tools, Prefix::Always, &aliases, 1, "d")
                .as_deref(),
            Some("a__d")
        );
        assert_eq!(
            c.owner(Kind::Tools, "a__b__c"),
            Some(&Owner::Ambiguous(vec![0, 1]))
        );
        assert!(c.rebuild(Kind::Tools, Prefix::Always, &aliases).is_empty());
    }

    #[test]
    fn catalog_prefixes_by_mode() {
        let aliases: Vec<Arc<str>> = vec!["a".into(), "b".into()];
        for (prefix, echo, only) in [
            (Prefix::Always, Some("a__echo"), "a__only_a"),
            (Prefix::Conditional, Some("a__echo"), "only_a"),
            (Prefix::Never, None, "only_a"),
        ] {
            let mut c = Catalog::default();
            c.record(Kind::Tools, 0, true, ["echo".into(), "only_a".into()]);
            c.record(Kind::Tools, 1, true, ["echo".into()]);
            let fresh = c.rebuild(Kind::Tools, prefix, &aliases);
            assert_eq!(fresh, vec![("echo".to_owned(), vec![0, 1])]);
            assert_eq!(
                c.exposed(Kind::Tools, prefix, &aliases, 0, "echo")
                    .as_deref(),
                echo
            );
            assert_eq!(
                c.owner(Kind::Tools, only),
                Some(&Owner::One(0, "only_a".into()))
            );
            if prefix == Prefix::Never {
                assert_eq!(
                    c.owner(Kind::Tools, "echo"),
                    Some(&Owner::Ambiguous(vec![0, 1]))
                );
            } else {
                assert_eq!(
                    c.owner(Kind::Tools, "b__echo"),
                    Some(&Owner::One(1, "echo".into()))
                );
            }
            // The same state again: nothing new to warn about.
            assert!(c.rebuild(Kind::Tools, prefix, &aliases).is_empty());
        }
    }
}
