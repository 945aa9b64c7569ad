//! `TenantAdmin` backup methods.

use super::admin::AdminService;
use crate::auth::Role;
use crate::catalog::BackupRecord;
use crate::error::Error;
use crate::export::{export, Format};
use crate::model::{Slug, Status};
use proto::control::v1 as pb;
use proto::model::ToWire;
use tonic::{Request, Response, Status as GrpcStatus};

impl AdminService {
    pub(super) async fn do_backup_tenants(
        &self,
        request: Request<pb::BackupRequest>,
    ) -> Result<Response<pb::BackupResponse>, GrpcStatus> {
        let actor = self
            .actor(&request, Role::Operator, "tenant.backup")
            .await?;
        let req = request.into_inner();
        if req.catalog {
            if req.all || !req.tenants.is_empty() {
                return Err(Error::InvalidArgument(
                    "back up the catalog alone (no tenants with it)".into(),
                )
                .into());
            }
            let b = self.backups.clone();
            let done = self
                .tasks
                .spawn(async move { b.backup_catalog("manual").await })
                .await
                .map_err(|e| Error::internal("backup task", e))??;
            self.catalog
                .audit_outcome(
                    &actor,
                    "catalog.backup",
                    None,
                    "catalog",
                    serde_json::json!({"backup": done.id}),
                    done.state.as_str(),
                )
                .await?;
            return Ok(Response::new(pb::BackupResponse {
                backups: vec![backup_pb(done)],
                failed: Vec::new(),
            }));
        }
        let tenants = self.selected(&req.tenants, req.all, "back up").await?;
        // Each backup runs as a task of its own: a client that hangs up does not cut one
        // off half way. Concurrency is bounded overall and per server inside `Backups`.
        let mut jobs = Vec::with_capacity(tenants.len());
        for t in tenants {
            let backups = self.backups.clone();
            jobs.push((
                t.slug.clone(),
                t.id,
                self.tasks
                    .spawn(async move { backups.backup_tenant(&t, "manual").await }),
            ));
        }
        let (mut done, mut failed) = (Vec::new(), Vec::new());
        for (slug, id, job) in jobs {
            match job.await {
                Ok(Ok(b)) => {
                    self.catalog
                        .audit_outcome(
                            &actor,
                            "tenant.backup",
                            Some(id),
                            &slug,
                            serde_json::json!({"backup": b.id, "bytes": b.bytes}),
                            b.state.as_str(),
                        )
                        .await?;
                    done.push(backup_pb(b));
                }
                Ok(Err(e)) => failed.push(pb::RotateFailure {
                    slug,
                    error: e.to_string(),
                }),
                Err(e) => failed.push(pb::RotateFailure {
                    slug,
                    error: Error::internal("backup task", e).to_string(),
                }),
            }
        }
        Ok(Response::new(pb::BackupResponse {
            backups: done,
            failed,
        }))
    }

    pub(super) async fn do_restore_tenant(
        &self,
        request: Request<pb::RestoreRequest>,
    ) -> Result<Response<pb::Tenant>, GrpcStatus> {
        let actor = self
            .actor(&request, Role::Operator, "tenant.restore")
            .await?;
        let req = request.into_inner();
        let tenant = self.tenant(&req.tenant).await?;
        let into = match req.as_slug.trim() {
            "" => None,
            raw => Some(Slug::parse(raw).map_err(Error::from)?),
        };
        let backups = self.backups.clone();
        let (slug, id, backup_id) = (tenant.slug.clone(), tenant.id, req.backup_id);
        // Runs to its end even if the client goes away.
        let restored = self
            .tasks
            .spawn(async move {
                match into {
                    Some(new) => backups.restore_as(&tenant, backup_id, new).await,
                    None => backups.restore(&tenant, backup_id).await,
                }
            })
            .await
            .map_err(|e| Error::internal("restore task", e))?;
        let outcome = if restored.is_ok() { "ok" } else { "failed" };
        self.catalog
            .audit_outcome(
                &actor,
                "tenant.restore",
                Some(id),
                &slug,
                serde_json::json!({"backup": backup_id, "as": req.as_slug}),
                outcome,
            )
            .await?;
        let t = restored?;
        // Deliveries kept while it was restoring go in now.
        self.replayer.wake();
        Ok(Response::new(super::admin::tenant_pb(&t)))
    }

    pub(super) async fn do_delete_tenant(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, GrpcStatus> {
        let actor = self
            .actor(&request, Role::Operator, "tenant.delete")
            .await?;
        let req = request.into_inner();
        let reason = req.reason.trim();
        if reason.chars().count() > 500 || reason.chars().any(char::is_control) {
            return Err(Error::InvalidArgument(
                "reason must be at most 500 printable characters".into(),
            )
            .into());
        }
        let tenant = match self.tenant(&req.tenant).await {
            Ok(t) => t,
            Err(Error::NotFound(m)) => {
                let gone = self.catalog.tombstone_by_slug(req.tenant.trim()).await?;
                return Err(Error::NotFound(match gone {
                    Some(t) => format!(
                        "tenant {} was deleted by {} and has been purged",
                        t.slug, t.deleted_by
                    ),
                    None => m,
                })
                .into());
            }
            Err(e) => return Err(e.into()),
        };
        if req.now && req.confirm != tenant.slug {
            return Err(Error::InvalidArgument(format!(
                "deleting now purges the database and every backup of it: confirm with the slug ({})",
                tenant.slug
            ))
            .into());
        }
        let deleter = self.deleter.clone();
        let reason = (!reason.is_empty()).then(|| reason.to_string());
        let now = req.now;
        // Runs to its end even if the client goes away.
        let after = self
            .tasks
            .spawn(async move {
                deleter
                    .delete(&tenant, &actor, reason.as_deref(), now)
                    .await
            })
            .await
            .map_err(|e| Error::internal("delete task", e))??;
        let purge_at_ms = match &after {
            Some(t) => self.catalog.purge_at_ms(t.id).await?.unwrap_or(0),
            None => 0,
        };
        Ok(Response::new(pb::DeleteResponse {
            purged: after.is_none(),
            tenant: after.as_ref().map(super::admin::tenant_pb),
            purge_at_ms,
        }))
    }

    pub(super) async fn do_export_tenant(
        &self,
        request: Request<pb::ExportRequest>,
    ) -> Result<Response<super::admin::ExportStream>, GrpcStatus> {
        // Customers' data leaves the platform: operators only, audited.
        let actor = self
            .actor(&request, Role::Operator, "tenant.export")
            .await?;
        let req = request.into_inner();
        let format = match pb::ExportFormat::try_from(req.format) {
            Ok(pb::ExportFormat::Jsonl) => Format::Jsonl,
            Ok(pb::ExportFormat::Csv) => Format::Csv,
            _ => {
                return Err(
                    Error::InvalidArgument("format must be one of jsonl, csv".into()).into(),
                )
            }
        };
        let tenant = self.tenant(&req.tenant).await?;
        if !matches!(tenant.status, Status::Active | Status::Suspended) {
            return Err(Error::FailedPrecondition(format!(
                "tenant {} is {}: only active or suspended tenants are exported",
                tenant.slug,
                tenant.status.as_str()
            ))
            .into());
        }
        self.catalog
            .audit(
                &actor,
                "tenant.export",
                Some(tenant.id),
                &tenant.slug,
                serde_json::json!({"format": format!("{format:?}").to_lowercase()}),
            )
            .await?;
        let (catalog, timeout) = (self.catalog.clone(), self.connect_timeout);
        Ok(Response::new(super::directory::async_stream(
            move |tx| async move {
                if let Err(e) = export(&catalog, &tenant, format, timeout, &tx).await {
                    tracing::warn!(tenant = %tenant.slug, error = %e, "export failed");
                    let _ = tx.send(Err(e.into())).await;
                }
            },
        )))
    }

    pub(super) async fn do_verify_backup(
        &self,
        request: Request<pb::VerifyBackupRequest>,
    ) -> Result<Response<pb::BackupInfo>, GrpcStatus> {
        let actor = self
            .actor(&request, Role::Operator, "backup.verify")
            .await?;
        let id = request.into_inner().backup_id;
        let backups = self.backups.clone();
        let b = self
            .tasks
            .spawn(async move { backups.verify(id).await })
            .await
            .map_err(|e| Error::internal("verify task", e))??;
        self.catalog
            .audit_outcome(
                &actor,
                "backup.verify",
                b.tenant_id,
                b.slug.as_deref().unwrap_or(""),
                serde_json::json!({"backup": id}),
                if b.verification_error.is_none() {
                    "ok"
                } else {
                    "failed"
                },
            )
            .await?;
        Ok(Response::new(backup_pb(b)))
    }

    pub(super) async fn do_list_backups(
        &self,
        request: Request<pb::ListBackupsRequest>,
    ) -> Result<Response<pb::ListBackupsResponse>, GrpcStatus> {
        self.actor(&request, Role::Viewer, "tenant.backups").await?;
        let req = request.into_inner();
        let limit = match req.limit {
            0 => 50,
            n if n > 1000 => {
                return Err(Error::InvalidArgument("limit must be at most 1000".into()).into())
            }
            n => n,
        };
        let owner = match (req.catalog, req.tenant.trim()) {
            (true, "") => None,
            (false, raw) if !raw.is_empty() => Some(self.tenant(raw).await?.id),
            _ => {
                return Err(
                    Error::InvalidArgument("name a tenant or ask for the catalog's".into()).into(),
                )
            }
        };
        let backups = self.catalog.backups(owner, limit).await?;
        Ok(Response::new(pb::ListBackupsResponse {
            backups: backups.into_iter().map(backup_pb).collect(),
        }))
    }
}

fn backup_pb(b: BackupRecord) -> pb::BackupInfo {
    pb::BackupInfo {
        id: b.id,
        tenant: b.slug.unwrap_or_default(),
        reason: b.reason,
        state: b.state.to_wire(),
        bytes: b.bytes.unwrap_or(0),
        checksum: b.checksum.unwrap_or_default(),
        duration_ms: b.duration_ms.unwrap_or(0),
        schema_version: b.schema_version.unwrap_or(0),
        sector_schema_version: b.sector_schema_version.unwrap_or(0),
        error: b.error.unwrap_or_default(),
        started_ms: b.started_ms,
        finished_ms: b.finished_ms.unwrap_or(0),
        manifest_json: b.manifest.map(|m| m.to_string()).unwrap_or_default(),
        verified_ms: b.verified_ms.unwrap_or(0),
        verification_error: b.verification_error.unwrap_or_default(),
    }
}
