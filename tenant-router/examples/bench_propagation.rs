//! Propagation benchmark (run it through `scripts/bench-propagation.sh`): how long a
//! suspension or a resumption takes to reach every path of every router.
//!
//! Starts a throwaway PostgreSQL server, the control plane (in-process, real gRPC) and
//! `--routers` router binaries (default 2), provisions one tenant with a WhatsApp number,
//! then alternates `suspend` and `resume` for `--rounds` rounds (default 40). After each
//! change it polls every router's two paths until they reflect it: the gRPC path (a
//! `ListLeads` call succeeds, or is refused as suspended) and the webhook path (a new signed
//! delivery lands in the tenant database, or is kept aside as a dead letter). Times run from
//! just before the admin call to the first poll that sees the change (so they include the
//! admin call and the poll's own round trip); printed as a Markdown table.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod bench_stack;

use bench_stack::{admin_req, arg, delivery, pct, Conn, RouterProc, Stack};
use proto::control::v1 as cp;
use proto::domain::v1::{leads_client::LeadsClient, ListLeadsRequest};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const SLUG: &str = "prop-1";
const PHONE: &str = "710000001";

/// How long to wait for one change to show before calling the run failed.
const GIVE_UP: Duration = Duration::from_secs(10);

struct Paths {
    leads: LeadsClient<tonic::transport::Channel>,
    conn: Conn,
}

async fn grpc_active(leads: &mut LeadsClient<tonic::transport::Channel>, token: &str) -> bool {
    let mut req = tonic::Request::new(ListLeadsRequest {
        page_size: 1,
        ..Default::default()
    });
    req.metadata_mut().insert("x-tenant", SLUG.parse().unwrap());
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    match leads.list_leads(req).await {
        Ok(_) => true,
        Err(e) if e.code() == tonic::Code::FailedPrecondition => false,
        Err(e) => panic!("unexpected answer from the router: {e:?}"),
    }
}

async fn webhook_active(conn: &mut Conn, db: &tokio_postgres::Client, seq: &AtomicUsize) -> bool {
    let n = seq.fetch_add(1, Ordering::Relaxed);
    assert_eq!(conn.post(&delivery(PHONE, n, 1)).await, 200);
    let wamid = format!("wamid.{PHONE}.{n}.0");
    db.query_one("SELECT count(*) FROM mensagens WHERE wamid = $1", &[&wamid])
        .await
        .unwrap()
        .get::<_, i64>(0)
        == 1
}

/// Polls one path until it shows `want`; the time since `t0` in ms.
async fn until(t0: Instant, mut seen: impl AsyncFnMut() -> bool, want: bool) -> f64 {
    while seen().await != want {
        assert!(
            t0.elapsed() < GIVE_UP,
            "a change did not propagate within {GIVE_UP:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    t0.elapsed().as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let n_routers = arg("--routers", 2).max(1);
    let rounds = arg("--rounds", 40).max(2);
    let stack = Stack::start(40).await;
    let tenant = stack.create_tenant(SLUG, PHONE).await;
    let db = stack.pg.connect(&tenant.database).await.unwrap();
    let routers: Vec<RouterProc> = (0..n_routers).map(|_| stack.router()).collect();
    let token = stack.caller_token();
    let mut paths = Vec::new();
    for r in &routers {
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", r.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap();
        paths.push(Paths {
            leads: LeadsClient::new(channel),
            conn: Conn::open(&r.http).await,
        });
    }
    let seq = AtomicUsize::new(0);
    for p in &mut paths {
        assert!(grpc_active(&mut p.leads, &token).await);
        assert!(webhook_active(&mut p.conn, &db, &seq).await);
    }

    let mut samples: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
    let mut admin_ms = Vec::new();
    for round in 0..rounds {
        let (change, active) = if round % 2 == 0 {
            ("suspend", false)
        } else {
            ("resume", true)
        };
        let mut admin = stack.admin.clone();
        let req = admin_req(
            cp::TenantRef {
                tenant: SLUG.into(),
            },
            &stack.token,
        );
        let t0 = Instant::now();
        if active {
            admin.resume_tenant(req).await.unwrap();
        } else {
            admin.suspend_tenant(req).await.unwrap();
        }
        admin_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        let (token, db, seq) = (&token, &db, &seq);
        // Every path of every router is polled at once.
        let polls = paths.iter_mut().map(|p| async move {
            let Paths { leads, conn } = p;
            tokio::join!(
                until(t0, async || grpc_active(leads, token).await, active),
                until(t0, async || webhook_active(conn, db, seq).await, active),
            )
        });
        for (grpc, webhook) in futures_util::future::join_all(polls).await {
            samples.entry((change, "gRPC")).or_default().push(grpc);
            samples
                .entry((change, "webhook"))
                .or_default()
                .push(webhook);
        }
        // Let the replay of what was kept aside settle before the next change.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    admin_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "Propagation of tenant changes to {n_routers} routers, {rounds} changes \
         (admin call alone: p50 {:.1} ms, p99 {:.1} ms)\n",
        pct(&admin_ms, 0.5),
        pct(&admin_ms, 0.99)
    );
    println!("| change | path | samples | p50 | p99 | max |");
    println!("|---|---|---|---|---|---|");
    for ((change, path), mut v) in samples {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "| {change} | {path} | {} | {:.1} ms | {:.1} ms | {:.1} ms |",
            v.len(),
            pct(&v, 0.5),
            pct(&v, 0.99),
            v[v.len() - 1]
        );
    }
    drop(paths);
    drop(routers);
    stack.stop().await;
}
