//! Brings up what the benchmark measures against: a PostgreSQL server, the control plane
//! (in-process, real gRPC), the real router binary and a real PgBouncer (transaction mode).

use anyhow::{anyhow, Context, Result};
use proto::control::v1 as cp;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const ADMIN: &str = "loadgen-admin-token-0123456789";
pub const DIRECTORY: &str = "loadgen-directory-token-0123456789";
pub const JWT: &str = "loadgen-jwt-secret-0123456789abcdefghij";

/// Everything running for one benchmark.
pub struct Stack {
    pub pg: pg_harness::PgServer,
    pub admin: cp::tenant_admin_client::TenantAdminClient<tonic::transport::Channel>,
    pub directory: cp::tenant_directory_client::TenantDirectoryClient<tonic::transport::Channel>,
    pub router_grpc: String,
    router: Child,
    pgbouncer: Option<(Child, u16, std::path::PathBuf)>,
    stop_cp: Option<tokio::sync::oneshot::Sender<()>>,
}

pub fn admin_req<T>(m: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(m);
    if let Ok(v) = format!("Bearer {token}").parse() {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

impl Stack {
    pub async fn start(max_per_tenant: usize) -> Result<Stack> {
        let pg = pg_harness::PgServer::start().map_err(|e| anyhow!("{e}"))?;
        let catalog = pg.fresh_database("loadgen_catalog").await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let path = std::env::temp_dir().join(format!("loadgen-cp-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            format!(
                "listen = \"{addr}\"\ncatalog_url = \"{}\"\nmaster_key = \"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\"\n\
                 admin_token = \"{ADMIN}\"\ndirectory_token = \"{DIRECTORY}\"\ntoken_signing_key = \"{JWT}\"\n",
                pg.url(&catalog)
            ),
        )?;
        let config = control_plane::Config::load(Some(&path))?;
        let (stop_cp, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(control_plane::server::run(config, listener, async {
            let _ = stopped.await;
        }));
        let endpoint = format!("http://{addr}");
        let channel = loop {
            if let Ok(c) = tonic::transport::Channel::from_shared(endpoint.clone())?
                .connect()
                .await
            {
                break c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut admin = cp::tenant_admin_client::TenantAdminClient::new(channel.clone());
        admin
            .add_server(admin_req(
                cp::AddServerRequest {
                    name: "bench".into(),
                    host: "127.0.0.1".into(),
                    port: u32::from(pg.port),
                    admin_user: pg_harness::SUPERUSER.into(),
                    admin_password: pg_harness::SUPERUSER_PASSWORD.into(),
                    connection_budget: 80,
                    capacity: 100_000,
                },
                ADMIN,
            ))
            .await?;
        let exe = std::env::current_exe()?;
        let bin = exe.parent().context("exe dir")?.join("tenant-router");
        let mut router = Command::new(&bin)
            .env("TENANT_ROUTER__GRPC_LISTEN", "127.0.0.1:0")
            .env("TENANT_ROUTER__HTTP_LISTEN", "127.0.0.1:0")
            .env("TENANT_ROUTER__CONTROL_PLANE_ENDPOINT", &endpoint)
            .env("TENANT_ROUTER__DIRECTORY_TOKEN", DIRECTORY)
            .env("TENANT_ROUTER__JWT_SECRET", JWT)
            .env(
                "TENANT_ROUTER__POOLS__MAX_PER_TENANT",
                max_per_tenant.to_string(),
            )
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {bin:?}"))?;
        let line = {
            use std::io::BufRead;
            let mut l = String::new();
            let out = router.stdout.take().context("router stdout")?;
            std::io::BufReader::new(out).read_line(&mut l)?;
            l
        };
        let grpc = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("grpc="))
            .context("router did not start")?
            .to_string();
        Ok(Stack {
            pg,
            admin,
            directory: cp::tenant_directory_client::TenantDirectoryClient::new(channel),
            router_grpc: format!("http://{grpc}"),
            router,
            pgbouncer: None,
            stop_cp: Some(stop_cp),
        })
    }

    /// Creates a tenant and returns its route (with credentials, as routers get it).
    pub async fn tenant(&mut self, slug: &str) -> Result<cp::Route> {
        self.admin
            .create_tenant(admin_req(
                cp::CreateTenantRequest {
                    slug: slug.into(),
                    name: "Bench".into(),
                    sector: "servicos".into(),
                    ..Default::default()
                },
                ADMIN,
            ))
            .await?;
        let route = self
            .directory
            .resolve(admin_req(
                cp::ResolveRequest {
                    key: Some(cp::resolve_request::Key::Slug(slug.into())),
                },
                DIRECTORY,
            ))
            .await?
            .into_inner();
        Ok(route)
    }

    /// Starts PgBouncer in transaction mode in front of `routes`; returns its port.
    pub fn start_pgbouncer(&mut self, routes: &[cp::Route], pool_size: usize) -> Result<u16> {
        let bin = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .context("pgbouncer is not installed (apt-get install pgbouncer)")?;
        let dir = std::env::temp_dir().join(format!("loadgen-pgbouncer-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let port = pg_harness::free_port().map_err(|e| anyhow!("{e}"))?;
        let mut dbs = String::new();
        let mut users = String::new();
        for r in routes {
            dbs.push_str(&format!(
                "{} = host=127.0.0.1 port={} dbname={}\n",
                r.database, self.pg.port, r.database
            ));
            users.push_str(&format!("\"{}\" \"{}\"\n", r.role, r.password));
        }
        std::fs::write(dir.join("userlist.txt"), users)?;
        std::fs::write(
            dir.join("pgbouncer.ini"),
            format!(
                "[databases]\n{dbs}\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = scram-sha-256\nauth_file = {}\npool_mode = transaction\nmax_client_conn = 2000\n\
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
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.starts_with(b"0"))
            .unwrap_or(false);
        if root {
            cmd.args(["-u", "nobody"]);
        }
        let child = cmd
            .arg(dir.join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                self.pgbouncer = Some((child, port, dir));
                return Ok(port);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(anyhow!(
            "pgbouncer did not start; see {:?}",
            dir.join("pgbouncer.log")
        ))
    }

    /// A caller token for every tenant.
    pub fn token(&self) -> Result<String> {
        let now = caller_auth::now_secs();
        Ok(
            caller_auth::TokenKey::new(JWT.as_bytes()).sign(&caller_auth::Claims {
                sub: "loadgen".into(),
                tenants: vec![],
                all: true,
                exp: now + 3600,
                iat: now,
            })?,
        )
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.router.kill();
        let _ = self.router.wait();
        if let Some((mut child, _, dir)) = self.pgbouncer.take() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some(s) = self.stop_cp.take() {
            let _ = s.send(());
        }
    }
}
