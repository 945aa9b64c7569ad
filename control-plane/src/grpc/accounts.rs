//! `tenancy.accounts.v1`: `Auth` (login, refresh, logout, password change and reset) and
//! `Users` (a tenant's admins manage its users). No interceptor: each method names the
//! credential it takes (none, an access token, a caller token).

use crate::accounts::{Accounts, Session};
use crate::auth::{bearer, Actor};
use crate::catalog::UserRecord;
use crate::error::{Error, Result};
use caller_auth::{Claims, Kind, Verifier};
use proto::accounts::v1 as pb;
use proto::model::{optional, FromWire, ToWire};
use tenant_model::UserRole;
use tonic::{Request, Response, Status};

/// Both services share the accounts and the token verifier.
#[derive(Clone)]
pub struct AccountsService {
    accounts: Accounts,
    verifier: Verifier,
}

impl AccountsService {
    pub fn new(accounts: Accounts, verifier: Verifier) -> AccountsService {
        AccountsService { accounts, verifier }
    }

    /// The claims of the request's bearer token of `kind`.
    fn claims<T>(&self, request: &Request<T>, kind: Kind) -> Result<Claims> {
        let token = bearer(request).map_err(|s| Error::Unauthenticated(s.message().into()))?;
        self.verifier
            .verify(token, kind)
            .map_err(|e| Error::Unauthenticated(format!("{} token refused: {e}", kind.as_str())))
    }

    /// The live user behind the request's access token.
    async fn user<T>(&self, request: &Request<T>) -> Result<(UserRecord, Claims)> {
        let claims = self.claims(request, Kind::User)?;
        Ok((self.accounts.caller(&claims).await?, claims))
    }

    /// The live user behind the request's access token, if it manages users (admin or
    /// owner).
    async fn manager<T>(&self, request: &Request<T>) -> Result<(UserRecord, Actor)> {
        let (user, claims) = self.user(request).await?;
        if !user.role.allows(UserRole::Admin) {
            return Err(Error::PermissionDenied(format!(
                "a {} may not manage users: it needs the admin role",
                user.role
            )));
        }
        let actor = Actor {
            name: format!("user:{}", user.id),
            token_id: claims.sid,
        };
        Ok((user, actor))
    }

    /// The client address a login counts against: the peer, or behind a trusted proxy the
    /// right-most `x-forwarded-for` entry.
    fn address<T>(&self, request: &Request<T>) -> Option<String> {
        if self.accounts.trust_forwarded_for() {
            // The proxy appends the address it saw: only the right-most entry is its word.
            let entries: Vec<String> = request
                .metadata()
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(|v| v.trim().to_string())
                .collect();
            let forwarded = entries
                .last()
                .filter(|v| v.parse::<std::net::IpAddr>().is_ok())
                .cloned();
            if forwarded.is_some() {
                return forwarded;
            }
        }
        request.remote_addr().map(|a| a.ip().to_string())
    }
}

/// A user on the wire.
pub fn user_to_wire(u: &UserRecord) -> pb::User {
    pb::User {
        id: u.id,
        email: u.email.clone(),
        name: u.name.clone(),
        role: u.role.to_wire(),
        status: u.status.to_wire(),
        tenant_id: u.tenant_id,
        tenant_slug: u.tenant_slug.clone(),
        last_login_ms: u.last_login_ms.unwrap_or_default(),
        must_change_password: u.must_change_password,
    }
}

fn session_to_wire(s: Session) -> pb::LoginResponse {
    pb::LoginResponse {
        tenant_id: s.user.tenant_id,
        tenant_slug: s.user.tenant_slug.clone(),
        sector: s.user.sector.as_str().to_string(),
        role: s.user.role.to_wire(),
        user: Some(user_to_wire(&s.user)),
        access_token: s.access_token,
        access_expires_in_secs: i64::try_from(s.access_ttl_secs).unwrap_or(i64::MAX),
        refresh_token: s.refresh_token,
        refresh_expires_in_secs: i64::try_from(s.session_ttl_secs).unwrap_or(i64::MAX),
    }
}

#[tonic::async_trait]
impl pb::auth_server::Auth for AccountsService {
    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let address = self.address(&request);
        let r = request.into_inner();
        let session = self
            .accounts
            .login(&r.email, &r.password, address.as_deref())
            .await?;
        Ok(Response::new(session_to_wire(session)))
    }

    async fn refresh(
        &self,
        request: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let session = self
            .accounts
            .refresh(&request.into_inner().refresh_token)
            .await?;
        Ok(Response::new(session_to_wire(session)))
    }

    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let claims = self.claims(&request, Kind::User)?;
        let ended = self.accounts.logout(&claims).await?;
        Ok(Response::new(ended_pb(ended)))
    }

    async fn change_password(
        &self,
        request: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let claims = self.claims(&request, Kind::User)?;
        let r = request.into_inner();
        let ended = self
            .accounts
            .change_password(&claims, &r.current_password, &r.new_password)
            .await?;
        Ok(Response::new(ended_pb(ended)))
    }

    async fn request_password_reset(
        &self,
        request: Request<pb::PasswordResetRequest>,
    ) -> Result<Response<pb::PasswordResetToken>, Status> {
        let claims = self.claims(&request, Kind::Caller)?;
        if !self
            .accounts
            .catalog()
            .caller_token_live(&claims.jti)
            .await?
        {
            return Err(Error::Unauthenticated("caller token revoked".into()).into());
        }
        let (token, ttl) = self
            .accounts
            .request_reset(&claims, &request.into_inner().email)
            .await?;
        Ok(Response::new(pb::PasswordResetToken {
            token,
            expires_in_secs: i64::try_from(ttl).unwrap_or(i64::MAX),
        }))
    }

    async fn reset_password(
        &self,
        request: Request<pb::ResetPasswordRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let r = request.into_inner();
        let ended = self
            .accounts
            .reset_password(&r.token, &r.new_password)
            .await?;
        Ok(Response::new(ended_pb(ended)))
    }
}

#[tonic::async_trait]
impl pb::users_server::Users for AccountsService {
    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let (me, _) = self.manager(&request).await?;
        let users = self.accounts.catalog().users_of(me.tenant_id).await?;
        Ok(Response::new(pb::ListUsersResponse {
            users: users.iter().map(user_to_wire).collect(),
        }))
    }

    async fn add_user(
        &self,
        request: Request<pb::AddUserRequest>,
    ) -> Result<Response<pb::AddedUser>, Status> {
        let (me, actor) = self.manager(&request).await?;
        let r = request.into_inner();
        let role = UserRole::from_wire("role", r.role).map_err(Error::from)?;
        grantable(&me, role)?;
        let (user, one_time) = self
            .accounts
            .add_user(me.tenant_id, &r.email, &r.name, role, None, &actor)
            .await?;
        Ok(Response::new(pb::AddedUser {
            user: Some(user_to_wire(&user)),
            one_time_password: one_time.unwrap_or_default(),
        }))
    }

    async fn update_user(
        &self,
        request: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let (me, actor) = self.manager(&request).await?;
        let r = request.into_inner();
        let role = optional::<UserRole>("role", r.role).map_err(Error::from)?;
        let status = optional("status", r.status).map_err(Error::from)?;
        // A user of another empresa is as unknown as a missing one.
        let target = self
            .accounts
            .catalog()
            .user(r.user_id)
            .await?
            .filter(|u| u.tenant_id == me.tenant_id)
            .ok_or_else(|| Error::NotFound(format!("user {} not found", r.user_id)))?;
        grantable(&me, target.role)?;
        if let Some(role) = role {
            grantable(&me, role)?;
        }
        let updated = self
            .accounts
            .update_user(&target, role, status, &actor)
            .await?;
        Ok(Response::new(user_to_wire(&updated)))
    }
}

fn ended_pb(ended: u64) -> pb::LogoutResponse {
    pb::LogoutResponse {
        sessions_ended: i64::try_from(ended).unwrap_or(i64::MAX),
    }
}

/// A manager may give or change only roles up to its own.
fn grantable(me: &UserRecord, role: UserRole) -> Result<()> {
    if me.role.allows(role) {
        Ok(())
    } else {
        Err(Error::PermissionDenied(format!(
            "a {} may not manage an {role}",
            me.role
        )))
    }
}
