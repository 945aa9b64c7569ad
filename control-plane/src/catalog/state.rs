//! What the catalog says about the fleet, for the metrics endpoint: tenants by status,
//! fleet runs in progress, backup ages. One statement, bounded labels.

use super::Catalog;
use crate::error::Result;
use std::fmt::Write;

const STATE: &str = "SELECT \
       (SELECT coalesce(json_object_agg(status, n), '{}')::text \
          FROM (SELECT status, count(*) AS n FROM empresas GROUP BY status) s), \
       (SELECT count(*) FROM migration_runs WHERE status = 'running'), \
       (SELECT coalesce(json_object_agg(outcome, n), '{}')::text \
          FROM (SELECT t.outcome, count(*) AS n FROM migration_run_tenants t \
                JOIN migration_runs r ON r.id = t.run_id WHERE r.status = 'running' \
                GROUP BY t.outcome) o), \
       (SELECT extract(epoch FROM max(terminado_em))::float8 FROM migration_runs), \
       (SELECT count(*) FROM backups WHERE estado = 'running'), \
       (SELECT coalesce(max(extract(epoch FROM now() - coalesce(b.ultimo, e.criado_em))), 0)::float8 \
          FROM empresas e LEFT JOIN LATERAL (SELECT max(terminado_em) AS ultimo FROM backups \
            WHERE empresa_id = e.id AND tipo = 'tenant' AND estado = 'ok') b ON true \
          WHERE e.status IN ('active', 'suspended')), \
       (SELECT count(*) FROM empresas e WHERE e.status IN ('active', 'suspended') \
          AND NOT EXISTS (SELECT 1 FROM backups b WHERE b.empresa_id = e.id \
            AND b.tipo = 'tenant' AND b.estado = 'ok')), \
       (SELECT extract(epoch FROM now() - max(terminado_em))::float8 FROM backups \
          WHERE tipo = 'catalog' AND estado = 'ok'), \
       (SELECT coalesce(json_object_agg(servidor, json_build_array(n, c)), '{}')::text \
          FROM (SELECT servidor, count(*) AS n, sum(reivindicado) AS c FROM concessoes \
                WHERE expira_em > now() GROUP BY servidor) l)";

/// Every tenant status, so each series exists even at zero.
const STATUSES: [&str; 6] = [
    "provisioning",
    "active",
    "suspended",
    "failed",
    "moving",
    "deleted",
];
/// Every outcome of a tenant in a fleet run.
const OUTCOMES: [&str; 5] = ["migrated", "skipped", "failed", "busy", "not_started"];

/// The fleet as the catalog has it now.
pub struct FleetState {
    tenants: serde_json::Map<String, serde_json::Value>,
    runs_running: i64,
    run_tenants: serde_json::Map<String, serde_json::Value>,
    last_run_finished: Option<f64>,
    backups_running: i64,
    oldest_backup_age: f64,
    without_backup: i64,
    catalog_backup_age: Option<f64>,
    /// Per server: `[live router leases, connections they claim]`.
    leases: serde_json::Map<String, serde_json::Value>,
}

/// Reads the fleet's state (one statement).
pub async fn fleet_state(catalog: &Catalog) -> Result<FleetState> {
    let row = catalog.client().await?.query_one(STATE, &[]).await?;
    let map = |i: usize| match serde_json::from_str(row.get::<_, &str>(i)) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    Ok(FleetState {
        tenants: map(0),
        runs_running: row.get(1),
        run_tenants: map(2),
        last_run_finished: row.get(3),
        backups_running: row.get(4),
        oldest_backup_age: row.get(5),
        without_backup: row.get(6),
        catalog_backup_age: row.get(7),
        leases: map(8),
    })
}

impl FleetState {
    /// Appends the text exposition.
    pub fn render(&self, out: &mut String) {
        let count = |m: &serde_json::Map<String, serde_json::Value>, k: &str| {
            m.get(k).and_then(|v| v.as_i64()).unwrap_or(0)
        };
        out.push_str(
            "# HELP control_plane_tenants Tenants by status.\n# TYPE control_plane_tenants gauge\n",
        );
        for s in STATUSES {
            let _ = writeln!(
                out,
                "control_plane_tenants{{status=\"{s}\"}} {}",
                count(&self.tenants, s)
            );
        }
        let _ = write!(
            out,
            "# HELP control_plane_fleet_runs_running Fleet migration runs in progress.\n\
             # TYPE control_plane_fleet_runs_running gauge\n\
             control_plane_fleet_runs_running {}\n\
             # HELP control_plane_fleet_run_tenants Tenants done by the runs in progress, by outcome.\n\
             # TYPE control_plane_fleet_run_tenants gauge\n",
            self.runs_running
        );
        for o in OUTCOMES {
            let _ = writeln!(
                out,
                "control_plane_fleet_run_tenants{{outcome=\"{o}\"}} {}",
                count(&self.run_tenants, o)
            );
        }
        if let Some(t) = self.last_run_finished {
            let _ = write!(
                out,
                "# HELP control_plane_fleet_last_run_finished_timestamp_seconds When the last fleet run ended.\n\
                 # TYPE control_plane_fleet_last_run_finished_timestamp_seconds gauge\n\
                 control_plane_fleet_last_run_finished_timestamp_seconds {t}\n"
            );
        }
        let _ = write!(
            out,
            "# HELP control_plane_backups_running Backups in progress (all replicas).\n\
             # TYPE control_plane_backups_running gauge\n\
             control_plane_backups_running {}\n\
             # HELP control_plane_backup_oldest_age_seconds Age of the oldest last good backup among active and suspended tenants (since creation for tenants never backed up).\n\
             # TYPE control_plane_backup_oldest_age_seconds gauge\n\
             control_plane_backup_oldest_age_seconds {}\n\
             # HELP control_plane_tenants_without_backup Active or suspended tenants with no good backup.\n\
             # TYPE control_plane_tenants_without_backup gauge\n\
             control_plane_tenants_without_backup {}\n",
            self.backups_running, self.oldest_backup_age, self.without_backup
        );
        let lease =
            |v: &serde_json::Value, i: usize| v.get(i).and_then(|n| n.as_i64()).unwrap_or(0);
        out.push_str(
            "# HELP control_plane_router_leases Live router processes holding a share of the server's connection budget.\n\
             # TYPE control_plane_router_leases gauge\n",
        );
        for (server, v) in &self.leases {
            let _ = writeln!(
                out,
                "control_plane_router_leases{{server=\"{server}\"}} {}",
                lease(v, 0)
            );
        }
        out.push_str(
            "# HELP control_plane_router_leased_connections Connections the routers' live leases on the server may hold (never above the budget less the jobs' slice).\n\
             # TYPE control_plane_router_leased_connections gauge\n",
        );
        for (server, v) in &self.leases {
            let _ = writeln!(
                out,
                "control_plane_router_leased_connections{{server=\"{server}\"}} {}",
                lease(v, 1)
            );
        }
        if let Some(age) = self.catalog_backup_age {
            let _ = write!(
                out,
                "# HELP control_plane_catalog_backup_age_seconds Age of the catalog's last good backup.\n\
                 # TYPE control_plane_catalog_backup_age_seconds gauge\n\
                 control_plane_catalog_backup_age_seconds {age}\n"
            );
        }
    }
}
