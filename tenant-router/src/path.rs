//! The one path from a tenant to a statement in its database, shared by gRPC calls and both
//! webhook sources: the route by a typed key (cache), the tenant's status, a pooled
//! connection (after an authentication failure: the route refetched, the pool rebuilt, one
//! retry), and the statement bounded by the deadline and cancelled on the server when the
//! deadline passes or the caller goes away first.

use crate::error::RouterError;
use crate::pools::{Canceller, Conn, GetError, PgConn, Pools};
use crate::routes::{CachedRoute, RouteCache, RouteKey};
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

    /// Runs `op` on a connection to the route's tenant, which must be active, before
    /// `deadline` (`DEADLINE_EXCEEDED` past it). If this future is dropped or the deadline
    /// passes while `op` runs, its statement is cancelled on the server.
    pub async fn run<R>(
        &self,
        cached: Arc<CachedRoute>,
        deadline: Instant,
        op: impl AsyncFnOnce(&mut PgConn, Sector) -> Result<R, RouterError>,
    ) -> Result<R, RouterError> {
        check_status(cached.status)?;
        let (cached, mut conn) = self.connect(cached, deadline).await?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let mut guard = CancelOnDrop {
            cancel: Some(conn.canceller()),
            tasks: self.tasks.clone(),
        };
        match tokio::time::timeout(remaining, op(&mut conn, cached.sector)).await {
            Ok(result) => {
                guard.cancel = None;
                result
            }
            Err(_) => Err(RouterError::DeadlineExceeded),
        }
    }

    /// A connection to the route's tenant; after an authentication failure (credentials
    /// rotated, tenant restored or moved) the route is refetched and the pool rebuilt, once.
    async fn connect(
        &self,
        cached: Arc<CachedRoute>,
        deadline: Instant,
    ) -> Result<(Arc<CachedRoute>, Conn), RouterError> {
        match self.pools.get(&cached.route, deadline).await {
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
        check_status(fresh.status)?;
        match self.pools.get(&fresh.route, deadline).await {
            Ok(c) => Ok((fresh, c)),
            Err(GetError::Auth) => Err(RouterError::Unavailable(
                "tenant database refused the stored credentials".into(),
            )),
            Err(GetError::Other(e)) => Err(e),
        }
    }
}

/// What a tenant's status allows: only active tenants are served.
pub fn check_status(status: TenantStatus) -> Result<(), RouterError> {
    match status {
        TenantStatus::Active => Ok(()),
        TenantStatus::Suspended => Err(RouterError::FailedPrecondition(
            "tenant is suspended".into(),
        )),
        TenantStatus::Deleted => Err(RouterError::TenantNotFound),
        TenantStatus::Restoring => Err(RouterError::Unavailable(
            "tenant is being restored from a backup; retry shortly".into(),
        )),
        other => Err(RouterError::FailedPrecondition(format!(
            "tenant is {other}, not active"
        ))),
    }
}

/// Sends a cancel request for the connection's running statement when dropped while armed.
struct CancelOnDrop {
    cancel: Option<Canceller>,
    tasks: TaskTracker,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(cancel) = self.cancel.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                self.tasks.spawn(cancel.cancel());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_active_tenants_are_served() {
        assert!(check_status(TenantStatus::Active).is_ok());
        assert!(matches!(
            check_status(TenantStatus::Suspended),
            Err(RouterError::FailedPrecondition(_))
        ));
        assert!(matches!(
            check_status(TenantStatus::Deleted),
            Err(RouterError::TenantNotFound)
        ));
        assert!(matches!(
            check_status(TenantStatus::Restoring),
            Err(RouterError::Unavailable(_))
        ));
        assert!(matches!(
            check_status(TenantStatus::Provisioning),
            Err(RouterError::FailedPrecondition(_))
        ));
    }
}
