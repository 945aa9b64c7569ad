//! `tenantctl backup` and `tenantctl backups`.

use super::{output, Client, Failure};
use clap::Args;
use proto::control::v1 as pb;
use serde_json::json;

#[derive(Args)]
pub(super) struct BackupArgs {
    /// Tenants (slugs or ids).
    tenants: Vec<String>,
    /// Every active or suspended tenant.
    #[arg(long, conflicts_with = "tenants")]
    all: bool,
}

fn state(b: &pb::BackupInfo) -> &'static str {
    proto::model::spelled(b.state, tenant_model::BackupState::as_str)
}

fn backup_json(b: &pb::BackupInfo) -> serde_json::Value {
    json!({
        "id": b.id, "tenant": b.tenant, "reason": b.reason, "state": state(b), "bytes": b.bytes,
        "checksum": b.checksum, "duration_ms": b.duration_ms, "schema_version": b.schema_version,
        "sector_schema_version": b.sector_schema_version,
        "error": if b.error.is_empty() { serde_json::Value::Null } else { b.error.clone().into() },
        "started_ms": b.started_ms, "finished_ms": b.finished_ms,
        "manifest": serde_json::from_str::<serde_json::Value>(&b.manifest_json).unwrap_or(serde_json::Value::Null),
    })
}

fn print(backups: &[pb::BackupInfo], json: bool) {
    if json {
        output::json(&serde_json::Value::Array(
            backups.iter().map(backup_json).collect(),
        ));
        return;
    }
    let rows: Vec<_> = backups
        .iter()
        .map(|b| {
            vec![
                b.id.to_string(),
                b.tenant.clone(),
                state(b).to_string(),
                b.reason.clone(),
                b.bytes.to_string(),
                format!("{} ms", b.duration_ms),
                format!("{}.{}", b.schema_version, b.sector_schema_version),
                b.error.clone(),
            ]
        })
        .collect();
    output::table(
        &[
            "ID", "TENANT", "STATE", "REASON", "BYTES", "DURATION", "SCHEMA", "ERROR",
        ],
        &rows,
    );
}

pub(super) async fn backup(client: &mut Client, a: BackupArgs, json: bool) -> Result<u8, Failure> {
    if !a.all && a.tenants.is_empty() {
        return Err(super::fail(2, "name tenants to back up or pass --all"));
    }
    let r = client
        .backup_tenants(pb::BackupRequest {
            tenants: a.tenants,
            all: a.all,
        })
        .await?
        .into_inner();
    if json {
        output::json(&json!({
            "backups": r.backups.iter().map(backup_json).collect::<Vec<_>>(),
            "failed": r.failed.iter().map(|f| json!({"tenant": f.slug, "error": f.error})).collect::<Vec<_>>(),
        }));
    } else {
        print(&r.backups, false);
        for f in &r.failed {
            output::line(&format!("{}: {}", f.slug, f.error));
        }
    }
    let all_ok = r.failed.is_empty() && r.backups.iter().all(|b| state(b) == "ok");
    Ok(if all_ok { 0 } else { 7 })
}

pub(super) async fn list(
    client: &mut Client,
    tenant: String,
    limit: u32,
    json: bool,
) -> Result<(), Failure> {
    let backups = client
        .list_backups(pb::ListBackupsRequest { tenant, limit })
        .await?
        .into_inner()
        .backups;
    print(&backups, json);
    Ok(())
}
