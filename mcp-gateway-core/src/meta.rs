//! Rewriting `params._meta` while keeping every other byte of the body.
//!
//! Layers that add to `_meta` (trace context, say) must not drop or alter keys they do not own.
//! [`set_meta_entries`] splices new values into the original text: an existing key gets its value
//! replaced in place, a new key is appended inside the existing `_meta` object, and a message
//! without `_meta` (or without `params`) gets one inserted. Nothing else moves.
//!
//! ```
//! use bytes::Bytes;
//! use mcp_gateway_core::message::classify;
//! use mcp_gateway_core::meta::set_meta_entries;
//!
//! let body = Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","_meta":{"k":1}}}"#);
//! let msg = classify(&body).unwrap().single().unwrap().clone();
//! let out = set_meta_entries(&body, &msg, &[("traceparent", "\"00-abc-def-01\"")]).unwrap();
//! assert_eq!(&out[..], br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","_meta":{"k":1,"traceparent":"00-abc-def-01"}}}"#);
//! ```

use crate::message::{Edit, McpMessage};
use bytes::{Bytes, BytesMut};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// Why `_meta` could not be rewritten.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetaError {
    /// `params` or `params._meta` is present but not a JSON object.
    #[error("params._meta is not a JSON object")]
    NotAnObject,
    /// A value given to [`set_meta_entries`] is not valid JSON.
    #[error("value for _meta key {0:?} is not valid JSON")]
    InvalidValue(String),
}

struct Entries<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for Entries<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                    out.push((k, v));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

fn offset(base: &[u8], part: &str) -> usize {
    (part.as_ptr() as usize).saturating_sub(base.as_ptr() as usize)
}

/// Sets `_meta` keys of message `msg` (which must have been classified from `body`) to raw JSON
/// values, returning the new body. Keys not named in `entries` are kept byte for byte.
pub fn set_meta_entries(
    body: &Bytes,
    msg: &McpMessage,
    entries: &[(&str, &str)],
) -> Result<Bytes, MetaError> {
    set_meta_entries_with_edits(body, msg, entries).map(|(b, _)| b)
}

/// [`set_meta_entries`], also returning the edits made (positions in `body`), for
/// [`ParsedBody::edited`](crate::message::ParsedBody::edited).
pub fn set_meta_entries_with_edits(
    body: &Bytes,
    msg: &McpMessage,
    entries: &[(&str, &str)],
) -> Result<(Bytes, Vec<Edit>), MetaError> {
    for (k, v) in entries {
        if serde_json::from_str::<&RawValue>(v).is_err() {
            return Err(MetaError::InvalidValue((*k).to_owned()));
        }
    }
    // (position, bytes to remove, text to insert), applied in position order.
    let mut splices: Vec<(usize, usize, String)> = Vec::new();
    // A new object the insertion creates: (params, meta) places within the inserted text.
    let mut created: (
        Option<std::ops::Range<usize>>,
        Option<std::ops::Range<usize>>,
    ) = (None, None);
    // The new members, written straight into the text inserted.
    let encode_new = |out: &mut String, keys: &mut dyn Iterator<Item = &(&str, &str)>| {
        for (i, (k, v)) in keys.enumerate() {
            if i > 0 {
                out.push(',');
            }
            if k.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
                out.push('"');
                out.push_str(k);
                out.push('"');
            } else {
                out.push_str(&serde_json::to_string(k).unwrap_or_default());
            }
            out.push(':');
            out.push_str(v);
        }
    };
    let room: usize = entries
        .iter()
        .map(|(k, v)| k.len() + v.len() + 4)
        .sum::<usize>()
        + 24;
    if let Some(meta) = msg.meta_span() {
        let text = std::str::from_utf8(&body[meta.clone()]).map_err(|_| MetaError::NotAnObject)?;
        let existing: Entries<'_> =
            serde_json::from_str(text).map_err(|_| MetaError::NotAnObject)?;
        let mut missing = Vec::new();
        for entry in entries {
            let mut found = false;
            for (k, v) in &existing.0 {
                if k == entry.0 {
                    let start = meta.start + offset(text.as_bytes(), v.get());
                    splices.push((start, v.get().len(), entry.1.to_owned()));
                    found = true;
                }
            }
            if !found {
                missing.push(entry);
            }
        }
        if !missing.is_empty() {
            let close = meta.end - 1; // the closing brace of _meta
            let mut text = String::with_capacity(room);
            if !existing.0.is_empty() {
                text.push(',');
            }
            encode_new(&mut text, &mut missing.into_iter());
            splices.push((close, 0, text));
        }
    } else if let Some(params) = msg.params_span() {
        let text = &body[params.clone()];
        if text.first() != Some(&b'{') {
            return Err(MetaError::NotAnObject);
        }
        let empty = text[1..]
            .iter()
            .all(|b| b.is_ascii_whitespace() || *b == b'}');
        let mut text = String::with_capacity(room);
        text.push_str("\"_meta\":{");
        encode_new(&mut text, &mut entries.iter());
        text.push('}');
        created.1 = Some(8..text.len());
        if !empty {
            text.push(',');
        }
        splices.push((params.start + 1, 0, text));
    } else {
        let span = msg.span();
        let mut text = String::with_capacity(room);
        text.push_str(",\"params\":{\"_meta\":{");
        encode_new(&mut text, &mut entries.iter());
        text.push_str("}}");
        created = (Some(10..text.len()), Some(19..text.len() - 1));
        splices.push((span.end - 1, 0, text));
    }
    splices.sort_by_key(|s| s.0);
    let extra: usize = splices.iter().map(|s| s.2.len()).sum();
    let mut out = BytesMut::with_capacity(body.len() + extra);
    let mut pos = 0;
    let mut edits = Vec::with_capacity(splices.len());
    for (at, remove, insert) in splices {
        out.extend_from_slice(&body[pos..at]);
        out.extend_from_slice(insert.as_bytes());
        pos = at + remove;
        edits.push(Edit {
            at,
            removed: remove,
            inserted: insert.len(),
            new_params: None,
            new_meta: None,
        });
    }
    out.extend_from_slice(&body[pos..]);
    // Only the branches that insert a whole object make one splice.
    if let (Some(e), true) = (edits.last_mut(), created.0.is_some() || created.1.is_some()) {
        e.new_params = created.0;
        e.new_meta = created.1;
    }
    Ok((out.freeze(), edits))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::message::classify;

    fn rewrite(body: &'static str, entries: &[(&str, &str)]) -> String {
        let b = Bytes::from_static(body.as_bytes());
        let m = classify(&b).unwrap().messages()[0].clone();
        let out = set_meta_entries(&b, &m, entries).unwrap();
        let s = String::from_utf8(out.to_vec()).unwrap();
        serde_json::from_str::<serde_json::Value>(&s).unwrap();
        s
    }

    #[test]
    fn replaces_in_place_and_keeps_others() {
        assert_eq!(
            rewrite(
                r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"_meta":{ "a" : 1, "traceparent" : "old" , "b":[1]}}}"#,
                &[("traceparent", "\"new\"")]
            ),
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"_meta":{ "a" : 1, "traceparent" : "new" , "b":[1]}}}"#
        );
    }

    #[test]
    fn inserts_meta_into_params_or_message() {
        assert_eq!(
            rewrite(
                r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"x":1}}"#,
                &[("k", "2")]
            ),
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"_meta":{"k":2},"x":1}}"#
        );
        assert_eq!(
            rewrite(
                r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{ }}"#,
                &[("k", "2")]
            ),
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"_meta":{"k":2} }}"#
        );
        assert_eq!(
            rewrite(
                r#"{"jsonrpc":"2.0","id":1,"method":"m"}"#,
                &[("k", "2"), ("j", "\"s\"")]
            ),
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"_meta":{"k":2,"j":"s"}}}"#
        );
        assert_eq!(
            rewrite(
                r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"_meta":{}}}"#,
                &[("k", "2")]
            ),
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"_meta":{"k":2}}}"#
        );
        // Keys that need escaping are escaped, in every branch.
        let keys = [("a\"b", "1"), ("c\\d\n", "2"), ("é", "3")];
        let escaped = r#""a\"b":1,"c\\d\n":2,"é":3"#;
        assert_eq!(
            rewrite(r#"{"jsonrpc":"2.0","id":1,"method":"m"}"#, &keys),
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"m","params":{{"_meta":{{{escaped}}}}}}}"#
            )
        );
        assert_eq!(
            rewrite(
                r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{}}"#,
                &keys
            ),
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"m","params":{{"_meta":{{{escaped}}}}}}}"#
            )
        );
        assert_eq!(
            rewrite(
                r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"_meta":{"z":0}}}"#,
                &keys
            ),
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"m","params":{{"_meta":{{"z":0,{escaped}}}}}}}"#
            )
        );
    }

    #[test]
    fn rejects_bad_input() {
        let b =
            Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"_meta":3}}"#);
        let m = classify(&b).unwrap().messages()[0].clone();
        assert_eq!(
            set_meta_entries(&b, &m, &[("k", "1")]),
            Err(MetaError::NotAnObject)
        );
        let b = Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"method":"m"}"#);
        let m = classify(&b).unwrap().messages()[0].clone();
        assert!(matches!(
            set_meta_entries(&b, &m, &[("k", "{")]),
            Err(MetaError::InvalidValue(_))
        ));
    }

    #[test]
    fn edited_spans_match_a_fresh_classification() {
        let bodies = [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"a":[1,2]},"_meta":{"x":1,"traceparent":"old"}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"_meta":{},"name":"t","arguments":{"a":1}}}"#,
            r#"{ "id" : 1, "params" : { "arguments" : {"b":"}"}, "name":"t" }, "method":"tools/call", "jsonrpc":"2.0" }"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/initialized","params":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{ }}"#,
            r#"[{"jsonrpc":"2.0","method":"n"},{"jsonrpc":"2.0","id":3,"method":"m","params":{"_meta":{ }}},{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"x","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}]"#,
            r#"[{"jsonrpc":"2.0","id":1,"method":"a","params":{"x":{"y":2}}},{"jsonrpc":"2.0","id":"r","result":{"_meta":{"k":1}}},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"n","arguments":{},"_meta":{"traceparent":"x","k":2}}}]"#,
        ];
        let entries: &[&[(&str, &str)]] = &[
            &[("traceparent", "\"00-aa-bb-01\"")],
            &[("traceparent", "\"00-aa-bb-01\""), ("baggage", "\"k=v\"")],
            &[("x", "12345678901234567890")],
        ];
        for text in bodies {
            for e in entries {
                let mut body = Bytes::copy_from_slice(text.as_bytes());
                let parsed = classify(&body).unwrap();
                let mut edits = Vec::new();
                for m in parsed.messages().iter().rev() {
                    if m.kind() == crate::MessageKind::Request
                        || m.kind() == crate::MessageKind::Notification
                    {
                        let (b, mut ed) = set_meta_entries_with_edits(&body, m, e).unwrap();
                        body = b;
                        edits.append(&mut ed);
                    }
                }
                assert_eq!(
                    parsed.edited(&edits),
                    classify(&body).unwrap(),
                    "{text} {e:?}"
                );
            }
        }
    }

    #[test]
    fn batch_member_is_rewritten_alone() {
        let b = Bytes::from_static(
            br#"[{"jsonrpc":"2.0","id":1,"method":"a"},{"jsonrpc":"2.0","id":2,"method":"b","params":{}}]"#,
        );
        let p = classify(&b).unwrap();
        let out = set_meta_entries(&b, &p.messages()[1], &[("k", "1")]).unwrap();
        assert_eq!(
            &out[..],
            br#"[{"jsonrpc":"2.0","id":1,"method":"a"},{"jsonrpc":"2.0","id":2,"method":"b","params":{"_meta":{"k":1}}}]"#
        );
    }
}
