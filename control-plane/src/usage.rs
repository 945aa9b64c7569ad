//! Per-tenant usage for operators: calls and messages as routers report them, and each
//! database's size read from its server (one query per server), against the plan's
//! storage. Never per-tenant Prometheus labels.

use crate::catalog::{Catalog, UsageRecord};
use crate::dbserver;
use crate::error::Result;
use std::collections::HashMap;
use std::time::Duration;

/// A tenant's usage with its database size (`None`: its server could not be asked).
pub struct Usage {
    pub record: UsageRecord,
    pub database_bytes: Option<i64>,
}

impl Usage {
    /// Whether the database is larger than the plan allows.
    pub fn over_storage(&self) -> bool {
        match (self.database_bytes, self.record.storage_mb) {
            (Some(bytes), Some(mb)) => bytes > i64::from(mb) * 1_000_000,
            _ => false,
        }
    }
}

/// Usage of one tenant or all, with database sizes.
pub async fn usage(
    catalog: &Catalog,
    tenant: Option<i64>,
    timeout: Duration,
) -> Result<Vec<Usage>> {
    let records = catalog.usage(tenant).await?;
    let servers = catalog.list_servers().await?;
    let mut sizes: HashMap<(i64, String), i64> = HashMap::new();
    for server in servers
        .iter()
        .filter(|s| records.iter().any(|r| r.server_id == s.id))
    {
        let sized = async {
            let admin = dbserver::connect_maintenance(catalog, server, timeout).await?;
            let rows = admin
                .query(
                    "SELECT datname, pg_catalog.pg_database_size(oid) FROM pg_catalog.pg_database \
                     WHERE NOT datistemplate",
                    &[],
                )
                .await?;
            Ok::<_, crate::error::Error>(rows)
        }
        .await;
        match sized {
            Ok(rows) => {
                for r in rows {
                    sizes.insert((server.id, r.get(0)), r.get(1));
                }
            }
            Err(e) => {
                tracing::warn!(server = %server.name, error = %e, "cannot read database sizes")
            }
        }
    }
    Ok(records
        .into_iter()
        .map(|record| Usage {
            database_bytes: sizes
                .get(&(record.server_id, record.database.clone()))
                .copied(),
            record,
        })
        .collect())
}
