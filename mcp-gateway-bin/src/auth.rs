//! Builds the OAuthGuard of each route from the checked `[auth]` settings: one verifier chain
//! and one token cache shared by every route, one layer per route (its resource URI differs).

use crate::auth_config::{AuthSettings, CredentialsSpec, TokenSpec};
use crate::config::{Settings, UpstreamSpec};
use crate::server::StartError;
use http::HeaderValue;
use mcp_gateway_layers::auth::{
    ApiKeys, AsClient, CachePolicy, Chain, ClientCredentials, ClientCredentialsSource,
    IntrospectionVerifier, Issuer, JwtVerifier, OAuthGuardLayer, Permissions, Rule, Target,
    TokenCache, TokenExchangeSource, TokenSource, TokenVerifier, UpstreamCredentials,
};
use std::sync::Arc;
use std::time::Duration;

/// What every route's guard shares.
pub struct Auth {
    verifier: Arc<dyn TokenVerifier>,
    cache: Arc<TokenCache>,
    permissions: Arc<Permissions>,
    issuer: Option<Arc<Issuer>>,
    http: AsClient,
    settings: AuthSettings,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("issuer", &self.settings.issuer)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// The shared verifier chain: API keys, then JWTs, then introspection for opaque tokens.
    pub async fn build(a: &AuthSettings, _settings: &Settings) -> Result<Self, StartError> {
        let http = AsClient::new(Duration::from_secs(10));
        let issuer = a
            .issuer
            .as_ref()
            .map(|i| Arc::new(Issuer::new(i.clone(), http.clone())));
        let mut chain = Chain::new();
        if let Some(path) = &a.api_keys_file {
            let keys = ApiKeys::load(path).map_err(|e| StartError::Auth(e.to_string()))?;
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
                tracing::warn!(error = %e, "authorization server metadata not available yet; will retry on first use");
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
            settings: a.clone(),
        })
    }

    fn source(&self, t: &TokenSpec) -> Result<TokenSource, StartError> {
        let issuer = match (&self.issuer, &t.token_url) {
            (Some(i), _) => i.clone(),
            // A token URL without an issuer: the issuer is only a label then.
            (None, Some(u)) => Arc::new(Issuer::new(u.clone(), self.http.clone())),
            (None, None) => {
                return Err(StartError::Auth(
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

    /// The guard of one route.
    pub async fn layer(
        &self,
        spec: &UpstreamSpec,
        settings: &Settings,
    ) -> Result<OAuthGuardLayer, StartError> {
        let resource = format!("{}/mcp/{}", settings.public_base(), spec.name);
        let credentials = match &spec.credentials {
            None => UpstreamCredentials::None,
            Some(CredentialsSpec::Static(s)) => {
                UpstreamCredentials::Static(HeaderValue::from_str(&s.0).map_err(|_| {
                    StartError::Auth("static credential is not a header value".into())
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
            OAuthGuardLayer::with_shared_verifier(self.verifier.clone(), resource)
                .authorization_servers(self.settings.issuer.iter().cloned())
                .scopes(self.settings.scopes.iter().cloned())
                .upstream(spec.name.clone())
                .permissions(self.permissions.clone())
                .cache(self.cache.clone())
                .credentials(credentials)
                .body_limit(settings.body_limit),
        )
    }
}
