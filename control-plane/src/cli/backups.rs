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
    /// The catalog itself (every credential, sealed with the master key).
    #[arg(long, conflicts_with_all = ["tenants", "all"])]
    catalog: bool,
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
        "verified_ms": if b.verified_ms == 0 { serde_json::Value::Null } else { b.verified_ms.into() },
        "verification_error": if b.verification_error.is_empty() { serde_json::Value::Null } else { b.verification_error.clone().into() },
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
                match (b.verified_ms, b.verification_error.is_empty()) {
                    (0, _) => "".to_string(),
                    (_, true) => "ok".to_string(),
                    (_, false) => "FAILED".to_string(),
                },
                if b.error.is_empty() {
                    b.verification_error.clone()
                } else {
                    b.error.clone()
                },
            ]
        })
        .collect();
    output::table(
        &[
            "ID", "TENANT", "STATE", "REASON", "BYTES", "DURATION", "SCHEMA", "VERIFIED", "ERROR",
        ],
        &rows,
    );
}

pub(super) async fn backup(client: &mut Client, a: BackupArgs, json: bool) -> Result<u8, Failure> {
    if !a.all && !a.catalog && a.tenants.is_empty() {
        return Err(super::fail(
            2,
            "name tenants to back up or pass --all (or --catalog)",
        ));
    }
    let r = client
        .backup_tenants(pb::BackupRequest {
            tenants: a.tenants,
            all: a.all,
            catalog: a.catalog,
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

pub(super) async fn verify(client: &mut Client, backup_id: i64, json: bool) -> Result<u8, Failure> {
    let b = client
        .verify_backup(pb::VerifyBackupRequest { backup_id })
        .await?
        .into_inner();
    print(std::slice::from_ref(&b), json);
    Ok(if b.verification_error.is_empty() {
        0
    } else {
        7
    })
}

pub(super) async fn list(
    client: &mut Client,
    tenant: Option<String>,
    catalog: bool,
    limit: u32,
    json: bool,
) -> Result<(), Failure> {
    let backups = client
        .list_backups(pb::ListBackupsRequest {
            tenant: tenant.unwrap_or_default(),
            limit,
            catalog,
        })
        .await?
        .into_inner()
        .backups;
    print(&backups, json);
    Ok(())
}

#[derive(Args)]
pub(super) struct ExportArgs {
    tenant: String,
    /// jsonl (one JSON object per line) or csv (one file per table).
    #[arg(long)]
    format: String,
    /// A file for jsonl, or `-` for standard output; a directory for csv.
    #[arg(long)]
    to: String,
}

/// Where exported bytes go: one stream, or one file per table.
enum Sink {
    One(Box<dyn std::io::Write>),
    PerTable {
        dir: std::path::PathBuf,
        current: Option<(String, std::fs::File)>,
    },
}

impl Sink {
    fn write(&mut self, table: &str, data: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        match self {
            Sink::One(w) => w.write_all(data),
            Sink::PerTable { dir, current } => {
                if current.as_ref().is_none_or(|(t, _)| t != table) {
                    // Table names come from the tenant schema: plain identifiers.
                    if !table
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    {
                        return Err(std::io::Error::other(format!("unexpected table {table:?}")));
                    }
                    let file = std::fs::File::create(dir.join(format!("{table}.csv")))?;
                    *current = Some((table.to_string(), file));
                }
                match current {
                    Some((_, f)) => f.write_all(data),
                    None => Ok(()),
                }
            }
        }
    }

    fn finish(self) -> std::io::Result<()> {
        use std::io::Write;
        match self {
            Sink::One(mut w) => w.flush(),
            Sink::PerTable { current, .. } => match current {
                Some((_, f)) => f.sync_all(),
                None => Ok(()),
            },
        }
    }
}

pub(super) async fn export(client: &mut Client, a: ExportArgs, json: bool) -> Result<(), Failure> {
    let (format, sink) = match (a.format.as_str(), a.to.as_str()) {
        ("jsonl", "-") => (
            pb::ExportFormat::Jsonl,
            Sink::One(Box::new(std::io::BufWriter::new(std::io::stdout()))),
        ),
        ("jsonl", path) => (
            pb::ExportFormat::Jsonl,
            Sink::One(Box::new(std::io::BufWriter::new(
                std::fs::File::create(path)
                    .map_err(|e| super::fail(1, format!("cannot create {path}: {e}")))?,
            ))),
        ),
        ("csv", "-") => {
            return Err(super::fail(
                2,
                "csv writes one file per table: give a directory with --to",
            ))
        }
        ("csv", dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| super::fail(1, format!("cannot create {dir}: {e}")))?;
            (
                pb::ExportFormat::Csv,
                Sink::PerTable {
                    dir: dir.into(),
                    current: None,
                },
            )
        }
        (other, _) => {
            return Err(super::fail(
                2,
                format!("unknown format {other:?}: expected jsonl or csv"),
            ))
        }
    };
    let mut sink = sink;
    let mut stream = client
        .export_tenant(pb::ExportRequest {
            tenant: a.tenant,
            format: format as i32,
        })
        .await?
        .into_inner();
    let (mut tables, mut bytes) = (std::collections::BTreeSet::new(), 0u64);
    while let Some(chunk) = stream.message().await? {
        sink.write(&chunk.table, &chunk.data)
            .map_err(|e| super::fail(1, format!("cannot write the export: {e}")))?;
        bytes += chunk.data.len() as u64;
        tables.insert(chunk.table);
    }
    sink.finish()
        .map_err(|e| super::fail(1, format!("cannot write the export: {e}")))?;
    if a.to != "-" {
        if json {
            output::json(&json!({"tables": tables, "bytes": bytes, "to": a.to}));
        } else {
            output::line(&format!(
                "exported {} tables ({bytes} bytes) to {}",
                tables.len(),
                a.to
            ));
        }
    }
    Ok(())
}
