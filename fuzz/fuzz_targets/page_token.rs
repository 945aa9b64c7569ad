//! Page tokens: never panic; a token accepted is exactly the one the router would write
//! for that position (one position, one token).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tenant_model::{next_page_token, page_after};

fuzz_target!(|raw: &str| {
    if let Ok(after) = page_after(raw) {
        if after == 0 {
            assert!(raw.is_empty());
        } else {
            assert_eq!(next_page_token(true, Some(after)), raw);
        }
    }
});
