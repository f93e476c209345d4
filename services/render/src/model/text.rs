//! Free text from agents (error messages, log tails, crash reports, machine facts) made
//! storable: PostgreSQL's `text` and `jsonb` refuse the NUL character, which a crashing process
//! can well print, so it becomes U+FFFD; and every such text is bounded, so one report cannot
//! bloat a row.

/// What replaces a NUL.
const REPLACEMENT: char = '\u{FFFD}';

/// The first `max_chars` characters of `text`, NUL replaced.
pub fn head(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).map(storable).collect()
}

/// The last `max_bytes` bytes of `text` (cut at a character boundary), NUL replaced: the end of
/// a log matters most. The cut comes first, so each replaced NUL may add two bytes.
pub fn tail(text: &str, max_bytes: usize) -> String {
    let mut start = text.len().saturating_sub(max_bytes);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].chars().map(storable).collect()
}

fn storable(c: char) -> char {
    if c == '\0' { REPLACEMENT } else { c }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_is_replaced_and_length_bounded() {
        assert_eq!(head("a\0b", 10), "a\u{FFFD}b");
        assert_eq!(head("héllo", 2), "hé");
        assert_eq!(head("", 5), "");
    }

    #[test]
    fn tails_keep_the_end_at_a_character_boundary() {
        assert_eq!(tail("héllo", 3), "llo");
        assert_eq!(tail("héllo", 4), "llo", "never half a character");
        assert_eq!(tail("short", 100), "short");
        assert_eq!(tail("x\0y", 2), "\u{FFFD}y");
    }
}
