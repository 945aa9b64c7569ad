//! The shared model on the wire: each `tenant_model` enum has its proto enum, converted
//! here and nowhere else. Decoding refuses unspecified and unknown values by name.

use crate::control::v1 as pb;
use tenant_model::{DeadLetterKind, Invalid, WebhookSource};

/// A proto enum field's number as the model value, or an error naming the field.
pub trait FromWire: Sized {
    fn from_wire(field: &str, raw: i32) -> Result<Self, Invalid>;
}

/// The model value as a proto enum field's number.
pub trait ToWire {
    fn to_wire(self) -> i32;
}

macro_rules! wire_enum {
    ($model:ident, $wire:ident { $($variant:ident),+ $(,)? }) => {
        impl From<$model> for pb::$wire {
            fn from(v: $model) -> Self {
                match v { $($model::$variant => pb::$wire::$variant),+ }
            }
        }

        impl ToWire for $model {
            fn to_wire(self) -> i32 {
                pb::$wire::from(self) as i32
            }
        }

        impl FromWire for $model {
            fn from_wire(field: &str, raw: i32) -> Result<Self, Invalid> {
                match pb::$wire::try_from(raw) {
                    $(Ok(pb::$wire::$variant) => Ok($model::$variant),)+
                    _ => Err(Invalid(format!(
                        "{field} must be one of {}",
                        $model::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
                    ))),
                }
            }
        }
    };
}

wire_enum!(WebhookSource, WebhookSource { Meta, Evolution });
wire_enum!(
    DeadLetterKind,
    DeadLetterKind {
        UnknownNumber,
        TenantSuspended,
        ItemRefused
    }
);

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
