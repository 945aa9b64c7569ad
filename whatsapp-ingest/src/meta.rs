//! Meta Cloud API webhook payloads, parsed item by item so one malformed item never drops
//! the others. Unknown fields are ignored (Meta adds fields without notice).

use serde::Deserialize;
use serde_json::Value;

/// An inbound message (`value.messages[]`).
#[derive(Debug, Clone, Deserialize)]
pub struct InMessage {
    /// The `wamid`.
    pub id: String,
    /// Sender's WhatsApp id; absent for users known only by a BSUID.
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub from_user_id: Option<String>,
    #[serde(default)]
    pub timestamp: Option<String>,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub text: Option<Text>,
    #[serde(flatten)]
    pub rest: serde_json::Map<String, Value>,
}

/// `text` of a text message.
#[derive(Debug, Clone, Deserialize)]
pub struct Text {
    #[serde(default)]
    pub body: String,
}

/// Media fields shared by image, audio, video, document and sticker messages.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Media {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub mime_type: Option<String>,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub caption: Option<String>,
    #[serde(default)]
    pub filename: Option<String>,
}

impl InMessage {
    /// The media object of a media message, if any.
    pub fn media(&self) -> Option<Media> {
        let kind = self.kind.as_deref()?;
        if !matches!(kind, "image" | "audio" | "video" | "document" | "sticker") {
            return None;
        }
        self.rest
            .get(kind)
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }

    /// Text to store: the body, a media caption, or nothing.
    pub fn body(&self) -> Option<String> {
        if let Some(t) = &self.text {
            return Some(t.body.clone());
        }
        self.media().and_then(|m| m.caption.or(m.filename))
    }

    /// The sent-at time in seconds since the epoch (`NaN` when the field holds something
    /// else than a number: the item rules refuse it).
    pub fn sent_at(&self) -> Option<f64> {
        let raw = self.timestamp.as_deref()?;
        Some(raw.parse::<i64>().map(|t| t as f64).unwrap_or(f64::NAN))
    }
}

/// A delivery status (`value.statuses[]`).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct Status {
    /// The `wamid` of our outbound message.
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub errors: Option<Value>,
}

/// A contact (`value.contacts[]`): the sender's profile name.
#[derive(Debug, Clone, Deserialize)]
pub struct Contact {
    #[serde(default)]
    pub wa_id: Option<String>,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub profile: Option<Profile>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Profile {
    #[serde(default)]
    pub name: Option<String>,
}

impl TenantBatch {
    /// The batch in the source-neutral form ingestion takes.
    pub fn normalize(&self) -> crate::store::Batch {
        let mut out = crate::store::Batch {
            statuses: self.statuses.clone(),
            ..Default::default()
        };
        for (m, name) in &self.messages {
            let lead = match (&m.from, &m.from_user_id) {
                (Some(from), _) => crate::phone::canonical_wa_id(from).map(|c| (c, from.clone())),
                // Users known only by a business-scoped user id (no phone number).
                (None, Some(user)) if !user.is_empty() && user.len() <= 128 => {
                    Some((format!("bsuid:{user}"), user.clone()))
                }
                _ => None,
            };
            let Some(lead) = lead else {
                out.skipped += 1;
                continue;
            };
            let media = m.media().unwrap_or_default();
            out.messages.push(crate::store::Incoming {
                wamid: m.id.clone(),
                lead,
                name: name.clone(),
                inbound: true,
                kind: m.kind.clone().unwrap_or_else(|| "unknown".into()),
                body: m.body(),
                media_id: media.id,
                media_mime: media.mime_type,
                media_sha256: media.sha256,
                sent_at: m.sent_at(),
            });
        }
        out
    }
}

/// Everything one `phone_number_id` received in a delivery.
#[derive(Debug, Default)]
pub struct TenantBatch {
    pub messages: Vec<(InMessage, Option<String>)>,
    pub statuses: Vec<Status>,
}

/// A delivery split by business phone number, plus what could not be parsed.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Per `phone_number_id`, in order of appearance.
    pub by_phone: Vec<(String, TenantBatch)>,
    /// Items (or changes) that were malformed and skipped.
    pub skipped: usize,
}

impl Parsed {
    fn batch(&mut self, phone: &str) -> &mut TenantBatch {
        let i = match self.by_phone.iter().position(|(p, _)| p == phone) {
            Some(i) => i,
            None => {
                self.by_phone
                    .push((phone.to_string(), TenantBatch::default()));
                self.by_phone.len() - 1
            }
        };
        &mut self.by_phone[i].1
    }
}

/// Parses a whole delivery: every entry, every change, every message and status.
/// `Err` only when the body is not a JSON object at all.
pub fn parse(body: &[u8]) -> Result<Parsed, String> {
    let body = crate::items::repair_surrogates(body);
    let root: Value =
        serde_json::from_slice(&body).map_err(|e| format!("body is not JSON: {e}"))?;
    let entries = root
        .get("entry")
        .and_then(Value::as_array)
        .ok_or_else(|| "body has no entry array".to_string())?;
    let mut out = Parsed::default();
    for entry in entries {
        let Some(changes) = entry.get("changes").and_then(Value::as_array) else {
            out.skipped += 1;
            continue;
        };
        for change in changes {
            if change.get("field").and_then(Value::as_str) != Some("messages") {
                continue;
            }
            let value = change.get("value").cloned().unwrap_or(Value::Null);
            let Some(phone) = value
                .pointer("/metadata/phone_number_id")
                .and_then(Value::as_str)
            else {
                out.skipped += 1;
                continue;
            };
            let contacts: Vec<Contact> = value
                .get("contacts")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|c| serde_json::from_value(c.clone()).ok())
                        .collect()
                })
                .unwrap_or_default();
            let mut skipped = 0;
            let mut messages = Vec::new();
            for m in value
                .get("messages")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                match serde_json::from_value::<InMessage>(m.clone()) {
                    Ok(msg) if !msg.id.is_empty() && msg.id.len() <= 256 => {
                        let name = contacts
                            .iter()
                            .find(|c| {
                                (c.wa_id.is_some() && c.wa_id == msg.from)
                                    || (c.user_id.is_some() && c.user_id == msg.from_user_id)
                            })
                            .or(contacts.first().filter(|_| contacts.len() == 1))
                            .and_then(|c| c.profile.as_ref()?.name.clone());
                        messages.push((msg, name));
                    }
                    _ => skipped += 1,
                }
            }
            let mut statuses = Vec::new();
            for s in value
                .get("statuses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                match serde_json::from_value::<Status>(s.clone()) {
                    Ok(st) if !st.id.is_empty() => statuses.push(st),
                    _ => skipped += 1,
                }
            }
            out.skipped += skipped;
            let batch = out.batch(phone);
            batch.messages.extend(messages);
            batch.statuses.extend(statuses);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_change_message_and_status_is_read() {
        let body = br#"{"object":"whatsapp_business_account","entry":[
          {"id":"1","changes":[{"field":"messages","value":{"metadata":{"phone_number_id":"111"},
             "contacts":[{"wa_id":"551187654321","profile":{"name":"Ana"}}],
             "messages":[{"from":"551187654321","id":"wamid.A","timestamp":"1700000000","type":"text","text":{"body":"oi"}},
                         {"from":"551187654321","id":"wamid.B","type":"image","image":{"id":"MEDIA1","mime_type":"image/jpeg","sha256":"abc","caption":"foto"}},
                         {"broken":true}]}},
             {"field":"messages","value":{"metadata":{"phone_number_id":"222"},
             "statuses":[{"id":"wamid.X","status":"read"},{"status":"sent"}]}}]},
          {"id":"2","changes":[{"field":"messages","value":{"metadata":{"phone_number_id":"111"},
             "messages":[{"from":"5511999990000","id":"wamid.C","type":"text","text":{"body":"x"}}]}}]}]}"#;
        let p = parse(body).unwrap();
        assert_eq!(p.skipped, 2);
        assert_eq!(p.by_phone.len(), 2);
        let (phone, b) = &p.by_phone[0];
        assert_eq!(phone, "111");
        assert_eq!(b.messages.len(), 3);
        assert_eq!(b.messages[0].1.as_deref(), Some("Ana"));
        let media = b.messages[1].0.media().unwrap();
        assert_eq!(media.id.as_deref(), Some("MEDIA1"));
        assert_eq!(b.messages[1].0.body().as_deref(), Some("foto"));
        assert_eq!(p.by_phone[1].1.statuses.len(), 1);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for body in [
            &b""[..],
            b"[]",
            b"{\"entry\":5}",
            b"\xff\xfe",
            b"{\"entry\":[{\"changes\":7}]}",
        ] {
            let _ = parse(body);
        }
        assert!(parse(b"not json").is_err());
    }
}
