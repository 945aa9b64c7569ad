//! What a stored message may contain: the rules every webhook item passes before it reaches
//! a tenant database, one place for both sources (Meta, Evolution).
//!
//! Normalised (the item is stored): C0 control characters other than tab, newline and
//! carriage return are removed from every text field (PostgreSQL text cannot hold NUL);
//! JSON escapes of lone UTF-16 surrogates become U+FFFD before the body is parsed; contact
//! names are cut to [`MAX_NAME_CHARS`], message kinds to [`MAX_KIND_CHARS`].
//! Refused (the item becomes a dead letter with the reason, its neighbours are stored): a
//! message id that is empty, too long or holds control characters; a text longer than
//! [`MAX_BODY_CHARS`]; a media field longer than [`MAX_FIELD_CHARS`]; a timestamp that is
//! not a number or lies outside 2009-01-01 .. now + 1 day.

use crate::meta::Status;
use crate::store::Incoming;
use std::borrow::Cow;

/// Longest message text stored (WhatsApp's own limit is 4,096 characters).
pub const MAX_BODY_CHARS: usize = 65_536;
/// Contact names are cut to this many characters.
pub const MAX_NAME_CHARS: usize = 256;
/// Message kinds are cut to this many characters.
pub const MAX_KIND_CHARS: usize = 64;
/// Longest media id, MIME type or hash stored.
pub const MAX_FIELD_CHARS: usize = 1_024;
/// Longest message id.
const MAX_ID_CHARS: usize = 256;
/// Earliest believable sent-at: WhatsApp's launch (2009-01-01).
const EARLIEST_SECS: f64 = 1_230_768_000.0;
/// Clock skew tolerated for sent-at times in the future.
const FUTURE_SLACK_SECS: f64 = 86_400.0;

fn is_dropped(c: char) -> bool {
    c.is_ascii_control() && !matches!(c, '\t' | '\n' | '\r') && c != '\u{7f}'
}

/// `s` without the C0 control characters PostgreSQL or the domain cannot take.
pub fn clean(s: &str) -> Cow<'_, str> {
    if s.chars().any(is_dropped) {
        Cow::Owned(s.chars().filter(|c| !is_dropped(*c)).collect())
    } else {
        Cow::Borrowed(s)
    }
}

fn clean_owned(s: String) -> String {
    match clean(&s) {
        Cow::Borrowed(_) => s,
        Cow::Owned(c) => c,
    }
}

fn cut(s: String, max: usize) -> String {
    if s.chars().count() > max {
        s.chars().take(max).collect()
    } else {
        s
    }
}

/// Normalises a message, or says why it can never be stored.
pub fn admit(mut m: Incoming, now_secs: f64) -> Result<Incoming, String> {
    if m.wamid.is_empty()
        || m.wamid.chars().count() > MAX_ID_CHARS
        || m.wamid.chars().any(|c| c.is_control())
    {
        return Err("message id is empty, too long or holds control characters".into());
    }
    if let Some(t) = m.sent_at {
        if !t.is_finite() {
            return Err("timestamp is not a number".into());
        }
        if !(EARLIEST_SECS..=now_secs + FUTURE_SLACK_SECS).contains(&t) {
            return Err(format!("timestamp {t} is out of range"));
        }
    }
    m.lead.1 = cut(clean_owned(m.lead.1), MAX_ID_CHARS);
    m.name = m.name.map(|n| cut(clean_owned(n), MAX_NAME_CHARS));
    m.kind = cut(clean_owned(m.kind), MAX_KIND_CHARS);
    if m.kind.is_empty() {
        m.kind = "unknown".into();
    }
    if let Some(body) = m.body.take() {
        let body = clean_owned(body);
        if body.chars().count() > MAX_BODY_CHARS {
            return Err(format!("text longer than {MAX_BODY_CHARS} characters"));
        }
        m.body = Some(body);
    }
    for field in [&mut m.media_id, &mut m.media_mime, &mut m.media_sha256] {
        if let Some(v) = field.take() {
            let v = clean_owned(v);
            if v.chars().count() > MAX_FIELD_CHARS {
                return Err(format!(
                    "a media field longer than {MAX_FIELD_CHARS} characters"
                ));
            }
            *field = Some(v);
        }
    }
    Ok(m)
}

/// Normalises a delivery status; `None` when its message id cannot be one we stored.
pub fn admit_status(mut s: Status) -> Option<Status> {
    if s.id.is_empty()
        || s.id.chars().count() > MAX_ID_CHARS
        || s.id.chars().any(|c| c.is_control())
    {
        return None;
    }
    s.errors = s.errors.map(clean_json);
    Some(s)
}

/// Removes the dropped control characters from every string of a JSON value (jsonb cannot
/// hold NUL).
fn clean_json(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) => Value::String(clean_owned(s)),
        Value::Array(a) => Value::Array(a.into_iter().map(clean_json).collect()),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| (clean_owned(k), clean_json(v)))
                .collect(),
        ),
        other => other,
    }
}

/// The body with every `\uD800`..`\uDFFF` escape that is not half of a valid pair replaced
/// by `\uFFFD` (same length), so one bad character does not make the whole delivery
/// unreadable. Only escapes inside JSON strings are touched.
pub fn repair_surrogates(body: &[u8]) -> Cow<'_, [u8]> {
    if !body
        .windows(3)
        .any(|w| w[0] == b'\\' && (w[1] == b'u') && matches!(w[2], b'd' | b'D'))
    {
        return Cow::Borrowed(body);
    }
    let mut out = body.to_vec();
    let hex = |b: &[u8]| -> Option<u16> {
        std::str::from_utf8(b)
            .ok()
            .and_then(|s| u16::from_str_radix(s, 16).ok())
    };
    let (mut i, mut in_string) = (0, false);
    while i < out.len() {
        match out[i] {
            b'"' => in_string = !in_string,
            b'\\' if in_string => {
                if out.get(i + 1) == Some(&b'u') && i + 6 <= out.len() {
                    let unit = hex(&out[i + 2..i + 6]);
                    let next = (out.get(i + 6) == Some(&b'\\')
                        && out.get(i + 7) == Some(&b'u')
                        && i + 12 <= out.len())
                    .then(|| hex(&out[i + 8..i + 12]))
                    .flatten();
                    match unit {
                        Some(0xD800..=0xDBFF) if matches!(next, Some(0xDC00..=0xDFFF)) => {
                            i += 12;
                            continue;
                        }
                        Some(0xD800..=0xDFFF) => {
                            out[i + 2..i + 6].copy_from_slice(b"FFFD");
                            i += 6;
                            continue;
                        }
                        _ => {}
                    }
                }
                // Skip the escaped character, whatever it is (a `\"` does not end the string).
                i += 2;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> Incoming {
        Incoming {
            wamid: "wamid.1".into(),
            lead: ("5511987654321".into(), "5511987654321".into()),
            name: Some("Ana".into()),
            inbound: true,
            kind: "text".into(),
            body: Some("oi".into()),
            media_id: None,
            media_mime: None,
            media_sha256: None,
            sent_at: Some(1_763_800_000.0),
        }
    }

    const NOW: f64 = 1_763_900_000.0;

    #[test]
    fn control_characters_are_removed_and_names_cut() {
        let m = Incoming {
            body: Some("o\u{0}i\tsim\n".into()),
            name: Some(format!("A\u{1}na{}", "x".repeat(400))),
            ..msg()
        };
        let m = admit(m, NOW).unwrap();
        assert_eq!(m.body.as_deref(), Some("oi\tsim\n"));
        assert_eq!(m.name.as_ref().unwrap().chars().count(), MAX_NAME_CHARS);
        assert!(m.name.unwrap().starts_with("Ana"));
    }

    #[test]
    fn what_can_never_be_stored_is_refused_with_a_reason() {
        for (m, why) in [
            (
                Incoming {
                    sent_at: Some(9.223_372_036_854_776e18),
                    ..msg()
                },
                "out of range",
            ),
            (
                Incoming {
                    sent_at: Some(f64::NAN),
                    ..msg()
                },
                "not a number",
            ),
            (
                Incoming {
                    sent_at: Some(0.0),
                    ..msg()
                },
                "out of range",
            ),
            (
                Incoming {
                    wamid: "w\u{0}".into(),
                    ..msg()
                },
                "message id",
            ),
            (
                Incoming {
                    body: Some("x".repeat(MAX_BODY_CHARS + 1)),
                    ..msg()
                },
                "text longer",
            ),
            (
                Incoming {
                    media_mime: Some("m".repeat(MAX_FIELD_CHARS + 1)),
                    ..msg()
                },
                "media field",
            ),
        ] {
            let err = admit(m, NOW).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
        assert!(admit(
            Incoming {
                sent_at: None,
                ..msg()
            },
            NOW
        )
        .is_ok());
    }

    #[test]
    fn lone_surrogates_become_replacement_characters() {
        let body = br#"{"a":"x\ud800y","b":"\ud83d\ude00","c":"\\ud800","d":"\udc00"}"#;
        let fixed = repair_surrogates(body);
        let v: serde_json::Value = serde_json::from_slice(&fixed).unwrap();
        assert_eq!(v["a"], "x\u{fffd}y");
        assert_eq!(v["b"], "\u{1f600}", "a valid pair is kept");
        assert_eq!(v["c"], "\\ud800", "an escaped backslash is not an escape");
        assert_eq!(v["d"], "\u{fffd}");
        assert_eq!(fixed.len(), body.len());
        assert!(matches!(repair_surrogates(b"{\"a\":1}"), Cow::Borrowed(_)));
    }
}
