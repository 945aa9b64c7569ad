//! Callers' tokens, verified once and remembered.
//!
//! Verifying an Ed25519 signature costs tens of microseconds: under load it was a quarter of
//! the router's CPU, and a caller sends the same token with every call. A token whose
//! signature verified is remembered by its exact text (the claims are a function of it) for
//! at most [`REMEMBER`], never past its expiry; what is checked per call stays per call
//! (kind, expiry, revocation by the caller). Tokens that fail are never remembered, so a
//! forged one costs a verification every time, as before.

use caller_auth::{now_secs, Claims, Kind, TokenError, Verifier, LEEWAY_SECS};
use std::time::Duration;

/// Most tokens remembered.
const CAPACITY: u64 = 10_000;
/// Longest a verified token is remembered.
const REMEMBER: Duration = Duration::from_secs(60);

/// Verifies tokens, remembering the good ones.
pub struct Tokens {
    verifier: Verifier,
    verified: moka::sync::Cache<String, Claims>,
}

impl Tokens {
    /// A cache in front of `verifier`.
    pub fn new(verifier: Verifier) -> Tokens {
        Tokens {
            verifier,
            verified: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(REMEMBER)
                .build(),
        }
    }

    /// The token's claims if it is valid (signature, algorithm, expiry with the leeway) and
    /// of one of `kinds`.
    pub fn verify_any(&self, token: &str, kinds: &[Kind]) -> Result<Claims, TokenError> {
        if let Some(claims) = self.verified.get(token) {
            if now_secs() >= claims.exp + LEEWAY_SECS {
                self.verified.invalidate(token);
                return Err(TokenError::Expired);
            }
            if !kinds.contains(&claims.kind) {
                return Err(TokenError::Invalid);
            }
            return Ok(claims);
        }
        let claims = self.verifier.verify_any(token, kinds)?;
        self.verified.insert(token.to_string(), claims.clone());
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_tokens_keep_their_kind_and_forgeries_are_verified() {
        let signer =
            caller_auth::Signer::from_base64("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")
                .unwrap();
        let tokens = Tokens::new(Verifier::from_base64(&signer.public_base64()).unwrap());
        let claims = |exp: u64| Claims {
            jti: "t1".into(),
            kind: Kind::Caller,
            sub: "svc".into(),
            tenants: vec![1],
            all: false,
            role: None,
            sid: None,
            scopes: Vec::new(),
            exp,
            iat: now_secs(),
        };
        let token = signer.sign(&claims(now_secs() + 600)).unwrap();
        for _ in 0..2 {
            assert_eq!(
                tokens.verify_any(&token, &[Kind::Caller]).unwrap().jti,
                "t1"
            );
            // Remembered, and still refused where another kind is asked for.
            assert!(matches!(
                tokens.verify_any(&token, &[Kind::User]),
                Err(TokenError::Invalid)
            ));
        }
        // A token one character off is not the remembered one.
        let mut forged = token.clone();
        forged.pop();
        assert!(tokens.verify_any(&forged, &[Kind::Caller]).is_err());
        // Long expired: refused, and never remembered.
        let old = signer.sign(&claims(now_secs() - 3_600)).unwrap();
        for _ in 0..2 {
            assert!(matches!(
                tokens.verify_any(&old, &[Kind::Caller]),
                Err(TokenError::Expired)
            ));
        }
    }
}
