//! Deleted tenants: marked (number freed, who/when/why, purge time), then purged into a
//! tombstone.

use super::{epoch_ms, Catalog};
use crate::error::{Error, Result};

/// A purged tenant as its tombstone records it.
#[derive(Debug, Clone)]
pub struct Tombstone {
    pub id: i64,
    pub slug: String,
    pub deleted_by: String,
    pub deleted_ms: i64,
    pub reason: Option<String>,
    pub purged_ms: i64,
}

impl Catalog {
    /// Marks a (suspended) tenant deleted: its WhatsApp numbers are free at once, and it is
    /// purged `purge_after_secs` from now. Idempotent (a second call keeps the first
    /// purge time).
    pub async fn mark_deleted(
        &self,
        id: i64,
        by: &str,
        reason: Option<&str>,
        purge_after_secs: u64,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let n = tx
            .execute(
                "UPDATE empresas SET status = 'deleted', \
                 phone_number_id_anterior = coalesce(phone_number_id_anterior, phone_number_id), \
                 phone_number_id = NULL, excluido_por = coalesce(excluido_por, $2), \
                 excluido_em = coalesce(excluido_em, now()), motivo_exclusao = coalesce(motivo_exclusao, $3), \
                 purgar_apos = coalesce(purgar_apos, now() + make_interval(secs => $4)), \
                 atualizado_em = now(), version = version + 1 \
                 WHERE id = $1 AND status IN ('suspended', 'deleted')",
                &[&id, &by, &reason, &(purge_after_secs as f64)],
            )
            .await?;
        if n == 0 {
            return Err(Error::FailedPrecondition(
                "tenant must be suspended before it is deleted".into(),
            ));
        }
        // Its further numbers are free at once too.
        tx.execute("DELETE FROM numeros WHERE empresa_id = $1", &[&id])
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Brings the purge of a deleted tenant forward to now.
    pub async fn purge_now(&self, id: i64) -> Result<()> {
        self.client()
            .await?
            .execute(
                "UPDATE empresas SET purgar_apos = now() WHERE id = $1 AND status = 'deleted'",
                &[&id],
            )
            .await?;
        Ok(())
    }

    /// When a deleted tenant will be purged.
    pub async fn purge_at_ms(&self, id: i64) -> Result<Option<i64>> {
        let row = self
            .client()
            .await?
            .query_opt(
                &format!(
                    "SELECT {} FROM empresas WHERE id = $1",
                    epoch_ms("purgar_apos")
                ),
                &[&id],
            )
            .await?;
        Ok(row.and_then(|r| r.get(0)))
    }

    /// Deleted tenants whose window is over.
    pub async fn due_purges(&self) -> Result<Vec<i64>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id FROM empresas WHERE status = 'deleted' AND purgar_apos <= now() ORDER BY purgar_apos",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Replaces a purged tenant's row by its tombstone (the slug is free afterwards).
    pub async fn tombstone(&self, id: i64) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO empresas_excluidas (id, slug, nome, phone_number_id, excluido_por, excluido_em, motivo) \
             SELECT id, slug, nome, phone_number_id_anterior, coalesce(excluido_por, 'unknown'), \
             coalesce(excluido_em, now()), motivo_exclusao FROM empresas WHERE id = $1 AND status = 'deleted' \
             ON CONFLICT (id) DO NOTHING",
            &[&id],
        )
        .await?;
        tx.execute(
            "DELETE FROM empresas WHERE id = $1 AND status = 'deleted'",
            &[&id],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A purged tenant's tombstone, by slug (the newest, if the slug was reused).
    pub async fn tombstone_by_slug(&self, slug: &str) -> Result<Option<Tombstone>> {
        let row = self
            .client()
            .await?
            .query_opt(
                &format!(
                    "SELECT id, slug, excluido_por, {}, motivo, {} FROM empresas_excluidas \
                     WHERE slug = $1 ORDER BY purgado_em DESC LIMIT 1",
                    epoch_ms("excluido_em"),
                    epoch_ms("purgado_em")
                ),
                &[&slug],
            )
            .await?;
        Ok(row.map(|r| Tombstone {
            id: r.get(0),
            slug: r.get(1),
            deleted_by: r.get(2),
            deleted_ms: r.get(3),
            reason: r.get(4),
            purged_ms: r.get(5),
        }))
    }

    /// Every backup row of a tenant (to purge them).
    pub async fn all_backups_of(&self, tenant_id: i64) -> Result<Vec<(i64, String)>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, objeto FROM backups WHERE empresa_id = $1 ORDER BY id",
                &[&tenant_id],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}
