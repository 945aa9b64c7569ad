//! Load generator: the same domain operations direct to PostgreSQL, through PgBouncer and
//! through the router, at several concurrencies; prints Markdown tables with ratios and
//! writes `target/bench/results.json`. Run it through `scripts/bench.sh`.
#![allow(clippy::print_stdout)]

mod ops;
mod stack;

use anyhow::Result;
use ops::{Caller, Fixture, Op};
use std::time::{Duration, Instant};

/// Connections the router's tenant pool and PgBouncer's pool may use for the hot tenant.
const POOL: usize = 16;

struct Args {
    seconds: f64,
    callers: Vec<usize>,
    out: std::path::PathBuf,
}

fn args() -> Result<Args> {
    let raw: Vec<String> = std::env::args().collect();
    let get = |name: &str| {
        raw.iter()
            .position(|a| a == name)
            .and_then(|i| raw.get(i + 1))
            .cloned()
    };
    let quick = raw.iter().any(|a| a == "--quick");
    let seconds = get("--seconds")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(if quick { 2.0 } else { 10.0 });
    let callers = match get("--callers") {
        Some(list) => list
            .split(',')
            .map(|c| c.parse())
            .collect::<Result<Vec<usize>, _>>()?,
        None => vec![1, 8, 32],
    };
    let out = get("--out")
        .map(Into::into)
        .unwrap_or_else(|| "target/bench/results.json".into());
    Ok(Args {
        seconds,
        callers,
        out,
    })
}

#[derive(Debug, Clone)]
struct Measured {
    mode: &'static str,
    callers: usize,
    ops: usize,
    errors: usize,
    throughput: f64,
    p50: f64,
    p95: f64,
    p99: f64,
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn run(
    mode: &'static str,
    callers: Vec<Caller>,
    fixture: &Fixture,
    seconds: f64,
) -> Measured {
    let n = callers.len();
    let warmup = Instant::now() + Duration::from_millis(500);
    let end = warmup + Duration::from_secs_f64(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, mut caller) in callers.into_iter().enumerate() {
        let mut f = fixture.clone();
        f.conversations = vec![fixture.conversations[i % fixture.conversations.len()]];
        tasks.spawn(async move {
            let ops = [Op::GetLead, Op::AppendMessage, Op::ListMessages];
            let (mut lat, mut errors, mut k) = (Vec::new(), 0usize, i);
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let op = ops[k % ops.len()];
                k += 1;
                let t0 = Instant::now();
                let ok = caller.call(op, &f).await.is_ok();
                if t0 >= warmup {
                    lat.push(t0.elapsed().as_secs_f64() * 1000.0);
                    if !ok {
                        errors += 1;
                    }
                }
            }
            (lat, errors)
        });
    }
    let (mut all, mut errors) = (Vec::new(), 0);
    while let Some(Ok((l, e))) = tasks.join_next().await {
        all.extend(l);
        errors += e;
    }
    all.sort_by(|a, b| a.total_cmp(b));
    Measured {
        mode,
        callers: n,
        ops: all.len(),
        errors,
        throughput: all.len() as f64 / seconds,
        p50: pct(&all, 0.5),
        p95: pct(&all, 0.95),
        p99: pct(&all, 0.99),
    }
}

async fn fixture(
    stack: &mut stack::Stack,
    slug: &str,
) -> Result<(Fixture, tokio_postgres::Config)> {
    let route = stack.tenant(slug).await?;
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(u16::try_from(route.port)?)
        .user(&route.role)
        .password(&route.password)
        .dbname(&route.database);
    let c = ops::connect(&cfg).await?;
    // One lead and conversation per possible caller: writers do not queue on one row lock.
    let mut conversations = Vec::new();
    let mut first_lead = 0;
    for i in 0..64i64 {
        let wa_id = format!("55119{i:08}");
        let lead: i64 = c
            .query_one(
                "INSERT INTO leads (wa_id, nome) VALUES ($1, 'Carga') RETURNING id",
                &[&wa_id],
            )
            .await?
            .get(0);
        if i == 0 {
            first_lead = lead;
        }
        let conversation: i64 = c
            .query_one(
                "INSERT INTO conversas (lead_id) VALUES ($1) RETURNING id",
                &[&lead],
            )
            .await?
            .get(0);
        c.execute(
            "INSERT INTO mensagens (conversa_id, direcao, conteudo) \
             SELECT $1, 'entrada', 'msg ' || g FROM generate_series(1, 25) g",
            &[&conversation],
        )
        .await?;
        conversations.push(conversation);
    }
    Ok((
        Fixture {
            slug: slug.into(),
            lead: first_lead,
            conversations,
        },
        cfg,
    ))
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = args()?;
    let mut stack = stack::Stack::start(POOL).await?;
    let (hot, direct_cfg) = fixture(&mut stack, "bench-hot").await?;
    let route = stack.tenant("bench-cold").await?;
    let hot_route = stack
        .directory
        .resolve(stack::admin_req(
            proto::control::v1::ResolveRequest {
                key: Some(proto::control::v1::resolve_request::Key::Slug(
                    "bench-hot".into(),
                )),
            },
            stack::DIRECTORY,
        ))
        .await?
        .into_inner();
    let bouncer_port = stack.start_pgbouncer(&[hot_route, route], POOL)?;
    // A fresh config: `port()` appends, it does not replace.
    let mut bouncer_cfg = tokio_postgres::Config::new();
    bouncer_cfg
        .host("127.0.0.1")
        .port(bouncer_port)
        .user(direct_cfg.get_user().unwrap_or_default())
        .password(direct_cfg.get_password().unwrap_or_default())
        .dbname(direct_cfg.get_dbname().unwrap_or_default());
    let token = stack.token()?;

    let mut results = Vec::new();
    for &n in &a.callers {
        let mut direct = Vec::new();
        for _ in 0..n {
            direct.push(Caller::direct(&direct_cfg).await?);
        }
        results.push(run("direct", direct, &hot, a.seconds).await);
        let mut bouncer = Vec::new();
        for _ in 0..n {
            let client = ops::connect(&bouncer_cfg)
                .await
                .map_err(|e| anyhow::anyhow!("pgbouncer: {e:?}"))?;
            bouncer.push(Caller::Bouncer { client });
        }
        results.push(run("pgbouncer", bouncer, &hot, a.seconds).await);
        let mut router = Vec::new();
        let channels: Vec<_> = {
            let mut v = Vec::new();
            for _ in 0..n.div_ceil(8) {
                let ch = tonic::transport::Channel::from_shared(stack.router_grpc.clone())?
                    .tcp_nodelay(true)
                    .connect()
                    .await;
                v.push(ch.map_err(|e| anyhow::anyhow!("router at {}: {e:?}", stack.router_grpc))?);
            }
            v
        };
        for i in 0..n {
            let ch = channels[i % channels.len()].clone();
            router.push(Caller::Router {
                leads: proto::domain::v1::leads_client::LeadsClient::new(ch.clone()),
                conv: proto::domain::v1::conversations_client::ConversationsClient::new(ch),
                token: token.clone(),
            });
        }
        results.push(run("router", router, &hot, a.seconds).await);
    }

    println!("### One hot tenant (GetLead, AppendMessage, ListMessages in equal parts; {POOL}-connection pools)\n");
    println!(
        "| callers | mode | ops/s | p50 | p95 | p99 | errors | router/direct | router/pgbouncer |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for &n in &a.callers {
        let get = |m: &str| results.iter().find(|r| r.callers == n && r.mode == m);
        let (Some(d), Some(b), Some(r)) = (get("direct"), get("pgbouncer"), get("router")) else {
            continue;
        };
        for x in [d, b, r] {
            let ratios = if x.mode == "router" {
                format!(
                    "{:.2}x | {:.2}x",
                    r.throughput / d.throughput,
                    r.throughput / b.throughput
                )
            } else {
                " | ".into()
            };
            println!(
                "| {} | {} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {} | {ratios} |",
                x.callers, x.mode, x.throughput, x.p50, x.p95, x.p99, x.errors
            );
        }
    }
    let json = serde_json::json!({
        "hot_tenant": results.iter().map(|r| serde_json::json!({
            "mode": r.mode, "callers": r.callers, "ops": r.ops, "errors": r.errors,
            "ops_per_sec": r.throughput, "p50_ms": r.p50, "p95_ms": r.p95, "p99_ms": r.p99,
        })).collect::<Vec<_>>(),
    });
    if let Some(dir) = a.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&a.out, serde_json::to_vec_pretty(&json)?)?;
    drop(stack);
    Ok(())
}
