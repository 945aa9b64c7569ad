//! People who log in (#12): users, logins, sessions with rotating refresh tokens, password
//! changes and resets, guessing limits, and tenant admins managing their users. Real
//! control-plane binary, real PostgreSQL, real gRPC over TLS.

#![allow(clippy::unwrap_used)]

mod common;

use common::{authed, Plane};
use proto::accounts::v1 as ac;
use proto::accounts::v1::auth_client::AuthClient;
use proto::accounts::v1::users_client::UsersClient;
use tonic::Code;

async fn auth(plane: &Plane) -> AuthClient<tonic::transport::Channel> {
    AuthClient::new(plane.channel().await)
}

async fn login(
    plane: &Plane,
    email: &str,
    password: &str,
) -> Result<ac::LoginResponse, tonic::Status> {
    auth(plane)
        .await
        .login(ac::LoginRequest {
            email: email.into(),
            password: password.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn refresh(plane: &Plane, token: &str) -> Result<ac::LoginResponse, tonic::Status> {
    auth(plane)
        .await
        .refresh(ac::RefreshRequest {
            refresh_token: token.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// A tenant with a user `email` holding `password` and `role`.
fn tenant_with_user(plane: &Plane, slug: &str, email: &str, password: &str, role: &str) {
    plane.ok(&["create", slug, "--name", "Loja", "--sector", "varejo"]);
    let out = plane.ctl_env(
        &[
            "user",
            "add",
            slug,
            email,
            "--role",
            role,
            "--password-stdin",
        ],
        &[],
        Some(&format!("{password}\n")),
    );
    assert_eq!(out.code, 0, "{out:?}");
}

/// The control plane's password-hash counter, from its metrics endpoint.
fn hashes(metrics: &str) -> u64 {
    let body = common::scrape(metrics);
    body.lines()
        .find_map(|l| l.strip_prefix("control_plane_password_hashes_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no hash counter in {body}"))
}

#[tokio::test]
async fn a_login_rotates_refresh_tokens_and_a_reused_one_ends_the_session() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 100);
    let created = plane
        .ok(&[
            "create",
            "acc-alpha",
            "--name",
            "Alpha",
            "--sector",
            "veiculos",
            "--admin-email",
            " Dona@Alpha.com.br ",
            "--json",
        ])
        .json();
    let otp = created["admin"]["one_time_password"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(otp.len(), 16);
    let first = login(&plane, "dona@alpha.com.br", &otp).await.unwrap();
    let user = first.user.clone().unwrap();
    assert_eq!(first.tenant_slug, "acc-alpha");
    assert_eq!(first.tenant_id, created["id"].as_i64().unwrap());
    assert_eq!(first.sector, "veiculos");
    assert_eq!(first.role, ac::UserRole::Owner as i32);
    assert!(
        user.must_change_password,
        "a one-time password must be changed"
    );
    assert!(first.access_expires_in_secs > 0 && first.access_expires_in_secs <= 600);

    // Rotation: the new refresh token works, the old one is spent.
    let second = refresh(&plane, &first.refresh_token).await.unwrap();
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_ne!(second.access_token, first.access_token);
    let reused = refresh(&plane, &first.refresh_token).await.unwrap_err();
    assert_eq!(reused.code(), Code::Unauthenticated);
    assert!(reused.message().contains("already used"), "{reused:?}");
    // The reuse ended the session: its newest refresh token is dead too.
    let after = refresh(&plane, &second.refresh_token).await.unwrap_err();
    assert_eq!(after.code(), Code::Unauthenticated, "{after:?}");
    let audit = plane.ok(&["audit", "--json"]).stdout;
    assert!(audit.contains("refresh token reused"), "{audit}");

    // Logout ends a session; its access token then is refused here too.
    let third = login(&plane, "dona@alpha.com.br", &otp).await.unwrap();
    let ended = auth(&plane)
        .await
        .logout(authed(ac::LogoutRequest {}, &third.access_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ended.sessions_ended, 1);
    let again = auth(&plane)
        .await
        .logout(authed(ac::LogoutRequest {}, &third.access_token))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::Unauthenticated);
    assert_eq!(
        refresh(&plane, &third.refresh_token)
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    // Garbage refresh tokens are refused without detail.
    for bad in ["", "x", &"a".repeat(43), &"é".repeat(30)] {
        let e = refresh(&plane, bad).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{bad:?}");
    }
}

#[tokio::test]
async fn unknown_emails_and_wrong_passwords_answer_alike_cost_alike_and_guessing_is_slowed() {
    let pg = pg_harness::shared();
    let metrics = format!("127.0.0.1:{}", pg_harness::free_port().unwrap());
    let plane = Plane::start_with(&[
        ("CONTROL_PLANE__METRICS_LISTEN", &metrics),
        ("CONTROL_PLANE__ACCOUNTS__ACCOUNT_FREE_FAILURES", "3"),
        ("CONTROL_PLANE__ACCOUNTS__ADDRESS_FREE_FAILURES", "8"),
    ])
    .await;
    plane.add_server("main", pg, 100);
    tenant_with_user(
        &plane,
        "acc-bravo",
        "vendas@bravo.com",
        "Carros usados 2026",
        "agent",
    );

    let h0 = hashes(&metrics);
    let unknown = login(&plane, "ninguem@bravo.com", "Carros usados 2026")
        .await
        .unwrap_err();
    let h1 = hashes(&metrics);
    let wrong = login(&plane, "vendas@bravo.com", "Carros novos 2026")
        .await
        .unwrap_err();
    let h2 = hashes(&metrics);
    assert_eq!(
        (unknown.code(), wrong.code()),
        (Code::Unauthenticated, Code::Unauthenticated)
    );
    assert_eq!(unknown.message(), wrong.message(), "one answer for both");
    assert_eq!((h1 - h0, h2 - h1), (1, 1), "one hash computation each");

    // Two more failures reach the account's free three; the next attempt waits, even with
    // the right password, and costs no hash.
    let _ = login(&plane, "vendas@bravo.com", "Carros novos 2027").await;
    let _ = login(&plane, "vendas@bravo.com", "Carros novos 2028").await;
    let h3 = hashes(&metrics);
    let held = login(&plane, "vendas@bravo.com", "Carros usados 2026")
        .await
        .unwrap_err();
    assert_eq!(held.code(), Code::ResourceExhausted, "{held:?}");
    assert!(held.message().contains("retry in"), "{held:?}");
    assert_eq!(hashes(&metrics), h3, "a held attempt computes nothing");
    // An unknown email is held back the same way.
    for _ in 0..3 {
        let _ = login(&plane, "outro@bravo.com", "Carros novos 2029").await;
    }
    let held_unknown = login(&plane, "outro@bravo.com", "Carros novos 2029")
        .await
        .unwrap_err();
    assert_eq!(held_unknown.code(), Code::ResourceExhausted);
    // Not for long: the first hold is seconds.
    let back = pg_harness::eventually(std::time::Duration::from_secs(10), || async {
        login(&plane, "vendas@bravo.com", "Carros usados 2026")
            .await
            .is_ok()
    })
    .await;
    assert!(back, "the real user gets in once the short hold passes");

    // The client address has its own, larger allowance across emails.
    let mut refused = None;
    for i in 0..12 {
        match login(&plane, &format!("spray{i}@bravo.com"), "Carros novos 2030").await {
            Err(e) if e.code() == Code::ResourceExhausted => {
                refused = Some(i);
                break;
            }
            Err(e) => assert_eq!(e.code(), Code::Unauthenticated),
            Ok(_) => panic!("an unknown email logged in"),
        }
    }
    assert!(
        refused.is_some(),
        "spraying many emails from one address is slowed"
    );

    // Malformed input is named and costs nothing.
    let h4 = hashes(&metrics);
    for (email, password, why) in [
        ("not-an-email", "Carros usados 2026", "email"),
        ("vendas@bravo.com", "", "password"),
        ("vendas@bravo.com", &"x".repeat(5000), "password"),
    ] {
        let e = login(&plane, email, password).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{email}");
        assert!(e.message().contains(why), "{e:?}");
    }
    assert_eq!(hashes(&metrics), h4);
}

#[tokio::test]
async fn bad_user_input_is_refused_by_name_and_changes_nothing() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 100);
    tenant_with_user(
        &plane,
        "acc-charlie",
        "um@charlie.com",
        "Loja de pecas 77",
        "owner",
    );
    let add = |email: &str, role: &str, password: Option<&str>| {
        let mut args = vec!["user", "add", "acc-charlie", email, "--role", role];
        if password.is_some() {
            args.push("--password-stdin");
        }
        plane.ctl_env(&args, &[], password.map(|p| format!("{p}\n")).as_deref())
    };
    for (email, role, password, code, why) in [
        ("sem-arroba", "agent", None, 2, "email"),
        ("dois@charlie.com", "chefe", None, 2, "unknown user role"),
        ("dois@charlie.com", "agent", Some("curta"), 2, "at least 10"),
        (
            "dois@charlie.com",
            "agent",
            Some("qwertyuiop"),
            2,
            "too common",
        ),
        ("UM@charlie.com", "agent", None, 4, "already exists"),
    ] {
        let out = add(email, role, password);
        assert_eq!(out.code, code, "{email} {role}: {out:?}");
        assert!(out.stderr.contains(why), "{out:?}");
    }
    let listed = plane.ok(&["user", "list", "acc-charlie", "--json"]).json();
    assert_eq!(listed.as_array().unwrap().len(), 1, "nothing was added");
    // The basic plan allows three users.
    assert_eq!(add("dois@charlie.com", "agent", None).code, 0);
    assert_eq!(add("tres@charlie.com", "viewer", None).code, 0);
    let over = add("quatro@charlie.com", "viewer", None);
    assert_eq!(over.code, 5, "{over:?}");
    assert!(over.stderr.contains("plan allows 3"), "{over:?}");
    // The last owner stays one.
    let demote = plane.ctl(&["user", "set-role", "um@charlie.com", "admin"]);
    assert_eq!(demote.code, 4, "{demote:?}");
    assert!(demote.stderr.contains("last active owner"), "{demote:?}");
    assert_eq!(plane.ctl(&["user", "disable", "um@charlie.com"]).code, 4);
    // A create whose first user's email is taken makes nothing.
    let dup = plane.ctl(&[
        "create",
        "acc-delta",
        "--name",
        "Delta",
        "--sector",
        "varejo",
        "--admin-email",
        "um@charlie.com",
    ]);
    assert_eq!(dup.code, 4, "{dup:?}");
    assert_eq!(
        plane.ctl(&["show", "acc-delta"]).code,
        3,
        "no tenant was made"
    );
    let bad = plane.ctl(&[
        "create",
        "acc-delta",
        "--name",
        "Delta",
        "--sector",
        "varejo",
        "--admin-email",
        "x@",
    ]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert_eq!(plane.ctl(&["show", "acc-delta"]).code, 3);
    // Operators below the operator role may list but not add.
    let viewer = plane.viewer_token("olhador");
    assert_eq!(
        plane.ctl_as(&viewer, &["user", "list", "acc-charlie"]).code,
        0
    );
    let denied = plane.ctl_as(
        &viewer,
        &[
            "user",
            "add",
            "acc-charlie",
            "cinco@charlie.com",
            "--role",
            "viewer",
        ],
    );
    assert_eq!(denied.code, 8, "{denied:?}");
}

#[tokio::test]
async fn password_changes_and_resets_end_other_sessions_and_tokens_are_single_use() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 100);
    tenant_with_user(
        &plane,
        "acc-echo",
        "gerente@echo.com",
        "Imoveis no centro 1",
        "admin",
    );
    plane.ok(&[
        "create",
        "acc-foxtrot",
        "--name",
        "Fox",
        "--sector",
        "varejo",
    ]);
    let a = login(&plane, "gerente@echo.com", "Imoveis no centro 1")
        .await
        .unwrap();
    let b = login(&plane, "gerente@echo.com", "Imoveis no centro 1")
        .await
        .unwrap();
    let change = |current: &str, new: &str| {
        let (current, new, token) = (current.to_string(), new.to_string(), a.access_token.clone());
        let plane = &plane;
        async move {
            auth(plane)
                .await
                .change_password(authed(
                    ac::ChangePasswordRequest {
                        current_password: current,
                        new_password: new,
                    },
                    &token,
                ))
                .await
        }
    };
    let wrong = change("Imoveis no centro 2", "Casas e terrenos 9")
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    let weak = change("Imoveis no centro 1", "gerente123456")
        .await
        .unwrap_err();
    assert_eq!(weak.code(), Code::InvalidArgument);
    assert!(weak.message().contains("email"), "{weak:?}");
    let ended = change("Imoveis no centro 1", "Casas e terrenos 9")
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ended.sessions_ended, 1, "the other session ended");
    assert_eq!(
        refresh(&plane, &b.refresh_token).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert!(
        refresh(&plane, &a.refresh_token).await.is_ok(),
        "this session goes on"
    );
    assert!(login(&plane, "gerente@echo.com", "Imoveis no centro 1")
        .await
        .is_err());
    assert!(login(&plane, "gerente@echo.com", "Casas e terrenos 9")
        .await
        .is_ok());

    // Resets: only a service granted the user's tenant gets a token.
    let other = plane
        .ok(&[
            "token",
            "issue",
            "--tenant",
            "acc-foxtrot",
            "--subject",
            "site",
        ])
        .stdout
        .trim()
        .to_string();
    let granted = plane
        .ok(&[
            "token",
            "issue",
            "--tenant",
            "acc-echo",
            "--subject",
            "site",
        ])
        .stdout
        .trim()
        .to_string();
    let ask = |token: String, email: &'static str| {
        let plane = &plane;
        async move {
            auth(plane)
                .await
                .request_password_reset(authed(
                    ac::PasswordResetRequest {
                        email: email.into(),
                    },
                    &token,
                ))
                .await
        }
    };
    assert_eq!(
        ask(other.clone(), "gerente@echo.com")
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        ask(granted.clone(), "nobody@echo.com")
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let reset = ask(granted, "gerente@echo.com").await.unwrap().into_inner();
    let use_it = |new: &'static str| {
        let (plane, token) = (&plane, reset.token.clone());
        async move {
            auth(plane)
                .await
                .reset_password(ac::ResetPasswordRequest {
                    token,
                    new_password: new.into(),
                })
                .await
        }
    };
    assert_eq!(
        use_it("curta").await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let done = use_it("Apartamentos 2 quartos").await.unwrap().into_inner();
    assert!(done.sessions_ended >= 1, "every session ended");
    assert_eq!(
        use_it("Apartamentos 3 quartos").await.unwrap_err().code(),
        Code::Unauthenticated,
        "single use"
    );
    assert!(login(&plane, "gerente@echo.com", "Apartamentos 2 quartos")
        .await
        .is_ok());
}

#[tokio::test]
async fn tenant_admins_manage_their_own_users_within_their_role() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 100);
    tenant_with_user(
        &plane,
        "acc-golf",
        "admin@golf.com",
        "Pecas de motor 42",
        "admin",
    );
    tenant_with_user(
        &plane,
        "acc-hotel",
        "dono@hotel.com",
        "Pecas de motor 43",
        "owner",
    );
    let admin = login(&plane, "admin@golf.com", "Pecas de motor 42")
        .await
        .unwrap();
    let users = || async { UsersClient::new(plane.channel().await) };
    let added = users()
        .await
        .add_user(authed(
            ac::AddUserRequest {
                email: "atendente@golf.com".into(),
                name: "Atendente".into(),
                role: ac::UserRole::Agent as i32,
            },
            &admin.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let agent_id = added.user.unwrap().id;
    // An admin may not make owners.
    let owner = users()
        .await
        .add_user(authed(
            ac::AddUserRequest {
                email: "socio@golf.com".into(),
                name: String::new(),
                role: ac::UserRole::Owner as i32,
            },
            &admin.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(owner.code(), Code::PermissionDenied);
    let listed = users()
        .await
        .list_users(authed(ac::ListUsersRequest {}, &admin.access_token))
        .await
        .unwrap()
        .into_inner()
        .users;
    assert_eq!(listed.len(), 2, "only its own tenant's users");
    // Another tenant's user is unknown here.
    let hotel_user: i64 = plane.ok(&["user", "list", "acc-hotel", "--json"]).json()[0]["id"]
        .as_i64()
        .unwrap();
    let foreign = users()
        .await
        .update_user(authed(
            ac::UpdateUserRequest {
                user_id: hotel_user,
                role: 0,
                status: ac::UserStatus::Disabled as i32,
            },
            &admin.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(foreign.code(), Code::NotFound);
    // The agent logs in, may not manage users, and is disabled by its admin: its session ends.
    let otp = added.one_time_password;
    let agent = login(&plane, "atendente@golf.com", &otp).await.unwrap();
    let denied = users()
        .await
        .list_users(authed(ac::ListUsersRequest {}, &agent.access_token))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    users()
        .await
        .update_user(authed(
            ac::UpdateUserRequest {
                user_id: agent_id,
                role: 0,
                status: ac::UserStatus::Disabled as i32,
            },
            &admin.access_token,
        ))
        .await
        .unwrap();
    assert_eq!(
        refresh(&plane, &agent.refresh_token)
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    let disabled = login(&plane, "atendente@golf.com", &otp).await.unwrap_err();
    assert_eq!(disabled.code(), Code::PermissionDenied, "{disabled:?}");
    // A caller token is no user token.
    let caller = plane
        .ok(&["token", "issue", "--tenant", "acc-golf"])
        .stdout
        .trim()
        .to_string();
    let e = users()
        .await
        .list_users(authed(ac::ListUsersRequest {}, &caller))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn a_tenant_changes_name_plan_and_display_phone_and_bad_changes_change_nothing() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 100);
    plane.ok(&[
        "create",
        "acc-india",
        "--name",
        "India",
        "--sector",
        "imoveis",
        "--plan",
        "profissional",
    ]);
    let before = plane.ok(&["show", "acc-india", "--json"]).json();
    let after = plane
        .ok(&[
            "update",
            "acc-india",
            "--name",
            "India Imóveis",
            "--display-phone",
            "+55 11 3333-4444",
            "--json",
        ])
        .json();
    assert_eq!(after["name"], "India Imóveis");
    assert_eq!(after["display_phone"], "+551133334444");
    assert_eq!(after["plan"], "profissional", "unchanged when not given");
    assert!(
        after["version"].as_i64() > before["version"].as_i64(),
        "routers see a new version"
    );
    let cleared = plane
        .ok(&["update", "acc-india", "--display-phone", "", "--json"])
        .json();
    assert!(cleared["display_phone"].is_null());
    // Four users fit the profissional plan, not the basico one (3).
    for i in 0..4 {
        let out = plane.ctl(&[
            "user",
            "add",
            "acc-india",
            &format!("u{i}@india.com"),
            "--role",
            "agent",
        ]);
        assert_eq!(out.code, 0, "{out:?}");
    }
    for (args, code, why) in [
        (
            vec!["update", "acc-india", "--plan", "ouro"],
            2,
            "unknown plan \"ouro\": expected one of basico",
        ),
        (
            vec!["update", "acc-india", "--plan", "basico"],
            4,
            "allows 3 users",
        ),
        (vec!["update", "acc-india", "--name", ""], 2, "name"),
        (
            vec!["update", "acc-india", "--display-phone", "12ab"],
            2,
            "display phone",
        ),
        (vec!["update", "acc-india"], 2, "nothing to change"),
        (vec!["update", "acc-nobody", "--name", "X"], 3, "not found"),
    ] {
        let out = plane.ctl(&args);
        assert_eq!(out.code, code, "{args:?}: {out:?}");
        assert!(out.stderr.contains(why), "{args:?}: {out:?}");
    }
    let now = plane.ok(&["show", "acc-india", "--json"]).json();
    assert_eq!(
        (&now["name"], &now["plan"], &now["version"]),
        (&cleared["name"], &cleared["plan"], &cleared["version"]),
        "refused changes changed nothing"
    );
    let audit = plane
        .ok(&["audit", "--tenant", "acc-india", "--json"])
        .stdout;
    assert!(audit.contains("tenant.update"), "{audit}");
    // Usage: no router reported calls; the database size comes from its server.
    let usage = plane.ok(&["usage", "acc-india", "--json"]).json();
    assert_eq!(usage[0]["tenant"], "acc-india");
    assert_eq!(usage[0]["calls_today"], 0);
    assert!(usage[0]["database_bytes"].as_i64().unwrap() > 0, "{usage}");
    assert_eq!(usage[0]["storage_limit_bytes"], 10_240_000_000i64);
    assert_eq!(plane.ctl(&["usage", "acc-nobody"]).code, 3);
    assert!(plane.ok(&["usage"]).stdout.contains("acc-india"));
}

#[tokio::test]
async fn settings_are_checked_and_secrets_go_in_sealed_and_never_come_out() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 100);
    plane.ok(&[
        "create",
        "acc-juliet",
        "--name",
        "Juliet",
        "--sector",
        "autopecas",
    ]);
    let set = plane
        .ok(&[
            "settings", "set", "acc-juliet",
            r#"{"bot_name":"Juca","ai_provider":"anthropic","custom_prompt":"Seja cordial.","extra":{"desconto_max":10}}"#,
            "--json",
        ])
        .json();
    assert_eq!(set["settings"]["bot_name"], "Juca");
    assert_eq!(set["settings"]["extra"]["desconto_max"], 10);
    // A merge: named keys change, null removes, the rest stays.
    let merged = plane
        .ctl_env(
            &["settings", "set", "acc-juliet", "-", "--json"],
            &[],
            Some(r#"{"bot_name":null,"language":"pt-BR"}"#),
        )
        .json();
    assert!(merged["settings"].get("bot_name").is_none());
    assert_eq!(merged["settings"]["language"], "pt-BR");
    assert_eq!(merged["settings"]["ai_provider"], "anthropic");
    // Bad settings are named and change nothing.
    for (json, why) in [
        (r#"{"prompt":"x"}"#, "unknown setting \"prompt\""),
        (r#"{"ai_provider":"skynet"}"#, "ai_provider must be one of"),
        ("not json", "not valid JSON"),
        ("[]", "JSON object"),
    ] {
        let out = plane.ctl(&["settings", "set", "acc-juliet", json]);
        assert_eq!(out.code, 2, "{json}: {out:?}");
        assert!(out.stderr.contains(why), "{json}: {out:?}");
    }
    let shown = plane
        .ok(&["settings", "show", "acc-juliet", "--json"])
        .json();
    assert_eq!(
        shown["settings"], merged["settings"],
        "refused changes changed nothing"
    );

    // Secrets: in on stdin, sealed in the catalog, only their names come back.
    let before = plane.ok(&["show", "acc-juliet", "--json"]).json()["version"]
        .as_i64()
        .unwrap();
    let out = plane.ctl_env(
        &["secret", "set", "acc-juliet", "openai_api_key", "--json"],
        &[],
        Some("sk-super-secreta-123\n"),
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        !out.stdout.contains("sk-super"),
        "a secret value came back: {}",
        out.stdout
    );
    assert_eq!(out.json()["secrets"][0]["name"], "openai_api_key");
    let after = plane.ok(&["show", "acc-juliet", "--json"]).json()["version"]
        .as_i64()
        .unwrap();
    assert!(after > before, "routers hear of the change");
    let sealed: Vec<u8> = plane
        .catalog()
        .await
        .query_one("SELECT valor_cifrado FROM segredos_empresa", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        !String::from_utf8_lossy(&sealed).contains("sk-super"),
        "stored sealed, not in the clear"
    );
    for (args, stdin, code, why) in [
        (
            vec!["secret", "set", "acc-juliet", "root_password"],
            "x\n",
            2,
            "unknown secret",
        ),
        (
            vec!["secret", "set", "acc-juliet", "openai_api_key"],
            "\n",
            2,
            "no secret value",
        ),
        (
            vec!["secret", "delete", "acc-juliet", "gemini_api_key"],
            "",
            3,
            "has no secret",
        ),
        (
            vec!["secret", "set", "acc-nobody", "openai_api_key"],
            "sk-outra\n",
            3,
            "not found",
        ),
    ] {
        let out = plane.ctl_env(&args, &[], Some(stdin));
        assert_eq!(out.code, code, "{args:?}: {out:?}");
        assert!(out.stderr.contains(why), "{args:?}: {out:?}");
        assert!(!out.stderr.contains("sk-"), "a value in an error: {out:?}");
    }
    // Viewers see settings and secret names, but may not change them.
    let viewer = plane.viewer_token("leitor");
    assert_eq!(
        plane
            .ctl_as(&viewer, &["settings", "show", "acc-juliet"])
            .code,
        0
    );
    assert_eq!(
        plane
            .ctl_as(&viewer, &["settings", "set", "acc-juliet", "{}"])
            .code,
        8
    );
    let audit = plane
        .ok(&["audit", "--tenant", "acc-juliet", "--json"])
        .stdout;
    assert!(
        audit.contains("secret.set") && !audit.contains("sk-super"),
        "{audit}"
    );
    // Only an admin operator grants a caller token the secrets scope.
    let scoped = plane.ctl(&[
        "token",
        "issue",
        "--tenant",
        "acc-juliet",
        "--scope",
        "secrets",
    ]);
    assert_eq!(scoped.code, 0, "{scoped:?}");
    let operator = plane.operator_token("fleet-op", "operator");
    let refused = plane.ctl_as(
        &operator,
        &[
            "token",
            "issue",
            "--tenant",
            "acc-juliet",
            "--scope",
            "secrets",
        ],
    );
    assert_eq!(refused.code, 8, "{refused:?}");
    assert_eq!(
        plane
            .ctl_as(&operator, &["token", "issue", "--tenant", "acc-juliet"])
            .code,
        0
    );
    let unknown = plane.ctl(&[
        "token",
        "issue",
        "--tenant",
        "acc-juliet",
        "--scope",
        "root",
    ]);
    assert_eq!(unknown.code, 2, "{unknown:?}");
    assert!(unknown.stderr.contains("unknown scope"), "{unknown:?}");
    let deleted = plane
        .ok(&["secret", "delete", "acc-juliet", "openai_api_key", "--json"])
        .json();
    assert_eq!(deleted["secrets"].as_array().unwrap().len(), 0);
}

/// A login as if from behind a proxy that set `x-forwarded-for`.
async fn login_via(
    plane: &Plane,
    email: &str,
    forwarded: &str,
) -> Result<ac::LoginResponse, tonic::Status> {
    let mut req = tonic::Request::new(ac::LoginRequest {
        email: email.into(),
        password: "Senha errada 2026".into(),
    });
    req.metadata_mut()
        .insert("x-forwarded-for", forwarded.parse().unwrap());
    auth(plane)
        .await
        .login(req)
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn a_forwarded_address_counts_only_behind_a_trusted_proxy() {
    let limits = [
        ("CONTROL_PLANE__ACCOUNTS__ADDRESS_FREE_FAILURES", "3"),
        ("CONTROL_PLANE__ACCOUNTS__ACCOUNT_FREE_FAILURES", "100"),
    ];
    // Not trusted: a sender choosing its own x-forwarded-for still spends its own
    // address's allowance.
    let plane = Plane::start_with(&limits).await;
    let mut held = None;
    for i in 0..6 {
        let e = login_via(&plane, &format!("a{i}@kilo.com"), &format!("10.9.0.{i}"))
            .await
            .unwrap_err();
        if e.code() == Code::ResourceExhausted {
            held = Some(i);
            break;
        }
    }
    assert_eq!(held, Some(3), "the peer's address is what counts");

    // Trusted: the right-most entry is the proxy's word, one allowance per client.
    let mut with = limits.to_vec();
    with.push(("CONTROL_PLANE__ACCOUNTS__TRUST_FORWARDED_FOR", "true"));
    let plane = Plane::start_with(&with).await;
    for i in 0..3 {
        let e = login_via(&plane, &format!("b{i}@kilo.com"), "203.0.113.9, 10.1.0.1")
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
    }
    let e = login_via(&plane, "b9@kilo.com", "198.51.100.7, 10.1.0.1")
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::ResourceExhausted,
        "the same right-most client is held"
    );
    let e = login_via(&plane, "b9@kilo.com", "10.1.0.2")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "another client is not");
}

#[tokio::test]
async fn a_tenant_has_several_numbers_each_unique_across_tenants() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 100);
    plane.ok(&[
        "create",
        "num-alpha",
        "--name",
        "A",
        "--sector",
        "varejo",
        "--phone-number-id",
        "555000001",
    ]);
    plane.ok(&["create", "num-bravo", "--name", "B", "--sector", "varejo"]);
    let v0 = plane.ok(&["show", "num-alpha", "--json"]).json()["version"]
        .as_i64()
        .unwrap();
    let listed = plane
        .ok(&[
            "number",
            "add",
            "num-alpha",
            "555000002",
            "--display-phone",
            "+55 11 99999-0000",
            "--json",
        ])
        .json();
    let numbers = listed["numbers"].as_array().unwrap();
    assert_eq!(numbers.len(), 2);
    assert_eq!(
        (&numbers[0]["phone_number_id"], &numbers[0]["primary"]),
        (&"555000001".into(), &true.into())
    );
    assert_eq!(numbers[1]["display_phone"], "+5511999990000");
    let v1 = plane.ok(&["show", "num-alpha", "--json"]).json()["version"]
        .as_i64()
        .unwrap();
    assert!(v1 > v0, "routers hear of a new number");
    // Taken numbers, wherever they are held, are refused and change nothing.
    for (args, code, why) in [
        (
            vec!["number", "add", "num-bravo", "555000001"],
            4,
            "already belongs",
        ),
        (
            vec!["number", "add", "num-bravo", "555000002"],
            4,
            "already belongs",
        ),
        (
            vec!["number", "add", "num-bravo", "12ab"],
            2,
            "phone_number_id",
        ),
        (
            vec!["number", "remove", "num-alpha", "555000009"],
            3,
            "has no number",
        ),
        (
            vec!["number", "add", "num-nobody", "555000010"],
            3,
            "not found",
        ),
        (
            vec![
                "create",
                "num-charlie",
                "--name",
                "C",
                "--sector",
                "varejo",
                "--phone-number-id",
                "555000002",
            ],
            4,
            "already belongs",
        ),
    ] {
        let out = plane.ctl(&args);
        assert_eq!(out.code, code, "{args:?}: {out:?}");
        assert!(out.stderr.contains(why), "{args:?}: {out:?}");
    }
    assert_eq!(
        plane.ctl(&["show", "num-charlie"]).code,
        3,
        "no tenant was made"
    );
    let bravo = plane.ok(&["number", "list", "num-bravo", "--json"]).json();
    assert_eq!(bravo["numbers"].as_array().unwrap().len(), 0);
    // A tenant without a number gets it as its first; a removed number is free again.
    let first = plane
        .ok(&["number", "add", "num-bravo", "555000003", "--json"])
        .json();
    assert_eq!(first["numbers"][0]["primary"], true);
    assert_eq!(
        plane.ok(&["show", "num-bravo", "--json"]).json()["phone_number_id"],
        "555000003"
    );
    plane.ok(&["number", "remove", "num-alpha", "555000002"]);
    plane.ok(&["number", "add", "num-bravo", "555000002"]);
    let audit = plane
        .ok(&["audit", "--tenant", "num-alpha", "--json"])
        .stdout;
    assert!(
        audit.contains("number.add") && audit.contains("number.remove"),
        "{audit}"
    );
}

#[tokio::test]
async fn evolution_instances_are_named_once_and_their_tokens_shown_once() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 100);
    plane.ok(&["create", "evo-alpha", "--name", "A", "--sector", "varejo"]);
    plane.ok(&["create", "evo-bravo", "--name", "B", "--sector", "varejo"]);
    let added = plane
        .ok(&[
            "number",
            "add-evolution",
            "evo-alpha",
            "alpha-vendas",
            "--json",
        ])
        .json();
    assert_eq!(added["webhook_path"], "/webhooks/evolution/i/alpha-vendas");
    assert_eq!(added["token"].as_str().unwrap().len(), 43);
    let listed = plane.ok(&["number", "list", "evo-alpha", "--json"]).json();
    assert_eq!(
        listed["evolution_instances"],
        serde_json::json!(["alpha-vendas"])
    );
    assert!(!plane
        .ok(&["number", "list", "evo-alpha"])
        .stdout
        .contains(added["token"].as_str().unwrap()));
    for (args, code, why) in [
        (
            vec!["number", "add-evolution", "evo-bravo", "alpha-vendas"],
            4,
            "already exists",
        ),
        (
            vec!["number", "add-evolution", "evo-bravo", "Bad Name"],
            2,
            "instance name",
        ),
        (
            vec!["number", "remove-evolution", "evo-bravo", "alpha-vendas"],
            3,
            "has no evolution instance",
        ),
    ] {
        let out = plane.ctl(&args);
        assert_eq!(out.code, code, "{args:?}: {out:?}");
        assert!(out.stderr.contains(why), "{args:?}: {out:?}");
    }
    // Sealed in the catalog under its own context.
    let sealed: Vec<u8> = plane
        .catalog()
        .await
        .query_one("SELECT token_cifrado FROM instancias_evolution", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        control_plane::crypto::SecretBox::from_base64(common::MASTER_KEY)
            .unwrap()
            .open(
                &sealed,
                &control_plane::catalog::instance_context("alpha-vendas")
            )
            .unwrap(),
        added["token"].as_str().unwrap()
    );
    plane.ok(&["number", "remove-evolution", "evo-alpha", "alpha-vendas"]);
    plane.ok(&["number", "add-evolution", "evo-bravo", "alpha-vendas"]);
}

#[tokio::test]
async fn a_router_reads_settings_and_reports_usage_only_for_its_own_servers_tenants() {
    use proto::control::v1::{
        tenant_directory_client::TenantDirectoryClient, TenantSettingsRequest, TenantUsage,
        UsageReport,
    };
    let plane = Plane::start().await;
    plane.add_server("pg-a", pg_harness::shared(), 100);
    plane.add_server("pg-b", pg_harness::shared_second(), 100);
    plane.ok(&[
        "create", "dir-a", "--name", "A", "--sector", "servicos", "--server", "pg-a",
    ]);
    let on_b = plane
        .ok(&[
            "create", "dir-b", "--name", "B", "--sector", "servicos", "--server", "pg-b", "--json",
        ])
        .json();
    let b_id = on_b["id"].as_i64().unwrap();
    let out = plane.ctl_env(
        &["secret", "set", "dir-b", "openai_api_key"],
        &[],
        Some("sk-do-b\n"),
    );
    assert_eq!(out.code, 0, "{out:?}");
    // A stolen credential of a router that serves pg-a only.
    let edge = plane
        .ok(&["router", "add", "edge-a", "--server", "pg-a"])
        .stdout
        .trim()
        .to_string();
    let mut dir = TenantDirectoryClient::new(plane.channel().await);
    let read = dir
        .get_tenant_settings(authed(
            TenantSettingsRequest {
                tenant_id: b_id,
                with_secrets: true,
            },
            &edge,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        read.code(),
        Code::NotFound,
        "another server's tenant does not exist for it"
    );
    assert!(!read.message().contains("sk-"));
    let report = |tenants: Vec<TenantUsage>| authed(UsageReport { tenants }, &edge);
    let recorded = dir
        .report_usage(report(vec![TenantUsage {
            tenant_id: b_id,
            calls: 1_000_000,
            messages: 5,
        }]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        recorded.recorded, 0,
        "usage of a tenant it does not serve is not counted"
    );
    assert_eq!(
        plane.ok(&["usage", "dir-b", "--json"]).json()[0]["calls_today"],
        0
    );
    let flood: Vec<TenantUsage> = (0..10_001)
        .map(|i| TenantUsage {
            tenant_id: i,
            calls: 1,
            messages: 0,
        })
        .collect();
    assert_eq!(
        dir.report_usage(report(flood)).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    // A user's or a service's token is no router credential here.
    let caller = plane
        .ok(&["token", "issue", "--all"])
        .stdout
        .trim()
        .to_string();
    let e = dir
        .get_tenant_settings(authed(
            TenantSettingsRequest {
                tenant_id: b_id,
                with_secrets: true,
            },
            &caller,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
}
