//! `tenantctl operator ...`, `tenantctl token revoke|list`, `tenantctl audit`: who may use
//! the platform, and what they did.

use super::{output, parse_ttl, ttl_or_default, Client, Failure};
use clap::{Args, Subcommand};
use proto::control::v1 as pb;
use proto::model::{FromWire, ToWire};
use serde_json::json;
use tenant_model::{DeadLetterKind, WebhookSource};

#[derive(Subcommand)]
pub(super) enum OperatorCommand {
    /// Register an operator and print its first token.
    Add {
        name: String,
        /// viewer (reads), operator (runs the fleet), admin (servers, operators, routers).
        #[arg(long)]
        role: String,
        /// Token lifetime (default: the control plane's).
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Print a new token for an existing operator.
    Token {
        name: String,
        /// Token lifetime (default: the control plane's).
        #[arg(long)]
        ttl: Option<String>,
    },
    /// List operators.
    List,
    /// Disable an operator and revoke every token it holds.
    Disable { name: String },
}

#[derive(Subcommand)]
pub(super) enum RouterCommand {
    /// Register a router and print its directory credential (its `directory_token`).
    Add {
        name: String,
        /// A database server it may serve (repeat for more).
        #[arg(long = "server", required_unless_present = "all_servers")]
        servers: Vec<String>,
        /// It may serve every server.
        #[arg(long, conflicts_with = "servers")]
        all_servers: bool,
        /// Credential lifetime (default: the control plane's).
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Print a new credential for a registered router.
    Token {
        name: String,
        #[arg(long)]
        ttl: Option<String>,
    },
    /// List routers, their servers and how many tenants' credentials each was handed.
    List,
    /// Revoke a router: its credentials stop working and its change streams close.
    Revoke {
        name: String,
        /// Also rotate the password of every tenant the router was handed.
        #[arg(long)]
        rotate: bool,
    },
}

#[derive(Subcommand)]
pub(super) enum DeadLetterCommand {
    /// List dead letters, newest first.
    List {
        /// Only this source: meta or evolution.
        #[arg(long, default_value = "")]
        source: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Print one dead letter's body (and, with --json, its details).
    Show { id: i64 },
    /// Store dead letters in their tenant's database: the given ids, or every pending
    /// suspended-tenant letter of --tenant. Idempotent: a message already stored is not
    /// stored again. (A resumed tenant's letters are replayed automatically.)
    Replay {
        /// Dead-letter ids.
        #[arg(required_unless_present = "tenant", conflicts_with = "tenant")]
        ids: Vec<i64>,
        /// Every pending letter of this tenant (slug or id).
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(Args)]
pub(super) struct RotateArgs {
    /// Tenants (slugs or ids).
    tenants: Vec<String>,
    /// Every active or suspended tenant.
    #[arg(long, conflicts_with = "tenants")]
    all: bool,
    /// Rotate the owner roles' passwords (used by control-plane jobs only) instead of the
    /// login roles' (used by routers).
    #[arg(long)]
    owners: bool,
}

#[derive(Args)]
pub(super) struct AuditArgs {
    /// Only entries about this tenant (slug or id).
    #[arg(long)]
    tenant: Option<String>,
    /// Only entries this recent: a duration (`90m`, `2d`) back from now.
    #[arg(long)]
    since: Option<String>,
    /// Most entries shown, newest first.
    #[arg(long, default_value_t = 100)]
    limit: u32,
}

pub(super) async fn operator(
    client: &mut Client,
    cmd: OperatorCommand,
    json: bool,
) -> Result<(), Failure> {
    match cmd {
        OperatorCommand::Add { name, role, ttl } => {
            let t = client
                .add_operator(pb::AddOperatorRequest {
                    name,
                    role,
                    ttl_secs: ttl_or_default(ttl.as_deref())?,
                })
                .await?
                .into_inner();
            print_issued(&t, json);
        }
        OperatorCommand::Token { name, ttl } => {
            let t = client
                .issue_operator_token(pb::OperatorTokenRequest {
                    name,
                    ttl_secs: ttl_or_default(ttl.as_deref())?,
                })
                .await?
                .into_inner();
            print_issued(&t, json);
        }
        OperatorCommand::List => {
            let ops = client
                .list_operators(pb::ListOperatorsRequest {})
                .await?
                .into_inner()
                .operators;
            print_operators(&ops, json);
        }
        OperatorCommand::Disable { name } => {
            let op = client
                .disable_operator(pb::OperatorRef { name })
                .await?
                .into_inner();
            print_operators(&[op], json);
        }
    }
    Ok(())
}

pub(super) async fn router(
    client: &mut Client,
    cmd: RouterCommand,
    json: bool,
) -> Result<(), Failure> {
    match cmd {
        RouterCommand::Add {
            name,
            servers,
            all_servers,
            ttl,
        } => {
            let t = client
                .add_router(pb::AddRouterRequest {
                    name,
                    servers,
                    all_servers,
                    ttl_secs: ttl_or_default(ttl.as_deref())?,
                })
                .await?
                .into_inner();
            print_issued(&t, json);
        }
        RouterCommand::Token { name, ttl } => {
            let t = client
                .issue_router_token(pb::RouterTokenRequest {
                    name,
                    ttl_secs: ttl_or_default(ttl.as_deref())?,
                })
                .await?
                .into_inner();
            print_issued(&t, json);
        }
        RouterCommand::List => {
            let routers = client
                .list_routers(pb::ListRoutersRequest {})
                .await?
                .into_inner()
                .routers;
            print_routers(&routers, json);
        }
        RouterCommand::Revoke { name, rotate } => {
            let r = client
                .revoke_router(pb::RevokeRouterRequest { name, rotate })
                .await?
                .into_inner();
            if json {
                output::json(&json!({
                    "router": r.router.as_ref().map(|r| r.name.clone()),
                    "tenants_seen": r.tenants_seen, "rotated": r.rotated,
                }));
            } else {
                output::line(&format!(
                    "router revoked; it was handed {} tenants' credentials, {} rotated",
                    r.tenants_seen.len(),
                    r.rotated.len()
                ));
                if !rotate && !r.tenants_seen.is_empty() {
                    output::warn(
                        "those passwords still work: rotate them with `tenantctl rotate` (or revoke with --rotate)",
                    );
                }
            }
        }
    }
    Ok(())
}

pub(super) async fn dead_letters(
    client: &mut Client,
    cmd: DeadLetterCommand,
    json: bool,
) -> Result<(), Failure> {
    let spelled = |d: &pb::DeadLetterInfo| {
        let source = WebhookSource::from_wire("source", d.source).map_or("?", |s| s.as_str());
        let kind = DeadLetterKind::from_wire("kind", d.kind).map_or("?", |k| k.as_str());
        (source, kind)
    };
    let info = |d: &pb::DeadLetterInfo| {
        let (source, kind) = spelled(d);
        json!({
            "id": d.id, "source": source, "kind": kind, "tenant": d.tenant,
            "phone_number_id": d.phone_number_id, "reason": d.reason, "times": d.times,
            "first_ms": d.first_ms, "last_ms": d.last_ms, "replayed_ms": d.replayed_ms,
            "size": d.size,
        })
    };
    match cmd {
        DeadLetterCommand::List { source, limit } => {
            let source = match source.as_str() {
                "" => 0,
                s => WebhookSource::parse(s)
                    .map_err(|e| super::fail(2, &e.0))?
                    .to_wire(),
            };
            let letters = client
                .list_dead_letters(pb::ListDeadLettersRequest { source, limit })
                .await?
                .into_inner()
                .dead_letters;
            if json {
                output::json(&serde_json::Value::Array(
                    letters.iter().map(info).collect(),
                ));
            } else {
                let rows: Vec<_> = letters
                    .iter()
                    .map(|d| {
                        let (source, kind) = spelled(d);
                        vec![
                            d.id.to_string(),
                            source.to_string(),
                            kind.to_string(),
                            d.tenant.clone(),
                            d.phone_number_id.clone(),
                            d.times.to_string(),
                            d.size.to_string(),
                            if d.replayed_ms > 0 { "yes" } else { "" }.to_string(),
                            d.reason.clone(),
                        ]
                    })
                    .collect();
                output::table(
                    &[
                        "ID", "SOURCE", "KIND", "TENANT", "NUMBER", "TIMES", "BYTES", "REPLAYED",
                        "REASON",
                    ],
                    &rows,
                );
            }
        }
        DeadLetterCommand::Show { id } => {
            let d = client
                .get_dead_letter(pb::DeadLetterRef { id })
                .await?
                .into_inner();
            let body = String::from_utf8_lossy(&d.body).into_owned();
            if json {
                let mut v = info(&d);
                v["body"] = json!(body);
                output::json(&v);
            } else {
                output::line(&body);
            }
        }
        DeadLetterCommand::Replay { ids, tenant } => {
            let replayed = client
                .replay_dead_letters(pb::ReplayDeadLettersRequest {
                    ids,
                    tenant: tenant.unwrap_or_default(),
                })
                .await?
                .into_inner()
                .replayed;
            if json {
                output::json(&serde_json::Value::Array(
                    replayed
                        .iter()
                        .map(|r| {
                            json!({
                                "id": r.id, "tenant": r.tenant, "messages": r.messages,
                                "duplicates": r.duplicates, "statuses": r.statuses,
                                "refused": r.refused,
                            })
                        })
                        .collect(),
                ));
            } else {
                let rows: Vec<_> = replayed
                    .iter()
                    .map(|r| {
                        vec![
                            r.id.to_string(),
                            r.tenant.clone(),
                            r.messages.to_string(),
                            r.duplicates.to_string(),
                            r.statuses.to_string(),
                            r.refused.to_string(),
                        ]
                    })
                    .collect();
                output::table(
                    &["ID", "TENANT", "STORED", "ALREADY", "STATUSES", "REFUSED"],
                    &rows,
                );
            }
        }
    }
    Ok(())
}

pub(super) async fn rotate(client: &mut Client, a: RotateArgs, json: bool) -> Result<u8, Failure> {
    if !a.all && a.tenants.is_empty() {
        return Err(super::fail(2, "name tenants to rotate or pass --all"));
    }
    let r = client
        .rotate_credentials(pb::RotateRequest {
            tenants: a.tenants,
            all: a.all,
            owners: a.owners,
        })
        .await?
        .into_inner();
    if json {
        output::json(&json!({
            "rotated": r.rotated,
            "failed": r.failed.iter().map(|f| json!({"slug": f.slug, "error": f.error})).collect::<Vec<_>>(),
        }));
    } else {
        output::line(&format!(
            "{} rotated, {} failed",
            r.rotated.len(),
            r.failed.len()
        ));
        for f in &r.failed {
            output::line(&format!("{}: {}", f.slug, f.error));
        }
    }
    Ok(if r.failed.is_empty() { 0 } else { 7 })
}

fn print_routers(routers: &[pb::RouterInfo], json: bool) {
    if json {
        output::json(&serde_json::Value::Array(
            routers
                .iter()
                .map(|r| {
                    json!({
                        "name": r.name, "servers": if r.all_servers { json!("all") } else { json!(r.servers) },
                        "active": r.active, "tenants_seen": r.tenants_seen, "created_by": r.created_by,
                    })
                })
                .collect(),
        ));
        return;
    }
    let rows: Vec<_> = routers
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                if r.all_servers {
                    "all".to_string()
                } else {
                    r.servers.join(",")
                },
                if r.active { "active" } else { "revoked" }.to_string(),
                r.tenants_seen.to_string(),
            ]
        })
        .collect();
    output::table(&["NAME", "SERVERS", "STATE", "TENANTS_SEEN"], &rows);
}

pub(super) async fn audit(client: &mut Client, a: AuditArgs, json: bool) -> Result<(), Failure> {
    let since_ms = match a.since {
        Some(raw) => {
            // A duration above zero (parse_ttl refuses 0 and anything unparseable).
            let back = parse_ttl(&raw)?;
            let now_ms = i64::try_from(caller_auth::now_secs()).unwrap_or(i64::MAX) * 1000;
            now_ms - i64::try_from(back).unwrap_or(i64::MAX / 1000) * 1000
        }
        None => 0,
    };
    let entries = client
        .read_audit(pb::ReadAuditRequest {
            tenant: a.tenant.unwrap_or_default(),
            since_ms,
            limit: a.limit,
        })
        .await?
        .into_inner()
        .entries;
    if json {
        output::json(&serde_json::Value::Array(
            entries
                .iter()
                .map(|e| {
                    json!({
                        "id": e.id, "at_ms": e.at_ms, "actor": e.actor, "token_id": e.token_id,
                        "action": e.action, "target": e.target, "tenant_id": e.tenant_id,
                        "outcome": e.outcome,
                        "details": serde_json::from_str::<serde_json::Value>(&e.details_json)
                            .unwrap_or(serde_json::Value::Null),
                    })
                })
                .collect(),
        ));
        return Ok(());
    }
    let rows: Vec<_> = entries
        .iter()
        .map(|e| {
            vec![
                e.at_ms.to_string(),
                e.actor.clone(),
                e.action.clone(),
                e.target.clone(),
                e.outcome.clone(),
                e.token_id.clone(),
            ]
        })
        .collect();
    output::table(
        &["AT_MS", "ACTOR", "ACTION", "TARGET", "OUTCOME", "TOKEN"],
        &rows,
    );
    Ok(())
}

/// Prints a minted token: the token alone (scripts capture it), or JSON with its id.
pub(super) fn print_issued(t: &pb::IssueTokenResponse, json: bool) {
    if json {
        output::json(
            &json!({"token": t.token, "token_id": t.token_id, "expires_at": t.expires_at}),
        );
    } else {
        output::line(&t.token);
    }
}

pub(super) fn print_tokens(tokens: &[pb::TokenInfo], json: bool) {
    if json {
        output::json(&serde_json::Value::Array(
            tokens
                .iter()
                .map(|t| {
                    json!({
                        "id": t.id, "kind": t.kind, "subject": t.subject, "tenant_ids": t.tenant_ids,
                        "all_tenants": t.all_tenants, "issued_by": t.issued_by,
                        "issued_at_ms": t.issued_at_ms, "expires_at_ms": t.expires_at_ms,
                        "revoked_at_ms": (t.revoked_at_ms != 0).then_some(t.revoked_at_ms),
                        "revoked_by": (!t.revoked_by.is_empty()).then_some(&t.revoked_by),
                    })
                })
                .collect(),
        ));
        return;
    }
    let rows: Vec<_> = tokens
        .iter()
        .map(|t| {
            let grants = if t.all_tenants {
                "all".to_string()
            } else {
                t.tenant_ids
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let revoked = if t.revoked_at_ms == 0 {
                String::new()
            } else {
                format!("by {}", t.revoked_by)
            };
            vec![
                t.id.clone(),
                t.kind.clone(),
                t.subject.clone(),
                grants,
                t.expires_at_ms.to_string(),
                revoked,
            ]
        })
        .collect();
    output::table(
        &[
            "ID",
            "KIND",
            "SUBJECT",
            "TENANTS",
            "EXPIRES_AT_MS",
            "REVOKED",
        ],
        &rows,
    );
}

fn print_operators(ops: &[pb::Operator], json: bool) {
    if json {
        output::json(&serde_json::Value::Array(
            ops.iter()
                .map(|o| json!({"name": o.name, "role": o.role, "active": o.active, "created_by": o.created_by}))
                .collect(),
        ));
        return;
    }
    let rows: Vec<_> = ops
        .iter()
        .map(|o| {
            vec![
                o.name.clone(),
                o.role.clone(),
                if o.active { "active" } else { "disabled" }.to_string(),
                o.created_by.clone(),
            ]
        })
        .collect();
    output::table(&["NAME", "ROLE", "STATE", "CREATED_BY"], &rows);
}
