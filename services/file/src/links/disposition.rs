//! `Content-Disposition` with a file's name (RFC 6266): `filename` for old clients, ASCII only,
//! and `filename*` (RFC 8187) with the exact name in UTF-8, which every current browser prefers.

use std::fmt::Write as _;

/// `inline` (display it) or `attachment` (save it), with `name`.
pub fn header_value(attachment: bool, name: &str) -> String {
    let kind = if attachment { "attachment" } else { "inline" };
    format!("{kind}; filename=\"{}\"; filename*=UTF-8''{}", ascii_fallback(name), percent_encoded(name))
}

/// `name` with every character a quoted string could not carry plainly (non-ASCII, `"`, `\`,
/// `%` which some clients decode) replaced by `_`.
fn ascii_fallback(name: &str) -> String {
    name.chars()
        .map(|c| if c == ' ' || (c.is_ascii_graphic() && !matches!(c, '"' | '\\' | '%')) { c } else { '_' })
        .collect()
}

/// `name`'s UTF-8 bytes, those outside RFC 8187's `attr-char` as `%XX`.
fn percent_encoded(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_names() {
        assert_eq!(header_value(false, "clip.mp4"), "inline; filename=\"clip.mp4\"; filename*=UTF-8''clip.mp4");
        assert_eq!(
            header_value(true, "my \"best\" 100%.png"),
            "attachment; filename=\"my _best_ 100_.png\"; filename*=UTF-8''my%20%22best%22%20100%25.png"
        );
    }

    #[test]
    fn unicode_names() {
        assert_eq!(
            header_value(true, "Видео №1 — 😀.mp4"),
            "attachment; filename=\"_____ _1 _ _.mp4\"; \
             filename*=UTF-8''%D0%92%D0%B8%D0%B4%D0%B5%D0%BE%20%E2%84%961%20%E2%80%94%20%F0%9F%98%80.mp4"
        );
        // Every value is a valid header value.
        assert!(axum::http::HeaderValue::from_str(&header_value(false, "ü\u{202e}ö")).is_ok());
    }
}
