//! Validated catalog values: slugs, server names, phone numbers, statuses.
//!
//! Every input that ends up in a database name, a role name or the catalog passes through
//! one of these parsers first, so SQL identifiers built from them need no further escaping
//! and error messages can name the exact problem.

use crate::error::Error;
pub use tenant_migrations::Sector;
pub use tenant_model::{PhoneNumberId, Slug, TenantId, TenantKey, TenantStatus as Status};

impl From<tenant_model::Invalid> for Error {
    fn from(e: tenant_model::Invalid) -> Error {
        Error::InvalidArgument(e.0)
    }
}

/// The names of one generation of a tenant's database and roles on its server.
///
/// Derived from a deployment prefix, the tenant id and a generation number, never from the
/// slug: `pg_database` and `pg_roles` are readable by every role on a server, so names must
/// not say which customer a database belongs to. A restore or a move builds the next
/// generation beside the current one. Every name is a plain identifier (`[a-z0-9_]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantNames {
    /// The database.
    pub database: String,
    /// The role that owns the database and every object in it (control-plane jobs only).
    pub owner: String,
    /// The two login roles routers use: the active one first, then the standby one.
    pub logins: [String; 2],
}

impl TenantNames {
    /// The names of generation `generation` of tenant `id` under `prefix` (a validated
    /// `provisioning.name_prefix`).
    pub fn derive(prefix: &str, id: i64, generation: i32) -> TenantNames {
        let base = format!("{prefix}_{id}_g{generation}");
        TenantNames {
            owner: format!("{base}_owner"),
            logins: [format!("{base}_login_a"), format!("{base}_login_b")],
            database: base,
        }
    }

    /// The login roles as `&str`s.
    pub fn login_refs(&self) -> [&str; 2] {
        [&self.logins[0], &self.logins[1]]
    }
}

/// Whether `raw` may prefix tenant database and role names: 1 to 16 of `[a-z0-9_]`,
/// starting with a letter.
pub fn valid_name_prefix(raw: &str) -> bool {
    (1..=16).contains(&raw.len())
        && raw.starts_with(|c: char| c.is_ascii_lowercase())
        && raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A database server's name in the catalog: 1 to 40 of `[a-z0-9-]`.
pub fn server_name(raw: &str) -> Result<String, Error> {
    let ok = !raw.is_empty()
        && raw.len() <= 40
        && raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(raw.to_string())
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid server name {raw:?}: use 1 to 40 lowercase letters, digits or '-'"
        )))
    }
}

/// An operator (or router) name: 2 to 40 of `[a-z0-9._-]`, starting with a letter.
pub fn operator_name(raw: &str) -> Result<String, Error> {
    let raw = raw.trim();
    let ok = (2..=40).contains(&raw.len())
        && raw.starts_with(|c: char| c.is_ascii_lowercase())
        && raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(raw.to_string())
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid name {raw:?}: use 2 to 40 lowercase letters, digits, '.', '_' or '-', starting with a letter"
        )))
    }
}

/// A host name or IP address for a database server.
pub fn host(raw: &str) -> Result<String, Error> {
    let ok = !raw.is_empty()
        && raw.len() <= 253
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:_[]".contains(&b));
    if ok {
        Ok(raw.to_string())
    } else {
        Err(Error::InvalidArgument(
            "invalid host: expected a host name or IP address".into(),
        ))
    }
}

/// A database user name for a server's admin (letters, digits, `_`, `-`, `.`, at most 63).
pub fn admin_user(raw: &str) -> Result<String, Error> {
    let ok = !raw.is_empty()
        && raw.len() <= 63
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if ok {
        Ok(raw.to_string())
    } else {
        Err(Error::InvalidArgument(
            "invalid admin user: use letters, digits, '_', '-' or '.'".into(),
        ))
    }
}

/// A WhatsApp Cloud API `phone_number_id`: 5 to 25 digits.
pub fn phone_number_id(raw: &str) -> Result<String, Error> {
    Ok(PhoneNumberId::parse(raw)?.as_str().to_string())
}

/// A display phone number in canonical E.164 (`+` and 8 to 15 digits).
///
/// Spaces, dashes, dots and parentheses are accepted and removed; anything else is an
/// error. A number without `+` is rejected rather than guessed at.
pub fn display_phone(raw: &str) -> Result<String, Error> {
    let bad = |why: &str| Error::InvalidArgument(format!("invalid display phone {raw:?}: {why}"));
    let trimmed = raw.trim();
    let Some(rest) = trimmed.strip_prefix('+') else {
        return Err(bad("use E.164 with the country code, e.g. +5511912345678"));
    };
    let mut digits = String::with_capacity(rest.len() + 1);
    digits.push('+');
    for c in rest.chars() {
        match c {
            '0'..='9' => digits.push(c),
            ' ' | '-' | '.' | '(' | ')' => {}
            _ => {
                return Err(bad(
                    "only digits, spaces, '-', '.', '(' and ')' may follow '+'",
                ))
            }
        }
    }
    let n = digits.len() - 1;
    if !(8..=15).contains(&n) {
        return Err(bad("E.164 numbers have 8 to 15 digits"));
    }
    if digits.as_bytes()[1] == b'0' {
        return Err(bad("a country code never starts with 0"));
    }
    Ok(digits)
}

/// A tenant's display name: 1 to 200 characters, no control characters.
pub fn tenant_name(raw: &str) -> Result<String, Error> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(Error::InvalidArgument(
            "invalid name: use 1 to 200 printable characters".into(),
        ));
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_id_and_generation_only() {
        let names = TenantNames::derive("tenant", 42, 3);
        assert_eq!(names.database, "tenant_42_g3");
        assert_eq!(names.owner, "tenant_42_g3_owner");
        assert_eq!(
            names.login_refs(),
            ["tenant_42_g3_login_a", "tenant_42_g3_login_b"]
        );
        // The longest prefix, id and generation still fit PostgreSQL's 63-byte identifiers.
        let long = TenantNames::derive(&"p".repeat(16), i64::MAX, i32::MAX);
        assert!(long.logins[0].len() <= 63, "{}", long.logins[0]);
        for bad in ["", "1x", "Tenant", "a-b", &"p".repeat(17)] {
            assert!(!valid_name_prefix(bad), "{bad}");
        }
        assert!(valid_name_prefix("tenant") && valid_name_prefix("stg_2"));
    }

    #[test]
    fn phones() {
        assert_eq!(
            display_phone("+55 (11) 91234-5678").unwrap(),
            "+5511912345678"
        );
        assert_eq!(display_phone("+5511912345678").unwrap(), "+5511912345678");
        for bad in [
            "5511912345678",
            "+55 11 9abc",
            "+0123456789",
            "+123",
            "+1234567890123456",
            "",
        ] {
            assert!(display_phone(bad).is_err(), "{bad}");
        }
        assert!(phone_number_id("106540352242922").is_ok());
        for bad in ["1234", "12a45", "", "1".repeat(26).as_str()] {
            assert!(phone_number_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sectors_and_names() {
        assert_eq!(Sector::parse("veiculos").unwrap(), Sector::Veiculos);
        let err = Sector::parse("padaria").unwrap_err().to_string();
        assert!(err.contains("padaria") && err.contains("veiculos"), "{err}");
        assert!(tenant_name("  ").is_err());
        assert!(tenant_name("Loja\u{0}").is_err());
        assert_eq!(
            tenant_name(" Auto Center São Paulo ").unwrap(),
            "Auto Center São Paulo"
        );
        assert!(server_name("pg-1").is_ok());
        assert!(server_name("PG 1").is_err());
        assert!(host("db.internal").is_ok());
        assert!(host("db internal").is_err());
    }
}
