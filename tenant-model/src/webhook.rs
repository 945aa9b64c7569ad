//! Webhook vocabulary: where a delivery came from, the business number it was sent to,
//! and why a delivery became a dead letter.

use crate::{spelled, Invalid};

spelled!(
    /// Which webhook a delivery came in.
    WebhookSource, "webhook source" {
        /// Meta WhatsApp Cloud API (signed with the app secret).
        Meta = "meta",
        /// Evolution API gateway (authenticated by the tenant's webhook token).
        Evolution = "evolution",
    }
);

spelled!(
    /// Why a delivery (or one item of it) became a dead letter.
    DeadLetterKind, "dead-letter kind" {
        /// No tenant owns the business number: replayable on demand once one does.
        UnknownNumber = "unknown_number",
        /// The tenant was suspended: replayed automatically when it is resumed.
        TenantSuspended = "tenant_suspended",
        /// An item that can never be stored (its reason says why): never replayed.
        ItemRefused = "item_refused",
    }
);

impl DeadLetterKind {
    /// Whether storing it again can succeed (the delivery itself was fine).
    pub fn replayable(self) -> bool {
        !matches!(self, DeadLetterKind::ItemRefused)
    }
}

/// A WhatsApp business number id (Meta's `phone_number_id`): 5 to 25 digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PhoneNumberId(String);

impl PhoneNumberId {
    /// Parses a `phone_number_id` (surrounding spaces are not trimmed: senders never add them).
    pub fn parse(raw: &str) -> Result<PhoneNumberId, Invalid> {
        if !(5..=25).contains(&raw.len()) || !raw.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Invalid(format!(
                "invalid phone_number_id {raw:?}: expected 5 to 25 digits"
            )));
        }
        Ok(PhoneNumberId(raw.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip() {
        for s in WebhookSource::ALL {
            assert_eq!(WebhookSource::parse(s.as_str()), Ok(*s));
        }
        for k in DeadLetterKind::ALL {
            assert_eq!(DeadLetterKind::parse(k.as_str()), Ok(*k));
        }
        let e = WebhookSource::parse("telegram").unwrap_err().0;
        assert!(e.contains("meta, evolution"), "{e}");
        assert!(!DeadLetterKind::ItemRefused.replayable());
        assert!(DeadLetterKind::TenantSuspended.replayable());
    }

    #[test]
    fn phone_number_ids() {
        assert!(PhoneNumberId::parse("106540352242922").is_ok());
        for bad in ["", "1234", " 12345", "12a", "+5511", &"1".repeat(26)] {
            assert!(PhoneNumberId::parse(bad).is_err(), "{bad:?}");
        }
    }
}

/// The name of an Evolution API instance (carried in its webhook URL): 3-63 of
/// `[a-z0-9_-]`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstanceName(String);

impl InstanceName {
    /// Parses a name, naming the rule on error.
    pub fn parse(raw: &str) -> Result<InstanceName, crate::Invalid> {
        let ok = (3..=63).contains(&raw.len())
            && raw.bytes().enumerate().all(|(i, b)| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || (i > 0 && (b == b'_' || b == b'-'))
            });
        if ok {
            Ok(InstanceName(raw.to_string()))
        } else {
            Err(crate::Invalid(format!(
                "invalid evolution instance name {raw:?}: 3-63 of [a-z0-9_-], starting with a letter or digit"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod instance_tests {
    use super::InstanceName;

    #[test]
    fn instance_names() {
        for ok in ["vendas", "suporte-2", "a1_b"] {
            assert_eq!(InstanceName::parse(ok).unwrap().as_str(), ok);
        }
        for bad in ["ab", "-vendas", "Vendas", "ven das", "v/x", &"a".repeat(64)] {
            assert!(InstanceName::parse(bad).is_err(), "{bad}");
        }
    }
}
