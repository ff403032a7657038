//! OAuthGuard's list filtering and the 2026-07-28 list cache fields: a list that depends on
//! the caller's permissions is `cacheScope: "private"`, whether or not this caller lost
//! entries, so a shared cache never hands one caller's list to another.
#![allow(clippy::unwrap_used, missing_docs)]

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use mcp_gateway_core::{Principal, PrincipalKind};
use mcp_gateway_layers::auth::{ApiKeys, OAuthGuardLayer, Permissions, Rule, Target};
use std::convert::Infallible;
use std::sync::Arc;
use tower::{service_fn, Layer, ServiceExt};

const LIST: &str = r#"{"jsonrpc":"2.0","id":7,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#;

/// What the upstream lists, with the scope it chose for caches.
fn upstream(
    scope: &'static str,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    service_fn(move |_req: Request<Full<Bytes>>| async move {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":7,"result":{{"tools":[{{"name":"echo","inputSchema":{{"type":"object"}}}},{{"name":"delete_repo","inputSchema":{{"type":"object"}}}}],"ttlMs":60000,"cacheScope":"{scope}"}}}}"#
        );
        let mut r = Response::new(Full::new(Bytes::from(body)));
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        Ok::<_, Infallible>(r)
    })
}

async fn list(scope: &'static str, key: &str, modern: bool) -> serde_json::Value {
    let keys = ApiKeys::new()
        .with_key(
            "reader",
            Principal::new("r", PrincipalKind::Service).with_scopes(["mcp:tools"]),
        )
        .with_key(
            "admin",
            Principal::new("a", PrincipalKind::Service).with_scopes(["mcp:tools", "admin"]),
        );
    let permissions =
        Permissions::new().with(Rule::new(None, Target::Tool, ["delete_*"], ["admin"]));
    let svc = OAuthGuardLayer::new(keys, "https://gw.example.com/mcp")
        .scopes(["mcp:tools"])
        .permissions(Arc::new(permissions))
        .layer(upstream(scope));
    let mut req = Request::post("/mcp")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("authorization", format!("Bearer {key}"));
    let body = if modern {
        req = req
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/list");
        LIST.to_owned()
    } else {
        r#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#.to_owned()
    };
    let resp = svc
        .oneshot(req.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

fn names(v: &serde_json::Value) -> Vec<&str> {
    v["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_list_filtered_per_caller_is_never_shareable() {
    // The reader loses `delete_repo`: its list is its own.
    let v = list("public", "reader", true).await;
    assert_eq!(names(&v), ["echo"]);
    assert_eq!(v["result"]["cacheScope"], "private", "{v}");
    assert_eq!(v["result"]["ttlMs"], 60000, "{v}");
    // The admin loses nothing, but another caller would: private too.
    let v = list("public", "admin", true).await;
    assert_eq!(names(&v), ["echo", "delete_repo"]);
    assert_eq!(v["result"]["cacheScope"], "private", "{v}");
    // Already private: unchanged.
    let v = list("private", "admin", true).await;
    assert_eq!(v["result"]["cacheScope"], "private", "{v}");
}

#[tokio::test]
async fn legacy_lists_are_filtered_and_a_cache_scope_the_upstream_sent_is_made_private() {
    let v = list("public", "reader", false).await;
    assert_eq!(names(&v), ["echo"]);
    assert_eq!(v["result"]["cacheScope"], "private", "{v}");
}
