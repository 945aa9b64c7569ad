//! Offboarding and erasure (`tenantctl delete`).
//!
//! `delete` suspends the tenant (routers stop serving it), takes a final backup, then marks
//! it deleted: its WhatsApp number is free at once, and after `deletion.window_secs` the
//! purge drops its database and roles, deletes every backup of it (the final one too) and
//! replaces its catalog row by a tombstone (who, when, why); only then is the slug free.
//! `--now` (with the slug typed again as confirmation) skips the final backup and the
//! window. Every step is audited; each is idempotent, so a delete interrupted by a crash is
//! finished by running it again, and a purge by any replica's sweep.

use crate::auth::Actor;
use crate::backup::Backups;
use crate::catalog::{Catalog, TenantRecord};
use crate::dbserver;
use crate::error::{Error, Result};
use crate::model::{Status, TenantKey};
use std::time::Duration;
use tenant_model::BackupState;
use tokio_util::sync::CancellationToken;

/// How long a deletion waits for the tenant's pending inbox deliveries to be applied
/// before its final backup.
const INBOX_DRAIN: Duration = Duration::from_secs(15);

/// Deletes and purges tenants; cheap to clone.
#[derive(Clone)]
pub struct Deleter {
    catalog: Catalog,
    backups: Backups,
    ingest: crate::ingest::Ingest,
    cfg: crate::config::Deletion,
    connect_timeout: Duration,
    jobs: crate::telemetry::Jobs,
}

impl Deleter {
    pub fn new(
        catalog: Catalog,
        backups: Backups,
        ingest: crate::ingest::Ingest,
        config: &crate::Config,
        jobs: crate::telemetry::Jobs,
    ) -> Deleter {
        Deleter {
            jobs,
            catalog,
            backups,
            ingest,
            cfg: config.deletion.clone(),
            connect_timeout: Duration::from_millis(config.provisioning.connect_timeout_ms),
        }
    }

    /// Deletes a tenant (see the module docs); the tenant as it is afterwards (`None` once
    /// purged).
    pub async fn delete(
        &self,
        tenant: &TenantRecord,
        actor: &Actor,
        reason: Option<&str>,
        now: bool,
    ) -> Result<Option<TenantRecord>> {
        self.jobs
            .time("delete", self.delete_job(tenant, actor, reason, now))
            .await
    }

    async fn delete_job(
        &self,
        tenant: &TenantRecord,
        actor: &Actor,
        reason: Option<&str>,
        now: bool,
    ) -> Result<Option<TenantRecord>> {
        if !matches!(
            tenant.status,
            Status::Active | Status::Suspended | Status::Deleted
        ) {
            return Err(Error::FailedPrecondition(format!(
                "tenant {} is {}: only active, suspended or deleted tenants can be deleted",
                tenant.slug,
                tenant.status.as_str()
            )));
        }
        let key = TenantKey::Id(crate::model::TenantId::new(tenant.id)?);
        if tenant.status == Status::Active {
            self.catalog
                .transition(&key, &[Status::Active], Status::Suspended)
                .await?;
            self.audit(
                actor,
                "tenant.delete.suspend",
                tenant,
                serde_json::json!({}),
            )
            .await?;
        }
        if tenant.status != Status::Deleted && !now {
            // Deliveries acknowledged before the suspension belong in the final backup.
            if !self.ingest.drained(tenant.id, INBOX_DRAIN).await? {
                tracing::warn!(tenant = %tenant.slug, "inbox not drained before the final backup; its pending deliveries are erased with the tenant");
            }
            let current = self
                .catalog
                .tenant_by_id(tenant.id)
                .await?
                .ok_or_else(|| Error::NotFound("tenant not found".into()))?;
            let b = self.backups.backup_tenant(&current, "final").await?;
            if b.state != BackupState::Ok {
                return Err(Error::Aborted(format!(
                    "the final backup failed ({}); tenant {} stays suspended and is not deleted",
                    b.error.as_deref().unwrap_or("no detail"),
                    tenant.slug
                )));
            }
            self.audit(
                actor,
                "tenant.delete.final_backup",
                tenant,
                serde_json::json!({"backup": b.id}),
            )
            .await?;
        }
        self.catalog
            .mark_deleted(tenant.id, &actor.name, reason, self.cfg.window_secs)
            .await?;
        self.audit(
            actor,
            "tenant.delete",
            tenant,
            serde_json::json!({"reason": reason, "now": now, "window_secs": self.cfg.window_secs}),
        )
        .await?;
        if now {
            self.catalog.purge_now(tenant.id).await?;
            self.purge(tenant.id).await?;
            return Ok(None);
        }
        self.catalog.tenant_by_id(tenant.id).await
    }

    /// Purges a deleted tenant whose window is over: database and roles, backups, then the
    /// row (a tombstone stays).
    pub async fn purge(&self, tenant_id: i64) -> Result<()> {
        self.jobs.time("purge", self.purge_job(tenant_id)).await
    }

    async fn purge_job(&self, tenant_id: i64) -> Result<()> {
        let Some(tenant) = self.catalog.tenant_by_id(tenant_id).await? else {
            return Ok(());
        };
        if tenant.status != Status::Deleted {
            return Err(Error::FailedPrecondition(format!(
                "tenant {} is not deleted",
                tenant.slug
            )));
        }
        if let (Some(names), Some(server)) = (
            tenant.names(),
            self.catalog.server_by_id(tenant.server_id).await?,
        ) {
            let admin =
                dbserver::connect_maintenance(&self.catalog, &server, self.connect_timeout).await?;
            crate::roles::drop_generation(&admin, &names).await?;
        }
        self.ingest.erase_tenant(tenant.id).await?;
        for (id, object) in self.catalog.all_backups_of(tenant.id).await? {
            crate::backup::delete_object(self.backups.store(), &object).await?;
            self.catalog.delete_backup_row(id).await?;
        }
        self.catalog.tombstone(tenant.id).await?;
        self.audit(
            &Actor::system("control-plane"),
            "tenant.purge",
            &tenant,
            serde_json::json!({}),
        )
        .await?;
        tracing::info!(tenant = %tenant.slug, "deleted tenant purged");
        Ok(())
    }

    /// Purges the deleted tenants whose window is over, every `purge_every_secs`, until
    /// `cancel`.
    pub async fn sweep_loop(self, cancel: CancellationToken) {
        loop {
            match self.catalog.due_purges().await {
                Ok(due) => {
                    for id in due {
                        if let Err(e) = self.purge(id).await {
                            tracing::warn!(tenant = id, error = %e, "cannot purge a deleted tenant");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot list deleted tenants to purge"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(self.cfg.purge_every_secs)) => {}
            }
        }
    }

    async fn audit(
        &self,
        actor: &Actor,
        action: &str,
        tenant: &TenantRecord,
        details: serde_json::Value,
    ) -> Result<()> {
        self.catalog
            .audit(actor, action, Some(tenant.id), &tenant.slug, details)
            .await
    }
}
