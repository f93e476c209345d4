//! The frames of each segment: checked present before ffmpeg runs (it silently stops at the
//! first gap), and listed for ffmpeg's concat demuxer.

use std::path::Path;

use super::AssemblyError;
use super::plan::Segment;

/// Every frame of every segment exists and is not empty; else the first one that is not.
pub fn check_frames(segments: &[Segment]) -> Result<(), AssemblyError> {
    for (segment_index, segment) in segments.iter().enumerate() {
        for (index, path) in segment.frames.iter().enumerate() {
            let present = std::fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.len() > 0);
            if !present {
                return Err(AssemblyError::MissingFrame {
                    segment: segment_index,
                    label: segment.label.clone(),
                    index,
                    path: path.clone(),
                });
            }
        }
    }
    Ok(())
}

/// An `ffconcat` list of the frames. Timing is not taken from it: the filter graph re-stamps
/// each frame by its index at the segment's rate.
pub fn concat_list(frames: &[impl AsRef<Path>]) -> String {
    let mut list = String::from("ffconcat version 1.0\n");
    for frame in frames {
        // Quoted; a quote inside is closed, escaped and reopened.
        let path = frame.as_ref().to_string_lossy().replace('\'', r"'\''");
        list.push_str(&format!("file '{path}'\n"));
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_quotes_paths() {
        let list = concat_list(&["/a/b.png", "/it's/c.png"]);
        assert_eq!(list, "ffconcat version 1.0\nfile '/a/b.png'\nfile '/it'\\''s/c.png'\n");
    }
}
