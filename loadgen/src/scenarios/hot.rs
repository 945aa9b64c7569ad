//! One hot tenant at several concurrencies, the three ways.

use super::{empty_outboxes, seed_all, three_targets, Settings};
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
    let select_only = bench_db.select_only();
    // pgbench running our own statements on the hot tenant's database, as the tenant.
    let mix = pgbench::Mix::write(&routes[0], &fixture)?;
    let our_mix = mix.job();
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
            if app == "tenant-router" {
                empty_outboxes(&routes, 1).await?;
            }
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
        let server_port = bench_db.port;
        for (job, target, port, protocols) in [
            (
                &select_only,
                "direct",
                server_port,
                &["simple", "extended", "prepared"][..],
            ),
            (
                &select_only,
                "pgbouncer",
                bouncer.port,
                &["simple", "extended"][..],
            ),
            (
                &our_mix,
                "direct",
                server_port,
                &["extended", "prepared"][..],
            ),
            (&our_mix, "pgbouncer", bouncer.port, &["extended"][..]),
        ] {
            for &protocol in protocols {
                let row = pgbench::run(server, job, target, port, protocol, n, s.seconds).await?;
                eprintln!(
                    "hot tenant: pgbench ({}) -M {protocol} {target} {n} clients: {:.0} tps",
                    job.script, row.tps
                );
                bench_rows.push(row);
            }
        }
    }
    let (title, cpus) = match &s.pin {
        Some(c) => (
            ", PostgreSQL on CPUs of its own",
            format!(
                " Every PostgreSQL server (the tenant's and the ingest server) on CPU {}; the load \
                 generator, the control plane, the router, PgBouncer and pgbench on CPU {} \
                 (`--pin-postgres`): the database's CPU is its own, as where the router and its \
                 callers run on other hosts than PostgreSQL.",
                c.postgres, c.rest
            ),
        ),
        None => ("", String::new()),
    };
    report.line(&format!(
        "### One hot tenant{title}\n\nGetLead, AppendMessage and ListMessages (20 rows) in equal parts, \
         closed loop, {} s per cell after a 0.5 s warm-up; each caller on its own conversation. \
         Direct: one connection per caller with prepared statements. PgBouncer: transaction \
         mode, pool of {POOL}, unnamed statements. Router: pool of {POOL} for the tenant, one \
         HTTP/2 connection per eight callers; its AppendMessage calls also relay their events \
         to the event log (the message pipeline: at most one relay of the tenant every 25 ms), \
         which direct and PgBouncer do not do (their events stay in the tenant's outbox, emptied \
         before each router cell so the router relays only its own).{cpus}\n",
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
    /// pgbench running our statements through PgBouncer (extended protocol, unnamed
    /// statements, as ours) over the same direct with prepared statements (as ours): the
    /// ratio ours is checked against.
    pub pgbench_mix: f64,
    /// The same ratio for `pgbench -S` (one primary-key select), for comparison.
    pub pgbench_select_only: f64,
    /// Our direct and PgBouncer rows over pgbench's on the same statements and protocol.
    pub ours_over_pgbench: (f64, f64),
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
            // Like for like: our direct row prepares its statements, our PgBouncer row sends
            // unnamed ones (transaction mode keeps no prepared statements).
            let tps = |script: &str, target: &str, protocol: &str| {
                bench
                    .iter()
                    .find(|r| {
                        r.clients == n
                            && r.script == script
                            && r.target == target
                            && r.protocol == protocol
                    })
                    .map(|r| r.tps)
            };
            let ratio = |script: &str| {
                Some(tps(script, "pgbouncer", "extended")? / tps(script, "direct", "prepared")?)
            };
            let ours = ops("pgbouncer")? / ops("direct")?;
            let pgbench_mix = ratio("our mix")?;
            Some(BaselineCheck {
                callers: n,
                ours,
                pgbench_mix,
                pgbench_select_only: ratio("select-only")?,
                ours_over_pgbench: (
                    ops("direct")? / tps("our mix", "direct", "prepared")?,
                    ops("pgbouncer")? / tps("our mix", "pgbouncer", "extended")?,
                ),
                passed: pgbench::within_check(ours, pgbench_mix),
            })
        })
        .collect()
}

fn report_pgbench(report: &mut Report, rows: &[PgbenchRow], checks: &[BaselineCheck], pool: usize) {
    report.line(&format!(
        "pgbench beside it, direct and through the same PgBouncer (transaction mode, pool of \
         {pool}), `-j` up to 2: `select-only` is `pgbench -S` (the built-in primary-key select on \
         a scale-1 database on the same server, as the superuser); `our mix` is our three \
         statements as pgbench scripts in equal parts, on the hot tenant's database as the \
         tenant, each client listing its own conversation and appending to another (as ours):\n"
    ));
    report.line("| clients | script | target | protocol | tps | latency avg | server conns | /direct prepared |");
    report.line("|---|---|---|---|---|---|---|---|");
    for r in rows {
        let prepared = rows
            .iter()
            .find(|d| {
                d.clients == r.clients
                    && d.script == r.script
                    && d.target == "direct"
                    && d.protocol == "prepared"
            })
            .map(|d| d.tps);
        let ratio = match prepared {
            Some(d) if d > 0.0 && !(r.target == "direct" && r.protocol == "prepared") => {
                format!("{:.2}x", r.tps / d)
            }
            _ => String::new(),
        };
        // pgbench's sessions are counted by application name; PgBouncer keeps its own
        // server connections open between runs.
        report.line(&format!(
            "| {} | {} | {} | {} | {:.0} | {:.3} ms | {} | {ratio} |",
            r.clients, r.script, r.target, r.protocol, r.tps, r.latency_ms, r.server_connections
        ));
    }
    report.line("");
    for c in checks {
        report.line(&format!(
            "Baseline check, {} callers: our PgBouncer row is {:.2}x our direct row; pgbench on \
             the same statements, PgBouncer (extended) over direct (prepared), is {:.2}x ({}). \
             With `pgbench -S` the same ratio is {:.2}x. Our rows over pgbench's on the same \
             statements: direct {:.2}x, PgBouncer {:.2}x.",
            c.callers,
            c.ours,
            c.pgbench_mix,
            if c.passed {
                "within 15%: passed"
            } else {
                "more than 15% apart: this run FAILED its baseline check"
            },
            c.pgbench_select_only,
            c.ours_over_pgbench.0,
            c.ours_over_pgbench.1,
        ));
    }
    report.line("");
}
