//! People who log in: their role in their empresa, their status, their email address.

use crate::{spelled, Invalid};

spelled!(
    /// What a user may do in its own empresa; each role includes the ones before it
    /// (viewer < agent < admin < owner).
    UserRole, "user role" {
        /// Reads leads, conversations and the catalog.
        Viewer = "viewer",
        /// Also writes leads, conversations and messages.
        Agent = "agent",
        /// Also writes the catalog, reads settings and manages the empresa's users.
        Admin = "admin",
        /// Also reads secrets.
        Owner = "owner",
    }
);

impl UserRole {
    /// Whether this role includes `needed`.
    pub fn allows(self, needed: UserRole) -> bool {
        self.rank() >= needed.rank()
    }

    fn rank(self) -> u8 {
        match self {
            UserRole::Viewer => 0,
            UserRole::Agent => 1,
            UserRole::Admin => 2,
            UserRole::Owner => 3,
        }
    }
}

spelled!(
    /// Whether a user may log in.
    UserStatus, "user status" {
        Active = "active",
        Disabled = "disabled",
    }
);

/// An email address as users are known by: trimmed, lower-cased, `local@domain` with a
/// dotted domain, no spaces or control characters, at most 254 bytes (local part 64).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    /// Parses and normalises an address, naming what is wrong with it.
    pub fn parse(raw: &str) -> Result<Email, Invalid> {
        let text = raw.trim().to_lowercase();
        let bad = |why: &str| Err(Invalid(format!("email {why}")));
        if text.is_empty() {
            return bad("is empty");
        }
        if text.len() > 254 {
            return bad("is longer than 254 bytes");
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad("must not contain spaces or control characters");
        }
        let Some((local, domain)) = text.split_once('@') else {
            return bad("must look like name@example.com (no @)");
        };
        if local.is_empty() || local.len() > 64 {
            return bad("must have 1 to 64 characters before the @");
        }
        let labels: Vec<&str> = domain.split('.').collect();
        let label_ok = |l: &&str| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        };
        if labels.len() < 2 || !labels.iter().all(label_ok) {
            return bad("must have a domain like example.com after the @");
        }
        Ok(Email(text))
    }

    /// The normalised address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_nest() {
        use UserRole::*;
        assert!(Owner.allows(Admin) && Admin.allows(Agent) && Agent.allows(Viewer));
        assert!(!Viewer.allows(Agent) && !Agent.allows(Admin) && !Admin.allows(Owner));
        for r in UserRole::ALL {
            assert!(r.allows(*r));
            assert_eq!(UserRole::parse(r.as_str()).unwrap(), *r);
        }
        assert!(UserRole::parse("root")
            .unwrap_err()
            .0
            .contains("viewer, agent"));
    }

    #[test]
    fn emails_are_normalised_or_refused_by_name() {
        assert_eq!(
            Email::parse("  Ana.Souza@Loja.COM.br ").unwrap().as_str(),
            "ana.souza@loja.com.br"
        );
        for (raw, why) in [
            ("", "empty"),
            ("ana", "no @"),
            ("@loja.com", "before the @"),
            ("ana@loja", "domain"),
            ("ana@loja..com", "domain"),
            ("ana@-loja.com", "domain"),
            ("ana souza@loja.com", "spaces"),
            ("ana\u{0}@loja.com", "control"),
        ] {
            let e = Email::parse(raw).unwrap_err().0;
            assert!(e.contains(why), "{raw:?}: {e}");
        }
        let long = format!("{}@loja.com", "a".repeat(65));
        assert!(Email::parse(&long).unwrap_err().0.contains("64"));
        let huge = format!("a@{}.com", "b".repeat(260));
        assert!(Email::parse(&huge).unwrap_err().0.contains("254"));
    }
}
