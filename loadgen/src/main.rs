//! Load generator: the same domain operations direct to PostgreSQL, through PgBouncer and
//! through the router, in four scenarios (one hot tenant, many tenants, cold start, router
//! memory); prints Markdown tables with ratios and writes `target/bench/results.json`. Run
//! it through `scripts/bench.sh`.
#![allow(clippy::print_stdout)]

mod measure;
mod ops;
mod pgbench;
mod pin;
mod report;
mod scenarios;
mod stack;

use anyhow::{bail, Context, Result};
use scenarios::Settings;

struct Args {
    settings: Settings,
    only: Option<Vec<String>>,
    out: std::path::PathBuf,
    machine: String,
}

const SCENARIOS: [&str; 5] = ["hot", "many", "cold", "memory", "backup"];
/// What a run without `--only` measures (the fleet backup is asked for by name).
const DEFAULT: [&str; 4] = ["hot", "many", "cold", "memory"];

/// The flags `loadgen` takes.
const USAGE: &str = "flags: --quick --pin-postgres --seconds N --many-seconds N --callers 1,8,32 --tenants N \
                 --cold N --routes N --warm-pools N --backup-tenants N --backup-traffic N --only hot,many,cold,memory,backup \
                 --out FILE --machine TEXT";

fn args() -> Result<Args> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let mut settings = if raw.iter().any(|a| a == "--quick") {
        Settings::quick()
    } else {
        Settings::full()
    };
    let (mut only, mut out, mut machine) =
        (None, "target/bench/results.json".into(), String::new());
    let mut it = raw.iter();
    while let Some(flag) = it.next() {
        if flag == "--quick" {
            continue;
        }
        if flag == "--pin-postgres" {
            settings.pin = Some(pin::Cpus::halves()?);
            continue;
        }
        if flag == "--help" || flag == "-h" {
            println!("loadgen {USAGE}");
            std::process::exit(0);
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<usize>()
                .with_context(|| format!("{flag}: not a number: {value}"))
        };
        match flag.as_str() {
            "--seconds" => settings.seconds = value.parse().context("--seconds: not a number")?,
            "--many-seconds" => {
                settings.many_seconds = value.parse().context("--many-seconds: not a number")?
            }
            "--callers" => {
                settings.callers = value
                    .split(',')
                    .map(|c| c.parse())
                    .collect::<Result<_, _>>()
                    .context("--callers: a comma-separated list of numbers")?
            }
            "--tenants" => settings.many_tenants = number()?,
            "--cold" => settings.cold_tenants = number()?,
            "--routes" => settings.routes = number()?,
            "--warm-pools" => settings.warm_pools = number()?,
            "--backup-tenants" => settings.backup_tenants = number()?,
            "--backup-traffic" => settings.backup_traffic_tenants = number()?,
            "--only" => {
                let list: Vec<String> = value.split(',').map(str::to_string).collect();
                if let Some(bad) = list.iter().find(|s| !SCENARIOS.contains(&s.as_str())) {
                    bail!("--only: unknown scenario {bad:?} (one of {SCENARIOS:?})");
                }
                only = Some(list);
            }
            "--out" => out = value.into(),
            "--machine" => machine = value.clone(),
            _ => bail!("unknown flag {flag}; {USAGE}"),
        }
    }
    if settings.many_tenants < 2
        || settings.backup_tenants < 2
        || settings.seconds <= 0.0
        || settings.many_seconds <= 0.0
        || settings.callers.is_empty()
    {
        bail!("--tenants and --backup-tenants must be at least 2, --seconds and --many-seconds positive, --callers not empty");
    }
    Ok(Args {
        settings,
        only,
        out,
        machine,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = args()?;
    let wants = |s: &str| match &a.only {
        Some(only) => only.iter().any(|x| x == s),
        None => DEFAULT.contains(&s),
    };
    let s = &a.settings;
    // Room for the baselines' unbounded connections: one or more per tenant.
    let max_connections = u32::try_from(s.many_tenants.max(2 * s.warm_pools) + 300)?;
    if let Some(cpus) = &s.pin {
        // Before anything starts: what this process starts inherits its CPUs.
        pin::this_process(cpus)?;
    }
    let stack = stack::Stack::start(2, max_connections).await?;
    if let Some(cpus) = &s.pin {
        for dir in stack.postgres_dirs() {
            pin::server(cpus, dir)?;
        }
    }
    let mut report = report::Report::default();
    report.put("machine", &a.machine);
    report.put("settings", s);
    if wants("hot") {
        scenarios::hot::scenario(&stack, s, &mut report).await?;
    }
    let mut many = Vec::new();
    if wants("many") || wants("memory") {
        many = scenarios::many::scenario(&stack, s, &mut report).await?;
    }
    if wants("cold") {
        scenarios::cold::scenario(&stack, s, &mut report).await?;
    }
    if wants("memory") {
        scenarios::memory::scenario(&stack, s, &many, &mut report).await?;
    }
    if wants("backup") {
        scenarios::backup::scenario(&stack, s, &mut report).await?;
    }
    print!("{}", report.markdown);
    if let Some(dir) = a.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&a.out, serde_json::to_vec_pretty(&report.json)?)?;
    Ok(())
}
