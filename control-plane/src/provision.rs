//! Tenant provisioning as a recorded saga: role -> database -> grants -> migrations ->
//! seed -> active.
//!
//! The catalog row comes first and lists each finished step, so a failure can undo exactly
//! what was done (`CREATE DATABASE` is not transactional) and a crashed attempt can be
//! resumed: `create` on a `failed` (or long-stalled `provisioning`) slug adopts the row
//! and runs the saga again, every step being idempotent.

use crate::catalog::{Catalog, NewTenant, ServerRecord, TenantRecord};
use crate::config::Provisioning;
use crate::crypto;
use crate::dbserver::{self, describe};
use crate::error::{Error, Result};
use crate::template;
use std::time::Duration;
use tenant_migrations::quote_ident;
use tokio_postgres::Client;

/// Runs provisioning sagas.
#[derive(Clone)]
pub struct Provisioner {
    catalog: Catalog,
    cfg: Provisioning,
}

/// A step that failed, with a client-safe reason.
struct StepError {
    step: &'static str,
    reason: String,
}

impl Provisioner {
    /// A provisioner writing to `catalog`.
    pub fn new(catalog: Catalog, cfg: Provisioning) -> Provisioner {
        Provisioner { catalog, cfg }
    }

    fn timeout(&self) -> Duration {
        dbserver::millis(self.cfg.connect_timeout_ms)
    }

    /// Creates (or resumes creating) a tenant; returns it `active`.
    pub async fn create(&self, new: &NewTenant, actor: &str) -> Result<TenantRecord> {
        let password = crate::crypto::random_password();
        let (tenant, server, fresh) = match self.catalog.insert_tenant(new, &password).await {
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
            match dbserver::connect_admin(&self.catalog, &server, "postgres", self.timeout()).await
            {
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
        let password = if fresh {
            password
        } else {
            self.catalog.tenant_password(&tenant)?
        };
        match self.run_steps(&admin, &server, &tenant, &password).await {
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
                    .audit(
                        actor,
                        "tenant.create.failed",
                        Some(tenant.id),
                        &tenant.slug,
                        serde_json::json!({
                            "step": step, "reason": reason,
                        }),
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
        if dbserver::role_exists(admin, &tenant.role)
            .await
            .map_err(ddl)?
            || dbserver::database_exists(admin, &tenant.database)
                .await
                .map_err(ddl)?
        {
            return Err(Error::AlreadyExists(format!(
                "a role or database for slug {:?} already exists on server {:?} but not in the catalog; \
                 remove it or choose another slug",
                tenant.slug, server.name
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
        password: &str,
    ) -> Result<(i32, i32), StepError> {
        let role = quote_ident(&tenant.role);
        let db = quote_ident(&tenant.database);
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

        // 1. The tenant's own login role. The password travels as a SCRAM verifier only.
        self.record(tenant, "role").await?;
        let verifier = crypto::scram_verifier(password, self.cfg.scram_iterations);
        let exists = dbserver::role_exists(admin, &tenant.role)
            .await
            .map_err(fail("role"))?;
        let verb = if exists { "ALTER" } else { "CREATE" };
        admin
            .batch_execute(&format!(
                "{verb} ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD '{verifier}'"
            ))
            .await
            .map_err(fail("role"))?;
        dbserver::grant_role_to_admin(admin, &tenant.role)
            .await
            .map_err(fail("role"))?;

        // 2. The database, cloned from the sector template when there is one.
        self.record(tenant, "database").await?;
        let mut cloned = false;
        if !dbserver::database_exists(admin, &tenant.database)
            .await
            .map_err(fail("database"))?
        {
            let tpl = if self.cfg.use_template {
                match template::ready_for_clone(
                    &self.catalog,
                    server,
                    admin,
                    tenant.sector,
                    &self.cfg.template_prefix,
                    self.timeout(),
                )
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
            let create = match &tpl {
                Some((t, _)) => format!(
                    "CREATE DATABASE {db} OWNER {role} TEMPLATE {}",
                    quote_ident(&t.database)
                ),
                None => format!("CREATE DATABASE {db} OWNER {role}"),
            };
            let created = admin.batch_execute(&create).await;
            cloned = tpl.is_some();
            if let Some((_, guard)) = tpl {
                guard.release().await;
            }
            created.map_err(fail("database"))?;
        }

        // 3. Only the tenant's role may connect: CONNECT revoked from PUBLIC.
        self.record(tenant, "grants").await?;
        admin
            .batch_execute(&format!(
                "REVOKE ALL ON DATABASE {db} FROM PUBLIC; GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {role}"
            ))
            .await
            .map_err(fail("grants"))?;

        // 4. Migrations (a catch-up after a clone), as the tenant's role, under the lock.
        let mut client =
            dbserver::connect_admin(&self.catalog, server, &tenant.database, self.timeout())
                .await
                .map_err(internal("migrate"))?;
        if cloned {
            client
                .batch_execute(&format!(
                    "REASSIGN OWNED BY {owner} TO {role}; REVOKE ALL ON SCHEMA public FROM {owner}",
                    owner = template::TEMPLATE_OWNER
                ))
                .await
                .map_err(fail("migrate"))?;
        }
        self.record(tenant, "migrate").await?;
        let outcome = tenant_migrations::migrate(&mut client, tenant.sector, Some(&tenant.role))
            .await
            .map_err(|e| StepError {
                step: "migrate",
                reason: e.to_string(),
            })?;

        // 5. Sector defaults (idempotent).
        self.record(tenant, "seed").await?;
        client
            .batch_execute(&tenant.sector.seed_sql())
            .await
            .map_err(fail("seed"))?;
        Ok((outcome.common_version, outcome.sector_version))
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

    /// Drops what provisioning created on the server (database first: it depends on the role).
    async fn undo(&self, admin: &Client, tenant: &TenantRecord) -> Result<(), String> {
        let db = quote_ident(&tenant.database);
        let role = quote_ident(&tenant.role);
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .await
            .map_err(|e| describe(&e))?;
        admin
            .batch_execute(&format!("DROP ROLE IF EXISTS {role}"))
            .await
            .map_err(|e| describe(&e))?;
        Ok(())
    }
}
