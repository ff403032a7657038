//! The hand-written scanner behind `classify` against `serde_json`, the reference parser:
//! both must agree on what is JSON, and on the fields the gateway reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_gateway_core::message::{classify, ClassifyError};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let ours = classify(data);
    // JSON text must be UTF-8 (RFC 8259 §8.1); serde_json only checks that for strings it reads.
    let json_ok = std::str::from_utf8(data).is_ok()
        && serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok();
    match &ours {
        // Nesting deeper than the scanner's bound is refused on purpose (serde_json's
        // `IgnoredAny` has no such bound): only for input that is that deep.
        Err(ClassifyError::Parse(e)) if e.contains("recursion limit") => {
            assert!(depth(data) > 128, "depth limit reported at depth {}", depth(data));
            return;
        }
        Err(ClassifyError::Parse(e)) => assert!(!json_ok, "valid JSON reported as a parse error: {e}"),
        Err(_) | Ok(_) => assert!(json_ok, "invalid JSON accepted: {ours:?}"),
    }
    let (Ok(parsed), Ok(v)) = (&ours, serde_json::from_slice::<Value>(data)) else { return };
    let values: Vec<&Value> = match &v {
        Value::Array(items) => items.iter().collect(),
        one => vec![one],
    };
    assert_eq!(values.len(), parsed.messages().len());
    for (m, v) in parsed.messages().iter().zip(values) {
        assert_eq!(m.method(), v.get("method").and_then(Value::as_str));
        let id = m.id().map(|id| serde_json::from_str::<Value>(id.as_raw()).expect("id is JSON"));
        match v.get("id") {
            Some(Value::Null) | None => assert!(id.is_none()),
            Some(other) => assert_eq!(id.as_ref(), Some(other)),
        }
        let params = v.get("params").filter(|p| p.is_object());
        let field = |k: &str| params.and_then(|p| p.get(k)).and_then(Value::as_str);
        assert_eq!(m.name(), field("name"));
        assert_eq!(m.uri(), field("uri"));
        let pv = params
            .and_then(|p| p.get("_meta"))
            .and_then(|meta| meta.get("io.modelcontextprotocol/protocolVersion"))
            .and_then(Value::as_str);
        assert_eq!(m.meta_protocol_version(), pv);
        assert_eq!(m.arguments_span().is_some(), params.is_some_and(|p| p.get("arguments").is_some()));
        if let Some(r) = m.arguments_span() {
            let raw: Value = serde_json::from_slice(&data[r]).expect("arguments span is JSON");
            assert_eq!(Some(&raw), params.and_then(|p| p.get("arguments")));
        }
    }
});

/// The deepest nesting of arrays and objects, strings skipped.
fn depth(data: &[u8]) -> usize {
    let (mut d, mut max, mut in_str, mut esc) = (0usize, 0usize, false, false);
    for &b in data {
        if in_str {
            match b {
                _ if esc => esc = false,
                b'\\' => esc = true,
                b'"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                d += 1;
                max = max.max(d);
            }
            b']' | b'}' => d = d.saturating_sub(1),
            _ => {}
        }
    }
    max
}
