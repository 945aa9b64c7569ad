//! People who log in: users of an empresa, logins, sessions with rotating refresh tokens,
//! password changes and resets, and the limits on password guessing.
//!
//! The control plane owns `usuarios`; it signs short-lived access tokens (kind `user`:
//! one empresa, a role, a session id) that routers verify with the public key. A session
//! is revocable: logging out, a password change or reset, disabling the user, or reusing
//! an old refresh token revokes it, and the revocation reaches every router through the
//! same feed as caller tokens.

pub mod password;

use crate::auth::Actor;
use crate::catalog::{Catalog, NewUser, Refreshed, UserRecord};
use crate::config;
use crate::error::{Error, Result};
use crate::tokens::Minter;
use caller_auth::Claims;
use password::Hasher;
use sha2::{Digest, Sha256};
use tenant_model::{Email, TenantStatus, UserRole, UserStatus};

/// What a login or refresh hands back.
pub struct Session {
    pub user: UserRecord,
    pub access_token: String,
    pub refresh_token: String,
    pub access_ttl_secs: u64,
    pub session_ttl_secs: u64,
}

/// The one answer to a wrong password and an unknown email alike.
const BAD_LOGIN: &str = "invalid email or password";

/// Users, logins and sessions.
#[derive(Clone)]
pub struct Accounts {
    catalog: Catalog,
    hasher: Hasher,
    minter: Minter,
    cfg: config::Accounts,
}

impl Accounts {
    pub fn new(catalog: Catalog, minter: Minter, cfg: &config::Accounts) -> Result<Accounts> {
        Ok(Accounts {
            catalog,
            hasher: Hasher::new(cfg)?,
            minter,
            cfg: cfg.clone(),
        })
    }

    /// Password hashes computed by this replica so far.
    pub fn hashes_computed(&self) -> u64 {
        self.hasher.computed()
    }

    /// Whether to take the client address from `x-forwarded-for`.
    pub fn trust_forwarded_for(&self) -> bool {
        self.cfg.trust_forwarded_for
    }

    /// Logs a user in from `address`: the same answer and the same hash work for an
    /// unknown email and a wrong password; too many failures for the email or the address
    /// hold further attempts back (without hashing) for a while.
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        address: Option<&str>,
    ) -> Result<Session> {
        let email = Email::parse(email).map_err(|e| Error::InvalidArgument(e.0))?;
        if password.is_empty() || password.chars().count() > password::MAX_LEN {
            return Err(Error::InvalidArgument(format!(
                "password must have 1 to {} characters",
                password::MAX_LEN
            )));
        }
        let account_key = format!("email:{email}");
        let mut keys = vec![account_key.clone()];
        if let Some(a) = address {
            keys.push(format!("addr:{a}"));
        }
        if let Some(wait) = self.catalog.login_held(&keys).await? {
            return Err(Error::ResourceExhausted(format!(
                "too many failed logins; retry in {wait} s"
            )));
        }
        let user = self.catalog.user_by_email(&email).await?;
        let matched = self
            .hasher
            .verify(password, user.as_ref().map(|u| u.password_hash.as_str()))
            .await?;
        let user = match user {
            Some(user) if matched => user,
            _ => {
                self.catalog
                    .login_failed(
                        &account_key,
                        self.cfg.account_free_failures,
                        self.cfg.max_lockout_secs,
                    )
                    .await?;
                if let Some(a) = address {
                    self.catalog
                        .login_failed(
                            &format!("addr:{a}"),
                            self.cfg.address_free_failures,
                            self.cfg.max_lockout_secs,
                        )
                        .await?;
                }
                tracing::info!("login refused: bad email or password");
                return Err(Error::Unauthenticated(BAD_LOGIN.into()));
            }
        };
        self.catalog.login_succeeded(&account_key).await?;
        usable(&user)?;
        let session = crate::tokens::new_token_id();
        let (refresh, refresh_hash) = new_secret();
        self.catalog
            .start_session(
                &user,
                &session,
                &refresh_hash,
                self.cfg.session_ttl_secs,
                address,
            )
            .await?;
        let actor = Actor {
            name: format!("user:{}", user.id),
            token_id: Some(session.clone()),
        };
        self.catalog
            .audit(
                &actor,
                "login",
                Some(user.tenant_id),
                &user.email,
                serde_json::json!({"address": address}),
            )
            .await?;
        self.session(user, &session, refresh)
    }

    /// Exchanges a refresh token for a new access and refresh token; an old refresh token
    /// presented again ends its session.
    pub async fn refresh(&self, refresh_token: &str) -> Result<Session> {
        let Some(hash) = secret_hash(refresh_token) else {
            return Err(Error::Unauthenticated(
                "refresh token invalid or expired".into(),
            ));
        };
        let (next, next_hash) = new_secret();
        match self
            .catalog
            .refresh_session(
                &hash,
                &next_hash,
                self.cfg.session_ttl_secs,
                self.cfg.access_ttl_secs,
            )
            .await?
        {
            Refreshed::Rotated { user, session } => {
                if let Err(e) = usable(&user) {
                    self.catalog
                        .end_session(
                            &session,
                            &Actor::system("refresh"),
                            self.cfg.access_ttl_secs,
                        )
                        .await?;
                    return Err(e);
                }
                self.session(user, &session, next)
            }
            Refreshed::Reused { session, user_id } => {
                tracing::warn!(
                    user = user_id,
                    "an old refresh token was presented again; session revoked"
                );
                let actor = Actor {
                    name: format!("user:{user_id}"),
                    token_id: Some(session),
                };
                self.catalog
                    .audit_outcome(
                        &actor,
                        "refresh token reused: session revoked",
                        None,
                        "",
                        serde_json::json!({}),
                        "denied",
                    )
                    .await?;
                Err(Error::Unauthenticated(
                    "refresh token already used; the session is ended, log in again".into(),
                ))
            }
            Refreshed::Invalid => Err(Error::Unauthenticated(
                "refresh token invalid or expired".into(),
            )),
        }
    }

    /// The live user behind an access token: its session unrevoked, the user active.
    pub async fn caller(&self, claims: &Claims) -> Result<UserRecord> {
        let stale = || Error::Unauthenticated("session ended; log in again".into());
        let sid = claims.sid.as_deref().ok_or_else(stale)?;
        let id = claims
            .sub
            .strip_prefix("user:")
            .and_then(|i| i.parse::<i64>().ok())
            .ok_or_else(stale)?;
        if !self.catalog.session_live(sid).await? {
            return Err(stale());
        }
        let user = self.catalog.user(id).await?.ok_or_else(stale)?;
        if user.status != UserStatus::Active {
            return Err(stale());
        }
        Ok(user)
    }

    /// Ends the session of an access token.
    pub async fn logout(&self, claims: &Claims) -> Result<u64> {
        let user = self.caller(claims).await?;
        let sid = claims.sid.as_deref().unwrap_or_default();
        let ended = self
            .catalog
            .end_session(sid, &user_actor(&user, claims), self.cfg.access_ttl_secs)
            .await?;
        Ok(ended)
    }

    /// Changes the caller's password (the current one must match) and ends its other
    /// sessions.
    pub async fn change_password(&self, claims: &Claims, current: &str, new: &str) -> Result<u64> {
        let user = self.caller(claims).await?;
        let key = format!("email:{}", user.email);
        if let Some(wait) = self.catalog.login_held(std::slice::from_ref(&key)).await? {
            return Err(Error::ResourceExhausted(format!(
                "too many failed attempts; retry in {wait} s"
            )));
        }
        if current.chars().count() > password::MAX_LEN
            || !self
                .hasher
                .verify(current, Some(&user.password_hash))
                .await?
        {
            self.catalog
                .login_failed(
                    &key,
                    self.cfg.account_free_failures,
                    self.cfg.max_lockout_secs,
                )
                .await?;
            return Err(Error::Unauthenticated("current password is wrong".into()));
        }
        let email = Email::parse(&user.email).map_err(|e| Error::Internal(e.0))?;
        password::check_new(new, &email)?;
        let hash = self.hasher.hash(new).await?;
        let actor = user_actor(&user, claims);
        let ended = self
            .catalog
            .set_password(
                user.id,
                &hash,
                false,
                claims.sid.as_deref(),
                &actor,
                self.cfg.access_ttl_secs,
            )
            .await?;
        self.catalog
            .audit(
                &actor,
                "change password",
                Some(user.tenant_id),
                &user.email,
                serde_json::json!({"sessions_ended": ended}),
            )
            .await?;
        Ok(ended)
    }

    /// A one-time password-reset token for a user of a tenant `caller` is granted; the
    /// same `NotFound` for an unknown email and a user of another tenant.
    pub async fn request_reset(&self, caller: &Claims, email: &str) -> Result<(String, u64)> {
        let email = Email::parse(email).map_err(|e| Error::InvalidArgument(e.0))?;
        let user = self
            .catalog
            .user_by_email(&email)
            .await?
            .filter(|u| caller.grants(u.tenant_id))
            .ok_or_else(|| Error::NotFound("no such user among the caller's tenants".into()))?;
        let (token, hash) = new_secret();
        let actor = Actor {
            name: caller.sub.clone(),
            token_id: Some(caller.jti.clone()),
        };
        self.catalog
            .add_password_reset(&hash, user.id, &actor, self.cfg.reset_ttl_secs)
            .await?;
        self.catalog
            .audit(
                &actor,
                "password reset requested",
                Some(user.tenant_id),
                &user.email,
                serde_json::json!({}),
            )
            .await?;
        Ok((token, self.cfg.reset_ttl_secs))
    }

    /// Sets a new password with a reset token (used up only if the password is accepted)
    /// and ends every session of the user.
    pub async fn reset_password(&self, token: &str, new: &str) -> Result<u64> {
        let invalid = || Error::Unauthenticated("reset token invalid, used or expired".into());
        let hash = secret_hash(token).ok_or_else(invalid)?;
        let user_id = self
            .catalog
            .password_reset_user(&hash)
            .await?
            .ok_or_else(invalid)?;
        let user = self.catalog.user(user_id).await?.ok_or_else(invalid)?;
        let email = Email::parse(&user.email).map_err(|e| Error::Internal(e.0))?;
        password::check_new(new, &email)?;
        let phc = self.hasher.hash(new).await?;
        if self.catalog.take_password_reset(&hash).await? != Some(user_id) {
            return Err(invalid());
        }
        let actor = Actor::system("password-reset");
        let ended = self
            .catalog
            .set_password(user_id, &phc, false, None, &actor, self.cfg.access_ttl_secs)
            .await?;
        self.catalog
            .login_succeeded(&format!("email:{}", user.email))
            .await?;
        self.catalog
            .audit(
                &actor,
                "password reset",
                Some(user.tenant_id),
                &user.email,
                serde_json::json!({"sessions_ended": ended}),
            )
            .await?;
        Ok(ended)
    }

    /// Adds a user to `tenant_id`: with `password` (checked) or a generated one-time
    /// password (returned; to be changed at first login).
    pub async fn add_user(
        &self,
        tenant_id: i64,
        email: &str,
        name: &str,
        role: UserRole,
        password: Option<&str>,
        by: &Actor,
    ) -> Result<(UserRecord, Option<String>)> {
        let email = Email::parse(email).map_err(|e| Error::InvalidArgument(e.0))?;
        if name.chars().count() > 200 || name.chars().any(char::is_control) {
            return Err(Error::InvalidArgument(
                "name must have at most 200 characters and no control characters".into(),
            ));
        }
        let (secret, one_time) = match password {
            Some(p) => {
                password::check_new(p, &email)?;
                (p.to_string(), None)
            }
            None => {
                let p = password::one_time();
                (p.clone(), Some(p))
            }
        };
        let hash = self.hasher.hash(&secret).await?;
        let user = self
            .catalog
            .add_user(
                &NewUser {
                    tenant_id,
                    email: &email,
                    name: name.trim(),
                    role,
                    password_hash: &hash,
                    must_change_password: one_time.is_some(),
                },
                by,
            )
            .await?;
        self.catalog
            .audit(
                by,
                "add user",
                Some(tenant_id),
                &user.email,
                serde_json::json!({"role": role.as_str()}),
            )
            .await?;
        Ok((user, one_time))
    }

    /// Changes a user's role or status (see [`Catalog::update_user`]).
    pub async fn update_user(
        &self,
        user: &UserRecord,
        role: Option<UserRole>,
        status: Option<UserStatus>,
        by: &Actor,
    ) -> Result<UserRecord> {
        let updated = self
            .catalog
            .update_user(user.id, role, status, by, self.cfg.access_ttl_secs)
            .await?;
        self.catalog
            .audit(
                by,
                "update user",
                Some(user.tenant_id),
                &user.email,
                serde_json::json!({"role": role.map(UserRole::as_str), "status": status.map(UserStatus::as_str)}),
            )
            .await?;
        Ok(updated)
    }

    /// Sets a user's password to a generated one-time password (returned), ending its
    /// sessions (an operator's reset).
    pub async fn reset_by_operator(&self, user: &UserRecord, by: &Actor) -> Result<String> {
        let one_time = password::one_time();
        let hash = self.hasher.hash(&one_time).await?;
        let ended = self
            .catalog
            .set_password(user.id, &hash, true, None, by, self.cfg.access_ttl_secs)
            .await?;
        self.catalog
            .audit(
                by,
                "reset user password",
                Some(user.tenant_id),
                &user.email,
                serde_json::json!({"sessions_ended": ended}),
            )
            .await?;
        Ok(one_time)
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    fn session(&self, user: UserRecord, session: &str, refresh_token: String) -> Result<Session> {
        let access_token = self.minter.sign_user(
            user.id,
            user.tenant_id,
            user.role,
            session,
            self.cfg.access_ttl_secs,
        )?;
        Ok(Session {
            user,
            access_token,
            refresh_token,
            access_ttl_secs: self.cfg.access_ttl_secs,
            session_ttl_secs: self.cfg.session_ttl_secs,
        })
    }
}

/// A user may hold a session: active, and its empresa active (or being restored).
fn usable(user: &UserRecord) -> Result<()> {
    if user.status != UserStatus::Active {
        return Err(Error::PermissionDenied("user is disabled".into()));
    }
    match user.tenant_status {
        TenantStatus::Active | TenantStatus::Restoring => Ok(()),
        other => Err(Error::FailedPrecondition(format!(
            "the user's empresa is {other}; logins resume when it is active"
        ))),
    }
}

fn user_actor(user: &UserRecord, claims: &Claims) -> Actor {
    Actor {
        name: format!("user:{}", user.id),
        token_id: claims.sid.clone(),
    }
}

/// A fresh opaque secret (32 random bytes, URL-safe base64) and its SHA-256 (what the
/// catalog keeps).
fn new_secret() -> (String, Vec<u8>) {
    let secret = crate::crypto::random_password();
    let hash = Sha256::digest(secret.as_bytes()).to_vec();
    (secret, hash)
}

/// The SHA-256 of a presented secret, if it has the shape of one.
fn secret_hash(presented: &str) -> Option<Vec<u8>> {
    (presented.len() == 43
        && presented
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    .then(|| Sha256::digest(presented.as_bytes()).to_vec())
}
