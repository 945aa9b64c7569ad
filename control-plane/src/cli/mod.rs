//! `tenantctl`: one function per subcommand over the control plane's `TenantAdmin` API.
//!
//! Exit codes: 0 success; 1 other failure; 2 bad usage or invalid argument; 3 not found;
//! 4 conflict (already exists, wrong state); 5 unavailable (control plane or database
//! server); 6 not authenticated; 7 a migration run finished with failed or busy tenants.

mod access;
mod backups;
mod inbox;
mod numbers;
mod output;
mod settings;
mod users;

use clap::{Args, Parser, Subcommand};
use proto::control::v1 as pb;
use proto::control::v1::tenant_admin_client::TenantAdminClient;
use proto::model::ToWire;
use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;
use tenant_model::MigrationOutcome;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(
    name = "tenantctl",
    version,
    about = "Operate the tenant fleet through the control plane"
)]
struct Cli {
    /// Control-plane gRPC endpoint.
    #[arg(
        long,
        global = true,
        env = "TENANTCTL_ENDPOINT",
        default_value = "http://127.0.0.1:50051"
    )]
    endpoint: String,
    /// CA certificate (PEM) the control plane's TLS certificate must chain to (with an
    /// https:// endpoint).
    #[arg(long, global = true, env = "TENANTCTL_CA_FILE")]
    ca_file: Option<std::path::PathBuf>,
    /// Operator token (prefer the environment variable: flags show up in `ps`).
    #[arg(
        long,
        global = true,
        env = "TENANTCTL_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    token: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Database servers.
    #[command(subcommand)]
    Server(ServerCommand),
    /// Create (or resume creating) a tenant with its own database.
    Create(CreateArgs),
    /// List tenants.
    List {
        /// Only tenants in this status.
        #[arg(long)]
        status: Option<String>,
        /// Only tenants on this server.
        #[arg(long)]
        server: Option<String>,
    },
    /// Show one tenant.
    Show { tenant: String },
    /// Per-tenant usage: calls and messages (today, last 30 days), database size against
    /// the plan's storage.
    Usage { tenant: Option<String> },
    /// Change a tenant's name, plan or display phone (an empty --display-phone clears it).
    Update {
        tenant: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        plan: Option<String>,
        #[arg(long)]
        display_phone: Option<String>,
    },
    /// Fleet overview: tenants per status and schema version, servers.
    Status,
    /// Suspend a tenant (routers stop serving it).
    Suspend { tenant: String },
    /// Resume a suspended tenant.
    Resume { tenant: String },
    /// Migrate tenant databases.
    Migrate(MigrateArgs),
    /// Upgrade tenants made by the first release to the isolation role model (an owner
    /// role routers never see, DML-only login roles, id-based names), removing anything
    /// their databases hold beyond the shipped schema.
    Harden(MigrateArgs),
    /// Caller tokens for the router.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Issue a new Evolution API webhook token for a tenant (prints only the token; the
    /// previous one stops working).
    WebhookToken { tenant: String },
    /// Named operators and their roles (viewer, operator, admin).
    #[command(subcommand)]
    Operator(access::OperatorCommand),
    /// Routers as identities: each with its own directory credential.
    #[command(subcommand)]
    Router(access::RouterCommand),
    /// Back up tenants now (encrypted, to the backup store); waits for them.
    Backup(backups::BackupArgs),
    /// A tenant's backups, newest first.
    Backups {
        #[arg(required_unless_present = "catalog")]
        tenant: Option<String>,
        /// The catalog's own backups.
        #[arg(long, conflicts_with = "tenant")]
        catalog: bool,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Offboard a tenant: suspend, final backup, deleted (its WhatsApp number freed at
    /// once), purged after deletion.window_secs (database, roles and backups; a tombstone
    /// stays and the slug becomes free).
    Delete {
        tenant: String,
        /// Why (kept in the tombstone and the audit log).
        #[arg(long, default_value = "")]
        reason: String,
        /// Skip the final backup and the window: purge now, backups included.
        #[arg(long, requires = "confirm")]
        now: bool,
        /// With --now: the tenant's slug again.
        #[arg(long, default_value = "")]
        confirm: String,
    },
    /// Restore a backup into a scratch database, check it like a restore would (checksum,
    /// row counts, schema versions), drop it, and record the outcome on the backup.
    VerifyBackup { backup: i64 },
    /// Export a tenant's data (every table of its schema) for the tenant to take away.
    Export(backups::ExportArgs),
    /// Restore a tenant in place from one of its backups: a new database beside the live
    /// one, verified against the backup's manifest, then switched to (the old one is kept
    /// for backup.restore_grace_secs). Calls get UNAVAILABLE (retry) meanwhile.
    Restore {
        tenant: String,
        /// The backup's id (`tenantctl backups SLUG`).
        #[arg(long)]
        backup: i64,
        /// Into a new tenant with this slug instead (SLUG itself is not touched).
        #[arg(long = "as")]
        as_slug: Option<String>,
    },
    /// Rotate tenants' login passwords while routers keep serving.
    Rotate(access::RotateArgs),
    /// Re-seal every stored secret with the current master key (after changing it, with
    /// the previous one in retired_master_keys).
    Rekey,
    /// Webhooks no tenant database took (unknown numbers, suspended tenants, bad items).
    #[command(subcommand, name = "dead-letters")]
    DeadLetters(access::DeadLetterCommand),
    /// Read the audit log: who did what, to which target, with which token, how it ended.
    Audit(access::AuditArgs),
    /// People who log in to a tenant (owner, admin, agent, viewer).
    #[command(subcommand)]
    User(users::UserCommand),
    /// A tenant's settings for its services (bot name, prompt, AI provider, ...).
    #[command(subcommand)]
    Settings(settings::SettingsCommand),
    /// A tenant's secrets (WhatsApp access token, AI provider keys): values in, never out.
    #[command(subcommand)]
    Secret(settings::SecretCommand),
    /// A tenant's WhatsApp (Meta) numbers.
    #[command(subcommand)]
    Number(numbers::NumberCommand),
    /// The message pipeline's inbox: status and retries.
    #[command(subcommand)]
    Inbox(inbox::InboxCommand),
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Mint a caller token granting the named tenants (or all); prints only the token.
    Issue {
        /// A tenant the token grants (repeat for more).
        #[arg(long = "tenant", required_unless_present = "all")]
        tenants: Vec<String>,
        /// Grant every tenant (platform services).
        #[arg(long, conflicts_with = "tenants")]
        all: bool,
        /// Lifetime: seconds, or a number with s, m, h or d (default: the control plane's;
        /// at most its maximum).
        #[arg(long)]
        ttl: Option<String>,
        /// Who the token is for.
        #[arg(long, default_value = "")]
        subject: String,
        /// An extra permission: `secrets` (read the tenants' secrets; an admin grants it).
        #[arg(long = "scope")]
        scopes: Vec<String>,
    },
    /// Revoke a token by id (routers refuse a revoked caller token within moments).
    Revoke { id: String },
    /// List tokens (id, kind, subject, grants, expiry, revocation).
    List {
        /// Only this kind: caller, operator or router.
        #[arg(long, default_value = "")]
        kind: String,
        /// Include expired tokens.
        #[arg(long)]
        expired: bool,
    },
}

/// A `--ttl` in seconds, or 0 (the control plane's default) when not given.
fn ttl_or_default(raw: Option<&str>) -> Result<u64, Failure> {
    raw.map(parse_ttl)
        .transpose()
        .map(Option::unwrap_or_default)
}

/// Parses `90`, `90s`, `15m`, `12h`, `30d` into seconds.
fn parse_ttl(raw: &str) -> Result<u64, Failure> {
    let bad = || {
        fail(
            2,
            format!("invalid --ttl {raw:?}: use seconds or a number with s, m, h or d"),
        )
    };
    let raw = raw.trim();
    let (digits, unit) = match raw.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&raw[..i], c),
        Some(_) => (raw, 's'),
        None => return Err(bad()),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let secs = match unit {
        's' => n,
        'm' => n.checked_mul(60).ok_or_else(bad)?,
        'h' => n.checked_mul(3600).ok_or_else(bad)?,
        'd' => n.checked_mul(86_400).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    if secs == 0 {
        return Err(bad());
    }
    Ok(secs)
}

#[derive(Subcommand)]
enum ServerCommand {
    /// Register a PostgreSQL server. The admin password is read from
    /// TENANTCTL_ADMIN_PASSWORD or, when unset, from the first line of stdin.
    Add {
        name: String,
        #[arg(long)]
        host: String,
        #[arg(long, default_value_t = 5432)]
        port: u32,
        #[arg(long)]
        admin_user: String,
        /// Connections all routers together may hold to this server.
        #[arg(long, default_value_t = 80)]
        connection_budget: u32,
        /// Tenants this server may hold.
        #[arg(long, default_value_t = 1000)]
        capacity: u32,
    },
    /// List registered servers.
    List,
    /// Store a server's new admin password (after changing it on the server), read like
    /// `add` reads it; it is checked by connecting first.
    SetPassword { name: String },
    /// Give a server's template owner role a fresh password.
    RotateTemplateOwner { name: String },
}

#[cfg(test)]
mod tests {
    #[test]
    fn ttls() {
        assert_eq!(super::parse_ttl("90").ok(), Some(90));
        assert_eq!(super::parse_ttl("15m").ok(), Some(900));
        assert_eq!(super::parse_ttl("2h").ok(), Some(7200));
        assert_eq!(super::parse_ttl("1d").ok(), Some(86_400));
        for bad in ["", "0", "h", "5x", "-1", "99999999999999999999d"] {
            assert!(super::parse_ttl(bad).is_err(), "{bad}");
        }
    }
}

#[derive(Args)]
struct CreateArgs {
    slug: String,
    #[arg(long)]
    name: String,
    #[arg(long)]
    sector: String,
    #[arg(long)]
    phone_number_id: Option<String>,
    #[arg(long)]
    display_phone: Option<String>,
    /// Place on this server instead of the least loaded one.
    #[arg(long)]
    server: Option<String>,
    #[arg(long)]
    plan: Option<String>,
    /// The tenant's first user (owner); its one-time password is printed.
    #[arg(long)]
    admin_email: Option<String>,
}

#[derive(Args)]
struct MigrateArgs {
    /// Tenants (slugs or ids) to migrate.
    tenants: Vec<String>,
    /// Every active or suspended tenant.
    #[arg(long, conflicts_with = "tenants")]
    all: bool,
    /// Tenants at once (overall).
    #[arg(long, default_value_t = 0)]
    concurrency: u32,
    /// Tenants at once per database server.
    #[arg(long, default_value_t = 0)]
    per_server: u32,
    /// Migrate this many tenants first; stop if any of them fails.
    #[arg(long, default_value_t = 0)]
    canary: u32,
    /// Stop launching tenants after this many failures (0: never).
    #[arg(long, default_value_t = 0)]
    max_failures: u32,
    /// Show what would be applied, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Only tenants whose last migration failed.
    #[arg(long)]
    retry_failed: bool,
}

type Client = TenantAdminClient<InterceptedService<Channel, Auth>>;

#[derive(Clone)]
struct Auth(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A failure with its exit code.
struct Failure {
    code: u8,
    message: String,
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Failure {
        use tonic::Code;
        let code = match s.code() {
            Code::InvalidArgument | Code::OutOfRange => 2,
            Code::NotFound => 3,
            Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => 4,
            Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => 5,
            Code::Unauthenticated => 6,
            Code::PermissionDenied => 8,
            _ => 1,
        };
        let message = match s.code() {
            Code::Unavailable if s.message().contains("transport") || s.message().is_empty() => {
                "control plane unreachable".to_string()
            }
            _ => s.message().to_string(),
        };
        Failure { code, message }
    }
}

fn fail(code: u8, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

/// Entry point of the `tenantctl` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tenantctl: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("tenantctl: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

async fn connect(cli: &Cli) -> Result<Client, Failure> {
    let mut endpoint = Channel::from_shared(cli.endpoint.clone())
        .map_err(|_| fail(2, format!("invalid endpoint {:?}", cli.endpoint)))?
        .connect_timeout(std::time::Duration::from_secs(5));
    match (&cli.ca_file, cli.endpoint.starts_with("https://")) {
        (Some(ca), true) => {
            let tls = service_kit::tls::ClientTls {
                ca_file: ca.clone(),
            }
            .tonic()
            .map_err(|e| fail(2, e.to_string()))?;
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| fail(2, format!("TLS: {e}")))?;
        }
        (None, true) => {
            return Err(fail(
                2,
                "an https:// endpoint needs --ca-file (TENANTCTL_CA_FILE)",
            ))
        }
        (Some(_), false) => return Err(fail(2, "--ca-file needs an https:// endpoint")),
        (None, false) => {}
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|_| fail(5, format!("control plane unreachable at {}", cli.endpoint)))?;
    let token = if cli.token.is_empty() {
        None
    } else {
        Some(
            format!("Bearer {}", cli.token)
                .parse()
                .map_err(|_| fail(2, "the token holds characters not allowed in a header"))?,
        )
    };
    Ok(TenantAdminClient::with_interceptor(channel, Auth(token))
        .max_decoding_message_size(64 << 20))
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    let mut client = connect(&cli).await?;
    let json = cli.json;
    match cli.command {
        Command::Server(ServerCommand::Add {
            name,
            host,
            port,
            admin_user,
            connection_budget,
            capacity,
        }) => {
            let admin_password = read_admin_password()?;
            let s = client
                .add_server(pb::AddServerRequest {
                    name,
                    host,
                    port,
                    admin_user,
                    admin_password,
                    connection_budget,
                    capacity,
                })
                .await?
                .into_inner();
            if json {
                output::json(&output::server_json(&s));
            } else {
                output::line(&format!(
                    "server {} registered ({} tenants max, {} connections)",
                    s.name, s.capacity, s.connection_budget
                ));
                if !s.maintenance_closed {
                    output::warn(
                        "warning: the admin may not revoke CONNECT on postgres and template1 from PUBLIC; \
                         do it as a superuser, or tenant roles can open sessions there",
                    );
                }
            }
        }
        Command::Server(ServerCommand::SetPassword { name }) => {
            let admin_password = read_admin_password()?;
            let s = client
                .set_server_password(pb::SetServerPasswordRequest {
                    name,
                    admin_password,
                })
                .await?
                .into_inner();
            print_servers(&[s], json);
        }
        Command::Server(ServerCommand::RotateTemplateOwner { name }) => {
            let s = client
                .rotate_template_owner(pb::ServerRef { name })
                .await?
                .into_inner();
            print_servers(&[s], json);
        }
        Command::Server(ServerCommand::List) => {
            let servers = client
                .list_servers(pb::ListServersRequest {})
                .await?
                .into_inner()
                .servers;
            print_servers(&servers, json);
        }
        Command::Create(a) => {
            let t = client
                .create_tenant(pb::CreateTenantRequest {
                    slug: a.slug,
                    name: a.name,
                    sector: tenant_model::Sector::parse(&a.sector)
                        .map_err(|e| fail(2, e.0))?
                        .to_wire(),
                    phone_number_id: a.phone_number_id.unwrap_or_default(),
                    display_phone: a.display_phone.unwrap_or_default(),
                    server: a.server.unwrap_or_default(),
                    plan: a.plan.unwrap_or_default(),
                    admin_email: a.admin_email.clone().unwrap_or_default(),
                })
                .await?
                .into_inner();
            if json {
                let mut v = output::tenant_json(&t);
                if let Some(email) = &a.admin_email {
                    v["admin"] = serde_json::json!({"email": email, "one_time_password": t.admin_one_time_password});
                }
                output::json(&v);
            } else {
                output::line(&format!(
                    "tenant {} is {} on server {} (database {})",
                    t.slug,
                    output::status(t.status),
                    t.server,
                    t.database
                ));
                if let Some(email) = &a.admin_email {
                    output::line(&format!(
                        "owner {email}: one-time password {} (to be changed at first login)",
                        t.admin_one_time_password
                    ));
                }
            }
        }
        Command::List { status, server } => {
            let tenants = client
                .list_tenants(pb::ListTenantsRequest {
                    status: match status {
                        Some(s) => tenant_model::TenantStatus::parse(&s)
                            .map_err(|e| fail(2, e.0))?
                            .to_wire(),
                        None => 0,
                    },
                    server: server.unwrap_or_default(),
                })
                .await?
                .into_inner()
                .tenants;
            if json {
                output::json(&serde_json::Value::Array(
                    tenants.iter().map(output::tenant_json).collect(),
                ));
            } else {
                let rows: Vec<_> = tenants.iter().map(output::tenant_row).collect();
                output::table(output::TENANT_HEADERS, &rows);
            }
        }
        Command::Show { tenant } => {
            let t = client
                .get_tenant(pb::TenantRef { tenant })
                .await?
                .into_inner();
            if json {
                output::json(&output::tenant_json(&t));
            } else {
                output::tenant_detail(&t);
            }
        }
        Command::Status => {
            let s = client.status(pb::StatusRequest {}).await?.into_inner();
            print_status(&s, json);
        }
        Command::Suspend { tenant } | Command::Resume { tenant } if tenant.is_empty() => {
            return Err(fail(2, "name a tenant"));
        }
        Command::Suspend { tenant } => {
            let t = client
                .suspend_tenant(pb::TenantRef { tenant })
                .await?
                .into_inner();
            print_tenant_change(&t, json);
        }
        Command::Resume { tenant } => {
            let t = client
                .resume_tenant(pb::TenantRef { tenant })
                .await?
                .into_inner();
            print_tenant_change(&t, json);
        }
        Command::Migrate(a) => {
            return migrate(&mut client, a, pb::FleetOperation::Migrate, json).await
        }
        Command::Harden(a) => {
            return migrate(&mut client, a, pb::FleetOperation::Harden, json).await
        }
        Command::WebhookToken { tenant } => {
            let t = client
                .rotate_webhook_token(pb::TenantRef { tenant })
                .await?
                .into_inner();
            output::line(&t.token);
        }
        Command::Token(TokenCommand::Issue {
            tenants,
            all,
            ttl,
            subject,
            scopes,
        }) => {
            let ttl_secs = ttl_or_default(ttl.as_deref())?;
            let t = client
                .issue_token(pb::IssueTokenRequest {
                    tenants,
                    all,
                    ttl_secs,
                    subject,
                    scopes,
                })
                .await?
                .into_inner();
            access::print_issued(&t, json);
        }
        Command::Token(TokenCommand::Revoke { id }) => {
            let t = client
                .revoke_token(pb::RevokeTokenRequest { token_id: id })
                .await?
                .into_inner();
            access::print_tokens(&[t], json);
        }
        Command::Token(TokenCommand::List { kind, expired }) => {
            let tokens = client
                .list_tokens(pb::ListTokensRequest {
                    kind,
                    include_expired: expired,
                })
                .await?
                .into_inner()
                .tokens;
            access::print_tokens(&tokens, json);
        }
        Command::Usage { tenant } => {
            let rows = client
                .get_usage(pb::UsageRequest {
                    tenant: tenant.unwrap_or_default(),
                })
                .await?
                .into_inner()
                .rows;
            if json {
                output::json(&serde_json::Value::Array(
                    rows.iter().map(usage_json).collect(),
                ));
            } else {
                print_usage(&rows);
            }
        }
        Command::Update {
            tenant,
            name,
            plan,
            display_phone,
        } => {
            let t = client
                .update_tenant(pb::UpdateTenantRequest {
                    tenant,
                    name,
                    plan,
                    display_phone,
                })
                .await?
                .into_inner();
            print_tenant_change(&t, json);
        }
        Command::Operator(cmd) => access::operator(&mut client, cmd, json).await?,
        Command::User(cmd) => users::user(&mut client, cmd, json).await?,
        Command::Settings(cmd) => settings::settings(&mut client, cmd, json).await?,
        Command::Secret(cmd) => settings::secret(&mut client, cmd, json).await?,
        Command::Number(cmd) => numbers::number(&mut client, cmd, json).await?,
        Command::Inbox(cmd) => inbox::inbox(&mut client, cmd, json).await?,
        Command::Router(cmd) => access::router(&mut client, cmd, json).await?,
        Command::Rotate(a) => return access::rotate(&mut client, a, json).await,
        Command::Backup(a) => return backups::backup(&mut client, a, json).await,
        Command::Backups {
            tenant,
            catalog,
            limit,
        } => backups::list(&mut client, tenant, catalog, limit, json).await?,
        Command::Export(a) => backups::export(&mut client, a, json).await?,
        Command::VerifyBackup { backup } => {
            return backups::verify(&mut client, backup, json).await
        }
        Command::Delete {
            tenant,
            reason,
            now,
            confirm,
        } => {
            let r = client
                .delete_tenant(pb::DeleteRequest {
                    tenant: tenant.clone(),
                    reason,
                    now,
                    confirm,
                })
                .await?
                .into_inner();
            if json {
                output::json(&serde_json::json!({
                    "tenant": tenant, "purged": r.purged,
                    "purge_at_ms": if r.purge_at_ms == 0 { serde_json::Value::Null } else { r.purge_at_ms.into() },
                }));
            } else if r.purged {
                output::line(&format!(
                    "tenant {tenant} deleted and purged (database, roles and backups)"
                ));
            } else {
                output::line(&format!(
                    "tenant {tenant} deleted: its number is free; database and backups are purged in {} s",
                    (r.purge_at_ms - now_ms()).max(0) / 1000
                ));
            }
        }
        Command::Restore {
            tenant,
            backup,
            as_slug,
        } => {
            let t = client
                .restore_tenant(pb::RestoreRequest {
                    tenant,
                    backup_id: backup,
                    as_slug: as_slug.unwrap_or_default(),
                })
                .await?
                .into_inner();
            if json {
                output::json(&output::tenant_json(&t));
            } else {
                output::line(&format!(
                    "tenant {} restored from backup {backup}: database {} (generation {}), {}",
                    t.slug,
                    t.database,
                    t.generation,
                    output::status(t.status)
                ));
            }
        }
        Command::DeadLetters(cmd) => access::dead_letters(&mut client, cmd, json).await?,
        Command::Rekey => {
            let r = client.rekey(pb::RekeyRequest {}).await?.into_inner();
            if json {
                output::json(&serde_json::json!({
                    "resealed": r.resealed, "already_current": r.already_current, "remaining": r.remaining,
                }));
            } else {
                output::line(&format!(
                    "{} secrets re-sealed, {} already under the current key, {} remaining",
                    r.resealed, r.already_current, r.remaining
                ));
            }
        }
        Command::Audit(a) => access::audit(&mut client, a, json).await?,
    }
    Ok(0)
}

fn read_admin_password() -> Result<String, Failure> {
    if let Ok(p) = std::env::var("TENANTCTL_ADMIN_PASSWORD") {
        return Ok(p);
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("admin password (input is not hidden; prefer TENANTCTL_ADMIN_PASSWORD):");
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| fail(2, format!("cannot read the admin password from stdin: {e}")))?;
    let password = line.trim_end_matches(['\r', '\n']).to_string();
    if password.is_empty() {
        return Err(fail(
            2,
            "no admin password: set TENANTCTL_ADMIN_PASSWORD or pipe it on stdin",
        ));
    }
    Ok(password)
}

fn print_tenant_change(t: &pb::Tenant, json: bool) {
    if json {
        output::json(&output::tenant_json(t));
    } else {
        output::line(&format!(
            "tenant {} is {} (version {})",
            t.slug,
            output::status(t.status),
            t.version
        ));
    }
}

fn print_servers(servers: &[pb::Server], json: bool) {
    if json {
        output::json(&serde_json::Value::Array(
            servers.iter().map(output::server_json).collect(),
        ));
        return;
    }
    let rows: Vec<_> = servers
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                format!("{}:{}", s.host, s.port),
                s.state.clone(),
                format!("{}/{}", s.tenants, s.capacity),
                s.connection_budget.to_string(),
            ]
        })
        .collect();
    output::table(
        &["NAME", "ADDRESS", "STATE", "TENANTS", "CONN_BUDGET"],
        &rows,
    );
}

fn print_status(s: &pb::StatusResponse, json: bool) {
    let pairs = |v: &[pb::CountByKey]| {
        v.iter()
            .map(|c| (c.key.clone(), serde_json::json!(c.count)))
            .collect::<serde_json::Map<_, _>>()
    };
    if json {
        output::json(&serde_json::json!({
            "target_schema_version": s.target_schema_version,
            "pending_migration": s.pending_migration,
            "by_status": pairs(&s.by_status),
            "by_schema": pairs(&s.by_schema),
            "servers": s.servers.iter().map(output::server_json).collect::<Vec<_>>(),
            "overdue_backups": s.overdue_backups.iter().map(|o| serde_json::json!({
                "tenant": o.tenant, "last_ok_ms": if o.last_ok_ms == 0 { serde_json::Value::Null } else { o.last_ok_ms.into() },
                "interval_secs": o.interval_secs,
            })).collect::<Vec<_>>(),
            "over_storage": s.over_storage.iter().map(usage_json).collect::<Vec<_>>(),
        }));
        return;
    }
    output::line(&format!(
        "shipped common schema: v{}; tenants behind it: {}",
        s.target_schema_version, s.pending_migration
    ));
    output::line("");
    let rows: Vec<_> = s
        .by_status
        .iter()
        .map(|c| vec![c.key.clone(), c.count.to_string()])
        .collect();
    output::table(&["STATUS", "TENANTS"], &rows);
    output::line("");
    let rows: Vec<_> = s
        .by_schema
        .iter()
        .map(|c| vec![c.key.clone(), c.count.to_string()])
        .collect();
    output::table(&["SECTOR SCHEMA", "TENANTS"], &rows);
    output::line("");
    print_servers(&s.servers, false);
    output::line("");
    output::line(&format!(
        "tenants whose newest good backup is older than their plan allows: {}",
        s.overdue_backups.len()
    ));
    if !s.overdue_backups.is_empty() {
        let rows: Vec<_> = s
            .overdue_backups
            .iter()
            .map(|o| {
                vec![
                    o.tenant.clone(),
                    if o.last_ok_ms == 0 {
                        "never".into()
                    } else {
                        format!("{} s ago", (now_ms() - o.last_ok_ms) / 1000)
                    },
                    format!("{} s", o.interval_secs),
                ]
            })
            .collect();
        output::table(&["TENANT", "NEWEST GOOD BACKUP", "POLICY"], &rows);
    }
    output::line("");
    output::line(&format!(
        "tenants larger than their plan's storage: {}",
        s.over_storage.len()
    ));
    if !s.over_storage.is_empty() {
        print_usage(&s.over_storage);
    }
}

fn usage_json(u: &pb::UsageRow) -> serde_json::Value {
    serde_json::json!({
        "tenant_id": u.tenant_id, "tenant": u.slug, "plan": u.plan,
        "calls_today": u.calls_today, "calls_30d": u.calls_30d,
        "messages_today": u.messages_today, "messages_30d": u.messages_30d,
        "database_bytes": if u.database_bytes < 0 { serde_json::Value::Null } else { u.database_bytes.into() },
        "storage_limit_bytes": if u.storage_limit_bytes == 0 { serde_json::Value::Null } else { u.storage_limit_bytes.into() },
    })
}

fn print_usage(rows: &[pb::UsageRow]) {
    let mb = |b: i64| format!("{:.1} MB", b as f64 / 1e6);
    let rows: Vec<_> = rows
        .iter()
        .map(|u| {
            vec![
                u.slug.clone(),
                u.plan.clone(),
                format!("{} / {}", u.calls_today, u.calls_30d),
                format!("{} / {}", u.messages_today, u.messages_30d),
                if u.database_bytes < 0 {
                    "?".into()
                } else {
                    mb(u.database_bytes)
                },
                if u.storage_limit_bytes == 0 {
                    "unlimited".into()
                } else {
                    mb(u.storage_limit_bytes)
                },
            ]
        })
        .collect();
    output::table(
        &[
            "TENANT",
            "PLAN",
            "CALLS TODAY/30D",
            "MESSAGES TODAY/30D",
            "DATABASE",
            "PLAN STORAGE",
        ],
        &rows,
    );
}

fn now_ms() -> i64 {
    i64::try_from(caller_auth::now_secs()).unwrap_or(i64::MAX) * 1000
}

async fn migrate(
    client: &mut Client,
    a: MigrateArgs,
    operation: pb::FleetOperation,
    json: bool,
) -> Result<u8, Failure> {
    if !a.all && a.tenants.is_empty() {
        return Err(fail(2, "name tenants or pass --all"));
    }
    let mut stream = client
        .migrate_tenants(pb::MigrateRequest {
            tenants: a.tenants,
            all: a.all,
            concurrency: a.concurrency,
            per_server_concurrency: a.per_server,
            canary: a.canary,
            max_failures: a.max_failures,
            dry_run: a.dry_run,
            retry_failed: a.retry_failed,
            operation: operation.into(),
        })
        .await?
        .into_inner();
    let bar = indicatif::ProgressBar::hidden();
    if std::io::stderr().is_terminal() && !json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    }
    let mut results = Vec::new();
    let mut plan_json = serde_json::Value::Null;
    let mut code = 0u8;
    while let Some(event) = stream.message().await? {
        use pb::migrate_event::Event;
        match event.event {
            Some(Event::Plan(p)) => {
                bar.set_length(u64::from(p.to_migrate));
                if let Ok(style) =
                    indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} tenants {msg}")
                {
                    bar.set_style(style);
                }
                if a.dry_run {
                    print_plan(&p, json);
                }
                plan_json = serde_json::json!({"run_id": p.run_id, "total": p.total, "to_migrate": p.to_migrate, "already_current": p.already_current});
            }
            Some(Event::Tenant(t)) => {
                bar.inc(1);
                if t.outcome == MigrationOutcome::Failed.to_wire() {
                    bar.println(format!("{}: failed: {}", t.slug, t.error));
                }
                for line in &t.report {
                    bar.println(format!("{}: {line}", t.slug));
                }
                results.push(t);
            }
            Some(Event::Summary(s)) => {
                bar.finish_and_clear();
                if s.failed > 0 || s.busy > 0 {
                    code = 7;
                }
                if a.dry_run {
                    continue;
                }
                print_summary(&s, &results, &plan_json, json);
            }
            None => {}
        }
    }
    Ok(code)
}

fn print_plan(p: &pb::MigratePlan, json: bool) {
    if json {
        output::json(&serde_json::json!({
            "dry_run": true, "total": p.total, "to_migrate": p.to_migrate, "already_current": p.already_current,
            "pending": p.pending.iter().map(|t| serde_json::json!({
                "slug": t.slug, "from": [t.from_schema_version, t.from_sector_schema_version],
                "to": [t.to_schema_version, t.to_sector_schema_version], "migrations": t.pending_migrations,
                "canary": t.canary,
            })).collect::<Vec<_>>(),
        }));
        return;
    }
    output::line(&format!(
        "dry run: {} tenants, {} to migrate, {} already current",
        p.total, p.to_migrate, p.already_current
    ));
    let rows: Vec<_> = p
        .pending
        .iter()
        .map(|t| {
            vec![
                t.slug.clone(),
                format!("{}.{}", t.from_schema_version, t.from_sector_schema_version),
                format!("{}.{}", t.to_schema_version, t.to_sector_schema_version),
                t.pending_migrations.join(", "),
            ]
        })
        .collect();
    if !rows.is_empty() {
        output::table(&["SLUG", "FROM", "TO", "PENDING"], &rows);
    }
}

fn print_summary(
    s: &pb::MigrateSummary,
    results: &[pb::TenantMigrationResult],
    plan: &serde_json::Value,
    json: bool,
) {
    if json {
        output::json(&serde_json::json!({
            "run_id": s.run_id, "plan": plan, "migrated": s.migrated, "skipped": s.skipped, "failed": s.failed,
            "busy": s.busy, "not_started": s.not_started, "aborted": s.aborted, "duration_ms": s.duration_ms,
            "tenants": results.iter().map(|t| serde_json::json!({
                "slug": t.slug, "outcome": output::outcome(t.outcome), "schema_version": t.schema_version,
                "sector_schema_version": t.sector_schema_version, "applied": t.applied,
                "error": if t.error.is_empty() { serde_json::Value::Null } else { t.error.clone().into() },
                "duration_ms": t.duration_ms, "report": t.report,
            })).collect::<Vec<_>>(),
        }));
        return;
    }
    output::line(&format!(
        "run {}: {} done, {} already current, {} failed, {} busy, {} not started{} in {} ms",
        s.run_id,
        s.migrated,
        s.skipped,
        s.failed,
        s.busy,
        s.not_started,
        if s.aborted { " (stopped early)" } else { "" },
        s.duration_ms
    ));
    let failed: Vec<_> = results
        .iter()
        .filter(|t| !matches!(output::outcome(t.outcome), "migrated" | "upgraded"))
        .collect();
    if !failed.is_empty() {
        let rows: Vec<_> = failed
            .iter()
            .map(|t| {
                vec![
                    t.slug.clone(),
                    output::outcome(t.outcome).to_string(),
                    t.error.clone(),
                ]
            })
            .collect();
        output::table(&["SLUG", "OUTCOME", "ERROR"], &rows);
    }
}
