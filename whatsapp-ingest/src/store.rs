//! Stores one tenant's share of a delivery in its database, in one transaction: lead
//! upserted by canonical WhatsApp id, at most one open conversation per lead, messages
//! inserted once per `wamid`, statuses applied monotonically. Both webhook sources (Meta,
//! Evolution) are normalized to [`Incoming`] first.

use crate::meta::Status;
use tokio_postgres::{Client, Statement};

/// All of a batch's messages in one statement (atomic on its own): skip known `wamid`s,
/// upsert leads, get-or-open each lead's conversation (the `DO UPDATE` returns the open
/// conversation even when a concurrent delivery has just opened it), insert messages in
/// arrival order (their ids follow it). Leads and conversations are written in key order
/// so concurrent deliveries lock them in the same order.
const INGEST: &str = "WITH input AS ( \
       SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
         $7::text[], $8::text[], $9::text[], $10::float8[], $11::bool[]) WITH ORDINALITY \
         AS t(w, wa, raw, name, kind, body, mi, mm, ms, ts, inbound, ord)), \
     fresh AS (SELECT * FROM input i WHERE NOT EXISTS (SELECT 1 FROM mensagens m WHERE m.wamid = i.w)), \
     lead_rows AS ( \
       INSERT INTO leads (wa_id, wa_id_raw, nome, origem) \
       SELECT wa, min(raw), min(name), CASE WHEN bool_or(inbound) THEN 'whatsapp' ELSE 'outbound' END \
       FROM fresh GROUP BY wa ORDER BY wa \
       ON CONFLICT (wa_id) DO UPDATE SET nome = coalesce(leads.nome, EXCLUDED.nome), atualizado_em = now() \
       RETURNING id, wa_id), \
     conv AS ( \
       INSERT INTO conversas (lead_id, ultima_mensagem_em, nao_lidas) \
       SELECT l.id, now(), count(*) FILTER (WHERE f.inbound) FROM lead_rows l JOIN fresh f ON f.wa = l.wa_id \
       GROUP BY l.id ORDER BY l.id \
       ON CONFLICT (lead_id) WHERE status = 'aberta' DO UPDATE SET ultima_mensagem_em = now(), \
         nao_lidas = conversas.nao_lidas + EXCLUDED.nao_lidas \
       RETURNING id, lead_id), \
     msgs AS ( \
       INSERT INTO mensagens (conversa_id, wamid, direcao, tipo, conteudo, midia_id, midia_mime, midia_sha256, \
         status, enviada_em) \
       SELECT c.id, f.w, CASE WHEN f.inbound THEN 'entrada' ELSE 'saida' END, f.kind, f.body, f.mi, f.mm, f.ms, \
         CASE WHEN f.inbound THEN 'recebida' ELSE 'sent' END, coalesce(to_timestamp(f.ts), now()) \
       FROM fresh f JOIN lead_rows l ON l.wa_id = f.wa JOIN conv c ON c.lead_id = l.id ORDER BY f.ord \
       ON CONFLICT (wamid) DO NOTHING RETURNING 1) \
     SELECT (SELECT count(*) FROM msgs)::int8";
/// `sent` < `delivered` < `read`; `failed` is terminal (and never overrides `read`).
const APPLY_STATUS: &str = "UPDATE mensagens SET status = $2, erro = coalesce($3, erro), \
     lida_em = CASE WHEN $2 = 'read' THEN coalesce(lida_em, now()) ELSE lida_em END \
     WHERE wamid = $1 AND status NOT IN ('failed', 'read') AND ($2 = 'failed' OR \
     (CASE status WHEN 'sent' THEN 1 WHEN 'delivered' THEN 2 ELSE 0 END) < \
     (CASE $2 WHEN 'sent' THEN 1 WHEN 'delivered' THEN 2 WHEN 'read' THEN 3 ELSE 0 END))";

/// One message, whatever webhook it came in.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
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

/// One tenant's share of a delivery (as the durable inbox keeps it, too).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Batch {
    #[serde(default)]
    pub messages: Vec<Incoming>,
    #[serde(default)]
    pub statuses: Vec<Status>,
    /// Items that could not be attributed to a lead.
    #[serde(default)]
    pub skipped: u32,
}

impl Batch {
    /// Applies the item rules (`items`): returns the batch to store and the messages that
    /// can never be stored, each with its reason.
    pub fn admit(self, now_secs: f64) -> (Batch, Vec<(Incoming, String)>) {
        let mut refused = Vec::new();
        let mut messages = Vec::with_capacity(self.messages.len());
        for m in self.messages {
            match crate::items::admit(m.clone(), now_secs) {
                Ok(m) => messages.push(m),
                Err(reason) => refused.push((m, reason)),
            }
        }
        let total = self.statuses.len();
        let statuses: Vec<Status> = self
            .statuses
            .into_iter()
            .filter_map(crate::items::admit_status)
            .collect();
        let skipped = self.skipped + u32::try_from(total - statuses.len()).unwrap_or(0);
        (
            Batch {
                messages,
                statuses,
                skipped,
            },
            refused,
        )
    }
}

/// What one tenant's batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub messages: u32,
    pub duplicates: u32,
    pub statuses: u32,
    pub skipped: u32,
}

/// The two statements [`store`] runs, prepared on the connection it runs them on.
pub struct Statements {
    pub ingest: Statement,
    pub status: Statement,
}

impl Statements {
    /// The SQL of the message statement and of the status statement (for callers that
    /// cache prepared statements per connection).
    pub const SQL: [&'static str; 2] = [INGEST, APPLY_STATUS];

    /// Prepares both on `c`.
    pub async fn prepare(c: &Client) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            ingest: c.prepare(INGEST).await?,
            status: c.prepare(APPLY_STATUS).await?,
        })
    }
}

/// Stores the batch atomically: the messages in one statement, and statuses (if any) in
/// the same transaction; any database error rolls all of it back.
pub async fn store(
    c: &mut Client,
    stmts: &Statements,
    batch: &Batch,
) -> Result<Stored, tokio_postgres::Error> {
    if batch.statuses.is_empty() {
        // One statement is atomic by itself: no transaction round trips.
        return store_messages(c, &stmts.ingest, batch).await;
    }
    let tx = c.transaction().await?;
    let mut stored = store_messages(&tx, &stmts.ingest, batch).await?;
    for s in &batch.statuses {
        if !matches!(s.status.as_str(), "sent" | "delivered" | "read" | "failed") {
            stored.skipped += 1;
            continue;
        }
        let error: Option<serde_json::Value> = s.errors.clone().filter(|_| s.status == "failed");
        // A status for a wamid we never stored changes nothing (0 rows).
        stored.statuses += u32::try_from(
            tx.execute(&stmts.status, &[&s.id, &s.status, &error])
                .await?,
        )
        .unwrap_or(0);
    }
    tx.commit().await?;
    Ok(stored)
}

/// Stores the batch's messages (not its statuses) in one statement, on any client or
/// transaction: callers may pipeline it with other statements.
pub async fn store_messages(
    c: &impl tokio_postgres::GenericClient,
    ingest: &Statement,
    batch: &Batch,
) -> Result<Stored, tokio_postgres::Error> {
    let mut stored = Stored {
        skipped: batch.skipped,
        ..Stored::default()
    };
    // A message repeated inside one delivery is stored once.
    let mut unique: Vec<&Incoming> = Vec::with_capacity(batch.messages.len());
    for m in &batch.messages {
        if unique.iter().any(|u| u.wamid == m.wamid) {
            stored.duplicates += 1;
        } else {
            unique.push(m);
        }
    }
    if unique.is_empty() {
        return Ok(stored);
    }
    let w: Vec<&str> = unique.iter().map(|m| m.wamid.as_str()).collect();
    let wa: Vec<&str> = unique.iter().map(|m| m.lead.0.as_str()).collect();
    let raw: Vec<&str> = unique.iter().map(|m| m.lead.1.as_str()).collect();
    let name: Vec<Option<String>> = unique
        .iter()
        .map(|m| m.name.as_ref().map(|n| n.chars().take(200).collect()))
        .collect();
    let kind: Vec<&str> = unique.iter().map(|m| m.kind.as_str()).collect();
    let body: Vec<Option<&str>> = unique.iter().map(|m| m.body.as_deref()).collect();
    let mi: Vec<Option<&str>> = unique.iter().map(|m| m.media_id.as_deref()).collect();
    let mm: Vec<Option<&str>> = unique.iter().map(|m| m.media_mime.as_deref()).collect();
    let ms: Vec<Option<&str>> = unique.iter().map(|m| m.media_sha256.as_deref()).collect();
    let ts: Vec<Option<f64>> = unique.iter().map(|m| m.sent_at).collect();
    let inbound: Vec<bool> = unique.iter().map(|m| m.inbound).collect();
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 11] = [
        &w, &wa, &raw, &name, &kind, &body, &mi, &mm, &ms, &ts, &inbound,
    ];
    let inserted: i64 = c.query_one(ingest, &params).await?.get(0);
    let inserted = u32::try_from(inserted).unwrap_or(0);
    let offered = u32::try_from(unique.len()).unwrap_or(u32::MAX);
    stored.messages += inserted;
    stored.duplicates += offered.saturating_sub(inserted);
    Ok(stored)
}
