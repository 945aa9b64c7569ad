//! `tenantctl number`: a tenant's WhatsApp (Meta) numbers.

use super::{output, Client, Failure};
use clap::Subcommand;
use proto::control::v1 as pb;

#[derive(Subcommand)]
pub(super) enum NumberCommand {
    /// Give a tenant another Meta `phone_number_id` (unique across tenants).
    Add {
        tenant: String,
        phone_number_id: String,
        #[arg(long, default_value = "")]
        display_phone: String,
    },
    /// Take a number from a tenant (deliveries to it become dead letters).
    Remove {
        tenant: String,
        phone_number_id: String,
    },
    /// A tenant's numbers and Evolution instances.
    List { tenant: String },
    /// Give a tenant another Evolution API instance: prints its token (once) and webhook
    /// path (`/webhooks/evolution/i/NAME`); the slug URL stays the tenant's first instance.
    AddEvolution { tenant: String, name: String },
    /// Take an Evolution instance from a tenant (its URL stops working on every router).
    RemoveEvolution { tenant: String, name: String },
}

pub(super) async fn number(
    client: &mut Client,
    cmd: NumberCommand,
    json: bool,
) -> Result<(), Failure> {
    let n = match cmd {
        NumberCommand::Add {
            tenant,
            phone_number_id,
            display_phone,
        } => {
            client
                .add_number(pb::NumberRequest {
                    tenant,
                    phone_number_id,
                    display_phone,
                })
                .await?
        }
        NumberCommand::Remove {
            tenant,
            phone_number_id,
        } => {
            client
                .remove_number(pb::NumberRequest {
                    tenant,
                    phone_number_id,
                    display_phone: String::new(),
                })
                .await?
        }
        NumberCommand::List { tenant } => client.list_numbers(pb::TenantRef { tenant }).await?,
        NumberCommand::AddEvolution { tenant, name } => {
            let added = client
                .add_evolution_instance(pb::EvolutionInstanceRequest { tenant, name })
                .await?
                .into_inner();
            if json {
                output::json(&serde_json::json!({
                    "name": added.name, "token": added.token, "webhook_path": added.webhook_path,
                }));
            } else {
                output::line(&format!(
                    "instance {}: webhook {} with token {}",
                    added.name, added.webhook_path, added.token
                ));
            }
            return Ok(());
        }
        NumberCommand::RemoveEvolution { tenant, name } => {
            client
                .remove_evolution_instance(pb::EvolutionInstanceRequest { tenant, name })
                .await?
        }
    }
    .into_inner();
    if json {
        output::json(&serde_json::json!({
            "tenant": n.tenant,
            "evolution_instances": n.evolution_instances,
            "numbers": n.numbers.iter().map(|x| serde_json::json!({
                "phone_number_id": x.phone_number_id,
                "display_phone": x.display_phone,
                "primary": x.primary,
            })).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    let rows: Vec<_> = n
        .numbers
        .iter()
        .map(|x| {
            vec![
                x.phone_number_id.clone(),
                x.display_phone.clone(),
                if x.primary {
                    "first".into()
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    output::table(&["PHONE_NUMBER_ID", "DISPLAY", ""], &rows);
    if !n.evolution_instances.is_empty() {
        output::line(&format!(
            "evolution instances: {}",
            n.evolution_instances.join(", ")
        ));
    }
    Ok(())
}
