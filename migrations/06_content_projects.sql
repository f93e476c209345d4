-- =============================================================================
-- 06_content_projects.sql — content: After Effects templates and their versions
-- =============================================================================
-- templates (the catalogue product), template_versions (an uploaded AE
-- bundle: file, SHA-256, AE version, fps, size), template_categories,
-- template_tags, template_svg_previews (traced SVG colour previews).
-- Visibility rules: see 05_content_taxonomy.sql.
-- Digests are raw SHA-256 bytes (bytea, 32 bytes) in every schema.
-- =============================================================================


-- -----------------------------------------------------------------------------
-- templates
-- -----------------------------------------------------------------------------
CREATE TABLE content.templates (
    id                       uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id                uuid        NOT NULL,   -- soft reference: identity.tenants.id
    visibility               text        NOT NULL DEFAULT 'tenant',
    slug                     text        NOT NULL,
    title                    text        NOT NULL,
    description              text        NULL,
    status                   text        NOT NULL DEFAULT 'draft',
    orientation              text        NOT NULL DEFAULT 'landscape',
    -- The version customers get; FK added below once template_versions exists.
    current_version_id       uuid        NULL,
    thumbnail_file_id        uuid        NULL,   -- soft reference: file_mgr.files.id
    preview_video_file_id    uuid        NULL,   -- soft reference: file_mgr.files.id
    -- Lowest plan allowed to render it; NULL = every plan.
    min_plan_code            text        NULL,   -- soft reference: identity.plans.code
    is_featured              boolean     NOT NULL DEFAULT false,
    sort_order               integer     NOT NULL DEFAULT 0,
    render_count             bigint      NOT NULL DEFAULT 0,
    created_by_user_id       uuid        NULL,   -- soft reference: identity.users.id
    published_at             timestamptz NULL,
    archived_at              timestamptz NULL,
    search_vector            tsvector    GENERATED ALWAYS AS (
        to_tsvector('simple', coalesce(title, '') || ' ' || coalesce(description, ''))) STORED,
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT templates_tenant_slug_key UNIQUE (tenant_id, slug),
    CONSTRAINT templates_visibility_check CHECK (visibility IN ('tenant', 'global')),
    CONSTRAINT templates_global_check CHECK (
        visibility = 'tenant' OR tenant_id = '00000000-0000-0000-0000-000000000001'),
    CONSTRAINT templates_slug_check CHECK (slug ~ '^[a-z0-9]([a-z0-9-]{0,98}[a-z0-9])?$'),
    CONSTRAINT templates_title_check CHECK (char_length(btrim(title)) BETWEEN 1 AND 200),
    CONSTRAINT templates_status_check CHECK (status IN ('draft', 'published', 'archived')),
    CONSTRAINT templates_orientation_check CHECK (orientation IN ('landscape', 'portrait', 'square')),
    CONSTRAINT templates_published_check CHECK (
        status <> 'published' OR (published_at IS NOT NULL AND current_version_id IS NOT NULL)),
    CONSTRAINT templates_archived_check CHECK (status <> 'archived' OR archived_at IS NOT NULL),
    CONSTRAINT templates_render_count_check CHECK (render_count >= 0),
    CONSTRAINT templates_min_plan_code_check CHECK (min_plan_code IS NULL OR min_plan_code ~ '^[a-z][a-z0-9_-]{0,31}$')
);

CREATE INDEX templates_tenant_created_idx ON content.templates (tenant_id, created_at DESC);
CREATE INDEX templates_tenant_status_idx ON content.templates (tenant_id, status, published_at DESC);
-- The shared catalogue: published global templates, newest first.
CREATE INDEX templates_global_published_idx ON content.templates (published_at DESC)
    WHERE visibility = 'global' AND status = 'published';
CREATE INDEX templates_search_idx ON content.templates USING gin (search_vector);

CREATE TRIGGER set_updated_at BEFORE UPDATE ON content.templates
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE content.templates IS 'After Effects templates (the catalogue product), tenant-owned or global.';
COMMENT ON COLUMN content.templates.tenant_id IS 'soft reference: identity.tenants.id';
COMMENT ON COLUMN content.templates.thumbnail_file_id IS 'soft reference: file_mgr.files.id';
COMMENT ON COLUMN content.templates.preview_video_file_id IS 'soft reference: file_mgr.files.id';
COMMENT ON COLUMN content.templates.min_plan_code IS 'soft reference: identity.plans.code';
COMMENT ON COLUMN content.templates.created_by_user_id IS 'soft reference: identity.users.id';


-- -----------------------------------------------------------------------------
-- template_versions: one uploaded bundle of a template
-- -----------------------------------------------------------------------------
CREATE TABLE content.template_versions (
    id                 uuid          PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id          uuid          NOT NULL,   -- soft reference: identity.tenants.id
    template_id        uuid          NOT NULL REFERENCES content.templates (id) ON DELETE CASCADE,
    version            integer       NOT NULL,   -- 1, 2, 3 ... per template
    status             text          NOT NULL DEFAULT 'draft',
    bundle_file_id     uuid          NOT NULL,   -- soft reference: file_mgr.files.id (kind template_bundle)
    bundle_sha256      bytea         NOT NULL,   -- content address of the bundle (node template caches)
    bundle_size_bytes  bigint        NOT NULL,
    project_path       text          NOT NULL,   -- path of the .aep/.aepx inside the bundle
    ae_version         text          NOT NULL,   -- lowest After Effects version able to render it, e.g. '24.0'
    fps                double precision NOT NULL,
    width              integer       NOT NULL,
    height             integer       NOT NULL,
    duration_frames    integer       NOT NULL,   -- of the main composition
    main_composition   text          NULL,
    required_fonts     text[]        NOT NULL DEFAULT '{}',
    manifest           jsonb         NOT NULL DEFAULT '{}',   -- parsed bundle description
    changelog          text          NULL,
    validation_error   text          NULL,
    created_by_user_id uuid          NULL,   -- soft reference: identity.users.id
    published_at       timestamptz   NULL,
    created_at         timestamptz   NOT NULL DEFAULT now(),
    updated_at         timestamptz   NOT NULL DEFAULT now(),
    CONSTRAINT template_versions_template_version_key UNIQUE (template_id, version),
    -- Target of the composite FK that keeps templates.current_version_id inside its template.
    CONSTRAINT template_versions_id_template_key UNIQUE (id, template_id),
    CONSTRAINT template_versions_version_check CHECK (version >= 1),
    CONSTRAINT template_versions_status_check CHECK (status IN ('draft', 'validating', 'ready', 'rejected', 'retired')),
    CONSTRAINT template_versions_rejected_check CHECK (status <> 'rejected' OR validation_error IS NOT NULL),
    CONSTRAINT template_versions_sha256_check CHECK (octet_length(bundle_sha256) = 32),
    CONSTRAINT template_versions_size_check CHECK (bundle_size_bytes >= 0),
    CONSTRAINT template_versions_project_path_check CHECK (
        char_length(project_path) BETWEEN 1 AND 1024 AND project_path !~ '(^/|\.\.)'),
    CONSTRAINT template_versions_ae_version_check CHECK (ae_version ~ '^[0-9]{1,3}(\.[0-9]{1,3}){0,3}$'),
    CONSTRAINT template_versions_fps_check CHECK (fps > 0 AND fps <= 240),
    CONSTRAINT template_versions_size_px_check CHECK (width BETWEEN 1 AND 30000 AND height BETWEEN 1 AND 30000),
    CONSTRAINT template_versions_duration_check CHECK (duration_frames >= 1),
    CONSTRAINT template_versions_manifest_check CHECK (jsonb_typeof(manifest) = 'object')
);

CREATE INDEX template_versions_template_idx ON content.template_versions (template_id, version DESC);
CREATE INDEX template_versions_sha256_idx ON content.template_versions (bundle_sha256);
CREATE INDEX template_versions_tenant_created_idx ON content.template_versions (tenant_id, created_at DESC);

CREATE TRIGGER set_updated_at BEFORE UPDATE ON content.template_versions
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE content.template_versions IS 'Uploaded template bundles (one per version), content-addressed by SHA-256.';
COMMENT ON COLUMN content.template_versions.tenant_id IS 'soft reference: identity.tenants.id';
COMMENT ON COLUMN content.template_versions.bundle_file_id IS 'soft reference: file_mgr.files.id';
COMMENT ON COLUMN content.template_versions.bundle_sha256 IS 'SHA-256 of the bundle (32 raw bytes); the key of node template caches.';
COMMENT ON COLUMN content.template_versions.created_by_user_id IS 'soft reference: identity.users.id';

-- templates.current_version_id must be a version of the same template. On
-- delete of that version only current_version_id is cleared (PG 15 column list).
ALTER TABLE content.templates
    ADD CONSTRAINT templates_current_version_fkey
    FOREIGN KEY (current_version_id, id) REFERENCES content.template_versions (id, template_id)
    ON DELETE SET NULL (current_version_id);


-- -----------------------------------------------------------------------------
-- template_categories / template_tags: many-to-many links
-- -----------------------------------------------------------------------------
CREATE TABLE content.template_categories (
    template_id uuid        NOT NULL REFERENCES content.templates (id) ON DELETE CASCADE,
    category_id uuid        NOT NULL REFERENCES content.categories (id) ON DELETE CASCADE,
    tenant_id   uuid        NOT NULL,   -- soft reference: identity.tenants.id (the template's tenant)
    sort_order  integer     NOT NULL DEFAULT 0,   -- position of the template inside the category
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (template_id, category_id)
);

CREATE INDEX template_categories_category_idx ON content.template_categories (category_id, sort_order, template_id);

COMMENT ON TABLE content.template_categories IS 'Template <-> category links.';
COMMENT ON COLUMN content.template_categories.tenant_id IS 'soft reference: identity.tenants.id';

CREATE TABLE content.template_tags (
    template_id uuid        NOT NULL REFERENCES content.templates (id) ON DELETE CASCADE,
    tag_id      uuid        NOT NULL REFERENCES content.tags (id) ON DELETE CASCADE,
    tenant_id   uuid        NOT NULL,   -- soft reference: identity.tenants.id (the template's tenant)
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (template_id, tag_id)
);

CREATE INDEX template_tags_tag_idx ON content.template_tags (tag_id, template_id);

COMMENT ON TABLE content.template_tags IS 'Template <-> tag links.';
COMMENT ON COLUMN content.template_tags.tenant_id IS 'soft reference: identity.tenants.id';


-- -----------------------------------------------------------------------------
-- template_svg_previews: traced SVG colour previews
-- -----------------------------------------------------------------------------
-- An image of a template (or one of its scenes) traced to SVG; its colour
-- slots map SVG fills to the template's colour fields so the editor can show
-- a live colour preview without rendering.
CREATE TABLE content.template_svg_previews (
    id                    uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id             uuid        NOT NULL,   -- soft reference: identity.tenants.id
    template_id           uuid        NOT NULL REFERENCES content.templates (id) ON DELETE CASCADE,
    template_version_id   uuid        NULL REFERENCES content.template_versions (id) ON DELETE CASCADE,
    scene_key             text        NULL,       -- content.scenes.key within the version; NULL = whole template
    name                  text        NOT NULL,
    source_image_file_id  uuid        NULL,       -- soft reference: file_mgr.files.id (the dropped image)
    svg                   text        NOT NULL,   -- the traced SVG markup
    width                 integer     NOT NULL,
    height                integer     NOT NULL,
    -- [{"slot": "bg", "field_key": "background_color", "default": "#112233"}, ...]
    color_slots           jsonb       NOT NULL DEFAULT '[]',
    status                text        NOT NULL DEFAULT 'ready',
    sort_order            integer     NOT NULL DEFAULT 0,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT template_svg_previews_name_check CHECK (char_length(btrim(name)) BETWEEN 1 AND 200),
    CONSTRAINT template_svg_previews_svg_check CHECK (octet_length(svg) BETWEEN 1 AND 2097152),   -- 2 MiB
    CONSTRAINT template_svg_previews_size_check CHECK (width BETWEEN 1 AND 30000 AND height BETWEEN 1 AND 30000),
    CONSTRAINT template_svg_previews_color_slots_check CHECK (jsonb_typeof(color_slots) = 'array'),
    CONSTRAINT template_svg_previews_status_check CHECK (status IN ('processing', 'ready', 'failed'))
);

CREATE INDEX template_svg_previews_template_idx ON content.template_svg_previews (template_id, sort_order);
CREATE INDEX template_svg_previews_version_idx ON content.template_svg_previews (template_version_id)
    WHERE template_version_id IS NOT NULL;

CREATE TRIGGER set_updated_at BEFORE UPDATE ON content.template_svg_previews
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE content.template_svg_previews IS 'Traced SVG colour previews of templates/scenes (drop image -> traced SVG).';
COMMENT ON COLUMN content.template_svg_previews.tenant_id IS 'soft reference: identity.tenants.id';
COMMENT ON COLUMN content.template_svg_previews.source_image_file_id IS 'soft reference: file_mgr.files.id';


-- -----------------------------------------------------------------------------
-- Privileges (also covered by default privileges from 00_setup)
-- -----------------------------------------------------------------------------
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES    IN SCHEMA content TO flatrender_content;
GRANT USAGE, SELECT, UPDATE         ON ALL SEQUENCES IN SCHEMA content TO flatrender_content;
