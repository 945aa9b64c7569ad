//! Phone canonicalisation: never panics; a canonical id is digits only, 8 to 15 long, and
//! canonical again (one person, one spelling).
#![no_main]

use libfuzzer_sys::fuzz_target;
use whatsapp_ingest::phone::canonical_wa_id;

fuzz_target!(|raw: &str| {
    if let Some(c) = canonical_wa_id(raw) {
        assert!(c.bytes().all(|b| b.is_ascii_digit()), "{c:?}");
        assert!((8..=15).contains(&c.len()), "{c:?}");
        assert_eq!(canonical_wa_id(&c).as_deref(), Some(c.as_str()));
    }
});
