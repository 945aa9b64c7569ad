//! In-place restore: the next generation of the tenant's database and roles is built
//! beside the live one from a backup, verified, migrated forward if the backup is older,
//! and only then does the tenant switch to it (one catalog transaction, a version bump that
//! makes routers drain the old pools). The old generation is kept for
//! `backup.restore_grace_secs`, then dropped.
//!
//! While it runs the tenant is `restoring`: routers answer calls with UNAVAILABLE (retry)
//! and webhooks keep deliveries as dead letters, replayed once the tenant is back. Nothing
//! a restore does touches the live database: a damaged object (found as it streams: a
//! chunk fails to open, or the checksum differs at the end, before pg_restore may commit),
//! a row count that differs from the manifest, or a crash leaves the tenant on its old
//! database and drops the half-built generation.

use super::{stream, Backups};
use crate::catalog::{RestoreJob, RetiredGeneration, TenantRecord};
use crate::dbserver;
use crate::error::{Error, Result};
use crate::model::{Status, TenantNames};
use crate::roles;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use tenant_migrations::{quote_ident, SectorSchema};
use tenant_model::BackupState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

impl Backups {
    /// Restores `tenant` in place from backup `backup_id`; the tenant after the switch.
    pub async fn restore(&self, tenant: &TenantRecord, backup_id: i64) -> Result<TenantRecord> {
        self.jobs
            .time("restore", self.restore_job(tenant, backup_id))
            .await
    }

    async fn restore_job(&self, tenant: &TenantRecord, backup_id: i64) -> Result<TenantRecord> {
        let backup = self.restorable(tenant, backup_id).await?;
        if !matches!(tenant.status, Status::Active | Status::Suspended) {
            return Err(Error::FailedPrecondition(format!(
                "tenant {} is {}: only active or suspended tenants are restored",
                tenant.slug,
                tenant.status.as_str()
            )));
        }
        let old = tenant.require_names()?;
        let server = self
            .catalog
            .server_by_id(tenant.server_id)
            .await?
            .ok_or_else(|| Error::Internal("tenant's server vanished".into()))?;
        let generation = tenant.generation + 1;
        let new = TenantNames::derive(&self.prov.name_prefix, tenant.id, generation);
        let job = self
            .catalog
            .start_restore(tenant, backup_id, generation, &self.replica)
            .await?;
        let built = self.build(&job, tenant, &server, &backup, &new).await;
        let outcome = match built {
            Ok(versions) => {
                self.catalog
                    .switch_restore(
                        &job,
                        &RetiredGeneration {
                            server_id: server.id,
                            names: old,
                        },
                        &new,
                        versions,
                        self.cfg.restore_grace_secs,
                    )
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = outcome {
            tracing::warn!(tenant = %tenant.slug, backup = backup_id, error = %e, "restore failed; the tenant stays on its database");
            self.discard(&server, &new).await;
            self.catalog
                .end_restore(job.id, "failed", &e.to_string())
                .await?;
            return Err(e);
        }
        self.catalog
            .tenant_by_id(tenant.id)
            .await?
            .ok_or_else(|| Error::Internal("tenant vanished".into()))
    }

    /// Restores a backup of `source` into a new tenant `slug` (same sector, plan and
    /// server, no WhatsApp number); the new tenant, active. `source` is not touched. If
    /// anything fails, the new tenant's database, roles and row are removed.
    pub async fn restore_as(
        &self,
        source: &TenantRecord,
        backup_id: i64,
        slug: crate::model::Slug,
    ) -> Result<TenantRecord> {
        self.jobs
            .time("restore_as", self.restore_as_job(source, backup_id, slug))
            .await
    }

    async fn restore_as_job(
        &self,
        source: &TenantRecord,
        backup_id: i64,
        slug: crate::model::Slug,
    ) -> Result<TenantRecord> {
        let backup = self.restorable(source, backup_id).await?;
        let passwords = crate::catalog::NewPasswords {
            login: crate::crypto::random_password(),
            owner: crate::crypto::random_password(),
        };
        let (tenant, server) = self
            .catalog
            .insert_tenant(
                &crate::catalog::NewTenant {
                    slug,
                    name: source.name.clone(),
                    sector: source.sector,
                    phone_number_id: None,
                    display_phone: None,
                    plan: source.plan.clone(),
                    server: Some(source.server_name.clone()),
                },
                &passwords,
                &self.prov.name_prefix,
            )
            .await?;
        let names = tenant.require_names()?;
        let job = match self
            .catalog
            .start_restore_into(&tenant, backup_id, &passwords, &self.replica)
            .await
        {
            Ok(job) => job,
            Err(e) => {
                self.catalog.delete_tenant_row(tenant.id).await?;
                return Err(e);
            }
        };
        let built = async {
            let step = |s: &'static str| self.catalog.restore_step(job, s);
            let mut owner = self
                .fill_and_verify(
                    &tenant,
                    &server,
                    &backup,
                    &names,
                    (&passwords.owner, &passwords.login),
                    step,
                )
                .await?;
            let outcome = tenant_migrations::migrate(&mut owner, tenant.sector)
                .await
                .map_err(|e| Error::Aborted(format!("migrating the restored database: {e}")))?;
            owner
                .batch_execute(&format!(
                    "{}; {}",
                    tenant.sector.seed_sql(),
                    tenant_migrations::grants_sql(&names.login_refs())
                ))
                .await?;
            Ok::<_, Error>((outcome.common_version, outcome.sector_version))
        }
        .await;
        match built {
            Ok((common, sector)) => {
                let active = self.catalog.mark_active(tenant.id, common, sector).await?;
                self.catalog.close_restore(job).await?;
                Ok(active)
            }
            Err(e) => {
                self.discard(&server, &names).await;
                self.catalog
                    .end_restore(job, "failed", &e.to_string())
                    .await?;
                self.catalog.delete_tenant_row(tenant.id).await?;
                Err(e)
            }
        }
    }

    /// Backup `backup_id` if it is a complete backup of `tenant`.
    async fn restorable(
        &self,
        tenant: &TenantRecord,
        backup_id: i64,
    ) -> Result<crate::catalog::BackupRecord> {
        let backup = self
            .catalog
            .backup(backup_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("backup {backup_id} not found")))?;
        if backup.tenant_id != Some(tenant.id) {
            return Err(Error::FailedPrecondition(format!(
                "backup {backup_id} is not a backup of tenant {}",
                tenant.slug
            )));
        }
        if backup.state != BackupState::Ok {
            return Err(Error::FailedPrecondition(format!(
                "backup {backup_id} is {}: only complete backups can be restored",
                backup.state
            )));
        }
        Ok(backup)
    }

    /// Drops a half-built generation (logged, never fatal: the sweeper retries).
    pub(super) async fn discard(&self, server: &crate::catalog::ServerRecord, names: &TenantNames) {
        let dropped = async {
            let admin =
                dbserver::connect_maintenance(&self.catalog, server, self.connect_timeout).await?;
            roles::drop_generation(&admin, names)
                .await
                .map_err(Error::from)
        }
        .await;
        if let Err(e) = dropped {
            tracing::warn!(database = %names.database, error = %e, "cannot drop a half-built generation");
        }
    }

    /// Builds, fills, verifies and migrates the new generation; its schema versions.
    async fn build(
        &self,
        job: &RestoreJob,
        tenant: &TenantRecord,
        server: &crate::catalog::ServerRecord,
        backup: &crate::catalog::BackupRecord,
        new: &TenantNames,
    ) -> Result<(i32, i32)> {
        let passwords = (job.owner_password.as_str(), job.login_password.as_str());
        let step = |s: &'static str| self.catalog.restore_step(job.id, s);
        let mut owner = self
            .fill_and_verify(tenant, server, backup, new, passwords, step)
            .await?;
        // Forward to the schema this control plane ships, then the login roles' grants.
        self.catalog.restore_step(job.id, "migrate").await?;
        let outcome = tenant_migrations::migrate(&mut owner, tenant.sector)
            .await
            .map_err(|e| Error::Aborted(format!("migrating the restored database: {e}")))?;
        owner
            .batch_execute(&format!(
                "{}; {}",
                tenant.sector.seed_sql(),
                tenant_migrations::grants_sql(&new.login_refs())
            ))
            .await?;
        self.catalog.restore_step(job.id, "switch").await?;
        Ok((outcome.common_version, outcome.sector_version))
    }

    /// Makes `names` (roles and an empty database) on the server, fills it from the
    /// backup and checks it against the manifest and the recorded schema versions; a
    /// session as its owner. `step` records progress.
    async fn fill_and_verify<F>(
        &self,
        tenant: &TenantRecord,
        server: &crate::catalog::ServerRecord,
        backup: &crate::catalog::BackupRecord,
        names: &TenantNames,
        (owner_password, login_password): (&str, &str),
        step: impl Fn(&'static str) -> F,
    ) -> Result<tokio_postgres::Client>
    where
        F: std::future::Future<Output = Result<()>>,
    {
        // Roles and an empty database, made from the maintenance database.
        step("database").await?;
        let admin =
            dbserver::connect_maintenance(&self.catalog, server, self.connect_timeout).await?;
        roles::drop_generation(&admin, names).await?;
        roles::ensure_tenant_roles(
            &admin,
            names,
            (owner_password, login_password),
            self.prov.login_limits(),
            self.prov.scram_iterations,
        )
        .await?;
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {} OWNER {} TEMPLATE template0",
                quote_ident(&names.database),
                quote_ident(&names.owner)
            ))
            .await?;
        roles::close_database(&admin, &names.database, &names.logins).await?;

        // The backup, decrypted and checked as it streams, into pg_restore as the owner.
        step("restore").await?;
        self.pg_restore(tenant, server, backup, names, owner_password, || {
            step("restore")
        })
        .await?;

        // Every table holds the rows the manifest counted, at the recorded versions.
        step("verify").await?;
        let owner = dbserver::connect_login(
            &self.catalog,
            server,
            (&names.owner, owner_password),
            &names.database,
            dbserver::SearchPath::Public,
            self.connect_timeout,
        )
        .await?;
        verify_counts(&owner, backup).await?;
        let found = tenant_migrations::current_versions(&owner, tenant.sector).await?;
        let recorded = (
            backup.schema_version.unwrap_or(0),
            backup.sector_schema_version.unwrap_or(0),
        );
        if found != recorded {
            return Err(Error::Aborted(format!(
                "the restored database is at schema {}.{}, the backup recorded {}.{}",
                found.0, found.1, recorded.0, recorded.1
            )));
        }
        Ok(owner)
    }

    /// Restores a backup into a scratch database on its tenant's server, checks it like a
    /// restore would, drops it and records the outcome on the backup; the backup after.
    pub async fn verify(&self, backup_id: i64) -> Result<crate::catalog::BackupRecord> {
        let backup = self
            .catalog
            .backup(backup_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("backup {backup_id} not found")))?;
        if backup.state != BackupState::Ok {
            return Err(Error::FailedPrecondition(format!(
                "backup {backup_id} is {}: only complete backups are verified",
                backup.state
            )));
        }
        let tenant = match backup.tenant_id {
            Some(id) => self.catalog.tenant_by_id(id).await?,
            None => None,
        }
        .ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "backup {backup_id} belongs to no tenant (catalog backups are verified by restoring them by hand)"
            ))
        })?;
        let server = self
            .catalog
            .server_by_id(tenant.server_id)
            .await?
            .ok_or_else(|| Error::Internal("tenant's server vanished".into()))?;
        let base = format!("{}_verify_{backup_id}", self.prov.name_prefix);
        let scratch = TenantNames {
            database: base.clone(),
            owner: format!("{base}_owner"),
            logins: [format!("{base}_login_a"), format!("{base}_login_b")],
        };
        let (owner_pw, login_pw) = (
            crate::crypto::random_password(),
            crate::crypto::random_password(),
        );
        let checked = self
            .fill_and_verify(
                &tenant,
                &server,
                &backup,
                &scratch,
                (&owner_pw, &login_pw),
                |_| async { Ok(()) },
            )
            .await
            .map(drop);
        self.discard(&server, &scratch).await;
        let error = checked.as_ref().err().map(ToString::to_string);
        self.catalog
            .record_verification(backup_id, error.as_deref())
            .await?;
        if let Some(e) = &error {
            tracing::warn!(backup = backup_id, error = %e, "backup verification failed");
        }
        self.catalog
            .backup(backup_id)
            .await?
            .ok_or_else(|| Error::Internal("backup row vanished".into()))
    }

    /// Streams the backup into pg_restore; `beat` is called every so often (a long
    /// restore keeps its job's heartbeat, so no replica takes it for dead).
    async fn pg_restore<F>(
        &self,
        tenant: &TenantRecord,
        server: &crate::catalog::ServerRecord,
        backup: &crate::catalog::BackupRecord,
        new: &TenantNames,
        owner_password: &str,
        beat: impl Fn() -> F,
    ) -> Result<()>
    where
        F: std::future::Future<Output = Result<()>>,
    {
        let key = self.data_key(backup)?;
        let admin =
            dbserver::connect_maintenance(&self.catalog, server, self.connect_timeout).await?;
        let version: i32 = admin
            .query_one(
                "SELECT pg_catalog.current_setting('server_version_num')::int4",
                &[],
            )
            .await?
            .get(0);
        let bin = self.tool(version, "pg_restore")?;
        let mut child = tokio::process::Command::new(bin)
            .args([
                "--no-owner",
                "--no-privileges",
                "--exit-on-error",
                "--single-transaction",
            ])
            .arg(format!(
                "--dbname={}",
                self.conninfo((&server.host, server.port), &new.owner, &new.database)
            ))
            .env("PGPASSWORD", owner_password)
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::internal("start pg_restore", e))?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| Error::Internal("pg_restore has no stdin".into()))?;
        let mut stderr = child
            .stderr
            .take()
            .ok_or_else(|| Error::Internal("pg_restore has no stderr".into()))?;
        let errors = tokio::spawn(async move {
            let mut buf = Vec::new();
            let _ = (&mut stderr).take(16 << 10).read_to_end(&mut buf).await;
            String::from_utf8_lossy(&buf).trim().to_string()
        });
        let fed = async {
            let mut opener = stream::Opener::new(&key);
            let mut hash = Sha256::new();
            let mut object = self.store.read(&backup.object).await?;
            let mut last_beat = std::time::Instant::now();
            while let Some(piece) = object.next().await {
                let piece = piece?;
                if last_beat.elapsed() > self.beat_every() {
                    beat().await?;
                    last_beat = std::time::Instant::now();
                }
                hash.update(&piece);
                let plain = opener
                    .push(&piece)
                    .map_err(|e| Error::Aborted(format!("backup {}: {e}", backup.id)))?;
                stdin
                    .write_all(&plain)
                    .await
                    .map_err(|e| Error::internal("feed pg_restore", e))?;
            }
            // Only a whole, unaltered object may let pg_restore finish (and commit).
            let last = opener
                .finish()
                .map_err(|e| Error::Aborted(format!("backup {}: {e}", backup.id)))?;
            let sum = hex::encode(hash.finalize());
            if backup.checksum.as_deref() != Some(sum.as_str()) {
                return Err(Error::Aborted(format!(
                    "backup {}: the object's checksum differs from the one recorded",
                    backup.id
                )));
            }
            stdin
                .write_all(&last)
                .await
                .map_err(|e| Error::internal("feed pg_restore", e))?;
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = fed {
            // Killed before its input ended: its single transaction never commits.
            let _ = child.kill().await;
            return Err(e);
        }
        drop(stdin);
        let status = child
            .wait()
            .await
            .map_err(|e| Error::internal("wait for pg_restore", e))?;
        if !status.success() {
            let detail = errors.await.unwrap_or_default();
            tracing::warn!(tenant = %tenant.slug, %detail, "pg_restore failed");
            return Err(Error::Aborted(format!(
                "pg_restore failed ({status}): {detail}"
            )));
        }
        Ok(())
    }

    /// A backup's data key, opened with the master key.
    fn data_key(&self, backup: &crate::catalog::BackupRecord) -> Result<[u8; 32]> {
        super::open_data_key(self.catalog.secrets(), &backup.sealed_key, &backup.object)
            .map_err(|e| Error::internal("open a backup key", e))
    }

    /// A PostgreSQL client tool of the server's major version.
    pub(super) fn tool(&self, version_num: i32, name: &str) -> Result<PathBuf> {
        let major = version_num / 10_000;
        let path =
            PathBuf::from(self.cfg.pg_bin_dir.replace("{major}", &major.to_string())).join(name);
        if path.is_file() {
            Ok(path)
        } else {
            Err(Error::FailedPrecondition(format!(
                "{name} for PostgreSQL {major} not found at {} (backup.pg_bin_dir)",
                path.display()
            )))
        }
    }
}

/// Every table of the manifest holds as many rows as it did at the backup's snapshot.
async fn verify_counts(
    client: &tokio_postgres::Client,
    backup: &crate::catalog::BackupRecord,
) -> Result<()> {
    let tables = backup
        .manifest
        .as_ref()
        .and_then(|m| m.get("tables"))
        .and_then(|t| t.as_object())
        .ok_or_else(|| Error::Aborted(format!("backup {} has no manifest", backup.id)))?;
    for (name, expected) in tables {
        let (schema, table) = name
            .split_once('.')
            .ok_or_else(|| Error::Internal(format!("manifest table {name:?}")))?;
        let found: i64 = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM {}.{}",
                    quote_ident(schema),
                    quote_ident(table)
                ),
                &[],
            )
            .await
            .map_err(|e| Error::Aborted(format!("the restored database lacks table {name}: {e}")))?
            .get(0);
        if Some(found) != expected.as_i64() {
            return Err(Error::Aborted(format!(
                "the restored table {name} has {found} rows, the backup counted {expected}"
            )));
        }
    }
    Ok(())
}
