//! Password hashing (Argon2id, PHC strings) and the rules a new password must meet.
//!
//! Hashing is CPU and memory work on purpose: it runs on the blocking pool, at most
//! `max_concurrent_hashes` at a time (a flood of logins queues instead of exhausting
//! memory), and every computation is counted. An unknown email is checked against a
//! dummy hash made with the same costs, so it costs the same work as a wrong password.

use crate::config;
use crate::error::{Error, Result};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Shortest and longest password accepted, in characters.
pub const MIN_LEN: usize = 10;
pub const MAX_LEN: usize = 128;

/// Passwords too common to accept whatever their length (lower-cased).
const COMMON: &[&str] = &[
    "1234567890",
    "12345678910",
    "123456789a",
    "0123456789",
    "qwertyuiop",
    "password123",
    "password1234",
    "senha12345",
    "senha123456",
    "mudar12345",
    "iloveyou123",
    "abc1234567",
    "qwerty12345",
    "1q2w3e4r5t",
    "brasil1234",
    "admin12345",
];

/// Hashes and verifies passwords with the configured Argon2id costs.
#[derive(Clone)]
pub struct Hasher {
    argon: Argon2<'static>,
    gate: Arc<Semaphore>,
    computed: Arc<AtomicU64>,
    /// A hash of a random password with the same costs (for unknown users).
    dummy: Arc<String>,
}

impl Hasher {
    /// A hasher with the costs of `cfg`; the error names the bad setting.
    pub fn new(cfg: &config::Accounts) -> Result<Hasher> {
        let params = Params::new(
            cfg.argon2_memory_kib,
            cfg.argon2_iterations,
            cfg.argon2_parallelism,
            None,
        )
        .map_err(|e| Error::InvalidArgument(format!("accounts.argon2_*: {e}")))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let dummy = hash_with(&argon, &crate::crypto::random_password())?;
        Ok(Hasher {
            argon,
            gate: Arc::new(Semaphore::new(cfg.max_concurrent_hashes.max(1))),
            computed: Arc::new(AtomicU64::new(0)),
            dummy: Arc::new(dummy),
        })
    }

    /// Password hashes computed so far (hashing and verifying alike).
    pub fn computed(&self) -> u64 {
        self.computed.load(Ordering::Relaxed)
    }

    /// A PHC hash of `password`.
    pub async fn hash(&self, password: &str) -> Result<String> {
        let password = password.to_string();
        let argon = self.argon.clone();
        self.blocking(move || hash_with(&argon, &password)).await?
    }

    /// Whether `password` matches `phc`; with `None` (no such user) the same work is done
    /// against the dummy hash and the answer is `false`.
    pub async fn verify(&self, password: &str, phc: Option<&str>) -> Result<bool> {
        let known = phc.is_some();
        let phc = phc.unwrap_or(&self.dummy).to_string();
        let password = password.to_string();
        let argon = self.argon.clone();
        let matched = self
            .blocking(move || {
                PasswordHash::new(&phc)
                    .map(|parsed| argon.verify_password(password.as_bytes(), &parsed).is_ok())
                    .unwrap_or(false)
            })
            .await?;
        Ok(known && matched)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let _permit = self
            .gate
            .acquire()
            .await
            .map_err(|e| Error::internal("hash gate", e))?;
        self.computed.fetch_add(1, Ordering::Relaxed);
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| Error::internal("password hash", e))
    }
}

fn hash_with(argon: &Argon2<'_>, password: &str) -> Result<String> {
    use chacha20poly1305::aead::rand_core::RngCore;
    let mut salt = [0u8; 16];
    chacha20poly1305::aead::OsRng.fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| Error::internal("salt", e))?;
    argon
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::internal("password hash", e))
}

/// Whether `password` may be a user's new password; the error says what is wrong (never
/// echoing the password).
pub fn check_new(password: &str, email: &tenant_model::Email) -> Result<()> {
    let weak = |why: &str| Err(Error::InvalidArgument(format!("password {why}")));
    let chars = password.chars().count();
    if chars < MIN_LEN {
        return weak(&format!("must have at least {MIN_LEN} characters"));
    }
    if chars > MAX_LEN {
        return weak(&format!("must have at most {MAX_LEN} characters"));
    }
    if password.chars().any(char::is_control) {
        return weak("must not contain control characters");
    }
    let lower = password.to_lowercase();
    let distinct: std::collections::HashSet<char> = lower.chars().collect();
    if distinct.len() < 4 {
        return weak("is too repetitive (use at least 4 different characters)");
    }
    if COMMON.contains(&lower.as_str()) {
        return weak("is too common");
    }
    let local = email.as_str().split('@').next().unwrap_or_default();
    if local.len() >= 4 && lower.contains(local) {
        return weak("must not contain the email address");
    }
    Ok(())
}

/// A one-time password for a new user or an operator reset: 16 characters of an alphabet
/// without look-alikes (about 90 bits).
pub fn one_time() -> String {
    use chacha20poly1305::aead::rand_core::RngCore;
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzABCDEFGHJKMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 16];
    chacha20poly1305::aead::OsRng.fill_bytes(&mut bytes);
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> config::Accounts {
        config::Accounts {
            argon2_memory_kib: 8,
            argon2_iterations: 1,
            ..config::Accounts::default()
        }
    }

    #[tokio::test]
    async fn hashes_verify_and_unknown_users_cost_the_same() {
        let h = Hasher::new(&cheap()).unwrap();
        let phc = h.hash("correct horse battery").await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=8,t=1,p=1$"), "{phc}");
        assert!(h.verify("correct horse battery", Some(&phc)).await.unwrap());
        assert!(!h.verify("wrong horse battery", Some(&phc)).await.unwrap());
        let before = h.computed();
        assert!(!h.verify("correct horse battery", None).await.unwrap());
        assert_eq!(
            h.computed(),
            before + 1,
            "an unknown user costs one hash too"
        );
        assert!(!h.verify("x", Some("not a phc")).await.unwrap());
    }

    #[test]
    fn weak_passwords_are_named() {
        let email = tenant_model::Email::parse("ana.souza@loja.com").unwrap();
        for (pw, why) in [
            ("short", "at least 10"),
            (&"a".repeat(129), "at most 128"),
            ("aaaaaaaaaaaa", "repetitive"),
            ("1234567890", "common"),
            ("qwertyuiop", "common"),
            ("Ana.Souza-2024!", "email"),
            ("tab\there-is-long", "control"),
        ] {
            let e = check_new(pw, &email).unwrap_err().to_string();
            assert!(e.contains(why), "{pw:?}: {e}");
            assert!(!e.contains(pw), "the password is not echoed: {e}");
        }
        assert!(check_new("Vendas de carros 2026", &email).is_ok());
        assert!(check_new(&one_time(), &email).is_ok());
    }
}
