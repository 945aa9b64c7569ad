//! WhatsApp webhook matrix against the real router, real control plane and real PostgreSQL:
//! handshake, signatures, body limit, batches, duplicates (also concurrent), statuses,
//! unknown numbers, the Brazilian 9th digit, media, malformed items, slow and down databases.
#![allow(clippy::unwrap_used)]

mod common;

use common::wh::{delivery, http, post_signed, sign, text_msg, APP_SECRET, VERIFY_TOKEN};
use common::{eventually, Plane, Router};
use futures_util::FutureExt;
use serde_json::json;
use std::time::Duration;

/// Posts a signed delivery; once it is answered 200, waits until the inbox has applied it
/// (200 means durable in the inbox; workers store it in the tenant's database right after).
async fn post(router: &Router, body: &[u8]) -> u16 {
    let status = post_signed(&router.http, body).await;
    if status == 200 {
        assert!(
            common::inbox_drained(&router.ingest_url, Duration::from_secs(10)).await,
            "an acknowledged delivery was not applied within 10 s"
        );
    }
    status
}

struct Setup {
    plane: Plane,
    router: Router,
}

async fn setup(slug: &str, phone_number_id: &str, pg: &pg_harness::PgServer) -> Setup {
    setup_with(slug, phone_number_id, pg, &[]).await
}

async fn setup_with(
    slug: &str,
    phone_number_id: &str,
    pg: &pg_harness::PgServer,
    extra: &[(&str, &str)],
) -> Setup {
    let plane = Plane::start().await;
    plane.add_server("main", pg, 80).await;
    let mut admin = plane.admin().await;
    admin
        .create_tenant(plane.admin_req(proto::control::v1::CreateTenantRequest {
            slug: slug.into(),
            name: "Loja".into(),
            sector: proto::control::v1::Sector::Varejo as i32,
            phone_number_id: phone_number_id.into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    let mut env = common::wh::ENV.to_vec();
    env.extend_from_slice(extra);
    let router = Router::start(&plane, &env).await;
    Setup { plane, router }
}

async fn count(pg: &pg_harness::PgServer, db: &str, sql: &str) -> i64 {
    pg.connect(db)
        .await
        .unwrap()
        .query_one(sql, &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_signature_and_limits() {
    let pg = pg_harness::shared();
    let s = setup("wh-alpha", "900000001", pg).await;
    let addr = &s.router.http;
    let (status, body) = http(
        addr,
        "GET",
        "/webhooks/whatsapp?hub.mode=subscribe&hub.challenge=11%2B58%20x&hub.verify_token=verify-me-please",
        &[],
        b"",
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (200, "11+58 x"),
        "the challenge is echoed byte for byte"
    );
    for q in [
        "hub.mode=subscribe&hub.challenge=1&hub.verify_token=wrong",
        "hub.mode=unsubscribe&hub.challenge=1&hub.verify_token=verify-me-please",
        "hub.challenge=1",
    ] {
        assert_eq!(
            http(addr, "GET", &format!("/webhooks/whatsapp?{q}"), &[], b"")
                .await
                .0,
            403,
            "{q}"
        );
    }

    let body = delivery(
        "900000001",
        json!([text_msg("wamid.SIG", "5511912345678", "oi")]),
        json!([]),
    );
    let (status, _) = http(addr, "POST", "/webhooks/whatsapp", &[], &body).await;
    assert_eq!(status, 401, "no signature");
    let forged = format!("sha256={}", "0".repeat(64));
    let (status, _) = http(
        addr,
        "POST",
        "/webhooks/whatsapp",
        &[("X-Hub-Signature-256", forged)],
        &body,
    )
    .await;
    assert_eq!(status, 401, "wrong signature");
    let mut tampered = body.clone();
    tampered.push(b' ');
    let (status, _) = http(
        addr,
        "POST",
        "/webhooks/whatsapp",
        &[("X-Hub-Signature-256", sign(&body))],
        &tampered,
    )
    .await;
    assert_eq!(status, 401, "signature over other bytes");
    assert_eq!(
        count(
            pg,
            &s.plane.database_of("wh-alpha").await,
            "SELECT count(*) FROM mensagens"
        )
        .await,
        0,
        "nothing written"
    );

    let huge = vec![b'x'; 262_145];
    assert_eq!(post(&s.router, &huge).await, 413);
    assert_eq!(post(&s.router, b"not json at all").await, 400);
    assert_eq!(post(&s.router, b"{\"object\":\"x\"}").await, 400);
    assert_eq!(
        count(
            pg,
            &s.plane.database_of("wh-alpha").await,
            "SELECT count(*) FROM leads"
        )
        .await,
        0
    );
    drop(s.plane);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_leads_and_duplicates() {
    let pg = pg_harness::shared();
    let s = setup_with(
        "wh-bravo",
        "900000002",
        pg,
        &[("TENANT_ROUTER__ROUTES__USAGE_REPORT_EVERY_SECS", "1")],
    )
    .await;
    let db = s.plane.database_of("wh-bravo").await;
    let db = db.as_str();
    // Without and with the 9th digit: one lead, raw id kept; a landline is left alone.
    let first = delivery(
        "900000002",
        json!([text_msg("wamid.1", "551187654321", "olá")]),
        json!([]),
    );
    assert_eq!(post(&s.router, &first).await, 200);
    assert_eq!(post(&s.router, &first).await, 200, "a redelivery is fine");
    let second = delivery(
        "900000002",
        json!([text_msg("wamid.2", "5511987654321", "tudo bem?")]),
        json!([]),
    );
    assert_eq!(post(&s.router, &second).await, 200);
    let landline = delivery(
        "900000002",
        json!([text_msg("wamid.3", "551133334444", "fixo")]),
        json!([]),
    );
    assert_eq!(post(&s.router, &landline).await, 200);
    let c = pg.connect(db).await.unwrap();
    let leads: Vec<(String, String, Option<String>)> = c
        .query("SELECT wa_id, wa_id_raw, nome FROM leads ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(leads.len(), 2, "{leads:?}");
    assert_eq!(
        leads[0],
        (
            "5511987654321".into(),
            "551187654321".into(),
            Some("Ana Souza".into())
        )
    );
    assert_eq!(leads[1].0, "551133334444");
    assert_eq!(count(pg, db, "SELECT count(*) FROM mensagens").await, 3);
    assert_eq!(count(pg, db, "SELECT count(*) FROM conversas").await, 2);
    let unread: i32 = c
        .query_one("SELECT nao_lidas FROM conversas ORDER BY id LIMIT 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(unread, 2);

    // Concurrent duplicate deliveries of new messages from a new lead: stored once, one lead,
    // one open conversation.
    let dup = delivery(
        "900000002",
        json!([
            text_msg("wamid.C1", "5521988887777", "a"),
            text_msg("wamid.C2", "5521988887777", "b")
        ]),
        json!([]),
    );
    let mut set = tokio::task::JoinSet::new();
    for i in 0..12 {
        let addr = s.router.http.clone();
        let body = if i % 2 == 0 {
            dup.clone()
        } else {
            delivery(
                "900000002",
                json!([text_msg(&format!("wamid.D{i}"), "5521988887777", "c")]),
                json!([]),
            )
        };
        set.spawn(async move { post_signed(&addr, &body).await });
    }
    while let Some(r) = set.join_next().await {
        assert_eq!(r.unwrap(), 200);
    }
    assert_eq!(
        count(
            pg,
            db,
            "SELECT count(*) FROM leads WHERE wa_id = '5521988887777'"
        )
        .await,
        1
    );
    assert_eq!(
        count(pg, db, "SELECT count(*) FROM conversas c JOIN leads l ON l.id = c.lead_id WHERE l.wa_id = '5521988887777'")
            .await,
        1
    );
    assert_eq!(
        count(
            pg,
            db,
            "SELECT count(*) FROM mensagens WHERE wamid IN ('wamid.C1', 'wamid.C2')"
        )
        .await,
        2
    );
    assert_eq!(
        count(
            pg,
            db,
            "SELECT count(*) FROM mensagens WHERE wamid LIKE 'wamid.D%'"
        )
        .await,
        6
    );
    // Usage: every message stored once is metered for the tenant (redeliveries are not).
    let metered = eventually(Duration::from_secs(10), || async {
        let rows = s
            .plane
            .admin()
            .await
            .get_usage(s.plane.admin_req(proto::control::v1::UsageRequest {
                tenant: "wh-bravo".into(),
            }))
            .await
            .unwrap()
            .into_inner()
            .rows;
        rows.first().is_some_and(|r| r.messages_today == 11)
    })
    .await;
    assert!(metered, "11 messages metered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_media_malformed_items_and_unknown_numbers() {
    let pg = pg_harness::shared();
    let s = setup("wh-charlie", "900000003", pg).await;
    let db = s.plane.database_of("wh-charlie").await;
    let db = db.as_str();
    // A batch of 1000 messages across two entries and two changes, with a media message and
    // malformed items mixed in.
    let mut a: Vec<serde_json::Value> = (0..500)
        .map(|i| text_msg(&format!("wamid.A{i}"), &format!("55119{:08}", i % 40), "x"))
        .collect();
    a.push(json!({"no": "id"}));
    a.push(json!({
        "from": "5511911110000", "id": "wamid.IMG", "type": "image",
        "image": {"id": "MEDIA-42", "mime_type": "image/jpeg", "sha256": "c0ffee", "caption": "foto do carro"}
    }));
    let b: Vec<serde_json::Value> = (0..499)
        .map(|i| text_msg(&format!("wamid.B{i}"), &format!("55219{:08}", i % 30), "y"))
        .collect();
    let body = serde_json::to_vec(&json!({
        "object": "whatsapp_business_account",
        "entry": [
            {"id": "W", "changes": [
                {"field": "messages", "value": {"metadata": {"phone_number_id": "900000003"}, "messages": a}},
                {"field": "account_update", "value": {"whatever": 1}}
            ]},
            {"id": "W", "changes": [
                {"field": "messages", "value": {"metadata": {"phone_number_id": "900000003"}, "messages": b}},
                {"field": "messages", "value": {"metadata": {"phone_number_id": "777000777"},
                  "messages": [text_msg("wamid.LOST", "5511900001111", "para ninguém")]}}
            ]},
            {"broken": "entry"}
        ]
    }))
    .unwrap();
    assert!(body.len() < 262_144);
    assert_eq!(post(&s.router, &body).await, 200);
    assert_eq!(count(pg, db, "SELECT count(*) FROM mensagens").await, 1000);
    let media: (String, String, String, String) = {
        let c = pg.connect(db).await.unwrap();
        let r = c
            .query_one("SELECT midia_id, midia_mime, midia_sha256, conteudo FROM mensagens WHERE wamid = 'wamid.IMG'", &[])
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3))
    };
    assert_eq!(
        media,
        (
            "MEDIA-42".into(),
            "image/jpeg".into(),
            "c0ffee".into(),
            "foto do carro".into()
        )
    );
    // The number nobody owns was kept as a dead letter with the raw body.
    let catalog = pg.connect(&s.plane.catalog_db).await.unwrap();
    let row = catalog
        .query_one(
            "SELECT fonte, corpo FROM webhooks_nao_roteados WHERE phone_number_id = '777000777'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "meta");
    assert_eq!(row.get::<_, Vec<u8>>(1), body);
    let (_, metrics) = s.router.http_get("/metrics").await;
    assert!(
        metrics.contains("tenant_router_dead_letters_total{outcome=\"kept\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_apply_monotonically() {
    let pg = pg_harness::shared();
    let s = setup("wh-delta", "900000004", pg).await;
    let db = s.plane.database_of("wh-delta").await;
    let db = db.as_str();
    let c = pg.connect(db).await.unwrap();
    c.batch_execute(
        "INSERT INTO leads (wa_id) VALUES ('5511912345678');
         INSERT INTO conversas (lead_id) VALUES (1);
         INSERT INTO mensagens (conversa_id, wamid, direcao, status) VALUES
           (1, 'wamid.OUT1', 'saida', 'pendente'), (1, 'wamid.OUT2', 'saida', 'pendente');",
    )
    .await
    .unwrap();
    let st = |id: &str, status: &str| json!({"id": id, "status": status, "timestamp": "1763800000", "recipient_id": "5511912345678"});
    for (statuses, expected1) in [
        (json!([st("wamid.OUT1", "delivered")]), "delivered"),
        (json!([st("wamid.OUT1", "sent")]), "delivered"),
        (
            json!([st("wamid.OUT1", "read"), st("wamid.OUT1", "delivered")]),
            "read",
        ),
        (json!([st("wamid.OUT1", "failed")]), "read"),
        (json!([st("wamid.UNKNOWN", "read")]), "read"),
    ] {
        assert_eq!(
            post(&s.router, &delivery("900000004", json!([]), statuses)).await,
            200
        );
        let got: String = c
            .query_one(
                "SELECT status FROM mensagens WHERE wamid = 'wamid.OUT1'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(got, expected1);
    }
    let failed = json!([{"id": "wamid.OUT2", "status": "failed", "errors": [{"code": 131047, "title": "Re-engagement message"}]}]);
    assert_eq!(
        post(&s.router, &delivery("900000004", json!([]), failed)).await,
        200
    );
    assert_eq!(
        post(
            &s.router,
            &delivery(
                "900000004",
                json!([]),
                json!([st("wamid.OUT2", "delivered")])
            )
        )
        .await,
        200
    );
    let row = c
        .query_one(
            "SELECT status, erro FROM mensagens WHERE wamid = 'wamid.OUT2'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "failed", "failed is terminal");
    assert_eq!(row.get::<_, serde_json::Value>(1)[0]["code"], 131047);
    assert_eq!(
        count(pg, db, "SELECT count(*) FROM mensagens").await,
        2,
        "unknown wamids create nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_down_tenant_database_delays_only_its_own_deliveries() {
    let pg = pg_harness::shared();
    let s = setup("wh-echo", "900000005", pg).await;
    let db = s.plane.database_of("wh-echo").await;
    let db = db.as_str();
    let mut admin = s.plane.admin().await;
    admin
        .create_tenant(s.plane.admin_req(proto::control::v1::CreateTenantRequest {
            slug: "wh-echo-two".into(),
            name: "Vizinha".into(),
            sector: proto::control::v1::Sector::Varejo as i32,
            phone_number_id: "900000015".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    let other_db = s.plane.database_of("wh-echo-two").await;
    let stored = |db: String, wamid: &'static str| async move {
        count(
            pg,
            &db,
            &format!("SELECT count(*) FROM mensagens WHERE wamid = '{wamid}'"),
        )
        .await
    };
    let body = delivery(
        "900000005",
        json!([text_msg("wamid.SLOW", "5511955554444", "demora")]),
        json!([]),
    );
    // Too slow: its messages are locked by someone else. The delivery is acknowledged from
    // the inbox at once and applied once the lock is gone.
    let blocker = pg.connect(db).await.unwrap();
    blocker
        .batch_execute("BEGIN; LOCK TABLE mensagens IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    assert_eq!(post_signed(&s.router.http, &body).await, 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answered in {:?}",
        started.elapsed()
    );
    assert_eq!(
        s.plane.pending().await,
        1,
        "durable in the inbox, not applied yet"
    );
    blocker.batch_execute("ROLLBACK").await.unwrap();
    s.plane.drained(Duration::from_secs(10)).await;
    assert_eq!(stored(db.to_string(), "wamid.SLOW").await, 1);

    // Down: the database refuses connections. Its deliveries are still acknowledged and
    // wait; the neighbour on the same server is served meanwhile.
    let su = pg.connect("postgres").await.unwrap();
    su.batch_execute(&format!(
        "ALTER DATABASE {db} ALLOW_CONNECTIONS false; \
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}' AND pid <> pg_backend_pid()"
    ))
    .await
    .unwrap();
    let down = delivery(
        "900000005",
        json!([text_msg("wamid.DOWN", "5511955554444", "caiu")]),
        json!([]),
    );
    assert_eq!(post_signed(&s.router.http, &down).await, 200);
    let neighbour = delivery(
        "900000015",
        json!([text_msg("wamid.NEXT", "5511955553333", "oi")]),
        json!([]),
    );
    assert_eq!(post_signed(&s.router.http, &neighbour).await, 200);
    assert!(
        eventually(Duration::from_secs(5), || stored(
            other_db.clone(),
            "wamid.NEXT"
        )
        .map(|n| n == 1))
        .await,
        "the neighbour's delivery was applied while the other database was down"
    );
    // The operator sees the tenant behind, with the reason.
    let mut admin = s.plane.admin().await;
    let behind = eventually(Duration::from_secs(5), || {
        let mut admin = admin.clone();
        let req = s.plane.admin_req(proto::control::v1::InboxStatusRequest {});
        async move {
            let st = admin.inbox_status(req).await.unwrap().into_inner();
            st.depth == 1
                && st
                    .stuck
                    .iter()
                    .any(|t| t.slug == "wh-echo" && t.attempts > 0 && !t.last_error.is_empty())
        }
    })
    .await;
    assert!(behind, "inbox status shows the failing tenant");
    let shown = admin
        .inbox_status(s.plane.admin_req(proto::control::v1::InboxStatusRequest {}))
        .await
        .unwrap()
        .into_inner();
    let text = format!("{shown:?}");
    assert!(!text.contains(db) && !text.contains("password"), "{text}");
    su.batch_execute(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
    // Back: applied within seconds (the backoff is capped), once.
    let returned = std::time::Instant::now();
    s.plane.drained(Duration::from_secs(10)).await;
    assert!(returned.elapsed() < Duration::from_secs(10));
    assert_eq!(post(&s.router, &down).await, 200, "Meta's late retry");
    assert_eq!(stored(db.to_string(), "wamid.DOWN").await, 1);
    assert_eq!(
        count(pg, db, "SELECT count(*) FROM leads").await,
        1,
        "one lead for both messages"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evolution_gateways_with_a_per_tenant_token() {
    let pg = pg_harness::shared();
    let s = setup("wh-foxtrot", "900000006", pg).await;
    let db = s.plane.database_of("wh-foxtrot").await;
    let db = db.as_str();
    let mut admin = s.plane.admin().await;
    let plane = &s.plane;
    let rotate = |admin: &mut proto::control::v1::tenant_admin_client::TenantAdminClient<
        tonic::transport::Channel,
    >| {
        let mut admin = admin.clone();
        let req = plane.admin_req(proto::control::v1::TenantRef {
            tenant: "wh-foxtrot".into(),
        });
        async move {
            admin
                .rotate_webhook_token(req)
                .await
                .unwrap()
                .into_inner()
                .token
        }
    };
    let token = rotate(&mut admin).await;
    let evo = |data: serde_json::Value| {
        serde_json::to_vec(
            &json!({"event": "messages.upsert", "instance": "wh-foxtrot", "data": data}),
        )
        .unwrap()
    };
    let body = evo(json!([
        {"key": {"remoteJid": "551187654321@s.whatsapp.net", "fromMe": false, "id": "EVO1"}, "pushName": "Ana",
         "message": {"conversation": "oi"}, "messageType": "conversation", "messageTimestamp": 1763800000},
        {"key": {"remoteJid": "123456789012345@lid", "remoteJidAlt": "5511912345678@s.whatsapp.net", "fromMe": false, "id": "EVO2"},
         "message": {"extendedTextMessage": {"text": "via lid"}}},
        {"key": {"remoteJid": "999888777666555@lid", "fromMe": false, "id": "EVO3"}, "message": {"conversation": "só lid"}},
        {"key": {"remoteJid": "551187654321@s.whatsapp.net", "fromMe": true, "id": "EVO4"}, "pushName": "Loja",
         "message": {"conversation": "resposta da loja"}},
        {"key": {"remoteJid": "5521977776666@s.whatsapp.net", "fromMe": true, "id": "EVO5"},
         "message": {"conversation": "prospecção"}},
        {"key": {"remoteJid": "1203630@g.us", "fromMe": false, "id": "EVO6"}, "message": {"conversation": "grupo"}}
    ]));
    let path = "/webhooks/evolution/wh-foxtrot";
    let addr = &s.router.http;
    let send = |headers: Vec<(&'static str, String)>, path: &'static str, body: Vec<u8>| {
        let addr = addr.clone();
        async move { http(&addr, "POST", path, &headers, &body).await.0 }
    };
    assert_eq!(send(vec![], path, body.clone()).await, 401, "no token");
    assert_eq!(
        send(vec![("apikey", "wrong".into())], path, body.clone()).await,
        401,
        "wrong token"
    );
    // An unknown instance and a wrong token look the same: the endpoint does not tell
    // which slugs exist.
    let unknown = http(
        addr,
        "POST",
        "/webhooks/evolution/nobody-here",
        &[("apikey", token.clone())],
        &body,
    )
    .await;
    let wrong = http(addr, "POST", path, &[("apikey", "wrong".into())], &body).await;
    assert_eq!(unknown, wrong);
    assert_eq!(unknown.0, 401);
    assert_eq!(
        count(pg, db, "SELECT count(*) FROM mensagens").await,
        0,
        "nothing written"
    );

    assert_eq!(
        send(vec![("apikey", token.clone())], path, body.clone()).await,
        200
    );
    assert_eq!(
        send(
            vec![("authorization", format!("Bearer {token}"))],
            path,
            body.clone()
        )
        .await,
        200,
        "redelivery"
    );
    s.plane.drained(Duration::from_secs(10)).await;
    let c = pg.connect(db).await.unwrap();
    let rows: Vec<(String, String, String)> = c
        .query(
            "SELECT m.wamid, m.direcao, l.wa_id FROM mensagens m JOIN conversas c ON c.id = m.conversa_id \
             JOIN leads l ON l.id = c.lead_id ORDER BY m.wamid",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("EVO1".into(), "entrada".into(), "5511987654321".into()),
            ("EVO2".into(), "entrada".into(), "5511912345678".into()),
            (
                "EVO3".into(),
                "entrada".into(),
                "lid:999888777666555".into()
            ),
            ("EVO4".into(), "saida".into(), "5511987654321".into()),
            ("EVO5".into(), "saida".into(), "5521977776666".into()),
        ]
    );
    let origem: String = c
        .query_one(
            "SELECT origem FROM leads WHERE wa_id = '5521977776666'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        origem, "outbound",
        "a message the business sent never makes an inbound lead"
    );
    let name: Option<String> = c
        .query_one("SELECT nome FROM leads WHERE wa_id = '5511987654321'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name.as_deref(), Some("Ana"));
    let unread: i32 = c
        .query_one("SELECT nao_lidas FROM conversas c JOIN leads l ON l.id = c.lead_id WHERE l.wa_id = '5511987654321'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(unread, 1, "only inbound messages count as unread");
    let other =
        serde_json::to_vec(&json!({"event": "connection.update", "data": {"state": "open"}}))
            .unwrap();
    assert_eq!(
        send(vec![("apikey", token.clone())], path, other).await,
        200
    );
    assert_eq!(
        send(vec![("apikey", token.clone())], path, b"nope".to_vec()).await,
        400
    );

    // A rotated token replaces the old one in the router without a restart.
    let new_token = rotate(&mut admin).await;
    let rotated = eventually(Duration::from_secs(2), || {
        let old = token.clone();
        let body = evo(json!([]));
        async move { send(vec![("apikey", old)], path, body).await == 401 }
    })
    .await;
    assert!(rotated, "the old token stopped working");
    assert_eq!(
        send(vec![("apikey", new_token)], path, evo(json!([]))).await,
        200
    );
}

/// Dead letters the control plane kept with a reason (item-level refusals).
async fn refused_items(s: &Setup) -> Vec<String> {
    pg_harness::shared()
        .connect(&s.plane.catalog_db)
        .await
        .unwrap()
        .query(
            "SELECT motivo FROM webhooks_nao_roteados WHERE motivo IS NOT NULL ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_item_never_costs_its_neighbours() {
    let pg = pg_harness::shared();
    let s = setup("wh-golf", "900000007", pg).await;
    let db = s.plane.database_of("wh-golf").await;
    let db = db.as_str();
    // Meta: a NUL in a text and in the profile name (normalised), an absurd timestamp and a
    // non-numeric one (refused), beside a good message; then a lone surrogate escape.
    let mut huge = text_msg("wamid.G3", "551187654323", "late");
    huge["timestamp"] = json!("9223372036854775807");
    let mut word = text_msg("wamid.G4", "551187654324", "when");
    word["timestamp"] = json!("yesterday");
    let body = serde_json::to_vec(&json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "WABA1", "changes": [{"field": "messages", "value": {
            "metadata": {"phone_number_id": "900000007"},
            "contacts": [{"wa_id": "551187654322", "profile": {"name": "Bi\u{0}a"}}],
            "messages": [
                text_msg("wamid.G1", "551187654321", "bom dia"),
                text_msg("wamid.G2", "551187654322", "o\u{0}i"),
                huge, word,
            ],
        }}]}]
    }))
    .unwrap();
    assert_eq!(post(&s.router, &body).await, 200);
    let lone = br#"{"entry":[{"id":"1","changes":[{"field":"messages","value":{"metadata":{"phone_number_id":"900000007"},"messages":[{"from":"551187654325","id":"wamid.G5","timestamp":"1763800000","type":"text","text":{"body":"x\ud800y"}}]}}]}]}"#;
    assert_eq!(post(&s.router, lone).await, 200);
    let stored: Vec<(String, String)> = pg
        .connect(db)
        .await
        .unwrap()
        .query("SELECT wamid, conteudo FROM mensagens ORDER BY wamid", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        stored,
        [
            ("wamid.G1".to_string(), "bom dia".to_string()),
            ("wamid.G2".into(), "oi".into()),
            ("wamid.G5".into(), "x\u{fffd}y".into()),
        ]
    );
    let name: String = pg
        .connect(db)
        .await
        .unwrap()
        .query_one("SELECT nome FROM leads WHERE wa_id = '5511987654322'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "Bia");
    let reasons = refused_items(&s).await;
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("out of range")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("not a number")),
        "{reasons:?}"
    );

    // Evolution: a NaN timestamp is refused, its neighbour stored.
    let mut admin = s.plane.admin().await;
    let token = admin
        .rotate_webhook_token(s.plane.admin_req(proto::control::v1::TenantRef {
            tenant: "wh-golf".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .token;
    let evo = serde_json::to_vec(
        &json!({"event": "messages.upsert", "instance": "wh-golf", "data": [
            {"key": {"remoteJid": "551187654326@s.whatsapp.net", "fromMe": false, "id": "EVO-G1"},
             "message": {"conversation": "ok"}, "messageTimestamp": 1763800000},
            {"key": {"remoteJid": "551187654327@s.whatsapp.net", "fromMe": false, "id": "EVO-G2"},
             "message": {"conversation": "nan"}, "messageTimestamp": "NaN"}
        ]}),
    )
    .unwrap();
    // The new token reaches the router through the change stream.
    let accepted = pg_harness::eventually(Duration::from_secs(10), || async {
        http(
            &s.router.http,
            "POST",
            "/webhooks/evolution/wh-golf",
            &[("apikey", token.clone())],
            &evo,
        )
        .await
        .0 == 200
    })
    .await;
    assert!(accepted, "the Evolution delivery was accepted");
    s.plane.drained(Duration::from_secs(10)).await;
    assert_eq!(
        count(
            pg,
            db,
            "SELECT count(*) FROM mensagens WHERE wamid LIKE 'EVO-G%'"
        )
        .await,
        1
    );
    assert_eq!(refused_items(&s).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_and_resume_reach_the_webhook_path_within_seconds() {
    let pg = pg_harness::shared();
    let s = setup("wh-hotel", "900000008", pg).await;
    let db = s.plane.database_of("wh-hotel").await;
    let db = db.as_str();
    let send = |i: u32| {
        delivery(
            "900000008",
            json!([text_msg(&format!("wamid.H{i}"), "551187654321", "oi")]),
            json!([]),
        )
    };
    assert_eq!(post(&s.router, &send(0)).await, 200);
    assert_eq!(count(pg, db, "SELECT count(*) FROM mensagens").await, 1);
    let dead = || async {
        pg_harness::shared()
            .connect(&s.plane.catalog_db)
            .await
            .unwrap()
            .query_one(
                "SELECT count(*) FROM webhooks_nao_roteados WHERE phone_number_id = '900000008'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    // Suspended: the route cached under the number is replaced by the pushed change, so
    // deliveries become dead letters instead of landing in the tenant database.
    s.plane.suspend("wh-hotel").await;
    let (router, dead) = (&s.router, &dead);
    let mut i = 1;
    let diverted = pg_harness::eventually(Duration::from_secs(10), || {
        i += 1;
        let body = send(i);
        async move {
            assert_eq!(post(router, &body).await, 200);
            dead().await > 0
        }
    })
    .await;
    assert!(
        diverted,
        "a suspended tenant's deliveries are dead-lettered"
    );
    let stored = count(pg, db, "SELECT count(*) FROM mensagens").await;
    s.plane.resume("wh-hotel").await;
    let landed = pg_harness::eventually(Duration::from_secs(10), || {
        i += 1;
        let body = send(i);
        async move {
            assert_eq!(post(router, &body).await, 200);
            count(pg, db, "SELECT count(*) FROM mensagens").await > stored
        }
    })
    .await;
    assert!(landed, "a resumed tenant receives deliveries again");
}

/// The open-files limit of this process (the router started by the test inherits it).
fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_do_not_block_health_or_webhooks() {
    use tokio::io::AsyncWriteExt;
    assert!(
        open_files_limit() >= 2_500,
        "raise the open-files limit to run this test (scripts/test.sh does: ulimit -n)"
    );
    let pg = pg_harness::shared();
    let s = setup("wh-india", "900000009", pg).await;
    let db = s.plane.database_of("wh-india").await;
    // 1,100 clients send headers promising a body and stall.
    let mut stalled = Vec::with_capacity(1_100);
    for _ in 0..1_100 {
        let mut c = tokio::net::TcpStream::connect(&s.router.http)
            .await
            .unwrap();
        c.write_all(
            b"POST /webhooks/whatsapp HTTP/1.1\r\nhost: x\r\ncontent-length: 200000\r\n\
              x-hub-signature-256: sha256=00\r\n\r\n",
        )
        .await
        .unwrap();
        stalled.push(c);
    }
    let started = std::time::Instant::now();
    let (status, _) = http(&s.router.http, "GET", "/healthz", &[], b"").await;
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let started = std::time::Instant::now();
    let body = delivery(
        "900000009",
        json!([text_msg("wamid.I1", "551187654321", "ainda aqui")]),
        json!([]),
    );
    assert_eq!(post(&s.router, &body).await, 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(count(pg, &db, "SELECT count(*) FROM mensagens").await, 1);
    drop(stalled);
}

/// A process's resident and peak resident memory, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_limit_bodies_stay_within_the_buffer_bound() {
    const BOUND: u64 = 4 << 20;
    /// What is not a body: each of the 100 connections' 64 KiB read-ahead buffer, plus
    /// 6 MiB for tasks, parsing and allocator slack (glibc's per-thread arenas vary from run
    /// to run: a clean-clone CI run peaked 24 KB over a 4 MiB slack). Without the bound the
    /// same burst grows the router by about 25 MB, well over this.
    const MARGIN: u64 = 100 * (64 << 10) + (6 << 20);
    let pg = pg_harness::shared();
    let bound = BOUND.to_string();
    let s = setup_with(
        "wh-juliett",
        "900000010",
        pg,
        &[("TENANT_ROUTER__HTTP__MAX_BUFFERED_BYTES", bound.as_str())],
    )
    .await;
    let (rss_before, _) = memory_kib(s.router.pid());
    let body = vec![b'x'; 250_000];
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let (addr, body) = (s.router.http.clone(), body.clone());
        clients.spawn(async move { post_signed(&addr, &body).await });
    }
    let mut statuses = Vec::new();
    while let Some(r) = clients.join_next().await {
        statuses.push(r.unwrap());
    }
    // Each was read in full (400: not a delivery) or turned away after a short wait for
    // buffer room (503).
    assert!(
        statuses.iter().all(|s| *s == 400 || *s == 503),
        "{statuses:?}"
    );
    let (_, peak) = memory_kib(s.router.pid());
    let grown = peak.saturating_sub(rss_before) * 1024;
    assert!(
        grown <= BOUND + MARGIN,
        "peak memory grew {grown} bytes for a {BOUND}-byte body bound"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_dead_letter_quota_is_answered_200_and_counted_as_dropped() {
    let pg = pg_harness::shared();
    let plane = Plane::start_with("[dead_letters]\nper_source_max_rows = 1\n").await;
    let router = Router::start(
        &plane,
        &[
            ("TENANT_ROUTER__WEBHOOK__APP_SECRET", APP_SECRET),
            ("TENANT_ROUTER__WEBHOOK__VERIFY_TOKEN", VERIFY_TOKEN),
        ],
    )
    .await;
    // Two different deliveries for a number nobody owns: the first is kept, the second
    // finds the quota full; Meta gets 200 for both (a retry would hit the same quota).
    for wamid in ["wamid.Q1", "wamid.Q2"] {
        let body = delivery(
            "777000999",
            json!([text_msg(wamid, "5511900001111", "oi")]),
            json!([]),
        );
        assert_eq!(post(&router, &body).await, 200, "{wamid}");
    }
    let kept = count(
        pg,
        &plane.catalog_db,
        "SELECT count(*) FROM webhooks_nao_roteados",
    )
    .await;
    assert_eq!(kept, 1);
    let (_, metrics) = router.http_get("/metrics").await;
    for line in [
        "tenant_router_dead_letters_total{outcome=\"kept\"} 1",
        "tenant_router_dead_letters_total{outcome=\"dropped\"} 1",
    ] {
        assert!(metrics.contains(line), "{line}: {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_kept_while_suspended_are_stored_on_resume_once() {
    use proto::control::v1 as cp;
    let pg = pg_harness::shared();
    let s = setup("wh-kilo", "900000011", pg).await;
    let db = s.plane.database_of("wh-kilo").await;
    let db = db.as_str();
    let mut admin = s.plane.admin().await;
    let token = admin
        .rotate_webhook_token(s.plane.admin_req(cp::TenantRef {
            tenant: "wh-kilo".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .token;
    let meta = |i: u32| {
        delivery(
            "900000011",
            json!([text_msg(&format!("wamid.K{i}"), "551187654321", "oi")]),
            json!([]),
        )
    };
    let evolution = serde_json::to_vec(&json!({"event": "messages.upsert", "instance": "wh-kilo",
        "data": {"key": {"remoteJid": "5511912345678@s.whatsapp.net", "fromMe": false, "id": "EVO-K1"},
                 "message": {"conversation": "pelo gateway"}, "messageTimestamp": 1763800000}}))
    .unwrap();
    let kept = |pg: &'static pg_harness::PgServer, catalog: String| async move {
        pg.connect(&catalog)
            .await
            .unwrap()
            .query_one(
                "SELECT count(*) FROM webhooks_nao_roteados WHERE tipo = 'tenant_suspended'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    s.plane.suspend("wh-kilo").await;
    let (router, catalog) = (&s.router, s.plane.catalog_db.clone());
    let mut sent = 0;
    let diverted = eventually(Duration::from_secs(10), || {
        sent += 1;
        let (body, catalog) = (meta(sent), catalog.clone());
        async move {
            assert_eq!(post(router, &body).await, 200);
            kept(pg, catalog).await > 0
        }
    })
    .await;
    assert!(diverted, "a suspended tenant's deliveries are kept aside");
    // Two more while suspended (one through the gateway); the tenant database has none.
    for i in [sent + 1, sent + 2] {
        assert_eq!(post(router, &meta(i)).await, 200);
    }
    sent += 2;
    let (status, _) = http(
        &router.http,
        "POST",
        "/webhooks/evolution/wh-kilo",
        &[("apikey", token)],
        &evolution,
    )
    .await;
    assert_eq!(status, 200);
    let before = count(pg, db, "SELECT count(*) FROM mensagens").await;
    let suspended = kept(pg, catalog.clone()).await;
    assert!(suspended >= 3, "{suspended}");

    // Resumed: what was kept goes in without anyone asking.
    s.plane.resume("wh-kilo").await;
    let all_in = eventually(Duration::from_secs(10), || async {
        count(pg, db, "SELECT count(*) FROM mensagens").await == i64::from(sent) + 1
    })
    .await;
    assert!(
        all_in,
        "every delivery sent while suspended is stored after resume ({before} before, {} now, {sent} Meta + 1 Evolution sent)",
        count(pg, db, "SELECT count(*) FROM mensagens").await
    );
    // A replay stores a delivery, then marks it: the last mark may trail the last store.
    let pending = || async {
        pg.connect(&catalog)
            .await
            .unwrap()
            .query_one(
                "SELECT count(*) FROM webhooks_nao_roteados WHERE tipo = 'tenant_suspended' \
                 AND reproduzido_em IS NULL",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let marked = eventually(Duration::from_secs(5), || async { pending().await == 0 }).await;
    assert!(
        marked,
        "every kept delivery is marked replayed ({} not)",
        pending().await
    );
    // On demand, again: nothing is stored twice.
    let ids: Vec<i64> = admin
        .list_dead_letters(s.plane.admin_req(cp::ListDeadLettersRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .dead_letters
        .iter()
        .filter(|d| d.kind == cp::DeadLetterKind::TenantSuspended as i32)
        .map(|d| d.id)
        .collect();
    let again = admin
        .replay_dead_letters(s.plane.admin_req(cp::ReplayDeadLettersRequest {
            ids: ids.clone(),
            tenant: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
        .replayed;
    assert_eq!(again.len(), ids.len());
    assert!(
        again.iter().all(|r| r.messages == 0 && r.duplicates >= 1),
        "{again:?}"
    );
    assert_eq!(
        count(pg, db, "SELECT count(*) FROM mensagens").await,
        i64::from(sent) + 1
    );
}

/// Whether each path of `router` sees `slug` as active: a gRPC call succeeds (else it is
/// refused as suspended), and a new signed delivery lands in its database (else it was
/// kept aside as a dead letter).
async fn paths_active(
    router: &Router,
    slug: &str,
    phone: &str,
    db: &str,
    seq: &std::sync::atomic::AtomicU32,
) -> (bool, bool) {
    use proto::domain::v1::{leads_client::LeadsClient, ListLeadsRequest};
    let token = common::caller_token(vec![], true, 600);
    let grpc = match LeadsClient::new(router.channel().await)
        .list_leads(common::call(ListLeadsRequest::default(), slug, &token))
        .await
    {
        Ok(_) => true,
        Err(e) if e.code() == tonic::Code::FailedPrecondition => false,
        Err(e) => panic!("unexpected answer: {e:?}"),
    };
    let wamid = format!(
        "wamid.P{}",
        seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let body = delivery(
        phone,
        json!([text_msg(&wamid, "551187654321", "oi")]),
        json!([]),
    );
    assert_eq!(post(router, &body).await, 200);
    let landed = count(
        pg_harness::shared(),
        db,
        &format!("SELECT count(*) FROM mensagens WHERE wamid = '{wamid}'"),
    )
    .await
        == 1;
    (grpc, landed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_both_paths_of_every_router() {
    let pg = pg_harness::shared();
    let s = setup("wh-lima", "900000012", pg).await;
    let second = Router::start(
        &s.plane,
        &[
            ("TENANT_ROUTER__WEBHOOK__APP_SECRET", APP_SECRET),
            ("TENANT_ROUTER__WEBHOOK__VERIFY_TOKEN", VERIFY_TOKEN),
        ],
    )
    .await;
    let db = s.plane.database_of("wh-lima").await;
    let seq = std::sync::atomic::AtomicU32::new(0);
    let routers = [&s.router, &second];
    let all_paths = |want: bool| {
        let (db, seq) = (db.as_str(), &seq);
        async move {
            for r in routers {
                let (grpc, webhook) = paths_active(r, "wh-lima", "900000012", db, seq).await;
                if grpc != want || webhook != want {
                    return false;
                }
            }
            true
        }
    };
    assert!(
        all_paths(true).await,
        "both routers serve the tenant on both paths"
    );
    s.plane.suspend("wh-lima").await;
    assert!(
        eventually(Duration::from_secs(5), || all_paths(false)).await,
        "a suspension reaches the gRPC and webhook paths of both routers"
    );
    s.plane.resume("wh-lima").await;
    assert!(
        eventually(Duration::from_secs(5), || all_paths(true)).await,
        "a resumption reaches both paths of both routers"
    );
    // A credential rotation: both paths of both routers move to the new login before the
    // old one is disabled, and keep working after.
    let old_role = s.plane.role_of("wh-lima").await;
    s.plane.rotate("wh-lima").await;
    let disabled = eventually(Duration::from_secs(20), || async {
        s.plane.role_of("wh-lima").await != old_role && !login_works(pg, &old_role).await
    })
    .await;
    assert!(disabled, "the previous login was disabled");
    assert!(
        all_paths(true).await,
        "after the old login is disabled, both paths of both routers still serve the tenant"
    );
}

/// Whether `role` still has a password (a rotation removes the previous login role's once
/// its grace period is over, so nothing can log in as it).
async fn login_works(pg: &pg_harness::PgServer, role: &str) -> bool {
    pg.connect("postgres")
        .await
        .unwrap()
        .query_one(
            "SELECT rolpassword IS NOT NULL FROM pg_authid WHERE rolname = $1",
            &[&role],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_being_restored_is_read_refuses_writes_retryably_and_loses_no_delivery() {
    use proto::domain::v1::{leads_client::LeadsClient, ListLeadsRequest, UpsertLeadRequest};
    let pg = pg_harness::shared();
    let s = setup("wh-mike", "900000013", pg).await;
    let db = s.plane.database_of("wh-mike").await;
    let token = common::caller_token(vec![], true, 600);
    // What an in-place restore does to the tenant row while it builds the new generation
    // (the change reaches routers through the same notification as any other).
    let catalog = pg.connect(&s.plane.catalog_db).await.unwrap();
    catalog
        .execute(
            "UPDATE empresas SET status = 'restoring', version = version + 1 WHERE slug = 'wh-mike'",
            &[],
        )
        .await
        .unwrap();
    let router = &s.router;
    let upsert = || async {
        LeadsClient::new(router.channel().await)
            .upsert_lead(common::call(
                UpsertLeadRequest {
                    phone: "5511912345678".into(),
                    name: "Durante".into(),
                    ..Default::default()
                },
                "wh-mike",
                &token,
            ))
            .await
    };
    let refused = eventually(Duration::from_secs(5), || async {
        matches!(upsert().await, Err(e) if e.code() == tonic::Code::Unavailable)
    })
    .await;
    assert!(
        refused,
        "writes get UNAVAILABLE (retry) while the tenant is restored"
    );
    let read = LeadsClient::new(router.channel().await)
        .list_leads(common::call(ListLeadsRequest::default(), "wh-mike", &token))
        .await;
    assert!(
        read.is_ok(),
        "reads are served from the live database meanwhile: {read:?}"
    );
    assert_eq!(
        count(pg, &db, "SELECT count(*) FROM leads").await,
        0,
        "the refused write left nothing behind"
    );
    // A delivery meanwhile is acknowledged from the inbox, and the workers hold it until
    // the tenant is back (nothing reaches the database being replaced).
    let body = delivery(
        "900000013",
        json!([text_msg(
            "wamid.R1",
            "551187654321",
            "durante a restauração"
        )]),
        json!([]),
    );
    assert_eq!(post_signed(&router.http, &body).await, 200);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(s.plane.pending().await, 1, "held in the inbox");
    assert_eq!(
        count(pg, &db, "SELECT count(*) FROM mensagens").await,
        0,
        "nothing reached the database being replaced"
    );
    catalog
        .execute(
            "UPDATE empresas SET status = 'active', version = version + 1 WHERE slug = 'wh-mike'",
            &[],
        )
        .await
        .unwrap();
    s.plane.drained(Duration::from_secs(10)).await;
    assert_eq!(
        count(
            pg,
            &db,
            "SELECT count(*) FROM mensagens WHERE wamid = 'wamid.R1'",
        )
        .await,
        1,
        "the delivery held during the restore is stored afterwards"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_number_routes_to_its_tenant_until_it_is_removed() {
    let pg = pg_harness::shared();
    let s = setup("wh-november", "900000021", pg).await;
    let db = s.plane.database_of("wh-november").await;
    let number = |add: bool| {
        let plane = &s.plane;
        async move {
            let req = plane.admin_req(proto::control::v1::NumberRequest {
                tenant: "wh-november".into(),
                phone_number_id: "900000022".into(),
                display_phone: String::new(),
            });
            let mut admin = plane.admin().await;
            if add {
                admin.add_number(req).await.unwrap();
            } else {
                admin.remove_number(req).await.unwrap();
            }
        }
    };
    number(true).await;
    // A delivery to the second number lands in the tenant's database.
    let mut n = 0;
    let stored = eventually(Duration::from_secs(5), || {
        n += 1;
        let wamid = format!("wamid.N{n}");
        let body = delivery(
            "900000022",
            json!([text_msg(&wamid, "5511912340000", "segunda linha")]),
            json!([]),
        );
        let (router, db) = (&s.router, db.clone());
        async move {
            post(router, &body).await == 200
                && count(
                    pg,
                    &db,
                    &format!("SELECT count(*) FROM mensagens WHERE wamid = '{wamid}'"),
                )
                .await
                    == 1
        }
    })
    .await;
    assert!(stored, "a delivery to the second number is stored");
    // Removed: the router forgets it, deliveries to it are no longer stored there.
    number(false).await;
    let mut m = 0;
    let forgotten = eventually(Duration::from_secs(5), || {
        m += 1;
        let wamid = format!("wamid.R{m}");
        let body = delivery(
            "900000022",
            json!([text_msg(&wamid, "5511912340000", "removido")]),
            json!([]),
        );
        let (router, db) = (&s.router, db.clone());
        async move {
            post(router, &body).await == 200
                && count(
                    pg,
                    &db,
                    &format!("SELECT count(*) FROM mensagens WHERE wamid = '{wamid}'"),
                )
                .await
                    == 0
        }
    })
    .await;
    assert!(forgotten, "a removed number still routes to the tenant");
    // The first number is untouched.
    let body = delivery(
        "900000021",
        json!([text_msg("wamid.F1", "5511912340000", "primeira")]),
        json!([]),
    );
    assert_eq!(post(&s.router, &body).await, 200);
    assert_eq!(
        count(
            pg,
            &db,
            "SELECT count(*) FROM mensagens WHERE wamid = 'wamid.F1'"
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_evolution_instance_has_its_own_url_and_token() {
    let pg = pg_harness::shared();
    let s = setup("wh-oscar", "900000031", pg).await;
    let db = s.plane.database_of("wh-oscar").await;
    let mut admin = s.plane.admin().await;
    let first = admin
        .rotate_webhook_token(s.plane.admin_req(proto::control::v1::TenantRef {
            tenant: "wh-oscar".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .token;
    let added = admin
        .add_evolution_instance(
            s.plane
                .admin_req(proto::control::v1::EvolutionInstanceRequest {
                    tenant: "wh-oscar".into(),
                    name: "oscar-suporte".into(),
                }),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(added.webhook_path, "/webhooks/evolution/i/oscar-suporte");
    let body = |id: &str| {
        serde_json::to_vec(
            &json!({"event": "messages.upsert", "instance": "oscar-suporte", "data": [
                {"key": {"remoteJid": "551187650000@s.whatsapp.net", "fromMe": false, "id": id},
                 "message": {"conversation": "suporte"}}
            ]}),
        )
        .unwrap()
    };
    let addr = s.router.http.clone();
    let send = |path: String, token: String, body: Vec<u8>| {
        let addr = addr.clone();
        async move {
            http(&addr, "POST", &path, &[("apikey", token)], &body)
                .await
                .0
        }
    };
    // Its own token only: the tenant's first token does not open it, nor it the slug URL.
    let path = added.webhook_path.clone();
    assert_eq!(send(path.clone(), first.clone(), body("I0")).await, 401);
    assert_eq!(
        send(
            "/webhooks/evolution/wh-oscar".into(),
            added.token.clone(),
            body("I0")
        )
        .await,
        401
    );
    for bad in [
        "/webhooks/evolution/i/nobody-here",
        "/webhooks/evolution/i/AB",
        "/webhooks/evolution/i/",
    ] {
        assert_eq!(
            send(bad.into(), added.token.clone(), body("I0")).await,
            401,
            "{bad}"
        );
    }
    let mut n = 0;
    let stored = eventually(Duration::from_secs(5), || {
        n += 1;
        let id = format!("I{n}");
        let (send, path, token, db) = (&send, path.clone(), added.token.clone(), db.clone());
        async move {
            send(path, token, body(&id)).await == 200
                && count(
                    pg,
                    &db,
                    &format!("SELECT count(*) FROM mensagens WHERE wamid = '{id}'"),
                )
                .await
                    == 1
        }
    })
    .await;
    assert!(stored, "a delivery to the second instance is stored");
    assert_eq!(
        send("/webhooks/evolution/wh-oscar".into(), first, body("F1")).await,
        200,
        "the slug URL still works"
    );
    // Removed: its URL stops working on the router.
    admin
        .remove_evolution_instance(s.plane.admin_req(
            proto::control::v1::EvolutionInstanceRequest {
                tenant: "wh-oscar".into(),
                name: "oscar-suporte".into(),
            },
        ))
        .await
        .unwrap();
    let gone = eventually(Duration::from_secs(5), || {
        let (send, path, token) = (&send, path.clone(), added.token.clone());
        async move { send(path, token, body("GONE")).await == 401 }
    })
    .await;
    assert!(gone, "a removed instance still takes deliveries");
}
