//! The message pipeline against the real router binaries, the real control plane and real
//! PostgreSQL (the inbox on a server with `fsync=on`): crashes under traffic from a sender
//! that retries like Meta, arrival order, what a stolen router credential reaches in the
//! ingest database, and how an apply's last statement finds its rows in a growing inbox.
#![allow(clippy::unwrap_used)]

mod common;

use common::wh::{delivery, post_signed, text_msg};
use common::{eventually, Plane, Router};
use proto::control::v1 as cp;
use proto::domain::v1 as dm;
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

/// A tenant whose database predates the outbox (its fleet migration is pending) still gets
/// its deliveries stored: the outbox read is prepared per connection, and a database
/// refusing that preparation is read as having no events, not as failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_to_a_tenant_without_an_outbox_yet_are_stored() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 80).await;
    tenant(&plane, "pl-antigo", "910000012").await;
    let db = plane.database_of("pl-antigo").await;
    pg.connect(&db)
        .await
        .unwrap()
        .batch_execute(
            "DROP TRIGGER eventos_mensagens_novas ON mensagens; \
             DROP TRIGGER eventos_mensagens_status ON mensagens; \
             DROP TRIGGER eventos_leads_novos ON leads; \
             DROP TABLE eventos_saida",
        )
        .await
        .unwrap();
    let router = webhook_router(&plane).await;
    for i in 0..3 {
        let body = delivery(
            "910000012",
            json!([text_msg(
                &format!("wamid.antigo.{i}"),
                "5511977770001",
                "oi"
            )]),
            json!([]),
        );
        assert_eq!(post_signed(&router.http, &body).await, 200);
        // One apply per delivery: the second and third reuse the connection whose
        // preparation failed.
        plane.drained(Duration::from_secs(10)).await;
    }
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM mensagens WHERE wamid LIKE 'wamid.antigo.%'"
        )
        .await,
        3
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM leads").await,
        1,
        "one lead for the sender"
    );
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

/// A control plane with servers "main" and "other", a tenant on "main" and a router for
/// every server.
async fn two_servers_and_a_tenant_on_main(slug: &str, phone: &str) -> (Plane, Router) {
    let plane = Plane::start().await;
    plane.add_server("main", pg_harness::shared(), 80).await;
    plane
        .add_server("other", pg_harness::shared_second(), 80)
        .await;
    tenant(&plane, slug, phone).await;
    let router = webhook_router(&plane).await;
    (plane, router)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_router_login_reaches_only_its_servers_rows_and_forges_no_event() {
    let (plane, router) = two_servers_and_a_tenant_on_main("pl-vitima", "910000021").await;
    let body = delivery(
        "910000021",
        json!([text_msg("wamid.V1", "5511966660000", "segredo")]),
        json!([]),
    );
    assert_eq!(post_signed(&router.http, &body).await, 200);
    plane.drained(Duration::from_secs(10)).await;

    // The attacker holds a router credential scoped to server "other".
    let scoped = scoped_router_token(&plane, "pl-scoped", "other").await;
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
    // Relay marks: none of another server's may be written, read or deleted.
    assert!(c
        .execute(
            "INSERT INTO relay_pendentes (empresa_id, servidor) VALUES ($1, 'main')",
            &[&victim_id],
        )
        .await
        .is_err());
    common::ingest_client(&plane.ingest_url)
        .await
        .execute(
            "INSERT INTO relay_pendentes (empresa_id, servidor) VALUES ($1, 'main')",
            &[&victim_id],
        )
        .await
        .unwrap();
    let seen: i64 = c
        .query_one("SELECT count(*) FROM relay_pendentes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(seen, 0, "another server's relay marks are invisible");
    assert_eq!(
        c.execute("DELETE FROM relay_pendentes", &[]).await.unwrap(),
        0,
        "and cannot be deleted"
    );
    // Events: the victim's (its delivery's message and lead) are invisible, and none can
    // be written under its server; under its own server the login may write (the policy
    // is not one that refuses everything).
    let victims_events: i64 = common::ingest_client(&plane.ingest_url)
        .await
        .query_one(
            "SELECT count(*) FROM eventos WHERE empresa_id = $1",
            &[&victim_id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(victims_events >= 2, "the victim's events were recorded");
    let seen: i64 = c
        .query_one("SELECT count(*) FROM eventos", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(seen, 0, "another server's events are invisible");
    let event = |server: &'static str| {
        format!(
            "INSERT INTO eventos (empresa_id, servidor, banco, origem_id, particao, tipo, dados, criado_em) \
             VALUES ($1, '{server}', 'forjado', $2, $3, 'message.received', '{{\"body\": \"pague aqui\"}}', now())"
        )
    };
    let partition = tenant_router::events::partition(victim_id);
    assert!(c
        .execute(&event("main"), &[&victim_id, &1_i64, &partition])
        .await
        .is_err());
    // Under its own server it may write events, for any tenant id: the victim's consumers
    // never get those (nor does a bad tenant id stall their stream).
    c.execute(&event("other"), &[&victim_id, &2_i64, &partition])
        .await
        .unwrap();
    c.execute(&event("other"), &[&-1_i64, &3_i64, &partition])
        .await
        .unwrap();
    let token = plane.token(&["pl-vitima"], false).await;
    let bot = subscribe(&router, &token, "bot", &[]).await;
    let later = delivery(
        "910000021",
        json!([text_msg("wamid.V2", "5511966660000", "depois")]),
        json!([]),
    );
    assert_eq!(post_signed(&router.http, &later).await, 200);
    // The delivery after the forgery arrived: the stream went past the forged event.
    assert!(
        eventually(Duration::from_secs(10), || async {
            bot.kinds_of(victim_id)
                .iter()
                .any(|(_, data)| data.contains("wamid.V2"))
        })
        .await,
        "the victim's later message reached its consumer"
    );
    let got = bot.kinds_of(victim_id);
    assert_eq!(got.len(), 3, "its lead and two messages: {got:?}");
    assert!(got.iter().all(|(_, data)| !data.contains("pague aqui")));
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

/// The token of a router registered under `name` for one server.
async fn scoped_router_token(plane: &Plane, name: &str, server: &str) -> String {
    plane
        .admin()
        .await
        .add_router(plane.admin_req(cp::AddRouterRequest {
            name: name.into(),
            servers: vec![server.into()],
            all_servers: false,
            ttl_secs: 0,
        }))
        .await
        .unwrap()
        .into_inner()
        .token
}

/// How a stream ended, waiting up to `within`.
async fn ending(stream: &mut Collected, within: Duration) -> Option<tonic::Status> {
    tokio::time::timeout(within, &mut stream.task)
        .await
        .expect("the stream did not end")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_belongs_to_its_routers_scope_and_a_stolen_login_cannot_move_join_or_take_it(
) {
    let (plane, router) = two_servers_and_a_tenant_on_main("pl-grupo", "910000031").await;
    let id = tenant_id(&plane, "pl-grupo").await;
    let token = plane.token(&["pl-grupo"], false).await;
    let message = |n: u32| {
        delivery(
            "910000031",
            json!([text_msg(&format!("wamid.G{n}"), "5511955550000", "oi")]),
            json!([]),
        )
    };
    let got = |bot: &Collected, n: u32| {
        bot.kinds_of(id)
            .iter()
            .any(|(_, data)| data.contains(&format!("wamid.G{n}")))
    };
    let bot = subscribe(&router, &token, "bot", &[]).await;
    assert_eq!(post_signed(&router.http, &message(1)).await, 200);
    assert!(eventually(Duration::from_secs(10), || async { got(&bot, 1) }).await);
    let group = "caller:tests/bot";
    let owner = common::ingest_client(&plane.ingest_url).await;
    let kept: i64 = owner
        .query_one("SELECT count(*) FROM cursores WHERE grupo = $1", &[&group])
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 16, "the group's cursors are kept");

    // A thief holds the ingest login of a router for server "other".
    let thief = scoped_router_token(&plane, "pl-ladrao", "other").await;
    let c = login(&get_ingest(&plane, &thief).await.unwrap())
        .await
        .unwrap();
    for table in ["cursores", "membros"] {
        let seen: i64 = c
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(seen, 0, "another scope's {table} are invisible");
    }
    // Its cursors cannot be moved past events (or back before them)...
    assert_eq!(
        c.execute("UPDATE cursores SET evento = 1 << 60", &[])
            .await
            .unwrap(),
        0
    );
    let partition = tenant_router::events::partition(id);
    let skip = "INSERT INTO cursores (grupo, particao, xid, evento) VALUES ($1, $2, '999999999', 1 << 60) \
         ON CONFLICT (grupo, particao) DO UPDATE SET xid = EXCLUDED.xid, evento = EXCLUDED.evento";
    assert!(c.execute(skip, &[&group, &partition]).await.is_err());
    assert!(c
        .execute(
            "INSERT INTO cursores (grupo, particao, xid, evento, escopo) VALUES ('x', 1, '1', 1, '*')",
            &[]
        )
        .await
        .is_err());
    // ...and ghost members that would take every partition from the bot count for nothing.
    for n in 0..16 {
        c.execute(
            "INSERT INTO membros (grupo, membro) VALUES ($1, $2)",
            &[&group, &format!("0-ghost-{n:02}")],
        )
        .await
        .unwrap();
    }
    // The bot's membership is renewed (every 2 s) with the ghosts present.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(post_signed(&router.http, &message(2)).await, 200);
    assert!(
        eventually(Duration::from_secs(10), || async { got(&bot, 2) }).await,
        "the bot kept its partitions"
    );
    let cursor: i64 = owner
        .query_one(
            "SELECT evento FROM cursores WHERE grupo = $1 AND particao = $2",
            &[&group, &partition],
        )
        .await
        .unwrap()
        .get(0);
    assert!(cursor < 1 << 60, "the cursor did not move");

    // A group not started yet, taken by the thief first: the real routers say so instead
    // of streaming nothing.
    for p in 0..16_i16 {
        c.execute(
            "INSERT INTO cursores (grupo, particao, xid, evento) VALUES ('caller:tests/bot2', $1, '999999999', 1 << 60)",
            &[&p],
        )
        .await
        .unwrap();
    }
    let mut taken = subscribe(&router, &token, "bot2", &[]).await;
    let status = ending(&mut taken, Duration::from_secs(10))
        .await
        .expect("an error");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(status
        .message()
        .contains("kept by routers that serve other"));
    // The operator forgets the taken group; then it starts as any new group.
    plane
        .admin()
        .await
        .forget_consumer_group(plane.admin_req(cp::ForgetConsumerGroupRequest {
            group: "caller:tests/bot2".into(),
        }))
        .await
        .unwrap();
    let freed = subscribe(&router, &token, "bot2", &[]).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            got(&freed, 1) && got(&freed, 2)
        })
        .await,
        "the forgotten group streams again"
    );

    // A router scoped to "main" keeps groups of its own; the all-server routers' group is
    // not one of them (its cursors would pass events that router cannot see).
    let scoped = scoped_router_token(&plane, "pl-main-only", "main").await;
    let narrow = Router::start(
        &plane,
        &[("TENANT_ROUTER__DIRECTORY_TOKEN", scoped.as_str())],
    )
    .await;
    let mut wrong = subscribe(&narrow, &token, "bot", &[]).await;
    let status = ending(&mut wrong, Duration::from_secs(10))
        .await
        .expect("an error");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    let refused = ack(&narrow, &token, "bot", bot.cursors())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(refused
        .message()
        .contains("kept by routers that serve other"));
    let own = subscribe(&narrow, &token, "bot-main", &[]).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            got(&own, 1) && got(&own, 2)
        })
        .await,
        "the scoped router's own group streams its server's events"
    );
    let theirs: i64 = owner
        .query_one(
            "SELECT count(*) FROM cursores WHERE grupo = 'caller:tests/bot-main' AND escopo = 'main'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(theirs, 16);
}

/// An event stream's events, collected in the background.
struct Collected {
    events: Arc<Mutex<Vec<dm::Event>>>,
    task: tokio::task::JoinHandle<Option<tonic::Status>>,
}

impl Collected {
    fn kinds_of(&self, tenant_id: i64) -> Vec<(i32, String)> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.tenant_id == tenant_id)
            .map(|e| (e.kind, e.data_json.clone()))
            .collect()
    }

    fn count(&self) -> usize {
        self.events.lock().unwrap().len()
    }

    fn cursors(&self) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.cursor.clone())
            .collect()
    }
}

impl Drop for Collected {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn events_req<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

async fn subscribe(router: &Router, token: &str, group: &str, tenants: &[&str]) -> Collected {
    subscribe_kinds(router, token, group, tenants, &[]).await
}

async fn subscribe_kinds(
    router: &Router,
    token: &str,
    group: &str,
    tenants: &[&str],
    kinds: &[i32],
) -> Collected {
    let mut client = dm::events_client::EventsClient::new(router.channel().await);
    let mut stream = client
        .subscribe(events_req(
            dm::SubscribeRequest {
                group: group.into(),
                tenants: tenants.iter().map(|t| t.to_string()).collect(),
                kinds: kinds.to_vec(),
                from_oldest: true,
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    let task = tokio::spawn(async move {
        loop {
            match stream.message().await {
                Ok(Some(e)) => sink.lock().unwrap().push(e),
                Ok(None) => return None,
                Err(s) => return Some(s),
            }
        }
    });
    Collected { events, task }
}

async fn ack(
    router: &Router,
    token: &str,
    group: &str,
    cursors: Vec<String>,
) -> Result<(), tonic::Status> {
    dm::events_client::EventsClient::new(router.channel().await)
        .ack(events_req(
            dm::AckRequest {
                group: group.into(),
                cursors,
            },
            token,
        ))
        .await
        .map(|_| ())
}

async fn tenant_id(plane: &Plane, slug: &str) -> i64 {
    plane
        .admin()
        .await
        .get_tenant(plane.admin_req(cp::TenantRef {
            tenant: slug.into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .id
}

const RECEIVED: i32 = dm::EventKind::MessageReceived as i32;
const SENT: i32 = dm::EventKind::MessageSent as i32;
const STATUS: i32 = dm::EventKind::MessageStatus as i32;
const LEAD: i32 = dm::EventKind::LeadCreated as i32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_from_webhooks_and_domain_writes_reach_a_consumer_group_and_resume_after_a_crash() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 80).await;
    tenant(&plane, "ev-alfa", "920000001").await;
    tenant(&plane, "ev-beta", "920000002").await;
    let (alfa, beta) = (
        tenant_id(&plane, "ev-alfa").await,
        tenant_id(&plane, "ev-beta").await,
    );
    let token = plane.token(&["ev-alfa"], false).await;
    let mut router = webhook_router(&plane).await;
    let bot = subscribe(&router, &token, "bot", &[]).await;

    // A webhook message: a new lead and the message received.
    let hello = delivery(
        "920000001",
        json!([text_msg("wamid.E1", "5511988880000", "oi")]),
        json!([]),
    );
    assert_eq!(post_signed(&router.http, &hello).await, 200);
    // Another tenant's message is not this caller's.
    let other = delivery(
        "920000002",
        json!([text_msg("wamid.E2", "5511988881111", "oi")]),
        json!([]),
    );
    assert_eq!(post_signed(&router.http, &other).await, 200);
    assert!(
        eventually(Duration::from_secs(5), || async {
            bot.kinds_of(alfa).len() == 2
        })
        .await,
        "{:?}",
        bot.kinds_of(alfa)
    );
    let got = bot.kinds_of(alfa);
    assert_eq!(got[0].0, LEAD);
    assert_eq!(got[1].0, RECEIVED);
    let data: serde_json::Value = serde_json::from_str(&got[1].1).unwrap();
    assert_eq!(data["wamid"], "wamid.E1");
    assert_eq!(data["body"], "oi");
    assert!(
        bot.kinds_of(beta).is_empty(),
        "no events of a tenant the token does not grant"
    );

    // Domain writes through the router: a lead, an outbound message; then its status by
    // webhook.
    let ch = router.channel().await;
    let lead = dm::leads_client::LeadsClient::new(ch.clone())
        .upsert_lead(common::call(
            common::upsert("5511977771234", "Bia"),
            "ev-alfa",
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut conv = dm::conversations_client::ConversationsClient::new(ch);
    let c = conv
        .open_conversation(common::call(
            dm::OpenConversationRequest { lead_id: lead.id },
            "ev-alfa",
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    conv.append_message(common::call(
        dm::AppendMessageRequest {
            conversation_id: c.id,
            direction: dm::MessageDirection::Saida as i32,
            body: "Olá Bia".into(),
            wamid: "wamid.OUT1".into(),
            r#type: "text".into(),
        },
        "ev-alfa",
        &token,
    ))
    .await
    .unwrap();
    let status = delivery(
        "920000001",
        json!([]),
        json!([{"id": "wamid.OUT1", "status": "delivered", "timestamp": "1763800001", "recipient_id": "5511977771234"}]),
    );
    assert_eq!(post_signed(&router.http, &status).await, 200);
    assert!(
        eventually(Duration::from_secs(5), || async {
            bot.kinds_of(alfa).len() == 5
        })
        .await,
        "{:?}",
        bot.kinds_of(alfa)
    );
    let kinds: Vec<i32> = bot.kinds_of(alfa).iter().map(|k| k.0).collect();
    assert_eq!(kinds, vec![LEAD, RECEIVED, LEAD, SENT, STATUS]);
    // Filtered by kind and tenant: only the new leads of the one tenant named.
    let crm = subscribe_kinds(&router, &token, "crm", &["ev-alfa"], &[LEAD]).await;
    assert!(eventually(Duration::from_secs(5), || async { crm.count() == 2 }).await);
    assert!(crm.kinds_of(alfa).iter().all(|(k, _)| *k == LEAD));
    let status: serde_json::Value = serde_json::from_str(&bot.kinds_of(alfa)[4].1).unwrap();
    assert_eq!(
        (status["previous"].as_str(), status["status"].as_str()),
        (Some("pendente"), Some("delivered"))
    );

    // Acknowledge the first three; the router dies (kill -9); a new one resumes from the
    // cursor: the two unacknowledged events again, then new ones, no gaps.
    ack(&router, &token, "bot", bot.cursors()[..3].to_vec())
        .await
        .unwrap();
    drop(bot);
    drop(router);
    router = webhook_router(&plane).await;
    let later = delivery(
        "920000001",
        json!([text_msg("wamid.E3", "5511988880000", "de novo")]),
        json!([]),
    );
    assert_eq!(post_signed(&router.http, &later).await, 200);
    let resumed = subscribe(&router, &token, "bot", &[]).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            resumed.kinds_of(alfa).len() == 3
        })
        .await,
        "{:?}",
        resumed.kinds_of(alfa)
    );
    let kinds: Vec<i32> = resumed.kinds_of(alfa).iter().map(|k| k.0).collect();
    assert_eq!(kinds, vec![SENT, STATUS, RECEIVED]);
    // Another group has its own cursor.
    let fresh = subscribe(&router, &token, "audit", &[]).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            fresh.kinds_of(alfa).len() == 6
        })
        .await
    );

    // Bad requests are refused by name, before any stream starts.
    let mut client = dm::events_client::EventsClient::new(router.channel().await);
    let refused = |req: dm::SubscribeRequest, token: &str| {
        let mut client = client.clone();
        let r = events_req(req, token);
        async move {
            client
                .subscribe(r)
                .await
                .err()
                .map(|s| (s.code(), s.message().to_string()))
        }
    };
    let (code, msg) = refused(
        dm::SubscribeRequest {
            group: "Bad Group".into(),
            ..Default::default()
        },
        &token,
    )
    .await
    .unwrap();
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert!(msg.contains("group"), "{msg}");
    let (code, _) = refused(
        dm::SubscribeRequest {
            group: "g".into(),
            tenants: vec!["ev-beta".into()],
            ..Default::default()
        },
        &token,
    )
    .await
    .unwrap();
    assert_eq!(code, tonic::Code::PermissionDenied);
    let (code, msg) = refused(
        dm::SubscribeRequest {
            group: "g".into(),
            kinds: vec![99],
            ..Default::default()
        },
        &token,
    )
    .await
    .unwrap();
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert!(msg.contains("kinds"), "{msg}");
    let (code, _) = refused(
        dm::SubscribeRequest {
            group: "g".into(),
            ..Default::default()
        },
        "not-a-token",
    )
    .await
    .unwrap();
    assert_eq!(code, tonic::Code::Unauthenticated);
    let bad = ack(&router, &token, "bot", vec!["1.2".into()])
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let _ = client
        .subscribe(events_req(dm::SubscribeRequest::default(), &token))
        .await;

    // Deleting a tenant erases its inbox rows and events.
    plane
        .admin()
        .await
        .delete_tenant(plane.admin_req(cp::DeleteRequest {
            tenant: "ev-alfa".into(),
            reason: "test".into(),
            now: true,
            confirm: "ev-alfa".into(),
        }))
        .await
        .unwrap();
    let ingest = common::ingest_client(&plane.ingest_url).await;
    for table in ["inbox", "eventos"] {
        let left: i64 = ingest
            .query_one(
                &format!("SELECT count(*) FROM {table} WHERE empresa_id = $1"),
                &[&alfa],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(left, 0, "{table}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_splits_the_tenants_among_its_subscribers() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 80).await;
    let slugs = ["gr-um", "gr-dois", "gr-tres", "gr-quatro"];
    for (i, slug) in slugs.iter().enumerate() {
        tenant(&plane, slug, &format!("93000000{i}")).await;
    }
    let token = plane.token(&[], true).await;
    let router = webhook_router(&plane).await;
    let a = subscribe(&router, &token, "bots", &[]).await;
    let b = subscribe(&router, &token, "bots", &[]).await;
    // Both are members once each has renewed its membership (every 2 s).
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let before = (a.count(), b.count());
    let mut sent = 0;
    for round in 0..5 {
        for i in 0..slugs.len() {
            let body = delivery(
                &format!("93000000{i}"),
                json!([text_msg(
                    &format!("wamid.G{i}.{round}"),
                    "5511955550000",
                    "oi"
                )]),
                json!([]),
            );
            assert_eq!(post_signed(&router.http, &body).await, 200);
            sent += 1;
        }
    }
    let received = || {
        let (x, y) = (a.events.lock().unwrap(), b.events.lock().unwrap());
        let mut wamids: Vec<String> = x[before.0..]
            .iter()
            .chain(y[before.1..].iter())
            .filter(|e| e.kind == RECEIVED)
            .map(|e| {
                serde_json::from_str::<serde_json::Value>(&e.data_json).unwrap()["wamid"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        wamids.sort();
        (wamids, x.len() - before.0, y.len() - before.1)
    };
    assert!(
        eventually(Duration::from_secs(10), || async {
            received().0.len() >= sent
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (wamids, from_a, from_b) = received();
    let mut unique = wamids.clone();
    unique.dedup();
    assert_eq!(unique.len(), sent);
    assert_eq!(
        wamids.len(),
        sent,
        "each event went to one subscriber of the group"
    );
    assert!(
        from_a > 0 && from_b > 0,
        "both subscribers got a share ({from_a}, {from_b})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_replayed_from_the_dead_letters_reach_the_event_stream() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 80).await;
    tenant(&plane, "ev-replay", "940000001").await;
    let id = tenant_id(&plane, "ev-replay").await;
    let token = plane.token(&["ev-replay"], false).await;
    let router = webhook_router(&plane).await;
    let bot = subscribe(&router, &token, "bot", &[]).await;
    plane.suspend("ev-replay").await;
    // Suspended: the delivery becomes a dead letter (the change reaches the router within
    // moments; until then it would go to the inbox, which is fine too).
    let body = delivery(
        "940000001",
        json!([text_msg("wamid.RP1", "5511944440000", "oi")]),
        json!([]),
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            post_signed(&router.http, &body).await == 200
                && count(
                    &plane.catalog_db,
                    "SELECT count(*) FROM webhooks_nao_roteados WHERE phone_number_id = '940000001'",
                )
                .await
                    > 0
        })
        .await
    );
    // Resuming replays it into the tenant database; its events reach the stream.
    plane.resume("ev-replay").await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            bot.kinds_of(id)
                .iter()
                .any(|(k, d)| *k == RECEIVED && d.contains("wamid.RP1"))
        })
        .await,
        "{:?}",
        bot.kinds_of(id)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_a_write_whose_router_died_before_relaying_them_are_relayed_by_another() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 80).await;
    tenant(&plane, "rl-alfa", "950000001").await;
    let id = tenant_id(&plane, "rl-alfa").await;
    let token = plane.token(&["rl-alfa"], false).await;
    // Marks stale after three windows: 1.5 s.
    let env = [("TENANT_ROUTER__INBOX__RELAY_WINDOW_MS", "500")];
    let first = Router::start(&plane, &env).await;
    dm::leads_client::LeadsClient::new(first.channel().await)
        .upsert_lead(common::call(
            common::upsert("5511955550001", "Ana"),
            "rl-alfa",
            &token,
        ))
        .await
        .unwrap();
    // The write was recorded in the ingest database before it was made.
    let ingest = common::ingest_client(&plane.ingest_url).await;
    let marks = || async {
        ingest
            .query_one(
                "SELECT count(*) FROM relay_pendentes WHERE empresa_id = $1",
                &[&id],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    assert_eq!(marks().await, 1);
    // The router dies (kill -9) with a committed write's events still in the tenant's
    // outbox: a write made just before the crash, whose relay never ran (made here
    // straight on the tenant database, which fires the same outbox trigger).
    drop(first);
    let tenant_db = plane.database_of("rl-alfa").await;
    pg.connect(&tenant_db)
        .await
        .unwrap()
        .batch_execute("INSERT INTO leads (wa_id) VALUES ('5511955550002')")
        .await
        .unwrap();
    // Another router, which never served the tenant and sees no traffic for it, relays the
    // outbox once the mark is stale, then deletes the mark.
    let second = Router::start(&plane, &env).await;
    let bot = subscribe(&second, &token, "bot", &[]).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            bot.kinds_of(id)
                .iter()
                .any(|(k, d)| *k == LEAD && d.contains("5511955550002"))
        })
        .await,
        "{:?}",
        bot.kinds_of(id)
    );
    assert!(eventually(Duration::from_secs(10), || async { marks().await == 0 }).await);
    let leads: Vec<i32> = bot.kinds_of(id).iter().map(|k| k.0).collect();
    assert_eq!(leads, vec![LEAD, LEAD], "each write's event once");
}

/// An apply's last statement finds its inbox rows by key whatever size the inbox had when
/// PostgreSQL settled on the statement's plan. Routers prepare it once per connection and
/// PostgreSQL keeps the generic plan it picks after five runs until the table's statistics
/// change: picked on a fresh inbox of a few rows, that plan was a scan of the whole inbox,
/// and every apply paid it as the inbox grew (docs/BENCHMARKS.md, issue #13).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_finds_its_inbox_rows_by_key_whatever_size_the_inbox_had_when_it_was_planned() {
    let plane = Plane::start().await;
    plane.add_server("main", pg_harness::shared(), 80).await;
    let admin = common::ingest_client(&plane.ingest_url).await;
    // No autovacuum: its statistics would make PostgreSQL plan the statement again.
    admin
        .batch_execute(
            "ALTER TABLE inbox SET (autovacuum_enabled = false); \
             INSERT INTO inbox (empresa_id, servidor, fonte, lote, mensagens) \
               SELECT 1, 'main', 'meta', '{}', 1 FROM generate_series(1, 3)",
        )
        .await
        .unwrap();
    let route = get_ingest(
        &plane,
        &scoped_router_token(&plane, "pl-plano", "main").await,
    )
    .await
    .unwrap();
    let c = login(&route).await.unwrap();
    c.batch_execute(&format!(
        "PREPARE finish(int8[], text[], int8, bool, text, text, int2, int8[], text[], text[], \
           int8[], float8) AS {}",
        tenant_router::inbox::apply::FINISH
    ))
    .await
    .unwrap();
    let ids: String = admin
        .query_one("SELECT array_agg(id)::text FROM inbox", &[])
        .await
        .unwrap()
        .get(0);
    let run = format!(
        "finish('{ids}', '{{NULL,NULL,NULL}}', 1, false, 'main', 'tenant_x', 0, '{{}}', '{{}}', \
           '{{}}', '{{}}', 0)"
    );
    // Planned and run on three rows, as on a fresh inbox...
    for _ in 0..8 {
        c.batch_execute(&format!("EXECUTE {run}")).await.unwrap();
    }
    // ...then run on a grown one.
    admin
        .batch_execute(
            "INSERT INTO inbox (empresa_id, servidor, fonte, lote, mensagens) \
               SELECT 1 + n % 50, 'main', 'meta', '{}', 1 FROM generate_series(1, 20000) n",
        )
        .await
        .unwrap();
    let plan: Vec<String> = c
        .simple_query(&format!("EXPLAIN EXECUTE {run}"))
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect();
    let plan = plan.join("\n");
    assert!(
        plan.contains("inbox_pkey") && !plan.contains("Seq Scan on inbox"),
        "{plan}"
    );
}
