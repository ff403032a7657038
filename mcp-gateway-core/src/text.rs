//! [`Text`]: a short string kept inline, for the few names classification keeps per message
//! (method, tool name, protocol version, request id): most are a few bytes, and a heap
//! allocation for each, per call, showed in the pass-through profile.

use std::fmt;
use std::hash::{Hash, Hasher};

/// Bytes kept inline; longer strings go to the heap.
const INLINE: usize = 22;

/// An immutable string, inline when short.
#[derive(Clone)]
pub(crate) enum Text {
    Inline { len: u8, buf: [u8; INLINE] },
    Heap(Box<str>),
}

impl Text {
    pub(crate) fn new(s: &str) -> Self {
        if s.len() <= INLINE {
            let mut buf = [0; INLINE];
            buf[..s.len()].copy_from_slice(s.as_bytes());
            // `len` fits: it is at most INLINE.
            Self::Inline {
                len: s.len() as u8,
                buf,
            }
        } else {
            Self::Heap(s.into())
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            // Always whole UTF-8: the bytes were copied from a `&str`.
            Self::Inline { len, buf } => std::str::from_utf8(&buf[..*len as usize]).unwrap_or(""),
            Self::Heap(s) => s,
        }
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        if s.len() <= INLINE {
            Self::new(&s)
        } else {
            Self::Heap(s.into_boxed_str())
        }
    }
}

impl From<std::borrow::Cow<'_, str>> for Text {
    fn from(s: std::borrow::Cow<'_, str>) -> Self {
        match s {
            std::borrow::Cow::Borrowed(b) => Self::new(b),
            std::borrow::Cow::Owned(o) => o.into(),
        }
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Text {}

impl Hash for Text {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::Text;

    #[test]
    fn short_and_long() {
        for s in [
            "",
            "tools/call",
            "notifications/initialized",
            "é✓ mixed",
            &"x".repeat(22),
            &"y".repeat(23),
        ] {
            let t = Text::from(s);
            assert_eq!(t.as_str(), s);
            assert_eq!(t, Text::from(s.to_owned()));
            assert_eq!(format!("{t:?}"), format!("{s:?}"));
        }
    }
}
