//! `TenantAdmin` methods for a tenant's users (operators through `tenantctl user`).

use super::accounts::user_to_wire;
use super::admin::AdminService;
use crate::auth::Role;
use crate::catalog::UserRecord;
use crate::error::Error;
use proto::accounts::v1 as ac;
use proto::control::v1 as pb;
use proto::model::{optional, FromWire};
use tenant_model::{Email, UserRole};
use tonic::{Request, Response, Status as GrpcStatus};

impl AdminService {
    pub(super) async fn do_add_user(
        &self,
        request: Request<pb::AdminAddUserRequest>,
    ) -> Result<Response<ac::AddedUser>, GrpcStatus> {
        let actor = self.actor(&request, Role::Operator, "user.add").await?;
        let r = request.into_inner();
        let role = UserRole::from_wire("role", r.role).map_err(Error::from)?;
        let tenant = self.tenant(&r.tenant).await?;
        let password = (!r.password.is_empty()).then_some(r.password.as_str());
        let (user, one_time) = self
            .accounts
            .add_user(tenant.id, &r.email, &r.name, role, password, &actor)
            .await?;
        Ok(Response::new(ac::AddedUser {
            user: Some(user_to_wire(&user)),
            one_time_password: one_time.unwrap_or_default(),
        }))
    }

    pub(super) async fn do_list_users(
        &self,
        request: Request<pb::TenantRef>,
    ) -> Result<Response<ac::ListUsersResponse>, GrpcStatus> {
        self.actor(&request, Role::Viewer, "user.list").await?;
        let tenant = self.tenant(&request.into_inner().tenant).await?;
        let users = self.catalog.users_of(tenant.id).await?;
        Ok(Response::new(ac::ListUsersResponse {
            users: users.iter().map(user_to_wire).collect(),
        }))
    }

    pub(super) async fn do_update_user(
        &self,
        request: Request<pb::AdminUpdateUserRequest>,
    ) -> Result<Response<ac::User>, GrpcStatus> {
        let actor = self.actor(&request, Role::Operator, "user.update").await?;
        let r = request.into_inner();
        let role = optional::<UserRole>("role", r.role).map_err(Error::from)?;
        let status = optional("status", r.status).map_err(Error::from)?;
        if role.is_none() && status.is_none() {
            return Err(Error::InvalidArgument(
                "nothing to change: give a role or a status".into(),
            )
            .into());
        }
        let user = self.user_by_email(&r.email).await?;
        let updated = self
            .accounts
            .update_user(&user, role, status, &actor)
            .await?;
        Ok(Response::new(user_to_wire(&updated)))
    }

    pub(super) async fn do_reset_user_password(
        &self,
        request: Request<pb::UserRef>,
    ) -> Result<Response<ac::AddedUser>, GrpcStatus> {
        let actor = self
            .actor(&request, Role::Operator, "user.reset-password")
            .await?;
        let user = self.user_by_email(&request.into_inner().email).await?;
        let one_time = self.accounts.reset_by_operator(&user, &actor).await?;
        let user = self.catalog.user(user.id).await?.unwrap_or(user);
        Ok(Response::new(ac::AddedUser {
            user: Some(user_to_wire(&user)),
            one_time_password: one_time,
        }))
    }

    async fn user_by_email(&self, raw: &str) -> Result<UserRecord, Error> {
        let email = Email::parse(raw).map_err(Error::from)?;
        self.catalog
            .user_by_email(&email)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no user with email {email}")))
    }
}
