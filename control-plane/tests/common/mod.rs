//! Test support: a real control-plane process over a fresh catalog database on a real
//! PostgreSQL server, driven through the real `tenantctl` binary and real gRPC.
#![allow(clippy::unwrap_used, dead_code)]

use pg_harness::PgServer;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Base64 of the 32-byte Ed25519 seed the test control planes sign tokens with.
pub const SIGNING_KEY: &str = "c2lnbmluZy1rZXktZm9yLXRlc3RzLTAxMjM0NTY3ODk=";
pub const MASTER_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A running control plane.
pub struct Plane {
    child: Child,
    pub endpoint: String,
    pub catalog_db: String,
    pub template_prefix: String,
    /// Prefix of this plane's tenant database and role names.
    pub name_prefix: String,
    /// Token of the operator `test-admin` (role admin), made with `control-plane
    /// operator-token` as a fresh deployment would.
    pub admin_token: String,
    /// Directory credential of the router `test-router` (every server).
    pub router_token: String,
    /// The plane's backup store (a local directory unless a test configures S3).
    pub backup_dir: std::path::PathBuf,
    env: Vec<(String, String)>,
}

/// `control-plane operator-token`: registers the operator if needed, prints a token.
fn operator_token(env: &[(String, String)], name: &str, role: &str) -> String {
    let mut cmd = control_plane_cmd();
    cmd.args(["operator-token", "--name", name, "--role", role]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "operator-token: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Starts a control-plane process; returns it with its endpoint once its socket is bound.
fn spawn_plane(env: &[(String, String)]) -> (Child, String) {
    let mut cmd = control_plane_cmd();
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let addr = listening_line(&mut child)
        .trim_start_matches("listening ")
        .to_string();
    (child, format!("https://{addr}"))
}

/// The control plane's Prometheus exposition from its `metrics_listen` address.
pub fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// What one tenantctl invocation did.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// The first stdout line of a daemon (`listening ...`, printed once its sockets are bound).
pub fn listening_line(child: &mut Child) -> String {
    use std::io::BufRead;
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with("listening "),
        "daemon did not start: {line:?}"
    );
    line.trim().to_string()
}

pub fn control_plane_cmd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_control-plane"))
}

impl Plane {
    /// Starts a control plane whose catalog lives on the shared test server.
    pub async fn start() -> Plane {
        Plane::start_with(&[]).await
    }

    /// Same, with extra `CONTROL_PLANE__*` variables.
    pub async fn start_with(extra: &[(&str, &str)]) -> Plane {
        let pg = pg_harness::shared();
        let catalog_db = pg.fresh_database("catalog").await.unwrap();
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let template_prefix = format!("tpl_{}_{n}", std::process::id());
        let name_prefix = format!("t{}_{n}", std::process::id() % 100_000);
        let ca = pg_harness::test_ca().unwrap();
        let tls = ca.issue(&format!("control-plane-{n}")).unwrap();
        let backup_dir =
            std::env::temp_dir().join(format!("cp-backups-{}-{n}", std::process::id()));
        let mut env: Vec<(String, String)> = [
            ("CONTROL_PLANE__LISTEN", "127.0.0.1:0".to_string()),
            ("CONTROL_PLANE__CATALOG_URL", pg.url(&catalog_db)),
            (
                "CONTROL_PLANE__INGEST__URL",
                pg_harness::fresh_ingest().await.unwrap(),
            ),
            ("CONTROL_PLANE__MASTER_KEY", MASTER_KEY.into()),
            ("CONTROL_PLANE__TOKEN_SIGNING_KEY", SIGNING_KEY.into()),
            (
                "CONTROL_PLANE__PROVISIONING__TEMPLATE_PREFIX",
                template_prefix.clone(),
            ),
            (
                "CONTROL_PLANE__PROVISIONING__NAME_PREFIX",
                name_prefix.clone(),
            ),
            (
                "CONTROL_PLANE__PROVISIONING__CONNECT_TIMEOUT_MS",
                "2000".into(),
            ),
            ("RUST_LOG", "warn".into()),
            // Cheap password hashing in tests (production costs are the defaults).
            ("CONTROL_PLANE__ACCOUNTS__ARGON2_MEMORY_KIB", "8".into()),
            ("CONTROL_PLANE__ACCOUNTS__ARGON2_ITERATIONS", "1".into()),
            // Backups only when a test asks (or turns scheduling on).
            ("CONTROL_PLANE__BACKUP__SCHEDULE_EVERY_SECS", "0".into()),
            (
                "CONTROL_PLANE__BACKUP__STORE__LOCATION",
                backup_dir.display().to_string(),
            ),
            (
                "CONTROL_PLANE__BACKUP__PG_BIN_DIR",
                pg_harness::pg_bindir().unwrap().display().to_string(),
            ),
            // TLS everywhere, verified against the test CA: gRPC and PostgreSQL.
            ("CONTROL_PLANE__TLS__CERT_FILE", tls.0.display().to_string()),
            ("CONTROL_PLANE__TLS__KEY_FILE", tls.1.display().to_string()),
            (
                "CONTROL_PLANE__DATABASE_TLS__CA_FILE",
                ca.ca_file.display().to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let (child, endpoint) = spawn_plane(&env);
        let admin_token = operator_token(&env, "test-admin", "admin");
        let mut plane = Plane {
            child,
            endpoint,
            catalog_db,
            template_prefix,
            name_prefix,
            admin_token,
            router_token: String::new(),
            backup_dir,
            env,
        };
        plane.wait_ready();
        plane.router_token = plane
            .ok(&["router", "add", "test-router", "--all-servers"])
            .stdout
            .trim()
            .to_string();
        plane
    }

    /// A token of a new or existing operator `name` (bootstrap path).
    pub fn operator_token(&self, name: &str, role: &str) -> String {
        operator_token(&self.env, name, role)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.ctl(&["server", "list"]).code == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "control plane did not become ready"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs the control-plane binary once with this plane's settings, some overridden, and
    /// `args` (a subcommand such as `operator-token`).
    pub fn run_binary(&self, overrides: &[(&str, &str)], args: &[&str]) -> std::process::Output {
        let mut cmd = control_plane_cmd();
        cmd.args(args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for (k, v) in overrides {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    /// Restarts the control plane on the same catalog with some settings changed.
    pub fn restart_with(&mut self, overrides: &[(&str, &str)]) {
        for (k, v) in overrides {
            self.env.retain(|(name, _)| name != k);
            self.env.push((k.to_string(), v.to_string()));
        }
        self.crash_and_restart();
    }

    /// Kills the control plane at once (SIGKILL: a crash) and starts it again on the same
    /// catalog.
    pub fn crash_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, endpoint) = spawn_plane(&self.env);
        self.child = child;
        self.endpoint = endpoint;
        self.wait_ready();
    }

    /// A token of a new operator `name` with the viewer role (it may read, not change).
    pub fn viewer_token(&self, name: &str) -> String {
        self.ok(&["operator", "add", name, "--role", "viewer"])
            .stdout
            .trim()
            .to_string()
    }

    /// Runs tenantctl with another operator's token.
    pub fn ctl_as(&self, token: &str, args: &[&str]) -> Out {
        self.ctl_env(args, &[("TENANTCTL_TOKEN", token)], None)
    }

    /// The control plane's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs tenantctl against this control plane.
    pub fn ctl(&self, args: &[&str]) -> Out {
        self.ctl_env(args, &[], None)
    }

    /// A tenantctl command aimed at this control plane (TLS verified against the test CA)
    /// as its admin operator.
    pub fn tenantctl(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenantctl"));
        cmd.env("TENANTCTL_ENDPOINT", &self.endpoint)
            .env("TENANTCTL_CA_FILE", &pg_harness::test_ca().unwrap().ca_file)
            .env("TENANTCTL_TOKEN", &self.admin_token);
        cmd
    }

    /// Runs tenantctl with extra environment and optional stdin.
    pub fn ctl_env(&self, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Out {
        let mut cmd = self.tenantctl();
        cmd.args(args)
            .env_remove("TENANTCTL_ADMIN_PASSWORD")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// tenantctl that must succeed.
    pub fn ok(&self, args: &[&str]) -> Out {
        let out = self.ctl(args);
        assert_eq!(out.code, 0, "tenantctl {args:?} failed: {out:?}");
        out
    }

    /// Registers a harness server under `name` with its superuser.
    pub fn add_server(&self, name: &str, pg: &PgServer, capacity: u32) {
        let port = pg.port.to_string();
        let cap = capacity.to_string();
        let out = self.ctl_env(
            &[
                "server",
                "add",
                name,
                "--host",
                "127.0.0.1",
                "--port",
                &port,
                "--admin-user",
                pg_harness::SUPERUSER,
                "--capacity",
                &cap,
            ],
            &[("TENANTCTL_ADMIN_PASSWORD", pg_harness::SUPERUSER_PASSWORD)],
            None,
        );
        assert_eq!(out.code, 0, "server add: {out:?}");
    }

    /// Superuser connection to this plane's ingest database (the message pipeline).
    pub async fn ingest(&self) -> tokio_postgres::Client {
        let url = self
            .env
            .iter()
            .find(|(k, _)| k == "CONTROL_PLANE__INGEST__URL")
            .map(|(_, v)| v.clone())
            .unwrap();
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    }

    /// Superuser connection to this plane's catalog.
    pub async fn catalog(&self) -> tokio_postgres::Client {
        pg_harness::shared()
            .connect(&self.catalog_db)
            .await
            .unwrap()
    }

    /// The database of a tenant, as the catalog records it.
    pub async fn database_of(&self, slug: &str) -> String {
        self.catalog()
            .await
            .query_one("SELECT banco FROM empresas WHERE slug = $1", &[&slug])
            .await
            .unwrap()
            .get(0)
    }

    /// Databases and roles on `pg` named like this plane's tenants.
    pub async fn tenant_objects_on(&self, pg: &PgServer) -> Vec<String> {
        let c = pg.connect("postgres").await.unwrap();
        let pattern = format!("{}\\_%", self.name_prefix);
        c.query(
            "SELECT datname::text FROM pg_database WHERE datname LIKE $1 \
             UNION ALL SELECT rolname::text FROM pg_roles WHERE rolname LIKE $1 ORDER BY 1",
            &[&pattern],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    }

    /// A gRPC channel to the control plane.
    pub async fn channel(&self) -> tonic::transport::Channel {
        let ca = std::fs::read(&pg_harness::test_ca().unwrap().ca_file).unwrap();
        tonic::transport::Channel::from_shared(self.endpoint.clone())
            .unwrap()
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
            )
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Sends SIGTERM and waits for the exit status (None if it did not exit in time).
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Plane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A request carrying a bearer token.
pub fn authed<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

/// Whether a database exists on `pg`.
pub async fn database_exists(pg: &PgServer, name: &str) -> bool {
    let c = pg.connect("postgres").await.unwrap();
    c.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .unwrap()
        .is_some()
}

/// Whether a role exists on `pg`.
pub async fn role_exists(pg: &PgServer, name: &str) -> bool {
    let c = pg.connect("postgres").await.unwrap();
    c.query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name])
        .await
        .unwrap()
        .is_some()
}

/// What takes a database of the common set back to V1 (undoes V3 and V2).
pub const UNDO_TO_V1: &str = "DROP TRIGGER eventos_mensagens_novas ON mensagens; \
     DROP TRIGGER eventos_mensagens_status ON mensagens; \
     DROP TRIGGER eventos_leads_novos ON leads; \
     DROP FUNCTION eventos_mensagens_novas(), eventos_mensagens_status(), eventos_leads_novos(); \
     DROP TABLE eventos_saida; \
     ALTER TABLE leads DROP COLUMN tags; DROP INDEX conversas_recentes_idx; \
     DELETE FROM refinery_schema_history WHERE version IN (2, 3)";

/// Turns a tenant back into what the first release (common set at V1) provisioned:
/// undoes V3 and V2 in its database and records version 1 in the catalog.
pub async fn age_to_v1(plane: &Plane, pg: &PgServer, slug: &str) {
    let db = plane.database_of(slug).await;
    let c = pg.connect(&db).await.unwrap();
    c.batch_execute(UNDO_TO_V1).await.unwrap();
    plane
        .catalog()
        .await
        .execute(
            "UPDATE empresas SET schema_version = 1 WHERE slug = $1",
            &[&slug],
        )
        .await
        .unwrap();
}

/// Connects to `database` on `pg` with explicit credentials.
pub async fn connect_as(
    pg: &PgServer,
    user: &str,
    password: &str,
    database: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(pg.port)
        .user(user)
        .password(password)
        .dbname(database);
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// The tenant's credentials as routers get them (TenantDirectory.Resolve).
pub async fn route(plane: &Plane, slug: &str) -> proto::control::v1::Route {
    use proto::control::v1::{
        resolve_request::Key, tenant_directory_client::TenantDirectoryClient, ResolveRequest,
    };
    let mut dir = TenantDirectoryClient::new(plane.channel().await);
    dir.resolve(authed(
        ResolveRequest {
            key: Some(Key::Slug(slug.into())),
        },
        &plane.router_token,
    ))
    .await
    .unwrap()
    .into_inner()
}

/// Password of the legacy role [`make_legacy`] gives a tenant.
pub const LEGACY_PASSWORD: &str = "legacy-role-password";

/// Turns a tenant into what the first release provisioned: a database `emp_<slug>` owned
/// by the one role `emp_<slug>_app` (password [`LEGACY_PASSWORD`]) that routers held, and
/// a catalog row of the legacy role model. Returns the legacy database's name.
pub async fn make_legacy(plane: &Plane, pg: &PgServer, slug: &str) -> String {
    let catalog = plane.catalog().await;
    let row = catalog
        .query_one(
            "SELECT banco, papel_dono, papel, papel_reserva FROM empresas WHERE slug = $1",
            &[&slug],
        )
        .await
        .unwrap();
    let (db, owner, a, b): (String, String, String, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let legacy_db = format!("emp_{}", slug.replace('-', "_"));
    let legacy = format!("{legacy_db}_app");
    let admin = pg.connect("postgres").await.unwrap();
    admin
        .batch_execute(&format!(
            "CREATE ROLE {legacy} LOGIN PASSWORD '{LEGACY_PASSWORD}';
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}';
             ALTER DATABASE {db} RENAME TO {legacy_db};
             ALTER DATABASE {legacy_db} OWNER TO {legacy};
             REVOKE ALL ON DATABASE {legacy_db} FROM {a}, {b};
             GRANT CONNECT, TEMPORARY ON DATABASE {legacy_db} TO {legacy};"
        ))
        .await
        .unwrap();
    let inside = pg.connect(&legacy_db).await.unwrap();
    inside
        .batch_execute(&format!(
            "REASSIGN OWNED BY {owner} TO {legacy}; DROP OWNED BY {a}, {b}, {owner}"
        ))
        .await
        .unwrap();
    drop(inside);
    admin
        .batch_execute(&format!("DROP ROLE {a}; DROP ROLE {b}; DROP ROLE {owner}"))
        .await
        .unwrap();
    let sealed = control_plane::crypto::SecretBox::from_base64(MASTER_KEY)
        .unwrap()
        .seal(LEGACY_PASSWORD, &format!("tenant:{slug}:password"))
        .unwrap();
    catalog
        .execute(
            "UPDATE empresas SET modelo_papeis = 1, banco = $2, papel = $3, senha_cifrada = $4, \
             papel_dono = NULL, senha_dono_cifrada = NULL, papel_reserva = NULL WHERE slug = $1",
            &[&slug, &legacy_db, &legacy, &sealed],
        )
        .await
        .unwrap();
    legacy_db
}

/// Lock requests waiting right now on `c`'s server; only those in `c`'s database when
/// `this_database` (a server other tests share).
pub async fn lock_waiters(c: &tokio_postgres::Client, this_database: bool) -> i64 {
    c.query_one(
        "SELECT count(*) FROM pg_locks l WHERE NOT l.granted AND (NOT $1 OR l.database = \
           (SELECT oid FROM pg_database WHERE datname = current_database()))",
        &[&this_database],
    )
    .await
    .unwrap()
    .get(0)
}

/// Starts tenantctl with `args` in the background (its output dropped).
pub fn spawn_ctl(plane: &Plane, args: &[&str]) -> Child {
    plane
        .tenantctl()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}
