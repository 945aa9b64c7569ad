//! Webhook deliveries (or single items) no tenant database took: kept once per content
//! and destination (a retry counts, it is not stored again), listable, replayable (see
//! `replay`), and pruned after a retention period.

use super::{epoch_ms, Catalog};
use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use tenant_model::{DeadLetterKind, WebhookSource};
use tokio_postgres::Row;

/// A dead letter to keep.
#[derive(Debug, Clone, Copy)]
pub struct NewDeadLetter<'a> {
    pub source: WebhookSource,
    pub kind: DeadLetterKind,
    /// The tenant it was meant for, when known.
    pub tenant_id: Option<i64>,
    pub phone_number_id: Option<&'a str>,
    pub body: &'a [u8],
    /// In words (refused items).
    pub reason: Option<&'a str>,
}

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
    pub source: WebhookSource,
    pub kind: DeadLetterKind,
    /// The tenant it was meant for (id, slug), when known.
    pub tenant: Option<(i64, String)>,
    /// When it was last replayed (since it last arrived).
    pub replayed_ms: Option<i64>,
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

fn from_row(row: &Row, with_body: bool) -> Result<DeadLetter> {
    let bad = |e: tenant_model::Invalid| Error::Internal(format!("catalog dead letter: {e}"));
    let tenant_id: Option<i64> = row.get(10);
    let slug: Option<String> = row.get(11);
    Ok(DeadLetter {
        id: row.get(0),
        source: WebhookSource::parse(row.get(1)).map_err(bad)?,
        phone_number_id: row.get(2),
        reason: row.get(3),
        times: row.get(4),
        first_ms: row.get(5),
        last_ms: row.get(6),
        size: row.get(7),
        body: with_body.then(|| row.get(8)),
        kind: DeadLetterKind::parse(row.get(9)).map_err(bad)?,
        tenant: tenant_id.zip(slug),
        replayed_ms: row.get(12),
    })
}

fn select() -> String {
    format!(
        "SELECT d.id, d.fonte, d.phone_number_id, d.motivo, d.vezes, {}, {}, \
         octet_length(d.corpo)::int8, d.corpo, d.tipo, d.empresa_id, e.slug, {} \
         FROM webhooks_nao_roteados d LEFT JOIN empresas e ON e.id = d.empresa_id",
        epoch_ms("d.recebido_em"),
        epoch_ms("d.ultima_em"),
        epoch_ms("d.reproduzido_em"),
    )
}

impl Catalog {
    /// Keeps a webhook body (or item) no tenant database took; the same content from the
    /// same source is stored once and counted. New content from a source already holding
    /// `quota` is not kept (`None`): one noisy sender cannot fill the control database.
    pub async fn dead_letter(&self, d: NewDeadLetter<'_>, quota: &Quota) -> Result<Option<i64>> {
        let NewDeadLetter {
            source,
            kind,
            tenant_id,
            phone_number_id,
            body,
            reason,
        } = d;
        let source = source.as_str();
        // One row per content and destination: a Meta body that carries two tenants'
        // numbers is kept once for each.
        let mut digest = Sha256::new();
        for part in [
            kind.as_str().as_bytes(),
            &tenant_id.unwrap_or(0).to_be_bytes(),
            phone_number_id.unwrap_or("").as_bytes(),
        ] {
            digest.update(part);
            digest.update([0]);
        }
        digest.update(body);
        let hash = digest.finalize().to_vec();
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let seen = tx
            .query_opt(
                "UPDATE webhooks_nao_roteados SET vezes = vezes + 1, ultima_em = now(), \
                 reproduzido_em = NULL WHERE fonte = $1 AND hash = $2 RETURNING id",
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
                "INSERT INTO webhooks_nao_roteados \
                 (fonte, phone_number_id, corpo, motivo, hash, tipo, empresa_id) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (fonte, hash) WHERE hash IS NOT NULL \
                 DO UPDATE SET vezes = webhooks_nao_roteados.vezes + 1, ultima_em = now(), \
                 reproduzido_em = NULL RETURNING id",
                &[
                    &source,
                    &phone_number_id,
                    &body,
                    &reason,
                    &hash,
                    &kind.as_str(),
                    &tenant_id,
                ],
            )
            .await?;
        tx.commit().await?;
        Ok(Some(row.get(0)))
    }

    /// Dead letters, newest first (without their bodies).
    pub async fn dead_letters(
        &self,
        source: Option<WebhookSource>,
        limit: u32,
    ) -> Result<Vec<DeadLetter>> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "{} WHERE ($1::text IS NULL OR d.fonte = $1) ORDER BY d.ultima_em DESC, d.id DESC LIMIT $2",
                    select()
                ),
                &[&source.map(WebhookSource::as_str), &i64::from(limit)],
            )
            .await?;
        rows.iter().map(|r| from_row(r, false)).collect()
    }

    /// A tenant's replayable dead letters that have not been replayed since they last
    /// arrived (with their bodies), oldest first.
    pub async fn pending_replays(&self, tenant_id: i64, limit: u32) -> Result<Vec<DeadLetter>> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "{} WHERE d.empresa_id = $1 AND d.tipo = 'tenant_suspended' \
                     AND d.reproduzido_em IS NULL ORDER BY d.id LIMIT $2",
                    select()
                ),
                &[&tenant_id, &i64::from(limit)],
            )
            .await?;
        rows.iter().map(|r| from_row(r, true)).collect()
    }

    /// Active tenants holding suspended-tenant dead letters not replayed yet.
    pub async fn tenants_with_pending_replays(&self) -> Result<Vec<i64>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT DISTINCT d.empresa_id FROM webhooks_nao_roteados d \
                 JOIN empresas e ON e.id = d.empresa_id \
                 WHERE d.tipo = 'tenant_suspended' AND d.reproduzido_em IS NULL \
                 AND e.status = 'active' ORDER BY 1",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Records that a dead letter was stored in `tenant_id`'s database (unless it arrived
    /// again meanwhile, which makes it pending again: `last_ms` tells).
    pub async fn mark_replayed(&self, id: i64, tenant_id: i64, last_ms: i64) -> Result<()> {
        self.client()
            .await?
            .execute(
                &format!(
                    "UPDATE webhooks_nao_roteados SET reproduzido_em = now(), \
                     empresa_id = coalesce(empresa_id, $2) WHERE id = $1 AND {} = $3",
                    epoch_ms("ultima_em")
                ),
                &[&id, &tenant_id, &last_ms],
            )
            .await?;
        Ok(())
    }

    /// One dead letter with its body.
    pub async fn dead_letter_by_id(&self, id: i64) -> Result<Option<DeadLetter>> {
        let row = self
            .client()
            .await?
            .query_opt(&format!("{} WHERE d.id = $1", select()), &[&id])
            .await?;
        row.as_ref().map(|r| from_row(r, true)).transpose()
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
