//! A tenant's further WhatsApp numbers (besides `empresas.phone_number_id`).

use super::{unique_violation, Catalog};
use crate::auth::Actor;
use crate::error::{Error, Result};

/// One number of a tenant.
#[derive(Debug, Clone)]
pub struct NumberRecord {
    pub phone_number_id: String,
    pub display_phone: Option<String>,
    /// The tenant's first number (`create --phone-number-id`).
    pub primary: bool,
}

impl Catalog {
    /// A tenant's numbers, the first one first.
    pub async fn numbers(&self, tenant_id: i64) -> Result<Vec<NumberRecord>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT phone_number_id, telefone_exibicao, true, 0::int8 FROM empresas \
                 WHERE id = $1 AND phone_number_id IS NOT NULL \
                 UNION ALL SELECT phone_number_id, telefone_exibicao, false, id FROM numeros WHERE empresa_id = $1 \
                 ORDER BY 3 DESC, 4",
                &[&tenant_id],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| NumberRecord {
                phone_number_id: r.get(0),
                display_phone: r.get(1),
                primary: r.get(2),
            })
            .collect())
    }

    /// Gives a tenant another number (its first, if it has none) with a version bump;
    /// `AlreadyExists` if any tenant has it.
    pub async fn add_number(
        &self,
        tenant_id: i64,
        phone_number_id: &str,
        display_phone: Option<&str>,
        by: &Actor,
    ) -> Result<()> {
        let taken = |e: tokio_postgres::Error| match unique_violation(&e) {
            Some(_) => Error::AlreadyExists(format!(
                "phone_number_id {phone_number_id:?} already belongs to a tenant"
            )),
            None => e.into(),
        };
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let first = tx
            .query_opt(
                "SELECT phone_number_id IS NULL FROM empresas WHERE id = $1 AND status <> 'deleted' FOR UPDATE",
                &[&tenant_id],
            )
            .await?
            .ok_or_else(|| Error::NotFound("tenant not found".into()))?
            .get::<_, bool>(0);
        if first {
            tx.execute(
                "UPDATE empresas SET phone_number_id = $2 WHERE id = $1",
                &[&tenant_id, &phone_number_id],
            )
            .await
            .map_err(taken)?;
        } else {
            tx.execute(
                "INSERT INTO numeros (empresa_id, phone_number_id, telefone_exibicao, criado_por) VALUES ($1, $2, $3, $4)",
                &[&tenant_id, &phone_number_id, &display_phone, &by.name],
            )
            .await
            .map_err(taken)?;
        }
        super::bump_version(&tx, tenant_id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Takes a number from a tenant (its first one too) with a version bump; whether the
    /// tenant had it.
    pub async fn remove_number(&self, tenant_id: i64, phone_number_id: &str) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let primary = tx
            .execute(
                "UPDATE empresas SET phone_number_id = NULL WHERE id = $1 AND phone_number_id = $2",
                &[&tenant_id, &phone_number_id],
            )
            .await?;
        let extra = tx
            .execute(
                "DELETE FROM numeros WHERE empresa_id = $1 AND phone_number_id = $2",
                &[&tenant_id, &phone_number_id],
            )
            .await?;
        if primary + extra == 0 {
            return Ok(false);
        }
        super::bump_version(&tx, tenant_id).await?;
        tx.commit().await?;
        Ok(true)
    }
}

/// The associated data an Evolution instance's token is sealed with.
pub fn instance_context(name: &str) -> String {
    format!("evolution:{name}:token")
}

impl Catalog {
    /// A tenant's further Evolution instances with their tokens (opened), by name.
    pub fn instance_tokens(&self, tenant: &super::TenantRecord) -> Result<Vec<(String, String)>> {
        tenant
            .evolution_instances
            .iter()
            .zip(&tenant.sealed_instance_tokens)
            .map(|(name, sealed)| {
                let token = self
                    .secrets()
                    .open(sealed, &instance_context(name))
                    .map_err(|e| Error::internal("evolution token", e))?;
                Ok((name.clone(), token))
            })
            .collect()
    }

    /// The tenant holding Evolution instance `name`, if any.
    pub async fn tenant_of_instance(&self, name: &str) -> Result<Option<i64>> {
        Ok(self
            .client()
            .await?
            .query_opt(
                "SELECT empresa_id FROM instancias_evolution WHERE nome = $1",
                &[&name],
            )
            .await?
            .map(|r| r.get(0)))
    }

    /// Adds an Evolution instance with a sealed `token` (version bump); `AlreadyExists` if
    /// the name is taken.
    pub async fn add_evolution_instance(
        &self,
        tenant_id: i64,
        name: &str,
        token: &str,
        by: &Actor,
    ) -> Result<()> {
        let sealed = self
            .secrets()
            .seal(token, &instance_context(name))
            .map_err(|e| Error::internal("seal evolution token", e))?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO instancias_evolution (empresa_id, nome, token_cifrado, criado_por) \
             SELECT id, $2, $3, $4 FROM empresas WHERE id = $1 AND status <> 'deleted'",
            &[&tenant_id, &name, &sealed, &by.name],
        )
        .await
        .map_err(|e| match unique_violation(&e) {
            Some(_) => Error::AlreadyExists(format!("evolution instance {name:?} already exists")),
            None => e.into(),
        })?;
        super::bump_version(&tx, tenant_id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes a tenant's Evolution instance (version bump); whether it had it.
    pub async fn remove_evolution_instance(&self, tenant_id: i64, name: &str) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let n = tx
            .execute(
                "DELETE FROM instancias_evolution WHERE empresa_id = $1 AND nome = $2",
                &[&tenant_id, &name],
            )
            .await?;
        if n == 0 {
            return Ok(false);
        }
        super::bump_version(&tx, tenant_id).await?;
        tx.commit().await?;
        Ok(true)
    }
}
