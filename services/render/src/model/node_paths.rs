//! Error text for customers without the node's directory layout.
//!
//! An agent's error message names files as the node sees them ("missing footage
//! C:\Users\render\cache\<bundle digest>\footage\logo.png", "/var/lib/flatrender/work/<task>/
//! project.aep"). The customer needs the file, the layer and the error, never where the node
//! keeps things, so [`strip_node_paths`] shortens every absolute path in a message:
//!
//! - to what follows the node's own directory for the work (the last component that is a
//!   content digest or a task id: 16 or more hex digits, or a UUID), i.e. the template bundle's
//!   own layout, which is the customer's ("footage\logo.png");
//! - otherwise to the file name alone.
//!
//! Paths recognised: Windows drive paths (`C:\`, `C:/`), UNC paths (`\\server\share`,
//! `\\?\C:\`), POSIX absolute paths (`/var/...`), `file://` URIs of either, each bare or quoted
//! (`"..."`, `'...'`, `“...”`, `‘...’`; a quoted path may contain spaces). A bare Windows path
//! may contain spaces too: it goes on through the next words while one of the next three
//! contains a backslash (a backslash is rare in prose, a slash is not, so a bare POSIX path ends
//! at the first space). Relative paths are left alone: they name no node directory.
//!
//! The node's own names are no business of the customer either: [`strip_node_names`] replaces
//! the reporting node's host name (also its first label alone) and enrolled name
//! ("render-07.farm.internal: out of memory", "render-07 gave up") with "the render node".
//!
//! Operators keep the raw message (attempts, chunks, crash reports); this applies only where
//! the customer's copy is written.

/// Words a bare Windows path may skip over to a later word with a backslash.
const LOOKAHEAD_WORDS: usize = 3;

/// `message` with every absolute path shortened (see the module documentation).
pub fn strip_node_paths(message: &str) -> String {
    let chars: Vec<char> = message.chars().collect();
    let mut out = String::with_capacity(message.len());
    let mut i = 0;
    while i < chars.len() {
        if at_boundary(&chars, i) {
            if let Some(close) = closing_quote(chars[i])
                && path_start(&chars, i + 1).is_some()
                && let Some(end) = (i + 1..chars.len()).find(|&j| chars[j] == close)
            {
                let inner: String = chars[i + 1..end].iter().collect();
                out.push(chars[i]);
                out.push_str(&shorten(&inner));
                out.push(close);
                i = end + 1;
                continue;
            }
            if let Some(kind) = path_start(&chars, i) {
                let mut end = path_end(&chars, i, kind);
                // Sentence punctuation after a path is not part of it.
                while end > i + 1 && matches!(chars[end - 1], '.' | ',' | ':' | ';' | ')' | ']' | '!' | '?') {
                    end -= 1;
                }
                let path: String = chars[i..end].iter().collect();
                out.push_str(&shorten(&path));
                i = end;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// The two path syntaxes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Drive or UNC path: backslashes (or slashes), names may hold spaces.
    Windows,
    /// Absolute POSIX path.
    Posix,
}

/// Whether a path may start at `i`: the text's start, or after a space, an opening bracket or
/// quote, or a separator such as `=` or `:`.
fn at_boundary(chars: &[char], i: usize) -> bool {
    i == 0
        || chars[i - 1].is_whitespace()
        || matches!(chars[i - 1], '(' | '[' | '{' | '<' | '=' | ':' | ',' | ';' | '"' | '\'' | '“' | '‘' | '`')
}

/// The closing quote of an opening quote `c`.
fn closing_quote(c: char) -> Option<char> {
    match c {
        '"' => Some('"'),
        '\'' => Some('\''),
        '“' => Some('”'),
        '‘' => Some('’'),
        '`' => Some('`'),
        _ => None,
    }
}

/// The kind of path starting at `i`, if one does.
fn path_start(chars: &[char], i: usize) -> Option<Kind> {
    let at = |j: usize| chars.get(j).copied();
    if starts_with(chars, i, "file://") {
        let rest = i + "file://".len();
        return match at(rest) {
            // file:///C:/... or file:///var/...
            Some('/') => path_start(chars, rest + 1).or(Some(Kind::Posix)),
            // file://server/share/...
            Some(c) if is_name_char(c) => Some(Kind::Windows),
            _ => None,
        };
    }
    match (at(i), at(i + 1), at(i + 2)) {
        (Some(drive), Some(':'), Some('\\' | '/')) if drive.is_ascii_alphabetic() => {
            // "C:\" followed by a name (or the end): not "a:/" in the middle of prose only.
            Some(Kind::Windows)
        }
        (Some('\\'), Some('\\'), Some(c)) if c == '?' || c == '.' || is_name_char(c) => Some(Kind::Windows),
        // A slash followed by a name; "//" (a URL's authority) and a lone slash are not paths.
        (Some('/'), Some(c), _) if is_name_char(c) => Some(Kind::Posix),
        _ => None,
    }
}

/// Whether `prefix` (lower-case) starts at `i`, whatever the case.
fn starts_with(chars: &[char], i: usize, prefix: &str) -> bool {
    (i..).zip(prefix.chars()).all(|(j, p)| chars.get(j).is_some_and(|c| c.to_ascii_lowercase() == p))
}

/// A character that may start a file or directory name.
fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '~' | '$' | '@' | '+' | '%' | '#')
}

/// Where a bare path of `kind` starting at `start` ends (exclusive).
fn path_end(chars: &[char], start: usize, kind: Kind) -> usize {
    let stops = |c: char| match kind {
        Kind::Posix => {
            c.is_whitespace()
                || matches!(c, '"' | '\'' | '“' | '”' | '‘' | '’' | '`' | '<' | '>' | '|' | '(' | ')' | '[' | ']')
                || matches!(c, '{' | '}' | ',' | ';')
        }
        Kind::Windows => {
            c.is_whitespace()
                || matches!(c, '"' | '“' | '”' | '‘' | '’' | '`' | '<' | '>' | '|' | '*' | '?' | ',' | ';')
        }
    };
    // "\\?\" of a long UNC path holds a '?', which names no file.
    let mut end = if starts_with(chars, start, "\\\\?\\") { start + 4 } else { start };
    loop {
        while end < chars.len() && !stops(chars[end]) {
            end += 1;
        }
        if kind != Kind::Windows || end >= chars.len() || !chars[end].is_whitespace() {
            return end;
        }
        match continuation(chars, end) {
            Some(next_word_end) => end = next_word_end,
            None => return end,
        }
    }
}

/// For a bare Windows path interrupted by the space at `at`: the end of the next word holding a
/// backslash within [`LOOKAHEAD_WORDS`] words, unless that word starts a path of its own.
fn continuation(chars: &[char], at: usize) -> Option<usize> {
    let mut i = at;
    for _ in 0..LOOKAHEAD_WORDS {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let word_start = i;
        while i < chars.len() && !chars[i].is_whitespace() {
            i += 1;
        }
        if word_start == i || path_start(chars, word_start).is_some() {
            return None;
        }
        let word = &chars[word_start..i];
        if word.iter().any(|c| matches!(c, '"' | '“' | '”' | '<' | '>' | '|')) {
            return None;
        }
        if word.contains(&'\\') {
            // Up to the word's own stop (a comma or semicolon ends the path there).
            let stop = (word_start..i).find(|&j| matches!(chars[j], ',' | ';')).unwrap_or(i);
            return Some(stop);
        }
    }
    None
}

/// `path` as a customer sees it: what follows its last digest or id component, else its last
/// component; unchanged when it has no name at all (a bare drive or root).
fn shorten(path: &str) -> String {
    let trimmed = path.strip_prefix("file://").or_else(|| path.strip_prefix("FILE://")).unwrap_or(path);
    let windows = trimmed.contains('\\') || trimmed.as_bytes().get(1) == Some(&b':');
    let separator = if trimmed.contains('\\') { '\\' } else { '/' };
    let mut parts: Vec<&str> = trimmed
        .split(|c| c == '/' || (windows && c == '\\'))
        .filter(|p| !p.is_empty() && *p != "?" && *p != ".")
        .collect();
    // A drive ("C:") names no file.
    if windows && parts.first().is_some_and(|p| p.len() == 2 && p.ends_with(':')) {
        parts.remove(0);
    }
    if parts.is_empty() {
        return path.to_owned();
    }
    let kept = match parts.iter().rposition(|p| is_node_directory(p)) {
        Some(anchor) if anchor + 1 < parts.len() => &parts[anchor + 1..],
        _ => &parts[parts.len() - 1..],
    };
    kept.join(&separator.to_string())
}

/// A directory the node names after the work: a content digest (16 or more hex digits) or a
/// task id (a UUID).
fn is_node_directory(part: &str) -> bool {
    (part.len() >= 16 && part.chars().all(|c| c.is_ascii_hexdigit())) || uuid::Uuid::try_parse(part).is_ok()
}

/// What a node's name becomes in a customer's message.
const NODE: &str = "the render node";

/// Names shorter than this are left alone: they would match ordinary words.
const MIN_NAME_CHARS: usize = 3;

/// `message` with each of `names` (a node's host name and enrolled name) and the first label of
/// each dotted one (`ae-07` of `ae-07.farm.internal`) replaced by "the render node" wherever it
/// stands as a word of its own, matched without regard to ASCII case.
pub fn strip_node_names(message: &str, names: &[&str]) -> String {
    let mut names: Vec<Vec<char>> = names
        .iter()
        .map(|n| n.trim())
        .flat_map(|n| [n, n.split('.').next().unwrap_or(n)])
        .map(|n| n.chars().collect::<Vec<char>>())
        .filter(|n| n.len() >= MIN_NAME_CHARS)
        .collect();
    // The longer first, so a fully qualified host name wins over its first label.
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    names.dedup();
    let chars: Vec<char> = message.chars().collect();
    let mut out = String::with_capacity(message.len());
    let mut i = 0;
    while i < chars.len() {
        let matched = (i == 0 || !is_word_char(chars[i - 1]))
            .then(|| names.iter().find_map(|name| name_at(&chars, i, name)))
            .flatten();
        match matched {
            Some(end) => {
                out.push_str(NODE);
                i = end;
            }
            None => {
                out.push(chars[i]);
                i += 1;
            }
        }
    }
    out
}

/// Where `name` standing at `i` ends; `None` unless it is there as a word of its own.
fn name_at(chars: &[char], i: usize, name: &[char]) -> Option<usize> {
    let end = i + name.len();
    let found = chars.get(i..end)?.iter().zip(name).all(|(a, b)| a.eq_ignore_ascii_case(b));
    (found && !chars.get(end).is_some_and(|c| is_word_char(*c))).then_some(end)
}

/// A character that continues a word or a host name's label.
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '-' || c == '_'
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12";
    const TASK: &str = "0b8e5c1e-3f7a-4d2b-9c51-6a0f2e7d9b13";

    fn check(raw: &str, shown: &str) {
        assert_eq!(strip_node_paths(raw), shown, "from {raw:?}");
    }

    #[test]
    fn windows_drive_paths_keep_the_bundle_layout_or_the_file_name() {
        check(
            &format!(r"After Effects error: missing footage C:\Users\render\cache\{DIGEST}\footage\logo.png"),
            r"After Effects error: missing footage footage\logo.png",
        );
        check(r"cannot open D:\farm\jobs\tmp\project.aep.", "cannot open project.aep.");
        check("cannot open C:/Users/render/project.aep", "cannot open project.aep");
        check(r"layer 'Title' uses E:\Fonts\Brand Sans.otf", "layer 'Title' uses Brand Sans.otf");
    }

    #[test]
    fn unc_and_long_paths() {
        check(r"missing \\nas01\renders\cache\logo.png in comp Main", "missing logo.png in comp Main");
        check(r"missing \\?\C:\Users\render\cache\logo.png", "missing logo.png");
        check(r"at \\.\pipe\aerender", "at aerender");
    }

    #[test]
    fn posix_paths_keep_what_follows_the_task_directory() {
        check(
            &format!("cannot open /var/lib/flatrender/work/{TASK}/project.aep: no such file"),
            "cannot open project.aep: no such file",
        );
        check(
            &format!("missing /var/lib/flatrender/cache/{DIGEST}/footage/clips/intro.mov (layer 3)"),
            "missing footage/clips/intro.mov (layer 3)",
        );
        check("font not found: /usr/share/fonts/Brand.ttf", "font not found: Brand.ttf");
        check("file=/tmp/x/out.png, frame 12", "file=out.png, frame 12");
        check("(/home/render/.cache/logo.png)", "(logo.png)");
    }

    #[test]
    fn quoted_paths_may_hold_spaces() {
        check(
            r#"After Effects error: file "C:\Users\render\My Cache\footage\My Logo.png" cannot be found"#,
            r#"After Effects error: file "My Logo.png" cannot be found"#,
        );
        check(
            &format!("could not open '/var/lib/flat render/work/{TASK}/Main Project.aep'"),
            "could not open 'Main Project.aep'",
        );
        check(r"missing “C:\Program Files\Adobe\Fonts\Brand Sans.otf”", "missing “Brand Sans.otf”");
    }

    #[test]
    fn bare_windows_paths_with_spaces() {
        check(
            r"missing footage C:\Users\render\My Footage\logo.png was not found",
            "missing footage logo.png was not found",
        );
        check(
            r"C:\Program Files\Adobe\Adobe After Effects 2024\Support Files\aerender.exe crashed",
            "aerender.exe crashed",
        );
        check(r"missing C:\a\footage\My Logo.png in comp Main", "missing My Logo.png in comp Main");
        // Two paths stay two.
        check(r"copy C:\work\a.png to D:\work\b.png failed", "copy a.png to b.png failed");
    }

    #[test]
    fn file_uris() {
        check("cannot read file:///C:/Users/render/cache/logo.png", "cannot read logo.png");
        check("cannot read file:///var/lib/flatrender/logo.png", "cannot read logo.png");
        check("cannot read file://nas/share/logo.png", "cannot read logo.png");
    }

    #[test]
    fn everything_else_is_left_alone() {
        for text in [
            "aerender ERROR: No comp was found with the given name.",
            "frames 1-10 at 30/1 fps and/or 1920x1080",
            "see https://helpx.adobe.com/after-effects/using/errors.html",
            "layer \"Title\" in comp 'Main': value rejected",
            r"relative footage\logo.png is missing",
            "ratio 16 / 9",
            "",
            "a lone slash / and C: drive",
        ] {
            check(text, text);
        }
    }

    #[test]
    fn bare_roots_are_kept() {
        check(r"disk C:\ is full", r"disk C:\ is full");
        check("unquoted '/' root", "unquoted '/' root");
    }

    #[test]
    fn a_message_with_many_paths_and_no_layout_left() {
        let raw = format!(
            r#"After Effects error: missing footage C:\Users\render\cache\{DIGEST}\footage\logo.png; project "/var/lib/flatrender/work/{TASK}/project.aep"; log at \\nas\logs\node-7\ae.log"#
        );
        let shown = strip_node_paths(&raw);
        assert_eq!(
            shown,
            r#"After Effects error: missing footage footage\logo.png; project "project.aep"; log at ae.log"#
        );
        for leak in ["Users", "render", "cache", "var", "lib", "work", "nas", "node-7", DIGEST, TASK] {
            assert!(!shown.contains(leak), "{leak} leaked into {shown:?}");
        }
    }

    #[test]
    fn the_nodes_names_and_short_host_name_are_replaced() {
        let names = ["gpu-3", "AE-07.farm.internal"];
        let cases = [
            ("ae-07.farm.internal: out of memory", "the render node: out of memory"),
            ("AE-07: out of memory on gpu-3.", "the render node: out of memory on the render node."),
            ("(gpu-3) crashed", "(the render node) crashed"),
            // Part of another word or name: left alone, whatever the script.
            ("ae-070 and preae-07 and ae-07x and äae-07", "ae-070 and preae-07 and ae-07x and äae-07"),
            ("", ""),
        ];
        for (raw, shown) in cases {
            assert_eq!(strip_node_names(raw, &names), shown, "{raw:?}");
        }
        // Names too short to tell from words are not touched, blanks around a name do not count.
        assert_eq!(strip_node_names("an ae error on ae", &["ae", " ", "ae.farm"]), "an ae error on ae");
        assert_eq!(strip_node_names("node ws1 failed", &[" ws1 "]), "node the render node failed");
    }

    #[test]
    fn names_and_paths_go_together() {
        let raw = "cannot write \\\\render-07\\scratch\\out.png on render-07";
        let shown = strip_node_names(&strip_node_paths(raw), &["render-07"]);
        assert_eq!(shown, "cannot write out.png on the render node");
    }
}
