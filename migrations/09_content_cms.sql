-- =============================================================================
-- 09_content_cms.sql — content: blog, pages, FAQs
-- =============================================================================
-- blog_categories, blog_posts, blog_post_tags (reusing content.tags), pages,
-- faqs. CMS rows belong to one tenant (white-label sites have their own);
-- the FlatRender site is the default tenant's.
-- =============================================================================


-- -----------------------------------------------------------------------------
-- blog_categories
-- -----------------------------------------------------------------------------
CREATE TABLE content.blog_categories (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid        NOT NULL,   -- soft reference: identity.tenants.id
    slug        text        NOT NULL,
    name        text        NOT NULL,
    description text        NULL,
    sort_order  integer     NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT blog_categories_tenant_slug_key UNIQUE (tenant_id, slug),
    CONSTRAINT blog_categories_slug_check CHECK (slug ~ '^[a-z0-9]([a-z0-9-]{0,98}[a-z0-9])?$'),
    CONSTRAINT blog_categories_name_check CHECK (char_length(btrim(name)) BETWEEN 1 AND 200)
);

CREATE INDEX blog_categories_tenant_order_idx ON content.blog_categories (tenant_id, sort_order);

CREATE TRIGGER set_updated_at BEFORE UPDATE ON content.blog_categories
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE content.blog_categories IS 'Blog categories.';
COMMENT ON COLUMN content.blog_categories.tenant_id IS 'soft reference: identity.tenants.id';


-- -----------------------------------------------------------------------------
-- blog_posts
-- -----------------------------------------------------------------------------
-- 'scheduled' posts become visible when published_at passes (readers filter on
-- status IN ('published','scheduled') AND published_at <= now()).
CREATE TABLE content.blog_posts (
    id              uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid        NOT NULL,   -- soft reference: identity.tenants.id
    category_id     uuid        NULL REFERENCES content.blog_categories (id) ON DELETE SET NULL,
    locale          text        NOT NULL DEFAULT 'en',
    slug            text        NOT NULL,
    title           text        NOT NULL,
    excerpt         text        NULL,
    body            text        NOT NULL DEFAULT '',
    body_format     text        NOT NULL DEFAULT 'markdown',
    cover_file_id   uuid        NULL,   -- soft reference: file_mgr.files.id
    author_user_id  uuid        NULL,   -- soft reference: identity.users.id
    status          text        NOT NULL DEFAULT 'draft',
    published_at    timestamptz NULL,
    seo_title       text        NULL,
    seo_description text        NULL,
    reading_minutes integer     NULL,
    search_vector   tsvector    GENERATED ALWAYS AS (
        to_tsvector('simple', coalesce(title, '') || ' ' || coalesce(excerpt, '') || ' '
                             || left(coalesce(body, ''), 100000))) STORED,   -- bounded: tsvector max is 1 MB
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT blog_posts_tenant_locale_slug_key UNIQUE (tenant_id, locale, slug),
    CONSTRAINT blog_posts_locale_check CHECK (locale ~ '^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$'),
    CONSTRAINT blog_posts_slug_check CHECK (slug ~ '^[a-z0-9]([a-z0-9-]{0,198}[a-z0-9])?$'),
    CONSTRAINT blog_posts_title_check CHECK (char_length(btrim(title)) BETWEEN 1 AND 300),
    CONSTRAINT blog_posts_body_format_check CHECK (body_format IN ('markdown', 'html')),
    CONSTRAINT blog_posts_body_check CHECK (octet_length(body) <= 1048576),
    CONSTRAINT blog_posts_status_check CHECK (status IN ('draft', 'scheduled', 'published', 'archived')),
    CONSTRAINT blog_posts_published_check CHECK (status NOT IN ('scheduled', 'published') OR published_at IS NOT NULL),
    CONSTRAINT blog_posts_reading_minutes_check CHECK (reading_minutes IS NULL OR reading_minutes >= 0)
);

CREATE INDEX blog_posts_tenant_created_idx ON content.blog_posts (tenant_id, created_at DESC);
-- Public listing: visible posts of a tenant and locale, newest first.
CREATE INDEX blog_posts_public_idx ON content.blog_posts (tenant_id, locale, published_at DESC)
    WHERE status IN ('published', 'scheduled');
CREATE INDEX blog_posts_category_idx ON content.blog_posts (category_id, published_at DESC) WHERE category_id IS NOT NULL;
CREATE INDEX blog_posts_search_idx ON content.blog_posts USING gin (search_vector);

CREATE TRIGGER set_updated_at BEFORE UPDATE ON content.blog_posts
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE content.blog_posts IS 'Blog posts (markdown or html), per tenant and locale.';
COMMENT ON COLUMN content.blog_posts.tenant_id IS 'soft reference: identity.tenants.id';
COMMENT ON COLUMN content.blog_posts.cover_file_id IS 'soft reference: file_mgr.files.id';
COMMENT ON COLUMN content.blog_posts.author_user_id IS 'soft reference: identity.users.id';

CREATE TABLE content.blog_post_tags (
    post_id    uuid        NOT NULL REFERENCES content.blog_posts (id) ON DELETE CASCADE,
    tag_id     uuid        NOT NULL REFERENCES content.tags (id) ON DELETE CASCADE,
    tenant_id  uuid        NOT NULL,   -- soft reference: identity.tenants.id
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (post_id, tag_id)
);

CREATE INDEX blog_post_tags_tag_idx ON content.blog_post_tags (tag_id, post_id);

COMMENT ON TABLE content.blog_post_tags IS 'Blog post <-> tag links.';
COMMENT ON COLUMN content.blog_post_tags.tenant_id IS 'soft reference: identity.tenants.id';


-- -----------------------------------------------------------------------------
-- pages: static CMS pages (about, terms, privacy, ...)
-- -----------------------------------------------------------------------------
CREATE TABLE content.pages (
    id              uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid        NOT NULL,   -- soft reference: identity.tenants.id
    locale          text        NOT NULL DEFAULT 'en',
    slug            text        NOT NULL,
    title           text        NOT NULL,
    body            text        NOT NULL DEFAULT '',
    body_format     text        NOT NULL DEFAULT 'markdown',
    status          text        NOT NULL DEFAULT 'draft',
    show_in_nav     boolean     NOT NULL DEFAULT false,
    sort_order      integer     NOT NULL DEFAULT 0,
    seo_title       text        NULL,
    seo_description text        NULL,
    published_at    timestamptz NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pages_tenant_locale_slug_key UNIQUE (tenant_id, locale, slug),
    CONSTRAINT pages_locale_check CHECK (locale ~ '^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$'),
    -- Slugs may be nested paths: 'legal/terms'.
    CONSTRAINT pages_slug_check CHECK (slug ~ '^[a-z0-9]([a-z0-9-]*[a-z0-9])?(/[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$'
                                       AND char_length(slug) <= 200),
    CONSTRAINT pages_title_check CHECK (char_length(btrim(title)) BETWEEN 1 AND 300),
    CONSTRAINT pages_body_format_check CHECK (body_format IN ('markdown', 'html')),
    CONSTRAINT pages_body_check CHECK (octet_length(body) <= 1048576),
    CONSTRAINT pages_status_check CHECK (status IN ('draft', 'published', 'archived')),
    CONSTRAINT pages_published_check CHECK (status <> 'published' OR published_at IS NOT NULL)
);

CREATE INDEX pages_tenant_nav_idx ON content.pages (tenant_id, locale, sort_order) WHERE status = 'published' AND show_in_nav;

CREATE TRIGGER set_updated_at BEFORE UPDATE ON content.pages
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE content.pages IS 'Static CMS pages per tenant and locale.';
COMMENT ON COLUMN content.pages.tenant_id IS 'soft reference: identity.tenants.id';


-- -----------------------------------------------------------------------------
-- faqs
-- -----------------------------------------------------------------------------
CREATE TABLE content.faqs (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    uuid        NOT NULL,   -- soft reference: identity.tenants.id
    locale       text        NOT NULL DEFAULT 'en',
    section      text        NOT NULL DEFAULT 'general',   -- grouping on the FAQ page
    question     text        NOT NULL,
    answer       text        NOT NULL,
    answer_format text       NOT NULL DEFAULT 'markdown',
    status       text        NOT NULL DEFAULT 'published',
    sort_order   integer     NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT faqs_locale_check CHECK (locale ~ '^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$'),
    CONSTRAINT faqs_section_check CHECK (char_length(btrim(section)) BETWEEN 1 AND 100),
    CONSTRAINT faqs_question_check CHECK (char_length(btrim(question)) BETWEEN 1 AND 1000),
    CONSTRAINT faqs_answer_check CHECK (char_length(answer) BETWEEN 1 AND 20000),
    CONSTRAINT faqs_answer_format_check CHECK (answer_format IN ('markdown', 'html')),
    CONSTRAINT faqs_status_check CHECK (status IN ('draft', 'published', 'archived'))
);

CREATE INDEX faqs_tenant_locale_idx ON content.faqs (tenant_id, locale, section, sort_order);

CREATE TRIGGER set_updated_at BEFORE UPDATE ON content.faqs
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE content.faqs IS 'Frequently asked questions per tenant and locale.';
COMMENT ON COLUMN content.faqs.tenant_id IS 'soft reference: identity.tenants.id';


-- -----------------------------------------------------------------------------
-- Privileges (also covered by default privileges from 00_setup)
-- -----------------------------------------------------------------------------
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES    IN SCHEMA content TO flatrender_content;
GRANT USAGE, SELECT, UPDATE         ON ALL SEQUENCES IN SCHEMA content TO flatrender_content;
