//! Router memory: resident set with many routes cached, then with many warm pools.

use super::{touch_all, Settings};
use crate::ops::{Fixture, RouterClients, Target};
use crate::report::Report;
use crate::stack::Stack;
use anyhow::{anyhow, Result};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, serde::Serialize)]
pub struct Memory {
    pub routes_cached: f64,
    pub catalog_only_routes: usize,
    pub warm_pools: f64,
    pub connections: f64,
    pub rss_start_kib: u64,
    pub rss_routes_kib: u64,
    pub rss_pools_kib: u64,
    pub per_route_bytes: f64,
    pub per_warm_pool_bytes: f64,
}

/// Runs the scenario on the tenants the many-tenant scenario made (`warm` of them get a
/// pool); raises the servers' budgets in the catalog so every warm pool can keep its
/// connection, so it runs last.
pub async fn scenario(
    stack: &Stack,
    s: &Settings,
    warm: &[Fixture],
    report: &mut Report,
) -> Result<()> {
    let existing = stack.tenant_ids().await?.len();
    let catalog_only = s.routes.saturating_sub(existing);
    stack.catalog_only_tenants("mem", catalog_only).await?;
    let ids = stack.tenant_slugs().await?;
    let warm: Arc<Vec<Fixture>> = Arc::new(warm.iter().take(s.warm_pools).cloned().collect());
    let budget = i32::try_from(warm.len() / 2 + 100)?;
    stack.set_budget(budget).await?;
    let router = stack.router(&[("POOLS__MAX_PER_TENANT", "1"), ("POOLS__IDLE_SECS", "3600")])?;
    // Routes only: a token granted no tenant, naming tenants by slug, makes the router
    // resolve and cache each route (a slug says nothing about the id it may be granted),
    // then refuse the call before any pool or connection exists.
    let nobody = Arc::new(RouterClients::new(&router, 16, &stack.token_for(0)?).await?);
    // Settle the process (runtime, channels, first allocations) before the baseline.
    nobody.get_lead_code(0, &ids[0]).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_start_kib = router.rss_kib()?;
    let ids = Arc::new(ids);
    let mut tasks = tokio::task::JoinSet::new();
    for caller in 0..16 {
        let (nobody, ids) = (Arc::clone(&nobody), Arc::clone(&ids));
        tasks.spawn(async move {
            for id in ids.iter().skip(caller).step_by(16) {
                let code = nobody.get_lead_code(caller, id).await?;
                if code != tonic::Code::PermissionDenied {
                    return Err(anyhow!(
                        "tenant {id}: expected PERMISSION_DENIED, got {code:?}"
                    ));
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_routes_kib = router.rss_kib()?;
    let routes_cached = router.metric("tenant_router_routes_cached", &[]).await?;
    let target = Arc::new(Target::Router(
        RouterClients::new(&router, 8, &stack.token()?).await?,
    ));
    let failed = touch_all(&target, &warm, 8).await;
    if failed > 0 {
        return Err(anyhow!("{failed} calls failed warming pools"));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_pools_kib = router.rss_kib()?;
    let warm_pools = router.metric("tenant_router_pools_open", &[]).await?;
    let connections = router
        .metric("tenant_router_server_connections", &[])
        .await?;
    let m = Memory {
        routes_cached,
        catalog_only_routes: catalog_only,
        warm_pools,
        connections,
        rss_start_kib,
        rss_routes_kib,
        rss_pools_kib,
        per_route_bytes: (rss_routes_kib.saturating_sub(rss_start_kib) * 1024) as f64
            / ids.len() as f64,
        per_warm_pool_bytes: (rss_pools_kib.saturating_sub(rss_routes_kib) * 1024) as f64
            / warm.len().max(1) as f64,
    };
    eprintln!("memory: {m:?}");
    report.line(&format!(
        "### Router memory\n\nA fresh router (pools of one connection, budget raised to \
         {budget} per server) resolves and caches {} routes ({} of tenants with databases, \
         {catalog_only} catalog rows without one: 10,000 real databases would need ~75 GB), \
         then opens a pool with a warm connection for {} tenants. Resident set from \
         `/proc/<pid>/status`.\n",
        ids.len(),
        ids.len() - catalog_only,
        warm.len()
    ));
    report.line("| state | routes cached | pools open | connections | RSS | cost |");
    report.line("|---|---|---|---|---|---|");
    report.line(&format!(
        "| started, one call | 1 | 0 | 0 | {:.1} MiB | |",
        rss_start_kib as f64 / 1024.0
    ));
    report.line(&format!(
        "| routes cached | {routes_cached:.0} | 0 | 0 | {:.1} MiB | {:.1} KB per route |",
        rss_routes_kib as f64 / 1024.0,
        m.per_route_bytes / 1000.0
    ));
    report.line(&format!(
        "| pools warm | {routes_cached:.0} | {warm_pools:.0} | {connections:.0} | {:.1} MiB | {:.1} KB per warm pool |",
        rss_pools_kib as f64 / 1024.0,
        m.per_warm_pool_bytes / 1000.0
    ));
    report.line("");
    report.put("memory", &m);
    Ok(())
}
