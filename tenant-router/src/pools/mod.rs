//! Pool cache: one deadpool pool per tenant, built once however many calls arrive for a cold
//! tenant at the same moment, weighed by connections, closed after an idle time or when the
//! tenant's route changes. Closing a pool drops its idle connections at once and in-use
//! ones when their calls return them, so in-flight calls finish.

mod budget;
mod lanes;
mod manager;
mod session;

pub use budget::{BudgetPermit, ServerBudget};
pub use lanes::Shared;
pub use manager::{Canceller, ConnectError, PgConn, TenantManager};
pub use session::{limit_for, Db};

use crate::config;
use crate::error::RouterError;
use crate::metrics::Metrics;
use deadpool::managed::{Object, Pool, PoolError};
use proto::control::v1 as pb;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Waits between tries for a connection of a tenant that may not grow (see
/// `ConnectError::Saturated`).
const SATURATED_PAUSE_MIN: Duration = Duration::from_micros(500);
const SATURATED_PAUSE_MAX: Duration = Duration::from_millis(4);
/// Take a pool slot only if one is free now (the callers wait in their own loops).
const NO_WAIT: deadpool::managed::Timeouts = deadpool::managed::Timeouts {
    wait: Some(Duration::ZERO),
    create: None,
    recycle: None,
};

/// A tenant's pool and the route version it was built from.
pub struct TenantPool {
    pub pool: Pool<TenantManager>,
    pub version: i64,
    pub server: Arc<ServerBudget>,
    /// Connections shared by pipelined calls now (see `lanes`).
    lanes: lanes::Lanes,
    /// Calls waiting for a connection of their own (a transaction).
    exclusive: std::sync::atomic::AtomicUsize,
}

/// Every tenant pool of this router and the servers' budgets.
pub struct Pools {
    cache: moka::future::Cache<i64, Arc<TenantPool>>,
    servers: Mutex<HashMap<String, Arc<ServerBudget>>>,
    /// Wakes the lease keeper: a server seen for the first time, or calls waiting where
    /// the grant could grow.
    lease_wake: Arc<tokio::sync::Notify>,
    cfg: config::Pools,
    metrics: Arc<Metrics>,
    /// TLS to tenant databases, verified against the configured CA (`None`: plaintext).
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

/// A checked-out tenant connection.
pub type Conn = Object<TenantManager>;

impl Pools {
    /// An empty pool cache.
    pub fn new(
        cfg: config::Pools,
        metrics: Arc<Metrics>,
        tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    ) -> Pools {
        let per_tenant = cfg.max_per_tenant;
        let cache = moka::future::Cache::builder()
            .max_capacity(cfg.max_connections)
            .weigher(move |_, _| u32::try_from(per_tenant).unwrap_or(u32::MAX))
            .time_to_idle(Duration::from_secs(cfg.idle_secs))
            .eviction_listener(|tenant: Arc<i64>, pool: Arc<TenantPool>, cause| {
                tracing::debug!(tenant_id = *tenant, ?cause, "closing tenant pool");
                pool.server.unregister(*tenant);
                pool.pool.close();
            })
            .build();
        Pools {
            cache,
            servers: Mutex::new(HashMap::new()),
            lease_wake: Arc::new(tokio::sync::Notify::new()),
            cfg,
            metrics,
            tls,
        }
    }

    /// The server's budget; a server seen for the first time starts with none, and the
    /// lease keeper is woken to ask for a share of it.
    fn server(&self, route: &pb::Route) -> Arc<ServerBudget> {
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = servers.get(&route.server) {
            return Arc::clone(s);
        }
        let server = Arc::new(ServerBudget::new(
            &route.server,
            0,
            self.cfg.fail_fast_after,
            Duration::from_millis(self.cfg.fail_fast_ms),
            Arc::clone(&self.lease_wake),
        ));
        servers.insert(route.server.clone(), Arc::clone(&server));
        self.lease_wake.notify_one();
        server
    }

    /// Every server's budget (for the lease keeper).
    pub fn servers(&self) -> Vec<Arc<ServerBudget>> {
        self.servers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Fires when a server is seen for the first time, or calls wait for a connection
    /// where this router's grant could grow: renew the lease now.
    pub fn lease_wake(&self) -> &tokio::sync::Notify {
        &self.lease_wake
    }

    /// The tenant's pool for this route version (building it if needed).
    async fn pool(&self, route: &pb::Route) -> Result<Arc<TenantPool>, RouterError> {
        if let Some(p) = self.cache.get(&route.tenant_id).await {
            if p.version == route.version && !p.pool.is_closed() {
                self.metrics.pool_cache.with_label_values(&["hit"]).inc();
                return Ok(p);
            }
            self.cache.invalidate(&route.tenant_id).await;
        }
        self.metrics.pool_cache.with_label_values(&["miss"]).inc();
        let built = self
            .cache
            .try_get_with(route.tenant_id, async { self.build(route) })
            .await
            .map_err(|e| RouterError::Internal(e.to_string()))?;
        if built.version != route.version {
            // Someone else built it for another version meanwhile; use a fresh one next time.
            self.cache.invalidate(&route.tenant_id).await;
        }
        Ok(built)
    }

    fn build(&self, route: &pb::Route) -> Result<Arc<TenantPool>, RouterError> {
        let server = self.server(route);
        let port = u16::try_from(route.port)
            .map_err(|_| RouterError::Internal("route port out of range".into()))?;
        let mut pg = tokio_postgres::Config::new();
        pg.host(&route.host)
            .port(port)
            .user(&route.role)
            .password(&route.password)
            .dbname(&route.database)
            .application_name("tenant-router")
            .connect_timeout(Duration::from_millis(self.cfg.connect_timeout_ms));
        let manager = TenantManager {
            pg,
            server: Arc::clone(&server),
            tenant: route.tenant_id,
            connect_timeout: Duration::from_millis(self.cfg.connect_timeout_ms),
            server_addr: Arc::new((route.host.clone(), port)),
            live: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            uses: std::sync::atomic::AtomicU64::new(0),
            visit_expected: Mutex::new(None),
            last_limit: Arc::default(),
            tls: self.tls.clone(),
        };
        // The plan's pool size (0 from an older control plane: no plan limit).
        let plan = match route.max_connections {
            0 => usize::MAX,
            n => n as usize,
        };
        let size = self
            .cfg
            .max_per_tenant
            .min(plan)
            .min(route.server_connection_budget as usize)
            .max(1);
        let pool = Pool::builder(manager)
            .max_size(size)
            // The most recently returned connection is reused first, so a pool's surplus
            // connections stay idle and are the first closed for other tenants.
            .queue_mode(deadpool::managed::QueueMode::Lifo)
            .build()
            .map_err(|e| RouterError::Internal(format!("pool: {e}")))?;
        server.register(route.tenant_id, pool.weak());
        Ok(Arc::new(TenantPool {
            pool,
            version: route.version,
            server,
            lanes: lanes::Lanes::default(),
            exclusive: std::sync::atomic::AtomicUsize::new(0),
        }))
    }

    /// Whether single-statement calls share connections (`pools.pipeline_depth` above 0).
    pub fn pipelining(&self) -> bool {
        self.cfg.pipeline_depth > 0
    }

    /// Keeps the tenant's connection open for the inbox's visit expected `within` (after a
    /// domain write, to relay its events): it is the last of the server's idle connections
    /// closed for other tenants meanwhile. A tenant without a pool has nothing to keep.
    pub async fn expect_visit(&self, tenant: i64, within: Duration) {
        if let Some(p) = self.cache.get(&tenant).await {
            p.pool.manager().expect_visit(within);
        }
    }

    /// A connection of the tenant's own, waiting at most until `deadline` (for calls that
    /// need a transaction, and the inbox's `visit`s). While it waits, the tenant's
    /// pipelined calls take no new connection and its lanes take no new calls, so a busy
    /// tenant's shared connections drain and one comes back for it. A visit is not counted
    /// as a use of the tenant (its writes were), and ends the wait for it.
    pub async fn get(
        &self,
        route: &pb::Route,
        deadline: Instant,
        visit: bool,
    ) -> Result<Conn, GetError> {
        let mut pool = self.pool(route).await.map_err(GetError::Other)?;
        if !visit {
            pool.pool.manager().note_use();
        }
        let started = Instant::now();
        let mut pause = SATURATED_PAUSE_MIN;
        let mut waiting = None;
        let got = loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, pool.pool.timeout_get(&NO_WAIT)).await {
                // Every connection busy and no budget to grow: one of the tenant's own
                // connections will come back.
                Ok(Err(PoolError::Backend(ConnectError::Saturated) | PoolError::Timeout(_))) => {
                    if Instant::now() + pause >= deadline {
                        return Err(self.gave_up(started));
                    }
                    waiting.get_or_insert_with(|| pool.exclusive_waiting());
                    pool.retire_lanes();
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(SATURATED_PAUSE_MAX);
                }
                // The route changed meanwhile (its pool was closed): the current pool,
                // after a pause so a pool not yet replaced is not fetched in a busy loop.
                Ok(Err(PoolError::Closed)) if Instant::now() < deadline => {
                    tokio::time::sleep(SATURATED_PAUSE_MIN).await;
                    pool = self.pool(route).await.map_err(GetError::Other)?;
                }
                Ok(got) => break got,
                Err(_) => return Err(self.gave_up(started)),
            }
        };
        if visit {
            pool.pool.manager().visited();
        }
        self.handed(started, got, visit)
    }

    /// A place for a single-statement call on one of the tenant's connections, shared
    /// with other such calls (see `lanes`), waiting at most until `deadline`. (The inbox's
    /// visits take connections of their own: `get`.)
    pub async fn shared(&self, route: &pb::Route, deadline: Instant) -> Result<Shared, GetError> {
        let mut pool = self.pool(route).await.map_err(GetError::Other)?;
        pool.pool.manager().note_use();
        let started = Instant::now();
        let depth = self.cfg.pipeline_depth;
        let stuck = Duration::from_millis(self.cfg.stuck_after_ms);
        let mut pause = SATURATED_PAUSE_MIN;
        loop {
            if let Some(s) = pool.pick(depth, stuck, false) {
                self.observe_handed(started, false, false);
                return Ok(s);
            }
            if pool.exclusive_waits() {
                // A transaction waits for one of the tenant's connections: leave them to it.
                if Instant::now() + pause >= deadline {
                    return Err(self.gave_up(started));
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(SATURATED_PAUSE_MAX);
                continue;
            }
            // An idle connection, a new one within the budget's slack, or (for a tenant
            // with none) one the budget frees for it.
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, pool.pool.timeout_get(&NO_WAIT)).await {
                Ok(Err(PoolError::Backend(ConnectError::Saturated) | PoolError::Timeout(_))) => {
                    if let Some(s) = pool.pick(depth, stuck, true) {
                        self.observe_handed(started, false, false);
                        return Ok(s);
                    }
                    // Every lane is stuck and no connection is to be had: look again soon.
                    if Instant::now() + pause >= deadline {
                        return Err(self.gave_up(started));
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(SATURATED_PAUSE_MAX);
                }
                // The route changed meanwhile (its pool was closed): the current pool,
                // after a pause so a pool not yet replaced is not fetched in a busy loop.
                Ok(Err(PoolError::Closed)) if Instant::now() < deadline => {
                    tokio::time::sleep(SATURATED_PAUSE_MIN).await;
                    pool = self.pool(route).await.map_err(GetError::Other)?;
                }
                Ok(got) => return Ok(pool.open_lane(self.handed(started, got, false)?)),
                Err(_) => return Err(self.gave_up(started)),
            }
        }
    }

    /// Counts a connection (or a place on one) handed to a call or a `visit` of the inbox:
    /// `opened` for it or not.
    fn observe_handed(&self, started: Instant, opened: bool, visit: bool) {
        self.metrics
            .connection_wait
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .connections_handed
            .with_label_values(&[
                if opened { "opened" } else { "reused" },
                if visit { "inbox" } else { "call" },
            ])
            .inc();
    }

    fn gave_up(&self, started: Instant) -> GetError {
        self.metrics
            .connection_wait
            .observe(started.elapsed().as_secs_f64());
        GetError::Other(RouterError::ResourceExhausted(
            "no connection to the tenant database became free before the deadline".into(),
        ))
    }

    /// What the pool gave, counted in the metrics.
    fn handed(
        &self,
        started: Instant,
        got: Result<Conn, PoolError<ConnectError>>,
        visit: bool,
    ) -> Result<Conn, GetError> {
        match got {
            Ok(conn) => {
                self.observe_handed(started, Object::metrics(&conn).recycle_count == 0, visit);
                Ok(conn)
            }
            Err(e) => {
                self.metrics
                    .connection_wait
                    .observe(started.elapsed().as_secs_f64());
                Err(match e {
                    PoolError::Backend(ConnectError::Auth) => GetError::Auth,
                    PoolError::Backend(e) => GetError::Other(e.into()),
                    PoolError::Closed => GetError::Other(RouterError::Unavailable(
                        "tenant pool closed; retry".into(),
                    )),
                    e => GetError::Other(RouterError::Internal(format!("pool: {e}"))),
                })
            }
        }
    }

    /// Drops the tenant's pool (route changed).
    pub async fn invalidate(&self, tenant: i64) {
        self.cache.invalidate(&tenant).await;
    }

    /// Closes every pool (shutdown).
    pub fn close_all(&self) {
        for (_, pool) in self.cache.iter() {
            pool.pool.close();
        }
        self.cache.invalidate_all();
    }

    /// Closes idle pools on time: the cache only expires entries while it is being used, so
    /// this runs its housekeeping every second until `cancel`.
    pub async fn maintain(self: Arc<Self>, cancel: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {
                    self.cache.run_pending_tasks().await;
                    for server in self.servers() {
                        server.decay_uses();
                        server.pay_debt();
                    }
                }
            }
        }
    }

    /// The tenants holding at least one open connection now (from the servers' lists of
    /// pools: walking the cache itself visits every bucket of its table).
    pub fn connected(&self) -> HashSet<i64> {
        let mut tenants = HashSet::new();
        for server in self.servers() {
            server.connected_into(&mut tenants);
        }
        tenants
    }

    /// Pools cached now.
    pub fn open_pools(&self) -> u64 {
        self.cache.entry_count()
    }

    /// `(server, open connections, budget)` for every server seen.
    pub fn server_connections(&self) -> Vec<(String, u32, u32)> {
        self.servers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|s| (s.name.clone(), s.open(), s.limit()))
            .collect()
    }
}

/// Why no connection could be had.
#[derive(Debug)]
pub enum GetError {
    /// PostgreSQL refused the route's credentials: refetch the route and retry once.
    Auth,
    Other(RouterError),
}
