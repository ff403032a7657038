//! Newline-delimited JSON-RPC over a child's stdout: one message per line, bounded.
//!
//! A line longer than the limit is never held whole: its bytes are discarded as they arrive,
//! and a small scanner picks out its top-level `id` on the way, so that the one call it
//! answers can fail with a clear error while the process keeps serving the others.

use bytes::{Bytes, BytesMut};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt};

/// One line of a child's stdout.
#[derive(Debug)]
pub(crate) enum Line {
    /// A complete line, without its newline (and without a trailing `\r`).
    Message(Bytes),
    /// A line over the limit, discarded: its top-level `id` (raw JSON text) when one was seen,
    /// and its length.
    Oversize { id: Option<Vec<u8>>, len: usize },
}

/// Splits a byte stream into lines of at most `limit` bytes.
pub(crate) struct LineReader<R> {
    inner: R,
    buf: BytesMut,
    /// Where the search for the next newline resumes (bytes before it have none).
    searched: usize,
    limit: usize,
    /// The line being discarded, when over the limit.
    discarding: Option<(IdScan, usize)>,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub(crate) fn new(inner: R, limit: usize) -> Self {
        Self {
            inner,
            buf: BytesMut::with_capacity(16 * 1024),
            searched: 0,
            limit,
            discarding: None,
        }
    }

    /// The next line, or `None` at the end of the stream (a last line without a newline is
    /// returned first).
    pub(crate) async fn next(&mut self) -> io::Result<Option<Line>> {
        loop {
            if let Some((scan, len)) = &mut self.discarding {
                if let Some(pos) = memchr_nl(&self.buf) {
                    scan.feed(&self.buf[..pos]);
                    let total = *len + pos;
                    let id = scan.id();
                    let _ = self.buf.split_to(pos + 1);
                    self.discarding = None;
                    self.searched = 0;
                    return Ok(Some(Line::Oversize { id, len: total }));
                }
                scan.feed(&self.buf);
                *len += self.buf.len();
                self.buf.clear();
            } else if let Some(pos) = memchr_nl(&self.buf[self.searched..]) {
                let end = self.searched + pos;
                let mut line = self.buf.split_to(end + 1);
                line.truncate(end);
                if line.last() == Some(&b'\r') {
                    line.truncate(end - 1);
                }
                self.searched = 0;
                if line.len() > self.limit {
                    let mut scan = IdScan::default();
                    scan.feed(&line);
                    return Ok(Some(Line::Oversize {
                        id: scan.id(),
                        len: line.len(),
                    }));
                }
                return Ok(Some(Line::Message(line.freeze())));
            } else if self.buf.len() > self.limit {
                let mut scan = IdScan::default();
                scan.feed(&self.buf);
                self.discarding = Some((scan, self.buf.len()));
                self.buf.clear();
                self.searched = 0;
            } else {
                self.searched = self.buf.len();
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(16 * 1024);
            }
            let n = self.inner.read_buf(&mut self.buf).await?;
            if n == 0 {
                if let Some((mut scan, len)) = self.discarding.take() {
                    scan.feed(&self.buf);
                    let len = len + self.buf.len();
                    self.buf.clear();
                    return Ok(Some(Line::Oversize { id: scan.id(), len }));
                }
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let line = self.buf.split().freeze();
                self.searched = 0;
                return Ok(Some(Line::Message(line)));
            }
        }
    }
}

fn memchr_nl(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

/// Finds the raw text of the top-level `"id"` member of a JSON object fed to it in pieces,
/// holding nothing else. Good enough to name the call an oversized answer belongs to; the
/// text is not validated beyond that.
#[derive(Default)]
pub(crate) struct IdScan {
    depth: u32,
    in_str: bool,
    escaped: bool,
    /// The next string at depth 1 is a key.
    at_key: bool,
    reading_key: bool,
    key: Vec<u8>,
    /// The key just read was `id`; its value follows the colon.
    key_is_id: bool,
    /// Reading the id's value.
    capture: Option<Vec<u8>>,
    id: Option<Vec<u8>>,
    /// Bytes fed so far, and where the id's value starts and ends among them.
    pos: usize,
    start: usize,
    span: Option<std::ops::Range<usize>>,
}

impl IdScan {
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.id.is_some() {
                return;
            }
            self.pos += 1;
            if self.in_str {
                if let Some(c) = &mut self.capture {
                    if c.len() < 256 {
                        c.push(b);
                    }
                }
                if self.escaped {
                    self.escaped = false;
                    self.key_push(b);
                } else if b == b'\\' {
                    self.escaped = true;
                    self.key_push(b);
                } else if b == b'"' {
                    self.in_str = false;
                    if self.reading_key {
                        self.reading_key = false;
                        self.key_is_id = self.key == b"id";
                    } else if self.depth == 1 {
                        self.finish();
                    }
                } else {
                    self.key_push(b);
                }
                continue;
            }
            match b {
                b'"' => {
                    self.in_str = true;
                    if self.depth == 1 && self.at_key {
                        self.reading_key = true;
                        self.at_key = false;
                        self.key.clear();
                    } else if let Some(c) = &mut self.capture {
                        if c.is_empty() {
                            self.start = self.pos - 1;
                        }
                        c.push(b);
                    }
                }
                b'{' | b'[' => {
                    self.depth += 1;
                    if self.depth == 1 {
                        self.at_key = b == b'{';
                    } else if self.depth == 2 {
                        // An object or array as the id: not a valid id.
                        self.capture = None;
                    }
                }
                b'}' | b']' => {
                    if self.depth == 1 {
                        self.finish();
                    }
                    self.depth = self.depth.saturating_sub(1);
                }
                b',' if self.depth == 1 => {
                    self.finish();
                    self.at_key = true;
                }
                b':' if self.depth == 1 => {
                    if self.key_is_id {
                        self.key_is_id = false;
                        self.capture = Some(Vec::new());
                    }
                }
                b' ' | b'\t' | b'\r' | b'\n' => {
                    if self.capture.as_ref().is_some_and(|c| !c.is_empty()) {
                        self.finish();
                    }
                }
                _ => {
                    if let Some(c) = &mut self.capture {
                        if c.is_empty() {
                            self.start = self.pos - 1;
                        }
                        if c.len() < 256 {
                            c.push(b);
                        }
                    }
                }
            }
        }
    }

    fn key_push(&mut self, b: u8) {
        if self.reading_key && self.key.len() < 8 {
            self.key.push(b);
        }
    }

    fn finish(&mut self) {
        if let Some(c) = self.capture.take() {
            if !c.is_empty() {
                // A string ends at its closing quote (fed); a literal at the byte after it.
                let end = if c.first() == Some(&b'"') {
                    self.pos
                } else {
                    self.pos - 1
                };
                self.span = Some(self.start..end);
                self.id = Some(c);
            }
        }
    }

    pub(crate) fn id(&self) -> Option<Vec<u8>> {
        self.id.clone()
    }
}

/// Where the top-level `id` value of one whole JSON object is (for text already known to be
/// valid JSON: a scan of its bytes, no parse).
pub(crate) fn id_span(text: &[u8]) -> Option<std::ops::Range<usize>> {
    let mut scan = IdScan::default();
    scan.feed(text);
    scan.span
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn scan(text: &str) -> Option<String> {
        let mut s = IdScan::default();
        for chunk in text.as_bytes().chunks(3) {
            s.feed(chunk);
        }
        s.id().map(|v| String::from_utf8(v).unwrap())
    }

    #[test]
    fn finds_the_top_level_id_wherever_it_is() {
        assert_eq!(
            scan(r#"{"jsonrpc":"2.0","id":17,"result":{"id":3}}"#).as_deref(),
            Some("17")
        );
        assert_eq!(
            scan(r#"{"result":{"id":3,"x":"\"id\":9"},"jsonrpc":"2.0","id":42}"#).as_deref(),
            Some("42")
        );
        assert_eq!(
            scan(r#"{ "id" : "a\"b" , "result":1}"#).as_deref(),
            Some(r#""a\"b""#)
        );
        assert_eq!(scan(r#"{"method":"x","params":{"id":1}}"#), None);
        assert_eq!(scan(r#"{"id":{"x":1}}"#), None);
    }

    #[test]
    fn spans_cover_the_id_value_exactly() {
        for text in [
            r#"{"jsonrpc":"2.0","id":17,"method":"m"}"#,
            r#"{"jsonrpc":"2.0","method":"m","params":{"id":3},"id":"a\"b"}"#,
            r#"{ "id" : 5 }"#,
            r#"{"id":-1.5e3}"#,
        ] {
            let r = id_span(text.as_bytes()).unwrap();
            let want: serde_json::Value = serde_json::from_str(text).unwrap();
            let got: serde_json::Value = serde_json::from_str(&text[r]).unwrap();
            assert_eq!(got, want["id"], "{text}");
        }
        assert!(id_span(br#"{"method":"m"}"#).is_none());
    }

    #[tokio::test]
    async fn splits_lines_and_discards_oversized_ones() {
        let big = format!("{{\"result\":\"{}\",\"id\":7}}", "x".repeat(100));
        let text = format!("{{\"id\":1}}\r\n{big}\n{{\"id\":2}}\nlast");
        let mut r = LineReader::new(text.as_bytes(), 50);
        assert!(
            matches!(r.next().await.unwrap(), Some(Line::Message(m)) if &m[..] == b"{\"id\":1}")
        );
        match r.next().await.unwrap() {
            Some(Line::Oversize { id, len }) => {
                assert_eq!(id.as_deref(), Some(&b"7"[..]));
                assert_eq!(len, big.len());
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(r.next().await.unwrap(), Some(Line::Message(m)) if &m[..] == b"{\"id\":2}")
        );
        assert!(matches!(r.next().await.unwrap(), Some(Line::Message(m)) if &m[..] == b"last"));
        assert!(r.next().await.unwrap().is_none());
    }
}
