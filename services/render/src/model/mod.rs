//! The render orchestrator's domain model: pure types, validated at the edge
//! (`TryFrom<pb::...>` / `from_pb(field, ...)`, errors naming the field path), with their
//! protobuf forms, their database texts (the CHECK lists of `migrations/12_render_jobs.sql`) and
//! the JSON stored in the jsonb columns. No database access and no gRPC handlers live here.
//!
//! - [`frames`]: frame ranges and the `Segment.frames` grammar; [`chunking`]: segments into
//!   chunks.
//! - [`scene`]: the customer's scene data; [`output`], [`resolution`], [`audio`], [`labels`]:
//!   the rest of a job's request.
//! - [`states`], [`errors`]: lifecycles, task vocabulary, error classes and codes.
//! - [`snapshot_key`]: the snapshot cache key; [`submit`]: validated SubmitRender and
//!   RequestSnapshot requests and the request digest.
//! - [`validate`], [`digest`]: single-field checks and SHA-256 digests; [`text`]: agents' free
//!   text made storable (no NUL, bounded); [`node_paths`]: agents' error text without the
//!   node's directory layout, for customers.

pub mod audio;
pub mod chunking;
mod db_enum;
pub mod digest;
pub mod errors;
pub mod frames;
pub mod labels;
pub mod node_paths;
pub mod output;
pub mod resolution;
pub mod scene;
pub mod snapshot_key;
pub mod states;
pub mod submit;
#[cfg(test)]
pub(crate) mod testing;
pub mod text;
pub mod validate;

pub use audio::{AudioTrack, AudioTrackKind, check_voiceover};
pub use chunking::{Chunk, ChunkPolicy, MAX_FRAMES_PER_TASK, frames_for_target, split, split_segments};
pub use digest::Sha256Digest;
pub use errors::{ErrorClass, ErrorCode, ErrorInfo};
pub use frames::{FrameRange, FrameSpecError, format_frames, parse_frames};
pub use labels::Labels;
pub use node_paths::{strip_node_names, strip_node_paths};
pub use output::{ImageFormat, OutputFormat, OutputSettings, Quality, VideoCodec};
pub use resolution::Resolution;
pub use scene::{
    Color, Edit, LayerEdit, LayerSelector, MediaFit, MediaReplacement, PropertyEdit, PropertyValue, SceneData,
    TextEdit, TextJustification, Vector,
};
pub use snapshot_key::{SnapshotKeyInput, snapshot_cache_key};
pub use states::{
    ChunkState, ExportState, JobState, Lane, RepairReason, SnapshotState, TaskKind, TaskOutcome, TaskPhase,
};
pub use submit::{FileRef, RenderRequest, SegmentSpec, SnapshotRequest};
