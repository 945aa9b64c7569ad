//! Caller tokens: any text is refused without a panic, and any alteration of a valid token
//! that is still accepted must carry exactly the claims that were signed (no forgery).
//!
//! Input: first byte even -> the rest is a token as text; odd -> the rest is a list of
//! (position, byte) edits applied to a validly signed token.
#![no_main]

use caller_auth::{Claims, Kind, Signer};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

struct Fixture {
    signer: Signer,
    claims: Claims,
    token: String,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let signer = Signer::from_base64("c2lnbmluZy1rZXktZm9yLXRlc3RzLTAxMjM0NTY3ODk=").unwrap();
        let now = caller_auth::now_secs();
        let claims = Claims {
            jti: "t-1".into(),
            kind: Kind::Caller,
            sub: "bot".into(),
            tenants: vec![7, 42],
            all: false,
            role: None,
            sid: None,
            scopes: Vec::new(),
            exp: now + 86_400 * 365,
            iat: now,
        };
        let token = signer.sign(&claims).unwrap();
        Fixture {
            signer,
            claims,
            token,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let token = if mode % 2 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let mut t = f.token.clone().into_bytes();
        for edit in rest.chunks_exact(2) {
            let at = usize::from(edit[0]) * t.len() / 256;
            t[at] = edit[1];
        }
        String::from_utf8_lossy(&t).into_owned()
    };
    for kind in [Kind::Caller, Kind::Operator, Kind::Router] {
        if let Ok(claims) = f.signer.verifier().verify(&token, kind) {
            assert_eq!(kind, Kind::Caller, "accepted as another kind");
            assert_eq!(claims, f.claims, "accepted claims that were never signed");
        }
    }
});
