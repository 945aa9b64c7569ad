//! The one path from a tenant to a statement in its database, shared by gRPC calls and both
//! webhook sources: the route by a typed key (cache), the tenant's status, a pooled
//! connection (after an authentication failure: the route refetched, the pool rebuilt, one
//! retry), and the statement bounded by the deadline and stopped on the server when the
//! deadline passes or the caller goes away first: single-statement calls share connections
//! (pipelined) and are bounded by `statement_timeout`; transactions take a connection of
//! their own and are cancelled.

use crate::error::RouterError;
use crate::pools::{limit_for, Canceller, Conn, Db, GetError, PgConn, Pools, Shared};
use crate::routes::{CachedRoute, RouteCache, RouteKey};
use proto::control::v1 as pb;
use std::sync::Arc;
use std::time::Instant;
use tenant_model::{Sector, TenantStatus};
use tokio_util::task::TaskTracker;

/// Routes, pools and the tasks that carry cancel requests.
pub struct TenantPath {
    pub routes: Arc<RouteCache>,
    pub pools: Arc<Pools>,
    /// Owns the query-cancel tasks spawned when a statement is abandoned.
    tasks: TaskTracker,
}

impl TenantPath {
    pub fn new(routes: Arc<RouteCache>, pools: Arc<Pools>, tasks: TaskTracker) -> TenantPath {
        TenantPath {
            routes,
            pools,
            tasks,
        }
    }

    /// The route for a key.
    pub async fn route(&self, key: &RouteKey) -> Result<Arc<CachedRoute>, RouterError> {
        self.routes.get(key).await
    }

    /// Runs `op`, whose statements are each their own transaction, for the route's tenant,
    /// whose status must allow `access`, before `deadline` (`DEADLINE_EXCEEDED` past it), on
    /// a connection shared with other such calls (pipelined: see `pools::lanes`). Each
    /// statement runs under a `statement_timeout` no longer than the time the call had left
    /// when it was sent, so an abandoned call's statement stops on the server without a
    /// cancel request (which would stop whatever the shared backend runs at that moment).
    pub async fn run<R>(
        &self,
        cached: Arc<CachedRoute>,
        access: Access,
        deadline: Instant,
        op: impl AsyncFnOnce(&Db<'_>, Sector) -> Result<R, RouterError>,
    ) -> Result<R, RouterError> {
        if !self.pools.pipelining() {
            return self
                .run_exclusive(cached, access, deadline, async |conn, sector| {
                    op(&Db::new(conn, limit_for(left(deadline))), sector).await
                })
                .await;
        }
        check_status(cached.status, access)?;
        let (cached, Got::Shared(mut lane)) = self.connect(cached, access, deadline, true).await?
        else {
            return Err(RouterError::Internal("expected a shared connection".into()));
        };
        let db = Db::new(lane.conn(), limit_for(left(deadline)));
        let result = tokio::time::timeout(left(deadline), op(&db, cached.sector)).await;
        match result {
            Ok(result) => {
                lane.finished();
                result
            }
            Err(_) => Err(RouterError::DeadlineExceeded),
        }
    }

    /// Runs `op` on a connection of the route's tenant used by nothing else meanwhile (for
    /// transactions), whose status must allow `access`, before `deadline`
    /// (`DEADLINE_EXCEEDED` past it). If this future is dropped or the deadline passes while
    /// `op` runs, its statement is cancelled on the server, and the connection goes back to
    /// the pool only after the cancel request was handled (else it could stop the next
    /// user's statement); its statements are also bounded by `statement_timeout`.
    pub async fn run_exclusive<R>(
        &self,
        cached: Arc<CachedRoute>,
        access: Access,
        deadline: Instant,
        op: impl AsyncFnOnce(&mut PgConn, Sector) -> Result<R, RouterError>,
    ) -> Result<R, RouterError> {
        check_status(cached.status, access)?;
        let (cached, Got::Own(conn)) = self.connect(cached, access, deadline, false).await? else {
            return Err(RouterError::Internal(
                "expected a connection of its own".into(),
            ));
        };
        let remaining = left(deadline);
        let mut guard = CancelOnDrop {
            conn: Some(*conn),
            tasks: self.tasks.clone(),
        };
        let Some(conn) = guard.conn.as_mut() else {
            return Err(RouterError::Internal("connection lost".into()));
        };
        let work = async {
            Db::new(conn, limit_for(remaining))
                .apply_limit()
                .await
                .map_err(|e| RouterError::from_db(&e))?;
            op(conn, cached.sector).await
        };
        let result = tokio::time::timeout(remaining, work).await;
        match result {
            Ok(result) => {
                guard.disarm();
                result
            }
            Err(_) => Err(RouterError::DeadlineExceeded),
        }
    }

    /// A connection (or a place on one) for the route's tenant; after an authentication
    /// failure (credentials rotated, tenant restored or moved) the route is refetched and
    /// the pool rebuilt, once.
    async fn connect(
        &self,
        cached: Arc<CachedRoute>,
        access: Access,
        deadline: Instant,
        shared: bool,
    ) -> Result<(Arc<CachedRoute>, Got), RouterError> {
        let get = async |route: &pb::Route| match shared {
            true => self.pools.shared(route, deadline).await.map(Got::Shared),
            false => self
                .pools
                .get(route, deadline, access == Access::Deliver)
                .await
                .map(|c| Got::Own(Box::new(c))),
        };
        match get(&cached.route).await {
            Ok(c) => return Ok((cached, c)),
            Err(GetError::Other(e)) => return Err(e),
            Err(GetError::Auth) => {}
        }
        tracing::info!(
            tenant = cached.route.tenant_id,
            "tenant database refused cached credentials; refetching the route"
        );
        self.pools.invalidate(cached.route.tenant_id).await;
        let fresh = self
            .routes
            .refetch(&RouteKey::id(cached.route.tenant_id)?)
            .await?;
        check_status(fresh.status, access)?;
        match get(&fresh.route).await {
            Ok(c) => Ok((fresh, c)),
            Err(GetError::Auth) => Err(RouterError::Unavailable(
                "tenant database refused the stored credentials".into(),
            )),
            Err(GetError::Other(e)) => Err(e),
        }
    }
}

/// A place on a shared connection, or a connection of the call's own.
enum Got {
    Shared(Shared),
    Own(Box<Conn>),
}

/// Time left until `deadline`.
fn left(deadline: Instant) -> std::time::Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// What a call does to the tenant's database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads only.
    Read,
    /// Writes (or may write).
    Write,
    /// Applies deliveries the inbox accepted while the tenant was active: also done for a
    /// suspended tenant (they are its data), paused while it is restored.
    Deliver,
}

/// What an RPC needs: the access it makes to the tenant's database and, for a user's
/// access token, the least role that may make it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Reads leads, conversations, messages or the catalog: viewer.
    Read,
    /// Writes leads, conversations or messages: agent.
    Write,
    /// Writes the catalog: admin.
    WriteCatalog,
    /// Reads the tenant's settings: admin (or a service granted the tenant).
    ReadSettings,
    /// Reads the tenant's secrets: owner (or a service with the `secrets` scope).
    ReadSecrets,
}

impl Permission {
    /// The access to the tenant's database.
    pub fn access(self) -> Access {
        match self {
            Permission::Read | Permission::ReadSettings | Permission::ReadSecrets => Access::Read,
            Permission::Write | Permission::WriteCatalog => Access::Write,
        }
    }

    /// The least user role allowed.
    pub fn role(self) -> tenant_model::UserRole {
        match self {
            Permission::Read => tenant_model::UserRole::Viewer,
            Permission::Write => tenant_model::UserRole::Agent,
            Permission::WriteCatalog | Permission::ReadSettings => tenant_model::UserRole::Admin,
            Permission::ReadSecrets => tenant_model::UserRole::Owner,
        }
    }
}

/// What a tenant's status allows: active tenants are served; a tenant being restored in
/// place is still read from its live database, while writes are refused retryably (they
/// would be lost when the route switches to the restored generation).
pub fn check_status(status: TenantStatus, access: Access) -> Result<(), RouterError> {
    match status {
        TenantStatus::Active => Ok(()),
        TenantStatus::Restoring if access == Access::Read => Ok(()),
        TenantStatus::Suspended if access == Access::Deliver => Ok(()),
        TenantStatus::Suspended => Err(RouterError::FailedPrecondition(
            "tenant is suspended".into(),
        )),
        TenantStatus::Deleted => Err(RouterError::TenantNotFound),
        TenantStatus::Restoring => Err(RouterError::Unavailable(
            "tenant is being restored from a backup; writes resume shortly, retry".into(),
        )),
        other => Err(RouterError::FailedPrecondition(format!(
            "tenant is {other}, not active"
        ))),
    }
}

/// Holds an exclusively used connection; dropped while armed (the call abandoned), it
/// sends a cancel request for the connection's running statement and returns the
/// connection to the pool only once the server has handled it.
struct CancelOnDrop {
    conn: Option<Conn>,
    tasks: TaskTracker,
}

impl CancelOnDrop {
    /// The call finished: the connection goes back to the pool as is.
    fn disarm(&mut self) {
        self.conn.take();
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            let cancel: Canceller = conn.canceller();
            self.tasks.spawn(async move {
                cancel.cancel().await;
                // A backend reading its next command ignores a late cancel, so the next
                // user of the connection is safe from here on.
                drop(conn);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_active_tenants_are_served_and_a_restoring_one_only_read() {
        use Access::{Read, Write};
        for access in [Read, Write] {
            assert!(check_status(TenantStatus::Active, access).is_ok());
            assert!(matches!(
                check_status(TenantStatus::Suspended, access),
                Err(RouterError::FailedPrecondition(_))
            ));
            assert!(matches!(
                check_status(TenantStatus::Deleted, access),
                Err(RouterError::TenantNotFound)
            ));
            assert!(matches!(
                check_status(TenantStatus::Provisioning, access),
                Err(RouterError::FailedPrecondition(_))
            ));
        }
        assert!(check_status(TenantStatus::Restoring, Read).is_ok());
        assert!(matches!(
            check_status(TenantStatus::Restoring, Write),
            Err(RouterError::Unavailable(_))
        ));
    }
}
