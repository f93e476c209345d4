//! Escaping for values inside an ffmpeg filter graph (paths, text): once for the filter's
//! option parser, once more for the graph parser, as ffmpeg's filter documentation describes.

/// `value` made safe as a filter option value inside a `-filter_complex` graph.
pub fn filter_value(value: &str) -> String {
    let option_level = escape(value, &['\\', '\'', ':']);
    escape(&option_level, &['\\', '\'', '[', ']', ',', ';'])
}

fn escape(value: &str, special: &[char]) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if special.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A number for a filter argument: plain decimal, no exponent, trailing zeros dropped.
pub fn num(value: f64) -> String {
    let text = format!("{value:.6}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text.is_empty() || text == "-" { "0".into() } else { text.into() }
}

/// Seconds of a duration for a filter argument.
pub fn secs(duration: std::time::Duration) -> String {
    num(duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_paths_and_separators_are_escaped() {
        assert_eq!(filter_value(r"C:\f.ttf"), r"C\\:\\\\f.ttf");
        assert_eq!(filter_value("a,b"), r"a\,b");
        assert_eq!(filter_value("plain/path.png"), "plain/path.png");
    }

    #[test]
    fn numbers_are_plain() {
        assert_eq!(num(0.5), "0.5");
        assert_eq!(num(2.0), "2");
        assert_eq!(num(0.0), "0");
        assert_eq!(num(1e-9), "0");
        assert_eq!(secs(std::time::Duration::from_millis(1500)), "1.5");
    }
}
