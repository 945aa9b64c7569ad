//! Admin connections to registered database servers, and the DDL the control plane runs
//! there. Errors name the server, never its host or credentials.

use crate::catalog::{Catalog, ServerRecord};
use crate::error::{Error, Result};
use std::time::Duration;
use tokio_postgres::{Client, NoTls};

/// Opens an admin connection to `database` on `server`.
///
/// The connection's driver task ends when the returned client is dropped.
pub async fn connect_admin(
    catalog: &Catalog,
    server: &ServerRecord,
    database: &str,
    timeout: Duration,
) -> Result<Client> {
    let password = catalog.server_password(server)?;
    connect(
        &server.name,
        &server.host,
        server.port,
        &server.admin_user,
        &password,
        database,
        timeout,
    )
    .await
}

/// Opens a connection with explicit credentials (used to verify a server before it is
/// registered).
pub async fn connect(
    server_name: &str,
    host: &str,
    port: u16,
    user: &str,
    password: &str,
    database: &str,
    timeout: Duration,
) -> Result<Client> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(host)
        .port(port)
        .user(user)
        .password(password)
        .dbname(database)
        .application_name("control-plane")
        .connect_timeout(timeout);
    let connecting = cfg.connect(NoTls);
    let (client, conn) = match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => return Err(connect_error(server_name, &e)),
        Err(_) => {
            return Err(Error::Unavailable(format!(
                "database server {server_name:?} did not answer within {} ms",
                timeout.as_millis()
            )))
        }
    };
    // The driver task lives exactly as long as the client: it returns once the client is
    // dropped and the socket closes.
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "admin connection closed");
        }
    });
    Ok(client)
}

fn connect_error(server_name: &str, err: &tokio_postgres::Error) -> Error {
    use tokio_postgres::error::SqlState;
    match err.as_db_error().map(|d| d.code().clone()) {
        Some(SqlState::INVALID_PASSWORD) | Some(SqlState::INVALID_AUTHORIZATION_SPECIFICATION) => {
            Error::Unavailable(format!(
                "database server {server_name:?} rejected the admin credentials"
            ))
        }
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
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
        .await?
        .is_some())
}

/// Whether a database exists.
pub async fn database_exists(
    admin: &Client,
    database: &str,
) -> Result<bool, tokio_postgres::Error> {
    Ok(admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
        .await?
        .is_some())
}

/// Lets the admin `SET ROLE` to `role` when it is not a superuser (a superuser already may).
pub async fn grant_role_to_admin(admin: &Client, role: &str) -> Result<(), tokio_postgres::Error> {
    let superuser: bool = admin
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?
        .get(0);
    if !superuser {
        admin
            .batch_execute(&format!(
                "GRANT {} TO CURRENT_USER",
                tenant_migrations::quote_ident(role)
            ))
            .await?;
    }
    Ok(())
}

/// Timeout helper for configured milliseconds.
pub fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}
