//! Any byte stream, cut anywhere: the decoder never panics, stays within its bound, and gives
//! the same items however the stream is split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_gateway_core::sse::{SseDecoder, SseItem};

fn run(chunks: &[&[u8]]) -> Result<Vec<SseItem>, ()> {
    let mut dec = SseDecoder::new(4096);
    let mut out = Vec::new();
    for c in chunks {
        dec.feed(c, &mut |i| out.push(i)).map_err(|_| ())?;
    }
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    let whole = run(&[data]);
    if data.len() >= 2 {
        let cut = usize::from(data[0]) % data.len();
        let split = run(&[&data[..cut], &data[cut..]]);
        if let (Ok(a), Ok(b)) = (&whole, &split) {
            assert_eq!(a, b);
        }
    }
    if let Ok(items) = whole {
        for item in items {
            if let SseItem::Event(e) = item {
                // Re-encoding an event and decoding it gives it back.
                let again = run(&[&e.encode()]).expect("re-encoded event decodes");
                assert!(again.contains(&SseItem::Event(e)));
            }
        }
    }
});
