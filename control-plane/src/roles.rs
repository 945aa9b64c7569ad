//! The isolation role model on a database server, as admin statements run in the
//! maintenance database (never inside a tenant database).
//!
//! Per tenant database generation: an owner role that owns the database and every object
//! in it (only control-plane jobs log in as it) and two login roles that routers use, one
//! active and one standby, with DML on the tenant's tables and nothing else. Every role is
//! created or reset to exactly the attributes below, so a role someone altered (a setting,
//! a privilege) is brought back in line whenever a job touches it.

use crate::crypto;
use crate::model::TenantNames;
use tenant_migrations::quote_ident;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

/// Limits that keep one leaked login credential from exhausting a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    /// `CONNECTION LIMIT` of each login role (a hard limit: only an admin can change it).
    pub connections: u32,
    /// Default `statement_timeout` of login sessions, in milliseconds. A default only: a
    /// session may lower or lift it for itself, so it protects against runaway calls, not
    /// against a holder of the credential; `connections` is what bounds that.
    pub statement_timeout_ms: u64,
    /// `temp_file_limit` of login sessions, in kB (a superuser-only setting: a hard limit).
    pub temp_file_limit_kb: u64,
    /// `idle_in_transaction_session_timeout` of login sessions, in milliseconds.
    pub idle_in_transaction_ms: u64,
}

/// What a role is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleKind {
    /// Owns a tenant database (or, for the template owner, the objects in templates).
    Owner,
    /// A router login: DML only, limited.
    Login(LoginLimits),
}

/// Connections an owner role may hold: control-plane jobs use one each (a migration, a
/// backup), a few run at once at most.
const OWNER_CONNECTION_LIMIT: u32 = 8;

/// Creates `name`, or resets it, to exactly the attributes of `kind`: no superuser, no
/// CREATEDB/CREATEROLE/REPLICATION/BYPASSRLS, its connection limit, its settings and
/// nothing else (settings anyone added are reset), and `password` (`None`: cannot log in
/// until a rotation gives it one). The password reaches PostgreSQL as a SCRAM verifier.
pub async fn ensure_role(
    admin: &Client,
    name: &str,
    kind: RoleKind,
    password: Option<&str>,
    scram_iterations: u32,
) -> Result<(), tokio_postgres::Error> {
    let exists = crate::dbserver::role_exists(admin, name).await?;
    let verb = if exists { "ALTER" } else { "CREATE" };
    // Only a superuser may name these attributes in ALTER ROLE (even to switch them off);
    // a CREATEROLE admin could never have switched them on.
    let superuser_only = if is_superuser(admin).await? {
        "NOSUPERUSER NOREPLICATION NOBYPASSRLS"
    } else {
        ""
    };
    let role = quote_ident(name);
    let (inherit, limit) = match kind {
        // The owner inherits: it adopts a clone's objects through a brief membership of
        // the template owner (`REASSIGN OWNED` needs that role's privileges).
        RoleKind::Owner => ("INHERIT", OWNER_CONNECTION_LIMIT),
        RoleKind::Login(limits) => ("NOINHERIT", limits.connections),
    };
    let password = match password {
        Some(p) => format!("PASSWORD '{}'", crypto::scram_verifier(p, scram_iterations)),
        None => "PASSWORD NULL".to_string(),
    };
    let mut sql = format!(
        "{verb} ROLE {role} LOGIN {superuser_only} NOCREATEDB NOCREATEROLE \
         {inherit} CONNECTION LIMIT {limit} {password}; ALTER ROLE {role} RESET ALL; "
    );
    if let RoleKind::Login(l) = kind {
        sql.push_str(&format!(
            "ALTER ROLE {role} SET statement_timeout = '{}ms'; \
             ALTER ROLE {role} SET temp_file_limit = '{}kB'; \
             ALTER ROLE {role} SET idle_in_transaction_session_timeout = '{}ms'; ",
            l.statement_timeout_ms, l.temp_file_limit_kb, l.idle_in_transaction_ms
        ));
    }
    admin.batch_execute(&sql).await?;
    grant_to_admin(admin, name).await
}

/// The roles of one tenant database generation, created or reset: the owner with its
/// password, the active login with its password, the standby login unable to log in.
pub async fn ensure_tenant_roles(
    admin: &Client,
    names: &TenantNames,
    passwords: (&str, &str),
    limits: LoginLimits,
    scram_iterations: u32,
) -> Result<(), tokio_postgres::Error> {
    let (owner_password, login_password) = passwords;
    let [active, standby] = &names.logins;
    ensure_role(
        admin,
        &names.owner,
        RoleKind::Owner,
        Some(owner_password),
        scram_iterations,
    )
    .await?;
    ensure_role(
        admin,
        active,
        RoleKind::Login(limits),
        Some(login_password),
        scram_iterations,
    )
    .await?;
    ensure_role(
        admin,
        standby,
        RoleKind::Login(limits),
        None,
        scram_iterations,
    )
    .await
}

/// Only the login roles may connect (the owner may, as owner); nobody else, and nobody
/// may create temporary objects.
pub async fn close_database(
    admin: &Client,
    database: &str,
    logins: &[String],
) -> Result<(), tokio_postgres::Error> {
    let db = quote_ident(database);
    let to = logins
        .iter()
        .map(|l| quote_ident(l))
        .collect::<Vec<_>>()
        .join(", ");
    admin
        .batch_execute(&format!(
            "REVOKE ALL ON DATABASE {db} FROM PUBLIC; GRANT CONNECT ON DATABASE {db} TO {to}"
        ))
        .await
}

/// Revokes `CONNECT` and `TEMPORARY` on `postgres` and `template1` from `PUBLIC`, so no
/// tenant role can open a session outside its own database. Returns false (and changes
/// nothing) when the admin may not do it (not a superuser nor those databases' owner).
pub async fn close_maintenance(admin: &Client) -> Result<bool, tokio_postgres::Error> {
    let allowed: bool = admin
        .query_one(
            "SELECT bool_and(pg_catalog.pg_has_role(current_user, d.datdba, 'USAGE')) \
             OR (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) \
             FROM pg_catalog.pg_database d WHERE d.datname IN ('postgres', 'template1')",
            &[],
        )
        .await?
        .get(0);
    if !allowed {
        return Ok(false);
    }
    // The admin keeps its own way in before PUBLIC loses it. Two registrations of servers
    // on one cluster may update the same pg_database rows at once ("tuple concurrently
    // updated"): try again.
    let mut attempt = 0;
    loop {
        let closed = admin
            .batch_execute(
                "GRANT CONNECT ON DATABASE postgres TO CURRENT_USER; \
                 REVOKE CONNECT, TEMPORARY ON DATABASE postgres FROM PUBLIC; \
                 REVOKE CONNECT, TEMPORARY ON DATABASE template1 FROM PUBLIC",
            )
            .await;
        match closed {
            Err(e) if attempt < 5 && e.code() == Some(&SqlState::INTERNAL_ERROR) => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20 * attempt)).await;
            }
            other => return other.map(|()| true),
        }
    }
}

/// Drops one generation of a tenant's database and roles (database first: it depends on
/// the owner role).
pub async fn drop_generation(
    admin: &Client,
    names: &TenantNames,
) -> Result<(), tokio_postgres::Error> {
    let mut sql = format!(
        "DROP DATABASE IF EXISTS {} WITH (FORCE);",
        quote_ident(&names.database)
    );
    admin.batch_execute(&sql).await?;
    sql.clear();
    for role in names.logins.iter().chain([&names.owner]) {
        sql.push_str(&format!("DROP ROLE IF EXISTS {};", quote_ident(role)));
    }
    admin.batch_execute(&sql).await
}

/// Lets a non-superuser admin act for `role` (create a database owned by it, grant it);
/// a superuser already may.
pub async fn grant_to_admin(admin: &Client, role: &str) -> Result<(), tokio_postgres::Error> {
    if !is_superuser(admin).await? {
        admin
            .batch_execute(&format!("GRANT {} TO CURRENT_USER", quote_ident(role)))
            .await?;
    }
    Ok(())
}

async fn is_superuser(admin: &Client) -> Result<bool, tokio_postgres::Error> {
    Ok(admin
        .query_one(
            "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?
        .get(0))
}
