//! The router serves people (#12): user access tokens from a real login, the empresa from
//! the token, roles per RPC, and sessions that stop on every router when revoked.

#![allow(clippy::unwrap_used)]

mod common;

use common::{call, Plane, Router};
use proto::accounts::v1 as ac;
use proto::domain::v1 as dm;
use proto::domain::v1::{
    catalog_client::CatalogClient, conversations_client::ConversationsClient,
    leads_client::LeadsClient, settings_client::SettingsClient,
};
use std::time::Duration;
use tonic::transport::Channel;
use tonic::Code;

/// Every domain RPC with a valid request for the fixture, and whether it writes (and
/// what least role it needs).
const RPCS: [(&str, &str); 14] = [
    ("UpsertLead", "agent"),
    ("GetLead", "viewer"),
    ("ListLeads", "viewer"),
    ("UpdateLeadStatus", "agent"),
    ("OpenConversation", "agent"),
    ("ListConversations", "viewer"),
    ("AppendMessage", "agent"),
    ("ListMessages", "viewer"),
    ("MarkRead", "agent"),
    ("SearchItems", "viewer"),
    ("GetItem", "viewer"),
    ("UpsertItem", "admin"),
    ("GetSettings", "admin"),
    ("GetSecrets", "owner"),
];

const ROLES: [&str; 4] = ["viewer", "agent", "admin", "owner"];

fn with_token<T>(msg: T, token: &str, tenant: Option<&str>) -> tonic::Request<T> {
    match tenant {
        Some(t) => call(msg, t, token),
        None => {
            let mut r = tonic::Request::new(msg);
            r.metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            r
        }
    }
}

/// Calls `rpc` as `token` (with `x-tenant` if given); the status code.
async fn invoke(
    ch: &Channel,
    rpc: &str,
    token: &str,
    tenant: Option<&str>,
    lead: i64,
    conv: i64,
) -> Code {
    let r = |m| with_token(m, token, tenant);
    let (mut leads, mut convs, mut cat) = (
        LeadsClient::new(ch.clone()),
        ConversationsClient::new(ch.clone()),
        CatalogClient::new(ch.clone()),
    );
    let code = |res: Result<(), tonic::Status>| res.map_or_else(|e| e.code(), |()| Code::Ok);
    match rpc {
        "UpsertLead" => code(
            leads
                .upsert_lead(r(common::upsert("5511955550000", "Novo")))
                .await
                .map(drop),
        ),
        "GetLead" => code(
            leads
                .get_lead(with_token(
                    dm::GetLeadRequest {
                        key: Some(dm::get_lead_request::Key::Id(lead)),
                    },
                    token,
                    tenant,
                ))
                .await
                .map(drop),
        ),
        "ListLeads" => code(
            leads
                .list_leads(with_token(dm::ListLeadsRequest::default(), token, tenant))
                .await
                .map(drop),
        ),
        "UpdateLeadStatus" => code(
            leads
                .update_lead_status(with_token(
                    dm::UpdateLeadStatusRequest {
                        id: lead,
                        status: dm::LeadStatus::Qualificado as i32,
                    },
                    token,
                    tenant,
                ))
                .await
                .map(drop),
        ),
        "OpenConversation" => code(
            convs
                .open_conversation(with_token(
                    dm::OpenConversationRequest { lead_id: lead },
                    token,
                    tenant,
                ))
                .await
                .map(drop),
        ),
        "ListConversations" => code(
            convs
                .list_conversations(with_token(
                    dm::ListConversationsRequest::default(),
                    token,
                    tenant,
                ))
                .await
                .map(drop),
        ),
        "AppendMessage" => code(
            convs
                .append_message(with_token(
                    dm::AppendMessageRequest {
                        conversation_id: conv,
                        direction: dm::MessageDirection::Saida as i32,
                        body: "Olá".into(),
                        ..Default::default()
                    },
                    token,
                    tenant,
                ))
                .await
                .map(drop),
        ),
        "ListMessages" => code(
            convs
                .list_messages(with_token(
                    dm::ListMessagesRequest {
                        conversation_id: conv,
                        ..Default::default()
                    },
                    token,
                    tenant,
                ))
                .await
                .map(drop),
        ),
        "MarkRead" => code(
            convs
                .mark_read(with_token(
                    dm::MarkReadRequest {
                        conversation_id: conv,
                    },
                    token,
                    tenant,
                ))
                .await
                .map(drop),
        ),
        "SearchItems" => code(
            cat.search_items(with_token(dm::SearchItemsRequest::default(), token, tenant))
                .await
                .map(drop),
        ),
        "GetItem" => code(
            cat.get_item(with_token(
                dm::GetItemRequest {
                    key: Some(dm::get_item_request::Key::Sku("SKU-1".into())),
                },
                token,
                tenant,
            ))
            .await
            .map(drop),
        ),
        "UpsertItem" => code(
            cat.upsert_item(with_token(
                dm::UpsertItemRequest {
                    item: Some(dm::CatalogItem {
                        sku: "SKU-1".into(),
                        name: "Serviço".into(),
                        price_cents: 1000,
                        currency: "BRL".into(),
                        active: true,
                        ..Default::default()
                    }),
                },
                token,
                tenant,
            ))
            .await
            .map(drop),
        ),
        "GetSettings" | "GetSecrets" => code(
            SettingsClient::new(ch.clone())
                .get_settings(with_token(
                    dm::GetSettingsRequest {
                        include_secrets: rpc == "GetSecrets",
                    },
                    token,
                    tenant,
                ))
                .await
                .map(drop),
        ),
        other => panic!("unknown rpc {other}"),
    }
}

fn password_of(role: &str) -> String {
    format!("Chave secreta numero {} de 2026", rank(role))
}

fn rank(role: &str) -> usize {
    ROLES.iter().position(|r| *r == role).unwrap()
}

/// Adds a user with `role` and a known password to `slug`, logs it in; the login.
async fn user(plane: &Plane, slug: &str, role: &str) -> ac::LoginResponse {
    use proto::model::ToWire;
    let email = format!("{role}@{slug}.com.br");
    let password = password_of(role);
    plane
        .admin()
        .await
        .add_user(plane.admin_req(proto::control::v1::AdminAddUserRequest {
            tenant: slug.into(),
            email: email.clone(),
            name: role.into(),
            role: tenant_model::UserRole::parse(role).unwrap().to_wire(),
            password: password.clone(),
        }))
        .await
        .unwrap();
    plane
        .auth()
        .await
        .login(ac::LoginRequest { email, password })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_with_every_role_is_allowed_or_denied_by_the_role() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 50).await;
    let t = plane.create("us-alpha", "servicos", "main").await;
    plane.create("us-bravo", "servicos", "main").await;
    plane.set_plan_users(10).await;
    let router = Router::start(&plane, &[]).await;
    let ch = router.channel().await;
    // A lead and a conversation to act on, made with a service token.
    let service = plane.token(&["us-alpha"], false).await;
    let lead = LeadsClient::new(ch.clone())
        .upsert_lead(call(
            common::upsert("5511944440000", "Cliente"),
            "us-alpha",
            &service,
        ))
        .await
        .unwrap()
        .into_inner()
        .id;
    let conv = ConversationsClient::new(ch.clone())
        .open_conversation(call(
            dm::OpenConversationRequest { lead_id: lead },
            "us-alpha",
            &service,
        ))
        .await
        .unwrap()
        .into_inner()
        .id;
    let mut logins = Vec::new();
    for role in ROLES {
        logins.push((role, user(&plane, "us-alpha", role).await));
    }
    for (role, login) in &logins {
        assert_eq!(login.tenant_id, t.id);
        for (rpc, needs) in RPCS {
            let got = invoke(&ch, rpc, &login.access_token, None, lead, conv).await;
            if rank(role) >= rank(needs) {
                assert!(
                    !matches!(got, Code::PermissionDenied | Code::Unauthenticated),
                    "{role} may call {rpc}: got {got:?}"
                );
            } else {
                assert_eq!(got, Code::PermissionDenied, "{role} may not call {rpc}");
            }
        }
    }
    // The empresa comes from the token: its own slug or id in x-tenant is fine, another
    // empresa's (or an unknown one) is refused whatever the role.
    let owner = &logins[3].1.access_token;
    let id = t.id.to_string();
    for own in ["us-alpha", id.as_str()] {
        assert_eq!(
            invoke(&ch, "ListLeads", owner, Some(own), lead, conv).await,
            Code::Ok
        );
    }
    for other in ["us-bravo", "us-nobody", "1"] {
        if other == id {
            continue;
        }
        assert_eq!(
            invoke(&ch, "ListLeads", owner, Some(other), lead, conv).await,
            Code::PermissionDenied,
            "x-tenant {other}"
        );
    }
    // Service tokens keep working as before.
    assert_eq!(
        invoke(&ch, "UpsertItem", &service, Some("us-alpha"), lead, conv).await,
        Code::Ok
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_user_and_a_logged_out_session_stop_on_every_router() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 50).await;
    plane.create("us-charlie", "servicos", "main").await;
    let routers = [
        Router::start(&plane, &[]).await,
        Router::start(&plane, &[]).await,
    ];
    let mut channels = Vec::new();
    for r in &routers {
        channels.push(r.channel().await);
    }
    let agent = user(&plane, "us-charlie", "agent").await;
    let viewer = user(&plane, "us-charlie", "viewer").await;
    for ch in &channels {
        for token in [&agent.access_token, &viewer.access_token] {
            assert_eq!(invoke(ch, "ListLeads", token, None, 0, 0).await, Code::Ok);
        }
    }
    // Each router stops taking `token` within a few seconds (the access token itself is
    // still unexpired: the revocation feed carries the session's end).
    let stops = |token: String| {
        let channels = channels.clone();
        async move {
            for ch in &channels {
                let stopped = common::eventually(Duration::from_secs(5), || async {
                    invoke(ch, "ListLeads", &token, None, 0, 0).await == Code::Unauthenticated
                })
                .await;
                assert!(stopped, "a router still serves a revoked session");
            }
        }
    };
    plane
        .admin()
        .await
        .update_user(plane.admin_req(proto::control::v1::AdminUpdateUserRequest {
            email: "agent@us-charlie.com.br".into(),
            role: 0,
            status: ac::UserStatus::Disabled as i32,
        }))
        .await
        .unwrap();
    stops(agent.access_token.clone()).await;
    let mut auth = plane.auth().await;
    let mut logout = tonic::Request::new(ac::LogoutRequest {});
    logout.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", viewer.access_token).parse().unwrap(),
    );
    auth.logout(logout).await.unwrap();
    stops(viewer.access_token.clone()).await;
    // A new login of the viewer works again everywhere; the disabled agent cannot log in.
    let again = user_login(&plane, "viewer@us-charlie.com.br", &password_of("viewer"))
        .await
        .unwrap();
    for ch in &channels {
        assert_eq!(
            invoke(ch, "ListLeads", &again.access_token, None, 0, 0).await,
            Code::Ok
        );
    }
    let refused = user_login(&plane, "agent@us-charlie.com.br", &password_of("agent"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
}

async fn user_login(
    plane: &Plane,
    email: &str,
    password: &str,
) -> Result<ac::LoginResponse, tonic::Status> {
    plane
        .auth()
        .await
        .login(ac::LoginRequest {
            email: email.into(),
            password: password.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_reach_services_and_secrets_only_callers_allowed_them() {
    let pg = pg_harness::shared();
    let plane = Plane::start().await;
    plane.add_server("main", pg, 50).await;
    plane.create("us-delta", "servicos", "main").await;
    plane.create("us-echo", "servicos", "main").await;
    let mut admin = plane.admin().await;
    admin
        .update_settings(plane.admin_req(proto::control::v1::UpdateSettingsRequest {
            tenant: "us-delta".into(),
            settings_json: r#"{"bot_name":"Delta Bot","ai_provider":"openai"}"#.into(),
        }))
        .await
        .unwrap();
    admin
        .set_secret(plane.admin_req(proto::control::v1::SetSecretRequest {
            tenant: "us-delta".into(),
            name: "openai_api_key".into(),
            value: "sk-delta-123".into(),
        }))
        .await
        .unwrap();
    let router = Router::start(&plane, &[]).await;
    let ch = router.channel().await;
    let get = |token: String, tenant: &'static str, secrets: bool| {
        let ch = ch.clone();
        async move {
            SettingsClient::new(ch)
                .get_settings(call(
                    dm::GetSettingsRequest {
                        include_secrets: secrets,
                    },
                    tenant,
                    &token,
                ))
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let service = plane.token(&["us-delta"], false).await;
    let plain = get(service.clone(), "us-delta", false).await.unwrap();
    let doc: serde_json::Value = serde_json::from_str(&plain.settings_json).unwrap();
    assert_eq!(doc["bot_name"], "Delta Bot");
    assert!(
        plain.secrets.is_empty(),
        "no secrets unless asked and allowed"
    );
    let denied = get(service.clone(), "us-delta", true).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(!denied.message().contains("sk-"), "{denied:?}");
    assert_eq!(
        get(service.clone(), "us-echo", false)
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied,
        "another tenant's settings"
    );
    let scoped = plane
        .issue_scoped(&["us-delta"], false, &["secrets"])
        .await
        .token;
    let with = get(scoped.clone(), "us-delta", true).await.unwrap();
    assert_eq!(
        with.secrets.get("openai_api_key").map(String::as_str),
        Some("sk-delta-123")
    );
    // The scope reaches only the tenants the token grants.
    assert_eq!(
        get(scoped, "us-echo", true).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    // A change reaches the router's cache through the change stream.
    admin
        .update_settings(plane.admin_req(proto::control::v1::UpdateSettingsRequest {
            tenant: "us-delta".into(),
            settings_json: r#"{"bot_name":"Delta Bot 2"}"#.into(),
        }))
        .await
        .unwrap();
    let seen = common::eventually(Duration::from_secs(5), || async {
        let s = get(service.clone(), "us-delta", false).await.unwrap();
        s.settings_json.contains("Delta Bot 2")
    })
    .await;
    assert!(seen, "the router still serves the old settings");
}
