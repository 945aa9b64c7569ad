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
    /// A tenant's numbers.
    List { tenant: String },
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
    }
    .into_inner();
    if json {
        output::json(&serde_json::json!({
            "tenant": n.tenant,
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
    Ok(())
}
