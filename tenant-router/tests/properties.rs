//! Property tests of what parses untrusted input: whatever bytes arrive, the webhook
//! parsers, the item rules and phone canonicalisation never panic, and what they accept
//! obeys their rules.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use tenant_router::domain::phone::canonical_wa_id;
use tenant_router::webhook::{evolution, items, payload};

fn json_text() -> impl Strategy<Value = String> {
    // Strings with escapes, surrogates, controls and quotes mixed in.
    proptest::collection::vec(
        prop_oneof![
            Just("\\u0000".to_string()),
            Just("\\ud800".to_string()),
            Just("\\udc00".to_string()),
            Just("\\ud83d\\ude00".to_string()),
            Just("\\\\".to_string()),
            Just("\\\"".to_string()),
            "[a-z0-9 ]{0,8}",
        ],
        0..8,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parsers_never_panic_on_any_bytes(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = payload::parse(&body);
        let _ = evolution::parse(&body);
        let _ = items::repair_surrogates(&body);
    }

    #[test]
    fn repaired_strings_always_parse(text in json_text()) {
        let body = format!("{{\"entry\":[],\"t\":\"{text}\"}}");
        let repaired = items::repair_surrogates(body.as_bytes());
        prop_assert_eq!(repaired.len(), body.len());
        prop_assert!(serde_json::from_slice::<serde_json::Value>(&repaired).is_ok());
    }

    #[test]
    fn cleaned_text_holds_no_control_characters_but_tab_newline_cr(text in any::<String>()) {
        let cleaned = items::clean(&text);
        let kept = |c: char| !c.is_ascii_control() || matches!(c, '\t' | '\n' | '\r' | '\x7f');
        prop_assert!(cleaned.chars().all(kept), "control characters left in {:?}", cleaned);
        // Cleaning twice changes nothing more.
        let again = items::clean(&cleaned).into_owned();
        prop_assert_eq!(again.as_str(), cleaned.as_ref());
    }

    #[test]
    fn canonical_phone_ids_are_digits_and_stable(raw in "[+ ()0-9.-]{0,24}") {
        if let Some(c) = canonical_wa_id(&raw) {
            prop_assert!(c.bytes().all(|b| b.is_ascii_digit()));
            prop_assert_eq!(canonical_wa_id(&c), Some(c.clone()));
        }
    }
}
