//! `TenantAdmin` methods for a tenant's WhatsApp numbers.

use super::admin::AdminService;
use crate::auth::Role;
use crate::catalog::TenantRecord;
use crate::error::Error;
use crate::model;
use proto::control::v1 as pb;
use tonic::{Request, Response, Status as GrpcStatus};

impl AdminService {
    /// The tenant's numbers and instances as they are now (after a change just made).
    async fn numbers_pb(&self, t: &TenantRecord) -> Result<pb::Numbers, Error> {
        let now = self.catalog.tenant_by_id(t.id).await?;
        let t = now.as_ref().unwrap_or(t);
        Ok(pb::Numbers {
            tenant: t.slug.clone(),
            numbers: self
                .catalog
                .numbers(t.id)
                .await?
                .into_iter()
                .map(|n| pb::NumberInfo {
                    phone_number_id: n.phone_number_id,
                    display_phone: n.display_phone.unwrap_or_default(),
                    primary: n.primary,
                })
                .collect(),
            evolution_instances: t.evolution_instances.clone(),
        })
    }

    pub(super) async fn do_add_number(
        &self,
        request: Request<pb::NumberRequest>,
    ) -> Result<Response<pb::Numbers>, GrpcStatus> {
        let actor = self.actor(&request, Role::Operator, "number.add").await?;
        let r = request.into_inner();
        let number = model::phone_number_id(&r.phone_number_id)?;
        let display = match r.display_phone.trim() {
            "" => None,
            p => Some(model::display_phone(p)?),
        };
        let t = self.tenant(&r.tenant).await?;
        self.catalog
            .add_number(t.id, &number, display.as_deref(), &actor)
            .await?;
        self.catalog
            .audit(
                &actor,
                "number.add",
                Some(t.id),
                &t.slug,
                serde_json::json!({"phone_number_id": number}),
            )
            .await?;
        Ok(Response::new(self.numbers_pb(&t).await?))
    }

    pub(super) async fn do_remove_number(
        &self,
        request: Request<pb::NumberRequest>,
    ) -> Result<Response<pb::Numbers>, GrpcStatus> {
        let actor = self
            .actor(&request, Role::Operator, "number.remove")
            .await?;
        let r = request.into_inner();
        let number = model::phone_number_id(&r.phone_number_id)?;
        let t = self.tenant(&r.tenant).await?;
        if !self.catalog.remove_number(t.id, &number).await? {
            return Err(
                Error::NotFound(format!("tenant {} has no number {number}", t.slug)).into(),
            );
        }
        self.catalog
            .audit(
                &actor,
                "number.remove",
                Some(t.id),
                &t.slug,
                serde_json::json!({"phone_number_id": number}),
            )
            .await?;
        Ok(Response::new(self.numbers_pb(&t).await?))
    }

    pub(super) async fn do_add_evolution_instance(
        &self,
        request: Request<pb::EvolutionInstanceRequest>,
    ) -> Result<Response<pb::EvolutionInstanceAdded>, GrpcStatus> {
        let actor = self
            .actor(&request, Role::Operator, "evolution-instance.add")
            .await?;
        let r = request.into_inner();
        let name = instance_name(&r.name)?;
        let t = self.tenant(&r.tenant).await?;
        let token = crate::crypto::random_password();
        self.catalog
            .add_evolution_instance(t.id, &name, &token, &actor)
            .await?;
        self.catalog
            .audit(
                &actor,
                "evolution-instance.add",
                Some(t.id),
                &t.slug,
                serde_json::json!({"instance": name}),
            )
            .await?;
        Ok(Response::new(pb::EvolutionInstanceAdded {
            webhook_path: format!("/webhooks/evolution/i/{name}"),
            name,
            token,
        }))
    }

    pub(super) async fn do_remove_evolution_instance(
        &self,
        request: Request<pb::EvolutionInstanceRequest>,
    ) -> Result<Response<pb::Numbers>, GrpcStatus> {
        let actor = self
            .actor(&request, Role::Operator, "evolution-instance.remove")
            .await?;
        let r = request.into_inner();
        let name = instance_name(&r.name)?;
        let t = self.tenant(&r.tenant).await?;
        if !self.catalog.remove_evolution_instance(t.id, &name).await? {
            return Err(Error::NotFound(format!(
                "tenant {} has no evolution instance {name}",
                t.slug
            ))
            .into());
        }
        self.catalog
            .audit(
                &actor,
                "evolution-instance.remove",
                Some(t.id),
                &t.slug,
                serde_json::json!({"instance": name}),
            )
            .await?;
        Ok(Response::new(self.numbers_pb(&t).await?))
    }

    pub(super) async fn do_list_numbers(
        &self,
        request: Request<pb::TenantRef>,
    ) -> Result<Response<pb::Numbers>, GrpcStatus> {
        self.actor(&request, Role::Viewer, "number.list").await?;
        let t = self.tenant(&request.into_inner().tenant).await?;
        Ok(Response::new(self.numbers_pb(&t).await?))
    }
}

/// An Evolution instance name (one rule, `tenant_model::InstanceName`).
fn instance_name(raw: &str) -> Result<String, Error> {
    Ok(tenant_model::InstanceName::parse(raw.trim())?
        .as_str()
        .to_string())
}
