//! Message pipeline benchmark (run it through `scripts/bench-webhook.sh`).
//!
//! Starts a tenant PostgreSQL server with `fsync=on`, a durable ingest server, the control
//! plane (in-process, real gRPC) and the real tenant-router binary; provisions tenants with
//! WhatsApp numbers; subscribes to the event stream; then posts signed Meta deliveries from
//! concurrent keep-alive HTTP/1.1 senders spread over every tenant.
//!
//! Measured in one run:
//! - the baseline: the same number of clients writing one row per delivery straight into a
//!   table on the same durable server, one commit each (what acknowledging without group
//!   commit could do at best);
//! - steady traffic: acknowledged messages/s, time to acknowledge, and time from the
//!   acknowledgement to the message's `message.received` event on the stream (it is relayed
//!   after the tenant's database committed it, so this bounds "in the tenant database" too);
//! - one tenant's database stopped (`ALLOW_CONNECTIONS false`, its backends terminated) for
//!   `--outage` seconds under the same traffic: the other tenants' figures, and the time
//!   from its return until all its acknowledged messages were on the stream.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod bench_stack;

use bench_stack::{arg, delivery, pct, Conn, Stack};
use proto::domain::v1 as dm;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BASE: usize = 700_000_000;

/// One acknowledged delivery.
struct Acked {
    tenant: usize,
    wamids: Vec<String>,
    at: Instant,
    ms: f64,
}

/// What a sending phase did.
struct Phase {
    acked: Vec<Acked>,
    errors: u64,
    seconds: f64,
}

#[tokio::main]
async fn main() {
    let tenants = arg("--tenants", 100);
    let senders = arg("--senders", 32);
    let seconds = arg("--seconds", 15) as u64;
    let per = arg("--per-delivery", 1);
    let budget = arg("--budget", 80) as u32;
    let outage = arg("--outage", 30) as u64;
    let workers = arg("--workers", 0);
    // Offered load in messages/s (0: as fast as the senders go).
    let rate = arg("--rate", 0);

    // The tenant server runs with fsync on (the outage scenario asks for it) unless
    // `--tenant-fsync 0`.
    let durable_tenants = arg("--tenant-fsync", 1) == 1;
    let settings: &[(&str, &str)] = if durable_tenants {
        &pg_harness::DURABLE
    } else {
        &[]
    };
    let stack = Arc::new(Stack::start_with(budget, settings).await);
    let setup = Instant::now();
    let mut jobs = tokio::task::JoinSet::new();
    for w in 0..4 {
        let stack = Arc::clone(&stack);
        jobs.spawn(async move {
            let mut made = Vec::new();
            for i in (w..tenants).step_by(4) {
                let t = stack
                    .create_tenant(&format!("wh-bench-{i}"), &format!("{}", BASE + i))
                    .await;
                made.push((i, t.database));
            }
            made
        });
    }
    let mut databases = HashMap::new();
    while let Some(made) = jobs.join_next().await {
        databases.extend(made.unwrap());
    }
    eprintln!(
        "{tenants} tenants provisioned in {:.1} s",
        setup.elapsed().as_secs_f64()
    );

    let mut env = Vec::new();
    if workers > 0 {
        env.push(("TENANT_ROUTER__INBOX__WORKERS", workers.to_string()));
    }
    if let Ok(p) = std::env::var("BENCH_POLL_MS") {
        env.push(("TENANT_ROUTER__INBOX__POLL_MS", p));
    }
    if let Ok(n) = std::env::var("BENCH_COLD_WORKERS") {
        env.push(("TENANT_ROUTER__INBOX__COLD_WORKERS", n));
    }
    let router = stack.router_with(&env);
    let http = router.http.clone();
    // Warm every tenant's route and pool once.
    for t in 0..tenants {
        let mut c = Conn::open(&http).await;
        assert_eq!(
            c.post(&delivery(&format!("{}", BASE + t), usize::MAX - t, 1))
                .await,
            200
        );
    }

    // The bot: every message.received event, by wamid, with when it arrived.
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut events = dm::events_client::EventsClient::connect(format!("http://{}", router.grpc))
        .await
        .unwrap();
    let mut req = tonic::Request::new(dm::SubscribeRequest {
        group: "bench".into(),
        tenants: Vec::new(),
        kinds: vec![dm::EventKind::MessageReceived as i32],
        from_oldest: false,
    });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", stack.caller_token()).parse().unwrap(),
    );
    let mut stream = events.subscribe(req).await.unwrap().into_inner();
    let sink = Arc::clone(&seen);
    let bot = tokio::spawn(async move {
        while let Ok(Some(e)) = stream.message().await {
            let now = Instant::now();
            let data: serde_json::Value = serde_json::from_str(&e.data_json).unwrap();
            if let Some(w) = data["wamid"].as_str() {
                sink.lock().unwrap().insert(w.to_string(), now);
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let baseline = baseline(senders, Duration::from_secs(seconds)).await;

    // Tenant sessions opened during each phase (pg_stat_database counts every login).
    let su = stack.pg.connect("postgres").await.unwrap();
    let sessions_now = async || -> i64 {
        su.query_one("SELECT sum(sessions)::int8 FROM pg_stat_database", &[])
            .await
            .unwrap()
            .get(0)
    };
    let mut opened = Vec::new();
    let at = sessions_now().await;
    let most = send(
        &http,
        senders,
        tenants,
        per,
        Duration::from_secs(seconds),
        0,
        0,
    )
    .await;
    opened.push(per_sec(sessions_now().await - at, &most));
    let most_lag = wait_seen(&seen, &most, |_| true, Duration::from_secs(60)).await;
    let offset = most.acked.len() * 2 + senders;
    let at = sessions_now().await;
    let steady = send(
        &http,
        senders,
        tenants,
        per,
        Duration::from_secs(seconds),
        offset,
        rate,
    )
    .await;
    opened.push(per_sec(sessions_now().await - at, &steady));
    let steady_lag = wait_seen(&seen, &steady, |_| true, Duration::from_secs(60)).await;
    // The control for the outage phase: the same traffic for as long, right before it.
    let offset = offset + steady.acked.len() * 2 + senders;
    let at = sessions_now().await;
    let control = send(
        &http,
        senders,
        tenants,
        per,
        Duration::from_secs(outage),
        offset,
        rate,
    )
    .await;
    opened.push(per_sec(sessions_now().await - at, &control));
    let control_lag = wait_seen(&seen, &control, |t| t != 0, Duration::from_secs(60)).await;

    // One tenant's database stops for `outage` seconds under the same traffic.
    let stopped = 0usize;
    let db = &databases[&stopped];
    su.batch_execute(&format!(
        "ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS false; \
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}' AND pid <> pg_backend_pid()"
    ))
    .await
    .unwrap();
    let at = sessions_now().await;
    let during = send(
        &http,
        senders,
        tenants,
        per,
        Duration::from_secs(outage),
        offset + control.acked.len() * 2 + senders,
        rate,
    )
    .await;
    opened.push(per_sec(sessions_now().await - at, &during));
    let others_lag = wait_seen(&seen, &during, |t| t != stopped, Duration::from_secs(60)).await;
    su.batch_execute(&format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
    let back = Instant::now();
    let stopped_lag = wait_seen(&seen, &during, |t| t == stopped, Duration::from_secs(60)).await;
    let recovery = stopped_lag
        .as_ref()
        .map(|_| last_seen(&seen, &during, stopped).saturating_duration_since(back));

    let offered = if rate > 0 {
        format!("{rate} msg/s offered")
    } else {
        "as fast as they go".into()
    };
    println!("| run | senders | tenants | budget | messages/s | ack p50 | ack p99 | errors | ack→event p50 | ack→event p99 | tenant sessions/s |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| baseline: one commit per delivery, same durable server | {senders} | - | - | {:.0} | {:.1} ms | {:.1} ms | {} | - | - | - |",
        baseline.0, baseline.1, baseline.2, baseline.3
    );
    row(
        "pipeline, senders as fast as they go",
        senders,
        tenants,
        budget,
        per,
        &most,
        |_| true,
        &most_lag,
        Some(opened[0]),
    );
    row(
        &format!("pipeline, steady ({offered})"),
        senders,
        tenants,
        budget,
        per,
        &steady,
        |_| true,
        &steady_lag,
        Some(opened[1]),
    );
    row(
        &format!("pipeline ({offered}), {outage} s right before the outage: tenants but the first"),
        senders,
        tenants,
        budget,
        per,
        &control,
        |t| t != stopped,
        &control_lag,
        Some(opened[2]),
    );
    row(
        &format!("pipeline ({offered}), one database stopped {outage} s: the others"),
        senders,
        tenants,
        budget,
        per,
        &during,
        |t| t != stopped,
        &others_lag,
        Some(opened[3]),
    );
    row(
        &format!("pipeline ({offered}), one database stopped {outage} s: that tenant"),
        senders,
        tenants,
        budget,
        per,
        &during,
        |t| t == stopped,
        &stopped_lag,
        None,
    );
    // More busy tenants than connections: the ones without a connection take turns to
    // open one (closing another's), so each waits about (how many wait) / (sessions/s).
    let reserve = (budget / 32).max(1) as usize;
    let waiting = tenants.saturating_sub(budget as usize - reserve);
    if waiting > 0 {
        let rate = opened[2];
        println!(
            "\nTenants without a tenant connection at any moment: about {waiting} ({tenants} tenants, budget {budget}, {reserve} kept free). \
             At the control phase's {rate:.1} sessions/s each waits about {:.2} s for one: the floor under ack→event p99.",
            waiting as f64 / rate.max(0.1)
        );
    }
    match recovery {
        Some(r) => println!(
            "\nThe stopped tenant's {} acknowledged messages were all on the event stream {:.2} s after its database came back.",
            during.acked.iter().filter(|a| a.tenant == stopped).map(|a| a.wamids.len()).sum::<usize>(),
            r.as_secs_f64()
        ),
        None => println!("\nThe stopped tenant's messages did NOT all arrive within 60 s of its return."),
    }
    // The router's own account of its applies.
    let metrics = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(&http).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let (count, sum) = (
        value("tenant_router_inbox_apply_seconds_count"),
        value("tenant_router_inbox_apply_seconds_sum"),
    );
    println!(
        "Applies: {count:.0}, {:.1} ms each on average, {:.1} inbox rows each.",
        sum / count.max(1.0) * 1000.0,
        value("tenant_router_inbox_applies_total{outcome=\"applied\"}") / count.max(1.0)
    );
    let sessions: i64 = stack
        .pg
        .connect("postgres")
        .await
        .unwrap()
        .query_one("SELECT sum(sessions)::int8 FROM pg_stat_database", &[])
        .await
        .unwrap()
        .get(0);
    println!("Sessions opened on the tenant server during the whole run: {sessions}.");
    // Receipt to applied, from the inbox itself (both times taken by the ingest server).
    let durable = pg_harness::shared_durable();
    let postgres = durable.connect("postgres").await.unwrap();
    let ingest_db: String = postgres
        .query_one("SELECT datname FROM pg_database WHERE datname LIKE 'ingest%' ORDER BY oid DESC LIMIT 1", &[])
        .await
        .unwrap()
        .get(0);
    let applied = durable
        .connect(&ingest_db)
        .await
        .unwrap()
        .query_one(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x), percentile_cont(0.99) WITHIN GROUP (ORDER BY x) \
             FROM (SELECT extract(epoch FROM aplicado_em - recebido_em) * 1000 AS x FROM inbox WHERE aplicado_em IS NOT NULL AND mensagens > 0) s",
            &[],
        )
        .await
        .unwrap();
    println!(
        "Inbox receipt to applied in the tenant database, every row of the run: p50 {:.0} ms, p99 {:.0} ms.",
        applied.get::<_, f64>(0),
        applied.get::<_, f64>(1)
    );
    println!(
        "Acknowledged throughput vs the baseline: {:.2}x.",
        throughput(&most, per) / baseline.0
    );
    bot.abort();
    drop(router);
    if let Ok(stack) = Arc::try_unwrap(stack) {
        stack.stop().await;
    }
}

/// Sessions opened per second of a phase.
fn per_sec(sessions: i64, p: &Phase) -> f64 {
    sessions as f64 / p.seconds
}

fn throughput(p: &Phase, per: usize) -> f64 {
    (p.acked.len() * per) as f64 / p.seconds
}

#[allow(clippy::too_many_arguments)]
fn row(
    name: &str,
    senders: usize,
    tenants: usize,
    budget: u32,
    per: usize,
    p: &Phase,
    which: impl Fn(usize) -> bool,
    lag: &Option<Vec<f64>>,
    sessions: Option<f64>,
) {
    let mut ms: Vec<f64> = p
        .acked
        .iter()
        .filter(|a| which(a.tenant))
        .map(|a| a.ms)
        .collect();
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = ms.len();
    let (l50, l99) = match lag {
        Some(l) if !l.is_empty() => (
            format!("{:.0} ms", pct(l, 0.5)),
            format!("{:.0} ms", pct(l, 0.99)),
        ),
        _ => ("missing".into(), "missing".into()),
    };
    println!(
        "| {name} | {senders} | {tenants} | {budget} | {:.0} | {:.1} ms | {:.1} ms | {} | {l50} | {l99} | {} |",
        (n * per) as f64 / p.seconds,
        pct(&ms, 0.5),
        pct(&ms, 0.99),
        p.errors,
        sessions.map_or("-".into(), |s| format!("{s:.1}"))
    );
}

/// Senders posting deliveries round robin over the tenants for `length`, together offering
/// `rate` messages/s (0: each as fast as it gets answers); `offset` keeps message ids of
/// phases apart.
async fn send(
    http: &str,
    senders: usize,
    tenants: usize,
    per: usize,
    length: Duration,
    offset: usize,
    rate: usize,
) -> Phase {
    let deadline = Instant::now() + length;
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for w in 0..senders {
        let http = http.to_string();
        set.spawn(async move {
            let mut c = Conn::open(&http).await;
            let mut acked = Vec::new();
            let mut errors = 0u64;
            let mut seq = offset + w;
            // Each sender's share of the offered load, spread evenly over the senders.
            let every =
                (rate > 0).then(|| Duration::from_secs_f64((senders * per) as f64 / rate as f64));
            let mut next = Instant::now()
                + every.map_or(Duration::ZERO, |e| e.mul_f64(w as f64 / senders as f64));
            while Instant::now() < deadline {
                if let Some(every) = every {
                    tokio::time::sleep_until(next.into()).await;
                    next += every;
                }
                let tenant = (seq * 31) % tenants;
                let pnid = format!("{}", BASE + tenant);
                let body = delivery(&pnid, seq, per);
                let t0 = Instant::now();
                if c.post(&body).await == 200 {
                    acked.push(Acked {
                        tenant,
                        wamids: (0..per)
                            .map(|i| format!("wamid.{pnid}.{seq}.{i}"))
                            .collect(),
                        at: Instant::now(),
                        ms: t0.elapsed().as_secs_f64() * 1000.0,
                    });
                } else {
                    errors += 1;
                }
                seq += senders;
            }
            (acked, errors)
        });
    }
    let mut phase = Phase {
        acked: Vec::new(),
        errors: 0,
        seconds: 0.0,
    };
    while let Some(r) = set.join_next().await {
        let (a, e) = r.unwrap();
        phase.acked.extend(a);
        phase.errors += e;
    }
    phase.seconds = started.elapsed().as_secs_f64();
    phase
}

/// Waits until every acknowledged message of the chosen tenants is on the stream; the
/// sorted acknowledgement-to-event times in ms (`None` if some never arrived).
async fn wait_seen(
    seen: &Mutex<HashMap<String, Instant>>,
    phase: &Phase,
    which: impl Fn(usize) -> bool,
    within: Duration,
) -> Option<Vec<f64>> {
    let until = Instant::now() + within;
    loop {
        let lags: Option<Vec<f64>> = {
            let seen = seen.lock().unwrap();
            phase
                .acked
                .iter()
                .filter(|a| which(a.tenant))
                .flat_map(|a| a.wamids.iter().map(move |w| (a.at, w)))
                .map(|(at, w)| {
                    seen.get(w)
                        .map(|t| t.saturating_duration_since(at).as_secs_f64() * 1000.0)
                })
                .collect()
        };
        if let Some(mut l) = lags {
            l.sort_by(|a, b| a.partial_cmp(b).unwrap());
            return Some(l);
        }
        if Instant::now() >= until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// When the last of a tenant's acknowledged messages reached the stream.
fn last_seen(seen: &Mutex<HashMap<String, Instant>>, phase: &Phase, tenant: usize) -> Instant {
    let seen = seen.lock().unwrap();
    phase
        .acked
        .iter()
        .filter(|a| a.tenant == tenant)
        .flat_map(|a| a.wamids.iter())
        .filter_map(|w| seen.get(w).copied())
        .max()
        .unwrap_or_else(Instant::now)
}

/// `senders` clients each writing one delivery-sized row per transaction (synchronous
/// commit) into a table on the durable server: rows/s, p50, p99 and errors.
async fn baseline(senders: usize, length: Duration) -> (f64, f64, f64, u64) {
    let pg = pg_harness::shared_durable();
    let db = pg.fresh_database("baseline").await.unwrap();
    pg.connect(&db)
        .await
        .unwrap()
        .batch_execute("CREATE TABLE b (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, lote text NOT NULL, recebido_em timestamptz NOT NULL DEFAULT now())")
        .await
        .unwrap();
    let row = String::from_utf8(delivery("700000000", 1, 1)).unwrap();
    let deadline = Instant::now() + length;
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..senders {
        let c = pg.connect(&db).await.unwrap();
        let row = row.clone();
        set.spawn(async move {
            c.batch_execute("SET synchronous_commit = on")
                .await
                .unwrap();
            let stmt = c.prepare("INSERT INTO b (lote) VALUES ($1)").await.unwrap();
            let mut ms = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                match c.execute(&stmt, &[&row]).await {
                    Ok(_) => ms.push(t0.elapsed().as_secs_f64() * 1000.0),
                    Err(_) => errors += 1,
                }
            }
            (ms, errors)
        });
    }
    let mut all = Vec::new();
    let mut errors = 0;
    while let Some(r) = set.join_next().await {
        let (m, e) = r.unwrap();
        all.extend(m);
        errors += e;
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (
        all.len() as f64 / secs,
        pct(&all, 0.5),
        pct(&all, 0.99),
        errors,
    )
}
