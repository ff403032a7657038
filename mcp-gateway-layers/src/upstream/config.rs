//! `[upstreams.NAME]`: the MCP servers the gateway forwards to, as written in its configuration
//! file (or given as `--upstream NAME=URL` flags), checked with a location for every error, and
//! built into an [`Upstream`] each.
//!
//! ```toml
//! [upstreams.demo]                      # served at /mcp/demo
//! url = "http://127.0.0.1:3001/mcp"     # or urls = ["http://a/mcp", "http://b/mcp"]
//! connect_timeout = "5s"
//! response_timeout = "60s"
//! read_timeout = "60s"                  # longest silence within a JSON answer's body
//! sse_idle_timeout = "5m"               # longest silence on an SSE stream ("0s": none)
//! # ca_file = "internal-ca.pem"         # trusted for https:// instances, besides the system's
//! # credentials = { type = "static", secret_env = "DEMO_TOKEN" }   # feature `auth`
//! ```
//!
//! A problem with a whole upstream (its name, a missing `url`) is reported at the name in its
//! `[upstreams.NAME]` header; a bad value at the value.
//!
//! An app with its own TOML file reads its `[upstreams.NAME]` tables with [`from_toml`] (the
//! binary's validation, [`check_with_auth`] or [`check`], with errors located in the app's
//! file) and builds each with [`build`]:
//!
//! ```
//! use mcp_gateway_layers::upstream::config;
//!
//! let text = "[upstreams.demo]\nurl = \"http://127.0.0.1:3001/mcp\"\n";
//! let specs = config::from_toml(text, "app.toml")?;
//! assert_eq!(specs[0].name, "demo"); // config::build(&specs[0]) inside a Tokio runtime
//!
//! let bad = "[upstreams.demo]\nurl = \"tcp://nope\"\ntimeout = 5\n";
//! assert!(config::from_toml(bad, "app.toml")
//!     .unwrap_err()
//!     .to_string()
//!     .starts_with("app.toml:3:1: unknown field `timeout`"));
//! # Ok::<(), mcp_gateway_layers::config::ConfigErrors>(())
//! ```

use super::{CertificateDer, Upstream, UpstreamConfig, UpstreamError};
#[cfg(feature = "auth")]
use crate::auth::config::{AuthConfig, CredentialsConfig, CredentialsSpec};
use crate::config::{
    check_url, resolve, section, ConfigError, ConfigErrors, Diagnostics, Dur, SectionContext,
    Spanned,
};
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What an upstream needs, as its error says (a `command` only with the `stdio` feature).
#[cfg(feature = "stdio")]
const NEEDS: &str = "url, urls or command";
#[cfg(not(feature = "stdio"))]
const NEEDS: &str = "url or urls";

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_SSE_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// `[upstreams.NAME]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
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
    /// Longest silence between two reads of a non-SSE answer's body; `"0s"` for none.
    /// Default 60 s.
    #[serde(default)]
    pub read_timeout: Option<Dur>,
    /// Longest silence on an SSE stream; `"0s"` for none. Default 5 minutes.
    #[serde(default)]
    pub sse_idle_timeout: Option<Dur>,
    /// PEM file of CA certificates trusted for `https://` instances, besides the system's.
    #[serde(default)]
    pub ca_file: Option<Spanned<PathBuf>>,
    /// What the gateway presents to this upstream (never the caller's token).
    #[cfg(feature = "auth")]
    #[serde(default)]
    pub credentials: Option<CredentialsConfig>,
    /// A local server run as a child process instead of `url` (feature `stdio`): the argv.
    #[cfg(feature = "stdio")]
    #[serde(default)]
    pub command: Option<Spanned<Vec<String>>>,
    /// stdio: variables given as values.
    #[cfg(feature = "stdio")]
    #[serde(default)]
    pub env: Option<Spanned<BTreeMap<String, String>>>,
    /// stdio: variables whose values are read from files.
    #[cfg(feature = "stdio")]
    #[serde(default)]
    pub env_files: Option<Spanned<BTreeMap<String, PathBuf>>>,
    /// stdio: variables passed on from the gateway's environment.
    #[cfg(feature = "stdio")]
    #[serde(default)]
    pub inherit_env: Option<Spanned<Vec<String>>>,
    /// stdio: the child's working folder.
    #[cfg(feature = "stdio")]
    #[serde(default)]
    pub cwd: Option<Spanned<PathBuf>>,
    /// stdio: `"shared"`, `"per_session"` or `"per_agent"`.
    #[cfg(feature = "stdio")]
    #[serde(default)]
    pub mode: Option<Spanned<String>>,
    /// stdio: the most children at once.
    #[cfg(feature = "stdio")]
    #[serde(default)]
    pub max_processes: Option<Spanned<i64>>,
    /// stdio: the longest wait for `initialize`'s answer.
    #[cfg(feature = "stdio")]
    #[serde(default)]
    pub startup_timeout: Option<Dur>,
    /// stdio: how long new work waits for a free child or a restart.
    #[cfg(feature = "stdio")]
    #[serde(default)]
    pub queue_timeout: Option<Dur>,
    /// stdio: how long an unused session or agent child lives.
    #[cfg(feature = "stdio")]
    #[serde(default)]
    pub idle_timeout: Option<Dur>,
    /// stdio: each step of the shutdown.
    #[cfg(feature = "stdio")]
    #[serde(default)]
    pub stop_timeout: Option<Dur>,
    /// stdio: the largest message read from a child.
    #[cfg(feature = "stdio")]
    #[serde(default)]
    pub max_message_size: Option<crate::config::Size>,
    /// stdio, `per_agent`: each agent's own variables.
    #[cfg(feature = "stdio")]
    #[serde(default)]
    pub agent_env: Option<BTreeMap<Spanned<String>, BTreeMap<String, String>>>,
    /// stdio, `per_agent`: each agent's own variables, read from files.
    #[cfg(feature = "stdio")]
    #[serde(default)]
    pub agent_env_files: Option<BTreeMap<Spanned<String>, BTreeMap<String, PathBuf>>>,
}

#[cfg(feature = "stdio")]
impl UpstreamEntry {
    fn stdio_keys(&self) -> crate::stdio::config::StdioKeys<'_> {
        crate::stdio::config::StdioKeys {
            command: self.command.as_ref(),
            env: self.env.as_ref(),
            env_files: self.env_files.as_ref(),
            inherit_env: self.inherit_env.as_ref(),
            cwd: self.cwd.as_ref(),
            mode: self.mode.as_ref(),
            max_processes: self.max_processes.as_ref(),
            startup_timeout: self.startup_timeout,
            response_timeout: self.response_timeout,
            queue_timeout: self.queue_timeout,
            idle_timeout: self.idle_timeout,
            stop_timeout: self.stop_timeout,
            max_message_size: self.max_message_size,
            agent_env: self.agent_env.as_ref(),
            agent_env_files: self.agent_env_files.as_ref(),
        }
    }
}

/// A checked upstream.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct UpstreamSpec {
    /// Name (route `/mcp/NAME`).
    pub name: String,
    /// Instance URLs.
    pub urls: Vec<http::Uri>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Response-start timeout.
    pub response_timeout: Duration,
    /// Longest silence within a non-SSE answer's body (zero: none).
    pub read_timeout: Duration,
    /// Longest silence on an SSE stream (zero: none).
    pub sse_idle_timeout: Duration,
    /// Extra CA certificates (PEM file) for `https://` instances.
    pub ca_file: Option<PathBuf>,
    /// Credentials presented to the upstream.
    #[cfg(feature = "auth")]
    pub credentials: Option<CredentialsSpec>,
    /// A local server run as child processes (`command`); `urls` is then empty.
    #[cfg(feature = "stdio")]
    pub stdio: Option<crate::stdio::StdioSpec>,
}

/// The file's `[auth]`, which `credentials` take their defaults from (nothing without `auth`).
#[cfg(feature = "auth")]
type AuthSection<'a> = Option<&'a AuthConfig>;
#[cfg(not(feature = "auth"))]
type AuthSection<'a> = std::marker::PhantomData<&'a ()>;

/// Checks the `[upstreams]` table (a relative `ca_file` is relative to `base`, the
/// configuration file's folder): at least one upstream, valid names, each with `url` or `urls`
/// (not both) of absolute `http(s)://` URLs, a readable `ca_file`. Every problem is reported,
/// upstream by upstream; the specs returned are only meaningful when none was. With the `auth`
/// feature, `credentials` are checked too, as in a file without `[auth]`
/// (`check_with_auth` takes the file's).
pub fn check(
    upstreams: &BTreeMap<Spanned<String>, UpstreamEntry>,
    base: &Path,
    errors: &mut Diagnostics<'_>,
) -> Vec<UpstreamSpec> {
    check_table(upstreams, AuthSection::default(), base, errors)
}

/// [`check`], with each upstream's `credentials` checked against the file's `[auth]` (whose
/// introspection client and issuer are their defaults), in place: after the upstream's other
/// keys, before the next upstream.
#[cfg(feature = "auth")]
pub fn check_with_auth(
    upstreams: &BTreeMap<Spanned<String>, UpstreamEntry>,
    auth: Option<&AuthConfig>,
    base: &Path,
    errors: &mut Diagnostics<'_>,
) -> Vec<UpstreamSpec> {
    check_table(upstreams, auth, base, errors)
}

#[cfg_attr(not(feature = "auth"), allow(unused_variables))]
fn check_table(
    upstreams: &BTreeMap<Spanned<String>, UpstreamEntry>,
    auth: AuthSection<'_>,
    base: &Path,
    errors: &mut Diagnostics<'_>,
) -> Vec<UpstreamSpec> {
    if upstreams.is_empty() {
        errors.error(
            None,
            "no upstreams: add an [upstreams.NAME] table with a url",
        );
    }
    let mut specs = Vec::with_capacity(upstreams.len());
    for (spanned_name, entry) in upstreams {
        let name = spanned_name.get_ref();
        if !valid_name(name) {
            errors.error(
                Some(spanned_name.span()),
                format!("upstream name {name:?} must use only letters, digits, '-', '_' and '.'"),
            );
        }
        let mut raw: Vec<&Spanned<String>> = entry.url.iter().collect();
        raw.extend(entry.urls.iter());
        #[cfg(feature = "stdio")]
        let stdio = check_stdio(name, spanned_name, entry, &raw, base, errors);
        #[cfg(not(feature = "stdio"))]
        let stdio: Option<()> = None;
        if raw.is_empty() && stdio.is_none() {
            #[cfg(feature = "stdio")]
            let stdio_error = entry.command.is_some();
            #[cfg(not(feature = "stdio"))]
            let stdio_error = false;
            if !stdio_error {
                errors.error(
                    Some(spanned_name.span()),
                    format!("upstream {name:?} needs {NEEDS}"),
                );
            }
        }
        if entry.url.is_some() && !entry.urls.is_empty() {
            errors.error(
                entry.url.as_ref().map(Spanned::span),
                format!("upstream {name:?}: give url or urls, not both"),
            );
        }
        let mut urls = Vec::new();
        for u in raw {
            match check_url(u.get_ref()) {
                Ok(uri) => urls.push(uri),
                Err(m) => errors.error(Some(u.span()), format!("upstream {name:?}: {m}")),
            }
        }
        let ca_file = entry.ca_file.as_ref().map(|p| {
            let full = resolve(base, p.get_ref());
            if let Err(e) = load_certs(&full) {
                errors.error(Some(p.span()), format!("upstream {name:?}: ca_file: {e}"));
            }
            full
        });
        #[cfg(feature = "auth")]
        let credentials = entry.credentials.as_ref().and_then(|c| {
            let default_resource = urls.first().map(ToString::to_string);
            crate::auth::config::check_credentials(name, c, auth, default_resource, base, errors)
        });
        specs.push(UpstreamSpec {
            name: name.clone(),
            #[cfg(feature = "stdio")]
            stdio,
            ca_file,
            #[cfg(feature = "auth")]
            credentials,
            urls,
            connect_timeout: entry
                .connect_timeout
                .map_or(DEFAULT_CONNECT_TIMEOUT, |d| d.0),
            response_timeout: entry
                .response_timeout
                .map_or(DEFAULT_RESPONSE_TIMEOUT, |d| d.0),
            read_timeout: entry.read_timeout.map_or(DEFAULT_READ_TIMEOUT, |d| d.0),
            sse_idle_timeout: entry
                .sse_idle_timeout
                .map_or(DEFAULT_SSE_IDLE_TIMEOUT, |d| d.0),
        });
    }
    specs
}

/// The stdio keys of one upstream: its spec when it has `command` (and no URL), checked; the
/// stdio-only keys without `command`, or the HTTP-only keys with it, are errors.
#[cfg(feature = "stdio")]
fn check_stdio(
    name: &str,
    spanned_name: &Spanned<String>,
    entry: &UpstreamEntry,
    urls: &[&Spanned<String>],
    base: &Path,
    errors: &mut Diagnostics<'_>,
) -> Option<crate::stdio::StdioSpec> {
    let keys = entry.stdio_keys();
    let Some(command) = &entry.command else {
        if keys.any_set() {
            errors.error(
                Some(spanned_name.span()),
                format!("upstream {name:?}: env, env_files, inherit_env, cwd, mode, max_processes, startup_timeout, queue_timeout, idle_timeout, stop_timeout, max_message_size and agent_env are for stdio upstreams: add command"),
            );
        }
        return None;
    };
    if !urls.is_empty() {
        errors.error(
            Some(command.span()),
            format!("upstream {name:?}: give url, urls or command, not several"),
        );
    }
    let mut http_only = Vec::new();
    if entry.connect_timeout.is_some() {
        http_only.push("connect_timeout");
    }
    if entry.read_timeout.is_some() {
        http_only.push("read_timeout");
    }
    if entry.sse_idle_timeout.is_some() {
        http_only.push("sse_idle_timeout");
    }
    if entry.ca_file.is_some() {
        http_only.push("ca_file");
    }
    #[cfg(feature = "auth")]
    if entry.credentials.is_some() {
        http_only.push("credentials");
    }
    if !http_only.is_empty() {
        errors.error(
            Some(command.span()),
            format!(
                "upstream {name:?}: {} apply to HTTP upstreams, not to a command",
                http_only.join(", ")
            ),
        );
    }
    crate::stdio::config::check(name, &keys, DEFAULT_RESPONSE_TIMEOUT, base, errors)
}

/// The `[upstreams.NAME]` tables of the TOML `text` of the file `source`, checked as the
/// binary checks them (relative `ca_file`s from `source`'s folder; with the `auth` feature,
/// `credentials` against the file's `[auth]`): every error of both sections, located in
/// `source`, or the specs. No `[upstreams]` is an error, as for the binary.
pub fn from_toml(text: &str, source: &str) -> Result<Vec<UpstreamSpec>, ConfigErrors> {
    let upstreams = section::<BTreeMap<Spanned<String>, UpstreamEntry>>(text, source, "upstreams");
    #[cfg(feature = "auth")]
    let auth = section::<AuthConfig>(text, source, "auth");
    #[cfg(not(feature = "auth"))]
    let auth: Result<Option<()>, ConfigErrors> = Ok(None);
    let (upstreams, auth) = match (upstreams, auth) {
        (Ok(u), Ok(a)) => (u.unwrap_or_default(), a),
        (u, a) => {
            let mut all = u.err().map(|e| e.0).unwrap_or_default();
            all.extend(a.err().map(|e| e.0).unwrap_or_default());
            all.sort_by_key(|e| e.location);
            return Err(ConfigErrors(all));
        }
    };
    let context = SectionContext::of(text, source);
    let mut errors = Diagnostics::new(text, source);
    #[cfg(feature = "auth")]
    let specs = check_with_auth(&upstreams, auth.as_ref(), &context.base, &mut errors);
    #[cfg(not(feature = "auth"))]
    let specs = {
        let _ = auth;
        check(&upstreams, &context.base, &mut errors)
    };
    if errors.is_empty() {
        Ok(specs)
    } else {
        Err(ConfigErrors(errors.into_errors()))
    }
}

/// Whether `name` can be an upstream name (and so a `/mcp/NAME` route): letters, digits, `-`,
/// `_` and `.`, at least one.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Parses a `--upstream NAME=URL[,URL…]` flag: an upstream with the default timeouts. Errors
/// name `--upstream` as their source.
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
        connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        response_timeout: DEFAULT_RESPONSE_TIMEOUT,
        read_timeout: DEFAULT_READ_TIMEOUT,
        sse_idle_timeout: DEFAULT_SSE_IDLE_TIMEOUT,
        ca_file: None,
        #[cfg(feature = "auth")]
        credentials: None,
        #[cfg(feature = "stdio")]
        stdio: None,
    })
}

/// Adds the upstreams given as `--upstream` flags to `upstreams`. A flag replaces an upstream
/// of the same name (the names replaced are returned, to warn about); the same name in two
/// flags is an error, not a silent "last one wins".
pub fn add_flag_upstreams(
    upstreams: &mut Vec<UpstreamSpec>,
    flags: Vec<UpstreamSpec>,
) -> Result<Vec<String>, ConfigError> {
    let mut seen = BTreeSet::new();
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
        let before = upstreams.len();
        upstreams.retain(|u| u.name != spec.name);
        if upstreams.len() != before {
            replaced.push(spec.name.clone());
        }
        upstreams.push(spec);
    }
    Ok(replaced)
}

/// A PEM file of certificates that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("certificate {path}: {reason}")]
pub struct CertError {
    /// The file.
    pub path: String,
    /// Why: it could not be read or parsed, or holds no certificate.
    pub reason: String,
}

/// The certificates of a PEM file (at least one): an upstream's `ca_file`, or a listener's
/// certificate chain.
pub fn load_certs(path: impl AsRef<Path>) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let path = path.as_ref();
    let error = |reason: String| CertError {
        path: path.display().to_string(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| error(e.to_string()))?;
    if certs.is_empty() {
        return Err(error("no PEM certificate found".into()));
    }
    Ok(certs)
}

/// Builds the [`Upstream`] of a checked spec: its instances, its timeouts, and the
/// certificates of its `ca_file` trusted besides the system's.
pub fn build(spec: &UpstreamSpec) -> Result<Upstream, UpstreamError> {
    let roots = match &spec.ca_file {
        Some(path) => load_certs(path)?,
        None => Vec::new(),
    };
    let config = UpstreamConfig::default()
        .connect_timeout(spec.connect_timeout)
        .response_timeout(spec.response_timeout)
        .read_timeout(spec.read_timeout)
        .sse_idle_timeout(spec.sse_idle_timeout)
        .trust(roots);
    Upstream::new(&spec.name, spec.urls.iter().cloned(), config)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::testing::run;

    #[derive(Deserialize)]
    struct Doc {
        #[serde(default)]
        upstreams: BTreeMap<Spanned<String>, UpstreamEntry>,
    }

    fn parse(text: &str) -> Result<Vec<UpstreamSpec>, Vec<String>> {
        run(text, |d: &Doc, e| {
            Some(check(&d.upstreams, Path::new("."), e))
        })
    }

    fn errs(text: &str) -> Vec<String> {
        parse(text).err().unwrap_or_default()
    }

    #[test]
    fn upstreams_are_checked() {
        let s = parse(
            "[upstreams.a]\nurl = \"http://127.0.0.1:3001/mcp\"\nresponse_timeout = 5\n\
             read_timeout = \"500ms\"\nsse_idle_timeout = \"0s\"\n\
             [upstreams.b]\nurls = [\"http://h1/mcp\", \"https://h2:8443/mcp\"]\n",
        )
        .unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].response_timeout, Duration::from_secs(5));
        assert_eq!(s[0].connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(s[1].urls.len(), 2);
        assert_eq!(s[1].response_timeout, DEFAULT_RESPONSE_TIMEOUT);
        assert_eq!(s[0].read_timeout, Duration::from_millis(500));
        assert_eq!(s[0].sse_idle_timeout, Duration::ZERO);
        assert_eq!(s[1].read_timeout, DEFAULT_READ_TIMEOUT);
        assert_eq!(s[1].sse_idle_timeout, DEFAULT_SSE_IDLE_TIMEOUT);
        assert!(build(&s[1]).is_ok());

        let e = errs("[upstreams.a]\nurl = \"ftp://x/mcp\"\n");
        assert!(e[0].starts_with("gw.toml:2:7: upstream \"a\""), "{e:?}");
        let e = errs("[upstreams.a]\nurl = \"http://x/mcp\"\nconnect_timeout = \"5 parsecs\"\n");
        assert!(e[0].starts_with("gw.toml:3:"), "{e:?}");
        assert!(e[0].contains("invalid duration unit"), "{e:?}");
        let e = errs("");
        assert_eq!(
            e,
            ["gw.toml: no upstreams: add an [upstreams.NAME] table with a url"]
        );
        let e = errs("[upstreams.\"a b\"]\nurl = \"http://x/mcp\"\n");
        assert!(e[0].contains("must use only"), "{e:?}");
        let e = errs("[upstreams.a]\nurl = \"http://x/mcp\"\nurls = [\"http://y/mcp\"]\n");
        assert_eq!(
            e,
            ["gw.toml:2:7: upstream \"a\": give url or urls, not both"]
        );
    }

    #[test]
    fn whole_table_errors_point_at_the_upstream_name() {
        let text = "[upstreams.good]\nurl = \"http://x/mcp\"\n\n[upstreams.\"bad name\"]\nurl = \"http://y/mcp\"\n";
        let e = errs(text);
        assert_eq!(e.len(), 1, "{e:?}");
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
        assert!(
            e[0].ends_with(&format!("upstream \"e\" needs {NEEDS}")),
            "{e:?}"
        );

        // A dotted key names the upstream too.
        let text = "upstreams.e.connect_timeout = \"1s\"\n";
        let e = errs(text);
        assert!(e[0].starts_with("gw.toml:1:11: "), "{e:?}");
    }

    #[test]
    fn ca_file_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[upstreams.a]\nurl = \"https://x/mcp\"\nca_file = \"ca.pem\"\n";
        let check_in =
            |dir: &Path| run(text, |d: &Doc, e| Some(check(&d.upstreams, dir, e))).map(|s| s.len());
        let e = check_in(dir.path()).unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("gw.toml:3:11: upstream \"a\": ca_file: certificate "),
            "{e:?}"
        );
        std::fs::write(dir.path().join("ca.pem"), "not a certificate\n").unwrap();
        let e = check_in(dir.path()).unwrap_err();
        assert!(e[0].ends_with(": no PEM certificate found"), "{e:?}");
        let err = load_certs(dir.path().join("ca.pem")).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "certificate {}: no PEM certificate found",
                dir.path().join("ca.pem").display()
            )
        );
    }

    #[cfg(feature = "auth")]
    #[test]
    fn credentials_are_checked_in_place() {
        #[derive(Deserialize)]
        struct WithAuth {
            auth: Option<AuthConfig>,
            upstreams: BTreeMap<Spanned<String>, UpstreamEntry>,
        }
        let text = "[upstreams.a]\nurl = \"ftp://x/mcp\"\ncredentials = { type = \"magic\" }\n\
                    [upstreams.b]\nurl = \"http://y/mcp\"\n\
                    credentials = { type = \"static\", secret_env = \"MCPGW_TEST_SURELY_UNSET\" }\n\
                    [auth]\nissuer = \"https://as\"\n";
        let e = run(text, |d: &WithAuth, e| {
            Some(check_with_auth(
                &d.upstreams,
                d.auth.as_ref(),
                Path::new("."),
                e,
            ))
        })
        .unwrap_err();
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(
            e[0].starts_with("gw.toml:2:7: upstream \"a\": URL"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("gw.toml:3:24: upstreams.a.credentials: unknown type \"magic\""),
            "{e:?}"
        );
        assert!(e[2].starts_with("gw.toml:6:"), "{e:?}");
        assert!(e[2].contains("upstreams.b.credentials"), "{e:?}");
        let s = run(
            "[upstreams.a]\nurl = \"http://x/mcp\"\ncredentials = { type = \"static\", secret_env = \"PATH\" }\n",
            |d: &WithAuth, e| Some(check(&d.upstreams, Path::new("."), e)),
        )
        .unwrap();
        assert!(s[0].credentials.is_some());
    }

    #[test]
    fn flags() {
        let u = parse_upstream_flag("demo=http://127.0.0.1:3001/mcp,http://127.0.0.1:3002/mcp")
            .unwrap();
        assert_eq!(u.urls.len(), 2);
        assert_eq!(u.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert!(parse_upstream_flag("demo").is_err());
        assert!(parse_upstream_flag("=http://x").is_err());
        assert!(parse_upstream_flag("d=ftp://x").is_err());
        assert!(parse_upstream_flag("d=").is_err());
        assert_eq!(
            parse_upstream_flag("a b=http://x").unwrap_err().to_string(),
            "--upstream: upstream name \"a b\" must use only letters, digits, '-', '_' and '.'"
        );
    }

    #[test]
    fn flag_upstreams_replace_configured_ones_and_must_not_repeat() {
        let mut list = parse(
            "[upstreams.demo]\nurl = \"http://config/mcp\"\n[upstreams.other]\nurl = \"http://o/mcp\"\n",
        )
        .unwrap();
        let replaced = add_flag_upstreams(
            &mut list,
            vec![
                parse_upstream_flag("demo=http://flag/mcp").unwrap(),
                parse_upstream_flag("new=http://n/mcp").unwrap(),
            ],
        )
        .unwrap();
        assert_eq!(replaced, ["demo"]);
        let demo: Vec<_> = list.iter().filter(|u| u.name == "demo").collect();
        assert_eq!(demo.len(), 1);
        assert_eq!(demo[0].urls[0].host(), Some("flag"));
        assert_eq!(list.len(), 3);

        let e = add_flag_upstreams(
            &mut Vec::new(),
            vec![
                parse_upstream_flag("demo=http://a/mcp").unwrap(),
                parse_upstream_flag("demo=http://b/mcp").unwrap(),
            ],
        )
        .unwrap_err();
        assert_eq!(e.source, "--upstream");
        assert!(e.message.contains("\"demo\" is given twice"), "{e}");
    }
}
