-- =============================================================================
-- 19_render_plan_limits.sql — render: the plan limits it enforces, snapshot rate
-- =============================================================================
-- plan_limits mirrors identity's plans for the subscribers render has heard of
-- (SubscriptionChanged, PlanUpdated events from the outbox), so SubmitRender
-- and RequestSnapshot never call identity and never read its schema.
-- A caller's effective limits: their own row (user_id = the user), else their
-- tenant's (user_id NULL), else the seeded 'free' plan (the service's defaults).
--
-- snapshot_tasks counts the snapshot renders each caller started (a cache
-- miss or a failed snapshot queued again), for the plan's hourly snapshot rate;
-- cache hits cost no task and are not counted.
-- =============================================================================


-- -----------------------------------------------------------------------------
-- plan_limits: one row per subscriber (a user, or a whole tenant)
-- -----------------------------------------------------------------------------
CREATE TABLE render.plan_limits (
    id                         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id                  uuid        NOT NULL,   -- soft reference: identity.tenants.id
    user_id                    uuid        NULL,       -- soft reference: identity.users.id (NULL: the tenant's plan)
    plan_code                  text        NOT NULL,   -- soft reference: identity.plans.code
    render_priority            smallint    NOT NULL,
    max_width                  integer     NOT NULL,
    max_height                 integer     NOT NULL,
    max_fps                    smallint    NOT NULL,
    max_video_duration_seconds integer     NOT NULL,
    watermark                  boolean     NOT NULL,
    export_retention_days      integer     NOT NULL,
    monthly_render_seconds     bigint      NULL,       -- NULL = unlimited
    max_concurrent_renders     integer     NOT NULL,
    max_snapshots_per_hour     integer     NULL,       -- NULL = unlimited
    voiceover_enabled          boolean     NOT NULL,
    created_at                 timestamptz NOT NULL DEFAULT now(),
    updated_at                 timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT plan_limits_scope_key UNIQUE NULLS NOT DISTINCT (tenant_id, user_id),
    CONSTRAINT plan_limits_plan_code_check CHECK (plan_code ~ '^[a-z][a-z0-9_-]{0,31}$'),
    CONSTRAINT plan_limits_render_priority_check CHECK (render_priority BETWEEN 0 AND 100),
    CONSTRAINT plan_limits_resolution_check CHECK (max_width BETWEEN 16 AND 16384 AND max_height BETWEEN 16 AND 16384),
    CONSTRAINT plan_limits_max_fps_check CHECK (max_fps BETWEEN 1 AND 240),
    CONSTRAINT plan_limits_max_video_duration_check CHECK (max_video_duration_seconds > 0),
    CONSTRAINT plan_limits_export_retention_check CHECK (export_retention_days BETWEEN 1 AND 3650),
    CONSTRAINT plan_limits_monthly_render_seconds_check CHECK (monthly_render_seconds IS NULL OR monthly_render_seconds >= 0),
    CONSTRAINT plan_limits_max_concurrent_renders_check CHECK (max_concurrent_renders >= 1),
    CONSTRAINT plan_limits_max_snapshots_per_hour_check CHECK (max_snapshots_per_hour IS NULL OR max_snapshots_per_hour >= 0)
);

-- PlanUpdated: every subscriber of a plan.
CREATE INDEX plan_limits_plan_code_idx ON render.plan_limits (plan_code);

CREATE TRIGGER set_updated_at BEFORE UPDATE ON render.plan_limits
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE render.plan_limits IS 'Plan limits per subscriber (user, or tenant with user_id NULL), kept current from identity''s SubscriptionChanged / PlanUpdated events.';
COMMENT ON COLUMN render.plan_limits.tenant_id IS 'soft reference: identity.tenants.id';
COMMENT ON COLUMN render.plan_limits.user_id IS 'soft reference: identity.users.id';
COMMENT ON COLUMN render.plan_limits.plan_code IS 'soft reference: identity.plans.code';


-- -----------------------------------------------------------------------------
-- snapshot_tasks: snapshot renders started, per caller (the hourly rate)
-- -----------------------------------------------------------------------------
CREATE TABLE render.snapshot_tasks (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   uuid        NOT NULL,   -- soft reference: identity.tenants.id
    user_id     uuid        NULL,       -- soft reference: identity.users.id (NULL: an API key)
    snapshot_id uuid        NOT NULL REFERENCES render.snapshots (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- The rate: a caller's tasks of the last hour.
CREATE INDEX snapshot_tasks_caller_created_idx ON render.snapshot_tasks (tenant_id, user_id, created_at);
CREATE INDEX snapshot_tasks_snapshot_idx ON render.snapshot_tasks (snapshot_id);

COMMENT ON TABLE render.snapshot_tasks IS 'Snapshot renders started per caller (cache misses and requeues), for the plan''s hourly snapshot rate.';
COMMENT ON COLUMN render.snapshot_tasks.tenant_id IS 'soft reference: identity.tenants.id';
COMMENT ON COLUMN render.snapshot_tasks.user_id IS 'soft reference: identity.users.id';


-- -----------------------------------------------------------------------------
-- Privileges (also covered by default privileges from 00_setup)
-- -----------------------------------------------------------------------------
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES    IN SCHEMA render TO flatrender_render;
GRANT USAGE, SELECT, UPDATE         ON ALL SEQUENCES IN SCHEMA render TO flatrender_render;
