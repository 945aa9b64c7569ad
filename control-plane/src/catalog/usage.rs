//! Per-tenant usage by day, as routers report it.

use super::{Catalog, RouterRecord};
use crate::error::Result;

/// One tenant's usage (database size is added by [`crate::usage`]).
#[derive(Debug, Clone)]
pub struct UsageRecord {
    pub tenant_id: i64,
    pub slug: String,
    pub plan: String,
    pub server_id: i64,
    pub database: String,
    pub calls_today: i64,
    pub calls_30d: i64,
    pub messages_today: i64,
    pub messages_30d: i64,
    /// The plan's storage limit in MB (None: unlimited).
    pub storage_mb: Option<i32>,
}

impl Catalog {
    /// Adds a router's counts to today's usage of the tenants it may serve; how many
    /// tenants were counted.
    pub async fn record_usage(
        &self,
        router: &RouterRecord,
        counts: &[(i64, i64, i64)],
    ) -> Result<u64> {
        let ids: Vec<i64> = counts.iter().map(|c| c.0).collect();
        let client = self.client().await?;
        let servable: std::collections::HashSet<i64> = client
            .query(
                "SELECT e.id, s.nome FROM empresas e JOIN servidores s ON s.id = e.servidor_id WHERE e.id = ANY($1)",
                &[&ids],
            )
            .await?
            .iter()
            .filter(|r| router.serves(r.get::<_, &str>(1)))
            .map(|r| r.get(0))
            .collect();
        let (mut t, mut c, mut m) = (Vec::new(), Vec::new(), Vec::new());
        for &(tenant, calls, messages) in counts {
            if servable.contains(&tenant) && (calls > 0 || messages > 0) {
                t.push(tenant);
                c.push(calls);
                m.push(messages);
            }
        }
        Ok(client
            .execute(
                "INSERT INTO uso_diario AS u (empresa_id, dia, chamadas, mensagens) \
                 SELECT id, current_date, sum(c), sum(m) FROM unnest($1::int8[], $2::int8[], $3::int8[]) AS x(id, c, m) \
                 GROUP BY id \
                 ON CONFLICT (empresa_id, dia) DO UPDATE SET chamadas = u.chamadas + excluded.chamadas, \
                   mensagens = u.mensagens + excluded.mensagens",
                &[&t, &c, &m],
            )
            .await?)
    }

    /// Usage of one tenant or of every tenant not deleted, by slug.
    pub async fn usage(&self, tenant: Option<i64>) -> Result<Vec<UsageRecord>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT e.id, e.slug, e.plano, e.servidor_id, e.banco, \
                   coalesce(sum(u.chamadas) FILTER (WHERE u.dia = current_date), 0)::int8, \
                   coalesce(sum(u.chamadas), 0)::int8, \
                   coalesce(sum(u.mensagens) FILTER (WHERE u.dia = current_date), 0)::int8, \
                   coalesce(sum(u.mensagens), 0)::int8, p.armazenamento_mb \
                 FROM empresas e JOIN planos p ON p.nome = e.plano \
                 LEFT JOIN uso_diario u ON u.empresa_id = e.id AND u.dia > current_date - 30 \
                 WHERE e.status <> 'deleted' AND ($1::int8 IS NULL OR e.id = $1) \
                 GROUP BY e.id, p.armazenamento_mb ORDER BY e.slug",
                &[&tenant],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| UsageRecord {
                tenant_id: r.get(0),
                slug: r.get(1),
                plan: r.get(2),
                server_id: r.get(3),
                database: r.get(4),
                calls_today: r.get(5),
                calls_30d: r.get(6),
                messages_today: r.get(7),
                messages_30d: r.get(8),
                storage_mb: r.get(9),
            })
            .collect())
    }

    /// Deletes usage older than `days` days.
    pub async fn prune_usage(&self, days: i32) -> Result<u64> {
        Ok(self
            .client()
            .await?
            .execute(
                "DELETE FROM uso_diario WHERE dia < current_date - $1::int4",
                &[&days],
            )
            .await?)
    }
}
