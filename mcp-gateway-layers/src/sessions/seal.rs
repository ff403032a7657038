//! Sealed session ids: ChaCha20-Poly1305 (`ring::aead`) over what the gateway needs to route a
//! session, so that any replica holding the key can route it and nobody else can read or
//! forge one.
//!
//! Layout of the id the client sees (base64url, no padding):
//!
//! ```text
//! version (1) | key id (4) | nonce (12) | AEAD( instance (8) | issued ms (8) | principal (8) | upstream id ) | tag (16)
//! ```
//!
//! The version, key id and nonce are in clear and authenticated as associated data, together
//! with the scope (the route name), so an id issued for one route does not open on another.
//! The nonce is random per id (96 bits) and doubles as the session's handle in the
//! [`SessionStore`](super::SessionStore).

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

const VERSION: u8 = 1;
const HEADER: usize = 1 + 4 + NONCE_LEN;
const CLAIMS: usize = 8 + 8 + 8;
const TAG: usize = 16;
/// The longest id text accepted: longer ones are refused before any decoding.
pub(crate) const MAX_ID_LEN: usize = 1024;

/// A 256-bit session key. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct SessionKey([u8; 32]);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKey").finish_non_exhaustive()
    }
}

/// Why a key could not be made or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The text is not base64.
    #[error("a session key is base64 text: {0}")]
    NotBase64(String),
    /// The key is not 32 bytes.
    #[error("a session key is 32 bytes, this one is {0}")]
    WrongLength(usize),
    /// The system's random source failed.
    #[error("the system's random source failed")]
    Random,
    /// A key file could not be read, or does not hold a key.
    #[error("{message}")]
    File {
        /// The file.
        path: String,
        /// What went wrong, naming the file.
        message: String,
    },
}

impl SessionKey {
    /// A new random key (from the operating system's random source).
    pub fn generate() -> Result<Self, KeyError> {
        let mut k = [0u8; 32];
        SystemRandom::new()
            .fill(&mut k)
            .map_err(|_| KeyError::Random)?;
        Ok(Self(k))
    }

    /// The key's bytes, for keys derived from it inside the crate.
    #[cfg(feature = "federation")]
    pub(crate) fn secret(&self) -> &[u8] {
        &self.0
    }

    /// A key from its bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Reads a key file's text: base64 (standard or URL-safe, padding optional) of 32 bytes;
    /// surrounding whitespace is ignored.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let t = text.trim();
        let bytes = STANDARD
            .decode(t)
            .or_else(|_| URL_SAFE_NO_PAD.decode(t.trim_end_matches('=')))
            .map_err(|e| KeyError::NotBase64(e.to_string()))?;
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::WrongLength(bytes.len()))?;
        Ok(Self(arr))
    }

    /// Reads a key file (as `mcp-gateway keygen` writes it: base64 of 32 bytes); an error
    /// names the file.
    ///
    /// ```no_run
    /// use mcp_gateway_layers::sessions::SessionKey;
    /// let key = SessionKey::load("/etc/mcp-gateway/session.key")?;
    /// # Ok::<(), mcp_gateway_layers::sessions::KeyError>(())
    /// ```
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Self, KeyError> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| KeyError::File {
            message: format!("cannot read {shown}: {e}"),
            path: shown.clone(),
        })?;
        Self::from_base64(&text).map_err(|e| KeyError::File {
            message: format!("{shown}: {e}"),
            path: shown.clone(),
        })
    }

    /// The key as a key file holds it (standard base64, padded).
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// A short public fingerprint of the key (its id in sealed session ids, hex), for logs.
    pub fn fingerprint(&self) -> String {
        self.id().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn id(&self) -> [u8; 4] {
        let d = ring::digest::digest(
            &ring::digest::SHA256,
            &[b"mcp-gateway session key id\0".as_slice(), &self.0].concat(),
        );
        let mut id = [0u8; 4];
        id.copy_from_slice(&d.as_ref()[..4]);
        id
    }
}

/// What a sealed id carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// The instance that owns the session (a hash of its name).
    pub instance: u64,
    /// When the id was issued, in milliseconds since the Unix epoch.
    pub issued_ms: u64,
    /// A digest of the caller's principal (0: none known).
    pub principal: u64,
    /// The upstream's own session id.
    pub upstream: Box<str>,
}

/// Why an id did not open. All of them are answered the same way (404): the distinction is
/// for logs and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Not an id this gateway could have issued (length, encoding, version).
    #[error("malformed session id")]
    Malformed,
    /// Sealed with a key this gateway does not hold.
    #[error("session id sealed with an unknown key")]
    UnknownKey,
    /// Authentication failed: forged or tampered with.
    #[error("session id does not authenticate")]
    Forged,
}

struct Sealer {
    id: [u8; 4],
    key: LessSafeKey,
}

impl Sealer {
    fn new(k: &SessionKey) -> Self {
        let key = LessSafeKey::new(
            UnboundKey::new(&CHACHA20_POLY1305, &k.0).expect("a 32-byte key fits ChaCha20"),
        );
        Self { id: k.id(), key }
    }
}

/// The current key and the previous ones still accepted: seals and opens session ids. Keys
/// are expanded once, here: no key derivation happens per request.
pub struct Keyring {
    current: Sealer,
    previous: Vec<Sealer>,
    rng: SystemRandom,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("previous", &self.previous.len())
            .finish_non_exhaustive()
    }
}

impl Keyring {
    /// Seals with `current`; opens ids sealed with `current` or any of `previous`.
    pub fn new(current: &SessionKey, previous: &[SessionKey]) -> Self {
        Self {
            current: Sealer::new(current),
            previous: previous.iter().map(Sealer::new).collect(),
            rng: SystemRandom::new(),
        }
    }

    /// Seals `claims` for `scope`; returns the id text and its handle (nonce).
    pub fn seal(
        &self,
        claims: &Claims,
        scope: &[u8],
    ) -> Result<(String, [u8; NONCE_LEN]), KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| KeyError::Random)?;
        let mut buf = Vec::with_capacity(HEADER + CLAIMS + claims.upstream.len() + TAG);
        buf.push(VERSION);
        buf.extend_from_slice(&self.current.id);
        buf.extend_from_slice(&nonce);
        buf.extend_from_slice(&claims.instance.to_be_bytes());
        buf.extend_from_slice(&claims.issued_ms.to_be_bytes());
        buf.extend_from_slice(&claims.principal.to_be_bytes());
        buf.extend_from_slice(claims.upstream.as_bytes());
        let (head, body) = buf.split_at_mut(HEADER);
        let tag = self
            .current
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                aad(head, scope).as_aad(),
                body,
            )
            .map_err(|_| KeyError::Random)?;
        buf.extend_from_slice(tag.as_ref());
        Ok((URL_SAFE_NO_PAD.encode(&buf), nonce))
    }

    /// Opens an id sealed for `scope`; returns its claims and handle.
    pub fn open(&self, id: &[u8], scope: &[u8]) -> Result<(Claims, [u8; NONCE_LEN]), OpenError> {
        if id.len() > MAX_ID_LEN {
            return Err(OpenError::Malformed);
        }
        // Decoded on the stack: no allocation for the common case of opening an id.
        let mut space = [0u8; MAX_ID_LEN / 4 * 3 + 3];
        let n = URL_SAFE_NO_PAD
            .decode_slice(id, &mut space)
            .map_err(|_| OpenError::Malformed)?;
        let buf = &mut space[..n];
        if buf.len() < HEADER + CLAIMS + TAG || buf[0] != VERSION {
            return Err(OpenError::Malformed);
        }
        let kid = &buf[1..5];
        let sealer = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|s| s.id == kid)
            .ok_or(OpenError::UnknownKey)?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&buf[5..HEADER]);
        let (head, body) = buf.split_at_mut(HEADER);
        let plain = sealer
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                aad(head, scope).as_aad(),
                body,
            )
            .map_err(|_| OpenError::Forged)?;
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&plain[i..i + 8]);
            u64::from_be_bytes(w)
        };
        let upstream = std::str::from_utf8(&plain[CLAIMS..])
            .map_err(|_| OpenError::Malformed)?
            .into();
        Ok((
            Claims {
                instance: word(0),
                issued_ms: word(8),
                principal: word(16),
                upstream,
            },
            nonce,
        ))
    }
}

/// Associated data: the clear header, then the scope. Short scopes (route names) stay on the
/// stack.
struct AadBuf {
    buf: [u8; 128],
    len: usize,
    heap: Option<Vec<u8>>,
}

impl AadBuf {
    fn as_aad(&self) -> Aad<&[u8]> {
        match &self.heap {
            Some(v) => Aad::from(v.as_slice()),
            None => Aad::from(&self.buf[..self.len]),
        }
    }
}

fn aad(head: &[u8], scope: &[u8]) -> AadBuf {
    let len = head.len() + scope.len();
    if len <= 128 {
        let mut buf = [0u8; 128];
        buf[..head.len()].copy_from_slice(head);
        buf[head.len()..len].copy_from_slice(scope);
        AadBuf {
            buf,
            len,
            heap: None,
        }
    } else {
        AadBuf {
            buf: [0u8; 128],
            len: 0,
            heap: Some([head, scope].concat()),
        }
    }
}

/// A 64-bit digest (SHA-256, truncated) of `parts`, separated so that ("ab","c") and
/// ("a","bc") differ. Used for instance names (once, when an instance is added) and principals.
pub(crate) fn digest64(parts: &[&[u8]]) -> u64 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(&(p.len() as u64).to_be_bytes());
        ctx.update(p);
    }
    let d = ctx.finish();
    let mut w = [0u8; 8];
    w.copy_from_slice(&d.as_ref()[..8]);
    // 0 means "no principal": never produce it.
    u64::from_be_bytes(w).max(1)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            instance: 7,
            issued_ms: 1_700_000_000_000,
            principal: 42,
            upstream: "3f1c-upstream-session".into(),
        }
    }

    #[test]
    fn round_trip_and_every_bit_matters() {
        let ring = Keyring::new(&SessionKey::from_bytes([1; 32]), &[]);
        let (id, nonce) = ring.seal(&claims(), b"demo").unwrap();
        assert!(id.bytes().all(|b| (0x21..=0x7e).contains(&b)));
        assert!(!id.contains("3f1c"), "the upstream id leaks: {id}");
        let (c, n) = ring.open(id.as_bytes(), b"demo").unwrap();
        assert_eq!((c, n), (claims(), nonce));
        // Another route: refused.
        assert_eq!(ring.open(id.as_bytes(), b"other"), Err(OpenError::Forged));
        // Flip each bit of the decoded id in turn: nothing opens.
        let raw = URL_SAFE_NO_PAD.decode(&id).unwrap();
        for i in 0..raw.len() * 8 {
            let mut t = raw.clone();
            t[i / 8] ^= 1 << (i % 8);
            let text = URL_SAFE_NO_PAD.encode(&t);
            assert!(ring.open(text.as_bytes(), b"demo").is_err(), "bit {i}");
        }
        // Two seals of the same claims differ (random nonce).
        assert_ne!(ring.seal(&claims(), b"demo").unwrap().0, id);
    }

    /// Logs name a session by `mcp_gateway_core::session::handle_of` its id, which must be
    /// the handle the store keeps it under — for ids sealed with any key, of any length.
    #[test]
    fn the_core_handle_of_a_sealed_id_is_its_store_handle() {
        use super::super::store::SessionHandle;
        use mcp_gateway_core::session::handle_of;
        for (k, upstream) in [
            (1u8, ""),
            (2, "3f1c-upstream-session"),
            (3, &"u".repeat(600)),
        ] {
            let ring = Keyring::new(&SessionKey::from_bytes([k; 32]), &[]);
            let mut c = claims();
            c.upstream = upstream.into();
            for _ in 0..50 {
                let (id, nonce) = ring.seal(&c, b"demo").unwrap();
                assert_eq!(handle_of(&id), SessionHandle(nonce).to_hex(), "{id}");
                assert!(!id.contains(&handle_of(&id)));
            }
        }
    }

    #[test]
    fn garbage_and_foreign_keys_are_refused() {
        let ring = Keyring::new(&SessionKey::from_bytes([1; 32]), &[]);
        for bad in ["", "x", "not base64 !!", &"A".repeat(2000)] {
            assert!(ring.open(bad.as_bytes(), b"demo").is_err(), "{bad}");
        }
        let other = Keyring::new(&SessionKey::from_bytes([2; 32]), &[]);
        let (id, _) = other.seal(&claims(), b"demo").unwrap();
        assert_eq!(
            ring.open(id.as_bytes(), b"demo"),
            Err(OpenError::UnknownKey)
        );
    }

    #[test]
    fn rotation_opens_old_ids_and_seals_with_the_new_key() {
        let old = SessionKey::from_bytes([1; 32]);
        let new = SessionKey::from_bytes([3; 32]);
        let (old_id, _) = Keyring::new(&old, &[]).seal(&claims(), b"demo").unwrap();
        let rotated = Keyring::new(&new, std::slice::from_ref(&old));
        assert!(rotated.open(old_id.as_bytes(), b"demo").is_ok());
        let (new_id, _) = rotated.seal(&claims(), b"demo").unwrap();
        assert_eq!(
            Keyring::new(&old, &[]).open(new_id.as_bytes(), b"demo"),
            Err(OpenError::UnknownKey)
        );
    }

    #[test]
    fn key_text() {
        let k = SessionKey::generate().unwrap();
        let back = SessionKey::from_base64(&format!("  {}\n", k.to_base64())).unwrap();
        assert_eq!(back.0, k.0);
        assert!(matches!(
            SessionKey::from_base64("c2hvcnQ="),
            Err(KeyError::WrongLength(5))
        ));
        assert!(SessionKey::from_base64("***").is_err());
        assert!(!format!("{k:?}").contains(&k.to_base64()));
        assert_eq!(k.fingerprint().len(), 8);
    }
}
