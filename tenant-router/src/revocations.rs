//! Caller tokens the control plane revoked and that have not expired.
//!
//! Loaded in full from the directory (`ListRevokedTokens`) at start and after every
//! reconnect of the change stream, and kept current by the stream's revocation events. A
//! router that has never loaded the list refuses calls (UNAVAILABLE) rather than accept a
//! token it cannot check.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Most revoked tokens remembered. A revoked token that is evicted is refused anyway
/// once it expires; past this many live revocations, rotate the signing key instead.
pub const CAPACITY: u64 = 1_000_000;

/// How long a revocation is remembered: longer than any token may live.
const REMEMBER: Duration = Duration::from_secs(400 * 24 * 3600);

/// The set of revoked caller token ids.
pub struct Revocations {
    revoked: moka::sync::Cache<String, ()>,
    loaded: AtomicBool,
}

impl Default for Revocations {
    fn default() -> Self {
        Revocations {
            revoked: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(REMEMBER)
                .build(),
            loaded: AtomicBool::new(false),
        }
    }
}

impl Revocations {
    /// Whether the full list was loaded at least once.
    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Whether the token with this id was revoked.
    pub fn is_revoked(&self, token_id: &str) -> bool {
        self.revoked.contains_key(token_id)
    }

    /// Adds one revocation (from the change stream).
    pub fn revoke(&self, token_id: &str) {
        self.revoked.insert(token_id.to_string(), ());
    }

    /// Adds a full list from the directory and marks the set loaded.
    pub fn load(&self, ids: Vec<String>) {
        for id in ids {
            self.revoked.insert(id, ());
        }
        self.loaded.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loaded_only_after_a_full_list() {
        let r = Revocations::default();
        assert!(!r.loaded());
        r.revoke("a");
        assert!(r.is_revoked("a") && !r.loaded());
        r.load(vec!["b".into()]);
        assert!(r.loaded() && r.is_revoked("b") && !r.is_revoked("c"));
    }
}
