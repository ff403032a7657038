//! The configuration loader: any text, read as the gateway's configuration file, is either
//! accepted or refused with errors that each name the file; it never panics. Paths in the text
//! resolve under an empty folder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::OnceLock;

fn base() -> &'static Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("mcp-gateway-fuzz-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Files the gateway would read are looked for under `base`; device and proc files that
    // never end are out of bounds for this target.
    if text.contains("/dev/") || text.contains("/proc/") || text.contains("/sys/") {
        return;
    }
    if let Err(errors) = mcp_gateway::config::parse(text, "fuzz.toml", base()) {
        assert!(!errors.is_empty());
        for e in errors {
            assert!(e.to_string().starts_with("fuzz.toml"), "{e}");
        }
    }
});
