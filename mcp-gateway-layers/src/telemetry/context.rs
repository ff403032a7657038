//! W3C Trace Context (`traceparent`, `tracestate`) and W3C Baggage values, as they travel in
//! HTTP headers and in `params._meta` (SEP-414).

use opentelemetry::trace::{SpanId, TraceFlags, TraceId};
use serde::Deserialize;
use std::borrow::Cow;

/// The largest `tracestate` passed on (the W3C limit is 32 members of at most 256 bytes;
/// 512 bytes is what the specification asks propagators to keep at least).
const MAX_TRACESTATE: usize = 4096;
/// The largest `baggage` passed on (W3C Baggage: at least 8192 bytes must be kept).
const MAX_BAGGAGE: usize = 8192;

/// A parsed `traceparent`: trace id, parent span id and flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace id (never all zeros).
    pub trace_id: TraceId,
    /// The span id of the caller (never all zeros).
    pub span_id: SpanId,
    /// The trace flags (bit 0: sampled).
    pub flags: TraceFlags,
}

fn hex_nibble(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = hex_nibble(pair[0])? << 4 | hex_nibble(pair[1])?;
    }
    Some(out)
}

impl TraceParent {
    /// Parses a `traceparent` value as W3C Trace Context level 1 says: lowercase hex,
    /// version `00` exactly 55 characters; a higher version is read by its first four fields
    /// (forward compatibility); version `ff`, all-zero ids and upper-case hex are invalid.
    pub fn parse(value: &str) -> Option<Self> {
        let v = value.trim().as_bytes();
        if v.len() < 55 {
            return None;
        }
        let version = hex::<1>(&v[0..2])?[0];
        if version == 0xff || (version == 0 && v.len() != 55) {
            return None;
        }
        if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
            return None;
        }
        if v.len() > 55 && v[55] != b'-' {
            return None;
        }
        let trace_id = TraceId::from_bytes(hex::<16>(&v[3..35])?);
        let span_id = SpanId::from_bytes(hex::<8>(&v[36..52])?);
        let flags = TraceFlags::new(hex::<1>(&v[53..55])?[0]);
        if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            flags,
        })
    }

    /// The value to send: `00-{trace id}-{span id}-{flags}`.
    pub fn format(&self) -> String {
        let mut s = String::with_capacity(55);
        s.push_str("00-");
        crate::ascii::push_hex(&mut s, &self.trace_id.to_bytes());
        s.push('-');
        crate::ascii::push_hex(&mut s, &self.span_id.to_bytes());
        s.push('-');
        // Only the sampled bit is defined for version 00 senders.
        crate::ascii::push_hex(&mut s, &[self.flags.to_u8() & 1]);
        s
    }

    /// True when the caller sampled its span.
    pub fn is_sampled(&self) -> bool {
        self.flags.is_sampled()
    }
}

/// The trace context a request carries: `traceparent`, and the `tracestate` and `baggage`
/// that go with it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Carried {
    /// The parent, when a valid `traceparent` was sent.
    pub parent: Option<TraceParent>,
    /// `tracestate`, passed on unchanged (only with a valid parent).
    pub tracestate: Option<String>,
    /// `baggage`, passed on unchanged.
    pub baggage: Option<String>,
}

fn printable(s: &str, max: usize) -> Option<String> {
    let s = s.trim();
    (!s.is_empty() && s.len() <= max && s.bytes().all(|b| (0x20..0x7f).contains(&b)))
        .then(|| s.to_owned())
}

impl Carried {
    /// From HTTP headers (`traceparent`, `tracestate`, `baggage`). Repeated `tracestate` and
    /// `baggage` headers are joined with commas, as the specifications say.
    pub fn from_headers(headers: &http::HeaderMap) -> Self {
        let parent = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(TraceParent::parse);
        let joined = |name: &str, max: usize| {
            let mut out: Option<String> = None;
            for v in headers.get_all(name) {
                let v = v.to_str().ok()?;
                match &mut out {
                    Some(s) => {
                        s.push(',');
                        s.push_str(v);
                    }
                    None => out = Some(v.to_owned()),
                }
            }
            out.and_then(|s| printable(&s, max))
        };
        Self {
            tracestate: parent.and_then(|_| joined("tracestate", MAX_TRACESTATE)),
            baggage: joined("baggage", MAX_BAGGAGE),
            parent,
        }
    }

    /// From the text of a message's `params._meta` object (SEP-414: unprefixed
    /// `traceparent`, `tracestate`, `baggage`, string values). Anything else is ignored.
    pub fn from_meta(meta: &[u8]) -> Self {
        #[derive(Deserialize)]
        struct Keys<'a> {
            #[serde(borrow, default)]
            traceparent: Option<Cow<'a, str>>,
            #[serde(borrow, default)]
            tracestate: Option<Cow<'a, str>>,
            #[serde(borrow, default)]
            baggage: Option<Cow<'a, str>>,
        }
        // Values of another type (a number, say) make the whole read fail: treat as absent.
        let Ok(keys) = serde_json::from_slice::<Keys<'_>>(meta) else {
            return Self::default();
        };
        let parent = keys.traceparent.as_deref().and_then(TraceParent::parse);
        Self {
            tracestate: parent
                .and(keys.tracestate.as_deref())
                .and_then(|s| printable(s, MAX_TRACESTATE)),
            baggage: keys
                .baggage
                .as_deref()
                .and_then(|s| printable(s, MAX_BAGGAGE)),
            parent,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        let v = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let p = TraceParent::parse(v).unwrap();
        assert!(p.is_sampled());
        assert_eq!(p.format(), v);
        let unsampled = TraceParent::parse(&v.replace("-01", "-00")).unwrap();
        assert!(!unsampled.is_sampled());
        // A future version with more fields is read by its first four.
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-extra";
        let p = TraceParent::parse(future).unwrap();
        assert!(p.is_sampled());
        assert_eq!(p.format(), v);
    }

    #[test]
    fn rejects_invalid() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn reads_meta_and_headers() {
        let meta = br#"{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","tracestate":"a=1","baggage":"k=v","other":{"x":1}}"#;
        let c = Carried::from_meta(meta);
        assert!(c.parent.is_some());
        assert_eq!(c.tracestate.as_deref(), Some("a=1"));
        assert_eq!(c.baggage.as_deref(), Some("k=v"));
        // tracestate without a valid parent is dropped; baggage stands alone.
        let c =
            Carried::from_meta(br#"{"traceparent":"bogus","tracestate":"a=1","baggage":"k=v"}"#);
        assert_eq!(c.parent, None);
        assert_eq!(c.tracestate, None);
        assert_eq!(c.baggage.as_deref(), Some("k=v"));
        assert_eq!(
            Carried::from_meta(br#"{"traceparent":7}"#),
            Carried::default()
        );

        let mut h = http::HeaderMap::new();
        h.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
                .parse()
                .unwrap(),
        );
        h.append("tracestate", "a=1".parse().unwrap());
        h.append("tracestate", "b=2".parse().unwrap());
        let c = Carried::from_headers(&h);
        assert!(!c.parent.unwrap().is_sampled());
        assert_eq!(c.tracestate.as_deref(), Some("a=1,b=2"));
    }
}
