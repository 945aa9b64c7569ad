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
