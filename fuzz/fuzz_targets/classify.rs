//! Any body: classification and era detection never panic, and spans stay inside the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_gateway_core::era::detect;
use mcp_gateway_core::message::classify;

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = classify(data) {
        for m in parsed.messages() {
            for span in [Some(m.span()), m.params_span(), m.meta_span(), m.arguments_span()]
                .into_iter()
                .flatten()
            {
                assert!(span.start <= span.end && span.end <= data.len());
            }
            if let Some(id) = m.id() {
                // Ids are echoed byte for byte into error bodies: they must stay a valid JSON
                // token (a lone surrogate escape is kept as the client sent it).
                serde_json::from_str::<&serde_json::value::RawValue>(id.as_raw())
                    .expect("id is a JSON token");
            }
        }
        let mut headers = http::HeaderMap::new();
        headers.insert("mcp-protocol-version", http::HeaderValue::from_static("2026-07-28"));
        let _ = detect(&headers, Some(&parsed));
        let _ = detect(&http::HeaderMap::new(), Some(&parsed));
    }
});
