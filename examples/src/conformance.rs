//! A conformance fixture: an MCP server on the official Rust SDK (`rmcp`) that implements what
//! the server scenarios of the official conformance suite (`@modelcontextprotocol/conformance`)
//! call — its `test_*` tools, `test://` resources, `test_*` prompts, logging, completion,
//! sampling and elicitation round-trips, and the SSE polling scenario that closes a stream in the
//! middle of a call.
//!
//! It exists so the suite can be run against the same server directly and through the gateway,
//! and the two results compared check by check (`scripts/conformance`). It also carries `echo`
//! and `slow_count` (a call that streams progress) for the interop matrix (`scripts/interop`).
//!
//! Legacy sessions (2025-03-26 … 2025-11-25) and sessionless 2026-07-28 requests are served on
//! the same endpoint.

// Sampling and logging are deprecated in 2026-07-28 (SEP-2577) but the suite still calls them
// for the legacy revisions, so the fixture implements them.
#![allow(deprecated)]

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, BodyStream, Full, StreamBody};
use rmcp::model::{
    AudioContent, CallToolRequestParams, CallToolResponse, CallToolResult, CompleteRequestParams,
    CompleteResult, CompletionInfo, ContentBlock, CreateMessageRequestParams, ElicitRequestParams,
    ElicitationSchema, GetPromptRequestParams, GetPromptResponse, GetPromptResult, Implementation,
    JsonObject, ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult,
    ListToolsResult, LoggingLevel, LoggingMessageNotificationParam, PaginatedRequestParams,
    ProgressNotificationParam, Prompt, PromptArgument, PromptMessage, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, Reference, Resource, ResourceContents,
    ResourceTemplate, Role, SamplingMessage, ServerCapabilities, ServerConfig,
    SetLevelRequestParams, SubscribeRequestParams, Tool, UnsubscribeRequestParams,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// A 1×1 PNG, base64.
const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";
/// A minimal WAV file, base64.
const WAV: &str = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA=";
/// The tool whose response stream the fixture closes mid-call (SEP-1699).
const RECONNECTION_TOOL: &str = "test_reconnection";
/// The `retry` hint sent when the fixture closes a stream.
const RECONNECT_RETRY: Duration = Duration::from_millis(500);

/// Coordinates closing a `test_reconnection` response stream: the HTTP wrapper learns which
/// stream carries the call (from its priming event id), closes it, and wakes the tool.
#[derive(Default)]
struct StreamCloser {
    closed: Mutex<HashMap<String, Arc<Notify>>>,
}

impl StreamCloser {
    fn key(session: &str, request_id: &str) -> String {
        format!("{session}\u{0}{request_id}")
    }

    fn notify(&self, key: &str) -> Arc<Notify> {
        let mut map = self
            .closed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(key.to_owned()).or_default().clone()
    }

    fn forget(&self, key: &str) {
        let mut map = self
            .closed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.remove(key);
    }
}

/// The fixture server. One value is shared by every session; it holds no per-session state.
#[derive(Clone)]
pub struct Conformance {
    closer: Arc<StreamCloser>,
}

fn object(v: Value) -> JsonObject {
    match v {
        Value::Object(map) => map,
        _ => JsonObject::new(),
    }
}

fn empty_schema() -> JsonObject {
    object(json!({ "type": "object", "properties": {} }))
}

fn tool(name: &'static str, description: &'static str, schema: JsonObject) -> Tool {
    Tool::new(name, description, Arc::new(schema))
}

fn tools() -> Vec<Tool> {
    vec![
        tool(
            "test_simple_text",
            "Returns a simple text content block",
            empty_schema(),
        ),
        tool(
            "test_image_content",
            "Returns an image content block",
            empty_schema(),
        ),
        tool(
            "test_audio_content",
            "Returns an audio content block",
            empty_schema(),
        ),
        tool(
            "test_embedded_resource",
            "Returns an embedded resource",
            empty_schema(),
        ),
        tool(
            "test_multiple_content_types",
            "Returns text, an image and an embedded resource",
            empty_schema(),
        ),
        tool(
            "test_tool_with_logging",
            "Sends three log notifications while it runs",
            empty_schema(),
        ),
        tool(
            "test_tool_with_progress",
            "Sends three progress notifications while it runs",
            empty_schema(),
        ),
        tool(
            "test_error_handling",
            "Always fails with isError set",
            empty_schema(),
        ),
        tool(
            RECONNECTION_TOOL,
            "Closes its response stream mid-call; the result arrives after the client resumes",
            empty_schema(),
        ),
        tool(
            "test_sampling",
            "Asks the client for an LLM completion (sampling/createMessage)",
            object(json!({
                "type": "object",
                "properties": { "prompt": { "type": "string", "description": "The prompt to send" } },
                "required": ["prompt"]
            })),
        ),
        tool(
            "test_elicitation",
            "Asks the client for user input (elicitation/create)",
            object(json!({
                "type": "object",
                "properties": { "message": { "type": "string", "description": "The message to show" } },
                "required": ["message"]
            })),
        ),
        tool(
            "test_elicitation_sep1034_defaults",
            "Elicitation whose fields all have defaults (SEP-1034)",
            empty_schema(),
        ),
        tool(
            "test_elicitation_sep1330_enums",
            "Elicitation with every enum schema variant (SEP-1330)",
            empty_schema(),
        ),
        tool(
            "json_schema_2020_12_tool",
            "A tool whose input schema uses JSON Schema 2020-12 features (SEP-1613)",
            object(json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "$defs": {
                    "address": {
                        "type": "object",
                        "properties": { "street": { "type": "string" }, "city": { "type": "string" } }
                    }
                },
                "properties": { "name": { "type": "string" }, "address": { "$ref": "#/$defs/address" } },
                "additionalProperties": false
            })),
        ),
        tool(
            "echo",
            "Echoes `text` back",
            object(json!({
                "type": "object",
                "properties": { "text": { "type": "string" } },
                "required": ["text"]
            })),
        ),
        tool(
            "slow_count",
            "Sends `n` progress notifications, `delay_ms` apart, then returns",
            object(json!({
                "type": "object",
                "properties": { "n": { "type": "integer" }, "delay_ms": { "type": "integer" } },
                "required": ["n"]
            })),
        ),
    ]
}

fn text_resource(uri: &str, mime: &str, text: &str) -> ResourceContents {
    ResourceContents::TextResourceContents {
        uri: uri.into(),
        mime_type: Some(mime.into()),
        text: text.into(),
        meta: None,
    }
}

fn tool_error(e: impl std::fmt::Display) -> ErrorData {
    ErrorData::internal_error(e.to_string(), None)
}

fn elicitation_schema(v: Value) -> Result<ElicitationSchema, ErrorData> {
    serde_json::from_value(v).map_err(tool_error)
}

impl Conformance {
    fn new(closer: Arc<StreamCloser>) -> Self {
        Self { closer }
    }

    async fn elicit(
        &self,
        ctx: &RequestContext<RoleServer>,
        message: &str,
        schema: Value,
    ) -> Result<CallToolResult, ErrorData> {
        let params = ElicitRequestParams::FormElicitationParams {
            meta: None,
            message: message.into(),
            requested_schema: elicitation_schema(schema)?,
        };
        let text = match ctx.peer.create_elicitation(params).await {
            Ok(result) => format!(
                "Elicitation completed: action={}, content={}",
                serde_json::to_value(result.action).unwrap_or(Value::Null),
                result.content.unwrap_or(json!({}))
            ),
            Err(e) => format!("Elicitation not supported or error: {e}"),
        };
        Ok(CallToolResult::success(vec![ContentBlock::text(text)]))
    }

    async fn reconnection(
        &self,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        // The HTTP wrapper closes this call's stream as soon as its priming event goes out and
        // then wakes us; finish only after that, so the result must travel on the resumed stream.
        let session = ctx
            .extensions
            .get::<http::request::Parts>()
            .and_then(|p| p.headers.get("mcp-session-id"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if let Some(session) = session {
            let key = StreamCloser::key(&session, &request_id_text(&ctx.id));
            let woke =
                tokio::time::timeout(Duration::from_secs(5), self.closer.notify(&key).notified())
                    .await;
            self.closer.forget(&key);
            if woke.is_err() {
                tracing::warn!("test_reconnection: the stream was not closed in time");
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(CallToolResult::success(vec![ContentBlock::text(
            "Reconnection test completed successfully. If you received this, the client \
             properly reconnected after stream closure.",
        )]))
    }

    async fn call(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let args = request.arguments.clone().unwrap_or_default();
        let arg_str = |k: &str| args.get(k).and_then(Value::as_str).map(str::to_owned);
        let progress_token = ctx.meta.get_progress_token();
        match request.name.as_ref() {
            "test_simple_text" => Ok(CallToolResult::success(vec![ContentBlock::text(
                "This is a simple text response for testing.",
            )])),
            "test_image_content" => Ok(CallToolResult::success(vec![ContentBlock::image(
                PNG,
                "image/png",
            )])),
            "test_audio_content" => Ok(CallToolResult::success(vec![ContentBlock::Audio(
                AudioContent::new(WAV, "audio/wav"),
            )])),
            "test_embedded_resource" => Ok(CallToolResult::success(vec![ContentBlock::resource(
                text_resource(
                    "test://embedded-resource",
                    "text/plain",
                    "This is an embedded resource content.",
                ),
            )])),
            "test_multiple_content_types" => Ok(CallToolResult::success(vec![
                ContentBlock::text("Multiple content types test:"),
                ContentBlock::image(PNG, "image/png"),
                ContentBlock::resource(text_resource(
                    "test://mixed-content-resource",
                    "application/json",
                    r#"{"test":"data","value":123}"#,
                )),
            ])),
            "test_tool_with_logging" => {
                for (i, msg) in [
                    "Tool execution started",
                    "Tool processing data",
                    "Tool execution completed",
                ]
                .into_iter()
                .enumerate()
                {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    ctx.peer
                        .notify_logging_message(
                            LoggingMessageNotificationParam::new(LoggingLevel::Info, json!(msg))
                                .with_logger("conformance-fixture"),
                        )
                        .await
                        .map_err(tool_error)?;
                }
                Ok(CallToolResult::success(vec![ContentBlock::text(
                    "Tool with logging executed successfully",
                )]))
            }
            "test_tool_with_progress" => {
                for (i, step) in [0u32, 50, 100].into_iter().enumerate() {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    if let Some(token) = &progress_token {
                        ctx.peer
                            .notify_progress(
                                ProgressNotificationParam::new(token.clone(), f64::from(step))
                                    .with_total(100.0)
                                    .with_message(format!("Completed step {step} of 100")),
                            )
                            .await
                            .map_err(tool_error)?;
                    }
                }
                let token = progress_token
                    .map(|t| serde_json::to_string(&t.0).unwrap_or_default())
                    .unwrap_or_else(|| "none".into());
                Ok(CallToolResult::success(vec![ContentBlock::text(token)]))
            }
            "test_error_handling" => Ok(CallToolResult::error(vec![ContentBlock::text(
                "This tool intentionally returns an error for testing",
            )])),
            RECONNECTION_TOOL => self.reconnection(&ctx).await,
            "test_sampling" => {
                let prompt = arg_str("prompt").unwrap_or_else(|| "Hello".into());
                let text = match ctx
                    .peer
                    .create_message(CreateMessageRequestParams::new(
                        vec![SamplingMessage::user_text(prompt)],
                        100,
                    ))
                    .await
                {
                    Ok(result) => {
                        let reply = result
                            .message
                            .content
                            .first()
                            .and_then(|c| c.as_text())
                            .map(|t| t.text.clone())
                            .unwrap_or_else(|| "No response".into());
                        format!("LLM response: {reply}")
                    }
                    Err(e) => format!("Sampling not supported or error: {e}"),
                };
                Ok(CallToolResult::success(vec![ContentBlock::text(text)]))
            }
            "test_elicitation" => {
                let message =
                    arg_str("message").unwrap_or_else(|| "Please provide a response".into());
                self.elicit(
                    &ctx,
                    &message,
                    json!({
                        "type": "object",
                        "properties": { "response": { "type": "string", "description": "User's response" } },
                        "required": ["response"]
                    }),
                )
                .await
            }
            "test_elicitation_sep1034_defaults" => {
                self.elicit(
                    &ctx,
                    "Please review and update the form fields with defaults",
                    json!({
                        "type": "object",
                        "properties": {
                            "name": { "type": "string", "description": "User name", "default": "John Doe" },
                            "age": { "type": "integer", "description": "User age", "default": 30 },
                            "score": { "type": "number", "description": "User score", "default": 95.5 },
                            "status": {
                                "type": "string", "description": "User status",
                                "enum": ["active", "inactive", "pending"], "default": "active"
                            },
                            "verified": { "type": "boolean", "description": "Verification status", "default": true }
                        },
                        "required": []
                    }),
                )
                .await
            }
            "test_elicitation_sep1330_enums" => {
                self.elicit(
                    &ctx,
                    "Please select options from the enum fields",
                    json!({
                        "type": "object",
                        "properties": {
                            "untitledSingle": {
                                "type": "string", "description": "Select one option",
                                "enum": ["option1", "option2", "option3"]
                            },
                            "titledSingle": {
                                "type": "string", "description": "Select one option with titles",
                                "oneOf": [
                                    { "const": "value1", "title": "First Option" },
                                    { "const": "value2", "title": "Second Option" },
                                    { "const": "value3", "title": "Third Option" }
                                ]
                            },
                            "legacyEnum": {
                                "type": "string", "description": "Select one option (legacy)",
                                "enum": ["opt1", "opt2", "opt3"],
                                "enumNames": ["Option One", "Option Two", "Option Three"]
                            },
                            "untitledMulti": {
                                "type": "array", "description": "Select multiple options",
                                "minItems": 1, "maxItems": 3,
                                "items": { "type": "string", "enum": ["option1", "option2", "option3"] }
                            },
                            "titledMulti": {
                                "type": "array", "description": "Select multiple options with titles",
                                "minItems": 1, "maxItems": 3,
                                "items": { "anyOf": [
                                    { "const": "value1", "title": "First Choice" },
                                    { "const": "value2", "title": "Second Choice" },
                                    { "const": "value3", "title": "Third Choice" }
                                ] }
                            }
                        },
                        "required": []
                    }),
                )
                .await
            }
            "json_schema_2020_12_tool" => Ok(CallToolResult::success(vec![ContentBlock::text(
                format!(
                    "JSON Schema 2020-12 tool called with: {}",
                    Value::Object(args)
                ),
            )])),
            "echo" => Ok(CallToolResult::success(vec![ContentBlock::text(
                arg_str("text").unwrap_or_default(),
            )])),
            "slow_count" => {
                let n = args.get("n").and_then(Value::as_u64).unwrap_or(3).min(100);
                let delay = args.get("delay_ms").and_then(Value::as_u64).unwrap_or(100);
                for i in 1..=n {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    if let Some(token) = &progress_token {
                        #[allow(clippy::cast_precision_loss)]
                        let (done, total) = (i as f64, n as f64);
                        ctx.peer
                            .notify_progress(
                                ProgressNotificationParam::new(token.clone(), done)
                                    .with_total(total)
                                    .with_message(format!("step {i}/{n}")),
                            )
                            .await
                            .map_err(tool_error)?;
                    }
                }
                Ok(CallToolResult::success(vec![ContentBlock::text(format!(
                    "counted to {n}"
                ))]))
            }
            other => Err(ErrorData::invalid_params(
                format!("Unknown tool: {other}"),
                None,
            )),
        }
    }
}

fn request_id_text(id: &rmcp::model::RequestId) -> String {
    serde_json::to_string(id).unwrap_or_default()
}

fn resource(uri: &str, name: &str, description: &str, mime: &str) -> Resource {
    let mut r = Resource::new(uri, name).with_description(description);
    r.mime_type = Some(mime.into());
    r
}

impl ServerHandler for Conformance {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .enable_resources()
                .enable_resources_subscribe()
                .enable_resources_list_changed()
                .enable_prompts()
                .enable_prompts_list_changed()
                .enable_logging()
                .enable_completions()
                .build(),
        )
        .with_server_info(Implementation::new(
            "mcp-gateway-conformance-fixture",
            env!("CARGO_PKG_VERSION"),
        ))
        .with_instructions("Conformance fixture for mcp-gateway (rmcp).")
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        tools().into_iter().find(|t| t.name == name)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        self.call(request, ctx).await.map(Into::into)
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        Ok(ListResourcesResult::with_all_items(vec![
            resource(
                "test://static-text",
                "static-text",
                "A static text resource",
                "text/plain",
            ),
            resource(
                "test://static-binary",
                "static-binary",
                "A static binary resource (a PNG image)",
                "image/png",
            ),
            resource(
                "test://watched-resource",
                "watched-resource",
                "A resource clients can subscribe to",
                "text/plain",
            ),
        ]))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let mut t = ResourceTemplate::new("test://template/{id}/data", "template")
            .with_description("A resource template with parameter substitution");
        t.mime_type = Some("application/json".into());
        Ok(ListResourceTemplatesResult::with_all_items(vec![t]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let uri = request.uri.as_str();
        let contents = match uri {
            "test://static-text" => text_resource(
                uri,
                "text/plain",
                "This is the content of the static text resource.",
            ),
            "test://watched-resource" => text_resource(uri, "text/plain", "Watched resource content"),
            "test://static-binary" => ResourceContents::BlobResourceContents {
                uri: uri.into(),
                mime_type: Some("image/png".into()),
                blob: PNG.into(),
                meta: None,
            },
            _ => match uri
                .strip_prefix("test://template/")
                .and_then(|rest| rest.strip_suffix("/data"))
            {
                Some(id) if !id.is_empty() && !id.contains('/') => text_resource(
                    uri,
                    "application/json",
                    &json!({ "id": id, "templateTest": true, "data": format!("Data for ID: {id}") })
                        .to_string(),
                ),
                _ => {
                    return Err(ErrorData::resource_not_found(
                        format!("Resource not found: {uri}"),
                        Some(json!({ "uri": uri })),
                    ))
                }
            },
        };
        Ok(ReadResourceResult::new(vec![contents]).into())
    }

    #[allow(deprecated)]
    async fn subscribe(
        &self,
        _request: SubscribeRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        Ok(())
    }

    #[allow(deprecated)]
    async fn unsubscribe(
        &self,
        _request: UnsubscribeRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        Ok(())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        let arg = |name: &str, description: &str| {
            PromptArgument::new(name)
                .with_description(description)
                .with_required(true)
        };
        Ok(ListPromptsResult::with_all_items(vec![
            Prompt::new(
                "test_simple_prompt",
                Some("A simple prompt without arguments"),
                None,
            ),
            Prompt::new(
                "test_prompt_with_arguments",
                Some("A prompt with required arguments"),
                Some(vec![
                    arg("arg1", "First test argument"),
                    arg("arg2", "Second test argument"),
                ]),
            ),
            Prompt::new(
                "test_prompt_with_embedded_resource",
                Some("A prompt that includes an embedded resource"),
                Some(vec![arg("resourceUri", "URI of the resource to embed")]),
            ),
            Prompt::new(
                "test_prompt_with_image",
                Some("A prompt that includes image content"),
                None,
            ),
        ]))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let args = request.arguments.unwrap_or_default();
        let arg = |k: &str| {
            args.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let user = Role::User;
        let messages = match request.name.as_str() {
            "test_simple_prompt" => vec![PromptMessage::new_text(
                user,
                "This is a simple prompt for testing.",
            )],
            "test_prompt_with_arguments" => vec![PromptMessage::new_text(
                user,
                format!(
                    "Prompt with arguments: arg1='{}', arg2='{}'",
                    arg("arg1"),
                    arg("arg2")
                ),
            )],
            "test_prompt_with_embedded_resource" => {
                let uri = Some(arg("resourceUri"))
                    .filter(|u| !u.is_empty())
                    .unwrap_or_else(|| "test://example-resource".into());
                vec![
                    PromptMessage::new(
                        user.clone(),
                        ContentBlock::resource(text_resource(
                            &uri,
                            "text/plain",
                            "Embedded resource content for testing.",
                        )),
                    ),
                    PromptMessage::new_text(user, "Please process the embedded resource above."),
                ]
            }
            "test_prompt_with_image" => vec![
                PromptMessage::new(user.clone(), ContentBlock::image(PNG, "image/png")),
                PromptMessage::new_text(user, "Please analyze the image above."),
            ],
            other => {
                return Err(ErrorData::invalid_params(
                    format!("Unknown prompt: {other}"),
                    None,
                ))
            }
        };
        Ok(GetPromptResult::new(messages).into())
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        let candidates: &[&str] = match &request.r#ref {
            Reference::Prompt(_) => &["alpha", "beta", "gamma"],
            Reference::Resource(_) => &["1", "2", "3"],
            _ => &[],
        };
        let prefix = request.argument.value.as_str();
        let values = candidates
            .iter()
            .filter(|c| c.starts_with(prefix))
            .map(|c| (*c).to_owned())
            .collect();
        Ok(CompleteResult::new(
            CompletionInfo::new(values).map_err(tool_error)?,
        ))
    }

    async fn set_level(
        &self,
        _request: SetLevelRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        Ok(())
    }
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// The fixture as an HTTP handler: rmcp's Streamable HTTP service, plus the small wrapper that
/// closes `test_reconnection` response streams mid-call.
#[derive(Clone)]
pub struct Fixture {
    inner: StreamableHttpService<Conformance, LocalSessionManager>,
    sessions: Arc<LocalSessionManager>,
    closer: Arc<StreamCloser>,
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Fixture {
    /// A fixture with legacy sessions (and priming events) enabled.
    pub fn new() -> Self {
        let closer = Arc::new(StreamCloser::default());
        let sessions = Arc::new(LocalSessionManager::default());
        let handler = Conformance::new(closer.clone());
        let inner = StreamableHttpService::new(
            move || Ok(handler.clone()),
            sessions.clone(),
            StreamableHttpServerConfig::default(),
        );
        Self {
            inner,
            sessions,
            closer,
        }
    }

    /// Serves one HTTP request.
    pub async fn handle<B>(&self, req: http::Request<B>) -> http::Response<BoxBody>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::fmt::Display,
    {
        let (parts, body) = req.into_parts();
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return plain(http::StatusCode::BAD_REQUEST, format!("bad body: {e}"));
            }
        };
        let watch = reconnection_call(&parts, &body);
        let resp = self
            .inner
            .handle(http::Request::from_parts(parts, Full::new(body)))
            .await;
        match watch {
            Some((session, id)) if is_sse(&resp) => self.close_after_priming(resp, session, id),
            _ => resp,
        }
    }

    /// Passes the response through; once its priming event (`id: 0/N`) has gone out, closes
    /// stream `N` of the session and wakes the tool call.
    fn close_after_priming(
        &self,
        resp: http::Response<BoxBody>,
        session: String,
        request_id: String,
    ) -> http::Response<BoxBody> {
        let (parts, body) = resp.into_parts();
        let sessions = self.sessions.clone();
        let closer = self.closer.clone();
        let mut seen = String::new();
        let mut done = false;
        let stream = BodyStream::new(body).map(move |frame| {
            if let (false, Ok(f)) = (done, &frame) {
                if let Some(data) = f.data_ref() {
                    seen.push_str(&String::from_utf8_lossy(data));
                    if let Some(stream_id) = priming_stream_id(&seen) {
                        done = true;
                        let (sessions, closer) = (sessions.clone(), closer.clone());
                        let (session, request_id) = (session.clone(), request_id.clone());
                        tokio::spawn(async move {
                            close_stream(&sessions, &session, stream_id).await;
                            let key = StreamCloser::key(&session, &request_id);
                            closer.notify(&key).notify_one();
                        });
                    }
                }
            }
            frame
        });
        http::Response::from_parts(parts, BodyExt::boxed(StreamBody::new(stream)))
    }
}

async fn close_stream(sessions: &LocalSessionManager, session: &str, stream_id: u64) {
    let map = sessions.sessions.read().await;
    let Some(handle) = map.get(&Arc::<str>::from(session)) else {
        tracing::warn!("test_reconnection: unknown session");
        return;
    };
    if let Err(e) = handle
        .close_sse_stream(stream_id, Some(RECONNECT_RETRY))
        .await
    {
        tracing::warn!("test_reconnection: closing the stream failed: {e}");
    }
}

/// The stream number of the first SSE event's id (`index/stream`), once the event is complete.
fn priming_stream_id(seen: &str) -> Option<u64> {
    let end = seen.find("\n\n")?;
    seen[..end]
        .lines()
        .find_map(|l| l.strip_prefix("id:"))
        .and_then(|id| id.trim().split_once('/'))
        .and_then(|(_, stream)| stream.parse().ok())
}

/// `(session id, JSON request id)` when the request is a legacy `tools/call` of
/// `test_reconnection`.
fn reconnection_call(parts: &http::request::Parts, body: &[u8]) -> Option<(String, String)> {
    if parts.method != http::Method::POST {
        return None;
    }
    let session = parts.headers.get("mcp-session-id")?.to_str().ok()?;
    let msg: Value = serde_json::from_slice(body).ok()?;
    let is_call = msg.get("method")?.as_str()? == "tools/call"
        && msg.pointer("/params/name")?.as_str()? == RECONNECTION_TOOL;
    is_call.then(|| Some((session.to_owned(), msg.get("id")?.to_string())))?
}

fn is_sse(resp: &http::Response<BoxBody>) -> bool {
    resp.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

fn plain(status: http::StatusCode, text: String) -> http::Response<BoxBody> {
    let mut resp = http::Response::new(BodyExt::boxed(Full::new(Bytes::from(text))));
    *resp.status_mut() = status;
    resp
}

/// Serves the fixture on every path of an already-bound listener until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;
    let fixture = Fixture::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let fixture = fixture.clone();
        tokio::spawn(async move {
            let svc = TowerToHyperService::new(tower::service_fn(
                move |req: http::Request<hyper::body::Incoming>| {
                    let fixture = fixture.clone();
                    async move { Ok::<_, Infallible>(fixture.handle(req).await) }
                },
            ));
            let _ = Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Serves the fixture over stdio (newline-delimited JSON-RPC on stdin and stdout) until stdin
/// closes: one connection, as a stdio server serves its client.
pub async fn serve_stdio() -> Result<(), Box<dyn std::error::Error>> {
    use rmcp::ServiceExt;
    let handler = Conformance::new(Arc::new(StreamCloser::default()));
    let running = handler.serve(rmcp::transport::stdio()).await?;
    running.waiting().await?;
    Ok(())
}

/// Binds `addr` and serves the fixture in a background task; returns the bound address.
pub async fn spawn(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(serve(listener));
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::priming_stream_id;

    #[test]
    fn priming_id() {
        assert_eq!(
            priming_stream_id("data: \nid: 0/3\nretry: 3000\n\n"),
            Some(3)
        );
        assert_eq!(priming_stream_id("data: \nid: 0/3\n"), None);
        assert_eq!(priming_stream_id("data: \nid: 0\n\n"), None);
    }
}
