//! [`Scope`]: how a governing layer joins the per-request record and attaches the response
//! observers — the plumbing every governing layer shares, and that a layer of your own can use.
//!
//! A layer calls [`Scope::enter`] before anything else: it finds the [`Exchange`] an outer
//! layer created, or creates one. It then registers its observers, makes its decision (writing
//! it to the record), calls the inner service, and hands the response to
//! [`Scope::finish`]. Only the scope that created the record attaches the observers, so a
//! response is decoded once however many layers observe it.
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use mcp_gateway_core::observe::{Ending, Observer};
//! use mcp_gateway_layers::scope::Scope;
//! use mcp_gateway_layers::ResponseBody;
//! use std::sync::{Arc, Mutex};
//!
//! struct Ended(Arc<Mutex<Option<String>>>);
//! impl Observer for Ended {
//!     fn on_end(&mut self, end: &Ending) {
//!         *self.0.lock().unwrap() = Some(end.reason.as_str().to_owned());
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let seen = Arc::new(Mutex::new(None));
//! let mut req = Request::post("/mcp").body(()).unwrap();
//! let scope = Scope::enter(&mut req);
//! scope.exchange().observe(Ended(seen.clone()));
//! // … the inner service answers …
//! let resp = Response::new(ResponseBody::<Full<Bytes>>::full(Full::new(Bytes::from_static(b"{}"))));
//! let resp = scope.finish(resp).await;
//! resp.into_body().collect().await.unwrap();
//! assert_eq!(seen.lock().unwrap().as_deref(), Some("completed"));
//! # }
//! ```

use crate::body::ResponseBody;
use crate::BoxError;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use mcp_gateway_core::exchange::{Exchange, ExchangeContext};
use mcp_gateway_core::jsonrpc::{ErrorCode, JsonRpcError};
use mcp_gateway_core::observe::{Cutoff, EndReason, Observation};

/// One governing layer's hold on the per-request record.
#[derive(Debug)]
pub struct Scope {
    exchange: Exchange,
    created: bool,
    cutoff: Option<Cutoff>,
}

impl Scope {
    /// Joins the record in `req`'s extensions, creating it when this is the outermost
    /// governing layer.
    pub fn enter<B>(req: &mut Request<B>) -> Self {
        let (exchange, created) = Exchange::get_or_insert(req.extensions_mut());
        let cutoff = if created {
            req.extensions()
                .get::<ExchangeContext>()
                .and_then(|c| c.cutoff.clone())
        } else {
            None
        };
        Self {
            exchange,
            created,
            cutoff,
        }
    }

    /// The shared record.
    pub fn exchange(&self) -> &Exchange {
        &self.exchange
    }

    /// True when this scope created the record (and so attaches the observers).
    pub fn is_outermost(&self) -> bool {
        self.created
    }

    /// Attaches the registered observers to the response, when this scope created the record,
    /// and puts the record in the response's extensions.
    ///
    /// A JSON response that an observer may rewrite (list filtering) is read whole first —
    /// bounded — so the `Content-Length` sent is that of the rewritten body; when it cannot be
    /// read whole the client gets 502 (JSON-RPC -32050) rather than an unfiltered answer.
    /// Everything else streams through untouched.
    pub async fn finish<B>(self, resp: Response<ResponseBody<B>>) -> Response<ResponseBody<B>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        if !self.created {
            return resp;
        }
        let (mut parts, body) = resp.into_parts();
        // The record travels back on the response, for code outside the stack (access logs).
        parts.extensions.insert(self.exchange.clone());
        let observers = self.exchange.take_observers();
        if observers.is_empty() {
            return Response::from_parts(parts, body);
        }
        let mut obs =
            Observation::new(observers, parts.status, &parts.headers).with_cutoff(self.cutoff);
        if !obs.needs_whole_json() {
            let obs = obs.with_exact_len(body.size_hint().exact());
            return Response::from_parts(parts, body.observed(obs));
        }
        obs.mark_polled();
        match Limited::new(body, obs.max_message_bytes()).collect().await {
            Ok(collected) => {
                let new = obs.replace_json(collected.to_bytes());
                parts.headers.remove(header::TRANSFER_ENCODING);
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(new.len()));
                Response::from_parts(parts, ResponseBody::full(Full::new(new)).observed(obs))
            }
            Err(e) => {
                obs.end(EndReason::UpstreamFailed, Some(e.to_string()));
                drop(obs);
                let id = self
                    .exchange
                    .update(|r| r.request.as_ref().and_then(|v| v.reply_id().cloned()));
                let err = JsonRpcError::new(
                    ErrorCode::UPSTREAM_UNAVAILABLE,
                    "the upstream's response could not be read whole for filtering",
                );
                err.into_response(StatusCode::BAD_GATEWAY, id.as_ref())
                    .map(ResponseBody::full)
            }
        }
    }
}
