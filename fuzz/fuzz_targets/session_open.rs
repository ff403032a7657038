//! Opening a session id a client sent: never panics, and whatever opens re-seals to an id that
//! opens to the same claims.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_gateway_layers::sessions::{Keyring, SessionKey};
use std::sync::OnceLock;

fn ring() -> &'static Keyring {
    static RING: OnceLock<Keyring> = OnceLock::new();
    RING.get_or_init(|| Keyring::new(&SessionKey::from_bytes([7; 32]), &[]))
}

fuzz_target!(|data: &[u8]| {
    if let Ok((claims, _)) = ring().open(data, b"demo") {
        let (id, _) = ring().seal(&claims, b"demo").expect("seals");
        assert_eq!(ring().open(id.as_bytes(), b"demo").expect("opens").0, claims);
    }
});
