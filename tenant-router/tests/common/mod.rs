//! Router test support: the real control plane (in-process, real gRPC) over a fresh
//! catalog, the real tenant-router binary, real PostgreSQL servers.
#![allow(clippy::unwrap_used, dead_code)]

pub mod wh;

use proto::control::v1 as cp;
use proto::control::v1::tenant_admin_client::TenantAdminClient;
use proto::domain::v1 as dm;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Base64 of the Ed25519 seed the test control planes sign tokens with.
pub const SIGNING_KEY: &str = "cm91dGVyLXRlc3RzLXNpZ25pbmcta2V5LTAxMjM0NTY=";

/// The public key routers verify caller tokens with.
pub fn verifying_key() -> String {
    caller_auth::Signer::from_base64(SIGNING_KEY)
        .unwrap()
        .public_base64()
}

/// A caller token signed like the control plane's (routers check only the signature,
/// expiry, kind and revocations), expiring `exp_in` seconds from now.
pub fn caller_token(tenants: Vec<i64>, all: bool, exp_in: i64) -> String {
    let now = caller_auth::now_secs();
    caller_auth::Signer::from_base64(SIGNING_KEY)
        .unwrap()
        .sign(&caller_auth::Claims {
            jti: format!("test-{now}-{}", SEQ.fetch_add(1, Ordering::Relaxed)),
            kind: caller_auth::Kind::Caller,
            sub: "tests".into(),
            tenants,
            all,
            role: None,
            sid: None,
            scopes: Vec::new(),
            exp: now.saturating_add_signed(exp_in),
            iat: now,
        })
        .unwrap()
}
pub const MASTER_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A control plane running inside the test process.
pub struct Plane {
    pub endpoint: String,
    pub catalog_db: String,
    /// Superuser URL of this plane's ingest database (the durable inbox).
    pub ingest_url: String,
    /// Token of the operator `router-tests` (role admin).
    pub admin_token: String,
    /// Directory credential the test routers use (a router registered for every server).
    pub router_token: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Its settings' sequence number (replicas share it).
    seq: u32,
}

impl Plane {
    pub async fn start() -> Plane {
        Plane::start_with("").await
    }

    /// A control plane whose configuration ends with `extra` (TOML sections).
    pub async fn start_with(extra: &str) -> Plane {
        let pg = pg_harness::shared();
        let catalog_db = pg.fresh_database("rt_catalog").await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        Plane::start_on(pg, catalog_db, listener, port, extra, None).await
    }

    /// A control plane whose catalog lives on `pg` (a server the test may stop).
    pub async fn start_with_catalog_on(pg: &pg_harness::PgServer) -> Plane {
        let catalog_db = pg.fresh_database("rt_catalog").await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        Plane::start_on(pg, catalog_db, listener, port, "", None).await
    }

    /// Another control-plane replica on the same catalog and ingest database.
    pub async fn replica(&self) -> Plane {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.replica_on(listener).await
    }

    /// Stops this replica gracefully and starts it again on the same address (a rolling
    /// restart: routers configured with its endpoint find it there again).
    pub async fn restart(&mut self) {
        self.stop().await;
        let port: u16 = self.endpoint.rsplit(':').next().unwrap().parse().unwrap();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        *self = self.replica_on(listener).await;
    }

    async fn replica_on(&self, listener: tokio::net::TcpListener) -> Plane {
        let port = listener.local_addr().unwrap().port();
        Plane::start_on(
            pg_harness::shared(),
            self.catalog_db.clone(),
            listener,
            port,
            "",
            Some((self.ingest_url.clone(), self.seq)),
        )
        .await
    }

    /// Stops the control plane at once, as a crash would: its connections just end.
    pub fn kill(&mut self) {
        self.stop.take();
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    async fn start_on(
        pg: &pg_harness::PgServer,
        catalog_db: String,
        listener: tokio::net::TcpListener,
        port: u16,
        extra: &str,
        replica_of: Option<(String, u32)>,
    ) -> Plane {
        // A replica shares the first one's settings (name prefixes) and ingest database.
        let (ingest_url, n) = match replica_of {
            Some((url, n)) => (Some(url), n),
            None => (None, SEQ.fetch_add(1, Ordering::Relaxed)),
        };
        let ca = pg_harness::test_ca().unwrap();
        let (cert, key) = ca.issue(&format!("rt-control-plane-{n}")).unwrap();
        let ingest_url = match ingest_url {
            Some(u) => u,
            None => pg_harness::fresh_ingest().await.unwrap(),
        };
        // Router tests give routers the whole budget (no jobs slice) unless they say.
        let leases = if extra.contains("[leases]") {
            ""
        } else {
            "[leases]\njobs_connections = 0\nrenew_ms = 200\n"
        };
        let toml = format!(
            "listen = \"127.0.0.1:{port}\"\ncatalog_url = \"{}\"\nmaster_key = \"{MASTER_KEY}\"\n\
             token_signing_key = \"{SIGNING_KEY}\"\n\
             [accounts]\nargon2_memory_kib = 8\nargon2_iterations = 1\n\
             [provisioning]\ntemplate_prefix = \"rtpl_{}_{n}\"\nname_prefix = \"rt{}_{n}\"\nrotation_grace_secs = 2\n\
             [ingest]\nurl = \"{}\"\n\
             [tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n[database_tls]\nca_file = \"{}\"\n{leases}{extra}",
            pg.url(&catalog_db),
            std::process::id(),
            std::process::id() % 100_000,
            ingest_url,
            cert.display(),
            key.display(),
            ca.ca_file.display(),
        );
        let path = std::env::temp_dir().join(format!("rt-cp-{}-{n}.toml", std::process::id()));
        std::fs::write(&path, toml).unwrap();
        let config = control_plane::Config::load(Some(&path)).unwrap();
        let admin_token = control_plane::bootstrap::operator_token(
            &config,
            "router-tests",
            control_plane::auth::Role::Admin,
            0,
        )
        .await
        .unwrap();
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            control_plane::server::run(config, listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        let mut plane = Plane {
            endpoint: format!("https://127.0.0.1:{port}"),
            admin_token,
            router_token: String::new(),
            catalog_db,
            ingest_url,
            stop: Some(stop),
            task: Some(task),
            seq: n,
        };
        // Router tests measure the router; the plan-limit tests set their own.
        pg_harness::lift_plan_limits(pg, &plane.catalog_db)
            .await
            .unwrap();
        plane.router_token = plane
            .admin()
            .await
            .add_router(plane.admin_req(cp::AddRouterRequest {
                name: format!("rt-router-{}", SEQ.fetch_add(1, Ordering::Relaxed)),
                servers: Vec::new(),
                all_servers: true,
                ttl_secs: 0,
            }))
            .await
            .unwrap()
            .into_inner()
            .token;
        plane
    }

    /// Rows of the inbox not applied yet.
    pub async fn pending(&self) -> i64 {
        inbox_pending(&self.ingest_url).await
    }

    /// Waits until every inbox row has been applied; panics after `within`.
    pub async fn drained(&self, within: Duration) {
        assert!(
            inbox_drained(&self.ingest_url, within).await,
            "inbox not drained within {within:?}"
        );
    }

    /// Stops the control plane and waits for it.
    pub async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }

    /// The accounts API (login, sessions).
    pub async fn auth(&self) -> proto::accounts::v1::auth_client::AuthClient<Channel> {
        proto::accounts::v1::auth_client::AuthClient::new(self.channel().await)
    }

    /// Lets the basic plan hold `n` users.
    pub async fn set_plan_users(&self, n: i32) {
        pg_harness::shared()
            .connect(&self.catalog_db)
            .await
            .unwrap()
            .execute("UPDATE planos SET max_usuarios = $1", &[&n])
            .await
            .unwrap();
    }

    pub async fn admin(&self) -> TenantAdminClient<Channel> {
        TenantAdminClient::new(self.channel().await)
    }

    /// A channel to the control plane, once it listens.
    pub async fn channel(&self) -> Channel {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(ch) = Channel::from_shared(self.endpoint.clone())
                .unwrap()
                .tls_config(client_tls())
                .unwrap()
                .connect()
                .await
            {
                return ch;
            }
            assert!(Instant::now() < deadline, "control plane did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn add_server(&self, name: &str, pg: &pg_harness::PgServer, budget: u32) {
        self.admin()
            .await
            .add_server(self.admin_req(cp::AddServerRequest {
                name: name.into(),
                host: "127.0.0.1".into(),
                port: u32::from(pg.port),
                admin_user: pg_harness::SUPERUSER.into(),
                admin_password: pg_harness::SUPERUSER_PASSWORD.into(),
                connection_budget: budget,
                capacity: 10_000,
            }))
            .await
            .unwrap();
    }

    pub async fn create(&self, slug: &str, sector: &str, server: &str) -> cp::Tenant {
        self.admin()
            .await
            .create_tenant(self.admin_req(cp::CreateTenantRequest {
                slug: slug.into(),
                name: format!("Empresa {slug}"),
                sector: {
                    use proto::model::ToWire;
                    tenant_model::Sector::parse(sector).unwrap().to_wire()
                },
                server: server.into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn token(&self, tenants: &[&str], all: bool) -> String {
        self.issue(tenants, all).await.token
    }

    /// A caller token minted (and recorded) by the control plane, with its id.
    pub async fn issue(&self, tenants: &[&str], all: bool) -> cp::IssueTokenResponse {
        self.issue_scoped(tenants, all, &[]).await
    }

    /// Like [`Plane::issue`], with scopes.
    pub async fn issue_scoped(
        &self,
        tenants: &[&str],
        all: bool,
        scopes: &[&str],
    ) -> cp::IssueTokenResponse {
        self.admin()
            .await
            .issue_token(self.admin_req(cp::IssueTokenRequest {
                tenants: tenants.iter().map(|s| s.to_string()).collect(),
                all,
                ttl_secs: 600,
                subject: "tests".into(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
            }))
            .await
            .unwrap()
            .into_inner()
    }

    /// Rotates a tenant's login password through the admin API.
    pub async fn rotate(&self, slug: &str) {
        let r = self
            .admin()
            .await
            .rotate_credentials(self.admin_req(cp::RotateRequest {
                tenants: vec![slug.into()],
                all: false,
                owners: false,
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.rotated, vec![slug.to_string()], "{r:?}");
    }

    /// The active login role's password, as the catalog holds it (sealed).
    pub async fn password_of(&self, slug: &str) -> String {
        let sealed: Vec<u8> = pg_harness::shared()
            .connect(&self.catalog_db)
            .await
            .unwrap()
            .query_one(
                "SELECT senha_cifrada FROM empresas WHERE slug = $1",
                &[&slug],
            )
            .await
            .unwrap()
            .get(0);
        control_plane::crypto::SecretBox::from_base64(MASTER_KEY)
            .unwrap()
            .open(&sealed, &format!("tenant:{slug}:password"))
            .unwrap()
    }

    /// Revokes a token through the admin API.
    pub async fn revoke(&self, token_id: &str) {
        self.admin()
            .await
            .revoke_token(self.admin_req(cp::RevokeTokenRequest {
                token_id: token_id.into(),
            }))
            .await
            .unwrap();
    }

    /// The database of a tenant, as the catalog records it.
    pub async fn database_of(&self, slug: &str) -> String {
        self.catalog_column(slug, "banco").await
    }

    /// The active login role of a tenant, as the catalog records it.
    pub async fn role_of(&self, slug: &str) -> String {
        self.catalog_column(slug, "papel").await
    }

    async fn catalog_column(&self, slug: &str, column: &str) -> String {
        pg_harness::shared()
            .connect(&self.catalog_db)
            .await
            .unwrap()
            .query_one(
                &format!("SELECT {column} FROM empresas WHERE slug = $1"),
                &[&slug],
            )
            .await
            .unwrap()
            .get(0)
    }

    pub async fn suspend(&self, slug: &str) {
        self.admin()
            .await
            .suspend_tenant(self.admin_req(cp::TenantRef {
                tenant: slug.into(),
            }))
            .await
            .unwrap();
    }

    pub async fn resume(&self, slug: &str) {
        self.admin()
            .await
            .resume_tenant(self.admin_req(cp::TenantRef {
                tenant: slug.into(),
            }))
            .await
            .unwrap();
    }
}

impl Drop for Plane {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Plane {
    /// A request carrying this plane's admin operator token.
    pub fn admin_req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.admin_token).parse().unwrap(),
        );
        r
    }
}

/// Superuser connection to an ingest database by URL.
pub async fn ingest_client(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// Inbox rows not applied yet.
pub async fn inbox_pending(url: &str) -> i64 {
    ingest_client(url)
        .await
        .query_one("SELECT count(*) FROM inbox WHERE aplicado_em IS NULL", &[])
        .await
        .unwrap()
        .get(0)
}

/// Whether every inbox row is applied within `within`.
pub async fn inbox_drained(url: &str, within: Duration) -> bool {
    let client = ingest_client(url).await;
    eventually(within, || async {
        client
            .query_one("SELECT count(*) FROM inbox WHERE aplicado_em IS NULL", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 0
    })
    .await
}

/// A running tenant-router binary.
pub struct Router {
    child: Child,
    pub grpc: String,
    pub http: String,
    /// Its control plane's ingest database (superuser URL).
    pub ingest_url: String,
}

impl Router {
    pub async fn start(plane: &Plane, env: &[(&str, &str)]) -> Router {
        let ca = pg_harness::test_ca().unwrap();
        let (cert, key) = ca
            .issue(&format!("router-{}", SEQ.fetch_add(1, Ordering::Relaxed)))
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenant-router"));
        cmd.env("TENANT_ROUTER__GRPC_LISTEN", "127.0.0.1:0")
            .env("TENANT_ROUTER__HTTP_LISTEN", "127.0.0.1:0")
            .env("TENANT_ROUTER__CONTROL_PLANE_ENDPOINT", &plane.endpoint)
            .env("TENANT_ROUTER__DIRECTORY_TOKEN", &plane.router_token)
            .env("TENANT_ROUTER__TOKEN_VERIFYING_KEY", verifying_key())
            // TLS everywhere, verified against the test CA.
            .env("TENANT_ROUTER__CONTROL_PLANE_TLS__CA_FILE", &ca.ca_file)
            .env("TENANT_ROUTER__DATABASE_TLS__CA_FILE", &ca.ca_file)
            .env("TENANT_ROUTER__TLS__CERT_FILE", &cert)
            .env("TENANT_ROUTER__TLS__KEY_FILE", &key)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        // "listening grpc=ADDR http=ADDR", printed once both sockets are bound.
        let line = {
            use std::io::BufRead;
            let mut line = String::new();
            std::io::BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            line
        };
        let addr = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap_or_else(|| panic!("router did not start: {line:?}"))
                .to_string()
        };
        let router = Router {
            child,
            grpc: format!("https://{}", addr("grpc=")),
            http: addr("http="),
            ingest_url: plane.ingest_url.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Channel::from_shared(router.grpc.clone())
            .unwrap()
            .tls_config(client_tls())
            .unwrap()
            .connect()
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "router did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        router
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.grpc.clone())
            .unwrap()
            .tls_config(client_tls())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks it to stop (SIGTERM): it stops accepting, drains its calls and exits.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// GET over plain HTTP/1.1; returns (status, body).
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(&self.http).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.unwrap();
        let status = buf.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = buf
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A domain request for `tenant` with `token`.
pub fn call<T>(msg: T, tenant: &str, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("x-tenant", tenant.parse().unwrap());
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

pub fn upsert(phone: &str, name: &str) -> dm::UpsertLeadRequest {
    dm::UpsertLeadRequest {
        phone: phone.into(),
        name: name.into(),
        ..Default::default()
    }
}

/// Connections tenant roles hold to a server right now.
pub async fn tenant_connections(pg: &pg_harness::PgServer) -> i64 {
    login_backends(pg, "true").await
}

/// Backends of tenants' login roles running a statement now.
pub async fn active_statements(pg: &pg_harness::PgServer) -> i64 {
    login_backends(pg, "state = 'active'").await
}

async fn login_backends(pg: &pg_harness::PgServer, and: &str) -> i64 {
    let c = pg.connect("postgres").await.unwrap();
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE usename LIKE '%\\_login\\_%' AND {and}"
    );
    c.query_one(&sql, &[]).await.unwrap().get(0)
}

/// Holds `LOCK TABLE leads` in the tenant's database (until the returned session ends it),
/// so the router's writes to leads wait.
pub async fn lock_leads(
    pg: &pg_harness::PgServer,
    plane: &Plane,
    slug: &str,
) -> tokio_postgres::Client {
    let blocker = pg.connect(&plane.database_of(slug).await).await.unwrap();
    blocker
        .batch_execute("BEGIN; LOCK TABLE leads IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    blocker
}

pub use pg_harness::eventually;

/// Client TLS trusting the test CA (control plane and routers serve gRPC over TLS).
pub fn client_tls() -> tonic::transport::ClientTlsConfig {
    let ca = std::fs::read(&pg_harness::test_ca().unwrap().ca_file).unwrap();
    tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
}
