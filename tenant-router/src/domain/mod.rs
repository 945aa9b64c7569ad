//! Domain operations on one tenant's database: leads, conversations, catalog. Every query is
//! a prepared statement on the tenant's own connection; input is validated before SQL.

pub mod catalog;
pub mod conversations;
pub mod leads;

use crate::error::RouterError;
use proto::model::{FromWire, ToWire};

/// Default and largest page sizes.
pub const DEFAULT_PAGE: i64 = 20;
pub const MAX_PAGE: i64 = 100;

/// Page size from a request (0: default), bounded.
pub fn page_size(asked: u32) -> Result<i64, RouterError> {
    match i64::from(asked) {
        0 => Ok(DEFAULT_PAGE),
        n if n > MAX_PAGE => Err(RouterError::InvalidArgument(format!(
            "page_size must be at most {MAX_PAGE}"
        ))),
        n => Ok(n),
    }
}

/// The id a page starts after: an opaque token of the previous page (empty: start).
pub fn after_id(token: &str) -> Result<i64, RouterError> {
    Ok(tenant_model::page_after(token)?)
}

/// The token of the page after one ending at `last_id` (empty when there is none).
pub use tenant_model::next_page_token as next_token;

/// A schema spelling read from a tenant database, as its proto enum number (0,
/// unspecified, for a spelling the schema's CHECK constraints would never let in).
pub fn wire<T: ToWire>(spelled: &str, parse: fn(&str) -> Result<T, tenant_model::Invalid>) -> i32 {
    parse(spelled).map_or(0, ToWire::to_wire)
}

/// A required enum field of a request, named in the error.
pub fn required<T: FromWire>(raw: i32, field: &str) -> Result<T, RouterError> {
    Ok(T::from_wire(field, raw)?)
}

/// An optional enum filter of a request (unspecified: no filter).
pub fn filter<T: FromWire>(raw: i32, field: &str) -> Result<Option<T>, RouterError> {
    Ok(proto::model::optional(field, raw)?)
}

/// A required positive id field.
pub fn id(value: i64, field: &str) -> Result<i64, RouterError> {
    if value > 0 {
        Ok(value)
    } else {
        Err(RouterError::InvalidArgument(format!(
            "{field} must be a positive id"
        )))
    }
}

/// Text bounded in length, without control characters (newlines and tabs allowed).
pub fn text(value: &str, field: &str, max_chars: usize) -> Result<String, RouterError> {
    if value.chars().count() > max_chars {
        return Err(RouterError::InvalidArgument(format!(
            "{field} is longer than {max_chars} characters"
        )));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
    {
        return Err(RouterError::InvalidArgument(format!(
            "{field} contains control characters"
        )));
    }
    Ok(value.to_string())
}

/// Milliseconds since the epoch of a timestamptz column, in SQL.
macro_rules! ms {
    ($col:literal) => {
        concat!("(extract(epoch FROM ", $col, ") * 1000)::int8")
    };
}
pub(crate) use ms;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pagination_tokens() {
        assert_eq!(after_id("").unwrap(), 0);
        assert_eq!(after_id("id:42").unwrap(), 42);
        for bad in ["42", "id:", "id:-1", "id:x", "id:99999999999999999999"] {
            assert!(after_id(bad).is_err(), "{bad}");
        }
        assert_eq!(next_token(true, Some(7)), "id:7");
        assert_eq!(next_token(false, Some(7)), "");
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE);
        assert!(page_size(101).is_err());
    }
}
