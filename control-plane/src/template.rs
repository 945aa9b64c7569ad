//! Per-server, per-sector template databases that new tenants are cloned from.
//!
//! `CREATE DATABASE ... TEMPLATE` fails while anyone is connected to the template, so the
//! template is guarded by an advisory lock in the catalog: clones take it shared (many
//! clones at once), migrating the template takes it exclusive (no clone meanwhile).
//!
//! A template database and every object in it belong to the template owner
//! ([`owner_role`]), a non-superuser login role with a per-server password in the catalog; templates are
//! migrated logged in as it. A clone's objects are handed to the tenant's owner role one
//! by one ([`adopt_clone`]; `REASSIGN OWNED` would also hand over the template databases
//! themselves), by the tenant owner through a membership of the template owner that lasts
//! only for that step.

use crate::catalog::{Catalog, ServerRecord, TemplateRecord};
use crate::config::Provisioning;
use crate::dbserver;
use crate::error::{Error, Result};
use crate::roles::{self, RoleKind};
use tenant_migrations::SectorSchema;
use tenant_migrations::{quote_ident, Sector};
use tokio_postgres::Client;

/// The role owning the template databases of `prefix` and every object in them
/// (`tenant_template_owner` by default, the name the first release used).
pub fn owner_role(prefix: &str) -> String {
    format!("{prefix}_owner")
}

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

    /// Like `acquire` with `pg_try_advisory_xact_lock($1, $2)`: `None` when someone else
    /// holds the lock.
    pub async fn try_acquire(catalog: &Catalog, k1: i32, k2: i32) -> Result<Option<XactLock>> {
        let client = catalog.client().await?;
        let mut guard = XactLock {
            client: Some(client),
        };
        let c = guard.client.as_mut().expect("set just above");
        c.batch_execute("BEGIN").await?;
        let got: bool = c
            .query_one("SELECT pg_try_advisory_xact_lock($1, $2)", &[&k1, &k2])
            .await?
            .get(0);
        if got {
            Ok(Some(guard))
        } else {
            guard.release().await;
            Ok(None)
        }
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
    cfg: &Provisioning,
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
            &database_name(&cfg.template_prefix, sector),
            cfg,
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
    cfg: &Provisioning,
) -> Result<TemplateRecord> {
    let (k1, k2) = lock_keys(server.id, sector);
    let lock = XactLock::acquire(catalog, "SELECT pg_advisory_xact_lock($1, $2)", k1, k2).await?;
    let result = refresh_locked(catalog, server, admin, sector, name, cfg).await;
    lock.release().await;
    result
}

async fn refresh_locked(
    catalog: &Catalog,
    server: &ServerRecord,
    admin: &Client,
    sector: Sector,
    name: &str,
    cfg: &Provisioning,
) -> Result<TemplateRecord> {
    let ddl = |e: tokio_postgres::Error| {
        Error::Internal(format!(
            "template {name} on {}: {}",
            server.name,
            dbserver::describe(&e)
        ))
    };
    let (owner, password) = ensure_owner(catalog, server, admin, cfg).await?;
    let owner_sql = quote_ident(&owner);
    let db = quote_ident(name);
    if !dbserver::database_exists(admin, name).await.map_err(ddl)? {
        // Separate statements: CREATE DATABASE refuses to run inside a transaction block.
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {db} OWNER {owner_sql} TEMPLATE template0"
            ))
            .await
            .map_err(ddl)?;
    }
    // Also brings a template made by the first release (owned by the admin) in line.
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {db} OWNER TO {owner_sql}; REVOKE ALL ON DATABASE {db} FROM PUBLIC; \
             ALTER DATABASE {db} RESET ALL"
        ))
        .await
        .map_err(ddl)?;
    let timeout = dbserver::millis(cfg.connect_timeout_ms);
    let outcome = {
        let mut client = dbserver::connect_login(
            catalog,
            server,
            (&owner, &password),
            name,
            dbserver::SearchPath::Public,
            timeout,
        )
        .await?;
        let outcome = tenant_migrations::migrate(&mut client, sector)
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

/// Creates or resets the template owner role of `server` with its stored password;
/// returns `(role, password)`.
pub async fn ensure_owner(
    catalog: &Catalog,
    server: &ServerRecord,
    admin: &Client,
    cfg: &Provisioning,
) -> Result<(String, String)> {
    let password = catalog.template_owner_password(server).await?;
    let owner = owner_role(&cfg.template_prefix);
    let ensure = || {
        roles::ensure_role(
            admin,
            &owner,
            RoleKind::Owner,
            Some(&password),
            cfg.scram_iterations,
        )
    };
    // Two control planes may race to create the role; the loser retries as an ALTER.
    if ensure().await.is_err() {
        ensure().await.map_err(|e| {
            Error::Internal(format!(
                "template owner on {}: {}",
                server.name,
                dbserver::describe(&e)
            ))
        })?;
    }
    Ok((owner, password))
}

/// Hands every object a clone inherited from its template to the tenant's owner role.
///
/// `owner` is a session in the new tenant database logged in as `owner_role`; `admin` is
/// a maintenance-database session that lends `owner_role` the template owner's privileges
/// for this step only. A no-op for a database that was not cloned.
pub async fn adopt_clone(
    admin: &Client,
    owner: &Client,
    tenant_owner: &str,
    template_prefix: &str,
) -> Result<(), tokio_postgres::Error> {
    let template_owner = owner_role(template_prefix);
    if !dbserver::role_exists(admin, &template_owner).await? {
        return Ok(());
    }
    let (from, to) = (quote_ident(&template_owner), quote_ident(tenant_owner));
    admin
        .batch_execute(&format!("GRANT {from} TO {to}"))
        .await?;
    let adopted = owner.batch_execute(&adopt_sql(&template_owner)).await;
    let revoked = admin
        .batch_execute(&format!("REVOKE {from} FROM {to}"))
        .await;
    adopted.and(revoked)
}

/// Statements run by the tenant owner: every relation (indexes and owned sequences follow
/// their table), routine, type and schema the template owner owns here becomes the current
/// user's; the template owner's grant on schema `public` (made by the first release) goes.
fn adopt_sql(template_owner: &str) -> String {
    format!(
        r#"DO $adopt$
DECLARE stmt text;
BEGIN
  FOR stmt IN
    SELECT pg_catalog.format('ALTER %s %s OWNER TO CURRENT_USER',
             CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                            WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
             c.oid::pg_catalog.regclass)
      FROM pg_catalog.pg_class c
     WHERE c.relowner = '{owner}'::pg_catalog.regrole
       AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                        WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                          AND d.objid = c.oid AND d.deptype IN ('a', 'i'))
    UNION ALL
    SELECT pg_catalog.format('ALTER ROUTINE %s OWNER TO CURRENT_USER', p.oid::pg_catalog.regprocedure)
      FROM pg_catalog.pg_proc p WHERE p.proowner = '{owner}'::pg_catalog.regrole
    UNION ALL
    SELECT pg_catalog.format('ALTER TYPE %s OWNER TO CURRENT_USER', t.oid::pg_catalog.regtype)
      FROM pg_catalog.pg_type t
     WHERE t.typowner = '{owner}'::pg_catalog.regrole AND t.typtype IN ('d', 'e', 'r')
    UNION ALL
    SELECT pg_catalog.format('ALTER SCHEMA %I OWNER TO CURRENT_USER', n.nspname)
      FROM pg_catalog.pg_namespace n WHERE n.nspowner = '{owner}'::pg_catalog.regrole
  LOOP
    EXECUTE stmt;
  END LOOP;
  IF EXISTS (SELECT 1 FROM pg_catalog.pg_class WHERE relowner = '{owner}'::pg_catalog.regrole)
     OR EXISTS (SELECT 1 FROM pg_catalog.pg_proc WHERE proowner = '{owner}'::pg_catalog.regrole) THEN
    RAISE EXCEPTION 'objects of the template owner remain after adoption';
  END IF;
END
$adopt$;
REVOKE ALL ON SCHEMA public FROM {quoted};"#,
        owner = template_owner,
        quoted = quote_ident(template_owner),
    )
}
