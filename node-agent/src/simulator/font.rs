//! The simulator's built-in bitmap font: 5x7 ASCII glyphs, scaled by whole pixels.
//!
//! After Effects draws text with real fonts; the simulator needs text that is legible in the
//! frames and reproducible exactly, so that a test can render the expected text the same way
//! ([`TextMask`]) and find it in a frame ([`crate::simulator::raster::Frame::find_text`]).

use crate::injection::Justification;
use crate::simulator::raster::Frame;

/// Ink columns of a glyph.
pub const GLYPH_WIDTH: u32 = 5;
/// Ink rows of a glyph.
pub const GLYPH_HEIGHT: u32 = 7;
/// Horizontal distance between glyph origins, in unscaled pixels (one blank column).
pub const ADVANCE: u32 = 6;
/// Vertical distance between lines, in unscaled pixels.
pub const LINE_HEIGHT: u32 = 10;

/// Glyphs for ASCII 32 (space) to 126 (`~`); each row's five low bits, bit 4 the leftmost.
const GLYPHS: [[u8; 7]; 95] = [
    [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000], // ' '
    [0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00000, 0b00100], // '!'
    [0b01010, 0b01010, 0b01010, 0b00000, 0b00000, 0b00000, 0b00000], // '"'
    [0b01010, 0b01010, 0b11111, 0b01010, 0b11111, 0b01010, 0b01010], // '#'
    [0b00100, 0b01111, 0b10100, 0b01110, 0b00101, 0b11110, 0b00100], // '$'
    [0b11000, 0b11001, 0b00010, 0b00100, 0b01000, 0b10011, 0b00011], // '%'
    [0b01100, 0b10010, 0b10100, 0b01000, 0b10101, 0b10010, 0b01101], // '&'
    [0b00100, 0b00100, 0b01000, 0b00000, 0b00000, 0b00000, 0b00000], // "'"
    [0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0b00100, 0b00010], // '('
    [0b01000, 0b00100, 0b00010, 0b00010, 0b00010, 0b00100, 0b01000], // ')'
    [0b00000, 0b00100, 0b10101, 0b01110, 0b10101, 0b00100, 0b00000], // '*'
    [0b00000, 0b00100, 0b00100, 0b11111, 0b00100, 0b00100, 0b00000], // '+'
    [0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b00100, 0b01000], // ','
    [0b00000, 0b00000, 0b00000, 0b11111, 0b00000, 0b00000, 0b00000], // '-'
    [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b01100], // '.'
    [0b00000, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b00000], // '/'
    [0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110], // '0'
    [0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110], // '1'
    [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111], // '2'
    [0b11111, 0b00010, 0b00100, 0b00010, 0b00001, 0b10001, 0b01110], // '3'
    [0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010], // '4'
    [0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110], // '5'
    [0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110], // '6'
    [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000], // '7'
    [0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110], // '8'
    [0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100], // '9'
    [0b00000, 0b01100, 0b01100, 0b00000, 0b01100, 0b01100, 0b00000], // ':'
    [0b00000, 0b01100, 0b01100, 0b00000, 0b01100, 0b00100, 0b01000], // ';'
    [0b00010, 0b00100, 0b01000, 0b10000, 0b01000, 0b00100, 0b00010], // '<'
    [0b00000, 0b00000, 0b11111, 0b00000, 0b11111, 0b00000, 0b00000], // '='
    [0b01000, 0b00100, 0b00010, 0b00001, 0b00010, 0b00100, 0b01000], // '>'
    [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b00000, 0b00100], // '?'
    [0b01110, 0b10001, 0b00001, 0b01101, 0b10101, 0b10101, 0b01110], // '@'
    [0b01110, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001], // 'A'
    [0b11110, 0b10001, 0b10001, 0b11110, 0b10001, 0b10001, 0b11110], // 'B'
    [0b01110, 0b10001, 0b10000, 0b10000, 0b10000, 0b10001, 0b01110], // 'C'
    [0b11100, 0b10010, 0b10001, 0b10001, 0b10001, 0b10010, 0b11100], // 'D'
    [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b11111], // 'E'
    [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b10000], // 'F'
    [0b01110, 0b10001, 0b10000, 0b10111, 0b10001, 0b10001, 0b01111], // 'G'
    [0b10001, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001], // 'H'
    [0b01110, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110], // 'I'
    [0b00111, 0b00010, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100], // 'J'
    [0b10001, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0b10001], // 'K'
    [0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b11111], // 'L'
    [0b10001, 0b11011, 0b10101, 0b10101, 0b10001, 0b10001, 0b10001], // 'M'
    [0b10001, 0b10001, 0b11001, 0b10101, 0b10011, 0b10001, 0b10001], // 'N'
    [0b01110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110], // 'O'
    [0b11110, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000, 0b10000], // 'P'
    [0b01110, 0b10001, 0b10001, 0b10001, 0b10101, 0b10010, 0b01101], // 'Q'
    [0b11110, 0b10001, 0b10001, 0b11110, 0b10100, 0b10010, 0b10001], // 'R'
    [0b01111, 0b10000, 0b10000, 0b01110, 0b00001, 0b00001, 0b11110], // 'S'
    [0b11111, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100], // 'T'
    [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110], // 'U'
    [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100], // 'V'
    [0b10001, 0b10001, 0b10001, 0b10101, 0b10101, 0b10101, 0b01010], // 'W'
    [0b10001, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b10001], // 'X'
    [0b10001, 0b10001, 0b01010, 0b00100, 0b00100, 0b00100, 0b00100], // 'Y'
    [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b11111], // 'Z'
    [0b01110, 0b01000, 0b01000, 0b01000, 0b01000, 0b01000, 0b01110], // '['
    [0b00000, 0b10000, 0b01000, 0b00100, 0b00010, 0b00001, 0b00000], // '\\'
    [0b01110, 0b00010, 0b00010, 0b00010, 0b00010, 0b00010, 0b01110], // ']'
    [0b00100, 0b01010, 0b10001, 0b00000, 0b00000, 0b00000, 0b00000], // '^'
    [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b11111], // '_'
    [0b01000, 0b00100, 0b00010, 0b00000, 0b00000, 0b00000, 0b00000], // '`'
    [0b00000, 0b00000, 0b01110, 0b00001, 0b01111, 0b10001, 0b01111], // 'a'
    [0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b11110], // 'b'
    [0b00000, 0b00000, 0b01110, 0b10000, 0b10000, 0b10001, 0b01110], // 'c'
    [0b00001, 0b00001, 0b01101, 0b10011, 0b10001, 0b10001, 0b01111], // 'd'
    [0b00000, 0b00000, 0b01110, 0b10001, 0b11111, 0b10000, 0b01110], // 'e'
    [0b00110, 0b01001, 0b01000, 0b11100, 0b01000, 0b01000, 0b01000], // 'f'
    [0b00000, 0b01111, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110], // 'g'
    [0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001], // 'h'
    [0b00100, 0b00000, 0b01100, 0b00100, 0b00100, 0b00100, 0b01110], // 'i'
    [0b00010, 0b00000, 0b00110, 0b00010, 0b00010, 0b10010, 0b01100], // 'j'
    [0b10000, 0b10000, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010], // 'k'
    [0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110], // 'l'
    [0b00000, 0b00000, 0b11010, 0b10101, 0b10101, 0b10001, 0b10001], // 'm'
    [0b00000, 0b00000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001], // 'n'
    [0b00000, 0b00000, 0b01110, 0b10001, 0b10001, 0b10001, 0b01110], // 'o'
    [0b00000, 0b00000, 0b11110, 0b10001, 0b11110, 0b10000, 0b10000], // 'p'
    [0b00000, 0b00000, 0b01101, 0b10011, 0b01111, 0b00001, 0b00001], // 'q'
    [0b00000, 0b00000, 0b10110, 0b11001, 0b10000, 0b10000, 0b10000], // 'r'
    [0b00000, 0b00000, 0b01110, 0b10000, 0b01110, 0b00001, 0b11110], // 's'
    [0b01000, 0b01000, 0b11100, 0b01000, 0b01000, 0b01001, 0b00110], // 't'
    [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b10011, 0b01101], // 'u'
    [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100], // 'v'
    [0b00000, 0b00000, 0b10001, 0b10001, 0b10101, 0b10101, 0b01010], // 'w'
    [0b00000, 0b00000, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001], // 'x'
    [0b00000, 0b00000, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110], // 'y'
    [0b00000, 0b00000, 0b11111, 0b00010, 0b00100, 0b01000, 0b11111], // 'z'
    [0b00010, 0b00100, 0b00100, 0b01000, 0b00100, 0b00100, 0b00010], // '{'
    [0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100], // '|'
    [0b01000, 0b00100, 0b00100, 0b00010, 0b00100, 0b00100, 0b01000], // '}'
    [0b00000, 0b00000, 0b01000, 0b10101, 0b00010, 0b00000, 0b00000], // '~'
];

/// Drawn for characters the font lacks: a hollow box, as a font fallback would.
const MISSING: [u8; 7] = [0b11111, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b11111];

/// The rows of `c`'s glyph.
pub fn glyph(c: char) -> [u8; 7] {
    let code = c as u32;
    if (32..=126).contains(&code) { GLYPHS[(code - 32) as usize] } else { MISSING }
}

/// Whole-pixel scale for a font size in pixels: a glyph cell is 8 rows tall unscaled.
pub fn scale_for(font_size: f64) -> u32 {
    if !font_size.is_finite() || font_size <= 8.0 {
        return 1;
    }
    // Capped far beyond any comp: a glyph 5 x 4096 pixels wide covers the largest.
    (font_size / 8.0).round().min(4096.0) as u32
}

/// The lines of a text: After Effects breaks lines at `\r`, the injection at `\n`.
fn lines(text: &str) -> Vec<Vec<char>> {
    text.replace("\r\n", "\n").split(['\n', '\r']).map(|line| line.chars().collect()).collect()
}

/// The layout of a text block: which pixels the text covers, relative to its top-left corner.
/// Computed from the glyphs on demand, so that a long text at a large size costs no memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextMask {
    lines: Vec<Vec<char>>,
    /// Left offset of each line within the block (justification), in pixels.
    offsets: Vec<u64>,
    scale: u64,
    width: u64,
    height: u64,
}

impl TextMask {
    /// Lays out `text` at `font_size` pixels, each line aligned within the block.
    pub fn new(text: &str, font_size: f64, justification: Justification) -> Self {
        let scale = u64::from(scale_for(font_size));
        let lines = lines(text);
        let line_width = |chars: usize| if chars == 0 { 0 } else { (chars as u64 * u64::from(ADVANCE) - 1) * scale };
        let width = lines.iter().map(|line| line_width(line.len())).max().unwrap_or(0);
        let height = (lines.len() as u64 - 1) * u64::from(LINE_HEIGHT) * scale + u64::from(GLYPH_HEIGHT) * scale;
        let offsets = lines
            .iter()
            .map(|line| {
                let slack = width - line_width(line.len());
                match justification {
                    Justification::Left => 0,
                    Justification::Center => slack / 2,
                    Justification::Right => slack,
                }
            })
            .collect();
        TextMask { lines, offsets, scale, width, height }
    }

    /// Width in pixels (saturating at `u32::MAX`).
    pub fn width(&self) -> u32 {
        u32::try_from(self.width).unwrap_or(u32::MAX)
    }

    /// Height in pixels (saturating at `u32::MAX`).
    pub fn height(&self) -> u32 {
        u32::try_from(self.height).unwrap_or(u32::MAX)
    }

    /// Whether the text covers the pixel at (`x`, `y`) of the block.
    pub fn is_set(&self, x: u32, y: u32) -> bool {
        let (x, y) = (u64::from(x), u64::from(y));
        let line_pitch = u64::from(LINE_HEIGHT) * self.scale;
        let Some(line) = self.lines.get((y / line_pitch) as usize) else { return false };
        let row = (y % line_pitch) / self.scale;
        let Some(x) = x.checked_sub(self.offsets[(y / line_pitch) as usize]) else { return false };
        let advance = u64::from(ADVANCE) * self.scale;
        let column = (x % advance) / self.scale;
        match line.get((x / advance) as usize) {
            Some(c) if row < u64::from(GLYPH_HEIGHT) && column < u64::from(GLYPH_WIDTH) => {
                glyph(*c)[row as usize] & (1 << (GLYPH_WIDTH as u64 - 1 - column)) != 0
            }
            _ => false,
        }
    }

    /// The covered pixels, row by row.
    pub fn inked(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        (0..self.height())
            .flat_map(move |y| (0..self.width()).map(move |x| (x, y)))
            .filter(|(x, y)| self.is_set(*x, *y))
    }

    /// Each inked glyph pixel as a `scale`-sized square: (left, top, side) within the block.
    fn ink_squares(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        let scale = self.scale;
        self.lines.iter().zip(&self.offsets).enumerate().flat_map(move |(row, (line, offset))| {
            let top = row as u64 * u64::from(LINE_HEIGHT) * scale;
            line.iter().enumerate().flat_map(move |(column, c)| {
                let origin = offset + column as u64 * u64::from(ADVANCE) * scale;
                let rows = glyph(*c);
                (0..GLYPH_HEIGHT as u64).flat_map(move |gy| {
                    (0..GLYPH_WIDTH as u64)
                        .filter(move |gx| rows[gy as usize] & (1 << (GLYPH_WIDTH as u64 - 1 - gx)) != 0)
                        .map(move |gx| (origin + gx * scale, top + gy * scale, scale))
                })
            })
        })
    }

    /// The block's left edge for an anchor at `x`: justification decides which edge `x` is.
    pub fn left_for_anchor(&self, x: i64, justification: Justification) -> i64 {
        let width = i64::try_from(self.width).unwrap_or(i64::MAX);
        match justification {
            Justification::Left => x,
            Justification::Center => x.saturating_sub(width / 2),
            Justification::Right => x.saturating_sub(width),
        }
    }
}

/// Draws `mask` with its block's top-left corner at (`left`, `top`) in `color`; what falls
/// outside the frame is clipped.
pub fn render_text(frame: &mut Frame, mask: &TextMask, left: i64, top: i64, color: [u8; 4], opacity: f64) {
    let (frame_width, frame_height) = (i64::from(frame.width()), i64::from(frame.height()));
    for (x, y, side) in mask.ink_squares() {
        let (x, y, side) = (left.saturating_add(x as i64), top.saturating_add(y as i64), side as i64);
        if x >= frame_width || y >= frame_height || x + side <= 0 || y + side <= 0 {
            continue;
        }
        frame.fill_rect(x, y, side, side, color, opacity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_printable_character_has_its_own_glyph() {
        let mut seen = std::collections::HashSet::new();
        for code in 33..=126u8 {
            assert!(seen.insert(glyph(code as char)), "glyph of {:?} repeats another", code as char);
        }
        assert_eq!(glyph('é'), MISSING);
        assert_eq!(glyph(' '), [0; 7]);
    }

    #[test]
    fn masks_scale_with_the_font_size_and_stack_lines() {
        let small = TextMask::new("Hi", 8.0, Justification::Left);
        assert_eq!((small.width(), small.height()), (11, 7));
        let big = TextMask::new("Hi", 24.0, Justification::Left);
        assert_eq!((big.width(), big.height()), (33, 21));
        // The H's top-left pixel is ink at every scale, the gap column is not.
        assert!(small.is_set(0, 0) && big.is_set(2, 2) && !big.is_set(15, 0));
        let two = TextMask::new("A\nBC", 8.0, Justification::Right);
        assert_eq!((two.width(), two.height()), (11, 17));
        // "A" is right-aligned over "BC".
        assert!(!two.is_set(0, 3) && two.is_set(6, 3));
    }

    #[test]
    fn huge_texts_cost_no_memory_and_clip() {
        let text = "W".repeat(10_000);
        let mask = TextMask::new(&text, 1e9, Justification::Center);
        assert_eq!(mask.height(), 7 * 4096);
        let mut frame = Frame::new(32, 16, [0, 0, 0]);
        render_text(&mut frame, &mask, -5, -5, [255, 255, 255, 255], 1.0);
        assert_eq!(frame.pixel(0, 0), Some([255, 255, 255]));
        let left = mask.left_for_anchor(0, Justification::Center);
        assert!(left < 0);
    }

    #[test]
    fn rendering_is_deterministic_and_uses_the_colour() {
        let draw = || {
            let mut frame = Frame::new(64, 32, [0, 0, 0]);
            let mask = TextMask::new("Ok 42", 8.0, Justification::Left);
            render_text(&mut frame, &mask, 2, 3, [255, 0, 0, 255], 1.0);
            frame
        };
        let frame = draw();
        assert_eq!(frame, draw());
        assert_eq!(frame.pixel(2 + 1, 3), Some([255, 0, 0]), "top of the O");
        assert_eq!(frame.find_text("Ok 42", 8.0, [255, 0, 0]), Some((2, 3)));
        assert_eq!(frame.find_text("Ok 43", 8.0, [255, 0, 0]), None);
    }
}
