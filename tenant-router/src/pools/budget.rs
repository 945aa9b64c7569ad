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
//!
//! The budget itself is this router's lease on the server (see `crate::lease`): it starts
//! at 0 and follows every grant. A lower grant takes free permits away at once, closes
//! idle connections, and turns the permits of connections still in use into debt, paid by
//! forgetting each permit as its connection goes (busy connections are closed when
//! returned while debt remains).

use super::manager::TenantManager;
use crate::error::RouterError;
use deadpool::managed::WeakPool;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Weak;
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
    /// Connections this router may hold to the server now (its lease's grant).
    limit: AtomicU32,
    /// The permits of this budget: `limit + debt` of them exist.
    permits: Arc<Semaphore>,
    /// Permits out that must be forgotten when they come back (the grant went down).
    debt: Arc<Debt>,
    /// Highest demand (connections open plus calls waiting) since the last lease renewal.
    peak_demand: AtomicU32,
    /// Serializes grant changes.
    resizing: Mutex<()>,
    /// Whether the grant was held to this router's demand with connections left there.
    capped: std::sync::atomic::AtomicBool,
    /// Wakes the lease keeper: calls are waiting and the grant could grow.
    want_more: Arc<tokio::sync::Notify>,
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
    /// A budget of `limit` connections (0 until the first lease grant).
    pub fn new(
        name: &str,
        limit: u32,
        fail_fast_after: u32,
        fail_fast_for: Duration,
        want_more: Arc<tokio::sync::Notify>,
    ) -> ServerBudget {
        ServerBudget {
            name: name.to_string(),
            limit: AtomicU32::new(limit),
            permits: Arc::new(Semaphore::new(limit as usize)),
            debt: Arc::new(Debt::default()),
            peak_demand: AtomicU32::new(0),
            resizing: Mutex::new(()),
            capped: std::sync::atomic::AtomicBool::new(false),
            want_more,
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

    /// Connections this router may hold to the server now.
    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Connections open (or being opened) now.
    pub fn open(&self) -> u32 {
        let _resizing = self.resizing.lock().unwrap_or_else(|p| p.into_inner());
        let total = self.limit() + self.debt.owed.load(Ordering::Relaxed);
        total.saturating_sub(u32::try_from(self.permits.available_permits()).unwrap_or(total))
    }

    /// The highest demand (connections open plus calls waiting for one) since the last
    /// call, and starts counting again from now.
    pub fn take_demand(&self) -> u32 {
        let now = self.open() + u32::try_from(self.waiting.load(Ordering::Relaxed)).unwrap_or(0);
        self.peak_demand.swap(now, Ordering::Relaxed).max(now)
    }

    fn note_demand(&self) {
        let now = self.open() + u32::try_from(self.waiting.load(Ordering::Relaxed)).unwrap_or(0);
        self.peak_demand.fetch_max(now, Ordering::Relaxed);
    }

    /// Follows a new grant, `capped` if the control plane held it to this router's demand
    /// with connections left (see `set_limit`).
    pub fn grant(&self, limit: u32, capped: bool) {
        self.capped.store(capped, Ordering::Relaxed);
        self.set_limit(limit);
    }

    /// Follows a new grant: more permits at once (paying debt first), or fewer: free
    /// permits taken away now, idle connections closed, the rest owed until returned.
    pub fn set_limit(&self, limit: u32) {
        let to_close = {
            let _resizing = self.resizing.lock().unwrap_or_else(|p| p.into_inner());
            let old = self.limit.swap(limit, Ordering::Relaxed);
            if limit > old {
                let mut add = limit - old;
                add -= self.debt.forgive(add);
                self.permits.add_permits(add as usize);
                0
            } else {
                let cut = old - limit;
                let forgot =
                    u32::try_from(self.permits.forget_permits(cut as usize)).unwrap_or(cut);
                self.debt.owed.fetch_add(cut - forgot, Ordering::Relaxed);
                self.debt.owed.load(Ordering::Relaxed)
            }
        };
        if limit != 0 || to_close != 0 {
            tracing::debug!(server = %self.name, limit, owed = to_close, "connection budget changed");
        }
        for _ in 0..to_close {
            if !self.close_coldest_idle(-1) {
                break;
            }
        }
    }

    /// Closes idle connections while the budget owes permits (called every second: idle
    /// connections of tenants with no calls would otherwise keep the debt for good).
    pub fn pay_debt(&self) {
        let owed = self.debt.owed.load(Ordering::Relaxed) as usize;
        while owed > self.releasing() + self.debt.closing.load(Ordering::Relaxed) as usize {
            if !self.close_coldest_idle(-1) {
                break;
            }
        }
    }

    /// Whether a connection being returned should be closed to pay the budget's debt;
    /// counts it when it says yes.
    pub fn close_for_debt(&self) -> bool {
        let debt = self.debt.owed.load(Ordering::Relaxed);
        self.debt
            .closing
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                (c < debt).then_some(c + 1)
            })
            .is_ok()
    }

    /// Wraps a permit of this budget so that, while there is debt, it is forgotten rather
    /// than given back.
    fn owned(&self, permit: OwnedSemaphorePermit) -> BudgetPermit {
        self.note_demand();
        BudgetPermit {
            permit: Some(permit),
            debt: Arc::downgrade(&self.debt),
        }
    }

    pub(crate) fn register(&self, tenant: i64, pool: WeakPool<TenantManager>) {
        self.pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tenant, pool);
    }

    /// Adds the tenants of this server holding at least one open connection now.
    pub(crate) fn connected_into(&self, tenants: &mut HashSet<i64>) {
        let map = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        tenants.extend(
            map.iter()
                .filter(|(_, w)| w.upgrade().is_some_and(|p| p.status().size > 0))
                .map(|(t, _)| *t),
        );
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
    pub async fn acquire(&self, tenant: i64) -> BudgetPermit {
        let permit = match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => self.acquire_slow(tenant).await,
        };
        self.keep_reserve(tenant);
        self.owned(permit)
    }

    /// A permit only if the budget has slack now: nobody waiting, and more free permits
    /// than the reserve kept for cold tenants. Closes nothing: growing one tenant's pool is
    /// not worth another tenant's connection.
    pub fn try_acquire(&self) -> Option<BudgetPermit> {
        if self.waiting.load(Ordering::Relaxed) > 0
            || self.permits.available_permits() <= self.reserve()
        {
            return None;
        }
        let permit = Arc::clone(&self.permits).try_acquire_owned().ok()?;
        Some(self.owned(permit))
    }

    /// Whether a connection about to be reused should be closed instead, for a call that
    /// has waited too long while no idle connection could be closed (busy tenants would
    /// otherwise keep their connections forever); counts the closing when it says yes.
    pub fn should_yield(&self) -> bool {
        let waiting = self.waiting.load(Ordering::Relaxed);
        if waiting == 0 || self.releasing() >= waiting || !self.starving() {
            return false;
        }
        self.note_closing();
        true
    }

    /// Whether a call has starved for this budget (see `should_yield`) or it owes permits:
    /// connections held by busy tenants should pass through the pool's checks (see
    /// `lanes`). Calls waiting less long are served by idle connections closing, and
    /// retiring busy tenants' lanes for them would only make those tenants open more.
    pub fn pressed(&self) -> bool {
        self.debt.owed.load(Ordering::Relaxed) > 0 || self.starving()
    }

    /// Calls have waited for a permit without a break for longer than [`STARVING_AFTER`].
    fn starving(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0
            && self
                .queue_since
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some_and(|t| t.elapsed() > STARVING_AFTER)
    }

    /// Permits kept free ahead of need.
    fn reserve(&self) -> usize {
        (self.limit() / 32).max(1) as usize
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
        self.note_demand();
        if self.capped.load(Ordering::Relaxed) {
            self.want_more.notify_one();
        }
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

    /// Decays every pool's use count (called every second): recent use weighs most.
    pub fn decay_uses(&self) {
        let mut map = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, w| w.upgrade().is_some());
        for pool in map.values().filter_map(|w| w.upgrade()) {
            pool.manager().decay_uses();
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
        // (uses decay by a 32nd every second), so a stream of rarely seen tenants takes
        // connections from each other rather than from the regulars; a tenant the inbox
        // is about to visit (to relay a write's events) last, so that the visit does not
        // reopen the connection its write just left.
        let mut surplus: Option<(Instant, usize)> = None;
        let mut coldest: Option<((bool, u64), Instant, usize)> = None;
        for (i, pool) in pools.iter().enumerate() {
            let manager = pool.manager();
            let uses = (
                manager.visit_pending(),
                manager.uses.load(Ordering::Relaxed),
            );
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

/// Permits a budget owes: out now, to be forgotten as they come back.
#[derive(Default)]
struct Debt {
    owed: AtomicU32,
    /// Busy connections asked to close when returned, to pay it.
    closing: AtomicU32,
}

impl Debt {
    /// Takes one returning permit as payment; whether it was owed.
    fn pay_one(&self) -> bool {
        let paid = self
            .owed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if paid {
            let _ = self
                .closing
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| c.checked_sub(1));
        }
        paid
    }

    /// Cancels up to `n` of it (the grant went up again); how much.
    fn forgive(&self, n: u32) -> u32 {
        let before = self
            .owed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| Some(d - d.min(n)))
            .unwrap_or(0);
        let left = before - before.min(n);
        let _ = self
            .closing
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| Some(c.min(left)));
        before.min(n)
    }
}

/// A permit of a server's budget, held by one connection until its backend has exited.
/// While the budget owes permits (its grant went down), a returning permit is forgotten.
pub struct BudgetPermit {
    permit: Option<OwnedSemaphorePermit>,
    debt: Weak<Debt>,
}

impl Drop for BudgetPermit {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        if self.debt.upgrade().is_some_and(|d| d.pay_one()) {
            permit.forget();
        }
    }
}
