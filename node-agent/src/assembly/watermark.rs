//! The watermark burnt into the video: a PNG overlaid, or a text drawn in white with a soft
//! shadow, at a corner or the centre, its width a share of the video width.

use std::path::Path;

use super::escape::{filter_value, num};
use super::plan::{Position, Size, Watermark};

/// Roughly how wide a DejaVu Sans character is, as a share of the font size: turns the mark's
/// width (`scale`) into a font size. An estimate: drawtext cannot size text to a width.
const CHAR_WIDTH_EM: f64 = 0.6;

/// `x`/`y` expressions for a mark `mark_w`×`mark_h` (expressions of the filter) on the video.
fn place(
    position: Position,
    margin: u32,
    video_w: &str,
    video_h: &str,
    mark_w: &str,
    mark_h: &str,
) -> (String, String) {
    let m = margin;
    let right = format!("{video_w}-{mark_w}-{m}");
    let bottom = format!("{video_h}-{mark_h}-{m}");
    match position {
        Position::TopLeft => (m.to_string(), m.to_string()),
        Position::TopRight => (right, m.to_string()),
        Position::BottomLeft => (m.to_string(), bottom),
        Position::BottomRight => (right, bottom),
        Position::Center => (format!("({video_w}-{mark_w})/2"), format!("({video_h}-{mark_h})/2")),
    }
}

/// Overlay of the image input `image_input` on `[{from}]`, giving `[{to}]`.
pub fn image_filter(mark: &Watermark, image_input: usize, video: Size, from: &str, to: &str) -> String {
    // Even width, at least 2 px; the height follows the image's aspect.
    let width = ((f64::from(video.width) * mark.scale / 2.0).round() as u32 * 2).max(2);
    let (x, y) = place(mark.position, mark.margin_px, "main_w", "main_h", "overlay_w", "overlay_h");
    format!(
        "[{image_input}:v]format=rgba,scale={width}:-2,colorchannelmixer=aa={opacity}[wm];\
         [{from}][wm]overlay=x={x}:y={y}:eof_action=repeat[{to}]",
        opacity = num(mark.opacity),
    )
}

/// drawtext of the text in `text_file` (written by the caller: no escaping of the customer's
/// text, no `%{}` expansion) on `[{from}]`, giving `[{to}]`.
pub fn text_filter(
    mark: &Watermark,
    chars: usize,
    text_file: &Path,
    font: &Path,
    video: Size,
    from: &str,
    to: &str,
) -> String {
    let target_width = f64::from(video.width) * mark.scale;
    let size = (target_width / (CHAR_WIDTH_EM * chars.max(1) as f64)).round().max(6.0);
    let (x, y) = place(mark.position, mark.margin_px, "w", "h", "tw", "th");
    let shadow = (size / 20.0).round().max(1.0);
    format!(
        "[{from}]drawtext=fontfile={font}:textfile={text}:expansion=none:fontsize={size}:\
         fontcolor=white@{opacity}:shadowcolor=black@{shadow_opacity}:shadowx={shadow}:shadowy={shadow}:\
         x={x}:y={y}[{to}]",
        font = filter_value(&font.to_string_lossy()),
        text = filter_value(&text_file.to_string_lossy()),
        size = num(size),
        opacity = num(mark.opacity),
        shadow_opacity = num(mark.opacity * 0.5),
        shadow = num(shadow),
    )
}

#[cfg(test)]
mod tests {
    use super::super::plan::Mark;
    use super::*;

    fn mark(position: Position) -> Watermark {
        Watermark { mark: Mark::Text("FlatRender".into()), position, opacity: 0.5, scale: 0.25, margin_px: 8 }
    }

    #[test]
    fn an_image_bottom_right() {
        let size = Size { width: 320, height: 180 };
        assert_eq!(
            image_filter(&mark(Position::BottomRight), 2, size, "vcat", "vout"),
            "[2:v]format=rgba,scale=80:-2,colorchannelmixer=aa=0.5[wm];\
             [vcat][wm]overlay=x=main_w-overlay_w-8:y=main_h-overlay_h-8:eof_action=repeat[vout]"
        );
    }

    #[test]
    fn a_text_top_left_sized_by_the_width() {
        let size = Size { width: 1920, height: 1080 };
        let filter =
            text_filter(&mark(Position::TopLeft), 10, Path::new("/w/t.txt"), Path::new("/f/D.ttf"), size, "v", "o");
        // 1920 × 0.25 / (0.6 × 10 chars) = 80.
        assert_eq!(
            filter,
            "[v]drawtext=fontfile=/f/D.ttf:textfile=/w/t.txt:expansion=none:fontsize=80:fontcolor=white@0.5:\
             shadowcolor=black@0.25:shadowx=4:shadowy=4:x=8:y=8[o]"
        );
    }

    #[test]
    fn centred() {
        let (x, y) = place(Position::Center, 8, "w", "h", "tw", "th");
        assert_eq!((x.as_str(), y.as_str()), ("(w-tw)/2", "(h-th)/2"));
    }
}
