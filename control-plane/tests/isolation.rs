//! The isolation suite: attacks a holder of a tenant's router credentials (its login role)
//! would try, against a real control plane, real tenantctl and real PostgreSQL servers.
//! Every attempt must be refused by PostgreSQL itself.
#![allow(clippy::unwrap_used)]

mod common;

use common::{age_to_v1, connect_as, route, Plane};
use tokio_postgres::error::SqlState;

/// The SQLSTATE of a refused statement (panics if it was not refused by the server).
fn refused(result: Result<impl std::fmt::Debug, tokio_postgres::Error>, what: &str) -> SqlState {
    let err = result.expect_err(&format!("{what} must be refused"));
    err.as_db_error()
        .unwrap_or_else(|| panic!("{what}: refused by the server, not the network: {err}"))
        .code()
        .clone()
}

#[tokio::test]
async fn a_login_role_can_read_and_write_its_tables_and_nothing_else() {
    let pg = pg_harness::shared();
    let plane =
        Plane::start_with(&[("CONTROL_PLANE__PROVISIONING__LOGIN_CONNECTION_LIMIT", "3")]).await;
    plane.add_server("main", pg, 100);
    for slug in ["iso-victim", "iso-attacker"] {
        plane.ok(&["create", slug, "--name", "Iso", "--sector", "veiculos"]);
    }
    let me = route(&plane, "iso-attacker").await;
    let victim = route(&plane, "iso-victim").await;
    let c = connect_as(pg, &me.role, &me.password, &me.database)
        .await
        .unwrap();

    // What the domain API needs works.
    c.batch_execute(
        "INSERT INTO leads (wa_id) VALUES ('5511900000001'); \
         INSERT INTO conversas (lead_id) SELECT id FROM leads; \
         UPDATE leads SET nome = 'Ana'; SELECT count(*) FROM veiculos; \
         DELETE FROM configuracoes WHERE chave = 'nada'",
    )
    .await
    .unwrap();

    // It owns nothing and can create nothing, anywhere.
    let denied = SqlState::INSUFFICIENT_PRIVILEGE;
    for sql in [
        "CREATE SCHEMA evil",
        "CREATE TABLE public.evil (id int)",
        "CREATE FUNCTION public.pg_try_advisory_lock(bigint) RETURNS boolean LANGUAGE sql AS 'SELECT true'",
        "CREATE VIEW public.v AS SELECT 1",
        "CREATE TEMP TABLE t (id int)",
        "SELECT * FROM refinery_schema_history",
        "SELECT * FROM refinery_schema_history_veiculos",
        "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) VALUES (99, 'x', 'y', 'z')",
        "SET temp_file_limit = -1",
        "SET ROLE postgres",
        "SET SESSION AUTHORIZATION postgres",
        "COPY leads TO PROGRAM 'id'",
        "SELECT pg_read_file('/etc/passwd')",
        "CREATE EXTENSION IF NOT EXISTS dblink",
        "ALTER ROLE CURRENT_USER CONNECTION LIMIT -1",
    ] {
        assert_eq!(refused(c.batch_execute(sql).await, sql), denied, "{sql}");
    }
    // Owner-only statements fail as "must be owner" (also an insufficient privilege).
    let owner_only = [
        "ALTER TABLE leads ADD COLUMN x int",
        "DROP TABLE leads",
        "ALTER TABLE refinery_schema_history RENAME TO old_history",
        "CREATE TRIGGER t BEFORE INSERT ON leads FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()",
        "ALTER DATABASE current SET search_path = evil, public",
    ];
    for sql in owner_only {
        let sql = sql.replace("current", &me.database);
        assert_eq!(refused(c.batch_execute(&sql).await, &sql), denied, "{sql}");
    }

    // The role is an ordinary, limited login.
    let row = c
        .query_one(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolconnlimit, \
             current_setting('temp_file_limit'), current_setting('statement_timeout') \
             FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .unwrap();
    assert!(!row.get::<_, bool>(0) && !row.get::<_, bool>(1) && !row.get::<_, bool>(2));
    assert_eq!(row.get::<_, i32>(3), 3);
    assert_eq!(row.get::<_, String>(4), "256MB");
    assert_eq!(row.get::<_, String>(5), "30s");
    // The connection limit holds: a leaked credential cannot exhaust the server.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(
            connect_as(pg, &me.role, &me.password, &me.database)
                .await
                .unwrap(),
        );
    }
    let over = connect_as(pg, &me.role, &me.password, &me.database).await;
    assert_eq!(
        refused(over, "a connection past the limit"),
        SqlState::TOO_MANY_CONNECTIONS
    );
    drop(held);

    // Server-wide names say nothing about customers.
    let names: Vec<String> = c
        .query(
            "SELECT datname::text FROM pg_database UNION ALL SELECT rolname::text FROM pg_roles",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        names.iter().all(|n| !n.contains("iso")),
        "no database or role is named after a slug: {names:?}"
    );

    // Its credentials open no other database: the victim's, the catalog, the maintenance
    // databases, the template.
    let template = format!("{}_veiculos", plane.template_prefix);
    for db in [
        victim.database.as_str(),
        plane.catalog_db.as_str(),
        "postgres",
        "template1",
        template.as_str(),
    ] {
        let result = connect_as(pg, &me.role, &me.password, db).await;
        assert_eq!(refused(result, db), denied, "{db}");
    }
    // Nor does the standby login role (no password until a rotation gives it one).
    let standby = plane.ok(&["show", "iso-attacker", "--json"]).json();
    let owner = standby["owner_role"].as_str().unwrap().to_string();
    let standby_role = me.role.replace("_login_a", "_login_b");
    assert_ne!(standby_role, me.role);
    assert!(connect_as(pg, &standby_role, &me.password, &me.database)
        .await
        .is_err());
    assert!(connect_as(pg, &owner, &me.password, &me.database)
        .await
        .is_err());
}

#[tokio::test]
async fn a_trojan_in_a_tenant_database_gains_nothing_from_migrate() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 100);
    for slug in ["troy", "bystander"] {
        plane.ok(&["create", slug, "--name", "T", "--sector", "servicos"]);
    }
    let show = plane.ok(&["show", "troy", "--json"]).json();
    let owner = show["owner_role"].as_str().unwrap().to_string();
    let db = plane.database_of("troy").await;
    age_to_v1(&plane, pg, "troy").await;

    // Assume the worst: the database is already hostile (say, planted before the upgrade
    // to this role model). Every trojan tries to become superuser and logs what happened.
    let su = pg.connect(&db).await.unwrap();
    let escalate = "BEGIN \
           INSERT INTO public.trojan_log VALUES (current_user, 'ran'); \
           EXECUTE 'RESET ROLE'; \
           EXECUTE 'CREATE ROLE pwned_by_troy SUPERUSER LOGIN'; \
         EXCEPTION WHEN others THEN \
           INSERT INTO public.trojan_log VALUES (current_user, SQLERRM); \
         END;";
    su.batch_execute(&format!(
        "SET ROLE \"{owner}\";
         CREATE TABLE public.trojan_log (who text, what text);
         CREATE SCHEMA evil;
         CREATE FUNCTION evil.pg_try_advisory_lock(bigint) RETURNS boolean LANGUAGE plpgsql AS $$
           BEGIN {escalate} RETURN true; END $$;
         CREATE FUNCTION public.pg_try_advisory_lock(bigint) RETURNS boolean LANGUAGE plpgsql AS $$
           BEGIN {escalate} RETURN true; END $$;
         CREATE FUNCTION public.history_rows() RETURNS SETOF refinery_schema_history LANGUAGE plpgsql AS $$
           BEGIN {escalate} RETURN QUERY SELECT * FROM public.old_history; END $$;
         ALTER TABLE refinery_schema_history RENAME TO old_history;
         CREATE VIEW refinery_schema_history AS SELECT * FROM public.history_rows();
         ALTER DATABASE \"{db}\" SET search_path = evil, public, pg_catalog;
         RESET ROLE;"
    ))
    .await
    .unwrap();

    // The migration reads the history (the view), so the trojan runs, as the owner.
    let out = plane.ctl(&["migrate", "troy", "--json"]);
    assert!(out.code == 0 || out.code == 7, "{out:?}");
    let log: Vec<(String, String)> = su
        .query("SELECT who, what FROM public.trojan_log", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(
        log.iter().any(|(who, _)| who == &owner),
        "the trojan ran during migrate: {log:?}"
    );
    assert!(
        log.iter().all(|(who, _)| who == &owner),
        "it never ran as anyone but the owner: {log:?}"
    );
    assert!(
        log.iter()
            .all(|(_, what)| what.contains("permission denied")
                || what.contains("must be superuser")),
        "and its escalation was refused: {log:?}"
    );
    let admin = pg.connect("postgres").await.unwrap();
    let pwned = admin
        .query_opt(
            "SELECT 1 FROM pg_roles WHERE rolname = 'pwned_by_troy'",
            &[],
        )
        .await
        .unwrap();
    assert!(pwned.is_none(), "no role was created");
    let supers: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolsuper AND rolname LIKE $1",
            &[&format!("{}\\_%", plane.name_prefix)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(supers, 0, "no tenant role became superuser");
    // The bystander on the same server was never touched and still migrates.
    let by = plane.ok(&["show", "bystander", "--json"]).json();
    assert_eq!(by["status"], "active");
    plane.ok(&["migrate", "bystander"]);
}

/// A connection as a legacy tenant's own role: what an attacker with a router's stolen
/// credentials had before the upgrade.
async fn as_legacy(pg: &pg_harness::PgServer, slug: &str, db: &str) -> tokio_postgres::Client {
    let role = format!("emp_{}_app", slug.replace('-', "_"));
    connect_as(pg, &role, common::LEGACY_PASSWORD, db)
        .await
        .unwrap()
}

#[tokio::test]
async fn harden_upgrades_a_hostile_legacy_tenant_and_keeps_its_data() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 100);
    for slug in ["old-hostile", "old-clean"] {
        plane.ok(&["create", slug, "--name", "Old", "--sector", "veiculos"]);
    }
    let hostile_db = common::make_legacy(&plane, pg, "old-hostile").await;
    common::make_legacy(&plane, pg, "old-clean").await;
    let shown = plane.ok(&["show", "old-hostile", "--json"]).json();
    assert_eq!(shown["role_model"], "legacy");
    // Nothing runs inside a legacy database before the upgrade: migrate refuses it.
    age_to_v1(&plane, pg, "old-clean").await;
    let refused_migrate = plane.ctl(&["migrate", "old-clean"]);
    assert_eq!(refused_migrate.code, 7, "{refused_migrate:?}");
    assert!(
        refused_migrate
            .stdout
            .contains("tenantctl harden old-clean"),
        "{refused_migrate:?}"
    );

    // With the legacy role's password (what routers held), plant everything.
    let evil = as_legacy(pg, "old-hostile", &hostile_db).await;
    evil.batch_execute(&format!(
        "INSERT INTO leads (wa_id, nome) VALUES ('5511911112222', 'Real customer');
         CREATE SCHEMA evil;
         CREATE FUNCTION evil.pg_try_advisory_lock(bigint) RETURNS boolean LANGUAGE sql AS 'SELECT true';
         CREATE FUNCTION public.trojan() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN EXECUTE 'CREATE ROLE pwned_by_legacy SUPERUSER'; RETURN NEW; END $$;
         CREATE TRIGGER trojan BEFORE INSERT ON leads FOR EACH ROW EXECUTE FUNCTION public.trojan();
         CREATE TABLE public.loot (x text); INSERT INTO public.loot VALUES ('kept');
         CREATE VIEW public.spy AS SELECT * FROM leads;
         ALTER TABLE leads ADD COLUMN pwn int;
         GRANT ALL ON leads TO PUBLIC;
         ALTER DATABASE {hostile_db} SET search_path = evil, public;
         ALTER ROLE CURRENT_USER SET search_path = evil;"
    ))
    .await
    .unwrap();
    drop(evil);

    let out = plane.ok(&["harden", "--all", "--json"]).json();
    assert_eq!(out["migrated"], 2, "{out}");
    let hostile = out["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["slug"] == "old-hostile")
        .unwrap();
    assert_eq!(hostile["outcome"], "upgraded");
    let report: Vec<String> = hostile["report"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    assert!(
        !report.iter().any(|l| l.contains("column public.spy")),
        "a view's columns are not reported one by one: {report:?}"
    );
    for expected in [
        "removed schema evil",
        "removed function public.trojan()",
        "removed trigger trojan on public.leads",
        "quarantined table public.loot",
        "removed view public.spy",
        "removed table column public.leads.pwn",
        "reset settings",
        "legacy role emp_old_hostile_app dropped",
    ] {
        assert!(
            report.iter().any(|l| l.contains(expected)),
            "report lacks {expected:?}: {report:?}"
        );
    }

    // The tenant now follows the new model, under its id-derived name.
    let shown = plane.ok(&["show", "old-hostile", "--json"]).json();
    assert_eq!(shown["role_model"], "owner+logins");
    let id = shown["id"].as_i64().unwrap();
    assert_eq!(shown["database"], format!("{}_{id}_g1", plane.name_prefix));
    assert!(!common::database_exists(pg, &hostile_db).await);
    assert!(!common::role_exists(pg, "emp_old_hostile_app").await);
    assert!(connect_as(
        pg,
        "emp_old_hostile_app",
        common::LEGACY_PASSWORD,
        "postgres"
    )
    .await
    .is_err());

    // The data is intact; the planted table sits in quarantine with its rows; no trojan
    // remains and nothing escalated.
    let r = route(&plane, "old-hostile").await;
    let login = connect_as(pg, &r.role, &r.password, &r.database)
        .await
        .unwrap();
    let names: Vec<String> = login
        .query("SELECT nome FROM leads", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, ["Real customer"]);
    login
        .batch_execute("INSERT INTO leads (wa_id) VALUES ('5511933334444')")
        .await
        .unwrap();
    assert_eq!(
        refused(
            login.batch_execute("SELECT * FROM quarantine.loot").await,
            "quarantine"
        ),
        SqlState::INSUFFICIENT_PRIVILEGE
    );
    let su = pg.connect(&r.database).await.unwrap();
    let tables: Vec<String> = su
        .query("SELECT schemaname || '.' || tablename FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(tables.iter().any(|t| t == "quarantine.loot"), "{tables:?}");
    let kept: String = su
        .query_one("SELECT x FROM quarantine.loot", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, "kept");
    let settings: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase \
             WHERE d.datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(settings, 0, "database-level settings were reset");
    let admin = pg.connect("postgres").await.unwrap();
    assert!(admin
        .query_opt(
            "SELECT 1 FROM pg_roles WHERE rolname = 'pwned_by_legacy'",
            &[]
        )
        .await
        .unwrap()
        .is_none());

    // Upgraded tenants migrate as their owner, and a second run has nothing to do.
    age_to_v1(&plane, pg, "old-hostile").await;
    plane.ok(&["migrate", "old-hostile"]);
    let again = plane.ok(&["harden", "--all", "--json"]).json();
    assert_eq!(again["migrated"], 0, "{again}");
    assert_eq!(again["skipped"], 2, "{again}");
}

#[tokio::test]
async fn harden_refuses_a_shipped_object_changed_in_place_and_touches_nothing() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 100);
    plane.ok(&[
        "create",
        "old-tampered",
        "--name",
        "Old",
        "--sector",
        "servicos",
    ]);
    let db = common::make_legacy(&plane, pg, "old-tampered").await;
    let evil = as_legacy(pg, "old-tampered", &db).await;
    evil.batch_execute("ALTER TABLE leads ALTER COLUMN status SET DEFAULT 'perdido'")
        .await
        .unwrap();

    let out = plane.ctl(&["harden", "old-tampered"]);
    assert_eq!(out.code, 7, "{out:?}");
    assert!(
        out.stdout.contains("default value for public.leads.status"),
        "{out:?}"
    );
    let shown = plane.ok(&["show", "old-tampered", "--json"]).json();
    assert_eq!(shown["role_model"], "legacy");
    assert!(
        plane.tenant_objects_on(pg).await.is_empty(),
        "no new role was made before the database was found clean"
    );
    // Repaired by hand, the upgrade goes through.
    evil.batch_execute("ALTER TABLE leads ALTER COLUMN status SET DEFAULT 'novo'")
        .await
        .unwrap();
    drop(evil);
    plane.ok(&["harden", "old-tampered"]);
    let shown = plane.ok(&["show", "old-tampered", "--json"]).json();
    assert_eq!(shown["role_model"], "owner+logins");
}

#[tokio::test]
async fn a_harden_run_killed_midway_resumes_and_loses_nothing() {
    let pg = pg_harness::shared();
    let mut plane = Plane::start().await;
    plane.add_server("main", pg, 100);
    let slugs: Vec<String> = (0..6).map(|i| format!("old-crash-{i}")).collect();
    for slug in &slugs {
        plane.ok(&["create", slug, "--name", "Old", "--sector", "varejo"]);
        let db = common::make_legacy(&plane, pg, slug).await;
        as_legacy(pg, slug, &db)
            .await
            .batch_execute("INSERT INTO leads (wa_id) VALUES ('5511900000000')")
            .await
            .unwrap();
    }
    let mut cmd = plane.tenantctl();
    cmd.args(["harden", "--all", "--concurrency", "2"]);
    let run = std::thread::spawn(move || cmd.output().unwrap());
    // Kill the control plane once the run is under way (some tenant staged or done).
    let catalog = plane.catalog().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let started: i64 = catalog
            .query_one(
                "SELECT count(*) FROM empresas WHERE papel_dono IS NOT NULL",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if started > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the run never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    plane.crash_and_restart();
    let interrupted = run.join().unwrap();
    let done: i64 = catalog
        .query_one("SELECT count(*) FROM empresas WHERE modelo_papeis = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert!(done < 6, "the crash came mid-run");
    assert!(
        !interrupted.status.success(),
        "the interrupted run reports failure"
    );

    plane.ok(&["harden", "--all"]);
    for slug in &slugs {
        let r = route(&plane, slug).await;
        let c = connect_as(pg, &r.role, &r.password, &r.database)
            .await
            .unwrap();
        let n: i64 = c
            .query_one("SELECT count(*) FROM leads", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "{slug} kept its lead");
        assert!(!common::role_exists(pg, &format!("emp_{}_app", slug.replace('-', "_"))).await);
    }
    let leftovers: i64 = catalog
        .query_one(
            "SELECT count(*) FROM empresas WHERE modelo_papeis = 1 OR papel_legado IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(leftovers, 0);
}

#[tokio::test]
async fn operators_act_within_their_roles_and_the_audit_log_names_them() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 100);
    let as_op =
        |token: &str, args: &[&str]| plane.ctl_env(args, &[("TENANTCTL_TOKEN", token)], None);
    let vera = plane
        .ok(&["operator", "add", "vera", "--role", "viewer"])
        .stdout
        .trim()
        .to_string();
    let otto = plane
        .ok(&["operator", "add", "otto", "--role", "operator"])
        .stdout
        .trim()
        .to_string();

    // A viewer reads and may change nothing.
    assert_eq!(as_op(&vera, &["list"]).code, 0);
    let denied = as_op(
        &vera,
        &["create", "by-vera", "--name", "V", "--sector", "varejo"],
    );
    assert_eq!(denied.code, 8, "{denied:?}");
    assert!(
        denied.stderr.contains("needs the operator role"),
        "{denied:?}"
    );
    // An operator runs the fleet but may not touch servers or operators.
    assert_eq!(
        as_op(
            &otto,
            &["create", "by-otto", "--name", "O", "--sector", "varejo"]
        )
        .code,
        0
    );
    for args in [
        vec!["operator", "add", "eve", "--role", "admin"],
        vec!["operator", "token", "otto"],
        vec!["operator", "disable", "vera"],
    ] {
        let out = as_op(&otto, &args);
        assert_eq!(out.code, 8, "{args:?}: {out:?}");
    }
    let server_add = plane.ctl_env(
        &[
            "server",
            "add",
            "x",
            "--host",
            "127.0.0.1",
            "--port",
            "1",
            "--admin-user",
            "postgres",
        ],
        &[
            ("TENANTCTL_TOKEN", &otto),
            ("TENANTCTL_ADMIN_PASSWORD", "pw"),
        ],
        None,
    );
    assert_eq!(server_add.code, 8, "{server_add:?}");

    // Tokens others cannot use: forged, of another kind, expired, revoked, of a disabled
    // operator. Each is refused as unauthenticated.
    let other =
        caller_auth::Signer::from_base64("b3RoZXIta2V5LW9mLWFuLWF0dGFja2VyLTAxMjM0NTY=").unwrap();
    let claims = |kind, exp: u64| caller_auth::Claims {
        jti: "x".into(),
        kind,
        sub: "test-admin".into(),
        tenants: vec![],
        all: true,
        role: Some("admin".into()),
        sid: None,
        scopes: Vec::new(),
        exp,
        iat: caller_auth::now_secs(),
    };
    let ours = caller_auth::Signer::from_base64(common::SIGNING_KEY).unwrap();
    let now = caller_auth::now_secs();
    let caller = plane
        .ok(&["token", "issue", "--all"])
        .stdout
        .trim()
        .to_string();
    for (what, token) in [
        (
            "forged",
            other
                .sign(&claims(caller_auth::Kind::Operator, now + 60))
                .unwrap(),
        ),
        ("a caller token", caller),
        (
            "expired",
            ours.sign(&claims(caller_auth::Kind::Operator, now - 600))
                .unwrap(),
        ),
        // Signed with the real key but never issued (a key leak is not enough without
        // the catalog's record).
        (
            "unrecorded",
            ours.sign(&claims(caller_auth::Kind::Operator, now + 60))
                .unwrap(),
        ),
    ] {
        let out = as_op(&token, &["list"]);
        assert_eq!(out.code, 6, "{what}: {out:?}");
    }
    let issued = plane.ok(&["operator", "token", "vera", "--json"]).json();
    let second = issued["token"].as_str().unwrap();
    assert_eq!(as_op(second, &["list"]).code, 0);
    plane.ok(&["token", "revoke", issued["token_id"].as_str().unwrap()]);
    assert_eq!(
        as_op(second, &["list"]).code,
        6,
        "a revoked token stops at once"
    );
    assert_eq!(
        as_op(&vera, &["list"]).code,
        0,
        "the other token still works"
    );
    plane.ok(&["operator", "disable", "vera"]);
    assert_eq!(
        as_op(&vera, &["list"]).code,
        6,
        "a disabled operator's tokens stop"
    );
    let out = plane.ctl(&["operator", "disable", "test-admin"]);
    assert_eq!(out.code, 4, "an admin cannot lock itself out: {out:?}");
    // Lifetimes past the maximum and bad names are refused before anything is made.
    for (args, code) in [
        (vec!["operator", "add", "Bad Name", "--role", "viewer"], 2),
        (vec!["operator", "add", "ok-name", "--role", "root"], 2),
        (
            vec![
                "operator", "add", "ok-name", "--role", "viewer", "--ttl", "365d",
            ],
            2,
        ),
        (vec!["token", "revoke", "no-such-token"], 3),
    ] {
        let out = plane.ctl(&args);
        assert_eq!(out.code, code, "{args:?}: {out:?}");
    }
    let names: Vec<String> = plane
        .ok(&["operator", "list", "--json"])
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["otto", "test-admin", "vera"], "nothing half-made");

    // The audit log says who did what, with which token, and how it ended.
    let audit = plane
        .ok(&["audit", "--tenant", "by-otto", "--since", "1h", "--json"])
        .json();
    let entries = audit.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{audit}");
    assert_eq!(entries[0]["actor"], "otto");
    assert_eq!(entries[0]["action"], "tenant.create");
    assert_eq!(entries[0]["outcome"], "ok");
    assert!(!entries[0]["token_id"].as_str().unwrap().is_empty());
    let all = plane.ok(&["audit", "--json", "--limit", "1000"]).json();
    assert!(all.as_array().unwrap().iter().any(|e| e["actor"] == "vera"
        && e["action"] == "tenant.create"
        && e["outcome"] == "denied"));
    assert_eq!(plane.ctl(&["audit", "--since", "soon"]).code, 2);
}

#[tokio::test]
async fn routers_get_only_their_servers_routes_and_a_revoked_router_is_cut_off() {
    use proto::control::v1::{
        resolve_request::Key, tenant_directory_client::TenantDirectoryClient, ResolveRequest,
        WatchRoutesRequest,
    };
    let plane =
        Plane::start_with(&[("CONTROL_PLANE__PROVISIONING__ROTATION_GRACE_SECS", "1")]).await;
    plane.add_server("pg-a", pg_harness::shared(), 100);
    plane.add_server("pg-b", pg_harness::shared_second(), 100);
    plane.ok(&[
        "create", "on-a", "--name", "A", "--sector", "servicos", "--server", "pg-a",
    ]);
    plane.ok(&[
        "create", "on-b", "--name", "B", "--sector", "servicos", "--server", "pg-b",
    ]);
    let scoped = plane
        .ok(&["router", "add", "edge-a", "--server", "pg-a"])
        .stdout
        .trim()
        .to_string();
    let mut dir = TenantDirectoryClient::new(plane.channel().await);
    let resolve = |slug: &str, token: &str| {
        common::authed(
            ResolveRequest {
                key: Some(Key::Slug(slug.into())),
            },
            token,
        )
    };
    let on_a = dir
        .resolve(resolve("on-a", &scoped))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(on_a.server, "pg-a");
    let err = dir.resolve(resolve("on-b", &scoped)).await.unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::NotFound,
        "another server's tenant does not exist for it"
    );
    // Operator and caller tokens are no router credentials.
    for token in [
        plane.admin_token.clone(),
        plane
            .ok(&["token", "issue", "--all"])
            .stdout
            .trim()
            .to_string(),
    ] {
        let err = dir.resolve(resolve("on-a", &token)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }

    // Its change stream carries only its servers' tenants.
    let mut stream = dir
        .watch_routes(common::authed(WatchRoutesRequest {}, &scoped))
        .await
        .unwrap()
        .into_inner();
    plane.ok(&["suspend", "on-b"]);
    plane.ok(&["suspend", "on-a"]);
    let change = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        change.route.unwrap().slug,
        "on-a",
        "on-b's change was not sent"
    );
    let listed = plane.ok(&["router", "list", "--json"]).json();
    let edge = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "edge-a")
        .unwrap()
        .clone();
    assert_eq!(edge["tenants_seen"], 1);

    // Revoked (with rotation): its open stream ends at once, its lookups stop, and the
    // password it saw no longer opens the database once the grace period is over.
    let revoked = plane
        .ok(&["router", "revoke", "edge-a", "--rotate", "--json"])
        .json();
    assert_eq!(revoked["rotated"], serde_json::json!(["on-a"]));
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return tonic::Code::Ok,
                Err(s) => return s.code(),
            }
        }
    })
    .await
    .expect("the stream closed within seconds");
    assert_eq!(ended, tonic::Code::Unauthenticated);
    let err = dir.resolve(resolve("on-a", &scoped)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let fresh = common::route(&plane, "on-a").await;
    assert_ne!(fresh.password, on_a.password);
    assert_ne!(fresh.role, on_a.role, "the standby login took over");
    let pg = pg_harness::shared();
    connect_as(pg, &fresh.role, &fresh.password, &fresh.database)
        .await
        .unwrap();
    let old_dead = pg_harness::eventually(std::time::Duration::from_secs(15), || async {
        connect_as(pg, &on_a.role, &on_a.password, &on_a.database)
            .await
            .is_err()
    })
    .await;
    assert!(
        old_dead,
        "the revoked router's password stopped working after the grace"
    );
    // Bad input changes nothing.
    for (args, code) in [
        (vec!["router", "add", "edge-x", "--server", "no-such"], 3),
        (vec!["router", "add", "Edge", "--all-servers"], 2),
        (vec!["router", "add", "edge-a", "--all-servers"], 4),
        (vec!["router", "revoke", "nobody"], 3),
        (vec!["rotate"], 2),
        (vec!["rotate", "no-such-tenant"], 3),
    ] {
        let out = plane.ctl(&args);
        assert_eq!(out.code, code, "{args:?}: {out:?}");
    }
}

#[tokio::test]
async fn a_new_master_key_takes_over_every_stored_secret() {
    let pg = pg_harness::shared();
    let mut plane = Plane::start().await;
    plane.add_server("main", pg, 100);
    plane.ok(&["create", "keyed", "--name", "K", "--sector", "servicos"]);
    plane.ok(&["webhook-token", "keyed"]);
    plane.ok(&["backup", "keyed"]);
    let secret = plane.ctl_env(
        &["secret", "set", "keyed", "openai_api_key"],
        &[],
        Some("sk-chave-secreta\n"),
    );
    assert_eq!(secret.code, 0, "{secret:?}");
    let before = common::route(&plane, "keyed").await;
    let rekey = plane.ok(&["rekey", "--json"]).json();
    assert_eq!(
        rekey["resealed"], 0,
        "everything is under the current key: {rekey}"
    );

    // A new key, the old one retired: everything still opens; rekey moves it all over.
    let new_key = "bmV3LW1hc3Rlci1rZXktZm9yLXRlc3RzLTAxMjM0NTY=";
    plane.restart_with(&[
        ("CONTROL_PLANE__MASTER_KEY", new_key),
        ("CONTROL_PLANE__RETIRED_MASTER_KEYS", common::MASTER_KEY),
    ]);
    assert_eq!(
        common::route(&plane, "keyed").await.password,
        before.password
    );
    let rekey = plane.ok(&["rekey", "--json"]).json();
    assert!(rekey["resealed"].as_u64().unwrap() >= 6, "{rekey}");
    assert_eq!(rekey["remaining"], 0, "{rekey}");
    let again = plane.ok(&["rekey", "--json"]).json();
    assert_eq!(again["resealed"], 0, "repeatable: {again}");

    // Without the old key, every secret still opens: routes, server admin, owners.
    plane.restart_with(&[("CONTROL_PLANE__RETIRED_MASTER_KEYS", "")]);
    assert_eq!(
        common::route(&plane, "keyed").await.password,
        before.password
    );
    age_to_v1(&plane, pg, "keyed").await;
    plane.ok(&["migrate", "keyed"]);
    plane.ok(&["create", "keyed-two", "--name", "K", "--sector", "servicos"]);
    plane.ok(&["rotate", "keyed"]);
    // The backup's data key was re-sealed too: the new key alone opens it.
    let row = plane
        .catalog()
        .await
        .query_one("SELECT objeto, chave_cifrada FROM backups", &[])
        .await
        .unwrap();
    let (object, sealed): (String, Vec<u8>) = (row.get(0), row.get(1));
    control_plane::crypto::SecretBox::from_base64(new_key)
        .unwrap()
        .open(&sealed, &control_plane::backup::key_context(&object))
        .expect("the backup key opens with the new master key");
    // Tenant secrets were re-sealed too.
    let row = plane
        .catalog()
        .await
        .query_one(
            "SELECT empresa_id, valor_cifrado FROM segredos_empresa",
            &[],
        )
        .await
        .unwrap();
    let (tenant, sealed): (i64, Vec<u8>) = (row.get(0), row.get(1));
    assert_eq!(
        control_plane::crypto::SecretBox::from_base64(new_key)
            .unwrap()
            .open(
                &sealed,
                &control_plane::settings::secret_context(tenant, "openai_api_key")
            )
            .expect("the secret opens with the new master key"),
        "sk-chave-secreta"
    );
    // ...and so does the copy stored beside the object: the store and the new key alone
    // open the backup.
    let out = plane.run_binary(&[], &["decrypt-backup", &object, "--out", "/dev/null"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let audit = plane.ok(&["audit", "--json"]).json();
    assert!(audit
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "master_key.rekey" && e["actor"] == "test-admin"));
}

#[tokio::test]
async fn every_hop_is_tls_and_an_impostor_certificate_is_refused() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 100);
    plane.ok(&["create", "tls-one", "--name", "T", "--sector", "servicos"]);
    // The control plane's own sessions (catalog, admin, owner) are all TLS.
    let su = pg.connect("postgres").await.unwrap();
    let plain: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.datname = $1 AND a.pid <> pg_backend_pid() AND NOT s.ssl",
            &[&plane.catalog_db],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(plain, 0, "no plaintext catalog session");

    // A client that trusts another CA refuses the control plane's certificate.
    let untrusted = pg_harness::untrusted_ca_file().unwrap();
    let untrusted = untrusted.display().to_string();
    let out = plane.ctl_env(
        &["list"],
        &[("TENANTCTL_CA_FILE", untrusted.as_str())],
        None,
    );
    assert_eq!(out.code, 5, "{out:?}");
    // Plaintext to a TLS endpoint, or TLS without a CA, is refused before anything is sent.
    let plain_endpoint = plane.endpoint.replace("https://", "http://");
    let out = plane.ctl_env(
        &["list"],
        &[("TENANTCTL_ENDPOINT", plain_endpoint.as_str())],
        None,
    );
    assert_eq!(out.code, 2, "{out:?}");

    // A control plane that trusts another CA refuses the database server's certificate
    // (the catalog's, here): it will not start, and says why without any secret.
    let out = plane.run_binary(
        &[("CONTROL_PLANE__DATABASE_TLS__CA_FILE", untrusted.as_str())],
        &["operator-token", "--name", "impostor-check"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("TLS handshake"), "{stderr}");
    assert!(!stderr.contains(pg_harness::SUPERUSER_PASSWORD), "{stderr}");
    assert!(plane
        .ok(&["operator", "list", "--json"])
        .json()
        .as_array()
        .unwrap()
        .iter()
        .all(|o| o["name"] != "impostor-check"));
}

#[tokio::test]
async fn owner_template_owner_and_server_admin_passwords_rotate() {
    let pg = pg_harness::shared_second();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 100);
    plane.ok(&["create", "own-rot", "--name", "O", "--sector", "veiculos"]);
    plane.ok(&["rotate", "own-rot", "--owners"]);
    // The owner still runs jobs with its new password; the template owner too.
    age_to_v1(&plane, pg, "own-rot").await;
    plane.ok(&["migrate", "own-rot"]);
    plane.ok(&["server", "rotate-template-owner", "main"]);
    plane.ok(&["create", "own-rot-2", "--name", "O", "--sector", "veiculos"]);
    // A server's admin password: a wrong one is refused before it is stored.
    let out = plane.ctl_env(
        &["server", "set-password", "main"],
        &[("TENANTCTL_ADMIN_PASSWORD", "not-the-password")],
        None,
    );
    assert_eq!(out.code, 5, "{out:?}");
    let out = plane.ctl_env(
        &["server", "set-password", "main"],
        &[("TENANTCTL_ADMIN_PASSWORD", pg_harness::SUPERUSER_PASSWORD)],
        None,
    );
    assert_eq!(out.code, 0, "{out:?}");
    plane.ok(&["create", "own-rot-3", "--name", "O", "--sector", "servicos"]);
    let audit = plane.ok(&["audit", "--json", "--limit", "1000"]).json();
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in ["tenant.rotate_owner", "server.rotate_template_owner"] {
        assert!(actions.contains(&action), "{action} audited: {actions:?}");
    }
}
