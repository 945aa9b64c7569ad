//! Webhook ingest benchmark (run it through `scripts/bench-webhook.sh`).
//!
//! Starts a throwaway PostgreSQL server, the control plane (in-process, real gRPC) and the
//! real tenant-router binary, provisions tenants with WhatsApp numbers, then posts signed
//! Meta deliveries from concurrent keep-alive HTTP/1.1 senders spread over every tenant.
//! Prints messages per second and the time to answer (p50/p95/p99) as a Markdown table.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use hmac::{Hmac, Mac};
use proto::control::v1 as cp;
use sha2::Sha256;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const SECRET: &str = "bench-app-secret-0123456789";
const SIGNING_KEY: &str = "YmVuY2gtc2lnbmluZy1rZXktMDEyMzQ1Njc4OWFiY2Q=";

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn admin_req<T>(m: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(m);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

fn delivery(pnid: &str, seq: usize, per: usize) -> Vec<u8> {
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

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    reader: BufReader<tokio::net::TcpStream>,
}

impl Conn {
    async fn post(&mut self, body: &[u8]) -> u16 {
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

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let tenants = arg("--tenants", 100);
    let senders = arg("--senders", 32);
    let seconds = arg("--seconds", 15);
    let per = arg("--per-delivery", 1);
    let budget = arg("--budget", 80) as u32;

    let pg = pg_harness::PgServer::start().unwrap();
    let catalog = pg.fresh_database("bench_catalog").await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cp_addr = listener.local_addr().unwrap();
    let path = std::env::temp_dir().join(format!("bench-cp-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        format!(
            "listen = \"{cp_addr}\"\ncatalog_url = \"{}\"\nmaster_key = \"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\"\n\
             token_signing_key = \"{SIGNING_KEY}\"\n",
            pg.url(&catalog)
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
    let (stop_cp, stopped) = tokio::sync::oneshot::channel::<()>();
    let cp_task = tokio::spawn(control_plane::server::run(config, listener, async {
        let _ = stopped.await;
    }));
    let endpoint = format!("http://{cp_addr}");
    let mut admin = loop {
        if let Ok(c) = cp::tenant_admin_client::TenantAdminClient::connect(endpoint.clone()).await {
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
    let setup = Instant::now();
    let mut jobs = tokio::task::JoinSet::new();
    for w in 0..4 {
        let mut admin = admin.clone();
        let token = token.clone();
        jobs.spawn(async move {
            for i in (w..tenants).step_by(4) {
                admin
                    .create_tenant(admin_req(
                        cp::CreateTenantRequest {
                            slug: format!("wh-bench-{i}"),
                            name: "Bench".into(),
                            sector: proto::control::v1::Sector::Varejo as i32,
                            phone_number_id: format!("{}", 700_000_000 + i),
                            ..Default::default()
                        },
                        &token,
                    ))
                    .await
                    .unwrap();
            }
        });
    }
    while jobs.join_next().await.is_some() {}
    eprintln!(
        "{tenants} tenants provisioned in {:.1} s",
        setup.elapsed().as_secs_f64()
    );

    let exe = std::env::current_exe().unwrap();
    let router_bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("tenant-router");
    let mut router = Command::new(router_bin)
        .env("TENANT_ROUTER__GRPC_LISTEN", "127.0.0.1:0")
        .env("TENANT_ROUTER__HTTP_LISTEN", "127.0.0.1:0")
        .env("TENANT_ROUTER__CONTROL_PLANE_ENDPOINT", &endpoint)
        .env("TENANT_ROUTER__DIRECTORY_TOKEN", &router_token)
        .env(
            "TENANT_ROUTER__TOKEN_VERIFYING_KEY",
            caller_auth::Signer::from_base64(SIGNING_KEY)
                .unwrap()
                .public_base64(),
        )
        .env("TENANT_ROUTER__WEBHOOK__APP_SECRET", SECRET)
        .env("TENANT_ROUTER__WEBHOOK__VERIFY_TOKEN", "bench")
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let line = {
        use std::io::BufRead;
        let mut l = String::new();
        std::io::BufReader::new(router.stdout.take().unwrap())
            .read_line(&mut l)
            .unwrap();
        l
    };
    let http = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http="))
        .unwrap()
        .to_string();

    // Warm every tenant's route and pool once, then measure.
    for t in 0..tenants {
        let s = tokio::net::TcpStream::connect(&http).await.unwrap();
        let mut c = Conn {
            reader: BufReader::new(s),
        };
        assert_eq!(
            c.post(&delivery(
                &format!("{}", 700_000_000 + t),
                usize::MAX - t,
                1
            ))
            .await,
            200
        );
    }
    let deadline = Instant::now() + Duration::from_secs(seconds as u64);
    let started = Instant::now();
    let mut senders_set = tokio::task::JoinSet::new();
    for w in 0..senders {
        let http = http.clone();
        senders_set.spawn(async move {
            let s = tokio::net::TcpStream::connect(&http).await.unwrap();
            s.set_nodelay(true).unwrap();
            let mut c = Conn {
                reader: BufReader::new(s),
            };
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut seq = w;
            while Instant::now() < deadline {
                let pnid = format!("{}", 700_000_000 + (seq * 31) % tenants);
                let body = delivery(&pnid, seq, per);
                let t0 = Instant::now();
                if c.post(&body).await != 200 {
                    errors += 1;
                }
                lat.push(t0.elapsed().as_secs_f64() * 1000.0);
                seq += senders;
            }
            (lat, errors)
        });
    }
    let mut all = Vec::new();
    let mut errors = 0;
    while let Some(r) = senders_set.join_next().await {
        let (l, e) = r.unwrap();
        all.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let deliveries = all.len();
    let c = pg.connect("postgres").await.unwrap();
    let _ = c.query_one("SELECT 1", &[]).await;
    println!("| senders | tenants | budget | messages/delivery | deliveries | messages/s | p50 | p95 | p99 | errors |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {senders} | {tenants} | {budget} | {per} | {deliveries} | {:.0} | {:.1} ms | {:.1} ms | {:.1} ms | {errors} |",
        (deliveries * per) as f64 / elapsed,
        pct(&all, 0.5),
        pct(&all, 0.95),
        pct(&all, 0.99)
    );
    let _ = router.kill();
    let _ = router.wait();
    let _ = stop_cp.send(());
    let _ = cp_task.await;
}
