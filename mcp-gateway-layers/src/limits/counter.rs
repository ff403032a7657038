//! Counting tokens: the [`TokenCounter`] trait, a fast default estimate ([`ByteEstimate`]),
//! and closures.
//!
//! With the `limits-tiktoken` feature, `Tiktoken` counts exactly with OpenAI's BPE vocabularies
//! (`o200k_base`, `cl100k_base`). It costs about as much as the model's own tokenizer — on the
//! task that streams the response — so prefer the estimate unless budgets must be exact.
//!
//! The gateway counts the tokens a model would spend reading a tool call's arguments (input)
//! and its result (output). An exact count depends on the model's tokenizer; the default
//! estimate — one token per four bytes, the usual rule of thumb for English and JSON — costs
//! nothing and never under-counts binary-heavy results by much. A server that reports its own
//! usage in `result._meta` is believed over any estimate.
//!
//! ```
//! use mcp_gateway_layers::limits::{ByteEstimate, TokenCounter};
//!
//! assert_eq!(ByteEstimate.count(b"12345678"), 2);
//! assert_eq!(ByteEstimate.count(b"123456789"), 3);
//! // Any `Fn(&[u8]) -> u64` is a counter too.
//! let words = |text: &[u8]| text.split(|b| *b == b' ').count() as u64;
//! assert_eq!(words.count(b"one two three"), 3);
//! ```

/// Counts the tokens in a piece of JSON text (arguments or a result).
pub trait TokenCounter: Send + Sync + 'static {
    /// The number of tokens `text` stands for.
    fn count(&self, text: &[u8]) -> u64;
}

/// One token per four bytes, rounded up: fast, and close for English text and JSON.
#[derive(Clone, Copy, Debug, Default)]
pub struct ByteEstimate;

impl TokenCounter for ByteEstimate {
    fn count(&self, text: &[u8]) -> u64 {
        (text.len() as u64).div_ceil(4)
    }
}

impl<F> TokenCounter for F
where
    F: Fn(&[u8]) -> u64 + Send + Sync + 'static,
{
    fn count(&self, text: &[u8]) -> u64 {
        self(text)
    }
}

/// Exact counts with an OpenAI BPE vocabulary (`tiktoken-rs`). Text that is not UTF-8 is
/// counted after lossy conversion.
#[cfg(feature = "limits-tiktoken")]
#[derive(Clone, Copy)]
pub struct Tiktoken(&'static tiktoken_rs::CoreBPE);

#[cfg(feature = "limits-tiktoken")]
impl std::fmt::Debug for Tiktoken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tiktoken").finish_non_exhaustive()
    }
}

#[cfg(feature = "limits-tiktoken")]
impl Tiktoken {
    /// `o200k_base` (GPT-4o and later). The vocabulary is loaded once per process.
    pub fn o200k_base() -> Self {
        Self(tiktoken_rs::o200k_base_singleton())
    }
    /// `cl100k_base` (GPT-4, GPT-3.5). The vocabulary is loaded once per process.
    pub fn cl100k_base() -> Self {
        Self(tiktoken_rs::cl100k_base_singleton())
    }
}

#[cfg(feature = "limits-tiktoken")]
impl TokenCounter for Tiktoken {
    fn count(&self, text: &[u8]) -> u64 {
        let text = String::from_utf8_lossy(text);
        self.0.encode_ordinary(&text).len() as u64
    }
}

#[cfg(all(test, feature = "limits-tiktoken"))]
mod tests {
    use super::*;

    #[test]
    fn tiktoken_counts_exactly() {
        let t = Tiktoken::cl100k_base();
        // "hello world" is two tokens in cl100k_base.
        assert_eq!(t.count(b"hello world"), 2);
        assert!(Tiktoken::o200k_base().count(br#"{"text":"hello world"}"#) > 2);
    }
}
