-- =============================================================================
-- 10_studio_saved_projects.sql — studio: the customer's saved video projects
-- =============================================================================
-- saved_projects (template version, scene data, master audio settings incl.
-- voiceover_*, output settings), saved_project_scenes (the ordered scenes the
-- customer chose, with their field values), saved_project_audio_tracks
-- (music / voiceover / sfx clips with volume, offset and fades).
--
-- Volumes everywhere are linear gains: 0.0 = silent, 1.0 = unchanged,
-- up to 2.0 (+6 dB). A clip's effective gain = the project's master volume
-- for its kind (music_volume / voiceover_volume / sfx_volume) x the clip's
-- volume. Times are integer milliseconds.
-- =============================================================================


-- -----------------------------------------------------------------------------
-- saved_projects
-- -----------------------------------------------------------------------------
CREATE TABLE studio.saved_projects (
    id                  uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id           uuid        NOT NULL,   -- soft reference: identity.tenants.id
    user_id             uuid        NOT NULL,   -- soft reference: identity.users.id
    template_id         uuid        NOT NULL,   -- soft reference: content.templates.id
    template_version_id uuid        NOT NULL,   -- soft reference: content.template_versions.id
    name                text        NOT NULL,
    status              text        NOT NULL DEFAULT 'active',
    -- Project-wide field values shared by every scene: {<field key>: <value>}.
    scene_data          jsonb       NOT NULL DEFAULT '{}',

    -- Audio: the main music bed and master volumes per kind (the clips
    -- themselves are in saved_project_audio_tracks).
    music_file_id       uuid        NULL,       -- soft reference: file_mgr.files.id
    music_volume        real        NOT NULL DEFAULT 1.0,
    sfx_volume          real        NOT NULL DEFAULT 1.0,

    -- Voiceover: uploaded, recorded in the browser, or synthesised (tts) from
    -- voiceover_text with voiceover_voice in voiceover_language.
    voiceover_source    text        NOT NULL DEFAULT 'none',
    voiceover_file_id   uuid        NULL,       -- soft reference: file_mgr.files.id (kind voiceover)
    voiceover_volume    real        NOT NULL DEFAULT 1.0,
    voiceover_text      text        NULL,
    voiceover_voice     text        NULL,       -- TTS voice id of the provider
    voiceover_language  text        NULL,       -- BCP 47, e.g. 'en-US'
    voiceover_speed     real        NOT NULL DEFAULT 1.0,   -- TTS speaking rate
    voiceover_offset_ms integer     NOT NULL DEFAULT 0,

    -- Output settings; NULL width/height/fps = the template's own.
    output_width        integer     NULL,
    output_height       integer     NULL,
    output_fps          double precision NULL,
    output_format       text        NOT NULL DEFAULT 'mp4',
    output_quality      text        NOT NULL DEFAULT 'standard',

    thumbnail_file_id   uuid        NULL,       -- soft reference: file_mgr.files.id
    last_render_job_id  uuid        NULL,       -- soft reference: render.render_jobs.id
    last_rendered_at    timestamptz NULL,
    last_opened_at      timestamptz NULL,
    -- Optimistic concurrency for autosave: UPDATE ... SET revision = revision + 1
    -- WHERE id = $1 AND revision = $expected.
    revision            integer     NOT NULL DEFAULT 1,
    archived_at         timestamptz NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT saved_projects_name_check CHECK (char_length(btrim(name)) BETWEEN 1 AND 200),
    CONSTRAINT saved_projects_status_check CHECK (status IN ('active', 'archived')),
    CONSTRAINT saved_projects_archived_check CHECK (status <> 'archived' OR archived_at IS NOT NULL),
    CONSTRAINT saved_projects_scene_data_check CHECK (jsonb_typeof(scene_data) = 'object'),
    CONSTRAINT saved_projects_volumes_check CHECK (
        music_volume BETWEEN 0 AND 2 AND sfx_volume BETWEEN 0 AND 2 AND voiceover_volume BETWEEN 0 AND 2),
    CONSTRAINT saved_projects_voiceover_source_check CHECK (voiceover_source IN ('none', 'upload', 'recording', 'tts')),
    CONSTRAINT saved_projects_voiceover_check CHECK (
        (voiceover_source = 'none')
        OR (voiceover_source IN ('upload', 'recording') AND voiceover_file_id IS NOT NULL)
        OR (voiceover_source = 'tts' AND voiceover_text IS NOT NULL AND voiceover_voice IS NOT NULL)),
    CONSTRAINT saved_projects_voiceover_text_check CHECK (voiceover_text IS NULL OR char_length(voiceover_text) <= 20000),
    CONSTRAINT saved_projects_voiceover_language_check CHECK (
        voiceover_language IS NULL OR voiceover_language ~ '^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$'),
    CONSTRAINT saved_projects_voiceover_speed_check CHECK (voiceover_speed BETWEEN 0.25 AND 4),
    CONSTRAINT saved_projects_voiceover_offset_check CHECK (voiceover_offset_ms >= 0),
    CONSTRAINT saved_projects_output_size_check CHECK (
        (output_width IS NULL) = (output_height IS NULL)
        AND (output_width IS NULL OR (output_width BETWEEN 16 AND 16384 AND output_height BETWEEN 16 AND 16384))),
    CONSTRAINT saved_projects_output_fps_check CHECK (output_fps IS NULL OR (output_fps > 0 AND output_fps <= 240)),
    CONSTRAINT saved_projects_output_format_check CHECK (output_format IN ('mp4', 'mov', 'webm', 'gif')),
    CONSTRAINT saved_projects_output_quality_check CHECK (output_quality IN ('draft', 'standard', 'high')),
    CONSTRAINT saved_projects_revision_check CHECK (revision >= 1)
);

-- "My projects": a user's projects, recently edited first.
CREATE INDEX saved_projects_user_updated_idx ON studio.saved_projects (tenant_id, user_id, updated_at DESC);
CREATE INDEX saved_projects_tenant_created_idx ON studio.saved_projects (tenant_id, created_at DESC);
CREATE INDEX saved_projects_template_version_idx ON studio.saved_projects (template_version_id);

CREATE TRIGGER set_updated_at BEFORE UPDATE ON studio.saved_projects
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE studio.saved_projects IS 'Customer video projects: template version, scene data, audio (music/voiceover/sfx) and output settings.';
COMMENT ON COLUMN studio.saved_projects.tenant_id IS 'soft reference: identity.tenants.id';
COMMENT ON COLUMN studio.saved_projects.user_id IS 'soft reference: identity.users.id';
COMMENT ON COLUMN studio.saved_projects.template_id IS 'soft reference: content.templates.id';
COMMENT ON COLUMN studio.saved_projects.template_version_id IS 'soft reference: content.template_versions.id';
COMMENT ON COLUMN studio.saved_projects.music_file_id IS 'soft reference: file_mgr.files.id';
COMMENT ON COLUMN studio.saved_projects.music_volume IS 'Master gain of music tracks, linear 0..2 (1 = unchanged).';
COMMENT ON COLUMN studio.saved_projects.sfx_volume IS 'Master gain of sfx tracks, linear 0..2 (1 = unchanged).';
COMMENT ON COLUMN studio.saved_projects.voiceover_volume IS 'Master gain of voiceover tracks, linear 0..2 (1 = unchanged).';
COMMENT ON COLUMN studio.saved_projects.voiceover_file_id IS 'soft reference: file_mgr.files.id';
COMMENT ON COLUMN studio.saved_projects.thumbnail_file_id IS 'soft reference: file_mgr.files.id';
COMMENT ON COLUMN studio.saved_projects.last_render_job_id IS 'soft reference: render.render_jobs.id';


-- -----------------------------------------------------------------------------
-- saved_project_scenes: the chosen scenes, in order
-- -----------------------------------------------------------------------------
-- position is unique per project but DEFERRABLE so a reorder can shift many
-- rows in one statement (checked at statement end).
CREATE TABLE studio.saved_project_scenes (
    id               uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id        uuid        NOT NULL,   -- soft reference: identity.tenants.id
    project_id       uuid        NOT NULL REFERENCES studio.saved_projects (id) ON DELETE CASCADE,
    position         integer     NOT NULL,
    scene_id         uuid        NOT NULL,   -- soft reference: content.scenes.id
    scene_key        text        NOT NULL,   -- content.scenes.key (stable across template versions)
    -- The customer's values for this scene's fields: {<field key>: <value>}.
    field_values     jsonb       NOT NULL DEFAULT '{}',
    -- Optional trim inside the scene's frame range (comp frames, inclusive).
    frame_start      integer     NULL,
    frame_end        integer     NULL,
    enabled          boolean     NOT NULL DEFAULT true,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT saved_project_scenes_position_key UNIQUE (project_id, position) DEFERRABLE INITIALLY IMMEDIATE,
    CONSTRAINT saved_project_scenes_position_check CHECK (position >= 0),
    CONSTRAINT saved_project_scenes_field_values_check CHECK (jsonb_typeof(field_values) = 'object'),
    CONSTRAINT saved_project_scenes_frame_range_check CHECK (
        (frame_start IS NULL) = (frame_end IS NULL)
        AND (frame_start IS NULL OR (frame_start >= 0 AND frame_end >= frame_start)))
);

CREATE INDEX saved_project_scenes_project_idx ON studio.saved_project_scenes (project_id, position);

CREATE TRIGGER set_updated_at BEFORE UPDATE ON studio.saved_project_scenes
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE studio.saved_project_scenes IS 'Ordered scenes of a saved project with the customer''s field values.';
COMMENT ON COLUMN studio.saved_project_scenes.tenant_id IS 'soft reference: identity.tenants.id';
COMMENT ON COLUMN studio.saved_project_scenes.scene_id IS 'soft reference: content.scenes.id';


-- -----------------------------------------------------------------------------
-- saved_project_audio_tracks: music, voiceover and sfx clips
-- -----------------------------------------------------------------------------
CREATE TABLE studio.saved_project_audio_tracks (
    id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid        NOT NULL,   -- soft reference: identity.tenants.id
    project_id    uuid        NOT NULL REFERENCES studio.saved_projects (id) ON DELETE CASCADE,
    kind          text        NOT NULL,
    file_id       uuid        NOT NULL,   -- soft reference: file_mgr.files.id
    name          text        NULL,
    position      integer     NOT NULL DEFAULT 0,   -- order among tracks of the same kind
    volume        real        NOT NULL DEFAULT 1.0, -- linear gain 0..2
    offset_ms     integer     NOT NULL DEFAULT 0,   -- where the clip starts in the video
    trim_start_ms integer     NOT NULL DEFAULT 0,   -- skip this much of the source
    trim_end_ms   integer     NULL,                 -- stop at this point of the source; NULL = its end
    fade_in_ms    integer     NOT NULL DEFAULT 0,
    fade_out_ms   integer     NOT NULL DEFAULT 0,
    looping       boolean     NOT NULL DEFAULT false,   -- repeat the clip to the end of the video
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT saved_project_audio_tracks_kind_check CHECK (kind IN ('music', 'voiceover', 'sfx')),
    CONSTRAINT saved_project_audio_tracks_name_check CHECK (name IS NULL OR char_length(name) <= 255),
    CONSTRAINT saved_project_audio_tracks_position_check CHECK (position >= 0),
    CONSTRAINT saved_project_audio_tracks_volume_check CHECK (volume BETWEEN 0 AND 2),
    CONSTRAINT saved_project_audio_tracks_times_check CHECK (
        offset_ms >= 0 AND trim_start_ms >= 0 AND fade_in_ms >= 0 AND fade_out_ms >= 0
        AND (trim_end_ms IS NULL OR trim_end_ms > trim_start_ms))
);

CREATE INDEX saved_project_audio_tracks_project_idx ON studio.saved_project_audio_tracks (project_id, kind, position);

CREATE TRIGGER set_updated_at BEFORE UPDATE ON studio.saved_project_audio_tracks
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE studio.saved_project_audio_tracks IS 'Audio clips of a project: kind music/voiceover/sfx, volume, offset, trim and fades (ms).';
COMMENT ON COLUMN studio.saved_project_audio_tracks.tenant_id IS 'soft reference: identity.tenants.id';
COMMENT ON COLUMN studio.saved_project_audio_tracks.file_id IS 'soft reference: file_mgr.files.id';


-- -----------------------------------------------------------------------------
-- Privileges (also covered by default privileges from 00_setup)
-- -----------------------------------------------------------------------------
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES    IN SCHEMA studio TO flatrender_studio;
GRANT USAGE, SELECT, UPDATE         ON ALL SEQUENCES IN SCHEMA studio TO flatrender_studio;
