//! Closed-loop callers, latency percentiles, Zipf sampling and connection sampling.

use crate::ops::{Fixture, Op, Target};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One measured cell: a mode at a concurrency.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Measured {
    pub mode: &'static str,
    pub callers: usize,
    pub ops: usize,
    pub errors: usize,
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// The first error seen, to say why when there are any.
    pub first_error: Option<String>,
    /// Measured calls per tenant (by fixture index): the run's trace, for the best
    /// possible connection hit ratio.
    #[serde(skip)]
    pub tenant_calls: Vec<u64>,
}

/// Which tenant and conversation each call goes to.
pub enum Workload {
    /// Every call to one tenant; caller `i` on its own conversation.
    Hot(Fixture),
    /// Each call to a tenant drawn from a Zipf distribution over the fixtures (rank order).
    Zipf { tenants: Vec<Fixture>, zipf: Zipf },
}

/// `p` in `0..=1` of sorted samples.
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// `callers` closed-loop callers on `target` for `warmup` (not measured) then `seconds`.
pub async fn run(
    target: Arc<Target>,
    workload: Arc<Workload>,
    callers: usize,
    warmup: Duration,
    seconds: f64,
) -> Measured {
    let busy = tokio::time::sleep(Duration::from_secs_f64(seconds));
    run_while(target, workload, callers, warmup, busy).await.0
}

/// `callers` closed-loop callers on `target` for `warmup` (not measured), then measured
/// while `busy` runs (it starts after the warm-up); the cell and what `busy` returned.
pub async fn run_while<B: std::future::Future>(
    target: Arc<Target>,
    workload: Arc<Workload>,
    callers: usize,
    warmup: Duration,
    busy: B,
) -> (Measured, B::Output) {
    let measure_from = Instant::now() + warmup;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..callers {
        let (target, workload, stop) = (
            Arc::clone(&target),
            Arc::clone(&workload),
            Arc::clone(&stop),
        );
        tasks.spawn(async move {
            let mut rng = SplitMix(0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1));
            let (mut lat, mut errors, mut first_error, mut k) = (Vec::new(), 0, None, i);
            let mut calls: Vec<u64> = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let f = match &*workload {
                    Workload::Hot(f) => f,
                    Workload::Zipf { tenants, zipf } => &tenants[zipf.sample(&mut rng)],
                };
                let op = Op::nth(k);
                // Appends go to another conversation than the one listed: a closed loop
                // appends thousands of messages a second, and a listed conversation growing
                // that fast defeats the plans of unnamed statements (PgBouncer's) on data
                // whose statistics say 25 rows; see docs/BENCHMARKS.md.
                let len = f.conversations.len();
                let conversation = match op {
                    Op::AppendMessage => f.conversations[(i + len / 2) % len],
                    _ => f.conversations[i % len],
                };
                k += 1;
                let t0 = Instant::now();
                let result = target.call(i, op, f, conversation).await;
                if t0 >= measure_from && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    lat.push(t0.elapsed().as_secs_f64() * 1000.0);
                    if calls.len() <= f.index {
                        calls.resize(f.index + 1, 0);
                    }
                    calls[f.index] += 1;
                    if let Err(e) = result {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            (lat, errors, first_error, calls)
        });
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let output = busy.await;
    let seconds = measure_from.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut all, mut errors, mut first_error) = (Vec::new(), 0, None);
    let mut tenant_calls: Vec<u64> = Vec::new();
    while let Some(Ok((l, e, fe, calls))) = tasks.join_next().await {
        all.extend(l);
        errors += e;
        first_error = first_error.or(fe);
        if tenant_calls.len() < calls.len() {
            tenant_calls.resize(calls.len(), 0);
        }
        for (t, c) in calls.into_iter().enumerate() {
            tenant_calls[t] += c;
        }
    }
    all.sort_by(|a, b| a.total_cmp(b));
    let measured = Measured {
        mode: target.name(),
        callers,
        ops: all.len(),
        errors,
        ops_per_sec: all.len() as f64 / seconds,
        p50_ms: pct(&all, 0.5),
        p95_ms: pct(&all, 0.95),
        p99_ms: pct(&all, 0.99),
        first_error,
        tenant_calls,
    };
    (measured, output)
}

/// A small deterministic generator (SplitMix64): no dependency, reproducible runs.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Zipf over ranks `0..n` with exponent `s`: rank `k` drawn with weight `1/(k+1)^s`.
pub struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, s: f64) -> Zipf {
        let mut total = 0.0;
        let cumulative = (1..=n)
            .map(|k| {
                total += (k as f64).powf(-s);
                total
            })
            .collect();
        Zipf { cumulative }
    }

    pub fn sample(&self, rng: &mut SplitMix) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        let x = rng.next_f64() * total;
        self.cumulative
            .partition_point(|c| *c < x)
            .min(self.cumulative.len().saturating_sub(1))
    }

    /// Share of draws that go to the `top` most frequent ranks.
    pub fn mass(&self, top: usize) -> f64 {
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        match top {
            0 => 0.0,
            _ => self.cumulative.get(top - 1).map_or(1.0, |c| c / total),
        }
    }
}

/// Samples, on each server, how many client connections to tenant databases exist (from
/// `pg_stat_activity`, every [`SAMPLE_EVERY`]) until stopped; returns the most seen per server.
pub struct ConnectionSampler {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<(i64, i64)>>>,
}

/// How often the servers' connections are counted.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// Client backends of tenant databases whose `application_name` is like `$1`. The backends
/// are listed first and their databases' names matched after: with the name filter beside
/// the join, the planner (which expects one row from `pg_stat_get_activity`) scanned every
/// tenant database's name for every backend, 2.7 s a count with 500 backends and 1,000
/// databases, and the counting backend took a fifth of a core per server from every cell
/// run beside a thousand tenant databases.
const COUNT_TENANT_BACKENDS: &str = "WITH b AS MATERIALIZED (SELECT datname FROM pg_stat_activity \
       WHERE backend_type = 'client backend' AND application_name LIKE $1) \
     SELECT count(*) FROM b WHERE datname ~ '^tenant_[0-9]+_g[0-9]+$'";

/// Sessions ever opened to tenant databases on a server (`pg_stat_database.sessions`).
const SESSIONS: &str =
    "SELECT coalesce(sum(sessions), 0)::int8 FROM pg_stat_database WHERE datname ~ '^tenant_[0-9]+_g[0-9]+$'";

impl ConnectionSampler {
    /// Counts backends whose `application_name` starts with `app` (empty: every tenant
    /// database's client backend).
    pub async fn start(servers: &[pg_harness::PgServer], app: &str) -> anyhow::Result<Self> {
        let (stop, watch) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for pg in servers {
            let client = pg.connect("postgres").await?;
            let mut watch = watch.clone();
            let pattern = format!("{app}%");
            tasks.push(tokio::spawn(async move {
                let sessions_before: i64 = client.query_one(SESSIONS, &[]).await?.get(0);
                let count = client.prepare(COUNT_TENANT_BACKENDS).await?;
                let mut max = 0i64;
                loop {
                    let n: i64 = client.query_one(&count, &[&pattern]).await?.get(0);
                    max = max.max(n);
                    tokio::select! {
                        _ = watch.changed() => {
                            // Backends report their session when their stats are flushed.
                            tokio::time::sleep(Duration::from_millis(1200)).await;
                            let after: i64 = client.query_one(SESSIONS, &[]).await?.get(0);
                            return Ok((max, after - sessions_before));
                        }
                        _ = tokio::time::sleep(SAMPLE_EVERY) => {}
                    }
                }
            }));
        }
        Ok(ConnectionSampler { stop, tasks })
    }

    /// Stops sampling; per server, the most connections seen and how many were opened.
    pub async fn finish(self) -> anyhow::Result<Vec<(i64, i64)>> {
        let _ = self.stop.send(true);
        let mut out = Vec::new();
        for t in self.tasks {
            out.push(t.await??);
        }
        Ok(out)
    }
}

/// The share of calls that would find an open connection if each server kept its `k` most
/// called tenants connected (one connection each) for the whole run: the best any fixed
/// choice does on this trace. `server_of[t]` is tenant `t`'s server.
pub fn best_hit_ratio(calls: &[u64], server_of: &[usize], k: usize) -> f64 {
    let total: u64 = calls.iter().sum();
    if total == 0 {
        return f64::NAN;
    }
    let servers = server_of.iter().copied().max().map_or(0, |m| m + 1);
    let mut hits = 0u64;
    for s in 0..servers {
        let mut on: Vec<u64> = calls
            .iter()
            .enumerate()
            .filter(|(t, _)| server_of.get(*t) == Some(&s))
            .map(|(_, &c)| c)
            .collect();
        on.sort_unstable_by(|a, b| b.cmp(a));
        hits += on.iter().take(k).sum::<u64>();
    }
    hits as f64 / total as f64
}

/// The hit ratio of the best fixed choice knowing the traffic's distribution rather than a
/// run's trace: each server's `k` connections kept for its `k` most probable tenants (tenant
/// `i` is the Zipf rank `i + 1`). A short trace flatters the trace-based figure: it keeps
/// the tenants that happened to be called, which no policy can know in advance.
pub fn expected_best_hit_ratio(zipf: &Zipf, server_of: &[usize], k: usize) -> f64 {
    let servers = server_of.iter().copied().max().map_or(0, |m| m + 1);
    let mut hit = 0.0;
    for s in 0..servers {
        // Ranks come in order of probability: a server's first k tenants are its most likely.
        for i in server_of
            .iter()
            .enumerate()
            .filter(|(_, &on)| on == s)
            .map(|(i, _)| i)
            .take(k)
        {
            hit += zipf.mass(i + 1) - zipf.mass(i);
        }
    }
    hit
}

/// The hit ratio of an ideal online choice on `traces` traces drawn from the distribution
/// (their mean): each server keeps its `k` connections for the tenants called most so far,
/// counted exactly since each tenant's first call (every tenant starts with the one call that
/// warmed it), and on a miss closes the least called of them; one connection per tenant,
/// calls one at a time, nothing else opening connections. `warm` calls come first and count
/// for the choice, not in the ratio; then `calls` are measured. Unlike the best fixed choice,
/// a policy can reach this: it knows only the calls made so far.
pub fn online_lfu_hit_ratio(
    zipf: &Zipf,
    server_of: &[usize],
    k: usize,
    warm: usize,
    calls: usize,
    traces: u64,
) -> f64 {
    if calls == 0 || traces == 0 || k == 0 {
        return f64::NAN;
    }
    let servers = server_of.iter().copied().max().map_or(0, |m| m + 1);
    let mut hits = 0usize;
    for trace in 0..traces {
        let mut rng = SplitMix(0x5EED ^ trace);
        let mut count = vec![1u64; server_of.len()];
        let mut kept: Vec<Vec<usize>> = vec![Vec::with_capacity(k); servers];
        for n in 0..warm + calls {
            let t = zipf.sample(&mut rng).min(server_of.len().saturating_sub(1));
            count[t] += 1;
            let on = &mut kept[server_of[t]];
            let hit = on.contains(&t);
            if !hit {
                if on.len() == k {
                    // The least called so far (the first of equals) gives its place.
                    let coldest = (0..on.len()).min_by_key(|&i| count[on[i]]).unwrap_or(0);
                    on.swap_remove(coldest);
                }
                on.push(t);
            }
            if hit && n >= warm {
                hits += 1;
            }
        }
    }
    hits as f64 / (calls as u64 * traces) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_best_hit_ratio_sums_each_servers_most_likely() {
        let z = Zipf::new(4, 1.0);
        // Masses 1, 1/2, 1/3, 1/4 over 25/12; servers 0, 1, 0, 1; one kept each: 1 + 1/2.
        let got = expected_best_hit_ratio(&z, &[0, 1, 0, 1], 1);
        assert!((got - 1.5 / (25.0 / 12.0)).abs() < 1e-12, "{got}");
        assert!((expected_best_hit_ratio(&z, &[0, 1, 0, 1], 2) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn best_hit_ratio_keeps_each_servers_most_called() {
        // Server 0: 10, 5, 1; server 1: 8, 1. Two kept per server: 10 + 5 + 8 + 1 of 25.
        let calls = [10, 5, 1, 8, 1];
        let server_of = [0, 0, 0, 1, 1];
        assert!((best_hit_ratio(&calls, &server_of, 2) - 24.0 / 25.0).abs() < 1e-12);
        assert!((best_hit_ratio(&calls, &server_of, 1) - 18.0 / 25.0).abs() < 1e-12);
        assert!(best_hit_ratio(&[], &[], 3).is_nan());
    }

    #[test]
    fn online_lfu_reaches_the_best_fixed_choice_only_on_long_traces() {
        let z = Zipf::new(2000, 1.1);
        let server_of: Vec<usize> = (0..2000).map(|i| i % 2).collect();
        let best = expected_best_hit_ratio(&z, &server_of, 80);
        // Learning the ranks costs hits: on a short trace the online choice is well behind
        // the best fixed one, on a long one it comes close, and it never beats it by more
        // than the noise of a finite trace.
        let short = online_lfu_hit_ratio(&z, &server_of, 80, 0, 2_000, 3);
        let long = online_lfu_hit_ratio(&z, &server_of, 80, 0, 400_000, 1);
        assert!(short < best - 0.03, "short {short} vs best {best}");
        assert!(
            long > best - 0.01 && long < best + 0.005,
            "long {long} vs best {best}"
        );
        // One connection for two tenants: a call hits only when the one before it was to the
        // same tenant (a miss must take the connection), p0^2 + p1^2.
        let two = Zipf::new(2, 3.0);
        let (p0, p1) = (two.mass(1), 1.0 - two.mass(1));
        let r = online_lfu_hit_ratio(&two, &[0, 0], 1, 100, 20_000, 1);
        assert!((r - (p0 * p0 + p1 * p1)).abs() < 0.015, "{r} vs {p0} {p1}");
        assert!(online_lfu_hit_ratio(&two, &[0, 0], 1, 0, 0, 1).is_nan());
    }

    #[test]
    fn zipf_draws_follow_the_weights() {
        let z = Zipf::new(2000, 1.1);
        // Share of the top ranks from the closed form: 1/k^1.1 summed and normalised.
        let h: f64 = (1..=2000).map(|k| (k as f64).powf(-1.1)).sum();
        assert!((z.mass(1) - 1.0 / h).abs() < 1e-12);
        assert!((z.mass(2000) - 1.0).abs() < 1e-12);
        let mut rng = SplitMix(7);
        let n = 200_000;
        let mut top10 = 0;
        for _ in 0..n {
            let r = z.sample(&mut rng);
            assert!(r < 2000);
            if r < 10 {
                top10 += 1;
            }
        }
        let share = top10 as f64 / n as f64;
        assert!(
            (share - z.mass(10)).abs() < 0.01,
            "{share} vs {}",
            z.mass(10)
        );
    }

    #[tokio::test]
    async fn the_sampler_counts_only_its_apps_backends_on_tenant_databases() {
        let pg = pg_harness::shared();
        let tenant_db = format!("tenant_{}_g9", std::process::id());
        let admin = pg.connect("postgres").await.unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {tenant_db}"))
            .await
            .unwrap();
        let open = |db: &str, app: &str| {
            let mut cfg = pg.config(db);
            cfg.application_name(app);
            async move {
                let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
                tokio::spawn(conn);
                client
            }
        };
        // Two of the app's on a tenant database; another app's there, the app's elsewhere.
        let _held = [
            open(&tenant_db, "sampled-app-1").await,
            open(&tenant_db, "sampled-app-2").await,
            open(&tenant_db, "other-app").await,
            open("postgres", "sampled-app-3").await,
        ];
        let sampler = ConnectionSampler::start(std::slice::from_ref(pg), "sampled-app")
            .await
            .unwrap();
        tokio::time::sleep(SAMPLE_EVERY * 5).await;
        let later = open(&tenant_db, "sampled-app-4").await;
        tokio::time::sleep(SAMPLE_EVERY * 5).await;
        let sampled = sampler.finish().await.unwrap();
        drop(later);
        assert_eq!(sampled.len(), 1);
        // The two, then the one opened while sampling; never the other app's or elsewhere.
        assert_eq!(sampled[0].0, 3, "most of the app's backends seen at once");
    }

    #[test]
    fn percentiles_of_sorted_samples() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(pct(&v, 0.5), 51.0);
        assert_eq!(pct(&v, 0.99), 99.0);
        assert_eq!(pct(&v, 1.0), 100.0);
        assert!(pct(&[], 0.5).is_nan());
    }
}
