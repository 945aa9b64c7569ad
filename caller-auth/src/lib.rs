//! Caller tokens: HS256 JWTs whose claims list the tenants a caller may act for.
//!
//! The control plane mints them (`tenantctl token issue`); routers verify them with the same
//! key. A token either lists tenants (slugs) or grants all of them (platform services).

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Claims of a caller token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who the caller is (free text, for logs and audit).
    pub sub: String,
    /// Tenant slugs the caller may act for.
    #[serde(default)]
    pub tenants: Vec<String>,
    /// Whether the caller may act for every tenant.
    #[serde(default)]
    pub all: bool,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
}

impl Claims {
    /// Whether these claims grant the tenant with this slug.
    pub fn grants(&self, slug: &str) -> bool {
        self.all || self.tenants.iter().any(|t| t == slug)
    }
}

/// Why a token was refused or could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("invalid token")]
    Invalid,
    #[error("signing failed")]
    Sign,
}

/// Signs and verifies caller tokens with one shared key.
#[derive(Clone)]
pub struct TokenKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    /// A key from the shared secret.
    pub fn new(secret: &[u8]) -> TokenKey {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        TokenKey {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Mints a token.
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|_| TokenError::Sign)
    }

    /// Verifies signature, algorithm and expiry.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })
    }
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp_in: i64) -> Claims {
        let now = now_secs();
        Claims {
            sub: "bot".into(),
            tenants: vec!["acme".into()],
            all: false,
            exp: (now as i64 + exp_in) as u64,
            iat: now,
        }
    }

    #[test]
    fn sign_verify_and_refuse() {
        let key = TokenKey::new(b"0123456789abcdef0123456789abcdef");
        let token = key.sign(&claims(60)).unwrap();
        let got = key.verify(&token).unwrap();
        assert!(got.grants("acme") && !got.grants("other"));
        let other = TokenKey::new(b"another-key-another-key-another-key");
        assert!(matches!(other.verify(&token), Err(TokenError::Invalid)));
        assert!(matches!(
            key.verify(&key.sign(&claims(-60)).unwrap()),
            Err(TokenError::Expired)
        ));
        assert!(matches!(key.verify("not.a.jwt"), Err(TokenError::Invalid)));
        // A token with alg=none is refused.
        let unsigned = format!("eyJhbGciOiJub25lIn0.{}.", token.split('.').nth(1).unwrap());
        assert!(key.verify(&unsigned).is_err());
    }
}
