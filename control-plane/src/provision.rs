//! Tenant provisioning as a recorded saga: roles -> database -> grants -> migrations ->
//! seed -> active.
//!
//! Admin statements run in the server's maintenance database; everything inside the new
//! tenant database (adopting a clone's objects, migrations, seed, grants) runs logged in as
//! the tenant's owner role, a non-superuser (see `roles`).
//!
//! The catalog row comes first and lists each finished step, so a failure can undo exactly
//! what was done (`CREATE DATABASE` is not transactional) and a crashed attempt can be
//! resumed: `create` on a `failed` (or long-stalled `provisioning`) slug adopts the row
//! and runs the saga again, every step being idempotent.

use crate::catalog::{Catalog, NewPasswords, NewTenant, ServerRecord, TenantRecord};
use crate::config::Provisioning;
use crate::dbserver::{self, describe};
use crate::error::{Error, Result};
use crate::model::TenantNames;
use crate::roles;
use crate::template;
use std::time::Duration;
use tenant_migrations::quote_ident;
use tenant_migrations::SectorSchema;
use tokio_postgres::Client;

/// Runs provisioning sagas.
#[derive(Clone)]
pub struct Provisioner {
    catalog: Catalog,
    cfg: Provisioning,
    jobs: crate::telemetry::Jobs,
}

/// A step that failed, with a client-safe reason.
struct StepError {
    step: &'static str,
    reason: String,
}

impl Provisioner {
    /// A provisioner writing to `catalog`.
    pub fn new(catalog: Catalog, cfg: Provisioning, jobs: crate::telemetry::Jobs) -> Provisioner {
        Provisioner { catalog, cfg, jobs }
    }

    fn timeout(&self) -> Duration {
        dbserver::millis(self.cfg.connect_timeout_ms)
    }

    /// Creates (or resumes creating) a tenant; returns it `active`.
    pub async fn create(
        &self,
        new: &NewTenant,
        actor: &crate::auth::Actor,
    ) -> Result<TenantRecord> {
        self.jobs
            .time("provision", self.create_job(new, actor))
            .await
    }

    async fn create_job(
        &self,
        new: &NewTenant,
        actor: &crate::auth::Actor,
    ) -> Result<TenantRecord> {
        let passwords = NewPasswords {
            login: crate::crypto::random_password(),
            owner: crate::crypto::random_password(),
        };
        let (tenant, server, fresh) = match self
            .catalog
            .insert_tenant(new, &passwords, &self.cfg.name_prefix)
            .await
        {
            Ok((tenant, server)) => (tenant, server, true),
            Err(Error::AlreadyExists(msg)) if msg.starts_with("slug") => {
                let tenant = self.resume_target(new).await.map_err(|e| match e {
                    Error::NotFound(_) => Error::AlreadyExists(msg.clone()),
                    other => other,
                })?;
                let server = self
                    .catalog
                    .server_by_id(tenant.server_id)
                    .await?
                    .ok_or_else(|| Error::Internal("tenant's server vanished".into()))?;
                (tenant, server, false)
            }
            Err(e) => return Err(e),
        };
        let admin =
            match dbserver::connect_maintenance(&self.catalog, &server, self.timeout()).await {
                Ok(admin) => admin,
                Err(e) => {
                    self.abandon(&tenant, fresh, &e.to_string()).await;
                    return Err(e);
                }
            };
        if fresh {
            if let Err(e) = self.check_names_free(&admin, &tenant, &server).await {
                self.abandon(&tenant, fresh, &e.to_string()).await;
                return Err(e);
            }
        }
        let passwords = if fresh {
            passwords
        } else {
            NewPasswords {
                login: self.catalog.tenant_password(&tenant)?,
                owner: self.catalog.owner_password(&tenant)?,
            }
        };
        match self.run_steps(&admin, &server, &tenant, &passwords).await {
            Ok((common, sector)) => {
                let active = self.catalog.mark_active(tenant.id, common, sector).await?;
                self.catalog
                    .audit(actor, "tenant.create", Some(active.id), &active.slug, serde_json::json!({
                        "server": server.name, "sector": active.sector.as_str(), "resumed": !fresh,
                    }))
                    .await?;
                tracing::info!(tenant = %active.slug, server = %server.name, "tenant provisioned");
                Ok(active)
            }
            Err(StepError { step, reason }) => {
                let cleanup = self.undo(&admin, &tenant).await;
                let mut message = format!(
                    "provisioning {} failed at step {step}: {reason}",
                    tenant.slug
                );
                match cleanup {
                    Ok(()) => message.push_str("; everything it created was removed"),
                    Err(e) => message.push_str(&format!(
                        "; cleanup incomplete ({e}), run create again to finish it"
                    )),
                }
                self.catalog.mark_failed(tenant.id, &message).await?;
                let _ = self
                    .catalog
                    .audit_outcome(
                        actor,
                        "tenant.create",
                        Some(tenant.id),
                        &tenant.slug,
                        serde_json::json!({
                            "step": step, "reason": reason,
                        }),
                        "failed",
                    )
                    .await;
                tracing::warn!(tenant = %tenant.slug, step, %reason, "provisioning failed");
                Err(Error::Aborted(format!(
                    "{message}; the tenant is marked failed and `tenantctl create` resumes it"
                )))
            }
        }
    }

    /// The row to resume for `new.slug`, if it is failed or stalled and matches the request.
    async fn resume_target(&self, new: &NewTenant) -> Result<TenantRecord> {
        let existing = self
            .catalog
            .tenant(&crate::model::TenantKey::Slug(new.slug.clone()))
            .await?
            .ok_or_else(|| Error::NotFound("no such tenant".into()))?;
        if existing.sector != new.sector {
            return Err(Error::AlreadyExists(format!(
                "slug {:?} is already taken (by a {} tenant)",
                existing.slug,
                existing.sector.as_str()
            )));
        }
        match self
            .catalog
            .restart_provisioning(&new.slug, self.cfg.stale_after_secs)
            .await?
        {
            Some(tenant) => Ok(tenant),
            None if existing.status == crate::model::Status::Provisioning => {
                Err(Error::FailedPrecondition(format!(
                    "tenant {:?} is being provisioned right now",
                    existing.slug
                )))
            }
            None => Err(Error::NotFound("not resumable".into())),
        }
    }

    /// A fresh tenant must not adopt a role or database someone else made.
    async fn check_names_free(
        &self,
        admin: &Client,
        tenant: &TenantRecord,
        server: &ServerRecord,
    ) -> Result<()> {
        let ddl = |e: tokio_postgres::Error| {
            Error::Unavailable(format!("server {:?}: {}", server.name, describe(&e)))
        };
        let names = tenant.require_names()?;
        let mut taken = dbserver::database_exists(admin, &names.database)
            .await
            .map_err(ddl)?;
        for role in names.logins.iter().chain([&names.owner]) {
            taken |= dbserver::role_exists(admin, role).await.map_err(ddl)?;
        }
        if taken {
            return Err(Error::AlreadyExists(format!(
                "a role or database named for tenant id {} already exists on server {:?} but not in \
                 the catalog; remove it (the catalog may have been restored from an older copy)",
                tenant.id, server.name
            )));
        }
        Ok(())
    }

    /// Undoes a fresh tenant that got nothing created: the catalog row goes away.
    /// A resumed tenant stays (as `failed`, with the reason).
    async fn abandon(&self, tenant: &TenantRecord, fresh: bool, reason: &str) {
        let result = if fresh {
            self.catalog.delete_tenant_row(tenant.id).await
        } else {
            self.catalog.mark_failed(tenant.id, reason).await
        };
        if let Err(e) = result {
            tracing::error!(tenant = %tenant.slug, error = %e, "could not record abandoned provisioning");
        }
    }

    async fn run_steps(
        &self,
        admin: &Client,
        server: &ServerRecord,
        tenant: &TenantRecord,
        passwords: &NewPasswords,
    ) -> Result<(i32, i32), StepError> {
        let names = tenant.require_names().map_err(|e| StepError {
            step: "role",
            reason: e.to_string(),
        })?;
        let fail = |step: &'static str| {
            move |e: tokio_postgres::Error| StepError {
                step,
                reason: describe(&e),
            }
        };
        let internal = |step: &'static str| {
            move |e: Error| StepError {
                step,
                reason: e.to_string(),
            }
        };

        // 1. The owner and the two login roles. Passwords travel as SCRAM verifiers only.
        self.record(tenant, "role").await?;
        roles::ensure_tenant_roles(
            admin,
            &names,
            (&passwords.owner, &passwords.login),
            self.cfg.login_limits(),
            self.cfg.scram_iterations,
        )
        .await
        .map_err(fail("role"))?;

        // 2. The database, owned by the owner role, cloned from the sector template when
        // there is one (else from the pristine template0).
        self.record(tenant, "database").await?;
        self.create_database(admin, server, tenant, &names)
            .await
            .map_err(fail("database"))?;

        // 3. Only the login roles may connect (CONNECT and TEMPORARY revoked from PUBLIC).
        self.record(tenant, "grants").await?;
        roles::close_database(admin, &names.database, &names.logins)
            .await
            .map_err(fail("grants"))?;

        // 4. Inside the database, as the owner: adopt a clone's objects, then migrations (a
        // catch-up after a clone) under the migration lock.
        let mut owner = dbserver::connect_login(
            &self.catalog,
            server,
            (&names.owner, &passwords.owner),
            &names.database,
            dbserver::SearchPath::Public,
            self.timeout(),
        )
        .await
        .map_err(internal("migrate"))?;
        template::adopt_clone(admin, &owner, &names.owner, &self.cfg.template_prefix)
            .await
            .map_err(fail("migrate"))?;
        self.record(tenant, "migrate").await?;
        let outcome = tenant_migrations::migrate(&mut owner, tenant.sector)
            .await
            .map_err(|e| StepError {
                step: "migrate",
                reason: e.to_string(),
            })?;

        // 5. Sector defaults (idempotent), then the login roles' grants.
        self.record(tenant, "seed").await?;
        owner
            .batch_execute(&format!(
                "{}; {}",
                tenant.sector.seed_sql(),
                tenant_migrations::grants_sql(&names.login_refs())
            ))
            .await
            .map_err(fail("seed"))?;
        Ok((outcome.common_version, outcome.sector_version))
    }

    /// Creates the tenant database unless it exists (a resumed saga).
    async fn create_database(
        &self,
        admin: &Client,
        server: &ServerRecord,
        tenant: &TenantRecord,
        names: &TenantNames,
    ) -> Result<(), tokio_postgres::Error> {
        if dbserver::database_exists(admin, &names.database).await? {
            return Ok(());
        }
        let tpl = if self.cfg.use_template {
            match template::ready_for_clone(&self.catalog, server, admin, tenant.sector, &self.cfg)
                .await
            {
                Ok(pair) => Some(pair),
                Err(e) => {
                    tracing::warn!(server = %server.name, error = %e, "template unavailable; creating an empty database");
                    None
                }
            }
        } else {
            None
        };
        let source = match &tpl {
            Some((t, _)) => quote_ident(&t.database),
            None => "template0".to_string(),
        };
        let created = admin
            .batch_execute(&format!(
                "CREATE DATABASE {} OWNER {} TEMPLATE {source}",
                quote_ident(&names.database),
                quote_ident(&names.owner)
            ))
            .await;
        if let Some((_, guard)) = tpl {
            guard.release().await;
        }
        created
    }

    async fn record(&self, tenant: &TenantRecord, step: &'static str) -> Result<(), StepError> {
        self.catalog
            .add_provision_step(tenant.id, step)
            .await
            .map_err(|e| StepError {
                step,
                reason: e.to_string(),
            })
    }

    /// Drops what provisioning created on the server.
    async fn undo(&self, admin: &Client, tenant: &TenantRecord) -> Result<(), String> {
        let names = tenant.require_names().map_err(|e| e.to_string())?;
        roles::drop_generation(admin, &names)
            .await
            .map_err(|e| describe(&e))
    }
}
