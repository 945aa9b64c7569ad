//! Cold start: the first call to a tenant nobody has called yet, the three ways.

use super::{seed_all, three_targets, Settings};
use crate::measure::pct;
use crate::ops::Op;
use crate::report::{ms, ratio_cells, Report};
use crate::stack::{Bouncer, Stack};
use anyhow::Result;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, serde::Serialize)]
pub struct Cell {
    pub mode: &'static str,
    pub tenants: usize,
    pub errors: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub max_ms: f64,
    /// The same tenants' second call, for contrast.
    pub warm_p50_ms: f64,
}

/// Runs the scenario.
pub async fn scenario(stack: &Stack, s: &Settings, report: &mut Report) -> Result<()> {
    let n = s.cold_tenants;
    let routes = stack.tenants("cold", 3 * n, 4).await?;
    let fixtures = seed_all(&routes, 1, 4).await?;
    let bouncer = Bouncer::start(&routes, 4)?;
    // A router that has seen no tenant yet.
    let router = stack.router(&[])?;
    let token = stack.token()?;
    let targets = three_targets(&routes, false, &bouncer, &router, 1, &token).await?;
    let mut cells = Vec::new();
    for (k, target) in targets.into_iter().enumerate() {
        let target = Arc::new(target);
        let (mut first, mut second, mut errors) = (Vec::new(), Vec::new(), 0);
        // Each mode on its own tenants: nothing of them is warm anywhere.
        for f in &fixtures[k * n..(k + 1) * n] {
            for samples in [&mut first, &mut second] {
                let t0 = Instant::now();
                if target
                    .call(0, Op::GetLead, f, f.conversations[0])
                    .await
                    .is_err()
                {
                    errors += 1;
                }
                samples.push(t0.elapsed().as_secs_f64() * 1000.0);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        first.sort_by(|a, b| a.total_cmp(b));
        second.sort_by(|a, b| a.total_cmp(b));
        cells.push(Cell {
            mode: target.name(),
            tenants: n,
            errors,
            p50_ms: pct(&first, 0.5),
            p95_ms: pct(&first, 0.95),
            max_ms: pct(&first, 1.0),
            warm_p50_ms: pct(&second, 0.5),
        });
    }
    report.line(&format!(
        "### Cold start\n\nThe first call (GetLead) to each of {n} tenants nobody had called, \
         one at a time, per mode on its own tenants. Direct: a new connection and one query. \
         PgBouncer: a new client connection to PgBouncer, which opens a server connection. \
         Router (started fresh): route from the control plane, pool built, connection opened, \
         statement prepared, query. \"second call\" is the same tenant right after.\n"
    ));
    report.line("| mode | tenants | first call p50 | p95 | max | second call p50 | errors | router/direct (p50) | router/pgbouncer (p50) |");
    report.line("|---|---|---|---|---|---|---|---|---|");
    let p50 = |m: &str| cells.iter().find(|c| c.mode == m).map(|c| c.p50_ms);
    for c in &cells {
        let ratios = ratio_cells(c.mode, c.p50_ms, p50("direct"), p50("pgbouncer"));
        report.line(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {ratios} |",
            c.mode,
            c.tenants,
            ms(c.p50_ms),
            ms(c.p95_ms),
            ms(c.max_ms),
            ms(c.warm_p50_ms),
            c.errors
        ));
    }
    report.line("");
    report.put("cold_start", &cells);
    Ok(())
}
