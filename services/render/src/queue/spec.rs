//! What an AssignTask tells the agent, built from the leased row and its job.
//!
//! Scene data goes out merged, as the protocol asks: a chunk's is the job-wide data followed by
//! its segment's ([`SceneData::merge`]); a snapshot's is its own.
//!
//! Every file an assignment names goes out as an `ObjectRef` with the digest, size and content
//! type recorded when the request was checked (`render.file_facts`, [`Inputs`]); the same list
//! ([`TaskRow::input_files`]) is what `DownloadObject` lets the task's node fetch.
//!
//! An assembly of a job whose plan has a watermark (`render_jobs.watermark`) carries the
//! configured mark ([`WatermarkSettings`]): the image when one is configured and its facts are
//! recorded, else the text; the exports of such plans are never without one.

use std::collections::HashMap;

use flatrender_proto::flatrender::agent::v1 as agent_pb;
use flatrender_proto::flatrender::common::v1::Resolution;
use flatrender_proto::flatrender::render::v1 as pb;
use sqlx::postgres::PgRow;
use time::OffsetDateTime;
use uuid::Uuid;

use super::wire::{id_text, timestamp};
use crate::model::{Lane, SceneData};
use crate::settings::{WatermarkPosition, WatermarkSettings};

/// The columns of a leased task and its job that the assignment needs.
#[derive(Clone, Debug)]
pub struct TaskRow {
    /// Task id.
    pub id: Uuid,
    /// Lane.
    pub lane: Lane,
    /// Tenant.
    pub tenant_id: Uuid,
    /// Render job.
    pub job_id: Option<Uuid>,
    /// Snapshot.
    pub snapshot_id: Option<Uuid>,
    /// Composition.
    pub composition_name: Option<String>,
    /// Frame range.
    pub frames: Option<(i32, i32, i32)>,
    /// The template bundle's file.
    pub template_file_id: Option<Uuid>,
    /// The template bundle's digest.
    pub template_sha256: Option<Vec<u8>>,
    /// Segment index in the job.
    pub segment_index: Option<i32>,
    /// Output size.
    pub width: Option<i32>,
    /// Output size.
    pub height: Option<i32>,
    /// Output frame rate (jobs).
    pub fps: Option<f64>,
    /// `render_jobs.output_quality`.
    pub quality: Option<String>,
    /// `render_jobs.output_format`.
    pub format: Option<String>,
    /// `render_jobs.output_codec`.
    pub codec: Option<String>,
    /// What the customer's data makes of the template (merged; empty for assemblies).
    pub scene_data: SceneData,
    /// Whether the job's plan burns a watermark into the export.
    pub watermark: bool,
}

impl TaskRow {
    /// The files an assignment of this task names, in order, without duplicates: the template
    /// bundle and the media of the scene data for an aerender task; the sources of `audio`
    /// (the job's tracks) and, for a watermarked job, the `watermark_image` for an assembly.
    pub fn input_files(&self, audio: &[pb::AudioTrack], watermark_image: Option<Uuid>) -> Vec<Uuid> {
        let mut files: Vec<Uuid> = Vec::new();
        let mut add = |file: Uuid| {
            if !files.contains(&file) {
                files.push(file);
            }
        };
        if self.lane == Lane::Assemble {
            audio.iter().filter_map(|track| Uuid::try_parse(&track.file_id).ok()).for_each(&mut add);
            watermark_image.filter(|_| self.watermark).into_iter().for_each(&mut add);
        } else {
            self.template_file_id.into_iter().for_each(&mut add);
            self.scene_data.media_file_ids().into_iter().for_each(&mut add);
        }
        files
    }

    /// The query reading these columns for the tasks `$1` (uuid[]).
    pub const QUERY: &'static str = "
        SELECT f.id, f.lane, f.tenant_id, f.job_id, f.snapshot_id, f.composition_name,
               f.frame_start, f.frame_end, f.frame_step, f.template_sha256,
               coalesce(j.template_file_id, s.template_file_id, f.probe_template_file_id) AS template_file_id,
               seg.position AS segment_index,
               coalesce(s.width, j.output_width) AS width, coalesce(s.height, j.output_height) AS height,
               j.output_fps AS fps, j.output_quality AS quality, j.output_format AS format, j.output_codec AS codec,
               j.scene_data AS job_scene_data, seg.scene_data AS segment_scene_data,
               s.scene_data AS snapshot_scene_data, coalesce(j.watermark, false) AS watermark
          FROM render.frame_jobs f
          LEFT JOIN render.render_jobs j ON j.id = f.job_id
          LEFT JOIN render.render_job_segments seg ON seg.id = f.segment_id
          LEFT JOIN render.snapshots s ON s.id = f.snapshot_id
         WHERE f.id = ANY($1)";

    /// Reads a row of [`TaskRow::QUERY`].
    pub fn from_row(row: &PgRow) -> sqlx::Result<Self> {
        use sqlx::Row as _;
        let lane: String = row.try_get("lane")?;
        let lane = Lane::from_db(&lane).ok_or_else(|| sqlx::Error::Decode(format!("unknown lane {lane:?}").into()))?;
        let start: Option<i32> = row.try_get("frame_start")?;
        let end: Option<i32> = row.try_get("frame_end")?;
        let step: i32 = row.try_get("frame_step")?;
        let scene = |column: &str| -> sqlx::Result<Option<SceneData>> {
            let value: Option<serde_json::Value> = row.try_get(column)?;
            value
                .map(|value| SceneData::from_json(&value))
                .transpose()
                .map_err(|e| sqlx::Error::Decode(format!("{column}: {e}").into()))
        };
        let scene_data = match lane {
            Lane::Assemble => SceneData::default(),
            _ => match (scene("snapshot_scene_data")?, scene("job_scene_data")?, scene("segment_scene_data")?) {
                (Some(snapshot), _, _) => snapshot,
                (None, Some(job), Some(segment)) => SceneData::merge(&job, &segment),
                (None, job, segment) => job.or(segment).unwrap_or_default(),
            },
        };
        Ok(Self {
            id: row.try_get("id")?,
            lane,
            tenant_id: row.try_get("tenant_id")?,
            job_id: row.try_get("job_id")?,
            snapshot_id: row.try_get("snapshot_id")?,
            composition_name: row.try_get("composition_name")?,
            frames: start.zip(end).map(|(s, e)| (s, e, step)),
            template_file_id: row.try_get("template_file_id")?,
            template_sha256: row.try_get("template_sha256")?,
            segment_index: row.try_get("segment_index")?,
            width: row.try_get("width")?,
            height: row.try_get("height")?,
            fps: row.try_get("fps")?,
            quality: row.try_get("quality")?,
            format: row.try_get("format")?,
            codec: row.try_get("codec")?,
            scene_data,
            watermark: row.try_get("watermark")?,
        })
    }
}

/// A segment of a job, for its assembly.
#[derive(Clone, Debug)]
pub struct SegmentRow {
    /// Index in the job.
    pub position: i32,
    /// Composition.
    pub composition_name: String,
    /// First frame.
    pub frame_start: i32,
    /// Last frame.
    pub frame_end: i32,
    /// Step.
    pub frame_step: i32,
    /// Frames in it.
    pub frame_count: i32,
}

/// What the agent verifies about an input file (`render.file_facts`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputFacts {
    /// SHA-256, 32 bytes.
    pub sha256: Vec<u8>,
    /// Size in bytes.
    pub size_bytes: i64,
    /// MIME type.
    pub content_type: String,
}

/// The files of a batch of assignments: facts by file id, audio tracks by job.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// Facts of the files named, by id (absent for files recorded before facts were kept).
    pub facts: HashMap<Uuid, InputFacts>,
    /// The audio tracks of assembled jobs, in mixing order.
    pub audio: HashMap<Uuid, Vec<pb::AudioTrack>>,
}

impl Inputs {
    /// Reads the facts of `files` from `render.file_facts` into `self`.
    pub async fn load_facts(&mut self, conn: &mut sqlx::PgConnection, files: &[Uuid]) -> sqlx::Result<()> {
        if files.is_empty() {
            return Ok(());
        }
        let rows: Vec<(Uuid, Vec<u8>, i64, String)> = sqlx::query_as(
            "SELECT file_id, sha256, size_bytes, content_type FROM render.file_facts WHERE file_id = ANY($1)",
        )
        .bind(files)
        .fetch_all(conn)
        .await?;
        for (id, sha256, size_bytes, content_type) in rows {
            self.facts.insert(id, InputFacts { sha256, size_bytes, content_type });
        }
        Ok(())
    }

    /// The ObjectRef of `file`: its facts when known, else `sha256` (hex) as the request gave
    /// it and `content_type` as the default.
    fn object(&self, file: Uuid, sha256: Option<&[u8]>, content_type: &str) -> agent_pb::ObjectRef {
        let facts = self.facts.get(&file);
        agent_pb::ObjectRef {
            file_id: file.to_string(),
            sha256: facts.map(|f| f.sha256.as_slice()).or(sha256).map(hex::encode).unwrap_or_default(),
            size_bytes: facts.map_or(0, |f| u64::try_from(f.size_bytes).unwrap_or(0)),
            content_type: facts
                .map(|f| f.content_type.clone())
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| content_type.to_owned()),
            ..Default::default()
        }
    }
}

/// Files recorded by a submit (or a snapshot request), as `render.file_facts` keeps them.
pub async fn record_facts(
    conn: &mut sqlx::PgConnection,
    files: &HashMap<Uuid, crate::files::FileFacts>,
) -> sqlx::Result<()> {
    if files.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = files.keys().copied().collect();
    let digests: Vec<Vec<u8>> = ids.iter().map(|id| files[id].sha256.as_bytes().to_vec()).collect();
    let sizes: Vec<i64> = ids.iter().map(|id| i64::try_from(files[id].size_bytes).unwrap_or(i64::MAX)).collect();
    let types: Vec<String> = ids.iter().map(|id| files[id].content_type.chars().take(255).collect()).collect();
    // Files never change, so the first record of an id stays right.
    sqlx::query(
        "INSERT INTO render.file_facts (file_id, sha256, size_bytes, content_type)
         SELECT * FROM unnest($1::uuid[], $2::bytea[], $3::bigint[], $4::text[])
         ON CONFLICT (file_id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&digests)
    .bind(&sizes)
    .bind(&types)
    .execute(conn)
    .await?;
    Ok(())
}

/// The lease part of an assignment.
#[derive(Clone, Copy, Debug)]
pub struct LeaseTerms {
    /// Fencing token.
    pub lease_epoch: i64,
    /// Expiry (server clock).
    pub expires_at: OffsetDateTime,
    /// 1-based ordinal of this lease.
    pub attempt: i32,
}

fn resolution(row: &TaskRow) -> Option<Resolution> {
    match (row.width, row.height) {
        (Some(w), Some(h)) if w > 0 && h > 0 => Some(Resolution { width: w as u32, height: h as u32 }),
        _ => None,
    }
}

fn render_settings_template(quality: Option<&str>) -> &'static str {
    match quality {
        Some("draft") => "Draft Settings",
        _ => "Best Settings",
    }
}

fn output_settings(row: &TaskRow) -> pb::OutputSettings {
    let format = match row.format.as_deref() {
        Some("mov") => pb::OutputFormat::Mov,
        Some("webm") => pb::OutputFormat::Webm,
        Some("gif") => pb::OutputFormat::Gif,
        _ => pb::OutputFormat::Mp4,
    };
    let codec = row
        .codec
        .as_deref()
        .and_then(|c| pb::VideoCodec::from_str_name(&format!("VIDEO_CODEC_{}", c.to_uppercase())))
        .unwrap_or(pb::VideoCodec::H264);
    let quality = row
        .quality
        .as_deref()
        .and_then(|q| pb::Quality::from_str_name(&format!("QUALITY_{}", q.to_uppercase())))
        .unwrap_or(pb::Quality::Standard);
    pb::OutputSettings {
        resolution: resolution(row),
        fps: row.fps.unwrap_or_default(),
        format: format as i32,
        video_codec: codec as i32,
        quality: quality as i32,
    }
}

/// The watermark of an assembly: the image when configured and its facts are known (an
/// ObjectRef without digest or size would fail the agent's check), else the text.
fn watermark(settings: &WatermarkSettings, inputs: &Inputs) -> agent_pb::Watermark {
    let mark = match settings.image_file_id.filter(|image| inputs.facts.contains_key(image)) {
        Some(image) => agent_pb::watermark::Mark::Image(inputs.object(image, None, "image/png")),
        None => agent_pb::watermark::Mark::Text(settings.text.clone()),
    };
    let position = match settings.position {
        WatermarkPosition::TopLeft => agent_pb::WatermarkPosition::TopLeft,
        WatermarkPosition::TopRight => agent_pb::WatermarkPosition::TopRight,
        WatermarkPosition::BottomLeft => agent_pb::WatermarkPosition::BottomLeft,
        WatermarkPosition::BottomRight => agent_pb::WatermarkPosition::BottomRight,
        WatermarkPosition::Center => agent_pb::WatermarkPosition::Center,
    };
    agent_pb::Watermark {
        mark: Some(mark),
        position: position as i32,
        opacity: settings.opacity,
        // The protocol's defaults: 15 % of the width, 2 % of the height from the edges.
        scale: 0.0,
        margin_px: 0,
    }
}

/// The AssignTask for `row` under `terms`; `segments` are the job's (assembly only), `inputs`
/// the facts of the files it names and the job's audio, `marks` the watermark of watermarked
/// jobs' assemblies.
pub fn assign_task(
    row: &TaskRow,
    terms: LeaseTerms,
    segments: &[SegmentRow],
    inputs: &Inputs,
    marks: &WatermarkSettings,
) -> agent_pb::AssignTask {
    // No limits of its own: each node applies its configured watchdog (60 s without output by
    // default), which its operator tunes to the machine.
    let watchdog = agent_pb::Watchdog::default();
    let spec = if row.lane == Lane::Assemble {
        let expected: i32 = segments.iter().map(|s| s.frame_count).sum();
        let fps = row.fps.unwrap_or(30.0);
        let format = row.format.clone().unwrap_or_else(|| "mp4".into());
        agent_pb::assign_task::Spec::Assemble(agent_pb::AssembleSpec {
            segments: segments
                .iter()
                .map(|s| agent_pb::AssembleSegment {
                    segment_index: s.position,
                    composition: s.composition_name.clone(),
                    frames: vec![pb::FrameRange { start: s.frame_start, end: s.frame_end, step: s.frame_step }],
                    frame_count: s.frame_count,
                    fps,
                    format: pb::ImageFormat::Png as i32,
                    resolution: resolution(row),
                })
                .collect(),
            audio_tracks: row
                .job_id
                .and_then(|job| inputs.audio.get(&job))
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|track| agent_pb::AssembleAudioTrack {
                    source: Uuid::try_parse(&track.file_id)
                        .ok()
                        .map(|file| inputs.object(file, None, "application/octet-stream")),
                    track: Some(track.clone()),
                })
                .collect(),
            output: Some(output_settings(row)),
            expected_frame_count: expected,
            expected_duration_ms: (f64::from(expected) * 1000.0 / fps.max(0.001)).round() as i64,
            output_file_name: format!("render-{}.{format}", id_text(row.job_id)),
            watchdog: Some(watchdog),
            faststart: format == "mp4",
            watermark: row.watermark.then(|| watermark(marks, inputs)),
            ..Default::default()
        })
    } else {
        let frames = row.frames.map(|(start, end, step)| vec![pb::FrameRange { start, end, step }]).unwrap_or_default();
        // A snapshot's image is a result output; a probe keeps nothing.
        let upload_frames = matches!(row.lane, Lane::Render | Lane::Repair);
        agent_pb::assign_task::Spec::Render(agent_pb::RenderSpec {
            template_bundle: row
                .template_file_id
                .map(|file| inputs.object(file, row.template_sha256.as_deref(), "application/zip")),
            assets: row
                .scene_data
                .media_file_ids()
                .into_iter()
                .map(|file| inputs.object(file, None, "application/octet-stream"))
                .collect(),
            composition: row.composition_name.clone().unwrap_or_default(),
            frames,
            scene_data: row.scene_data.to_pb_option(),
            segment_index: row.segment_index.unwrap_or(-1),
            output: Some(agent_pb::FrameOutputSpec {
                format: pb::ImageFormat::Png as i32,
                file_pattern: "frame_[#####].png".into(),
                resolution: resolution(row),
                render_settings_template: render_settings_template(row.quality.as_deref()).into(),
                upload_frames,
                ..Default::default()
            }),
            watchdog: Some(watchdog),
            ..Default::default()
        })
    };
    agent_pb::AssignTask {
        task_id: row.id.to_string(),
        lease_epoch: terms.lease_epoch.max(0) as u64,
        lease_expires_at: Some(timestamp(terms.expires_at)),
        kind: row.lane.kind().to_pb_i32(),
        render_id: id_text(row.job_id),
        snapshot_id: id_text(row.snapshot_id),
        tenant_id: row.tenant_id.to_string(),
        attempt: terms.attempt,
        spec: Some(spec),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk() -> TaskRow {
        TaskRow {
            id: Uuid::new_v4(),
            lane: Lane::Render,
            tenant_id: Uuid::new_v4(),
            job_id: Some(Uuid::new_v4()),
            snapshot_id: None,
            composition_name: Some("Main".into()),
            frames: Some((10, 19, 1)),
            template_file_id: Some(Uuid::new_v4()),
            template_sha256: Some(vec![0xab; 32]),
            segment_index: Some(2),
            width: Some(1920),
            height: Some(1080),
            fps: Some(30.0),
            quality: Some("draft".into()),
            format: Some("mp4".into()),
            codec: Some("h264".into()),
            scene_data: SceneData::default(),
            watermark: false,
        }
    }

    fn no_marks() -> WatermarkSettings {
        WatermarkSettings::default()
    }

    #[test]
    fn a_chunk_assignment() {
        let row = chunk();
        let terms = LeaseTerms { lease_epoch: 7, expires_at: OffsetDateTime::UNIX_EPOCH, attempt: 2 };
        let task = assign_task(&row, terms, &[], &Inputs::default(), &no_marks());
        assert_eq!((task.lease_epoch, task.attempt), (7, 2));
        assert_eq!(task.kind(), pb::TaskKind::RenderChunk);
        let Some(agent_pb::assign_task::Spec::Render(spec)) = task.spec else { panic!("a render spec") };
        assert_eq!(spec.composition, "Main");
        assert_eq!(spec.frames, vec![pb::FrameRange { start: 10, end: 19, step: 1 }]);
        assert_eq!(spec.segment_index, 2);
        assert_eq!(spec.template_bundle.unwrap().sha256, "ab".repeat(32));
        let output = spec.output.unwrap();
        assert!(output.upload_frames);
        assert_eq!(output.render_settings_template, "Draft Settings");
    }

    #[test]
    fn an_assembly() {
        let row = TaskRow { lane: Lane::Assemble, composition_name: None, frames: None, ..chunk() };
        let segments = [
            SegmentRow {
                position: 0,
                composition_name: "A".into(),
                frame_start: 0,
                frame_end: 29,
                frame_step: 1,
                frame_count: 30,
            },
            SegmentRow {
                position: 1,
                composition_name: "B".into(),
                frame_start: 0,
                frame_end: 59,
                frame_step: 1,
                frame_count: 60,
            },
        ];
        let terms = LeaseTerms { lease_epoch: 1, expires_at: OffsetDateTime::UNIX_EPOCH, attempt: 1 };
        let task = assign_task(&row, terms, &segments, &Inputs::default(), &no_marks());
        let Some(agent_pb::assign_task::Spec::Assemble(spec)) = task.spec else { panic!("an assemble spec") };
        assert_eq!(spec.expected_frame_count, 90);
        assert_eq!(spec.expected_duration_ms, 3000);
        assert!(spec.faststart);
        assert_eq!(spec.segments.len(), 2);
        // The job's plan has no watermark.
        assert_eq!(spec.watermark, None);
    }

    #[test]
    fn a_watermarked_jobs_assembly_carries_the_mark() {
        let image = Uuid::new_v4();
        let marks = WatermarkSettings {
            text: "Made with FlatRender".into(),
            image_file_id: Some(image),
            position: WatermarkPosition::TopLeft,
            opacity: 0.8,
        };
        let row = TaskRow { lane: Lane::Assemble, watermark: true, scene_data: SceneData::default(), ..chunk() };
        let terms = LeaseTerms { lease_epoch: 1, expires_at: OffsetDateTime::UNIX_EPOCH, attempt: 1 };
        let mark_of = |inputs: &Inputs| {
            let Some(agent_pb::assign_task::Spec::Assemble(spec)) = assign_task(&row, terms, &[], inputs, &marks).spec
            else {
                panic!("an assemble spec")
            };
            spec.watermark.expect("a watermark")
        };

        // The image's facts are not recorded: the text, never no mark.
        let mark = mark_of(&Inputs::default());
        assert_eq!(mark.mark, Some(agent_pb::watermark::Mark::Text("Made with FlatRender".into())));
        assert_eq!((mark.position(), mark.opacity), (agent_pb::WatermarkPosition::TopLeft, 0.8));

        let mut inputs = Inputs::default();
        let facts = InputFacts { sha256: vec![0x11; 32], size_bytes: 2048, content_type: "image/png".into() };
        inputs.facts.insert(image, facts);
        let Some(agent_pb::watermark::Mark::Image(object)) = mark_of(&inputs).mark else { panic!("the image") };
        assert_eq!((object.file_id, object.sha256, object.size_bytes), (image.to_string(), "11".repeat(32), 2048));

        // Its node may fetch the image; nobody's render task may, nor an unmarked job's assembly.
        assert_eq!(row.input_files(&[], Some(image)), [image]);
        assert_eq!(TaskRow { watermark: false, ..row.clone() }.input_files(&[], Some(image)), Vec::<Uuid>::new());
        let chunk = TaskRow { watermark: true, ..chunk() };
        assert!(!chunk.input_files(&[], Some(image)).contains(&image));
        let Some(agent_pb::assign_task::Spec::Render(_)) = assign_task(&chunk, terms, &[], &inputs, &marks).spec else {
            panic!("a render spec")
        };
    }

    #[test]
    fn inputs_go_out_with_their_facts() {
        let (image, music) = (Uuid::new_v4(), Uuid::new_v4());
        let media = pb::MediaReplacement { file_id: image.to_string(), fit: 0 };
        let edit = pb::LayerEdit {
            layer: Some(pb::layer_edit::Layer::LayerName("Logo".into())),
            edit: Some(pb::layer_edit::Edit::Media(media)),
            ..Default::default()
        };
        let scene = SceneData::from_pb("scene_data", Some(pb::SceneData { edits: vec![edit], custom_data: None }));
        let row = TaskRow { scene_data: scene.unwrap(), ..chunk() };
        let template = row.template_file_id.unwrap();
        assert_eq!(row.input_files(&[], None), [template, image]);

        let mut inputs = Inputs::default();
        let facts = |size: i64, content_type: &str| InputFacts {
            sha256: vec![size as u8; 32],
            size_bytes: size,
            content_type: content_type.into(),
        };
        inputs.facts.insert(template, facts(7, "application/zip"));
        inputs.facts.insert(image, facts(9, "image/png"));
        let terms = LeaseTerms { lease_epoch: 1, expires_at: OffsetDateTime::UNIX_EPOCH, attempt: 1 };
        let Some(agent_pb::assign_task::Spec::Render(spec)) = assign_task(&row, terms, &[], &inputs, &no_marks()).spec
        else {
            panic!("a render spec")
        };
        let bundle = spec.template_bundle.unwrap();
        assert_eq!((bundle.size_bytes, bundle.sha256), (7, "07".repeat(32)));
        assert_eq!(spec.assets.len(), 1);
        assert_eq!(spec.assets[0].file_id, image.to_string());
        assert_eq!((spec.assets[0].size_bytes, spec.assets[0].content_type.as_str()), (9, "image/png"));

        // An assembly's inputs are its job's audio; it names no template.
        let track = pb::AudioTrack { file_id: music.to_string(), volume: 1.0, ..Default::default() };
        let assembly = TaskRow { lane: Lane::Assemble, scene_data: SceneData::default(), ..row };
        assert_eq!(assembly.input_files(std::slice::from_ref(&track), Some(Uuid::new_v4())), [music]);
        inputs.audio.insert(assembly.job_id.unwrap(), vec![track]);
        inputs.facts.insert(music, facts(3, "audio/mpeg"));
        let Some(agent_pb::assign_task::Spec::Assemble(spec)) =
            assign_task(&assembly, terms, &[], &inputs, &no_marks()).spec
        else {
            panic!("an assemble spec")
        };
        let source = spec.audio_tracks[0].source.clone().unwrap();
        assert_eq!((source.file_id, source.size_bytes), (music.to_string(), 3));
        assert_eq!(spec.audio_tracks[0].track.as_ref().unwrap().file_id, music.to_string());
    }
}
