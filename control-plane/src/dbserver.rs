//! Admin connections to registered database servers, and the DDL the control plane runs
//! there. Errors name the server, never its host or credentials.

use crate::catalog::{Catalog, ServerRecord};
use crate::error::{Error, Result};
use crate::pgconn::DbTls;
use std::time::Duration;
use tokio_postgres::Client;

/// The one database admin sessions use. Nothing a tenant can define lives there: `CONNECT`
/// on it is revoked from `PUBLIC` where the control plane manages the cluster.
pub const MAINTENANCE_DB: &str = "postgres";

/// Session settings of admin sessions: only `pg_catalog` (and the session's own temporary
/// schema, searched last) resolve unqualified names.
const ADMIN_OPTIONS: &str = "-c search_path=pg_catalog,pg_temp";

/// What unqualified names resolve to in a non-superuser session inside a tenant database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchPath {
    /// `public` (after the implicit `pg_catalog`): what migrations and seeds expect.
    Public,
    /// Only `pg_catalog`: for sessions that inspect or repair a database whose schemas may
    /// hold anything.
    CatalogOnly,
}

impl SearchPath {
    fn options(self) -> &'static str {
        match self {
            SearchPath::Public => "-c search_path=public",
            SearchPath::CatalogOnly => "-c search_path=pg_catalog",
        }
    }
}

/// Opens an admin connection to the maintenance database of `server`.
///
/// There is deliberately no way to open an admin session in any other database: every
/// job inside a tenant database logs in as a non-superuser ([`connect_login`]).
pub async fn connect_maintenance(
    catalog: &Catalog,
    server: &ServerRecord,
    timeout: Duration,
) -> Result<Client> {
    let password = catalog.server_password(server)?;
    connect_unregistered(
        catalog.db_tls(),
        (&server.name, &server.host, server.port),
        &server.admin_user,
        &password,
        timeout,
    )
    .await
}

/// Opens a connection to `database` on `server` logged in as a non-superuser role (a
/// tenant's owner, the template owner).
pub async fn connect_login(
    catalog: &Catalog,
    server: &ServerRecord,
    login: (&str, &str),
    database: &str,
    search_path: SearchPath,
    timeout: Duration,
) -> Result<Client> {
    let (user, password) = login;
    connect(
        catalog.db_tls(),
        &Target {
            server_name: &server.name,
            host: &server.host,
            port: server.port,
            user,
            password,
            database,
            options: search_path.options(),
        },
        timeout,
    )
    .await
}

/// Where a connection goes and who it logs in as.
pub struct Target<'a> {
    /// The server's catalog name (for errors; never its host).
    pub server_name: &'a str,
    pub host: &'a str,
    pub port: u16,
    pub user: &'a str,
    pub password: &'a str,
    pub database: &'a str,
    /// Session settings (`-c name=value ...`).
    pub options: &'a str,
}

/// Opens an admin connection with explicit credentials to the maintenance database (also
/// used to verify a server, or a new admin password, before it is stored).
pub async fn connect_unregistered(
    tls: &DbTls,
    target: (&str, &str, u16),
    user: &str,
    password: &str,
    timeout: Duration,
) -> Result<Client> {
    let (server_name, host, port) = target;
    connect(
        tls,
        &Target {
            server_name,
            host,
            port,
            user,
            password,
            database: MAINTENANCE_DB,
            options: ADMIN_OPTIONS,
        },
        timeout,
    )
    .await
}

async fn connect(tls: &DbTls, target: &Target<'_>, timeout: Duration) -> Result<Client> {
    let server_name = target.server_name;
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(target.host)
        .port(target.port)
        .user(target.user)
        .password(target.password)
        .dbname(target.database)
        .options(target.options)
        .application_name("control-plane")
        .connect_timeout(timeout);
    if matches!(tls, DbTls::Verified(_)) {
        cfg.ssl_mode(tokio_postgres::config::SslMode::Require);
    }
    let connecting = tls.connect(&cfg);
    let client = match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => return Err(connect_error(server_name, target.user, &e)),
        Err(_) => {
            return Err(Error::Unavailable(format!(
                "database server {server_name:?} did not answer within {} ms",
                timeout.as_millis()
            )))
        }
    };
    Ok(client)
}

fn connect_error(server_name: &str, user: &str, err: &tokio_postgres::Error) -> Error {
    use tokio_postgres::error::SqlState;
    match err.as_db_error().map(|d| d.code().clone()) {
        Some(SqlState::INVALID_PASSWORD) | Some(SqlState::INVALID_AUTHORIZATION_SPECIFICATION) => {
            // PostgreSQL's own words here name the role and the reason, never a secret.
            let why = err.as_db_error().map(|d| d.message()).unwrap_or_default();
            Error::Unavailable(format!(
                "database server {server_name:?} rejected the credentials of role {user:?} ({why})"
            ))
        }
        Some(SqlState::INSUFFICIENT_PRIVILEGE) => Error::Unavailable(format!(
            "database server {server_name:?} does not let role {user:?} connect to that database \
             (CONNECT is revoked from PUBLIC; grant it to this role)"
        )),
        Some(SqlState::INVALID_CATALOG_NAME) => Error::Unavailable(format!(
            "database server {server_name:?} lacks the expected database"
        )),
        _ => Error::Unavailable(format!("database server {server_name:?} is unreachable")),
    }
}

/// A client-safe one-line description of a database error: PostgreSQL's own message for
/// server-side errors, a generic one for transport errors (which can carry addresses).
pub fn describe(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => db.message().to_string(),
        None if err.is_closed() => "the connection to the database server closed".into(),
        None => "the database server connection failed".into(),
    }
}

/// Whether a role exists.
pub async fn role_exists(admin: &Client, role: &str) -> Result<bool, tokio_postgres::Error> {
    Ok(admin
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await?
        .is_some())
}

/// Whether a database exists.
pub async fn database_exists(
    admin: &Client,
    database: &str,
) -> Result<bool, tokio_postgres::Error> {
    Ok(admin
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1",
            &[&database],
        )
        .await?
        .is_some())
}

/// Timeout helper for configured milliseconds.
pub fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}
