//! Webhook deliveries (or single items) no tenant database took: kept once per content
//! (a retry counts, it is not stored again), listable, and pruned after a retention period.

use super::{epoch_ms, Catalog};
use crate::error::Result;
use sha2::{Digest, Sha256};
use tokio_postgres::Row;

/// How much one source may keep.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    pub rows: u32,
    pub bytes: i64,
}

/// A dead letter as the catalog holds it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub id: i64,
    pub source: String,
    pub phone_number_id: Option<String>,
    pub reason: Option<String>,
    /// How many times this exact content arrived.
    pub times: i32,
    pub first_ms: i64,
    pub last_ms: i64,
    pub size: i64,
    /// The content (only when fetched one by one).
    pub body: Option<Vec<u8>>,
}

fn from_row(row: &Row, with_body: bool) -> DeadLetter {
    DeadLetter {
        id: row.get(0),
        source: row.get(1),
        phone_number_id: row.get(2),
        reason: row.get(3),
        times: row.get(4),
        first_ms: row.get(5),
        last_ms: row.get(6),
        size: row.get(7),
        body: with_body.then(|| row.get(8)),
    }
}

fn select() -> String {
    format!(
        "SELECT id, fonte, phone_number_id, motivo, vezes, {}, {}, octet_length(corpo)::int8, corpo \
         FROM webhooks_nao_roteados",
        epoch_ms("recebido_em"),
        epoch_ms("ultima_em")
    )
}

impl Catalog {
    /// Keeps a webhook body (or item) no tenant database took; the same content from the
    /// same source is stored once and counted. New content from a source already holding
    /// `quota` is not kept (`None`): one noisy sender cannot fill the control database.
    pub async fn dead_letter(
        &self,
        source: &str,
        phone_number_id: Option<&str>,
        body: &[u8],
        reason: Option<&str>,
        quota: &Quota,
    ) -> Result<Option<i64>> {
        let hash = Sha256::digest(body).to_vec();
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let seen = tx
            .query_opt(
                "UPDATE webhooks_nao_roteados SET vezes = vezes + 1, ultima_em = now() \
                 WHERE fonte = $1 AND hash = $2 RETURNING id",
                &[&source, &hash],
            )
            .await?;
        if let Some(row) = seen {
            tx.commit().await?;
            return Ok(Some(row.get(0)));
        }
        // One source's quota is checked and filled by one replica at a time.
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('dead_letters:' || $1::text))",
            &[&source],
        )
        .await?;
        let held = tx
            .query_one(
                "SELECT count(*), coalesce(sum(octet_length(corpo)), 0)::int8 \
                 FROM webhooks_nao_roteados WHERE fonte = $1",
                &[&source],
            )
            .await?;
        let (rows, bytes): (i64, i64) = (held.get(0), held.get(1));
        let size = i64::try_from(body.len()).unwrap_or(i64::MAX);
        if rows >= i64::from(quota.rows) || bytes.saturating_add(size) > quota.bytes {
            tx.commit().await?;
            return Ok(None);
        }
        let row = tx
            .query_one(
                "INSERT INTO webhooks_nao_roteados (fonte, phone_number_id, corpo, motivo, hash) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (fonte, hash) WHERE hash IS NOT NULL \
                 DO UPDATE SET vezes = webhooks_nao_roteados.vezes + 1, ultima_em = now() RETURNING id",
                &[&source, &phone_number_id, &body, &reason, &hash],
            )
            .await?;
        tx.commit().await?;
        Ok(Some(row.get(0)))
    }

    /// Dead letters, newest first (without their bodies).
    pub async fn dead_letters(&self, source: Option<&str>, limit: u32) -> Result<Vec<DeadLetter>> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "{} WHERE ($1::text IS NULL OR fonte = $1) ORDER BY ultima_em DESC, id DESC LIMIT $2",
                    select()
                ),
                &[&source, &i64::from(limit)],
            )
            .await?;
        Ok(rows.iter().map(|r| from_row(r, false)).collect())
    }

    /// One dead letter with its body.
    pub async fn dead_letter_by_id(&self, id: i64) -> Result<Option<DeadLetter>> {
        let row = self
            .client()
            .await?
            .query_opt(&format!("{} WHERE id = $1", select()), &[&id])
            .await?;
        Ok(row.as_ref().map(|r| from_row(r, true)))
    }

    /// Deletes dead letters last seen more than `retention_days` ago; returns how many.
    pub async fn prune_dead_letters(&self, retention_days: u32) -> Result<u64> {
        Ok(self
            .client()
            .await?
            .execute(
                "DELETE FROM webhooks_nao_roteados WHERE ultima_em < now() - make_interval(days => $1)",
                &[&i32::try_from(retention_days).unwrap_or(i32::MAX)],
            )
            .await?)
    }
}
