//! Route cache: where each tenant lives, learned from the control plane's `TenantDirectory`.
//!
//! Routes are cached under both the tenant's slug and its id (the two ways `x-tenant` may
//! name it). Concurrent misses for one key share one `Resolve`. "Not found" is remembered
//! for a short while. The directory's change stream replaces a cached route only with a
//! newer `version`. A route older than its TTL, or fetched before the change stream last
//! (re)connected (changes may have been missed), is refreshed on use; if the control plane
//! cannot be reached, the old route keeps serving.

use crate::error::RouterError;
use crate::metrics::Metrics;
use crate::revocations::Revocations;
use proto::control::v1 as pb;
use proto::control::v1::tenant_directory_client::TenantDirectoryClient;
use proto::model::FromWire;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tenant_model::{PhoneNumberId, Sector, TenantId, TenantKey, TenantStatus};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Cache keys of WhatsApp `phone_number_id`s start with this (slugs start with a letter,
/// ids are digits: no clash).
const PHONE_PREFIX: &str = "pnid:";

/// The cache key of a WhatsApp `phone_number_id`.
fn phone_key(phone_number_id: &str) -> String {
    format!("{PHONE_PREFIX}{phone_number_id}")
}

/// The cache key of an Evolution instance (`:` never appears in slugs or ids).
fn instance_key(name: &str) -> String {
    format!("evo:{name}")
}

/// How a route is looked up, parsed at the edge: a tenant (gRPC `x-tenant`, the Evolution
/// instance) or a WhatsApp business number (Meta deliveries).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RouteKey {
    Tenant(TenantKey),
    Phone(PhoneNumberId),
    /// An Evolution instance by name (checked by the caller: 3-63 of `[a-z0-9_-]`).
    Instance(String),
}

impl RouteKey {
    /// A tenant by id (a route refetched after an authentication failure).
    pub fn id(id: i64) -> Result<RouteKey, RouterError> {
        Ok(RouteKey::Tenant(TenantKey::Id(TenantId::new(id)?)))
    }

    /// Its cache key: one per key, whichever path asks.
    fn cache_key(&self) -> String {
        match self {
            RouteKey::Tenant(k) => k.to_string(),
            RouteKey::Phone(p) => phone_key(p.as_str()),
            RouteKey::Instance(name) => instance_key(name),
        }
    }

    fn resolve_key(&self) -> pb::resolve_request::Key {
        use pb::resolve_request::Key;
        match self {
            RouteKey::Tenant(TenantKey::Id(id)) => Key::Id(id.get()),
            RouteKey::Tenant(TenantKey::Slug(s)) => Key::Slug(s.as_str().to_string()),
            RouteKey::Phone(p) => Key::PhoneNumberId(p.as_str().to_string()),
            RouteKey::Instance(name) => Key::EvolutionInstance(name.clone()),
        }
    }
}

/// A cached route and when it was fetched.
#[derive(Debug)]
pub struct CachedRoute {
    /// The route as the directory sent it.
    pub route: pb::Route,
    /// Its status and sector, parsed once when it arrived.
    pub status: TenantStatus,
    pub sector: Sector,
    fetched: Instant,
    generation: u64,
}

impl CachedRoute {
    fn new(route: pb::Route, generation: u64) -> Result<CachedRoute, RouterError> {
        let invalid = |e: tenant_model::Invalid| {
            tracing::error!(tenant = route.tenant_id, error = %e, "directory sent a malformed route");
            RouterError::Unavailable("tenant directory sent a malformed route".into())
        };
        Ok(CachedRoute {
            status: TenantStatus::from_wire("status", route.status).map_err(invalid)?,
            sector: Sector::from_wire("sector", route.sector).map_err(invalid)?,
            route,
            fetched: Instant::now(),
            generation,
        })
    }
}

/// Cache of tenant routes, fed by lookups and the directory's change stream.
pub struct RouteCache {
    /// Routes by key: slug, id as decimal text, and `pnid:<phone_number_id>`.
    routes: moka::future::Cache<String, Arc<CachedRoute>>,
    /// Keys recently resolved as "no such tenant".
    missing: moka::future::Cache<String, ()>,
    directory: TenantDirectoryClient<Channel>,
    token: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    ttl: Duration,
    /// Bumped whenever the change stream (re)connects: older entries may have missed changes.
    generation: AtomicU64,
    metrics: Arc<Metrics>,
    /// Revoked caller tokens, kept current by the same stream.
    pub revocations: Arc<Revocations>,
    /// Per-tenant usage since the last report.
    pub usage: crate::usage::UsageCounts,
}

/// Awaited with the tenant id whenever a change replaces a cached route.
pub type OnChange = Box<dyn Fn(i64) -> futures_util::future::BoxFuture<'static, ()> + Send + Sync>;

impl RouteCache {
    /// A cache over `directory` (lazily connected channel).
    pub fn new(
        directory: Channel,
        token: &str,
        cfg: &crate::config::Routes,
        metrics: Arc<Metrics>,
    ) -> Result<RouteCache, RouterError> {
        let token = format!("Bearer {token}").parse().map_err(|_| {
            RouterError::Internal("directory token is not a valid header value".into())
        })?;
        Ok(RouteCache {
            routes: moka::future::Cache::builder()
                .max_capacity(cfg.capacity.saturating_mul(2))
                .build(),
            missing: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_millis(cfg.negative_ttl_ms))
                .build(),
            directory: TenantDirectoryClient::new(directory),
            token,
            ttl: Duration::from_secs(cfg.ttl_secs),
            generation: AtomicU64::new(0),
            metrics,
            revocations: Arc::new(Revocations::default()),
            usage: crate::usage::UsageCounts::default(),
        })
    }

    fn fresh(&self, cached: &CachedRoute) -> bool {
        cached.fetched.elapsed() < self.ttl
            && cached.generation == self.generation.load(Ordering::Relaxed)
    }

    /// The route for a key.
    pub async fn get(&self, route_key: &RouteKey) -> Result<Arc<CachedRoute>, RouterError> {
        let key = route_key.cache_key();
        let key = key.as_str();
        if let Some(cached) = self.routes.get(key).await {
            if self.fresh(&cached) {
                self.metrics.route_cache.with_label_values(&["hit"]).inc();
                return Ok(cached);
            }
            self.metrics.route_cache.with_label_values(&["stale"]).inc();
            return match self.resolve(route_key).await {
                Ok(route) => self.store(route).await,
                Err(RouterError::Unavailable(_)) => Ok(cached),
                Err(e) => {
                    if matches!(e, RouterError::TenantNotFound) {
                        self.forget(&cached.route).await;
                    }
                    Err(e)
                }
            };
        }
        if self.missing.contains_key(key) {
            self.metrics
                .route_cache
                .with_label_values(&["negative_hit"])
                .inc();
            return Err(RouterError::TenantNotFound);
        }
        self.metrics.route_cache.with_label_values(&["miss"]).inc();
        let loaded = self
            .routes
            .try_get_with(key.to_string(), async {
                let route = self.resolve(route_key).await?;
                let generation = self.generation.load(Ordering::Relaxed);
                Ok::<_, RouterError>(Arc::new(CachedRoute::new(route, generation)?))
            })
            .await;
        match loaded {
            Ok(cached) => {
                // Also reachable under its other key.
                self.index(&cached).await;
                Ok(cached)
            }
            Err(e) => {
                let e = Arc::try_unwrap(e).unwrap_or_else(|shared| clone_error(&shared));
                if matches!(e, RouterError::TenantNotFound) {
                    self.missing.insert(key.to_string(), ()).await;
                }
                Err(e)
            }
        }
    }

    /// Fetches a route from the directory, bypassing the cache (after an authentication
    /// failure, say), and caches it.
    pub async fn refetch(&self, key: &RouteKey) -> Result<Arc<CachedRoute>, RouterError> {
        let route = self.resolve(key).await?;
        self.store(route).await
    }

    async fn resolve(&self, key: &RouteKey) -> Result<pb::Route, RouterError> {
        let mut req = tonic::Request::new(pb::ResolveRequest {
            key: Some(key.resolve_key()),
        });
        req.metadata_mut()
            .insert("authorization", self.token.clone());
        req.set_timeout(Duration::from_secs(2));
        let mut client = self.directory.clone();
        match client.resolve(req).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) if s.code() == tonic::Code::NotFound => Err(RouterError::TenantNotFound),
            Err(s) if s.code() == tonic::Code::InvalidArgument => {
                Err(RouterError::InvalidArgument(s.message().into()))
            }
            Err(s) => {
                tracing::warn!(code = ?s.code(), "directory lookup failed");
                Err(RouterError::Unavailable(
                    "tenant directory unavailable".into(),
                ))
            }
        }
    }

    async fn store(&self, route: pb::Route) -> Result<Arc<CachedRoute>, RouterError> {
        let generation = self.generation.load(Ordering::Relaxed);
        let cached = Arc::new(CachedRoute::new(route, generation)?);
        self.index(&cached).await;
        Ok(cached)
    }

    /// Every key a route can be reached by: slug, id, WhatsApp number.
    fn keys(route: &pb::Route) -> Vec<String> {
        let mut keys = vec![route.slug.clone(), route.tenant_id.to_string()];
        if !route.phone_number_id.is_empty() {
            keys.push(phone_key(&route.phone_number_id));
        }
        keys.extend(route.extra_phone_number_ids.iter().map(|n| phone_key(n)));
        keys.extend(
            route
                .evolution_instances
                .iter()
                .map(|i| instance_key(&i.name)),
        );
        keys
    }

    /// Puts a route under every key it can be reached by, unless a newer version of the
    /// same tenant is already there, and forgets the keys an older version of it had and
    /// this one has not (a renamed slug, a changed number).
    async fn index(&self, cached: &Arc<CachedRoute>) {
        let id = cached.route.tenant_id;
        let keys = Self::keys(&cached.route);
        if let Some(old) = self.routes.get(&id.to_string()).await {
            if old.route.version < cached.route.version {
                for stale in Self::keys(&old.route)
                    .into_iter()
                    .filter(|k| !keys.contains(k))
                {
                    self.routes
                        .entry(stale)
                        .and_compute_with(|held| {
                            let ours = held.is_some_and(|h| h.value().route.tenant_id == id);
                            std::future::ready(if ours {
                                moka::ops::compute::Op::Remove
                            } else {
                                moka::ops::compute::Op::Nop
                            })
                        })
                        .await;
                }
            }
        }
        for key in keys {
            self.missing.invalidate(&key).await;
            let new = Arc::clone(cached);
            self.routes
                .entry(key)
                .and_compute_with(|old| {
                    // Versions order one tenant's states; another tenant under the key (a
                    // number or slug that moved) gives way to the newest news.
                    let keep_old = old.is_some_and(|o| {
                        o.value().route.tenant_id == id
                            && o.value().route.version > new.route.version
                    });
                    std::future::ready(if keep_old {
                        moka::ops::compute::Op::Nop
                    } else {
                        moka::ops::compute::Op::Put(new)
                    })
                })
                .await;
        }
    }

    async fn forget(&self, route: &pb::Route) {
        for key in Self::keys(route) {
            self.routes.invalidate(&key).await;
        }
    }

    /// Applies one change from the stream; true if it replaced what was cached.
    pub async fn apply(&self, route: pb::Route) -> bool {
        let current = self.routes.get(&route.tenant_id.to_string()).await;
        if current
            .as_ref()
            .is_some_and(|c| c.route.version >= route.version)
        {
            return false;
        }
        self.store(route).await.is_ok()
    }

    /// Loads the full list of revoked caller tokens from the directory.
    pub async fn load_revocations(&self) -> Result<(), RouterError> {
        let mut req = tonic::Request::new(pb::ListRevokedTokensRequest {});
        req.metadata_mut()
            .insert("authorization", self.token.clone());
        req.set_timeout(Duration::from_secs(2));
        let mut client = self.directory.clone();
        let ids = client
            .list_revoked_tokens(req)
            .await
            .map_err(|s| {
                tracing::warn!(code = ?s.code(), "cannot load revoked tokens");
                RouterError::Unavailable("control plane unavailable".into())
            })?
            .into_inner()
            .token_ids;
        self.revocations.load(ids);
        Ok(())
    }

    /// Follows the directory's change stream until `cancel`, reconnecting with backoff.
    /// `on_change` hears of every replaced route (the pool cache drops that tenant's pool).
    pub async fn watch(self: Arc<Self>, on_change: OnChange, cancel: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut req = tonic::Request::new(pb::WatchRoutesRequest {});
            req.metadata_mut()
                .insert("authorization", self.token.clone());
            let mut client = self.directory.clone();
            let started = tokio::select! {
                _ = cancel.cancelled() => return,
                r = client.watch_routes(req) => r,
            };
            match started {
                Ok(stream) => {
                    // Changes made while disconnected were missed: refresh older routes on use,
                    // and reload the revocations (the stream is already carrying new ones).
                    self.generation.fetch_add(1, Ordering::Relaxed);
                    let _ = self.load_revocations().await;
                    backoff = Duration::from_millis(100);
                    tracing::info!("following tenant route changes");
                    let mut stream = stream.into_inner();
                    loop {
                        let next = tokio::select! {
                            _ = cancel.cancelled() => return,
                            m = stream.message() => m,
                        };
                        match next {
                            Ok(Some(change)) => {
                                if !change.revoked_token_id.is_empty() {
                                    self.revocations.revoke(&change.revoked_token_id);
                                }
                                if let Some(route) = change.route {
                                    let id = route.tenant_id;
                                    if self.apply(route).await {
                                        self.metrics.route_changes.inc();
                                        on_change(id).await;
                                    }
                                }
                            }
                            Ok(None) => break,
                            Err(s) => {
                                tracing::warn!(code = ?s.code(), message = s.message(), "route change stream ended");
                                break;
                            }
                        }
                    }
                }
                Err(s) => tracing::warn!(code = ?s.code(), "cannot follow route changes; retrying"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Keeps a webhook body no tenant owns (or an item no tenant database can take, with
    /// `reason`) in the control database (through the control plane: the router has no
    /// catalog credentials). `false` when the source's quota is full and it was dropped.
    pub async fn record_unroutable(&self, letter: Unroutable<'_>) -> Result<bool, RouterError> {
        use proto::model::ToWire;
        let mut req = tonic::Request::new(pb::UnroutableWebhook {
            source: letter.source.to_wire(),
            phone_number_id: letter.phone_number_id.to_string(),
            body: letter.body.to_vec(),
            reason: letter.reason.to_string(),
            kind: letter.kind.to_wire(),
            tenant_id: letter.tenant_id.unwrap_or(0),
        });
        req.metadata_mut()
            .insert("authorization", self.token.clone());
        req.set_timeout(Duration::from_secs(2));
        let mut client = self.directory.clone();
        client
            .record_unroutable(req)
            .await
            .map(|r| !r.into_inner().dropped)
            .map_err(|s| {
                tracing::warn!(code = ?s.code(), "cannot record a dead letter");
                RouterError::Unavailable("control plane unavailable".into())
            })
    }

    /// A tenant's settings (and secrets when `with_secrets`) from the directory.
    pub async fn tenant_settings(
        &self,
        tenant_id: i64,
        with_secrets: bool,
    ) -> Result<pb::RouterTenantSettings, RouterError> {
        let mut req = tonic::Request::new(pb::TenantSettingsRequest {
            tenant_id,
            with_secrets,
        });
        req.metadata_mut()
            .insert("authorization", self.token.clone());
        req.set_timeout(Duration::from_secs(2));
        self.directory
            .clone()
            .get_tenant_settings(req)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| match s.code() {
                tonic::Code::NotFound => RouterError::TenantNotFound,
                code => {
                    tracing::warn!(?code, "cannot read a tenant's settings");
                    RouterError::Unavailable("control plane unavailable".into())
                }
            })
    }

    /// This router's login to the ingest database.
    pub async fn ingest_route(&self) -> Result<pb::IngestRoute, RouterError> {
        let mut req = tonic::Request::new(pb::GetIngestRequest {});
        req.metadata_mut()
            .insert("authorization", self.token.clone());
        req.set_timeout(Duration::from_secs(10));
        self.directory
            .clone()
            .get_ingest(req)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| {
                tracing::warn!(code = ?s.code(), "cannot get the ingest database's route");
                RouterError::Unavailable("control plane unavailable".into())
            })
    }

    /// Reports usage to the control plane every `every` until `cancel` (and once more
    /// then); a report that fails is kept for the next one.
    pub async fn report_usage(self: Arc<Self>, every: Duration, cancel: CancellationToken) {
        loop {
            let stop = tokio::select! {
                _ = cancel.cancelled() => true,
                _ = tokio::time::sleep(every) => false,
            };
            let counts = self.usage.take();
            for chunk in counts.chunks(10_000) {
                let mut req = tonic::Request::new(pb::UsageReport {
                    tenants: chunk
                        .iter()
                        .map(|&(tenant_id, calls, messages)| pb::TenantUsage {
                            tenant_id,
                            calls,
                            messages,
                        })
                        .collect(),
                });
                req.metadata_mut()
                    .insert("authorization", self.token.clone());
                req.set_timeout(Duration::from_secs(5));
                if let Err(s) = self.directory.clone().report_usage(req).await {
                    tracing::warn!(code = ?s.code(), "cannot report usage; keeping it for the next report");
                    self.usage.restore(chunk.to_vec());
                }
            }
            if stop {
                return;
            }
        }
    }

    /// Renews this router process's lease (its share of the servers' budgets).
    pub async fn lease(
        &self,
        req: pb::LeaseRequest,
        timeout: Duration,
    ) -> Result<pb::LeaseReply, tonic::Status> {
        let mut req = tonic::Request::new(req);
        req.metadata_mut()
            .insert("authorization", self.token.clone());
        req.set_timeout(timeout);
        Ok(self.directory.clone().lease(req).await?.into_inner())
    }

    /// Routes cached (each counted once per key).
    pub fn entries(&self) -> u64 {
        self.routes.entry_count()
    }
}

/// A delivery (or item) no tenant database took, for the control plane to keep.
#[derive(Debug, Clone, Copy)]
pub struct Unroutable<'a> {
    pub source: tenant_model::WebhookSource,
    pub kind: tenant_model::DeadLetterKind,
    /// The tenant it was meant for (suspended tenants, refused items).
    pub tenant_id: Option<i64>,
    pub phone_number_id: &'a str,
    pub body: &'a [u8],
    /// In words (refused items).
    pub reason: &'a str,
}

fn clone_error(e: &RouterError) -> RouterError {
    match e {
        RouterError::TenantNotFound => RouterError::TenantNotFound,
        RouterError::InvalidArgument(m) => RouterError::InvalidArgument(m.clone()),
        RouterError::Unavailable(m) => RouterError::Unavailable(m.clone()),
        other => RouterError::Internal(other.to_string()),
    }
}
