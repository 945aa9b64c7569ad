//! The benchmark's scenarios, each writing its table into the report.

pub mod backup;
pub mod cold;
pub mod hot;
pub mod many;
pub mod memory;

use crate::ops::{ConnPool, Fixture, Op, RouterClients, Target};
use crate::stack::{Bouncer, Router};
use std::sync::Arc;

/// How big and how long each scenario runs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Settings {
    /// Measured seconds per cell (after a warm-up).
    pub seconds: f64,
    /// Concurrencies of the hot-tenant scenario.
    pub callers: Vec<usize>,
    /// Tenants (with databases) of the many-tenant scenario, over two servers.
    pub many_tenants: usize,
    /// Callers of the many-tenant scenario.
    pub many_callers: usize,
    /// Measured seconds per cell of the many-tenant scenario: long enough that which
    /// tenants are rarely called can be told (a short trace flatters the best fixed choice).
    pub many_seconds: f64,
    /// Fresh tenants per mode in the cold-start scenario.
    pub cold_tenants: usize,
    /// Routes the memory scenario caches.
    pub routes: usize,
    /// Warm pools the memory scenario opens.
    pub warm_pools: usize,
    /// Tenants the fleet-backup scenario backs up, over two servers.
    pub backup_tenants: usize,
    /// Of those, how many get traffic meanwhile.
    pub backup_traffic_tenants: usize,
    /// PostgreSQL on CPUs of its own, everything else on the others (`--pin-postgres`).
    pub pin: Option<crate::pin::Cpus>,
}

impl Settings {
    pub fn full() -> Settings {
        Settings {
            seconds: 10.0,
            callers: vec![1, 8, 32],
            many_tenants: 2000,
            many_callers: 32,
            many_seconds: 60.0,
            cold_tenants: 40,
            routes: 10_000,
            warm_pools: 1000,
            backup_tenants: 1000,
            backup_traffic_tenants: 100,
            pin: None,
        }
    }

    pub fn quick() -> Settings {
        Settings {
            seconds: 2.0,
            many_tenants: 200,
            many_seconds: 3.0,
            cold_tenants: 10,
            warm_pools: 200,
            backup_tenants: 100,
            backup_traffic_tenants: 20,
            ..Settings::full()
        }
    }
}

/// One call of `op` to each tenant, `parallel` at a time (warms pools and connections);
/// returns how many failed.
pub async fn touch_all(
    target: &Arc<Target>,
    tenants: &Arc<Vec<Fixture>>,
    parallel: usize,
) -> usize {
    let mut tasks = tokio::task::JoinSet::new();
    for caller in 0..parallel {
        let (target, tenants) = (Arc::clone(target), Arc::clone(tenants));
        tasks.spawn(async move {
            let mut failed = 0;
            for f in tenants.iter().skip(caller).step_by(parallel) {
                if target
                    .call(caller, Op::GetLead, f, f.conversations[0])
                    .await
                    .is_err()
                {
                    failed += 1;
                }
            }
            failed
        });
    }
    let mut failed = 0;
    while let Some(done) = tasks.join_next().await {
        failed += done.unwrap_or(1);
    }
    failed
}

/// Seeds every route's database (`leads` leads with a conversation each), `parallel` at a
/// time; fixtures in route order, `index` = position.
pub async fn seed_all(
    routes: &[proto::control::v1::Route],
    leads: i64,
    parallel: usize,
) -> anyhow::Result<Vec<Fixture>> {
    each_route(routes, parallel, move |i, route| async move {
        crate::ops::seed(i, &route, leads).await
    })
    .await
}

/// Empties the tenants' event outboxes (before a router cell). Every mode's writes leave
/// their events in the tenant's outbox (the schema's triggers), but only the router relays
/// them: left there, the baselines' events would be relayed during the router's cell, work
/// that is not the router's calls'.
pub async fn empty_outboxes(
    routes: &[proto::control::v1::Route],
    parallel: usize,
) -> anyhow::Result<()> {
    each_route(routes, parallel, |_, route| async move {
        crate::ops::empty_outbox(&route).await
    })
    .await?;
    Ok(())
}

/// `f` on every route, `parallel` at a time; the results in the routes' order.
async fn each_route<T, F, Fut>(
    routes: &[proto::control::v1::Route],
    parallel: usize,
    f: F,
) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize, proto::control::v1::Route) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let gate = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, route) in routes.iter().cloned().enumerate() {
        let gate = Arc::clone(&gate);
        let work = f(i, route);
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            Ok::<_, anyhow::Error>((i, work.await?))
        });
    }
    let mut out = Vec::with_capacity(routes.len());
    while let Some(done) = tasks.join_next().await {
        out.push(done??);
    }
    out.sort_by_key(|(i, _)| *i);
    Ok(out.into_iter().map(|(_, t)| t).collect())
}

/// The three ways to the same tenants: direct (prepared statements if `prepared`), through
/// `bouncer`, and through `router` with connections for `callers`.
pub async fn three_targets(
    routes: &[proto::control::v1::Route],
    prepared: bool,
    bouncer: &Bouncer,
    router: &Router,
    callers: usize,
    token: &str,
) -> anyhow::Result<[Target; 3]> {
    Ok([
        Target::Direct(ConnPool::new(routes, None, prepared, "loadgen-direct")?),
        Target::Bouncer(ConnPool::new(
            routes,
            Some(bouncer.port),
            false,
            "loadgen-bouncer",
        )?),
        Target::Router(RouterClients::new(router, callers, token).await?),
    ])
}
