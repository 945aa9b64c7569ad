//! The admin API's router registry and credential rotation (kept apart from tenant
//! lifecycle in `admin`).

use super::admin::{issued, AdminService};
use crate::auth::{Actor, Role};
use crate::catalog::{RouterRecord, TenantRecord};
use crate::error::Error;
use crate::model::{self, TenantKey};
use crate::tokens::{Grant, Minted};
use caller_auth::Kind;
use proto::control::v1 as pb;
use proto::model::ToWire;
use tenant_model::WebhookSource;
use tonic::{Request, Response, Status as GrpcStatus};

/// Tenants rotated at once by one request.
const ROTATE_CONCURRENCY: usize = 4;

pub(super) fn router_pb(r: &RouterRecord, tenants_seen: usize) -> pb::RouterInfo {
    pb::RouterInfo {
        name: r.name.clone(),
        servers: r.servers.clone().unwrap_or_default(),
        all_servers: r.servers.is_none(),
        active: r.active,
        created_by: r.created_by.clone(),
        created_at_ms: r.created_at_ms,
        tenants_seen: u32::try_from(tenants_seen).unwrap_or(u32::MAX),
    }
}

impl AdminService {
    async fn router_token(&self, by: &Actor, name: &str, ttl_secs: u64) -> Result<Minted, Error> {
        self.minter
            .mint(
                &self.catalog,
                by,
                Grant {
                    kind: Kind::Router,
                    subject: name.to_string(),
                    tenants: Vec::new(),
                    all: false,
                    role: None,
                    ttl_secs,
                    scopes: Vec::new(),
                },
            )
            .await
    }

    pub(super) async fn do_add_router(
        &self,
        request: Request<pb::AddRouterRequest>,
    ) -> Result<Response<pb::IssueTokenResponse>, GrpcStatus> {
        let actor = self.actor(&request, Role::Admin, "router.add").await?;
        let req = request.into_inner();
        let name = model::operator_name(&req.name)?;
        if req.all_servers != req.servers.is_empty() {
            return Err(Error::InvalidArgument(
                "name the servers the router may serve, or all of them (not both)".into(),
            )
            .into());
        }
        let mut servers = Vec::with_capacity(req.servers.len());
        for raw in &req.servers {
            let server = model::server_name(raw)?;
            if self.catalog.server_by_name(&server).await?.is_none() {
                return Err(Error::NotFound(format!("server {server:?} is not registered")).into());
            }
            servers.push(server);
        }
        self.minter.ttl(req.ttl_secs)?;
        let scope = (!req.all_servers).then_some(servers.as_slice());
        self.catalog.add_router(&name, scope, &actor).await?;
        let minted = self.router_token(&actor, &name, req.ttl_secs).await?;
        self.catalog
            .audit(
                &actor,
                "router.add",
                None,
                &name,
                serde_json::json!({"servers": scope, "token_id": minted.claims.jti}),
            )
            .await?;
        Ok(Response::new(issued(minted)))
    }

    pub(super) async fn do_issue_router_token(
        &self,
        request: Request<pb::RouterTokenRequest>,
    ) -> Result<Response<pb::IssueTokenResponse>, GrpcStatus> {
        let actor = self.actor(&request, Role::Admin, "router.token").await?;
        let req = request.into_inner();
        let name = model::operator_name(&req.name)?;
        self.catalog
            .router(&name)
            .await?
            .filter(|r| r.active)
            .ok_or_else(|| Error::NotFound(format!("no active router {name:?}")))?;
        let minted = self.router_token(&actor, &name, req.ttl_secs).await?;
        self.catalog
            .audit(
                &actor,
                "router.token",
                None,
                &name,
                serde_json::json!({"token_id": minted.claims.jti}),
            )
            .await?;
        Ok(Response::new(issued(minted)))
    }

    pub(super) async fn do_list_routers(
        &self,
        request: Request<pb::ListRoutersRequest>,
    ) -> Result<Response<pb::ListRoutersResponse>, GrpcStatus> {
        self.actor(&request, Role::Viewer, "router.list").await?;
        let mut out = Vec::new();
        for r in self.catalog.routers().await? {
            let seen = self.catalog.deliveries(&r.name).await?.len();
            out.push(router_pb(&r, seen));
        }
        Ok(Response::new(pb::ListRoutersResponse { routers: out }))
    }

    pub(super) async fn do_revoke_router(
        &self,
        request: Request<pb::RevokeRouterRequest>,
    ) -> Result<Response<pb::RevokeRouterResponse>, GrpcStatus> {
        let actor = self.actor(&request, Role::Admin, "router.revoke").await?;
        let req = request.into_inner();
        let name = model::operator_name(&req.name)?;
        let seen = self.catalog.revoke_router(&name, &actor).await?;
        // Its ingest login stops now; a router registered again gets a new password.
        self.ingest.close_router(&self.catalog, &name).await?;
        let mut tenants = Vec::with_capacity(seen.len());
        for id in &seen {
            if let Some(t) = self.catalog.tenant_by_id(*id).await? {
                tenants.push(t);
            }
        }
        let (rotated, failed) = if req.rotate {
            self.rotate_all(&actor, tenants.clone(), false).await
        } else {
            (Vec::new(), Vec::new())
        };
        let router = self
            .catalog
            .router(&name)
            .await?
            .ok_or_else(|| Error::Internal("router vanished".into()))?;
        self.catalog
            .audit(
                &actor,
                "router.revoke",
                None,
                &name,
                serde_json::json!({
                    "tenants_seen": seen, "rotated": rotated,
                    "rotation_failed": failed.iter().map(|f| &f.slug).collect::<Vec<_>>(),
                }),
            )
            .await?;
        if !failed.is_empty() {
            let list: Vec<String> = failed
                .iter()
                .map(|f| format!("{}: {}", f.slug, f.error))
                .collect();
            return Err(Error::Unavailable(format!(
                "router {name} revoked, but some passwords were not rotated (run `tenantctl rotate` for them): {}",
                list.join("; ")
            ))
            .into());
        }
        Ok(Response::new(pb::RevokeRouterResponse {
            router: Some(router_pb(&router, seen.len())),
            tenants_seen: tenants.iter().map(|t| t.slug.clone()).collect(),
            rotated,
        }))
    }

    pub(super) async fn do_rotate_credentials(
        &self,
        request: Request<pb::RotateRequest>,
    ) -> Result<Response<pb::RotateResponse>, GrpcStatus> {
        let actor = self
            .actor(&request, Role::Operator, "tenant.rotate")
            .await?;
        let req = request.into_inner();
        let tenants = self.selected(&req.tenants, req.all, "rotate").await?;
        let (rotated, failed) = self.rotate_all(&actor, tenants, req.owners).await;
        Ok(Response::new(pb::RotateResponse { rotated, failed }))
    }

    pub(super) async fn do_rekey(
        &self,
        request: Request<pb::RekeyRequest>,
    ) -> Result<Response<pb::RekeyResponse>, GrpcStatus> {
        let actor = self
            .actor(&request, Role::Admin, "master_key.rekey")
            .await?;
        let mut result = self.catalog.reseal_all().await;
        if result.is_ok() {
            // The sealed keys stored beside backup objects follow the catalog's copies.
            if let Err(e) = self.backups.reseal_key_objects().await {
                result = Err(e);
            }
        }
        let outcome = if result.is_ok() { "ok" } else { "failed" };
        let details = match &result {
            Ok(r) => serde_json::json!({"resealed": r.resealed, "already_current": r.current}),
            Err(e) => serde_json::json!({"error": e.to_string()}),
        };
        self.catalog
            .audit_outcome(&actor, "master_key.rekey", None, "", details, outcome)
            .await?;
        let done = result?;
        Ok(Response::new(pb::RekeyResponse {
            resealed: done.resealed,
            already_current: done.current,
            remaining: self.catalog.secrets_under_old_keys().await?,
        }))
    }

    pub(super) async fn do_set_server_password(
        &self,
        request: Request<pb::SetServerPasswordRequest>,
    ) -> Result<Response<pb::Server>, GrpcStatus> {
        let actor = self.actor(&request, Role::Admin, "server.password").await?;
        let req = request.into_inner();
        let server = self.server_named(&req.name).await?;
        if req.admin_password.is_empty() {
            return Err(Error::InvalidArgument("the admin password is empty".into()).into());
        }
        // Checked before it is stored: a wrong password must not lock the control plane out.
        crate::dbserver::connect_unregistered(
            self.catalog.db_tls(),
            (&server.name, &server.host, server.port),
            &server.admin_user,
            &req.admin_password,
            self.connect_timeout,
        )
        .await?;
        self.catalog
            .set_server_password(&server, &req.admin_password)
            .await?;
        self.catalog
            .audit(
                &actor,
                "server.password",
                None,
                &server.name,
                serde_json::json!({}),
            )
            .await?;
        Ok(Response::new(super::admin::server_pb(&server)))
    }

    pub(super) async fn do_rotate_template_owner(
        &self,
        request: Request<pb::ServerRef>,
    ) -> Result<Response<pb::Server>, GrpcStatus> {
        let actor = self
            .actor(&request, Role::Admin, "server.rotate_template_owner")
            .await?;
        let server = self.server_named(&request.into_inner().name).await?;
        let server = self.rotator.rotate_template_owner(&server).await?;
        self.catalog
            .audit(
                &actor,
                "server.rotate_template_owner",
                None,
                &server.name,
                serde_json::json!({}),
            )
            .await?;
        Ok(Response::new(super::admin::server_pb(&server)))
    }

    pub(super) async fn do_list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, GrpcStatus> {
        self.actor(&request, Role::Viewer, "dead_letters.list")
            .await?;
        let req = request.into_inner();
        let source = proto::model::optional::<WebhookSource>("source", req.source)
            .map_err(|e| Error::InvalidArgument(e.0))?;
        let limit = match req.limit {
            0 => 100,
            n if n > 10_000 => {
                return Err(Error::InvalidArgument("limit must be at most 10000".into()).into())
            }
            n => n,
        };
        let letters = self.catalog.dead_letters(source, limit).await?;
        Ok(Response::new(pb::ListDeadLettersResponse {
            dead_letters: letters.into_iter().map(dead_letter_pb).collect(),
        }))
    }

    pub(super) async fn do_get_dead_letter(
        &self,
        request: Request<pb::DeadLetterRef>,
    ) -> Result<Response<pb::DeadLetterInfo>, GrpcStatus> {
        // Bodies hold customers' messages: operators only.
        self.actor(&request, Role::Operator, "dead_letters.show")
            .await?;
        let id = request.into_inner().id;
        let letter = self
            .catalog
            .dead_letter_by_id(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("dead letter {id} not found")))?;
        Ok(Response::new(dead_letter_pb(letter)))
    }

    pub(super) async fn do_replay_dead_letters(
        &self,
        request: Request<pb::ReplayDeadLettersRequest>,
    ) -> Result<Response<pb::ReplayDeadLettersResponse>, GrpcStatus> {
        // Writes customers' messages into a tenant database: operators only.
        let actor = self
            .actor(&request, Role::Operator, "dead_letters.replay")
            .await?;
        let req = request.into_inner();
        let replayed = match (req.ids.is_empty(), req.tenant.trim()) {
            (false, "") => {
                if req.ids.len() > 10_000 {
                    return Err(
                        Error::InvalidArgument("at most 10000 ids per replay".into()).into(),
                    );
                }
                self.replayer.replay_ids(&req.ids).await?
            }
            (true, "") => {
                return Err(Error::InvalidArgument(
                    "name the dead letters to replay (ids) or a tenant".into(),
                )
                .into())
            }
            (true, tenant) => {
                let key = TenantKey::parse(tenant).map_err(Error::from)?;
                let tenant = self
                    .catalog
                    .tenant(&key)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("tenant {tenant:?} not found")))?;
                self.replayer.replay_pending(&tenant).await?
            }
            (false, _) => {
                return Err(
                    Error::InvalidArgument("give either ids or a tenant, not both".into()).into(),
                )
            }
        };
        let ids: Vec<i64> = replayed.iter().map(|r| r.id).collect();
        self.catalog
            .audit(
                &actor,
                "dead_letters.replay",
                None,
                "dead letters",
                serde_json::json!({ "ids": ids }),
            )
            .await?;
        Ok(Response::new(pb::ReplayDeadLettersResponse {
            replayed: replayed
                .into_iter()
                .map(|r| pb::ReplayedDeadLetter {
                    id: r.id,
                    tenant: r.tenant,
                    messages: r.stored.messages,
                    duplicates: r.stored.duplicates,
                    statuses: r.stored.statuses,
                    refused: r.refused,
                })
                .collect(),
        }))
    }

    async fn server_named(&self, raw: &str) -> Result<crate::catalog::ServerRecord, Error> {
        let name = model::server_name(raw)?;
        self.catalog
            .server_by_name(&name)
            .await?
            .ok_or_else(|| Error::NotFound(format!("server {name:?} is not registered")))
    }

    /// Rotates each tenant's login (or, with `owners`, owner) password, a few at once,
    /// auditing each; returns (rotated, failed).
    async fn rotate_all(
        &self,
        actor: &Actor,
        tenants: Vec<TenantRecord>,
        owners: bool,
    ) -> (Vec<String>, Vec<pb::RotateFailure>) {
        let (mut rotated, mut failed) = (Vec::new(), Vec::new());
        let action = if owners {
            "tenant.rotate_owner"
        } else {
            "tenant.rotate"
        };
        for chunk in tenants.chunks(ROTATE_CONCURRENCY) {
            let results = futures_util::future::join_all(chunk.iter().map(|t| async move {
                let result = if owners {
                    self.rotator.rotate_owner(t).await
                } else {
                    self.rotator.rotate(t).await.map(|_| ())
                };
                let (outcome, details) = match &result {
                    Ok(_) => ("ok", serde_json::json!({})),
                    Err(e) => ("failed", serde_json::json!({"error": e.to_string()})),
                };
                let _ = self
                    .catalog
                    .audit_outcome(actor, action, Some(t.id), &t.slug, details, outcome)
                    .await;
                (t.slug.clone(), result)
            }))
            .await;
            for (slug, result) in results {
                match result {
                    Ok(_) => rotated.push(slug),
                    Err(e) => failed.push(pb::RotateFailure {
                        slug,
                        error: e.to_string(),
                    }),
                }
            }
        }
        (rotated, failed)
    }
}

fn dead_letter_pb(d: crate::catalog::DeadLetter) -> pb::DeadLetterInfo {
    pb::DeadLetterInfo {
        id: d.id,
        source: d.source.to_wire(),
        kind: d.kind.to_wire(),
        tenant: d.tenant.map(|(_, slug)| slug).unwrap_or_default(),
        replayed_ms: d.replayed_ms.unwrap_or(0),
        phone_number_id: d.phone_number_id.unwrap_or_default(),
        reason: d.reason.unwrap_or_default(),
        times: d.times,
        first_ms: d.first_ms,
        last_ms: d.last_ms,
        size: d.size,
        body: d.body.unwrap_or_default(),
    }
}
