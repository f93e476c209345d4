//! `SubmitRender`: validate, apply the plan, check the files, and queue the job with its chunks in
//! one transaction.
//!
//! Order of refusals: the request itself (INVALID_ARGUMENT), a retry of an earlier submit (its
//! job, deduplicated, or ALREADY_EXISTS), the plan's caps (INVALID_ARGUMENT naming the field and
//! the cap), the files (NOT_FOUND naming the field, FAILED_PRECONDITION on a digest mismatch),
//! the plan's allowances (RESOURCE_EXHAUSTED).
//!
//! The job is stored QUEUED with its chunk rows already in the queue: segments are split into
//! chunks here, inside the submitting transaction, so there is nothing left to prepare and a
//! dispatcher may claim the first chunk the moment the transaction commits. PREPARING is
//! therefore skipped (the job goes from QUEUED to RENDERING when its first chunk is leased).

use std::collections::HashMap;

use flatrender_kit::outbox::{self, EventMeta};
use flatrender_proto::flatrender::events::v1 as ev;
use flatrender_proto::flatrender::render::v1 as pb;
use sqlx::{PgConnection, PgTransaction, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::RenderApi;
use crate::api::access::Viewer;
use crate::api::records::{self, Detail};
use crate::error::{RenderError, Result};
use crate::files::FileFacts;
use crate::model::{self, RenderRequest, Sha256Digest};
use crate::plans::{self, EffectivePlan, PlanLimits};
use crate::queue::platform_files;
use crate::settings::ApiSettings;

/// The states of a job that still counts against the plan's concurrent renders.
const UNFINISHED: &str = "('queued', 'preparing', 'rendering', 'assembling')";

/// What the plan lets the job render.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Output {
    /// Width, pixels.
    pub width: u32,
    /// Height, pixels.
    pub height: u32,
    /// Frames per second.
    pub fps: f64,
}

impl RenderApi {
    /// `SubmitRender` for `viewer`.
    pub(crate) async fn submit_render(
        &self,
        viewer: &Viewer,
        request: pb::SubmitRenderRequest,
    ) -> Result<pb::SubmitRenderResponse> {
        let request = RenderRequest::try_from(request)?;
        let digest = request.request_digest();
        // A retry gets the first call's job whatever changed since (plan, files).
        {
            let mut conn = self.state.pool.acquire().await?;
            if let Some(earlier) = earlier(&mut conn, viewer, &request.idempotency_key, &digest).await? {
                return Ok(earlier);
            }
        }
        let api = &self.state.settings.api;
        let plan = plans::effective(&self.state.pool, viewer.tenant, Some(viewer.user), &api.default_plan).await?;
        let output = output_within(&request, &plan.limits, api)?;
        let files = self.checked_files(viewer.tenant, &request.file_refs(), &request.template_sha256).await?;
        if plan.limits.watermark {
            self.watermark_image_known().await;
        }

        let mut tx = self.state.pool.begin().await?;
        match self.queue(&mut tx, viewer, &request, &digest, &plan, output, &files).await {
            Ok(Queued::New(id)) => {
                tx.commit().await?;
                let mut conn = self.state.pool.acquire().await?;
                let render = records::visible_job(&mut conn, viewer, id, Detail::Full)
                    .await?
                    .ok_or(RenderError::NotFound("render"))?;
                Ok(pb::SubmitRenderResponse { render: Some(render), deduplicated: false })
            }
            Ok(Queued::Earlier(response)) => {
                tx.rollback().await?;
                Ok(*response)
            }
            Err(RenderError::Database(err)) if flatrender_kit::db::is_unique_violation(&err, KEY_CONSTRAINT) => {
                // A concurrent submit with the same key committed first: answer as a retry.
                tx.rollback().await?;
                let mut conn = self.state.pool.acquire().await?;
                earlier(&mut conn, viewer, &request.idempotency_key, &digest).await?.ok_or(RenderError::Database(err))
            }
            Err(err) => Err(err),
        }
    }

    /// The facts of every file `refs` names when each is visible to `tenant` and the template's
    /// digest is the one the request gives; recorded (`render.file_facts`) for the assignments
    /// that will name them.
    pub(crate) async fn checked_files(
        &self,
        tenant: Uuid,
        refs: &[model::FileRef],
        template_sha256: &Sha256Digest,
    ) -> Result<HashMap<Uuid, FileFacts>> {
        let client = self.state.files.as_ref().ok_or_else(|| {
            RenderError::Unavailable("the file service is not configured for the render service".into())
        })?;
        let files = client.visible(tenant, refs).await?;
        let template = refs.first().and_then(|r| files.get(&r.file_id));
        if template.is_none_or(|t| t.sha256 != *template_sha256) {
            return Err(RenderError::FailedPrecondition("template_sha256 does not match the file".into()));
        }
        let mut conn = self.state.pool.acquire().await?;
        crate::queue::spec::record_facts(&mut conn, &files).await?;
        Ok(files)
    }

    /// Records the configured watermark image's facts if they are not yet, so the job's
    /// assembly can name it. Not a reason to refuse the submit: without them, the assembly
    /// carries the text mark instead.
    async fn watermark_image_known(&self) {
        let Some(image) = self.state.settings.watermark.image_file_id else { return };
        if let Err(error) = platform_files::recorded_digest(&self.state, image, "render-watermark-image").await {
            tracing::warn!(%image, %error, "could not record the watermark image's facts; assemblies use the text");
        }
    }

    /// Stores the job, its segments, audio tracks and chunks, the event and the queue signal in
    /// `tx`, unless the plan's allowances are used up or the key was used meanwhile.
    #[allow(clippy::too_many_arguments, reason = "the parts of one submit, checked in order by the caller")]
    async fn queue(
        &self,
        tx: &mut PgTransaction<'_>,
        viewer: &Viewer,
        request: &RenderRequest,
        digest: &Sha256Digest,
        plan: &EffectivePlan,
        output: Output,
        files: &HashMap<Uuid, FileFacts>,
    ) -> Result<Queued> {
        let counted_user = plan.usage_user(Some(viewer.user));
        // One submit at a time per allowance, so two cannot both take the last slot.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("render.allowance:{}:{}", viewer.tenant, id_or_tenant(counted_user)))
            .execute(&mut **tx)
            .await?;
        if let Some(earlier) = earlier(tx, viewer, &request.idempotency_key, digest).await? {
            return Ok(Queued::Earlier(Box::new(earlier)));
        }
        allowances(tx, viewer.tenant, counted_user, &plan.limits).await?;

        let settings = &self.state.settings;
        let limits = &plan.limits;
        let chunk_size = settings.chunk_size_frames.clamp(1, model::MAX_FRAMES_PER_TASK);
        let job = sqlx::query(
            "INSERT INTO render.render_jobs (tenant_id, user_id, saved_project_id, template_id, template_version_id,
                 template_file_id, template_sha256, priority, plan_code, idempotency_key, request_sha256,
                 has_voiceover, output_width, output_height, output_fps, output_format, output_codec,
                 output_quality, watermark, scene_data, labels, chunk_size_frames, max_attempts, frames_total)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21,
                     $22, $23, $24)
             RETURNING id, created_at",
        )
        .bind(viewer.tenant)
        .bind(viewer.user)
        .bind(request.saved_project_id)
        .bind(request.template_id)
        .bind(request.template_version_id)
        .bind(request.template_file_id)
        .bind(request.template_sha256.as_bytes().as_slice())
        .bind(limits.render_priority)
        .bind(&limits.plan_code)
        .bind(&request.idempotency_key)
        .bind(digest.as_bytes().as_slice())
        .bind(request.has_voiceover)
        .bind(i32::try_from(output.width).unwrap_or(i32::MAX))
        .bind(i32::try_from(output.height).unwrap_or(i32::MAX))
        .bind(output.fps)
        .bind(request.output.format.as_db())
        .bind(request.output.video_codec.as_db())
        .bind(request.output.quality.as_db())
        .bind(limits.watermark)
        .bind(request.scene_data.to_json())
        .bind(request.labels.to_json())
        .bind(i32::try_from(chunk_size).unwrap_or(1))
        .bind(i32::try_from(settings.max_attempts).unwrap_or(1))
        .bind(request.frames_total())
        .fetch_one(&mut **tx)
        .await?;
        let id: Uuid = job.try_get("id")?;
        let created_at: OffsetDateTime = job.try_get("created_at")?;

        let segment_ids = insert_segments(tx, viewer.tenant, id, request).await?;
        insert_audio(tx, viewer.tenant, id, request, files).await?;
        insert_chunks(tx, viewer.tenant, id, request, &segment_ids, limits.render_priority, created_at, chunk_size)
            .await?;

        let event = ev::RenderJobQueued {
            tenant_id: viewer.tenant.to_string(),
            occurred_at: Some(records::timestamp(created_at)),
            render_id: id.to_string(),
            user_id: viewer.user.to_string(),
            api_key_id: String::new(),
            template_id: request.template_id.map(|t| t.to_string()).unwrap_or_default(),
            template_sha256: request.template_sha256.to_hex(),
            saved_project_id: request.saved_project_id.map(|p| p.to_string()).unwrap_or_default(),
            frames_total: request.frames_total(),
            segment_count: i32::try_from(request.segments.len()).unwrap_or(i32::MAX),
            resolution: Some(flatrender_proto::flatrender::common::v1::Resolution {
                width: output.width,
                height: output.height,
            }),
            format: request.output.format.to_pb_i32(),
            priority: i32::from(limits.render_priority),
            has_voiceover: request.has_voiceover,
            requeued: false,
            labels: request.labels.to_pb(),
        };
        let meta = EventMeta {
            source: "render",
            aggregate_type: "render_job",
            aggregate_id: id.to_string(),
            tenant_id: Some(viewer.tenant),
        };
        outbox::publish(tx, meta, &event).await?;
        // Dispatchers claim as soon as this commits.
        sqlx::query("SELECT pg_notify('render_queue', '')").execute(&mut **tx).await?;
        Ok(Queued::New(id))
    }
}

/// The unique constraint behind idempotency keys.
const KEY_CONSTRAINT: &str = "render_jobs_tenant_idempotency_key";

/// What [`RenderApi::queue`] did.
enum Queued {
    /// Stored a new job.
    New(Uuid),
    /// Found the job of an earlier submit with the same key.
    Earlier(Box<pb::SubmitRenderResponse>),
}

/// The job an earlier submit with `key` made, as a deduplicated answer; `ALREADY_EXISTS` when the
/// key was used for another request (or by someone whose jobs the viewer may not see).
async fn earlier(
    conn: &mut PgConnection,
    viewer: &Viewer,
    key: &str,
    digest: &Sha256Digest,
) -> Result<Option<pb::SubmitRenderResponse>> {
    let row: Option<(Uuid, Option<Uuid>, Option<Vec<u8>>)> = sqlx::query_as(
        "SELECT id, user_id, request_sha256 FROM render.render_jobs WHERE tenant_id = $1 AND idempotency_key = $2",
    )
    .bind(viewer.tenant)
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((id, owner, stored)) = row else { return Ok(None) };
    if !viewer.sees(owner) || stored.as_deref() != Some(digest.as_bytes().as_slice()) {
        return Err(RenderError::AlreadyExists("idempotency_key: already used for a different render request".into()));
    }
    let render = records::visible_job(conn, viewer, id, Detail::Full).await?.ok_or(RenderError::NotFound("render"))?;
    Ok(Some(pb::SubmitRenderResponse { render: Some(render), deduplicated: true }))
}

fn id_or_tenant(user: Option<Uuid>) -> String {
    user.map_or_else(|| "tenant".to_owned(), |u| u.to_string())
}

/// RESOURCE_EXHAUSTED when the subscriber (`user`, or the whole tenant when `None`) has as many
/// unfinished jobs as the plan allows at once, or used up this month's render time.
async fn allowances(conn: &mut PgConnection, tenant: Uuid, user: Option<Uuid>, limits: &PlanLimits) -> Result<()> {
    let (unfinished, used_ms, resets_at): (i64, i64, OffsetDateTime) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FILTER (WHERE state IN {UNFINISHED}),
                COALESCE(sum(render_ms) FILTER (WHERE created_at >= date_trunc('month', now(), 'UTC')), 0)::bigint,
                date_trunc('month', now(), 'UTC') + interval '1 month'
           FROM render.render_jobs
          WHERE tenant_id = $1 AND ($2::uuid IS NULL OR user_id = $2)
            AND (state IN {UNFINISHED} OR created_at >= date_trunc('month', now(), 'UTC'))"
    )))
    .bind(tenant)
    .bind(user)
    .fetch_one(&mut *conn)
    .await?;
    let whose = if user.is_some() { "your" } else { "the tenant's" };
    if unfinished >= i64::from(limits.max_concurrent_renders) {
        return Err(RenderError::ResourceExhausted(format!(
            "concurrent renders: {whose} {unfinished} unfinished renders are as many as the {} plan allows at once \
             ({}); another may start when one of them ends",
            limits.plan_code, limits.max_concurrent_renders
        )));
    }
    if let Some(seconds) = limits.monthly_render_seconds
        && used_ms >= i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX)
    {
        let resets =
            resets_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| resets_at.to_string());
        return Err(RenderError::ResourceExhausted(format!(
            "monthly render time: {whose} {} s of the {} plan's {seconds} s this month are used up; it resets at \
             {resets}",
            used_ms / 1000,
            limits.plan_code
        )));
    }
    Ok(())
}

/// The job's output under `limits`: the request's size and rate, or the defaults fitted into the
/// plan; a request above a cap is INVALID_ARGUMENT naming the field and the cap. Also checks the
/// video's length and a voiceover against the plan.
pub(crate) fn output_within(request: &RenderRequest, limits: &PlanLimits, api: &ApiSettings) -> Result<Output> {
    let plan = &limits.plan_code;
    let (width, height) = match request.output.resolution {
        Some(size) if !size.fits_within(limits.max_width, limits.max_height) => {
            return Err(RenderError::invalid(
                "output.resolution",
                format!("{size} is above the {plan} plan's limit of {}x{}", limits.max_width, limits.max_height),
            ));
        }
        Some(size) => (size.width(), size.height()),
        None => fit(api.default_output_size, (limits.max_width, limits.max_height)),
    };
    let fps = match request.output.fps {
        Some(fps) if fps > f64::from(limits.max_fps) => {
            return Err(RenderError::invalid(
                "output.fps",
                format!("{fps} fps is above the {plan} plan's limit of {} fps", limits.max_fps),
            ));
        }
        Some(fps) => fps,
        None => api.default_output_fps.min(f64::from(limits.max_fps)),
    };
    let frames = request.frames_total();
    let seconds = f64::from(frames) / fps;
    // Rounding of the rate (e.g. 29.97) must not refuse a video of exactly the limit.
    if seconds > f64::from(limits.max_video_duration_seconds) + 1e-6 {
        return Err(RenderError::invalid(
            "segments",
            format!(
                "{frames} frames at {fps} fps last {seconds:.2} s, above the {plan} plan's limit of {} s",
                limits.max_video_duration_seconds
            ),
        ));
    }
    if request.has_voiceover && !limits.voiceover_enabled {
        return Err(RenderError::invalid("has_voiceover", format!("the {plan} plan does not include voiceover")));
    }
    Ok(Output { width, height, fps })
}

/// `size` scaled down (keeping its aspect) to fit within `max`, in even pixels of at least 16.
fn fit(size: (u32, u32), max: (u32, u32)) -> (u32, u32) {
    let (w, h) = (f64::from(size.0.max(1)), f64::from(size.1.max(1)));
    let scale = (f64::from(max.0) / w).min(f64::from(max.1) / h).min(1.0);
    // Both values lie within 16..=16384 after the clamp, so the casts are exact.
    let even = |v: f64, cap: u32| ((v.floor() as u32) & !1).clamp(16, cap.max(16));
    (even(w * scale, max.0), even(h * scale, max.1))
}

/// Inserts the segments in order; returns their ids by position.
async fn insert_segments(
    conn: &mut PgConnection,
    tenant: Uuid,
    job: Uuid,
    request: &RenderRequest,
) -> Result<Vec<Uuid>> {
    let count = request.segments.len();
    let mut positions = Vec::with_capacity(count);
    let mut scene_ids = Vec::with_capacity(count);
    let mut compositions = Vec::with_capacity(count);
    let (mut starts, mut ends, mut steps) = (Vec::with_capacity(count), Vec::with_capacity(count), Vec::new());
    let mut scenes = Vec::with_capacity(count);
    for (position, segment) in request.segments.iter().enumerate() {
        positions.push(i32::try_from(position).unwrap_or(i32::MAX));
        scene_ids.push(segment.scene_id);
        compositions.push(segment.composition.clone());
        starts.push(segment.range.start());
        ends.push(segment.range.end());
        steps.push(segment.range.step());
        scenes.push(segment.scene_data.to_json());
    }
    let rows: Vec<(Uuid, i32)> = sqlx::query_as(
        "INSERT INTO render.render_job_segments (tenant_id, job_id, position, scene_id, composition_name,
             frame_start, frame_end, frame_step, scene_data)
         SELECT $1, $2, t.position, t.scene_id, t.composition, t.frame_start, t.frame_end, t.frame_step, t.scene_data
           FROM UNNEST($3::int[], $4::uuid[], $5::text[], $6::int[], $7::int[], $8::int[], $9::jsonb[])
                AS t(position, scene_id, composition, frame_start, frame_end, frame_step, scene_data)
         RETURNING id, position",
    )
    .bind(tenant)
    .bind(job)
    .bind(&positions)
    .bind(&scene_ids)
    .bind(&compositions)
    .bind(&starts)
    .bind(&ends)
    .bind(&steps)
    .bind(&scenes)
    .fetch_all(&mut *conn)
    .await?;
    let mut ids = vec![Uuid::nil(); count];
    for (id, position) in rows {
        if let Some(slot) = usize::try_from(position).ok().and_then(|p| ids.get_mut(p)) {
            *slot = id;
        }
    }
    Ok(ids)
}

/// Inserts the audio tracks in request order (`position` = index in the request), with the
/// digests the file service recorded.
async fn insert_audio(
    conn: &mut PgConnection,
    tenant: Uuid,
    job: Uuid,
    request: &RenderRequest,
    files: &HashMap<Uuid, FileFacts>,
) -> Result<()> {
    for (position, track) in request.audio_tracks.iter().enumerate() {
        sqlx::query(
            "INSERT INTO render.render_job_audio_tracks (tenant_id, job_id, kind, position, file_id, file_sha256,
                 volume, offset_ms, trim_start_ms, trim_end_ms, fade_in_ms, fade_out_ms, looping)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(tenant)
        .bind(job)
        .bind(track.kind.as_db())
        .bind(i32::try_from(position).unwrap_or(i32::MAX))
        .bind(track.file_id)
        .bind(files.get(&track.file_id).map(|f| f.sha256.as_bytes().to_vec()))
        .bind(track.volume_f32())
        .bind(model::AudioTrack::ms_i32(track.offset_ms))
        .bind(model::AudioTrack::ms_i32(track.trim_start_ms))
        .bind(track.trim_end_ms.map(model::AudioTrack::ms_i32))
        .bind(model::AudioTrack::ms_i32(track.fade_in_ms))
        .bind(model::AudioTrack::ms_i32(track.fade_out_ms))
        .bind(track.looping)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Splits every segment into chunks of `chunk_size` frames and queues them (lane `render`).
#[allow(clippy::too_many_arguments, reason = "the columns every chunk copies from its job")]
async fn insert_chunks(
    conn: &mut PgConnection,
    tenant: Uuid,
    job: Uuid,
    request: &RenderRequest,
    segment_ids: &[Uuid],
    priority: i16,
    submitted_at: OffsetDateTime,
    chunk_size: u32,
) -> Result<()> {
    let ranges: Vec<_> = request.segments.iter().map(|s| s.range).collect();
    let chunks = model::split_segments(&ranges, chunk_size);
    let mut segments = Vec::with_capacity(chunks.len());
    let mut compositions = Vec::with_capacity(chunks.len());
    let (mut starts, mut ends, mut steps) =
        (Vec::with_capacity(chunks.len()), Vec::with_capacity(chunks.len()), Vec::with_capacity(chunks.len()));
    for chunk in &chunks {
        let Some((segment, id)) = request.segments.get(chunk.segment_index).zip(segment_ids.get(chunk.segment_index))
        else {
            continue;
        };
        segments.push(*id);
        compositions.push(segment.composition.clone());
        starts.push(chunk.range.start());
        ends.push(chunk.range.end());
        steps.push(chunk.range.step());
    }
    sqlx::query(
        "INSERT INTO render.frame_jobs (tenant_id, lane, job_id, segment_id, priority, submitted_at, template_sha256,
             composition_name, frame_start, frame_end, frame_step, max_attempts)
         SELECT $1, 'render', $2, t.segment_id, $3, $4, $5, t.composition, t.frame_start, t.frame_end, t.frame_step,
                j.max_attempts
           FROM UNNEST($6::uuid[], $7::text[], $8::int[], $9::int[], $10::int[])
                AS t(segment_id, composition, frame_start, frame_end, frame_step)
           JOIN render.render_jobs j ON j.id = $2",
    )
    .bind(tenant)
    .bind(job)
    .bind(priority)
    .bind(submitted_at)
    .bind(request.template_sha256.as_bytes().as_slice())
    .bind(&segments)
    .bind(&compositions)
    .bind(&starts)
    .bind(&ends)
    .bind(&steps)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fit_the_plan() {
        assert_eq!(fit((1920, 1080), (1280, 720)), (1280, 720));
        assert_eq!(fit((1920, 1080), (3840, 2160)), (1920, 1080), "never scaled up");
        assert_eq!(fit((1920, 1080), (1000, 1000)), (1000, 562));
        assert_eq!(fit((1920, 1080), (16, 16)), (16, 16));
    }
}
