//! The platform's shared vocabulary, used by the control plane, the router and their
//! protos: each concept has one type and one parser, so a value is checked once where it
//! enters and the rule cannot differ between the two daemons. Each enum's text spelling
//! is the catalog's or the tenant schema's; `proto::model` maps them to the wire.

mod account;
mod domain;
mod page;
mod tenant;
mod webhook;

pub use account::{Email, UserRole, UserStatus};
pub use domain::{
    BackupState, ConversationStatus, EventKind, LeadStatus, MessageDirection, MessageStatus,
    MigrationOutcome, Sector,
};
pub use page::{next_page_token, page_after};
pub use tenant::{Slug, TenantId, TenantKey, TenantStatus};
pub use webhook::{DeadLetterKind, InstanceName, PhoneNumberId, WebhookSource};

/// Why a value was refused; the message names the value's problem (never anything else).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// Declares a closed set of values with one text spelling each (catalog columns, CLI
/// arguments, logs): `as_str`, `parse` and `ALL`.
macro_rules! spelled {
    ($(#[$m:meta])* $name:ident, $what:literal { $($(#[$vm:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $variant),+ }

        impl $name {
            /// Every value.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The one spelling (catalog, CLI, logs).
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Parses the spelling, naming the valid ones on error.
            pub fn parse(raw: &str) -> Result<$name, $crate::Invalid> {
                $name::ALL.iter().copied().find(|v| v.as_str() == raw).ok_or_else(|| {
                    let valid: Vec<&str> = $name::ALL.iter().map(|v| v.as_str()).collect();
                    $crate::Invalid(format!(
                        concat!("unknown ", $what, " {:?}: expected one of {}"),
                        raw,
                        valid.join(", ")
                    ))
                })
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use spelled;
