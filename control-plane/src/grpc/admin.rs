//! `TenantAdmin`: the operators' API (tenantctl). Validates every field before anything
//! touches the catalog or a database server.

use super::directory::async_stream;
use crate::catalog::{Catalog, NewServer, NewTenant, ServerRecord, TenantFilter, TenantRecord};
use crate::dbserver;
use crate::error::Error;
use crate::fleet::{Fleet, FleetEvent, FleetOp, FleetRequest};
use crate::model::{self, Slug, Status, TenantKey};
use crate::provision::Provisioner;
use crate::roles;
use proto::control::v1 as pb;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status as GrpcStatus};

/// Who the audit log names for calls authenticated with the admin token.
const ACTOR: &str = "admin-token";

/// The gRPC face of provisioning, lifecycle and fleet operations.
pub struct AdminService {
    catalog: Catalog,
    provisioner: Provisioner,
    fleet: Fleet,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    connect_timeout: Duration,
    tokens: Option<caller_auth::TokenKey>,
}

/// Longest lifetime of a caller token: a year.
const MAX_TOKEN_TTL_SECS: u64 = 365 * 24 * 3600;

impl AdminService {
    /// Long operations (provisioning, fleet runs) run on `tasks`, so a client that hangs up
    /// does not cut them off half way; `shutdown` stops fleet runs from launching more.
    pub fn new(
        catalog: Catalog,
        provisioner: Provisioner,
        fleet: Fleet,
        tasks: TaskTracker,
        shutdown: CancellationToken,
        connect_timeout: Duration,
    ) -> AdminService {
        AdminService {
            catalog,
            provisioner,
            fleet,
            tasks,
            shutdown,
            connect_timeout,
            tokens: None,
        }
    }

    /// Enables `IssueToken` with this signing key.
    pub fn with_token_key(mut self, key: caller_auth::TokenKey) -> AdminService {
        self.tokens = Some(key);
        self
    }

    /// Moves a tenant `from` -> `to` (idempotent when already `to`) and audits it.
    async fn lifecycle(
        &self,
        request: Request<pb::TenantRef>,
        from: Status,
        to: Status,
        action: &str,
    ) -> Result<Response<pb::Tenant>, GrpcStatus> {
        let key = TenantKey::parse(&request.into_inner().tenant)?;
        let t = self.catalog.transition(&key, &[from], to).await?;
        self.catalog
            .audit(ACTOR, action, Some(t.id), &t.slug, serde_json::json!({}))
            .await?;
        Ok(Response::new(tenant_pb(&t)))
    }

    async fn tenant(&self, raw: &str) -> Result<TenantRecord, Error> {
        let key = TenantKey::parse(raw)?;
        self.catalog
            .tenant(&key)
            .await?
            .ok_or_else(|| Error::NotFound(format!("tenant {raw:?} not found")))
    }
}

/// The admin of a server must be able to create databases and roles and to set the
/// superuser-only `temp_file_limit` on login roles.
async fn check_admin_privileges(admin: &tokio_postgres::Client, server: &str) -> Result<(), Error> {
    let can: (bool, bool, bool, bool) = admin
        .query_one(
            "SELECT rolsuper, rolcreaterole, rolcreatedb, \
             pg_catalog.has_parameter_privilege('temp_file_limit', 'SET') \
             FROM pg_catalog.pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .map_err(|e| {
            Error::Unavailable(format!("server {server:?}: {}", dbserver::describe(&e)))
        })?;
    if can.0 || (can.1 && can.2 && can.3) {
        return Ok(());
    }
    Err(Error::FailedPrecondition(format!(
        "admin user of server {server:?} needs SUPERUSER, or CREATEROLE, CREATEDB and \
         `GRANT SET ON PARAMETER temp_file_limit`"
    )))
}

fn non_empty(s: String) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_string())
}

fn new_tenant(req: pb::CreateTenantRequest) -> Result<NewTenant, Error> {
    let plan = non_empty(req.plan).unwrap_or_else(|| "basico".to_string());
    Ok(NewTenant {
        slug: Slug::parse(&req.slug)?,
        name: model::tenant_name(&req.name)?,
        sector: model::sector(&req.sector)?,
        phone_number_id: non_empty(req.phone_number_id)
            .map(|p| model::phone_number_id(&p))
            .transpose()?,
        display_phone: non_empty(req.display_phone)
            .map(|p| model::display_phone(&p))
            .transpose()?,
        plan,
        server: non_empty(req.server)
            .map(|s| model::server_name(&s))
            .transpose()?,
    })
}

fn tenant_pb(t: &TenantRecord) -> pb::Tenant {
    let target = tenant_migrations::targets(t.sector);
    pb::Tenant {
        id: t.id,
        slug: t.slug.clone(),
        name: t.name.clone(),
        sector: t.sector.as_str().to_string(),
        status: t.status.as_str().to_string(),
        server: t.server_name.clone(),
        database: t.database.clone(),
        role: t.role.clone(),
        phone_number_id: t.phone_number_id.clone().unwrap_or_default(),
        display_phone: t.display_phone.clone().unwrap_or_default(),
        plan: t.plan.clone(),
        schema_version: t.schema_version,
        sector_schema_version: t.sector_schema_version,
        version: t.version,
        status_reason: t
            .status_reason
            .clone()
            .or_else(|| {
                t.migration_error
                    .clone()
                    .map(|e| format!("last migration failed: {e}"))
            })
            .unwrap_or_default(),
        created_at_ms: t.created_at_ms,
        updated_at_ms: t.updated_at_ms,
        migration_pending: matches!(t.status, Status::Active | Status::Suspended)
            && target != (t.schema_version, t.sector_schema_version),
        role_model: t.role_model.as_str().to_string(),
        owner_role: t.owner_role.clone().unwrap_or_default(),
        generation: t.generation,
    }
}

fn server_pb(s: &ServerRecord) -> pb::Server {
    pb::Server {
        name: s.name.clone(),
        host: s.host.clone(),
        port: u32::from(s.port),
        admin_user: s.admin_user.clone(),
        connection_budget: s.connection_budget,
        capacity: s.capacity,
        state: s.state.clone(),
        tenants: s.tenants,
        maintenance_closed: s.maintenance_closed,
    }
}

fn migrate_event(e: FleetEvent) -> pb::MigrateEvent {
    use pb::migrate_event::Event;
    let event = match e {
        FleetEvent::Plan {
            run_id,
            total,
            already_current,
            target_common,
            pending,
        } => Event::Plan(pb::MigratePlan {
            run_id,
            total,
            to_migrate: u32::try_from(pending.len()).unwrap_or(u32::MAX),
            already_current,
            target_schema_version: target_common,
            pending: pending
                .into_iter()
                .map(|p| pb::PendingTenant {
                    slug: p.slug,
                    from_schema_version: p.from.0,
                    to_schema_version: p.to.0,
                    from_sector_schema_version: p.from.1,
                    to_sector_schema_version: p.to.1,
                    pending_migrations: p.pending,
                    canary: p.canary,
                })
                .collect(),
        }),
        FleetEvent::Tenant(t) => Event::Tenant(pb::TenantMigrationResult {
            slug: t.slug,
            outcome: t.outcome.to_string(),
            schema_version: t.versions.0,
            sector_schema_version: t.versions.1,
            applied: t.applied,
            error: t.error.unwrap_or_default(),
            duration_ms: t.duration_ms,
            report: t.report,
        }),
        FleetEvent::Summary {
            run_id,
            counts,
            aborted,
            duration_ms,
        } => Event::Summary(pb::MigrateSummary {
            run_id,
            migrated: counts.migrated,
            skipped: counts.skipped,
            failed: counts.failed,
            busy: counts.busy,
            not_started: counts.not_started,
            aborted,
            duration_ms,
        }),
    };
    pb::MigrateEvent { event: Some(event) }
}

type MigrateStream = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<pb::MigrateEvent, GrpcStatus>> + Send>,
>;

#[tonic::async_trait]
impl pb::tenant_admin_server::TenantAdmin for AdminService {
    async fn create_tenant(
        &self,
        request: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::Tenant>, GrpcStatus> {
        let new = new_tenant(request.into_inner())?;
        let provisioner = self.provisioner.clone();
        // Owned by the tracker: a client hanging up mid-saga must not leave it half done.
        let job = self
            .tasks
            .spawn(async move { provisioner.create(&new, ACTOR).await });
        let tenant = job
            .await
            .map_err(|e| Error::internal("provisioning task", e))??;
        Ok(Response::new(tenant_pb(&tenant)))
    }

    async fn get_tenant(
        &self,
        request: Request<pb::TenantRef>,
    ) -> Result<Response<pb::Tenant>, GrpcStatus> {
        let tenant = self.tenant(&request.into_inner().tenant).await?;
        Ok(Response::new(tenant_pb(&tenant)))
    }

    async fn list_tenants(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, GrpcStatus> {
        let req = request.into_inner();
        let filter = TenantFilter {
            status: non_empty(req.status)
                .map(|s| Status::parse(&s))
                .transpose()?,
            server: non_empty(req.server)
                .map(|s| model::server_name(&s))
                .transpose()?,
            keys: Vec::new(),
        };
        let tenants = self.catalog.list_tenants(&filter).await?;
        Ok(Response::new(pb::ListTenantsResponse {
            tenants: tenants.iter().map(tenant_pb).collect(),
        }))
    }

    async fn suspend_tenant(
        &self,
        request: Request<pb::TenantRef>,
    ) -> Result<Response<pb::Tenant>, GrpcStatus> {
        self.lifecycle(request, Status::Active, Status::Suspended, "tenant.suspend")
            .await
    }

    async fn resume_tenant(
        &self,
        request: Request<pb::TenantRef>,
    ) -> Result<Response<pb::Tenant>, GrpcStatus> {
        self.lifecycle(request, Status::Suspended, Status::Active, "tenant.resume")
            .await
    }

    type MigrateTenantsStream = MigrateStream;

    async fn migrate_tenants(
        &self,
        request: Request<pb::MigrateRequest>,
    ) -> Result<Response<Self::MigrateTenantsStream>, GrpcStatus> {
        let req = request.into_inner();
        let keys = req
            .tenants
            .iter()
            .map(|t| TenantKey::parse(t))
            .collect::<Result<Vec<_>, _>>()?;
        if req.all && !keys.is_empty() {
            return Err(
                Error::InvalidArgument("give either tenants or all, not both".into()).into(),
            );
        }
        let op = match pb::FleetOperation::try_from(req.operation) {
            Ok(pb::FleetOperation::Migrate) => FleetOp::Migrate,
            Ok(pb::FleetOperation::Harden) => FleetOp::Harden,
            Err(_) => {
                return Err(Error::InvalidArgument(format!(
                    "unknown fleet operation {}",
                    req.operation
                ))
                .into())
            }
        };
        let fleet_req = FleetRequest {
            op,
            keys,
            all: req.all,
            concurrency: req.concurrency,
            per_server: req.per_server_concurrency,
            canary: req.canary,
            max_failures: req.max_failures,
            dry_run: req.dry_run,
            retry_failed: req.retry_failed,
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(256);
        let fleet = self.fleet.clone();
        let cancel = self.shutdown.child_token();
        // The run is owned by the tracker and keeps going if the client disconnects;
        // results land in the catalog either way.
        let run = self
            .tasks
            .spawn(async move { fleet.run(fleet_req, ACTOR, tx, cancel).await });
        let stream = async_stream(move |out| async move {
            while let Some(event) = rx.recv().await {
                let _ = out.send(Ok(migrate_event(event))).await;
            }
            match run.await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    let _ = out.send(Err(GrpcStatus::from(e))).await;
                }
                Err(e) => {
                    let _ = out.send(Err(Error::internal("fleet task", e).into())).await;
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, GrpcStatus> {
        let (by_status, by_schema) = self.catalog.fleet_counts().await?;
        let servers = self.catalog.list_servers().await?;
        let pending = self
            .catalog
            .list_tenants(&TenantFilter::default())
            .await?
            .iter()
            .filter(|t| tenant_pb(t).migration_pending)
            .count();
        let count = |v: Vec<(String, u32)>| {
            v.into_iter()
                .map(|(key, count)| pb::CountByKey { key, count })
                .collect()
        };
        Ok(Response::new(pb::StatusResponse {
            target_schema_version: tenant_migrations::MigrationSet::Common.target(),
            by_status: count(by_status),
            by_schema: count(by_schema),
            servers: servers.iter().map(server_pb).collect(),
            pending_migration: u32::try_from(pending).unwrap_or(u32::MAX),
        }))
    }

    async fn add_server(
        &self,
        request: Request<pb::AddServerRequest>,
    ) -> Result<Response<pb::Server>, GrpcStatus> {
        let req = request.into_inner();
        let port = u16::try_from(req.port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| {
                Error::InvalidArgument(format!("invalid port {}: expected 1 to 65535", req.port))
            })?;
        if req.admin_password.is_empty() {
            return Err(Error::InvalidArgument("the admin password is empty".into()).into());
        }
        let new = NewServer {
            name: model::server_name(&req.name)?,
            host: model::host(&req.host)?,
            port,
            admin_user: model::admin_user(&req.admin_user)?,
            admin_password: req.admin_password,
            connection_budget: if req.connection_budget == 0 {
                80
            } else {
                req.connection_budget
            },
            capacity: if req.capacity == 0 {
                1000
            } else {
                req.capacity
            },
        };
        if new.connection_budget > 100_000 || new.capacity > 1_000_000 {
            return Err(Error::InvalidArgument(
                "connection budget or capacity is implausibly large".into(),
            )
            .into());
        }
        // Verify the server and its credentials before it can be chosen by placement.
        let admin = dbserver::connect_unregistered(
            &new.name,
            &new.host,
            new.port,
            &new.admin_user,
            &new.admin_password,
            self.connect_timeout,
        )
        .await?;
        check_admin_privileges(&admin, &new.name).await?;
        let closed = roles::close_maintenance(&admin).await.map_err(|e| {
            Error::Unavailable(format!("server {:?}: {}", new.name, dbserver::describe(&e)))
        })?;
        if !closed {
            tracing::warn!(server = %new.name, "cannot revoke CONNECT on postgres and template1 from PUBLIC: tenant roles can open sessions there");
        }
        let mut server = self.catalog.add_server(&new).await?;
        self.catalog
            .set_maintenance_closed(server.id, closed)
            .await?;
        server.maintenance_closed = closed;
        self.catalog
            .audit(ACTOR, "server.add", None, &server.name, serde_json::json!({
                "port": server.port, "capacity": server.capacity, "connection_budget": server.connection_budget,
                "maintenance_closed": closed,
            }))
            .await?;
        Ok(Response::new(server_pb(&server)))
    }

    async fn issue_token(
        &self,
        request: Request<pb::IssueTokenRequest>,
    ) -> Result<Response<pb::IssueTokenResponse>, GrpcStatus> {
        let req = request.into_inner();
        let key = self.tokens.as_ref().ok_or_else(|| {
            Error::FailedPrecondition(
                "token issuing is off: set token_signing_key in the control-plane config".into(),
            )
        })?;
        if req.all != req.tenants.is_empty() {
            return Err(Error::InvalidArgument(
                "name tenants or ask for all of them (not both)".into(),
            )
            .into());
        }
        let ttl = match req.ttl_secs {
            0 => 3600,
            n if n > MAX_TOKEN_TTL_SECS => {
                return Err(Error::InvalidArgument(format!(
                    "ttl must be at most {MAX_TOKEN_TTL_SECS} seconds"
                ))
                .into())
            }
            n => n,
        };
        let subject = if req.subject.trim().is_empty() {
            "tenantctl".to_string()
        } else {
            model::tenant_name(&req.subject)?
        };
        let mut slugs = Vec::with_capacity(req.tenants.len());
        for raw in &req.tenants {
            slugs.push(self.tenant(raw).await?.slug);
        }
        let now = caller_auth::now_secs();
        let claims = caller_auth::Claims {
            sub: subject.clone(),
            tenants: slugs.clone(),
            all: req.all,
            exp: now + ttl,
            iat: now,
        };
        let token = key.sign(&claims).map_err(|e| Error::internal("token", e))?;
        self.catalog
            .audit(
                ACTOR,
                "token.issue",
                None,
                &subject,
                serde_json::json!({
                    "tenants": slugs, "all": req.all, "ttl_secs": ttl,
                }),
            )
            .await?;
        Ok(Response::new(pb::IssueTokenResponse {
            token,
            expires_at: i64::try_from(now + ttl).unwrap_or(i64::MAX),
        }))
    }

    async fn rotate_webhook_token(
        &self,
        request: Request<pb::TenantRef>,
    ) -> Result<Response<pb::WebhookToken>, GrpcStatus> {
        let tenant = self.tenant(&request.into_inner().tenant).await?;
        let token = crate::crypto::random_password();
        self.catalog.set_webhook_token(&tenant, &token).await?;
        self.catalog
            .audit(
                ACTOR,
                "tenant.webhook_token",
                Some(tenant.id),
                &tenant.slug,
                serde_json::json!({}),
            )
            .await?;
        Ok(Response::new(pb::WebhookToken { token }))
    }

    async fn list_servers(
        &self,
        _request: Request<pb::ListServersRequest>,
    ) -> Result<Response<pb::ListServersResponse>, GrpcStatus> {
        let servers = self.catalog.list_servers().await?;
        Ok(Response::new(pb::ListServersResponse {
            servers: servers.iter().map(server_pb).collect(),
        }))
    }
}
