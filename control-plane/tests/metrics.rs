//! The control plane's Prometheus endpoint against the real binary: job durations and
//! outcomes, tenants by status, backup ages and fleet runs, the catalog pool; no tenant
//! ever appears in a label.
#![allow(clippy::unwrap_used)]

mod common;

use common::{scrape, Plane};

/// The value of the sample `series` (name and labels exactly as exposed).
fn sample(m: &str, series: &str) -> f64 {
    m.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{series} missing from\n{m}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn jobs_tenants_backups_and_fleet_runs_are_exposed_without_tenant_labels() {
    let pg = pg_harness::shared();
    let metrics = format!("127.0.0.1:{}", pg_harness::free_port().unwrap());
    let plane = Plane::start_with(&[("CONTROL_PLANE__METRICS_LISTEN", &metrics)]).await;
    plane.add_server("main", pg, 100);
    let m = scrape(&metrics);
    let provisioned = r#"control_plane_job_seconds_count{job="provision",outcome="ok"}"#;
    assert_eq!(sample(&m, provisioned), 0.0);
    assert_eq!(sample(&m, r#"control_plane_tenants{status="active"}"#), 0.0);
    assert_eq!(sample(&m, "control_plane_catalog_up"), 1.0);
    assert!(sample(&m, "control_plane_catalog_pool_max") >= 1.0);

    for slug in ["mx-alpha", "mx-beta"] {
        plane.ok(&["create", slug, "--name", "Loja", "--sector", "varejo"]);
    }
    let m = scrape(&metrics);
    assert_eq!(sample(&m, provisioned), 2.0);
    assert_eq!(sample(&m, r#"control_plane_tenants{status="active"}"#), 2.0);
    assert_eq!(sample(&m, "control_plane_tenants_without_backup"), 2.0);
    assert!(sample(&m, "control_plane_backup_oldest_age_seconds") >= 0.0);

    // A backup: one tenant is covered.
    plane.ok(&["backup", "mx-alpha"]);
    let m = scrape(&metrics);
    assert_eq!(
        sample(
            &m,
            r#"control_plane_job_seconds_count{job="backup",outcome="ok"}"#
        ),
        1.0
    );
    assert_eq!(sample(&m, "control_plane_tenants_without_backup"), 1.0);
    assert_eq!(sample(&m, "control_plane_backups_running"), 0.0);

    // A fleet run: counted as a job; when it ended is exposed.
    plane.ok(&["migrate", "--all", "--json"]);
    let m = scrape(&metrics);
    assert_eq!(
        sample(
            &m,
            r#"control_plane_job_seconds_count{job="fleet_run",outcome="ok"}"#
        ),
        1.0
    );
    assert!(
        sample(
            &m,
            "control_plane_fleet_last_run_finished_timestamp_seconds"
        ) > 1.7e9
    );
    assert_eq!(sample(&m, "control_plane_fleet_runs_running"), 0.0);

    // A deletion: a delete job (its final backup is a backup job too).
    plane.ok(&["delete", "mx-beta", "--reason", "test"]);
    let m = scrape(&metrics);
    assert_eq!(
        sample(
            &m,
            r#"control_plane_job_seconds_count{job="delete",outcome="ok"}"#
        ),
        1.0
    );
    assert_eq!(sample(&m, r#"control_plane_tenants{status="active"}"#), 1.0);
    assert!(
        !m.contains("mx-alpha") && !m.contains("mx-beta"),
        "no tenant in any label:\n{m}"
    );
}
