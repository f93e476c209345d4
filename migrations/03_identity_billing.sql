-- =============================================================================
-- 03_identity_billing.sql — identity: plans, subscriptions, payments
-- =============================================================================
-- plans (seeded: free, pro, business), subscriptions, payments.
-- A user's effective plan: their live subscription's plan, else their
-- tenant's plan (tenants.plan_id), else 'free'. Other services read the limits
-- through the identity API, never from this schema.
-- Money is in minor units (cents) with an ISO 4217 currency code.
-- =============================================================================


-- -----------------------------------------------------------------------------
-- plans: the product catalogue and the limits every service enforces
-- -----------------------------------------------------------------------------
CREATE TABLE identity.plans (
    id                          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    code                        text        NOT NULL,
    name                        text        NOT NULL,
    description                 text        NULL,
    price_minor                 bigint      NOT NULL DEFAULT 0,
    currency                    text        NOT NULL DEFAULT 'USD',
    billing_interval            text        NOT NULL DEFAULT 'month',
    -- Scheduling: higher renders first (after snapshots). Paid > free.
    render_priority             smallint    NOT NULL DEFAULT 0,
    max_resolution_width        integer     NOT NULL,
    max_resolution_height       integer     NOT NULL,
    max_fps                     smallint    NOT NULL DEFAULT 30,
    max_video_duration_seconds  integer     NOT NULL,
    storage_quota_bytes         bigint      NOT NULL,
    watermark                   boolean     NOT NULL DEFAULT true,
    export_retention_days       integer     NOT NULL,
    monthly_render_seconds      bigint      NULL,       -- NULL = unlimited
    max_concurrent_renders      integer     NOT NULL DEFAULT 1,
    max_snapshots_per_hour      integer     NULL,       -- NULL = unlimited
    voiceover_enabled           boolean     NOT NULL DEFAULT false,
    api_access                  boolean     NOT NULL DEFAULT false,
    is_public                   boolean     NOT NULL DEFAULT true,    -- shown on the pricing page
    is_active                   boolean     NOT NULL DEFAULT true,    -- can be subscribed to
    sort_order                  integer     NOT NULL DEFAULT 0,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT plans_code_key UNIQUE (code),
    CONSTRAINT plans_code_check CHECK (code ~ '^[a-z][a-z0-9_-]{0,31}$'),
    CONSTRAINT plans_name_check CHECK (char_length(btrim(name)) BETWEEN 1 AND 100),
    CONSTRAINT plans_price_check CHECK (price_minor >= 0),
    CONSTRAINT plans_currency_check CHECK (currency ~ '^[A-Z]{3}$'),
    CONSTRAINT plans_billing_interval_check CHECK (billing_interval IN ('none', 'month', 'year')),
    CONSTRAINT plans_render_priority_check CHECK (render_priority BETWEEN 0 AND 100),
    CONSTRAINT plans_resolution_check CHECK (
        max_resolution_width BETWEEN 16 AND 16384 AND max_resolution_height BETWEEN 16 AND 16384),
    CONSTRAINT plans_max_fps_check CHECK (max_fps BETWEEN 1 AND 240),
    CONSTRAINT plans_max_video_duration_check CHECK (max_video_duration_seconds > 0),
    CONSTRAINT plans_storage_quota_check CHECK (storage_quota_bytes >= 0),
    CONSTRAINT plans_export_retention_check CHECK (export_retention_days BETWEEN 1 AND 3650),
    CONSTRAINT plans_monthly_render_seconds_check CHECK (monthly_render_seconds IS NULL OR monthly_render_seconds >= 0),
    CONSTRAINT plans_max_concurrent_renders_check CHECK (max_concurrent_renders >= 1),
    CONSTRAINT plans_max_snapshots_check CHECK (max_snapshots_per_hour IS NULL OR max_snapshots_per_hour >= 0)
);

CREATE TRIGGER set_updated_at BEFORE UPDATE ON identity.plans
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE identity.plans IS 'Plans and their limits (render priority, resolution, storage quota, watermark, retention, render seconds).';
COMMENT ON COLUMN identity.plans.render_priority IS '0..100, higher is scheduled first (snapshots always come first).';
COMMENT ON COLUMN identity.plans.price_minor IS 'Price per billing_interval in minor units of currency.';
COMMENT ON COLUMN identity.plans.monthly_render_seconds IS 'Render-node seconds per calendar month; NULL = unlimited.';

-- Seeded plans. Fixed ids so every installation (and every test database)
-- agrees; services refer to plans by code.
INSERT INTO identity.plans
    (id, code, name, description, price_minor, currency, billing_interval,
     render_priority, max_resolution_width, max_resolution_height, max_fps,
     max_video_duration_seconds, storage_quota_bytes, watermark, export_retention_days,
     monthly_render_seconds, max_concurrent_renders, max_snapshots_per_hour,
     voiceover_enabled, api_access, sort_order)
VALUES
    ('00000000-0000-0000-0001-000000000001', 'free', 'Free',
     'Try FlatRender: 720p with a watermark.',
     0, 'USD', 'none',
     0, 1280, 720, 30,
     60, 1073741824, true, 7,               -- 1 GiB, 7 days
     600, 1, 60,                            -- 10 render minutes a month
     false, false, 10),
    ('00000000-0000-0000-0001-000000000002', 'pro', 'Pro',
     'Full HD without watermark, voiceover, priority rendering.',
     1900, 'USD', 'month',
     50, 1920, 1080, 60,
     600, 53687091200, false, 30,           -- 50 GiB, 30 days
     36000, 3, 600,                         -- 10 render hours a month
     true, false, 20),
    ('00000000-0000-0000-0001-000000000003', 'business', 'Business',
     '4K, API access, highest priority and long retention.',
     9900, 'USD', 'month',
     100, 3840, 2160, 60,
     3600, 536870912000, false, 90,         -- 500 GiB, 90 days
     360000, 10, NULL,                      -- 100 render hours a month
     true, true, 30)
ON CONFLICT (code) DO NOTHING;

-- tenants.plan_id (01) now has its target; the default tenant starts on free.
ALTER TABLE identity.tenants
    ADD CONSTRAINT tenants_plan_id_fkey
    FOREIGN KEY (plan_id) REFERENCES identity.plans (id) ON DELETE RESTRICT;

CREATE INDEX tenants_plan_idx ON identity.tenants (plan_id) WHERE plan_id IS NOT NULL;

UPDATE identity.tenants
   SET plan_id = '00000000-0000-0000-0001-000000000001'
 WHERE id = '00000000-0000-0000-0000-000000000001' AND plan_id IS NULL;


-- -----------------------------------------------------------------------------
-- subscriptions: a user's (or, with user_id NULL, a whole tenant's) plan
-- -----------------------------------------------------------------------------
CREATE TABLE identity.subscriptions (
    id                       uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id                uuid        NOT NULL REFERENCES identity.tenants (id) ON DELETE CASCADE,
    user_id                  uuid        NULL REFERENCES identity.users (id) ON DELETE CASCADE,
    plan_id                  uuid        NOT NULL REFERENCES identity.plans (id) ON DELETE RESTRICT,
    status                   text        NOT NULL DEFAULT 'active',
    current_period_start     timestamptz NOT NULL DEFAULT now(),
    current_period_end       timestamptz NULL,     -- NULL = open-ended (free / manual)
    trial_ends_at            timestamptz NULL,
    cancel_at_period_end     boolean     NOT NULL DEFAULT false,
    canceled_at              timestamptz NULL,
    ended_at                 timestamptz NULL,
    provider                 text        NULL,     -- payment provider, e.g. 'stripe'; NULL = manual
    provider_subscription_id text        NULL,
    -- ChangeSubscription idempotency: a retry with the same key returns this
    -- subscription; request_sha256 detects a key reused for another request.
    idempotency_key          text        NULL,
    request_sha256           bytea       NULL,
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT subscriptions_provider_ref_key UNIQUE (provider, provider_subscription_id),
    CONSTRAINT subscriptions_tenant_idempotency_key UNIQUE (tenant_id, idempotency_key),
    CONSTRAINT subscriptions_status_check CHECK (status IN ('trialing', 'active', 'past_due', 'canceled', 'expired')),
    CONSTRAINT subscriptions_period_check CHECK (current_period_end IS NULL OR current_period_end > current_period_start),
    CONSTRAINT subscriptions_trial_check CHECK (status <> 'trialing' OR trial_ends_at IS NOT NULL),
    CONSTRAINT subscriptions_ended_check CHECK (status NOT IN ('canceled', 'expired') OR ended_at IS NOT NULL),
    CONSTRAINT subscriptions_provider_check CHECK (provider IS NULL OR provider ~ '^[a-z][a-z0-9_]{0,31}$'),
    CONSTRAINT subscriptions_provider_ref_check CHECK (provider_subscription_id IS NULL OR provider IS NOT NULL),
    CONSTRAINT subscriptions_idempotency_key_check CHECK (
        idempotency_key IS NULL OR char_length(idempotency_key) BETWEEN 1 AND 200),
    CONSTRAINT subscriptions_request_sha256_check CHECK (request_sha256 IS NULL OR octet_length(request_sha256) = 32)
);

-- At most one live subscription per user, and per tenant for tenant-wide ones.
CREATE UNIQUE INDEX subscriptions_user_live_key ON identity.subscriptions (user_id)
    WHERE user_id IS NOT NULL AND status IN ('trialing', 'active', 'past_due');
CREATE UNIQUE INDEX subscriptions_tenant_live_key ON identity.subscriptions (tenant_id)
    WHERE user_id IS NULL AND status IN ('trialing', 'active', 'past_due');
CREATE INDEX subscriptions_tenant_created_idx ON identity.subscriptions (tenant_id, created_at DESC);
CREATE INDEX subscriptions_plan_idx ON identity.subscriptions (plan_id);
-- Renewal / expiry scan.
CREATE INDEX subscriptions_period_end_idx ON identity.subscriptions (current_period_end)
    WHERE status IN ('trialing', 'active', 'past_due');

CREATE TRIGGER set_updated_at BEFORE UPDATE ON identity.subscriptions
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE identity.subscriptions IS 'Plan subscriptions of users (user_id set) or whole tenants (user_id NULL).';


-- -----------------------------------------------------------------------------
-- payments: money movements reported by a payment provider
-- -----------------------------------------------------------------------------
CREATE TABLE identity.payments (
    id                  uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id           uuid        NOT NULL REFERENCES identity.tenants (id) ON DELETE RESTRICT,
    user_id             uuid        NULL REFERENCES identity.users (id) ON DELETE SET NULL,
    subscription_id     uuid        NULL REFERENCES identity.subscriptions (id) ON DELETE SET NULL,
    plan_id             uuid        NULL REFERENCES identity.plans (id) ON DELETE RESTRICT,
    provider            text        NOT NULL,
    provider_payment_id text        NULL,   -- the provider's reference, once it has one
    idempotency_key     text        NULL,
    amount_minor        bigint      NOT NULL,
    refunded_minor      bigint      NOT NULL DEFAULT 0,
    currency            text        NOT NULL,
    status              text        NOT NULL DEFAULT 'pending',
    description         text        NULL,
    failure_code        text        NULL,
    failure_message     text        NULL,
    metadata            jsonb       NOT NULL DEFAULT '{}',
    paid_at             timestamptz NULL,
    refunded_at         timestamptz NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT payments_provider_ref_key UNIQUE (provider, provider_payment_id),
    CONSTRAINT payments_tenant_idempotency_key UNIQUE (tenant_id, idempotency_key),
    CONSTRAINT payments_provider_check CHECK (provider ~ '^[a-z][a-z0-9_]{0,31}$'),
    CONSTRAINT payments_amount_check CHECK (amount_minor >= 0),
    CONSTRAINT payments_refunded_check CHECK (refunded_minor >= 0 AND refunded_minor <= amount_minor),
    CONSTRAINT payments_currency_check CHECK (currency ~ '^[A-Z]{3}$'),
    CONSTRAINT payments_status_check CHECK (
        status IN ('pending', 'succeeded', 'failed', 'canceled', 'refunded', 'partially_refunded')),
    CONSTRAINT payments_paid_check CHECK (
        status NOT IN ('succeeded', 'refunded', 'partially_refunded') OR paid_at IS NOT NULL),
    CONSTRAINT payments_idempotency_key_check CHECK (
        idempotency_key IS NULL OR char_length(idempotency_key) BETWEEN 1 AND 200),
    CONSTRAINT payments_metadata_check CHECK (jsonb_typeof(metadata) = 'object')
);

CREATE INDEX payments_tenant_created_idx ON identity.payments (tenant_id, created_at DESC);
CREATE INDEX payments_user_created_idx ON identity.payments (user_id, created_at DESC) WHERE user_id IS NOT NULL;
CREATE INDEX payments_subscription_idx ON identity.payments (subscription_id) WHERE subscription_id IS NOT NULL;

CREATE TRIGGER set_updated_at BEFORE UPDATE ON identity.payments
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE identity.payments IS 'Payments (minor units + ISO 4217 currency) with their provider reference.';


-- -----------------------------------------------------------------------------
-- Privileges (also covered by default privileges from 00_setup)
-- -----------------------------------------------------------------------------
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES    IN SCHEMA identity TO flatrender_identity;
GRANT USAGE, SELECT, UPDATE         ON ALL SEQUENCES IN SCHEMA identity TO flatrender_identity;
