//! Fleet migrations: one run over many tenant databases.
//!
//! The catalog is the plan: tenants whose recorded versions equal the shipped ones are
//! skipped without a connection. The rest run with bounded concurrency (overall and per
//! server), canaries first, each under the tenant database's migration advisory lock (so
//! two runs never migrate one tenant at once: the second reports `busy`). Failures do not
//! stop the run until more than `max_failures` tenants failed; then tenants not yet
//! started are reported `not_started`. Every result is stored in the catalog.

use crate::catalog::{Catalog, RunCounts, RunTenantRow, ServerRecord, TenantFilter, TenantRecord};
use crate::config;
use crate::dbserver;
use crate::error::{Error, Result};
use crate::model::{Status, TenantKey};
use crate::template;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tenant_model::MigrationOutcome;
use tenant_model::MigrationOutcome as Outcome;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What a fleet run does to each tenant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FleetOp {
    /// Apply the pending schema migrations.
    #[default]
    Migrate,
    /// Upgrade first-release tenants to the owner-and-logins role model (see `harden`).
    Harden,
}

impl FleetOp {
    /// The catalog spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FleetOp::Migrate => "migrate",
            FleetOp::Harden => "harden",
        }
    }
}

/// What an operator asked for.
#[derive(Debug, Clone, Default)]
pub struct FleetRequest {
    /// What to do to each tenant.
    pub op: FleetOp,
    /// Tenants named explicitly (ignored when `all`).
    pub keys: Vec<TenantKey>,
    /// Every active or suspended tenant.
    pub all: bool,
    /// Tenants at once overall (0: configured default).
    pub concurrency: u32,
    /// Tenants at once per server (0: configured default).
    pub per_server: u32,
    /// Tenants migrated first; any failure among them stops the run.
    pub canary: u32,
    /// Failures tolerated before the run stops launching tenants (0: no limit).
    pub max_failures: u32,
    /// Plan only.
    pub dry_run: bool,
    /// Only tenants whose last migration failed.
    pub retry_failed: bool,
}

/// One tenant the run will migrate.
#[derive(Debug, Clone)]
pub struct PlannedTenant {
    pub slug: String,
    pub from: (i32, i32),
    pub to: (i32, i32),
    pub pending: Vec<String>,
    pub canary: bool,
}

/// A run's progress, streamed to the caller.
#[derive(Debug, Clone)]
pub enum FleetEvent {
    /// Sent first: what will happen.
    Plan {
        run_id: i64,
        total: u32,
        already_current: u32,
        target_common: i32,
        pending: Vec<PlannedTenant>,
    },
    /// One tenant finished (migrated, failed, busy or not started).
    Tenant(TenantOutcome),
    /// Sent last.
    Summary {
        run_id: i64,
        counts: RunCounts,
        aborted: bool,
        duration_ms: u64,
    },
}

/// One tenant's result.
#[derive(Debug, Clone)]
pub struct TenantOutcome {
    pub slug: String,
    pub outcome: MigrationOutcome,
    pub versions: (i32, i32),
    pub applied: u32,
    pub error: Option<String>,
    pub duration_ms: u64,
    /// What an upgrade found and did.
    pub report: Vec<String>,
}

/// Runs fleet migrations against the catalog's servers.
#[derive(Clone)]
pub struct Fleet {
    catalog: Catalog,
    cfg: config::Fleet,
    provisioning: config::Provisioning,
    jobs: crate::telemetry::Jobs,
}

struct Shared {
    catalog: Catalog,
    cfg: config::Fleet,
    provisioning: config::Provisioning,
    connect_timeout: Duration,
    run_id: i64,
    op: FleetOp,
    hardener: crate::harden::Hardener,
    servers: HashMap<i64, (ServerRecord, Arc<Semaphore>)>,
    global: Arc<Semaphore>,
    failures: AtomicU32,
    max_failures: u32,
    stop: AtomicBool,
    cancel: CancellationToken,
    events: mpsc::Sender<FleetEvent>,
}

impl Fleet {
    /// A fleet runner.
    pub fn new(
        catalog: Catalog,
        cfg: config::Fleet,
        provisioning: config::Provisioning,
        jobs: crate::telemetry::Jobs,
    ) -> Fleet {
        Fleet {
            catalog,
            cfg,
            provisioning,
            jobs,
        }
    }

    /// Until `cancel`: marks runs whose replica died (no heartbeat for
    /// `fleet.stale_after_secs`) interrupted, now and every half of that.
    pub async fn sweep_loop(self, cancel: CancellationToken) {
        let every = Duration::from_secs(self.cfg.stale_after_secs) / 2;
        loop {
            match self
                .catalog
                .interrupt_stale_runs(self.cfg.stale_after_secs)
                .await
            {
                Ok(ids) if !ids.is_empty() => {
                    tracing::warn!(runs = ?ids, "fleet runs of a replica that died marked interrupted; run them again")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot sweep fleet runs"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    /// Plans and (unless `dry_run`) executes a run, streaming events to `events`.
    /// Stops launching tenants when `cancel` fires (in-flight ones finish).
    pub async fn run(
        &self,
        req: FleetRequest,
        actor: &crate::auth::Actor,
        events: mpsc::Sender<FleetEvent>,
        cancel: CancellationToken,
    ) -> Result<RunCounts> {
        self.jobs
            .time("fleet_run", self.run_job(req, actor, events, cancel))
            .await
    }

    async fn run_job(
        &self,
        req: FleetRequest,
        actor: &crate::auth::Actor,
        events: mpsc::Sender<FleetEvent>,
        cancel: CancellationToken,
    ) -> Result<RunCounts> {
        let started = Instant::now();
        let concurrency = pick(
            req.concurrency,
            self.cfg.concurrency,
            self.cfg.max_concurrency,
            "concurrency",
        )?;
        let per_server = pick(
            req.per_server,
            self.cfg.per_server_concurrency,
            self.cfg.max_concurrency,
            "per-server concurrency",
        )?
        // Within the jobs' slice of each server's budget (routers hold the rest).
        .min(self.cfg.per_server_cap.unwrap_or(u32::MAX));
        let (eligible, planned) = self.plan(&req).await?;
        let already_current = u32::try_from(eligible.len() - planned.len()).unwrap_or(u32::MAX);
        let target_common = tenant_migrations::MigrationSet::Common.target();
        let pending: Vec<PlannedTenant> = planned
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let from = (t.schema_version, t.sector_schema_version);
                let (to, pending) = match req.op {
                    FleetOp::Migrate => (
                        tenant_migrations::targets(t.sector),
                        tenant_migrations::pending(t.sector, from.0, from.1),
                    ),
                    FleetOp::Harden => (
                        from,
                        vec!["upgrade to the owner-and-logins role model".to_string()],
                    ),
                };
                PlannedTenant {
                    slug: t.slug.clone(),
                    from,
                    to,
                    pending,
                    canary: i < req.canary as usize,
                }
            })
            .collect();
        let total = u32::try_from(eligible.len()).unwrap_or(u32::MAX);
        if req.dry_run {
            let _ = events
                .send(FleetEvent::Plan {
                    run_id: 0,
                    total,
                    already_current,
                    target_common,
                    pending,
                })
                .await;
            let counts = RunCounts {
                skipped: already_current,
                ..RunCounts::default()
            };
            let _ = events
                .send(FleetEvent::Summary {
                    run_id: 0,
                    counts,
                    aborted: false,
                    duration_ms: elapsed_ms(started),
                })
                .await;
            return Ok(counts);
        }
        let request_json = serde_json::json!({
            "operation": req.op.as_str(), "all": req.all, "tenants": eligible.len(), "concurrency": concurrency, "per_server": per_server,
            "canary": req.canary, "max_failures": req.max_failures, "retry_failed": req.retry_failed,
        });
        let run_id = self
            .catalog
            .start_run(actor, req.op.as_str(), &request_json)
            .await?;
        let _ = events
            .send(FleetEvent::Plan {
                run_id,
                total,
                already_current,
                target_common,
                pending,
            })
            .await;
        let planned_ids: std::collections::HashSet<i64> = planned.iter().map(|t| t.id).collect();
        let skipped: Vec<(i64, i32, i32)> = eligible
            .iter()
            .filter(|t| !planned_ids.contains(&t.id))
            .map(|t| (t.id, t.schema_version, t.sector_schema_version))
            .collect();
        self.catalog.record_run_skipped(run_id, &skipped).await?;
        let servers = self
            .catalog
            .list_servers()
            .await?
            .into_iter()
            .map(|s| (s.id, (s, Arc::new(Semaphore::new(per_server as usize)))))
            .collect();
        let shared = Arc::new(Shared {
            catalog: self.catalog.clone(),
            cfg: self.cfg.clone(),
            provisioning: self.provisioning.clone(),
            connect_timeout: Duration::from_millis(self.provisioning.connect_timeout_ms),
            run_id,
            op: req.op,
            hardener: crate::harden::Hardener::new(self.catalog.clone(), self.provisioning.clone()),
            servers,
            global: Arc::new(Semaphore::new(concurrency as usize)),
            failures: AtomicU32::new(0),
            max_failures: req.max_failures,
            stop: AtomicBool::new(false),
            cancel,
            events,
        });
        if req.op == FleetOp::Migrate {
            refresh_templates(&shared).await;
        }
        let canaries = planned.len().min(req.canary as usize);
        let (first, rest) = planned.split_at(canaries);
        let mut counts = RunCounts {
            skipped: already_current,
            ..RunCounts::default()
        };
        let waves = async {
            wave(&shared, first.to_vec(), &mut counts).await;
            if counts.failed > 0 {
                shared.stop.store(true, Ordering::SeqCst);
            }
            wave(&shared, rest.to_vec(), &mut counts).await;
        };
        // The run says it is alive while its waves go on (see `sweep_loop`).
        let every = Duration::from_secs(self.cfg.stale_after_secs).div_f64(4.0);
        let beat = async {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = self.catalog.beat_run(run_id).await {
                    tracing::warn!(run = run_id, error = %e, "fleet run heartbeat failed");
                }
            }
        };
        tokio::select! {
            () = waves => {}
            () = beat => {}
        }
        let aborted = shared.stop.load(Ordering::SeqCst) && counts.not_started > 0;
        self.catalog.finish_run(run_id, counts, aborted).await?;
        self.catalog
            .audit(
                actor,
                if req.op == FleetOp::Migrate {
                    "fleet.migrate"
                } else {
                    "fleet.harden"
                },
                None,
                &format!("run {run_id}"),
                serde_json::json!({
                    "migrated": counts.migrated, "skipped": counts.skipped, "failed": counts.failed,
                    "busy": counts.busy, "not_started": counts.not_started, "aborted": aborted,
                }),
            )
            .await?;
        let _ = shared
            .events
            .send(FleetEvent::Summary {
                run_id,
                counts,
                aborted,
                duration_ms: elapsed_ms(started),
            })
            .await;
        Ok(counts)
    }

    /// Returns (eligible tenants, those among them behind the shipped versions).
    async fn plan(&self, req: &FleetRequest) -> Result<(Vec<TenantRecord>, Vec<TenantRecord>)> {
        if !req.all && req.keys.is_empty() {
            return Err(Error::InvalidArgument(
                "name tenants to migrate, or ask for all of them".into(),
            ));
        }
        let filter = TenantFilter {
            keys: if req.all {
                Vec::new()
            } else {
                req.keys.clone()
            },
            ..TenantFilter::default()
        };
        let tenants = self.catalog.list_tenants(&filter).await?;
        if !req.all {
            for key in &req.keys {
                let found = tenants.iter().any(|t| match key {
                    TenantKey::Id(id) => t.id == id.get(),
                    TenantKey::Slug(s) => t.slug == s.as_str(),
                });
                if !found {
                    let name = match key {
                        TenantKey::Id(id) => id.to_string(),
                        TenantKey::Slug(s) => s.as_str().to_string(),
                    };
                    return Err(Error::NotFound(format!("tenant {name:?} not found")));
                }
            }
        }
        let mut eligible = Vec::with_capacity(tenants.len());
        for t in tenants {
            let migratable = matches!(t.status, Status::Active | Status::Suspended);
            if !migratable {
                if !req.all {
                    return Err(Error::FailedPrecondition(format!(
                        "tenant {} is {}; only active or suspended tenants are migrated",
                        t.slug,
                        t.status.as_str()
                    )));
                }
                continue;
            }
            if req.op == FleetOp::Migrate && req.retry_failed && t.migration_status != "failed" {
                continue;
            }
            eligible.push(t);
        }
        let planned = eligible
            .iter()
            .filter(|t| match req.op {
                FleetOp::Migrate => {
                    tenant_migrations::targets(t.sector)
                        != (t.schema_version, t.sector_schema_version)
                }
                FleetOp::Harden => t.names().is_none() || t.legacy_role.is_some(),
            })
            .cloned()
            .collect();
        Ok((eligible, planned))
    }
}

fn pick(asked: u32, default: u32, max: u32, what: &str) -> Result<u32> {
    match asked {
        0 => Ok(default.min(max).max(1)),
        n if n > max => Err(Error::InvalidArgument(format!(
            "{what} {n} is above the configured maximum {max}"
        ))),
        n => Ok(n),
    }
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Wave 0: templates are migrated before tenants so new tenants clone the new schema.
async fn refresh_templates(shared: &Shared) {
    let templates = match shared.catalog.templates().await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list templates");
            return;
        }
    };
    for t in templates {
        let Ok(sector) = tenant_migrations::Sector::parse(&t.sector) else {
            continue;
        };
        if tenant_migrations::targets(sector) == (t.schema_version, t.sector_schema_version) {
            continue;
        }
        let Some((server, _)) = shared.servers.get(&t.server_id) else {
            continue;
        };
        let result = async {
            let admin =
                dbserver::connect_maintenance(&shared.catalog, server, shared.connect_timeout)
                    .await?;
            template::refresh(
                &shared.catalog,
                server,
                &admin,
                sector,
                &t.database,
                &shared.provisioning,
            )
            .await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(server = %server.name, sector = %t.sector, error = %e, "template not migrated");
        }
    }
}

async fn wave(shared: &Arc<Shared>, tenants: Vec<TenantRecord>, counts: &mut RunCounts) {
    let mut tasks = JoinSet::new();
    for tenant in tenants {
        let shared = Arc::clone(shared);
        tasks.spawn(async move { migrate_one(&shared, tenant).await });
    }
    while let Some(joined) = tasks.join_next().await {
        let outcome = match joined {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::error!(error = %e, "fleet task panicked");
                counts.failed += 1;
                continue;
            }
        };
        match outcome {
            Outcome::Migrated | Outcome::Upgraded => counts.migrated += 1,
            Outcome::Failed => counts.failed += 1,
            Outcome::Busy => counts.busy += 1,
            Outcome::Skipped | Outcome::NotStarted => counts.not_started += 1,
        }
    }
}

async fn migrate_one(shared: &Shared, tenant: TenantRecord) -> Outcome {
    let from = (tenant.schema_version, tenant.sector_schema_version);
    let outcome = |outcome: Outcome, versions, error: Option<String>| TenantOutcome {
        slug: tenant.slug.clone(),
        outcome,
        versions,
        applied: 0,
        error,
        duration_ms: 0,
        report: Vec::new(),
    };
    let Some((server, server_slots)) = shared.servers.get(&tenant.server_id) else {
        let failed = outcome(Outcome::Failed, from, Some("server not in catalog".into()));
        return finish(shared, &tenant, from, failed).await;
    };
    let _server_permit = server_slots.acquire().await;
    let _global_permit = shared.global.acquire().await;
    if shared.stop.load(Ordering::SeqCst) || shared.cancel.is_cancelled() {
        return finish(
            shared,
            &tenant,
            from,
            outcome(Outcome::NotStarted, from, None),
        )
        .await;
    }
    let started = Instant::now();
    let mut result = match shared.op {
        FleetOp::Migrate => match migrate_database(shared, server, &tenant).await {
            Ok(o) => TenantOutcome {
                applied: o.applied,
                ..outcome(
                    Outcome::Migrated,
                    (o.common_version, o.sector_version),
                    None,
                )
            },
            Err((tenant_migrations::MigrateError::Busy, v)) => outcome(
                Outcome::Busy,
                v,
                Some("another run is migrating this tenant".into()),
            ),
            Err((e, v)) => outcome(Outcome::Failed, v, Some(e.to_string())),
        },
        FleetOp::Harden => match harden_database(shared, server, &tenant).await {
            Ok(Some(report)) => TenantOutcome {
                report,
                ..outcome(Outcome::Upgraded, from, None)
            },
            Ok(None) => outcome(
                Outcome::Busy,
                from,
                Some("another run is upgrading this tenant".into()),
            ),
            Err(e) => outcome(Outcome::Failed, from, Some(e.to_string())),
        },
    };
    result.duration_ms = elapsed_ms(started);
    if result.outcome == Outcome::Failed {
        let failures = shared.failures.fetch_add(1, Ordering::SeqCst) + 1;
        if shared.max_failures > 0 && failures >= shared.max_failures {
            shared.stop.store(true, Ordering::SeqCst);
        }
    }
    finish(shared, &tenant, from, result).await
}

/// Catalog advisory-lock class of isolation upgrades (ASCII "hard"); the second key is
/// the tenant id (truncated: a collision only makes two upgrades wait, never overlap).
const HARDEN_LOCK: i32 = 0x6861_7264;

/// Upgrades one tenant under its upgrade lock; `None` when another run holds it.
async fn harden_database(
    shared: &Shared,
    server: &ServerRecord,
    tenant: &TenantRecord,
) -> Result<Option<Vec<String>>> {
    #[allow(clippy::cast_possible_truncation)]
    let key = tenant.id as i32;
    let Some(lock) = template::XactLock::try_acquire(&shared.catalog, HARDEN_LOCK, key).await?
    else {
        return Ok(None);
    };
    // Another run may have finished it while this one waited for a permit.
    let fresh = shared
        .catalog
        .tenant_by_id(tenant.id)
        .await?
        .ok_or_else(|| Error::NotFound("tenant not found".into()))?;
    let result = shared.hardener.upgrade(server, &fresh).await;
    lock.release().await;
    result.map(Some)
}

type MigrateResult =
    Result<tenant_migrations::Outcome, (tenant_migrations::MigrateError, (i32, i32))>;

async fn migrate_database(
    shared: &Shared,
    server: &ServerRecord,
    tenant: &TenantRecord,
) -> MigrateResult {
    use tenant_migrations::MigrateError;
    let from = (tenant.schema_version, tenant.sector_schema_version);
    let as_failed = |e: Error| (MigrateError::Failed(e.to_string()), from);
    // Logged in as the tenant's owner, a non-superuser: nothing the database holds can
    // reach beyond it.
    let names = tenant.require_names().map_err(as_failed)?;
    let password = shared.catalog.owner_password(tenant).map_err(as_failed)?;
    let mut client = dbserver::connect_login(
        &shared.catalog,
        server,
        (&names.owner, &password),
        &tenant.database,
        dbserver::SearchPath::Public,
        shared.connect_timeout,
    )
    .await
    .map_err(as_failed)?;
    client
        .batch_execute(&format!(
            "SET lock_timeout = {}; SET statement_timeout = {}",
            shared.cfg.lock_timeout_ms, shared.cfg.statement_timeout_ms
        ))
        .await
        .map_err(|e| (MigrateError::Database(e), from))?;
    let migrated = tenant_migrations::migrate(&mut client, tenant.sector).await;
    let migrated = match migrated {
        // New tables need their grants for the login roles.
        Ok(outcome) => client
            .batch_execute(&tenant_migrations::grants_sql(&names.login_refs()))
            .await
            .map(|()| outcome)
            .map_err(tenant_migrations::MigrateError::Database),
        Err(e) => Err(e),
    };
    match migrated {
        Ok(outcome) => Ok(outcome),
        Err(e) => {
            // Each migration commits on its own: read where the database stopped.
            let now = tenant_migrations::current_versions(&client, tenant.sector)
                .await
                .unwrap_or(from);
            Err((e, now))
        }
    }
}

async fn finish(
    shared: &Shared,
    tenant: &TenantRecord,
    from: (i32, i32),
    result: TenantOutcome,
) -> Outcome {
    let outcome = result.outcome;
    if shared.op == FleetOp::Migrate && matches!(outcome, Outcome::Migrated | Outcome::Failed) {
        let err = result
            .error
            .as_deref()
            .filter(|_| outcome == Outcome::Failed);
        if let Err(e) = shared
            .catalog
            .record_migration(tenant.id, result.versions.0, result.versions.1, err)
            .await
        {
            tracing::error!(tenant = %tenant.slug, error = %e, "cannot record migration result");
        }
    }
    let row = RunTenantRow {
        tenant_id: tenant.id,
        outcome,
        from,
        to: result.versions,
        applied: result.applied,
        error: result.error.clone(),
        duration_ms: result.duration_ms,
        report: result.report.clone(),
    };
    if let Err(e) = shared.catalog.record_run_tenant(shared.run_id, &row).await {
        tracing::error!(tenant = %tenant.slug, error = %e, "cannot record run result");
    }
    if outcome == Outcome::Failed {
        tracing::warn!(tenant = %tenant.slug, error = result.error.as_deref().unwrap_or(""), "tenant {} failed", shared.op.as_str());
    }
    let _ = shared.events.send(FleetEvent::Tenant(result)).await;
    outcome
}
