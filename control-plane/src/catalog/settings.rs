//! Tenant settings and sealed secrets (see `crate::settings`).

use super::Catalog;
use crate::auth::Actor;
use crate::error::{Error, Result};
use serde_json::{Map, Value};

impl Catalog {
    /// A tenant's settings (empty when never set).
    pub async fn settings(&self, tenant_id: i64) -> Result<Map<String, Value>> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT configuracoes FROM configuracoes_empresa WHERE empresa_id = $1",
                &[&tenant_id],
            )
            .await?;
        Ok(match row.map(|r| r.get::<_, Value>(0)) {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        })
    }

    /// Merges checked `changes` into a tenant's settings in one transaction and bumps the
    /// tenant's version (routers drop what they cached); the new settings.
    pub async fn update_settings(
        &self,
        tenant_id: i64,
        changes: Map<String, Value>,
        by: &Actor,
    ) -> Result<Map<String, Value>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let current = tx
            .query_opt(
                "SELECT configuracoes FROM configuracoes_empresa WHERE empresa_id = $1 FOR UPDATE",
                &[&tenant_id],
            )
            .await?
            .and_then(|r| match r.get::<_, Value>(0) {
                Value::Object(m) => Some(m),
                _ => None,
            })
            .unwrap_or_default();
        let merged = crate::settings::merge(current, changes);
        let doc = Value::Object(merged.clone());
        if doc.to_string().len() > 256 * 1024 {
            return Err(Error::InvalidArgument(
                "settings would be larger than 256 KiB".into(),
            ));
        }
        tx.execute(
            "INSERT INTO configuracoes_empresa (empresa_id, configuracoes, atualizado_por) VALUES ($1, $2, $3) \
             ON CONFLICT (empresa_id) DO UPDATE SET configuracoes = excluded.configuracoes, \
             atualizado_por = excluded.atualizado_por, atualizado_em = now()",
            &[&tenant_id, &doc, &by.name],
        )
        .await?;
        super::bump_version(&tx, tenant_id).await?;
        tx.commit().await?;
        Ok(merged)
    }

    /// Seals and stores a secret (replacing one of the same name); bumps the version.
    pub async fn set_secret(
        &self,
        tenant_id: i64,
        name: &str,
        value: &str,
        by: &Actor,
    ) -> Result<()> {
        let sealed = self
            .secrets()
            .seal(value, &crate::settings::secret_context(tenant_id, name))
            .map_err(|e| Error::internal("seal secret", e))?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO segredos_empresa (empresa_id, nome, valor_cifrado, atualizado_por) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (empresa_id, nome) DO UPDATE SET valor_cifrado = excluded.valor_cifrado, \
             atualizado_por = excluded.atualizado_por, atualizado_em = now()",
            &[&tenant_id, &name, &sealed, &by.name],
        )
        .await?;
        super::bump_version(&tx, tenant_id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes a secret; whether it existed.
    pub async fn delete_secret(&self, tenant_id: i64, name: &str) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let n = tx
            .execute(
                "DELETE FROM segredos_empresa WHERE empresa_id = $1 AND nome = $2",
                &[&tenant_id, &name],
            )
            .await?;
        super::bump_version(&tx, tenant_id).await?;
        tx.commit().await?;
        Ok(n > 0)
    }

    /// A tenant's secret names with when they changed (ms), by name.
    pub async fn secret_names(&self, tenant_id: i64) -> Result<Vec<(String, i64)>> {
        Ok(self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT nome, {} FROM segredos_empresa WHERE empresa_id = $1 ORDER BY nome",
                    super::epoch_ms("atualizado_em")
                ),
                &[&tenant_id],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    /// A tenant's secrets, opened (for routers serving callers allowed to read them).
    pub async fn secrets_of(&self, tenant_id: i64) -> Result<Vec<(String, String)>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT nome, valor_cifrado FROM segredos_empresa WHERE empresa_id = $1 ORDER BY nome",
                &[&tenant_id],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let name: String = r.get(0);
                let value = self
                    .secrets()
                    .open(r.get(1), &crate::settings::secret_context(tenant_id, &name))
                    .map_err(|e| Error::internal("open secret", e))?;
                Ok((name, value))
            })
            .collect()
    }
}
