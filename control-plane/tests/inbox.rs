//! The message pipeline's inbox as operators see it: `tenantctl inbox status|retry` and the
//! control plane's metrics, against the real binaries and a durable ingest database.
#![allow(clippy::unwrap_used)]

mod common;

use common::{scrape, Plane};

#[tokio::test]
async fn inbox_status_shows_a_stuck_tenant_and_retry_clears_its_backoff() {
    let pg = pg_harness::shared();
    let metrics = format!("127.0.0.1:{}", pg_harness::free_port().unwrap());
    let plane = Plane::start_with(&[
        ("CONTROL_PLANE__METRICS_LISTEN", &metrics),
        ("CONTROL_PLANE__INGEST__STUCK_AFTER_SECS", "3600"),
    ])
    .await;
    plane.add_server("main", pg, 100);
    let t = plane
        .ok(&[
            "create", "ib-alpha", "--name", "Alpha", "--sector", "varejo", "--json",
        ])
        .json();
    let id = t["id"].as_i64().unwrap();
    let empty = plane.ok(&["inbox", "status", "--json"]).json();
    assert_eq!(empty["depth"], 0, "{empty}");
    assert!(scrape(&metrics).contains("control_plane_inbox_depth 0"));

    // A delivery a router acknowledged but could not apply: its database is down.
    let ingest = plane.ingest().await;
    ingest
        .execute(
            "INSERT INTO inbox (empresa_id, servidor, fonte, lote, mensagens) VALUES ($1, 'main', 'meta', '{}', 0)",
            &[&id],
        )
        .await
        .unwrap();
    ingest
        .execute(
            "INSERT INTO inbox_atrasos (empresa_id, servidor, tentativas, proxima_em, ultimo_erro) \
             VALUES ($1, 'main', 3, now() + interval '1 hour', 'tenant database unavailable')",
            &[&id],
        )
        .await
        .unwrap();
    let s = plane.ok(&["inbox", "status", "--json"]).json();
    assert_eq!(s["depth"], 1, "{s}");
    assert_eq!(s["servers"][0]["server"], "main");
    assert_eq!(s["servers"][0]["pending"], 1);
    let stuck = &s["stuck"][0];
    assert_eq!(stuck["slug"], "ib-alpha", "{s}");
    assert_eq!(stuck["attempts"], 3);
    assert_eq!(stuck["last_error"], "tenant database unavailable");
    let text = plane.ok(&["inbox", "status"]).stdout;
    assert!(
        text.contains("pending deliveries: 1") && text.contains("ib-alpha"),
        "{text}"
    );
    let m = scrape(&metrics);
    for line in [
        "control_plane_inbox_depth 1",
        "control_plane_inbox_stuck_tenants 1",
        "control_plane_inbox_apply_lag_seconds{server=\"main\"}",
        "control_plane_ingest_up 1",
    ] {
        assert!(m.contains(line), "{line} missing from\n{m}");
    }

    // Retry: the backoff is gone (workers take it at once), the row still pending.
    let r = plane.ok(&["inbox", "retry", "ib-alpha", "--json"]).json();
    assert_eq!(r["pending"], 1);
    let after = plane.ok(&["inbox", "status", "--json"]).json();
    assert_eq!(after["stuck"].as_array().unwrap().len(), 0, "{after}");
    let audited: i64 = plane
        .catalog()
        .await
        .query_one(
            "SELECT count(*) FROM auditoria WHERE acao = 'inbox.retry'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(audited, 1);

    // Bad input: named, and nothing changes.
    let missing = plane.ctl(&["inbox", "retry", "ib-nobody"]);
    assert_eq!(missing.code, 3, "{missing:?}");
    let bad = plane.ctl(&["inbox", "retry", "Not A Slug"]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(
        bad.stderr.contains("slug") || bad.stderr.contains("tenant"),
        "{bad:?}"
    );
}

/// An inbox on a server that does not flush its writes would lose acknowledged deliveries
/// in a crash: the control plane refuses to start on one, says why, and creates nothing.
#[tokio::test]
async fn an_ingest_server_without_fsync_is_refused_at_start() {
    let pg = pg_harness::shared(); // the harness's default server runs with fsync=off
    let catalog = pg.fresh_database("cat_nofsync").await.unwrap();
    let ingest = pg.fresh_database("ing_nofsync").await.unwrap();
    let out = common::control_plane_cmd()
        .env("CONTROL_PLANE__LISTEN", "127.0.0.1:0")
        .env("CONTROL_PLANE__CATALOG_URL", pg.url(&catalog))
        .env("CONTROL_PLANE__INGEST__URL", pg.url(&ingest))
        .env("CONTROL_PLANE__MASTER_KEY", common::MASTER_KEY)
        .env("CONTROL_PLANE__TOKEN_SIGNING_KEY", common::SIGNING_KEY)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started on an fsync=off inbox");
    assert!(stderr.contains("fsync=off"), "{stderr}");
    assert!(!stderr.contains(pg_harness::SUPERUSER_PASSWORD), "{stderr}");
    let tables: i64 = pg
        .connect(&ingest)
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 0, "nothing made in the refused database");
}

/// Retention: applied inbox rows and events past their hours go, pending rows never; group
/// members gone for an hour go, and so do the cursors of groups with no member that have
/// not moved for the events' retention and have no event waiting. Times in the future
/// (which a stolen router login could write to keep a group it took) count as old.
#[tokio::test]
async fn retention_prunes_old_applied_rows_events_members_and_forgotten_groups_only() {
    let plane = Plane::start_with(&[("CONTROL_PLANE__INGEST__PRUNE_EVERY_SECS", "1")]).await;
    let ingest = plane.ingest().await;
    ingest
        .batch_execute(
            "INSERT INTO inbox (empresa_id, servidor, fonte, lote, mensagens, recebido_em, aplicado_em) VALUES \
               (1, 'main', 'meta', 'old applied', 1, now() - interval '9 days', now() - interval '8 days'), \
               (1, 'main', 'meta', 'new applied', 1, now() - interval '1 hour', now() - interval '1 hour'), \
               (1, 'main', 'meta', 'old pending', 1, now() - interval '9 days', NULL); \
             INSERT INTO eventos (empresa_id, servidor, banco, origem_id, particao, tipo, dados, criado_em, registrado_em) VALUES \
               (1, 'main', 'b', 1, 1, 'lead.created', 'old', now(), now() - interval '8 days'), \
               (1, 'main', 'b', 2, 1, 'lead.created', 'new', now(), now() - interval '1 day'); \
             INSERT INTO membros (grupo, membro, visto_em, escopo) VALUES \
               ('live', 'm1', now(), '*'), ('gone', 'm2', now() - interval '2 hours', '*'), \
               ('forged', 'm3', now() + interval '30 days', '*'); \
             INSERT INTO cursores (grupo, particao, xid, evento, atualizado_em, escopo) VALUES \
               ('live', 2, '1', 1, now() - interval '30 days', '*'), \
               ('gone', 2, '1', 1, now() - interval '30 days', '*'), \
               ('gone', 1, '1000000000000', 1, now() - interval '30 days', '*'), \
               ('waiting', 2, '1', 1, now() - interval '30 days', '*'), \
               ('waiting', 1, '1', 1, now() - interval '30 days', '*'), \
               ('recent', 2, '1', 1, now() - interval '1 day', '*'), \
               ('forged', 2, '1', 1, now() + interval '30 days', '*');",
        )
        .await
        .unwrap();
    let left = || async {
        let c = plane.ingest().await;
        let list = |sql: &'static str| {
            let c = &c;
            async move {
                c.query(sql, &[])
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect::<Vec<_>>()
            }
        };
        (
            list("SELECT lote FROM inbox ORDER BY lote").await,
            list("SELECT dados FROM eventos ORDER BY dados").await,
            list("SELECT grupo FROM membros ORDER BY grupo").await,
            list("SELECT grupo FROM cursores ORDER BY grupo").await,
        )
    };
    // Cursors are the pass's last statement.
    let pruned = pg_harness::eventually(std::time::Duration::from_secs(10), || async {
        !left().await.3.iter().any(|g| g == "forged")
    })
    .await;
    assert!(pruned, "nothing was pruned: {:?}", left().await);
    let (inbox, events, members, cursors) = left().await;
    assert_eq!(inbox, ["new applied", "old pending"]);
    assert_eq!(events, ["new"]);
    assert_eq!(members, ["live"]);
    // "waiting" has an event after its cursor (partition 1): kept, nothing is skipped.
    assert_eq!(cursors, ["live", "recent", "waiting", "waiting"]);
}

/// Event consumer groups in `inbox status`: each with its scope, subscribers and lag (the
/// oldest event its routers can see that it has not acknowledged); `inbox forget-group`
/// drops an idle one (audited), refuses one with live subscribers, and names bad input.
#[tokio::test]
async fn inbox_status_lists_consumer_groups_and_forget_group_drops_only_an_idle_one() {
    let plane = Plane::start().await;
    plane
        .ingest()
        .await
        .batch_execute(
            "INSERT INTO eventos (empresa_id, servidor, banco, origem_id, particao, tipo, dados, criado_em, registrado_em) VALUES \
               (1, 'main', 'b', 1, 1, 'lead.created', '{}', now(), now() - interval '60 seconds'); \
             INSERT INTO cursores (grupo, particao, xid, evento, atualizado_em, escopo) VALUES \
               ('caller:bot/behind', 1, '0', 0, now() - interval '120 seconds', '*'), \
               ('caller:bot/elsewhere', 1, '0', 0, now(), 'other'), \
               ('caller:bot/live', 1, '0', 0, now(), '*'); \
             INSERT INTO membros (grupo, membro, escopo) VALUES ('caller:bot/live', 'm1', '*');",
        )
        .await
        .unwrap();
    let s = plane.ok(&["inbox", "status", "--json"]).json();
    let groups = s["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 3, "{s}");
    let group = |name: &str| {
        groups
            .iter()
            .find(|g| g["group"] == name)
            .unwrap_or_else(|| panic!("{name} not in {s}"))
    };
    let behind = group("caller:bot/behind");
    assert_eq!(behind["scope"], "*");
    assert_eq!(behind["members"], 0);
    let lag = behind["oldest_unacked_age_secs"].as_f64().unwrap();
    assert!((59.0..120.0).contains(&lag), "{behind}");
    assert!(behind["idle_secs"].as_f64().unwrap() >= 119.0, "{behind}");
    // Its routers serve only "other": the event on "main" is not one it waits for.
    let elsewhere = group("caller:bot/elsewhere");
    assert_eq!(elsewhere["scope"], "other");
    assert_eq!(elsewhere["oldest_unacked_age_secs"], 0.0);
    assert_eq!(group("caller:bot/live")["members"], 1);
    assert_eq!(
        groups[2]["group"], "caller:bot/elsewhere",
        "the most behind first"
    );
    let text = plane.ok(&["inbox", "status"]).stdout;
    assert!(
        text.contains("event consumer groups:") && text.contains("caller:bot/elsewhere"),
        "{text}"
    );

    let gone = plane
        .ok(&["inbox", "forget-group", "caller:bot/behind", "--json"])
        .json();
    assert_eq!(gone["cursors"], 1);
    let audited: i64 = plane
        .catalog()
        .await
        .query_one(
            "SELECT count(*) FROM auditoria WHERE acao = 'inbox.forget_group'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(audited, 1);
    let again = plane.ctl(&["inbox", "forget-group", "caller:bot/behind"]);
    assert_eq!(again.code, 3, "{again:?}");
    let live = plane.ctl(&["inbox", "forget-group", "caller:bot/live"]);
    assert_eq!(live.code, 4, "{live:?}");
    assert!(live.stderr.contains("live subscribers"), "{live:?}");
    for bad in ["", "caller:bot/\u{7}"] {
        let out = plane.ctl(&["inbox", "forget-group", bad]);
        assert_eq!(out.code, 2, "{bad:?}: {out:?}");
    }
    let viewer = plane
        .ok(&["operator", "add", "vic", "--role", "viewer"])
        .stdout
        .trim()
        .to_string();
    let denied = plane.ctl_env(
        &["inbox", "forget-group", "caller:bot/elsewhere"],
        &[("TENANTCTL_TOKEN", viewer.as_str())],
        None,
    );
    assert_eq!(denied.code, 8, "{denied:?}");
    let left = plane.ok(&["inbox", "status", "--json"]).json();
    assert_eq!(left["groups"].as_array().unwrap().len(), 2, "{left}");
}
