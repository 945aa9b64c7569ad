//! Evolution API (Baileys gateway) webhooks: `messages.upsert` events, normalized to the
//! same [`Incoming`] messages as Meta's. Senders may be phone JIDs (`…@s.whatsapp.net`) or
//! linked ids (`…@lid`, with the phone in `remoteJidAlt` when the gateway knows it);
//! `fromMe` messages are the business's own, stored as outbound.

use crate::phone::canonical_wa_id;
use crate::store::{Batch, Incoming};
use serde_json::Value;

/// Parses an Evolution webhook body. `Ok(None)` for events other than `messages.upsert`
/// (acknowledged and ignored); `Err` when the body is not an Evolution event.
pub fn parse(body: &[u8]) -> Result<Option<Batch>, String> {
    let body = crate::items::repair_surrogates(body);
    let root: Value =
        serde_json::from_slice(&body).map_err(|e| format!("body is not JSON: {e}"))?;
    let event = root
        .get("event")
        .and_then(Value::as_str)
        .ok_or("body has no event")?;
    if !event.eq_ignore_ascii_case("messages.upsert") && event != "MESSAGES_UPSERT" {
        return Ok(None);
    }
    let items: Vec<&Value> = match root.get("data") {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(v @ Value::Object(_)) => match v.get("messages").and_then(Value::as_array) {
            Some(a) => a.iter().collect(),
            None => vec![v],
        },
        _ => return Err("body has no data".into()),
    };
    let mut batch = Batch::default();
    for item in items {
        match message(item) {
            Some(m) => batch.messages.push(m),
            None => batch.skipped += 1,
        }
    }
    Ok(Some(batch))
}

fn user_part(jid: &str) -> (&str, &str) {
    jid.split_once('@').unwrap_or((jid, ""))
}

/// The lead of a chat: `(canonical id, raw id)`; `None` for groups and broadcasts.
fn lead_of(key: &Value) -> Option<(String, String)> {
    let jid = key.get("remoteJid").and_then(Value::as_str)?;
    let (user, server) = user_part(jid);
    let user = user.split(':').next().unwrap_or(user);
    match server {
        "s.whatsapp.net" | "c.us" => canonical_wa_id(user).map(|c| (c, jid.to_string())),
        "lid" => {
            let alt = key
                .get("remoteJidAlt")
                .or_else(|| key.get("senderPn"))
                .and_then(Value::as_str)
                .map(user_part)
                .and_then(|(u, _)| canonical_wa_id(u.split(':').next().unwrap_or(u)));
            match alt {
                Some(phone) => Some((phone, jid.to_string())),
                None if !user.is_empty()
                    && user.len() <= 64
                    && user.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    Some((format!("lid:{user}"), jid.to_string()))
                }
                None => None,
            }
        }
        _ => None,
    }
}

fn message(item: &Value) -> Option<Incoming> {
    let key = item.get("key")?;
    let wamid = key
        .get("id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 256)?;
    let from_me = key.get("fromMe").and_then(Value::as_bool).unwrap_or(false);
    let lead = lead_of(key)?;
    let msg = item.get("message").cloned().unwrap_or(Value::Null);
    let str_at = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let mut kind = item
        .get("messageType")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_string();
    let mut body = str_at(&msg, "conversation").or_else(|| {
        msg.get("extendedTextMessage")
            .and_then(|t| str_at(t, "text"))
    });
    let (mut media_id, mut media_mime, mut media_sha256) = (None, None, None);
    for media_kind in [
        "imageMessage",
        "videoMessage",
        "audioMessage",
        "documentMessage",
        "stickerMessage",
    ] {
        if let Some(m) = msg.get(media_kind) {
            kind = media_kind.trim_end_matches("Message").to_string();
            media_id = str_at(m, "directPath").or_else(|| str_at(m, "url"));
            media_mime = str_at(m, "mimetype");
            media_sha256 = str_at(m, "fileSha256");
            body = body
                .or_else(|| str_at(m, "caption"))
                .or_else(|| str_at(m, "fileName"));
        }
    }
    if kind == "conversation" || kind == "extendedTextMessage" {
        kind = "text".into();
    }
    // Anything but a number (or its decimal string) is `NaN`: the item rules refuse it.
    let sent_at = match item.get("messageTimestamp") {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => Some(s.trim().parse().unwrap_or(f64::NAN)),
        None | Some(Value::Null) => None,
        Some(_) => Some(f64::NAN),
    };
    Some(Incoming {
        wamid: wamid.to_string(),
        lead,
        name: if from_me {
            None
        } else {
            str_at(item, "pushName")
        },
        inbound: !from_me,
        kind,
        body,
        media_id,
        media_mime,
        media_sha256,
        sent_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(data: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({"event": "messages.upsert", "instance": "loja", "data": data}))
            .unwrap()
    }

    #[test]
    fn senders_and_directions() {
        let body = event(json!([
            {"key": {"remoteJid": "551187654321@s.whatsapp.net", "fromMe": false, "id": "E1"},
             "pushName": "Ana", "message": {"conversation": "oi"}, "messageType": "conversation", "messageTimestamp": 1763800000},
            {"key": {"remoteJid": "123456789012345@lid", "remoteJidAlt": "5511912345678@s.whatsapp.net", "fromMe": false, "id": "E2"},
             "message": {"extendedTextMessage": {"text": "via lid"}}},
            {"key": {"remoteJid": "999888777666555@lid", "fromMe": false, "id": "E3"}, "message": {"conversation": "só lid"}},
            {"key": {"remoteJid": "551187654321@s.whatsapp.net", "fromMe": true, "id": "E4"}, "pushName": "Loja",
             "message": {"conversation": "resposta"}},
            {"key": {"remoteJid": "1203630@g.us", "fromMe": false, "id": "E5"}, "message": {"conversation": "grupo"}},
            {"key": {"remoteJid": "551187654321@s.whatsapp.net", "id": "E6"},
             "message": {"imageMessage": {"url": "https://x/y", "mimetype": "image/jpeg", "fileSha256": "q83v", "caption": "foto"}}},
            {"no": "key"}
        ]));
        let b = parse(&body).unwrap().unwrap();
        assert_eq!(b.skipped, 2);
        let m: Vec<_> = b
            .messages
            .iter()
            .map(|m| (m.wamid.as_str(), m.lead.0.as_str(), m.inbound))
            .collect();
        assert_eq!(
            m,
            vec![
                ("E1", "5511987654321", true),
                ("E2", "5511912345678", true),
                ("E3", "lid:999888777666555", true),
                ("E4", "5511987654321", false),
                ("E6", "5511987654321", true),
            ]
        );
        assert_eq!(b.messages[0].name.as_deref(), Some("Ana"));
        assert_eq!(
            b.messages[3].name, None,
            "fromMe never names the lead after the business"
        );
        assert_eq!(b.messages[4].kind, "image");
        assert_eq!(b.messages[4].media_mime.as_deref(), Some("image/jpeg"));
        assert_eq!(b.messages[4].body.as_deref(), Some("foto"));
        assert!(parse(br#"{"event":"connection.update","data":{}}"#)
            .unwrap()
            .is_none());
        assert!(parse(b"[1,2]").is_err());
    }
}
