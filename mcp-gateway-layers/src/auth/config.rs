//! `[auth]`, `[[auth.permissions]]` and `[upstreams.NAME.credentials]`: the OAuthGuard layer as
//! written in the gateway's configuration file, checked with a location for every error, and
//! built into one [`OAuthGuardLayer`] per route sharing one verifier chain and token cache
//! ([`OAuthGuards`]).
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
//!
//! An app with its own TOML file reads `[auth]` with [`from_toml`] (the binary's validation,
//! [`check`], with errors located in the app's file; permissions may name the file's
//! `[upstreams.NAME]`):
//!
//! ```
//! use mcp_gateway_layers::auth::config;
//!
//! let text = "[auth]\nissuer = \"https://as.example.com\"\nscopes = [\"mcp:tools\"]\n";
//! assert!(config::from_toml(text, "app.toml")?.is_some());
//!
//! let bad = "[auth]\nissuer = \"ftp://as\"\n";
//! assert_eq!(
//!     config::from_toml(bad, "app.toml").unwrap_err().to_string(),
//!     "app.toml:2:10: auth.issuer: URL \"ftp://as\" must start with http:// or https://"
//! );
//! # Ok::<(), mcp_gateway_layers::config::ConfigErrors>(())
//! ```

use super::{
    Algorithm, ApiKeys, ApiKeysError, AsClient, CachePolicy, Chain, ClientCredentials,
    ClientCredentialsSource, IntrospectionVerifier, Issuer, JwtVerifier, OAuthGuardLayer,
    Permissions, Rule, Target, TokenCache, TokenExchangeSource, TokenSource, TokenVerifier,
    UpstreamCredentials,
};
use crate::config::{check_section, check_url, resolve, ConfigErrors, Diagnostics, Dur, Spanned};
use http::HeaderValue;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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
pub struct AuthSpec {
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
    pub algorithms: Option<Vec<Algorithm>>,
    /// Leeway.
    pub leeway: Duration,
    /// JWKS re-fetch interval.
    pub jwks_refetch_interval: Duration,
    /// Positive cache lifetime bound.
    pub cache_ttl: Duration,
    /// Negative cache lifetime.
    pub negative_cache_ttl: Duration,
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

fn secret(
    env: Option<&Spanned<String>>,
    file: Option<&Spanned<PathBuf>>,
    what: &str,
    fallback_span: Option<std::ops::Range<usize>>,
    base: &Path,
    e: &mut Diagnostics<'_>,
) -> Option<Secret> {
    match (env, file) {
        (Some(v), None) => match std::env::var(v.get_ref()) {
            Ok(s) if !s.is_empty() => Some(Secret(s)),
            _ => {
                e.error(
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
                    e.error(
                        Some(f.span()),
                        format!("{what}: {} is empty", path.display()),
                    );
                    None
                }
                Err(err) => {
                    e.error(Some(f.span()), format!("{what}: {}: {err}", path.display()));
                    None
                }
            }
        }
        (Some(v), Some(_)) => {
            e.error(
                Some(v.span()),
                format!("{what}: give the secret's _env or _file, not both"),
            );
            None
        }
        (None, None) => {
            e.error(
                fallback_span,
                format!("{what}: a secret is needed (…_env or …_file)"),
            );
            None
        }
    }
}

/// A URL the gateway calls, without a trailing `/`.
fn url(s: &Spanned<String>, what: &str, e: &mut Diagnostics<'_>) -> Option<String> {
    match check_url(s.get_ref()) {
        Ok(_) => Some(s.get_ref().trim().trim_end_matches('/').to_owned()),
        Err(m) => {
            e.error(Some(s.span()), format!("{what}: {m}"));
            None
        }
    }
}

/// `[auth]` of the TOML `text` of the file `source`, checked by [`check`] as the binary checks
/// it (permissions may name the file's `[upstreams.NAME]`; relative files are read from
/// `source`'s folder): every error, located in `source`, or the spec — `None` when the file
/// has no `[auth]`.
pub fn from_toml(text: &str, source: &str) -> Result<Option<AuthSpec>, ConfigErrors> {
    check_section(text, source, "auth", |a, cx, e| {
        check(a, &cx.upstream_names(), &cx.base, e)
    })
}

/// Checks `[auth]`: `upstream_names` are the configured upstreams (permission rules may name
/// them), `base` the configuration file's folder (relative files are read from there). Each
/// problem is reported at its key; `None` when there was one.
pub fn check(
    a: &AuthConfig,
    upstream_names: &[&str],
    base: &Path,
    e: &mut Diagnostics<'_>,
) -> Option<AuthSpec> {
    let before = e.count();
    let issuer = a.issuer.as_ref().and_then(|i| url(i, "auth.issuer", e));
    let introspection = a.introspection.as_ref().and_then(|i| {
        let span = Some(i.span());
        let i = i.get_ref();
        if a.issuer.is_none() {
            e.error(span.clone(), "auth.introspection needs auth.issuer");
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
        match ApiKeys::load(&path) {
            Ok(_) => {}
            // An error inside the keys file is reported at its own line.
            Err(ApiKeysError::At(inside)) => e.push(inside),
            Err(err) => e.error(Some(f.span()), format!("auth.api_keys_file: {err}")),
        }
        path
    });
    if issuer.is_none() && a.api_keys_file.is_none() && a.issuer.is_none() {
        e.error(
            None,
            "[auth] needs an issuer (JWT or introspection) or an api_keys_file",
        );
    }
    let mut permissions = Vec::new();
    for p in &a.permissions {
        if let Some(u) = &p.upstream {
            if !upstream_names.contains(&u.get_ref().as_str()) {
                e.error(
                    Some(u.span()),
                    format!("auth.permissions: no upstream is named {:?}", u.get_ref()),
                );
            }
        }
        if p.tools.is_empty() && p.prompts.is_empty() && p.resources.is_empty() {
            e.error(
                Some(p.scopes.span()),
                "auth.permissions: a rule needs tools, prompts or resources",
            );
        }
        if p.scopes.get_ref().is_empty() {
            e.error(
                Some(p.scopes.span()),
                "auth.permissions: scopes must name at least one scope",
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
            match name.parse::<Algorithm>() {
                Ok(alg) if !name.starts_with("HS") => out.push(alg),
                _ => e.error(
                    Some(algs.span()),
                    format!(
                        "auth.algorithms: {name:?} is not accepted (use RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA)"
                    ),
                ),
            }
        }
        out
    });
    if e.count() > before {
        return None;
    }
    Some(AuthSpec {
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

/// Checks `[upstreams.NAME.credentials]` of upstream `name`: `auth` is the file's `[auth]`
/// (whose introspection client and issuer are the defaults), `default_resource` the resource
/// asked for when none is given (the upstream's first URL). Each problem is reported at its
/// key; `None` when there was one.
pub fn check_credentials(
    name: &str,
    c: &CredentialsConfig,
    auth: Option<&AuthConfig>,
    default_resource: Option<String>,
    base: &Path,
    e: &mut Diagnostics<'_>,
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
                e.error(
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
                e.error(
                    Some(c.kind.span()),
                    format!("{what}: client_id is needed (or [auth].introspection's)"),
                );
                return None;
            };
            let token_url = match &c.token_url {
                Some(u) => Some(url(u, &what, e)?),
                None => {
                    if auth.and_then(|a| a.issuer.as_ref()).is_none() {
                        e.error(
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
                    e.error(
                        Some(c.kind.span()),
                        format!("{what}: token_exchange needs [auth] (there is no caller token to exchange without it)"),
                    );
                    return None;
                }
                CredentialsSpec::TokenExchange(spec)
            })
        }
        other => {
            e.error(
                Some(c.kind.span()),
                format!("{what}: unknown type {other:?}: use \"static\", \"client_credentials\" or \"token_exchange\""),
            );
            None
        }
    }
}

/// Why the guards could not be built from checked `[auth]`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AuthBuildError(String);

/// The OAuthGuard of every route, from checked `[auth]`: one verifier chain (API keys, then
/// JWTs, then introspection for opaque tokens), one token cache and one set of permission
/// rules shared by every route, one layer per route (its resource URI and upstream
/// credentials differ).
pub struct OAuthGuards {
    verifier: Arc<dyn TokenVerifier>,
    cache: Arc<TokenCache>,
    permissions: Arc<Permissions>,
    issuer: Option<Arc<Issuer>>,
    http: AsClient,
    spec: AuthSpec,
}

impl std::fmt::Debug for OAuthGuards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthGuards")
            .field("issuer", &self.spec.issuer)
            .finish_non_exhaustive()
    }
}

impl OAuthGuards {
    /// The shared verifier chain, cache and permissions. The authorization server's metadata
    /// is fetched now, so that a wrong issuer shows at start (a failure is logged, and retried
    /// on first use).
    pub async fn build(a: &AuthSpec) -> Result<Self, AuthBuildError> {
        let http = AsClient::new(Duration::from_secs(10));
        let issuer = a
            .issuer
            .as_ref()
            .map(|i| Arc::new(Issuer::new(i.clone(), http.clone())));
        let mut chain = Chain::new();
        if let Some(path) = &a.api_keys_file {
            let keys = ApiKeys::load(path).map_err(|e| AuthBuildError(e.to_string()))?;
            chain = chain.with(keys);
        }
        if let Some(iss) = &issuer {
            let mut jwt = JwtVerifier::new(iss.clone())
                .leeway(a.leeway)
                .min_refetch_interval(a.jwks_refetch_interval);
            if let Some(algs) = &a.algorithms {
                jwt = jwt.algorithms(algs);
            }
            chain = chain.with(jwt);
            if let Some((client_id, secret)) = &a.introspection {
                chain = chain.with(IntrospectionVerifier::new(
                    iss.clone(),
                    ClientCredentials {
                        client_id: client_id.clone(),
                        client_secret: secret.0.clone(),
                    },
                ));
            }
            // Metadata now, so a wrong issuer shows at start; a failure is retried on use.
            if let Err(e) = iss.metadata().await {
                tracing::warn!(target: "mcp_gateway::auth", error = %e, "authorization server metadata not available yet; will retry on first use");
            }
        }
        let mut permissions = Permissions::new();
        for p in &a.permissions {
            for (target, patterns) in [
                (Target::Tool, &p.tools),
                (Target::Prompt, &p.prompts),
                (Target::Resource, &p.resources),
            ] {
                if !patterns.is_empty() {
                    permissions = permissions.with(Rule::new(
                        p.upstream.as_deref(),
                        target,
                        patterns.iter().cloned(),
                        p.scopes.iter().cloned(),
                    ));
                }
            }
        }
        Ok(Self {
            verifier: Arc::new(chain),
            cache: Arc::new(TokenCache::new(CachePolicy {
                max_ttl: a.cache_ttl,
                negative_ttl: a.negative_cache_ttl,
                ..CachePolicy::default()
            })),
            permissions: Arc::new(permissions),
            issuer,
            http,
            spec: a.clone(),
        })
    }

    fn source(&self, t: &TokenSpec) -> Result<TokenSource, AuthBuildError> {
        let issuer = match (&self.issuer, &t.token_url) {
            (Some(i), _) => i.clone(),
            // A token URL without an issuer: the issuer is only a label then.
            (None, Some(u)) => Arc::new(Issuer::new(u.clone(), self.http.clone())),
            (None, None) => {
                return Err(AuthBuildError(
                    "upstream credentials need [auth] issuer or a token_url".into(),
                ))
            }
        };
        Ok(TokenSource::new(
            issuer,
            t.token_url.clone(),
            ClientCredentials {
                client_id: t.client_id.clone(),
                client_secret: t.client_secret.0.clone(),
            },
            t.scopes.clone(),
            t.resource.clone(),
        ))
    }

    /// The guard of the route to upstream `upstream`: `resource` is the route's resource URI
    /// (RFC 8707/9728: the audience its tokens must have), `credentials` what the gateway
    /// presents to the upstream, `body_limit` the largest request body read.
    pub fn layer(
        &self,
        upstream: &str,
        resource: impl Into<String>,
        credentials: Option<&CredentialsSpec>,
        body_limit: usize,
    ) -> Result<OAuthGuardLayer, AuthBuildError> {
        let credentials = match credentials {
            None => UpstreamCredentials::None,
            Some(CredentialsSpec::Static(s)) => {
                UpstreamCredentials::Static(HeaderValue::from_str(&s.0).map_err(|_| {
                    AuthBuildError("static credential is not a header value".into())
                })?)
            }
            Some(CredentialsSpec::ClientCredentials(t)) => UpstreamCredentials::ClientCredentials(
                Arc::new(ClientCredentialsSource::new(self.source(t)?)),
            ),
            Some(CredentialsSpec::TokenExchange(t)) => UpstreamCredentials::TokenExchange(
                Arc::new(TokenExchangeSource::new(self.source(t)?)),
            ),
        };
        Ok(
            OAuthGuardLayer::with_shared_verifier(self.verifier.clone(), resource.into())
                .authorization_servers(self.spec.issuer.iter().cloned())
                .scopes(self.spec.scopes.iter().cloned())
                .upstream(upstream.to_owned())
                .permissions(self.permissions.clone())
                .cache(self.cache.clone())
                .credentials(credentials)
                .body_limit(body_limit),
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::testing::run;
    use std::collections::BTreeMap;

    #[derive(Deserialize)]
    struct Doc {
        auth: Option<AuthConfig>,
        #[serde(default)]
        upstreams: BTreeMap<String, Upstream>,
    }

    #[derive(Deserialize)]
    struct Upstream {
        url: Option<String>,
        credentials: Option<CredentialsConfig>,
    }

    /// What the checks make of `text`: `[auth]`, and each upstream's credentials.
    struct Checked {
        auth: Option<AuthSpec>,
        credentials: Vec<CredentialsSpec>,
    }

    /// Checks `text` as the gateway does: each upstream's credentials, then `[auth]`.
    fn parse(text: &str) -> Result<Checked, Vec<String>> {
        run(text, |d: &Doc, e| {
            let base = Path::new(".");
            let mut credentials = Vec::new();
            for (name, up) in &d.upstreams {
                if let Some(c) = &up.credentials {
                    let resource = up.url.clone();
                    credentials.extend(check_credentials(
                        name,
                        c,
                        d.auth.as_ref(),
                        resource,
                        base,
                        e,
                    ));
                }
            }
            let names: Vec<&str> = d.upstreams.keys().map(String::as_str).collect();
            let auth = d.auth.as_ref().and_then(|a| check(a, &names, base, e));
            Some(Checked { auth, credentials })
        })
    }

    fn errs(text: &str) -> Vec<String> {
        parse(text).err().unwrap_or_default()
    }

    const UP: &str = "[upstreams.github]\nurl = \"http://127.0.0.1:9/mcp\"\n";

    #[test]
    fn auth_section_is_checked_with_locations() {
        let ok = parse(
            &format!(
                "[auth]\nissuer = \"https://as.example.com/\"\nscopes = [\"mcp:tools\"]\n[[auth.permissions]]\nupstream = \"github\"\ntools = [\"search_*\"]\nscopes = [\"github:read\"]\n{UP}"
            ),
        )
        .unwrap();
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
        )
        .unwrap();
        match &s.credentials[..] {
            [CredentialsSpec::Static(v)] => assert_eq!(v.0, "Bearer s3cret"),
            other => panic!("{other:?}"),
        }
    }
}
