//! WhatsApp ids and phone numbers: one canonical form per person.
//!
//! WhatsApp reports Brazilian mobiles sometimes without the 9th digit (`55 11 8765-4321`
//! instead of `55 11 9 8765-4321`). The canonical id always has it, so both spellings are
//! one lead. Landlines (subscriber numbers starting 2-5) are left alone.

/// Canonical WhatsApp id: digits only, Brazilian mobiles with the 9th digit.
/// `None` for anything that is not 8 to 15 digits once `+`, spaces, dashes, dots and
/// parentheses are removed.
pub fn canonical_wa_id(raw: &str) -> Option<String> {
    let mut digits = String::with_capacity(raw.len());
    for c in raw.trim().chars() {
        match c {
            '0'..='9' => digits.push(c),
            '+' | ' ' | '-' | '.' | '(' | ')' => {}
            _ => return None,
        }
    }
    if !(8..=15).contains(&digits.len()) {
        return None;
    }
    // 55 + DDD (2 digits) + 8-digit mobile starting 6-9: insert the 9.
    let b = digits.as_bytes();
    if digits.len() == 12 && digits.starts_with("55") && (b'6'..=b'9').contains(&b[4]) {
        digits.insert(4, '9');
    }
    Some(digits)
}

#[cfg(test)]
mod tests {
    use super::canonical_wa_id;

    #[test]
    fn brazilian_ninth_digit() {
        assert_eq!(
            canonical_wa_id("551187654321").as_deref(),
            Some("5511987654321")
        );
        assert_eq!(
            canonical_wa_id("5511987654321").as_deref(),
            Some("5511987654321")
        );
        assert_eq!(
            canonical_wa_id("+55 (11) 98765-4321").as_deref(),
            Some("5511987654321")
        );
        // Landline: untouched.
        assert_eq!(
            canonical_wa_id("551133334444").as_deref(),
            Some("551133334444")
        );
        // Other countries: untouched.
        assert_eq!(
            canonical_wa_id("14155550123").as_deref(),
            Some("14155550123")
        );
    }

    #[test]
    fn garbage_is_refused() {
        for bad in [
            "",
            "abc",
            "12345",
            "+55 11 9876x4321",
            "1234567890123456",
            "55;DROP",
        ] {
            assert_eq!(canonical_wa_id(bad), None, "{bad}");
        }
    }
}
