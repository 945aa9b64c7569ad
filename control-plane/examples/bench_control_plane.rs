//! Control-plane benchmark (run it through `scripts/bench-control-plane.sh`).
//!
//! Starts a throwaway PostgreSQL server and the real control-plane binary, then measures:
//! provisioning latency with and without the template database, a no-op fleet run, and a
//! fleet run applying one additive migration. Prints a Markdown table. With `--backups`:
//! backup and restore throughput for a ~10 MB and a `--large-mb` (1000) tenant, and a
//! backup of a fleet of `--fleet` small tenants (total time, peak connections held).
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use proto::control::v1 as pb;
use proto::control::v1::tenant_admin_client::TenantAdminClient;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const MASTER_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const SIGNING_KEY: &str = "YmVuY2gtc2lnbmluZy1rZXktMDEyMzQ1Njc4OWFiY2Q=";

struct Plane {
    child: Child,
    client: TenantAdminClient<Channel>,
    /// The bench's admin operator token.
    token: String,
}

impl Drop for Plane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn req<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

async fn start_plane(
    pg: &pg_harness::PgServer,
    use_template: bool,
    prefix: &str,
    extra: &[(&str, String)],
) -> Plane {
    let catalog = pg.fresh_database("bench_catalog").await.unwrap();
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("control-plane");
    let mut env = vec![
        ("CONTROL_PLANE__LISTEN", "127.0.0.1:0".to_string()),
        ("CONTROL_PLANE__CATALOG_URL", pg.url(&catalog)),
        ("CONTROL_PLANE__MASTER_KEY", MASTER_KEY.into()),
        ("CONTROL_PLANE__TOKEN_SIGNING_KEY", SIGNING_KEY.into()),
        (
            "CONTROL_PLANE__PROVISIONING__USE_TEMPLATE",
            use_template.to_string(),
        ),
        (
            "CONTROL_PLANE__PROVISIONING__TEMPLATE_PREFIX",
            prefix.into(),
        ),
        ("CONTROL_PLANE__FLEET__MAX_CONCURRENCY", "64".into()),
        // No routers here: the run's per-server concurrency is not held to a jobs slice.
        ("CONTROL_PLANE__LEASES__JOBS_CONNECTIONS", "0".into()),
        ("RUST_LOG", "warn".into()),
        ("CONTROL_PLANE__BACKUP__SCHEDULE_EVERY_SECS", "0".into()),
    ];
    env.extend(extra.iter().cloned());
    let token = {
        let out = Command::new(&bin)
            .args(["operator-token", "--name", "bench"])
            .envs(env.iter().cloned())
            .output()
            .unwrap();
        assert!(out.status.success(), "operator-token: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let mut child = Command::new(bin)
        .envs(env.iter().cloned())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let line = {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        line
    };
    let addr = line
        .trim()
        .strip_prefix("listening ")
        .expect("control plane started")
        .to_string();
    let endpoint = format!("http://{addr}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let channel = loop {
        if let Ok(c) = Channel::from_shared(endpoint.clone())
            .unwrap()
            .connect()
            .await
        {
            break c;
        }
        assert!(Instant::now() < deadline, "control plane did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut client = TenantAdminClient::new(channel);
    client
        .add_server(req(
            pb::AddServerRequest {
                name: "bench".into(),
                host: "127.0.0.1".into(),
                port: u32::from(pg.port),
                admin_user: pg_harness::SUPERUSER.into(),
                admin_password: pg_harness::SUPERUSER_PASSWORD.into(),
                connection_budget: 80,
                capacity: 100_000,
            },
            &token,
        ))
        .await
        .unwrap();
    Plane {
        child,
        client,
        token,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn provision(plane: &mut Plane, prefix: &str, n: usize) -> Vec<f64> {
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        plane
            .client
            .create_tenant(req(
                pb::CreateTenantRequest {
                    slug: format!("{prefix}-{i}"),
                    name: "Bench".into(),
                    sector: proto::control::v1::Sector::Veiculos as i32,
                    ..Default::default()
                },
                &plane.token,
            ))
            .await
            .unwrap();
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    times
}

/// Creates `n` tenants with `workers` concurrent callers (setup, not measured).
async fn provision_many(plane: &Plane, prefix: &str, n: usize, workers: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let mut client = plane.client.clone();
        let token = plane.token.clone();
        let prefix = prefix.to_string();
        tasks.spawn(async move {
            for i in (w..n).step_by(workers) {
                client
                    .create_tenant(req(
                        pb::CreateTenantRequest {
                            slug: format!("{prefix}-{i}"),
                            name: "Fleet".into(),
                            sector: proto::control::v1::Sector::Servicos as i32,
                            ..Default::default()
                        },
                        &token,
                    ))
                    .await
                    .unwrap();
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

async fn migrate_all(plane: &mut Plane, concurrency: u32) -> (f64, pb::MigrateSummary) {
    let started = Instant::now();
    let token = plane.token.clone();
    let mut stream = plane
        .client
        .migrate_tenants(req(
            pb::MigrateRequest {
                all: true,
                concurrency,
                per_server_concurrency: concurrency,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut summary = None;
    while let Some(ev) = stream.message().await.unwrap() {
        if let Some(pb::migrate_event::Event::Summary(s)) = ev.event {
            summary = Some(s);
        }
    }
    (started.elapsed().as_secs_f64(), summary.unwrap())
}

/// Puts every fleet tenant back at common V1 (as the previous release left them).
async fn age_fleet(pg: &pg_harness::PgServer, catalog_db: &str, prefix: &str, n: usize) {
    for i in 0..n {
        let cat = pg.connect(catalog_db).await.unwrap();
        let db: String = cat
            .query_one(
                "SELECT banco FROM empresas WHERE slug = $1",
                &[&format!("{prefix}-{i}")],
            )
            .await
            .unwrap()
            .get(0);
        let c = pg.connect(&db).await.unwrap();
        c.batch_execute(
            "ALTER TABLE leads DROP COLUMN tags; DROP INDEX conversas_recentes_idx; \
             DELETE FROM refinery_schema_history WHERE version = 2",
        )
        .await
        .unwrap();
    }
    let cat = pg.connect(catalog_db).await.unwrap();
    cat.execute(
        "UPDATE empresas SET schema_version = 1 WHERE slug LIKE $1",
        &[&format!("{prefix}-%")],
    )
    .await
    .unwrap();
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let provision_n = arg("--provision", 100);
    let fleet_n = arg("--fleet", 1000);
    let concurrency = arg("--concurrency", 8) as u32;

    let pg = pg_harness::PgServer::start().unwrap();
    let mut rows: Vec<String> = Vec::new();

    if args.iter().any(|a| a == "--backups") {
        backups(&pg, arg("--large-mb", 1000), arg("--fleet", 200)).await;
        return;
    }
    let mut with_tpl = start_plane(&pg, true, "bench_tpl", &[]).await;
    let t = provision(&mut with_tpl, "pt", provision_n).await;
    rows.push(format!(
        "| provision, template | {provision_n} | {:.1} ms | {:.1} ms | {:.1} ms |",
        percentile(&t, 0.5),
        percentile(&t, 0.95),
        t[t.len() - 1]
    ));
    let mut without = start_plane(&pg, false, "bench_none", &[]).await;
    let t = provision(&mut without, "pn", provision_n).await;
    rows.push(format!(
        "| provision, no template | {provision_n} | {:.1} ms | {:.1} ms | {:.1} ms |",
        percentile(&t, 0.5),
        percentile(&t, 0.95),
        t[t.len() - 1]
    ));
    drop(without);

    let setup = Instant::now();
    provision_many(&with_tpl, "fl", fleet_n, 4).await;
    eprintln!(
        "fleet of {fleet_n} tenants provisioned in {:.1} s",
        setup.elapsed().as_secs_f64()
    );
    let total = fleet_n + provision_n;
    let (noop_s, s) = migrate_all(&mut with_tpl, concurrency).await;
    assert_eq!(s.skipped as usize, total);
    rows.push(format!(
        "| fleet run, no-op | {total} | {:.2} s total | skipped {} | |",
        noop_s, s.skipped
    ));

    let catalog_db = {
        let c = pg.connect("postgres").await.unwrap();
        let row = c
            .query_one("SELECT datname FROM pg_database WHERE datname LIKE 'bench_catalog%' ORDER BY oid LIMIT 1", &[])
            .await
            .unwrap();
        row.get::<_, String>(0)
    };
    age_fleet(&pg, &catalog_db, "fl", fleet_n).await;
    let (mig_s, s) = migrate_all(&mut with_tpl, concurrency).await;
    assert_eq!(s.migrated as usize, fleet_n, "{s:?}");
    assert_eq!(s.failed, 0);
    rows.push(format!(
        "| fleet run, one additive migration (concurrency {concurrency}) | {fleet_n} | {:.2} s total | {:.1} ms/tenant | migrated {} |",
        mig_s,
        mig_s * 1000.0 / fleet_n as f64,
        s.migrated
    ));

    println!("| scenario | tenants | p50 / total | p95 | max |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
}

/// Fills a tenant's leads with about `mb` MB of hex text (compresses about twofold).
async fn fill(pg: &pg_harness::PgServer, db: &str, mb: usize) -> i64 {
    let c = pg.connect(db).await.unwrap();
    let rows = (mb * 1_000_000 / 2_100).max(1) as i64;
    let mut done = 0i64;
    while done < rows {
        let n = (rows - done).min(50_000);
        c.execute(
            "INSERT INTO leads (wa_id, nome) SELECT '55' || lpad(g::text, 11, '0'), \
             (SELECT string_agg(md5(g::text || '-' || k::text), '') FROM generate_series(1, 62) k) \
             FROM generate_series($1::int8 + 1, $1::int8 + $2::int8) g",
            &[&done, &n],
        )
        .await
        .unwrap();
        done += n;
    }
    c.query_one("SELECT pg_database_size(current_database())", &[])
        .await
        .unwrap()
        .get(0)
}

/// Backends on the server other than this probe's own, sampled until `stop`; the peak.
async fn peak_connections(
    pg: &pg_harness::PgServer,
    stop: tokio::sync::watch::Receiver<bool>,
) -> i64 {
    let c = pg.connect("postgres").await.unwrap();
    let mut peak = 0;
    while !*stop.borrow() {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' \
                 AND pid <> pg_backend_pid() AND usename LIKE 'bk%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        peak = peak.max(n);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    peak
}

/// Backup and restore throughput for a ~10 MB and a `large_mb` tenant, and a backup of a
/// fleet of `fleet` small tenants (total time, peak connections the backups held).
async fn backups(pg: &pg_harness::PgServer, large_mb: usize, fleet: usize) {
    let store = std::env::temp_dir().join(format!("bench-backups-{}", std::process::id()));
    let extra = [
        (
            "CONTROL_PLANE__BACKUP__STORE__LOCATION",
            store.display().to_string(),
        ),
        (
            "CONTROL_PLANE__BACKUP__PG_BIN_DIR",
            pg_harness::pg_bindir().unwrap().display().to_string(),
        ),
        ("CONTROL_PLANE__PROVISIONING__NAME_PREFIX", "bk".to_string()),
    ];
    let plane = start_plane(pg, true, "bench_bk", &extra).await;
    let mut client = plane.client.clone();
    println!("| scenario | database | object | wall | throughput |");
    println!("|---|---|---|---|---|");
    for (i, mb) in [10, large_mb].into_iter().enumerate() {
        let slug = format!("bk-size-{i}");
        let t = client
            .create_tenant(req(
                pb::CreateTenantRequest {
                    slug: slug.clone(),
                    name: "Size".into(),
                    sector: pb::Sector::Servicos as i32,
                    ..Default::default()
                },
                &plane.token,
            ))
            .await
            .unwrap()
            .into_inner();
        let size = fill(pg, &t.database, mb).await as f64 / 1e6;
        let started = Instant::now();
        let b = client
            .backup_tenants(req(
                pb::BackupRequest {
                    tenants: vec![slug.clone()],
                    ..Default::default()
                },
                &plane.token,
            ))
            .await
            .unwrap()
            .into_inner()
            .backups
            .remove(0);
        let wall = started.elapsed().as_secs_f64();
        assert_eq!(b.state, pb::BackupState::Ok as i32, "{b:?}");
        println!(
            "| backup | {size:.0} MB | {:.0} MB | {wall:.1} s | {:.1} MB/s |",
            b.bytes as f64 / 1e6,
            size / wall
        );
        let started = Instant::now();
        client
            .restore_tenant(req(
                pb::RestoreRequest {
                    tenant: slug,
                    backup_id: b.id,
                    as_slug: String::new(),
                },
                &plane.token,
            ))
            .await
            .unwrap();
        let wall = started.elapsed().as_secs_f64();
        println!(
            "| restore in place (RTO) | {size:.0} MB | {:.0} MB | {wall:.1} s | {:.1} MB/s |",
            b.bytes as f64 / 1e6,
            size / wall
        );
    }
    let setup = Instant::now();
    provision_many(&plane, "bk-fleet", fleet, 4).await;
    eprintln!(
        "{fleet} small tenants provisioned in {:.1} s",
        setup.elapsed().as_secs_f64()
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let probe = peak_connections(pg, stopped);
    let started = Instant::now();
    let run = async {
        let r = client
            .backup_tenants(req(
                pb::BackupRequest {
                    all: true,
                    ..Default::default()
                },
                &plane.token,
            ))
            .await
            .unwrap()
            .into_inner();
        let _ = stop.send(true);
        r
    };
    let (r, peak) = tokio::join!(run, probe);
    let wall = started.elapsed().as_secs_f64();
    let ok = r
        .backups
        .iter()
        .filter(|b| b.state == pb::BackupState::Ok as i32)
        .count();
    println!(
        "| fleet backup (`backup --all`, concurrency 4, 1 per server) | {} tenants | {ok} ok, {} failed | {wall:.1} s | peak {peak} connections on the server |",
        r.backups.len(),
        r.failed.len() + r.backups.len() - ok
    );
    let _ = std::fs::remove_dir_all(&store);
}
