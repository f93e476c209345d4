//! Pixel sizes (`common.v1.Resolution`): 16..=7680 × 16..=4320, even (H.264 with 4:2:0 chroma
//! needs even sizes).

use flatrender_proto::flatrender::common::v1 as common_pb;

use crate::error::{RenderError, Result};

/// Smallest width or height.
pub const MIN_SIZE: u32 = 16;
/// Largest width.
pub const MAX_WIDTH: u32 = 7680;
/// Largest height.
pub const MAX_HEIGHT: u32 = 4320;

/// A valid frame size in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Resolution {
    width: u32,
    height: u32,
}

impl Resolution {
    /// From a message, naming `field` (e.g. `output.resolution`) in the error.
    pub fn from_pb(field: &str, resolution: &common_pb::Resolution) -> Result<Self> {
        let check = |name: &str, value: u32, max: u32| {
            if (MIN_SIZE..=max).contains(&value) && value.is_multiple_of(2) {
                Ok(value)
            } else {
                Err(RenderError::invalid(
                    format!("{field}.{name}"),
                    format!("must be an even number in {MIN_SIZE}..={max}"),
                ))
            }
        };
        Ok(Self {
            width: check("width", resolution.width, MAX_WIDTH)?,
            height: check("height", resolution.height, MAX_HEIGHT)?,
        })
    }

    /// A stored size (`width`/`height` columns); `None` when outside the API's limits.
    pub fn from_db(width: i32, height: i32) -> Option<Self> {
        let resolution =
            common_pb::Resolution { width: u32::try_from(width).ok()?, height: u32::try_from(height).ok()? };
        Self::from_pb("resolution", &resolution).ok()
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Width for an `integer` column (at most 7680, so always exact).
    pub fn width_i32(&self) -> i32 {
        i32::try_from(self.width).unwrap_or(i32::MAX)
    }

    /// Height for an `integer` column (at most 4320, so always exact).
    pub fn height_i32(&self) -> i32 {
        i32::try_from(self.height).unwrap_or(i32::MAX)
    }

    /// Whether it fits in `max_width` × `max_height` (plan caps, snapshot previews).
    pub fn fits_within(&self, max_width: u32, max_height: u32) -> bool {
        self.width <= max_width && self.height <= max_height
    }

    /// The protobuf form.
    pub fn to_pb(self) -> common_pb::Resolution {
        common_pb::Resolution { width: self.width, height: self.height }
    }
}

impl std::fmt::Display for Resolution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}×{}", self.width, self.height)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(width: u32, height: u32) -> Result<Resolution> {
        Resolution::from_pb("output.resolution", &common_pb::Resolution { width, height })
    }

    #[test]
    fn limits_are_inclusive_and_even() {
        assert_eq!(res(16, 16).unwrap().to_pb(), common_pb::Resolution { width: 16, height: 16 });
        assert_eq!(res(7680, 4320).unwrap().to_string(), "7680×4320");
        let width = "output.resolution.width: must be an even number in 16..=7680";
        let height = "output.resolution.height: must be an even number in 16..=4320";
        assert_eq!(res(14, 16).unwrap_err().to_string(), width);
        assert_eq!(res(7682, 16).unwrap_err().to_string(), width);
        assert_eq!(res(1921, 1080).unwrap_err().to_string(), width);
        assert_eq!(res(0, 0).unwrap_err().to_string(), width);
        assert_eq!(res(1920, 4322).unwrap_err().to_string(), height);
        assert_eq!(res(1920, 1081).unwrap_err().to_string(), height);
    }

    #[test]
    fn stored_sizes_read_back() {
        let hd = res(1920, 1080).unwrap();
        assert_eq!(Resolution::from_db(hd.width_i32(), hd.height_i32()), Some(hd));
        assert_eq!(Resolution::from_db(-2, 1080), None);
        assert!(hd.fits_within(3840, 2160) && !hd.fits_within(1280, 2160));
    }
}
