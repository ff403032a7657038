//! The axum embedding serves its own route and MCP through the gateway's stack to a real rmcp
//! server, with a real rmcp client.
#![allow(clippy::unwrap_used)]

use mcp_gateway_examples::demo_server::{self, DemoOptions};
use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation, ProtocolVersion,
};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::ServiceExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_app_forwards_mcp() {
    let up = demo_server::spawn("127.0.0.1:0".parse().unwrap(), DemoOptions::default())
        .await
        .unwrap();
    let app =
        mcp_gateway_examples::embed::app(format!("http://{up}/mcp").parse().unwrap()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let hello = reqwest::get(format!("http://{addr}/hello")).await.unwrap();
    assert_eq!(hello.text().await.unwrap(), "hello from the host app\n");

    let mut info = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("embed-test", "0"),
    );
    info.protocol_version = ProtocolVersion::V_2025_11_25;
    let client = info
        .serve(StreamableHttpClientTransport::from_uri(format!(
            "http://{addr}/mcp"
        )))
        .await
        .unwrap();
    let mut args = serde_json::Map::new();
    args.insert("text".into(), "embedded".into());
    let r = client
        .call_tool(CallToolRequestParams::new("echo").with_arguments(args))
        .await
        .unwrap();
    assert_eq!(r.content[0].as_text().unwrap().text, "embedded");

    // The stack's refusals work under axum too.
    let bad = reqwest::Client::new()
        .post(format!("http://{addr}/mcp"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    client.cancel().await.unwrap();
}
