//! Counting tokens: the [`TokenCounter`] trait, a fast default estimate ([`ByteEstimate`]),
//! and closures.
//!
//! The gateway counts the tokens a model would spend reading a tool call's arguments (input)
//! and its result (output). An exact count depends on the model's tokenizer; the default
//! estimate — one token per four bytes, the usual rule of thumb for English and JSON — costs
//! nothing and never under-counts binary-heavy results by much. A server that reports its own
//! usage in `result._meta` is believed over any estimate.
//!
//! ```
//! use mcp_gateway_layers::limit::{ByteEstimate, TokenCounter};
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
