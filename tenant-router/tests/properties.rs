//! Property tests of what parses untrusted input: whatever bytes arrive, the webhook
//! parsers, the item rules, phone canonicalisation, page tokens, tenant keys and caller
//! tokens never panic, and what they accept obeys their rules (the same parsers have
//! cargo-fuzz targets, docs/FUZZING.md).
#![allow(clippy::unwrap_used)]

use caller_auth::{Claims, Kind, Signer, Verifier};
use proptest::prelude::*;
use tenant_router::domain::{after_id, next_token};
use whatsapp_ingest::phone::canonical_wa_id;
use whatsapp_ingest::{evolution, items, meta as payload};

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

const SEED: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

fn keys() -> (Signer, Verifier) {
    let signer = Signer::from_base64(SEED).unwrap();
    let verifier = Verifier::from_base64(&signer.public_base64()).unwrap();
    (signer, verifier)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn page_tokens_round_trip_and_only_their_own_form_is_accepted(id in 1i64.., junk in ".{0,24}") {
        prop_assert_eq!(after_id(&next_token(true, Some(id))).unwrap(), id);
        // Whatever a client sends: refused, or exactly a token the router would write.
        let probes = [junk.clone(), format!("id:{junk}"), format!("id:+{id}"), format!("id:0{id}"), format!("id: {id}")];
        for probe in probes {
            if let Ok(after) = after_id(&probe) {
                prop_assert!(probe.is_empty() || next_token(true, Some(after)) == probe, "{probe:?}");
            }
        }
    }

    #[test]
    fn tenant_keys_have_one_spelling(id in 1i64..=999_999_999_999_999_999, junk in ".{0,24}") {
        use tenant_model::TenantKey;
        prop_assert_eq!(TenantKey::parse(&id.to_string()).unwrap().to_string(), id.to_string());
        // Other spellings of the same id are refused, and anything accepted prints back as
        // itself (so no two texts reach one tenant through two cache keys).
        for refused in [format!("0{id}"), format!("+{id}"), format!(" {id}"), format!("{id} "), format!("-{id}")] {
            prop_assert!(TenantKey::parse(&refused).is_err(), "{refused:?}");
        }
        if let Ok(key) = TenantKey::parse(&junk) {
            prop_assert_eq!(key.to_string(), junk);
        }
    }

    #[test]
    fn the_token_parser_refuses_any_text_and_any_altered_token(
        text in ".{0,300}",
        at in any::<prop::sample::Index>(),
        with in prop::char::range('!', '~'),
    ) {
        let (signer, verifier) = keys();
        for kind in [Kind::Caller, Kind::Operator, Kind::Router] {
            prop_assert!(verifier.verify(&text, kind).is_err());
        }
        let now = caller_auth::now_secs();
        let token = signer
            .sign(&Claims {
                jti: "p1".into(),
                kind: Kind::Caller,
                sub: "bot".into(),
                tenants: vec![7],
                all: false,
                role: None,
                sid: None,
                scopes: Vec::new(),
                exp: now + 60,
                iat: now,
            })
            .unwrap();
        prop_assert!(verifier.verify(&token, Kind::Caller).is_ok());
        prop_assert!(verifier.verify(&token, Kind::Router).is_err());
        let mut altered: Vec<char> = token.chars().collect();
        let i = at.index(altered.len());
        if altered[i] != with {
            altered[i] = with;
            let altered: String = altered.into_iter().collect();
            // Changing any one character breaks the header, the claims or the signature,
            // except the last base64url character's padding bits, which decode the same.
            if verifier.verify(&altered, Kind::Caller).is_ok() {
                prop_assert_eq!(i, token.len() - 1, "{}", altered);
            }
        }
    }
}
