//! deadpool manager for one tenant's connections: each connection takes a permit of its
//! server's budget before connecting and gives it back only once its socket has closed.

use super::budget::ServerBudget;
use crate::error::RouterError;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::{Client, NoTls, Statement};

/// How long a closed connection's permit is held back while its server backend exits.
const BACKEND_EXIT_GRACE: Duration = Duration::from_millis(50);

/// One tenant connection with its own prepared-statement cache.
pub struct PgConn {
    /// The connection.
    pub client: Client,
    statements: HashMap<&'static str, Statement>,
}

impl PgConn {
    /// A prepared statement for `sql`, prepared once per connection.
    pub async fn prepare(&mut self, sql: &'static str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql).await?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }
}

/// Why a tenant connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The server is failing fast after repeated connect failures.
    #[error("server marked down")]
    Down,
    /// PostgreSQL refused the tenant's credentials (rotated password, moved tenant).
    #[error("authentication failed")]
    Auth,
    /// Connecting failed or took too long.
    #[error("connect failed: {0}")]
    Connect(String),
}

impl From<ConnectError> for RouterError {
    fn from(e: ConnectError) -> RouterError {
        match e {
            ConnectError::Down | ConnectError::Connect(_) => {
                RouterError::Unavailable("tenant database unavailable".into())
            }
            ConnectError::Auth => {
                RouterError::Unavailable("tenant database refused the stored credentials".into())
            }
        }
    }
}

/// Opens connections for one tenant.
pub struct TenantManager {
    pub(crate) pg: tokio_postgres::Config,
    pub(crate) server: Arc<ServerBudget>,
    pub(crate) tenant: i64,
    pub(crate) connect_timeout: Duration,
}

impl deadpool::managed::Manager for TenantManager {
    type Type = PgConn;
    type Error = ConnectError;

    async fn create(&self) -> Result<PgConn, ConnectError> {
        self.server.check_up().map_err(|_| ConnectError::Down)?;
        let permit = self.server.acquire(self.tenant).await;
        let connected = tokio::time::timeout(self.connect_timeout, self.pg.connect(NoTls)).await;
        let (client, connection) = match connected {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                use tokio_postgres::error::SqlState;
                let code = e.as_db_error().map(|d| d.code().clone());
                if matches!(
                    code,
                    Some(SqlState::INVALID_PASSWORD)
                        | Some(SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
                ) {
                    return Err(ConnectError::Auth);
                }
                if code.is_none()
                    || code == Some(SqlState::CANNOT_CONNECT_NOW)
                    || code == Some(SqlState::TOO_MANY_CONNECTIONS)
                {
                    self.server.record_connect(false);
                }
                return Err(ConnectError::Connect(e.to_string()));
            }
            Err(_) => {
                self.server.record_connect(false);
                return Err(ConnectError::Connect("timed out".into()));
            }
        };
        self.server.record_connect(true);
        // The driver task ends when the client is dropped and the socket closes; only then
        // is the budget permit given back, and a little later still: PostgreSQL takes a
        // moment to retire the backend after the socket closes, and the server must never
        // see more of our connections than the budget.
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "tenant connection ended");
            }
            tokio::time::sleep(BACKEND_EXIT_GRACE).await;
            drop(permit);
        });
        Ok(PgConn {
            client,
            statements: HashMap::new(),
        })
    }

    async fn recycle(
        &self,
        conn: &mut PgConn,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<ConnectError> {
        if conn.client.is_closed() {
            return Err(deadpool::managed::RecycleError::message(
                "connection closed",
            ));
        }
        Ok(())
    }
}
