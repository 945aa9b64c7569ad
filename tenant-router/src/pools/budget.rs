//! The connection budget of one database server, shared by every tenant pool on it.
//!
//! Each open tenant connection holds one permit of the server's semaphore from before it
//! connects until its socket has closed, so the connections this router holds to a server
//! never exceed `budget`, however many tenants are active. The semaphore is FIFO, so
//! waiting calls are served in arrival order. When no permit is free, idle connections of
//! other tenants on the server are closed to make room: first those unused for a while,
//! then, if that frees nothing, one idle connection of the pool holding the most idle ones.

use super::manager::TenantManager;
use crate::error::RouterError;
use deadpool::managed::WeakPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections unused this long are the first to be closed for another tenant.
const LONG_IDLE: Duration = Duration::from_millis(500);
/// While waiting for a permit, how often to look again for idle connections to close.
const RELIEF_INTERVAL: Duration = Duration::from_millis(20);

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
    /// other tenants' idle connections. The caller bounds the wait by its deadline.
    pub async fn acquire(&self, tenant: i64) -> OwnedSemaphorePermit {
        if let Ok(p) = Arc::clone(&self.permits).try_acquire_owned() {
            return p;
        }
        let acquire = Arc::clone(&self.permits).acquire_owned();
        tokio::pin!(acquire);
        loop {
            self.relieve(tenant);
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

    /// Closes idle connections of tenants other than `except`; returns how many.
    fn relieve(&self, except: i64) -> usize {
        let pools: Vec<_> = {
            let mut map = self.pools.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, w| w.upgrade().is_some());
            map.iter()
                .filter(|(t, _)| **t != except)
                .filter_map(|(_, w)| w.upgrade())
                .collect()
        };
        let mut freed: usize = pools
            .iter()
            .map(|p| p.retain(|_, m| m.last_used() < LONG_IDLE).removed.len())
            .sum();
        if freed == 0 {
            // Nothing long idle: take one idle connection from the pool with the most idle.
            let mut by_idle: Vec<_> = pools.iter().filter(|p| p.status().available > 0).collect();
            by_idle.sort_by_key(|p| std::cmp::Reverse(p.status().available));
            if let Some(p) = by_idle.first() {
                let mut take = 1usize;
                freed += p
                    .retain(|_, _| {
                        if take > 0 {
                            take -= 1;
                            false
                        } else {
                            true
                        }
                    })
                    .removed
                    .len();
            }
        }
        freed
    }
}
