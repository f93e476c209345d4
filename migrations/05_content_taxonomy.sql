-- =============================================================================
-- 05_content_taxonomy.sql — content: categories (a tree) and tags
-- =============================================================================
-- Catalogue visibility, used by every content table with a `visibility`
-- column:
--   'tenant' — visible to its own tenant only;
--   'global' — part of the shared FlatRender catalogue, visible to every
--              tenant. Only the default tenant
--              (00000000-0000-0000-0000-000000000001) publishes global rows.
-- A tenant therefore sees: rows of its own tenant + rows with visibility
-- 'global'.
-- tenant_id columns in content are soft references to identity.tenants.id.
-- =============================================================================


-- -----------------------------------------------------------------------------
-- categories: a tree (parent_id) of template categories
-- -----------------------------------------------------------------------------
-- The service prevents cycles on move (recursive CTE over parent_id) and
-- deletes only leaf categories (FK is RESTRICT).
CREATE TABLE content.categories (
    id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid        NOT NULL,   -- soft reference: identity.tenants.id
    visibility    text        NOT NULL DEFAULT 'tenant',
    parent_id     uuid        NULL REFERENCES content.categories (id) ON DELETE RESTRICT,
    slug          text        NOT NULL,
    name          text        NOT NULL,
    description   text        NULL,
    icon_file_id  uuid        NULL,   -- soft reference: file_mgr.files.id
    sort_order    integer     NOT NULL DEFAULT 0,
    is_active     boolean     NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT categories_tenant_slug_key UNIQUE (tenant_id, slug),
    CONSTRAINT categories_visibility_check CHECK (visibility IN ('tenant', 'global')),
    CONSTRAINT categories_global_check CHECK (
        visibility = 'tenant' OR tenant_id = '00000000-0000-0000-0000-000000000001'),
    CONSTRAINT categories_parent_check CHECK (parent_id IS NULL OR parent_id <> id),
    CONSTRAINT categories_slug_check CHECK (slug ~ '^[a-z0-9]([a-z0-9-]{0,98}[a-z0-9])?$'),
    CONSTRAINT categories_name_check CHECK (char_length(btrim(name)) BETWEEN 1 AND 200)
);

CREATE INDEX categories_parent_idx ON content.categories (parent_id, sort_order);
CREATE INDEX categories_tenant_idx ON content.categories (tenant_id, sort_order);
CREATE INDEX categories_global_idx ON content.categories (sort_order) WHERE visibility = 'global';

CREATE TRIGGER set_updated_at BEFORE UPDATE ON content.categories
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE content.categories IS 'Template categories, a tree via parent_id.';
COMMENT ON COLUMN content.categories.tenant_id IS 'soft reference: identity.tenants.id';
COMMENT ON COLUMN content.categories.visibility IS 'tenant = own tenant only; global = shared catalogue (default tenant only).';
COMMENT ON COLUMN content.categories.icon_file_id IS 'soft reference: file_mgr.files.id';


-- -----------------------------------------------------------------------------
-- tags: flat labels for templates and blog posts
-- -----------------------------------------------------------------------------
CREATE TABLE content.tags (
    id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id  uuid        NOT NULL,   -- soft reference: identity.tenants.id
    visibility text        NOT NULL DEFAULT 'tenant',
    slug       text        NOT NULL,
    name       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT tags_tenant_slug_key UNIQUE (tenant_id, slug),
    CONSTRAINT tags_visibility_check CHECK (visibility IN ('tenant', 'global')),
    CONSTRAINT tags_global_check CHECK (
        visibility = 'tenant' OR tenant_id = '00000000-0000-0000-0000-000000000001'),
    CONSTRAINT tags_slug_check CHECK (slug ~ '^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$'),
    CONSTRAINT tags_name_check CHECK (char_length(btrim(name)) BETWEEN 1 AND 100)
);

CREATE INDEX tags_global_idx ON content.tags (slug) WHERE visibility = 'global';

CREATE TRIGGER set_updated_at BEFORE UPDATE ON content.tags
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE content.tags IS 'Tags for templates and blog posts.';
COMMENT ON COLUMN content.tags.tenant_id IS 'soft reference: identity.tenants.id';


-- -----------------------------------------------------------------------------
-- Privileges (also covered by default privileges from 00_setup)
-- -----------------------------------------------------------------------------
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES    IN SCHEMA content TO flatrender_content;
GRANT USAGE, SELECT, UPDATE         ON ALL SEQUENCES IN SCHEMA content TO flatrender_content;
