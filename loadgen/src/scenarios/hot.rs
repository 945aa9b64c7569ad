//! One hot tenant at several concurrencies, the three ways.

use super::{seed_all, three_targets, Settings};
use crate::measure::{run, Measured, Workload};
use crate::report::Report;
use crate::stack::{Bouncer, Stack};
use anyhow::Result;
use std::sync::Arc;
use std::time::Duration;

/// Connections the router's tenant pool and PgBouncer's pool may use for the hot tenant.
const POOL: usize = 16;

/// Runs the scenario; returns its cells.
pub async fn scenario(stack: &Stack, s: &Settings, report: &mut Report) -> Result<Vec<Measured>> {
    let routes = stack.tenants("hot", 1, 1).await?;
    // One lead and conversation per possible caller: writers do not queue on one row lock.
    let fixture = seed_all(&routes, 64, 1).await?.remove(0);
    let bouncer = Bouncer::start(&routes, POOL)?;
    let router = stack.router(&[("POOLS__MAX_PER_TENANT", &POOL.to_string())])?;
    let token = stack.token()?;
    let workload = Arc::new(Workload::Hot(fixture));
    let warmup = Duration::from_millis(500);
    let mut cells = Vec::new();
    for &n in &s.callers {
        let targets = three_targets(&routes, true, &bouncer, &router, n, &token).await?;
        for target in targets {
            let m = run(
                Arc::new(target),
                Arc::clone(&workload),
                n,
                warmup,
                s.seconds,
            )
            .await;
            eprintln!(
                "hot tenant: {} callers {}: {:.0} ops/s",
                n, m.mode, m.ops_per_sec
            );
            cells.push(m);
        }
    }
    report.line(&format!(
        "### One hot tenant\n\nGetLead, AppendMessage and ListMessages (20 rows) in equal parts, \
         closed loop, {} s per cell after a 0.5 s warm-up; each caller on its own conversation. \
         Direct: one connection per caller with prepared statements. PgBouncer: transaction \
         mode, pool of {POOL}, unnamed statements. Router: pool of {POOL} for the tenant, one \
         HTTP/2 connection per eight callers.\n",
        s.seconds
    ));
    report.modes_table(&cells, &[], |_| vec![]);
    report.put("hot_tenant", &cells);
    Ok(cells)
}
