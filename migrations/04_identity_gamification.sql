-- =============================================================================
-- 04_identity_gamification.sql — identity: gifts, achievements, points
-- =============================================================================
-- gifts (catalogue), achievements, user_achievements, point_ledger,
-- earned_gifts. The gamification consumer reads outbox events (renders
-- completed, templates used, ...) and advances achievements; every award is
-- idempotent (unique keys below) because events arrive at least once.
-- earned_gifts.notification_id gets its FK to notification.notifications in
-- 14_notification.sql, once that table exists.
-- =============================================================================


-- -----------------------------------------------------------------------------
-- gifts: what can be earned (platform-wide catalogue)
-- -----------------------------------------------------------------------------
CREATE TABLE identity.gifts (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    code         text        NOT NULL,
    name         text        NOT NULL,
    description  text        NULL,
    kind         text        NOT NULL,
    -- Amount for the kind: seconds for render_seconds, bytes for
    -- storage_bytes, days for plan_upgrade_days, points for points; NULL for
    -- badge and template_unlock.
    amount       bigint      NULL,
    -- Extra kind-specific data: {"plan_code": "pro"} for plan_upgrade_days,
    -- {"template_id": "..."} for template_unlock.
    data         jsonb       NOT NULL DEFAULT '{}',
    icon_file_id uuid        NULL,   -- soft reference: file_mgr.files.id
    valid_days   integer     NULL,   -- how long an earned gift can be claimed; NULL = forever
    is_active    boolean     NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT gifts_code_key UNIQUE (code),
    CONSTRAINT gifts_code_check CHECK (code ~ '^[a-z][a-z0-9_.-]{0,63}$'),
    CONSTRAINT gifts_name_check CHECK (char_length(btrim(name)) BETWEEN 1 AND 200),
    CONSTRAINT gifts_kind_check CHECK (
        kind IN ('render_seconds', 'storage_bytes', 'plan_upgrade_days', 'points', 'badge', 'template_unlock')),
    CONSTRAINT gifts_amount_check CHECK (
        (kind IN ('badge', 'template_unlock') AND amount IS NULL)
        OR (kind NOT IN ('badge', 'template_unlock') AND amount IS NOT NULL AND amount > 0)),
    CONSTRAINT gifts_data_check CHECK (jsonb_typeof(data) = 'object'),
    CONSTRAINT gifts_valid_days_check CHECK (valid_days IS NULL OR valid_days > 0)
);

CREATE TRIGGER set_updated_at BEFORE UPDATE ON identity.gifts
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE identity.gifts IS 'Gift/reward catalogue (platform-wide).';
COMMENT ON COLUMN identity.gifts.icon_file_id IS 'soft reference: file_mgr.files.id';


-- -----------------------------------------------------------------------------
-- achievements: goals advanced by events (e.g. 10 completed renders)
-- -----------------------------------------------------------------------------
CREATE TABLE identity.achievements (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    code        text        NOT NULL,
    name        text        NOT NULL,
    description text        NULL,
    event_type  text        NOT NULL,   -- full proto name of the event that advances it
    threshold   integer     NOT NULL DEFAULT 1,   -- events needed to complete it
    points      integer     NOT NULL DEFAULT 0,   -- points awarded on completion
    gift_id     uuid        NULL REFERENCES identity.gifts (id) ON DELETE SET NULL,   -- gift awarded on completion
    is_repeatable boolean   NOT NULL DEFAULT false,
    is_active   boolean     NOT NULL DEFAULT true,
    sort_order  integer     NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT achievements_code_key UNIQUE (code),
    CONSTRAINT achievements_code_check CHECK (code ~ '^[a-z][a-z0-9_.-]{0,63}$'),
    CONSTRAINT achievements_name_check CHECK (char_length(btrim(name)) BETWEEN 1 AND 200),
    CONSTRAINT achievements_event_type_check CHECK (char_length(event_type) BETWEEN 1 AND 200),
    CONSTRAINT achievements_threshold_check CHECK (threshold >= 1),
    CONSTRAINT achievements_points_check CHECK (points >= 0)
);

CREATE INDEX achievements_event_type_idx ON identity.achievements (event_type) WHERE is_active;

CREATE TRIGGER set_updated_at BEFORE UPDATE ON identity.achievements
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE identity.achievements IS 'Achievements advanced by outbox events of event_type.';


-- -----------------------------------------------------------------------------
-- user_achievements: progress of each user on each achievement
-- -----------------------------------------------------------------------------
CREATE TABLE identity.user_achievements (
    tenant_id        uuid        NOT NULL REFERENCES identity.tenants (id) ON DELETE CASCADE,
    user_id          uuid        NOT NULL REFERENCES identity.users (id) ON DELETE CASCADE,
    achievement_id   uuid        NOT NULL REFERENCES identity.achievements (id) ON DELETE CASCADE,
    progress         integer     NOT NULL DEFAULT 0,
    times_completed  integer     NOT NULL DEFAULT 0,
    last_event_id    bigint      NULL,   -- soft reference: platform.outbox.id (last event counted)
    completed_at     timestamptz NULL,   -- first completion
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, achievement_id),
    CONSTRAINT user_achievements_progress_check CHECK (progress >= 0 AND times_completed >= 0),
    CONSTRAINT user_achievements_completed_check CHECK (times_completed = 0 OR completed_at IS NOT NULL)
);

CREATE INDEX user_achievements_achievement_idx ON identity.user_achievements (achievement_id);
CREATE INDEX user_achievements_tenant_idx ON identity.user_achievements (tenant_id, user_id);

CREATE TRIGGER set_updated_at BEFORE UPDATE ON identity.user_achievements
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE identity.user_achievements IS 'Per-user progress on achievements.';
COMMENT ON COLUMN identity.user_achievements.last_event_id IS 'soft reference: platform.outbox.id';


-- -----------------------------------------------------------------------------
-- point_ledger: append-only points movements; balance = SUM(delta)
-- -----------------------------------------------------------------------------
CREATE TABLE identity.point_ledger (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  uuid        NOT NULL REFERENCES identity.tenants (id) ON DELETE CASCADE,
    user_id    uuid        NOT NULL REFERENCES identity.users (id) ON DELETE CASCADE,
    delta      integer     NOT NULL,
    reason     text        NOT NULL,
    -- Idempotency key of the movement, e.g. 'achievement:<code>:<n>' or
    -- 'event:<outbox id>'; the same award can never be booked twice.
    award_key  text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT point_ledger_user_award_key UNIQUE (user_id, award_key),
    CONSTRAINT point_ledger_delta_check CHECK (delta <> 0),
    CONSTRAINT point_ledger_reason_check CHECK (reason IN ('achievement', 'gift', 'redeem', 'admin_adjustment', 'event')),
    CONSTRAINT point_ledger_award_key_check CHECK (char_length(award_key) BETWEEN 1 AND 200)
);

CREATE INDEX point_ledger_user_created_idx ON identity.point_ledger (user_id, created_at DESC);
CREATE INDEX point_ledger_tenant_created_idx ON identity.point_ledger (tenant_id, created_at DESC);

COMMENT ON TABLE identity.point_ledger IS 'Points movements (append-only); a user''s balance is SUM(delta).';


-- -----------------------------------------------------------------------------
-- earned_gifts: gifts awarded to users
-- -----------------------------------------------------------------------------
CREATE TABLE identity.earned_gifts (
    id              uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid        NOT NULL REFERENCES identity.tenants (id) ON DELETE CASCADE,
    user_id         uuid        NOT NULL REFERENCES identity.users (id) ON DELETE CASCADE,
    gift_id         uuid        NOT NULL REFERENCES identity.gifts (id) ON DELETE RESTRICT,
    achievement_id  uuid        NULL REFERENCES identity.achievements (id) ON DELETE SET NULL,
    -- Idempotency key of the award (same scheme as point_ledger.award_key).
    award_key       text        NOT NULL,
    source_event_id bigint      NULL,   -- soft reference: platform.outbox.id
    -- The in-app notification announcing the gift. The one hard cross-schema
    -- FK (to notification.notifications.id, ON DELETE SET NULL) is added in
    -- 14_notification.sql.
    notification_id uuid        NULL,
    status          text        NOT NULL DEFAULT 'earned',
    earned_at       timestamptz NOT NULL DEFAULT now(),
    claimed_at      timestamptz NULL,
    expires_at      timestamptz NULL,
    revoked_at      timestamptz NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT earned_gifts_user_award_key UNIQUE (user_id, award_key),
    CONSTRAINT earned_gifts_award_key_check CHECK (char_length(award_key) BETWEEN 1 AND 200),
    CONSTRAINT earned_gifts_status_check CHECK (status IN ('earned', 'claimed', 'expired', 'revoked')),
    CONSTRAINT earned_gifts_claimed_check CHECK (status <> 'claimed' OR claimed_at IS NOT NULL),
    CONSTRAINT earned_gifts_revoked_check CHECK (status <> 'revoked' OR revoked_at IS NOT NULL),
    CONSTRAINT earned_gifts_expiry_check CHECK (expires_at IS NULL OR expires_at > earned_at)
);

CREATE INDEX earned_gifts_user_earned_idx ON identity.earned_gifts (user_id, earned_at DESC);
CREATE INDEX earned_gifts_tenant_created_idx ON identity.earned_gifts (tenant_id, created_at DESC);
CREATE INDEX earned_gifts_gift_idx ON identity.earned_gifts (gift_id);
CREATE INDEX earned_gifts_notification_idx ON identity.earned_gifts (notification_id) WHERE notification_id IS NOT NULL;
-- Expiry scan of unclaimed gifts.
CREATE INDEX earned_gifts_expires_idx ON identity.earned_gifts (expires_at) WHERE status = 'earned' AND expires_at IS NOT NULL;

CREATE TRIGGER set_updated_at BEFORE UPDATE ON identity.earned_gifts
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE identity.earned_gifts IS 'Gifts earned by users; notification_id is the one hard cross-schema FK (added in 14).';
COMMENT ON COLUMN identity.earned_gifts.source_event_id IS 'soft reference: platform.outbox.id';
COMMENT ON COLUMN identity.earned_gifts.notification_id IS 'notification.notifications.id (hard FK, ON DELETE SET NULL, added in 14_notification.sql)';


-- -----------------------------------------------------------------------------
-- Privileges (also covered by default privileges from 00_setup)
-- -----------------------------------------------------------------------------
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES    IN SCHEMA identity TO flatrender_identity;
GRANT USAGE, SELECT, UPDATE         ON ALL SEQUENCES IN SCHEMA identity TO flatrender_identity;
