//! Signed tokens of the platform: Ed25519 JWTs (`EdDSA`) that only the control plane can
//! mint (it alone holds the signing key) and anyone with the public key can verify.
//!
//! Three kinds, never interchangeable (the kind is a signed claim and every check names
//! the kind it expects):
//! - **caller** tokens let an internal service act for tenants (by tenant id) through a
//!   router; routers verify them with the public key only, so a stolen router cannot mint
//!   them;
//! - **operator** tokens identify a person or tool using `tenantctl`, with a role;
//! - **router** tokens identify a router to the control plane's directory, scoped to the
//!   database servers it may serve;
//! - **user** tokens are a logged-in person's short-lived access tokens: one empresa, a
//!   role in it, and the session they were minted for (revoking the session stops them).
//!
//! Every token carries an id (`jti`), so it can be audited and revoked.

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Clock skew tolerated between the control plane and verifiers, in seconds.
pub const LEEWAY_SECS: u64 = 30;

/// What a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// An internal service calling routers for tenants.
    Caller,
    /// An operator using the control plane's admin API.
    Operator,
    /// A router reading routes from the directory.
    Router,
    /// A person logged in to one empresa.
    User,
}

impl Kind {
    /// The claim's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Caller => "caller",
            Kind::Operator => "operator",
            Kind::Router => "router",
            Kind::User => "user",
        }
    }
}

/// Claims of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Token id (unique; what revocation and the audit log name).
    pub jti: String,
    /// What the token is for.
    pub kind: Kind,
    /// Who holds it: a service, an operator or a router name.
    pub sub: String,
    /// Caller tokens: the tenant ids it may act for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<i64>,
    /// Caller tokens: every tenant.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
    /// Operator tokens: the operator's role; user tokens: the user's role in the empresa.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// User tokens: the session they were minted for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// Caller tokens: extra permissions (`secrets`: read the granted tenants' secrets).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
}

/// The scope that lets a caller token read its tenants' secrets.
pub const SCOPE_SECRETS: &str = "secrets";

impl Claims {
    /// Whether these (caller) claims carry `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// Whether these (caller) claims grant the tenant with this id.
    pub fn grants(&self, tenant_id: i64) -> bool {
        self.all || self.tenants.contains(&tenant_id)
    }
}

/// Why a token was refused or could not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("invalid token")]
    Invalid,
    #[error("signing failed")]
    Sign,
}

/// Why a key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the token signing key must be 32 bytes encoded as base64 (generate one with `control-plane --generate-signing-key`)")]
    Signing,
    #[error("the token verifying key must be 32 bytes encoded as base64 (print it with `control-plane --print-verifying-key`)")]
    Verifying,
}

/// PKCS#8 (RFC 8410) wrapping of a 32-byte Ed25519 private key seed.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

fn decode32(text: &str) -> Option<[u8; 32]> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()?
        .try_into()
        .ok()
}

/// Mints tokens (the control plane only).
#[derive(Clone)]
pub struct Signer {
    encoding: EncodingKey,
    public: [u8; 32],
    verifier: Verifier,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    /// A signer from a base64 32-byte Ed25519 seed.
    pub fn from_base64(seed: &str) -> Result<Signer, KeyError> {
        let seed = decode32(seed).ok_or(KeyError::Signing)?;
        let public = ed25519_dalek::SigningKey::from_bytes(&seed)
            .verifying_key()
            .to_bytes();
        let mut der = PKCS8_ED25519_PREFIX.to_vec();
        der.extend_from_slice(&seed);
        Ok(Signer {
            encoding: EncodingKey::from_ed_der(&der),
            public,
            verifier: Verifier::from_bytes(public),
        })
    }

    /// The public key, base64 (what routers are configured with).
    pub fn public_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.public)
    }

    /// A verifier for tokens this signer makes.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// Mints a token.
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, &self.encoding)
            .map_err(|_| TokenError::Sign)
    }
}

/// Verifies tokens with the public key.
#[derive(Clone)]
pub struct Verifier {
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(..)")
    }
}

impl Verifier {
    /// A verifier from a base64 32-byte Ed25519 public key.
    pub fn from_base64(public: &str) -> Result<Verifier, KeyError> {
        decode32(public)
            .map(Verifier::from_bytes)
            .ok_or(KeyError::Verifying)
    }

    fn from_bytes(public: [u8; 32]) -> Verifier {
        // Only EdDSA: a token claiming another algorithm (`none`, an HMAC keyed with the
        // public key) is refused before its signature is looked at.
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Verifier {
            decoding: DecodingKey::from_ed_der(&public),
            validation,
        }
    }

    /// Verifies signature, algorithm, expiry (with [`LEEWAY_SECS`]) and that the token is
    /// of `kind`.
    pub fn verify(&self, token: &str, kind: Kind) -> Result<Claims, TokenError> {
        self.verify_any(token, &[kind])
    }

    /// Like [`Verifier::verify`], accepting any of `kinds`.
    pub fn verify_any(&self, token: &str, kinds: &[Kind]) -> Result<Claims, TokenError> {
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })?;
        if !kinds.contains(&claims.kind) || claims.iat > now_secs() + LEEWAY_SECS {
            return Err(TokenError::Invalid);
        }
        Ok(claims)
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

    const SEED: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    const OTHER: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";

    fn claims(kind: Kind, exp_in: i64) -> Claims {
        let now = now_secs();
        Claims {
            jti: "t1".into(),
            kind,
            sub: "bot".into(),
            tenants: vec![7],
            all: false,
            role: None,
            sid: None,
            scopes: Vec::new(),
            exp: (now as i64 + exp_in) as u64,
            iat: now,
        }
    }

    #[test]
    fn sign_verify_and_refuse() {
        let signer = Signer::from_base64(SEED).unwrap();
        let verifier = Verifier::from_base64(&signer.public_base64()).unwrap();
        let token = signer.sign(&claims(Kind::Caller, 60)).unwrap();
        let got = verifier.verify(&token, Kind::Caller).unwrap();
        assert!(got.grants(7) && !got.grants(8));
        // Another kind is refused even with a good signature.
        assert_eq!(
            verifier.verify(&token, Kind::Operator),
            Err(TokenError::Invalid)
        );
        // Another key's tokens are refused.
        let other = Signer::from_base64(OTHER).unwrap();
        let forged = other.sign(&claims(Kind::Caller, 60)).unwrap();
        assert_eq!(
            verifier.verify(&forged, Kind::Caller),
            Err(TokenError::Invalid)
        );
        // Expired past the leeway.
        let old = signer.sign(&claims(Kind::Caller, -120)).unwrap();
        assert_eq!(
            verifier.verify(&old, Kind::Caller),
            Err(TokenError::Expired)
        );
        // Within the leeway it still passes.
        let just = signer.sign(&claims(Kind::Caller, -5)).unwrap();
        assert!(verifier.verify(&just, Kind::Caller).is_ok());
        assert_eq!(
            verifier.verify("not.a.jwt", Kind::Caller),
            Err(TokenError::Invalid)
        );
        // alg=none and HS256 keyed with the public key are refused.
        let body = token.split('.').nth(1).unwrap();
        let unsigned = format!("eyJhbGciOiJub25lIn0.{body}.");
        assert!(verifier.verify(&unsigned, Kind::Caller).is_err());
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(Kind::Caller, 60),
            &EncodingKey::from_secret(signer.public_base64().as_bytes()),
        )
        .unwrap();
        assert_eq!(verifier.verify(&hs, Kind::Caller), Err(TokenError::Invalid));
    }

    #[test]
    fn keys_must_be_32_bytes_of_base64() {
        assert!(Signer::from_base64("short").is_err());
        assert!(Verifier::from_base64("c2hvcnQ=").is_err());
        assert!(Signer::from_base64(SEED).is_ok());
    }
}
