//! Server-Sent Events: an incremental decoder and an encoder.
//!
//! The decoder accepts bytes in chunks of any size (an event may be split anywhere, even
//! between `\r` and `\n`), understands LF, CR and CRLF line endings, comments, `event`, `data`,
//! `id` and `retry`, and holds at most `max_event_bytes` of one pending event — a peer that
//! never ends an event gets an error, not an ever-growing buffer.
//!
//! ```
//! use mcp_gateway_core::sse::{SseDecoder, SseItem};
//!
//! let mut dec = SseDecoder::new(64 * 1024);
//! let mut items = Vec::new();
//! dec.feed(b"id: 1\r\ndata: {\"a\":", &mut |i| items.push(i)).unwrap();
//! assert!(items.is_empty());
//! dec.feed(b"1}\r\n\r\n: keep-alive\n", &mut |i| items.push(i)).unwrap();
//! match &items[0] {
//!     SseItem::Event(e) => {
//!         assert_eq!(e.data, "{\"a\":1}");
//!         assert_eq!(e.id.as_deref(), Some("1"));
//!     }
//!     other => panic!("{other:?}"),
//! }
//! assert!(matches!(&items[1], SseItem::Comment(c) if c == " keep-alive"));
//! ```

use bytes::{BufMut, Bytes, BytesMut};

/// One event of a stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event` field (`None` means the default type, `message`).
    pub event: Option<String>,
    /// The `data` lines joined with `\n`.
    pub data: String,
    /// The `id` field.
    pub id: Option<String>,
    /// The `retry` field, in milliseconds.
    pub retry: Option<u64>,
}

impl SseEvent {
    /// An event with only `data`.
    pub fn data(data: impl Into<String>) -> Self {
        Self {
            data: data.into(),
            ..Self::default()
        }
    }

    /// The wire form of this event, ending with the blank line that dispatches it.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.data.len() + 32);
        if let Some(id) = &self.id {
            put_field(&mut out, "id", id);
        }
        if let Some(ev) = &self.event {
            put_field(&mut out, "event", ev);
        }
        if let Some(retry) = self.retry {
            put_field(&mut out, "retry", &retry.to_string());
        }
        if self.data.is_empty() && self.id.is_none() && self.event.is_none() && self.retry.is_none()
        {
            out.put_slice(b"data:\n");
        } else {
            for line in self.data.split('\n') {
                if !(self.data.is_empty() && (self.id.is_some() || self.retry.is_some())) {
                    put_field(&mut out, "data", line.trim_end_matches('\r'));
                }
            }
        }
        out.put_u8(b'\n');
        out.freeze()
    }
}

fn put_field(out: &mut BytesMut, name: &str, value: &str) {
    // A value must not contain line breaks: they would start a new field.
    let value = value.replace(['\r', '\n'], "");
    out.put_slice(name.as_bytes());
    out.put_slice(b": ");
    out.put_slice(value.as_bytes());
    out.put_u8(b'\n');
}

/// A comment line (`: text`), the usual keep-alive, encoded.
pub fn encode_comment(text: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(text.len() + 3);
    out.put_u8(b':');
    out.put_slice(text.replace(['\r', '\n'], " ").as_bytes());
    out.put_slice(b"\n\n");
    out.freeze()
}

/// What the decoder yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SseItem {
    /// A complete event.
    Event(SseEvent),
    /// A comment line, without the leading `:`.
    Comment(String),
}

/// Why a stream could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SseError {
    /// A single event (or line) grew past the configured bound.
    #[error("SSE event exceeds {0} bytes")]
    TooLarge(usize),
    /// A line is not valid UTF-8.
    #[error("SSE stream is not valid UTF-8")]
    Utf8,
}

/// An incremental SSE decoder with a bound on the size of one event.
#[derive(Debug)]
pub struct SseDecoder {
    line: BytesMut,
    pending: SseEvent,
    has_data: bool,
    has_fields: bool,
    pending_bytes: usize,
    skip_lf: bool,
    bom_checked: bool,
    max_event_bytes: usize,
}

impl SseDecoder {
    /// A decoder that refuses events larger than `max_event_bytes`.
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            line: BytesMut::new(),
            pending: SseEvent::default(),
            has_data: false,
            has_fields: false,
            pending_bytes: 0,
            skip_lf: false,
            bom_checked: false,
            max_event_bytes,
        }
    }

    /// Feeds a chunk; calls `emit` for every complete event or comment it finishes.
    pub fn feed(
        &mut self,
        mut chunk: &[u8],
        emit: &mut impl FnMut(SseItem),
    ) -> Result<(), SseError> {
        if !self.bom_checked && !chunk.is_empty() {
            let bom = b"\xEF\xBB\xBF";
            let have = self.line.len() + chunk.len();
            if have < bom.len() && bom.starts_with(&[&self.line[..], chunk].concat()) {
                self.line.extend_from_slice(chunk);
                return Ok(());
            }
            self.bom_checked = true;
            let mut joined = std::mem::take(&mut self.line);
            if !joined.is_empty() {
                joined.extend_from_slice(chunk);
                let rest = joined.strip_prefix(&bom[..]).unwrap_or(&joined).to_vec();
                return self.feed(&rest, emit);
            }
            chunk = chunk.strip_prefix(&bom[..]).unwrap_or(chunk);
        }
        while !chunk.is_empty() {
            if self.skip_lf {
                self.skip_lf = false;
                if chunk[0] == b'\n' {
                    chunk = &chunk[1..];
                    continue;
                }
            }
            match chunk.iter().position(|b| *b == b'\n' || *b == b'\r') {
                Some(pos) => {
                    self.append_line(&chunk[..pos])?;
                    if chunk[pos] == b'\r' {
                        self.skip_lf = true;
                    }
                    chunk = &chunk[pos + 1..];
                    let line = std::mem::take(&mut self.line);
                    self.process_line(&line, emit)?;
                }
                None => {
                    self.append_line(chunk)?;
                    chunk = &[];
                }
            }
        }
        Ok(())
    }

    /// Whether `chunk` may pass by this decoder untouched: it holds nothing of an unfinished
    /// line or event, and `chunk` is whole events and comments (it ends with a blank line)
    /// and does not start the stream with a byte order mark. Then it is taken as passed (a
    /// caller that relays events can send `chunk` on as it is) and true is returned; else
    /// nothing changes, and the chunk is to be [fed](Self::feed).
    pub fn pass(&mut self, chunk: &[u8]) -> bool {
        let idle = self.line.is_empty() && !self.has_fields && !self.skip_lf;
        let whole =
            chunk.ends_with(b"\n\n") || chunk.ends_with(b"\r\n\r\n") || chunk.ends_with(b"\r\r");
        let bom = !self.bom_checked && chunk.first() == Some(&0xEF);
        if idle && whole && !bom && chunk.len() <= self.max_event_bytes {
            self.bom_checked = true;
            true
        } else {
            false
        }
    }

    /// Ends the stream. A trailing event without its blank line is discarded, as the SSE
    /// standard requires; this returns true when that happened.
    pub fn finish(&mut self) -> bool {
        let incomplete = self.has_fields || !self.line.is_empty();
        self.line.clear();
        self.reset_event();
        incomplete
    }

    fn append_line(&mut self, part: &[u8]) -> Result<(), SseError> {
        if self.pending_bytes + self.line.len() + part.len() > self.max_event_bytes {
            return Err(SseError::TooLarge(self.max_event_bytes));
        }
        self.line.extend_from_slice(part);
        Ok(())
    }

    fn reset_event(&mut self) {
        self.pending = SseEvent::default();
        self.has_data = false;
        self.has_fields = false;
        self.pending_bytes = 0;
    }

    fn process_line(
        &mut self,
        line: &[u8],
        emit: &mut impl FnMut(SseItem),
    ) -> Result<(), SseError> {
        if line.is_empty() {
            if self.has_fields {
                let ev = std::mem::take(&mut self.pending);
                self.reset_event();
                emit(SseItem::Event(ev));
            }
            return Ok(());
        }
        let line = std::str::from_utf8(line).map_err(|_| SseError::Utf8)?;
        if let Some(comment) = line.strip_prefix(':') {
            emit(SseItem::Comment(comment.to_owned()));
            return Ok(());
        }
        let (field, value) = match line.find(':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(' ').unwrap_or(v))
            }
            None => (line, ""),
        };
        self.pending_bytes += line.len();
        match field {
            "data" => {
                if self.has_data {
                    self.pending.data.push('\n');
                }
                self.pending.data.push_str(value);
                self.has_data = true;
                self.has_fields = true;
            }
            "event" => {
                self.pending.event = Some(value.to_owned());
                self.has_fields = true;
            }
            "id" if !value.contains('\0') => {
                self.pending.id = Some(value.to_owned());
                self.has_fields = true;
            }
            "retry" => {
                if let Ok(ms) = value.parse::<u64>() {
                    self.pending.retry = Some(ms);
                    self.has_fields = true;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn decode_all(chunks: &[&[u8]]) -> Vec<SseItem> {
        let mut dec = SseDecoder::new(1 << 20);
        let mut out = Vec::new();
        for c in chunks {
            dec.feed(c, &mut |i| out.push(i)).unwrap();
        }
        out
    }

    fn events(items: Vec<SseItem>) -> Vec<SseEvent> {
        items
            .into_iter()
            .filter_map(|i| match i {
                SseItem::Event(e) => Some(e),
                SseItem::Comment(_) => None,
            })
            .collect()
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        let stream: &[u8] = b"\xEF\xBB\xBFretry: 500\r\nid: e1\r\n\r\nevent: message\ndata: {\"x\":1}\ndata: second\n\n:ping\r\rdata:nospace\r\r";
        let whole = decode_all(&[stream]);
        assert_eq!(events(whole.clone()).len(), 3);
        for i in 0..stream.len() {
            for j in i..stream.len() {
                let got = decode_all(&[&stream[..i], &stream[i..j], &stream[j..]]);
                assert_eq!(got, whole, "split at {i},{j}");
            }
        }
        let evs = events(whole);
        assert_eq!(evs[0].retry, Some(500));
        assert_eq!(evs[0].id.as_deref(), Some("e1"));
        assert_eq!(evs[0].data, "");
        assert_eq!(evs[1].data, "{\"x\":1}\nsecond");
        assert_eq!(evs[1].event.as_deref(), Some("message"));
        assert_eq!(evs[2].data, "nospace");
    }

    #[test]
    fn whole_events_pass_only_from_a_clean_state() {
        let mut d = SseDecoder::new(1024);
        // A byte order mark at the start is the decoder's to strip.
        assert!(!d.pass(b"\xEF\xBB\xBFdata: x\n\n"));
        let mut d = SseDecoder::new(1024);
        assert!(d.pass(b"data: x\n\n"));
        assert!(d.pass(b": c\r\n\r\n"));
        // Not ending on a blank line: fed.
        assert!(!d.pass(b"data: y\n"));
        // Half an event held: nothing passes until it is over.
        d.feed(b"data: y\n", &mut |_| {}).unwrap();
        assert!(!d.pass(b"\ndata: z\n\n"));
        let mut seen = Vec::new();
        d.feed(b"\n", &mut |i| seen.push(i)).unwrap();
        assert_eq!(seen.len(), 1);
        assert!(d.pass(b"data: z\n\n"));
        // Larger than an event may be: fed (and refused there).
        assert!(!SseDecoder::new(4).pass(b"data: x\n\n"));
    }

    #[test]
    fn bounded() {
        let mut dec = SseDecoder::new(16);
        let err = dec
            .feed(b"data: 0123456789012345678\n", &mut |_| {})
            .unwrap_err();
        assert_eq!(err, SseError::TooLarge(16));
        let mut dec = SseDecoder::new(16);
        dec.feed(b"data: 0123456789\n", &mut |_| {}).unwrap();
        assert!(dec.feed(b"data: 0123456789\n", &mut |_| {}).is_err());
    }

    #[test]
    fn unterminated_event_is_dropped_on_finish() {
        let mut dec = SseDecoder::new(1024);
        let mut n = 0;
        dec.feed(b"data: a\n\ndata: b\n", &mut |_| n += 1).unwrap();
        assert_eq!(n, 1);
        assert!(dec.finish());
    }

    #[test]
    fn encode_roundtrip() {
        for ev in [
            SseEvent::data("{\"a\":1}"),
            SseEvent {
                event: Some("message".into()),
                data: "l1\nl2".into(),
                id: Some("7".into()),
                retry: Some(10),
            },
            SseEvent {
                id: Some("priming".into()),
                retry: Some(3000),
                ..SseEvent::default()
            },
            SseEvent::default(),
        ] {
            let wire = ev.encode();
            let got = events(decode_all(&[&wire]));
            assert_eq!(
                got,
                vec![ev.clone()],
                "{:?}",
                String::from_utf8_lossy(&wire)
            );
        }
        assert_eq!(&encode_comment("keep-alive")[..], b":keep-alive\n\n");
    }
}
