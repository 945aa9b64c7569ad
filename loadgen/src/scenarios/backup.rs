//! Router traffic while the whole fleet is backed up: the same Zipf load undisturbed, while
//! plain `pg_dump` dumps every tenant database (the baseline: what any logical backup costs
//! the servers), while the control plane runs `backup --all` (encrypted, checksummed, into
//! the store), and undisturbed again.

use super::{seed_all, touch_all, Settings};
use crate::measure::{run, run_while, ConnectionSampler, Measured, Workload, Zipf};
use crate::ops::{RouterClients, Target};
use crate::report::{ms, Report};
use crate::stack::{admin_req, Stack};
use anyhow::{bail, Context, Result};
use proto::control::v1 as cp;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Router pool per tenant (as in the many-tenant scenario).
const PER_TENANT: usize = 4;

/// One row of the table.
#[derive(Debug, serde::Serialize)]
struct Row {
    run: &'static str,
    #[serde(flatten)]
    measured: Measured,
    /// Wall time of the fleet job (none for undisturbed runs).
    job_secs: Option<f64>,
    /// Tenants the job backed up.
    job_tenants: usize,
    /// Most backup connections seen at once on each server.
    backup_connections: Vec<i64>,
}

/// Runs the scenario.
pub async fn scenario(stack: &Stack, s: &Settings, report: &mut Report) -> Result<()> {
    let n = s.backup_tenants;
    let started = Instant::now();
    let routes = stack.tenants("fleet", n, 4).await?;
    let tenants = Arc::new(seed_all(&routes, 4, 4).await?);
    eprintln!(
        "fleet backup: {n} tenants created and seeded in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Traffic goes to the busiest `backup_traffic_tenants` (a fleet is mostly idle); the
    // backups cover every tenant.
    let busy = s.backup_traffic_tenants.clamp(1, n);
    let workload = Arc::new(Workload::Zipf {
        tenants: tenants[..busy].to_vec(),
        zipf: Zipf::new(busy, 1.1),
    });
    let router = stack.router(&[("POOLS__MAX_PER_TENANT", &PER_TENANT.to_string())])?;
    let callers = s.many_callers;
    let target = Arc::new(Target::Router(
        RouterClients::new(&router, callers, &stack.token()?).await?,
    ));
    let warm_failures = touch_all(&target, &Arc::new(tenants[..busy].to_vec()), 8).await;
    if warm_failures > 0 {
        bail!("{warm_failures} tenants failed their first call");
    }
    // The backups run in a control-plane process of their own, as in production.
    let (_plane, mut admin) = stack.control_plane_process().await?;
    let warmup = Duration::from_secs(1);
    let mut rows = Vec::new();
    let undisturbed = |run: &'static str, measured: Measured| Row {
        run,
        measured,
        job_secs: None,
        job_tenants: 0,
        backup_connections: Vec::new(),
    };

    let m = run(
        Arc::clone(&target),
        Arc::clone(&workload),
        callers,
        warmup,
        s.seconds,
    )
    .await;
    eprintln!("fleet backup: undisturbed {:.0} ops/s", m.ops_per_sec);
    rows.push(undisturbed("undisturbed (before)", m));

    let sampler = ConnectionSampler::start(&stack.servers, "pg_dump").await?;
    let (m, dumped) = run_while(
        Arc::clone(&target),
        Arc::clone(&workload),
        callers,
        warmup,
        plain_dumps(&routes, stack),
    )
    .await;
    let (secs, dumped) = dumped?;
    let peaks = sampler.finish().await?.iter().map(|p| p.0).collect();
    eprintln!(
        "fleet backup: pg_dump of {dumped} tenants in {secs:.1} s, {:.0} ops/s",
        m.ops_per_sec
    );
    rows.push(Row {
        run: "plain `pg_dump -Fc` to /dev/null, 1 per server (baseline)",
        measured: m,
        job_secs: Some(secs),
        job_tenants: dumped,
        backup_connections: peaks,
    });

    let sampler = ConnectionSampler::start(&stack.servers, "control-plane").await?;
    let token = stack.admin_token().to_string();
    let job = async {
        let t0 = Instant::now();
        let r = admin
            .backup_tenants(admin_req(
                cp::BackupRequest {
                    all: true,
                    ..Default::default()
                },
                &token,
            ))
            .await
            .context("backup --all")?
            .into_inner();
        anyhow::Ok((t0.elapsed().as_secs_f64(), r))
    };
    let (m, backed) = run_while(
        Arc::clone(&target),
        Arc::clone(&workload),
        callers,
        warmup,
        job,
    )
    .await;
    let (secs, backed) = backed?;
    let peaks = sampler.finish().await?.iter().map(|p| p.0).collect();
    let ok = backed
        .backups
        .iter()
        .filter(|b| b.state == cp::BackupState::Ok as i32)
        .count();
    if ok != n || !backed.failed.is_empty() {
        bail!(
            "backup --all: {ok} of {n} ok, {} failed: {:?}",
            backed.failed.len(),
            backed.failed.first()
        );
    }
    eprintln!(
        "fleet backup: backup --all of {ok} tenants in {secs:.1} s, {:.0} ops/s",
        m.ops_per_sec
    );
    rows.push(Row {
        run: "`tenantctl backup --all` (concurrency 4, 1 per server)",
        measured: m,
        job_secs: Some(secs),
        job_tenants: ok,
        backup_connections: peaks,
    });

    let m = run(
        Arc::clone(&target),
        Arc::clone(&workload),
        callers,
        warmup,
        s.seconds,
    )
    .await;
    rows.push(undisturbed("undisturbed (after)", m));

    let base = (rows[0].measured.ops_per_sec + rows[3].measured.ops_per_sec) / 2.0;
    report.line(&format!(
        "### Router traffic during a fleet backup\n\n{n} tenants over two servers (each a fresh \
         tenant database with 4 leads), all backed up; {callers} callers sending GetLead, \
         AppendMessage and ListMessages to {busy} of them (Zipf(1.1) tenant choice) through one \
         router (pool of {PER_TENANT} per tenant); the backups run in a second control-plane \
         process. The ratio is against the \
         mean of the two undisturbed runs ({base:.0} ops/s). Backup connections: the most seen \
         at once on each server (a control-plane backup holds two: the snapshot and pg_dump).\n",
    ));
    report.line("| run | fleet job | per tenant | router ops/s | ratio | p50 | p99 | errors | backup connections per server |");
    report.line("|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let job = r.job_secs.map_or("—".to_string(), |t| {
            format!("{} tenants in {t:.1} s", r.job_tenants)
        });
        let each = r.job_secs.map_or("—".to_string(), |t| {
            format!("{:.0} ms", 1000.0 * t / r.job_tenants.max(1) as f64)
        });
        let conns = if r.backup_connections.is_empty() {
            "—".to_string()
        } else {
            format!("{:?}", r.backup_connections)
        };
        report.line(&format!(
            "| {} | {job} | {each} | {:.0} | {:.2}x | {} | {} | {} | {conns} |",
            r.run,
            r.measured.ops_per_sec,
            r.measured.ops_per_sec / base,
            ms(r.measured.p50_ms),
            ms(r.measured.p99_ms),
            r.measured.errors,
        ));
    }
    report.line("");
    report.put("fleet_backup", &rows);
    Ok(())
}

/// `pg_dump -Fc` of every route's database to /dev/null as the superuser, one at a time per
/// server (all servers at once); the wall time and how many were dumped.
async fn plain_dumps(routes: &[cp::Route], stack: &Stack) -> Result<(f64, usize)> {
    let bin = pg_harness::pg_bindir()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .join("pg_dump");
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for pg in &stack.servers {
        let port = pg.port;
        let urls: Vec<String> = routes
            .iter()
            .filter(|r| r.port == u32::from(port))
            .map(|r| pg.url(&r.database))
            .collect();
        let bin = bin.clone();
        tasks.spawn(async move {
            for url in &urls {
                let status = tokio::process::Command::new(&bin)
                    .args(["-Fc", "--no-sync", "-f", "/dev/null", "--dbname"])
                    .arg(url)
                    .status()
                    .await?;
                if !status.success() {
                    bail!("pg_dump failed ({status})");
                }
            }
            anyhow::Ok(urls.len())
        });
    }
    let mut dumped = 0;
    while let Some(done) = tasks.join_next().await {
        dumped += done??;
    }
    Ok((t0.elapsed().as_secs_f64(), dumped))
}
