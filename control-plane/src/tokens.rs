//! Minting signed tokens: a lifetime within the configured bounds, a fresh id, a catalog
//! record written before the token leaves, then the signature.

use crate::auth::{Actor, Role};
use crate::catalog::Catalog;
use crate::config;
use crate::error::{Error, Result};
use caller_auth::{Claims, Kind, Signer, Verifier};

/// Mints tokens with the control plane's signing key.
#[derive(Clone)]
pub struct Minter {
    signer: Signer,
    max_ttl_secs: u64,
    default_ttl_secs: u64,
}

/// What a new token is for and whom it names.
pub struct Grant {
    pub kind: Kind,
    pub subject: String,
    /// Caller tokens: tenant ids.
    pub tenants: Vec<i64>,
    /// Caller tokens: every tenant.
    pub all: bool,
    /// Operator tokens: the role at issue time (informational; the catalog decides).
    pub role: Option<Role>,
    /// Asked lifetime in seconds (0: the configured default).
    pub ttl_secs: u64,
    /// Caller tokens: extra permissions (see `caller_auth::SCOPE_SECRETS`).
    pub scopes: Vec<String>,
}

/// A minted token.
pub struct Minted {
    pub token: String,
    pub claims: Claims,
}

impl Minter {
    /// A minter with `signer` and the lifetime bounds of `cfg`.
    pub fn new(signer: Signer, cfg: &config::Tokens) -> Minter {
        Minter {
            signer,
            max_ttl_secs: cfg.max_ttl_secs,
            default_ttl_secs: cfg.default_ttl_secs,
        }
    }

    /// Verifies tokens this minter made.
    pub fn verifier(&self) -> Verifier {
        self.signer.verifier().clone()
    }

    /// The lifetime a token asked with `asked` seconds gets (0: the default), or why it
    /// cannot have it. Check this before creating anything the token is for.
    pub fn ttl(&self, asked: u64) -> Result<u64> {
        match asked {
            0 => Ok(self.default_ttl_secs),
            n if n > self.max_ttl_secs => Err(Error::InvalidArgument(format!(
                "ttl of {n} seconds is above the configured maximum of {} seconds",
                self.max_ttl_secs
            ))),
            n => Ok(n),
        }
    }

    /// Records and signs a token for `grant`, issued by `by`.
    pub async fn mint(&self, catalog: &Catalog, by: &Actor, grant: Grant) -> Result<Minted> {
        let ttl = self.ttl(grant.ttl_secs)?;
        let now = caller_auth::now_secs();
        let claims = Claims {
            jti: new_token_id(),
            kind: grant.kind,
            sub: grant.subject,
            tenants: grant.tenants,
            all: grant.all,
            role: grant.role.map(|r| r.as_str().to_string()),
            sid: None,
            scopes: grant.scopes,
            exp: now + ttl,
            iat: now,
        };
        catalog.record_token(&claims, by).await?;
        let token = self
            .signer
            .sign(&claims)
            .map_err(|e| Error::internal("token", e))?;
        Ok(Minted { token, claims })
    }
}

impl Minter {
    /// Signs a user's access token for `session` (not recorded: the session is).
    pub fn sign_user(
        &self,
        user_id: i64,
        tenant_id: i64,
        role: tenant_model::UserRole,
        session: &str,
        ttl_secs: u64,
    ) -> Result<String> {
        let now = caller_auth::now_secs();
        let claims = Claims {
            jti: new_token_id(),
            kind: Kind::User,
            sub: format!("user:{user_id}"),
            tenants: vec![tenant_id],
            all: false,
            role: Some(role.as_str().to_string()),
            sid: Some(session.to_string()),
            scopes: Vec::new(),
            exp: now + ttl_secs,
            iat: now,
        };
        self.signer
            .sign(&claims)
            .map_err(|e| Error::internal("token", e))
    }
}

/// A fresh token id: 16 random bytes, URL-safe base64.
pub fn new_token_id() -> String {
    crate::crypto::random_password()[..22].to_string()
}
