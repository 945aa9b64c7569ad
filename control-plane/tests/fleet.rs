//! Fleet migrations end to end: plans, skips without connecting, failures, thresholds,
//! canaries, retries, locks, templates.
#![allow(clippy::unwrap_used)]

mod common;

use common::{age_to_v1, Plane};

fn create(plane: &Plane, slugs: &[&str], sector: &str) {
    for slug in slugs {
        plane.ok(&["create", slug, "--name", "Fleet", "--sector", sector]);
    }
}

async fn has_tags_column(plane: &Plane, pg: &pg_harness::PgServer, slug: &str) -> bool {
    let c = pg.connect(&plane.database_of(slug).await).await.unwrap();
    c.query_opt(
        "SELECT 1 FROM information_schema.columns WHERE table_name = 'leads' AND column_name = 'tags'",
        &[],
    )
    .await
    .unwrap()
    .is_some()
}

#[tokio::test]
async fn dry_run_plans_migrate_applies_and_a_noop_run_never_connects() {
    let own = pg_harness::PgServer::start().unwrap();
    let plane = Plane::start().await;
    plane.add_server("own", &own, 100);
    create(&plane, &["fl-a", "fl-b", "fl-c"], "veiculos");
    age_to_v1(&plane, &own, "fl-a").await;
    age_to_v1(&plane, &own, "fl-b").await;

    let status = plane.ok(&["status", "--json"]).json();
    assert_eq!(status["pending_migration"], 2, "{status}");

    let plan = plane
        .ok(&["migrate", "--all", "--dry-run", "--json"])
        .json();
    assert_eq!(plan["to_migrate"], 2, "{plan}");
    assert_eq!(plan["already_current"], 1);
    let pending = &plan["pending"][0];
    assert_eq!(
        pending["migrations"],
        serde_json::json!(["common/V2__lead_tags", "common/V3__eventos"])
    );
    assert!(
        !has_tags_column(&plane, &own, "fl-a").await,
        "a dry run changes nothing"
    );

    let run = plane.ok(&["migrate", "--all", "--json"]).json();
    assert_eq!(run["migrated"], 2, "{run}");
    assert_eq!(run["skipped"], 1);
    assert_eq!(run["failed"], 0);
    assert_eq!(
        run["tenants"].as_array().unwrap().len(),
        2,
        "progress was streamed per tenant"
    );
    assert!(
        has_tags_column(&plane, &own, "fl-a").await && has_tags_column(&plane, &own, "fl-b").await
    );
    let show = plane.ok(&["show", "fl-a", "--json"]).json();
    assert_eq!(show["schema_version"], 3);
    assert_eq!(show["migration_pending"], false);

    let catalog = plane.catalog().await;
    let rows = catalog
        .query(
            "SELECT e.slug, r.outcome, r.from_schema_version, r.to_schema_version FROM migration_run_tenants r \
             JOIN empresas e ON e.id = r.empresa_id WHERE r.run_id = $1 ORDER BY e.slug",
            &[&run["run_id"].as_i64().unwrap()],
        )
        .await
        .unwrap();
    let got: Vec<(String, String, i32, i32)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        got,
        vec![
            ("fl-a".into(), "migrated".into(), 1, 3),
            ("fl-b".into(), "migrated".into(), 1, 3),
            ("fl-c".into(), "skipped".into(), 3, 3),
        ]
    );

    // With the server gone, a run over current tenants still succeeds: it never connects.
    own.stop();
    let noop = plane.ok(&["migrate", "--all", "--json"]).json();
    assert_eq!(noop["skipped"], 3, "{noop}");
    assert_eq!(noop["migrated"], 0);
}

#[tokio::test]
async fn failures_do_not_stop_the_run_and_retry_failed_reruns_only_them() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 100);
    let slugs = ["rf-a", "rf-b", "rf-c", "rf-d"];
    create(&plane, &slugs, "servicos");
    for s in slugs {
        age_to_v1(&plane, pg, s).await;
    }
    let sabotaged = pg.connect(&plane.database_of("rf-c").await).await.unwrap();
    sabotaged
        .batch_execute("ALTER TABLE leads ADD COLUMN tags int")
        .await
        .unwrap();

    let out = plane.ctl(&["migrate", "--all", "--json"]);
    assert_eq!(out.code, 7, "failed tenants give exit code 7: {out:?}");
    let run = out.json();
    assert_eq!(
        (run["migrated"].as_u64(), run["failed"].as_u64()),
        (Some(3), Some(1)),
        "{run}"
    );
    let failed = run["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["outcome"] == "failed")
        .unwrap()
        .clone();
    assert_eq!(failed["slug"], "rf-c");
    assert!(
        failed["error"].as_str().unwrap().contains("already exists"),
        "{failed}"
    );
    let show = plane.ok(&["show", "rf-c", "--json"]).json();
    assert_eq!(
        show["schema_version"], 1,
        "the failed tenant stays at its last good version"
    );
    assert_eq!(show["migration_pending"], true);
    assert!(show["status_reason"]
        .as_str()
        .unwrap()
        .contains("last migration failed"));

    sabotaged
        .batch_execute("ALTER TABLE leads DROP COLUMN tags")
        .await
        .unwrap();
    let retry = plane
        .ok(&["migrate", "--all", "--retry-failed", "--json"])
        .json();
    assert_eq!(
        retry["plan"]["total"], 1,
        "only the failed tenant is considered: {retry}"
    );
    assert_eq!(retry["migrated"], 1);
    assert!(has_tags_column(&plane, pg, "rf-c").await);
    assert_eq!(
        plane.ok(&["status", "--json"]).json()["pending_migration"],
        0
    );
}

#[tokio::test]
async fn max_failures_and_canaries_stop_launching_tenants() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 100);
    let slugs = ["mx-a", "mx-b", "mx-c", "mx-d"];
    create(&plane, &slugs, "imoveis");
    for s in slugs {
        age_to_v1(&plane, pg, s).await;
    }
    for s in ["mx-a", "mx-c"] {
        pg.connect(&plane.database_of(s).await)
            .await
            .unwrap()
            .batch_execute("ALTER TABLE leads ADD COLUMN tags int")
            .await
            .unwrap();
    }
    // Canary: the first tenant (by id) fails, so nothing else starts.
    let out = plane.ctl(&["migrate", "--all", "--canary", "1", "--json"]);
    assert_eq!(out.code, 7, "{out:?}");
    let run = out.json();
    assert_eq!(
        (run["failed"].as_u64(), run["not_started"].as_u64()),
        (Some(1), Some(3)),
        "{run}"
    );
    assert_eq!(run["aborted"], true);
    assert!(
        !has_tags_column(&plane, pg, "mx-b").await,
        "nothing past the canary ran"
    );

    // Threshold: with one at a time and max 1 failure, the first failure stops the run.
    let run = plane
        .ctl(&[
            "migrate",
            "--all",
            "--concurrency",
            "1",
            "--max-failures",
            "1",
            "--json",
        ])
        .json();
    assert_eq!(run["failed"], 1, "{run}");
    let migrated = run["migrated"].as_u64().unwrap();
    let not_started = run["not_started"].as_u64().unwrap();
    assert_eq!(migrated + not_started, 3, "{run}");
    assert!(not_started >= 1, "{run}");
}

#[tokio::test]
async fn a_tenant_locked_by_another_run_is_busy_and_concurrent_runs_apply_once() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 100);
    let slugs = ["lk-a", "lk-b", "lk-c", "lk-d", "lk-e", "lk-f"];
    create(&plane, &slugs, "varejo");
    for s in slugs {
        age_to_v1(&plane, pg, s).await;
    }
    let holder = pg.connect(&plane.database_of("lk-a").await).await.unwrap();
    holder
        .execute(
            "SELECT pg_advisory_lock($1)",
            &[&tenant_migrations::MIGRATION_LOCK_KEY],
        )
        .await
        .unwrap();
    let out = plane.ctl(&["migrate", "lk-a", "--json"]);
    assert_eq!(out.code, 7, "{out:?}");
    assert_eq!(out.json()["busy"], 1);
    assert!(!has_tags_column(&plane, pg, "lk-a").await);
    holder
        .execute(
            "SELECT pg_advisory_unlock($1)",
            &[&tenant_migrations::MIGRATION_LOCK_KEY],
        )
        .await
        .unwrap();

    // Two runs at once: every pending migration is applied exactly once overall.
    let spawn = |plane: &Plane| {
        let mut cmd = plane.tenantctl();
        cmd.args(["migrate", "--all", "--concurrency", "2", "--json"]);
        std::thread::spawn(move || cmd.output().unwrap())
    };
    let (one, two) = (spawn(&plane), spawn(&plane));
    for out in [one.join().unwrap(), two.join().unwrap()] {
        let code = out.status.code().unwrap();
        assert!(
            code == 0 || code == 7,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let applied: i64 = plane
        .catalog()
        .await
        .query_one(
            "SELECT coalesce(sum(applied), 0)::int8 FROM migration_run_tenants",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        applied, 12,
        "six tenants, two pending migrations each, applied once"
    );
    for s in slugs {
        assert!(has_tags_column(&plane, pg, s).await, "{s}");
    }
}

#[tokio::test]
async fn templates_migrate_first_and_bad_requests_are_refused() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 100);
    create(&plane, &["tp-a"], "autopecas");
    age_to_v1(&plane, pg, "tp-a").await;
    // Age the template as well, as if built by the previous release.
    let tpl = format!("{}_autopecas", plane.template_prefix);
    pg.connect(&tpl)
        .await
        .unwrap()
        .batch_execute(common::UNDO_TO_V1)
        .await
        .unwrap();
    let catalog = plane.catalog().await;
    catalog
        .execute("UPDATE templates SET schema_version = 1", &[])
        .await
        .unwrap();

    plane.ok(&["migrate", "--all"]);
    let v: i32 = catalog
        .query_one("SELECT schema_version FROM templates", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 3, "the template was migrated with the fleet");
    let t = plane
        .ok(&[
            "create",
            "tp-b",
            "--name",
            "After",
            "--sector",
            "autopecas",
            "--json",
        ])
        .json();
    assert_eq!(t["schema_version"], 3);
    assert!(has_tags_column(&plane, pg, "tp-b").await);

    for (args, code, msg) in [
        (vec!["migrate"], 2, "name tenants"),
        (vec!["migrate", "no-such-tenant"], 3, "not found"),
        (
            vec!["migrate", "--all", "--concurrency", "1000"],
            2,
            "above the configured maximum",
        ),
        (vec!["migrate", "Bad Slug"], 2, "invalid slug"),
    ] {
        let out = plane.ctl(&args);
        assert_eq!(out.code, code, "{args:?}: {out:?}");
        assert!(out.stderr.contains(msg), "{args:?}: {out:?}");
    }
    let runs: i64 = catalog
        .query_one("SELECT count(*) FROM migration_runs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(runs, 1, "refused requests record no run");
}

/// A control plane killed (SIGKILL) in the middle of a fleet run: after the restart the run
/// is marked interrupted (no heartbeat), the tenant it was migrating is untouched (its
/// transaction died with the connection), and running it again completes it.
#[tokio::test]
async fn a_fleet_run_whose_control_plane_dies_is_marked_interrupted_and_runs_again() {
    let own = pg_harness::PgServer::start().unwrap();
    let mut plane = Plane::start_with(&[
        ("CONTROL_PLANE__FLEET__STALE_AFTER_SECS", "2"),
        ("CONTROL_PLANE__FLEET__LOCK_TIMEOUT_MS", "60000"),
    ])
    .await;
    plane.add_server("own", &own, 100);
    let slugs = ["fk-a", "fk-b"];
    create(&plane, &slugs, "varejo");
    // Both tenants behind, and their `leads` held (shared) by a client of ours: the run's
    // migration waits on the lock, mid-way.
    let mut holders = Vec::new();
    for slug in slugs {
        age_to_v1(&plane, &own, slug).await;
        let c = own.connect(&plane.database_of(slug).await).await.unwrap();
        c.batch_execute("BEGIN; LOCK TABLE leads IN ACCESS SHARE MODE")
            .await
            .unwrap();
        holders.push(c);
    }
    let mut run = common::spawn_ctl(
        &plane,
        &["migrate", "--all", "--concurrency", "1", "--json"],
    );
    let server = own.connect("postgres").await.unwrap();
    let waiting = || common::lock_waiters(&server, false);
    assert!(
        pg_harness::eventually(std::time::Duration::from_secs(20), || async {
            waiting().await > 0
        })
        .await,
        "the run never reached a tenant"
    );
    plane.crash_and_restart();
    let _ = run.wait();
    let status = || async {
        plane
            .catalog()
            .await
            .query_one(
                "SELECT status FROM migration_runs ORDER BY id DESC LIMIT 1",
                &[],
            )
            .await
            .unwrap()
            .get::<_, String>(0)
    };
    assert!(
        pg_harness::eventually(std::time::Duration::from_secs(10), || async {
            status().await == "interrupted"
        })
        .await,
        "run left {}",
        status().await
    );
    for slug in slugs {
        assert!(
            !has_tags_column(&plane, &own, slug).await,
            "{slug}: nothing half applied"
        );
    }
    // Our locks go (the dead replica's session waiting behind them ends too: its client is
    // gone); only then, as `plane.ok` blocks this runtime, run again.
    drop(holders);
    assert!(
        pg_harness::eventually(std::time::Duration::from_secs(10), || async {
            waiting().await == 0
        })
        .await
    );
    let again = plane.ok(&["migrate", "--all", "--json"]).json();
    assert_eq!(again["migrated"], 2, "{again}");
    for slug in slugs {
        assert!(has_tags_column(&plane, &own, slug).await, "{slug}");
    }
    let m = plane.ok(&["status", "--json"]).json();
    assert_eq!(m["pending_migration"], 0, "{m}");
}
