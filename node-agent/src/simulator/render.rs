//! Composing frames: the comp's layers drawn once into a base image, then per frame a small
//! frame-dependent overlay (a progress bar and the frame number) so that every frame differs.
//! Everything is integer arithmetic on fixed inputs: the same inputs give the same pixels.

use std::path::{Path, PathBuf};

use crate::injection::MediaFit;
use crate::simulator::font::{self, TextMask};
use crate::simulator::project::{Composition, Content, ImageLayer, Layer};
use crate::simulator::raster::{Footage, Frame, Rgba8};

/// Colour of the per-frame overlay.
pub const OVERLAY: Rgba8 = [230, 230, 230, 255];

/// Where a footage layer's file is: relative paths are in the bundle.
pub fn footage_path(bundle: &Path, image: &ImageLayer) -> PathBuf {
    bundle.join(&image.path)
}

/// The footage files of the enabled layers of `comp` that do not exist.
pub fn missing_footage(comp: &Composition, bundle: &Path) -> Vec<PathBuf> {
    comp.layers
        .iter()
        .filter(|layer| layer.enabled)
        .filter_map(|layer| match &layer.content {
            Content::Image(image) => Some(footage_path(bundle, image)),
            _ => None,
        })
        .filter(|path| !path.is_file())
        .collect()
}

/// A comp ready to render: its static layers composed at the output size.
#[derive(Debug)]
pub struct Scene {
    base: Frame,
    duration: u32,
}

impl Scene {
    /// Draws `comp`'s layers (bottom layer first) and scales the result to `output_size`.
    /// Footage in `missing` is drawn as colour bars, as with `-continueOnMissingFootage`.
    pub fn compose(comp: &Composition, bundle: &Path, output_size: (u32, u32), missing: &[PathBuf]) -> Scene {
        let [r, g, b, _] = comp.background.0;
        let mut frame = Frame::new(comp.width, comp.height, [r, g, b]);
        for layer in comp.layers.iter().rev().filter(|layer| layer.enabled) {
            draw_layer(&mut frame, comp, bundle, layer, missing);
        }
        Scene { base: frame.resized(output_size.0, output_size.1), duration: comp.duration }
    }

    /// Comp frame `frame`: the base plus a progress bar along the bottom edge and the frame
    /// number above its left end.
    pub fn frame(&self, frame: u32) -> Frame {
        let mut out = self.base.clone();
        let (width, height) = (i64::from(out.width()), i64::from(out.height()));
        let bar = (height / 90).max(2);
        let filled = width * (i64::from(frame) + 1) / i64::from(self.duration.max(1));
        out.fill_rect(0, height - bar, filled, bar, OVERLAY, 1.0);
        let label = TextMask::new(&frame.to_string(), 8.0, crate::injection::Justification::Left);
        font::render_text(&mut out, &label, 2, height - bar - 2 - i64::from(label.height()), OVERLAY, 1.0);
        out
    }
}

fn draw_layer(frame: &mut Frame, comp: &Composition, bundle: &Path, layer: &Layer, missing: &[PathBuf]) {
    let opacity = layer.opacity / 100.0;
    let whole = [0, 0, i64::from(comp.width), i64::from(comp.height)];
    match &layer.content {
        Content::Solid(solid) => {
            let [x, y, w, h] = solid.rect.unwrap_or(whole);
            frame.fill_rect(x, y, w, h, solid.color.0, opacity);
        }
        Content::Text(text) => {
            let mask = TextMask::new(&text.text, text.font_size, text.justification);
            let left = mask.left_for_anchor(text.position[0].round() as i64, text.justification);
            font::render_text(frame, &mask, left, text.position[1].round() as i64, text.fill.0, opacity);
        }
        Content::Image(image) => {
            let rect = image.rect.unwrap_or(whole);
            let path = footage_path(bundle, image);
            if missing.contains(&path) || !path.is_file() {
                colour_bars(frame, rect, opacity);
                return;
            }
            match std::fs::read(&path).ok().and_then(|bytes| Footage::decode_png(&bytes).ok()) {
                Some(footage) => draw_footage(frame, &footage, rect, image.fit, opacity),
                None => placeholder(frame, rect, opacity),
            }
        }
    }
}

/// Draws `footage` fitted into `rect` (nearest neighbour), clipped to `rect`.
fn draw_footage(frame: &mut Frame, footage: &Footage, rect: [i64; 4], fit: MediaFit, opacity: f64) {
    let [x, y, w, h] = rect;
    let (iw, ih) = (i64::from(footage.width), i64::from(footage.height));
    if w <= 0 || h <= 0 || iw == 0 || ih == 0 {
        return;
    }
    // The drawn size, in integers: contain/cover compare w/iw with h/ih by cross-multiplying.
    let (dw, dh) = match fit {
        MediaFit::Stretch => (w, h),
        MediaFit::None => (iw, ih),
        MediaFit::Contain if w * ih <= h * iw => (w, ih * w / iw),
        MediaFit::Contain => (iw * h / ih, h),
        MediaFit::Cover if w * ih >= h * iw => (w, ih * w / iw),
        MediaFit::Cover => (iw * h / ih, h),
    };
    let (dw, dh) = (dw.max(1), dh.max(1));
    let (dx, dy) = (x + (w - dw) / 2, y + (h - dh) / 2);
    let clip_x = (x.max(dx).max(0), (x + w).min(dx + dw).min(i64::from(frame.width())));
    let clip_y = (y.max(dy).max(0), (y + h).min(dy + dh).min(i64::from(frame.height())));
    for py in clip_y.0..clip_y.1 {
        let sy = ((py - dy) * ih / dh) as u32;
        for px in clip_x.0..clip_x.1 {
            let sx = ((px - dx) * iw / dw) as u32;
            frame.blend(px, py, footage.pixel(sx, sy), opacity);
        }
    }
}

/// Footage the simulator cannot draw (not a PNG): a grey box with a lighter frame.
fn placeholder(frame: &mut Frame, [x, y, w, h]: [i64; 4], opacity: f64) {
    frame.fill_rect(x, y, w, h, [192, 192, 192, 255], opacity);
    frame.fill_rect(x + 4, y + 4, w - 8, h - 8, [128, 128, 128, 255], opacity);
}

/// What After Effects draws for missing footage with `-continueOnMissingFootage`.
fn colour_bars(frame: &mut Frame, [x, y, w, h]: [i64; 4], opacity: f64) {
    const BARS: [Rgba8; 7] = [
        [191, 191, 191, 255],
        [191, 191, 0, 255],
        [0, 191, 191, 255],
        [0, 191, 0, 255],
        [191, 0, 191, 255],
        [191, 0, 0, 255],
        [0, 0, 191, 255],
    ];
    for (i, color) in BARS.iter().enumerate() {
        let (left, right) = (x + w * i as i64 / 7, x + w * (i as i64 + 1) / 7);
        frame.fill_rect(left, y, right - left, h, *color, opacity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulator::project::Project;

    fn comp(layers: &str) -> Composition {
        let json = format!(
            r##"{{"compositions": [{{"name": "C", "width": 160, "height": 90, "fps": 30, "duration": 10,
                "background": "#000040", "layers": {layers}}}]}}"##
        );
        Project::from_json(&json).unwrap().compositions.remove(0)
    }

    #[test]
    fn layers_stack_with_layer_one_on_top() {
        let comp = comp(
            r##"[{"name": "T", "kind": "text", "text": "AB", "font_size": 16, "fill": "#ff0000", "position": [10, 10]},
                 {"name": "S", "kind": "solid", "color": "#00ff00", "rect": [0, 0, 80, 40]},
                 {"name": "Off", "kind": "solid", "color": "#ffffff", "enabled": false}]"##,
        );
        let frame = Scene::compose(&comp, Path::new("."), (160, 90), &[]).frame(0);
        assert_eq!(frame.find_text("AB", 16.0, [255, 0, 0]), Some((10, 10)));
        assert_eq!(frame.pixel(79, 39), Some([0, 255, 0]));
        assert_eq!(frame.pixel(100, 20), Some([0, 0, 64]), "the disabled white solid is not drawn");
    }

    #[test]
    fn frames_differ_and_repeat_exactly() {
        let comp = comp("[]");
        let scene = Scene::compose(&comp, Path::new("."), (160, 90), &[]);
        assert_ne!(scene.frame(0), scene.frame(1));
        assert_eq!(scene.frame(3), scene.frame(3));
        assert_eq!(scene.frame(9).pixel(159, 89), Some([230, 230, 230]), "the bar is full on the last frame");
        let small = Scene::compose(&comp, Path::new("."), (64, 36), &[]).frame(0);
        assert_eq!((small.width(), small.height()), (64, 36));
    }

    #[test]
    fn footage_is_drawn_fitted_or_replaced_by_bars() {
        let dir = tempfile::tempdir().unwrap();
        let mut logo = Frame::new(4, 2, [255, 0, 255]);
        logo.fill_rect(0, 0, 2, 2, [0, 255, 255, 255], 1.0);
        std::fs::write(dir.path().join("logo.png"), logo.encode_png().unwrap()).unwrap();
        std::fs::write(dir.path().join("clip.mov"), b"not a png").unwrap();
        let comp = comp(
            r##"[{"name": "L", "kind": "image", "path": "logo.png", "rect": [0, 0, 40, 40], "fit": "contain"},
                 {"name": "M", "kind": "image", "path": "clip.mov", "rect": [100, 0, 40, 40]},
                 {"name": "X", "kind": "image", "path": "gone.png", "rect": [0, 50, 70, 10]}]"##,
        );
        assert_eq!(missing_footage(&comp, dir.path()), [dir.path().join("gone.png")]);
        let frame = Scene::compose(&comp, dir.path(), (160, 90), &[]).frame(0);
        // Contain: 40x20 centred vertically in the 40x40 box, left half cyan, right magenta.
        assert_eq!(frame.pixel(5, 15), Some([0, 255, 255]));
        assert_eq!(frame.pixel(35, 15), Some([255, 0, 255]));
        assert_eq!(frame.pixel(5, 5), Some([0, 0, 64]), "outside the fitted image");
        assert_eq!(frame.pixel(120, 20), Some([128, 128, 128]), "placeholder for a non-PNG");
        assert_eq!(frame.pixel(5, 55), Some([191, 191, 191]), "colour bars for missing footage");
    }
}
