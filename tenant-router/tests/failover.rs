//! Control-plane replicas side by side: a router given every replica's endpoint keeps
//! resolving tenants (new ones too) when the replica it was talking to dies.
#![allow(clippy::unwrap_used)]

mod common;

use common::{eventually, Plane, Router};
use proto::domain::v1 as dm;
use std::time::Duration;

async fn upsert(
    router: &Router,
    tenant: &str,
    token: &str,
    phone: &str,
) -> Result<(), tonic::Status> {
    dm::leads_client::LeadsClient::new(router.channel().await)
        .upsert_lead(common::call(common::upsert(phone, "Ana"), tenant, token))
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_keeps_resolving_tenants_when_a_control_plane_replica_dies() {
    let pg = pg_harness::shared();
    let mut first = Plane::start().await;
    first.add_server("main", pg, 80).await;
    let second = first.replica().await;
    let endpoints = format!("{},{}", first.endpoint, second.endpoint);
    let router = Router::start(
        &first,
        &[("TENANT_ROUTER__CONTROL_PLANE_ENDPOINT", endpoints.as_str())],
    )
    .await;
    first.create("fo-alfa", "varejo", "main").await;
    let alfa = first.token(&["fo-alfa"], false).await;
    upsert(&router, "fo-alfa", &alfa, "5511970000001")
        .await
        .unwrap();

    // The first replica dies; a tenant created through the second is routed by the same
    // router (its route comes from the surviving replica), and the known one still is.
    first.kill();
    second.create("fo-beta", "varejo", "main").await;
    let beta = second.token(&["fo-beta"], false).await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            upsert(&router, "fo-beta", &beta, "5511970000002")
                .await
                .is_ok()
        })
        .await,
        "{:?}",
        upsert(&router, "fo-beta", &beta, "5511970000002").await
    );
    upsert(&router, "fo-alfa", &alfa, "5511970000003")
        .await
        .unwrap();
}
