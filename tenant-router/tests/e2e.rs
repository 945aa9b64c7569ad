//! The router end to end: real control plane, real router binary, two PostgreSQL servers.
#![allow(clippy::unwrap_used)]

mod common;

use common::{
    active_statements, call, eventually, lock_leads, tenant_connections, upsert, Plane, Router,
};
use proto::domain::v1 as dm;
use proto::domain::v1::catalog_client::CatalogClient;
use proto::domain::v1::conversations_client::ConversationsClient;
use proto::domain::v1::leads_client::LeadsClient;
use std::time::Duration;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_on_two_servers_are_served_and_isolated() {
    let plane = Plane::start().await;
    plane.add_server("one", pg_harness::shared(), 80).await;
    plane
        .add_server("two", pg_harness::shared_second(), 80)
        .await;
    plane.create("rt-alfa", "veiculos", "one").await;
    plane.create("rt-bravo", "imoveis", "two").await;
    let router = Router::start(&plane, &[]).await;
    let ch = router.channel().await;
    let mut leads = LeadsClient::new(ch.clone());
    let alfa = plane.token(&["rt-alfa"], false).await;
    let platform = plane.token(&[], true).await;

    // Written and read through the router, on each server.
    let a = leads
        .upsert_lead(call(upsert("+55 11 8765-4321", "Ana"), "rt-alfa", &alfa))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.wa_id, "5511987654321", "the 9th digit is added");
    let again = leads
        .upsert_lead(call(upsert("5511987654321", ""), "rt-alfa", &alfa))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (again.id, again.name.as_str()),
        (a.id, "Ana"),
        "both spellings are one lead"
    );
    let b = leads
        .upsert_lead(call(upsert("5521999990000", "Bia"), "rt-bravo", &platform))
        .await
        .unwrap()
        .into_inner();
    let got = leads
        .get_lead(call(
            dm::GetLeadRequest {
                key: Some(dm::get_lead_request::Key::Id(b.id)),
            },
            "rt-bravo",
            &platform,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.name, "Bia");
    assert!(pg_harness::shared_second()
        .connect(&plane.database_of("rt-bravo").await)
        .await
        .is_ok());

    // Isolation: alfa's token cannot reach bravo (by slug or id), and data stays apart.
    let err = leads
        .list_leads(call(dm::ListLeadsRequest::default(), "rt-bravo", &alfa))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let bravo_id = plane
        .admin()
        .await
        .get_tenant(plane.admin_req(proto::control::v1::TenantRef {
            tenant: "rt-bravo".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .id;
    let err = leads
        .list_leads(call(
            dm::ListLeadsRequest::default(),
            &bravo_id.to_string(),
            &alfa,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let by_phone = dm::GetLeadRequest {
        key: Some(dm::get_lead_request::Key::Phone("5511987654321".into())),
    };
    let err = leads
        .get_lead(call(by_phone, "rt-bravo", &platform))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::NotFound,
        "alfa's lead is not in bravo's database"
    );
    let listed = leads
        .list_leads(call(dm::ListLeadsRequest::default(), "rt-alfa", &alfa))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.leads.len(), 1);

    // Conversations: one open conversation per lead, idempotent messages, paging, read marks.
    let mut conv = ConversationsClient::new(ch.clone());
    let open = |lead| {
        call(
            dm::OpenConversationRequest { lead_id: lead },
            "rt-alfa",
            &alfa,
        )
    };
    let c1 = conv
        .open_conversation(open(a.id))
        .await
        .unwrap()
        .into_inner();
    let c2 = conv
        .open_conversation(open(a.id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c1.id, c2.id);
    for i in 0..25 {
        let m = dm::AppendMessageRequest {
            conversation_id: c1.id,
            direction: dm::MessageDirection::Entrada as i32,
            body: format!("mensagem {i}"),
            wamid: format!("wamid.{i}"),
            r#type: String::new(),
        };
        conv.append_message(call(m, "rt-alfa", &alfa))
            .await
            .unwrap();
    }
    let dup = dm::AppendMessageRequest {
        conversation_id: c1.id,
        direction: dm::MessageDirection::Entrada as i32,
        body: "other".into(),
        wamid: "wamid.3".into(),
        r#type: String::new(),
    };
    assert_eq!(
        conv.append_message(call(dup, "rt-alfa", &alfa))
            .await
            .unwrap()
            .into_inner()
            .body,
        "mensagem 3"
    );
    let page1 = conv
        .list_messages(call(
            dm::ListMessagesRequest {
                conversation_id: c1.id,
                page_size: 20,
                page_token: String::new(),
            },
            "rt-alfa",
            &alfa,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page1.messages.len(), 20);
    let page2 = conv
        .list_messages(call(
            dm::ListMessagesRequest {
                conversation_id: c1.id,
                page_size: 20,
                page_token: page1.next_page_token,
            },
            "rt-alfa",
            &alfa,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page2.messages.len(), 5);
    assert!(page2.next_page_token.is_empty());
    let unread = conv
        .open_conversation(open(a.id))
        .await
        .unwrap()
        .into_inner()
        .unread;
    assert_eq!(unread, 25);
    let read = conv
        .mark_read(call(
            dm::MarkReadRequest {
                conversation_id: c1.id,
            },
            "rt-alfa",
            &alfa,
        ))
        .await
        .unwrap();
    assert_eq!(read.into_inner().unread, 0);

    // Catalog with the sector's own attributes.
    let mut catalog = CatalogClient::new(ch);
    let car = dm::CatalogItem {
        sku: "GOL-2020".into(),
        name: "Volkswagen Gol 1.0 completo".into(),
        price_cents: 4_590_000,
        active: true,
        attributes: Some(dm::catalog_item::Attributes::Vehicle(dm::Vehicle {
            make: "Volkswagen".into(),
            model: "Gol".into(),
            model_year: 2020,
            mileage_km: 42_000,
            ..Default::default()
        })),
        ..Default::default()
    };
    let saved = catalog
        .upsert_item(call(
            dm::UpsertItemRequest {
                item: Some(car.clone()),
            },
            "rt-alfa",
            &alfa,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        matches!(saved.attributes, Some(dm::catalog_item::Attributes::Vehicle(ref v)) if v.model == "Gol")
    );
    let found = catalog
        .search_items(call(
            dm::SearchItemsRequest {
                query: "gol completo".into(),
                ..Default::default()
            },
            "rt-alfa",
            &alfa,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.items.len(), 1);
    let err = catalog
        .upsert_item(call(
            dm::UpsertItemRequest { item: Some(car) },
            "rt-bravo",
            &platform,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::InvalidArgument,
        "a vehicle does not fit a real-estate tenant"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_callers_and_bad_input_get_clear_statuses() {
    let plane = Plane::start().await;
    plane.add_server("one", pg_harness::shared(), 80).await;
    plane.create("rt-charlie", "varejo", "one").await;
    let router = Router::start(&plane, &[]).await;
    let mut leads = LeadsClient::new(router.channel().await);
    let token = plane.token(&["rt-charlie"], false).await;
    let platform = plane.token(&[], true).await;

    let mut no_token = tonic::Request::new(upsert("5511912345678", "X"));
    no_token
        .metadata_mut()
        .insert("x-tenant", "rt-charlie".parse().unwrap());
    assert_eq!(
        leads.upsert_lead(no_token).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let forged = caller_auth::Signer::from_base64("c29tZW9uZS1lbHNlcy1rZXktc29tZW9uZS1lbHNlcyE=")
        .unwrap()
        .sign(&caller_auth::Claims {
            jti: "forged".into(),
            kind: caller_auth::Kind::Caller,
            sub: "x".into(),
            tenants: vec![],
            all: true,
            role: None,
            sid: None,
            scopes: Vec::new(),
            exp: caller_auth::now_secs() + 60,
            iat: 0,
        })
        .unwrap();
    let err = leads
        .upsert_lead(call(upsert("5511912345678", "X"), "rt-charlie", &forged))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let expired = common::caller_token(vec![], true, -600);
    let err = leads
        .upsert_lead(call(upsert("5511912345678", "X"), "rt-charlie", &expired))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::Unauthenticated, "token expired")
    );

    let mut no_tenant = tonic::Request::new(upsert("5511912345678", "X"));
    no_tenant
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let err = leads.upsert_lead(no_tenant).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("x-tenant"), "{err:?}");
    for bad in ["Bad Tenant", "x'; DROP"] {
        let mut r = tonic::Request::new(upsert("5511912345678", "X"));
        r.metadata_mut().insert("x-tenant", bad.parse().unwrap());
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {platform}").parse().unwrap(),
        );
        assert_eq!(
            leads.upsert_lead(r).await.unwrap_err().code(),
            Code::InvalidArgument,
            "{bad}"
        );
    }
    let err = leads
        .upsert_lead(call(upsert("5511912345678", "X"), "rt-nobody", &platform))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.details(), b"TENANT_NOT_FOUND");

    for (req, field) in [
        (upsert("not a phone", "X"), "invalid phone"),
        (upsert("123", "X"), "invalid phone"),
        (
            dm::UpsertLeadRequest {
                phone: "5511912345678".into(),
                name: "a\u{0}b".into(),
                ..Default::default()
            },
            "control characters",
        ),
    ] {
        let err = leads
            .upsert_lead(call(req, "rt-charlie", &token))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains(field), "{err:?}");
    }
    // Enum fields: unspecified and unknown numbers are refused by name.
    for status in [0, 99] {
        let err = leads
            .update_lead_status(call(
                dm::UpdateLeadStatusRequest { id: 1, status },
                "rt-charlie",
                &token,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().starts_with("status must be one of novo"),
            "{err:?}"
        );
    }
    let err = leads
        .list_leads(call(
            dm::ListLeadsRequest {
                page_token: "garbage".into(),
                ..Default::default()
            },
            "rt-charlie",
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // Nothing was written by any of the refused calls.
    let listed = leads
        .list_leads(call(dm::ListLeadsRequest::default(), "rt-charlie", &token))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.leads.is_empty());
    let mut conv = ConversationsClient::new(router.channel().await);
    let err = conv
        .open_conversation(call(
            dm::OpenConversationRequest { lead_id: 999_999 },
            "rt-charlie",
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        !err.message().contains("127.0.0.1") && !err.message().contains("INSERT"),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_takes_effect_within_a_second_and_the_control_plane_can_go_away() {
    let mut plane = Plane::start().await;
    plane.add_server("one", pg_harness::shared(), 80).await;
    plane.create("rt-delta", "servicos", "one").await;
    let router = Router::start(&plane, &[]).await;
    let mut leads = LeadsClient::new(router.channel().await);
    let token = plane.token(&["rt-delta"], false).await;
    let list = || call(dm::ListLeadsRequest::default(), "rt-delta", &token);
    leads.list_leads(list()).await.unwrap();

    plane.suspend("rt-delta").await;
    let suspended = eventually(Duration::from_secs(1), || {
        let mut leads = leads.clone();
        let req = list();
        async move {
            leads.list_leads(req).await.err().map(|e| e.code()) == Some(Code::FailedPrecondition)
        }
    })
    .await;
    assert!(suspended, "suspension reached the router within a second");
    plane.resume("rt-delta").await;
    let resumed = eventually(Duration::from_secs(1), || {
        let mut leads = leads.clone();
        let req = list();
        async move { leads.list_leads(req).await.is_ok() }
    })
    .await;
    assert!(resumed, "resume reached the router within a second");

    // With the control plane gone, known tenants are still served.
    plane.stop().await;
    for _ in 0..5 {
        leads
            .upsert_lead(call(
                upsert("5511911112222", "Still here"),
                "rt-delta",
                &token,
            ))
            .await
            .unwrap();
    }
    let err = leads
        .list_leads(call(
            dm::ListLeadsRequest::default(),
            "rt-unknown",
            &plane_token_all(),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unavailable,
        "unknown tenants cannot be resolved meanwhile"
    );
}

fn plane_token_all() -> String {
    common::caller_token(vec![], true, 600)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_budget_holds_with_many_more_tenants_than_connections() {
    // A server of its own, so the count in pg_stat_activity is this test's alone.
    let pg = pg_harness::PgServer::start().unwrap();
    let plane = Plane::start().await;
    const BUDGET: u32 = 6;
    plane.add_server("small", &pg, BUDGET).await;
    let slugs: Vec<String> = (0..24).map(|i| format!("rt-budget-{i}")).collect();
    for s in &slugs {
        plane.create(s, "servicos", "small").await;
    }
    let router = Router::start(
        &plane,
        &[("TENANT_ROUTER__POOLS__DEFAULT_DEADLINE_MS", "10000")],
    )
    .await;
    let token = plane_token_all();
    let ch = router.channel().await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        let port = pg.port;
        tokio::spawn(async move {
            let mut cfg = tokio_postgres::Config::new();
            cfg.host("127.0.0.1")
                .port(port)
                .user(pg_harness::SUPERUSER)
                .password(pg_harness::SUPERUSER_PASSWORD)
                .dbname("postgres");
            let (c, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            let mut max = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let n: i64 = c
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE usename LIKE '%\\_login\\_%'",
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0);
                max = max.max(n);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            max
        })
    };
    let mut callers = tokio::task::JoinSet::new();
    for w in 0..32 {
        let mut leads = LeadsClient::new(ch.clone());
        let slugs = slugs.clone();
        let token = token.clone();
        callers.spawn(async move {
            let mut ok = 0;
            for i in 0..15 {
                let slug = &slugs[(w * 7 + i * 5) % slugs.len()];
                let phone = format!("55119{:08}", w * 100 + i);
                leads
                    .upsert_lead(call(upsert(&phone, "Load"), slug, &token))
                    .await
                    .unwrap();
                ok += 1;
            }
            ok
        });
    }
    let mut total = 0;
    while let Some(r) = callers.join_next().await {
        total += r.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let max_seen = sampler.await.unwrap();
    assert_eq!(total, 32 * 15, "every call succeeded");
    assert!(max_seen >= 1, "the sampler saw the load");
    assert!(
        max_seen <= i64::from(BUDGET),
        "{max_seen} connections > budget {BUDGET}"
    );
    let (status, metrics) = router.http_get("/metrics").await;
    assert_eq!(status, 200);
    let line = metrics
        .lines()
        .find(|l| l.starts_with("tenant_router_server_connections{server=\"small\"}"))
        .unwrap();
    let open: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(open <= f64::from(BUDGET), "{line}");
    assert!(tenant_connections(&pg).await <= i64::from(BUDGET));
    assert!(!metrics.contains("rt-budget"), "no per-tenant labels");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_cancel_queries_and_a_dead_server_is_unavailable() {
    let pg = pg_harness::PgServer::start().unwrap();
    let plane = Plane::start().await;
    plane.add_server("fragile", &pg, 20).await;
    plane.create("rt-echo", "servicos", "fragile").await;
    let router = Router::start(&plane, &[]).await;
    let token = plane_token_all();
    let mut leads = LeadsClient::new(router.channel().await);
    leads
        .upsert_lead(call(upsert("5511933334444", "E"), "rt-echo", &token))
        .await
        .unwrap();

    // A lock held elsewhere makes the write wait; the caller's deadline cancels it.
    let blocker = lock_leads(&pg, &plane, "rt-echo").await;
    let mut req = call(upsert("5511933334444", "late"), "rt-echo", &token);
    req.set_timeout(Duration::from_millis(300));
    let lead = stopped_on_the_server(&pg, &mut leads, req, blocker, ("rt-echo", &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(lead.name, "E", "the cancelled write did not land");

    // The server goes away: calls fail with UNAVAILABLE, and fast once it is marked down.
    pg.stop();
    let mut codes = Vec::new();
    for _ in 0..6 {
        let started = std::time::Instant::now();
        let err = leads
            .list_leads(call(dm::ListLeadsRequest::default(), "rt-echo", &token))
            .await
            .unwrap_err();
        codes.push((err.code(), started.elapsed()));
        assert!(!err.message().contains("127.0.0.1"), "{err:?}");
    }
    assert!(
        codes.iter().all(|(c, _)| *c == Code::Unavailable),
        "{codes:?}"
    );
    assert!(
        codes.last().unwrap().1 < Duration::from_millis(100),
        "fails fast: {codes:?}"
    );
}

/// Single-statement calls share a connection (pipelined); a caller's deadline stops its own
/// statement on the server and no other caller's, and a stuck connection takes no new calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_calls_keep_their_own_deadlines() {
    let pg = pg_harness::PgServer::start().unwrap();
    let plane = Plane::start().await;
    plane.add_server("shared", &pg, 20).await;
    plane.create("rt-pipe", "servicos", "shared").await;
    // A connection is stuck after 500 ms without progress here (20 ms by default), so the
    // first two calls surely share one.
    let router = Router::start(&plane, &[("TENANT_ROUTER__POOLS__STUCK_AFTER_MS", "500")]).await;
    let token = plane_token_all();
    let ch = router.channel().await;
    let mut leads = LeadsClient::new(ch.clone());
    leads
        .upsert_lead(call(upsert("5511900000001", "warm"), "rt-pipe", &token))
        .await
        .unwrap();

    let blocker = lock_leads(&pg, &plane, "rt-pipe").await;
    let write = |phone: &'static str, ms: u64| {
        let mut leads = LeadsClient::new(ch.clone());
        let token = token.clone();
        tokio::spawn(async move {
            let mut req = call(upsert(phone, "w"), "rt-pipe", &token);
            req.set_timeout(Duration::from_millis(ms));
            let started = std::time::Instant::now();
            let r = leads.upsert_lead(req).await;
            (r.map(|_| ()), started.elapsed())
        })
    };
    let a = write("5511900000002", 300);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let b = write("5511900000003", 8_000);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        active_statements(&pg).await,
        1,
        "two writes in flight, one backend: pipelined on one connection"
    );
    let (a, a_took) = a.await.unwrap();
    let err = a.unwrap_err();
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    assert!(a_took < Duration::from_millis(1_000), "{a_took:?}");

    // The first connection is stuck (no call finished for 500 ms since a's statement
    // stopped): a new write goes to another connection, and a read of another table, sent
    // once both are stuck, to a third, answered while the lock is still held.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let c = write("5511900000004", 8_000);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut conv = ConversationsClient::new(ch.clone());
    let started = std::time::Instant::now();
    let mut req = call(dm::ListConversationsRequest::default(), "rt-pipe", &token);
    req.set_timeout(Duration::from_secs(3));
    conv.list_conversations(req)
        .await
        .expect("a read is not stalled behind stuck statements");
    assert!(
        started.elapsed() < Duration::from_millis(1_000),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        active_statements(&pg).await,
        2,
        "the two waiting writes, each on its own connection"
    );

    blocker.batch_execute("ROLLBACK").await.unwrap();
    for (name, w) in [("b", b), ("c", c)] {
        let (r, took) = w.await.unwrap();
        assert!(r.is_ok(), "{name} was not cancelled by a's deadline: {r:?}");
        assert!(
            took > Duration::from_millis(500),
            "{name} waited for the lock"
        );
    }
    let get = |phone: &str| {
        call(
            dm::GetLeadRequest {
                key: Some(dm::get_lead_request::Key::Phone(phone.into())),
            },
            "rt-pipe",
            &token,
        )
    };
    let err = leads.get_lead(get("5511900000002")).await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::NotFound,
        "a's statement stopped on the server, not only abandoned"
    );
    for phone in ["5511900000003", "5511900000004"] {
        leads.get_lead(get(phone)).await.unwrap();
    }
}

/// On a tenant's new connection, a pipelined write waiting for a lock past its deadline
/// stops on the server, its statement's preparation included: no cancel request is sent
/// for pipelined statements, so only the session's limit can stop them, and parsing takes
/// the table's lock too. The connection starts with the limit the tenant's connections last
/// set, here a longer one, so the call's own limit must be set before the preparation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_stops_a_first_statement_and_its_preparation_on_a_new_connection() {
    let pg = pg_harness::PgServer::start().unwrap();
    let plane = Plane::start().await;
    plane.add_server("fresh", &pg, 20).await;
    plane.create("rt-fresh", "servicos", "fresh").await;
    let router = Router::start(&plane, &[]).await;
    let token = plane_token_all();
    let mut leads = LeadsClient::new(router.channel().await);
    let write = |phone: &str, ms: u64| {
        let mut req = call(upsert(phone, "w"), "rt-fresh", &token);
        req.set_timeout(Duration::from_millis(ms));
        req
    };
    // A long limit set last (30 s deadline: its 15 s rung; or the inbox workers' 4 s), so
    // the new connection starts with a limit far from the 1 s call's below.
    leads
        .upsert_lead(write("5511900000011", 30_000))
        .await
        .unwrap();

    // Every connection of the router to the tenant goes away.
    let su = pg.connect("postgres").await.unwrap();
    let db = plane.database_of("rt-fresh").await;
    su.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND usename <> current_user",
        &[&db],
    )
    .await
    .unwrap();
    let gone = eventually(Duration::from_secs(3), || async {
        tenant_connections(&pg).await == 0
    })
    .await;
    assert!(gone, "the router's connections were closed");
    tokio::time::sleep(Duration::from_millis(200)).await;

    let blocker = lock_leads(&pg, &plane, "rt-fresh").await;
    let err = stopped_on_the_server(
        &pg,
        &mut leads,
        write("5511900000012", 1_000),
        blocker,
        ("rt-fresh", &token),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "the stopped write did not land");
}

/// Sends `req`, an upsert that waits for `blocker`'s lock on `leads`, and checks that its
/// deadline ended it and that its statement stopped on the server; then releases the lock
/// and looks the lead up (in the same tenant, by the same phone).
async fn stopped_on_the_server(
    pg: &pg_harness::PgServer,
    leads: &mut LeadsClient<tonic::transport::Channel>,
    req: tonic::Request<dm::UpsertLeadRequest>,
    blocker: tokio_postgres::Client,
    (tenant, token): (&str, &str),
) -> Result<tonic::Response<dm::Lead>, tonic::Status> {
    let phone = req.get_ref().phone.clone();
    let err = leads.upsert_lead(req).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    let stopped = eventually(Duration::from_secs(2), || async {
        active_statements(pg).await == 0
    })
    .await;
    assert!(stopped, "the write stopped on the server");
    blocker.batch_execute("ROLLBACK").await.unwrap();
    let key = Some(dm::get_lead_request::Key::Phone(phone));
    leads
        .get_lead(call(dm::GetLeadRequest { key }, tenant, token))
        .await
}

/// A transaction needs a connection of its own: on a tenant whose one connection is kept
/// busy by pipelined calls, it still gets it well before its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_is_not_starved_by_pipelined_calls() {
    let pg = pg_harness::PgServer::start().unwrap();
    let plane = Plane::start().await;
    plane.add_server("busy", &pg, 20).await;
    plane.create("rt-busy", "servicos", "busy").await;
    let router = Router::start(&plane, &[("TENANT_ROUTER__POOLS__MAX_PER_TENANT", "1")]).await;
    let token = plane_token_all();
    let ch = router.channel().await;
    LeadsClient::new(ch.clone())
        .upsert_lead(call(upsert("5511900000010", "busy"), "rt-busy", &token))
        .await
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..32 {
        let (mut leads, token, stop) = (LeadsClient::new(ch.clone()), token.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut done = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let req = dm::GetLeadRequest {
                    key: Some(dm::get_lead_request::Key::Phone("5511900000010".into())),
                };
                leads.get_lead(call(req, "rt-busy", &token)).await.unwrap();
                done += 1;
            }
            done
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut catalog = CatalogClient::new(ch.clone());
    for i in 0..3 {
        let mut req = call(
            dm::UpsertItemRequest {
                item: Some(dm::CatalogItem {
                    sku: format!("SVC-{i}"),
                    name: "Instalação".into(),
                    price_cents: 10_000,
                    active: true,
                    ..Default::default()
                }),
            },
            "rt-busy",
            &token,
        );
        req.set_timeout(Duration::from_secs(2));
        let started = std::time::Instant::now();
        catalog
            .upsert_item(req)
            .await
            .expect("the transaction got the tenant's connection");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        assert!(r.await.unwrap() > 10, "the reads kept going");
    }
    assert_eq!(
        tenant_connections(&pg).await,
        1,
        "one connection served them all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_endpoints_and_graceful_shutdown() {
    let plane = Plane::start().await;
    let mut router = Router::start(&plane, &[("TENANT_ROUTER__SHUTDOWN_GRACE_MS", "200")]).await;
    // The grace period only counts once shutdown starts: the router still serves after it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let ch = router.channel().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    for service in [
        "",
        "tenancy.domain.v1.Leads",
        "tenancy.domain.v1.Conversations",
        "tenancy.domain.v1.Catalog",
    ] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap();
        assert_eq!(r.into_inner().status, 1, "{service} SERVING");
    }
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut reflection = ServerReflectionClient::new(ch);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let resp = reflection
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!()
    };
    assert!(list
        .service
        .iter()
        .any(|s| s.name == "tenancy.domain.v1.Leads"));
    assert_eq!(router.http_get("/healthz").await.0, 200);
    let (status, body) = router.http_get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("tenant_router_route_cache_total")
            || body.contains("tenant_router_pools_open"),
        "{body}"
    );
    assert_eq!(router.http_get("/nope").await.0, 404);

    let _ = std::process::Command::new("kill")
        .args(["-TERM", &router.pid().to_string()])
        .status();
    let status = router
        .wait_exit(Duration::from_secs(10))
        .expect("router exits after SIGTERM");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_router_configuration_is_refused() {
    let refused = |extra: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tenant-router"));
        cmd.env("TENANT_ROUTER__GRPC_LISTEN", "127.0.0.1:0")
            .env("TENANT_ROUTER__HTTP_LISTEN", "127.0.0.1:0")
            .env(
                "TENANT_ROUTER__CONTROL_PLANE_ENDPOINT",
                "http://127.0.0.1:1",
            )
            .env("TENANT_ROUTER__DIRECTORY_TOKEN", "some-router-credential")
            .env(
                "TENANT_ROUTER__TOKEN_VERIFYING_KEY",
                common::verifying_key(),
            );
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "{extra:?} accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    for (k, v, msg) in [
        (
            "TENANT_ROUTER__TOKEN_VERIFYING_KEY",
            "short",
            "token verifying key must be 32 bytes",
        ),
        ("TENANT_ROUTER__POOLS__BUDGET_SHARE", "2", "budget_share"),
        (
            "TENANT_ROUTER__POOLS__PIPELINE_DEPTH",
            "5000",
            "pools.pipeline_depth must be at most 1024",
        ),
        (
            "TENANT_ROUTER__POOLS__STUCK_AFTER_MS",
            "0",
            "pools.stuck_after_ms must be between 1 and 60000",
        ),
        (
            "TENANT_ROUTER__INBOX__WORKERS",
            "0",
            "inbox.writers, readers",
        ),
        ("TENANT_ROUTER__INBOX__QUEUE", "-1", "queue"),
        ("TENANT_ROUTER__SURPRISE", "1", "surprise"),
        (
            "TENANT_ROUTER__CONTROL_PLANE_ENDPOINT",
            "ftp://x",
            "control_plane_endpoint",
        ),
        (
            "TENANT_ROUTER__CONTROL_PLANE_ENDPOINT",
            "https://127.0.0.1:1",
            "needs control_plane_tls.ca_file",
        ),
        (
            "TENANT_ROUTER__CONTROL_PLANE_ENDPOINT",
            "http://127.0.0.1:1,ftp://x",
            "http:// or https:// URLs, separated by commas",
        ),
        (
            "TENANT_ROUTER__CONTROL_PLANE_ENDPOINT",
            " , ",
            "control_plane_endpoint",
        ),
        (
            "TENANT_ROUTER__INBOX__RELAY_WINDOW_MS",
            "0",
            "relay_window_ms must be above 0",
        ),
        (
            "TENANT_ROUTER__INBOX__RELAY_EVERY_MS",
            "60000",
            "inbox.relay_every_ms must be below inbox.relay_window_ms",
        ),
        (
            "TENANT_ROUTER__INBOX__COLD_WORKERS",
            "99",
            "inbox.cold_workers must be at most inbox.workers",
        ),
        ("LOG_FORMAT", "xml", "LOG_FORMAT must be"),
        (
            "TENANT_ROUTER_FILE__WEBHOOK__APP_SECRET",
            "/nonexistent/secret",
            "TENANT_ROUTER_FILE__WEBHOOK__APP_SECRET: cannot read /nonexistent/secret",
        ),
        (
            "TENANT_ROUTER_FILE__DIRECTORY_TOKEN",
            "/nonexistent/token",
            "set TENANT_ROUTER__DIRECTORY_TOKEN or TENANT_ROUTER_FILE__DIRECTORY_TOKEN, not both",
        ),
        (
            "TENANT_ROUTER__HEALTH_LISTEN",
            "not-an-address",
            "health_listen",
        ),
    ] {
        let stderr = refused(&[(k, v)]);
        assert!(stderr.contains(msg), "{k}: {stderr}");
    }
    // One secret for two purposes is refused.
    let same = "the-same-secret-for-two-purposes";
    let stderr = refused(&[
        ("TENANT_ROUTER__WEBHOOK__APP_SECRET", same),
        ("TENANT_ROUTER__WEBHOOK__VERIFY_TOKEN", same),
    ]);
    assert!(stderr.contains("must be different secrets"), "{stderr}");
}

async fn role_connections(pg: &pg_harness::PgServer, role: &str) -> i64 {
    let c = pg.connect("postgres").await.unwrap();
    c.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
        &[&role],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pools_close_and_rotated_credentials_are_refetched() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("one", pg, 80).await;
    plane.create("rt-foxtrot", "servicos", "one").await;
    let router = Router::start(&plane, &[("TENANT_ROUTER__POOLS__IDLE_SECS", "1")]).await;
    let token = plane_token_all();
    let mut leads = LeadsClient::new(router.channel().await);
    let role = plane.role_of("rt-foxtrot").await;
    let role = role.as_str();
    leads
        .upsert_lead(call(upsert("5511955556666", "F"), "rt-foxtrot", &token))
        .await
        .unwrap();
    assert!(role_connections(pg, role).await >= 1);
    let closed = eventually(Duration::from_secs(5), || async {
        role_connections(pg, role).await == 0
    })
    .await;
    assert!(closed, "an idle tenant pool is closed");

    // Rotate the password behind the router's back (no change event): the next connect
    // fails authentication, the router refetches the route and retries once.
    let new_password = "rotated-password-for-foxtrot";
    let sealed = control_plane::crypto::SecretBox::from_base64(common::MASTER_KEY)
        .unwrap()
        .seal(new_password, "tenant:rt-foxtrot:password")
        .unwrap();
    let catalog = pg.connect(&plane.catalog_db).await.unwrap();
    catalog
        .batch_execute("ALTER TABLE empresas DISABLE TRIGGER empresas_notify")
        .await
        .unwrap();
    catalog
        .execute(
            "UPDATE empresas SET senha_cifrada = $1, version = version + 1 WHERE slug = 'rt-foxtrot'",
            &[&sealed],
        )
        .await
        .unwrap();
    catalog
        .batch_execute("ALTER TABLE empresas ENABLE TRIGGER empresas_notify")
        .await
        .unwrap();
    pg.connect("postgres")
        .await
        .unwrap()
        .batch_execute(&format!("ALTER ROLE {role} PASSWORD '{new_password}'"))
        .await
        .unwrap();
    let lead = leads
        .get_lead(call(
            dm::GetLeadRequest {
                key: Some(dm::get_lead_request::Key::Phone("5511955556666".into())),
            },
            "rt-foxtrot",
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(lead.name, "F");
}

/// A control plane with one server, "tight", of budget 4 on `pg`, a tenant `one` and `n`
/// tenants `{prefix}-{i}` on it; returns the plane and the `n` tenants' slugs.
async fn tight_server(
    pg: &pg_harness::PgServer,
    one: &str,
    prefix: &str,
    n: usize,
) -> (Plane, Vec<String>) {
    let plane = Plane::start().await;
    plane.add_server("tight", pg, 4).await;
    plane.create(one, "servicos", "tight").await;
    let others: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    for s in &others {
        plane.create(s, "servicos", "tight").await;
    }
    (plane, others)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_on_cold_tenants_does_not_starve_a_hot_one() {
    let pg = pg_harness::PgServer::start().unwrap();
    let (plane, cold) = tight_server(&pg, "rt-hot", "rt-cold", 16).await;
    let router = Router::start(
        &plane,
        &[("TENANT_ROUTER__POOLS__DEFAULT_DEADLINE_MS", "10000")],
    )
    .await;
    let token = plane_token_all();
    let ch = router.channel().await;
    let hot = {
        let mut leads = LeadsClient::new(ch.clone());
        let token = token.clone();
        tokio::spawn(async move {
            let mut worst = Duration::ZERO;
            for i in 0..60 {
                let started = std::time::Instant::now();
                leads
                    .upsert_lead(call(
                        upsert(&format!("5511980{i:06}"), "hot"),
                        "rt-hot",
                        &token,
                    ))
                    .await
                    .unwrap();
                worst = worst.max(started.elapsed());
            }
            worst
        })
    };
    let mut burst = tokio::task::JoinSet::new();
    for s in cold {
        let mut leads = LeadsClient::new(ch.clone());
        let token = token.clone();
        burst.spawn(async move {
            leads
                .upsert_lead(call(upsert("5511970000000", "cold"), &s, &token))
                .await
                .map(|_| ())
        });
    }
    while let Some(r) = burst.join_next().await {
        r.unwrap().unwrap();
    }
    let worst = hot.await.unwrap();
    assert!(
        worst < Duration::from_secs(5),
        "the hot tenant waited {worst:?}"
    );
    assert!(tenant_connections(&pg).await <= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_keeps_its_connection_for_the_relay_of_its_events() {
    // Budget 4 (one permit kept free): three idle connections at most.
    let pg = pg_harness::PgServer::start().unwrap();
    let (plane, readers) = tight_server(&pg, "rt-writer", "rt-reader", 6).await;
    // A tenant's events are relayed at most every 3 s, so the second write's relay waits.
    let router = Router::start(&plane, &[("TENANT_ROUTER__INBOX__RELAY_EVERY_MS", "3000")]).await;
    let token = plane_token_all();
    let mut leads = LeadsClient::new(router.channel().await);
    let visits = async || {
        let (_, metrics) = router.http_get("/metrics").await;
        let handed = |result: &str| -> f64 {
            metrics
                .lines()
                .filter(|l| l.starts_with("tenant_router_connections_handed_total{"))
                .filter(|l| l.contains(&format!("\"{result}\"")) && l.contains("\"inbox\""))
                .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
                .sum()
        };
        (handed("reused"), handed("opened"))
    };
    let write = async |leads: &mut LeadsClient<_>, phone: &str| {
        leads
            .upsert_lead(call(upsert(phone, "w"), "rt-writer", &token))
            .await
            .unwrap();
    };
    // The first write's events are relayed at once, on the connection the write left.
    write(&mut leads, "5511960000001").await;
    assert!(
        eventually(Duration::from_secs(5), || async { visits().await.0 >= 1.0 }).await,
        "the first write's events were relayed"
    );
    // The second write's relay waits for its turn, while every reader's first call needs a
    // connection the budget can only give by closing an idle one. The writer has the
    // fewest uses (two calls against three each), so it would be the first closed.
    write(&mut leads, "5511960000002").await;
    for r in &readers {
        for _ in 0..3 {
            leads
                .list_leads(call(dm::ListLeadsRequest::default(), r, &token))
                .await
                .unwrap();
        }
    }
    assert!(
        eventually(Duration::from_secs(8), || async {
            let (reused, opened) = visits().await;
            reused + opened >= 2.0
        })
        .await,
        "the second write's events were relayed"
    );
    assert_eq!(
        visits().await,
        (2.0, 0.0),
        "both relays used the connection their write left"
    );
    assert!(tenant_connections(&pg).await <= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_ungranted_tenants_look_alike_and_revoked_tokens_stop_everywhere() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("one", pg, 80).await;
    plane.create("rv-alpha", "servicos", "one").await;
    let bravo = plane.create("rv-bravo", "servicos", "one").await;
    let router = Router::start(&plane, &[]).await;
    let issued = plane.issue(&["rv-alpha"], false).await;
    let token = issued.token.clone();
    let mut leads = LeadsClient::new(router.channel().await);
    leads
        .list_leads(call(dm::ListLeadsRequest::default(), "rv-alpha", &token))
        .await
        .unwrap();

    // A caller granted one tenant learns nothing about the others: another tenant (by slug
    // or id) and tenants that do not exist get the very same answer.
    let bravo_id = bravo.id.to_string();
    let mut answers = Vec::new();
    for key in ["rv-bravo", bravo_id.as_str(), "rv-nobody", "987654"] {
        let err = leads
            .list_leads(call(dm::ListLeadsRequest::default(), key, &token))
            .await
            .unwrap_err();
        answers.push((err.code(), err.message().to_string()));
    }
    assert!(
        answers.iter().all(|a| a == &answers[0]) && answers[0].0 == Code::PermissionDenied,
        "{answers:?}"
    );
    assert!(!answers[0].1.contains("rv-"), "{answers:?}");

    // Revoked: every router refuses the token within moments, without restarting.
    plane.revoke(&issued.token_id).await;
    let refused = eventually(Duration::from_secs(10), || {
        let mut leads = leads.clone();
        let token = token.clone();
        async move {
            leads
                .list_leads(call(dm::ListLeadsRequest::default(), "rv-alpha", &token))
                .await
                .is_err_and(|e| {
                    e.code() == Code::Unauthenticated && e.message().contains("revoked")
                })
        }
    })
    .await;
    assert!(refused, "the revocation reached the router");
    // A router started afterwards knows it too.
    drop(router);
    let router = Router::start(&plane, &[]).await;
    let mut leads = LeadsClient::new(router.channel().await);
    let err = leads
        .list_leads(call(dm::ListLeadsRequest::default(), "rv-alpha", &token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // Another token for the same tenant still works.
    let fresh = plane.token(&["rv-alpha"], false).await;
    leads
        .list_leads(call(dm::ListLeadsRequest::default(), "rv-alpha", &fresh))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_a_tenant_password_fails_no_call() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("one", pg, 80).await;
    plane.create("rot-alpha", "servicos", "one").await;
    let router = Router::start(&plane, &[]).await;
    let token = plane_token_all();
    let (old_role, old_password) = (
        plane.role_of("rot-alpha").await,
        plane.password_of("rot-alpha").await,
    );
    let db = plane.database_of("rot-alpha").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut callers = tokio::task::JoinSet::new();
    for w in 0..4 {
        let mut leads = LeadsClient::new(router.channel().await);
        let (token, stop) = (token.clone(), std::sync::Arc::clone(&stop));
        callers.spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let phone = format!("55119{:08}", w * 100_000 + i);
                match leads
                    .upsert_lead(call(upsert(&phone, "R"), "rot-alpha", &token))
                    .await
                {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(format!("{:?}: {}", e.code(), e.message())),
                }
                i += 1;
            }
            (ok, failed)
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    plane.rotate("rot-alpha").await;
    // Keep calling through the switch and past the old role's grace period.
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    while let Some(r) = callers.join_next().await {
        let (o, f) = r.unwrap();
        ok += o;
        failed.extend(f);
    }
    assert!(
        failed.is_empty(),
        "{} calls failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 20, "calls kept flowing: {ok}");
    assert_ne!(
        plane.role_of("rot-alpha").await,
        old_role,
        "the standby login took over"
    );
    // The old credentials stop opening the database once the grace period is over.
    let dead = eventually(Duration::from_secs(15), || async {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1")
            .port(pg.port)
            .user(&old_role)
            .password(&old_password)
            .dbname(&db);
        cfg.connect(tokio_postgres::NoTls).await.is_err()
    })
    .await;
    assert!(dead, "the previous login role was disabled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_id_has_one_spelling() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("one", pg, 80).await;
    let t = plane.create("sp-alpha", "servicos", "one").await;
    let router = Router::start(&plane, &[]).await;
    let token = plane_token_all();
    let mut leads = LeadsClient::new(router.channel().await);
    let id = t.id.to_string();
    leads
        .list_leads(call(dm::ListLeadsRequest::default(), &id, &token))
        .await
        .unwrap();
    for key in [
        format!("0{id}"),
        format!("+{id}"),
        format!(" {id}"),
        format!("{id} "),
        "-1".into(),
    ] {
        let err = leads
            .list_leads(call(dm::ListLeadsRequest::default(), &key, &token))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{key:?}");
        assert!(err.message().contains("leading zeros"), "{key:?}: {err:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_grpc_handshakes_are_bounded_and_dropped() {
    use tokio::io::AsyncReadExt;
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("one", pg, 80).await;
    plane.create("gh-alpha", "servicos", "one").await;
    let router = Router::start(
        &plane,
        &[
            ("TENANT_ROUTER__GRPC__MAX_CONNECTIONS", "200"),
            ("TENANT_ROUTER__GRPC__HANDSHAKE_TIMEOUT_MS", "3000"),
        ],
    )
    .await;
    let addr = router.grpc.trim_start_matches("https://").to_string();
    // 250 clients connect and never start the TLS handshake.
    let mut stalled = Vec::new();
    for _ in 0..250 {
        stalled.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    // Past the cap a connection is closed at once (well before the 3 s handshake timeout,
    // with room for a loaded machine to accept the 250); every stalled one once the
    // handshake timeout passes. A read sees the close (0 bytes or a reset).
    let closed = |mut c: tokio::net::TcpStream, within: Duration| async move {
        let mut buf = [0u8; 16];
        matches!(
            tokio::time::timeout(within, c.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    };
    let last = stalled.pop().unwrap();
    assert!(
        closed(last, Duration::from_millis(2000)).await,
        "over the cap: closed at once"
    );
    let first = stalled.remove(0);
    assert!(
        closed(first, Duration::from_secs(8)).await,
        "a silent client is dropped"
    );
    drop(stalled);
    // Meanwhile and afterwards, real calls are served.
    let token = plane_token_all();
    let mut leads = LeadsClient::new(router.channel().await);
    leads
        .list_leads(call(dm::ListLeadsRequest::default(), "gh-alpha", &token))
        .await
        .unwrap();
}
