//! Backups against real PostgreSQL, the real control plane and real object stores (a local
//! directory, and s3s-fs as an S3-compatible service): what is stored is encrypted, its
//! checksum holds, and it restores with pg_restore to the rows it was taken from.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Plane, MASTER_KEY};
use control_plane::backup::stream::Opener;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Fills a tenant's `leads` with `n` rows whose names are `size` bytes of random-ish text
/// (so the dump does not compress to nothing).
async fn fill(pg: &pg_harness::PgServer, db: &str, n: i64, size: i32) {
    pg.connect(db)
        .await
        .unwrap()
        .execute(
            "INSERT INTO leads (wa_id, nome) SELECT '5511' || lpad(g::text, 9, '0'), \
             (SELECT string_agg(md5(g::text || '-' || k::text), '') FROM generate_series(1, $2 / 32 + 1) k) \
             FROM generate_series(1, $1::int8) g",
            &[&n, &size],
        )
        .await
        .unwrap();
}

/// The backup's object opened with its data key (sealed in the catalog with the master
/// key): the pg_dump archive.
async fn open_object(plane: &Plane, id: i64, object: &[u8]) -> Vec<u8> {
    let row = plane
        .catalog()
        .await
        .query_one(
            "SELECT objeto, chave_cifrada FROM backups WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let (key_name, sealed): (String, Vec<u8>) = (row.get(0), row.get(1));
    let secrets = control_plane::crypto::SecretBox::from_base64(MASTER_KEY).unwrap();
    let key = control_plane::backup::open_data_key(&secrets, &sealed, &key_name).unwrap();
    let mut opener = Opener::new(&key);
    let mut plain = opener.push(object).unwrap();
    plain.extend(opener.finish().unwrap());
    plain
}

/// Restores a pg_dump archive into a fresh database; its `leads` count.
async fn restored_leads(pg: &pg_harness::PgServer, archive: &[u8]) -> i64 {
    let db = pg.fresh_database("restored").await.unwrap();
    let file = std::env::temp_dir().join(format!("{db}.dump"));
    std::fs::write(&file, archive).unwrap();
    let out = Command::new(pg_harness::pg_bindir().unwrap().join("pg_restore"))
        .args([
            "--no-owner",
            "--no-privileges",
            "--exit-on-error",
            "--dbname",
        ])
        .arg(pg.url(&db))
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pg.connect(&db)
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM leads", &[])
        .await
        .unwrap()
        .get(0)
}

/// Runs `tenantctl args` in the background, waits until `running` (a query on the catalog)
/// returns a row, then kills the control plane (SIGKILL) and starts it again; that row.
async fn crash_during(plane: &mut Plane, args: &[&str], running: &str) -> tokio_postgres::Row {
    let mut job = plane
        .tenantctl()
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let catalog = plane.catalog().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let row = loop {
        if let Some(row) = catalog.query_opt(running, &[]).await.unwrap() {
            break row;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{args:?} never reached: {running}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    plane.crash_and_restart();
    let _ = job.wait();
    row
}

fn find_object(root: &Path) -> PathBuf {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "tnbk") {
                return p;
            }
        }
    }
    panic!("no backup object under {}", root.display());
}

#[tokio::test]
async fn a_backup_is_encrypted_checksummed_listed_and_restores_to_its_rows() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 100);
    plane.ok(&["create", "bk-alpha", "--name", "Bk", "--sector", "veiculos"]);
    let db = plane.database_of("bk-alpha").await;
    fill(pg, &db, 500, 64).await;
    pg.connect(&db)
        .await
        .unwrap()
        .execute(
            "UPDATE leads SET nome = 'Cliente Secreto' WHERE id = 1",
            &[],
        )
        .await
        .unwrap();

    let r = plane.ok(&["backup", "bk-alpha", "--json"]).json();
    let b = &r["backups"][0];
    assert_eq!(b["state"], "ok", "{r}");
    assert_eq!(b["tenant"], "bk-alpha");
    assert_eq!(b["reason"], "manual");
    assert_eq!(b["manifest"]["tables"]["public.leads"], 500, "{b}");
    assert!(
        b["manifest"]["tables"]["public.veiculos"].is_number(),
        "sector tables counted"
    );
    let id = b["id"].as_i64().unwrap();

    // Stored encrypted, with the recorded size and checksum.
    let path = find_object(&plane.backup_dir);
    let object = std::fs::read(&path).unwrap();
    assert_eq!(b["bytes"].as_u64(), Some(object.len() as u64));
    assert_eq!(b["checksum"], hex::encode(Sha256::digest(&object)));
    assert!(object.starts_with(b"TNBKP001"));
    assert!(
        !object.windows(15).any(|w| w == b"Cliente Secreto"),
        "customer data is not readable in the store"
    );
    // Opened with its key it is a pg_dump archive that restores to the same rows.
    let archive = open_object(&plane, id, &object).await;
    assert!(archive.starts_with(b"PGDMP"));
    assert_eq!(restored_leads(pg, &archive).await, 500);

    let listed = plane.ok(&["backups", "bk-alpha", "--json"]).json();
    assert_eq!(listed[0]["id"], id);
    assert_eq!(listed[0]["state"], "ok");
    // The dump ran as the tenant's owner, never as the server's admin.
    let audit = plane
        .ok(&["audit", "--tenant", "bk-alpha", "--json"])
        .json();
    assert!(
        audit.to_string().contains("tenant.backup"),
        "backups are audited: {audit}"
    );

    for (args, code) in [
        (vec!["backup"], 2),
        (vec!["backup", "nobody-here"], 3),
        (vec!["backup", "013"], 2),
        (vec!["backup", "bk-alpha", "--all"], 2),
        (vec!["backups", "nobody-here"], 3),
        (vec!["backups", "bk-alpha", "--limit", "5000"], 2),
        (vec!["verify-backup", "999999"], 3),
    ] {
        let out = plane.ctl(&args);
        assert_eq!(out.code, code, "{args:?}: {out:?}");
    }
}

#[tokio::test]
async fn a_failed_backup_is_recorded_and_leaves_no_object() {
    let pg = pg_harness::shared();
    let plane = Plane::start_with(&[(
        "CONTROL_PLANE__BACKUP__PG_BIN_DIR",
        "/nonexistent/postgresql/{major}/bin",
    )])
    .await;
    plane.add_server("main", pg, 100);
    plane.ok(&["create", "bk-bravo", "--name", "Bk", "--sector", "servicos"]);
    let out = plane.ctl(&["backup", "bk-bravo", "--json"]);
    assert_eq!(out.code, 7, "{out:?}");
    let b = &out.json()["backups"][0];
    assert_eq!(b["state"], "failed");
    assert!(
        b["error"]
            .as_str()
            .unwrap()
            .contains("pg_dump for PostgreSQL"),
        "{b}"
    );
    let leftovers: Vec<_> = walk(&plane.backup_dir);
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A running s3s-fs (an S3-compatible server keeping objects as files).
struct S3 {
    child: std::process::Child,
    root: PathBuf,
    port: u16,
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn s3s_fs() -> S3 {
    let bin = std::env::var("S3S_FS").unwrap_or_else(|_| "s3s-fs".into());
    let root = std::env::temp_dir().join(format!("s3s-{}", std::process::id()));
    std::fs::create_dir_all(root.join("backups")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(&bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args([
            "--access-key",
            "test-access",
            "--secret-key",
            "test-secret-key",
        ])
        .arg(&root)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin} (scripts/test.sh installs it): {e}"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "s3s-fs did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    S3 { child, root, port }
}

#[tokio::test]
async fn backups_go_to_an_s3_service_in_several_parts() {
    let pg = pg_harness::shared();
    let s3 = s3s_fs();
    let endpoint = format!("http://127.0.0.1:{}", s3.port);
    let plane = Plane::start_with(&[
        (
            "CONTROL_PLANE__BACKUP__STORE__LOCATION",
            "s3://backups/prod",
        ),
        ("CONTROL_PLANE__BACKUP__STORE__S3_ENDPOINT", &endpoint),
        ("CONTROL_PLANE__BACKUP__STORE__S3_ALLOW_HTTP", "true"),
        (
            "CONTROL_PLANE__BACKUP__STORE__S3_ACCESS_KEY_ID",
            "test-access",
        ),
        (
            "CONTROL_PLANE__BACKUP__STORE__S3_SECRET_ACCESS_KEY",
            "test-secret-key",
        ),
        ("CONTROL_PLANE__BACKUP__STORE__PART_SIZE_BYTES", "5242880"),
    ])
    .await;
    plane.add_server("main", pg, 100);
    plane.ok(&["create", "bk-s3", "--name", "Bk", "--sector", "servicos"]);
    let db = plane.database_of("bk-s3").await;
    // ~20 MB of lead names, ~11 MB compressed: the object takes three parts of 5 MiB.
    fill(pg, &db, 10_000, 2_000).await;
    let r = plane.ok(&["backup", "bk-s3", "--json"]).json();
    let b = &r["backups"][0];
    assert_eq!(b["state"], "ok", "{r}");
    let bytes = b["bytes"].as_u64().unwrap();
    assert!(
        bytes > 2 * 5_242_880,
        "the object spans several parts: {bytes}"
    );
    // s3s-fs keeps objects as files under <root>/<bucket>/<key>.
    let path = find_object(&s3.root.join("backups").join("prod"));
    let object = std::fs::read(&path).unwrap();
    assert_eq!(object.len() as u64, bytes);
    assert_eq!(b["checksum"], hex::encode(Sha256::digest(&object)));
    let archive = open_object(&plane, b["id"].as_i64().unwrap(), &object).await;
    assert_eq!(restored_leads(pg, &archive).await, 10_000);
}

#[tokio::test]
async fn a_backup_cut_by_a_crash_is_abandoned_and_never_counts() {
    let pg = pg_harness::shared();
    let mut plane = Plane::start_with(&[("CONTROL_PLANE__BACKUP__STALE_AFTER_SECS", "2")]).await;
    plane.add_server("main", pg, 100);
    plane.ok(&["create", "bk-crash", "--name", "Bk", "--sector", "servicos"]);
    let db = plane.database_of("bk-crash").await;
    fill(pg, &db, 20_000, 2_000).await;
    // Start a backup and kill the control plane while it streams.
    crash_during(
        &mut plane,
        &["backup", "bk-crash"],
        "SELECT 1 FROM backups WHERE estado = 'running'",
    )
    .await;
    let catalog = plane.catalog().await;
    let abandoned = pg_harness::eventually(std::time::Duration::from_secs(15), || async {
        catalog
            .query_one("SELECT estado FROM backups", &[])
            .await
            .unwrap()
            .get::<_, String>(0)
            == "abandoned"
    })
    .await;
    assert!(abandoned, "the dead replica's backup is marked abandoned");
    // No complete object exists under its name; the live database is untouched.
    assert!(
        walk(&plane.backup_dir)
            .iter()
            .all(|p| p.extension().is_none_or(|x| x != "tnbk")),
        "{:?}",
        walk(&plane.backup_dir)
    );
    assert_eq!(leads_in(pg, &db).await, 20_000);
    let listed = plane.ok(&["backups", "bk-crash", "--json"]).json();
    assert_eq!(listed[0]["state"], "abandoned");
    // The next backup succeeds.
    let r = plane.ok(&["backup", "bk-crash", "--json"]).json();
    assert_eq!(r["backups"][0]["state"], "ok", "{r}");
}

async fn leads_in(pg: &pg_harness::PgServer, db: &str) -> i64 {
    pg.connect(db)
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM leads", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn restore_in_place_brings_the_backup_back_beside_the_live_database() {
    let pg = pg_harness::shared();
    let plane = Plane::start_with(&[
        ("CONTROL_PLANE__BACKUP__RESTORE_GRACE_SECS", "3"),
        ("CONTROL_PLANE__BACKUP__STALE_AFTER_SECS", "2"),
    ])
    .await;
    plane.add_server("main", pg, 100);
    plane.ok(&["create", "rs-alpha", "--name", "Rs", "--sector", "veiculos"]);
    plane.ok(&["create", "rs-other", "--name", "Rs", "--sector", "servicos"]);
    let old_db = plane.database_of("rs-alpha").await;
    fill(pg, &old_db, 300, 64).await;
    let b = plane.ok(&["backup", "rs-alpha", "--json"]).json();
    let backup = b["backups"][0]["id"].as_i64().unwrap().to_string();
    // An operator mistake after the backup.
    pg.connect(&old_db)
        .await
        .unwrap()
        .batch_execute("DELETE FROM leads WHERE id > 100")
        .await
        .unwrap();
    assert_eq!(leads_in(pg, &old_db).await, 100);

    let t = plane
        .ok(&["restore", "rs-alpha", "--backup", &backup, "--json"])
        .json();
    assert_eq!(t["status"], "active", "{t}");
    assert_eq!(t["generation"], 2);
    let new_db = t["database"].as_str().unwrap().to_string();
    assert_ne!(new_db, old_db);
    assert_eq!(
        leads_in(pg, &new_db).await,
        300,
        "the backup's rows are back"
    );
    // Routers get the new generation, whose login role works (grants restored).
    let route = common::route(&plane, "rs-alpha").await;
    assert_eq!(route.database, new_db);
    let login = common::connect_as(pg, &route.role, &route.password, &route.database)
        .await
        .unwrap();
    login
        .execute(
            "INSERT INTO leads (wa_id, nome) VALUES ('5511900009999', 'depois')",
            &[],
        )
        .await
        .unwrap();
    // The old database stays for the grace period, then goes.
    let dropped = pg_harness::eventually(std::time::Duration::from_secs(15), || async {
        !common::database_exists(pg, &old_db).await
    })
    .await;
    assert!(
        dropped,
        "the replaced generation is dropped after its grace period"
    );
    let audit = plane
        .ok(&["audit", "--tenant", "rs-alpha", "--json"])
        .json();
    assert!(audit.to_string().contains("tenant.restore"), "{audit}");

    // Into a new tenant: the backup's rows, no number, the source untouched.
    let copy = plane
        .ok(&[
            "restore", "rs-alpha", "--backup", &backup, "--as", "rs-copy", "--json",
        ])
        .json();
    assert_eq!(copy["slug"], "rs-copy");
    assert_eq!(copy["status"], "active");
    assert_eq!(copy["sector"], "veiculos");
    let copy_db = copy["database"].as_str().unwrap().to_string();
    assert_eq!(leads_in(pg, &copy_db).await, 300);
    assert_eq!(
        leads_in(pg, &new_db).await,
        301,
        "the source keeps its own rows"
    );
    for (args, code) in [
        (
            vec![
                "restore", "rs-alpha", "--backup", &backup, "--as", "rs-other",
            ],
            4,
        ),
        (
            vec![
                "restore", "rs-alpha", "--backup", &backup, "--as", "Bad Slug",
            ],
            2,
        ),
    ] {
        let out = plane.ctl(&args);
        assert_eq!(out.code, code, "{args:?}: {out:?}");
    }
    let other = plane.ok(&["backup", "rs-other", "--json"]).json();
    let other_backup = other["backups"][0]["id"].as_i64().unwrap().to_string();
    for (args, code) in [
        (vec!["restore", "rs-alpha"], 2),
        (vec!["restore", "rs-alpha", "--backup", "999999"], 3),
        (vec!["restore", "nobody-here", "--backup", &backup], 3),
        // Another tenant's backup never lands in this one.
        (vec!["restore", "rs-alpha", "--backup", &other_backup], 4),
    ] {
        let out = plane.ctl(&args);
        assert_eq!(out.code, code, "{args:?}: {out:?}");
    }
    let viewer = plane.viewer_token("vitor");
    let out = plane.ctl_as(&viewer, &["restore", "rs-alpha", "--backup", &backup]);
    assert_eq!(out.code, 8, "{out:?}");
}

#[tokio::test]
async fn a_damaged_or_cut_backup_is_refused_as_it_streams_and_nothing_switches() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 100);
    let t = plane
        .ok(&[
            "create", "rs-bravo", "--name", "Rs", "--sector", "servicos", "--json",
        ])
        .json();
    let id = t["id"].as_i64().unwrap();
    let db = plane.database_of("rs-bravo").await;
    fill(pg, &db, 3_000, 1_000).await;
    let b = plane.ok(&["backup", "rs-bravo", "--json"]).json();
    let backup = b["backups"][0]["id"].as_i64().unwrap().to_string();
    let path = find_object(&plane.backup_dir);
    let good = std::fs::read(&path).unwrap();
    let next_generation = format!("{}_{id}_g2", plane.name_prefix);

    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    for (what, bytes) in [
        ("altered", flipped),
        ("cut", good[..good.len() - 100].to_vec()),
    ] {
        std::fs::write(&path, &bytes).unwrap();
        let out = plane.ctl(&["restore", "rs-bravo", "--backup", &backup]);
        assert_eq!(out.code, 4, "{what}: {out:?}");
        assert!(
            out.stderr.contains("damaged") || out.stderr.contains("truncated"),
            "{what}: {out:?}"
        );
        // Nothing switched: same database, active, every row there; nothing half-built.
        let now = plane.ok(&["show", "rs-bravo", "--json"]).json();
        assert_eq!(now["status"], "active", "{what}");
        assert_eq!(now["database"], db.as_str(), "{what}");
        assert_eq!(leads_in(pg, &db).await, 3_000, "{what}");
        assert!(
            !common::database_exists(pg, &next_generation).await,
            "{what}: the half-built generation was dropped"
        );
        // A verification finds the damage too, and records it on the backup.
        let v = plane.ctl(&["verify-backup", &backup, "--json"]);
        assert_eq!(v.code, 7, "{what}: {v:?}");
        assert!(
            v.json()[0]["verification_error"].as_str().is_some(),
            "{what}: {v:?}"
        );
        assert!(
            !common::database_exists(pg, &format!("{}_verify_{backup}", plane.name_prefix)).await
        );
    }
    std::fs::write(&path, &good).unwrap();
    let v = plane.ok(&["verify-backup", &backup, "--json"]).json();
    assert!(v[0]["verified_ms"].as_i64().unwrap() > 0, "{v}");
    assert!(v[0]["verification_error"].is_null(), "{v}");
    assert!(
        !common::database_exists(pg, &format!("{}_verify_{backup}", plane.name_prefix)).await,
        "the scratch database is dropped after a verification"
    );
    // The intact object restores.
    std::fs::write(&path, &good).unwrap();
    let t = plane
        .ok(&["restore", "rs-bravo", "--backup", &backup, "--json"])
        .json();
    assert_eq!(t["database"], next_generation.as_str());
}

#[tokio::test]
async fn a_restore_cut_by_a_crash_leaves_the_tenant_on_its_database() {
    let pg = pg_harness::shared();
    let mut plane = Plane::start_with(&[("CONTROL_PLANE__BACKUP__STALE_AFTER_SECS", "2")]).await;
    plane.add_server("main", pg, 100);
    let t = plane
        .ok(&[
            "create", "rs-crash", "--name", "Rs", "--sector", "servicos", "--json",
        ])
        .json();
    let id = t["id"].as_i64().unwrap();
    let db = plane.database_of("rs-crash").await;
    fill(pg, &db, 20_000, 2_000).await;
    let b = plane.ok(&["backup", "rs-crash", "--json"]).json();
    let backup = b["backups"][0]["id"].as_i64().unwrap().to_string();
    crash_during(
        &mut plane,
        &["restore", "rs-crash", "--backup", &backup],
        "SELECT 1 FROM restauracoes WHERE estado = 'running' AND passo = 'restore'",
    )
    .await;
    let catalog = plane.catalog().await;
    let undone = pg_harness::eventually(std::time::Duration::from_secs(15), || async {
        catalog
            .query_one("SELECT estado FROM restauracoes", &[])
            .await
            .unwrap()
            .get::<_, String>(0)
            == "abandoned"
    })
    .await;
    assert!(undone, "the dead replica's restore is abandoned");
    let now = plane.ok(&["show", "rs-crash", "--json"]).json();
    assert_eq!(now["status"], "active");
    assert_eq!(now["database"], db.as_str());
    assert_eq!(
        leads_in(pg, &db).await,
        20_000,
        "the live database is intact"
    );
    assert!(
        !common::database_exists(pg, &format!("{}_{id}_g2", plane.name_prefix)).await,
        "the half-built generation was dropped"
    );
    // A new restore runs to its end.
    let t = plane
        .ok(&["restore", "rs-crash", "--backup", &backup, "--json"])
        .json();
    assert_eq!(t["generation"], 2);
}

#[tokio::test]
async fn plans_schedule_backups_and_retention_keeps_what_they_say() {
    let pg = pg_harness::shared();
    let plane = Plane::start_with(&[("CONTROL_PLANE__BACKUP__SCHEDULE_EVERY_SECS", "1")]).await;
    plane.add_server("main", pg, 100);
    let catalog = plane.catalog().await;
    catalog
        .batch_execute("UPDATE planos SET backup_intervalo_segundos = 0")
        .await
        .unwrap();
    plane.ok(&["create", "sc-alpha", "--name", "Sc", "--sector", "servicos"]);
    let overdue = |plane: &Plane| plane.ok(&["status", "--json"]).json()["overdue_backups"].clone();
    assert_eq!(
        overdue(&plane),
        serde_json::json!([]),
        "no policy, nothing due"
    );

    // A daily policy: the tenant has no backup, so it is due, and the scheduler takes one.
    catalog
        .batch_execute(
            "UPDATE planos SET backup_intervalo_segundos = 86400, backup_diarios = 2, backup_semanais = 0",
        )
        .await
        .unwrap();
    let scheduled = pg_harness::eventually(std::time::Duration::from_secs(15), || async {
        let listed = plane.ok(&["backups", "sc-alpha", "--json"]).json();
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["reason"] == "scheduled" && b["state"] == "ok")
    })
    .await;
    assert!(scheduled, "the scheduler backed the tenant up");
    assert_eq!(overdue(&plane), serde_json::json!([]), "no longer due");

    // Retention: two daily backups kept (and anything younger than a day).
    for _ in 0..3 {
        plane.ok(&["backup", "sc-alpha"]);
    }
    catalog
        .batch_execute(
            "UPDATE backups b SET iniciado_em = now() - make_interval(days => 11 - o.n::int) \
             FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM backups WHERE tipo = 'tenant') o \
             WHERE o.id = b.id AND o.n <= 3",
        )
        .await
        .unwrap();
    let pruned = pg_harness::eventually(std::time::Duration::from_secs(15), || async {
        plane
            .ok(&["backups", "sc-alpha", "--json"])
            .json()
            .as_array()
            .unwrap()
            .len()
            == 2
    })
    .await;
    assert!(pruned, "backups past retention are deleted");
    let kept: Vec<i64> = catalog
        .query(
            "SELECT id FROM backups WHERE tipo = 'tenant' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(kept.len(), 2);
    let objects = walk(&plane.backup_dir.join("tenants"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "tnbk"))
        .count();
    assert_eq!(objects, 2, "their objects are deleted too");
    // The scheduler restores a sample into a scratch database and records the check.
    let verified = pg_harness::eventually(std::time::Duration::from_secs(15), || async {
        catalog
            .query_one(
                "SELECT count(*) FROM backups WHERE verificado_em IS NOT NULL AND verificacao_erro IS NULL",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            > 0
    })
    .await;
    assert!(verified, "a scheduled verification passed");
    // The scheduler backs the catalog up too.
    let catalog_backups = plane.ok(&["backups", "--catalog", "--json"]).json();
    assert_eq!(
        catalog_backups[0]["reason"], "scheduled",
        "{catalog_backups}"
    );
}

#[tokio::test]
async fn a_tenant_takes_its_data_away_as_json_lines_or_csv() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 100);
    plane.ok(&["create", "ex-alpha", "--name", "Ex", "--sector", "veiculos"]);
    let db = plane.database_of("ex-alpha").await;
    fill(pg, &db, 250, 40).await;
    let tricky = "Ana \"a\", b\nc \\ é 🎉";
    let c = pg.connect(&db).await.unwrap();
    c.execute("UPDATE leads SET nome = $1 WHERE id = 7", &[&tricky])
        .await
        .unwrap();
    c.batch_execute(
        "INSERT INTO conversas (lead_id) VALUES (7); \
         INSERT INTO mensagens (conversa_id, direcao, tipo, conteudo, status) \
         SELECT id, 'entrada', 'text', 'quero um carro', 'recebida' FROM conversas",
    )
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!("export-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    // JSON lines: one object per row, every table, values exactly as stored.
    let file = dir.join("ex.jsonl");
    plane.ok(&[
        "export",
        "ex-alpha",
        "--format",
        "jsonl",
        "--to",
        file.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&file).unwrap();
    let mut per_table = std::collections::BTreeMap::<String, i64>::new();
    let mut found = false;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        *per_table
            .entry(v["table"].as_str().unwrap().to_string())
            .or_default() += 1;
        if v["table"] == "leads" && v["row"]["id"] == 7 {
            assert_eq!(v["row"]["nome"], tricky);
            found = true;
        }
    }
    assert!(found);
    assert_eq!(per_table["leads"], 250);
    assert_eq!(per_table["conversas"], 1);
    assert_eq!(per_table["mensagens"], 1);
    assert!(per_table.contains_key("configuracoes"), "{per_table:?}");
    assert!(
        !per_table.keys().any(|t| t.starts_with("refinery")),
        "migration history is not customer data: {per_table:?}"
    );
    // Standard output works too.
    let out = plane.ok(&["export", "ex-alpha", "--format", "jsonl", "--to", "-"]);
    assert_eq!(out.stdout.lines().count(), text.lines().count());

    // CSV: a file per table with a header row; quoting survives commas, quotes, newlines.
    let csv = dir.join("csv");
    plane.ok(&[
        "export",
        "ex-alpha",
        "--format",
        "csv",
        "--to",
        csv.to_str().unwrap(),
    ]);
    let leads = std::fs::read_to_string(csv.join("leads.csv")).unwrap();
    assert!(leads.starts_with("id,wa_id,"), "{}", &leads[..80]);
    assert!(
        leads.contains("\"Ana \"\"a\"\", b\nc \\ é 🎉\""),
        "CSV quoting"
    );
    assert!(csv.join("mensagens.csv").is_file() && csv.join("veiculos.csv").is_file());

    for (args, code) in [
        (
            vec!["export", "ex-alpha", "--format", "xml", "--to", "-"],
            2,
        ),
        (
            vec!["export", "ex-alpha", "--format", "csv", "--to", "-"],
            2,
        ),
        (
            vec!["export", "nobody-here", "--format", "jsonl", "--to", "-"],
            3,
        ),
    ] {
        let out = plane.ctl(&args);
        assert_eq!(out.code, code, "{args:?}: {out:?}");
    }
    let viewer = plane.viewer_token("vanda");
    let out = plane.ctl_as(
        &viewer,
        &["export", "ex-alpha", "--format", "jsonl", "--to", "-"],
    );
    assert_eq!(out.code, 8, "{out:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_deleted_tenant_frees_its_number_at_once_and_is_purged_after_its_window() {
    let pg = pg_harness::shared();
    let plane = Plane::start_with(&[
        ("CONTROL_PLANE__DELETION__WINDOW_SECS", "4"),
        ("CONTROL_PLANE__DELETION__PURGE_EVERY_SECS", "1"),
    ])
    .await;
    plane.add_server("main", pg, 100);
    let t = plane
        .ok(&[
            "create",
            "dl-leave",
            "--name",
            "Dl",
            "--sector",
            "servicos",
            "--phone-number-id",
            "5557001",
            "--json",
        ])
        .json();
    let id = t["id"].as_i64().unwrap();
    let db = plane.database_of("dl-leave").await;
    fill(pg, &db, 50, 32).await;
    plane.ok(&["backup", "dl-leave"]);

    let r = plane
        .ok(&[
            "delete",
            "dl-leave",
            "--reason",
            "cliente encerrou o contrato",
            "--json",
        ])
        .json();
    assert_eq!(r["purged"], false, "{r}");
    assert!(r["purge_at_ms"].as_i64().unwrap() > 0);
    let shown = plane.ok(&["show", "dl-leave", "--json"]).json();
    assert_eq!(shown["status"], "deleted");
    assert!(shown["phone_number_id"].is_null() || shown["phone_number_id"] == "");
    let listed = plane.ok(&["backups", "dl-leave", "--json"]).json();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["reason"] == "final" && b["state"] == "ok"),
        "a final backup was taken: {listed}"
    );
    // The number is free at once; the slug only after the purge.
    plane.ok(&[
        "create",
        "dl-next",
        "--name",
        "Dl",
        "--sector",
        "servicos",
        "--phone-number-id",
        "5557001",
    ]);
    assert_eq!(
        plane
            .ctl(&["create", "dl-leave", "--name", "Dl", "--sector", "servicos"])
            .code,
        4
    );
    // After the window: database, roles and backups gone; a tombstone remains.
    let purged = pg_harness::eventually(std::time::Duration::from_secs(20), || async {
        plane.ctl(&["show", "dl-leave"]).code == 3
    })
    .await;
    assert!(purged, "the tenant was purged after its window");
    assert!(!common::database_exists(pg, &db).await);
    assert!(
        !walk(&plane.backup_dir)
            .iter()
            .any(|p| p.to_string_lossy().contains(&format!("tenants/{id}/"))),
        "its backups were purged"
    );
    let gone = plane.ctl(&["delete", "dl-leave"]);
    assert_eq!(gone.code, 3);
    assert!(
        gone.stderr.contains("was deleted by test-admin"),
        "{gone:?}"
    );
    let tomb = plane
        .catalog()
        .await
        .query_one(
            "SELECT excluido_por, motivo, phone_number_id FROM empresas_excluidas WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(tomb.get::<_, String>(0), "test-admin");
    assert_eq!(
        tomb.get::<_, Option<String>>(1).as_deref(),
        Some("cliente encerrou o contrato")
    );
    let audit = plane
        .ok(&["audit", "--tenant", &id.to_string(), "--json"])
        .json();
    for action in [
        "tenant.delete.suspend",
        "tenant.delete.final_backup",
        "tenant.delete",
        "tenant.purge",
    ] {
        assert!(
            audit.to_string().contains(&format!("\"{action}\"")),
            "{action} audited: {audit}"
        );
    }
    // The slug is free again.
    plane.ok(&["create", "dl-leave", "--name", "Dl", "--sector", "servicos"]);
}

#[tokio::test]
async fn deleting_now_needs_the_slug_typed_again_and_erases_at_once() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 100);
    plane.ok(&["create", "dl-now", "--name", "Dl", "--sector", "servicos"]);
    let db = plane.database_of("dl-now").await;
    plane.ok(&["backup", "dl-now"]);
    for (args, code) in [
        (vec!["delete", "dl-now", "--now"], 2),
        (
            vec!["delete", "dl-now", "--now", "--confirm", "dl-other"],
            2,
        ),
        (vec!["delete", "nobody-here"], 3),
    ] {
        let out = plane.ctl(&args);
        assert_eq!(out.code, code, "{args:?}: {out:?}");
    }
    assert_eq!(
        plane.ok(&["show", "dl-now", "--json"]).json()["status"],
        "active",
        "refused deletions change nothing"
    );
    let viewer = plane.viewer_token("vera");
    let out = plane.ctl_as(&viewer, &["delete", "dl-now"]);
    assert_eq!(out.code, 8, "{out:?}");
    let r = plane
        .ok(&["delete", "dl-now", "--now", "--confirm", "dl-now", "--json"])
        .json();
    assert_eq!(r["purged"], true, "{r}");
    assert!(!common::database_exists(pg, &db).await);
    assert!(
        walk(&plane.backup_dir).is_empty()
            || !walk(&plane.backup_dir)
                .iter()
                .any(|p| p.extension().is_some_and(|x| x == "tnbk")),
        "backups erased too"
    );
    assert_eq!(plane.ctl(&["show", "dl-now"]).code, 3);
}

#[tokio::test]
async fn the_catalog_is_backed_up_to_the_same_store_and_restores() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 100);
    plane.ok(&["create", "cat-one", "--name", "C", "--sector", "servicos"]);
    plane.ok(&["create", "cat-two", "--name", "C", "--sector", "servicos"]);
    let r = plane.ok(&["backup", "--catalog", "--json"]).json();
    let b = &r["backups"][0];
    assert_eq!(b["state"], "ok", "{r}");
    assert_eq!(b["tenant"], "");
    assert!(
        b["manifest"]["tables"]["public.empresas"].as_i64() == Some(2),
        "{b}"
    );
    let path = find_object(&plane.backup_dir.join("catalog"));
    let object = std::fs::read(&path).unwrap();
    assert_eq!(b["checksum"], hex::encode(Sha256::digest(&object)));
    // Disaster recovery needs only the store and the master key: the control plane
    // decrypts the object (its sealed key is stored beside it), then pg_restore rebuilds
    // the catalog in a fresh database.
    let db = pg.fresh_database("catalog_rebuilt").await.unwrap();
    let file = std::env::temp_dir().join(format!("{db}.dump"));
    let key = path
        .strip_prefix(&plane.backup_dir)
        .unwrap()
        .to_str()
        .unwrap();
    let out = plane.run_binary(
        &[],
        &["decrypt-backup", key, "--out", file.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(&file).unwrap().starts_with(b"PGDMP"));
    let wrong_key = plane.run_binary(
        &[(
            "CONTROL_PLANE__MASTER_KEY",
            "bmV3LW1hc3Rlci1rZXktZm9yLXRlc3RzLTAxMjM0NTY=",
        )],
        &["decrypt-backup", key, "--out", "/dev/null"],
    );
    assert!(
        !wrong_key.status.success(),
        "another master key opens nothing"
    );
    let out = Command::new(pg_harness::pg_bindir().unwrap().join("pg_restore"))
        .args([
            "--no-owner",
            "--no-privileges",
            "--exit-on-error",
            "--dbname",
        ])
        .arg(pg.url(&db))
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let slugs: Vec<String> = pg
        .connect(&db)
        .await
        .unwrap()
        .query("SELECT slug FROM empresas ORDER BY slug", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(slugs, ["cat-one", "cat-two"]);
    let listed = plane.ok(&["backups", "--catalog", "--json"]).json();
    assert_eq!(listed[0]["id"], b["id"]);
    for (args, code) in [
        (vec!["backup", "--catalog", "cat-one"], 2),
        (vec!["backups"], 2),
        (vec!["backups", "cat-one", "--catalog"], 2),
    ] {
        let out = plane.ctl(&args);
        assert_eq!(out.code, code, "{args:?}: {out:?}");
    }
}

/// A process's peak resident memory (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

#[tokio::test]
async fn a_one_gigabyte_tenant_is_backed_up_in_bounded_memory() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 100);
    plane.ok(&["create", "bk-large", "--name", "Bk", "--sector", "servicos"]);
    let db = plane.database_of("bk-large").await;
    // ~1 GB of hex text that compresses only about twofold.
    let c = pg.connect(&db).await.unwrap();
    for part in 0..10i64 {
        c.execute(
            "INSERT INTO leads (wa_id, nome) SELECT '55' || lpad(g::text, 11, '0'), \
             (SELECT string_agg(md5(g::text || '-' || k::text), '') FROM generate_series(1, 62) k) \
             FROM generate_series($1::int8 * 50000 + 1, ($1::int8 + 1) * 50000) g",
            &[&part],
        )
        .await
        .unwrap();
    }
    let size: i64 = c
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await
        .unwrap()
        .get(0);
    assert!(size > 1_000_000_000, "the tenant holds {size} bytes");
    let r = plane.ok(&["backup", "bk-large", "--json"]).json();
    let b = &r["backups"][0];
    assert_eq!(b["state"], "ok", "{r}");
    assert!(b["bytes"].as_i64().unwrap() > 300_000_000, "{b}");
    let peak = peak_rss(plane.pid());
    eprintln!(
        "backed up {} MB into a {} MB object in {} ms; control plane peak RSS {} MiB",
        size / 1_000_000,
        b["bytes"].as_i64().unwrap() / 1_000_000,
        b["duration_ms"],
        peak >> 20
    );
    assert!(
        peak < 256 << 20,
        "the control plane peaked at {} MiB while backing up {} MB",
        peak >> 20,
        size / 1_000_000
    );
}

#[tokio::test]
async fn a_deletion_cut_by_a_crash_deletes_nothing_and_runs_again_to_its_end() {
    let pg = pg_harness::shared();
    let mut plane = Plane::start_with(&[("CONTROL_PLANE__BACKUP__STALE_AFTER_SECS", "2")]).await;
    plane.add_server("main", pg, 100);
    plane.ok(&[
        "create",
        "dl-crash",
        "--name",
        "Dl",
        "--sector",
        "servicos",
        "--phone-number-id",
        "5557009",
    ]);
    let db = plane.database_of("dl-crash").await;
    fill(pg, &db, 20_000, 2_000).await;
    crash_during(
        &mut plane,
        &["delete", "dl-crash"],
        "SELECT 1 FROM backups WHERE motivo = 'final' AND estado = 'running'",
    )
    .await;
    let catalog = plane.catalog().await;
    // Cut during its final backup: nothing is deleted, the number stays, the data is whole.
    let shown = plane.ok(&["show", "dl-crash", "--json"]).json();
    assert_eq!(shown["status"], "suspended", "{shown}");
    assert_eq!(shown["phone_number_id"], "5557009");
    assert_eq!(leads_in(pg, &db).await, 20_000);
    // Run again: it finishes.
    let r = plane.ok(&["delete", "dl-crash", "--json"]).json();
    assert_eq!(r["purged"], false, "{r}");
    assert_eq!(
        plane.ok(&["show", "dl-crash", "--json"]).json()["status"],
        "deleted"
    );
    let finals = catalog
        .query_one(
            "SELECT count(*) FILTER (WHERE estado = 'ok') FROM backups WHERE motivo = 'final'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(finals, 1, "one good final backup");
}

#[tokio::test]
async fn a_restore_into_a_new_tenant_cut_by_a_crash_leaves_no_tenant_behind() {
    let pg = pg_harness::shared();
    let mut plane = Plane::start_with(&[
        ("CONTROL_PLANE__BACKUP__STALE_AFTER_SECS", "2"),
        ("CONTROL_PLANE__PROVISIONING__STALE_AFTER_SECS", "0"),
    ])
    .await;
    plane.add_server("main", pg, 100);
    plane.ok(&["create", "as-src", "--name", "As", "--sector", "servicos"]);
    let db = plane.database_of("as-src").await;
    fill(pg, &db, 20_000, 2_000).await;
    let b = plane.ok(&["backup", "as-src", "--json"]).json();
    let backup = b["backups"][0]["id"].as_i64().unwrap().to_string();
    let new_id: i64 = crash_during(
        &mut plane,
        &["restore", "as-src", "--backup", &backup, "--as", "as-dst"],
        "SELECT empresa_id FROM restauracoes WHERE estado = 'running' AND passo = 'restore'",
    )
    .await
    .get(0);
    // While the restore job still holds it (its heartbeat held fresh here), `create` must
    // not adopt the half-made row as an abandoned provisioning.
    let catalog = plane.catalog().await;
    let hold = "UPDATE restauracoes SET batimento_em = now() + make_interval(hours => $1) \
                WHERE empresa_id = $2 AND estado = 'running'";
    assert_eq!(catalog.execute(hold, &[&1i32, &new_id]).await.unwrap(), 1);
    let adopt = plane.ctl(&[
        "create", "as-dst", "--name", "Other", "--sector", "servicos",
    ]);
    assert!(
        adopt.code != 0 && adopt.stderr.contains("being provisioned right now"),
        "create adopted a restore's tenant: {adopt:?}"
    );
    let status: String = catalog
        .query_one("SELECT status FROM empresas WHERE id = $1", &[&new_id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "provisioning", "the restore's row is untouched");
    catalog.execute(hold, &[&-1i32, &new_id]).await.unwrap();
    let gone = pg_harness::eventually(std::time::Duration::from_secs(15), || async {
        plane.ctl(&["show", "as-dst"]).code == 3
    })
    .await;
    assert!(gone, "the half-made tenant is removed");
    assert!(
        !common::database_exists(pg, &format!("{}_{new_id}_g1", plane.name_prefix)).await,
        "its database was dropped"
    );
    assert_eq!(leads_in(pg, &db).await, 20_000, "the source is intact");
    let t = plane
        .ok(&[
            "restore", "as-src", "--backup", &backup, "--as", "as-dst", "--json",
        ])
        .json();
    assert_eq!(t["status"], "active");
    assert_eq!(leads_in(pg, t["database"].as_str().unwrap()).await, 20_000);
}
