//! Static API keys mapped to agent identities, for teams without an authorization server yet.
//!
//! Keys are stored hashed (SHA-256, hex): the file never holds a usable key. Hash a new key
//! with `printf %s "$KEY" | sha256sum`.
//!
//! ```toml
//! [[keys]]
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! agent = "ci-bot"                  # the client id limits and audit use
//! subject = "team-ci"               # optional; the agent when absent
//! scopes = ["mcp:tools", "github:read"]
//! ```

use super::verify::{TokenVerifier, Verified, VerifyError};
use futures_util::future::BoxFuture;
use mcp_gateway_core::{Principal, PrincipalKind};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    keys: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    sha256: toml::Spanned<String>,
    agent: String,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
}

/// Why an API key file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiKeysError {
    /// The file could not be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        error: std::io::Error,
    },
    /// The file is not valid.
    #[error("{0}")]
    Invalid(String),
    /// The file is not valid, at a place in it (its path, line and column).
    #[error("{0}")]
    At(crate::config::ConfigError),
}

/// Verifies static API keys. See the module docs.
#[derive(Clone, Debug, Default)]
pub struct ApiKeys {
    by_hash: HashMap<[u8; 32], Principal>,
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn parse_hex(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl ApiKeys {
    /// No keys.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key by its SHA-256 (hex) for `principal`.
    pub fn with_hash(
        mut self,
        sha256_hex: &str,
        principal: Principal,
    ) -> Result<Self, ApiKeysError> {
        let h = parse_hex(sha256_hex).ok_or_else(|| {
            ApiKeysError::Invalid(format!(
                "{sha256_hex:?} is not a SHA-256 digest (64 hex digits)"
            ))
        })?;
        self.by_hash.insert(h, principal);
        Ok(self)
    }

    /// Adds a key given in clear (tests, programmatic setups); only its hash is kept.
    pub fn with_key(mut self, key: &str, principal: Principal) -> Self {
        self.by_hash.insert(sha256(key.as_bytes()), principal);
        self
    }

    /// Parses a key file (see the module docs); errors are located in `<api keys>`.
    pub fn parse(text: &str) -> Result<Self, ApiKeysError> {
        Self::parse_from(text, "<api keys>")
    }

    /// Parses the text of the key file `source` (a name for errors, such as its path): an
    /// error names it, with the line and column.
    pub fn parse_from(text: &str, source: &str) -> Result<Self, ApiKeysError> {
        let at = |span: Option<std::ops::Range<usize>>, message: String| {
            ApiKeysError::At(crate::config::ConfigError {
                source: source.to_owned(),
                location: span.map(|s| crate::config::line_col(text, s.start)),
                message,
            })
        };
        let file: File =
            toml::from_str(text).map_err(|e| at(e.span(), e.message().trim().to_owned()))?;
        let mut keys = Self::new();
        for e in file.keys {
            let subject = e.subject.unwrap_or_else(|| e.agent.clone());
            let p = Principal::new(subject, PrincipalKind::Service)
                .with_client_id(e.agent)
                .with_scopes(e.scopes);
            let span = e.sha256.span();
            keys = keys
                .with_hash(e.sha256.get_ref(), p)
                .map_err(|err| at(Some(span), err.to_string()))?;
        }
        Ok(keys)
    }

    /// Reads a key file; an error in it names the file, line and column.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ApiKeysError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|error| ApiKeysError::Read {
            path: path.display().to_string(),
            error,
        })?;
        Self::parse_from(&text, &path.display().to_string())
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

impl TokenVerifier for ApiKeys {
    fn unrecognised(&self) -> Option<&'static str> {
        Some("unknown API key")
    }

    fn verify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Verified, VerifyError>> {
        let r = match self.by_hash.get(&sha256(token.as_bytes())) {
            Some(p) => Ok(Verified::new(p.clone(), None, None)),
            None => Err(VerifyError::NotMine),
        };
        Box::pin(async move { r })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_matched_by_hash() {
        let text = r#"
[[keys]]
sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
agent = "ci-bot"
scopes = ["mcp:tools"]
"#;
        let keys = ApiKeys::parse(text).unwrap();
        let v = keys.verify("test").await.unwrap();
        assert_eq!(v.principal.agent_key(), "ci-bot");
        assert!(v.principal.has_scope("mcp:tools"));
        assert!(v.audiences.is_none());
        assert_eq!(keys.verify("nope").await.unwrap_err(), VerifyError::NotMine);
        assert!(ApiKeys::parse("[[keys]]\nsha256 = \"xyz\"\nagent = \"a\"\n").is_err());
    }

    #[test]
    fn errors_name_the_keys_file_line_and_column() {
        let e = ApiKeys::parse_from("[[keys]]\nagent = \"a\"\nsha256 = \"xyz\"\n", "keys.toml")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "keys.toml:3:10: \"xyz\" is not a SHA-256 digest (64 hex digits)"
        );
        let e = ApiKeys::parse_from("[[keys]]\nsha256 = \"ab\"\nagnt = \"a\"\n", "keys.toml")
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("keys.toml:3:1: unknown field `agnt`"),
            "{e}"
        );
    }
}
