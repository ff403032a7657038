//! The classification scanner against `serde_json`, the reference parser, on a deterministic
//! set of inputs: the checks of the `classify_differential` fuzz target (which needs a nightly
//! toolchain), run by `cargo test`. The inputs put every kind of byte a string scan stops at
//! (quote, backslash, control character, multi-byte UTF-8) at every offset of the eight-byte
//! words the scanner reads, and mutate a few real calls byte by byte.
#![allow(clippy::unwrap_used)]

use mcp_gateway_core::message::{classify, ClassifyError};
use serde_json::Value;

fn check(data: &[u8]) {
    let ours = classify(data);
    let json_ok = std::str::from_utf8(data).is_ok()
        && serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok();
    let shown = String::from_utf8_lossy(data);
    match &ours {
        Err(ClassifyError::Parse(e)) => {
            assert!(
                !json_ok,
                "valid JSON reported as a parse error: {e}: {shown}"
            )
        }
        Err(_) | Ok(_) => assert!(json_ok, "invalid JSON accepted: {ours:?}: {shown}"),
    }
    let (Ok(parsed), Ok(v)) = (&ours, serde_json::from_slice::<Value>(data)) else {
        return;
    };
    let values: Vec<&Value> = match &v {
        Value::Array(items) => items.iter().collect(),
        one => vec![one],
    };
    assert_eq!(values.len(), parsed.messages().len(), "{shown}");
    for (m, v) in parsed.messages().iter().zip(values) {
        assert_eq!(
            m.method(),
            v.get("method").and_then(Value::as_str),
            "{shown}"
        );
        let id = m
            .id()
            .map(|id| serde_json::from_str::<Value>(id.as_raw()).unwrap());
        match v.get("id") {
            Some(Value::Null) | None => assert!(id.is_none(), "{shown}"),
            Some(other) => assert_eq!(id.as_ref(), Some(other), "{shown}"),
        }
        let params = v.get("params").filter(|p| p.is_object());
        let field = |k: &str| params.and_then(|p| p.get(k)).and_then(Value::as_str);
        assert_eq!(m.name(), field("name"), "{shown}");
        assert_eq!(m.uri(), field("uri"), "{shown}");
        let pv = params
            .and_then(|p| p.get("_meta"))
            .and_then(|meta| meta.get("io.modelcontextprotocol/protocolVersion"))
            .and_then(Value::as_str);
        assert_eq!(m.meta_protocol_version(), pv, "{shown}");
        assert_eq!(
            m.arguments_span().is_some(),
            params.is_some_and(|p| p.get("arguments").is_some()),
            "{shown}"
        );
        if let Some(r) = m.arguments_span() {
            let raw: Value = serde_json::from_slice(&data[r]).unwrap();
            assert_eq!(
                Some(&raw),
                params.and_then(|p| p.get("arguments")),
                "{shown}"
            );
        }
    }
}

/// What goes inside a string: plain text with one special piece at an offset.
const PIECES: &[&str] = &[
    "\"",
    "\\\"",
    "\\\\",
    "\\n",
    "\\u00e9",
    "\\ud83d\\ude00",
    "\\u12",
    "\\x",
    "\\",
    "\u{1}",
    "\u{1f}",
    "\t",
    "\u{7f}",
    "é",
    "€",
    "😀",
    " ",
];

#[test]
fn strings_with_special_bytes_at_every_offset() {
    for piece in PIECES {
        for before in 0..20 {
            for after in [0, 1, 7, 8, 9] {
                let text = format!("{}{piece}{}", "a".repeat(before), "b".repeat(after));
                // The piece in a method, a tool name, a key, an id, and in skipped arguments.
                let docs = [
                    format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{text}"}}"#),
                    format!(
                        r#"{{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{{"name":"{text}","arguments":{{"q":"{text}"}}}}}}"#
                    ),
                    format!(r#"{{"jsonrpc":"2.0","id":"{text}","method":"ping"}}"#),
                    format!(r#"{{"jsonrpc":"2.0","{text}":3,"method":"ping","id":4}}"#),
                    format!(
                        r#"[{{"jsonrpc":"2.0","method":"notifications/x","params":{{"uri":"{text}","_meta":{{"io.modelcontextprotocol/protocolVersion":"{text}"}}}}}}]"#
                    ),
                ];
                for doc in &docs {
                    check(doc.as_bytes());
                    // The same document cut short, and with a raw byte swapped in.
                    check(&doc.as_bytes()[..doc.len() / 2]);
                    let mut bad = doc.clone().into_bytes();
                    let at = (before + 14).min(bad.len() - 1);
                    bad[at] = 0xff;
                    check(&bad);
                }
            }
        }
    }
}

#[test]
fn real_calls_mutated_byte_by_byte() {
    let calls: &[&str] = &[
        r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello, world: a fairly ordinary call","n":[1,2.5e3,-0.0,true,null]},"_meta":{"progressToken":"p1","io.modelcontextprotocol/protocolVersion":"2025-06-18"}}}"#,
        r#"[{"jsonrpc":"2.0","id":"a\u0062c","method":"resources/read","params":{"uri":"file:///x/y.txt"}},{"jsonrpc":"2.0","method":"notifications/initialized"}]"#,
        r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"bad \"request\""}}"#,
        r#"{"jsonrpc":"2.0","id":12345678901234567890,"result":{"content":[{"type":"text","text":"ok"}]}}"#,
    ];
    // Deterministic pseudo-random substitutions (xorshift), plus every single-byte deletion.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet = b"\"\\{}[],:0123456789.eE+-tfnul \t\r\n\x00\x1f\x7f\xc3\xa9\xff/ua";
    for call in calls {
        let bytes = call.as_bytes();
        check(bytes);
        for i in 0..bytes.len() {
            let mut cut = bytes.to_vec();
            cut.remove(i);
            check(&cut);
            for _ in 0..3 {
                let mut m = bytes.to_vec();
                m[i] = alphabet[(next() % alphabet.len() as u64) as usize];
                check(&m);
            }
        }
    }
}
