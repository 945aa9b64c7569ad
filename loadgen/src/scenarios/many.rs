//! Many tenants over two servers, Zipf traffic, the router held to each server's budget.

use super::{empty_outboxes, seed_all, touch_all, Settings};
use crate::measure::{
    best_hit_ratio, expected_best_hit_ratio, online_lfu_hit_ratio, run_while, ConnectionSampler,
    Measured, Workload, Zipf, SAMPLE_EVERY,
};
use crate::ops::{ConnPool, Fixture, RouterClients, Target};
use crate::report::Report;
use crate::stack::{Bouncer, Stack, BUDGET};
use anyhow::Result;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Zipf exponent of the traffic.
const S: f64 = 1.1;
/// PgBouncer's pool per database and the router's per tenant.
const PER_TENANT: usize = 4;

/// One mode's cell plus what the scenario reports beyond latency.
#[derive(Debug, serde::Serialize)]
pub struct Cell {
    #[serde(flatten)]
    pub measured: Measured,
    /// Most connections to tenant databases seen on each server.
    pub max_connections: Vec<i64>,
    /// New connections per second to tenant databases (both servers), measured window
    /// and warm-up.
    pub connections_opened_per_sec: f64,
    /// Pool cache hit ratio during the measured window (router only).
    pub pool_hit_ratio: Option<f64>,
    /// Calls that found an open connection, during the measured window (router only).
    pub connection_hit_ratio: Option<f64>,
    /// The inbox's visits to relay the writes' events, per second, and the share of them that found the connection open (router only).
    pub visits: Option<(f64, f64)>,
    /// The best hit ratio a fixed choice could have had on this mode's own trace: each
    /// server's budget spent on its most called tenants, one connection each.
    pub best_hit_ratio: f64,
    /// The hit ratio of an ideal online choice (exact call counts so far, least called
    /// closed first) on traces of this cell's length drawn from the distribution: what a
    /// policy that knows only the past can reach (router only).
    pub online_lfu_hit_ratio: Option<f64>,
    /// Seconds to touch every tenant once before measuring.
    pub warm_secs: f64,
    pub warm_failures: usize,
}

/// Runs the scenario; returns the tenants' fixtures (the memory scenario reuses them).
pub async fn scenario(stack: &Stack, s: &Settings, report: &mut Report) -> Result<Vec<Fixture>> {
    let n = s.many_tenants;
    let started = Instant::now();
    let routes = stack.tenants("many", n, 4).await?;
    let created = started.elapsed().as_secs_f64();
    let tenants = Arc::new(seed_all(&routes, 4, 4).await?);
    eprintln!("many tenants: {n} created in {created:.1} s, seeded");
    let zipf = Zipf::new(n, S);
    let (top10, top160) = (zipf.mass(10), zipf.mass(160));
    // Each tenant's server (by position in the stack), for the best hit ratio.
    let server_of: Vec<usize> = routes
        .iter()
        .map(|r| {
            stack
                .servers
                .iter()
                .position(|p| u32::from(p.port) == r.port)
                .unwrap_or(0)
        })
        .collect();
    let expected = expected_best_hit_ratio(&zipf, &server_of, BUDGET as usize);
    let workload = Arc::new(Workload::Zipf {
        tenants: tenants.to_vec(),
        zipf,
    });
    let token = stack.token()?;
    let warmup = Duration::from_secs(1);
    let callers = s.many_callers;
    let mut cells = Vec::new();
    for mode in ["direct", "pgbouncer", "router"] {
        // Each mode's connections are gone before the next starts (the sampler counts all).
        let mut bouncer = None;
        let mut router = None;
        let (target, app) = match mode {
            "direct" => (
                Target::Direct(ConnPool::new(&routes, None, true, "loadgen-direct")?),
                "loadgen-direct",
            ),
            "pgbouncer" => {
                let b = Bouncer::start(&routes, PER_TENANT)?;
                let t = Target::Bouncer(ConnPool::new(
                    &routes,
                    Some(b.port),
                    false,
                    "loadgen-bouncer",
                )?);
                bouncer = Some(b);
                // PgBouncer names its server connections after the latest client.
                (t, "")
            }
            _ => {
                // The baselines' events (and the seeds') are not the router's to relay.
                empty_outboxes(&routes, 8).await?;
                let r = stack.router(&[("POOLS__MAX_PER_TENANT", &PER_TENANT.to_string())])?;
                let t = Target::Router(RouterClients::new(&r, callers, &token).await?);
                router = Some(r);
                (t, "tenant-router")
            }
        };
        let target = Arc::new(target);
        let t0 = Instant::now();
        let warm_failures = touch_all(&target, &tenants, 8).await;
        let warm_secs = t0.elapsed().as_secs_f64();
        let sampler = ConnectionSampler::start(&stack.servers, app).await?;
        // The router's counters are read when the measured window starts and ends, so its
        // hit ratio covers the same calls as the trace the best fixed choice is computed on.
        let counts = || async {
            match &router {
                Some(r) => {
                    Ok::<_, anyhow::Error>(Some((pool_counts(r).await?, handed_counts(r).await?)))
                }
                None => Ok(None),
            }
        };
        let (measured, window) = run_while(
            Arc::clone(&target),
            Arc::clone(&workload),
            callers,
            warmup,
            async {
                let before = counts().await;
                tokio::time::sleep(Duration::from_secs_f64(s.many_seconds)).await;
                (before, counts().await)
            },
        )
        .await;
        let sampled = sampler.finish().await?;
        let max_connections: Vec<i64> = sampled.iter().map(|s| s.0).collect();
        let connections_opened_per_sec = sampled.iter().map(|s| s.1).sum::<i64>() as f64
            / (s.many_seconds + warmup.as_secs_f64());
        let ratio = |hit: f64, miss: f64| hit / (hit + miss).max(1.0);
        let (pool_hit_ratio, connection_hit_ratio, visits) = match (window.0?, window.1?) {
            (
                Some(((h0, m0), [(r0, o0), (xr0, xo0)])),
                Some(((h1, m1), [(r1, o1), (xr1, xo1)])),
            ) => (
                Some(ratio(h1 - h0, m1 - m0)),
                Some(ratio(r1 - r0, o1 - o0)),
                Some((
                    (xr1 - xr0 + xo1 - xo0) / s.many_seconds,
                    ratio(xr1 - xr0, xo1 - xo0),
                )),
            ),
            _ => (None, None, None),
        };
        let best_hit_ratio = best_hit_ratio(&measured.tenant_calls, &server_of, BUDGET as usize);
        let online_lfu_hit_ratio = router.is_some().then(|| {
            let zipf = Zipf::new(n, S);
            let warm = (measured.ops_per_sec * warmup.as_secs_f64()) as usize;
            online_lfu_hit_ratio(&zipf, &server_of, BUDGET as usize, warm, measured.ops, 3)
        });
        eprintln!(
            "many tenants: {mode}: {:.0} ops/s, {} errors, max connections {max_connections:?}",
            measured.ops_per_sec, measured.errors
        );
        cells.push(Cell {
            measured,
            max_connections,
            connections_opened_per_sec,
            pool_hit_ratio,
            connection_hit_ratio,
            visits,
            best_hit_ratio,
            online_lfu_hit_ratio,
            warm_secs,
            warm_failures,
        });
        drop(target);
        drop(router);
        drop(bouncer);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    report.line(&format!(
        "### Many tenants\n\n{n} tenants (a database each) over two PostgreSQL servers, {callers} \
         callers, each call to a tenant drawn from a Zipf distribution (s = {S}: the top 10 \
         tenants get {:.0}% of the calls, the top 160 {:.0}%), the same operation mix, {} s \
         after every tenant was called once and a 1 s warm-up. Router: budget {BUDGET} \
         connections per server, {PER_TENANT} per tenant. PgBouncer: {PER_TENANT} per database \
         (it has no per-server limit). Direct: connections kept per tenant, no limit. The \
         tenants' event outboxes are emptied before the router's cell (the baselines' and the \
         seeds' events are not its to relay). \"max conns\" is the most client connections to \
         tenant databases each server had (`pg_stat_activity`, sampled every {} ms). Creating \
         the {n} tenants through `CreateTenant` (4 at a time) took {created:.0} s.\n",
        top10 * 100.0,
        top160 * 100.0,
        s.many_seconds,
        SAMPLE_EVERY.as_millis(),
    ));
    let rows: Vec<Measured> = cells.iter().map(|c| c.measured.clone()).collect();
    report.modes_table(
        &rows,
        &[
            "max conns per server",
            "new conns/s",
            "pool hit ratio",
            "conn hit ratio",
            "best fixed (trace)",
        ],
        |m| {
            let c = cells.iter().find(|c| c.measured.mode == m.mode);
            vec![
                c.map(|c| format!("{:?}", c.max_connections))
                    .unwrap_or_default(),
                c.map(|c| format!("{:.0}", c.connections_opened_per_sec))
                    .unwrap_or_default(),
                c.and_then(|c| c.pool_hit_ratio)
                    .map(|h| format!("{:.2}%", h * 100.0))
                    .unwrap_or_default(),
                c.and_then(|c| c.connection_hit_ratio)
                    .map(|h| format!("{:.2}%", h * 100.0))
                    .unwrap_or_default(),
                c.map(|c| format!("{:.2}%", c.best_hit_ratio * 100.0))
                    .unwrap_or_default(),
            ]
        },
    );
    if let Some(r) = cells.iter().find(|c| c.measured.mode == "router") {
        if let Some(hit) = r.connection_hit_ratio {
            let gap = (r.best_hit_ratio - hit) * 100.0;
            report.line(&format!(
                "Connection hit ratio (calls that found their tenant's connection open): router \
                 {:.2}%; the best fixed choice on the router's own trace (each server's {BUDGET} \
                 connections kept for its {BUDGET} most called tenants) {:.2}%: {gap:.1} points \
                 {} (target: within 5). Knowing the distribution instead of the trace, the \
                 best fixed choice gets {:.2}% ({:.1} points from the router): a short trace \
                 flatters the trace-based figure, which keeps exactly the rarely called tenants \
                 that happened to be called. A policy knows only the calls made so far: the \
                 ideal one (each server's connections kept for the tenants called most so far, \
                 counted exactly, the least called closed on a miss; one connection per \
                 tenant, calls one at a time) gets {:.2}% on traces of this length drawn from \
                 the distribution ({:.1} points from the router). Not counted as calls: the \
                 inbox's visits to relay the writes' events, {:.0} a second, {:.2}% of which \
                 found the connection open.\n",
                hit * 100.0,
                r.best_hit_ratio * 100.0,
                if gap <= 5.0 {
                    "behind, met"
                } else {
                    "behind, MISSED"
                },
                expected * 100.0,
                (expected - hit) * 100.0,
                r.online_lfu_hit_ratio.unwrap_or(f64::NAN) * 100.0,
                (r.online_lfu_hit_ratio.unwrap_or(f64::NAN) - hit) * 100.0,
                r.visits.map_or(0.0, |v| v.0),
                r.visits.map_or(0.0, |v| v.1 * 100.0),
            ));
        }
    }
    report.put("many_tenants", &cells);
    Ok(tenants.to_vec())
}

/// Connections the router handed so far: `[to calls, to the inbox's visits]`, each
/// (reused, opened).
async fn handed_counts(r: &crate::stack::Router) -> Result<[(f64, f64); 2]> {
    const NAME: &str = "tenant_router_connections_handed_total";
    let mut out = [(0.0, 0.0); 2];
    for (i, u) in ["\"call\"", "\"inbox\""].into_iter().enumerate() {
        out[i] = (
            r.metric(NAME, &["\"reused\"", u]).await?,
            r.metric(NAME, &["\"opened\"", u]).await?,
        );
    }
    Ok(out)
}

/// The router's pool cache (hits, misses) so far.
async fn pool_counts(r: &crate::stack::Router) -> Result<(f64, f64)> {
    Ok((
        r.metric("tenant_router_pool_cache_total", &["\"hit\""])
            .await?,
        r.metric("tenant_router_pool_cache_total", &["\"miss\""])
            .await?,
    ))
}
