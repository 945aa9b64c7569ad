//! Rotating a tenant's login password with no failed calls.
//!
//! A tenant has two login roles. A rotation gives the standby one a fresh password and
//! makes it the active one in the catalog (a version bump: every router hears of it and
//! rebuilds that tenant's pool with the new credentials, and a router that has not heard
//! yet still connects with the old ones). The previously active role keeps its password
//! for a grace period, then loses it and its sessions (the sweeper below, in every
//! control-plane replica; each step is idempotent). Each step is recorded, so a crash
//! resumes: the staged password is reused, a due disable is still done.

use crate::catalog::{Catalog, ServerRecord, TenantRecord};
use crate::config::Provisioning;
use crate::dbserver::{self, describe};
use crate::error::{Error, Result};
use crate::roles::{self, RoleKind};
use std::time::Duration;
use tenant_migrations::{quote_ident, quote_literal};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

/// How often each replica looks for previous login roles due to be disabled.
const SWEEP_EVERY: Duration = Duration::from_secs(2);

/// Rotates login passwords.
#[derive(Clone)]
pub struct Rotator {
    catalog: Catalog,
    cfg: Provisioning,
}

impl Rotator {
    /// A rotator over `catalog`.
    pub fn new(catalog: Catalog, cfg: Provisioning) -> Rotator {
        Rotator { catalog, cfg }
    }

    fn timeout(&self) -> Duration {
        dbserver::millis(self.cfg.connect_timeout_ms)
    }

    /// Gives the standby login role a fresh password and makes it the active one.
    pub async fn rotate(&self, tenant: &TenantRecord) -> Result<TenantRecord> {
        let names = tenant.require_names()?;
        let standby = &names.logins[1];
        let server = self.server(tenant.server_id).await?;
        let password = self
            .catalog
            .stage_rotation(tenant, &crate::crypto::random_password())
            .await?;
        let admin = dbserver::connect_maintenance(&self.catalog, &server, self.timeout()).await?;
        let ddl = |e: tokio_postgres::Error| {
            Error::Unavailable(format!("server {:?}: {}", server.name, describe(&e)))
        };
        // Sessions the standby role still has were opened with an older credential.
        terminate(&admin, standby).await.map_err(ddl)?;
        roles::ensure_role(
            &admin,
            standby,
            RoleKind::Login(self.cfg.login_limits()),
            Some(&password),
            self.cfg.scram_iterations,
        )
        .await
        .map_err(ddl)?;
        self.catalog
            .swap_logins(tenant, &password, self.cfg.rotation_grace_secs)
            .await
    }

    /// Gives the tenant's owner role a fresh password. The catalog is written first: if the
    /// server is not reached (or the process dies) before `ALTER ROLE`, the owner cannot
    /// log in until the rotation is run again, which sets whatever the catalog holds.
    pub async fn rotate_owner(&self, tenant: &TenantRecord) -> Result<()> {
        let names = tenant.require_names()?;
        let server = self.server(tenant.server_id).await?;
        let password = crate::crypto::random_password();
        self.catalog.set_owner_password(tenant, &password).await?;
        let admin = dbserver::connect_maintenance(&self.catalog, &server, self.timeout()).await?;
        roles::ensure_role(
            &admin,
            &names.owner,
            RoleKind::Owner,
            Some(&password),
            self.cfg.scram_iterations,
        )
        .await
        .map_err(|e| Error::Unavailable(format!("server {:?}: {}", server.name, describe(&e))))
    }

    /// Gives a server's template owner role a fresh password (forgotten first, so a crash
    /// half way is healed by the next template refresh, which sets a new one).
    pub async fn rotate_template_owner(&self, server: &ServerRecord) -> Result<ServerRecord> {
        let server = self.catalog.reset_template_owner_password(server).await?;
        let admin = dbserver::connect_maintenance(&self.catalog, &server, self.timeout()).await?;
        crate::template::ensure_owner(&self.catalog, &server, &admin, &self.cfg).await?;
        self.server(server.id).await
    }

    async fn server(&self, id: i64) -> Result<ServerRecord> {
        self.catalog
            .server_by_id(id)
            .await?
            .ok_or_else(|| Error::Internal("tenant's server vanished".into()))
    }

    /// Disables every previous login role whose grace period is over; returns how many.
    pub async fn sweep(&self) -> Result<usize> {
        let due = self.catalog.due_login_disables().await?;
        for (tenant_id, role, server_id) in &due {
            let server = self.server(*server_id).await?;
            let admin =
                dbserver::connect_maintenance(&self.catalog, &server, self.timeout()).await?;
            admin
                .batch_execute(&format!("ALTER ROLE {} PASSWORD NULL", quote_ident(role)))
                .await?;
            terminate(&admin, role).await?;
            self.catalog.login_disabled(*tenant_id, role).await?;
            tracing::info!(tenant_id, role = %role, "previous login role disabled");
        }
        Ok(due.len())
    }

    /// Sweeps until `cancel` fires.
    pub async fn sweep_loop(self, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(SWEEP_EVERY) => {}
            }
            if let Err(e) = self.sweep().await {
                tracing::warn!(error = %e, "cannot disable previous login roles yet");
            }
        }
    }
}

/// Ends every session of `role`.
async fn terminate(admin: &Client, role: &str) -> Result<(), tokio_postgres::Error> {
    admin
        .batch_execute(&format!(
            "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity \
             WHERE usename = {}",
            quote_literal(role)
        ))
        .await
}
