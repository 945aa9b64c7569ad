//! The shared model on the wire: each `tenant_model` enum has its proto enum, converted
//! here and nowhere else. Decoding refuses unspecified and unknown values by name.

use crate::accounts::v1 as ac;
use crate::control::v1 as pb;
use crate::domain::v1 as dm;
use tenant_model::{
    BackupState, ConversationStatus, DeadLetterKind, EventKind, Invalid, LeadStatus,
    MessageDirection, MessageStatus, MigrationOutcome, Sector, TenantStatus, UserRole, UserStatus,
    WebhookSource,
};

/// A proto enum field's number as the model value, or an error naming the field.
pub trait FromWire: Sized {
    fn from_wire(field: &str, raw: i32) -> Result<Self, Invalid>;
}

/// The model value as a proto enum field's number.
pub trait ToWire {
    fn to_wire(self) -> i32;
}

macro_rules! wire_enum {
    ($model:ident, $pkg:ident :: $wire:ident { $($variant:ident),+ $(,)? }) => {
        impl From<$model> for $pkg::$wire {
            fn from(v: $model) -> Self {
                match v { $($model::$variant => $pkg::$wire::$variant),+ }
            }
        }

        impl ToWire for $model {
            fn to_wire(self) -> i32 {
                $pkg::$wire::from(self) as i32
            }
        }

        impl FromWire for $model {
            fn from_wire(field: &str, raw: i32) -> Result<Self, Invalid> {
                match $pkg::$wire::try_from(raw) {
                    $(Ok($pkg::$wire::$variant) => Ok($model::$variant),)+
                    _ => Err(Invalid(format!(
                        "{field} must be one of {}",
                        $model::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
                    ))),
                }
            }
        }
    };
}

wire_enum!(WebhookSource, pb::WebhookSource { Meta, Evolution });
wire_enum!(
    EventKind,
    dm::EventKind {
        MessageReceived,
        MessageSent,
        MessageStatus,
        LeadCreated
    }
);
wire_enum!(
    BackupState,
    pb::BackupState {
        Running,
        Ok,
        Failed,
        Abandoned
    }
);
wire_enum!(
    DeadLetterKind,
    pb::DeadLetterKind {
        UnknownNumber,
        TenantSuspended,
        ItemRefused
    }
);
wire_enum!(
    TenantStatus,
    pb::TenantStatus {
        Provisioning,
        Active,
        Suspended,
        Failed,
        Moving,
        Deleted,
        Restoring
    }
);
wire_enum!(
    Sector,
    pb::Sector {
        Veiculos,
        Imoveis,
        Autopecas,
        Varejo,
        Servicos
    }
);
wire_enum!(
    MigrationOutcome,
    pb::MigrationOutcome {
        Migrated,
        Upgraded,
        Skipped,
        Failed,
        Busy,
        NotStarted
    }
);
wire_enum!(
    LeadStatus,
    dm::LeadStatus {
        Novo,
        EmAtendimento,
        Qualificado,
        Convertido,
        Perdido
    }
);
wire_enum!(
    ConversationStatus,
    dm::ConversationStatus { Aberta, Fechada }
);
wire_enum!(MessageDirection, dm::MessageDirection { Entrada, Saida });
wire_enum!(
    MessageStatus,
    dm::MessageStatus {
        Recebida,
        Pendente,
        Sent,
        Delivered,
        Read,
        Failed
    }
);

wire_enum!(
    UserRole,
    ac::UserRole {
        Viewer,
        Agent,
        Admin,
        Owner
    }
);
wire_enum!(UserStatus, ac::UserStatus { Active, Disabled });

/// The spelling of a proto enum number, when it is a model value (`?` otherwise): for
/// display only.
pub fn spelled<T: FromWire + Copy>(raw: i32, as_str: fn(T) -> &'static str) -> &'static str {
    T::from_wire("", raw).map_or("?", as_str)
}

/// An optional enum filter: unspecified (0) is `None`.
pub fn optional<T: FromWire>(field: &str, raw: i32) -> Result<Option<T>, Invalid> {
    if raw == 0 {
        Ok(None)
    } else {
        T::from_wire(field, raw).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every model value has its wire value and back, for every enum.
    fn round_trip<T: ToWire + FromWire + Copy + PartialEq + std::fmt::Debug>(all: &[T]) {
        for v in all {
            assert_eq!(T::from_wire("f", v.to_wire()), Ok(*v));
            assert_ne!(v.to_wire(), 0, "{v:?} maps to UNSPECIFIED");
        }
        assert!(T::from_wire("f", 0).is_err());
    }

    #[test]
    fn every_enum_round_trips() {
        round_trip(TenantStatus::ALL);
        round_trip(BackupState::ALL);
        round_trip(Sector::ALL);
        round_trip(MigrationOutcome::ALL);
        round_trip(LeadStatus::ALL);
        round_trip(ConversationStatus::ALL);
        round_trip(MessageDirection::ALL);
        round_trip(MessageStatus::ALL);
        round_trip(UserRole::ALL);
        round_trip(UserStatus::ALL);
    }

    #[test]
    fn round_trips_and_refusals() {
        for s in WebhookSource::ALL {
            assert_eq!(WebhookSource::from_wire("source", s.to_wire()), Ok(*s));
        }
        for k in DeadLetterKind::ALL {
            assert_eq!(DeadLetterKind::from_wire("kind", k.to_wire()), Ok(*k));
        }
        let e = WebhookSource::from_wire("source", 0).unwrap_err().0;
        assert_eq!(e, "source must be one of meta, evolution");
        assert!(DeadLetterKind::from_wire("kind", 99).is_err());
        assert_eq!(optional::<WebhookSource>("source", 0), Ok(None));
    }
}
