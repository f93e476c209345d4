//! Pixels: the RGB frame the simulator composes, and PNG encoding and decoding of frames and
//! footage.

use std::io::Cursor;

use crate::injection::Justification;
use crate::simulator::font::TextMask;

/// A colour with straight alpha, 8 bits per channel.
pub type Rgba8 = [u8; 4];

/// An opaque RGB image, 8 bits per channel, rows top to bottom.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    width: u32,
    height: u32,
    rgb: Vec<u8>,
}

impl std::fmt::Debug for Frame {
    // Millions of bytes help nobody reading a failed assertion.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Frame({}x{})", self.width, self.height)
    }
}

impl Frame {
    /// A frame filled with `background`.
    pub fn new(width: u32, height: u32, background: [u8; 3]) -> Self {
        let rgb = background.repeat(width as usize * height as usize);
        Frame { width, height, rgb }
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    /// The RGB bytes, row by row.
    pub fn rgb(&self) -> &[u8] {
        &self.rgb
    }

    /// The pixel at (`x`, `y`), `None` outside the frame.
    pub fn pixel(&self, x: u32, y: u32) -> Option<[u8; 3]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = (y as usize * self.width as usize + x as usize) * 3;
        Some([self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]])
    }

    /// Paints `color` over the pixel at (`x`, `y`) with its alpha times `opacity` (0..=1);
    /// pixels outside the frame are ignored, as layers may extend past the comp.
    pub fn blend(&mut self, x: i64, y: i64, color: Rgba8, opacity: f64) {
        if x < 0 || y < 0 || x >= i64::from(self.width) || y >= i64::from(self.height) {
            return;
        }
        let alpha = alpha(color[3], opacity);
        if alpha == 0 {
            return;
        }
        let i = (y as usize * self.width as usize + x as usize) * 3;
        for (dst, src) in self.rgb[i..i + 3].iter_mut().zip(color) {
            *dst = ((u32::from(src) * alpha + u32::from(*dst) * (255 - alpha) + 127) / 255) as u8;
        }
    }

    /// Paints `color` over the rectangle; the part outside the frame is ignored.
    pub fn fill_rect(&mut self, x: i64, y: i64, width: i64, height: i64, color: Rgba8, opacity: f64) {
        let (x0, y0) = (x.max(0), y.max(0));
        let x1 = x.saturating_add(width).min(i64::from(self.width));
        let y1 = y.saturating_add(height).min(i64::from(self.height));
        if alpha(color[3], opacity) == 255 {
            // The common case, opaque solids, as row copies.
            for row in y0..y1 {
                let start = (row as usize * self.width as usize + x0 as usize) * 3;
                let end = (row as usize * self.width as usize + x1.max(x0) as usize) * 3;
                for pixel in self.rgb[start..end].chunks_exact_mut(3) {
                    pixel.copy_from_slice(&color[..3]);
                }
            }
            return;
        }
        for row in y0..y1 {
            for column in x0..x1 {
                self.blend(column, row, color, opacity);
            }
        }
    }

    /// This frame resampled to `width` x `height` (nearest neighbour, deterministic).
    pub fn resized(&self, width: u32, height: u32) -> Frame {
        if (width, height) == (self.width, self.height) {
            return self.clone();
        }
        let mut out = Frame::new(width, height, [0, 0, 0]);
        for y in 0..height {
            let sy = (u64::from(y) * u64::from(self.height) / u64::from(height.max(1))) as usize;
            for x in 0..width {
                let sx = (u64::from(x) * u64::from(self.width) / u64::from(width.max(1))) as usize;
                let (src, dst) = ((sy * self.width as usize + sx) * 3, (y as usize * width as usize + x as usize) * 3);
                out.rgb[dst..dst + 3].copy_from_slice(&self.rgb[src..src + 3]);
            }
        }
        out
    }

    /// The frame as a PNG, encoded for speed: benchmarks write thousands of frames.
    pub fn encode_png(&self) -> Result<Vec<u8>, png::EncodingError> {
        let mut bytes = Vec::with_capacity(self.rgb.len() / 8);
        let mut encoder = png::Encoder::new(&mut bytes, self.width, self.height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::Fast);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&self.rgb)?;
        writer.finish()?;
        Ok(bytes)
    }

    /// A PNG read back as an opaque frame (any alpha is dropped); tests read rendered frames so.
    pub fn decode_png(bytes: &[u8]) -> Result<Frame, png::DecodingError> {
        let footage = Footage::decode_png(bytes)?;
        let rgb = footage.rgba.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
        Ok(Frame { width: footage.width, height: footage.height, rgb })
    }

    /// Where `mask`'s ink appears in this frame painted exactly in `color`: the block's top-left
    /// corner, the first match row by row. `None` if nowhere (or the mask has no ink).
    pub fn find_mask(&self, mask: &TextMask, color: [u8; 3]) -> Option<(u32, u32)> {
        let inked: Vec<(u32, u32)> = mask.inked().collect();
        let (first_x, first_y) = *inked.first()?;
        if mask.width() > self.width || mask.height() > self.height {
            return None;
        }
        for top in 0..=self.height - mask.height() {
            for left in 0..=self.width - mask.width() {
                // Cheap rejection on the first inked pixel before checking them all.
                if self.pixel(left + first_x, top + first_y) != Some(color) {
                    continue;
                }
                if inked.iter().all(|(x, y)| self.pixel(left + x, top + y) == Some(color)) {
                    return Some((left, top));
                }
            }
        }
        None
    }

    /// Where `text` (left-justified, as [`crate::simulator::font`] draws it at `font_size`)
    /// appears in `color`.
    pub fn find_text(&self, text: &str, font_size: f64, color: [u8; 3]) -> Option<(u32, u32)> {
        self.find_mask(&TextMask::new(text, font_size, Justification::Left), color)
    }
}

/// Effective alpha 0..=255 of a colour's alpha times an opacity.
fn alpha(color_alpha: u8, opacity: f64) -> u32 {
    let opacity = if opacity.is_finite() { opacity.clamp(0.0, 1.0) } else { 1.0 };
    (f64::from(color_alpha) * opacity).round() as u32
}

/// A decoded footage image, RGBA 8 bits per channel.
#[derive(Clone, PartialEq, Eq)]
pub struct Footage {
    pub width: u32,
    pub height: u32,
    pub rgba: Vec<u8>,
}

impl std::fmt::Debug for Footage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Footage({}x{})", self.width, self.height)
    }
}

impl Footage {
    /// Any PNG (grey, palette, RGB, with or without alpha, 8 or 16 bits) as RGBA8.
    pub fn decode_png(bytes: &[u8]) -> Result<Footage, png::DecodingError> {
        let mut decoder = png::Decoder::new(Cursor::new(bytes));
        decoder.set_transformations(png::Transformations::normalize_to_color8());
        let mut reader = decoder.read_info()?;
        let size = reader.output_buffer_size().unwrap_or(0);
        let mut buf = vec![0; size];
        let info = reader.next_frame(&mut buf)?;
        let pixels = &buf[..info.buffer_size()];
        let rgba = match info.color_type {
            png::ColorType::Rgba => pixels.to_vec(),
            png::ColorType::Rgb | png::ColorType::Indexed => {
                pixels.chunks_exact(3).flat_map(|p| [p[0], p[1], p[2], 255]).collect()
            }
            png::ColorType::GrayscaleAlpha => pixels.chunks_exact(2).flat_map(|p| [p[0], p[0], p[0], p[1]]).collect(),
            png::ColorType::Grayscale => pixels.iter().flat_map(|g| [*g, *g, *g, 255]).collect(),
        };
        Ok(Footage { width: info.width, height: info.height, rgba })
    }

    /// The pixel at (`x`, `y`), transparent outside.
    pub fn pixel(&self, x: u32, y: u32) -> Rgba8 {
        if x >= self.width || y >= self.height {
            return [0; 4];
        }
        let i = (y as usize * self.width as usize + x as usize) * 4;
        [self.rgba[i], self.rgba[i + 1], self.rgba[i + 2], self.rgba[i + 3]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_a_png_round_trip() {
        let mut frame = Frame::new(7, 5, [10, 20, 30]);
        frame.fill_rect(1, 1, 3, 2, [200, 100, 0, 255], 1.0);
        frame.fill_rect(-5, 4, 100, 100, [0, 0, 255, 128], 1.0);
        let png = frame.encode_png().unwrap();
        assert_eq!(png, frame.encode_png().unwrap(), "encoding is deterministic");
        let back = Frame::decode_png(&png).unwrap();
        assert_eq!(back, frame);
        assert_eq!(back.pixel(1, 1), Some([200, 100, 0]));
        assert_eq!(back.pixel(0, 4), Some([5, 10, 143]), "half-transparent blue over the background");
        assert_eq!(back.pixel(7, 0), None);
    }

    #[test]
    fn resizing_samples_nearest_pixels() {
        let mut frame = Frame::new(4, 2, [0, 0, 0]);
        frame.fill_rect(2, 0, 2, 2, [255, 255, 255, 255], 1.0);
        let half = frame.resized(2, 1);
        assert_eq!((half.pixel(0, 0), half.pixel(1, 0)), (Some([0, 0, 0]), Some([255, 255, 255])));
    }

    #[test]
    fn garbage_is_not_a_png() {
        assert!(Footage::decode_png(b"not a png").is_err());
    }
}
