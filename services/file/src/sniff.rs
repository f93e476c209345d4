//! The content type of a file, from its first bytes (magic numbers), never from the client.

/// How many leading bytes [`content_type`] looks at.
pub const SNIFF_BYTES: usize = 512;

/// The type when nothing is recognised.
pub const UNKNOWN: &str = "application/octet-stream";

/// The MIME type of data that starts with `head` (its first [`SNIFF_BYTES`] bytes, or all of
/// it when shorter).
pub fn content_type(head: &[u8]) -> &'static str {
    binary(head).or_else(|| textual(head)).unwrap_or(UNKNOWN)
}

fn binary(head: &[u8]) -> Option<&'static str> {
    let starts = |magic: &[u8]| head.starts_with(magic);
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    Some(if starts(b"\x89PNG\r\n\x1a\n") {
        "image/png"
    } else if starts(b"\xff\xd8\xff") {
        "image/jpeg"
    } else if starts(b"GIF87a") || starts(b"GIF89a") {
        "image/gif"
    } else if starts(b"RIFF") && at(8, b"WEBP") {
        "image/webp"
    } else if starts(b"RIFF") && at(8, b"WAVE") {
        "audio/wav"
    } else if starts(b"%PDF-") {
        "application/pdf"
    } else if starts(b"PK\x03\x04") || starts(b"PK\x05\x06") {
        "application/zip"
    } else if starts(b"fLaC") {
        "audio/flac"
    } else if starts(b"OggS") {
        "audio/ogg"
    } else if starts(b"ID3") {
        "audio/mpeg"
    } else if starts(b"\x1a\x45\xdf\xa3") {
        // Matroska; WebM names its doctype within the header.
        if head.windows(4).any(|w| w == b"webm") { "video/webm" } else { "video/x-matroska" }
    } else if at(4, b"ftyp") {
        match head.get(8..12) {
            Some(b"qt  ") => "video/quicktime",
            Some(b"M4A " | b"M4B " | b"M4P ") => "audio/mp4",
            _ => "video/mp4",
        }
    } else if head.len() >= 2 && head[0] == 0xff && head[1] & 0xf6 == 0xf0 {
        // ADTS frame sync with layer 00: AAC.
        "audio/aac"
    } else if head.len() >= 2 && head[0] == 0xff && head[1] & 0xe6 == 0xe2 {
        // MPEG audio frame sync, layer III.
        "audio/mpeg"
    } else {
        return None;
    })
}

fn textual(head: &[u8]) -> Option<&'static str> {
    let text = utf8_prefix(head.strip_prefix(b"\xef\xbb\xbf").unwrap_or(head))?;
    if text.is_empty() || text.chars().any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r' | '\x0c')) {
        return None;
    }
    let trimmed = text.trim_start();
    let lower = trimmed.get(..trimmed.len().min(SNIFF_BYTES))?.to_ascii_lowercase();
    Some(if lower.starts_with("<svg") || (lower.starts_with("<?xml") && lower.contains("<svg")) {
        "image/svg+xml"
    } else if trimmed.starts_with('{') || trimmed.starts_with('[') {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    })
}

/// `bytes` as UTF-8, tolerating a character cut off at the end of the window.
fn utf8_prefix(bytes: &[u8]) -> Option<&str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Some(text),
        Err(e) if e.error_len().is_none() && bytes.len() - e.valid_up_to() < 4 => {
            std::str::from_utf8(&bytes[..e.valid_up_to()]).ok()
        }
        Err(_) => None,
    }
}

/// Keeps the first [`SNIFF_BYTES`] bytes of a stream as it passes.
#[derive(Debug, Default)]
pub struct Head(Vec<u8>);

impl Head {
    /// Notes the next chunk of the stream.
    pub fn push(&mut self, chunk: &[u8]) {
        let wanted = SNIFF_BYTES.saturating_sub(self.0.len());
        self.0.extend_from_slice(&chunk[..chunk.len().min(wanted)]);
    }

    /// The content type of what was seen.
    pub fn content_type(&self) -> &'static str {
        content_type(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_numbers() {
        let cases: &[(&[u8], &str)] = &[
            (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "image/png"),
            (b"\xff\xd8\xff\xe0\0\x10JFIF", "image/jpeg"),
            (b"GIF89a\x01\0", "image/gif"),
            (b"RIFF\x24\0\0\0WEBPVP8 ", "image/webp"),
            (b"RIFF\x24\0\0\0WAVEfmt ", "audio/wav"),
            (b"%PDF-1.7\n", "application/pdf"),
            (b"PK\x03\x04\x14\0", "application/zip"),
            (b"fLaC\0\0\0\x22", "audio/flac"),
            (b"OggS\0\x02", "audio/ogg"),
            (b"ID3\x04\0\0", "audio/mpeg"),
            (b"\xff\xfb\x90\x64", "audio/mpeg"),
            (b"\xff\xf1\x50\x80", "audio/aac"),
            (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm", "video/webm"),
            (b"\x1a\x45\xdf\xa3\x9f\x42\x82\x88matroska", "video/x-matroska"),
            (b"\0\0\0\x18ftypisom\0\0\x02\0", "video/mp4"),
            (b"\0\0\0\x14ftypqt  \0\0\x02\0", "video/quicktime"),
            (b"\0\0\0\x1cftypM4A \0\0\0\0", "audio/mp4"),
            (b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>", "image/svg+xml"),
            (b"<?xml version=\"1.0\"?>\n<svg/>", "image/svg+xml"),
            (b"  {\"scenes\": []}", "application/json"),
            (b"\xef\xbb\xbf[1, 2]", "application/json"),
            (b"hello\nworld\n", "text/plain; charset=utf-8"),
            (b"\0\x01\x02\x03", UNKNOWN),
            (b"", UNKNOWN),
        ];
        for (head, want) in cases {
            assert_eq!(content_type(head), *want, "{head:?}");
        }
    }

    #[test]
    fn a_character_cut_at_the_window_is_still_text() {
        let mut text = "a".repeat(SNIFF_BYTES - 1).into_bytes();
        text.extend_from_slice("é".as_bytes());
        let mut head = Head::default();
        head.push(&text);
        assert_eq!(head.content_type(), "text/plain; charset=utf-8");
    }

    #[test]
    fn the_head_keeps_only_the_window() {
        let mut head = Head::default();
        head.push(&[0x89, b'P']);
        head.push(b"NG\r\n\x1a\n");
        head.push(&vec![0; 4096]);
        assert_eq!(head.0.len(), SNIFF_BYTES);
        assert_eq!(head.content_type(), "image/png");
    }
}
