//! The validated forms of `SubmitRenderRequest` and `RequestSnapshotRequest`: everything the
//! protos call INVALID_ARGUMENT is refused here, with the field path first. What needs the
//! database or other services (plan caps, file existence and visibility, the template's digest
//! and compositions) is checked later by the API.

use flatrender_proto::flatrender::render::v1 as pb;
use prost::Message;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::{RenderError, Result};
use crate::model::audio::{self, AudioTrack, MAX_AUDIO_TRACKS};
use crate::model::digest::Sha256Digest;
use crate::model::frames::{FrameRange, parse_frames};
use crate::model::labels::Labels;
use crate::model::output::{ImageFormat, OutputSettings};
use crate::model::resolution::Resolution;
use crate::model::scene::SceneData;
use crate::model::snapshot_key::{SnapshotKeyInput, snapshot_cache_key, write_field};
use crate::model::validate::{self, MAX_NAME_CHARS};

/// Most segments in a job, before and after expanding multi-item frame specs.
pub const MAX_SEGMENTS: usize = 100;
/// Largest snapshot width (a preview).
pub const MAX_SNAPSHOT_WIDTH: u32 = 3840;
/// Largest snapshot height.
pub const MAX_SNAPSHOT_HEIGHT: u32 = 2160;

const DIGEST_VERSION: &[u8] = b"flatrender.submit_render.v1";

/// One stored segment (`render_job_segments` row; its position is its index in
/// [`RenderRequest::segments`]). A request segment whose frame spec has several items becomes
/// several of these, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct SegmentSpec {
    /// Index of the request segment it came from (for error messages: `segments[i]`).
    pub request_index: usize,
    /// Composition name, exact.
    pub composition: String,
    /// Its frames.
    pub range: FrameRange,
    /// The segment's own scene data (applied after the job-wide data).
    pub scene_data: SceneData,
    /// The catalogue scene shown.
    pub scene_id: Option<Uuid>,
}

/// A file a request refers to, with the field that names it (NOT_FOUND names the field).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRef {
    /// The request field, e.g. `segments[1].scene_data.edits[0].media.file_id`.
    pub field: String,
    /// The file.
    pub file_id: Uuid,
}

/// A validated `SubmitRenderRequest`.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderRequest {
    /// Template bundle.
    pub template_file_id: Uuid,
    /// Its digest.
    pub template_sha256: Sha256Digest,
    /// Catalogue template.
    pub template_id: Option<Uuid>,
    /// Catalogue template version (its metadata validates segments at submit).
    pub template_version_id: Option<Uuid>,
    /// Studio saved project.
    pub saved_project_id: Option<Uuid>,
    /// Stored segments in playback order: 1..=100.
    pub segments: Vec<SegmentSpec>,
    /// Job-wide scene data.
    pub scene_data: SceneData,
    /// Output settings as requested (defaults filled in; plan caps not yet applied).
    pub output: OutputSettings,
    /// Audio tracks: 0..=32.
    pub audio_tracks: Vec<AudioTrack>,
    /// Agrees with `audio_tracks`.
    pub has_voiceover: bool,
    /// The client's idempotency key.
    pub idempotency_key: String,
    /// Client labels.
    pub labels: Labels,
}

impl TryFrom<pb::SubmitRenderRequest> for RenderRequest {
    type Error = RenderError;

    fn try_from(request: pb::SubmitRenderRequest) -> Result<Self> {
        let template_file_id = validate::uuid("template_file_id", &request.template_file_id)?;
        let template_sha256 = Sha256Digest::from_field("template_sha256", &request.template_sha256)?;
        let segments = segments(request.segments)?;
        let scene_data = SceneData::from_pb("scene_data", request.scene_data)?;
        let output = OutputSettings::from_pb("output", request.output.as_ref())?;
        if request.audio_tracks.len() > MAX_AUDIO_TRACKS {
            return Err(RenderError::invalid("audio_tracks", format!("must have at most {MAX_AUDIO_TRACKS} tracks")));
        }
        let audio_tracks = request
            .audio_tracks
            .iter()
            .enumerate()
            .map(|(i, track)| AudioTrack::from_pb(&format!("audio_tracks[{i}]"), track))
            .collect::<Result<Vec<_>>>()?;
        if !audio_tracks.is_empty() && !output.format.has_audio() {
            return Err(RenderError::invalid("audio_tracks", "must be empty: a GIF export has no audio"));
        }
        audio::check_voiceover(request.has_voiceover, &audio_tracks)?;
        Ok(Self {
            template_file_id,
            template_sha256,
            segments,
            scene_data,
            output,
            audio_tracks,
            has_voiceover: request.has_voiceover,
            idempotency_key: validate::idempotency_key("idempotency_key", &request.idempotency_key)?,
            template_id: validate::optional_uuid("template_id", &request.template_id)?,
            template_version_id: validate::optional_uuid("template_version_id", &request.template_version_id)?,
            saved_project_id: validate::optional_uuid("saved_project_id", &request.saved_project_id)?,
            labels: Labels::from_pb("labels", &request.labels)?,
        })
    }
}

/// The request's segments expanded to one per frame item, with every check of `Segment`.
fn segments(requested: Vec<pb::Segment>) -> Result<Vec<SegmentSpec>> {
    if requested.is_empty() {
        return Err(RenderError::invalid("segments", "must have at least one segment"));
    }
    if requested.len() > MAX_SEGMENTS {
        return Err(RenderError::invalid("segments", format!("must have at most {MAX_SEGMENTS} segments")));
    }
    let mut stored = Vec::new();
    let mut frames_total: u64 = 0;
    for (i, segment) in requested.into_iter().enumerate() {
        let field = format!("segments[{i}]");
        let composition = validate::name(&format!("{field}.composition"), &segment.composition, MAX_NAME_CHARS)?;
        let frames_field = format!("{field}.frames");
        let ranges = parse_frames(&segment.frames).map_err(|e| RenderError::invalid(&frames_field, e.to_string()))?;
        if stored.len() + ranges.len() > MAX_SEGMENTS {
            return Err(RenderError::invalid(
                frames_field,
                format!("the job would have more than {MAX_SEGMENTS} segments (each frame item is one)"),
            ));
        }
        let scene_data = SceneData::from_pb(&format!("{field}.scene_data"), segment.scene_data)?;
        let scene_id = validate::optional_uuid(&format!("{field}.scene_id"), &segment.scene_id)?;
        for range in ranges {
            frames_total += u64::from(range.frame_count());
            stored.push(SegmentSpec {
                request_index: i,
                composition: composition.clone(),
                range,
                scene_data: scene_data.clone(),
                scene_id,
            });
        }
    }
    // `frames_total` is an int32 (proto) and an integer (database).
    if frames_total > i32::MAX as u64 {
        return Err(RenderError::invalid("segments", format!("must have at most {} frames in all", i32::MAX)));
    }
    Ok(stored)
}

impl RenderRequest {
    /// Frames in all segments (at most `i32::MAX`, checked at conversion).
    pub fn frames_total(&self) -> i32 {
        let total: u64 = self.segments.iter().map(|s| u64::from(s.range.frame_count())).sum();
        i32::try_from(total).unwrap_or(i32::MAX)
    }

    /// Every file the request names, with its field: the template, media of the job-wide and
    /// segment scene data, audio tracks. The API checks each exists and is visible.
    pub fn file_refs(&self) -> Vec<FileRef> {
        let mut refs = vec![FileRef { field: "template_file_id".into(), file_id: self.template_file_id }];
        let media = |prefix: &str, scene: &SceneData, refs: &mut Vec<FileRef>| {
            for (i, file_id) in scene.media_files() {
                refs.push(FileRef { field: format!("{prefix}.edits[{i}].media.file_id"), file_id });
            }
        };
        media("scene_data", &self.scene_data, &mut refs);
        let mut last_request_index = None;
        for segment in &self.segments {
            // Expanded segments of one request segment share its scene data: list it once.
            if last_request_index != Some(segment.request_index) {
                media(&format!("segments[{}].scene_data", segment.request_index), &segment.scene_data, &mut refs);
                last_request_index = Some(segment.request_index);
            }
        }
        for (i, track) in self.audio_tracks.iter().enumerate() {
            refs.push(FileRef { field: format!("audio_tracks[{i}].file_id"), file_id: track.file_id });
        }
        refs
    }

    /// The normalized request: segments expanded (one frame item each), ranges normalized,
    /// defaults filled in. Converting it back gives a request with the same digest.
    pub fn to_pb(&self) -> pb::SubmitRenderRequest {
        let optional = |id: Option<Uuid>| id.map(|id| id.to_string()).unwrap_or_default();
        pb::SubmitRenderRequest {
            template_file_id: self.template_file_id.to_string(),
            template_sha256: self.template_sha256.to_hex(),
            segments: self
                .segments
                .iter()
                .map(|s| pb::Segment {
                    composition: s.composition.clone(),
                    frames: s.range.to_string(),
                    scene_data: s.scene_data.to_pb_option(),
                    scene_id: optional(s.scene_id),
                })
                .collect(),
            scene_data: self.scene_data.to_pb_option(),
            output: Some(self.output.to_pb()),
            audio_tracks: self.audio_tracks.iter().map(AudioTrack::to_pb).collect(),
            has_voiceover: self.has_voiceover,
            idempotency_key: self.idempotency_key.clone(),
            template_id: optional(self.template_id),
            template_version_id: optional(self.template_version_id),
            saved_project_id: optional(self.saved_project_id),
            labels: self.labels.to_pb(),
        }
    }

    /// SHA-256 of the canonical request, without its idempotency key (`render_jobs.request_sha256`:
    /// the same key with a different digest is ALREADY_EXISTS). Requests that normalize alike
    /// ("1-10x4" and "1-9x4", an unset codec and the format's default) have equal digests.
    ///
    /// Layout: length-prefixed fields (4-byte big-endian length, then the bytes): the tag
    /// `flatrender.submit_render.v1`; the prost encoding of [`RenderRequest::to_pb`] with
    /// `idempotency_key` and `labels` cleared (prost writes maps in hash order); then each label
    /// in key order as two fields, key then value.
    pub fn request_digest(&self) -> Sha256Digest {
        let mut canonical = self.to_pb();
        canonical.idempotency_key.clear();
        canonical.labels.clear();
        let mut hasher = Sha256::new();
        write_field(&mut hasher, DIGEST_VERSION);
        write_field(&mut hasher, &canonical.encode_to_vec());
        for (key, value) in self.labels.iter() {
            write_field(&mut hasher, key.as_bytes());
            write_field(&mut hasher, value.as_bytes());
        }
        Sha256Digest::from_hasher(hasher)
    }
}

/// A validated `RequestSnapshotRequest`.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotRequest {
    /// Template bundle.
    pub template_file_id: Uuid,
    /// Its digest.
    pub template_sha256: Sha256Digest,
    /// Catalogue template version.
    pub template_version_id: Option<Uuid>,
    /// Composition name, exact.
    pub composition: String,
    /// Comp frame number, >= 0.
    pub frame: i32,
    /// The customer's (already merged) scene data.
    pub scene_data: SceneData,
    /// Image size, at most 3840×2160; `None` is the composition's size.
    pub resolution: Option<Resolution>,
    /// Image format (PNG when unset).
    pub format: ImageFormat,
}

impl TryFrom<pb::RequestSnapshotRequest> for SnapshotRequest {
    type Error = RenderError;

    fn try_from(request: pb::RequestSnapshotRequest) -> Result<Self> {
        let template_file_id = validate::uuid("template_file_id", &request.template_file_id)?;
        let template_sha256 = Sha256Digest::from_field("template_sha256", &request.template_sha256)?;
        let composition = validate::name("composition", &request.composition, MAX_NAME_CHARS)?;
        if request.frame < 0 {
            return Err(RenderError::invalid("frame", "must not be negative"));
        }
        let scene_data = SceneData::from_pb("scene_data", request.scene_data)?;
        let resolution = request.resolution.as_ref().map(|r| Resolution::from_pb("resolution", r)).transpose()?;
        if let Some(r) = resolution
            && !r.fits_within(MAX_SNAPSHOT_WIDTH, MAX_SNAPSHOT_HEIGHT)
        {
            return Err(RenderError::invalid(
                "resolution",
                format!("must be at most {MAX_SNAPSHOT_WIDTH}×{MAX_SNAPSHOT_HEIGHT} for a snapshot"),
            ));
        }
        Ok(Self {
            template_file_id,
            template_sha256,
            composition,
            frame: request.frame,
            scene_data,
            resolution,
            format: ImageFormat::from_field("format", request.format)?,
            template_version_id: validate::optional_uuid("template_version_id", &request.template_version_id)?,
        })
    }
}

impl SnapshotRequest {
    /// The snapshot cache key.
    pub fn cache_key(&self) -> Sha256Digest {
        snapshot_cache_key(&SnapshotKeyInput {
            template_sha256: &self.template_sha256,
            composition: &self.composition,
            frame: self.frame,
            resolution: self.resolution,
            format: self.format,
            scene_data: &self.scene_data,
        })
    }

    /// Every file the request names, with its field.
    pub fn file_refs(&self) -> Vec<FileRef> {
        let mut refs = vec![FileRef { field: "template_file_id".into(), file_id: self.template_file_id }];
        for (i, file_id) in self.scene_data.media_files() {
            refs.push(FileRef { field: format!("scene_data.edits[{i}].media.file_id"), file_id });
        }
        refs
    }
}

#[cfg(test)]
mod tests;
