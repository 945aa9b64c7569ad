//! `tenantctl user`: people who log in to a tenant.

use super::{fail, output, Client, Failure};
use clap::Subcommand;
use proto::accounts::v1 as ac;
use proto::control::v1 as pb;
use proto::model::{spelled, ToWire};
use serde_json::json;
use std::io::{BufRead, IsTerminal};
use tenant_model::{UserRole, UserStatus};

#[derive(Subcommand)]
pub(super) enum UserCommand {
    /// Add a user to a tenant. Prints a generated one-time password (to be changed at
    /// first login) unless --password-stdin gives the password on stdin (never a flag).
    Add {
        tenant: String,
        email: String,
        /// viewer, agent, admin or owner.
        #[arg(long)]
        role: String,
        #[arg(long, default_value = "")]
        name: String,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// A tenant's users.
    List { tenant: String },
    /// Disable a user: logins stop and every session ends on every router at once.
    Disable { email: String },
    /// Let a disabled user log in again.
    Enable { email: String },
    /// Change a user's role.
    SetRole {
        email: String,
        /// viewer, agent, admin or owner.
        role: String,
    },
    /// Give a user a generated one-time password (printed); every session ends.
    ResetPassword { email: String },
}

pub(super) async fn user(client: &mut Client, cmd: UserCommand, json: bool) -> Result<(), Failure> {
    let role = |raw: &str| {
        UserRole::parse(raw)
            .map(UserRole::to_wire)
            .map_err(|e| fail(2, e.0))
    };
    let update = |email: String, role: i32, status: i32| pb::AdminUpdateUserRequest {
        email,
        role,
        status,
    };
    match cmd {
        UserCommand::Add {
            tenant,
            email,
            role: r,
            name,
            password_stdin,
        } => {
            let role = role(&r)?;
            let password = if password_stdin {
                read_password()?
            } else {
                String::new()
            };
            let added = client
                .add_user(pb::AdminAddUserRequest {
                    tenant,
                    email,
                    name,
                    role,
                    password,
                })
                .await?
                .into_inner();
            print_added(&added, json);
        }
        UserCommand::List { tenant } => {
            let users = client
                .list_users(pb::TenantRef { tenant })
                .await?
                .into_inner()
                .users;
            print_users(&users, json);
        }
        UserCommand::Disable { email } => {
            let u = client
                .update_user(update(email, 0, UserStatus::Disabled.to_wire()))
                .await?
                .into_inner();
            print_users(&[u], json);
        }
        UserCommand::Enable { email } => {
            let u = client
                .update_user(update(email, 0, UserStatus::Active.to_wire()))
                .await?
                .into_inner();
            print_users(&[u], json);
        }
        UserCommand::SetRole { email, role: r } => {
            let u = client
                .update_user(update(email, role(&r)?, 0))
                .await?
                .into_inner();
            print_users(&[u], json);
        }
        UserCommand::ResetPassword { email } => {
            let added = client
                .reset_user_password(pb::UserRef { email })
                .await?
                .into_inner();
            print_added(&added, json);
        }
    }
    Ok(())
}

fn read_password() -> Result<String, Failure> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("password (input is not hidden; prefer piping it):");
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| fail(2, format!("cannot read the password from stdin: {e}")))?;
    let password = line.trim_end_matches(['\r', '\n']).to_string();
    if password.is_empty() {
        return Err(fail(2, "no password on stdin"));
    }
    Ok(password)
}

fn user_json(u: &ac::User) -> serde_json::Value {
    json!({
        "id": u.id,
        "email": u.email,
        "name": u.name,
        "role": spelled(u.role, UserRole::as_str),
        "status": spelled(u.status, UserStatus::as_str),
        "tenant_id": u.tenant_id,
        "tenant": u.tenant_slug,
        "last_login_ms": u.last_login_ms,
        "must_change_password": u.must_change_password,
    })
}

fn print_added(added: &ac::AddedUser, json: bool) {
    let user = added.user.clone().unwrap_or_default();
    if json {
        let mut v = user_json(&user);
        v["one_time_password"] = json!(added.one_time_password);
        output::json(&v);
    } else if added.one_time_password.is_empty() {
        output::line(&format!(
            "user {} ({}) added to {}",
            user.email,
            spelled(user.role, UserRole::as_str),
            user.tenant_slug
        ));
    } else {
        output::line(&format!(
            "user {} ({}) of {}: one-time password {} (to be changed at first login)",
            user.email,
            spelled(user.role, UserRole::as_str),
            user.tenant_slug,
            added.one_time_password
        ));
    }
}

fn print_users(users: &[ac::User], json: bool) {
    if json {
        output::json(&serde_json::Value::Array(
            users.iter().map(user_json).collect(),
        ));
        return;
    }
    let rows: Vec<_> = users
        .iter()
        .map(|u| {
            vec![
                u.id.to_string(),
                u.email.clone(),
                spelled(u.role, UserRole::as_str).to_string(),
                spelled(u.status, UserStatus::as_str).to_string(),
                u.tenant_slug.clone(),
                ago(u.last_login_ms),
            ]
        })
        .collect();
    output::table(
        &["ID", "EMAIL", "ROLE", "STATUS", "TENANT", "LAST_LOGIN"],
        &rows,
    );
}

/// `never`, or how long ago a time in ms since the epoch was.
fn ago(ms: i64) -> String {
    if ms <= 0 {
        return "never".into();
    }
    let now = i64::try_from(caller_auth::now_secs()).unwrap_or(i64::MAX);
    let secs = (now - ms / 1000).max(0);
    match secs {
        0..120 => format!("{secs} s ago"),
        120..7200 => format!("{} min ago", secs / 60),
        7200..172_800 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86_400),
    }
}
