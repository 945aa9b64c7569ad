//! One hot tenant at several concurrencies, the three ways.

use super::{seed_all, three_targets, Settings};
use crate::measure::{run, ConnectionSampler, Measured, Workload};
use crate::pgbench::{self, PgbenchRow};
use crate::report::Report;
use crate::stack::{Bouncer, Stack};
use anyhow::{Context, Result};
use std::sync::Arc;
use std::time::Duration;

/// Connections the router's tenant pool and PgBouncer's pool may use for the hot tenant.
const POOL: usize = 16;

/// Runs the scenario; returns its cells.
pub async fn scenario(stack: &Stack, s: &Settings, report: &mut Report) -> Result<Vec<Measured>> {
    let routes = stack.tenants("hot", 1, 1).await?;
    // One lead and conversation per possible caller: writers do not queue on one row lock.
    let fixture = seed_all(&routes, 64, 1).await?.remove(0);
    // pgbench's database beside the hot tenant's, behind the same PgBouncer.
    let server = stack
        .servers
        .iter()
        .find(|p| u32::from(p.port) == routes[0].port)
        .context("the hot tenant's server")?;
    let bench_db = pgbench::init(server).await?;
    let bouncer = Bouncer::start_with(&routes, POOL, &[(&bench_db.database, bench_db.port)])?;
    let router = stack.router(&[("POOLS__MAX_PER_TENANT", &POOL.to_string())])?;
    let token = stack.token()?;
    let workload = Arc::new(Workload::Hot(fixture));
    let warmup = Duration::from_millis(500);
    let mut cells = Vec::new();
    let mut conns: Vec<(usize, &'static str, i64)> = Vec::new();
    let mut bench_rows: Vec<PgbenchRow> = Vec::new();
    for &n in &s.callers {
        let targets = three_targets(&routes, true, &bouncer, &router, n, &token).await?;
        for target in targets {
            let app = match target.name() {
                "direct" => "loadgen-direct",
                "pgbouncer" => "loadgen-bouncer",
                _ => "tenant-router",
            };
            let sampler = ConnectionSampler::start(&stack.servers, app).await?;
            let m = run(
                Arc::new(target),
                Arc::clone(&workload),
                n,
                warmup,
                s.seconds,
            )
            .await;
            let used = sampler.finish().await?.iter().map(|s| s.0).sum::<i64>();
            eprintln!(
                "hot tenant: {} callers {}: {:.0} ops/s, {used} server connections",
                n, m.mode, m.ops_per_sec
            );
            conns.push((n, m.mode, used));
            cells.push(m);
        }
        for (target, port, protocols) in [
            (
                "direct",
                bench_db.port,
                &["simple", "extended", "prepared"][..],
            ),
            ("pgbouncer", bouncer.port, &["simple", "extended"][..]),
        ] {
            for &protocol in protocols {
                let row =
                    pgbench::run(server, &bench_db, target, port, protocol, n, s.seconds).await?;
                eprintln!(
                    "hot tenant: pgbench -S -M {protocol} {target} {n} clients: {:.0} tps",
                    row.tps
                );
                bench_rows.push(row);
            }
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
    report.modes_table(&cells, &["server conns"], |m| {
        conns
            .iter()
            .find(|c| c.0 == m.callers && c.1 == m.mode)
            .map(|c| vec![c.2.to_string()])
            .unwrap_or_default()
    });
    let checks = baseline_checks(&cells, &bench_rows);
    report_pgbench(report, &bench_rows, &checks, POOL);
    report.put("hot_tenant", &cells);
    report.put("hot_tenant_pgbench", &bench_rows);
    report.put("hot_tenant_baseline_checks", &checks);
    Ok(cells)
}

/// The load generator's PgBouncer baseline against pgbench's at one concurrency.
#[derive(Debug, serde::Serialize)]
pub struct BaselineCheck {
    pub callers: usize,
    /// Our PgBouncer row over our direct row.
    pub ours: f64,
    /// pgbench through PgBouncer (extended protocol, unnamed statements, as ours) over
    /// pgbench direct with prepared statements (as ours).
    pub pgbench: f64,
    pub passed: bool,
}

fn baseline_checks(cells: &[Measured], bench: &[PgbenchRow]) -> Vec<BaselineCheck> {
    let mut groups: Vec<usize> = cells.iter().map(|c| c.callers).collect();
    groups.dedup();
    groups
        .into_iter()
        .filter_map(|n| {
            let ops = |mode: &str| {
                cells
                    .iter()
                    .find(|c| c.callers == n && c.mode == mode)
                    .map(|c| c.ops_per_sec)
            };
            let tps = |target: &str, protocol: &str| {
                bench
                    .iter()
                    .find(|r| r.clients == n && r.target == target && r.protocol == protocol)
                    .map(|r| r.tps)
            };
            // Like for like: our direct row prepares its statements, our PgBouncer row sends
            // unnamed ones (transaction mode keeps no prepared statements).
            let ours = ops("pgbouncer")? / ops("direct")?;
            let pgbench = tps("pgbouncer", "extended")? / tps("direct", "prepared")?;
            Some(BaselineCheck {
                callers: n,
                ours,
                pgbench,
                passed: pgbench::within_check(ours, pgbench),
            })
        })
        .collect()
}

fn report_pgbench(report: &mut Report, rows: &[PgbenchRow], checks: &[BaselineCheck], pool: usize) {
    report.line(&format!(
        "pgbench beside it (`pgbench -S`, the built-in select-only script on a scale-1 \
         database on the same server, `-j` up to 2), direct and through the same PgBouncer \
         (transaction mode, pool of {pool}):\n"
    ));
    report.line("| clients | target | protocol | tps | latency avg | server conns | /direct |");
    report.line("|---|---|---|---|---|---|---|");
    for r in rows {
        let direct = rows
            .iter()
            .find(|d| d.clients == r.clients && d.protocol == r.protocol && d.target == "direct")
            .map(|d| d.tps);
        // pgbench's direct sessions are counted by application name below; PgBouncer keeps
        // its own server connections open between runs.
        let ratio = match (r.target, direct) {
            ("pgbouncer", Some(d)) if d > 0.0 => format!("{:.2}x", r.tps / d),
            _ => String::new(),
        };
        report.line(&format!(
            "| {} | {} | {} | {:.0} | {:.3} ms | {} | {ratio} |",
            r.clients, r.target, r.protocol, r.tps, r.latency_ms, r.server_connections
        ));
    }
    report.line("");
    for c in checks {
        report.line(&format!(
            "Baseline check, {} callers: our PgBouncer row is {:.2}x our direct row, pgbench's is \
             {:.2}x ({}).",
            c.callers,
            c.ours,
            c.pgbench,
            if c.passed {
                "within 15%: passed"
            } else {
                "more than 15% apart: this run FAILED its baseline check"
            }
        ));
    }
    report.line("");
}
