//! Page tokens of the domain API's lists: opaque to callers, `id:<last id>` inside.

use crate::Invalid;

/// The id a page starts after, from the previous page's token (empty: the first page).
/// Only the exact form [`next_page_token`] writes is accepted (no sign, spaces or leading
/// zeros), so one position has one token.
pub fn page_after(token: &str) -> Result<i64, Invalid> {
    if token.is_empty() {
        return Ok(0);
    }
    token
        .strip_prefix("id:")
        .filter(|s| s.bytes().all(|b| b.is_ascii_digit()) && !s.starts_with('0'))
        .and_then(|s| s.parse::<i64>().ok())
        .filter(|id| *id > 0)
        .ok_or_else(|| Invalid("invalid page_token".into()))
}

/// The token of the page after one ending at `last_id` (empty when there is none).
pub fn next_page_token(has_more: bool, last_id: Option<i64>) -> String {
    match (has_more, last_id) {
        (true, Some(id)) => format!("id:{id}"),
        _ => String::new(),
    }
}
