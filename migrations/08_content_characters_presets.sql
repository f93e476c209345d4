-- =============================================================================
-- 08_content_characters_presets.sql — content: characters and presets
-- =============================================================================
-- characters (illustrated people/mascots placed in scenes through 'character'
-- fields), character_poses (their poses/variants), presets (saved sets of
-- values: colour palettes, text styles, whole scene data, ...).
-- Visibility rules: see 05_content_taxonomy.sql.
-- =============================================================================


-- -----------------------------------------------------------------------------
-- characters
-- -----------------------------------------------------------------------------
CREATE TABLE content.characters (
    id                uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id         uuid        NOT NULL,   -- soft reference: identity.tenants.id
    visibility        text        NOT NULL DEFAULT 'tenant',
    slug              text        NOT NULL,
    name              text        NOT NULL,
    description       text        NULL,
    status            text        NOT NULL DEFAULT 'draft',
    thumbnail_file_id uuid        NULL,   -- soft reference: file_mgr.files.id
    asset_file_id     uuid        NULL,   -- soft reference: file_mgr.files.id (the character's AE asset pack)
    -- Customisable attributes and their allowed values, e.g.
    -- {"skin": ["#f1c27d", ...], "hair": ["short", "long"]}
    attributes        jsonb       NOT NULL DEFAULT '{}',
    sort_order        integer     NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT characters_tenant_slug_key UNIQUE (tenant_id, slug),
    CONSTRAINT characters_visibility_check CHECK (visibility IN ('tenant', 'global')),
    CONSTRAINT characters_global_check CHECK (
        visibility = 'tenant' OR tenant_id = '00000000-0000-0000-0000-000000000001'),
    CONSTRAINT characters_slug_check CHECK (slug ~ '^[a-z0-9]([a-z0-9-]{0,98}[a-z0-9])?$'),
    CONSTRAINT characters_name_check CHECK (char_length(btrim(name)) BETWEEN 1 AND 200),
    CONSTRAINT characters_status_check CHECK (status IN ('draft', 'published', 'archived')),
    CONSTRAINT characters_attributes_check CHECK (jsonb_typeof(attributes) = 'object')
);

CREATE INDEX characters_tenant_status_idx ON content.characters (tenant_id, status, sort_order);
CREATE INDEX characters_global_idx ON content.characters (sort_order)
    WHERE visibility = 'global' AND status = 'published';

CREATE TRIGGER set_updated_at BEFORE UPDATE ON content.characters
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE content.characters IS 'Characters customers place in scenes.';
COMMENT ON COLUMN content.characters.tenant_id IS 'soft reference: identity.tenants.id';
COMMENT ON COLUMN content.characters.thumbnail_file_id IS 'soft reference: file_mgr.files.id';
COMMENT ON COLUMN content.characters.asset_file_id IS 'soft reference: file_mgr.files.id';


-- -----------------------------------------------------------------------------
-- character_poses: poses / variants of a character
-- -----------------------------------------------------------------------------
CREATE TABLE content.character_poses (
    id                uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id         uuid        NOT NULL,   -- soft reference: identity.tenants.id
    character_id      uuid        NOT NULL REFERENCES content.characters (id) ON DELETE CASCADE,
    key               text        NOT NULL,
    name              text        NOT NULL,
    composition_name  text        NULL,       -- AE precomp holding the pose, if any
    asset_file_id     uuid        NULL,       -- soft reference: file_mgr.files.id
    thumbnail_file_id uuid        NULL,       -- soft reference: file_mgr.files.id
    sort_order        integer     NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT character_poses_character_key_key UNIQUE (character_id, key),
    CONSTRAINT character_poses_key_check CHECK (key ~ '^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$'),
    CONSTRAINT character_poses_name_check CHECK (char_length(btrim(name)) BETWEEN 1 AND 200)
);

CREATE INDEX character_poses_character_order_idx ON content.character_poses (character_id, sort_order);

CREATE TRIGGER set_updated_at BEFORE UPDATE ON content.character_poses
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE content.character_poses IS 'Poses/variants of a character.';
COMMENT ON COLUMN content.character_poses.tenant_id IS 'soft reference: identity.tenants.id';
COMMENT ON COLUMN content.character_poses.asset_file_id IS 'soft reference: file_mgr.files.id';
COMMENT ON COLUMN content.character_poses.thumbnail_file_id IS 'soft reference: file_mgr.files.id';


-- -----------------------------------------------------------------------------
-- presets: reusable values for the editor
-- -----------------------------------------------------------------------------
-- template_id NULL: applies to any template (e.g. a colour palette).
CREATE TABLE content.presets (
    id                 uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id          uuid        NOT NULL,   -- soft reference: identity.tenants.id
    visibility         text        NOT NULL DEFAULT 'tenant',
    template_id        uuid        NULL REFERENCES content.templates (id) ON DELETE CASCADE,
    kind               text        NOT NULL,
    slug               text        NOT NULL,
    name               text        NOT NULL,
    description        text        NULL,
    -- color_palette: {"colors": ["#112233", ...]}; text_style: {"font": ..., "size": ...};
    -- scene_data: {<field key>: <value>, ...}; font_set: {"fonts": [...]};
    -- audio_mix: {"music_volume": 0.8, ...}
    data               jsonb       NOT NULL,
    thumbnail_file_id  uuid        NULL,       -- soft reference: file_mgr.files.id
    status             text        NOT NULL DEFAULT 'published',
    sort_order         integer     NOT NULL DEFAULT 0,
    created_by_user_id uuid        NULL,       -- soft reference: identity.users.id
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT presets_tenant_template_slug_key UNIQUE NULLS NOT DISTINCT (tenant_id, template_id, slug),
    CONSTRAINT presets_visibility_check CHECK (visibility IN ('tenant', 'global')),
    CONSTRAINT presets_global_check CHECK (
        visibility = 'tenant' OR tenant_id = '00000000-0000-0000-0000-000000000001'),
    CONSTRAINT presets_kind_check CHECK (kind IN ('color_palette', 'text_style', 'scene_data', 'font_set', 'audio_mix')),
    CONSTRAINT presets_slug_check CHECK (slug ~ '^[a-z0-9]([a-z0-9-]{0,98}[a-z0-9])?$'),
    CONSTRAINT presets_name_check CHECK (char_length(btrim(name)) BETWEEN 1 AND 200),
    CONSTRAINT presets_data_check CHECK (jsonb_typeof(data) = 'object'),
    CONSTRAINT presets_status_check CHECK (status IN ('draft', 'published', 'archived'))
);

CREATE INDEX presets_template_idx ON content.presets (template_id, kind, sort_order) WHERE template_id IS NOT NULL;
CREATE INDEX presets_tenant_kind_idx ON content.presets (tenant_id, kind, sort_order);
CREATE INDEX presets_global_idx ON content.presets (kind, sort_order) WHERE visibility = 'global' AND status = 'published';

CREATE TRIGGER set_updated_at BEFORE UPDATE ON content.presets
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE content.presets IS 'Editor presets: colour palettes, text styles, scene data, font sets, audio mixes.';
COMMENT ON COLUMN content.presets.tenant_id IS 'soft reference: identity.tenants.id';
COMMENT ON COLUMN content.presets.thumbnail_file_id IS 'soft reference: file_mgr.files.id';
COMMENT ON COLUMN content.presets.created_by_user_id IS 'soft reference: identity.users.id';


-- -----------------------------------------------------------------------------
-- Privileges (also covered by default privileges from 00_setup)
-- -----------------------------------------------------------------------------
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES    IN SCHEMA content TO flatrender_content;
GRANT USAGE, SELECT, UPDATE         ON ALL SEQUENCES IN SCHEMA content TO flatrender_content;
