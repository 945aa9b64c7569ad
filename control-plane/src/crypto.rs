//! Encryption of stored credentials (XChaCha20-Poly1305) and generation of role passwords.
//!
//! Ciphertexts are `0x01 || key id (4 bytes) || nonce (24 bytes) || sealed`, with the
//! catalog row's purpose bound in as associated data, so a ciphertext copied into another
//! row or column does not decrypt. The key id (the first 4 bytes of the key's SHA-256)
//! says which master key sealed it: after a master-key change, the retired keys still open
//! what they sealed until `tenantctl rekey` has re-sealed everything with the current one.
//! Ciphertexts of the first release (`nonce || sealed`, no header) still open.

use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

const NONCE_LEN: usize = 24;
/// First byte of a ciphertext that names its key.
const VERSION: u8 = 1;
const KEY_ID_LEN: usize = 4;
const HEADER_LEN: usize = 1 + KEY_ID_LEN;

/// Why a secret could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The master key in the configuration is not 32 base64-encoded bytes.
    #[error("master_key must be 32 bytes encoded as base64 (generate one with: openssl rand -base64 32)")]
    BadKey,
    /// The ciphertext is damaged, was made with another key, or belongs to another record.
    #[error("stored secret cannot be decrypted (wrong master key or damaged record)")]
    Open,
    /// Encryption failed (never expected; reported rather than unwrapped).
    #[error("encryption failed")]
    Seal,
}

/// One master key and its id.
#[derive(Clone)]
struct Key {
    id: [u8; KEY_ID_LEN],
    cipher: XChaCha20Poly1305,
}

/// Seals with the current master key; opens with it or any retired one.
#[derive(Clone)]
pub struct SecretBox {
    current: Key,
    retired: Vec<Key>,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

impl SecretBox {
    /// Builds from a base64-encoded 32-byte key.
    pub fn from_base64(key: &str) -> Result<SecretBox, CryptoError> {
        SecretBox::with_retired(key, &[])
    }

    /// The current key (seals and opens) and retired keys (open only), base64 each.
    pub fn with_retired(current: &str, retired: &[&str]) -> Result<SecretBox, CryptoError> {
        Ok(SecretBox {
            current: Key::from_base64(current)?,
            retired: retired
                .iter()
                .map(|k| Key::from_base64(k))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Whether `sealed` was sealed by a key other than the current one (or in the first
    /// release's format): `rekey` re-seals it.
    pub fn needs_reseal(&self, sealed: &[u8]) -> bool {
        !(sealed.len() > HEADER_LEN
            && sealed[0] == VERSION
            && sealed[1..HEADER_LEN] == self.current.id)
    }

    /// Encrypts `plain` with the current key, binding `context` (e.g.
    /// `"tenant:42:password"`).
    pub fn seal(&self, plain: &str, context: &str) -> Result<Vec<u8>, CryptoError> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = self
            .current
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plain.as_bytes(),
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Seal)?;
        let mut out = Vec::with_capacity(HEADER_LEN + NONCE_LEN + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&self.current.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Decrypts what [`SecretBox::seal`] made with the same `context`, with whichever of
    /// the current and retired keys sealed it.
    pub fn open(&self, sealed: &[u8], context: &str) -> Result<String, CryptoError> {
        let keys = || std::iter::once(&self.current).chain(&self.retired);
        if sealed.len() > HEADER_LEN + NONCE_LEN && sealed[0] == VERSION {
            let id = &sealed[1..HEADER_LEN];
            if let Some(key) = keys().find(|k| k.id[..] == *id) {
                if let Ok(plain) = key.open(&sealed[HEADER_LEN..], context) {
                    return Ok(plain);
                }
            }
        }
        // The first release's format: any key may have sealed it.
        keys()
            .find_map(|k| k.open(sealed, context).ok())
            .ok_or(CryptoError::Open)
    }
}

impl Key {
    fn from_base64(key: &str) -> Result<Key, CryptoError> {
        use sha2::{Digest, Sha256};
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(key.trim())
            .map_err(|_| CryptoError::BadKey)?;
        if bytes.len() != 32 {
            return Err(CryptoError::BadKey);
        }
        let cipher = XChaCha20Poly1305::new_from_slice(&bytes).map_err(|_| CryptoError::BadKey)?;
        let digest = Sha256::digest(&bytes);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        Ok(Key { id, cipher })
    }

    /// Opens `nonce || sealed`.
    fn open(&self, sealed: &[u8], context: &str) -> Result<String, CryptoError> {
        if sealed.len() < NONCE_LEN {
            return Err(CryptoError::Open);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let plain = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Open)?;
        String::from_utf8(plain).map_err(|_| CryptoError::Open)
    }
}

/// A fresh random password: 32 bytes from the OS generator, URL-safe base64 (43 chars).
pub fn random_password() -> String {
    use chacha20poly1305::aead::rand_core::RngCore;
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A PostgreSQL SCRAM-SHA-256 verifier (what `ALTER ROLE ... PASSWORD` stores) for
/// `password` with `iterations` PBKDF2 rounds and a fresh 16-byte salt. `password` must be
/// ASCII (our generated passwords are), for which SASLprep changes nothing.
pub fn scram_verifier(password: &str, iterations: u32) -> String {
    use chacha20poly1305::aead::rand_core::RngCore;
    let mut salt = [0u8; 16];
    OsRng.fill_bytes(&mut salt);
    scram_verifier_with_salt(password, &salt, iterations)
}

fn scram_verifier_with_salt(password: &str, salt: &[u8], iterations: u32) -> String {
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};
    type HmacSha256 = Hmac<Sha256>;
    let keyed = |key: &[u8]| {
        <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes keys of any length")
    };
    // PBKDF2-HMAC-SHA-256, one block (RFC 8018): U1 = PRF(P, salt || 1), Ui = PRF(P, Ui-1).
    let prf = keyed(password.as_bytes());
    let mut mac = prf.clone();
    mac.update(salt);
    mac.update(&1u32.to_be_bytes());
    let mut u = mac.finalize().into_bytes();
    let mut salted = u;
    for _ in 1..iterations.max(1) {
        let mut mac = prf.clone();
        mac.update(&u);
        u = mac.finalize().into_bytes();
        salted.iter_mut().zip(u.iter()).for_each(|(s, x)| *s ^= x);
    }
    let key = |label: &[u8]| {
        let mut mac = keyed(&salted);
        mac.update(label);
        mac.finalize().into_bytes()
    };
    let stored_key = Sha256::digest(key(b"Client Key"));
    let server_key = key(b"Server Key");
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        b64(salt),
        b64(&stored_key),
        b64(&server_key)
    )
}

/// A fresh random master key, base64-encoded (for `control-plane --generate-key`).
pub fn random_master_key() -> String {
    use chacha20poly1305::aead::rand_core::RngCore;
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scram_verifier_matches_postgres() {
        // RFC 7677's example (password "pencil", its salt, 4096 rounds): the verifier's
        // server key must give the example's server signature over its auth message.
        // (The provisioning tests log in with verifiers PostgreSQL accepted.)
        use hmac::{Hmac, Mac};
        let salt = base64::engine::general_purpose::STANDARD
            .decode("W22ZaJ0SNY7soEsUEjb6gQ==")
            .unwrap();
        let v = scram_verifier_with_salt("pencil", &salt, 4096);
        let server_key = base64::engine::general_purpose::STANDARD
            .decode(v.rsplit(':').next().unwrap())
            .unwrap();
        let auth = "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&server_key).unwrap();
        mac.update(auth.as_bytes());
        let signature =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(signature, "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
        assert!(v.starts_with("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"));
        let fresh = scram_verifier("pencil", 16);
        assert!(fresh.starts_with("SCRAM-SHA-256$16:"));
        assert_ne!(fresh, scram_verifier("pencil", 16), "salts are random");
    }

    #[test]
    fn seal_open_roundtrip_and_binding() {
        let key = random_master_key();
        let sb = SecretBox::from_base64(&key).unwrap();
        let sealed = sb.seal("s3cret", "tenant:1:password").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"s3cret"));
        assert_eq!(sb.open(&sealed, "tenant:1:password").unwrap(), "s3cret");
        assert!(matches!(
            sb.open(&sealed, "tenant:2:password"),
            Err(CryptoError::Open)
        ));
        let other = SecretBox::from_base64(&random_master_key()).unwrap();
        assert!(matches!(
            other.open(&sealed, "tenant:1:password"),
            Err(CryptoError::Open)
        ));
        assert!(matches!(
            sb.open(&sealed[..10], "tenant:1:password"),
            Err(CryptoError::Open)
        ));
    }

    #[test]
    fn retired_keys_open_until_everything_is_resealed() {
        let (old, new) = (random_master_key(), random_master_key());
        let before = SecretBox::from_base64(&old).unwrap();
        let sealed = before.seal("s3cret", "tenant:1:owner").unwrap();
        let during = SecretBox::with_retired(&new, &[&old]).unwrap();
        assert_eq!(during.open(&sealed, "tenant:1:owner").unwrap(), "s3cret");
        assert!(during.needs_reseal(&sealed));
        let resealed = during.seal("s3cret", "tenant:1:owner").unwrap();
        assert!(!during.needs_reseal(&resealed));
        let after = SecretBox::from_base64(&new).unwrap();
        assert_eq!(after.open(&resealed, "tenant:1:owner").unwrap(), "s3cret");
        assert!(
            after.open(&sealed, "tenant:1:owner").is_err(),
            "the old key is gone"
        );
        // The first release's format (no header) still opens.
        let legacy = {
            let key = Key::from_base64(&old).unwrap();
            let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
            let mut out = nonce.to_vec();
            out.extend(
                key.cipher
                    .encrypt(
                        &nonce,
                        Payload {
                            msg: b"legacy",
                            aad: b"ctx",
                        },
                    )
                    .unwrap(),
            );
            out
        };
        assert_eq!(during.open(&legacy, "ctx").unwrap(), "legacy");
        assert!(during.needs_reseal(&legacy));
    }

    #[test]
    fn bad_keys_are_rejected() {
        assert!(matches!(
            SecretBox::from_base64("short"),
            Err(CryptoError::BadKey)
        ));
        assert!(matches!(
            SecretBox::from_base64("not base64 !!"),
            Err(CryptoError::BadKey)
        ));
    }

    #[test]
    fn passwords_are_random_and_safe_in_sql() {
        let a = random_password();
        assert_ne!(a, random_password());
        assert_eq!(a.len(), 43);
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    }
}
