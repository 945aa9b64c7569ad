//! The connection budget of one database server, shared by every tenant pool on it.
//!
//! Each open tenant connection holds one permit of the server's semaphore from before it
//! connects until its socket has closed, so the connections this router holds to a server
//! never exceed `budget`, however many tenants are active. The semaphore is FIFO, so
//! waiting calls are served in arrival order. When no permit is free, one idle connection of
//! another tenant on the server is closed per waiting call: a pool's surplus first (pools
//! hand out their most recently used connection, so surplus stays idle), else the sole
//! connection of the least-used tenant. A few permits are kept free ahead of need, a tenant
//! that has a connection grows only into slack, and a call starved for a while takes the
//! next connection any tenant returns.

use super::manager::TenantManager;
use crate::error::RouterError;
use deadpool::managed::WeakPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// While waiting for a permit, how often to look again for idle connections to close.
const RELIEF_INTERVAL: Duration = Duration::from_millis(10);
/// A call waiting this long for a permit takes the next connection any tenant returns.
const STARVING_AFTER: Duration = Duration::from_millis(50);
/// How long a closed connection's permit usually takes to come back (its backend exiting).
const RELEASE_EXPECTED: Duration = Duration::from_millis(20);

/// One server's connection budget and health.
pub struct ServerBudget {
    /// Server name (a metrics label: bounded by the number of servers).
    pub name: String,
    /// Connections this router may hold to the server.
    pub budget: u32,
    permits: Arc<Semaphore>,
    failures: AtomicU32,
    down_until: Mutex<Option<Instant>>,
    fail_fast_after: u32,
    fail_fast_for: Duration,
    /// Pools on this server, to close others' idle connections under pressure.
    pools: Mutex<HashMap<i64, WeakPool<TenantManager>>>,
    /// When connections were last closed to make room (see `releasing`).
    recently_closed: Mutex<std::collections::VecDeque<Instant>>,
    /// Calls waiting for a permit.
    waiting: AtomicUsize,
    /// Held while looking for a connection to close.
    scanning: Mutex<()>,
    /// Since when calls have been waiting without a break.
    queue_since: Mutex<Option<Instant>>,
}

/// Counts a waiting call while it waits (and when the queue last became non-empty).
struct Waiting<'a>(&'a ServerBudget);

impl<'a> Waiting<'a> {
    fn enter(b: &'a ServerBudget) -> Waiting<'a> {
        let mut since = b.queue_since.lock().unwrap_or_else(|p| p.into_inner());
        if b.waiting.fetch_add(1, Ordering::Relaxed) == 0 {
            *since = Some(Instant::now());
        }
        Waiting(b)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut since = self.0.queue_since.lock().unwrap_or_else(|p| p.into_inner());
        if self.0.waiting.fetch_sub(1, Ordering::Relaxed) == 1 {
            *since = None;
        }
    }
}

impl ServerBudget {
    /// A budget of `budget` connections (at least 1).
    pub fn new(
        name: &str,
        budget: u32,
        fail_fast_after: u32,
        fail_fast_for: Duration,
    ) -> ServerBudget {
        let budget = budget.max(1);
        ServerBudget {
            name: name.to_string(),
            budget,
            permits: Arc::new(Semaphore::new(budget as usize)),
            failures: AtomicU32::new(0),
            down_until: Mutex::new(None),
            fail_fast_after,
            fail_fast_for,
            pools: Mutex::new(HashMap::new()),
            recently_closed: Mutex::new(std::collections::VecDeque::new()),
            waiting: AtomicUsize::new(0),
            scanning: Mutex::new(()),
            queue_since: Mutex::new(None),
        }
    }

    /// Connections open (or being opened) now.
    pub fn open(&self) -> u32 {
        self.budget - u32::try_from(self.permits.available_permits()).unwrap_or(self.budget)
    }

    pub(crate) fn register(&self, tenant: i64, pool: WeakPool<TenantManager>) {
        self.pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tenant, pool);
    }

    pub(crate) fn unregister(&self, tenant: i64) {
        self.pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&tenant);
    }

    /// Fails at once while the server is marked down after repeated connect failures.
    pub fn check_up(&self) -> Result<(), RouterError> {
        let down = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        match *down {
            Some(until) if Instant::now() < until => Err(RouterError::Unavailable(
                "tenant database server unavailable".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Records a connect attempt's outcome (only server-side failures count).
    pub fn record_connect(&self, ok: bool) {
        if ok {
            self.failures.store(0, Ordering::Relaxed);
            return;
        }
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.fail_fast_after {
            *self.down_until.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(Instant::now() + self.fail_fast_for);
            self.failures.store(0, Ordering::Relaxed);
            tracing::warn!(server = %self.name, "database server failing fast after repeated connect failures");
        }
    }

    /// A permit for one new connection of `tenant`; waits (in FIFO order) while closing
    /// other tenants' least recently used idle connections, one per turn. Having taken a
    /// permit, it also keeps a few permits free for the next cold tenant (closing idle
    /// connections now rather than making that call wait for a backend to exit). The caller
    /// bounds the wait by its deadline.
    pub async fn acquire(&self, tenant: i64) -> OwnedSemaphorePermit {
        let permit = match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => self.acquire_slow(tenant).await,
        };
        self.keep_reserve(tenant);
        permit
    }

    /// A permit only if the budget has slack now: nobody waiting, and more free permits
    /// than the reserve kept for cold tenants. Closes nothing: growing one tenant's pool is
    /// not worth another tenant's connection.
    pub fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        if self.waiting.load(Ordering::Relaxed) > 0
            || self.permits.available_permits() <= self.reserve()
        {
            return None;
        }
        Arc::clone(&self.permits).try_acquire_owned().ok()
    }

    /// Whether a connection about to be reused should be closed instead, for a call that
    /// has waited too long while no idle connection could be closed (busy tenants would
    /// otherwise keep their connections forever); counts the closing when it says yes.
    pub fn should_yield(&self) -> bool {
        let waiting = self.waiting.load(Ordering::Relaxed);
        if waiting == 0 || self.releasing() >= waiting {
            return false;
        }
        let since = *self.queue_since.lock().unwrap_or_else(|p| p.into_inner());
        if since.is_none_or(|t| t.elapsed() <= STARVING_AFTER) {
            return false;
        }
        self.note_closing();
        true
    }

    /// Permits kept free ahead of need.
    fn reserve(&self) -> usize {
        (self.budget / 16).max(1) as usize
    }

    fn keep_reserve(&self, tenant: i64) {
        let reserve = self.reserve();
        while self.permits.available_permits() + self.releasing() < reserve {
            if !self.close_coldest_idle(tenant) {
                break;
            }
        }
    }

    async fn acquire_slow(&self, tenant: i64) -> OwnedSemaphorePermit {
        let acquire = Arc::clone(&self.permits).acquire_owned();
        tokio::pin!(acquire);
        let _waiting = Waiting::enter(self);
        loop {
            // One connection closing per waiting call is enough; more would only churn.
            if self.releasing() < self.waiting.load(Ordering::Relaxed) {
                self.close_coldest_idle(tenant);
            }
            tokio::select! {
                p = &mut acquire => match p {
                    Ok(p) => return p,
                    // The semaphore is never closed; wait forever (the caller's deadline ends it).
                    Err(_) => std::future::pending::<()>().await,
                },
                _ = tokio::time::sleep(RELIEF_INTERVAL) => {}
            }
        }
    }

    /// Halves every pool's use count (called every second): recent use weighs most.
    pub fn decay_uses(&self) {
        let mut map = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, w| w.upgrade().is_some());
        for pool in map.values().filter_map(|w| w.upgrade()) {
            let uses = &pool.manager().uses;
            uses.store(uses.load(Ordering::Relaxed) / 2, Ordering::Relaxed);
        }
    }

    /// Counts a connection being closed to make room (see `releasing`).
    fn note_closing(&self) {
        self.recently_closed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(Instant::now());
    }

    /// Connections closed for others whose permits are probably not back yet.
    fn releasing(&self) -> usize {
        let mut closed = self
            .recently_closed
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        while closed
            .front()
            .is_some_and(|t| t.elapsed() > RELEASE_EXPECTED)
        {
            closed.pop_front();
        }
        closed.len()
    }

    /// Closes an idle connection of a tenant other than `except` (see the order below);
    /// whether there was one.
    fn close_coldest_idle(&self, except: i64) -> bool {
        // One scan at a time: concurrent waiters would only find the same connection.
        let Ok(_scanning) = self.scanning.try_lock() else {
            return false;
        };
        // (No cleanup of dead entries here: the once-a-second `decay_uses` does it.)
        let pools: Vec<_> = {
            let map = self.pools.lock().unwrap_or_else(|p| p.into_inner());
            map.iter()
                .filter(|(t, _)| **t != except)
                .filter_map(|(_, w)| w.upgrade())
                .collect()
        };
        let used = |m: &deadpool::managed::Metrics| m.recycled.unwrap_or(m.created);
        // A pool's surplus first (least recently used): a tenant keeping one connection
        // saves a new one later. Else the sole connection of the tenant used least lately
        // (uses decay by half every second), so a stream of rarely seen tenants takes
        // connections from each other rather than from the regulars.
        let mut surplus: Option<(Instant, usize)> = None;
        let mut coldest: Option<(u64, Instant, usize)> = None;
        for (i, pool) in pools.iter().enumerate() {
            let uses = pool.manager().uses.load(Ordering::Relaxed);
            let several = pool.status().size >= 2;
            // Looks at each idle connection, keeping all.
            let _ = pool.retain(|_, m| {
                let t = used(&m);
                if several && surplus.is_none_or(|(s, _)| t < s) {
                    surplus = Some((t, i));
                }
                if coldest.is_none_or(|(u, c, _)| uses < u || (uses == u && t < c)) {
                    coldest = Some((uses, t, i));
                }
                true
            });
        }
        let oldest = surplus.or(coldest.map(|(_, t, i)| (t, i)));
        let Some((when, i)) = oldest else {
            return false;
        };
        let mut taken = false;
        let removed = pools[i].retain(|_, m| {
            if !taken && used(&m) == when {
                taken = true;
                false
            } else {
                true
            }
        });
        if removed.removed.is_empty() {
            return false;
        }
        self.note_closing();
        true
    }
}
