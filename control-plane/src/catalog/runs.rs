//! Fleet migration runs and their per-tenant results.

use super::Catalog;
use crate::error::Result;

/// Final tallies of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunCounts {
    pub migrated: u32,
    pub skipped: u32,
    pub failed: u32,
    pub busy: u32,
    pub not_started: u32,
}

/// One tenant's result in a run.
#[derive(Debug, Clone)]
pub struct RunTenantRow {
    pub tenant_id: i64,
    pub outcome: tenant_model::MigrationOutcome,
    pub from: (i32, i32),
    pub to: (i32, i32),
    pub applied: u32,
    pub error: Option<String>,
    pub duration_ms: u64,
    /// What an isolation upgrade found and did (empty for migrations).
    pub report: Vec<String>,
}

fn int(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

impl Catalog {
    /// Opens a run record.
    pub async fn start_run(
        &self,
        actor: &crate::auth::Actor,
        operation: &str,
        request: &serde_json::Value,
    ) -> Result<i64> {
        let row = self
            .client()
            .await?
            .query_one(
                "INSERT INTO migration_runs (iniciado_por, operacao, pedido) VALUES ($1, $2, $3) RETURNING id",
                &[&actor.name, &operation, request],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Stores one tenant's result.
    pub async fn record_run_tenant(&self, run_id: i64, r: &RunTenantRow) -> Result<()> {
        let duration = i64::try_from(r.duration_ms).unwrap_or(i64::MAX);
        self.client()
            .await?
            .execute(
                "INSERT INTO migration_run_tenants (run_id, empresa_id, outcome, from_schema_version, to_schema_version, \
                 from_sector_schema_version, to_sector_schema_version, applied, erro, duracao_ms, relatorio) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                 ON CONFLICT (run_id, empresa_id) DO UPDATE SET outcome = EXCLUDED.outcome, \
                 to_schema_version = EXCLUDED.to_schema_version, to_sector_schema_version = EXCLUDED.to_sector_schema_version, \
                 applied = EXCLUDED.applied, erro = EXCLUDED.erro, duracao_ms = EXCLUDED.duracao_ms, \
                 relatorio = EXCLUDED.relatorio",
                &[
                    &run_id,
                    &r.tenant_id,
                    &r.outcome.as_str(),
                    &r.from.0,
                    &r.to.0,
                    &r.from.1,
                    &r.to.1,
                    &int(r.applied),
                    &r.error,
                    &duration,
                    &(!r.report.is_empty()).then(|| serde_json::json!(r.report)),
                ],
            )
            .await?;
        Ok(())
    }

    /// Stores `skipped` for many tenants at once: `(tenant id, schema, sector schema)`.
    pub async fn record_run_skipped(&self, run_id: i64, tenants: &[(i64, i32, i32)]) -> Result<()> {
        let ids: Vec<i64> = tenants.iter().map(|t| t.0).collect();
        let common: Vec<i32> = tenants.iter().map(|t| t.1).collect();
        let sector: Vec<i32> = tenants.iter().map(|t| t.2).collect();
        self.client()
            .await?
            .execute(
                "INSERT INTO migration_run_tenants (run_id, empresa_id, outcome, from_schema_version, \
                 to_schema_version, from_sector_schema_version, to_sector_schema_version) \
                 SELECT $1, t.id, 'skipped', t.c, t.c, t.s, t.s \
                 FROM unnest($2::int8[], $3::int4[], $4::int4[]) AS t(id, c, s)",
                &[&run_id, &ids, &common, &sector],
            )
            .await?;
        Ok(())
    }

    /// Says a run is still alive.
    pub async fn beat_run(&self, run_id: i64) -> Result<()> {
        self.client()
            .await?
            .execute(
                "UPDATE migration_runs SET batimento_em = now() WHERE id = $1 AND status = 'running'",
                &[&run_id],
            )
            .await?;
        Ok(())
    }

    /// Marks `interrupted` the runs that have not said they are alive for `stale_secs` (their
    /// replica died); their ids.
    pub async fn interrupt_stale_runs(&self, stale_secs: u64) -> Result<Vec<i64>> {
        let rows = self
            .client()
            .await?
            .query(
                "UPDATE migration_runs SET status = 'interrupted', terminado_em = now()                  WHERE status = 'running' AND batimento_em < now() - $1 * interval '1 second'                  RETURNING id",
                &[&(stale_secs as f64)],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Closes a run record with its tallies.
    pub async fn finish_run(&self, run_id: i64, counts: RunCounts, aborted: bool) -> Result<()> {
        let status = if aborted { "aborted" } else { "finished" };
        self.client()
            .await?
            .execute(
                "UPDATE migration_runs SET status = $2, migrated = $3, skipped = $4, failed = $5, busy = $6, \
                 not_started = $7, terminado_em = now() WHERE id = $1",
                &[
                    &run_id,
                    &status,
                    &int(counts.migrated),
                    &int(counts.skipped),
                    &int(counts.failed),
                    &int(counts.busy),
                    &int(counts.not_started),
                ],
            )
            .await?;
        Ok(())
    }

    /// Outcomes stored for a run, as `(slug, outcome, error)` by slug.
    pub async fn run_results(&self, run_id: i64) -> Result<Vec<(String, String, Option<String>)>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT e.slug, r.outcome, r.erro FROM migration_run_tenants r JOIN empresas e ON e.id = r.empresa_id \
                 WHERE r.run_id = $1 ORDER BY e.slug",
                &[&run_id],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// Tenant counts per status and per `(schema_version, sector_schema_version)`.
    pub async fn fleet_counts(&self) -> Result<(Vec<(String, u32)>, Vec<(String, u32)>)> {
        let client = self.client().await?;
        let count = |n: i64| u32::try_from(n).unwrap_or(u32::MAX);
        let by_status = client
            .query(
                "SELECT status, count(*) FROM empresas GROUP BY status ORDER BY status",
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get::<_, String>(0), count(r.get(1))))
            .collect();
        let by_schema = client
            .query(
                "SELECT setor || ' v' || schema_version || '.' || sector_schema_version, count(*) FROM empresas \
                 WHERE status NOT IN ('deleted', 'failed') GROUP BY 1 ORDER BY 1",
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get::<_, String>(0), count(r.get(1))))
            .collect();
        Ok((by_status, by_schema))
    }
}
