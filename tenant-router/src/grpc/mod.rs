//! gRPC side: the call pipeline every domain method goes through, and the services.
//!
//! A call: deadline (the caller's `grpc-timeout`, else the default) -> bearer token ->
//! `x-tenant` (a typed key: slug or id in its one spelling) -> grant check -> the tenant
//! path shared with webhooks (`path`: route, status, connection with one refetch-and-retry
//! after an authentication failure, the query cancelled on the server if it outlives the
//! deadline or the caller).

mod events;
mod services;
mod settings;

pub use events::EventsService;
pub use services::{CatalogService, ConversationsService, LeadsService};
pub use settings::{settings_cache, SettingsCache, SettingsService};

use crate::error::RouterError;
use crate::metrics::Metrics;
use crate::path::{Permission, TenantPath};
use crate::pools::{Db, PgConn};
use crate::routes::CachedRoute;
use crate::routes::RouteKey;
use caller_auth::{Claims, Kind};
use futures_util::future::BoxFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tenant_model::{Sector, TenantId, TenantKey, UserRole};
use tonic::metadata::MetadataMap;
use tracing::Instrument;

/// Everything a call needs, shared by the services.
pub struct CallContext {
    /// Routes, status, pools: the way to a tenant's database.
    pub path: Arc<TenantPath>,
    /// Verifies callers' tokens (public key only).
    pub tokens: crate::tokens::Tokens,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Deadline of calls that carry none.
    pub default_deadline: Duration,
    /// Calls per second per tenant, from its plan.
    pub limits: crate::limits::RateLimits,
    /// The message pipeline (writes wake its relay of the tenant's events).
    pub inbox: Arc<crate::inbox::Inbox>,
}

/// A tenant-scoped operation: `(connection, tenant sector, request)`.
pub enum Op<T, R> {
    /// Single statements, each its own transaction: on a shared (pipelined) connection.
    Statements(StatementsOp<T, R>),
    /// A transaction: on a connection of its own.
    Transaction(TransactionOp<T, R>),
}

/// What an operation returns.
type Done<'c, R> = BoxFuture<'c, Result<R, RouterError>>;
/// Single statements on a call's view of a shared connection.
pub type StatementsOp<T, R> = Box<dyn for<'c> FnOnce(&'c Db<'c>, Sector, T) -> Done<'c, R> + Send>;
/// A transaction on a connection of the call's own.
pub type TransactionOp<T, R> =
    Box<dyn for<'c> FnOnce(&'c mut PgConn, Sector, T) -> Done<'c, R> + Send>;

impl CallContext {
    /// Runs `op` for the tenant the call names, with every check of the pipeline.
    pub async fn run<T: Send, R>(
        &self,
        method: &'static str,
        permission: Permission,
        request: tonic::Request<T>,
        op: Op<T, R>,
    ) -> Result<tonic::Response<R>, tonic::Status> {
        let started = Instant::now();
        let (meta, _, message) = request.into_parts();
        let span = tracing::info_span!("call", method, tenant = tracing::field::Empty);
        let result = self
            .pipeline(&meta, permission, message, op, started)
            .instrument(span)
            .await;
        self.observe(method, started, &result);
        result
            .map(tonic::Response::new)
            .map_err(tonic::Status::from)
    }

    /// Counts a finished call in the metrics (by method and outcome, never by tenant).
    pub fn observe<R>(
        &self,
        method: &'static str,
        started: Instant,
        result: &Result<R, RouterError>,
    ) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) => e.kind(),
        };
        self.metrics
            .calls
            .with_label_values(&[method, outcome])
            .inc();
        self.metrics
            .call_seconds
            .with_label_values(&[method])
            .observe(started.elapsed().as_secs_f64());
    }

    async fn pipeline<T, R>(
        &self,
        meta: &MetadataMap,
        permission: Permission,
        message: T,
        op: Op<T, R>,
        started: Instant,
    ) -> Result<R, RouterError> {
        let deadline = started
            + grpc_timeout(meta)
                .unwrap_or(self.default_deadline)
                .min(Duration::from_secs(300));
        let cached = self.authorize(meta, permission).await?;
        let tenant_id = cached.route.tenant_id;
        if permission == Permission::Write {
            // Should this router die before relaying the write's events, others will.
            self.inbox
                .before_write(tenant_id, &cached.route.server)
                .await;
        }
        let access = permission.access();
        let result = match op {
            Op::Statements(op) => {
                self.path
                    .run(cached, access, deadline, async move |db, sector| {
                        op(db, sector, message).await
                    })
                    .await
            }
            Op::Transaction(op) => {
                self.path
                    .run_exclusive(cached, access, deadline, async move |conn, sector| {
                        op(conn, sector, message).await
                    })
                    .await
            }
        };
        if permission == Permission::Write && result.is_ok() {
            // Its events (messages, statuses, leads) go to the event log, relayed on the
            // connection the write leaves open (not one reopened for the relay).
            self.path
                .pools
                .expect_visit(tenant_id, self.inbox.relay_within())
                .await;
            self.inbox.wake(tenant_id, crate::inbox::Wake::Events);
        }
        result
    }

    /// Who calls, for which tenant, allowed to do `permission`, within the tenant's rate:
    /// the tenant's route (the call is counted in its usage).
    pub async fn authorize(
        &self,
        meta: &MetadataMap,
        permission: Permission,
    ) -> Result<Arc<CachedRoute>, RouterError> {
        let claims = self.authenticate(meta)?;
        let cached = match claims.kind {
            Kind::User => self.user_route(meta, &claims, permission).await?,
            _ => self.caller_route(meta, &claims, permission).await?,
        };
        tracing::Span::current().record("tenant", cached.route.slug.as_str());
        self.limits
            .admit(cached.route.tenant_id, cached.route.calls_per_second)?;
        self.path.routes.usage.call(cached.route.tenant_id);
        Ok(cached)
    }

    /// The route of the tenant a caller token names in `x-tenant`, if granted (and, for
    /// secrets, if the token carries the secrets scope).
    async fn caller_route(
        &self,
        meta: &MetadataMap,
        claims: &Claims,
        permission: Permission,
    ) -> Result<Arc<CachedRoute>, RouterError> {
        if permission == Permission::ReadSecrets && !claims.has_scope(caller_auth::SCOPE_SECRETS) {
            return Err(RouterError::PermissionDenied(
                "reading secrets needs a token with the secrets scope".into(),
            ));
        }
        let key = tenant_key(meta)?;
        // For a caller not granted every tenant, an unknown tenant and an ungranted one get
        // the same answer, so a token cannot be used to learn which tenants exist.
        let denied = || RouterError::PermissionDenied("caller may not act for this tenant".into());
        if let TenantKey::Id(id) = &key {
            if !claims.grants(id.get()) {
                return Err(denied());
            }
        }
        let cached = match self.path.route(&RouteKey::Tenant(key)).await {
            Err(RouterError::TenantNotFound) if !claims.all => return Err(denied()),
            other => other?,
        };
        if !claims.grants(cached.route.tenant_id) {
            return Err(denied());
        }
        Ok(cached)
    }

    /// The route of a user's own empresa (from the token; an `x-tenant` must name the
    /// same one), if the user's role allows `permission`.
    async fn user_route(
        &self,
        meta: &MetadataMap,
        claims: &Claims,
        permission: Permission,
    ) -> Result<Arc<CachedRoute>, RouterError> {
        let (Some(&tenant), [_]) = (claims.tenants.first(), claims.tenants.as_slice()) else {
            return Err(RouterError::Unauthenticated(
                "user token names no empresa".into(),
            ));
        };
        let role = claims
            .role
            .as_deref()
            .and_then(|r| UserRole::parse(r).ok())
            .ok_or_else(|| RouterError::Unauthenticated("user token carries no role".into()))?;
        if !role.allows(permission.role()) {
            return Err(RouterError::PermissionDenied(format!(
                "a {role} may not do this: it needs the {} role",
                permission.role()
            )));
        }
        let other = || RouterError::PermissionDenied("x-tenant is not the user's empresa".into());
        let key = match meta.get("x-tenant") {
            None => TenantKey::Id(TenantId::new(tenant).map_err(|_| other())?),
            Some(_) => tenant_key(meta)?,
        };
        if let TenantKey::Id(id) = &key {
            if id.get() != tenant {
                return Err(other());
            }
        }
        let cached = match self.path.route(&RouteKey::Tenant(key)).await {
            Err(RouterError::TenantNotFound) => return Err(other()),
            other => other?,
        };
        if cached.route.tenant_id != tenant {
            return Err(other());
        }
        Ok(cached)
    }

    /// The tenants an event subscription may see: those `requested` (each granted), or
    /// every tenant the token grants (`None`: all of them).
    pub(crate) async fn subscription_tenants(
        &self,
        claims: &Claims,
        requested: &[String],
    ) -> Result<Option<std::collections::HashSet<i64>>, RouterError> {
        let denied = || RouterError::PermissionDenied("caller may not act for this tenant".into());
        if claims.kind == Kind::User {
            let (Some(&tenant), [_]) = (claims.tenants.first(), claims.tenants.as_slice()) else {
                return Err(RouterError::Unauthenticated(
                    "user token names no empresa".into(),
                ));
            };
            for raw in requested {
                let cached = match self
                    .path
                    .route(&RouteKey::Tenant(TenantKey::parse(raw)?))
                    .await
                {
                    Err(RouterError::TenantNotFound) => return Err(denied()),
                    other => other?,
                };
                if cached.route.tenant_id != tenant {
                    return Err(denied());
                }
            }
            return Ok(Some([tenant].into()));
        }
        if requested.is_empty() {
            if claims.all {
                return Ok(None);
            }
            if claims.tenants.is_empty() {
                return Err(RouterError::PermissionDenied(
                    "the token grants no tenant".into(),
                ));
            }
            return Ok(Some(claims.tenants.iter().copied().collect()));
        }
        let mut ids = std::collections::HashSet::with_capacity(requested.len());
        for raw in requested {
            let key = TenantKey::parse(raw)?;
            if let TenantKey::Id(id) = &key {
                if !claims.grants(id.get()) {
                    return Err(denied());
                }
            }
            let cached = match self.path.route(&RouteKey::Tenant(key)).await {
                Err(RouterError::TenantNotFound) if !claims.all => return Err(denied()),
                other => other?,
            };
            if !claims.grants(cached.route.tenant_id) {
                return Err(denied());
            }
            ids.insert(cached.route.tenant_id);
        }
        Ok(Some(ids))
    }

    pub(crate) fn authenticate(&self, meta: &MetadataMap) -> Result<Claims, RouterError> {
        let header = meta
            .get("authorization")
            .ok_or_else(|| RouterError::Unauthenticated("missing bearer token".into()))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| {
                RouterError::Unauthenticated("authorization must be 'Bearer <token>'".into())
            })?;
        let claims = self
            .tokens
            .verify_any(token, &[Kind::Caller, Kind::User])
            .map_err(|e| RouterError::Unauthenticated(e.to_string()))?;
        if !self.path.routes.revocations.loaded() {
            return Err(RouterError::Unavailable(
                "token revocations not loaded yet (control plane unreachable)".into(),
            ));
        }
        let revoked = |id: &str| self.path.routes.revocations.is_revoked(id);
        if revoked(&claims.jti) || claims.sid.as_deref().is_some_and(revoked) {
            return Err(RouterError::Unauthenticated("token revoked".into()));
        }
        Ok(claims)
    }
}

fn tenant_key(meta: &MetadataMap) -> Result<TenantKey, RouterError> {
    let raw = meta
        .get("x-tenant")
        .ok_or_else(|| {
            RouterError::InvalidArgument("x-tenant metadata (tenant slug or id) is required".into())
        })?
        .to_str()
        .map_err(|_| RouterError::InvalidArgument("x-tenant must be a slug or an id".into()))?;
    // One spelling per id (no leading zeros, signs or spaces): each other spelling would
    // be a cache key of its own that changes never reach.
    Ok(TenantKey::parse(raw)?)
}

/// The caller's deadline from the `grpc-timeout` header (`<digits><unit>`).
fn grpc_timeout(meta: &MetadataMap) -> Option<Duration> {
    let v = meta.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pairs: &[(&'static str, &str)]) -> MetadataMap {
        let mut m = MetadataMap::new();
        for (k, v) in pairs {
            m.insert(*k, v.parse().unwrap());
        }
        m
    }

    #[test]
    fn timeouts_and_keys() {
        assert_eq!(
            grpc_timeout(&meta(&[("grpc-timeout", "250m")])),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            grpc_timeout(&meta(&[("grpc-timeout", "2S")])),
            Some(Duration::from_secs(2))
        );
        assert_eq!(grpc_timeout(&meta(&[("grpc-timeout", "x")])), None);
        assert_eq!(grpc_timeout(&meta(&[])), None);
        for ok in ["acme", "42"] {
            assert_eq!(
                tenant_key(&meta(&[("x-tenant", ok)])).unwrap().to_string(),
                ok
            );
        }
        for bad in [
            "Acme",
            "a",
            "acme'; --",
            "",
            "1234567890123456789012",
            "013",
            "+13",
        ] {
            assert!(tenant_key(&meta(&[("x-tenant", bad)])).is_err(), "{bad}");
        }
        assert!(tenant_key(&meta(&[])).is_err());
    }
}
