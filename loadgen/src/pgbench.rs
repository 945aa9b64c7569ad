//! pgbench beside the load generator: select-only (`-S`), simple and extended protocol,
//! direct and through the same PgBouncer, so a broken baseline shows itself. The load
//! generator's PgBouncer row is checked against pgbench's ratio to direct.

use anyhow::{anyhow, Context, Result};
use std::time::Duration;

/// The pgbench database (`pgbench -i -s 1`) on one server.
pub struct PgbenchDb {
    pub port: u16,
    pub database: String,
}

/// One pgbench run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PgbenchRow {
    /// `direct` or `pgbouncer`.
    pub target: &'static str,
    /// `simple`, `extended` or `prepared` (pgbench's `-M`).
    pub protocol: &'static str,
    pub clients: usize,
    pub tps: f64,
    pub latency_ms: f64,
    /// Most server connections to the pgbench database seen while it ran.
    pub server_connections: i64,
}

fn pgbench_bin() -> Result<std::path::PathBuf> {
    Ok(pg_harness::pg_bindir()
        .map_err(|e| anyhow!("{e}"))?
        .join("pgbench"))
}

/// Creates and fills the pgbench database on `pg` (scale 1: 100,000 accounts).
pub async fn init(pg: &pg_harness::PgServer) -> Result<PgbenchDb> {
    let database = pg.fresh_database("pgbench").await?;
    let out = tokio::process::Command::new(pgbench_bin()?)
        .args(["-i", "-s", "1", "-q", "-h", "127.0.0.1", "-p"])
        .arg(pg.port.to_string())
        .args(["-U", pg_harness::SUPERUSER, &database])
        .env("PGPASSWORD", pg_harness::SUPERUSER_PASSWORD)
        .output()
        .await
        .context("running pgbench -i")?;
    if !out.status.success() {
        return Err(anyhow!(
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(PgbenchDb {
        port: pg.port,
        database,
    })
}

/// Runs `pgbench -S -M protocol -c clients` for `seconds` against `port` (the server's or
/// PgBouncer's), sampling the server's connections to the database every 20 ms.
pub async fn run(
    pg: &pg_harness::PgServer,
    db: &PgbenchDb,
    target: &'static str,
    port: u16,
    protocol: &'static str,
    clients: usize,
    seconds: f64,
) -> Result<PgbenchRow> {
    let sampler = pg.connect("postgres").await?;
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let database = db.database.clone();
    // PgBouncer names its server connections after the client (and keeps them between
    // runs): each run counts only its own.
    let app = format!("pgbench-{target}-{protocol}-{clients}");
    let sampled_app = app.clone();
    let sampling = tokio::spawn(async move {
        let mut max = 0i64;
        loop {
            let n: i64 = sampler
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE backend_type = 'client backend' AND datname = $1 \
                     AND application_name = $2",
                    &[&database, &sampled_app],
                )
                .await?
                .get(0);
            max = max.max(n);
            tokio::select! {
                _ = stopped.changed() => return Ok::<_, anyhow::Error>(max),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    });
    let out = tokio::process::Command::new(pgbench_bin()?)
        .args(["-n", "-S", "-M", protocol, "-h", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .arg("-c")
        .arg(clients.to_string())
        .arg("-j")
        .arg(clients.min(2).to_string())
        .arg("-T")
        .arg((seconds.ceil() as u64).max(1).to_string())
        .args(["-U", pg_harness::SUPERUSER, &db.database])
        .env("PGPASSWORD", pg_harness::SUPERUSER_PASSWORD)
        .env("PGAPPNAME", &app)
        .output()
        .await
        .context("running pgbench")?;
    let _ = stop.send(true);
    let server_connections = sampling.await??;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(anyhow!(
            "pgbench ({target}, {protocol}, {clients} clients) failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(PgbenchRow {
        target,
        protocol,
        clients,
        tps: field(&text, "tps = ")?,
        latency_ms: field(&text, "latency average = ")?,
        server_connections,
    })
}

/// The number after `prefix` on pgbench's summary line that starts with it.
fn field(text: &str, prefix: &str) -> Result<f64> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no {prefix:?} in pgbench's output: {text}"))
}

/// Whether the load generator's PgBouncer-to-direct ratio is within 15% of pgbench's.
pub fn within_check(ours: f64, pgbench: f64) -> bool {
    pgbench > 0.0 && (ours / pgbench - 1.0).abs() <= 0.15 + 1e-9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pgbench_summary_lines() {
        let out = "transaction type: <builtin: select only>\nscaling factor: 1\n\
                   latency average = 0.081 ms\ninitial connection time = 2.1 ms\n\
                   tps = 12345.678901 (without initial connection time)\n";
        assert_eq!(field(out, "tps = ").unwrap(), 12345.678901);
        assert_eq!(field(out, "latency average = ").unwrap(), 0.081);
        assert!(field("nothing", "tps = ").is_err());
    }

    #[test]
    fn the_check_allows_fifteen_percent_either_way() {
        assert!(within_check(0.85, 1.0));
        assert!(within_check(1.1, 1.0));
        assert!(!within_check(0.5, 1.0));
        assert!(!within_check(0.11, 0.8));
        assert!(!within_check(1.0, 0.0));
    }
}
