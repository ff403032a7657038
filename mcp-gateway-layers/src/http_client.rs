//! A small HTTP client for the gateway's own calls: to the authorization server (discovery,
//! JWKS, and the transport the `oauth2` crate uses; feature `auth`) and to the OTLP collector
//! (span export; feature `telemetry-otlp`). No redirects are followed (SSRF), bodies are
//! bounded, every call has a timeout.

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Largest answer read.
const MAX_BODY: usize = 1 << 20;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The URL is not usable.
    #[error("invalid URL {0:?}")]
    Url(String),
    /// Connecting or exchanging failed.
    #[error("{0}")]
    Transport(String),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The answer was not 2xx.
    #[error("HTTP {status} from {url}")]
    Status {
        /// The status.
        status: u16,
        /// The URL.
        url: String,
    },
    /// The answer was not the JSON expected.
    #[error("unexpected answer from {url}: {why}")]
    Json {
        /// The URL.
        url: String,
        /// What was wrong.
        why: String,
    },
}

/// The client. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AsClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl AsClient {
    /// A client trusting the system's roots, with a per-call timeout.
    pub fn new(timeout: Duration) -> Self {
        let https = match hyper_rustls::HttpsConnectorBuilder::new().with_native_roots() {
            Ok(b) => b,
            // No system roots: plain http:// and nothing else works, as it should.
            Err(_) => hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(empty_roots()),
        }
        .https_or_http()
        .enable_http1()
        .build();
        Self {
            client: Client::builder(TokioExecutor::new()).build(https),
            timeout,
        }
    }

    /// Sends one request; the answer's body is read (bounded).
    pub async fn send(&self, req: Request<Vec<u8>>) -> Result<Response<Vec<u8>>, HttpError> {
        let req = req.map(|b| Full::new(Bytes::from(b)));
        let call = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| HttpError::Transport(error_chain(&e)))?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| HttpError::Transport(e.to_string()))?
                .to_bytes();
            Ok(Response::from_parts(parts, body.to_vec()))
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| HttpError::Timeout(self.timeout))?
    }

    /// GETs `url` and decodes its JSON answer.
    pub async fn get_json<T: DeserializeOwned>(&self, url: &str) -> Result<T, HttpError> {
        let uri: Uri = url.parse().map_err(|_| HttpError::Url(url.to_owned()))?;
        let req = Request::get(uri)
            .header(http::header::ACCEPT, "application/json")
            .body(Vec::new())
            .map_err(|_| HttpError::Url(url.to_owned()))?;
        let resp = self.send(req).await?;
        if !resp.status().is_success() {
            return Err(HttpError::Status {
                status: resp.status().as_u16(),
                url: url.to_owned(),
            });
        }
        serde_json::from_slice(resp.body()).map_err(|e| HttpError::Json {
            url: url.to_owned(),
            why: e.to_string(),
        })
    }

    /// The transport for the `oauth2` crate.
    #[cfg(feature = "auth")]
    pub(crate) async fn oauth2(
        &self,
        req: oauth2::HttpRequest,
    ) -> Result<oauth2::HttpResponse, HttpError> {
        self.send(req).await
    }
}

fn empty_roots() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth()
}

/// An error and its sources, one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
