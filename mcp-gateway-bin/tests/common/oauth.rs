//! A real authorization server for the OAuthGuard tests: `oidc-provider` (npm), wrapped by
//! `scripts/oauth/as.mjs`, started on a free port and driven over HTTP.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Once;

static INSTALL: Once = Once::new();

fn harness_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/oauth")
}

/// Installs the harness's pinned npm packages when they are missing (scripts/test does this
/// up front; this keeps `cargo test` alone working too).
fn ensure_installed() {
    INSTALL.call_once(|| {
        let dir = harness_dir();
        if dir.join("node_modules/oidc-provider").exists() {
            return;
        }
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status()
            .expect(
                "npm is needed for the authorization server tests (scripts/test installs Node)",
            );
        assert!(status.success(), "npm ci in scripts/oauth failed");
    });
}

/// A running authorization server; stopped on drop.
pub struct As {
    child: Child,
    pub issuer: String,
    http: reqwest::Client,
}

impl Drop for As {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a form value.
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A registered client.
#[derive(Clone, Debug)]
pub struct Client {
    pub id: String,
    pub secret: String,
}

impl As {
    /// Starts the server with extra environment (`AS_TOKEN_TTL`, …).
    pub fn start(env: &[(&str, &str)]) -> Self {
        ensure_installed();
        let mut cmd = Command::new("node");
        cmd.arg(harness_dir().join("as.mjs"))
            .env("AS_PORT", "0")
            // Exits when this process goes away, even if a test panics.
            .env("AS_EXIT_ON_STDIN_EOF", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .expect("node is needed for the authorization server tests");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let issuer = line
            .trim()
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("authorization server did not start: {line:?}"))
            .to_owned();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Self {
            child,
            issuer,
            http,
        }
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    async fn json(&self, req: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// GETs a JSON document.
    pub async fn get(&self, url: &str) -> (u16, serde_json::Value) {
        self.json(self.http.get(url)).await
    }

    /// The metadata document (RFC 8414).
    pub async fn metadata(&self) -> serde_json::Value {
        let (s, v) = self
            .get(&format!(
                "{}/.well-known/oauth-authorization-server",
                self.issuer
            ))
            .await;
        assert_eq!(s, 200, "{v}");
        v
    }

    /// Registers a client (RFC 7591) with `grant_types`, redirect `http://127.0.0.1/cb`.
    pub async fn register(&self, grant_types: &[&str], scope: &str) -> Client {
        let meta = self.metadata().await;
        let reg = meta["registration_endpoint"].as_str().unwrap();
        let confidential = grant_types.contains(&"client_credentials");
        let body = serde_json::json!({
            "client_name": "gateway-test",
            "grant_types": grant_types,
            "response_types": if grant_types.contains(&"authorization_code") { vec!["code"] } else { vec![] },
            "redirect_uris": if grant_types.contains(&"authorization_code") { vec!["http://127.0.0.1/cb"] } else { vec![] },
            "token_endpoint_auth_method": if confidential { "client_secret_basic" } else { "none" },
            "scope": scope,
        });
        let (s, v) = self
            .json(
                self.http
                    .post(reg)
                    .header("content-type", "application/json")
                    .body(body.to_string()),
            )
            .await;
        assert_eq!(s, 201, "registration: {v}");
        Client {
            id: v["client_id"].as_str().unwrap().to_owned(),
            secret: v["client_secret"].as_str().unwrap_or_default().to_owned(),
        }
    }

    /// A token from the token endpoint; the whole answer.
    pub async fn token(
        &self,
        client: &Client,
        params: &[(&str, &str)],
    ) -> (u16, serde_json::Value) {
        let meta = self.metadata().await;
        let url = meta["token_endpoint"].as_str().unwrap();
        let mut req = self
            .http
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded");
        if client.secret.is_empty() {
            let mut p = params.to_vec();
            p.push(("client_id", &client.id));
            req = req.body(form(&p));
        } else {
            use base64::Engine;
            let basic = base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                enc(&client.id),
                enc(&client.secret)
            ));
            req = req
                .header("authorization", format!("Basic {basic}"))
                .body(form(params));
        }
        self.json(req).await
    }

    /// A client-credentials access token for `resource` with `scope`.
    pub async fn cc_token(&self, client: &Client, resource: &str, scope: &str) -> String {
        let (s, v) = self
            .token(
                client,
                &[
                    ("grant_type", "client_credentials"),
                    ("resource", resource),
                    ("scope", scope),
                ],
            )
            .await;
        assert_eq!(s, 200, "client credentials: {v}");
        v["access_token"].as_str().unwrap().to_owned()
    }

    /// A user token by authorization code + PKCE, logging in `user` through the harness's
    /// browserless interaction (cookies carried by hand, redirects followed by hand).
    pub async fn code_flow_token(
        &self,
        client: &Client,
        user: &str,
        resource: &str,
        scope: &str,
    ) -> String {
        use base64::Engine;
        use sha2::Digest;
        let verifier = "test-verifier-0123456789-0123456789-0123456789-abcdef";
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(verifier.as_bytes()));
        let meta = self.metadata().await;
        let auth = meta["authorization_endpoint"].as_str().unwrap();
        let mut url = format!(
            "{auth}?{}",
            form(&[
                ("response_type", "code"),
                ("client_id", &client.id),
                ("redirect_uri", "http://127.0.0.1/cb"),
                ("scope", scope),
                ("resource", resource),
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
                ("state", "s1"),
                ("login_hint", user),
            ])
        );
        let mut cookies: Vec<String> = Vec::new();
        for _ in 0..10 {
            let resp = self
                .http
                .get(&url)
                .header("cookie", cookies.join("; "))
                .send()
                .await
                .unwrap();
            for c in resp.headers().get_all("set-cookie") {
                let pair = c.to_str().unwrap().split(';').next().unwrap().to_owned();
                let name = pair.split('=').next().unwrap().to_owned();
                cookies.retain(|x| !x.starts_with(&format!("{name}=")));
                cookies.push(pair);
            }
            let Some(loc) = resp.headers().get("location") else {
                panic!("authorization flow stopped at {} ({url})", resp.status());
            };
            let loc = loc.to_str().unwrap().to_owned();
            let next = if loc.starts_with('/') {
                format!("{}{loc}", self.issuer)
            } else {
                loc
            };
            if let Some(q) = next.strip_prefix("http://127.0.0.1/cb?") {
                let code = q
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("code="))
                    .unwrap_or_else(|| panic!("no code in {next}"));
                let (s, v) = self
                    .token(
                        client,
                        &[
                            ("grant_type", "authorization_code"),
                            ("code", code),
                            ("redirect_uri", "http://127.0.0.1/cb"),
                            ("code_verifier", verifier),
                            ("resource", resource),
                        ],
                    )
                    .await;
                assert_eq!(s, 200, "code exchange: {v}");
                return v["access_token"].as_str().unwrap().to_owned();
            }
            url = next;
        }
        panic!("authorization flow did not end");
    }

    /// The harness's counters.
    pub async fn stats(&self) -> serde_json::Value {
        self.get(&format!("{}/_test/stats", self.issuer)).await.1
    }

    /// Sets how tokens for `resource` are made (`format`: jwt or opaque; `alg`; `ttl`).
    pub async fn resource_settings(&self, settings: serde_json::Value) {
        let (s, v) = self
            .json(
                self.http
                    .post(format!("{}/_test/resources", self.issuer))
                    .header("content-type", "application/json")
                    .body(settings.to_string()),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }

    /// Makes a new signing key the active one (old keys stay published).
    pub async fn rotate(&self) -> serde_json::Value {
        let (s, v) = self
            .json(self.http.post(format!("{}/_test/rotate", self.issuer)))
            .await;
        assert_eq!(s, 200, "{v}");
        v
    }

    /// Revokes an opaque token at the server.
    pub async fn revoke(&self, token: &str) {
        let (s, v) = self
            .json(
                self.http
                    .post(format!("{}/_test/revoke?token={}", self.issuer, enc(token))),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }

    /// Signs arbitrary claims with the server's active key (`alg` RS256 or ES256), or with
    /// a header of the test's choosing: tokens a real server would never issue.
    pub async fn sign(&self, body: serde_json::Value) -> String {
        let (s, v) = self
            .json(
                self.http
                    .post(format!("{}/_test/sign", self.issuer))
                    .header("content-type", "application/json")
                    .body(body.to_string()),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["token"].as_str().unwrap().to_owned()
    }

    /// The active public key of `alg` as PEM (for the key-confusion attack).
    pub async fn public_pem(&self, alg: &str) -> String {
        let (s, v) = self
            .get(&format!("{}/_test/pem?alg={alg}", self.issuer))
            .await;
        assert_eq!(s, 200, "{v}");
        v["pem"].as_str().unwrap().to_owned()
    }
}
