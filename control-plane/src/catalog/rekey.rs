//! Re-sealing every stored secret with the current master key (`tenantctl rekey`).
//!
//! Each secret is opened with whichever key sealed it and written back sealed with the
//! current key, one row at a time and only if it has not changed meanwhile, so a run can
//! be interrupted and repeated. Credentials themselves do not change: no tenant version is
//! bumped and routers notice nothing.

use super::Catalog;
use crate::error::{Error, Result};

/// What a re-seal did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resealed {
    /// Secrets re-sealed with the current key.
    pub resealed: u32,
    /// Secrets already sealed with it.
    pub current: u32,
}

/// A sealed column: table, key column, sealed column, and the SQL expression of its
/// associated data (the same string the code binds when sealing).
const COLUMNS: [(&str, &str, &str, &str); 10] = [
    (
        "empresas",
        "id",
        "senha_cifrada",
        "'tenant:' || slug || ':password'",
    ),
    (
        "empresas",
        "id",
        "senha_dono_cifrada",
        "'tenant:' || id || ':owner'",
    ),
    (
        "empresas",
        "id",
        "senha_reserva_cifrada",
        "'tenant:' || id || ':standby'",
    ),
    (
        "empresas",
        "id",
        "webhook_token_cifrado",
        "'tenant:' || slug || ':webhook-token'",
    ),
    (
        "servidores",
        "id",
        "admin_senha_cifrada",
        "'server:' || nome || ':admin'",
    ),
    (
        "servidores",
        "id",
        "template_senha_cifrada",
        "'server:' || nome || ':template-owner'",
    ),
    // Tenant secrets (see `catalog::settings`).
    (
        "segredos_empresa",
        "id",
        "valor_cifrado",
        "'tenant:' || empresa_id || ':secret:' || nome",
    ),
    // Evolution instances' webhook tokens (see `catalog::numbers`).
    (
        "instancias_evolution",
        "id",
        "token_cifrado",
        "'evolution:' || nome || ':token'",
    ),
    // Each backup's data key (see `backup::key_context`).
    ("backups", "id", "chave_cifrada", "'backup:' || objeto"),
    // Routers' ingest logins (see `ingest`).
    (
        "ingest_logins",
        "id",
        "senha_cifrada",
        "'ingest:' || roteador",
    ),
];

impl Catalog {
    /// Re-seals every stored secret not yet sealed with the current master key.
    pub async fn reseal_all(&self) -> Result<Resealed> {
        let mut done = Resealed::default();
        for (table, key, column, context) in COLUMNS {
            let rows = self
                .client()
                .await?
                .query(
                    &format!(
                        "SELECT {key}, {column}, {context} FROM {table} WHERE {column} IS NOT NULL ORDER BY {key}"
                    ),
                    &[],
                )
                .await?;
            for row in rows {
                let (id, sealed, context): (i64, Vec<u8>, String) =
                    (row.get(0), row.get(1), row.get(2));
                if !self.secrets().needs_reseal(&sealed) {
                    done.current += 1;
                    continue;
                }
                let plain = self.secrets().open(&sealed, &context).map_err(|_| {
                    Error::FailedPrecondition(format!(
                        "{table}.{column} of row {id} opens with no configured key; \
                         add the key that sealed it to retired_master_keys"
                    ))
                })?;
                let resealed = self
                    .secrets()
                    .seal(&plain, &context)
                    .map_err(|e| Error::internal("seal", e))?;
                let updated = self
                    .client()
                    .await?
                    .execute(
                        &format!(
                            "UPDATE {table} SET {column} = $3 WHERE {key} = $1 AND {column} = $2"
                        ),
                        &[&id, &sealed, &resealed],
                    )
                    .await?;
                // A row changed meanwhile was sealed with the current key by its writer.
                done.resealed += u32::try_from(updated).unwrap_or(0);
            }
        }
        Ok(done)
    }

    /// Stored secrets not yet sealed with the current master key.
    pub async fn secrets_under_old_keys(&self) -> Result<u32> {
        let mut n = 0;
        for (table, _, column, _) in COLUMNS {
            let rows = self
                .client()
                .await?
                .query(
                    &format!("SELECT {column} FROM {table} WHERE {column} IS NOT NULL"),
                    &[],
                )
                .await?;
            n += rows
                .iter()
                .filter(|r| self.secrets().needs_reseal(&r.get::<_, Vec<u8>>(0)))
                .count();
        }
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }
}
