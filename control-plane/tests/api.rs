//! The control plane's gRPC surface: directory lookups and change stream, lifecycle,
//! authentication, health and reflection, server registration, config and shutdown.
#![allow(clippy::unwrap_used)]

mod common;

use common::{authed, Plane};
use proto::control::v1::{
    resolve_request::Key, tenant_admin_client::TenantAdminClient,
    tenant_directory_client::TenantDirectoryClient, ResolveRequest, TenantStatus,
    WatchRoutesRequest,
};
use std::time::Duration;
use tonic::Code;

fn resolve(key: Key) -> ResolveRequest {
    ResolveRequest { key: Some(key) }
}

#[tokio::test]
async fn directory_resolves_by_id_slug_and_phone_and_streams_versioned_changes() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 100);
    let t = plane
        .ok(&[
            "create",
            "dir-one",
            "--name",
            "Dir",
            "--sector",
            "varejo",
            "--phone-number-id",
            "5553003003",
            "--json",
        ])
        .json();
    let id = t["id"].as_i64().unwrap();
    let mut dir = TenantDirectoryClient::new(plane.channel().await);
    for key in [
        Key::Id(id),
        Key::Slug("dir-one".into()),
        Key::PhoneNumberId("5553003003".into()),
    ] {
        let route = dir
            .resolve(authed(resolve(key), &plane.router_token))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(route.slug, "dir-one");
        assert_eq!(route.database, plane.database_of("dir-one").await);
        assert_eq!(route.status, TenantStatus::Active as i32);
        assert_eq!(route.port, u32::from(pg.port));
        assert!(!route.password.is_empty());
        assert_eq!(route.server_connection_budget, 80);
    }
    for (key, code) in [
        (Key::Slug("nobody-here".into()), Code::NotFound),
        (Key::Id(999_999), Code::NotFound),
        (Key::PhoneNumberId("999999999".into()), Code::NotFound),
        (Key::Slug("Bad Slug".into()), Code::InvalidArgument),
        (Key::PhoneNumberId("12ab".into()), Code::InvalidArgument),
    ] {
        let err = dir
            .resolve(authed(resolve(key.clone()), &plane.router_token))
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{key:?}: {err:?}");
    }
    let empty = dir
        .resolve(authed(ResolveRequest { key: None }, &plane.router_token))
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);

    // Suspend and resume show up on the change stream within a second, newer each time.
    let mut watch = dir
        .watch_routes(authed(WatchRoutesRequest {}, &plane.router_token))
        .await
        .unwrap()
        .into_inner();
    let before = t["version"].as_i64().unwrap();
    plane.ok(&["suspend", "dir-one"]);
    let change = tokio::time::timeout(Duration::from_secs(1), watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let route = change.route.unwrap();
    assert_eq!(
        (route.slug.as_str(), route.status),
        ("dir-one", TenantStatus::Suspended as i32)
    );
    assert!(route.version > before);
    plane.ok(&["resume", "dir-one"]);
    let change = tokio::time::timeout(Duration::from_secs(1), watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let resumed = change.route.unwrap();
    assert_eq!(resumed.status, TenantStatus::Active as i32);
    assert!(resumed.version > route.version);
}

#[tokio::test]
async fn suspend_and_resume_follow_the_lifecycle() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 100);
    plane.ok(&[
        "create", "life-one", "--name", "Life", "--sector", "servicos",
    ]);
    let active = plane.ok(&["show", "life-one", "--json"]).json();
    let again = plane.ok(&["resume", "life-one", "--json"]).json();
    assert_eq!(
        again["version"], active["version"],
        "resuming an active tenant changes nothing"
    );
    let s = plane.ok(&["suspend", "life-one", "--json"]).json();
    assert_eq!(s["status"], "suspended");
    // Suspending twice is harmless.
    assert_eq!(
        plane.ok(&["suspend", "life-one", "--json"]).json()["version"],
        s["version"]
    );
    assert_eq!(
        plane
            .ok(&["list", "--status", "suspended", "--json"])
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        plane.ok(&["resume", "life-one", "--json"]).json()["status"],
        "active"
    );
    // A tenant whose provisioning failed cannot be suspended or resumed.
    plane.ok(&[
        "create", "life-two", "--name", "Life", "--sector", "servicos",
    ]);
    let catalog = plane.catalog().await;
    catalog
        .execute(
            "UPDATE empresas SET status = 'failed' WHERE slug = 'life-two'",
            &[],
        )
        .await
        .unwrap();
    for verb in ["suspend", "resume"] {
        let out = plane.ctl(&[verb, "life-two"]);
        assert_eq!(out.code, 4, "{verb}: {out:?}");
        assert!(out.stderr.contains("tenant life-two is failed"), "{out:?}");
    }
    let out = plane.ctl(&["suspend", "ghost-tenant"]);
    assert_eq!(out.code, 3, "{out:?}");
    let out = plane.ctl(&["list", "--status", "sleepy"]);
    assert_eq!(out.code, 2, "{out:?}");
    let audit: i64 = plane
        .catalog()
        .await
        .query_one(
            "SELECT count(*) FROM auditoria WHERE acao IN ('tenant.suspend', 'tenant.resume')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(audit >= 2);
}

#[tokio::test]
async fn callers_need_the_right_token() {
    let plane = Plane::start().await;
    let channel = plane.channel().await;
    let mut admin = TenantAdminClient::new(channel.clone());
    let mut dir = TenantDirectoryClient::new(channel);
    let req = || proto::control::v1::ListServersRequest {};
    assert_eq!(
        admin.list_servers(req()).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(
        admin
            .list_servers(authed(req(), "wrong-token"))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    assert_eq!(
        admin
            .list_servers(authed(req(), &plane.router_token))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated,
        "a router's token does not administer tenants"
    );
    admin
        .list_servers(authed(req(), &plane.admin_token))
        .await
        .unwrap();
    let err = dir
        .resolve(authed(resolve(Key::Id(1)), &plane.admin_token))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unauthenticated,
        "the directory hands out credentials: routers only"
    );
    let out = plane.ctl_env(&["list"], &[("TENANTCTL_TOKEN", "nope")], None);
    assert_eq!(out.code, 6, "{out:?}");
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let plane = Plane::start().await;
    let channel = plane.channel().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in [
        "",
        "tenancy.control.v1.TenantAdmin",
        "tenancy.control.v1.TenantDirectory",
    ] {
        let resp = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            resp.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service}"
        );
    }
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("{resp:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"tenancy.control.v1.TenantAdmin".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"tenancy.control.v1.TenantDirectory".to_string()),
        "{names:?}"
    );
}

#[tokio::test]
async fn server_registration_checks_its_input_and_the_server() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    let port = pg.port.to_string();
    let pw = [("TENANTCTL_ADMIN_PASSWORD", pg_harness::SUPERUSER_PASSWORD)];
    let closed = pg_harness::free_port().unwrap().to_string();
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, i32, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![
                "server",
                "add",
                "Bad Name",
                "--host",
                "127.0.0.1",
                "--port",
                &port,
                "--admin-user",
                "postgres",
            ],
            pw.to_vec(),
            2,
            "invalid server name",
        ),
        (
            vec![
                "server",
                "add",
                "s1",
                "--host",
                "127.0.0.1",
                "--port",
                "70000",
                "--admin-user",
                "postgres",
            ],
            pw.to_vec(),
            2,
            "invalid port",
        ),
        (
            vec![
                "server",
                "add",
                "s1",
                "--host",
                "bad host",
                "--port",
                &port,
                "--admin-user",
                "postgres",
            ],
            pw.to_vec(),
            2,
            "invalid host",
        ),
        (
            vec![
                "server",
                "add",
                "s1",
                "--host",
                "127.0.0.1",
                "--port",
                &closed,
                "--admin-user",
                "postgres",
            ],
            pw.to_vec(),
            5,
            "is unreachable",
        ),
        (
            vec![
                "server",
                "add",
                "s1",
                "--host",
                "127.0.0.1",
                "--port",
                &port,
                "--admin-user",
                "postgres",
            ],
            vec![("TENANTCTL_ADMIN_PASSWORD", "wrong")],
            5,
            "rejected the credentials of role \"postgres\" (password authentication failed",
        ),
    ];
    for (args, env, code, msg) in cases {
        let out = plane.ctl_env(&args, &env, None);
        assert_eq!(out.code, code, "{args:?}: {out:?}");
        assert!(out.stderr.contains(msg), "{args:?}: {out:?}");
        assert!(
            !out.stderr.contains("wrong") && !out.stderr.contains(pg_harness::SUPERUSER_PASSWORD),
            "{out:?}"
        );
    }
    // No password at all (empty stdin) is refused before anything is sent.
    let out = plane.ctl_env(
        &[
            "server",
            "add",
            "s1",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--admin-user",
            "postgres",
        ],
        &[],
        Some(""),
    );
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        plane
            .ok(&["server", "list", "--json"])
            .json()
            .as_array()
            .unwrap()
            .is_empty(),
        "nothing was registered"
    );
    plane.add_server("s1", pg, 10);
    let out = plane.ctl_env(
        &[
            "server",
            "add",
            "s1",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--admin-user",
            "postgres",
        ],
        &pw,
        None,
    );
    assert_eq!(out.code, 4, "{out:?}");
    let listed = plane.ok(&["server", "list"]).stdout;
    assert!(
        listed.contains("s1") && !listed.contains(pg_harness::SUPERUSER_PASSWORD),
        "{listed}"
    );
    let sealed: Vec<u8> = plane
        .catalog()
        .await
        .query_one("SELECT admin_senha_cifrada FROM servidores", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!String::from_utf8_lossy(&sealed).contains(pg_harness::SUPERUSER_PASSWORD));
}

#[tokio::test]
async fn bad_configuration_is_refused_with_a_message_naming_it() {
    let pg = pg_harness::shared();
    let base = [
        ("CONTROL_PLANE__LISTEN", "127.0.0.1:0".to_string()),
        ("CONTROL_PLANE__CATALOG_URL", pg.url("postgres")),
        ("CONTROL_PLANE__MASTER_KEY", common::MASTER_KEY.to_string()),
        (
            "CONTROL_PLANE__TOKEN_SIGNING_KEY",
            common::SIGNING_KEY.to_string(),
        ),
    ];
    let cases = [
        (Some(("CONTROL_PLANE__LISTN", "x")), None, "listn"),
        (
            Some(("CONTROL_PLANE__MASTER_KEY", "short")),
            None,
            "master_key must be 32 bytes",
        ),
        (
            Some(("CONTROL_PLANE__FLEET__CONCURRENCY", "many")),
            None,
            "concurrency",
        ),
        (
            Some(("CONTROL_PLANE__DIRECTORY_TOKEN", "a-removed-setting")),
            None,
            "directory_token",
        ),
        (
            Some(("CONTROL_PLANE__TOKEN_SIGNING_KEY", "not-a-key")),
            None,
            "token signing key must be 32 bytes",
        ),
        (
            Some(("CONTROL_PLANE__RETIRED_MASTER_KEYS", "not-a-key")),
            None,
            "master_key or retired_master_keys",
        ),
        (
            Some(("CONTROL_PLANE__RETIRED_MASTER_KEYS", common::SIGNING_KEY)),
            None,
            "must be different secrets",
        ),
        (
            Some(("CONTROL_PLANE__TOKEN_SIGNING_KEY", common::MASTER_KEY)),
            None,
            "master_key and token_signing_key must be different secrets",
        ),
        (
            Some(("CONTROL_PLANE__TOKENS__DEFAULT_TTL_SECS", "99999999999")),
            None,
            "tokens.default_ttl_secs must be above 0 and at most tokens.max_ttl_secs",
        ),
        (
            Some(("CONTROL_PLANE__DEAD_LETTERS__PER_SOURCE_MAX_ROWS", "0")),
            None,
            "dead_letters.per_source_max_rows must be above 0",
        ),
        (
            Some(("CONTROL_PLANE__DEAD_LETTERS__REPLAY_EVERY_SECS", "0")),
            None,
            "dead_letters.replay_every_secs must be above 0",
        ),
        (
            Some(("CONTROL_PLANE__BACKUP__STORE__PART_SIZE_BYTES", "1000")),
            None,
            "backup.store.part_size_bytes must be between 5 MiB and 1 GiB",
        ),
        (
            Some(("CONTROL_PLANE__BACKUP__STALE_AFTER_SECS", "1")),
            None,
            "backup.stale_after_secs at least 2",
        ),
        (
            Some(("CONTROL_PLANE__DELETION__PURGE_EVERY_SECS", "0")),
            None,
            "deletion.purge_every_secs must be above 0",
        ),
        (
            Some(("CONTROL_PLANE__FLEET__STALE_AFTER_SECS", "1")),
            None,
            "fleet.stale_after_secs must be at least 2",
        ),
        (
            Some(("CONTROL_PLANE__LEASES__RENEW_MS", "10")),
            None,
            "leases.renew_ms must be at least 50",
        ),
        (
            Some(("CONTROL_PLANE__LEASES__LEASE_MS", "600")),
            None,
            "leases.lease_ms between 3 renewals",
        ),
        (
            Some(("CONTROL_PLANE__LEASES__MAX_INSTANCES", "0")),
            None,
            "leases.max_instances must be 1-10000",
        ),
        (
            Some(("CONTROL_PLANE__LEASES__JOBS_CONNECTIONS", "1")),
            None,
            "leases.jobs_connections must be 0 or more than backup.per_server",
        ),
        (
            Some(("LOG_FORMAT", "xml")),
            None,
            "LOG_FORMAT must be \"text\" or \"json\"",
        ),
        (
            Some(("CONTROL_PLANE_FILE__INGEST__URL", "/nonexistent/ingest_url")),
            None,
            "CONTROL_PLANE_FILE__INGEST__URL: cannot read /nonexistent/ingest_url",
        ),
        (
            None,
            Some(
                "listen = \"127.0.0.1:0\"\n[backup.store]\nlocation = \"s3://b\"\nregion = \"x\"\n",
            ),
            "region",
        ),
        (
            Some(("CONTROL_PLANE__INGEST__URL", "not a url")),
            None,
            "ingest.url is not a valid PostgreSQL URL",
        ),
        (
            Some(("CONTROL_PLANE__INGEST__POOL_SIZE", "0")),
            None,
            "ingest.pool_size",
        ),
        (
            Some(("CONTROL_PLANE__PROVISIONING__SCRAM_ITERATIONS", "0")),
            None,
            "scram_iterations must be between 1 and 1000000",
        ),
        (
            None,
            Some("listen = \"127.0.0.1:0\"\nsurprise = 1\n"),
            "surprise",
        ),
    ];
    for (env, file, msg) in cases {
        let mut cmd = common::control_plane_cmd();
        for (k, v) in &base {
            cmd.env(k, v);
        }
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let dir = std::env::temp_dir().join(format!("cp-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        if let Some(text) = file {
            let path = dir.join("bad.toml");
            std::fs::write(&path, text).unwrap();
            cmd.arg("--config").arg(&path);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{env:?} {file:?} was accepted");
        assert!(stderr.contains(msg), "{env:?} {file:?}: {stderr}");
        assert!(!stderr.contains(pg_harness::SUPERUSER_PASSWORD), "{stderr}");
    }
}

#[tokio::test]
async fn sigterm_shuts_down_gracefully() {
    let mut plane = Plane::start().await;
    let status = plane
        .terminate(Duration::from_secs(10))
        .expect("exited after SIGTERM");
    assert!(status.success(), "{status:?}");
    let out = plane.ctl(&["server", "list"]);
    assert_eq!(out.code, 5, "{out:?}");
    assert!(out.stderr.contains("control plane unreachable"), "{out:?}");
}

#[tokio::test]
async fn caller_tokens_name_tenant_ids_and_stay_within_the_maximum_lifetime() {
    let pg = pg_harness::shared();
    let plane = Plane::start_with(&[("CONTROL_PLANE__TOKENS__MAX_TTL_SECS", "86400")]).await;
    plane.add_server("main", pg, 100);
    plane.ok(&["create", "tok-one", "--name", "T", "--sector", "varejo"]);
    let id = plane.ok(&["show", "tok-one", "--json"]).json()["id"]
        .as_i64()
        .unwrap();
    let out = plane.ok(&["token", "issue", "--tenant", "tok-one", "--ttl", "10m"]);
    let token = out.stdout.trim();
    assert_eq!(out.stdout.lines().count(), 1, "only the token is printed");
    let verifier = caller_auth::Signer::from_base64(common::SIGNING_KEY)
        .unwrap()
        .verifier()
        .clone();
    let claims = verifier.verify(token, caller_auth::Kind::Caller).unwrap();
    assert!(claims.grants(id) && !claims.grants(id + 1) && !claims.all);
    assert_eq!(claims.tenants, vec![id], "grants name ids, not slugs");
    assert_eq!(claims.exp - claims.iat, 600);
    assert!(
        verifier.verify(token, caller_auth::Kind::Operator).is_err(),
        "a caller token is no operator token"
    );
    let all = plane.ok(&["token", "issue", "--all"]).stdout;
    let all = verifier
        .verify(all.trim(), caller_auth::Kind::Caller)
        .unwrap();
    assert!(all.all);
    assert_eq!(all.exp - all.iat, 3600, "the default lifetime");
    // Every token is recorded, and the audit log names the operator and its token.
    let listed = plane
        .ok(&["token", "list", "--kind", "caller", "--json"])
        .json();
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["id"] == claims.jti.as_str() && t["issued_by"] == "test-admin"));
    let audit = plane.ok(&["audit", "--json"]).json();
    let issue = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "token.issue")
        .unwrap()
        .clone();
    assert_eq!(issue["actor"], "test-admin");
    assert!(!issue["token_id"].as_str().unwrap().is_empty());
    assert_eq!(issue["outcome"], "ok");
    for (args, code) in [
        (vec!["token", "issue", "--tenant", "nobody-here"], 3),
        (
            vec!["token", "issue", "--tenant", "tok-one", "--ttl", "soon"],
            2,
        ),
        (
            vec!["token", "issue", "--tenant", "tok-one", "--ttl", "2d"],
            2,
        ),
        (vec!["token", "issue"], 2),
        (vec!["token", "issue", "--all", "--tenant", "tok-one"], 2),
    ] {
        let out = plane.ctl(&args);
        assert_eq!(out.code, code, "{args:?}: {out:?}");
    }
}

#[tokio::test]
async fn dead_letters_are_kept_once_listed_shown_and_pruned() {
    use proto::control::v1::{
        tenant_directory_client::TenantDirectoryClient, DeadLetterKind, UnroutableWebhook,
        WebhookSource,
    };
    let plane = Plane::start_with(&[("CONTROL_PLANE__DEAD_LETTERS__PRUNE_EVERY_SECS", "1")]).await;
    let mut dir = TenantDirectoryClient::new(plane.channel().await);
    let send = |body: &str, reason: &str| {
        authed(
            UnroutableWebhook {
                source: WebhookSource::Meta as i32,
                phone_number_id: "5550001".into(),
                body: body.as_bytes().to_vec(),
                reason: reason.into(),
                kind: DeadLetterKind::UnknownNumber as i32,
                tenant_id: 0,
            },
            &plane.router_token,
        )
    };
    // Meta retries the same bytes: stored once, counted twice.
    let first = dir
        .record_unroutable(send("{\"a\":1}", ""))
        .await
        .unwrap()
        .into_inner()
        .id;
    let again = dir
        .record_unroutable(send("{\"a\":1}", ""))
        .await
        .unwrap()
        .into_inner()
        .id;
    assert_eq!(first, again);
    dir.record_unroutable(send("{\"b\":2}", "timestamp is not a number"))
        .await
        .unwrap();
    let listed = plane.ok(&["dead-letters", "list", "--json"]).json();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2);
    let counted = listed.iter().find(|d| d["id"] == first).unwrap();
    assert_eq!(counted["times"], 2);
    assert!(listed
        .iter()
        .any(|d| d["reason"] == "timestamp is not a number"));
    assert_eq!(
        plane
            .ok(&["dead-letters", "show", &first.to_string()])
            .stdout
            .trim(),
        "{\"a\":1}"
    );
    // Bodies hold customers' messages: a viewer lists, but may not read them.
    let viewer = plane
        .ok(&["operator", "add", "vic", "--role", "viewer"])
        .stdout
        .trim()
        .to_string();
    let as_viewer =
        |args: &[&str]| plane.ctl_env(args, &[("TENANTCTL_TOKEN", viewer.as_str())], None);
    assert_eq!(as_viewer(&["dead-letters", "list"]).code, 0);
    assert_eq!(
        as_viewer(&["dead-letters", "show", &first.to_string()]).code,
        8
    );
    for (args, code) in [
        (vec!["dead-letters", "show", "999999"], 3),
        (vec!["dead-letters", "list", "--source", "telegram"], 2),
    ] {
        assert_eq!(plane.ctl(&args).code, code, "{args:?}");
    }
    // Past their retention they go.
    plane
        .catalog()
        .await
        .execute(
            "UPDATE webhooks_nao_roteados SET ultima_em = now() - interval '40 days' WHERE id = $1",
            &[&first],
        )
        .await
        .unwrap();
    let pruned = pg_harness::eventually(Duration::from_secs(10), || async {
        plane
            .ok(&["dead-letters", "list", "--json"])
            .json()
            .as_array()
            .unwrap()
            .len()
            == 1
    })
    .await;
    assert!(pruned, "the old dead letter was pruned");
}

#[tokio::test]
async fn a_full_dead_letter_quota_drops_new_content_from_that_source_only() {
    use proto::control::v1::{
        tenant_directory_client::TenantDirectoryClient, DeadLetterKind, UnroutableWebhook,
        WebhookSource,
    };
    let plane = Plane::start_with(&[
        ("CONTROL_PLANE__DEAD_LETTERS__PER_SOURCE_MAX_ROWS", "2"),
        ("CONTROL_PLANE__DEAD_LETTERS__PER_SOURCE_MAX_BYTES", "64"),
    ])
    .await;
    let dir = TenantDirectoryClient::new(plane.channel().await);
    let send = |source: &str, body: &str| {
        let source = match source {
            "meta" => WebhookSource::Meta,
            _ => WebhookSource::Evolution,
        };
        authed(
            UnroutableWebhook {
                source: source as i32,
                phone_number_id: "5550001".into(),
                body: body.as_bytes().to_vec(),
                reason: String::new(),
                kind: DeadLetterKind::UnknownNumber as i32,
                tenant_id: 0,
            },
            &plane.router_token,
        )
    };
    let record = |source: &'static str, body: &'static str| {
        let req = send(source, body);
        let mut dir = dir.clone();
        async move { dir.record_unroutable(req).await.unwrap().into_inner() }
    };
    // Bytes: one body larger than the whole byte quota is not kept.
    let big = record(
        "meta",
        "{\"x\":\"0123456789012345678901234567890123456789012345678901234567890\"}",
    )
    .await;
    assert!(big.dropped && big.id == 0, "{big:?}");
    let a = record("meta", "{\"a\":1}").await;
    let b = record("meta", "{\"b\":2}").await;
    assert!(!a.dropped && !b.dropped);
    // Rows: the third distinct body from the same source is dropped...
    let c = record("meta", "{\"c\":3}").await;
    assert!(c.dropped, "{c:?}");
    // ...a repeat of kept content still counts...
    let again = record("meta", "{\"a\":1}").await;
    assert_eq!((again.id, again.dropped), (a.id, false));
    // ...and the other source has its own quota.
    let evo = record("evolution", "{\"c\":3}").await;
    assert!(!evo.dropped);
    let listed = plane.ok(&["dead-letters", "list", "--json"]).json();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert!(listed.iter().any(|d| d["id"] == a.id && d["times"] == 2));
}

#[tokio::test]
async fn dead_letters_are_filed_only_under_tenants_they_were_meant_for() {
    use proto::control::v1::{DeadLetterKind, UnroutableWebhook, WebhookSource};
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 100);
    let t = plane
        .ok(&[
            "create",
            "dl-file",
            "--name",
            "Dl",
            "--sector",
            "varejo",
            "--phone-number-id",
            "5550777",
            "--json",
        ])
        .json();
    let id = t["id"].as_i64().unwrap();
    let mut dir = TenantDirectoryClient::new(plane.channel().await);
    let letter = |source: WebhookSource, kind: DeadLetterKind, tenant_id: i64, phone: &str| {
        authed(
            UnroutableWebhook {
                source: source as i32,
                phone_number_id: phone.into(),
                body: b"{}".to_vec(),
                reason: String::new(),
                kind: kind as i32,
                tenant_id,
            },
            &plane.router_token,
        )
    };
    use DeadLetterKind::{ItemRefused, TenantSuspended, UnknownNumber, Unspecified};
    use WebhookSource::{Evolution, Meta};
    for (req, code, why) in [
        (
            letter(WebhookSource::Unspecified, UnknownNumber, 0, "5550777"),
            Code::InvalidArgument,
            "no source",
        ),
        (
            letter(Meta, Unspecified, 0, "5550777"),
            Code::InvalidArgument,
            "no kind",
        ),
        (
            letter(Meta, TenantSuspended, 0, "5550777"),
            Code::InvalidArgument,
            "a suspended-tenant letter without its tenant",
        ),
        (
            letter(Meta, UnknownNumber, id, "5550777"),
            Code::InvalidArgument,
            "an unknown-number letter naming a tenant",
        ),
        (
            letter(Meta, TenantSuspended, id, "5550999"),
            Code::InvalidArgument,
            "a delivery to another number filed under this tenant",
        ),
        (
            letter(Evolution, ItemRefused, id + 1000, ""),
            Code::NotFound,
            "a tenant that does not exist",
        ),
    ] {
        let err = dir.record_unroutable(req).await.unwrap_err();
        assert_eq!(err.code(), code, "{why}: {err:?}");
    }
    let kept = dir
        .record_unroutable(letter(Meta, TenantSuspended, id, "5550777"))
        .await
        .unwrap()
        .into_inner();
    assert!(!kept.dropped);
    let listed = plane.ok(&["dead-letters", "list", "--json"]).json();
    assert_eq!(listed[0]["kind"], "tenant_suspended");
    assert_eq!(listed[0]["tenant"], "dl-file");
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
}

#[tokio::test]
async fn unknown_number_letters_replay_once_a_tenant_owns_the_number() {
    use proto::control::v1::{DeadLetterKind, UnroutableWebhook, WebhookSource};
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 100);
    let dir = TenantDirectoryClient::new(plane.channel().await);
    let delivery = |wamid: &str| {
        serde_json::to_vec(&serde_json::json!({
            "object": "whatsapp_business_account",
            "entry": [{"id": "W", "changes": [{"field": "messages", "value": {
                "metadata": {"phone_number_id": "5550888"},
                "contacts": [{"wa_id": "5511987654321", "profile": {"name": "Ana"}}],
                "messages": [
                    {"from": "5511987654321", "id": wamid, "timestamp": "1763800000",
                     "type": "text", "text": {"body": "oi"}},
                    {"from": "5511987654321", "id": format!("{wamid}-bad"), "timestamp": "NaN",
                     "type": "text", "text": {"body": "hora errada"}}
                ]}}]}]
        }))
        .unwrap()
    };
    let record = |body: Vec<u8>, kind: DeadLetterKind| {
        let req = authed(
            UnroutableWebhook {
                source: WebhookSource::Meta as i32,
                phone_number_id: "5550888".into(),
                body,
                reason: if kind == DeadLetterKind::ItemRefused {
                    "timestamp is not a number".into()
                } else {
                    String::new()
                },
                kind: kind as i32,
                tenant_id: 0,
            },
            &plane.router_token,
        );
        let mut dir = dir.clone();
        async move { dir.record_unroutable(req).await.unwrap().into_inner().id }
    };
    let unknown = record(delivery("wamid.U1"), DeadLetterKind::UnknownNumber).await;
    let unknown = unknown.to_string();
    // Nobody owns the number yet: nothing to replay into.
    assert_eq!(plane.ctl(&["dead-letters", "replay", &unknown]).code, 4);
    plane.ok(&[
        "create",
        "dl-late",
        "--name",
        "Late",
        "--sector",
        "varejo",
        "--phone-number-id",
        "5550888",
    ]);
    let db = plane.database_of("dl-late").await;
    let replayed = plane
        .ok(&["dead-letters", "replay", &unknown, "--json"])
        .json();
    assert_eq!(replayed[0]["tenant"], "dl-late");
    assert_eq!(replayed[0]["messages"], 1, "{replayed}");
    assert_eq!(replayed[0]["refused"], 1, "the NaN timestamp is refused");
    // A second replay stores nothing new.
    let again = plane
        .ok(&["dead-letters", "replay", &unknown, "--json"])
        .json();
    assert_eq!(
        (
            again[0]["messages"].as_u64(),
            again[0]["duplicates"].as_u64()
        ),
        (Some(0), Some(1))
    );
    let stored: i64 = pg
        .connect(&db)
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM mensagens", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 1);
    let listed = plane.ok(&["dead-letters", "list", "--json"]).json();
    let listed = listed.as_array().unwrap();
    let refused = listed
        .iter()
        .find(|d| d["kind"] == "item_refused")
        .unwrap_or_else(|| panic!("{listed:?}"));
    assert_eq!(refused["tenant"], "dl-late");
    assert!(listed
        .iter()
        .any(
            |d| d["id"].as_i64().map(|i| i.to_string()) == Some(unknown.clone())
                && d["replayed_ms"].as_i64() > Some(0)
        ));
    // Refused items are never replayed; bad requests are refused by name.
    let refused = refused["id"].to_string();
    for (args, code) in [
        (vec!["dead-letters", "replay", refused.as_str()], 4),
        (vec!["dead-letters", "replay", "999999"], 3),
        (vec!["dead-letters", "replay"], 2),
        (
            vec!["dead-letters", "replay", "1", "--tenant", "dl-late"],
            2,
        ),
        (vec!["dead-letters", "replay", "--tenant", "013"], 2),
        (vec!["dead-letters", "replay", "--tenant", "nobody-here"], 3),
    ] {
        let out = plane.ctl(&args);
        assert_eq!(out.code, code, "{args:?}: {out:?}");
    }
    // Viewers may not write customers' messages anywhere.
    let viewer = plane.viewer_token("vera");
    let out = plane.ctl_as(&viewer, &["dead-letters", "replay", &unknown]);
    assert_eq!(out.code, 8, "{out:?}");
}

#[tokio::test]
async fn replays_left_pending_by_a_crash_run_when_the_control_plane_starts() {
    use proto::control::v1::{DeadLetterKind, UnroutableWebhook, WebhookSource};
    let pg = pg_harness::shared();
    let mut plane = Plane::start().await;
    plane.add_server("main", pg, 100);
    let t = plane
        .ok(&[
            "create", "dl-crash", "--name", "Crash", "--sector", "varejo", "--json",
        ])
        .json();
    let id = t["id"].as_i64().unwrap();
    let db = plane.database_of("dl-crash").await;
    // Kept while the tenant was suspended; the replica that resumed it died before
    // replaying (the letters are pending and the tenant is active).
    let mut dir = TenantDirectoryClient::new(plane.channel().await);
    for key in ["EVO-C1", "EVO-C2"] {
        let body = serde_json::to_vec(&serde_json::json!({
            "event": "messages.upsert", "instance": "dl-crash",
            "data": {"key": {"remoteJid": "5511912345678@s.whatsapp.net", "fromMe": false, "id": key},
                     "message": {"conversation": "oi"}}
        }))
        .unwrap();
        dir.record_unroutable(authed(
            UnroutableWebhook {
                source: WebhookSource::Evolution as i32,
                phone_number_id: String::new(),
                body,
                reason: String::new(),
                kind: DeadLetterKind::TenantSuspended as i32,
                tenant_id: id,
            },
            &plane.router_token,
        ))
        .await
        .unwrap();
    }
    plane.crash_and_restart();
    let stored = pg_harness::eventually(Duration::from_secs(10), || async {
        pg.connect(&db)
            .await
            .unwrap()
            .query_one("SELECT count(*) FROM mensagens", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 2
    })
    .await;
    assert!(
        stored,
        "the restarted control plane replayed what was pending"
    );
}
