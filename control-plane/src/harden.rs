//! The isolation upgrade (`tenantctl harden`): brings a tenant provisioned by the first
//! release (one role that owns its database, held by routers) to the owner-and-logins
//! model, treating its database as possibly hostile already.
//!
//! Steps, each idempotent so a crashed run resumes by running again:
//! 1. stage the new roles' passwords in the catalog;
//! 2. reset every database- and role-level setting of the database (from the maintenance
//!    database);
//! 3. inventory it, logged in as its own legacy role with only `pg_catalog` on the search
//!    path, against a scratch reference migrated to the same versions: objects changed in
//!    place stop the upgrade (nothing privileged has touched the database yet);
//! 4. create the owner and login roles, give the owner the database, let only the login
//!    roles (and, until the switch, the legacy role) connect;
//! 5. as the owner: take over the legacy role's objects, remove the extras (tables are
//!    quarantined with their rows), set the login roles' grants;
//! 6. rename the database to its id-derived name (connections are refused meanwhile);
//! 7. switch the catalog (routers hear of it and drop their pools);
//! 8. drop the legacy role.
//!
//! Calls for the tenant fail for the moment of the rename (step 6) until routers take the
//! new route; nothing is lost.

use crate::catalog::{Catalog, ServerRecord, TenantRecord};
use crate::config::Provisioning;
use crate::dbserver::{self, describe, SearchPath};
use crate::error::{Error, Result};
use crate::inventory::{self, Item};
use crate::model::TenantNames;
use crate::{roles, template};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tenant_migrations::{quote_ident, quote_literal, Sector};
use tokio_postgres::Client;

/// A reference is keyed by sector and `(common, sector set)` versions.
type ReferenceKey = (Sector, (i32, i32));

/// Reference inventories, one per sector and versions, built once per run.
#[derive(Default)]
pub struct References {
    built: tokio::sync::Mutex<HashMap<ReferenceKey, Arc<Vec<Item>>>>,
}

/// Upgrades legacy tenants; one per fleet run.
pub struct Hardener {
    catalog: Catalog,
    cfg: Provisioning,
    references: References,
}

impl Hardener {
    /// An upgrader writing to `catalog`.
    pub fn new(catalog: Catalog, cfg: Provisioning) -> Hardener {
        Hardener {
            catalog,
            cfg,
            references: References::default(),
        }
    }

    fn timeout(&self) -> Duration {
        dbserver::millis(self.cfg.connect_timeout_ms)
    }

    /// Upgrades one tenant (or finishes an upgrade a crash interrupted); returns what it
    /// found and did, one line per finding.
    pub async fn upgrade(
        &self,
        server: &ServerRecord,
        tenant: &TenantRecord,
    ) -> Result<Vec<String>> {
        let names = TenantNames::derive(&self.cfg.name_prefix, tenant.id, tenant.generation);
        let admin = dbserver::connect_maintenance(&self.catalog, server, self.timeout()).await?;
        let ddl = |e: tokio_postgres::Error| {
            Error::Unavailable(format!("server {:?}: {}", server.name, describe(&e)))
        };
        let mut report = Vec::new();
        if tenant.names().is_none() {
            let legacy = tenant.role.clone();
            let passwords = self.catalog.stage_upgrade(tenant, &names).await?;
            let current = current_database(&admin, tenant, &names)
                .await
                .map_err(ddl)?;
            report.extend(
                reset_settings(&admin, &current, &legacy)
                    .await
                    .map_err(ddl)?,
            );
            let extras = self.inspect(server, tenant, &current, &admin).await?;
            let remedies = inventory::remedies(&extras);
            self.take_over(
                &admin, server, &names, &current, &legacy, &passwords, &remedies,
            )
            .await?;
            report.extend(remedies.into_iter().filter_map(|r| r.removes));
            rename(&admin, &current, &names.database)
                .await
                .map_err(ddl)?;
            self.catalog
                .complete_upgrade(tenant, &names, &passwords.1)
                .await?;
        }
        let tenant = self
            .catalog
            .tenant_by_id(tenant.id)
            .await?
            .ok_or_else(|| Error::NotFound("tenant not found".into()))?;
        if let Some(legacy) = &tenant.legacy_role {
            report.push(self.drop_legacy(&admin, server, &tenant, legacy).await?);
        }
        Ok(report)
    }

    /// Step 3: the extras of the tenant's database; an error if anything was changed in
    /// place.
    async fn inspect(
        &self,
        server: &ServerRecord,
        tenant: &TenantRecord,
        database: &str,
        admin: &Client,
    ) -> Result<Vec<Item>> {
        let password = self.catalog.tenant_password(tenant)?;
        let client = dbserver::connect_login(
            &self.catalog,
            server,
            (&tenant.role, &password),
            database,
            SearchPath::CatalogOnly,
            self.timeout(),
        )
        .await?;
        let found = inventory::inventory(&client).await?;
        drop(client);
        let versions = (tenant.schema_version, tenant.sector_schema_version);
        let reference = self
            .reference(server, admin, tenant.sector, versions)
            .await?;
        let drift = inventory::compare(&found, &reference);
        if !drift.modified.is_empty() {
            let list: Vec<String> = drift.modified.iter().map(Item::describe).collect();
            return Err(Error::FailedPrecondition(format!(
                "objects of the shipped schema were changed in place ({}); repair them by hand, \
                 then run harden again",
                list.join(", ")
            )));
        }
        Ok(drift.extra)
    }

    /// Steps 4 and 5.
    #[allow(clippy::too_many_arguments)]
    async fn take_over(
        &self,
        admin: &Client,
        server: &ServerRecord,
        names: &TenantNames,
        database: &str,
        legacy: &str,
        passwords: &(String, String),
        remedies: &[inventory::Remedy],
    ) -> Result<()> {
        let step = |what: &'static str| {
            move |e: tokio_postgres::Error| {
                Error::Unavailable(format!(
                    "server {:?}: {what}: {}",
                    server.name,
                    describe(&e)
                ))
            }
        };
        let owner_password = passwords.0.as_str();
        roles::ensure_tenant_roles(
            admin,
            names,
            (owner_password, &passwords.1),
            self.cfg.login_limits(),
            self.cfg.scram_iterations,
        )
        .await
        .map_err(step("roles"))?;
        let (db, owner, old) = (
            quote_ident(database),
            quote_ident(&names.owner),
            quote_ident(legacy),
        );
        admin
            .batch_execute(&format!(
                "ALTER DATABASE {db} OWNER TO {owner}; GRANT {old} TO {owner}"
            ))
            .await
            .map_err(step("ownership"))?;
        let mut connect = names.logins.to_vec();
        connect.push(legacy.to_string());
        roles::close_database(admin, database, &connect)
            .await
            .map_err(step("grants"))?;
        let result = self
            .as_owner(server, names, database, owner_password, legacy, remedies)
            .await;
        admin
            .batch_execute(&format!("REVOKE {old} FROM {owner}"))
            .await
            .map_err(step("ownership"))?;
        result
    }

    async fn as_owner(
        &self,
        server: &ServerRecord,
        names: &TenantNames,
        database: &str,
        owner_password: &str,
        legacy: &str,
        remedies: &[inventory::Remedy],
    ) -> Result<()> {
        let client = dbserver::connect_login(
            &self.catalog,
            server,
            (&names.owner, owner_password),
            database,
            SearchPath::CatalogOnly,
            self.timeout(),
        )
        .await?;
        let fail = |what: String| {
            move |e: tokio_postgres::Error| {
                Error::Unavailable(format!(
                    "server {:?}: {what}: {}",
                    server.name,
                    describe(&e)
                ))
            }
        };
        client
            .batch_execute(&format!(
                "REASSIGN OWNED BY {} TO CURRENT_USER",
                quote_ident(legacy)
            ))
            .await
            .map_err(fail("taking over the legacy role's objects".into()))?;
        // Only the quarantine bookkeeping when nothing was found.
        if remedies.iter().any(|r| r.removes.is_some()) {
            for r in remedies {
                client
                    .batch_execute(&r.sql)
                    .await
                    .map_err(fail(format!("removing extras ({})", r.sql)))?;
            }
        }
        // The legacy role keeps its DML until the catalog switches routers away from it.
        let [a, b] = names.login_refs();
        client
            .batch_execute(&tenant_migrations::grants_sql(&[a, b, legacy]))
            .await
            .map_err(fail("grants".into()))
    }

    /// Step 8: the legacy role loses every privilege and its sessions, then goes.
    async fn drop_legacy(
        &self,
        admin: &Client,
        server: &ServerRecord,
        tenant: &TenantRecord,
        legacy: &str,
    ) -> Result<String> {
        let names = tenant.require_names()?;
        let old = quote_ident(legacy);
        if dbserver::role_exists(admin, legacy).await? {
            let owner = dbserver::connect_login(
                &self.catalog,
                server,
                (&names.owner, &self.catalog.owner_password(tenant)?),
                &names.database,
                SearchPath::CatalogOnly,
                self.timeout(),
            )
            .await?;
            owner
                .batch_execute(&format!(
                    "REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {old}; \
                     REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {old}; \
                     REVOKE ALL ON SCHEMA public FROM {old}"
                ))
                .await?;
            admin
                .batch_execute(&format!(
                    "ALTER ROLE {old} NOLOGIN PASSWORD NULL; \
                     REVOKE ALL ON DATABASE {} FROM {old}; \
                     SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity \
                      WHERE usename = {}",
                    quote_ident(&names.database),
                    quote_literal(legacy)
                ))
                .await?;
            if let Err(e) = admin.batch_execute(&format!("DROP ROLE {old}")).await {
                // It can log in nowhere; say why it is still there.
                self.catalog.legacy_role_dropped(tenant.id).await?;
                return Ok(format!(
                    "legacy role {legacy} disabled (NOLOGIN) but not dropped: {}",
                    describe(&e)
                ));
            }
        }
        self.catalog.legacy_role_dropped(tenant.id).await?;
        Ok(format!("legacy role {legacy} dropped"))
    }

    /// The inventory of a scratch database migrated to `versions`, built once per run.
    async fn reference(
        &self,
        server: &ServerRecord,
        admin: &Client,
        sector: Sector,
        versions: (i32, i32),
    ) -> Result<Arc<Vec<Item>>> {
        let mut built = self.references.built.lock().await;
        if let Some(items) = built.get(&(sector, versions)) {
            return Ok(Arc::clone(items));
        }
        let (owner, password) =
            template::ensure_owner(&self.catalog, server, admin, &self.cfg).await?;
        let scratch = format!(
            "{}_ref_{}",
            self.cfg.template_prefix,
            &crate::crypto::random_password()[..10]
                .to_ascii_lowercase()
                .replace('-', "_")
        );
        let db = quote_ident(&scratch);
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {db} OWNER {} TEMPLATE template0",
                quote_ident(&owner)
            ))
            .await?;
        let items = async {
            admin
                .batch_execute(&format!("REVOKE ALL ON DATABASE {db} FROM PUBLIC"))
                .await?;
            let mut client = dbserver::connect_login(
                &self.catalog,
                server,
                (&owner, &password),
                &scratch,
                SearchPath::Public,
                self.timeout(),
            )
            .await?;
            tenant_migrations::migrate_to(&mut client, sector, versions)
                .await
                .map_err(|e| Error::Internal(format!("reference schema: {e}")))?;
            Ok::<_, Error>(inventory::inventory(&client).await?)
        }
        .await;
        let dropped = admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .await;
        let items = Arc::new(items?);
        dropped?;
        built.insert((sector, versions), Arc::clone(&items));
        Ok(items)
    }
}

/// The tenant's database as it is named now: its legacy name, or (after a crash past the
/// rename) its new one.
async fn current_database(
    admin: &Client,
    tenant: &TenantRecord,
    names: &TenantNames,
) -> Result<String, tokio_postgres::Error> {
    let current = if dbserver::database_exists(admin, &tenant.database).await? {
        tenant.database.clone()
    } else {
        names.database.clone()
    };
    // A crash during the rename may have left it refusing connections.
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS true",
            quote_ident(&current)
        ))
        .await?;
    Ok(current)
}

/// Step 2: every setting attached to the database, to any role in it, or to the legacy
/// role goes; returns one line per setting found.
async fn reset_settings(
    admin: &Client,
    database: &str,
    legacy: &str,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let found = admin
        .query(
            "SELECT coalesce(r.rolname::text, 'every role'), coalesce(d.datname::text, 'every database'), \
                    pg_catalog.array_to_string(s.setconfig, ', ') \
               FROM pg_catalog.pg_db_role_setting s \
               LEFT JOIN pg_catalog.pg_roles r ON r.oid = s.setrole \
               LEFT JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase \
              WHERE d.datname = $1 OR (s.setdatabase = 0 AND r.rolname = $2)",
            &[&database, &legacy],
        )
        .await?;
    let db = quote_ident(database);
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {db} RESET ALL; ALTER ROLE ALL IN DATABASE {db} RESET ALL; \
             ALTER ROLE {} RESET ALL",
            quote_ident(legacy)
        ))
        .await?;
    Ok(found
        .iter()
        .map(|r| {
            let (role, db, set): (String, String, String) = (r.get(0), r.get(1), r.get(2));
            format!("reset settings of {role} in {db}: {set}")
        })
        .collect())
}

/// Step 6: renames the database, refusing new connections while its sessions are ended.
async fn rename(admin: &Client, from: &str, to: &str) -> Result<(), tokio_postgres::Error> {
    if from != to {
        let (old, new) = (quote_ident(from), quote_ident(to));
        admin
            .batch_execute(&format!(
                "ALTER DATABASE {old} ALLOW_CONNECTIONS false; \
                 SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity \
                  WHERE datname = {} AND pid <> pg_catalog.pg_backend_pid()",
                quote_literal(from)
            ))
            .await?;
        // Backends take a moment to exit after being told to.
        let mut renamed = Ok(());
        for _ in 0..50 {
            renamed = admin
                .batch_execute(&format!("ALTER DATABASE {old} RENAME TO {new}"))
                .await;
            if renamed.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        renamed?;
    }
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS true",
            quote_ident(to)
        ))
        .await
}
