//! Stores one tenant's share of a delivery in its database, in one transaction: lead
//! upserted by canonical WhatsApp id, at most one open conversation per lead, messages
//! inserted once per `wamid`, statuses applied monotonically. Both webhook sources (Meta,
//! Evolution) are normalized to [`Incoming`] first.

use super::payload::Status;
use crate::pools::PgConn;

const EXISTING: &str = "SELECT wamid FROM mensagens WHERE wamid = ANY($1)";
const UPSERT_LEADS: &str = "INSERT INTO leads (wa_id, wa_id_raw, nome, origem) \
     SELECT w, r, n, o FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS t(w, r, n, o) \
     ON CONFLICT (wa_id) DO UPDATE SET nome = coalesce(leads.nome, EXCLUDED.nome), atualizado_em = now() \
     RETURNING id, wa_id";
const OPEN_CONVERSATIONS: &str = "INSERT INTO conversas (lead_id) SELECT unnest($1::int8[]) \
     ON CONFLICT (lead_id) WHERE status = 'aberta' DO NOTHING";
const OPEN_CONVERSATION_IDS: &str =
    "SELECT lead_id, id FROM conversas WHERE lead_id = ANY($1) AND status = 'aberta'";
const INSERT_MESSAGES: &str = "INSERT INTO mensagens (conversa_id, wamid, direcao, tipo, conteudo, midia_id, \
     midia_mime, midia_sha256, status, enviada_em) \
     SELECT c, w, d, k, b, mi, mm, ms, CASE d WHEN 'entrada' THEN 'recebida' ELSE 'sent' END, \
     coalesce(to_timestamp(ts), now()) \
     FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::float8[], \
     $9::text[]) AS t(c, w, k, b, mi, mm, ms, ts, d) \
     ON CONFLICT (wamid) DO NOTHING RETURNING conversa_id, direcao";
const TOUCH_CONVERSATIONS: &str = "UPDATE conversas c SET ultima_mensagem_em = now(), nao_lidas = c.nao_lidas + x.n \
     FROM (SELECT id, sum(inbound)::int4 AS n FROM unnest($1::int8[], $2::int4[]) AS t(id, inbound) GROUP BY id) x \
     WHERE c.id = x.id";
/// `sent` < `delivered` < `read`; `failed` is terminal (and never overrides `read`).
const APPLY_STATUS: &str = "UPDATE mensagens SET status = $2, erro = coalesce($3, erro), \
     lida_em = CASE WHEN $2 = 'read' THEN coalesce(lida_em, now()) ELSE lida_em END \
     WHERE wamid = $1 AND status NOT IN ('failed', 'read') AND ($2 = 'failed' OR \
     (CASE status WHEN 'sent' THEN 1 WHEN 'delivered' THEN 2 ELSE 0 END) < \
     (CASE $2 WHEN 'sent' THEN 1 WHEN 'delivered' THEN 2 WHEN 'read' THEN 3 ELSE 0 END))";

/// One message, whatever webhook it came in.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// Message id (`wamid` for Meta, the key id for Evolution).
    pub wamid: String,
    /// The lead: canonical id and the id as received.
    pub lead: (String, String),
    /// Contact name, when the payload carries one.
    pub name: Option<String>,
    /// `false` for messages the business itself sent (Evolution `fromMe`).
    pub inbound: bool,
    pub kind: String,
    pub body: Option<String>,
    pub media_id: Option<String>,
    pub media_mime: Option<String>,
    pub media_sha256: Option<String>,
    /// Seconds since the epoch.
    pub sent_at: Option<f64>,
}

/// One tenant's share of a delivery.
#[derive(Debug, Default)]
pub struct Batch {
    pub messages: Vec<Incoming>,
    pub statuses: Vec<Status>,
    /// Items that could not be attributed to a lead.
    pub skipped: u32,
}

/// Column arrays of the messages inserted in one statement.
#[derive(Default)]
struct MessageColumns<'a> {
    conversation: Vec<i64>,
    wamid: Vec<&'a str>,
    kind: Vec<&'a str>,
    body: Vec<Option<&'a str>>,
    media_id: Vec<Option<&'a str>>,
    media_mime: Vec<Option<&'a str>>,
    media_sha256: Vec<Option<&'a str>>,
    sent_at: Vec<Option<f64>>,
    direction: Vec<&'static str>,
}

/// What one tenant's batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub messages: u32,
    pub duplicates: u32,
    pub statuses: u32,
    pub skipped: u32,
}

/// Runs the whole batch in one transaction (a handful of set-based statements, however
/// many messages); any database error rolls all of it back.
pub async fn store(c: &mut PgConn, batch: &Batch) -> Result<Stored, tokio_postgres::Error> {
    use std::collections::{HashMap, HashSet};
    let existing = c.prepare(EXISTING).await?;
    let upsert_leads = c.prepare(UPSERT_LEADS).await?;
    let open = c.prepare(OPEN_CONVERSATIONS).await?;
    let open_ids = c.prepare(OPEN_CONVERSATION_IDS).await?;
    let insert = c.prepare(INSERT_MESSAGES).await?;
    let touch = c.prepare(TOUCH_CONVERSATIONS).await?;
    let status = c.prepare(APPLY_STATUS).await?;
    let tx = c.client.transaction().await?;
    let mut stored = Stored {
        skipped: batch.skipped,
        ..Stored::default()
    };

    // Messages already stored (redeliveries) are skipped before touching leads.
    let wamids: Vec<&str> = batch.messages.iter().map(|m| m.wamid.as_str()).collect();
    let known: HashSet<String> = if wamids.is_empty() {
        HashSet::new()
    } else {
        tx.query(&existing, &[&wamids])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    let mut fresh: Vec<&Incoming> = Vec::new();
    for m in &batch.messages {
        if known.contains(&m.wamid) || fresh.iter().any(|f| f.wamid == m.wamid) {
            stored.duplicates += 1;
        } else {
            fresh.push(m);
        }
    }
    // Rows are written in key order so concurrent deliveries lock them in the same order
    // (no deadlocks between two batches sharing leads or wamids).
    fresh.sort_by(|a, b| a.wamid.cmp(&b.wamid));
    if !fresh.is_empty() {
        // One row per lead (a statement may not update one row twice).
        let mut leads: Vec<(&str, &str, Option<String>, &str)> = Vec::new();
        for m in &fresh {
            if !leads.iter().any(|l| l.0 == m.lead.0) {
                let name = m.name.as_ref().map(|n| n.chars().take(200).collect());
                let origin = if m.inbound { "whatsapp" } else { "outbound" };
                leads.push((m.lead.0.as_str(), m.lead.1.as_str(), name, origin));
            } else if let Some(l) = leads.iter_mut().find(|l| l.0 == m.lead.0) {
                if m.inbound {
                    l.3 = "whatsapp";
                }
            }
        }
        leads.sort_by(|a, b| a.0.cmp(b.0));
        let w: Vec<&str> = leads.iter().map(|l| l.0).collect();
        let r: Vec<&str> = leads.iter().map(|l| l.1).collect();
        let n: Vec<Option<&str>> = leads.iter().map(|l| l.2.as_deref()).collect();
        let o: Vec<&str> = leads.iter().map(|l| l.3).collect();
        let lead_ids: HashMap<String, i64> = tx
            .query(&upsert_leads, &[&w, &r, &n, &o])
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
        for m in &fresh {
            let Some(lead) = lead_ids.get(&m.lead.0) else {
                continue;
            };
            let Some(conv) = conv_of.get(lead) else {
                continue;
            };
            cols.conversation.push(*conv);
            cols.wamid.push(&m.wamid);
            cols.kind.push(&m.kind);
            cols.body.push(m.body.as_deref());
            cols.media_id.push(m.media_id.as_deref());
            cols.media_mime.push(m.media_mime.as_deref());
            cols.media_sha256.push(m.media_sha256.as_deref());
            cols.sent_at.push(m.sent_at);
            cols.direction
                .push(if m.inbound { "entrada" } else { "saida" });
        }
        let rows = tx
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
                    &cols.direction,
                ],
            )
            .await?;
        let conv_ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        let inbound: Vec<i32> = rows
            .iter()
            .map(|r| i32::from(r.get::<_, &str>(1) == "entrada"))
            .collect();
        stored.messages += u32::try_from(rows.len()).unwrap_or(u32::MAX);
        stored.duplicates += u32::try_from(cols.wamid.len() - rows.len()).unwrap_or(0);
        if !conv_ids.is_empty() {
            tx.execute(&touch, &[&conv_ids, &inbound]).await?;
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
