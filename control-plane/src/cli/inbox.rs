//! `tenantctl inbox`: the message pipeline's durable inbox.

use super::{output, Client, Failure};
use clap::Subcommand;
use proto::control::v1 as pb;

#[derive(Subcommand)]
pub(super) enum InboxCommand {
    /// Depth, apply lag per server, and tenants that are stuck (behind or failing).
    Status,
    /// Try a tenant's pending deliveries now (clears its backoff).
    Retry { tenant: String },
    /// Forget an event consumer group (its cursors and members) that has no live
    /// subscriber: started again, it begins at the end of the log.
    ForgetGroup {
        /// The group's full name, as `inbox status` lists it (`caller:SUBJECT/NAME`).
        group: String,
    },
}

pub(super) async fn inbox(
    client: &mut Client,
    cmd: InboxCommand,
    json: bool,
) -> Result<(), Failure> {
    match cmd {
        InboxCommand::Status => {
            let s = client
                .inbox_status(pb::InboxStatusRequest {})
                .await?
                .into_inner();
            if json {
                output::json(&serde_json::json!({
                    "depth": s.depth,
                    "oldest_age_secs": s.oldest_age_secs,
                    "servers": s.servers.iter().map(|x| serde_json::json!({
                        "server": x.server, "pending": x.pending, "oldest_age_secs": x.oldest_age_secs,
                    })).collect::<Vec<_>>(),
                    "stuck": s.stuck.iter().map(|t| serde_json::json!({
                        "tenant_id": t.tenant_id, "slug": t.slug, "server": t.server,
                        "pending": t.pending, "oldest_age_secs": t.oldest_age_secs,
                        "attempts": t.attempts, "last_error": t.last_error,
                    })).collect::<Vec<_>>(),
                    "groups": s.groups.iter().map(|g| serde_json::json!({
                        "group": g.group, "scope": g.scope, "members": g.members,
                        "oldest_unacked_age_secs": g.oldest_unacked_age_secs,
                        "idle_secs": g.idle_secs,
                    })).collect::<Vec<_>>(),
                }));
                return Ok(());
            }
            output::line(&format!(
                "pending deliveries: {} (oldest {:.1}s)",
                s.depth, s.oldest_age_secs
            ));
            let servers: Vec<_> = s
                .servers
                .iter()
                .map(|x| {
                    vec![
                        x.server.clone(),
                        x.pending.to_string(),
                        format!("{:.1}s", x.oldest_age_secs),
                    ]
                })
                .collect();
            if !servers.is_empty() {
                output::table(&["SERVER", "PENDING", "LAG"], &servers);
            }
            let stuck: Vec<_> = s
                .stuck
                .iter()
                .map(|t| {
                    vec![
                        t.slug.clone(),
                        t.server.clone(),
                        t.pending.to_string(),
                        format!("{:.1}s", t.oldest_age_secs),
                        t.attempts.to_string(),
                        t.last_error.clone(),
                    ]
                })
                .collect();
            if !stuck.is_empty() {
                output::line("stuck tenants:");
                output::table(
                    &[
                        "TENANT",
                        "SERVER",
                        "PENDING",
                        "OLDEST",
                        "ATTEMPTS",
                        "LAST ERROR",
                    ],
                    &stuck,
                );
            }
            let groups: Vec<_> = s
                .groups
                .iter()
                .map(|g| {
                    vec![
                        g.group.clone(),
                        g.scope.clone(),
                        g.members.to_string(),
                        format!("{:.1}s", g.oldest_unacked_age_secs),
                        format!("{:.0}s", g.idle_secs),
                    ]
                })
                .collect();
            if !groups.is_empty() {
                output::line("event consumer groups:");
                output::table(&["GROUP", "SCOPE", "SUBSCRIBERS", "LAG", "IDLE"], &groups);
            }
        }
        InboxCommand::ForgetGroup { group } => {
            let r = client
                .forget_consumer_group(pb::ForgetConsumerGroupRequest {
                    group: group.clone(),
                })
                .await?
                .into_inner();
            if json {
                output::json(&serde_json::json!({"group": group, "cursors": r.cursors}));
            } else {
                output::line(&format!(
                    "{group}: forgotten ({} partition cursors)",
                    r.cursors
                ));
            }
        }
        InboxCommand::Retry { tenant } => {
            let r = client
                .retry_inbox(pb::TenantRef {
                    tenant: tenant.clone(),
                })
                .await?
                .into_inner();
            if json {
                output::json(&serde_json::json!({"tenant": tenant, "pending": r.pending}));
            } else {
                output::line(&format!(
                    "{tenant}: {} pending deliveries will be tried now",
                    r.pending
                ));
            }
        }
    }
    Ok(())
}
