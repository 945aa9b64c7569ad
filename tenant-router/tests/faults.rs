//! Faults survived with native processes: a tenant database server stopped and started
//! under load. Tenants on other servers see no error; the stopped server's tenants get
//! UNAVAILABLE (nothing about the server in it) and are served again once it is back,
//! without restarting anything.
#![allow(clippy::unwrap_used)]

mod common;

use common::{eventually, Plane, Router};
use proto::domain::v1 as dm;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
}

/// Calls UpsertLead on `tenant` in a loop until `stop`, counting outcomes; each failure
/// must be UNAVAILABLE and name no host or port.
fn load(
    router: &Router,
    tenant: &'static str,
    token: String,
    stop: Arc<AtomicBool>,
) -> (Arc<Tally>, tokio::task::JoinHandle<()>) {
    let tally = Arc::new(Tally::default());
    let (t, grpc) = (Arc::clone(&tally), router.grpc.clone());
    let task = tokio::spawn(async move {
        let channel = tonic::transport::Channel::from_shared(grpc)
            .unwrap()
            .tls_config(common::client_tls())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = dm::leads_client::LeadsClient::new(channel);
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let mut req = common::call(
                common::upsert(&format!("55119{:08}", n % 50), "Ana"),
                tenant,
                &token,
            );
            req.set_timeout(Duration::from_secs(2));
            match client.upsert_lead(req).await {
                Ok(_) => t.ok.fetch_add(1, Ordering::Relaxed),
                Err(s) => {
                    assert_eq!(s.code(), tonic::Code::Unavailable, "{tenant}: {s:?}");
                    assert!(
                        !s.message().contains("127.0.0.1"),
                        "{tenant}: {}",
                        s.message()
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    t.failed.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
    });
    (tally, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_server_stopped_and_started_under_load_hurts_only_its_tenants() {
    let (down, up) = (
        pg_harness::PgServer::start().unwrap(),
        pg_harness::PgServer::start().unwrap(),
    );
    let plane = Plane::start().await;
    plane.add_server("down", &down, 40).await;
    plane.add_server("up", &up, 40).await;
    plane.create("ft-down", "varejo", "down").await;
    plane.create("ft-up", "varejo", "up").await;
    let token = plane.token(&["ft-down", "ft-up"], false).await;
    let router = Router::start(&plane, &[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (on_down, a) = load(&router, "ft-down", token.clone(), Arc::clone(&stop));
    let (on_up, b) = load(&router, "ft-up", token, Arc::clone(&stop));
    assert!(
        eventually(Duration::from_secs(10), || async {
            on_down.ok.load(Ordering::Relaxed) > 20 && on_up.ok.load(Ordering::Relaxed) > 20
        })
        .await
    );

    // The server stops (its sessions end) for two seconds, then starts again.
    let _down = tokio::task::spawn_blocking(move || {
        down.halt().unwrap();
        std::thread::sleep(Duration::from_secs(2));
        down.restart().unwrap();
        down
    })
    .await
    .unwrap();
    let failed_while_down = on_down.failed.load(Ordering::Relaxed);
    let before = on_down.ok.load(Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(15), || async {
            on_down.ok.load(Ordering::Relaxed) > before + 20
        })
        .await,
        "the restarted server's tenant is served again"
    );
    stop.store(true, Ordering::Relaxed);
    a.await.unwrap();
    b.await.unwrap();
    assert!(failed_while_down > 0, "the outage was seen by its tenant");
    assert_eq!(
        on_up.failed.load(Ordering::Relaxed),
        0,
        "the other server's tenant saw no error"
    );
    assert!(on_up.ok.load(Ordering::Relaxed) > 100);
}

/// The catalog's server restarted under load: routers keep serving known tenants from
/// their caches meanwhile (no call fails), and the control plane reconnects by itself
/// (a tenant created after the restart is routed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_restarted_under_load_fails_no_call_and_the_control_plane_reconnects() {
    let catalog = pg_harness::PgServer::start().unwrap();
    let plane = Plane::start_with_catalog_on(&catalog).await;
    plane.add_server("main", pg_harness::shared(), 80).await;
    plane.create("fc-known", "varejo", "main").await;
    let token = plane.token(&["fc-known"], false).await;
    let router = Router::start(&plane, &[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (known, task) = load(&router, "fc-known", token, Arc::clone(&stop));
    assert!(
        eventually(Duration::from_secs(10), || async {
            known.ok.load(Ordering::Relaxed) > 20
        })
        .await
    );

    let catalog = tokio::task::spawn_blocking(move || {
        catalog.halt().unwrap();
        std::thread::sleep(Duration::from_secs(3));
        catalog.restart().unwrap();
        catalog
    })
    .await
    .unwrap();
    let before = known.ok.load(Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(5), || async {
            known.ok.load(Ordering::Relaxed) > before + 20
        })
        .await
    );
    // The control plane works again without a restart.
    let created = eventually(Duration::from_secs(20), || async {
        plane
            .admin()
            .await
            .create_tenant(plane.admin_req(proto::control::v1::CreateTenantRequest {
                slug: "fc-after".into(),
                name: "Depois".into(),
                sector: proto::control::v1::Sector::Varejo as i32,
                server: "main".into(),
                ..Default::default()
            }))
            .await
            .is_ok()
    })
    .await;
    assert!(
        created,
        "the control plane did not recover from the catalog restart"
    );
    let after = plane.token(&["fc-after"], false).await;
    dm::leads_client::LeadsClient::new(router.channel().await)
        .upsert_lead(common::call(
            common::upsert("5511955550000", "Bia"),
            "fc-after",
            &after,
        ))
        .await
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    task.await.unwrap();
    assert_eq!(
        known.failed.load(Ordering::Relaxed),
        0,
        "a call to a known tenant failed while the catalog was down"
    );
    drop(catalog);
}
