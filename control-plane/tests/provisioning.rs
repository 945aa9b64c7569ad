//! Provisioning end to end: real control plane, real tenantctl, real PostgreSQL servers.
#![allow(clippy::unwrap_used)]

mod common;

use common::{connect_as, database_exists, route, Plane};

#[tokio::test]
async fn create_gives_each_tenant_its_own_isolated_database() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 100);
    let a = plane
        .ok(&[
            "create",
            "iso-alpha",
            "--name",
            "Alpha Veículos",
            "--sector",
            "veiculos",
            "--phone-number-id",
            "5550001001",
            "--display-phone",
            "+55 (11) 91234-5678",
            "--json",
        ])
        .json();
    assert_eq!(a["slug"], "iso-alpha");
    assert_eq!(a["status"], "active");
    assert_eq!(a["display_phone"], "+5511912345678");
    plane.ok(&[
        "create",
        "iso-beta",
        "--name",
        "Beta Imóveis",
        "--sector",
        "imoveis",
    ]);

    let show = plane.ok(&["show", "iso-alpha", "--json"]).json();
    for field in [
        "slug",
        "name",
        "sector",
        "status",
        "server",
        "database",
        "schema_version",
        "version",
    ] {
        assert!(!show[field].is_null(), "show --json lacks {field}: {show}");
    }
    assert_eq!(show["server"], "main");
    let id = show["id"].as_i64().unwrap();
    assert_eq!(
        show["database"],
        format!("{}_{id}_g1", plane.name_prefix),
        "named from the id, never the slug"
    );
    let (common, sector) = tenant_migrations::targets(tenant_migrations::Sector::Veiculos);
    assert_eq!(show["schema_version"], common);
    assert_eq!(show["sector_schema_version"], sector);

    // The tenant's own credentials open its database, with its sector's tables and seed.
    let ra = route(&plane, "iso-alpha").await;
    let rb = route(&plane, "iso-beta").await;
    assert_ne!(ra.password, rb.password);
    let own = connect_as(pg, &ra.role, &ra.password, &ra.database)
        .await
        .unwrap();
    own.batch_execute("INSERT INTO leads (wa_id) VALUES ('5511912345678')")
        .await
        .unwrap();
    let setor: serde_json::Value = own
        .query_one("SELECT valor FROM configuracoes WHERE chave = 'setor'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(setor, "veiculos");
    own.batch_execute("SELECT count(*) FROM veiculos")
        .await
        .unwrap();

    // PostgreSQL itself refuses A's credentials on B's database, and on the template.
    let err = connect_as(pg, &ra.role, &ra.password, &rb.database)
        .await
        .unwrap_err();
    let db_err = err.as_db_error().expect("refused by the server itself");
    assert_eq!(
        db_err.code(),
        &tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE
    );
    assert!(
        db_err.message().contains("permission denied for database"),
        "{db_err}"
    );
    let tpl = format!("{}_veiculos", plane.template_prefix);
    assert!(database_exists(pg, &tpl).await, "the template was built");
    assert!(connect_as(pg, &ra.role, &ra.password, &tpl).await.is_err());
    // A wrong password is refused too.
    assert!(connect_as(pg, &ra.role, "wrong", &ra.database)
        .await
        .is_err());

    // Objects cloned from the template belong to the tenant's owner role, not to the
    // login role routers hold.
    let owner: String = own
        .query_one(
            "SELECT tableowner::text FROM pg_tables WHERE tablename = 'leads'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, show["owner_role"].as_str().unwrap());
    assert_ne!(owner, ra.role);

    // Stored passwords are encrypted, and nothing printed them.
    let catalog = plane.catalog().await;
    let sealed: Vec<u8> = catalog
        .query_one(
            "SELECT senha_cifrada FROM empresas WHERE slug = 'iso-alpha'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!sealed
        .windows(ra.password.len())
        .any(|w| w == ra.password.as_bytes()));
    let listing = plane.ok(&["list", "--json"]).stdout;
    assert!(!listing.contains(&ra.password));

    let list = plane.ok(&["list", "--json"]).json();
    assert_eq!(list.as_array().unwrap().len(), 2);
    let table = plane.ok(&["list"]).stdout;
    assert!(
        table.starts_with("SLUG") && table.contains("iso-beta"),
        "{table}"
    );
}

#[tokio::test]
async fn bad_input_is_refused_clearly_and_leaves_nothing_behind() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 100);
    plane.ok(&[
        "create",
        "bad-taken",
        "--name",
        "Taken",
        "--sector",
        "varejo",
        "--phone-number-id",
        "5550002002",
    ]);

    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["create", "Bad-Upper", "--name", "X", "--sector", "varejo"],
            2,
            "invalid slug",
        ),
        (
            &["create", "bad space", "--name", "X", "--sector", "varejo"],
            2,
            "invalid slug",
        ),
        (
            &["create", "bad'quote", "--name", "X", "--sector", "varejo"],
            2,
            "invalid slug",
        ),
        (
            &[
                "create",
                "x; DROP DATABASE postgres; --",
                "--name",
                "X",
                "--sector",
                "varejo",
            ],
            2,
            "invalid slug",
        ),
        (
            &["create", "bad-sector", "--name", "X", "--sector", "padaria"],
            2,
            "unknown sector \"padaria\"",
        ),
        (
            &[
                "create",
                "bad-phone",
                "--name",
                "X",
                "--sector",
                "varejo",
                "--display-phone",
                "11 9123",
            ],
            2,
            "invalid display phone",
        ),
        (
            &[
                "create",
                "bad-pnid",
                "--name",
                "X",
                "--sector",
                "varejo",
                "--phone-number-id",
                "abc",
            ],
            2,
            "invalid phone_number_id",
        ),
        (
            &["create", "bad-name", "--name", "  ", "--sector", "varejo"],
            2,
            "invalid name",
        ),
        (
            &[
                "create",
                "bad-taken",
                "--name",
                "Again",
                "--sector",
                "varejo",
            ],
            4,
            "already taken",
        ),
        (
            &[
                "create",
                "bad-dup-phone",
                "--name",
                "X",
                "--sector",
                "varejo",
                "--phone-number-id",
                "5550002002",
            ],
            4,
            "phone_number_id \"5550002002\" already belongs",
        ),
        (
            &[
                "create",
                "bad-server",
                "--name",
                "X",
                "--sector",
                "varejo",
                "--server",
                "nope",
            ],
            3,
            "server \"nope\" is not registered",
        ),
        (
            &[
                "create", "bad-plan", "--name", "X", "--sector", "varejo", "--plan", "gratis",
            ],
            2,
            "unknown plan",
        ),
    ];
    for (args, code, message) in cases {
        let out = plane.ctl(args);
        assert_eq!(out.code, *code, "{args:?}: {out:?}");
        assert!(
            out.stderr.contains(message),
            "{args:?}: stderr {:?} lacks {message:?}",
            out.stderr
        );
        assert_eq!(
            out.stderr.lines().count(),
            1,
            "one clear line: {:?}",
            out.stderr
        );
        assert!(
            !out.stderr.contains("127.0.0.1") && !out.stderr.contains("INSERT"),
            "{out:?}"
        );
    }
    // Untouched state: one tenant in the catalog, no stray databases or roles.
    let list = plane.ok(&["list", "--json"]).json();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let taken = plane.database_of("bad-taken").await;
    let objects = plane.tenant_objects_on(pg).await;
    assert!(
        objects.iter().all(|o| o.starts_with(&taken)),
        "only the taken tenant's database and roles exist: {objects:?}"
    );
    // The taken tenant is unharmed.
    assert_eq!(
        plane.ok(&["show", "bad-taken", "--json"]).json()["name"],
        "Taken"
    );
}

#[tokio::test]
async fn an_unreachable_server_fails_create_cleanly() {
    let plane = Plane::start().await;
    let doomed = pg_harness::PgServer::start().unwrap();
    plane.add_server("doomed", &doomed, 100);
    doomed.stop();
    let out = plane.ctl(&[
        "create",
        "unreach-one",
        "--name",
        "X",
        "--sector",
        "servicos",
    ]);
    assert_eq!(out.code, 5, "{out:?}");
    assert!(
        out.stderr
            .contains("database server \"doomed\" is unreachable"),
        "{out:?}"
    );
    assert!(!out.stderr.contains("127.0.0.1"), "{out:?}");
    let list = plane.ok(&["list", "--json"]).json();
    assert!(
        list.as_array().unwrap().is_empty(),
        "no catalog row is left: {list}"
    );
}

#[tokio::test]
async fn a_failed_step_is_undone_and_create_again_resumes() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    // A non-superuser admin, so a real privilege fault can be injected mid-saga.
    let su = pg.connect("postgres").await.unwrap();
    su.batch_execute(
        "CREATE ROLE resume_admin LOGIN CREATEROLE CREATEDB PASSWORD 'resume-admin-pw'; \
         GRANT SET ON PARAMETER temp_file_limit TO resume_admin; \
         GRANT CONNECT ON DATABASE postgres TO resume_admin",
    )
    .await
    .unwrap();
    let port = pg.port.to_string();
    let out = plane.ctl_env(
        &[
            "server",
            "add",
            "limited",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--admin-user",
            "resume_admin",
        ],
        &[],
        Some("resume-admin-pw\n"),
    );
    assert_eq!(out.code, 0, "password from stdin: {out:?}");
    su.batch_execute("ALTER ROLE resume_admin NOCREATEDB")
        .await
        .unwrap();

    let out = plane.ctl(&[
        "create",
        "resume-me",
        "--name",
        "Resume",
        "--sector",
        "autopecas",
    ]);
    assert_eq!(out.code, 4, "{out:?}");
    assert!(out.stderr.contains("failed at step database"), "{out:?}");
    assert!(
        out.stderr.contains("permission denied to create database"),
        "{out:?}"
    );
    let shown = plane.ok(&["show", "resume-me", "--json"]).json();
    assert_eq!(shown["status"], "failed");
    assert!(shown["status_reason"]
        .as_str()
        .unwrap()
        .contains("everything it created was removed"));
    assert!(
        plane.tenant_objects_on(pg).await.is_empty(),
        "the roles were undone"
    );

    su.batch_execute("ALTER ROLE resume_admin CREATEDB")
        .await
        .unwrap();
    let resumed = plane
        .ok(&[
            "create",
            "resume-me",
            "--name",
            "Resume",
            "--sector",
            "autopecas",
            "--json",
        ])
        .json();
    assert_eq!(resumed["status"], "active");
    assert!(database_exists(pg, resumed["database"].as_str().unwrap()).await);
    // A different sector for the same slug is a conflict, not a resume.
    let out = plane.ctl(&[
        "create",
        "resume-me",
        "--name",
        "Resume",
        "--sector",
        "imoveis",
    ]);
    assert_eq!(out.code, 4, "{out:?}");
    let audit: i64 = plane
        .catalog()
        .await
        .query_one(
            "SELECT count(*) FROM auditoria WHERE acao LIKE 'tenant.create%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(audit, 2, "one failed and one successful create are audited");
}

#[tokio::test]
async fn placement_balances_servers_and_respects_capacity() {
    let plane = Plane::start().await;
    plane.add_server("pg-a", pg_harness::shared(), 2);
    plane.add_server("pg-b", pg_harness::shared_second(), 2);
    for (i, slug) in ["place-1", "place-2", "place-3", "place-4"]
        .iter()
        .enumerate()
    {
        let t = plane
            .ok(&[
                "create", slug, "--name", "P", "--sector", "servicos", "--json",
            ])
            .json();
        let expected = if i % 2 == 0 { "pg-a" } else { "pg-b" };
        assert_eq!(
            t["server"], expected,
            "least loaded first, ties by registration order"
        );
    }
    let out = plane.ctl(&["create", "place-5", "--name", "P", "--sector", "servicos"]);
    assert_eq!(out.code, 5, "{out:?}");
    assert!(out.stderr.contains("capacity"), "{out:?}");
    let place_2 = plane.database_of("place-2").await;
    assert!(database_exists(pg_harness::shared_second(), &place_2).await);
    assert!(!database_exists(pg_harness::shared(), &place_2).await);
    let servers = plane.ok(&["server", "list", "--json"]).json();
    assert!(
        servers
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["tenants"] == 2),
        "{servers}"
    );
}

#[tokio::test]
async fn a_foreign_database_with_the_same_name_is_never_adopted() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 100);
    // The first tenant of a fresh catalog gets id 1: someone already made its database.
    let foreign = format!("{}_1_g1", plane.name_prefix);
    let su = pg.connect("postgres").await.unwrap();
    su.batch_execute(&format!("CREATE DATABASE {foreign}"))
        .await
        .unwrap();
    let out = plane.ctl(&["create", "foreign-db", "--name", "F", "--sector", "varejo"]);
    assert_eq!(out.code, 4, "{out:?}");
    assert!(out.stderr.contains("already exists on server"), "{out:?}");
    assert!(
        database_exists(pg, &foreign).await,
        "someone else's database is left alone"
    );
    assert!(plane
        .ok(&["list", "--json"])
        .json()
        .as_array()
        .unwrap()
        .is_empty());
    // Concurrent creates of different tenants on one server all succeed (template clones
    // share the template lock).
    let mut jobs = Vec::new();
    for i in 0..4 {
        let mut cmd = plane.tenantctl();
        cmd.args([
            "create",
            &format!("conc-{i}"),
            "--name",
            "C",
            "--sector",
            "imoveis",
        ]);
        jobs.push(std::thread::spawn(move || cmd.output().unwrap()));
    }
    for job in jobs {
        let out = job.join().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The control plane killed (SIGKILL) in the middle of provisioning: after the restart the
/// tenant is not active without its database; `create` again finishes it, and nothing is
/// left twice on the server.
#[tokio::test]
async fn a_control_plane_killed_mid_provisioning_leaves_a_tenant_create_resumes() {
    let own = pg_harness::PgServer::start().unwrap();
    // A provisioning row nobody advanced for 2 s is resumable.
    let mut plane =
        Plane::start_with(&[("CONTROL_PLANE__PROVISIONING__STALE_AFTER_SECS", "2")]).await;
    plane.add_server("own", &own, 100);
    plane.ok(&[
        "create", "kp-first", "--name", "Primeira", "--sector", "varejo",
    ]);
    let per_tenant = plane.tenant_objects_on(&own).await.len();
    // Hold the sector template's lock (exclusive, as a template refresh would): the next
    // tenant's clone step waits for it, after its row and roles were made.
    let catalog = plane.catalog().await;
    let server: i64 = catalog
        .query_one("SELECT id FROM servidores WHERE nome = 'own'", &[])
        .await
        .unwrap()
        .get(0);
    let sector = tenant_model::Sector::ALL
        .iter()
        .position(|s| *s == tenant_model::Sector::Varejo)
        .unwrap() as i32;
    let holder = plane.catalog().await;
    holder.batch_execute("BEGIN").await.unwrap();
    holder
        .query_one(
            "SELECT pg_advisory_xact_lock($1, $2)",
            &[&(server as i32), &(0x7470_0000 + sector)],
        )
        .await
        .unwrap();
    let mut create = common::spawn_ctl(
        &plane,
        &[
            "create",
            "kp-second",
            "--name",
            "Segunda",
            "--sector",
            "varejo",
        ],
    );
    let waiting = || common::lock_waiters(&catalog, true);
    assert!(
        pg_harness::eventually(std::time::Duration::from_secs(20), || async {
            waiting().await > 0
        })
        .await,
        "provisioning never reached the clone step"
    );
    plane.crash_and_restart();
    let _ = create.wait();
    holder.batch_execute("COMMIT").await.unwrap();
    let shown = plane.ok(&["show", "kp-second", "--json"]).json();
    assert_ne!(shown["status"], "active", "{shown}");
    // Create again: refused while the dead replica's attempt may still be running, then it
    // resumes and finishes; one tenant's worth of objects more, no more.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let again = plane.ctl(&[
            "create",
            "kp-second",
            "--name",
            "Segunda",
            "--sector",
            "varejo",
        ]);
        if again.code == 0 {
            break;
        }
        assert!(
            again.stderr.contains("being provisioned right now"),
            "{again:?}"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "never resumable: {again:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let shown = plane.ok(&["show", "kp-second", "--json"]).json();
    assert_eq!(shown["status"], "active", "{shown}");
    let db = plane.database_of("kp-second").await;
    assert!(database_exists(&own, &db).await);
    assert_eq!(plane.tenant_objects_on(&own).await.len(), 2 * per_tenant);
}
