//! Stores one tenant's share of a delivery in its database, in one transaction: lead
//! upserted by canonical WhatsApp id, at most one open conversation per lead, messages
//! inserted once per `wamid`, statuses applied monotonically.

use super::payload::{InMessage, TenantBatch};
use crate::domain::phone::canonical_wa_id;
use crate::pools::PgConn;

const EXISTING: &str = "SELECT wamid FROM mensagens WHERE wamid = ANY($1)";
const UPSERT_LEADS: &str = "INSERT INTO leads (wa_id, wa_id_raw, nome, origem) \
     SELECT w, r, n, 'whatsapp' FROM unnest($1::text[], $2::text[], $3::text[]) AS t(w, r, n) \
     ON CONFLICT (wa_id) DO UPDATE SET nome = coalesce(leads.nome, EXCLUDED.nome), atualizado_em = now() \
     RETURNING id, wa_id";
const OPEN_CONVERSATIONS: &str = "INSERT INTO conversas (lead_id) SELECT unnest($1::int8[]) \
     ON CONFLICT (lead_id) WHERE status = 'aberta' DO NOTHING";
const OPEN_CONVERSATION_IDS: &str =
    "SELECT lead_id, id FROM conversas WHERE lead_id = ANY($1) AND status = 'aberta'";
const INSERT_MESSAGES: &str = "INSERT INTO mensagens (conversa_id, wamid, direcao, tipo, conteudo, midia_id, \
     midia_mime, midia_sha256, status, enviada_em) \
     SELECT c, w, 'entrada', k, b, mi, mm, ms, 'recebida', coalesce(to_timestamp(ts), now()) \
     FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::float8[]) \
     AS t(c, w, k, b, mi, mm, ms, ts) \
     ON CONFLICT (wamid) DO NOTHING RETURNING conversa_id";
const TOUCH_CONVERSATIONS: &str = "UPDATE conversas c SET ultima_mensagem_em = now(), nao_lidas = c.nao_lidas + x.n \
     FROM (SELECT id, count(*)::int4 AS n FROM unnest($1::int8[]) AS id GROUP BY id) x WHERE c.id = x.id";
/// `sent` < `delivered` < `read`; `failed` is terminal (and never overrides `read`).
const APPLY_STATUS: &str = "UPDATE mensagens SET status = $2, erro = coalesce($3, erro), \
     lida_em = CASE WHEN $2 = 'read' THEN coalesce(lida_em, now()) ELSE lida_em END \
     WHERE wamid = $1 AND status NOT IN ('failed', 'read') AND ($2 = 'failed' OR \
     (CASE status WHEN 'sent' THEN 1 WHEN 'delivered' THEN 2 ELSE 0 END) < \
     (CASE $2 WHEN 'sent' THEN 1 WHEN 'delivered' THEN 2 WHEN 'read' THEN 3 ELSE 0 END))";

/// Column arrays of the messages inserted in one statement.
#[derive(Default)]
struct MessageColumns<'a> {
    conversation: Vec<i64>,
    wamid: Vec<&'a str>,
    kind: Vec<String>,
    body: Vec<Option<String>>,
    media_id: Vec<Option<String>>,
    media_mime: Vec<Option<String>>,
    media_sha256: Vec<Option<String>>,
    sent_at: Vec<Option<f64>>,
}

/// What one tenant's batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub messages: u32,
    pub duplicates: u32,
    pub statuses: u32,
    pub skipped: u32,
}

fn lead_id_of(m: &InMessage) -> Option<(String, String)> {
    match (&m.from, &m.from_user_id) {
        (Some(from), _) => canonical_wa_id(from).map(|c| (c, from.clone())),
        // Users known only by a business-scoped user id (no phone number).
        (None, Some(user)) if !user.is_empty() && user.len() <= 128 => {
            Some((format!("bsuid:{user}"), user.clone()))
        }
        _ => None,
    }
}

/// Runs the whole batch in one transaction (a handful of set-based statements, however
/// many messages); any database error rolls all of it back.
pub async fn store(c: &mut PgConn, batch: &TenantBatch) -> Result<Stored, tokio_postgres::Error> {
    use std::collections::{HashMap, HashSet};
    let existing = c.prepare(EXISTING).await?;
    let upsert_leads = c.prepare(UPSERT_LEADS).await?;
    let open = c.prepare(OPEN_CONVERSATIONS).await?;
    let open_ids = c.prepare(OPEN_CONVERSATION_IDS).await?;
    let insert = c.prepare(INSERT_MESSAGES).await?;
    let touch = c.prepare(TOUCH_CONVERSATIONS).await?;
    let status = c.prepare(APPLY_STATUS).await?;
    let tx = c.client.transaction().await?;
    let mut stored = Stored::default();

    // Messages already stored (redeliveries) are skipped before touching leads.
    let wamids: Vec<&str> = batch.messages.iter().map(|(m, _)| m.id.as_str()).collect();
    let known: HashSet<String> = if wamids.is_empty() {
        HashSet::new()
    } else {
        tx.query(&existing, &[&wamids])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    let mut fresh = Vec::new();
    for (m, name) in &batch.messages {
        if known.contains(&m.id) {
            stored.duplicates += 1;
            continue;
        }
        match lead_id_of(m) {
            Some((wa_id, raw)) => fresh.push((m, name, wa_id, raw)),
            None => stored.skipped += 1,
        }
    }
    // Rows are written in key order so concurrent deliveries lock them in the same order
    // (no deadlocks between two batches sharing leads or wamids).
    fresh.sort_by(|a, b| a.0.id.cmp(&b.0.id));
    if !fresh.is_empty() {
        // One row per lead (a statement may not update one row twice).
        let mut leads: Vec<(String, String, Option<String>)> = Vec::new();
        for (_, name, wa_id, raw) in &fresh {
            if !leads.iter().any(|l| &l.0 == wa_id) {
                let name: Option<String> = name.as_ref().map(|n| n.chars().take(200).collect());
                leads.push((wa_id.clone(), raw.clone(), name));
            }
        }
        leads.sort_by(|a, b| a.0.cmp(&b.0));
        let w: Vec<&str> = leads.iter().map(|l| l.0.as_str()).collect();
        let r: Vec<&str> = leads.iter().map(|l| l.1.as_str()).collect();
        let n: Vec<Option<&str>> = leads.iter().map(|l| l.2.as_deref()).collect();
        let lead_ids: HashMap<String, i64> = tx
            .query(&upsert_leads, &[&w, &r, &n])
            .await?
            .iter()
            .map(|row| (row.get(1), row.get(0)))
            .collect();
        let mut ids: Vec<i64> = lead_ids.values().copied().collect();
        ids.sort_unstable();
        tx.execute(&open, &[&ids]).await?;
        let conv_of: HashMap<i64, i64> = tx
            .query(&open_ids, &[&ids])
            .await?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();

        let mut cols = MessageColumns::default();
        for (m, _, wa_id, _) in &fresh {
            let Some(lead) = lead_ids.get(wa_id) else {
                continue;
            };
            let Some(conv) = conv_of.get(lead) else {
                continue;
            };
            let media = m.media().unwrap_or_default();
            cols.conversation.push(*conv);
            cols.wamid.push(m.id.as_str());
            cols.kind
                .push(m.kind.clone().unwrap_or_else(|| "unknown".into()));
            cols.body.push(m.body());
            cols.media_id.push(media.id);
            cols.media_mime.push(media.mime_type);
            cols.media_sha256.push(media.sha256);
            cols.sent_at.push(m.sent_at());
        }
        let inserted: Vec<i64> = tx
            .query(
                &insert,
                &[
                    &cols.conversation,
                    &cols.wamid,
                    &cols.kind,
                    &cols.body,
                    &cols.media_id,
                    &cols.media_mime,
                    &cols.media_sha256,
                    &cols.sent_at,
                ],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        stored.messages += u32::try_from(inserted.len()).unwrap_or(u32::MAX);
        stored.duplicates += u32::try_from(cols.wamid.len() - inserted.len()).unwrap_or(0);
        if !inserted.is_empty() {
            tx.execute(&touch, &[&inserted]).await?;
        }
    }
    for s in &batch.statuses {
        if !matches!(s.status.as_str(), "sent" | "delivered" | "read" | "failed") {
            stored.skipped += 1;
            continue;
        }
        let error: Option<serde_json::Value> = s.errors.clone().filter(|_| s.status == "failed");
        // A status for a wamid we never stored changes nothing (0 rows).
        stored.statuses +=
            u32::try_from(tx.execute(&status, &[&s.id, &s.status, &error]).await?).unwrap_or(0);
    }
    tx.commit().await?;
    Ok(stored)
}
