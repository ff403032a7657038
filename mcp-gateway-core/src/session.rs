//! How logs name a legacy MCP session: by a **handle**, never by the id a client presents.
//!
//! A session id (`Mcp-Session-Id`) is a bearer credential: whoever holds it may continue the
//! session. The access log, the audit log and the spans therefore never hold one. They name
//! a session by [`handle_of`] its id — 24 lowercase hex characters — which is the same for
//! every request of the session, so a session's start can be joined to its calls, and which
//! cannot be presented in place of the id.
//!
//! ```
//! use mcp_gateway_core::session::handle_of;
//!
//! let h = handle_of("4b1f0c1d-7a40-4e1e-9d6c-2f7b1a0c9e55");
//! assert_eq!(h.len(), 24);
//! assert!(h.bytes().all(|b| b.is_ascii_hexdigit()));
//! assert_eq!(h, handle_of("4b1f0c1d-7a40-4e1e-9d6c-2f7b1a0c9e55"));
//! ```

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// The version byte a sealed id starts with.
const SEALED_VERSION: u8 = 1;
/// The shortest sealed id, decoded: version (1), key id (4), nonce (12), claims (24), tag (16).
const SEALED_MIN: usize = 1 + 4 + 12 + 24 + 16;
/// The longest id text looked into as a sealed id (the gateway refuses longer sealed ids).
const SEALED_MAX_TEXT: usize = 1024;
/// Bytes in a handle (24 hex characters).
const HANDLE_LEN: usize = 12;

/// The handle that names the session `id` in logs, audit records and spans: 24 lowercase hex
/// characters, never the id itself.
///
/// - A **sealed** id — one the gateway's session layer issued: base64url without padding of
///   `version 0x01 | key id (4) | nonce (12) | sealed claims (24 + upstream id) | tag (16)` —
///   is named by its nonce in hex. That is the handle SessionAffinity keeps the session under
///   in its store (and writes to the per-request record), whether or not the id still opens:
///   so a call refused before SessionAffinity (a 429 from limits, say) is named like the
///   session's other calls. The nonce is public (it travels in clear in the id) and alone
///   does not open anything.
/// - Any other id — an upstream's own id, passed through when no session layer is in the
///   route — is named by the first 96 bits of SHA-256 over a fixed label and the id. It is
///   a one-way digest: it names the session consistently, and an upstream id cannot be
///   recovered from it. (A stable, non-reversible hash is what this needs; std's
///   `DefaultHasher` is neither specified nor stable across Rust releases, and a
///   non-cryptographic hash such as FNV can be inverted.)
///
/// An id that merely looks sealed (an upstream id of that shape) is named by its bytes 5..17:
/// still the same handle for every request of its session, and still not the whole id.
pub fn handle_of(id: &str) -> String {
    if let Some(nonce) = sealed_nonce(id) {
        return hex(&nonce);
    }
    let mut h = Sha256::new();
    h.update(b"mcp-gateway session handle\0");
    h.update(id.as_bytes());
    hex(&h.finalize()[..HANDLE_LEN])
}

/// The nonce of an id with the sealed layout, decoded on the stack.
fn sealed_nonce(id: &str) -> Option<[u8; HANDLE_LEN]> {
    if id.len() > SEALED_MAX_TEXT || id.len() < SEALED_MIN * 4 / 3 {
        return None;
    }
    let mut space = [0u8; SEALED_MAX_TEXT / 4 * 3 + 3];
    let n = URL_SAFE_NO_PAD.decode_slice(id, &mut space).ok()?;
    let buf = &space[..n];
    if n < SEALED_MIN || buf[0] != SEALED_VERSION {
        return None;
    }
    let mut nonce = [0u8; HANDLE_LEN];
    nonce.copy_from_slice(&buf[5..5 + HANDLE_LEN]);
    Some(nonce)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed_like(nonce: [u8; 12], upstream: &[u8]) -> String {
        let mut buf = vec![SEALED_VERSION, 0xde, 0xad, 0xbe, 0xef];
        buf.extend_from_slice(&nonce);
        buf.extend_from_slice(&[7u8; 24]);
        buf.extend_from_slice(upstream);
        buf.extend_from_slice(&[9u8; 16]);
        URL_SAFE_NO_PAD.encode(buf)
    }

    #[test]
    fn a_sealed_id_is_named_by_its_nonce() {
        let nonce = [0, 1, 15, 16, 171, 255, 7, 112, 128, 156, 222, 42];
        for upstream in [&b""[..], b"4b1f0c1d-7a40-4e1e-9d6c-2f7b1a0c9e55"] {
            let id = sealed_like(nonce, upstream);
            assert_eq!(handle_of(&id), "00010f10abff0770809cde2a");
        }
    }

    #[test]
    fn other_ids_are_named_by_a_digest() {
        for id in [
            "",
            "4b1f0c1d-7a40-4e1e-9d6c-2f7b1a0c9e55",
            // Sealed in shape but for its version byte, or one byte short.
            &{
                let mut s = sealed_like([3; 12], b"x");
                s.replace_range(0..1, "E");
                s
            },
            &sealed_like([3; 12], b"")[..75],
            // Not base64url.
            &"a+b/".repeat(40),
            &"x".repeat(5000),
        ] {
            let h = handle_of(id);
            assert_eq!(h.len(), 24, "{id}");
            assert!(h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
            assert_eq!(h, handle_of(id));
            assert!(!id.contains(&h));
            assert_ne!(h, "030303030303030303030303");
        }
        // Pinned: the digest must not change between releases, or logs would stop joining.
        assert_eq!(
            handle_of("4b1f0c1d-7a40-4e1e-9d6c-2f7b1a0c9e55"),
            "1d22da47b47c6fa8803fcc83"
        );
        assert_ne!(handle_of("a"), handle_of("b"));
    }
}
