//! What the router benchmarks share: a throwaway PostgreSQL server, the control plane
//! in-process (real gRPC), router binaries, and a keep-alive HTTP/1.1 webhook sender.
#![allow(dead_code)]

use hmac::{Hmac, Mac};
use proto::control::v1 as cp;
use sha2::Sha256;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

pub const SECRET: &str = "bench-app-secret-0123456789";
pub const SIGNING_KEY: &str = "YmVuY2gtc2lnbmluZy1rZXktMDEyMzQ1Njc4OWFiY2Q=";

/// A numeric command-line option (`--name N`), or its default.
pub fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `p` quantile (0..=1) of sorted samples.
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub fn admin_req<T>(m: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(m);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// A Meta delivery of `per` text messages to business number `pnid`.
pub fn delivery(pnid: &str, seq: usize, per: usize) -> Vec<u8> {
    let messages: Vec<serde_json::Value> = (0..per)
        .map(|i| {
            serde_json::json!({"from": format!("55119{:08}", (seq * 7 + i) % 5000), "id": format!("wamid.{pnid}.{seq}.{i}"),
                "timestamp": "1763800000", "type": "text", "text": {"body": "quero saber o preço"}})
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({"object": "whatsapp_business_account", "entry": [{"id": "W", "changes": [
        {"field": "messages", "value": {"metadata": {"phone_number_id": pnid},
         "contacts": [{"wa_id": "5511900000000", "profile": {"name": "Cliente"}}], "messages": messages}}]}]}))
    .unwrap()
}

fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// One keep-alive HTTP/1.1 connection to a router's webhook endpoint.
pub struct Conn {
    reader: BufReader<tokio::net::TcpStream>,
}

impl Conn {
    pub async fn open(http: &str) -> Conn {
        let s = tokio::net::TcpStream::connect(http).await.unwrap();
        s.set_nodelay(true).unwrap();
        Conn {
            reader: BufReader::new(s),
        }
    }

    /// Posts a signed delivery; the answer's status.
    pub async fn post(&mut self, body: &[u8]) -> u16 {
        let head = format!(
            "POST /webhooks/whatsapp HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n\
             X-Hub-Signature-256: {}\r\nContent-Length: {}\r\n\r\n",
            sign(body),
            body.len()
        );
        let s = self.reader.get_mut();
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).await.unwrap();
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h).await.unwrap();
            if h == "\r\n" || h.is_empty() {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut buf = vec![0; len];
        self.reader.read_exact(&mut buf).await.unwrap();
        status
    }
}

/// A running router binary.
pub struct RouterProc {
    child: Child,
    pub http: String,
    pub grpc: String,
}

impl Drop for RouterProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// PostgreSQL, the control plane and its admin client.
pub struct Stack {
    pub pg: pg_harness::PgServer,
    pub admin: cp::tenant_admin_client::TenantAdminClient<tonic::transport::Channel>,
    /// An admin operator's token.
    pub token: String,
    endpoint: String,
    router_token: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), control_plane::server::ServeError>>>,
}

impl Stack {
    /// Starts PostgreSQL and the control plane, registers the server (with a router
    /// connection budget of `budget`) and one router identity for every server.
    pub async fn start(budget: u32) -> Stack {
        Stack::start_with(budget, &[]).await
    }

    /// Like [`Stack::start`], the tenant server started with `settings` (`pg_harness::DURABLE`
    /// for one with fsync on).
    pub async fn start_with(budget: u32, settings: &[(&str, &str)]) -> Stack {
        let pg = pg_harness::PgServer::start_with(settings).unwrap();
        let catalog = pg.fresh_database("bench_catalog").await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cp_addr = listener.local_addr().unwrap();
        let path = std::env::temp_dir().join(format!("bench-cp-{}.toml", std::process::id()));
        // No scheduled backups: a fleet backup 300 s in would land in a long run's later
        // phases (and its files in the working directory).
        let backup_store =
            std::env::temp_dir().join(format!("bench-backups-{}", std::process::id()));
        std::fs::write(
            &path,
            format!(
                "listen = \"{cp_addr}\"\ncatalog_url = \"{}\"\nmaster_key = \"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\"\n\
                 token_signing_key = \"{SIGNING_KEY}\"\n[ingest]\nurl = \"{}\"\n[leases]\njobs_connections = 0\n\
                 [backup]\nschedule_every_secs = 0\n[backup.store]\nlocation = \"{}\"\n",
                pg.url(&catalog),
                pg_harness::fresh_ingest().await.unwrap(),
                backup_store.display()
            ),
        )
        .unwrap();
        let config = control_plane::Config::load(Some(&path)).unwrap();
        let token = control_plane::bootstrap::operator_token(
            &config,
            "bench",
            control_plane::auth::Role::Admin,
            0,
        )
        .await
        .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(control_plane::server::run(config, listener, async {
            let _ = stopped.await;
        }));
        let endpoint = format!("http://{cp_addr}");
        let mut admin = loop {
            if let Ok(c) =
                cp::tenant_admin_client::TenantAdminClient::connect(endpoint.clone()).await
            {
                break c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        admin
            .add_server(admin_req(
                cp::AddServerRequest {
                    name: "bench".into(),
                    host: "127.0.0.1".into(),
                    port: u32::from(pg.port),
                    admin_user: pg_harness::SUPERUSER.into(),
                    admin_password: pg_harness::SUPERUSER_PASSWORD.into(),
                    connection_budget: budget,
                    capacity: 100_000,
                },
                &token,
            ))
            .await
            .unwrap();
        pg_harness::lift_plan_limits(&pg, &catalog).await.unwrap();
        let router_token = admin
            .add_router(admin_req(
                cp::AddRouterRequest {
                    name: "bench".into(),
                    servers: Vec::new(),
                    all_servers: true,
                    ttl_secs: 0,
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner()
            .token;
        Stack {
            pg,
            admin,
            token,
            endpoint,
            router_token,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Provisions a tenant (sector varejo) with a WhatsApp business number.
    pub async fn create_tenant(&self, slug: &str, phone_number_id: &str) -> cp::Tenant {
        self.admin
            .clone()
            .create_tenant(admin_req(
                cp::CreateTenantRequest {
                    slug: slug.into(),
                    name: "Bench".into(),
                    sector: cp::Sector::Varejo as i32,
                    phone_number_id: phone_number_id.into(),
                    ..Default::default()
                },
                &self.token,
            ))
            .await
            .unwrap()
            .into_inner()
    }

    /// Starts the release router binary beside this example, webhooks on.
    pub fn router(&self) -> RouterProc {
        self.router_with(&[])
    }

    /// Like [`Stack::router`], with extra `TENANT_ROUTER__*` settings.
    pub fn router_with(&self, env: &[(&str, String)]) -> RouterProc {
        let exe = std::env::current_exe().unwrap();
        let bin = exe
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("tenant-router");
        let mut child = Command::new(bin)
            .env("TENANT_ROUTER__GRPC_LISTEN", "127.0.0.1:0")
            .env("TENANT_ROUTER__HTTP_LISTEN", "127.0.0.1:0")
            .env("TENANT_ROUTER__CONTROL_PLANE_ENDPOINT", &self.endpoint)
            .env("TENANT_ROUTER__DIRECTORY_TOKEN", &self.router_token)
            .env(
                "TENANT_ROUTER__TOKEN_VERIFYING_KEY",
                caller_auth::Signer::from_base64(SIGNING_KEY)
                    .unwrap()
                    .public_base64(),
            )
            .env("TENANT_ROUTER__WEBHOOK__APP_SECRET", SECRET)
            .env("TENANT_ROUTER__WEBHOOK__VERIFY_TOKEN", "bench")
            .env("RUST_LOG", "error")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let line = {
            use std::io::BufRead;
            let mut l = String::new();
            std::io::BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut l)
                .unwrap();
            l
        };
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap()
                .to_string()
        };
        RouterProc {
            http: field("http="),
            grpc: field("grpc="),
            child,
        }
    }

    /// A caller token granting every tenant.
    pub fn caller_token(&self) -> String {
        let now = caller_auth::now_secs();
        caller_auth::Signer::from_base64(SIGNING_KEY)
            .unwrap()
            .sign(&caller_auth::Claims {
                jti: format!("bench-{now}"),
                kind: caller_auth::Kind::Caller,
                sub: "bench".into(),
                tenants: Vec::new(),
                all: true,
                role: None,
                sid: None,
                scopes: Vec::new(),
                exp: now + 3_600,
                iat: now,
            })
            .unwrap()
    }

    /// Stops the control plane.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}
