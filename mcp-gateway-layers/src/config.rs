//! What every capability's configuration section shares: located errors, durations and sizes
//! as written in TOML, paths and URLs, and the `store = "memory" | "redis"` keys.
//!
//! Each capability has its section's settings in its own `config` module (`auth::config`,
//! `limits::config`, `sessions::config`, `telemetry::config`, `audit::config`,
//! `upstream::config`, by feature):
//! the serde types as written (each value that can be wrong keeps its place in the file,
//! [`Spanned`]), a `check` that turns them into a checked spec and reports every problem with
//! its file, line and column to a [`Diagnostics`], and the function that builds the layer from
//! the checked spec. The `mcp-gateway` binary's configuration file is made of these sections:
//!
//! ```
//! # #[cfg(feature = "limits")] {
//! use mcp_gateway_layers::config::{from_toml, Diagnostics};
//! use mcp_gateway_layers::limits::config::{self as limits, LimitsConfig};
//!
//! #[derive(serde::Deserialize)]
//! struct File {
//!     limits: LimitsConfig,
//! }
//!
//! let text = "[limits]\nrequests_per_minute = 0\n";
//! let file: File = from_toml(text, "gw.toml").unwrap();
//! let mut errors = Diagnostics::new(text, "gw.toml");
//! assert!(limits::check(&file.limits, &[], &mut errors).is_none());
//! assert_eq!(
//!     errors.into_errors()[0].to_string(),
//!     "gw.toml:2:23: limits.requests_per_minute must be between 1 and 4294967295"
//! );
//! # }
//! ```
//!
//! The binary parses its file with [`from_toml_all`], which reports every unknown key and
//! wrong value, not only the first. An app with its own file reads one of these sections
//! from it with [`section`], or — checked too, as the binary checks it — with the
//! capability's `config::from_toml` (built on [`check_section`]), e.g.
//! `limits::config::from_toml(&text, "app.toml")?`.

use serde::de::{self, Deserializer};
use serde::Deserialize;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use toml::Spanned;

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

/// The 1-based line and column of byte `offset` of `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, col)
}

/// Parses TOML `text` (from `source`, a file name) into `T`; a syntax error, an unknown key or
/// a wrong value is reported at its place.
pub fn from_toml<T: de::DeserializeOwned>(text: &str, source: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError {
        source: source.to_owned(),
        location: e.span().map(|s| line_col(text, s.start)),
        message: e.message().trim().to_owned(),
    })
}

/// Every error a configuration file's text gives, in the order of the file: what the
/// functions that report them all return, so that an app can `?` them into its own error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigErrors> for Vec<ConfigError> {
    fn from(e: ConfigErrors) -> Self {
        e.0
    }
}

/// At most this many errors are reported from one file's parsing (a bound on the retries).
const MAX_PARSE_ERRORS: usize = 256;

/// Parses TOML `text` (from `source`, a file name) into `T`, like [`from_toml`], but reports
/// every unknown key and wrong value, each at its place and with the message [`from_toml`]
/// gives for it, in the order of the file — not only the first. A syntax error still stops
/// the parse (it is the only error then).
///
/// How: after each error, the key or value it is about (or, for an error about a whole
/// table, that table) is left out and the rest is parsed again, until it parses. A required
/// key left out because its value was wrong does not get a second "missing field" error.
pub fn from_toml_all<T: de::DeserializeOwned>(
    text: &str,
    source: &str,
) -> Result<T, Vec<ConfigError>> {
    let root = parse_document(text, source)?;
    deserialize_all(root, text, source)
}

/// Section `key` of TOML `text` (from `source`, a file name) as `C`, with every error of the
/// section reported as [`from_toml_all`] does, located in `text`: `Ok(None)` when the file
/// has no such section. Other sections are not looked at (beyond the TOML syntax of the whole
/// file).
///
/// This is how an app reads one of the sections the `mcp-gateway` binary reads from its own
/// file; each capability's `config::from_toml` goes on to run the section's `check`:
///
/// ```
/// # #[cfg(feature = "limits")] {
/// use mcp_gateway_layers::config::section;
/// use mcp_gateway_layers::limits::config::LimitsConfig;
///
/// let text = "[app]\nname = \"x\"\n[limits]\nrequests_per_minute = 5\nbogus = 1\n";
/// let errors = section::<LimitsConfig>(text, "app.toml", "limits").unwrap_err();
/// assert!(errors.to_string().starts_with("app.toml:5:1: unknown field `bogus`"));
/// # }
/// ```
pub fn section<C: de::DeserializeOwned>(
    text: &str,
    source: &str,
    key: &str,
) -> Result<Option<C>, ConfigErrors> {
    let root = parse_document(text, source).map_err(ConfigErrors)?;
    let toml::de::DeValue::Table(mut table) = root.into_inner() else {
        return Ok(None);
    };
    match table.remove(key) {
        None => Ok(None),
        Some(value) => deserialize_all(value, text, source)
            .map(Some)
            .map_err(ConfigErrors),
    }
}

/// What a section's `check` needs from the rest of the file it was read from: the folder
/// its relative paths are relative to, and the names of the file's `[upstreams.NAME]`.
#[derive(Debug, Clone, Default)]
pub struct SectionContext {
    /// The configuration file's folder (relative paths in the section resolve against it).
    pub base: PathBuf,
    /// The names of the file's `[upstreams.NAME]` tables, in the file's (sorted) order.
    pub upstreams: Vec<String>,
}

impl SectionContext {
    /// The context of `text`, read from the file `source`: its folder, and its upstreams.
    pub fn of(text: &str, source: &str) -> Self {
        let base = Path::new(source)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let upstreams = match toml::de::DeTable::parse(text).map(Spanned::into_inner) {
            Ok(mut t) => match t.remove("upstreams").map(Spanned::into_inner) {
                Some(toml::de::DeValue::Table(u)) => {
                    u.keys().map(|k| k.get_ref().to_string()).collect()
                }
                _ => Vec::new(),
            },
            Err(_) => Vec::new(),
        };
        Self { base, upstreams }
    }

    /// The upstream names, as the checks take them.
    pub fn upstream_names(&self) -> Vec<&str> {
        self.upstreams.iter().map(String::as_str).collect()
    }
}

/// Reads section `key` of `text` as `C` ([`section`]) and checks it with `check` — the
/// capability's own, the one the binary runs — in the file's [`SectionContext`]: the checked
/// spec, `Ok(None)` when there is no such section, or every error, located in `source`.
pub fn check_section<C: de::DeserializeOwned, S>(
    text: &str,
    source: &str,
    key: &str,
    check: impl FnOnce(&C, &SectionContext, &mut Diagnostics<'_>) -> Option<S>,
) -> Result<Option<S>, ConfigErrors> {
    let Some(config) = section::<C>(text, source, key)? else {
        return Ok(None);
    };
    let context = SectionContext::of(text, source);
    let mut errors = Diagnostics::new(text, source);
    match check(&config, &context, &mut errors) {
        Some(spec) if errors.is_empty() => Ok(Some(spec)),
        _ => Err(ConfigErrors(errors.into_errors())),
    }
}

/// The TOML document `text` as a table with the places of its keys and values; a syntax
/// error is reported as [`from_toml`] reports it.
fn parse_document<'t>(
    text: &'t str,
    source: &str,
) -> Result<Spanned<toml::de::DeValue<'t>>, Vec<ConfigError>> {
    let table = toml::de::DeTable::parse(text).map_err(|e| {
        vec![ConfigError {
            source: source.to_owned(),
            location: e.span().map(|s| line_col(text, s.start)),
            message: e.message().trim().to_owned(),
        }]
    })?;
    let span = table.span();
    Ok(Spanned::new(
        span,
        toml::de::DeValue::Table(table.into_inner()),
    ))
}

/// Deserializes `value` (a part of `text`) as `T`, reporting every error: after each, what it
/// is about is left out ([`prune`]) and the rest is deserialized again.
fn deserialize_all<T: de::DeserializeOwned>(
    mut value: Spanned<toml::de::DeValue<'_>>,
    text: &str,
    source: &str,
) -> Result<T, Vec<ConfigError>> {
    let root = value.span();
    // The keys left out, with the table they were in: a "missing field" error for one of
    // them follows from leaving it out, not from the file.
    let mut pruned: Vec<(Range<usize>, String)> = Vec::new();
    let mut found: Vec<(usize, ConfigError)> = Vec::new();
    loop {
        let error = match T::deserialize(toml::de::ValueDeserializer::from(value.clone())) {
            Ok(t) if found.is_empty() => return Ok(t),
            Ok(_) => break,
            Err(e) => e,
        };
        let span = error.span().unwrap_or_else(|| root.clone());
        let message = error.message().trim().to_owned();
        let follows = pruned
            .iter()
            .any(|(table, key)| *table == span && message == format!("missing field `{key}`"));
        if !follows {
            found.push((
                span.start,
                ConfigError {
                    source: source.to_owned(),
                    location: Some(line_col(text, span.start)),
                    message,
                },
            ));
        }
        if span == root || found.len() >= MAX_PARSE_ERRORS || !prune(&mut value, &span, &mut pruned)
        {
            break;
        }
    }
    // Serde reads a table's keys in its own order; the file's is the reader's.
    found.sort_by_key(|(at, _)| *at);
    Err(found.into_iter().map(|(_, e)| e).collect())
}

/// Whether `inner` lies within `outer`.
fn within(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

/// Leaves out of `value` the innermost key (with its value) or array element that `span`
/// (an error's place) is, or is within, recording a key left out with its table's span in
/// `pruned`. Whether something was left out.
///
/// The search goes through every table, not only those whose span holds `span`: a table
/// opened by a `[header]` spans its header, not the keys under it.
fn prune(
    value: &mut Spanned<toml::de::DeValue<'_>>,
    span: &Range<usize>,
    pruned: &mut Vec<(Range<usize>, String)>,
) -> bool {
    let here = value.span();
    match value.get_mut() {
        toml::de::DeValue::Table(table) => {
            // The innermost first: what is under each value, then the keys here.
            if table.iter_mut().any(|(_, v)| prune(v, span, pruned)) {
                return true;
            }
            let Some(key) = table
                .iter()
                .find(|(k, v)| within(&k.span(), span) || within(&v.span(), span))
                .map(|(k, _)| k.clone())
            else {
                return false;
            };
            table.remove(key.get_ref().as_ref());
            pruned.push((here, key.get_ref().to_string()));
            true
        }
        toml::de::DeValue::Array(items) => {
            if items.iter_mut().any(|v| prune(v, span, pruned)) {
                return true;
            }
            let Some(i) = items.iter().position(|v| within(&v.span(), span)) else {
                return false;
            };
            let mut kept = toml::de::DeArray::new();
            for (j, v) in items.iter().enumerate() {
                if j != i {
                    kept.push(v.clone());
                }
            }
            *items = kept;
            true
        }
        _ => false,
    }
}

/// Collects the errors of a configuration file, each located (file, line, column) from the
/// span of the value it is about.
#[derive(Debug)]
pub struct Diagnostics<'a> {
    text: &'a str,
    source: &'a str,
    errors: Vec<ConfigError>,
}

impl<'a> Diagnostics<'a> {
    /// Errors about `text`, read from `source` (a file name).
    pub fn new(text: &'a str, source: &'a str) -> Self {
        Self {
            text,
            source,
            errors: Vec::new(),
        }
    }

    /// Reports `message` at `span` (a byte range of the text; `None`: the file as a whole).
    pub fn error(&mut self, span: Option<Range<usize>>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            source: self.source.to_owned(),
            location: span.map(|s| line_col(self.text, s.start)),
            message: message.into(),
        });
    }

    /// Reports an error found in another file (one this configuration names), located there.
    pub fn push(&mut self, error: ConfigError) {
        self.errors.push(error);
    }

    /// How many errors were reported so far: a check compares the count before and after.
    pub fn count(&self) -> usize {
        self.errors.len()
    }

    /// Whether no error was reported.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// The errors, in the order they were reported.
    pub fn into_errors(self) -> Vec<ConfigError> {
        self.errors
    }
}

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

/// A configured path, relative to the configuration file's folder `base` unless absolute.
pub fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Checks a URL the gateway calls (an upstream instance, an issuer, a token endpoint):
/// absolute `http://` or `https://` with a host.
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

/// Where a section keeps the state its replicas share (`[limits]`' budgets, `[sessions]`'
/// session ends): this process's memory, or a Redis server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// This process's memory.
    Memory,
    /// A shared Redis.
    Redis {
        /// The server URL.
        url: String,
        /// How long one Redis answer may take.
        timeout: Duration,
        /// Key prefix.
        prefix: String,
    },
}

/// A section's store keys as written: `store`, `redis_url`, `redis_timeout`, `redis_prefix`.
#[derive(Debug, Clone, Copy)]
pub struct StoreKeys<'a> {
    /// `memory` (default) or `redis`.
    pub store: Option<&'a Spanned<String>>,
    /// The Redis server, for `store = "redis"`.
    pub redis_url: Option<&'a Spanned<String>>,
    /// How long a Redis answer may take.
    pub redis_timeout: Option<Dur>,
    /// Prefix of the Redis keys.
    pub redis_prefix: Option<&'a str>,
}

/// What a section's store falls back to when its keys leave it out.
#[derive(Debug, Clone, Copy)]
pub struct StoreDefaults<'a> {
    /// The Redis timeout.
    pub timeout: Duration,
    /// The Redis key prefix.
    pub prefix: &'a str,
}

impl StoreSpec {
    /// Checks `store = "memory" | "redis"` and `redis_url` alike for every section that has a
    /// store (`section` names it in messages): with Redis, `open` says whether the URL is
    /// usable. Problems are reported to `errors`; the spec returned then is `Memory`.
    pub fn check(
        section: &str,
        keys: StoreKeys<'_>,
        defaults: StoreDefaults<'_>,
        open: impl Fn(&str) -> Result<(), String>,
        errors: &mut Diagnostics<'_>,
    ) -> Self {
        let url = match keys.store.map(|s| (s.get_ref().as_str(), s.span())) {
            None | Some(("memory", _)) => {
                if let Some(u) = keys.redis_url {
                    errors.error(
                        Some(u.span()),
                        format!("{section}.redis_url is set but store is not \"redis\""),
                    );
                }
                None
            }
            Some(("redis", span)) => match keys.redis_url {
                None => {
                    errors.error(
                        Some(span),
                        format!("{section}: store = \"redis\" needs redis_url"),
                    );
                    None
                }
                Some(u) => {
                    if let Err(e) = open(u.get_ref()) {
                        errors.error(Some(u.span()), format!("{section}.redis_url: {e}"));
                    }
                    Some(u.get_ref().clone())
                }
            },
            Some((other, span)) => {
                errors.error(
                    Some(span),
                    format!("{section}.store: {other:?} is not \"memory\" or \"redis\""),
                );
                None
            }
        };
        match url {
            None => Self::Memory,
            Some(url) => Self::Redis {
                url,
                timeout: keys.redis_timeout.map_or(defaults.timeout, |d| d.0),
                prefix: keys.redis_prefix.unwrap_or(defaults.prefix).to_owned(),
            },
        }
    }
}

/// Test support: a section parsed out of a whole file, so that locations are the file's.
/// (Used by the configuration tests of most features, not all: a build with one feature alone
/// may not use it.)
#[cfg(test)]
#[allow(dead_code)]
pub(crate) mod testing {
    use super::{from_toml, Diagnostics};
    use serde::de::DeserializeOwned;

    /// Parses `text` as `D` and checks it with `check`: the spec, or every error as text.
    pub(crate) fn run<D: DeserializeOwned, S>(
        text: &str,
        check: impl FnOnce(&D, &mut Diagnostics<'_>) -> Option<S>,
    ) -> Result<S, Vec<String>> {
        let doc: D = from_toml(text, "gw.toml").map_err(|e| vec![e.to_string()])?;
        let mut errors = Diagnostics::new(text, "gw.toml");
        let spec = check(&doc, &mut errors);
        match spec {
            Some(s) if errors.is_empty() => Ok(s),
            _ => Err(errors
                .into_errors()
                .iter()
                .map(ToString::to_string)
                .collect()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("x").is_err());
        assert_eq!(parse_size("4MiB").unwrap(), 4 << 20);
        assert_eq!(parse_size("10KB").unwrap(), 10_000);
        assert!(parse_size("4 furlongs").is_err());
    }

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        n: u8,
        #[serde(default)]
        s: Option<String>,
    }

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        #[serde(default)]
        b: Option<u8>,
        #[serde(default)]
        a: Option<Inner>,
        #[serde(default)]
        rules: Vec<Inner>,
    }

    fn all(text: &str) -> Vec<String> {
        from_toml_all::<Doc>(text, "f")
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn every_unknown_key_and_wrong_value_is_reported_in_file_order() {
        let text = "typo = 1\nb = \"x\"\n\
                    [a]\ns = 5\nn = 1\nmore = 2\n\
                    [[rules]]\nn = 1\nbad = 2\n\
                    [[rules]]\nn = 300\n\
                    [[rules]]\nn = 2\ns = []\n";
        let e = all(text);
        assert_eq!(e.len(), 7, "{e:?}");
        assert!(
            e[0].starts_with("f:1:1: unknown field `typo`, expected one of `b`, `a`, `rules`"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("f:2:5: invalid type: string \"x\", expected u8"),
            "{e:?}"
        );
        assert!(
            e[2].starts_with("f:4:5: invalid type: integer `5`, expected a string"),
            "{e:?}"
        );
        assert!(e[3].starts_with("f:6:1: unknown field `more`"), "{e:?}");
        assert!(e[4].starts_with("f:9:1: unknown field `bad`"), "{e:?}");
        assert!(
            e[5].starts_with("f:11:5: invalid value: integer `300`"),
            "{e:?}"
        );
        assert!(e[6].starts_with("f:14:5: invalid type: sequence"), "{e:?}");
        // No "missing field `n`" for the `n` left out because its value was wrong, but one
        // for an `n` that is missing from the file.
        let e = all("[[rules]]\nn = \"x\"\n[[rules]]\ns = \"y\"\n");
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].starts_with("f:2:5: invalid type"), "{e:?}");
        assert!(e[1].starts_with("f:3:1: missing field `n`"), "{e:?}");
        // One error: the message and place `from_toml` gives.
        let one = "[a]\nn = 1\nzz = 1\n";
        assert_eq!(
            all(one),
            [from_toml::<Doc>(one, "f").unwrap_err().to_string()]
        );
        // A syntax error stops at itself.
        let e = all("b = \n[a]\nzz = 1\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(
            e[0],
            from_toml::<Doc>("b = \n[a]\nzz = 1\n", "f")
                .unwrap_err()
                .to_string()
        );
        assert_eq!(
            from_toml_all::<Doc>("[a]\nn = 3\n", "f")
                .unwrap()
                .a
                .unwrap()
                .n,
            3
        );
    }

    #[test]
    fn a_section_is_read_alone_and_located_in_its_file() {
        let text = "[app]\nanything = true\n[a]\nn = 1\nzz = 1\nyy = 2\n";
        let e = section::<Inner>(text, "app.toml", "a").unwrap_err();
        assert_eq!(e.0.len(), 2, "{e}");
        assert!(
            e.0[0]
                .to_string()
                .starts_with("app.toml:5:1: unknown field `zz`"),
            "{e}"
        );
        assert!(
            e.0[1]
                .to_string()
                .starts_with("app.toml:6:1: unknown field `yy`"),
            "{e}"
        );
        assert!(section::<Inner>(text, "app.toml", "b").unwrap().is_none());
        let ok = section::<Inner>("[a]\nn = 4\n", "app.toml", "a").unwrap();
        assert_eq!(ok.unwrap().n, 4);
        let cx = SectionContext::of("[upstreams.x]\n[upstreams.y]\n", "dir/app.toml");
        assert_eq!(cx.upstream_names(), ["x", "y"]);
        assert_eq!(cx.base, Path::new("dir"));
    }

    #[test]
    fn locations() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("ab", 99), (1, 3));
        let e = from_toml::<std::collections::BTreeMap<String, u8>>("a = 1\nb = \"x\"\n", "f")
            .unwrap_err();
        assert!(e.to_string().starts_with("f:2:5: "), "{e}");
    }
}
