//! Any message that classifies: adding a `_meta` key gives valid JSON that classifies to the
//! same method and id, and carries the new key.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mcp_gateway_core::message::{classify, ClassifiedBody};
use mcp_gateway_core::meta::set_meta_entries;

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);
    let Ok(parsed) = classify(&body) else { return };
    let Some(msg) = parsed.single() else { return };
    let Ok(out) = set_meta_entries(&body, msg, &[("traceparent", "\"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\"")]) else {
        return;
    };
    let again = ClassifiedBody::new(out).expect("rewritten body classifies");
    let m2 = again.parsed().single().expect("still one message");
    assert_eq!(m2.method(), msg.method());
    assert_eq!(m2.id(), msg.id());
    assert_eq!(
        again.meta_value(m2, "traceparent").and_then(|v| v.as_str().map(str::to_owned)).as_deref(),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
});
