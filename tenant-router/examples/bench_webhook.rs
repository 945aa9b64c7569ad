//! Webhook ingest benchmark (run it through `scripts/bench-webhook.sh`).
//!
//! Starts a throwaway PostgreSQL server, the control plane (in-process, real gRPC) and the
//! real tenant-router binary, provisions tenants with WhatsApp numbers, then posts signed
//! Meta deliveries from concurrent keep-alive HTTP/1.1 senders spread over every tenant.
//! Prints messages per second and the time to answer (p50/p95/p99) as a Markdown table.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod bench_stack;

use bench_stack::{arg, delivery, pct, Conn, Stack};
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() {
    let tenants = arg("--tenants", 100);
    let senders = arg("--senders", 32);
    let seconds = arg("--seconds", 15);
    let per = arg("--per-delivery", 1);
    let budget = arg("--budget", 80) as u32;

    let stack = Stack::start(budget).await;
    let setup = Instant::now();
    let stack = std::sync::Arc::new(stack);
    let mut jobs = tokio::task::JoinSet::new();
    for w in 0..4 {
        let stack = std::sync::Arc::clone(&stack);
        jobs.spawn(async move {
            for i in (w..tenants).step_by(4) {
                stack
                    .create_tenant(&format!("wh-bench-{i}"), &format!("{}", 700_000_000 + i))
                    .await;
            }
        });
    }
    while jobs.join_next().await.is_some() {}
    eprintln!(
        "{tenants} tenants provisioned in {:.1} s",
        setup.elapsed().as_secs_f64()
    );

    let router = stack.router();
    let http = router.http.clone();

    // Warm every tenant's route and pool once, then measure.
    for t in 0..tenants {
        let mut c = Conn::open(&http).await;
        assert_eq!(
            c.post(&delivery(
                &format!("{}", 700_000_000 + t),
                usize::MAX - t,
                1
            ))
            .await,
            200
        );
    }
    let deadline = Instant::now() + Duration::from_secs(seconds as u64);
    let started = Instant::now();
    let mut senders_set = tokio::task::JoinSet::new();
    for w in 0..senders {
        let http = http.clone();
        senders_set.spawn(async move {
            let mut c = Conn::open(&http).await;
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut seq = w;
            while Instant::now() < deadline {
                let pnid = format!("{}", 700_000_000 + (seq * 31) % tenants);
                let body = delivery(&pnid, seq, per);
                let t0 = Instant::now();
                if c.post(&body).await != 200 {
                    errors += 1;
                }
                lat.push(t0.elapsed().as_secs_f64() * 1000.0);
                seq += senders;
            }
            (lat, errors)
        });
    }
    let mut all = Vec::new();
    let mut errors = 0;
    while let Some(r) = senders_set.join_next().await {
        let (l, e) = r.unwrap();
        all.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let deliveries = all.len();
    println!("| senders | tenants | budget | messages/delivery | deliveries | messages/s | p50 | p95 | p99 | errors |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {senders} | {tenants} | {budget} | {per} | {deliveries} | {:.0} | {:.1} ms | {:.1} ms | {:.1} ms | {errors} |",
        (deliveries * per) as f64 / elapsed,
        pct(&all, 0.5),
        pct(&all, 0.95),
        pct(&all, 0.99)
    );
    drop(router);
    if let Ok(stack) = std::sync::Arc::try_unwrap(stack) {
        stack.stop().await;
    }
}
