//! Merged-list cursors: every upstream's own cursor (or that it is done), sealed with
//! ChaCha20-Poly1305 so that a client can neither read nor forge one. A cursor is bound to the
//! virtual server, its upstreams and the list it continues.
//!
//! Sealing is deterministic (the nonce is a keyed hash of what is sealed, as in SIV
//! constructions): the same state always gives the same cursor, so listing the same state
//! twice gives byte-identical answers, and a nonce is never used for two different states.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};
use std::time::SystemTime;

/// The longest cursor text accepted.
const MAX_CURSOR: usize = 64 * 1024;

/// Where one upstream's list stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Position {
    /// Its next page is asked with this cursor.
    Next(String),
    /// It has nothing more (or failed and was omitted).
    Done,
}

/// Seals and opens cursors with one key.
pub struct CursorKey {
    key: LessSafeKey,
    /// Keys the hash that makes each state's nonce.
    nonce_key: [u8; 32],
}

impl std::fmt::Debug for CursorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorKey(..)")
    }
}

/// Why a cursor does not open.
#[derive(Debug, PartialEq, Eq)]
pub enum CursorError {
    /// Not one this gateway sealed for this list (forged, altered, another list's or another
    /// key's).
    Invalid,
    /// Sealed for another set of upstreams (the virtual server's configuration changed).
    Stale,
}

impl CursorKey {
    /// A key derived from 32 secret bytes (the sessions key, so that every replica opens the
    /// cursors any of them sealed).
    pub fn from_secret(secret: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(b"mcp-gateway/virtual-cursor\0");
        h.update(secret);
        let bytes = h.finalize();
        Self::from_bytes(&bytes)
    }

    /// A random key, for this process only.
    pub fn random() -> Self {
        let mut bytes = [0u8; 32];
        // The system generator failing leaves no safe key: an all-zero key would be forgeable,
        // so a key that no one knows is made from the clock and addresses instead.
        if SystemRandom::new().fill(&mut bytes).is_err() {
            let mut h = Sha256::new();
            h.update(format!("{:?}{:p}", SystemTime::now(), &bytes).as_bytes());
            bytes.copy_from_slice(&h.finalize());
        }
        Self::from_bytes(&bytes)
    }

    fn from_bytes(bytes: &[u8]) -> Self {
        let key = UnboundKey::new(&CHACHA20_POLY1305, bytes).map_or_else(
            |_| unreachable!("a 32-byte key is a ChaCha20-Poly1305 key"),
            LessSafeKey::new,
        );
        let mut h = Sha256::new();
        h.update(b"mcp-gateway/virtual-cursor-nonce\0");
        h.update(bytes);
        Self {
            key,
            nonce_key: h.finalize().into(),
        }
    }

    /// The nonce of `plain` sealed with `aad`: a keyed hash of both.
    fn nonce(&self, aad: &[u8], plain: &[u8]) -> [u8; NONCE_LEN] {
        let mut h = Sha256::new();
        h.update(self.nonce_key);
        h.update((aad.len() as u64).to_be_bytes());
        h.update(aad);
        h.update(plain);
        let d = h.finalize();
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(&d[..NONCE_LEN]);
        n
    }

    /// Seals `positions` for list `list` of virtual server `server`, whose upstreams are
    /// `upstreams` (a cursor of another set of upstreams is stale).
    pub fn seal(
        &self,
        server: &str,
        list: &str,
        upstreams: &str,
        positions: &[Position],
    ) -> Option<String> {
        let state: Vec<Option<&str>> = positions
            .iter()
            .map(|p| match p {
                Position::Next(c) => Some(c.as_str()),
                Position::Done => None,
            })
            .collect();
        self.seal_value(server, list, upstreams, &state)
    }

    /// Seals any `value` for `purpose` (a list's method, `"task"`) of `server` over
    /// `upstreams`: the handles the gateway mints and clients echo back.
    pub fn seal_value<T: serde::Serialize>(
        &self,
        server: &str,
        purpose: &str,
        upstreams: &str,
        value: &T,
    ) -> Option<String> {
        let mut buf = serde_json::to_vec(&(upstreams, value)).ok()?;
        let list = purpose;
        let nonce = self.nonce(&aad(server, list), &buf);
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(server, list)),
                &mut buf,
            )
            .ok()?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Some(URL_SAFE_NO_PAD.encode(out))
    }

    /// Opens a cursor sealed for list `list` of `server` over `upstreams`.
    pub fn open(
        &self,
        server: &str,
        list: &str,
        upstreams: &str,
        text: &str,
    ) -> Result<Vec<Position>, CursorError> {
        let state: Vec<Option<String>> = self.open_value(server, list, upstreams, text)?;
        Ok(state
            .into_iter()
            .map(|c| c.map_or(Position::Done, Position::Next))
            .collect())
    }

    /// Opens what [`seal_value`](Self::seal_value) sealed for `purpose`.
    pub fn open_value<T: serde::de::DeserializeOwned>(
        &self,
        server: &str,
        purpose: &str,
        upstreams: &str,
        text: &str,
    ) -> Result<T, CursorError> {
        let list = purpose;
        if text.len() > MAX_CURSOR {
            return Err(CursorError::Invalid);
        }
        let mut raw = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| CursorError::Invalid)?;
        if raw.len() < NONCE_LEN + 16 {
            return Err(CursorError::Invalid);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&raw[..NONCE_LEN]);
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(server, list)),
                &mut raw[NONCE_LEN..],
            )
            .map_err(|_| CursorError::Invalid)?;
        let (sealed_for, value): (String, T) =
            serde_json::from_slice(plain).map_err(|_| CursorError::Invalid)?;
        if sealed_for != upstreams {
            return Err(CursorError::Stale);
        }
        Ok(value)
    }
}

fn aad(server: &str, list: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(server.len() + list.len() + 1);
    v.extend_from_slice(server.as_bytes());
    v.push(0);
    v.extend_from_slice(list.as_bytes());
    v
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let k = CursorKey::random();
        let pos = vec![Position::Next("p2".into()), Position::Done];
        let c = k.seal("all", "tools/list", "a,b", &pos).unwrap();
        assert_eq!(k.open("all", "tools/list", "a,b", &c).unwrap(), pos);
        // Deterministic: the same state, the same cursor; another state, another nonce.
        assert_eq!(k.seal("all", "tools/list", "a,b", &pos).unwrap(), c);
        let other = k
            .seal(
                "all",
                "tools/list",
                "a,b",
                &[Position::Next("p3".into()), Position::Done],
            )
            .unwrap();
        assert_ne!(other[..16], c[..16]);
        assert_eq!(
            k.open("other", "tools/list", "a,b", &c),
            Err(CursorError::Invalid)
        );
        assert_eq!(
            k.open("all", "prompts/list", "a,b", &c),
            Err(CursorError::Invalid)
        );
        assert_eq!(
            k.open("all", "tools/list", "a,b,c", &c),
            Err(CursorError::Stale)
        );
        assert_eq!(
            CursorKey::random().open("all", "tools/list", "a,b", &c),
            Err(CursorError::Invalid)
        );
        let mut forged = c.clone();
        forged.replace_range(20..21, if &c[20..21] == "A" { "B" } else { "A" });
        assert_eq!(
            k.open("all", "tools/list", "a,b", &forged),
            Err(CursorError::Invalid)
        );
        assert_eq!(
            k.open("all", "tools/list", "a,b", "p2"),
            Err(CursorError::Invalid)
        );
        // Two keys from the same secret open each other's cursors (replicas).
        let (a, b) = (CursorKey::from_secret(b"s"), CursorKey::from_secret(b"s"));
        let c = a.seal("all", "tools/list", "a,b", &pos).unwrap();
        assert_eq!(b.open("all", "tools/list", "a,b", &c).unwrap(), pos);
    }
}
