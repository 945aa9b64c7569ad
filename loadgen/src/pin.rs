//! `--pin-postgres`: the run's PostgreSQL servers on one half of the machine's CPUs, the load
//! generator and everything it starts (control plane, routers, PgBouncer, pgbench) on the
//! other half. PostgreSQL's CPU is then its own, as where the router and its callers run on
//! other hosts than the database: the extra hop costs the database nothing.
//!
//! Uses util-linux's `taskset` (the workspace forbids `unsafe`, so no `sched_setaffinity`).
//! A PostgreSQL backend is forked from its postmaster and inherits its CPUs, so pinning each
//! postmaster and the processes it already started covers every later backend.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;

/// Which CPUs PostgreSQL gets and which the rest gets (`taskset` lists).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Cpus {
    pub postgres: String,
    pub rest: String,
}

impl Cpus {
    /// The machine's CPUs split in halves (the first half for PostgreSQL); at least two.
    pub fn halves() -> Result<Cpus> {
        let n = std::thread::available_parallelism()
            .context("--pin-postgres: cannot tell how many CPUs this machine has")?
            .get();
        if n < 2 {
            bail!("--pin-postgres needs at least 2 CPUs (this machine has {n})");
        }
        let half = n / 2;
        let list = |from: usize, to: usize| {
            if from == to {
                from.to_string()
            } else {
                format!("{from}-{to}")
            }
        };
        Ok(Cpus {
            postgres: list(0, half - 1),
            rest: list(half, n - 1),
        })
    }
}

/// Moves every thread of this process to the rest's CPUs; what it starts later inherits them.
pub fn this_process(cpus: &Cpus) -> Result<()> {
    taskset(&cpus.rest, std::process::id(), true)
}

/// Moves the PostgreSQL server whose cluster directory is `dir` (its postmaster and the
/// processes it has started) to PostgreSQL's CPUs.
pub fn server(cpus: &Cpus, dir: &Path) -> Result<()> {
    let pidfile = dir.join("data").join("postmaster.pid");
    let text = std::fs::read_to_string(&pidfile)
        .with_context(|| format!("--pin-postgres: reading {}", pidfile.display()))?;
    let postmaster: u32 = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("--pin-postgres: no pid in {}", pidfile.display()))?;
    taskset(&cpus.postgres, postmaster, false)?;
    for child in children(postmaster) {
        // A child may exit meanwhile (a finished backend): not an error.
        let _ = taskset(&cpus.postgres, child, false);
    }
    Ok(())
}

/// Processes whose parent is `parent`.
fn children(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    // After the command name (in parentheses, may hold spaces): state, ppid.
                    let rest = s.rsplit_once(')')?.1;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

fn taskset(cpus: &str, pid: u32, all_threads: bool) -> Result<()> {
    let mut cmd = Command::new("taskset");
    if all_threads {
        cmd.arg("-a");
    }
    let out = cmd
        .args(["-p", "-c", cpus, &pid.to_string()])
        .output()
        .context("--pin-postgres: running taskset (util-linux)")?;
    if !out.status.success() {
        bail!(
            "--pin-postgres: taskset -c {cpus} for process {pid} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
