//! Leads: people who wrote to (or were contacted by) the tenant on WhatsApp.

use super::{after_id, filter, id, ms, next_token, page_size, required, text, wire};
use crate::error::RouterError;
use crate::pools::Db;
use proto::domain::v1 as pb;
use tenant_model::LeadStatus;
use tokio_postgres::Row;
use whatsapp_ingest::phone::canonical_wa_id;

macro_rules! lead_cols {
    () => {
        concat!(
            "id, wa_id, coalesce(wa_id_raw, ''), coalesce(nome, ''), status, coalesce(origem, ''), tags, ",
            ms!("criado_em"),
            ", ",
            ms!("atualizado_em")
        )
    };
}

fn lead(row: &Row) -> pb::Lead {
    pb::Lead {
        id: row.get(0),
        wa_id: row.get(1),
        wa_id_raw: row.get(2),
        name: row.get(3),
        status: wire(row.get(4), LeadStatus::parse),
        source: row.get(5),
        tags: row.get(6),
        created_at_ms: row.get(7),
        updated_at_ms: row.get(8),
    }
}

fn db(e: tokio_postgres::Error) -> RouterError {
    RouterError::from_db(&e)
}

/// Creates or updates the lead with this phone's canonical WhatsApp id.
pub async fn upsert(c: &Db<'_>, req: pb::UpsertLeadRequest) -> Result<pb::Lead, RouterError> {
    let wa_id = canonical_wa_id(&req.phone).ok_or_else(|| {
        RouterError::InvalidArgument(format!(
            "invalid phone {:?}: expected 8 to 15 digits",
            req.phone
        ))
    })?;
    let name = text(&req.name, "name", 200)?;
    let source = text(&req.source, "source", 100)?;
    if req.tags.len() > 50
        || req
            .tags
            .iter()
            .any(|t| t.is_empty() || t.chars().count() > 50)
    {
        return Err(RouterError::InvalidArgument(
            "tags: at most 50, each 1 to 50 characters".into(),
        ));
    }
    let raw = req.phone.trim().to_string();
    let stmt = c
        .prepare(concat!(
            "INSERT INTO leads (wa_id, wa_id_raw, nome, origem, tags) VALUES ($1, $2, NULLIF($3, ''), NULLIF($4, ''), $5) \
             ON CONFLICT (wa_id) DO UPDATE SET nome = coalesce(EXCLUDED.nome, leads.nome), \
             origem = coalesce(leads.origem, EXCLUDED.origem), \
             tags = ARRAY(SELECT DISTINCT unnest(leads.tags || EXCLUDED.tags) ORDER BY 1), atualizado_em = now() \
             RETURNING ",
            lead_cols!()
        ))
        .await
        .map_err(db)?;
    let row = c
        .query_one(&stmt, &[&wa_id, &raw, &name, &source, &req.tags])
        .await
        .map_err(db)?;
    Ok(lead(&row))
}

/// One lead by id or phone.
pub async fn get(c: &Db<'_>, req: pb::GetLeadRequest) -> Result<pb::Lead, RouterError> {
    let row = match req.key {
        Some(pb::get_lead_request::Key::Id(i)) => {
            let i = id(i, "id")?;
            let stmt = c
                .prepare(concat!(
                    "SELECT ",
                    lead_cols!(),
                    " FROM leads WHERE id = $1"
                ))
                .await
                .map_err(db)?;
            c.query_opt(&stmt, &[&i]).await.map_err(db)?
        }
        Some(pb::get_lead_request::Key::Phone(p)) => {
            let wa_id = canonical_wa_id(&p)
                .ok_or_else(|| RouterError::InvalidArgument(format!("invalid phone {p:?}")))?;
            let stmt = c
                .prepare(concat!(
                    "SELECT ",
                    lead_cols!(),
                    " FROM leads WHERE wa_id = $1"
                ))
                .await
                .map_err(db)?;
            c.query_opt(&stmt, &[&wa_id]).await.map_err(db)?
        }
        None => return Err(RouterError::InvalidArgument("give an id or a phone".into())),
    };
    row.map(|r| lead(&r))
        .ok_or_else(|| RouterError::NotFound("lead not found".into()))
}

/// A page of leads, by id, optionally of one status.
pub async fn list(
    c: &Db<'_>,
    req: pb::ListLeadsRequest,
) -> Result<pb::ListLeadsResponse, RouterError> {
    let limit = page_size(req.page_size)?;
    let after = after_id(&req.page_token)?;
    let st = filter::<LeadStatus>(req.status, "status")?.map(LeadStatus::as_str);
    let stmt = c
        .prepare(concat!(
            "SELECT ",
            lead_cols!(),
            " FROM leads WHERE ($1::text IS NULL OR status = $1) AND id > $2 ORDER BY id LIMIT $3"
        ))
        .await
        .map_err(db)?;
    let rows = c
        .query(&stmt, &[&st, &after, &(limit + 1)])
        .await
        .map_err(db)?;
    let has_more = rows.len() as i64 > limit;
    let leads: Vec<pb::Lead> = rows.iter().take(limit as usize).map(lead).collect();
    let next_page_token = next_token(has_more, leads.last().map(|l| l.id));
    Ok(pb::ListLeadsResponse {
        leads,
        next_page_token,
    })
}

/// Sets a lead's status.
pub async fn update_status(
    c: &Db<'_>,
    req: pb::UpdateLeadStatusRequest,
) -> Result<pb::Lead, RouterError> {
    let i = id(req.id, "id")?;
    let st = required::<LeadStatus>(req.status, "status")?.as_str();
    let stmt = c
        .prepare(concat!(
            "UPDATE leads SET status = $2, atualizado_em = now() WHERE id = $1 RETURNING ",
            lead_cols!()
        ))
        .await
        .map_err(db)?;
    let row = c.query_opt(&stmt, &[&i, &st]).await.map_err(db)?;
    row.map(|r| lead(&r))
        .ok_or_else(|| RouterError::NotFound("lead not found".into()))
}
