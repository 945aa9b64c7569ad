//! The message pipeline against the real router binaries, the real control plane and real
//! PostgreSQL (the inbox on a server with `fsync=on`): crashes under traffic from a sender
//! that retries like Meta, arrival order, and what a stolen router credential reaches in
//! the ingest database.
#![allow(clippy::unwrap_used)]

mod common;

use common::wh::{delivery, post_signed, text_msg};
use common::{eventually, Plane, Router};
use proto::control::v1 as cp;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

async fn tenant(plane: &Plane, slug: &str, phone: &str) {
    plane
        .admin()
        .await
        .create_tenant(plane.admin_req(cp::CreateTenantRequest {
            slug: slug.into(),
            name: "Loja".into(),
            sector: cp::Sector::Varejo as i32,
            phone_number_id: phone.into(),
            ..Default::default()
        }))
        .await
        .unwrap();
}

async fn webhook_router(plane: &Plane) -> Router {
    Router::start(plane, &common::wh::ENV).await
}

async fn count(db: &str, sql: &str) -> i64 {
    pg_harness::shared()
        .connect(db)
        .await
        .unwrap()
        .query_one(sql, &[])
        .await
        .unwrap()
        .get(0)
}

/// Sends `body` until it is answered 200, to whichever router address is current, like
/// Meta: every other answer (and a connection that fails) is retried after a pause.
async fn deliver_like_meta(addr: &Mutex<String>, body: &[u8]) -> u32 {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let to = addr.lock().unwrap().clone();
        if post_signed(&to, body).await == 200 {
            return attempts;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routers_killed_under_traffic_lose_no_acknowledged_delivery_and_store_none_twice() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 80).await;
    let tenants = [
        ("pl-alfa", "910000001"),
        ("pl-beta", "910000002"),
        ("pl-gama", "910000003"),
    ];
    for (slug, phone) in tenants {
        tenant(&plane, slug, phone).await;
    }
    let router = webhook_router(&plane).await;
    let addr = Arc::new(Mutex::new(router.http.clone()));
    let acked = Arc::new(AtomicUsize::new(0));
    const PER_TENANT: usize = 150;
    const SENDERS: usize = 6;
    // Six senders, each with its own share of every tenant's messages (unique wamids).
    let mut senders = Vec::new();
    for sender in 0..SENDERS {
        let (addr, acked) = (Arc::clone(&addr), Arc::clone(&acked));
        senders.push(tokio::spawn(async move {
            let mut retried = 0;
            for i in (sender..PER_TENANT).step_by(SENDERS) {
                for (t, (_, phone)) in tenants.iter().enumerate() {
                    let lead = format!("55119{t}{:07}", i % 10);
                    let body = delivery(
                        phone,
                        json!([text_msg(&format!("wamid.K{t}.{i}"), &lead, "oi")]),
                        json!([]),
                    );
                    retried += deliver_like_meta(&addr, &body).await - 1;
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            }
            retried
        }));
    }
    // Kill -9 the router twice under traffic; a new one takes over each time.
    let mut router = router;
    for cut in [PER_TENANT / 3, 2 * PER_TENANT / 3] {
        assert!(
            eventually(Duration::from_secs(60), || {
                let acked = Arc::clone(&acked);
                async move { acked.load(Ordering::Relaxed) >= cut * tenants.len() }
            })
            .await
        );
        drop(router);
        router = webhook_router(&plane).await;
        *addr.lock().unwrap() = router.http.clone();
    }
    let mut retried = 0;
    for s in senders {
        retried += s.await.unwrap();
    }
    assert!(retried > 0, "the kills made the senders retry");
    plane.drained(Duration::from_secs(20)).await;
    for (t, (slug, _)) in tenants.iter().enumerate() {
        let db = plane.database_of(slug).await;
        assert_eq!(
            count(&db, "SELECT count(*) FROM mensagens").await,
            PER_TENANT as i64,
            "{slug}: every acknowledged message stored, none twice"
        );
        assert_eq!(
            count(
                &db,
                &format!(
                    "SELECT count(DISTINCT wamid) FROM mensagens WHERE wamid LIKE 'wamid.K{t}.%'"
                )
            )
            .await,
            PER_TENANT as i64
        );
        assert_eq!(count(&db, "SELECT count(*) FROM leads").await, 10);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_a_conversation_are_stored_in_arrival_order() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 80).await;
    tenant(&plane, "pl-ordem", "910000011").await;
    let router = webhook_router(&plane).await;
    // Ids that sort differently from their arrival, in deliveries that pile up in the
    // inbox while the tenant's table is locked, then are applied together.
    let db = plane.database_of("pl-ordem").await;
    let blocker = pg.connect(&db).await.unwrap();
    blocker
        .batch_execute("BEGIN; LOCK TABLE mensagens IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let sent: Vec<String> = (0..12).map(|i| format!("wamid.{}", 99 - i * 7)).collect();
    for w in &sent {
        let body = delivery(
            "910000011",
            json!([text_msg(w, "5511977770000", "x")]),
            json!([]),
        );
        assert_eq!(post_signed(&router.http, &body).await, 200);
    }
    blocker.batch_execute("ROLLBACK").await.unwrap();
    plane.drained(Duration::from_secs(10)).await;
    let stored: Vec<String> = pg
        .connect(&db)
        .await
        .unwrap()
        .query("SELECT wamid FROM mensagens ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(stored, sent);
}

/// A directory client presenting `token`.
async fn get_ingest(plane: &Plane, token: &str) -> Result<cp::IngestRoute, tonic::Status> {
    let mut dir = proto::control::v1::tenant_directory_client::TenantDirectoryClient::new(
        plane.channel().await,
    );
    let mut req = tonic::Request::new(cp::GetIngestRequest {});
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    dir.get_ingest(req).await.map(tonic::Response::into_inner)
}

async fn login(route: &cp::IngestRoute) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&route.host)
        .port(route.port as u16)
        .dbname(&route.database)
        .user(&route.role)
        .password(&route.password);
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_router_login_reaches_only_its_servers_inbox_rows() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 80).await;
    plane
        .add_server("other", pg_harness::shared_second(), 80)
        .await;
    tenant(&plane, "pl-vitima", "910000021").await;
    let router = webhook_router(&plane).await;
    let body = delivery(
        "910000021",
        json!([text_msg("wamid.V1", "5511966660000", "segredo")]),
        json!([]),
    );
    assert_eq!(post_signed(&router.http, &body).await, 200);
    plane.drained(Duration::from_secs(10)).await;

    // The attacker holds a router credential scoped to server "other".
    let scoped = plane
        .admin()
        .await
        .add_router(plane.admin_req(cp::AddRouterRequest {
            name: "pl-scoped".into(),
            servers: vec!["other".into()],
            all_servers: false,
            ttl_secs: 0,
        }))
        .await
        .unwrap()
        .into_inner()
        .token;
    assert_eq!(
        get_ingest(&plane, "not-a-token").await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    let route = get_ingest(&plane, &scoped).await.unwrap();
    let c = login(&route).await.unwrap();
    // Row-level security: the victim's rows (server "main") are invisible...
    let seen: i64 = c
        .query_one("SELECT count(*) FROM inbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(seen, 0);
    // ...cannot be changed...
    let changed = c
        .execute("UPDATE inbox SET aplicado_em = NULL, erro = 'x'", &[])
        .await
        .unwrap();
    assert_eq!(changed, 0);
    assert!(
        c.execute("UPDATE inbox SET lote = '{}'", &[])
            .await
            .is_err(),
        "lote is not writable"
    );
    assert!(
        c.execute("DELETE FROM inbox", &[]).await.is_err(),
        "no DELETE"
    );
    // ...and none can be written for a server it does not serve.
    let victim_id = plane
        .admin()
        .await
        .get_tenant(plane.admin_req(cp::TenantRef {
            tenant: "pl-vitima".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .id;
    let forged = r#"{"messages":[{"wamid":"wamid.FORGED","lead":["5511966660000","5511966660000"],"name":null,"inbound":true,"kind":"text","body":"pague aqui","media_id":null,"media_mime":null,"media_sha256":null,"sent_at":null}]}"#;
    assert!(c
        .execute(
            "INSERT INTO inbox (empresa_id, servidor, fonte, lote, mensagens) VALUES ($1, 'main', 'meta', $2, 1)",
            &[&victim_id, &forged],
        )
        .await
        .is_err());
    // A row filed under its own server for a tenant elsewhere is never applied there.
    c.execute(
        "INSERT INTO inbox (empresa_id, servidor, fonte, lote, mensagens) VALUES ($1, 'other', 'meta', $2, 1)",
        &[&victim_id, &forged],
    )
    .await
    .unwrap();
    assert!(
        c.query("SELECT * FROM escopos", &[]).await.is_err(),
        "scopes are not readable"
    );
    assert!(
        c.batch_execute("CREATE TABLE x (a int)").await.is_err(),
        "no DDL"
    );
    plane.drained(Duration::from_secs(10)).await;
    let db = plane.database_of("pl-vitima").await;
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM mensagens WHERE wamid = 'wamid.FORGED'"
        )
        .await,
        0
    );
    let refused: String = common::ingest_client(&plane.ingest_url)
        .await
        .query_one("SELECT erro FROM inbox WHERE lote LIKE '%FORGED%'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(refused, "not the tenant's server");
    // Its login holds no power beyond those rows.
    let row = c
        .query_one(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolbypassrls FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .unwrap();
    assert!(
        !row.get::<_, bool>(0)
            && !row.get::<_, bool>(1)
            && !row.get::<_, bool>(2)
            && !row.get::<_, bool>(3)
    );
    // Revoking the router ends its session and its login.
    plane
        .admin()
        .await
        .revoke_router(plane.admin_req(cp::RevokeRouterRequest {
            name: "pl-scoped".into(),
            rotate: false,
        }))
        .await
        .unwrap();
    assert!(c.query_one("SELECT 1", &[]).await.is_err(), "session ended");
    assert!(login(&route).await.is_err(), "login disabled");
}
