-- =============================================================================
-- 12_render_jobs.sql — render: jobs, the frame-job queue, snapshots, exports
-- =============================================================================
-- render_jobs (one requested video), render_job_segments (ordered
-- composition + frame range), render_job_audio_tracks, snapshots (one-frame
-- stills with a cache key), frame_jobs (THE queue: every task a node runs —
-- snapshot, render chunk, repair, assemble, probe), frame_repair_jobs,
-- frame_job_excluded_nodes, frame_job_attempts (one row per lease: the
-- attempt history), frame_results (accepted frames), exports.
--
-- Errors are stored as error_class (coarse: decides the retry policy) plus
-- error_code (the specific flatrender.render.v1.ErrorCode), both lower-case
-- without the enum prefix, and error_message.
--
-- Frame numbers are After Effects comp frame numbers; ranges are inclusive at
-- both ends (aerender -s/-e), with an optional step (-i).
--
-- Queue protocol (DESIGN §4):
--   claim:   WITH c AS (SELECT id FROM render.frame_jobs
--                        WHERE state = 'queued' AND (not_before IS NULL OR not_before <= now())
--                          AND <placement: excluded nodes, tags, AE version, ...>
--                        ORDER BY lane_rank, priority DESC, submitted_at, id
--                        LIMIT $n FOR UPDATE SKIP LOCKED)
--            UPDATE render.frame_jobs f SET state = 'leased', node_id = $node,
--                   lease_epoch = f.lease_epoch + 1, attempts = f.attempts + 1,
--                   leased_at = now(), lease_expires_at = now() + $ttl
--              FROM c WHERE f.id = c.id RETURNING f.*;
--   fence:   every update from an agent report carries the epoch:
--            ... WHERE id = $id AND lease_epoch = $epoch AND state IN ('leased', 'running')
--            0 rows updated = stale epoch -> reject.
--   expiry:  ... WHERE state IN ('leased', 'running') AND lease_expires_at < now()
--            -> back to 'queued' (or 'failed' when attempts = max_attempts).
-- =============================================================================


-- -----------------------------------------------------------------------------
-- render_jobs
-- -----------------------------------------------------------------------------
CREATE TABLE render.render_jobs (
    id                    uuid         PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id             uuid         NOT NULL,   -- soft reference: identity.tenants.id
    user_id               uuid         NULL,       -- soft reference: identity.users.id (NULL: submitted with an API key)
    api_key_id            uuid         NULL,       -- soft reference: identity.tenant_api_keys.id
    saved_project_id      uuid         NULL,       -- soft reference: studio.saved_projects.id
    template_id           uuid         NULL,       -- soft reference: content.templates.id
    template_version_id   uuid         NULL,       -- soft reference: content.template_versions.id
    template_file_id      uuid         NOT NULL,   -- soft reference: file_mgr.files.id (the bundle)
    template_sha256       bytea        NOT NULL,   -- bundle digest: cache key on nodes, verified after download
    state                 text         NOT NULL DEFAULT 'queued',
    -- From the customer's plan at submit time (identity.plans.render_priority), never from the request.
    priority              smallint     NOT NULL DEFAULT 0,
    plan_code             text         NOT NULL,   -- soft reference: identity.plans.code
    -- A retried submit with the same key returns the existing job;
    -- request_sha256 detects the same key reused for a different request.
    idempotency_key       text         NULL,
    request_sha256        bytea        NULL,
    has_voiceover         boolean      NOT NULL DEFAULT false,
    -- Output settings (already clamped to the plan's limits).
    output_width          integer      NOT NULL,
    output_height         integer      NOT NULL,
    output_fps            double precision NOT NULL,
    output_format         text         NOT NULL DEFAULT 'mp4',
    output_codec          text         NOT NULL DEFAULT 'h264',   -- VideoCodec; must suit output_format
    output_quality        text         NOT NULL DEFAULT 'standard',
    watermark             boolean      NOT NULL DEFAULT false,
    -- Job-wide scene data ({<field key>: <value>}); per-segment values are on the segments.
    scene_data            jsonb        NOT NULL DEFAULT '{}',
    -- Client labels ({<key>: <value>}, strings), returned in GetRender, events and webhooks.
    labels                jsonb        NOT NULL DEFAULT '{}',
    chunk_size_frames     integer      NOT NULL DEFAULT 10,
    chunk_target_ms       integer      NULL,   -- aim for chunks of this render time once frame timings are known
    max_attempts          integer      NOT NULL DEFAULT 3,   -- per chunk
    frames_total          integer      NOT NULL DEFAULT 0,
    frames_done           integer      NOT NULL DEFAULT 0,
    progress              real         NOT NULL DEFAULT 0,   -- 0..1, share of the work done (frames, then assembly)
    render_ms             bigint       NOT NULL DEFAULT 0,   -- node time spent (metering)
    error_class           text         NULL,
    error_code            text         NULL,
    error_message         text         NULL,
    cancel_requested_at   timestamptz  NULL,
    canceled_by_user_id   uuid         NULL,   -- soft reference: identity.users.id (NULL: API key or the system)
    cancel_reason         text         NULL,   -- CancelRender reason, or the system's (e.g. tenant suspended)
    started_at            timestamptz  NULL,   -- left 'queued'
    rendering_started_at  timestamptz  NULL,
    assembling_started_at timestamptz  NULL,
    finished_at           timestamptz  NULL,   -- reached completed/failed/canceled
    created_at            timestamptz  NOT NULL DEFAULT now(),   -- = submit time
    updated_at            timestamptz  NOT NULL DEFAULT now(),
    CONSTRAINT render_jobs_tenant_idempotency_key UNIQUE (tenant_id, idempotency_key),
    CONSTRAINT render_jobs_template_sha256_check CHECK (octet_length(template_sha256) = 32),
    CONSTRAINT render_jobs_state_check CHECK (
        state IN ('queued', 'preparing', 'rendering', 'assembling', 'completed', 'failed', 'canceled')),
    CONSTRAINT render_jobs_finished_check CHECK (
        (state IN ('completed', 'failed', 'canceled')) = (finished_at IS NOT NULL)),
    CONSTRAINT render_jobs_failed_check CHECK (
        state <> 'failed' OR (error_class IS NOT NULL AND error_message IS NOT NULL)),
    CONSTRAINT render_jobs_error_class_check CHECK (
        error_class IS NULL OR error_class IN ('template', 'machine', 'timeout', 'canceled', 'quota', 'internal')),
    CONSTRAINT render_jobs_error_code_check CHECK (
        error_code IS NULL OR (error_class IS NOT NULL AND error_code ~ '^[a-z][a-z0-9_]{0,63}$')),
    CONSTRAINT render_jobs_cancel_reason_check CHECK (cancel_reason IS NULL OR char_length(cancel_reason) <= 500),
    CONSTRAINT render_jobs_priority_check CHECK (priority BETWEEN 0 AND 100),
    CONSTRAINT render_jobs_plan_code_check CHECK (plan_code ~ '^[a-z][a-z0-9_-]{0,31}$'),
    CONSTRAINT render_jobs_idempotency_key_check CHECK (
        idempotency_key IS NULL OR char_length(idempotency_key) BETWEEN 1 AND 200),
    CONSTRAINT render_jobs_request_sha256_check CHECK (request_sha256 IS NULL OR octet_length(request_sha256) = 32),
    CONSTRAINT render_jobs_output_size_check CHECK (
        output_width BETWEEN 16 AND 16384 AND output_height BETWEEN 16 AND 16384),
    CONSTRAINT render_jobs_output_fps_check CHECK (output_fps > 0 AND output_fps <= 240),
    CONSTRAINT render_jobs_output_format_check CHECK (output_format IN ('mp4', 'mov', 'webm', 'gif')),
    CONSTRAINT render_jobs_output_codec_check CHECK (
        output_codec IN ('h264', 'h265', 'prores_422', 'prores_4444', 'vp9', 'gif')),
    -- The codec must suit the container (flatrender.render.v1.OutputFormat / VideoCodec).
    CONSTRAINT render_jobs_output_codec_format_check CHECK (
        (output_format = 'mp4' AND output_codec IN ('h264', 'h265'))
        OR (output_format = 'mov' AND output_codec IN ('h264', 'h265', 'prores_422', 'prores_4444'))
        OR (output_format = 'webm' AND output_codec = 'vp9')
        OR (output_format = 'gif' AND output_codec = 'gif')),
    CONSTRAINT render_jobs_output_quality_check CHECK (output_quality IN ('draft', 'standard', 'high')),
    CONSTRAINT render_jobs_scene_data_check CHECK (jsonb_typeof(scene_data) = 'object'),
    CONSTRAINT render_jobs_labels_check CHECK (jsonb_typeof(labels) = 'object'),
    CONSTRAINT render_jobs_chunk_size_check CHECK (chunk_size_frames BETWEEN 1 AND 100000),
    CONSTRAINT render_jobs_chunk_target_check CHECK (chunk_target_ms IS NULL OR chunk_target_ms > 0),
    CONSTRAINT render_jobs_max_attempts_check CHECK (max_attempts BETWEEN 1 AND 100),
    CONSTRAINT render_jobs_frames_check CHECK (frames_total >= 0 AND frames_done >= 0 AND frames_done <= frames_total),
    CONSTRAINT render_jobs_progress_check CHECK (progress >= 0 AND progress <= 1),
    CONSTRAINT render_jobs_render_ms_check CHECK (render_ms >= 0)
);

-- Tenant listing (paginated, newest first), optionally filtered by state.
CREATE INDEX render_jobs_tenant_created_idx ON render.render_jobs (tenant_id, created_at DESC, id);
CREATE INDEX render_jobs_tenant_state_created_idx ON render.render_jobs (tenant_id, state, created_at DESC);
CREATE INDEX render_jobs_user_created_idx ON render.render_jobs (user_id, created_at DESC) WHERE user_id IS NOT NULL;
-- Orchestrator: jobs still in flight (small, hot set).
CREATE INDEX render_jobs_active_idx ON render.render_jobs (state, created_at)
    WHERE state IN ('queued', 'preparing', 'rendering', 'assembling');

CREATE TRIGGER set_updated_at BEFORE UPDATE ON render.render_jobs
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE render.render_jobs IS 'Render jobs: queued -> preparing -> rendering -> assembling -> completed, or failed/canceled.';
COMMENT ON COLUMN render.render_jobs.tenant_id IS 'soft reference: identity.tenants.id';
COMMENT ON COLUMN render.render_jobs.user_id IS 'soft reference: identity.users.id';
COMMENT ON COLUMN render.render_jobs.api_key_id IS 'soft reference: identity.tenant_api_keys.id';
COMMENT ON COLUMN render.render_jobs.saved_project_id IS 'soft reference: studio.saved_projects.id';
COMMENT ON COLUMN render.render_jobs.template_id IS 'soft reference: content.templates.id';
COMMENT ON COLUMN render.render_jobs.template_version_id IS 'soft reference: content.template_versions.id';
COMMENT ON COLUMN render.render_jobs.template_file_id IS 'soft reference: file_mgr.files.id';
COMMENT ON COLUMN render.render_jobs.plan_code IS 'soft reference: identity.plans.code';
COMMENT ON COLUMN render.render_jobs.template_sha256 IS 'SHA-256 of the template bundle (32 raw bytes).';
COMMENT ON COLUMN render.render_jobs.output_codec IS 'flatrender.render.v1.VideoCodec, lower-case without the prefix; must suit output_format.';
COMMENT ON COLUMN render.render_jobs.labels IS 'Client labels as submitted: a JSON object of string values (at most 16).';
COMMENT ON COLUMN render.render_jobs.error_code IS 'flatrender.render.v1.ErrorCode, lower-case without the prefix.';
COMMENT ON COLUMN render.render_jobs.canceled_by_user_id IS 'soft reference: identity.users.id';


-- -----------------------------------------------------------------------------
-- render_job_segments: the ordered scenes of a job
-- -----------------------------------------------------------------------------
-- An API frame list such as '1,3,7-9' becomes several segments of the same
-- composition, in order; '1-100x5' is frame_start 1, frame_end 100, step 5.
CREATE TABLE render.render_job_segments (
    id               uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id        uuid        NOT NULL,   -- soft reference: identity.tenants.id
    job_id           uuid        NOT NULL REFERENCES render.render_jobs (id) ON DELETE CASCADE,
    position         integer     NOT NULL,
    scene_id         uuid        NULL,       -- soft reference: content.scenes.id
    composition_name text        NOT NULL,
    frame_start      integer     NOT NULL,
    frame_end        integer     NOT NULL,
    frame_step       integer     NOT NULL DEFAULT 1,
    frame_count      integer     GENERATED ALWAYS AS ((frame_end - frame_start) / frame_step + 1) STORED,
    scene_data       jsonb       NOT NULL DEFAULT '{}',   -- this segment's field values
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT render_job_segments_position_key UNIQUE (job_id, position),
    CONSTRAINT render_job_segments_position_check CHECK (position >= 0),
    CONSTRAINT render_job_segments_composition_check CHECK (char_length(composition_name) BETWEEN 1 AND 255),
    CONSTRAINT render_job_segments_frame_range_check CHECK (frame_start >= 0 AND frame_end >= frame_start),
    CONSTRAINT render_job_segments_frame_step_check CHECK (frame_step BETWEEN 1 AND 1000),
    CONSTRAINT render_job_segments_scene_data_check CHECK (jsonb_typeof(scene_data) = 'object')
);

COMMENT ON TABLE render.render_job_segments IS 'Ordered segments of a job: composition + inclusive comp-frame range (+ step).';
COMMENT ON COLUMN render.render_job_segments.tenant_id IS 'soft reference: identity.tenants.id';
COMMENT ON COLUMN render.render_job_segments.scene_id IS 'soft reference: content.scenes.id';


-- -----------------------------------------------------------------------------
-- render_job_audio_tracks: what assembly mixes
-- -----------------------------------------------------------------------------
CREATE TABLE render.render_job_audio_tracks (
    id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid        NOT NULL,   -- soft reference: identity.tenants.id
    job_id        uuid        NOT NULL REFERENCES render.render_jobs (id) ON DELETE CASCADE,
    kind          text        NOT NULL,
    position      integer     NOT NULL DEFAULT 0,
    file_id       uuid        NOT NULL,   -- soft reference: file_mgr.files.id
    file_sha256   bytea       NULL,
    -- Effective linear gain of this track, 0..4: the studio's track volume
    -- (0..2) x the project's master volume for its kind (0..2).
    volume        real        NOT NULL DEFAULT 1.0,
    offset_ms     integer     NOT NULL DEFAULT 0,
    trim_start_ms integer     NOT NULL DEFAULT 0,
    trim_end_ms   integer     NULL,
    fade_in_ms    integer     NOT NULL DEFAULT 0,
    fade_out_ms   integer     NOT NULL DEFAULT 0,
    looping       boolean     NOT NULL DEFAULT false,   -- repeat the clip to the end of the video
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT render_job_audio_tracks_position_key UNIQUE (job_id, kind, position),
    CONSTRAINT render_job_audio_tracks_kind_check CHECK (kind IN ('music', 'voiceover', 'sfx')),
    CONSTRAINT render_job_audio_tracks_position_check CHECK (position >= 0),
    CONSTRAINT render_job_audio_tracks_file_sha256_check CHECK (file_sha256 IS NULL OR octet_length(file_sha256) = 32),
    CONSTRAINT render_job_audio_tracks_volume_check CHECK (volume BETWEEN 0 AND 4),
    CONSTRAINT render_job_audio_tracks_times_check CHECK (
        offset_ms >= 0 AND trim_start_ms >= 0 AND fade_in_ms >= 0 AND fade_out_ms >= 0
        AND (trim_end_ms IS NULL OR trim_end_ms > trim_start_ms))
);

COMMENT ON TABLE render.render_job_audio_tracks IS 'Audio tracks mixed at assembly: kind music/voiceover/sfx, effective gain, offset, trim, fades (ms).';
COMMENT ON COLUMN render.render_job_audio_tracks.tenant_id IS 'soft reference: identity.tenants.id';
COMMENT ON COLUMN render.render_job_audio_tracks.file_id IS 'soft reference: file_mgr.files.id';


-- -----------------------------------------------------------------------------
-- snapshots: one-frame still previews, cached by content
-- -----------------------------------------------------------------------------
-- cache_key = SHA-256 over template digest, composition, frame, resolution,
-- format and the canonical scene data. Unique per tenant, not globally: a hit
-- must never reveal (or serve) another tenant's row. A failed snapshot is
-- retried by resetting its row to 'queued'.
CREATE TABLE render.snapshots (
    id                  uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id           uuid        NOT NULL,   -- soft reference: identity.tenants.id
    user_id             uuid        NULL,       -- soft reference: identity.users.id
    cache_key           bytea       NOT NULL,
    template_version_id uuid        NULL,       -- soft reference: content.template_versions.id
    template_file_id    uuid        NOT NULL,   -- soft reference: file_mgr.files.id
    template_sha256     bytea       NOT NULL,
    composition_name    text        NOT NULL,
    frame               integer     NOT NULL,
    width               integer     NOT NULL,
    height              integer     NOT NULL,
    format              text        NOT NULL DEFAULT 'png',
    scene_data          jsonb       NOT NULL DEFAULT '{}',
    state               text        NOT NULL DEFAULT 'queued',
    file_id             uuid        NULL,       -- soft reference: file_mgr.files.id (the image)
    error_class         text        NULL,
    error_code          text        NULL,
    error_message       text        NULL,
    hit_count           bigint      NOT NULL DEFAULT 0,
    last_accessed_at    timestamptz NOT NULL DEFAULT now(),   -- LRU
    rendered_at         timestamptz NULL,
    expires_at          timestamptz NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT snapshots_tenant_cache_key_key UNIQUE (tenant_id, cache_key),
    CONSTRAINT snapshots_cache_key_check CHECK (octet_length(cache_key) = 32),
    CONSTRAINT snapshots_template_sha256_check CHECK (octet_length(template_sha256) = 32),
    CONSTRAINT snapshots_composition_check CHECK (char_length(composition_name) BETWEEN 1 AND 255),
    CONSTRAINT snapshots_frame_check CHECK (frame >= 0),
    CONSTRAINT snapshots_size_check CHECK (width BETWEEN 16 AND 16384 AND height BETWEEN 16 AND 16384),
    CONSTRAINT snapshots_format_check CHECK (format IN ('png', 'jpeg', 'webp')),
    CONSTRAINT snapshots_scene_data_check CHECK (jsonb_typeof(scene_data) = 'object'),
    CONSTRAINT snapshots_state_check CHECK (state IN ('queued', 'rendering', 'ready', 'failed')),
    CONSTRAINT snapshots_ready_check CHECK (state <> 'ready' OR (file_id IS NOT NULL AND rendered_at IS NOT NULL)),
    CONSTRAINT snapshots_failed_check CHECK (
        state <> 'failed' OR (error_class IS NOT NULL AND error_message IS NOT NULL)),
    -- The frame_jobs classes that can end a snapshot ('lost' and 'canceled' only
    -- end an attempt, which is retried), plus 'quota' (storing the image).
    CONSTRAINT snapshots_error_class_check CHECK (
        error_class IS NULL OR error_class IN ('template', 'machine', 'timeout', 'quota', 'internal')),
    CONSTRAINT snapshots_error_code_check CHECK (
        error_code IS NULL OR (error_class IS NOT NULL AND error_code ~ '^[a-z][a-z0-9_]{0,63}$')),
    CONSTRAINT snapshots_hit_count_check CHECK (hit_count >= 0)
);

CREATE INDEX snapshots_tenant_created_idx ON render.snapshots (tenant_id, created_at DESC);
-- LRU eviction and expiry cleanup.
CREATE INDEX snapshots_lru_idx ON render.snapshots (last_accessed_at) WHERE state = 'ready';
CREATE INDEX snapshots_expires_idx ON render.snapshots (expires_at) WHERE expires_at IS NOT NULL;

CREATE TRIGGER set_updated_at BEFORE UPDATE ON render.snapshots
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE render.snapshots IS 'Still previews (one frame), unique per (tenant_id, cache_key); a hit answers without rendering.';
COMMENT ON COLUMN render.snapshots.tenant_id IS 'soft reference: identity.tenants.id';
COMMENT ON COLUMN render.snapshots.user_id IS 'soft reference: identity.users.id';
COMMENT ON COLUMN render.snapshots.cache_key IS 'SHA-256 (32 raw bytes) over template digest, composition, frame, resolution, format and canonical scene data.';
COMMENT ON COLUMN render.snapshots.error_code IS 'flatrender.render.v1.ErrorCode, lower-case without the prefix.';
COMMENT ON COLUMN render.snapshots.template_version_id IS 'soft reference: content.template_versions.id';
COMMENT ON COLUMN render.snapshots.template_file_id IS 'soft reference: file_mgr.files.id';
COMMENT ON COLUMN render.snapshots.file_id IS 'soft reference: file_mgr.files.id';


-- -----------------------------------------------------------------------------
-- frame_jobs: the task queue (chunks and every other task a node runs)
-- -----------------------------------------------------------------------------
-- lane:  snapshot — one frame of a snapshot (snapshot_id set, no job);
--        render   — a chunk of a segment (job_id + segment_id);
--        repair   — re-render of frames of a chunk (job_id + repair_job_id);
--        assemble — final concat/mix/encode of a job (job_id; no frame range);
--        probe    — a test render that lets a quarantined node prove it has
--                   recovered (pinned_node_id; no job, no snapshot; tenant_id
--                   is the default tenant).
-- pinned_node_id restricts placement to one node (probes, operator requests).
-- lane_rank orders the queue: snapshot (a person is waiting) and probe first, then
-- repair and assemble (they finish started work), then render chunks; within
-- a rank by plan priority, then submit time. Fair share between tenants is
-- applied by the scheduler on top (tenant index below).
CREATE TABLE render.frame_jobs (
    id                uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id         uuid        NOT NULL,   -- soft reference: identity.tenants.id
    lane              text        NOT NULL,
    lane_rank         smallint    GENERATED ALWAYS AS (
        CASE lane WHEN 'snapshot' THEN 0 WHEN 'probe' THEN 0 WHEN 'repair' THEN 1 WHEN 'assemble' THEN 2 ELSE 3 END) STORED,
    job_id            uuid        NULL REFERENCES render.render_jobs (id) ON DELETE CASCADE,
    segment_id        uuid        NULL REFERENCES render.render_job_segments (id) ON DELETE CASCADE,
    snapshot_id       uuid        NULL REFERENCES render.snapshots (id) ON DELETE CASCADE,
    repair_job_id     uuid        NULL,   -- FK to frame_repair_jobs added below
    state             text        NOT NULL DEFAULT 'queued',
    priority          smallint    NOT NULL DEFAULT 0,    -- copied from the job / plan
    submitted_at      timestamptz NOT NULL DEFAULT now(),   -- the job's (or snapshot's) submit time
    not_before        timestamptz NULL,                  -- retry backoff
    -- What to render (NULL range for assemble).
    template_sha256   bytea       NULL,                  -- cache-affinity placement; NULL for assemble
    composition_name  text        NULL,
    frame_start       integer     NULL,
    frame_end         integer     NULL,
    frame_step        integer     NOT NULL DEFAULT 1,
    frame_count       integer     GENERATED ALWAYS AS ((frame_end - frame_start) / frame_step + 1) STORED,
    -- Placement requirements.
    min_ae_version    text        NULL,
    required_tags     text[]      NOT NULL DEFAULT '{}',
    min_ram_bytes     bigint      NULL,
    needs_gpu         boolean     NOT NULL DEFAULT false,
    pinned_node_id    uuid        NULL REFERENCES render.nodes (id) ON DELETE CASCADE,
    -- Lease (fencing): lease_epoch grows by one on every assignment.
    node_id           uuid        NULL REFERENCES render.nodes (id) ON DELETE SET NULL,
    lease_epoch       bigint      NOT NULL DEFAULT 0,
    leased_at         timestamptz NULL,
    lease_expires_at  timestamptz NULL,
    started_at        timestamptz NULL,   -- agent reported rendering
    finished_at       timestamptz NULL,
    attempts          integer     NOT NULL DEFAULT 0,
    max_attempts      integer     NOT NULL DEFAULT 3,
    -- Progress of the current attempt.
    frames_done       integer     NOT NULL DEFAULT 0,
    current_frame     integer     NULL,
    last_progress_at  timestamptz NULL,
    -- Outcome of the last attempt (every attempt: frame_job_attempts).
    exit_code         integer     NULL,
    error_class       text        NULL,
    error_code        text        NULL,
    error_message     text        NULL,
    log_tail          text        NULL,
    render_ms         bigint      NOT NULL DEFAULT 0,   -- node time over all attempts
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT frame_jobs_lane_check CHECK (lane IN ('snapshot', 'render', 'repair', 'assemble', 'probe')),
    CONSTRAINT frame_jobs_lane_refs_check CHECK (
        (lane = 'snapshot' AND snapshot_id IS NOT NULL AND job_id IS NULL AND segment_id IS NULL AND repair_job_id IS NULL)
        OR (lane = 'render' AND job_id IS NOT NULL AND segment_id IS NOT NULL AND snapshot_id IS NULL AND repair_job_id IS NULL)
        OR (lane = 'repair' AND job_id IS NOT NULL AND repair_job_id IS NOT NULL AND snapshot_id IS NULL)
        OR (lane = 'assemble' AND job_id IS NOT NULL AND segment_id IS NULL AND snapshot_id IS NULL AND repair_job_id IS NULL)
        OR (lane = 'probe' AND pinned_node_id IS NOT NULL AND job_id IS NULL AND segment_id IS NULL
            AND snapshot_id IS NULL AND repair_job_id IS NULL)),
    CONSTRAINT frame_jobs_frame_range_check CHECK (
        (lane = 'assemble' AND frame_start IS NULL AND frame_end IS NULL)
        OR (lane <> 'assemble' AND frame_start >= 0 AND frame_end >= frame_start
            AND composition_name IS NOT NULL AND template_sha256 IS NOT NULL)),
    CONSTRAINT frame_jobs_frame_step_check CHECK (frame_step BETWEEN 1 AND 1000),
    CONSTRAINT frame_jobs_template_sha256_check CHECK (template_sha256 IS NULL OR octet_length(template_sha256) = 32),
    CONSTRAINT frame_jobs_state_check CHECK (state IN ('queued', 'leased', 'running', 'done', 'failed', 'canceled')),
    CONSTRAINT frame_jobs_lease_check CHECK (
        state NOT IN ('leased', 'running')
        OR (node_id IS NOT NULL AND lease_expires_at IS NOT NULL AND leased_at IS NOT NULL AND lease_epoch > 0)),
    CONSTRAINT frame_jobs_finished_check CHECK ((state IN ('done', 'failed', 'canceled')) = (finished_at IS NOT NULL)),
    CONSTRAINT frame_jobs_priority_check CHECK (priority BETWEEN 0 AND 100),
    CONSTRAINT frame_jobs_lease_epoch_check CHECK (lease_epoch >= 0),
    -- attempts may reach max_attempts; the service then fails the task instead of requeueing it.
    CONSTRAINT frame_jobs_attempts_check CHECK (attempts >= 0 AND max_attempts >= 1),
    CONSTRAINT frame_jobs_required_tags_check CHECK (array_position(required_tags, NULL) IS NULL),
    CONSTRAINT frame_jobs_min_ram_check CHECK (min_ram_bytes IS NULL OR min_ram_bytes >= 0),
    CONSTRAINT frame_jobs_frames_done_check CHECK (frames_done >= 0),
    CONSTRAINT frame_jobs_error_class_check CHECK (
        error_class IS NULL OR error_class IN ('template', 'machine', 'timeout', 'canceled', 'lost', 'internal')),
    CONSTRAINT frame_jobs_error_code_check CHECK (
        error_code IS NULL OR (error_class IS NOT NULL AND error_code ~ '^[a-z][a-z0-9_]{0,63}$')),
    CONSTRAINT frame_jobs_log_tail_check CHECK (log_tail IS NULL OR octet_length(log_tail) <= 65536),
    CONSTRAINT frame_jobs_render_ms_check CHECK (render_ms >= 0)
);

-- Claim: the queued tasks in dispatch order.
CREATE INDEX frame_jobs_claim_idx ON render.frame_jobs (lane_rank, priority DESC, submitted_at, id)
    WHERE state = 'queued';
-- Fair share: the queued tasks of one tenant in dispatch order.
CREATE INDEX frame_jobs_tenant_queue_idx ON render.frame_jobs (tenant_id, lane_rank, priority DESC, submitted_at, id)
    WHERE state = 'queued';
-- Lease expiry scan.
CREATE INDEX frame_jobs_lease_expiry_idx ON render.frame_jobs (lease_expires_at)
    WHERE state IN ('leased', 'running');
-- A node's current tasks (lost stream, drain, slots).
CREATE INDEX frame_jobs_node_active_idx ON render.frame_jobs (node_id)
    WHERE state IN ('leased', 'running');
-- Job bookkeeping: chunks of a job by state (progress, completion, cancel).
CREATE INDEX frame_jobs_job_state_idx ON render.frame_jobs (job_id, state) WHERE job_id IS NOT NULL;
CREATE INDEX frame_jobs_segment_idx ON render.frame_jobs (segment_id, frame_start) WHERE segment_id IS NOT NULL;
CREATE INDEX frame_jobs_snapshot_idx ON render.frame_jobs (snapshot_id) WHERE snapshot_id IS NOT NULL;
CREATE INDEX frame_jobs_pinned_node_idx ON render.frame_jobs (pinned_node_id) WHERE pinned_node_id IS NOT NULL;

CREATE TRIGGER set_updated_at BEFORE UPDATE ON render.frame_jobs
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE render.frame_jobs IS 'Task queue (lanes snapshot/render/repair/assemble), claimed with FOR UPDATE SKIP LOCKED and fenced by lease_epoch.';
COMMENT ON COLUMN render.frame_jobs.tenant_id IS 'soft reference: identity.tenants.id';
COMMENT ON COLUMN render.frame_jobs.lease_epoch IS 'Fencing token: +1 on every assignment; reports with another epoch are rejected.';
COMMENT ON COLUMN render.frame_jobs.lane_rank IS 'Generated: snapshot/probe 0, repair 1, assemble 2, render 3 (lower is dispatched first).';
COMMENT ON COLUMN render.frame_jobs.error_code IS 'flatrender.render.v1.ErrorCode of the last attempt, lower-case without the prefix.';
COMMENT ON COLUMN render.frame_jobs.pinned_node_id IS 'Only this node may take the task (probe renders, operator requests).';


-- -----------------------------------------------------------------------------
-- frame_repair_jobs: frames of a chunk that came out missing or corrupt
-- -----------------------------------------------------------------------------
-- Each contiguous run of bad frames is one repair; it is executed by a
-- frame_jobs row with lane 'repair' and repair_job_id = this id, preferably
-- on another node than detected_on_node_id. The chunk counts as done only
-- when its repairs are done.
CREATE TABLE render.frame_repair_jobs (
    id                  uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id           uuid        NOT NULL,   -- soft reference: identity.tenants.id
    job_id              uuid        NOT NULL REFERENCES render.render_jobs (id) ON DELETE CASCADE,
    frame_job_id        uuid        NOT NULL REFERENCES render.frame_jobs (id) ON DELETE CASCADE,   -- the chunk repaired
    frame_start         integer     NOT NULL,
    frame_end           integer     NOT NULL,
    reason              text        NOT NULL,
    detected_on_node_id uuid        NULL REFERENCES render.nodes (id) ON DELETE SET NULL,
    state               text        NOT NULL DEFAULT 'queued',
    resolved_at         timestamptz NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT frame_repair_jobs_frame_range_check CHECK (frame_start >= 0 AND frame_end >= frame_start),
    CONSTRAINT frame_repair_jobs_reason_check CHECK (reason IN ('missing', 'corrupt', 'checksum_mismatch', 'wrong_size')),
    CONSTRAINT frame_repair_jobs_state_check CHECK (state IN ('queued', 'running', 'done', 'failed', 'canceled')),
    CONSTRAINT frame_repair_jobs_resolved_check CHECK ((state IN ('done', 'failed', 'canceled')) = (resolved_at IS NOT NULL))
);

CREATE INDEX frame_repair_jobs_chunk_idx ON render.frame_repair_jobs (frame_job_id, state);
CREATE INDEX frame_repair_jobs_job_idx ON render.frame_repair_jobs (job_id, state);

CREATE TRIGGER set_updated_at BEFORE UPDATE ON render.frame_repair_jobs
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE render.frame_repair_jobs IS 'Re-render requests for missing/corrupt frames of a chunk, executed as lane=repair frame_jobs.';
COMMENT ON COLUMN render.frame_repair_jobs.tenant_id IS 'soft reference: identity.tenants.id';

ALTER TABLE render.frame_jobs
    ADD CONSTRAINT frame_jobs_repair_job_id_fkey
    FOREIGN KEY (repair_job_id) REFERENCES render.frame_repair_jobs (id) ON DELETE CASCADE;

CREATE INDEX frame_jobs_repair_job_idx ON render.frame_jobs (repair_job_id) WHERE repair_job_id IS NOT NULL;


-- -----------------------------------------------------------------------------
-- frame_job_excluded_nodes: a node that failed a job's chunk gets no more of
-- that job (job_id set); for snapshots the exclusion is per task.
-- -----------------------------------------------------------------------------
CREATE TABLE render.frame_job_excluded_nodes (
    frame_job_id uuid        NOT NULL REFERENCES render.frame_jobs (id) ON DELETE CASCADE,
    node_id      uuid        NOT NULL REFERENCES render.nodes (id) ON DELETE CASCADE,
    job_id       uuid        NULL REFERENCES render.render_jobs (id) ON DELETE CASCADE,
    tenant_id    uuid        NOT NULL,   -- soft reference: identity.tenants.id
    reason       text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (frame_job_id, node_id),
    CONSTRAINT frame_job_excluded_nodes_reason_check CHECK (reason IN ('failed', 'crashed', 'timed_out', 'lost', 'corrupt_output'))
);

-- "Is this node excluded from this job?" during placement.
CREATE INDEX frame_job_excluded_nodes_job_node_idx ON render.frame_job_excluded_nodes (job_id, node_id) WHERE job_id IS NOT NULL;
CREATE INDEX frame_job_excluded_nodes_node_idx ON render.frame_job_excluded_nodes (node_id);

COMMENT ON TABLE render.frame_job_excluded_nodes IS 'Nodes excluded from a job (or a snapshot task) after failing one of its tasks.';
COMMENT ON COLUMN render.frame_job_excluded_nodes.tenant_id IS 'soft reference: identity.tenants.id';


-- -----------------------------------------------------------------------------
-- frame_job_attempts: every lease of a task (the attempt history)
-- -----------------------------------------------------------------------------
-- One row per assignment, written at claim time in the same transaction as the
-- new lease_epoch and finished by the task's result (or by the orchestrator:
-- lease_lost, rejected). `attempt` is the 1-based ordinal of the lease among
-- the task's leases and keeps counting across RequeueRender; it can exceed
-- frame_jobs.attempts, which does not count rejected and handed_back leases.
-- The last attempt's outcome is also copied to the frame_jobs row.
CREATE TABLE render.frame_job_attempts (
    id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid        NOT NULL,   -- soft reference: identity.tenants.id
    frame_job_id  uuid        NOT NULL REFERENCES render.frame_jobs (id) ON DELETE CASCADE,
    job_id        uuid        NULL REFERENCES render.render_jobs (id) ON DELETE CASCADE,   -- the task's job, if any
    attempt       integer     NOT NULL,
    lease_epoch   bigint      NOT NULL,
    node_id       uuid        NULL REFERENCES render.nodes (id) ON DELETE SET NULL,
    node_name     text        NOT NULL,   -- the node's name at the time
    assigned_at   timestamptz NOT NULL DEFAULT now(),   -- lease granted
    started_at    timestamptz NULL,       -- agent accepted (TaskUpdate ACCEPTED)
    finished_at   timestamptz NULL,
    -- flatrender.render.v1.TaskOutcome, lower-case without the prefix; NULL while running.
    outcome       text        NULL,
    error_class   text        NULL,
    error_code    text        NULL,
    error_message text        NULL,       -- raw, as the agent reported it (node paths included)
    exit_code     integer     NULL,
    render_ms     bigint      NOT NULL DEFAULT 0,   -- node time of this attempt (download + render + upload)
    log_tail      text        NULL,       -- last lines of aerender's / ffmpeg's output
    log_file_id   uuid        NULL,       -- soft reference: file_mgr.files.id (the full log, when uploaded)
    warnings      text[]      NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT frame_job_attempts_attempt_key UNIQUE (frame_job_id, attempt),
    -- Results are deduplicated by (task, epoch); every lease has its own epoch.
    CONSTRAINT frame_job_attempts_lease_epoch_key UNIQUE (frame_job_id, lease_epoch),
    CONSTRAINT frame_job_attempts_attempt_check CHECK (attempt >= 1),
    CONSTRAINT frame_job_attempts_lease_epoch_check CHECK (lease_epoch > 0),
    CONSTRAINT frame_job_attempts_node_name_check CHECK (char_length(node_name) BETWEEN 1 AND 63),
    CONSTRAINT frame_job_attempts_outcome_check CHECK (
        outcome IS NULL OR outcome IN ('success', 'template_error', 'machine_error', 'timeout', 'canceled',
                                       'handed_back', 'lease_lost', 'rejected')),
    CONSTRAINT frame_job_attempts_finished_check CHECK ((outcome IS NULL) = (finished_at IS NULL)),
    CONSTRAINT frame_job_attempts_error_class_check CHECK (
        error_class IS NULL OR error_class IN ('template', 'machine', 'timeout', 'canceled', 'lost', 'internal')),
    CONSTRAINT frame_job_attempts_error_code_check CHECK (
        error_code IS NULL OR (error_class IS NOT NULL AND error_code ~ '^[a-z][a-z0-9_]{0,63}$')),
    CONSTRAINT frame_job_attempts_success_check CHECK (outcome IS DISTINCT FROM 'success' OR error_class IS NULL),
    CONSTRAINT frame_job_attempts_render_ms_check CHECK (render_ms >= 0),
    CONSTRAINT frame_job_attempts_log_tail_check CHECK (log_tail IS NULL OR octet_length(log_tail) <= 65536),
    CONSTRAINT frame_job_attempts_warnings_check CHECK (
        cardinality(warnings) <= 100 AND array_position(warnings, NULL) IS NULL)
);

-- A job's attempts (RenderStats, SearchRenders by node) and a node's history.
CREATE INDEX frame_job_attempts_job_idx ON render.frame_job_attempts (job_id, node_id) WHERE job_id IS NOT NULL;
CREATE INDEX frame_job_attempts_node_assigned_idx ON render.frame_job_attempts (node_id, assigned_at DESC)
    WHERE node_id IS NOT NULL;
-- Attempts still running (reconciliation after a replica restart).
CREATE INDEX frame_job_attempts_open_idx ON render.frame_job_attempts (assigned_at) WHERE finished_at IS NULL;

CREATE TRIGGER set_updated_at BEFORE UPDATE ON render.frame_job_attempts
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE render.frame_job_attempts IS 'Attempt history of every task: one row per lease (node, epoch, times, outcome, error, exit code, log tail).';
COMMENT ON COLUMN render.frame_job_attempts.tenant_id IS 'soft reference: identity.tenants.id';
COMMENT ON COLUMN render.frame_job_attempts.attempt IS '1-based ordinal of the lease among the task''s leases (rejected and handed-back leases included).';
COMMENT ON COLUMN render.frame_job_attempts.outcome IS 'flatrender.render.v1.TaskOutcome, lower-case without the prefix; NULL while running.';
COMMENT ON COLUMN render.frame_job_attempts.error_code IS 'flatrender.render.v1.ErrorCode, lower-case without the prefix.';
COMMENT ON COLUMN render.frame_job_attempts.log_file_id IS 'soft reference: file_mgr.files.id';


-- -----------------------------------------------------------------------------
-- frame_results: frames accepted for a chunk
-- -----------------------------------------------------------------------------
-- One row per frame of a render/snapshot task, written only by a report that
-- carries the current lease_epoch of the producing task. A repair overwrites
-- the row (source_frame_job_id = the repair task, with its epoch), so every
-- frame of a completed job is accepted exactly once.
CREATE TABLE render.frame_results (
    frame_job_id        uuid        NOT NULL REFERENCES render.frame_jobs (id) ON DELETE CASCADE,
    frame_number        integer     NOT NULL,
    tenant_id           uuid        NOT NULL,   -- soft reference: identity.tenants.id
    job_id              uuid        NULL REFERENCES render.render_jobs (id) ON DELETE CASCADE,
    source_frame_job_id uuid        NOT NULL REFERENCES render.frame_jobs (id) ON DELETE CASCADE,
    lease_epoch         bigint      NOT NULL,
    node_id             uuid        NULL REFERENCES render.nodes (id) ON DELETE SET NULL,
    file_id             uuid        NULL,       -- soft reference: file_mgr.files.id (the frame image)
    sha256              bytea       NOT NULL,
    size_bytes          bigint      NOT NULL,
    width               integer     NULL,
    height              integer     NULL,
    render_ms           integer     NULL,       -- time the frame took, when the agent measured it
    accepted_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (frame_job_id, frame_number),
    CONSTRAINT frame_results_frame_number_check CHECK (frame_number >= 0),
    CONSTRAINT frame_results_lease_epoch_check CHECK (lease_epoch > 0),
    CONSTRAINT frame_results_sha256_check CHECK (octet_length(sha256) = 32),
    CONSTRAINT frame_results_size_check CHECK (size_bytes >= 0),
    CONSTRAINT frame_results_dimensions_check CHECK ((width IS NULL OR width > 0) AND (height IS NULL OR height > 0)),
    CONSTRAINT frame_results_render_ms_check CHECK (render_ms IS NULL OR render_ms >= 0)
);

CREATE INDEX frame_results_job_idx ON render.frame_results (job_id) WHERE job_id IS NOT NULL;
CREATE INDEX frame_results_source_idx ON render.frame_results (source_frame_job_id);

COMMENT ON TABLE render.frame_results IS 'Accepted frames per chunk with checksum and the lease epoch they were accepted under.';
COMMENT ON COLUMN render.frame_results.tenant_id IS 'soft reference: identity.tenants.id';
COMMENT ON COLUMN render.frame_results.file_id IS 'soft reference: file_mgr.files.id';


-- -----------------------------------------------------------------------------
-- exports: the finished video of a job
-- -----------------------------------------------------------------------------
CREATE TABLE render.exports (
    id                 uuid         PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id          uuid         NOT NULL,   -- soft reference: identity.tenants.id
    user_id            uuid         NULL,       -- soft reference: identity.users.id
    job_id             uuid         NOT NULL REFERENCES render.render_jobs (id) ON DELETE CASCADE,
    file_id            uuid         NOT NULL,   -- soft reference: file_mgr.files.id (kind export)
    format             text         NOT NULL DEFAULT 'mp4',
    width              integer      NOT NULL,
    height             integer      NOT NULL,
    fps                double precision NOT NULL,
    frame_count        integer      NOT NULL,
    duration_ms        bigint       NOT NULL,
    size_bytes         bigint       NOT NULL,
    sha256             bytea        NOT NULL,
    has_audio          boolean      NOT NULL DEFAULT false,
    watermarked        boolean      NOT NULL DEFAULT false,
    state              text         NOT NULL DEFAULT 'available',
    expires_at         timestamptz  NULL,       -- from the plan's export_retention_days
    download_count     bigint       NOT NULL DEFAULT 0,   -- complete downloads (FileDownloaded events)
    last_downloaded_at timestamptz  NULL,
    created_at         timestamptz  NOT NULL DEFAULT now(),
    updated_at         timestamptz  NOT NULL DEFAULT now(),
    CONSTRAINT exports_job_key UNIQUE (job_id),
    CONSTRAINT exports_format_check CHECK (format IN ('mp4', 'mov', 'webm', 'gif')),
    CONSTRAINT exports_size_check CHECK (width BETWEEN 16 AND 16384 AND height BETWEEN 16 AND 16384),
    CONSTRAINT exports_fps_check CHECK (fps > 0 AND fps <= 240),
    CONSTRAINT exports_frames_check CHECK (frame_count >= 1 AND duration_ms > 0),
    CONSTRAINT exports_size_bytes_check CHECK (size_bytes >= 0),
    CONSTRAINT exports_sha256_check CHECK (octet_length(sha256) = 32),
    CONSTRAINT exports_state_check CHECK (state IN ('available', 'expired', 'deleted')),
    CONSTRAINT exports_download_count_check CHECK (download_count >= 0)
);

CREATE INDEX exports_tenant_created_idx ON render.exports (tenant_id, created_at DESC);
CREATE INDEX exports_user_created_idx ON render.exports (user_id, created_at DESC) WHERE user_id IS NOT NULL;
-- FileDownloaded events (file service) bump download_count by the export's file.
CREATE INDEX exports_file_idx ON render.exports (file_id);
-- Retention cleanup.
CREATE INDEX exports_expires_idx ON render.exports (expires_at) WHERE state = 'available' AND expires_at IS NOT NULL;

CREATE TRIGGER set_updated_at BEFORE UPDATE ON render.exports
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE render.exports IS 'Finished videos (one per completed job) with retention.';
COMMENT ON COLUMN render.exports.tenant_id IS 'soft reference: identity.tenants.id';
COMMENT ON COLUMN render.exports.user_id IS 'soft reference: identity.users.id';
COMMENT ON COLUMN render.exports.file_id IS 'soft reference: file_mgr.files.id';


-- -----------------------------------------------------------------------------
-- node_crashes (11) can now point at the job and task that crashed
-- -----------------------------------------------------------------------------
ALTER TABLE render.node_crashes
    ADD CONSTRAINT node_crashes_job_id_fkey
    FOREIGN KEY (job_id) REFERENCES render.render_jobs (id) ON DELETE SET NULL;
ALTER TABLE render.node_crashes
    ADD CONSTRAINT node_crashes_frame_job_id_fkey
    FOREIGN KEY (frame_job_id) REFERENCES render.frame_jobs (id) ON DELETE SET NULL;

CREATE INDEX node_crashes_job_idx ON render.node_crashes (job_id) WHERE job_id IS NOT NULL;
CREATE INDEX node_crashes_frame_job_idx ON render.node_crashes (frame_job_id) WHERE frame_job_id IS NOT NULL;


-- -----------------------------------------------------------------------------
-- Privileges (also covered by default privileges from 00_setup)
-- -----------------------------------------------------------------------------
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES    IN SCHEMA render TO flatrender_render;
GRANT USAGE, SELECT, UPDATE         ON ALL SEQUENCES IN SCHEMA render TO flatrender_render;
