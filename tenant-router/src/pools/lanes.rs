//! Pipelined lanes: single-statement calls of a tenant share its connections.
//!
//! tokio-postgres pipelines the queries of concurrent callers on one client, each with its
//! own Sync, so each statement is its own implicit transaction. A *lane* is a pooled
//! connection checked out while calls are in flight on it; a call joins the tenant's least
//! loaded lane unless every lane holds `pools.pipeline_depth` calls or has made no progress
//! for `pools.stuck_after_ms` (one slow statement stalls those queued behind it, so new calls go
//! elsewhere), in which case it takes another connection from the tenant's pool if one is
//! idle or the budget has slack, and else joins the least loaded lane that is not stuck (or
//! waits for one). When a lane's last call ends, its connection goes back to the pool, where
//! the budget's rules (closing for others, debt) apply as for any returned connection; a
//! lane on a server where a call has starved for the budget (or the grant went down) is
//! retired after [`RETIRE_AFTER`] so that its connection goes through them too. Calls that need a
//! transaction check out a connection of their own (`Pools::get`); while one waits for it,
//! the tenant's lanes are retired and pipelined calls open none, so one comes back.

use super::{Conn, PgConn, TenantPool};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Under budget pressure, a lane older than this takes no new calls.
const RETIRE_AFTER: Duration = Duration::from_millis(50);

/// One connection shared by pipelined calls.
pub struct Lane {
    conn: Conn,
    /// Calls on it now (changed under the tenant's lanes lock).
    calls: AtomicUsize,
    /// When it was opened or a call on it last finished.
    progress: Mutex<Instant>,
    opened: Instant,
}

impl Lane {
    /// Calls wait on it and none finished for `after`: its head statement is slow.
    fn stuck(&self, now: Instant, after: Duration) -> bool {
        self.calls.load(Ordering::Relaxed) > 0 && now.duration_since(*lock(&self.progress)) > after
    }
}

/// A tenant's lanes.
#[derive(Default)]
pub struct Lanes(Mutex<Vec<Arc<Lane>>>);

impl TenantPool {
    /// Joins the least loaded lane that is not stuck (see `stuck`), if it holds fewer than
    /// `depth` calls (any number when `force`); `None` when no lane may take the call now.
    pub(crate) fn pick(
        self: &Arc<Self>,
        depth: usize,
        stuck_after: Duration,
        force: bool,
    ) -> Option<Shared> {
        let now = Instant::now();
        let pressed = self.server.pressed();
        let mut lanes = lock(&self.lanes.0);
        if pressed {
            lanes.retain(|l| now.duration_since(l.opened) <= RETIRE_AFTER);
        }
        let best = lanes
            .iter()
            .filter(|l| !l.stuck(now, stuck_after))
            .min_by_key(|l| l.calls.load(Ordering::Relaxed));
        match best {
            Some(l) if force || l.calls.load(Ordering::Relaxed) < depth => {
                l.calls.fetch_add(1, Ordering::Relaxed);
                Some(Shared {
                    pool: Arc::clone(self),
                    lane: Arc::clone(l),
                    finished: false,
                })
            }
            _ => None,
        }
    }

    /// Makes `conn` a new lane carrying one call.
    pub(crate) fn open_lane(self: &Arc<Self>, conn: Conn) -> Shared {
        let lane = Arc::new(Lane {
            conn,
            calls: AtomicUsize::new(1),
            progress: Mutex::new(Instant::now()),
            opened: Instant::now(),
        });
        lock(&self.lanes.0).push(Arc::clone(&lane));
        Shared {
            pool: Arc::clone(self),
            lane,
            finished: false,
        }
    }

    /// Lanes open now.
    pub fn lanes(&self) -> usize {
        lock(&self.lanes.0).len()
    }

    /// No lane takes new calls: they drain and their connections go back to the pool.
    pub(crate) fn retire_lanes(&self) {
        lock(&self.lanes.0).clear();
    }

    /// Counts a call waiting for a connection of its own while the guard lives.
    pub(crate) fn exclusive_waiting(self: &Arc<Self>) -> ExclusiveWaiting {
        self.exclusive.fetch_add(1, Ordering::Relaxed);
        ExclusiveWaiting(Arc::clone(self))
    }

    /// Whether a call waits for a connection of its own.
    pub(crate) fn exclusive_waits(&self) -> bool {
        self.exclusive.load(Ordering::Relaxed) > 0
    }
}

/// A call waiting for a connection of its own (see `TenantPool::exclusive_waiting`).
pub struct ExclusiveWaiting(Arc<TenantPool>);

impl Drop for ExclusiveWaiting {
    fn drop(&mut self) {
        self.0.exclusive.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A call's place on a lane; leaving it (dropped) frees the connection when it was the last.
pub struct Shared {
    pool: Arc<TenantPool>,
    lane: Arc<Lane>,
    finished: bool,
}

impl Shared {
    /// The shared connection.
    pub fn conn(&self) -> &PgConn {
        &self.lane.conn
    }

    /// The call's statements completed (the lane made progress); an abandoned call's may
    /// still run, so dropping without this does not count as progress.
    pub fn finished(&mut self) {
        self.finished = true;
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let mut lanes = lock(&self.pool.lanes.0);
        if self.finished {
            *lock(&self.lane.progress) = Instant::now();
        }
        if self.lane.calls.fetch_sub(1, Ordering::Relaxed) == 1 {
            lanes.retain(|l| !Arc::ptr_eq(l, &self.lane));
        }
        // The connection goes back to the pool as the lane's last reference goes.
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
