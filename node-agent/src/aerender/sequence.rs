//! Image-sequence names: aerender writes comp frame `n` of an output pattern `name_[#####].png`
//! as `name_0000n.png`. The driver finds the frames it expects by the same rule the simulator
//! writes them with.

/// The file of comp frame `frame` for an output `pattern`: every `[###…]` becomes the frame
/// number zero-padded to the count of `#`. A pattern without one gets `_[#####]` before its
/// extension, as After Effects does for sequences.
pub fn frame_path(pattern: &str, frame: u32) -> String {
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut rest = pattern;
    let mut replaced = false;
    while let Some(open) = rest.find("[#") {
        let after = &rest[open + 1..];
        let hashes = after.len() - after.trim_start_matches('#').len();
        if !after[hashes..].starts_with(']') {
            out.push_str(&rest[..open + 1]);
            rest = after;
            continue;
        }
        out.push_str(&rest[..open]);
        out.push_str(&format!("{frame:0hashes$}"));
        rest = &after[hashes + 1..];
        replaced = true;
    }
    out.push_str(rest);
    if replaced {
        return out;
    }
    let name_start = pattern.rfind(['/', '\\']).map_or(0, |i| i + 1);
    match pattern[name_start..].rfind('.') {
        Some(dot) if dot > 0 => {
            let dot = name_start + dot;
            format!("{}_{frame:05}{}", &pattern[..dot], &pattern[dot..])
        }
        _ => format!("{pattern}_{frame:05}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_take_the_comp_frame_number() {
        assert_eq!(frame_path("out/frame_[#####].png", 61), "out/frame_00061.png");
        assert_eq!(frame_path("f[###]_[#].png", 7), "f007_7.png");
        assert_eq!(frame_path("f_[##].png", 1234), "f_1234.png", "wider numbers are not cut");
        assert_eq!(frame_path("a[b]/[x#]_[##].png", 3), "a[b]/[x#]_03.png");
        assert_eq!(frame_path("out.v2/frame.png", 3), "out.v2/frame_00003.png");
        assert_eq!(frame_path("out/frame", 3), "out/frame_00003");
    }
}
