//! `[auth]`, `[[auth.permissions]]` and `[upstreams.NAME.credentials]`: configuration of the
//! OAuthGuard layer, checked with locations like the rest of the file.
//!
//! ```toml
//! [server]
//! public_url = "https://gw.example.com"     # route NAME's resource: public_url + "/mcp/NAME"
//!
//! [auth]                                    # absent: no authentication
//! issuer = "https://as.example.com"
//! scopes = ["mcp:tools"]                    # needed for every call; advertised
//! introspection = { client_id = "gateway", client_secret_env = "GATEWAY_AS_SECRET" }
//! api_keys_file = "keys.toml"
//!
//! [[auth.permissions]]
//! upstream = "github"                       # optional; all upstreams when absent
//! tools = ["search_*", "get_issue"]
//! scopes = ["github:read"]
//!
//! [upstreams.github.credentials]
//! type = "client_credentials"               # or "static", "token_exchange"
//! client_id = "gateway"
//! client_secret_env = "GATEWAY_AS_SECRET"
//! scopes = ["github:read"]
//! ```

use crate::config::{ConfigError, Dur};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// A secret: from an environment variable or a file.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// Name of an environment variable holding the secret.
    #[serde(default)]
    pub client_secret_env: Option<Spanned<String>>,
    /// A file holding the secret (trailing whitespace ignored).
    #[serde(default)]
    pub client_secret_file: Option<Spanned<PathBuf>>,
}

/// `[auth] introspection = { … }`.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    /// The gateway's client id at the authorization server.
    pub client_id: String,
    /// Its secret, from the environment.
    #[serde(default)]
    pub client_secret_env: Option<Spanned<String>>,
    /// Its secret, from a file.
    #[serde(default)]
    pub client_secret_file: Option<Spanned<PathBuf>>,
}

/// `[auth]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The authorization server's issuer URL (metadata by RFC 8414 or OIDC discovery).
    #[serde(default)]
    pub issuer: Option<Spanned<String>>,
    /// Scopes every call needs.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Check opaque tokens by introspection, as this client.
    #[serde(default)]
    pub introspection: Option<Spanned<IntrospectionConfig>>,
    /// Static API keys (hashed), see the layer's docs.
    #[serde(default)]
    pub api_keys_file: Option<Spanned<PathBuf>>,
    /// Tool-level permission rules.
    #[serde(default)]
    pub permissions: Vec<PermissionConfig>,
    /// JWT algorithms accepted (default: RS256/384/512, PS256/384/512, ES256/384, EdDSA).
    #[serde(default)]
    pub algorithms: Option<Spanned<Vec<String>>>,
    /// Clock skew tolerated on `exp`/`nbf`. Default 30 s.
    #[serde(default)]
    pub leeway: Option<Dur>,
    /// Shortest interval between JWKS fetches caused by unknown key ids. Default 10 s.
    #[serde(default)]
    pub jwks_refetch_interval: Option<Dur>,
    /// Longest a verified token is trusted without asking again (its `exp` ends it sooner).
    /// Default 60 s.
    #[serde(default)]
    pub cache_ttl: Option<Dur>,
    /// How long a refused token stays refused without asking again. Default 5 s.
    #[serde(default)]
    pub negative_cache_ttl: Option<Dur>,
}

/// `[[auth.permissions]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermissionConfig {
    /// The upstream the rule applies to; all when absent.
    #[serde(default)]
    pub upstream: Option<Spanned<String>>,
    /// Tool name globs.
    #[serde(default)]
    pub tools: Vec<String>,
    /// Prompt name globs.
    #[serde(default)]
    pub prompts: Vec<String>,
    /// Resource URI globs.
    #[serde(default)]
    pub resources: Vec<String>,
    /// Scopes the matching tools (prompts, resources) need.
    pub scopes: Spanned<Vec<String>>,
}

/// `[upstreams.NAME.credentials]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsConfig {
    /// `static`, `client_credentials` or `token_exchange`.
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    /// static: the secret's environment variable.
    #[serde(default)]
    pub secret_env: Option<Spanned<String>>,
    /// static: the secret's file.
    #[serde(default)]
    pub secret_file: Option<Spanned<PathBuf>>,
    /// static: what precedes the secret in the header. Default `"Bearer "`.
    #[serde(default)]
    pub prefix: Option<String>,
    /// client_credentials, token_exchange: the gateway's client id (default: the
    /// introspection client's).
    #[serde(default)]
    pub client_id: Option<String>,
    /// … its secret's environment variable.
    #[serde(default)]
    pub client_secret_env: Option<Spanned<String>>,
    /// … or file.
    #[serde(default)]
    pub client_secret_file: Option<Spanned<PathBuf>>,
    /// Token endpoint (default: the issuer's, from its metadata).
    #[serde(default)]
    pub token_url: Option<Spanned<String>>,
    /// Scopes asked for.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The resource (RFC 8707) / audience asked for. Default: the upstream's first URL.
    #[serde(default)]
    pub resource: Option<String>,
}

/// A checked secret.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

/// A checked permission rule.
#[derive(Debug, Clone)]
pub struct PermissionSpec {
    /// Upstream, or all.
    pub upstream: Option<String>,
    /// Tool globs.
    pub tools: Vec<String>,
    /// Prompt globs.
    pub prompts: Vec<String>,
    /// Resource globs.
    pub resources: Vec<String>,
    /// Scopes needed.
    pub scopes: Vec<String>,
}

/// Checked `[auth]`.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Issuer URL.
    pub issuer: Option<String>,
    /// Scopes every call needs.
    pub scopes: Vec<String>,
    /// Introspection client.
    pub introspection: Option<(String, Secret)>,
    /// API key file.
    pub api_keys_file: Option<PathBuf>,
    /// Permission rules.
    pub permissions: Vec<PermissionSpec>,
    /// JWT algorithms.
    pub algorithms: Option<Vec<jsonwebtoken_alg::Algorithm>>,
    /// Leeway.
    pub leeway: Duration,
    /// JWKS re-fetch interval.
    pub jwks_refetch_interval: Duration,
    /// Positive cache lifetime bound.
    pub cache_ttl: Duration,
    /// Negative cache lifetime.
    pub negative_cache_ttl: Duration,
}

/// The algorithm type, re-exported from the layers crate.
pub mod jsonwebtoken_alg {
    pub use mcp_gateway_layers::auth::Algorithm;
}

/// Checked upstream credentials.
#[derive(Debug, Clone)]
pub enum CredentialsSpec {
    /// A fixed header value.
    Static(Secret),
    /// Client credentials grant.
    ClientCredentials(TokenSpec),
    /// RFC 8693 token exchange.
    TokenExchange(TokenSpec),
}

/// Where and as whom to ask for upstream tokens.
#[derive(Debug, Clone)]
pub struct TokenSpec {
    /// Client id.
    pub client_id: String,
    /// Client secret.
    pub client_secret: Secret,
    /// Token endpoint override.
    pub token_url: Option<String>,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Resource / audience.
    pub resource: Option<String>,
}

/// Collects errors with locations.
pub(crate) struct Errs<'a> {
    pub(crate) text: &'a str,
    pub(crate) source: &'a str,
    pub(crate) list: Vec<ConfigError>,
}

impl Errs<'_> {
    pub(crate) fn at(&mut self, span: Option<std::ops::Range<usize>>, message: String) {
        self.list.push(ConfigError {
            source: self.source.to_owned(),
            location: span.map(|s| crate::config::line_col(self.text, s.start)),
            message,
        });
    }
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn secret(
    env: Option<&Spanned<String>>,
    file: Option<&Spanned<PathBuf>>,
    what: &str,
    fallback_span: Option<std::ops::Range<usize>>,
    base: &Path,
    e: &mut Errs<'_>,
) -> Option<Secret> {
    match (env, file) {
        (Some(v), None) => match std::env::var(v.get_ref()) {
            Ok(s) if !s.is_empty() => Some(Secret(s)),
            _ => {
                e.at(
                    Some(v.span()),
                    format!("{what}: environment variable {} is not set", v.get_ref()),
                );
                None
            }
        },
        (None, Some(f)) => {
            let path = resolve(base, f.get_ref());
            match std::fs::read_to_string(&path) {
                Ok(s) if !s.trim().is_empty() => Some(Secret(s.trim_end().to_owned())),
                Ok(_) => {
                    e.at(
                        Some(f.span()),
                        format!("{what}: {} is empty", path.display()),
                    );
                    None
                }
                Err(err) => {
                    e.at(Some(f.span()), format!("{what}: {}: {err}", path.display()));
                    None
                }
            }
        }
        (Some(v), Some(_)) => {
            e.at(
                Some(v.span()),
                format!("{what}: give the secret's _env or _file, not both"),
            );
            None
        }
        (None, None) => {
            e.at(
                fallback_span,
                format!("{what}: a secret is needed (…_env or …_file)"),
            );
            None
        }
    }
}

fn check_url(s: &Spanned<String>, what: &str, e: &mut Errs<'_>) -> Option<String> {
    match crate::config::check_url(s.get_ref()) {
        Ok(_) => Some(s.get_ref().trim().trim_end_matches('/').to_owned()),
        Err(m) => {
            e.at(Some(s.span()), format!("{what}: {m}"));
            None
        }
    }
}

/// Checks `[auth]`.
pub(crate) fn check_auth(
    a: &AuthConfig,
    upstream_names: &[&str],
    base: &Path,
    e: &mut Errs<'_>,
) -> Option<AuthSettings> {
    let before = e.list.len();
    let issuer = a
        .issuer
        .as_ref()
        .and_then(|i| check_url(i, "auth.issuer", e));
    let introspection = a.introspection.as_ref().and_then(|i| {
        let span = Some(i.span());
        let i = i.get_ref();
        if a.issuer.is_none() {
            e.at(span.clone(), "auth.introspection needs auth.issuer".into());
        }
        secret(
            i.client_secret_env.as_ref(),
            i.client_secret_file.as_ref(),
            "auth.introspection",
            span,
            base,
            e,
        )
        .map(|s| (i.client_id.clone(), s))
    });
    let api_keys_file = a.api_keys_file.as_ref().map(|f| {
        let path = resolve(base, f.get_ref());
        if let Err(err) = mcp_gateway_layers::auth::ApiKeys::load(&path) {
            e.at(Some(f.span()), format!("auth.api_keys_file: {err}"));
        }
        path
    });
    if issuer.is_none() && a.api_keys_file.is_none() && a.issuer.is_none() {
        e.at(
            None,
            "[auth] needs an issuer (JWT or introspection) or an api_keys_file".into(),
        );
    }
    let mut permissions = Vec::new();
    for p in &a.permissions {
        if let Some(u) = &p.upstream {
            if !upstream_names.contains(&u.get_ref().as_str()) {
                e.at(
                    Some(u.span()),
                    format!("auth.permissions: no upstream is named {:?}", u.get_ref()),
                );
            }
        }
        if p.tools.is_empty() && p.prompts.is_empty() && p.resources.is_empty() {
            e.at(
                Some(p.scopes.span()),
                "auth.permissions: a rule needs tools, prompts or resources".into(),
            );
        }
        if p.scopes.get_ref().is_empty() {
            e.at(
                Some(p.scopes.span()),
                "auth.permissions: scopes must name at least one scope".into(),
            );
        }
        permissions.push(PermissionSpec {
            upstream: p.upstream.as_ref().map(|u| u.get_ref().clone()),
            tools: p.tools.clone(),
            prompts: p.prompts.clone(),
            resources: p.resources.clone(),
            scopes: p.scopes.get_ref().clone(),
        });
    }
    let algorithms = a.algorithms.as_ref().map(|algs| {
        let mut out = Vec::new();
        for name in algs.get_ref() {
            match name.parse::<mcp_gateway_layers::auth::Algorithm>() {
                Ok(alg) if !name.starts_with("HS") => out.push(alg),
                _ => e.at(
                    Some(algs.span()),
                    format!(
                        "auth.algorithms: {name:?} is not accepted (use RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA)"
                    ),
                ),
            }
        }
        out
    });
    if e.list.len() > before {
        return None;
    }
    Some(AuthSettings {
        issuer,
        scopes: a.scopes.clone(),
        introspection,
        api_keys_file,
        permissions,
        algorithms,
        leeway: a.leeway.map_or(Duration::from_secs(30), |d| d.0),
        jwks_refetch_interval: a
            .jwks_refetch_interval
            .map_or(Duration::from_secs(10), |d| d.0),
        cache_ttl: a.cache_ttl.map_or(Duration::from_secs(60), |d| d.0),
        negative_cache_ttl: a.negative_cache_ttl.map_or(Duration::from_secs(5), |d| d.0),
    })
}

/// Checks `[upstreams.NAME.credentials]`.
pub(crate) fn check_credentials(
    name: &str,
    c: &CredentialsConfig,
    auth: Option<&AuthConfig>,
    default_resource: Option<String>,
    base: &Path,
    e: &mut Errs<'_>,
) -> Option<CredentialsSpec> {
    let what = format!("upstreams.{name}.credentials");
    match c.kind.get_ref().as_str() {
        "static" => {
            let s = secret(
                c.secret_env.as_ref(),
                c.secret_file.as_ref(),
                &what,
                Some(c.kind.span()),
                base,
                e,
            )?;
            let prefix = c.prefix.clone().unwrap_or_else(|| "Bearer ".into());
            let value = format!("{prefix}{}", s.0);
            if http::HeaderValue::from_str(&value).is_err() {
                e.at(
                    Some(c.kind.span()),
                    format!("{what}: the secret is not a valid header value"),
                );
                return None;
            }
            Some(CredentialsSpec::Static(Secret(value)))
        }
        kind @ ("client_credentials" | "token_exchange") => {
            let intro = auth
                .and_then(|a| a.introspection.as_ref())
                .map(|i| i.get_ref());
            let client_id = c
                .client_id
                .clone()
                .or_else(|| intro.map(|i| i.client_id.clone()));
            let (env, file) = if c.client_secret_env.is_some() || c.client_secret_file.is_some() {
                (c.client_secret_env.as_ref(), c.client_secret_file.as_ref())
            } else {
                (
                    intro.and_then(|i| i.client_secret_env.as_ref()),
                    intro.and_then(|i| i.client_secret_file.as_ref()),
                )
            };
            let secret = secret(env, file, &what, Some(c.kind.span()), base, e);
            let Some(client_id) = client_id else {
                e.at(
                    Some(c.kind.span()),
                    format!("{what}: client_id is needed (or [auth].introspection's)"),
                );
                return None;
            };
            let token_url = match &c.token_url {
                Some(u) => Some(check_url(u, &what, e)?),
                None => {
                    if auth.and_then(|a| a.issuer.as_ref()).is_none() {
                        e.at(
                            Some(c.kind.span()),
                            format!("{what}: token_url is needed when [auth] has no issuer"),
                        );
                        return None;
                    }
                    None
                }
            };
            let spec = TokenSpec {
                client_id,
                client_secret: secret?,
                token_url,
                scopes: c.scopes.clone(),
                resource: c.resource.clone().or(default_resource),
            };
            Some(if kind == "client_credentials" {
                CredentialsSpec::ClientCredentials(spec)
            } else {
                if auth.is_none() {
                    e.at(
                        Some(c.kind.span()),
                        format!("{what}: token_exchange needs [auth] (there is no caller token to exchange without it)"),
                    );
                    return None;
                }
                CredentialsSpec::TokenExchange(spec)
            })
        }
        other => {
            e.at(
                Some(c.kind.span()),
                format!("{what}: unknown type {other:?}: use \"static\", \"client_credentials\" or \"token_exchange\""),
            );
            None
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::config::parse;
    use std::path::Path;

    fn errs(text: &str) -> Vec<String> {
        parse(text, "gw.toml", Path::new("."))
            .err()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    const UP: &str = "[upstreams.github]\nurl = \"http://127.0.0.1:9/mcp\"\n";

    #[test]
    fn auth_section_is_checked_with_locations() {
        let ok = parse(
            &format!(
                "[server]\npublic_url = \"https://gw.example.com/\"\n[auth]\nissuer = \"https://as.example.com\"\nscopes = [\"mcp:tools\"]\n[[auth.permissions]]\nupstream = \"github\"\ntools = [\"search_*\"]\nscopes = [\"github:read\"]\n{UP}"
            ),
            "gw.toml",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(ok.public_url.as_deref(), Some("https://gw.example.com"));
        let a = ok.auth.unwrap();
        assert_eq!(a.issuer.as_deref(), Some("https://as.example.com"));
        assert_eq!(a.permissions[0].tools, ["search_*"]);

        let e = errs(&format!("[auth]\nscopes = [\"x\"]\n{UP}"));
        assert!(e[0].contains("needs an issuer"), "{e:?}");

        let e = errs(&format!("[auth]\nissuer = \"ftp://as\"\n{UP}"));
        assert!(e[0].starts_with("gw.toml:2:10: auth.issuer"), "{e:?}");

        let e = errs(&format!(
            "[auth]\nissuer = \"https://as\"\n[[auth.permissions]]\nupstream = \"gitlab\"\ntools = [\"a\"]\nscopes = [\"s\"]\n{UP}"
        ));
        assert!(e[0].starts_with("gw.toml:4:12:"), "{e:?}");
        assert!(e[0].contains("no upstream is named \"gitlab\""), "{e:?}");

        let e = errs(&format!(
            "[auth]\nissuer = \"https://as\"\nintrospection = {{ client_id = \"g\", client_secret_env = \"MCPGW_TEST_SURELY_UNSET\" }}\n{UP}"
        ));
        assert!(e[0].starts_with("gw.toml:3:"), "{e:?}");
        assert!(e[0].contains("MCPGW_TEST_SURELY_UNSET is not set"), "{e:?}");

        let e = errs(&format!(
            "[auth]\nissuer = \"https://as\"\nalgorithms = [\"HS256\", \"RS256\"]\n{UP}"
        ));
        assert!(e[0].starts_with("gw.toml:3:"), "{e:?}");
        assert!(e[0].contains("\"HS256\" is not accepted"), "{e:?}");

        let e = errs(&format!("[auth]\nissuer = \"https://as\"\nbogus = 1\n{UP}"));
        assert!(
            e[0].starts_with("gw.toml:3:1: unknown field `bogus`"),
            "{e:?}"
        );
    }

    #[test]
    fn credentials_are_checked_with_locations() {
        let e = errs(
            "[upstreams.a]\nurl = \"http://127.0.0.1:9/mcp\"\ncredentials = { type = \"magic\" }\n",
        );
        assert!(e[0].starts_with("gw.toml:3:"), "{e:?}");
        assert!(e[0].contains("unknown type \"magic\""), "{e:?}");
        let e = errs(
            "[upstreams.a]\nurl = \"http://127.0.0.1:9/mcp\"\ncredentials = { type = \"static\", secret_env = \"MCPGW_TEST_SURELY_UNSET\" }\n",
        );
        assert!(e[0].contains("MCPGW_TEST_SURELY_UNSET is not set"), "{e:?}");
        let e = errs(
            "[upstreams.a]\nurl = \"http://127.0.0.1:9/mcp\"\ncredentials = { type = \"token_exchange\", client_id = \"g\", client_secret_env = \"PATH\" }\n",
        );
        assert!(e.iter().any(|m| m.contains("token_url is needed")), "{e:?}");
        std::env::set_var("MCPGW_TEST_STATIC_SECRET", "s3cret");
        let s = parse(
            "[upstreams.a]\nurl = \"http://127.0.0.1:9/mcp\"\ncredentials = { type = \"static\", secret_env = \"MCPGW_TEST_STATIC_SECRET\" }\n",
            "gw.toml",
            Path::new("."),
        )
        .unwrap();
        match &s.upstreams[0].credentials {
            Some(super::CredentialsSpec::Static(v)) => assert_eq!(v.0, "Bearer s3cret"),
            other => panic!("{other:?}"),
        }
    }
}
