//! A tenant's settings and secrets for its services (the bot, the WhatsApp sender).
//!
//! Settings are JSON with a documented set of keys, each checked, plus free-form `extra`
//! (an object of at most 64 KiB); an unknown key is refused by name. Secrets have known
//! names and are sealed with the master key like database passwords; they are never
//! logged, never in an error message, and shown to operators by name only.

use crate::error::{Error, Result};
use serde_json::{Map, Value};

/// The documented settings: key, what it holds.
pub const KEYS: [(&str, &str); 7] = [
    ("bot_name", "text, 1-100 characters"),
    ("custom_prompt", "text, at most 20000 characters"),
    ("ai_provider", "one of openai, anthropic, gemini, none"),
    ("ai_model", "text, 1-100 characters"),
    ("language", "one of pt-BR, en, es"),
    ("business_hours", "text, at most 200 characters"),
    ("extra", "a JSON object, at most 64 KiB"),
];

/// Secrets a tenant may hold.
pub const SECRETS: [&str; 5] = [
    "whatsapp_access_token",
    "openai_api_key",
    "anthropic_api_key",
    "gemini_api_key",
    "evolution_api_key",
];

/// Largest secret value, in bytes.
pub const MAX_SECRET_BYTES: usize = 8192;

/// Parses and checks a settings document (a JSON object of documented keys); `null` for
/// a key removes it when merged.
pub fn parse(text: &str) -> Result<Map<String, Value>> {
    if text.len() > 256 * 1024 {
        return Err(Error::InvalidArgument(
            "settings larger than 256 KiB".into(),
        ));
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Error::InvalidArgument(format!("settings are not valid JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(Error::InvalidArgument(
            "settings must be a JSON object".into(),
        ));
    };
    for (key, value) in &map {
        if value.is_null() && KEYS.iter().any(|(k, _)| k == key) {
            continue;
        }
        check(key, value)?;
    }
    Ok(map)
}

fn check(key: &str, value: &Value) -> Result<()> {
    let bad = |what: &str| {
        Err(Error::InvalidArgument(format!(
            "setting {key} must be {what}"
        )))
    };
    let text = |min: usize, max: usize, what: &str| match value.as_str() {
        Some(s)
            if (min..=max).contains(&s.chars().count())
                && !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') =>
        {
            Ok(())
        }
        _ => bad(what),
    };
    let one_of = |options: &[&str], what: &str| match value.as_str() {
        Some(s) if options.contains(&s) => Ok(()),
        _ => bad(what),
    };
    match key {
        "bot_name" => text(1, 100, "text, 1-100 characters"),
        "custom_prompt" => text(0, 20_000, "text, at most 20000 characters"),
        "ai_provider" => one_of(
            &["openai", "anthropic", "gemini", "none"],
            "one of openai, anthropic, gemini, none",
        ),
        "ai_model" => text(1, 100, "text, 1-100 characters"),
        "language" => one_of(&["pt-BR", "en", "es"], "one of pt-BR, en, es"),
        "business_hours" => text(0, 200, "text, at most 200 characters"),
        "extra" => match value {
            Value::Object(_) if value.to_string().len() <= 64 * 1024 => Ok(()),
            _ => bad("a JSON object, at most 64 KiB"),
        },
        other => {
            let known: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
            Err(Error::InvalidArgument(format!(
                "unknown setting {other:?}: expected one of {}",
                known.join(", ")
            )))
        }
    }
}

/// Merges `changes` into `current` (a `null` removes the key).
pub fn merge(mut current: Map<String, Value>, changes: Map<String, Value>) -> Map<String, Value> {
    for (k, v) in changes {
        if v.is_null() {
            current.remove(&k);
        } else {
            current.insert(k, v);
        }
    }
    current
}

/// Checks a secret's name and value (the error never contains the value).
pub fn check_secret(name: &str, value: &str) -> Result<()> {
    if !SECRETS.contains(&name) {
        return Err(Error::InvalidArgument(format!(
            "unknown secret {name:?}: expected one of {}",
            SECRETS.join(", ")
        )));
    }
    if value.is_empty() || value.len() > MAX_SECRET_BYTES || value.chars().any(char::is_control) {
        return Err(Error::InvalidArgument(format!(
            "secret {name} must be 1-{MAX_SECRET_BYTES} bytes without control characters"
        )));
    }
    Ok(())
}

/// The associated data a secret is sealed with.
pub fn secret_context(tenant_id: i64, name: &str) -> String {
    format!("tenant:{tenant_id}:secret:{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_by_key_and_merged() {
        let ok =
            parse(r#"{"bot_name":"Vendedor","ai_provider":"openai","extra":{"a":1}}"#).unwrap();
        assert_eq!(ok.len(), 3);
        for (text, why) in [
            ("[1]", "JSON object"),
            ("{", "not valid JSON"),
            (
                r#"{"bot":"x"}"#,
                "unknown setting \"bot\": expected one of bot_name",
            ),
            (r#"{"bot_name":""}"#, "bot_name must be text, 1-100"),
            (r#"{"ai_provider":"skynet"}"#, "one of openai"),
            (r#"{"language":"pt"}"#, "pt-BR"),
            (r#"{"extra":[1]}"#, "JSON object, at most 64 KiB"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(why), "{text}: {e}");
        }
        let merged = merge(ok, parse(r#"{"bot_name":null,"language":"es"}"#).unwrap());
        assert!(!merged.contains_key("bot_name"));
        assert_eq!(merged["language"], "es");
    }

    #[test]
    fn secrets_are_named_and_their_values_never_echoed() {
        assert!(check_secret("openai_api_key", "sk-123").is_ok());
        let e = check_secret("root_password", "sk-123")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown secret") && !e.contains("sk-123"));
        let e = check_secret("openai_api_key", "sk\n123")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("sk"), "{e}");
    }
}
