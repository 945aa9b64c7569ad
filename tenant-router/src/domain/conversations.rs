//! Conversations and their messages.

use super::{after_id, filter, id, ms, next_token, page_size, required, text, wire};
use crate::error::RouterError;
use crate::pools::Db;
use proto::domain::v1 as pb;
use tenant_model::{ConversationStatus, MessageDirection, MessageStatus};
use tokio_postgres::Row;

macro_rules! conv_cols {
    () => {
        concat!(
            "id, lead_id, status, canal, nao_lidas, ",
            ms!("aberta_em"),
            ", coalesce(",
            ms!("ultima_mensagem_em"),
            ", 0)"
        )
    };
}

macro_rules! msg_cols {
    () => {
        concat!(
            "id, conversa_id, coalesce(wamid, ''), direcao, tipo, coalesce(conteudo, ''), status, ",
            ms!("enviada_em")
        )
    };
}

fn conversation(row: &Row) -> pb::Conversation {
    pb::Conversation {
        id: row.get(0),
        lead_id: row.get(1),
        status: wire(row.get(2), ConversationStatus::parse),
        channel: row.get(3),
        unread: row.get(4),
        opened_at_ms: row.get(5),
        last_message_at_ms: row.get(6),
    }
}

fn message(row: &Row) -> pb::Message {
    pb::Message {
        id: row.get(0),
        conversation_id: row.get(1),
        wamid: row.get(2),
        direction: wire(row.get(3), MessageDirection::parse),
        r#type: row.get(4),
        body: row.get(5),
        status: wire(row.get(6), MessageStatus::parse),
        sent_at_ms: row.get(7),
    }
}

fn db(e: tokio_postgres::Error) -> RouterError {
    RouterError::from_db(&e)
}

/// The lead's open conversation, opened if it has none (at most one, even when racing).
pub async fn open(
    c: &Db<'_>,
    req: pb::OpenConversationRequest,
) -> Result<pb::Conversation, RouterError> {
    let lead = id(req.lead_id, "lead_id")?;
    let insert = c
        .prepare(concat!(
            "INSERT INTO conversas (lead_id) VALUES ($1) ON CONFLICT (lead_id) WHERE status = 'aberta' DO NOTHING RETURNING ",
            conv_cols!()
        ))
        .await
        .map_err(db)?;
    if let Some(row) =
        c.query_opt(&insert, &[&lead])
            .await
            .map_err(|e| match RouterError::from_db(&e) {
                RouterError::NotFound(_) => RouterError::NotFound("lead not found".into()),
                other => other,
            })?
    {
        return Ok(conversation(&row));
    }
    let select = c
        .prepare(concat!(
            "SELECT ",
            conv_cols!(),
            " FROM conversas WHERE lead_id = $1 AND status = 'aberta'"
        ))
        .await
        .map_err(db)?;
    let row = c.query_one(&select, &[&lead]).await.map_err(db)?;
    Ok(conversation(&row))
}

/// A page of conversations, optionally of one lead and one status.
pub async fn list(
    c: &Db<'_>,
    req: pb::ListConversationsRequest,
) -> Result<pb::ListConversationsResponse, RouterError> {
    let limit = page_size(req.page_size)?;
    let after = after_id(&req.page_token)?;
    let lead: Option<i64> = if req.lead_id == 0 {
        None
    } else {
        Some(id(req.lead_id, "lead_id")?)
    };
    let status =
        filter::<ConversationStatus>(req.status, "status")?.map(ConversationStatus::as_str);
    let stmt = c
        .prepare(concat!(
            "SELECT ",
            conv_cols!(),
            " FROM conversas WHERE ($1::int8 IS NULL OR lead_id = $1) AND ($2::text IS NULL OR status = $2) \
             AND id > $3 ORDER BY id LIMIT $4"
        ))
        .await
        .map_err(db)?;
    let rows = c
        .query(&stmt, &[&lead, &status, &after, &(limit + 1)])
        .await
        .map_err(db)?;
    let has_more = rows.len() as i64 > limit;
    let conversations: Vec<_> = rows.iter().take(limit as usize).map(conversation).collect();
    let next_page_token = next_token(has_more, conversations.last().map(|c| c.id));
    Ok(pb::ListConversationsResponse {
        conversations,
        next_page_token,
    })
}

/// Appends a message; a repeated `wamid` returns the stored message unchanged.
pub async fn append(c: &Db<'_>, req: pb::AppendMessageRequest) -> Result<pb::Message, RouterError> {
    let conv = id(req.conversation_id, "conversation_id")?;
    let direction = required::<MessageDirection>(req.direction, "direction")?.as_str();
    let body = text(&req.body, "body", 65_536)?;
    let kind = if req.r#type.is_empty() {
        "text".to_string()
    } else {
        text(&req.r#type, "type", 30)?
    };
    let wamid: Option<String> = if req.wamid.is_empty() {
        None
    } else {
        Some(text(&req.wamid, "wamid", 200)?)
    };
    let stmt = c
        .prepare(concat!(
            "WITH m AS (INSERT INTO mensagens (conversa_id, wamid, direcao, tipo, conteudo, status) \
             VALUES ($1, $2, $3, $4, $5, CASE WHEN $3 = 'entrada' THEN 'recebida' ELSE 'pendente' END) \
             ON CONFLICT (wamid) DO NOTHING RETURNING *), \
             c AS (UPDATE conversas SET ultima_mensagem_em = now(), \
             nao_lidas = nao_lidas + CASE WHEN $3 = 'entrada' THEN 1 ELSE 0 END \
             WHERE id = $1 AND EXISTS (SELECT 1 FROM m)) \
             SELECT ",
            msg_cols!(),
            " FROM m"
        ))
        .await
        .map_err(db)?;
    let inserted = c
        .query_opt(&stmt, &[&conv, &wamid, &direction, &kind, &body])
        .await
        .map_err(|e| match RouterError::from_db(&e) {
            RouterError::NotFound(_) => RouterError::NotFound("conversation not found".into()),
            other => other,
        })?;
    if let Some(row) = inserted {
        return Ok(message(&row));
    }
    let existing = c
        .prepare(concat!(
            "SELECT ",
            msg_cols!(),
            " FROM mensagens WHERE wamid = $1"
        ))
        .await
        .map_err(db)?;
    let row = c.query_one(&existing, &[&wamid]).await.map_err(db)?;
    Ok(message(&row))
}

/// A page of a conversation's messages, oldest first.
pub async fn list_messages(
    c: &Db<'_>,
    req: pb::ListMessagesRequest,
) -> Result<pb::ListMessagesResponse, RouterError> {
    let conv = id(req.conversation_id, "conversation_id")?;
    let limit = page_size(req.page_size)?;
    let after = after_id(&req.page_token)?;
    let stmt = c
        .prepare(concat!(
            "SELECT ",
            msg_cols!(),
            " FROM mensagens WHERE conversa_id = $1 AND id > $2 ORDER BY id LIMIT $3"
        ))
        .await
        .map_err(db)?;
    let rows = c
        .query(&stmt, &[&conv, &after, &(limit + 1)])
        .await
        .map_err(db)?;
    let has_more = rows.len() as i64 > limit;
    let messages: Vec<_> = rows.iter().take(limit as usize).map(message).collect();
    let next_page_token = next_token(has_more, messages.last().map(|m| m.id));
    Ok(pb::ListMessagesResponse {
        messages,
        next_page_token,
    })
}

/// Marks a conversation's inbound messages read.
pub async fn mark_read(
    c: &Db<'_>,
    req: pb::MarkReadRequest,
) -> Result<pb::Conversation, RouterError> {
    let conv = id(req.conversation_id, "conversation_id")?;
    let stmt = c
        .prepare(concat!(
            "WITH r AS (UPDATE mensagens SET lida_em = now() WHERE conversa_id = $1 AND direcao = 'entrada' \
             AND lida_em IS NULL) \
             UPDATE conversas SET nao_lidas = 0 WHERE id = $1 RETURNING ",
            conv_cols!()
        ))
        .await
        .map_err(db)?;
    let row = c.query_opt(&stmt, &[&conv]).await.map_err(db)?;
    row.map(|r| conversation(&r))
        .ok_or_else(|| RouterError::NotFound("conversation not found".into()))
}
