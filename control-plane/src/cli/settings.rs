//! `tenantctl settings` and `tenantctl secret`: a tenant's settings for its services and
//! its secrets (values only ever go in, on stdin; never out).

use super::{fail, output, Client, Failure};
use clap::Subcommand;
use proto::control::v1 as pb;
use std::io::{IsTerminal, Read};

#[derive(Subcommand)]
pub(super) enum SettingsCommand {
    /// A tenant's settings and the names of its secrets.
    Show { tenant: String },
    /// Set settings from a JSON object (`-` reads it from stdin); a key set to null is
    /// removed, keys not named stay.
    Set {
        tenant: String,
        #[arg(value_name = "JSON")]
        document: String,
    },
}

#[derive(Subcommand)]
pub(super) enum SecretCommand {
    /// Store a secret; its value is read from stdin (never a flag).
    Set { tenant: String, name: String },
    /// Remove a secret.
    Delete { tenant: String, name: String },
}

fn stdin_text(what: &str) -> Result<String, Failure> {
    let mut stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("{what} (end with Ctrl-D):");
    }
    let mut text = String::new();
    stdin
        .read_to_string(&mut text)
        .map_err(|e| fail(2, format!("cannot read {what} from stdin: {e}")))?;
    Ok(text.trim_end_matches(['\r', '\n']).to_string())
}

pub(super) async fn settings(
    client: &mut Client,
    cmd: SettingsCommand,
    json: bool,
) -> Result<(), Failure> {
    let s = match cmd {
        SettingsCommand::Show { tenant } => client.get_settings(pb::TenantRef { tenant }).await?,
        SettingsCommand::Set { tenant, document } => {
            let settings_json = if document == "-" {
                stdin_text("the settings JSON")?
            } else {
                document
            };
            client
                .update_settings(pb::UpdateSettingsRequest {
                    tenant,
                    settings_json,
                })
                .await?
        }
    }
    .into_inner();
    print(&s, json);
    Ok(())
}

pub(super) async fn secret(
    client: &mut Client,
    cmd: SecretCommand,
    json: bool,
) -> Result<(), Failure> {
    let s = match cmd {
        SecretCommand::Set { tenant, name } => {
            let value = stdin_text("the secret's value")?;
            if value.is_empty() {
                return Err(fail(2, "no secret value on stdin"));
            }
            client
                .set_secret(pb::SetSecretRequest {
                    tenant,
                    name,
                    value,
                })
                .await?
        }
        SecretCommand::Delete { tenant, name } => {
            client.delete_secret(pb::SecretRef { tenant, name }).await?
        }
    }
    .into_inner();
    print(&s, json);
    Ok(())
}

fn print(s: &pb::TenantSettings, json: bool) {
    let settings: serde_json::Value = serde_json::from_str(&s.settings_json).unwrap_or_default();
    if json {
        output::json(&serde_json::json!({
            "tenant": s.tenant,
            "settings": settings,
            "secrets": s.secrets.iter().map(|x| serde_json::json!({"name": x.name, "updated_at_ms": x.updated_at_ms})).collect::<Vec<_>>(),
        }));
        return;
    }
    output::line(&format!("settings of {}:", s.tenant));
    output::line(&serde_json::to_string_pretty(&settings).unwrap_or_default());
    let names: Vec<&str> = s.secrets.iter().map(|x| x.name.as_str()).collect();
    output::line(&format!(
        "secrets: {}",
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    ));
}
