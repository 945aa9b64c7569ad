//! How a tenant is named and what state it is in.

use crate::{spelled, Invalid};

/// A tenant slug: 3 to 40 of `[a-z0-9-]`, starting with a letter, not ending with `-` and
/// without `--`.
///
/// Starting with a letter keeps slugs apart from numeric tenant ids (`x-tenant: 42`) and
/// makes names derived from them valid identifiers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Slug(String);

impl Slug {
    /// Parses and validates a slug, naming the rule it breaks.
    pub fn parse(raw: &str) -> Result<Slug, Invalid> {
        let bad = |why: &str| Invalid(format!("invalid slug {raw:?}: {why}"));
        if raw.len() < 3 || raw.len() > 40 {
            return Err(bad("must be 3 to 40 characters long"));
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(bad(
                "only lowercase letters a-z, digits and '-' are allowed",
            ));
        }
        if !raw.as_bytes()[0].is_ascii_lowercase() {
            return Err(bad("must start with a letter"));
        }
        if raw.ends_with('-') || raw.contains("--") {
            return Err(bad("must not end with '-' or contain '--'"));
        }
        Ok(Slug(raw.to_string()))
    }

    /// The slug text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Slug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tenant's numeric id (the catalog's `empresas.id`): positive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(i64);

impl TenantId {
    /// Parses the one spelling of an id: decimal digits without leading zeros, sign or
    /// spaces (any other spelling would name the same tenant under a different key).
    pub fn parse(raw: &str) -> Result<TenantId, Invalid> {
        let canonical = !raw.is_empty()
            && raw.len() <= 18
            && raw.bytes().all(|b| b.is_ascii_digit())
            && !raw.starts_with('0');
        match raw.parse::<i64>() {
            Ok(id) if canonical => Ok(TenantId(id)),
            _ => Err(Invalid(format!(
                "invalid tenant id {raw:?}: use the decimal id without leading zeros, signs or spaces"
            ))),
        }
    }

    /// A positive id from a protocol field or the catalog.
    pub fn new(id: i64) -> Result<TenantId, Invalid> {
        if id > 0 {
            Ok(TenantId(id))
        } else {
            Err(Invalid(format!("invalid tenant id {id}: must be positive")))
        }
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

impl std::fmt::Display for TenantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// How a request names a tenant: its id or its slug.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TenantKey {
    Id(TenantId),
    Slug(Slug),
}

impl TenantKey {
    /// What starts like a number is an id (in its one spelling), anything else must be a
    /// valid slug; each error names the rule broken.
    pub fn parse(raw: &str) -> Result<TenantKey, Invalid> {
        let id_like =
            |b: u8| b.is_ascii_digit() || matches!(b, b'+' | b'-') || b.is_ascii_whitespace();
        if raw.bytes().next().is_none_or(id_like) {
            return TenantId::parse(raw).map(TenantKey::Id).map_err(|_| {
                Invalid(format!(
                    "invalid tenant {raw:?}: use a slug or a numeric id (no leading zeros, signs or spaces)"
                ))
            });
        }
        Slug::parse(raw).map(TenantKey::Slug)
    }
}

impl std::fmt::Display for TenantKey {
    /// The text that parses back to this key (also the router's cache key).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TenantKey::Id(id) => id.fmt(f),
            TenantKey::Slug(s) => s.fmt(f),
        }
    }
}

spelled!(
    /// Lifecycle status of a tenant.
    TenantStatus, "status" {
        Provisioning = "provisioning",
        Active = "active",
        Suspended = "suspended",
        Failed = "failed",
        Moving = "moving",
        Deleted = "deleted",
        /// Being restored from a backup: calls are refused with a retryable status.
        Restoring = "restoring",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        for ok in ["abc", "loja-do-ze", "a12", "x".repeat(40).as_str()] {
            assert!(Slug::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ab",
            "Abc",
            "a b",
            "a'b",
            "a;drop",
            "1abc",
            "abc-",
            "a--b",
            "a_b",
            "",
            "é-loja",
            "x".repeat(41).as_str(),
            "'; DROP DATABASE x; --",
        ] {
            let err = Slug::parse(bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid slug"), "{bad}: {err}");
        }
    }

    #[test]
    fn keys_have_one_spelling() {
        assert_eq!(
            TenantKey::parse("42"),
            Ok(TenantKey::Id(TenantId::new(42).unwrap()))
        );
        assert!(matches!(TenantKey::parse("loja"), Ok(TenantKey::Slug(_))));
        for bad in [
            "013",
            "+13",
            "-13",
            " 13",
            "13 ",
            "0",
            "",
            "1234567890123456789",
            "1e3",
        ] {
            let e = TenantKey::parse(bad).unwrap_err().0;
            assert!(e.contains("invalid tenant"), "{bad:?}: {e}");
        }
        assert!(TenantKey::parse("Bad Slug")
            .unwrap_err()
            .0
            .starts_with("invalid slug"));
        for raw in ["42", "loja-do-ze"] {
            assert_eq!(TenantKey::parse(raw).unwrap().to_string(), raw);
        }
    }

    #[test]
    fn statuses() {
        for s in TenantStatus::ALL {
            assert_eq!(TenantStatus::parse(s.as_str()), Ok(*s));
        }
        assert!(TenantStatus::parse("paused").is_err());
    }
}
