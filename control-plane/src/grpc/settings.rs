//! `TenantAdmin` methods for a tenant's settings and secrets.

use super::admin::AdminService;
use crate::auth::Role;
use crate::catalog::TenantRecord;
use crate::error::Error;
use proto::control::v1 as pb;
use tonic::{Request, Response, Status as GrpcStatus};

impl AdminService {
    async fn settings_pb(&self, t: &TenantRecord) -> Result<pb::TenantSettings, Error> {
        let settings = self.catalog.settings(t.id).await?;
        let secrets = self.catalog.secret_names(t.id).await?;
        Ok(pb::TenantSettings {
            tenant: t.slug.clone(),
            settings_json: serde_json::Value::Object(settings).to_string(),
            secrets: secrets
                .into_iter()
                .map(|(name, updated_at_ms)| pb::SecretInfo {
                    name,
                    updated_at_ms,
                })
                .collect(),
        })
    }

    pub(super) async fn do_get_settings(
        &self,
        request: Request<pb::TenantRef>,
    ) -> Result<Response<pb::TenantSettings>, GrpcStatus> {
        self.actor(&request, Role::Viewer, "settings.show").await?;
        let t = self.tenant(&request.into_inner().tenant).await?;
        Ok(Response::new(self.settings_pb(&t).await?))
    }

    pub(super) async fn do_update_settings(
        &self,
        request: Request<pb::UpdateSettingsRequest>,
    ) -> Result<Response<pb::TenantSettings>, GrpcStatus> {
        let actor = self
            .actor(&request, Role::Operator, "settings.update")
            .await?;
        let r = request.into_inner();
        let changes = crate::settings::parse(&r.settings_json)?;
        let t = self.tenant(&r.tenant).await?;
        let keys: Vec<String> = changes.keys().cloned().collect();
        self.catalog.update_settings(t.id, changes, &actor).await?;
        self.catalog
            .audit(
                &actor,
                "settings.update",
                Some(t.id),
                &t.slug,
                serde_json::json!({"keys": keys}),
            )
            .await?;
        Ok(Response::new(self.settings_pb(&t).await?))
    }

    pub(super) async fn do_set_secret(
        &self,
        request: Request<pb::SetSecretRequest>,
    ) -> Result<Response<pb::TenantSettings>, GrpcStatus> {
        let actor = self.actor(&request, Role::Operator, "secret.set").await?;
        let r = request.into_inner();
        crate::settings::check_secret(&r.name, &r.value)?;
        let t = self.tenant(&r.tenant).await?;
        self.catalog
            .set_secret(t.id, &r.name, &r.value, &actor)
            .await?;
        self.catalog
            .audit(
                &actor,
                "secret.set",
                Some(t.id),
                &t.slug,
                serde_json::json!({"name": r.name}),
            )
            .await?;
        Ok(Response::new(self.settings_pb(&t).await?))
    }

    pub(super) async fn do_delete_secret(
        &self,
        request: Request<pb::SecretRef>,
    ) -> Result<Response<pb::TenantSettings>, GrpcStatus> {
        let actor = self
            .actor(&request, Role::Operator, "secret.delete")
            .await?;
        let r = request.into_inner();
        let t = self.tenant(&r.tenant).await?;
        if !self.catalog.delete_secret(t.id, &r.name).await? {
            return Err(
                Error::NotFound(format!("tenant {} has no secret {:?}", t.slug, r.name)).into(),
            );
        }
        self.catalog
            .audit(
                &actor,
                "secret.delete",
                Some(t.id),
                &t.slug,
                serde_json::json!({"name": r.name}),
            )
            .await?;
        Ok(Response::new(self.settings_pb(&t).await?))
    }
}
