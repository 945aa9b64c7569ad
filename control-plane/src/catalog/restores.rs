//! Restore jobs and retired database generations.
//!
//! A restore row is `running` while the next generation is built beside the live one (the
//! tenant is `restoring` meanwhile), then `switched` in the same transaction that points
//! the tenant at the new generation and retires the old one, or `failed`/`abandoned` (the
//! tenant back to its previous status; the half-built generation is dropped).

use super::tenants::{owner_context, password_context};
use super::Catalog;
use crate::error::{Error, Result};
use crate::model::{Status, TenantNames};

/// A restore that has started.
#[derive(Debug, Clone)]
pub struct RestoreJob {
    pub id: i64,
    pub tenant_id: i64,
    pub backup_id: i64,
    /// The generation being built.
    pub generation: i32,
    pub previous_status: Status,
    pub owner_password: String,
    pub login_password: String,
}

/// A database generation kept after a restore, until it may be dropped.
#[derive(Debug, Clone)]
pub struct RetiredGeneration {
    pub server_id: i64,
    pub names: TenantNames,
}

impl Catalog {
    /// Starts restoring `tenant` (active or suspended) from `backup_id` into `generation`:
    /// records the job with the new generation's passwords and makes the tenant
    /// `restoring`, in one transaction. One restore per tenant at a time.
    pub async fn start_restore(
        &self,
        tenant: &crate::catalog::TenantRecord,
        backup_id: i64,
        generation: i32,
        replica: &str,
    ) -> Result<RestoreJob> {
        let (owner, login) = (
            crate::crypto::random_password(),
            crate::crypto::random_password(),
        );
        let seal = |plain: &str, ctx: String| {
            self.secrets()
                .seal(plain, &ctx)
                .map_err(|e| Error::internal("seal", e))
        };
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let moved = tx
            .execute(
                "UPDATE empresas SET status = 'restoring', atualizado_em = now(), version = version + 1 \
                 WHERE id = $1 AND status = $2",
                &[&tenant.id, &tenant.status.as_str()],
            )
            .await?;
        if moved == 0 {
            return Err(Error::FailedPrecondition(format!(
                "tenant {} changed state meanwhile; try again",
                tenant.slug
            )));
        }
        let row = tx
            .query_one(
                "INSERT INTO restauracoes (empresa_id, backup_id, geracao, status_anterior, \
                 senha_dono_cifrada, senha_cifrada, replica) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 RETURNING id",
                &[
                    &tenant.id,
                    &backup_id,
                    &generation,
                    &tenant.status.as_str(),
                    &seal(&owner, owner_context(tenant.id))?,
                    &seal(&login, password_context(&tenant.slug))?,
                    &replica,
                ],
            )
            .await
            .map_err(|e| match super::unique_violation(&e) {
                Some(_) => {
                    Error::Aborted(format!("tenant {} is already being restored", tenant.slug))
                }
                None => e.into(),
            })?;
        tx.commit().await?;
        Ok(RestoreJob {
            id: row.get(0),
            tenant_id: tenant.id,
            backup_id,
            generation,
            previous_status: tenant.status,
            owner_password: owner,
            login_password: login,
        })
    }

    /// Records a restore into a new tenant (`--as`, the tenant row just made
    /// `provisioning`), so a crash is swept like any restore; its id.
    pub async fn start_restore_into(
        &self,
        tenant: &crate::catalog::TenantRecord,
        backup_id: i64,
        passwords: &crate::catalog::NewPasswords,
        replica: &str,
    ) -> Result<i64> {
        let seal = |plain: &str, ctx: String| {
            self.secrets()
                .seal(plain, &ctx)
                .map_err(|e| Error::internal("seal", e))
        };
        let row = self
            .client()
            .await?
            .query_one(
                "INSERT INTO restauracoes (empresa_id, backup_id, geracao, status_anterior, \
                 senha_dono_cifrada, senha_cifrada, replica) VALUES ($1, $2, $3, 'provisioning', $4, $5, $6) \
                 RETURNING id",
                &[
                    &tenant.id,
                    &backup_id,
                    &tenant.generation,
                    &seal(&passwords.owner, owner_context(tenant.id))?,
                    &seal(&passwords.login, password_context(&tenant.slug))?,
                    &replica,
                ],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Closes a restore into a new tenant that succeeded.
    pub async fn close_restore(&self, id: i64) -> Result<()> {
        self.client()
            .await?
            .execute(
                "UPDATE restauracoes SET estado = 'switched', passo = 'switched', terminado_em = now() \
                 WHERE id = $1 AND estado = 'running'",
                &[&id],
            )
            .await?;
        Ok(())
    }

    /// Records the step a restore is at (and that it is alive).
    pub async fn restore_step(&self, id: i64, step: &str) -> Result<()> {
        self.client()
            .await?
            .execute(
                "UPDATE restauracoes SET passo = $2, batimento_em = now() WHERE id = $1 AND estado = 'running'",
                &[&id, &step],
            )
            .await?;
        Ok(())
    }

    /// Points the tenant at the restored generation, retires the old one until
    /// `drop_after_secs` from now and closes the job, in one transaction (routers hear of
    /// the version bump and drain their old pools).
    pub async fn switch_restore(
        &self,
        job: &RestoreJob,
        old: &RetiredGeneration,
        new: &TenantNames,
        versions: (i32, i32),
        drop_after_secs: u64,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let sealed = tx
            .query_one(
                "SELECT senha_dono_cifrada, senha_cifrada FROM restauracoes WHERE id = $1 AND estado = 'running' FOR UPDATE",
                &[&job.id],
            )
            .await?;
        let (owner, login): (Vec<u8>, Vec<u8>) = (sealed.get(0), sealed.get(1));
        tx.execute(
            "UPDATE empresas SET banco = $2, papel = $3, senha_cifrada = $4, papel_dono = $5, \
             senha_dono_cifrada = $6, papel_reserva = $7, senha_reserva_cifrada = NULL, geracao = $8, \
             schema_version = $9, sector_schema_version = $10, migration_status = 'ok', migration_error = NULL, \
             status = $11, atualizado_em = now(), version = version + 1 WHERE id = $1",
            &[
                &job.tenant_id,
                &new.database,
                &new.logins[0],
                &login,
                &new.owner,
                &owner,
                &new.logins[1],
                &job.generation,
                &versions.0,
                &versions.1,
                &job.previous_status.as_str(),
            ],
        )
        .await?;
        tx.execute(
            "INSERT INTO geracoes_retiradas (servidor_id, banco, papel_dono, papeis_login, empresa_id, remover_apos) \
             VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6)) ON CONFLICT DO NOTHING",
            &[
                &old.server_id,
                &old.names.database,
                &old.names.owner,
                &old.names.logins.to_vec(),
                &job.tenant_id,
                &(drop_after_secs as f64),
            ],
        )
        .await?;
        tx.execute(
            "UPDATE restauracoes SET estado = 'switched', passo = 'switched', terminado_em = now() WHERE id = $1",
            &[&job.id],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Ends a restore that did not switch: the job `failed` (or `abandoned`) and the
    /// tenant back to its previous status.
    pub async fn end_restore(&self, id: i64, outcome: &str, error: &str) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                "UPDATE restauracoes SET estado = $2, erro = $3, terminado_em = now() \
                 WHERE id = $1 AND estado = 'running' RETURNING empresa_id, status_anterior",
                &[&id, &outcome, &error],
            )
            .await?;
        if let Some(row) = row {
            let (tenant, previous): (i64, String) = (row.get(0), row.get(1));
            tx.execute(
                "UPDATE empresas SET status = $2, atualizado_em = now(), version = version + 1 \
                 WHERE id = $1 AND status = 'restoring'",
                &[&tenant, &previous],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Running restores whose replica has been silent for `stale_secs`: `(job id, tenant
    /// id, generation)`.
    pub async fn stale_restores(&self, stale_secs: u64) -> Result<Vec<(i64, i64, i32)>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, empresa_id, geracao FROM restauracoes WHERE estado = 'running' \
                 AND batimento_em < now() - make_interval(secs => $1)",
                &[&(stale_secs as f64)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// Retired generations whose grace period is over.
    pub async fn due_retired_generations(&self) -> Result<Vec<RetiredGeneration>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT servidor_id, banco, papel_dono, papeis_login FROM geracoes_retiradas \
                 WHERE removida_em IS NULL AND remover_apos <= now() ORDER BY remover_apos",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let logins: Vec<String> = r.get(3);
                let [a, b]: [String; 2] = logins.try_into().ok()?;
                Some(RetiredGeneration {
                    server_id: r.get(0),
                    names: TenantNames {
                        database: r.get(1),
                        owner: r.get(2),
                        logins: [a, b],
                    },
                })
            })
            .collect())
    }

    /// Records that a retired generation was dropped.
    pub async fn retired_generation_dropped(&self, server_id: i64, database: &str) -> Result<()> {
        self.client()
            .await?
            .execute(
                "UPDATE geracoes_retiradas SET removida_em = now() WHERE servidor_id = $1 AND banco = $2",
                &[&server_id, &database],
            )
            .await?;
        Ok(())
    }
}
