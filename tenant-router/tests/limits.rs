//! Plans limit tenants (#12): calls per second per tenant across routers, without touching
//! other tenants; a plan change reaches every router.
#![allow(clippy::unwrap_used)]

mod common;

use common::{call, Plane, Router};
use proto::domain::v1::{leads_client::LeadsClient, ListLeadsRequest};
use std::time::{Duration, Instant};
use tonic::Code;

/// Calls ListLeads on `tenant` through `channels` (round robin) with `callers` closed-loop
/// callers for `secs`; (admitted, refused with a retry hint, other errors, wall seconds).
async fn hammer(
    channels: &[tonic::transport::Channel],
    tenant: &'static str,
    token: &str,
    callers: usize,
    secs: f64,
) -> (usize, usize, usize, f64) {
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..callers {
        let ch = channels[i % channels.len()].clone();
        let token = token.to_string();
        tasks.spawn(async move {
            let (mut ok, mut limited, mut other) = (0, 0, 0);
            let mut client = LeadsClient::new(ch);
            while Instant::now() < end {
                match client
                    .list_leads(call(ListLeadsRequest::default(), tenant, &token))
                    .await
                {
                    Ok(_) => ok += 1,
                    Err(e)
                        if e.code() == Code::ResourceExhausted
                            && e.metadata().get("retry-after-ms").is_some()
                            && e.message().contains("calls per second") =>
                    {
                        limited += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(e) => {
                        eprintln!("{tenant}: {e:?}");
                        other += 1;
                    }
                }
            }
            (ok, limited, other)
        });
    }
    let (mut ok, mut limited, mut other) = (0, 0, 0);
    while let Some(r) = tasks.join_next().await {
        let (a, b, c) = r.unwrap();
        ok += a;
        limited += b;
        other += c;
    }
    (ok, limited, other, started.elapsed().as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_plan_rate_is_refused_across_routers_and_others_are_not() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 50).await;
    // The basic plan: 10 calls per second; the enterprise plan stays unlimited here.
    pg.connect(&plane.catalog_db)
        .await
        .unwrap()
        .execute(
            "UPDATE planos SET chamadas_por_segundo = 10 WHERE nome = 'basico'",
            &[],
        )
        .await
        .unwrap();
    plane.create("lim-alpha", "servicos", "main").await;
    plane.create("lim-bravo", "servicos", "main").await;
    plane
        .admin()
        .await
        .update_tenant(plane.admin_req(proto::control::v1::UpdateTenantRequest {
            tenant: "lim-bravo".into(),
            plan: Some("empresarial".into()),
            ..Default::default()
        }))
        .await
        .unwrap();
    // Two routers, each enforcing half of every plan's rate.
    let share = [("TENANT_ROUTER__LIMITS__RATE_SHARE", "0.5")];
    let routers = [
        Router::start(&plane, &share).await,
        Router::start(&plane, &share).await,
    ];
    let mut channels = Vec::new();
    for r in &routers {
        channels.push(r.channel().await);
    }
    let token = plane.token(&["lim-alpha", "lim-bravo"], false).await;
    let (a, b) = tokio::join!(
        hammer(&channels, "lim-alpha", &token, 8, 2.0),
        hammer(&channels, "lim-bravo", &token, 8, 2.0)
    );
    let (ok, limited, other, secs) = a;
    assert_eq!(other, 0, "only rate refusals");
    assert!(limited > 0, "the tenant over its rate was refused");
    // The fleet admits at most the plan's rate plus each router's one-second burst.
    let most = (10.0 * secs + 10.0 + 2.0) as usize;
    assert!(
        (10..=most).contains(&ok),
        "{ok} admitted in {secs:.1} s (at most {most})"
    );
    let (ok_b, limited_b, other_b, _) = b;
    assert_eq!(
        (limited_b, other_b),
        (0, 0),
        "the other tenant is untouched"
    );
    assert!(ok_b > ok, "the unlimited tenant ran freely ({ok_b} calls)");
    // A plan change reaches both routers: the tenant is no longer held to 10 a second.
    plane
        .admin()
        .await
        .update_tenant(plane.admin_req(proto::control::v1::UpdateTenantRequest {
            tenant: "lim-alpha".into(),
            plan: Some("empresarial".into()),
            ..Default::default()
        }))
        .await
        .unwrap();
    let lifted = common::eventually(Duration::from_secs(5), || async {
        let (_, limited, _, _) = hammer(&channels, "lim-alpha", &token, 4, 0.3).await;
        limited == 0
    })
    .await;
    assert!(lifted, "the new plan reached the routers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_metered_per_tenant_and_storage_over_the_plan_is_warned() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 50).await;
    // A basic tenant may hold 1 MB here: a fresh tenant database is larger.
    pg.connect(&plane.catalog_db)
        .await
        .unwrap()
        .execute(
            "UPDATE planos SET armazenamento_mb = 1 WHERE nome = 'basico'",
            &[],
        )
        .await
        .unwrap();
    plane.create("lim-usage", "servicos", "main").await;
    let t = plane.create("lim-quiet", "servicos", "main").await;
    plane
        .admin()
        .await
        .update_tenant(plane.admin_req(proto::control::v1::UpdateTenantRequest {
            tenant: t.slug.clone(),
            plan: Some("empresarial".into()),
            ..Default::default()
        }))
        .await
        .unwrap();
    let router = Router::start(
        &plane,
        &[("TENANT_ROUTER__ROUTES__USAGE_REPORT_EVERY_SECS", "1")],
    )
    .await;
    let token = plane.token(&["lim-usage"], false).await;
    let mut leads = LeadsClient::new(router.channel().await);
    for _ in 0..7 {
        leads
            .list_leads(call(ListLeadsRequest::default(), "lim-usage", &token))
            .await
            .unwrap();
    }
    let usage = |tenant: &'static str| {
        let plane = &plane;
        async move {
            plane
                .admin()
                .await
                .get_usage(plane.admin_req(proto::control::v1::UsageRequest {
                    tenant: tenant.into(),
                }))
                .await
                .unwrap()
                .into_inner()
                .rows
        }
    };
    let counted = common::eventually(Duration::from_secs(10), || async {
        usage("lim-usage")
            .await
            .first()
            .is_some_and(|r| r.calls_today == 7)
    })
    .await;
    assert!(
        counted,
        "the router reported its 7 calls: {:?}",
        usage("lim-usage").await
    );
    let row = usage("lim-usage").await.remove(0);
    assert_eq!((row.calls_30d, row.messages_today), (7, 0));
    assert!(row.database_bytes > 1_000_000, "{row:?}");
    assert_eq!(row.storage_limit_bytes, 1_000_000);
    let quiet = usage("lim-quiet").await.remove(0);
    assert_eq!(
        (quiet.calls_today, quiet.storage_limit_bytes),
        (0, 0),
        "unlimited plan"
    );
    let status = plane
        .admin()
        .await
        .status(plane.admin_req(proto::control::v1::StatusRequest {}))
        .await
        .unwrap()
        .into_inner();
    let over: Vec<&str> = status
        .over_storage
        .iter()
        .map(|u| u.slug.as_str())
        .collect();
    assert_eq!(
        over,
        vec!["lim-usage"],
        "only the tenant over its plan's storage"
    );
    // Usage never becomes per-tenant metric labels.
    let (_, metrics) = router.http_get("/metrics").await;
    assert!(
        !metrics.contains("lim-usage"),
        "a tenant in the router's metrics"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_holds_no_more_connections_than_its_plan_allows() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 50).await;
    pg.connect(&plane.catalog_db)
        .await
        .unwrap()
        .execute(
            "UPDATE planos SET max_conexoes = 2 WHERE nome = 'basico'",
            &[],
        )
        .await
        .unwrap();
    plane.create("lim-pool", "servicos", "main").await;
    let db = plane.database_of("lim-pool").await;
    // The router would give a tenant 8; the plan says 2.
    let router = Router::start(&plane, &[("TENANT_ROUTER__POOLS__MAX_PER_TENANT", "8")]).await;
    let channels = vec![router.channel().await];
    let token = plane.token(&["lim-pool"], false).await;
    let probe = pg.connect("postgres").await.unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let sampler = async {
        let mut most = 0i64;
        while !*stopped.borrow() {
            let n: i64 = probe
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'",
                    &[&db],
                )
                .await
                .unwrap()
                .get(0);
            most = most.max(n);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        most
    };
    let load = async {
        let r = hammer(&channels, "lim-pool", &token, 8, 1.5).await;
        let _ = stop.send(true);
        r
    };
    let ((ok, _, other, _), most) = tokio::join!(load, sampler);
    assert!(ok > 0 && other == 0, "{ok} ok, {other} errors");
    assert!(
        (1..=2).contains(&most),
        "{most} connections for a plan of 2"
    );
}
