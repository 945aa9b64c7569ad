//! Per-server, per-sector template databases that new tenants are cloned from.
//!
//! `CREATE DATABASE ... TEMPLATE` fails while anyone is connected to the template, so the
//! template is guarded by an advisory lock in the catalog: clones take it shared (many
//! clones at once), migrating the template takes it exclusive (no clone meanwhile). The
//! template database is owned by the server admin while every object in it is owned by the
//! NOLOGIN role [`TEMPLATE_OWNER`]; a clone reassigns those objects to the tenant's role
//! (`REASSIGN OWNED` would also hand over databases the role owns, hence the split).

use crate::catalog::{Catalog, ServerRecord, TemplateRecord};
use crate::dbserver;
use crate::error::{Error, Result};
use std::time::Duration;
use tenant_migrations::{quote_ident, Sector};
use tokio_postgres::Client;

/// Role owning every object inside template databases.
pub const TEMPLATE_OWNER: &str = "tenant_template_owner";

/// Name of a sector's template database (`<prefix>_<sector>`).
pub fn database_name(prefix: &str, sector: Sector) -> String {
    format!("{prefix}_{}", sector.as_str())
}

/// Advisory-lock keys of one template in the catalog (two-int4 form).
fn lock_keys(server_id: i64, sector: Sector) -> (i32, i32) {
    let idx = Sector::ALL.iter().position(|s| *s == sector).unwrap_or(0);
    (
        i32::try_from(server_id).unwrap_or(i32::MAX),
        0x7470_0000 + i32::try_from(idx).unwrap_or(0),
    )
}

/// A transaction-scoped advisory lock held on a pooled catalog connection.
///
/// Released by [`XactLock::release`]. If it is dropped instead (an early return, a
/// cancelled task), the connection is taken out of the pool and closed, which ends the
/// transaction and the lock: a connection inside an open transaction must never go back
/// into the pool.
pub struct XactLock {
    client: Option<deadpool_postgres::Object>,
}

impl XactLock {
    /// Begins a transaction and takes `lock_sql` (a `pg_advisory_xact_lock*` call).
    async fn acquire(catalog: &Catalog, lock_sql: &str, k1: i32, k2: i32) -> Result<XactLock> {
        let client = catalog.client().await?;
        let mut guard = XactLock {
            client: Some(client),
        };
        let c = guard.client.as_mut().expect("set just above");
        c.batch_execute("BEGIN").await?;
        c.execute(lock_sql, &[&k1, &k2]).await?;
        Ok(guard)
    }

    /// Ends the transaction, releasing the lock, and returns the connection to the pool.
    pub async fn release(mut self) {
        if let Some(client) = self.client.take() {
            if client.batch_execute("COMMIT").await.is_err() {
                drop(deadpool_postgres::Object::take(client));
            }
        }
    }
}

impl Drop for XactLock {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

/// Makes sure `sector`'s template on `server` is at the shipped versions, building or
/// migrating it if needed, and returns it with the shared lock held for cloning.
pub async fn ready_for_clone(
    catalog: &Catalog,
    server: &ServerRecord,
    admin: &Client,
    sector: Sector,
    prefix: &str,
    connect_timeout: Duration,
) -> Result<(TemplateRecord, XactLock)> {
    let (common, sector_v) = tenant_migrations::targets(sector);
    let current = |t: &Option<TemplateRecord>| {
        t.as_ref()
            .is_some_and(|t| t.schema_version == common && t.sector_schema_version == sector_v)
    };
    let existing = catalog.template(server.id, sector.as_str()).await?;
    if !current(&existing) {
        refresh(
            catalog,
            server,
            admin,
            sector,
            &database_name(prefix, sector),
            connect_timeout,
        )
        .await?;
    }
    let (k1, k2) = lock_keys(server.id, sector);
    let lock = XactLock::acquire(
        catalog,
        "SELECT pg_advisory_xact_lock_shared($1, $2)",
        k1,
        k2,
    )
    .await?;
    let record = catalog.template(server.id, sector.as_str()).await?;
    match record {
        Some(t) if current(&Some(t.clone())) => Ok((t, lock)),
        _ => {
            lock.release().await;
            Err(Error::Internal(
                "template changed while waiting for its lock".into(),
            ))
        }
    }
}

/// Builds or migrates a template under the exclusive lock.
pub async fn refresh(
    catalog: &Catalog,
    server: &ServerRecord,
    admin: &Client,
    sector: Sector,
    name: &str,
    connect_timeout: Duration,
) -> Result<TemplateRecord> {
    let (k1, k2) = lock_keys(server.id, sector);
    let lock = XactLock::acquire(catalog, "SELECT pg_advisory_xact_lock($1, $2)", k1, k2).await?;
    let result = refresh_locked(catalog, server, admin, sector, name, connect_timeout).await;
    lock.release().await;
    result
}

async fn refresh_locked(
    catalog: &Catalog,
    server: &ServerRecord,
    admin: &Client,
    sector: Sector,
    name: &str,
    connect_timeout: Duration,
) -> Result<TemplateRecord> {
    let ddl = |e: tokio_postgres::Error| {
        Error::Internal(format!(
            "template {name} on {}: {}",
            server.name,
            dbserver::describe(&e)
        ))
    };
    if !dbserver::role_exists(admin, TEMPLATE_OWNER)
        .await
        .map_err(ddl)?
    {
        // Two control planes may race here; the loser's duplicate error is harmless.
        if let Err(e) = admin
            .batch_execute(&format!("CREATE ROLE {TEMPLATE_OWNER} NOLOGIN"))
            .await
        {
            if !dbserver::role_exists(admin, TEMPLATE_OWNER)
                .await
                .map_err(ddl)?
            {
                return Err(ddl(e));
            }
        }
    }
    dbserver::grant_role_to_admin(admin, TEMPLATE_OWNER)
        .await
        .map_err(ddl)?;
    if !dbserver::database_exists(admin, name).await.map_err(ddl)? {
        // Separate statements: CREATE DATABASE refuses to run inside a transaction block.
        let db = quote_ident(name);
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .map_err(ddl)?;
        admin
            .batch_execute(&format!("REVOKE ALL ON DATABASE {db} FROM PUBLIC"))
            .await
            .map_err(ddl)?;
    }
    let outcome = {
        let mut client = dbserver::connect_admin(catalog, server, name, connect_timeout).await?;
        client
            .batch_execute(&format!(
                "GRANT CREATE ON SCHEMA public TO {TEMPLATE_OWNER}"
            ))
            .await
            .map_err(ddl)?;
        let outcome = tenant_migrations::migrate(&mut client, sector, Some(TEMPLATE_OWNER))
            .await
            .map_err(|e| Error::Internal(format!("template {name} on {}: {e}", server.name)))?;
        client
            .batch_execute(&sector.seed_sql())
            .await
            .map_err(ddl)?;
        outcome
        // The client drops here: nobody may stay connected to a template.
    };
    let record = TemplateRecord {
        server_id: server.id,
        sector: sector.as_str().to_string(),
        database: name.to_string(),
        schema_version: outcome.common_version,
        sector_schema_version: outcome.sector_version,
    };
    catalog.upsert_template(&record).await?;
    Ok(record)
}
