//! A rolling restart of every component, one replica at a time, under load: both
//! control-plane replicas, then both routers, and no call fails.
#![allow(clippy::unwrap_used)]

mod common;

use common::{call, Plane, Router};
use proto::domain::v1 as dm;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};

#[derive(Default)]
struct Load {
    ok: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<Vec<String>>,
    stop: AtomicBool,
}

fn endpoint(router: &Router) -> Endpoint {
    Endpoint::from_shared(router.grpc.clone())
        .unwrap()
        .tls_config(common::client_tls())
        .unwrap()
}

/// Callers writing and reading through `channel` (balanced over the routers) until stopped.
fn load(channel: &Channel, tenants: &[String], token: &str, callers: usize) -> Arc<Load> {
    let load = Arc::new(Load::default());
    for i in 0..callers {
        let load = Arc::clone(&load);
        let tenants = tenants.to_vec();
        let token = token.to_string();
        let mut leads = dm::leads_client::LeadsClient::new(channel.clone());
        tokio::spawn(async move {
            let mut n = i;
            while !load.stop.load(Ordering::Relaxed) {
                n += 1;
                let tenant = &tenants[n % tenants.len()];
                let outcome = if n % 2 == 0 {
                    let mut req = call(
                        common::upsert(&format!("55119{:08}", n % 1000), "Ana"),
                        tenant,
                        &token,
                    );
                    req.set_timeout(Duration::from_secs(5));
                    leads.upsert_lead(req).await.map(|_| ())
                } else {
                    let mut req = call(dm::ListLeadsRequest::default(), tenant, &token);
                    req.set_timeout(Duration::from_secs(5));
                    leads.list_leads(req).await.map(|_| ())
                };
                match outcome {
                    Ok(()) => {
                        load.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        load.failed.fetch_add(1, Ordering::Relaxed);
                        load.errors.lock().unwrap().push(format!(
                            "{:?}: {}",
                            e.code(),
                            e.message()
                        ));
                    }
                }
            }
        });
    }
    load
}

/// Waits until the load has made `more` successful calls past `from` (progress during a
/// phase), at most 20 s.
async fn progressed(load: &Load, more: u64) {
    let from = load.ok.load(Ordering::Relaxed);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while load.ok.load(Ordering::Relaxed) < from + more {
        assert!(std::time::Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_component_under_load_fails_no_call() {
    let pg = pg_harness::shared();
    let mut first = Plane::start().await;
    first.add_server("main", pg, 40).await;
    let mut second = first.replica().await;
    let endpoints = format!("{},{}", first.endpoint, second.endpoint);
    let env = [("TENANT_ROUTER__CONTROL_PLANE_ENDPOINT", endpoints.as_str())];
    let tenants: Vec<String> = (0..4).map(|i| format!("roll-{i}")).collect();
    for t in &tenants {
        first.create(t, "varejo", "main").await;
    }
    let refs: Vec<&str> = tenants.iter().map(String::as_str).collect();
    let token = first.token(&refs, false).await;

    // Clients balance over the routers; a router leaving is taken out of the balancer
    // before it is asked to stop (as an orchestrator does), and drains what it has.
    let (channel, routers_in) = Channel::balance_channel::<usize>(8);
    let mut routers = Vec::new();
    for i in 0..2 {
        let r = Router::start(&first, &env).await;
        routers_in
            .send(Change::Insert(i, endpoint(&r)))
            .await
            .unwrap();
        routers.push(Some(r));
    }
    let load = load(&channel, &tenants, &token, 4);
    progressed(&load, 50).await;

    // The control-plane replicas, one at a time (routers keep both endpoints).
    first.restart().await;
    progressed(&load, 50).await;
    second.restart().await;
    progressed(&load, 50).await;

    // The routers, one at a time: a new one joins, the old one leaves and drains.
    for i in 0..2 {
        let new = Router::start(&first, &env).await;
        routers_in
            .send(Change::Insert(10 + i, endpoint(&new)))
            .await
            .unwrap();
        progressed(&load, 20).await;
        routers_in.send(Change::Remove(i)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut old = routers[i].take().unwrap();
        old.terminate();
        let status = old
            .wait_exit(Duration::from_secs(20))
            .expect("router did not stop");
        assert!(status.success(), "router exited with {status:?}");
        routers.push(Some(new));
        progressed(&load, 50).await;
    }

    load.stop.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let errors = load.errors.lock().unwrap().clone();
    eprintln!(
        "{} calls ok, {} failed",
        load.ok.load(Ordering::Relaxed),
        load.failed.load(Ordering::Relaxed)
    );
    assert!(errors.is_empty(), "calls failed: {errors:?}");
}
