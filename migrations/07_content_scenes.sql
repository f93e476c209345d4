-- =============================================================================
-- 07_content_scenes.sql — content: scenes of a template version and their fields
-- =============================================================================
-- scenes (a composition and frame range the customer can choose), and
-- scene_fields (what the customer can edit in it: texts, images, colours...).
-- Scene data sent to a render is a JSON object keyed by scene_fields.key.
-- =============================================================================


-- -----------------------------------------------------------------------------
-- scenes
-- -----------------------------------------------------------------------------
CREATE TABLE content.scenes (
    id                    uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id             uuid        NOT NULL,   -- soft reference: identity.tenants.id
    template_version_id   uuid        NOT NULL REFERENCES content.template_versions (id) ON DELETE CASCADE,
    key                   text        NOT NULL,   -- stable id inside the version, e.g. 'intro'
    name                  text        NOT NULL,
    description           text        NULL,
    composition_name      text        NOT NULL,   -- After Effects composition rendered for this scene
    frame_start           integer     NOT NULL,   -- comp frame numbers, end inclusive (as aerender -s/-e)
    frame_end             integer     NOT NULL,
    duration_frames       integer     GENERATED ALWAYS AS (frame_end - frame_start + 1) STORED,
    snapshot_frame        integer     NULL,       -- frame used for the scene's still preview
    thumbnail_file_id     uuid        NULL,       -- soft reference: file_mgr.files.id
    preview_video_file_id uuid        NULL,       -- soft reference: file_mgr.files.id
    sort_order            integer     NOT NULL DEFAULT 0,
    is_required           boolean     NOT NULL DEFAULT false,   -- always part of the video
    max_repeats           integer     NOT NULL DEFAULT 1,       -- times it may appear in one project
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT scenes_version_key_key UNIQUE (template_version_id, key),
    CONSTRAINT scenes_key_check CHECK (key ~ '^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$'),
    CONSTRAINT scenes_name_check CHECK (char_length(btrim(name)) BETWEEN 1 AND 200),
    CONSTRAINT scenes_composition_name_check CHECK (char_length(composition_name) BETWEEN 1 AND 255),
    CONSTRAINT scenes_frame_range_check CHECK (frame_start >= 0 AND frame_end >= frame_start),
    CONSTRAINT scenes_snapshot_frame_check CHECK (
        snapshot_frame IS NULL OR snapshot_frame BETWEEN frame_start AND frame_end),
    CONSTRAINT scenes_max_repeats_check CHECK (max_repeats BETWEEN 1 AND 100)
);

CREATE INDEX scenes_version_order_idx ON content.scenes (template_version_id, sort_order);

CREATE TRIGGER set_updated_at BEFORE UPDATE ON content.scenes
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE content.scenes IS 'Scenes of a template version: a composition and an inclusive comp-frame range.';
COMMENT ON COLUMN content.scenes.tenant_id IS 'soft reference: identity.tenants.id';
COMMENT ON COLUMN content.scenes.thumbnail_file_id IS 'soft reference: file_mgr.files.id';
COMMENT ON COLUMN content.scenes.preview_video_file_id IS 'soft reference: file_mgr.files.id';


-- -----------------------------------------------------------------------------
-- scene_fields: editable properties of a scene
-- -----------------------------------------------------------------------------
-- How a field reaches After Effects: layer_name (+ property_path for effect
-- or other properties) addressed by the generated injection JSX.
CREATE TABLE content.scene_fields (
    id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id      uuid        NOT NULL,   -- soft reference: identity.tenants.id
    scene_id       uuid        NOT NULL REFERENCES content.scenes (id) ON DELETE CASCADE,
    key            text        NOT NULL,   -- key in the scene data
    label          text        NOT NULL,
    help_text      text        NULL,
    kind           text        NOT NULL,
    layer_name     text        NULL,
    property_path  text        NULL,       -- e.g. 'Effects/Fill/Color'
    default_value  jsonb       NULL,
    is_required    boolean     NOT NULL DEFAULT false,
    max_length     integer     NULL,       -- text: characters
    max_lines      integer     NULL,       -- text: lines
    min_value      double precision NULL,  -- number
    max_value      double precision NULL,  -- number
    options        jsonb       NULL,       -- select: [{"value": ..., "label": ...}]
    image_width    integer     NULL,       -- image/video: the placeholder size in pixels
    image_height   integer     NULL,
    group_name     text        NULL,       -- UI grouping
    sort_order     integer     NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT scene_fields_scene_key_key UNIQUE (scene_id, key),
    CONSTRAINT scene_fields_key_check CHECK (key ~ '^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$'),
    CONSTRAINT scene_fields_label_check CHECK (char_length(btrim(label)) BETWEEN 1 AND 200),
    CONSTRAINT scene_fields_kind_check CHECK (
        kind IN ('text', 'image', 'video', 'color', 'number', 'boolean', 'select', 'font', 'audio', 'character')),
    CONSTRAINT scene_fields_max_length_check CHECK (max_length IS NULL OR max_length > 0),
    CONSTRAINT scene_fields_max_lines_check CHECK (max_lines IS NULL OR max_lines > 0),
    CONSTRAINT scene_fields_range_check CHECK (min_value IS NULL OR max_value IS NULL OR max_value >= min_value),
    CONSTRAINT scene_fields_options_check CHECK (
        (kind = 'select' AND options IS NOT NULL AND jsonb_typeof(options) = 'array')
        OR (kind <> 'select' AND (options IS NULL OR jsonb_typeof(options) = 'array'))),
    CONSTRAINT scene_fields_image_size_check CHECK (
        (image_width IS NULL OR image_width > 0) AND (image_height IS NULL OR image_height > 0))
);

CREATE INDEX scene_fields_scene_order_idx ON content.scene_fields (scene_id, sort_order);

CREATE TRIGGER set_updated_at BEFORE UPDATE ON content.scene_fields
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE content.scene_fields IS 'Editable fields of a scene (text, image, video, color, number, boolean, select, font, audio, character).';
COMMENT ON COLUMN content.scene_fields.tenant_id IS 'soft reference: identity.tenants.id';


-- -----------------------------------------------------------------------------
-- Privileges (also covered by default privileges from 00_setup)
-- -----------------------------------------------------------------------------
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES    IN SCHEMA content TO flatrender_content;
GRANT USAGE, SELECT, UPDATE         ON ALL SEQUENCES IN SCHEMA content TO flatrender_content;
