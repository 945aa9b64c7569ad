//! Human tables and JSON for `tenantctl`'s read commands.
//!
//! Writes ignore a closed stdout (`tenantctl list | head -1` must not panic).

use proto::control::v1 as pb;
use serde_json::{json, Value};
use std::io::Write;

fn out(text: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

/// Prints rows as an aligned table under `headers`.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        self::out(format_args!("{}", out.trim_end()));
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

/// Prints a JSON value.
pub fn json(value: &Value) {
    out(format_args!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    ));
}

/// Prints one line.
pub fn line(text: &str) {
    out(format_args!("{text}"));
}

/// Prints a warning on stderr (stdout stays parseable).
pub fn warn(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// A tenant as JSON (the fields scripts rely on).
pub fn tenant_json(t: &pb::Tenant) -> Value {
    json!({
        "id": t.id,
        "slug": t.slug,
        "name": t.name,
        "sector": sector(t.sector),
        "status": status(t.status),
        "status_reason": empty_null(&t.status_reason),
        "server": t.server,
        "database": t.database,
        "role": t.role,
        "owner_role": empty_null(&t.owner_role),
        "role_model": t.role_model,
        "generation": t.generation,
        "phone_number_id": empty_null(&t.phone_number_id),
        "display_phone": empty_null(&t.display_phone),
        "plan": t.plan,
        "schema_version": t.schema_version,
        "sector_schema_version": t.sector_schema_version,
        "migration_pending": t.migration_pending,
        "version": t.version,
        "created_at_ms": t.created_at_ms,
        "updated_at_ms": t.updated_at_ms,
    })
}

fn empty_null(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        Value::String(s.to_string())
    }
}

/// A server as JSON (never its password).
pub fn server_json(s: &pb::Server) -> Value {
    json!({
        "name": s.name, "host": s.host, "port": s.port, "admin_user": s.admin_user,
        "connection_budget": s.connection_budget, "capacity": s.capacity, "state": s.state, "tenants": s.tenants,
        "maintenance_closed": s.maintenance_closed,
    })
}

/// The spelling of a tenant's status (a proto enum number).
pub fn status(raw: i32) -> &'static str {
    proto::model::spelled(raw, tenant_model::TenantStatus::as_str)
}

/// The spelling of a tenant's sector.
pub fn sector(raw: i32) -> &'static str {
    proto::model::spelled(raw, tenant_model::Sector::as_str)
}

/// The spelling of a fleet run's outcome for one tenant.
pub fn outcome(raw: i32) -> &'static str {
    proto::model::spelled(raw, tenant_model::MigrationOutcome::as_str)
}

/// Table row for a tenant.
pub fn tenant_row(t: &pb::Tenant) -> Vec<String> {
    vec![
        t.slug.clone(),
        t.name.clone(),
        sector(t.sector).to_string(),
        status(t.status).to_string(),
        t.server.clone(),
        format!(
            "{}.{}{}",
            t.schema_version,
            t.sector_schema_version,
            if t.migration_pending { " *" } else { "" }
        ),
        t.version.to_string(),
    ]
}

/// Headers of [`tenant_row`].
pub const TENANT_HEADERS: &[&str] = &[
    "SLUG", "NAME", "SECTOR", "STATUS", "SERVER", "SCHEMA", "VERSION",
];

/// Prints one tenant as `key: value` lines.
pub fn tenant_detail(t: &pb::Tenant) {
    let rows = [
        ("slug", t.slug.clone()),
        ("id", t.id.to_string()),
        ("name", t.name.clone()),
        ("sector", sector(t.sector).to_string()),
        ("status", status(t.status).to_string()),
        ("reason", t.status_reason.clone()),
        ("server", t.server.clone()),
        ("database", t.database.clone()),
        ("role", t.role.clone()),
        ("owner_role", t.owner_role.clone()),
        ("role_model", t.role_model.clone()),
        ("phone_number_id", t.phone_number_id.clone()),
        ("display_phone", t.display_phone.clone()),
        ("plan", t.plan.clone()),
        (
            "schema",
            format!(
                "common v{}, sector v{}",
                t.schema_version, t.sector_schema_version
            ),
        ),
        ("migration_pending", t.migration_pending.to_string()),
        ("version", t.version.to_string()),
    ];
    for (k, v) in rows.iter().filter(|(_, v)| !v.is_empty()) {
        out(format_args!("{k:<18} {v}"));
    }
}
