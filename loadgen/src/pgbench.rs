//! pgbench beside the load generator, direct and through the same PgBouncer, so a broken
//! baseline shows itself: select-only (`-S`) on a pgbench database, and the load
//! generator's own statement mix on the hot tenant's database (as the tenant). The load
//! generator's PgBouncer row is checked against pgbench's ratio to direct on the same mix.

use crate::ops::{Fixture, APPEND, APPEND_TEXT, GET_LEAD, LIST, LIST_LIMIT};
use anyhow::{anyhow, Context, Result};
use proto::control::v1::Route;
use std::path::PathBuf;

/// The pgbench database (`pgbench -i -s 1`) on one server.
pub struct PgbenchDb {
    pub port: u16,
    pub database: String,
}

/// What pgbench runs, on which database, as whom.
pub struct Job {
    /// `select-only` (pgbench's `-S`) or `our mix` (names rows and connections).
    pub script: &'static str,
    database: String,
    user: String,
    password: String,
    /// pgbench's script arguments.
    args: Vec<String>,
}

impl PgbenchDb {
    /// `pgbench -S` on this database, as the server's superuser.
    pub fn select_only(&self) -> Job {
        Job {
            script: "select-only",
            database: self.database.clone(),
            user: pg_harness::SUPERUSER.into(),
            password: pg_harness::SUPERUSER_PASSWORD.into(),
            args: vec!["-S".into()],
        }
    }
}

/// The load generator's hot-tenant mix as pgbench scripts (removed when dropped): GetLead,
/// AppendMessage and ListMessages in equal parts (by weight, where ours take turns), the
/// same statements on the tenant's database as the tenant, client `k` listing its own
/// conversation and appending to another, as caller `k` does (`measure.rs`).
pub struct Mix {
    dir: PathBuf,
    route: Route,
}

impl Mix {
    /// Writes the scripts for `fixture` (the hot tenant's, at `route`).
    pub fn write(route: &Route, fixture: &Fixture) -> Result<Mix> {
        let dir = std::env::temp_dir().join(format!("loadgen-pgbench-mix-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mix = Mix {
            dir,
            route: route.clone(),
        };
        for (file, text) in mix_scripts(fixture)? {
            std::fs::write(mix.dir.join(file), text)?;
        }
        Ok(mix)
    }

    /// pgbench running the mix.
    pub fn job(&self) -> Job {
        let args = MIX_FILES
            .iter()
            .flat_map(|f| {
                [
                    "-f".to_string(),
                    format!("{}@1", self.dir.join(f).display()),
                ]
            })
            .collect();
        Job {
            script: "our mix",
            database: self.route.database.clone(),
            user: self.route.role.clone(),
            password: self.route.password.clone(),
            args,
        }
    }
}

impl Drop for Mix {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const MIX_FILES: [&str; 3] = ["get_lead.sql", "append.sql", "list.sql"];

/// The mix's script files (name, text): the load generator's statements with pgbench
/// variables for their parameters.
fn mix_scripts(f: &Fixture) -> Result<[(&'static str, String); 3]> {
    let n = f.conversations.len() as i64;
    let first = *f
        .conversations
        .first()
        .context("the fixture has no conversations")?;
    if f.conversations
        .iter()
        .zip(first..)
        .any(|(c, want)| *c != want)
    {
        return Err(anyhow!(
            "the fixture's conversation ids are not consecutive"
        ));
    }
    let half = n / 2;
    Ok([
        (
            MIX_FILES[0],
            format!(
                "\\set lead {}\n{};\n",
                f.lead,
                GET_LEAD.replace("$1", ":lead")
            ),
        ),
        (
            MIX_FILES[1],
            format!(
                "\\set conv {first} + (:client_id + {half}) % {n}\n{};\n",
                APPEND
                    .replace("$1", ":conv")
                    .replace("$2", &format!("'{APPEND_TEXT}'"))
            ),
        ),
        (
            MIX_FILES[2],
            format!(
                "\\set conv {first} + :client_id % {n}\n{};\n",
                LIST.replace("$1", ":conv")
                    .replace("$2", "0")
                    .replace("$3", &LIST_LIMIT.to_string())
            ),
        ),
    ])
}

/// One pgbench run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PgbenchRow {
    /// `select-only` or `our mix`.
    pub script: &'static str,
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

/// Runs `job` with `-M protocol -c clients` for `seconds` against `port` (the server's or
/// PgBouncer's), sampling the server's connections to the database every
/// [`crate::measure::SAMPLE_EVERY`].
pub async fn run(
    pg: &pg_harness::PgServer,
    job: &Job,
    target: &'static str,
    port: u16,
    protocol: &'static str,
    clients: usize,
    seconds: f64,
) -> Result<PgbenchRow> {
    let sampler = pg.connect("postgres").await?;
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let database = job.database.clone();
    // PgBouncer names its server connections after the client (and keeps them between
    // runs): each run counts only its own.
    let app = format!(
        "pgbench-{}-{target}-{protocol}-{clients}",
        job.script.replace(' ', "-")
    );
    let sampled_app = app.clone();
    let sampling = tokio::spawn(async move {
        // Prepared once, as the scenarios' sampler (`measure.rs`).
        let count = sampler
            .prepare(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE backend_type = 'client backend' AND datname = $1 \
                 AND application_name = $2",
            )
            .await?;
        let mut max = 0i64;
        loop {
            let n: i64 = sampler
                .query_one(&count, &[&database, &sampled_app])
                .await?
                .get(0);
            max = max.max(n);
            tokio::select! {
                _ = stopped.changed() => return Ok::<_, anyhow::Error>(max),
                _ = tokio::time::sleep(crate::measure::SAMPLE_EVERY) => {}
            }
        }
    });
    let out = tokio::process::Command::new(pgbench_bin()?)
        .args(["-n", "-M", protocol])
        .args(&job.args)
        .args(["-h", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .arg("-c")
        .arg(clients.to_string())
        .arg("-j")
        .arg(clients.min(2).to_string())
        .arg("-T")
        .arg((seconds.ceil() as u64).max(1).to_string())
        .args(["-U", &job.user, &job.database])
        .env("PGPASSWORD", &job.password)
        .env("PGAPPNAME", &app)
        .output()
        .await
        .context("running pgbench")?;
    let _ = stop.send(true);
    let server_connections = sampling.await??;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(anyhow!(
            "pgbench ({}, {target}, {protocol}, {clients} clients) failed: {}{}",
            job.script,
            text,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(PgbenchRow {
        script: job.script,
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
    fn the_mix_scripts_run_our_statements_with_pgbench_variables() {
        let f = Fixture {
            index: 0,
            slug: "hot".into(),
            lead: 7,
            conversations: (11..75).collect(),
        };
        let [(_, get), (_, append), (_, list)] = mix_scripts(&f).unwrap();
        assert_eq!(
            get,
            format!("\\set lead 7\n{};\n", GET_LEAD.replace("$1", ":lead"))
        );
        assert!(
            append.starts_with("\\set conv 11 + (:client_id + 32) % 64\n"),
            "{append}"
        );
        assert!(append.contains("VALUES (:conv, NULL, 'saida', 'text', 'mensagem de carga'"));
        assert!(append.contains("WHERE id = :conv AND"), "{append}");
        assert!(
            list.starts_with("\\set conv 11 + :client_id % 64\n"),
            "{list}"
        );
        assert!(list.contains("conversa_id = :conv AND id > 0 ORDER BY id LIMIT 21;"));
        for s in [&get, &append, &list] {
            assert!(!s.contains('$'), "a parameter left: {s}");
        }
        let gap = Fixture {
            conversations: vec![11, 13],
            ..f
        };
        assert!(mix_scripts(&gap).is_err());
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
