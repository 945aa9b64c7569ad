//! Backup rows: one per attempt, `running` until its object is complete.

use super::{epoch_ms, Catalog};
use crate::error::{Error, Result};
use tenant_model::BackupState;
use tokio_postgres::Row;

/// What a backup is of and why it was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupKind {
    Tenant,
    Catalog,
}

/// A backup about to start.
#[derive(Debug, Clone)]
pub struct NewBackup {
    pub tenant_id: Option<i64>,
    pub kind: BackupKind,
    /// `manual`, `scheduled` or `final`.
    pub reason: &'static str,
    pub object: String,
    pub sealed_key: Vec<u8>,
    pub versions: (i32, i32),
    pub replica: String,
}

/// A backup as the catalog holds it.
#[derive(Debug, Clone)]
pub struct BackupRecord {
    pub id: i64,
    pub tenant_id: Option<i64>,
    pub slug: Option<String>,
    pub kind: String,
    pub reason: String,
    pub state: BackupState,
    pub object: String,
    pub sealed_key: Vec<u8>,
    pub bytes: Option<i64>,
    pub checksum: Option<String>,
    pub duration_ms: Option<i64>,
    pub schema_version: Option<i32>,
    pub sector_schema_version: Option<i32>,
    pub manifest: Option<serde_json::Value>,
    pub error: Option<String>,
    pub started_ms: i64,
    pub finished_ms: Option<i64>,
    /// When it was last restored into a scratch database and checked, and what failed.
    pub verified_ms: Option<i64>,
    pub verification_error: Option<String>,
}

fn from_row(r: &Row) -> Result<BackupRecord> {
    let state: String = r.get(5);
    Ok(BackupRecord {
        id: r.get(0),
        tenant_id: r.get(1),
        slug: r.get(2),
        kind: r.get(3),
        reason: r.get(4),
        state: BackupState::parse(&state)
            .map_err(|_| Error::Internal(format!("catalog holds backup state {state:?}")))?,
        object: r.get(6),
        sealed_key: r.get(7),
        bytes: r.get(8),
        checksum: r.get(9),
        duration_ms: r.get(10),
        schema_version: r.get(11),
        sector_schema_version: r.get(12),
        manifest: r.get(13),
        error: r.get(14),
        started_ms: r.get(15),
        finished_ms: r.get(16),
        verified_ms: r.get(17),
        verification_error: r.get(18),
    })
}

fn select() -> String {
    format!(
        "SELECT b.id, b.empresa_id, e.slug, b.tipo, b.motivo, b.estado, b.objeto, b.chave_cifrada, \
         b.bytes, b.checksum, b.duracao_ms, b.schema_version, b.sector_schema_version, b.manifesto, \
         b.erro, {}, {}, {}, b.verificacao_erro FROM backups b LEFT JOIN empresas e ON e.id = b.empresa_id",
        epoch_ms("b.iniciado_em"),
        epoch_ms("b.terminado_em"),
        epoch_ms("b.verificado_em")
    )
}

impl Catalog {
    /// Records a backup that is starting; its id.
    pub async fn start_backup(&self, b: &NewBackup) -> Result<i64> {
        let kind = match b.kind {
            BackupKind::Tenant => "tenant",
            BackupKind::Catalog => "catalog",
        };
        let row = self
            .client()
            .await?
            .query_one(
                "INSERT INTO backups (empresa_id, tipo, motivo, objeto, chave_cifrada, schema_version, \
                 sector_schema_version, replica) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                &[
                    &b.tenant_id,
                    &kind,
                    &b.reason,
                    &b.object,
                    &b.sealed_key,
                    &b.versions.0,
                    &b.versions.1,
                    &b.replica,
                ],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Marks a running backup as alive.
    pub async fn backup_heartbeat(&self, id: i64) -> Result<()> {
        self.client()
            .await?
            .execute(
                "UPDATE backups SET batimento_em = now() WHERE id = $1 AND estado = 'running'",
                &[&id],
            )
            .await?;
        Ok(())
    }

    /// Records a complete backup.
    pub async fn finish_backup(
        &self,
        id: i64,
        bytes: i64,
        checksum: &str,
        duration_ms: i64,
        manifest: &serde_json::Value,
    ) -> Result<()> {
        let n = self
            .client()
            .await?
            .execute(
                "UPDATE backups SET estado = 'ok', bytes = $2, checksum = $3, duracao_ms = $4, \
                 manifesto = $5, terminado_em = now() WHERE id = $1 AND estado = 'running'",
                &[&id, &bytes, &checksum, &duration_ms, manifest],
            )
            .await?;
        if n == 0 {
            return Err(Error::Aborted(format!(
                "backup {id} was abandoned while it ran"
            )));
        }
        Ok(())
    }

    /// Records a failed backup (the error stays in the catalog for operators).
    pub async fn fail_backup(&self, id: i64, error: &str, duration_ms: i64) -> Result<()> {
        self.client()
            .await?
            .execute(
                "UPDATE backups SET estado = 'failed', erro = $2, duracao_ms = $3, terminado_em = now() \
                 WHERE id = $1 AND estado = 'running'",
                &[&id, &error, &duration_ms],
            )
            .await?;
        Ok(())
    }

    /// Running backups whose replica has not sent a heartbeat for `stale_secs`: marked
    /// abandoned and returned (their partial uploads never became objects).
    pub async fn abandon_stale_backups(&self, stale_secs: u64) -> Result<Vec<BackupRecord>> {
        let rows = self
            .client()
            .await?
            .query(
                "UPDATE backups SET estado = 'abandoned', erro = 'the replica taking it stopped', \
                 terminado_em = now() WHERE estado = 'running' \
                 AND batimento_em < now() - make_interval(secs => $1) RETURNING id",
                &[&(stale_secs as f64)],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            if let Some(b) = self.backup(r.get(0)).await? {
                out.push(b);
            }
        }
        Ok(out)
    }

    /// One backup.
    pub async fn backup(&self, id: i64) -> Result<Option<BackupRecord>> {
        let row = self
            .client()
            .await?
            .query_opt(&format!("{} WHERE b.id = $1", select()), &[&id])
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// A tenant's backups (or the catalog's, for `None`), newest first.
    pub async fn backups(&self, tenant_id: Option<i64>, limit: u32) -> Result<Vec<BackupRecord>> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "{} WHERE ($1::int8 IS NULL AND b.tipo = 'catalog') OR b.empresa_id = $1 \
                     ORDER BY b.iniciado_em DESC, b.id DESC LIMIT $2",
                    select()
                ),
                &[&tenant_id, &i64::from(limit)],
            )
            .await?;
        rows.iter().map(from_row).collect()
    }
}

/// A tenant whose newest good backup is older than its plan allows.
#[derive(Debug, Clone)]
pub struct OverdueBackup {
    pub tenant_id: i64,
    pub slug: String,
    /// When its newest good backup started (`None`: it has none).
    pub last_ok_ms: Option<i64>,
    pub interval_secs: i32,
}

impl Catalog {
    /// Active or suspended tenants (isolation model) whose newest good backup is older
    /// than their plan's interval, or who have none; oldest first.
    pub async fn overdue_backups(&self) -> Result<Vec<OverdueBackup>> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT e.id, e.slug, {}, p.backup_intervalo_segundos FROM empresas e \
                     JOIN planos p ON p.nome = e.plano \
                     LEFT JOIN LATERAL (SELECT max(iniciado_em) AS ultimo FROM backups b \
                       WHERE b.empresa_id = e.id AND b.estado = 'ok') b ON true \
                     WHERE e.status IN ('active', 'suspended') AND e.modelo_papeis = 2 \
                     AND p.backup_intervalo_segundos > 0 \
                     AND (b.ultimo IS NULL OR b.ultimo < now() - make_interval(secs => p.backup_intervalo_segundos)) \
                     AND NOT EXISTS (SELECT 1 FROM backups r WHERE r.empresa_id = e.id AND r.estado = 'running') \
                     ORDER BY b.ultimo NULLS FIRST, e.id",
                    epoch_ms("b.ultimo")
                ),
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| OverdueBackup {
                tenant_id: r.get(0),
                slug: r.get(1),
                last_ok_ms: r.get(2),
                interval_secs: r.get(3),
            })
            .collect())
    }

    /// Good backups of `tenant_id` its plan's retention no longer keeps: beyond the newest
    /// of each of the last `backup_diarios` days and `backup_semanais` weeks. Never the
    /// newest, one younger than a day, one a running restore reads, or a final backup.
    /// `(id, object)`.
    pub async fn backups_past_retention(&self, tenant_id: i64) -> Result<Vec<(i64, String)>> {
        let rows = self
            .client()
            .await?
            .query(
                "WITH p AS (SELECT p.backup_diarios AS d, p.backup_semanais AS w FROM empresas e \
                   JOIN planos p ON p.nome = e.plano WHERE e.id = $1), \
                 ok AS (SELECT id, objeto, iniciado_em, \
                   row_number() OVER (PARTITION BY date_trunc('day', iniciado_em) ORDER BY iniciado_em DESC) AS rd, \
                   row_number() OVER (PARTITION BY date_trunc('week', iniciado_em) ORDER BY iniciado_em DESC) AS rw \
                   FROM backups WHERE empresa_id = $1 AND estado = 'ok' AND motivo <> 'final'), \
                 keep AS ( \
                   (SELECT id FROM ok WHERE rd = 1 ORDER BY iniciado_em DESC LIMIT (SELECT d FROM p)) \
                   UNION (SELECT id FROM ok WHERE rw = 1 ORDER BY iniciado_em DESC LIMIT (SELECT w FROM p)) \
                   UNION (SELECT id FROM ok ORDER BY iniciado_em DESC LIMIT 1) \
                   UNION (SELECT id FROM ok WHERE iniciado_em > now() - interval '1 day') \
                   UNION (SELECT backup_id FROM restauracoes WHERE empresa_id = $1 AND estado = 'running')) \
                 SELECT id, objeto FROM ok WHERE id NOT IN (SELECT id FROM keep) ORDER BY id",
                &[&tenant_id],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Records a verification's outcome (`None`: it passed).
    pub async fn record_verification(&self, id: i64, error: Option<&str>) -> Result<()> {
        self.client()
            .await?
            .execute(
                "UPDATE backups SET verificado_em = now(), verificacao_erro = $2 WHERE id = $1",
                &[&id, &error],
            )
            .await?;
        Ok(())
    }

    /// Good tenant backups least recently verified (never verified first), `n` of them.
    pub async fn backups_to_verify(&self, n: i64) -> Result<Vec<i64>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id FROM backups WHERE estado = 'ok' AND tipo = 'tenant' AND empresa_id IS NOT NULL \
                 ORDER BY verificado_em NULLS FIRST, random() LIMIT $1",
                &[&n],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// When the last verification ran, if any.
    pub async fn last_verification_ms(&self) -> Result<Option<i64>> {
        let row = self
            .client()
            .await?
            .query_one(
                &format!("SELECT {} FROM backups", epoch_ms("max(verificado_em)")),
                &[],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Forgets a backup whose object was deleted.
    pub async fn delete_backup_row(&self, id: i64) -> Result<()> {
        self.client()
            .await?
            .execute("DELETE FROM backups WHERE id = $1", &[&id])
            .await?;
        Ok(())
    }

    /// Failed and abandoned attempts older than `days` (their objects never existed).
    pub async fn prune_failed_backups(&self, days: i32) -> Result<u64> {
        Ok(self
            .client()
            .await?
            .execute(
                "DELETE FROM backups b WHERE estado IN ('failed', 'abandoned') \
                 AND iniciado_em < now() - make_interval(days => $1) \
                 AND NOT EXISTS (SELECT 1 FROM restauracoes r WHERE r.backup_id = b.id)",
                &[&days],
            )
            .await?)
    }
}

impl Catalog {
    /// Every good backup (tenant or catalog): `(id, object)`.
    pub async fn good_backup_objects(&self) -> Result<Vec<(i64, String)>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, objeto FROM backups WHERE estado = 'ok' ORDER BY id",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Tenants holding good backups (for retention).
    pub async fn tenants_with_backups(&self) -> Result<Vec<i64>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT DISTINCT empresa_id FROM backups WHERE estado = 'ok' AND empresa_id IS NOT NULL \
                 ORDER BY 1",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}
