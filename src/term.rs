//! Text from hosts (hostnames, os-release fields, Pi models, mDNS names, command output) on the
//! operator's terminal. A host must not be able to move the cursor, clear the screen or rewrite
//! earlier lines with escape sequences, and text is cut on character boundaries, never bytes.

use std::borrow::Cow;

/// `s` with every control character but newline (ESC, CR, BEL, DEL, C1 controls …) escaped as
/// Rust writes it (`\u{1b}`, `\r`), so it shows instead of acting.
pub fn clean(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_unsafe(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn is_unsafe(c: char) -> bool {
    c.is_control() && c != '\n'
}

/// At most the first `n` characters of `s` (slicing by bytes panics inside a multi-byte one).
pub fn truncate(s: &str, n: usize) -> &str {
    s.char_indices().nth(n).map_or(s, |(at, _)| &s[..at])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_show_instead_of_acting() {
        assert_eq!(clean("rasp01\x1b[2J\r\x07\u{9b}x\x7f"), "rasp01\\u{1b}[2J\\r\\u{7}\\u{9b}x\\u{7f}");
        assert_eq!(clean("two\nlines, tab\there"), "two\nlines, tab\\there");
        assert!(matches!(clean("Raspberry Pi 4 Model B Rev 1.4 — ünïcode"), Cow::Borrowed(_)));
    }

    #[test]
    fn truncation_respects_character_boundaries() {
        assert_eq!(truncate("abcdefghijkléxyz", 12), "abcdefghijkl");
        assert_eq!(truncate("abcdefghijkéxyz", 12), "abcdefghijké");
        assert_eq!(truncate("ééé", 12), "ééé");
        assert_eq!(truncate("", 3), "");
    }
}
