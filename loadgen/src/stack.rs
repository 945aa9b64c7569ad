//! Brings up what the benchmark measures against: PostgreSQL servers, the control plane
//! (in-process, real gRPC), real router processes and a real PgBouncer (transaction mode).

use anyhow::{anyhow, Context, Result};
use proto::control::v1 as cp;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// Base64 Ed25519 seed of the benchmark control plane's token signing key.
pub const SIGNING_KEY: &str = "bG9hZGdlbi1zaWduaW5nLWtleS0wMTIzNDU2Nzg5YWI=";
const MASTER_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
/// Every server's router connection budget (the 80 per server).
pub const BUDGET: u32 = 80;

type Admin = cp::tenant_admin_client::TenantAdminClient<tonic::transport::Channel>;
type Directory = cp::tenant_directory_client::TenantDirectoryClient<tonic::transport::Channel>;

/// Everything running for one benchmark, stopped when dropped.
pub struct Stack {
    pub servers: Vec<pg_harness::PgServer>,
    catalog: String,
    pub admin: Admin,
    pub directory: Directory,
    /// Token of the benchmark's admin operator.
    admin_token: String,
    /// Directory credential of the benchmark's routers.
    router_token: String,
    cp_endpoint: String,
    stop_cp: Option<tokio::sync::oneshot::Sender<()>>,
    /// Settings every control plane of the stack shares (the in-process one's file).
    cp_config: String,
    /// Where the control planes keep backups (a local directory).
    pub backup_store: std::path::PathBuf,
}

pub fn admin_req<T>(m: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(m);
    if let Ok(v) = format!("Bearer {token}").parse() {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

impl Stack {
    /// The cluster directories of every PostgreSQL server of the run: the tenants' servers
    /// and the durable ingest server.
    pub fn postgres_dirs(&self) -> Vec<&std::path::Path> {
        self.servers
            .iter()
            .chain(std::iter::once(pg_harness::shared_durable()))
            .map(|p| p.dir.as_path())
            .collect()
    }

    /// `servers` PostgreSQL servers (catalog on the first), each registered with a router
    /// budget of [`BUDGET`] and room for `max_connections` backends (the direct and
    /// PgBouncer baselines have no budget and may open one connection per tenant).
    pub async fn start(servers: usize, max_connections: u32) -> Result<Stack> {
        let max = max_connections.to_string();
        let servers = (0..servers)
            .map(|_| {
                pg_harness::PgServer::start_with(&[
                    ("max_connections", max.as_str()),
                    ("shared_buffers", "128MB"),
                ])
                .map_err(|e| anyhow!("{e}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let catalog = servers[0].fresh_database("loadgen_catalog").await?;
        let catalog_url = servers[0].url(&catalog);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let path = std::env::temp_dir().join(format!("loadgen-cp-{}.toml", std::process::id()));
        // The direct baseline opens a connection per caller with a tenant's login role: the
        // login roles' connection limit must not cap the baseline. Backups run only when a
        // scenario asks (no schedule), into a throwaway directory.
        let backup_store =
            std::env::temp_dir().join(format!("loadgen-backups-{}", std::process::id()));
        let pg_bin_dir = pg_harness::pg_bindir().map_err(|e| anyhow!("{e}"))?;
        // The inbox lives on a durable server of its own (fsync=on), as the control plane
        // demands.
        let ingest_url = pg_harness::fresh_ingest().await?;
        let cp_config = format!(
            "catalog_url = \"{catalog_url}\"\nmaster_key = \"{MASTER_KEY}\"\n\
             token_signing_key = \"{SIGNING_KEY}\"\n[ingest]\nurl = \"{ingest_url}\"\n\
             [provisioning]\nlogin_connection_limit = 1000\n\
             [leases]\njobs_connections = 0\n\
             [backup]\nschedule_every_secs = 0\npg_bin_dir = \"{}\"\n\
             [backup.store]\nlocation = \"{}\"\n",
            pg_bin_dir.display(),
            backup_store.display()
        );
        std::fs::write(&path, format!("listen = \"{addr}\"\n{cp_config}"))?;
        let config = control_plane::Config::load(Some(&path));
        let _ = std::fs::remove_file(&path);
        let config = config?;
        let admin_token = control_plane::bootstrap::operator_token(
            &config,
            "loadgen",
            control_plane::auth::Role::Admin,
            0,
        )
        .await?;
        let (stop_cp, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(control_plane::server::run(config, listener, async {
            let _ = stopped.await;
        }));
        let cp_endpoint = format!("http://{addr}");
        let channel = loop {
            if let Ok(c) = tonic::transport::Channel::from_shared(cp_endpoint.clone())?
                .connect()
                .await
            {
                break c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut admin = Admin::new(channel.clone());
        for (i, pg) in servers.iter().enumerate() {
            admin
                .add_server(admin_req(
                    cp::AddServerRequest {
                        name: format!("bench{i}"),
                        host: "127.0.0.1".into(),
                        port: u32::from(pg.port),
                        admin_user: pg_harness::SUPERUSER.into(),
                        admin_password: pg_harness::SUPERUSER_PASSWORD.into(),
                        connection_budget: BUDGET,
                        capacity: 100_000,
                    },
                    &admin_token,
                ))
                .await?;
        }
        // The benchmark measures the router, not the plans' limits.
        pg_harness::lift_plan_limits(&servers[0], &catalog)
            .await
            .map_err(|e| anyhow!("{e}"))?;
        let router_token = admin
            .add_router(admin_req(
                cp::AddRouterRequest {
                    name: "loadgen".into(),
                    servers: Vec::new(),
                    all_servers: true,
                    ttl_secs: 0,
                },
                &admin_token,
            ))
            .await?
            .into_inner()
            .token;
        Ok(Stack {
            servers,
            catalog,
            admin,
            directory: Directory::new(channel),
            admin_token,
            router_token,
            cp_endpoint,
            stop_cp: Some(stop_cp),
            cp_config,
            backup_store,
        })
    }

    /// Starts another control plane, as its own process (`control-plane` beside this
    /// binary), on the same catalog: a replica, so work it does (backups) does not share
    /// the load generator's CPU time; an admin client to it (the stack's operator token is
    /// valid there too).
    pub async fn control_plane_process(&self) -> Result<(ControlPlane, Admin)> {
        let exe = std::env::current_exe()?;
        let bin = exe.parent().context("exe dir")?.join("control-plane");
        let path = std::env::temp_dir().join(format!("loadgen-cp2-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            format!("listen = \"127.0.0.1:0\"\n{}", self.cp_config),
        )?;
        let child = Command::new(&bin)
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn();
        let mut child = ControlPlane(child.with_context(|| format!("starting {bin:?}"))?);
        let line = {
            use std::io::BufRead;
            let mut l = String::new();
            let out = child.0.stdout.take().context("control plane stdout")?;
            std::io::BufReader::new(out).read_line(&mut l)?;
            l
        };
        let _ = std::fs::remove_file(&path);
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .with_context(|| format!("control plane did not start: {line:?}"))?;
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        Ok((child, Admin::new(channel)))
    }

    /// The stack's operator token (admin).
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// Starts a router process; `env` are extra `TENANT_ROUTER__*` settings (without prefix).
    pub fn router(&self, env: &[(&str, &str)]) -> Result<Router> {
        let exe = std::env::current_exe()?;
        let bin = exe.parent().context("exe dir")?.join("tenant-router");
        let mut cmd = Command::new(&bin);
        cmd.env("TENANT_ROUTER__GRPC_LISTEN", "127.0.0.1:0")
            .env("TENANT_ROUTER__HTTP_LISTEN", "127.0.0.1:0")
            .env("TENANT_ROUTER__CONTROL_PLANE_ENDPOINT", &self.cp_endpoint)
            .env("TENANT_ROUTER__DIRECTORY_TOKEN", &self.router_token)
            .env("TENANT_ROUTER__TOKEN_VERIFYING_KEY", verifying_key()?)
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped());
        for (k, v) in env {
            cmd.env(format!("TENANT_ROUTER__{k}"), v);
        }
        let mut child = cmd.spawn().with_context(|| format!("starting {bin:?}"))?;
        let line = {
            use std::io::BufRead;
            let mut l = String::new();
            let out = child.stdout.take().context("router stdout")?;
            std::io::BufReader::new(out).read_line(&mut l)?;
            l
        };
        let addr = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .map(str::to_string)
        };
        let (Some(grpc), Some(http)) = (addr("grpc="), addr("http=")) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(anyhow!("router did not start: {line:?}"));
        };
        Ok(Router {
            child,
            grpc: format!("http://{grpc}"),
            http,
        })
    }

    /// Creates `n` tenants named `<prefix>-<i>`, spread evenly over the servers, `parallel`
    /// at a time; returns their routes (with credentials, as routers get them) in order.
    pub async fn tenants(&self, prefix: &str, n: usize, parallel: usize) -> Result<Vec<cp::Route>> {
        let gate = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..n {
            let (mut admin, mut directory) = (self.admin.clone(), self.directory.clone());
            let admin_token = self.admin_token.clone();
            let router_token = self.router_token.clone();
            let slug = format!("{prefix}-{i}");
            let server = format!("bench{}", i % self.servers.len());
            let gate = Arc::clone(&gate);
            tasks.spawn(async move {
                let _permit = gate.acquire_owned().await?;
                admin
                    .create_tenant(admin_req(
                        cp::CreateTenantRequest {
                            slug: slug.clone(),
                            name: "Bench".into(),
                            sector: proto::control::v1::Sector::Servicos as i32,
                            server,
                            ..Default::default()
                        },
                        &admin_token,
                    ))
                    .await
                    .with_context(|| format!("creating {slug}"))?;
                let route = directory
                    .resolve(admin_req(
                        cp::ResolveRequest {
                            key: Some(cp::resolve_request::Key::Slug(slug)),
                        },
                        &router_token,
                    ))
                    .await?
                    .into_inner();
                anyhow::Ok((i, route))
            });
        }
        let mut routes = vec![None; n];
        while let Some(done) = tasks.join_next().await {
            let (i, route) = done??;
            routes[i] = Some(route);
        }
        routes
            .into_iter()
            .map(|r| r.context("tenant missing"))
            .collect()
    }

    /// Adds `n` catalog rows for active tenants whose databases were never created: routes
    /// a router can resolve and cache (10,000 real databases would need ~75 GB here).
    pub async fn catalog_only_tenants(&self, prefix: &str, n: usize) -> Result<()> {
        let secrets = control_plane::crypto::SecretBox::from_base64(MASTER_KEY)?;
        let client = self.servers[0].connect(&self.catalog).await?;
        let servers: Vec<i64> = client
            .query("SELECT id FROM servidores ORDER BY id", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let (mut slugs, mut sealed, mut server_ids) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..n {
            let slug = format!("{prefix}-{i}");
            sealed.push(secrets.seal(
                &control_plane::crypto::random_password(),
                &format!("tenant:{slug}:password"),
            )?);
            server_ids.push(servers[i % servers.len()]);
            slugs.push(slug);
        }
        client
            .execute(
                "INSERT INTO empresas (slug, nome, setor, status, servidor_id, banco, papel, senha_cifrada) \
                 SELECT s, 'Catalog only', 'servicos', 'active', srv, 'emp_' || replace(s, '-', '_'), \
                        'emp_' || replace(s, '-', '_') || '_app', pw \
                 FROM unnest($1::text[], $2::int8[], $3::bytea[]) AS t(s, srv, pw)",
                &[&slugs, &server_ids, &sealed],
            )
            .await?;
        Ok(())
    }

    /// Sets every server's router connection budget in the catalog (routers started later
    /// see it).
    pub async fn set_budget(&self, budget: i32) -> Result<()> {
        let client = self.servers[0].connect(&self.catalog).await?;
        client
            .execute("UPDATE servidores SET orcamento_conexoes = $1", &[&budget])
            .await?;
        Ok(())
    }

    /// Every tenant id in the catalog.
    pub async fn tenant_ids(&self) -> Result<Vec<i64>> {
        let client = self.servers[0].connect(&self.catalog).await?;
        Ok(client
            .query("SELECT id FROM empresas ORDER BY id", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    /// Every tenant's slug, by id.
    pub async fn tenant_slugs(&self) -> Result<Vec<String>> {
        let client = self.servers[0].connect(&self.catalog).await?;
        Ok(client
            .query("SELECT slug FROM empresas ORDER BY id", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    /// A caller token for every tenant.
    pub fn token(&self) -> Result<String> {
        sign(Vec::new(), true)
    }

    /// A caller token granted only the tenant with `tenant_id`.
    pub fn token_for(&self, tenant_id: i64) -> Result<String> {
        sign(vec![tenant_id], false)
    }
}

/// Signs a caller token as the control plane would (routers check only the signature,
/// expiry, kind and revocations).
fn sign(tenants: Vec<i64>, all: bool) -> Result<String> {
    let now = caller_auth::now_secs();
    Ok(
        caller_auth::Signer::from_base64(SIGNING_KEY)?.sign(&caller_auth::Claims {
            jti: format!("loadgen-{now}-{}", tenants.len()),
            kind: caller_auth::Kind::Caller,
            sub: "loadgen".into(),
            tenants,
            all,
            role: None,
            sid: None,
            scopes: Vec::new(),
            exp: now + 3600,
            iat: now,
        })?,
    )
}

fn verifying_key() -> Result<String> {
    Ok(caller_auth::Signer::from_base64(SIGNING_KEY)?.public_base64())
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(s) = self.stop_cp.take() {
            let _ = s.send(());
        }
        let _ = std::fs::remove_dir_all(&self.backup_store);
    }
}

/// A control-plane process, killed when dropped.
pub struct ControlPlane(Child);

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running router process, killed when dropped.
pub struct Router {
    child: Child,
    /// `http://host:port` of its gRPC side.
    pub grpc: String,
    /// `host:port` of its HTTP side.
    http: String,
}

impl Router {
    /// Resident memory of the process, in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("VmRSS missing")
    }

    /// The sum of the samples of metric `name` whose labels contain every one of `labels`,
    /// read from `/metrics`.
    pub async fn metric(&self, name: &str, labels: &[&str]) -> Result<f64> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(&self.http).await?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await?;
        let mut body = String::new();
        s.read_to_string(&mut body).await?;
        Ok(body
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .filter(|l| labels.iter().all(|label| l.contains(label)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// A gRPC channel to it.
    pub async fn channel(&self) -> Result<tonic::transport::Channel> {
        tonic::transport::Channel::from_shared(self.grpc.clone())?
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| anyhow!("router at {}: {e:?}", self.grpc))
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A PgBouncer in transaction mode in front of some tenant databases, stopped when dropped.
pub struct Bouncer {
    child: Child,
    pub port: u16,
    dir: std::path::PathBuf,
}

impl Bouncer {
    /// Starts PgBouncer for `routes` with `pool_size` server connections per database.
    pub fn start(routes: &[cp::Route], pool_size: usize) -> Result<Bouncer> {
        Bouncer::start_with(routes, pool_size, &[])
    }

    /// Also for `extra` databases `(name, port)` of the servers' superuser (pgbench's).
    pub fn start_with(
        routes: &[cp::Route],
        pool_size: usize,
        extra: &[(&str, u16)],
    ) -> Result<Bouncer> {
        let bin = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .context("pgbouncer is not installed (apt-get install pgbouncer)")?;
        let port = pg_harness::free_port().map_err(|e| anyhow!("{e}"))?;
        let dir = std::env::temp_dir().join(format!("loadgen-pgbouncer-{port}"));
        std::fs::create_dir_all(&dir)?;
        let mut dbs = String::new();
        let mut users = String::new();
        for r in routes {
            dbs.push_str(&format!(
                "{} = host=127.0.0.1 port={} dbname={}\n",
                r.database, r.port, r.database
            ));
            users.push_str(&format!("\"{}\" \"{}\"\n", r.role, r.password));
        }
        for (db, port) in extra {
            dbs.push_str(&format!("{db} = host=127.0.0.1 port={port} dbname={db}\n"));
        }
        if !extra.is_empty() {
            users.push_str(&format!(
                "\"{}\" \"{}\"\n",
                pg_harness::SUPERUSER,
                pg_harness::SUPERUSER_PASSWORD
            ));
        }
        std::fs::write(dir.join("userlist.txt"), users)?;
        std::fs::write(
            dir.join("pgbouncer.ini"),
            format!(
                "[databases]\n{dbs}\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = scram-sha-256\nauth_file = {}\npool_mode = transaction\nmax_client_conn = 5000\n\
                 default_pool_size = {pool_size}\nlogfile = {}\npidfile = {}\n",
                dir.join("userlist.txt").display(),
                dir.join("pgbouncer.log").display(),
                dir.join("pgbouncer.pid").display()
            ),
        )?;
        let _ = Command::new("chown")
            .args(["-R", "nobody:nogroup"])
            .arg(&dir)
            .status();
        let mut cmd = Command::new(bin);
        if pg_harness::is_root() {
            cmd.args(["-u", "nobody"]);
        }
        let mut child = cmd
            .arg(dir.join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(Bouncer { child, port, dir });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(anyhow!(
            "pgbouncer did not start; see {:?}",
            dir.join("pgbouncer.log")
        ))
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
