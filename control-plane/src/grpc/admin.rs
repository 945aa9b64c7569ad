//! `TenantAdmin`: the operators' API (tenantctl). Validates every field before anything
//! touches the catalog or a database server.

use super::directory::async_stream;
use crate::auth::{self, Actor, Role};
use crate::backup::Backups;
use crate::catalog::{
    Catalog, NewServer, NewTenant, OperatorRecord, ServerRecord, TenantFilter, TenantRecord,
    TokenRecord,
};
use crate::dbserver;
use crate::deletion::Deleter;
use crate::error::Error;
use crate::fleet::{Fleet, FleetEvent, FleetOp, FleetRequest};
use crate::model::{self, Slug, Status, TenantKey};
use crate::provision::Provisioner;
use crate::replay::Replayer;
use crate::roles;
use crate::rotation::Rotator;
use crate::tokens::{Grant, Minted, Minter};
use caller_auth::Kind;
use proto::control::v1 as pb;
use proto::model::{FromWire, ToWire};
use std::time::Duration;
use tenant_model::Sector;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status as GrpcStatus};

/// The gRPC face of provisioning, lifecycle and fleet operations.
pub struct AdminService {
    pub(super) catalog: Catalog,
    provisioner: Provisioner,
    fleet: Fleet,
    pub(super) tasks: TaskTracker,
    shutdown: CancellationToken,
    pub(super) connect_timeout: Duration,
    pub(super) minter: Minter,
    pub(super) rotator: Rotator,
    pub(super) replayer: Replayer,
    pub(super) backups: Backups,
    pub(super) deleter: Deleter,
    pub(super) accounts: crate::accounts::Accounts,
    pub(super) ingest: crate::ingest::Ingest,
    pub(super) stuck_after_secs: u64,
    jobs: crate::telemetry::Jobs,
}

impl AdminService {
    /// Long operations (provisioning, fleet runs) run on `tasks`, so a client that hangs up
    /// does not cut them off half way; `shutdown` stops fleet runs from launching more.
    pub fn new(
        catalog: Catalog,
        config: &crate::Config,
        tasks: TaskTracker,
        shutdown: CancellationToken,
        minter: Minter,
        ingest: crate::ingest::Ingest,
    ) -> Result<AdminService, Error> {
        let jobs = crate::telemetry::Jobs::new();
        let backups = Backups::new(catalog.clone(), config, jobs.clone())?;
        Ok(AdminService {
            accounts: crate::accounts::Accounts::new(
                catalog.clone(),
                minter.clone(),
                &config.accounts,
            )?,
            deleter: Deleter::new(
                catalog.clone(),
                backups.clone(),
                ingest.clone(),
                config,
                jobs.clone(),
            ),
            ingest: ingest.clone(),
            stuck_after_secs: config.ingest.stuck_after_secs,
            backups,
            provisioner: Provisioner::new(
                catalog.clone(),
                config.provisioning.clone(),
                jobs.clone(),
            ),
            fleet: Fleet::new(
                catalog.clone(),
                config.fleet.clone(),
                config.provisioning.clone(),
                jobs.clone(),
            ),
            jobs,
            rotator: Rotator::new(catalog.clone(), config.provisioning.clone()),
            replayer: Replayer::new(
                catalog.clone(),
                ingest,
                &config.dead_letters,
                Duration::from_millis(config.provisioning.connect_timeout_ms),
            ),
            connect_timeout: Duration::from_millis(config.provisioning.connect_timeout_ms),
            catalog,
            tasks,
            shutdown,
            minter,
        })
    }

    /// The fleet runner (its sweep of runs whose replica died).
    pub fn fleet(&self) -> Fleet {
        self.fleet.clone()
    }

    /// Durations and outcomes of the jobs this replica runs.
    pub fn jobs(&self) -> crate::telemetry::Jobs {
        self.jobs.clone()
    }

    /// Users and logins (served by the accounts services too).
    pub fn accounts(&self) -> crate::accounts::Accounts {
        self.accounts.clone()
    }

    /// The ingest database (its metrics are served beside the server).
    pub fn ingest(&self) -> crate::ingest::Ingest {
        self.ingest.clone()
    }

    /// The deleter (its purge sweep runs beside the server).
    pub fn deleter(&self) -> Deleter {
        self.deleter.clone()
    }

    /// Backups (their stale-row sweep runs beside the server).
    pub fn backups(&self) -> Backups {
        self.backups.clone()
    }

    /// The dead-letter replayer (its sweep loop runs beside the server).
    pub fn replayer(&self) -> Replayer {
        self.replayer.clone()
    }

    /// The operator behind `request`, if its role allows `needed` (see `auth`).
    pub(super) async fn actor<T>(
        &self,
        request: &Request<T>,
        needed: Role,
        action: &str,
    ) -> Result<Actor, GrpcStatus> {
        Ok(auth::authorize(&self.catalog, request, needed, action).await?)
    }

    /// Moves a tenant `from` -> `to` (idempotent when already `to`) and audits it.
    async fn lifecycle(
        &self,
        request: Request<pb::TenantRef>,
        from: Status,
        to: Status,
        action: &str,
    ) -> Result<Response<pb::Tenant>, GrpcStatus> {
        let actor = self.actor(&request, Role::Operator, action).await?;
        let key = TenantKey::parse(&request.into_inner().tenant).map_err(Error::from)?;
        let t = self.catalog.transition(&key, &[from], to).await?;
        self.catalog
            .audit(&actor, action, Some(t.id), &t.slug, serde_json::json!({}))
            .await?;
        if to == Status::Active {
            // What arrived while it was suspended goes in now.
            self.replayer.wake();
        }
        Ok(Response::new(tenant_pb(&t)))
    }

    /// The tenants a request names, or every active or suspended one for `all` (one of
    /// the two, never both).
    pub(super) async fn selected(
        &self,
        names: &[String],
        all: bool,
        what: &str,
    ) -> Result<Vec<TenantRecord>, Error> {
        if all != names.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "name tenants to {what} or ask for all of them (not both)"
            )));
        }
        if all {
            let mut tenants = self.catalog.list_tenants(&TenantFilter::default()).await?;
            tenants.retain(|t| matches!(t.status, Status::Active | Status::Suspended));
            return Ok(tenants);
        }
        let mut tenants = Vec::with_capacity(names.len());
        for raw in names {
            tenants.push(self.tenant(raw).await?);
        }
        Ok(tenants)
    }

    pub(super) async fn tenant(&self, raw: &str) -> Result<TenantRecord, Error> {
        let key = TenantKey::parse(raw)?;
        self.catalog
            .tenant(&key)
            .await?
            .ok_or_else(|| Error::NotFound(format!("tenant {raw:?} not found")))
    }
}

impl AdminService {
    async fn operator_token(
        &self,
        by: &Actor,
        name: &str,
        role: Role,
        ttl_secs: u64,
    ) -> Result<Minted, Error> {
        self.minter
            .mint(
                &self.catalog,
                by,
                Grant {
                    kind: Kind::Operator,
                    subject: name.to_string(),
                    tenants: Vec::new(),
                    all: false,
                    role: Some(role),
                    ttl_secs,
                    scopes: Vec::new(),
                },
            )
            .await
    }
}

pub(super) fn issued(minted: Minted) -> pb::IssueTokenResponse {
    pb::IssueTokenResponse {
        token: minted.token,
        expires_at: i64::try_from(minted.claims.exp).unwrap_or(i64::MAX),
        token_id: minted.claims.jti,
    }
}

fn token_pb(t: &TokenRecord) -> pb::TokenInfo {
    pb::TokenInfo {
        id: t.id.clone(),
        kind: t.kind.clone(),
        subject: t.subject.clone(),
        tenant_ids: t.tenant_ids.clone(),
        all_tenants: t.all_tenants,
        issued_by: t.issued_by.clone(),
        issued_at_ms: t.issued_at_ms,
        expires_at_ms: t.expires_at_ms,
        revoked_at_ms: t.revoked_at_ms.unwrap_or_default(),
        revoked_by: t.revoked_by.clone().unwrap_or_default(),
    }
}

fn operator_pb(o: &OperatorRecord) -> pb::Operator {
    pb::Operator {
        name: o.name.clone(),
        role: o.role.as_str().to_string(),
        active: o.active,
        created_by: o.created_by.clone(),
        created_at_ms: o.created_at_ms,
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
        sector: Sector::from_wire("sector", req.sector).map_err(Error::from)?,
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

fn usage_pb(u: &crate::usage::Usage) -> pb::UsageRow {
    let r = &u.record;
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    pb::UsageRow {
        tenant_id: r.tenant_id,
        slug: r.slug.clone(),
        plan: r.plan.clone(),
        calls_today: n(r.calls_today),
        calls_30d: n(r.calls_30d),
        messages_today: n(r.messages_today),
        messages_30d: n(r.messages_30d),
        database_bytes: u.database_bytes.unwrap_or(-1),
        storage_limit_bytes: r.storage_mb.map_or(0, |mb| i64::from(mb) * 1_000_000),
    }
}

pub(super) fn tenant_pb(t: &TenantRecord) -> pb::Tenant {
    let target = tenant_migrations::targets(t.sector);
    pb::Tenant {
        id: t.id,
        slug: t.slug.clone(),
        name: t.name.clone(),
        sector: t.sector.to_wire(),
        status: t.status.to_wire(),
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
        admin_one_time_password: String::new(),
    }
}

pub(super) fn server_pb(s: &ServerRecord) -> pb::Server {
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
            outcome: t.outcome.to_wire(),
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

pub(super) type ExportStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<pb::ExportChunk, GrpcStatus>> + Send>>;

#[tonic::async_trait]
impl pb::tenant_admin_server::TenantAdmin for AdminService {
    async fn create_tenant(
        &self,
        request: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::Tenant>, GrpcStatus> {
        let actor = self
            .actor(&request, Role::Operator, "tenant.create")
            .await?;
        let request = request.into_inner();
        // The first user is checked before anything is made.
        let admin = match request.admin_email.trim() {
            "" => None,
            raw => {
                let email = tenant_model::Email::parse(raw).map_err(Error::from)?;
                if self.catalog.user_by_email(&email).await?.is_some() {
                    return Err(Error::AlreadyExists(format!(
                        "a user with email {email} already exists"
                    ))
                    .into());
                }
                Some(email)
            }
        };
        let new = new_tenant(request)?;
        let provisioner = self.provisioner.clone();
        let actor_job = actor.clone();
        // Owned by the tracker: a client hanging up mid-saga must not leave it half done.
        let job = self
            .tasks
            .spawn(async move { provisioner.create(&new, &actor_job).await });
        let tenant = job
            .await
            .map_err(|e| Error::internal("provisioning task", e))??;
        let mut answer = tenant_pb(&tenant);
        if let Some(email) = admin {
            let (_, one_time) = self
                .accounts
                .add_user(tenant.id, email.as_str(), "", tenant_model::UserRole::Owner, None, &actor)
                .await
                .map_err(|e| {
                    Error::FailedPrecondition(format!(
                        "tenant {} was created but its first user was not ({e}); add one with `tenantctl user add`",
                        tenant.slug
                    ))
                })?;
            answer.admin_one_time_password = one_time.unwrap_or_default();
        }
        Ok(Response::new(answer))
    }

    async fn update_tenant(
        &self,
        request: Request<pb::UpdateTenantRequest>,
    ) -> Result<Response<pb::Tenant>, GrpcStatus> {
        let actor = self
            .actor(&request, Role::Operator, "tenant.update")
            .await?;
        let r = request.into_inner();
        if r.name.is_none() && r.plan.is_none() && r.display_phone.is_none() {
            return Err(Error::InvalidArgument(
                "nothing to change: give a name, a plan or a display phone".into(),
            )
            .into());
        }
        let name = r.name.as_deref().map(model::tenant_name).transpose()?;
        let plan = r.plan.as_deref().map(str::trim);
        if plan.is_some_and(str::is_empty) {
            return Err(Error::InvalidArgument("plan must not be empty".into()).into());
        }
        let display = match r.display_phone.as_deref().map(str::trim) {
            Some("") => Some(String::new()),
            Some(p) => Some(model::display_phone(p)?),
            None => None,
        };
        let tenant = self.tenant(&r.tenant).await?;
        let updated = self
            .catalog
            .update_tenant(tenant.id, name.as_deref(), plan, display.as_deref())
            .await?;
        self.catalog
            .audit(
                &actor,
                "tenant.update",
                Some(updated.id),
                &updated.slug,
                serde_json::json!({"name": name, "plan": plan, "display_phone": display}),
            )
            .await?;
        Ok(Response::new(tenant_pb(&updated)))
    }

    async fn get_tenant(
        &self,
        request: Request<pb::TenantRef>,
    ) -> Result<Response<pb::Tenant>, GrpcStatus> {
        self.actor(&request, Role::Viewer, "tenant.show").await?;
        let tenant = self.tenant(&request.into_inner().tenant).await?;
        Ok(Response::new(tenant_pb(&tenant)))
    }

    async fn list_tenants(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, GrpcStatus> {
        self.actor(&request, Role::Viewer, "tenant.list").await?;
        let req = request.into_inner();
        let filter = TenantFilter {
            status: proto::model::optional::<Status>("status", req.status).map_err(Error::from)?,
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
        let actor = self.actor(&request, Role::Operator, "fleet.run").await?;
        let req = request.into_inner();
        let keys = req
            .tenants
            .iter()
            .map(|t| TenantKey::parse(t))
            .collect::<Result<Vec<_>, _>>()
            .map_err(Error::from)?;
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
            .spawn(async move { fleet.run(fleet_req, &actor, tx, cancel).await });
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
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, GrpcStatus> {
        self.actor(&request, Role::Viewer, "status").await?;
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
            over_storage: crate::usage::usage(&self.catalog, None, self.connect_timeout)
                .await?
                .iter()
                .filter(|u| u.over_storage())
                .map(usage_pb)
                .collect(),
            overdue_backups: self
                .catalog
                .overdue_backups()
                .await?
                .into_iter()
                .map(|o| pb::OverdueBackup {
                    tenant: o.slug,
                    last_ok_ms: o.last_ok_ms.unwrap_or(0),
                    interval_secs: o.interval_secs,
                })
                .collect(),
        }))
    }

    async fn add_server(
        &self,
        request: Request<pb::AddServerRequest>,
    ) -> Result<Response<pb::Server>, GrpcStatus> {
        let actor = self.actor(&request, Role::Admin, "server.add").await?;
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
            self.catalog.db_tls(),
            (&new.name, &new.host, new.port),
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
            .audit(&actor, "server.add", None, &server.name, serde_json::json!({
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
        let actor = self.actor(&request, Role::Operator, "token.issue").await?;
        if !request.get_ref().scopes.is_empty() {
            // Reading tenants' secrets is the platform's own access: an admin grants it.
            self.actor(&request, Role::Admin, "token.issue with a scope")
                .await?;
        }
        let req = request.into_inner();
        if req.all != req.tenants.is_empty() {
            return Err(Error::InvalidArgument(
                "name tenants or ask for all of them (not both)".into(),
            )
            .into());
        }
        let subject = if req.subject.trim().is_empty() {
            actor.name.clone()
        } else {
            model::tenant_name(&req.subject)?
        };
        let mut scopes: Vec<String> = req.scopes.iter().map(|s| s.trim().to_string()).collect();
        scopes.sort();
        scopes.dedup();
        if let Some(bad) = scopes.iter().find(|s| *s != caller_auth::SCOPE_SECRETS) {
            return Err(Error::InvalidArgument(format!(
                "unknown scope {bad:?}: expected {}",
                caller_auth::SCOPE_SECRETS
            ))
            .into());
        }
        // Grants name tenant ids: a slug renamed or reused later grants nothing new.
        let mut ids = Vec::with_capacity(req.tenants.len());
        for raw in &req.tenants {
            ids.push(self.tenant(raw).await?.id);
        }
        let minted = self
            .minter
            .mint(
                &self.catalog,
                &actor,
                Grant {
                    kind: Kind::Caller,
                    subject: subject.clone(),
                    tenants: ids.clone(),
                    all: req.all,
                    role: None,
                    ttl_secs: req.ttl_secs,
                    scopes: scopes.clone(),
                },
            )
            .await?;
        self.catalog
            .audit(
                &actor,
                "token.issue",
                None,
                &subject,
                serde_json::json!({
                    "token_id": minted.claims.jti, "tenant_ids": ids, "all": req.all,
                    "expires_at": minted.claims.exp, "scopes": scopes,
                }),
            )
            .await?;
        Ok(Response::new(issued(minted)))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::TokenInfo>, GrpcStatus> {
        let actor = self.actor(&request, Role::Operator, "token.revoke").await?;
        let id = request.get_ref().token_id.trim().to_string();
        let id = id.as_str();
        let token = self
            .catalog
            .token(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("token {id:?} not found")))?;
        // Operators revoke callers' tokens; operator and router credentials are the
        // platform's own access and need an admin.
        if token.kind != "caller" {
            self.actor(&request, Role::Admin, "token.revoke").await?;
        }
        let token = self.catalog.revoke_token(id, &actor).await?;
        self.catalog
            .audit(
                &actor,
                "token.revoke",
                None,
                id,
                serde_json::json!({"kind": token.kind, "subject": token.subject}),
            )
            .await?;
        Ok(Response::new(token_pb(&token)))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, GrpcStatus> {
        self.actor(&request, Role::Operator, "token.list").await?;
        let req = request.into_inner();
        let kind = match req.kind.trim() {
            "" => None,
            "caller" => Some(Kind::Caller),
            "operator" => Some(Kind::Operator),
            "router" => Some(Kind::Router),
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown token kind {other:?}: expected caller, operator or router"
                ))
                .into())
            }
        };
        let tokens = self.catalog.tokens(kind, req.include_expired).await?;
        Ok(Response::new(pb::ListTokensResponse {
            tokens: tokens.iter().map(token_pb).collect(),
        }))
    }

    async fn rotate_webhook_token(
        &self,
        request: Request<pb::TenantRef>,
    ) -> Result<Response<pb::WebhookToken>, GrpcStatus> {
        let actor = self
            .actor(&request, Role::Operator, "tenant.webhook_token")
            .await?;
        let tenant = self.tenant(&request.into_inner().tenant).await?;
        let token = crate::crypto::random_password();
        self.catalog.set_webhook_token(&tenant, &token).await?;
        self.catalog
            .audit(
                &actor,
                "tenant.webhook_token",
                Some(tenant.id),
                &tenant.slug,
                serde_json::json!({}),
            )
            .await?;
        Ok(Response::new(pb::WebhookToken { token }))
    }

    async fn add_operator(
        &self,
        request: Request<pb::AddOperatorRequest>,
    ) -> Result<Response<pb::IssueTokenResponse>, GrpcStatus> {
        let actor = self.actor(&request, Role::Admin, "operator.add").await?;
        let req = request.into_inner();
        let name = model::operator_name(&req.name)?;
        let role = Role::parse(req.role.trim())?;
        self.minter.ttl(req.ttl_secs)?;
        self.catalog.add_operator(&name, role, &actor).await?;
        let minted = self
            .operator_token(&actor, &name, role, req.ttl_secs)
            .await?;
        self.catalog
            .audit(
                &actor,
                "operator.add",
                None,
                &name,
                serde_json::json!({"role": role.as_str(), "token_id": minted.claims.jti}),
            )
            .await?;
        Ok(Response::new(issued(minted)))
    }

    async fn issue_operator_token(
        &self,
        request: Request<pb::OperatorTokenRequest>,
    ) -> Result<Response<pb::IssueTokenResponse>, GrpcStatus> {
        let actor = self.actor(&request, Role::Admin, "operator.token").await?;
        let req = request.into_inner();
        let name = model::operator_name(&req.name)?;
        let op = self
            .catalog
            .operator(&name)
            .await?
            .filter(|o| o.active)
            .ok_or_else(|| Error::NotFound(format!("no active operator {name:?}")))?;
        let minted = self
            .operator_token(&actor, &name, op.role, req.ttl_secs)
            .await?;
        self.catalog
            .audit(
                &actor,
                "operator.token",
                None,
                &name,
                serde_json::json!({"token_id": minted.claims.jti}),
            )
            .await?;
        Ok(Response::new(issued(minted)))
    }

    async fn list_operators(
        &self,
        request: Request<pb::ListOperatorsRequest>,
    ) -> Result<Response<pb::ListOperatorsResponse>, GrpcStatus> {
        self.actor(&request, Role::Viewer, "operator.list").await?;
        let operators = self.catalog.operators().await?;
        Ok(Response::new(pb::ListOperatorsResponse {
            operators: operators.iter().map(operator_pb).collect(),
        }))
    }

    async fn disable_operator(
        &self,
        request: Request<pb::OperatorRef>,
    ) -> Result<Response<pb::Operator>, GrpcStatus> {
        let actor = self
            .actor(&request, Role::Admin, "operator.disable")
            .await?;
        let name = model::operator_name(&request.into_inner().name)?;
        if name == actor.name {
            return Err(Error::FailedPrecondition(
                "an operator cannot disable itself (ask another admin)".into(),
            )
            .into());
        }
        let op = self.catalog.disable_operator(&name, &actor).await?;
        self.catalog
            .audit(
                &actor,
                "operator.disable",
                None,
                &name,
                serde_json::json!({}),
            )
            .await?;
        Ok(Response::new(operator_pb(&op)))
    }

    async fn read_audit(
        &self,
        request: Request<pb::ReadAuditRequest>,
    ) -> Result<Response<pb::ReadAuditResponse>, GrpcStatus> {
        self.actor(&request, Role::Viewer, "audit.read").await?;
        let req = request.into_inner();
        let tenant_id = match req.tenant.trim() {
            "" => None,
            // A purged tenant's history stays readable (by id, or by its slug's tombstone).
            raw => match self.tenant(raw).await {
                Ok(t) => Some(t.id),
                Err(Error::NotFound(m)) => match TenantKey::parse(raw).map_err(Error::from)? {
                    TenantKey::Id(id) => Some(id.get()),
                    TenantKey::Slug(s) => Some(
                        self.catalog
                            .tombstone_by_slug(s.as_str())
                            .await?
                            .ok_or(Error::NotFound(m))?
                            .id,
                    ),
                },
                Err(e) => return Err(e.into()),
            },
        };
        let limit = match req.limit {
            0 => 100,
            n if n > 10_000 => {
                return Err(Error::InvalidArgument("limit must be at most 10000".into()).into())
            }
            n => n,
        };
        let since = (req.since_ms > 0).then_some(req.since_ms);
        let entries = self.catalog.audit_log(tenant_id, since, limit).await?;
        Ok(Response::new(pb::ReadAuditResponse {
            entries: entries
                .into_iter()
                .map(|e| pb::AuditEntry {
                    id: e.id,
                    at_ms: e.at_ms,
                    actor: e.actor,
                    token_id: e.token_id.unwrap_or_default(),
                    action: e.action,
                    target: e.target,
                    tenant_id: e.tenant_id.unwrap_or_default(),
                    outcome: e.outcome,
                    details_json: e.details.to_string(),
                })
                .collect(),
        }))
    }

    async fn add_router(
        &self,
        request: Request<pb::AddRouterRequest>,
    ) -> Result<Response<pb::IssueTokenResponse>, GrpcStatus> {
        self.do_add_router(request).await
    }

    async fn issue_router_token(
        &self,
        request: Request<pb::RouterTokenRequest>,
    ) -> Result<Response<pb::IssueTokenResponse>, GrpcStatus> {
        self.do_issue_router_token(request).await
    }

    async fn list_routers(
        &self,
        request: Request<pb::ListRoutersRequest>,
    ) -> Result<Response<pb::ListRoutersResponse>, GrpcStatus> {
        self.do_list_routers(request).await
    }

    async fn revoke_router(
        &self,
        request: Request<pb::RevokeRouterRequest>,
    ) -> Result<Response<pb::RevokeRouterResponse>, GrpcStatus> {
        self.do_revoke_router(request).await
    }

    async fn rotate_credentials(
        &self,
        request: Request<pb::RotateRequest>,
    ) -> Result<Response<pb::RotateResponse>, GrpcStatus> {
        self.do_rotate_credentials(request).await
    }

    async fn set_server_password(
        &self,
        request: Request<pb::SetServerPasswordRequest>,
    ) -> Result<Response<pb::Server>, GrpcStatus> {
        self.do_set_server_password(request).await
    }

    async fn rotate_template_owner(
        &self,
        request: Request<pb::ServerRef>,
    ) -> Result<Response<pb::Server>, GrpcStatus> {
        self.do_rotate_template_owner(request).await
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, GrpcStatus> {
        self.do_list_dead_letters(request).await
    }

    async fn get_dead_letter(
        &self,
        request: Request<pb::DeadLetterRef>,
    ) -> Result<Response<pb::DeadLetterInfo>, GrpcStatus> {
        self.do_get_dead_letter(request).await
    }

    async fn backup_tenants(
        &self,
        request: Request<pb::BackupRequest>,
    ) -> Result<Response<pb::BackupResponse>, GrpcStatus> {
        self.do_backup_tenants(request).await
    }

    async fn list_backups(
        &self,
        request: Request<pb::ListBackupsRequest>,
    ) -> Result<Response<pb::ListBackupsResponse>, GrpcStatus> {
        self.do_list_backups(request).await
    }

    async fn verify_backup(
        &self,
        request: Request<pb::VerifyBackupRequest>,
    ) -> Result<Response<pb::BackupInfo>, GrpcStatus> {
        self.do_verify_backup(request).await
    }

    async fn restore_tenant(
        &self,
        request: Request<pb::RestoreRequest>,
    ) -> Result<Response<pb::Tenant>, GrpcStatus> {
        self.do_restore_tenant(request).await
    }

    async fn delete_tenant(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, GrpcStatus> {
        self.do_delete_tenant(request).await
    }

    type ExportTenantStream = ExportStream;

    async fn export_tenant(
        &self,
        request: Request<pb::ExportRequest>,
    ) -> Result<Response<Self::ExportTenantStream>, GrpcStatus> {
        self.do_export_tenant(request).await
    }

    async fn get_settings(
        &self,
        request: Request<pb::TenantRef>,
    ) -> Result<Response<pb::TenantSettings>, GrpcStatus> {
        self.do_get_settings(request).await
    }

    async fn update_settings(
        &self,
        request: Request<pb::UpdateSettingsRequest>,
    ) -> Result<Response<pb::TenantSettings>, GrpcStatus> {
        self.do_update_settings(request).await
    }

    async fn set_secret(
        &self,
        request: Request<pb::SetSecretRequest>,
    ) -> Result<Response<pb::TenantSettings>, GrpcStatus> {
        self.do_set_secret(request).await
    }

    async fn delete_secret(
        &self,
        request: Request<pb::SecretRef>,
    ) -> Result<Response<pb::TenantSettings>, GrpcStatus> {
        self.do_delete_secret(request).await
    }

    async fn add_number(
        &self,
        request: Request<pb::NumberRequest>,
    ) -> Result<Response<pb::Numbers>, GrpcStatus> {
        self.do_add_number(request).await
    }

    async fn remove_number(
        &self,
        request: Request<pb::NumberRequest>,
    ) -> Result<Response<pb::Numbers>, GrpcStatus> {
        self.do_remove_number(request).await
    }

    async fn add_evolution_instance(
        &self,
        request: Request<pb::EvolutionInstanceRequest>,
    ) -> Result<Response<pb::EvolutionInstanceAdded>, GrpcStatus> {
        self.do_add_evolution_instance(request).await
    }

    async fn remove_evolution_instance(
        &self,
        request: Request<pb::EvolutionInstanceRequest>,
    ) -> Result<Response<pb::Numbers>, GrpcStatus> {
        self.do_remove_evolution_instance(request).await
    }

    async fn list_numbers(
        &self,
        request: Request<pb::TenantRef>,
    ) -> Result<Response<pb::Numbers>, GrpcStatus> {
        self.do_list_numbers(request).await
    }

    async fn get_usage(
        &self,
        request: Request<pb::UsageRequest>,
    ) -> Result<Response<pb::UsageResponse>, GrpcStatus> {
        self.actor(&request, Role::Viewer, "tenant.usage").await?;
        let raw = request.into_inner().tenant;
        let tenant = match raw.trim() {
            "" => None,
            t => Some(self.tenant(t).await?.id),
        };
        let rows = crate::usage::usage(&self.catalog, tenant, self.connect_timeout).await?;
        Ok(Response::new(pb::UsageResponse {
            rows: rows.iter().map(usage_pb).collect(),
        }))
    }

    async fn add_user(
        &self,
        request: Request<pb::AdminAddUserRequest>,
    ) -> Result<Response<proto::accounts::v1::AddedUser>, GrpcStatus> {
        self.do_add_user(request).await
    }

    async fn list_users(
        &self,
        request: Request<pb::TenantRef>,
    ) -> Result<Response<proto::accounts::v1::ListUsersResponse>, GrpcStatus> {
        self.do_list_users(request).await
    }

    async fn update_user(
        &self,
        request: Request<pb::AdminUpdateUserRequest>,
    ) -> Result<Response<proto::accounts::v1::User>, GrpcStatus> {
        self.do_update_user(request).await
    }

    async fn reset_user_password(
        &self,
        request: Request<pb::UserRef>,
    ) -> Result<Response<proto::accounts::v1::AddedUser>, GrpcStatus> {
        self.do_reset_user_password(request).await
    }

    async fn inbox_status(
        &self,
        request: Request<pb::InboxStatusRequest>,
    ) -> Result<Response<pb::InboxStatusResponse>, GrpcStatus> {
        self.do_inbox_status(request).await
    }

    async fn retry_inbox(
        &self,
        request: Request<pb::TenantRef>,
    ) -> Result<Response<pb::InboxRetryResponse>, GrpcStatus> {
        self.do_retry_inbox(request).await
    }

    async fn forget_consumer_group(
        &self,
        request: Request<pb::ForgetConsumerGroupRequest>,
    ) -> Result<Response<pb::ForgetConsumerGroupResponse>, GrpcStatus> {
        self.do_forget_consumer_group(request).await
    }

    async fn replay_dead_letters(
        &self,
        request: Request<pb::ReplayDeadLettersRequest>,
    ) -> Result<Response<pb::ReplayDeadLettersResponse>, GrpcStatus> {
        self.do_replay_dead_letters(request).await
    }

    async fn rekey(
        &self,
        request: Request<pb::RekeyRequest>,
    ) -> Result<Response<pb::RekeyResponse>, GrpcStatus> {
        self.do_rekey(request).await
    }

    async fn list_servers(
        &self,
        request: Request<pb::ListServersRequest>,
    ) -> Result<Response<pb::ListServersResponse>, GrpcStatus> {
        self.actor(&request, Role::Viewer, "server.list").await?;
        let servers = self.catalog.list_servers().await?;
        Ok(Response::new(pb::ListServersResponse {
            servers: servers.iter().map(server_pb).collect(),
        }))
    }
}
