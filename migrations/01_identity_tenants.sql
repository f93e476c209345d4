-- =============================================================================
-- 01_identity_tenants.sql — identity: tenants and the reseller (B2B) surface
-- =============================================================================
-- tenants, tenant_branding, tenant_api_keys, tenant_webhooks,
-- tenant_webhook_deliveries, tenant_usage_daily, tenant_api_request_logs
-- (partitioned monthly) and identity.ensure_api_request_log_partitions().
-- The default FlatRender tenant is seeded at the end.
-- =============================================================================


-- -----------------------------------------------------------------------------
-- tenants: the root of multi-tenancy. Resellers are tenants.
-- -----------------------------------------------------------------------------
CREATE TABLE identity.tenants (
    id              uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    slug            text        NOT NULL,
    name            text        NOT NULL,
    status          text        NOT NULL DEFAULT 'active',
    -- Plan applied to this tenant's users who have no subscription of their
    -- own (for a reseller: its contract plan). FK added in 03_identity_billing.
    plan_id         uuid        NULL,
    contact_email   text        NULL,
    settings        jsonb       NOT NULL DEFAULT '{}',
    -- CreateTenant idempotency (platform admins): a retry with the same key
    -- returns this tenant; request_sha256 detects a key reused for another request.
    idempotency_key text        NULL,
    request_sha256  bytea       NULL,
    suspended_at    timestamptz NULL,
    deleted_at      timestamptz NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT tenants_slug_key UNIQUE (slug),
    CONSTRAINT tenants_idempotency_key UNIQUE (idempotency_key),
    -- DNS-label-like: lower case, digits, inner hyphens, 1..63 characters.
    CONSTRAINT tenants_slug_check CHECK (slug ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
    CONSTRAINT tenants_name_check CHECK (char_length(btrim(name)) BETWEEN 1 AND 200),
    CONSTRAINT tenants_status_check CHECK (status IN ('active', 'suspended', 'deleted')),
    CONSTRAINT tenants_contact_email_check CHECK (contact_email IS NULL OR contact_email ~ '^[^@\s]+@[^@\s]+$'),
    CONSTRAINT tenants_settings_check CHECK (jsonb_typeof(settings) = 'object'),
    CONSTRAINT tenants_suspended_check CHECK (status <> 'suspended' OR suspended_at IS NOT NULL),
    CONSTRAINT tenants_deleted_check CHECK (status <> 'deleted' OR deleted_at IS NOT NULL),
    CONSTRAINT tenants_idempotency_key_check CHECK (
        idempotency_key IS NULL OR char_length(idempotency_key) BETWEEN 1 AND 200),
    CONSTRAINT tenants_request_sha256_check CHECK (request_sha256 IS NULL OR octet_length(request_sha256) = 32)
);

CREATE INDEX tenants_created_at_idx ON identity.tenants (created_at DESC);

CREATE TRIGGER set_updated_at BEFORE UPDATE ON identity.tenants
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE identity.tenants IS 'Tenants (resellers and the default FlatRender tenant 00000000-0000-0000-0000-000000000001).';
COMMENT ON COLUMN identity.tenants.plan_id IS 'Default plan for the tenant''s users without their own subscription (identity.plans.id).';
COMMENT ON COLUMN identity.tenants.settings IS 'Free-form tenant settings (JSON object).';


-- -----------------------------------------------------------------------------
-- tenant_branding: white-label look of a tenant (one row per tenant)
-- -----------------------------------------------------------------------------
CREATE TABLE identity.tenant_branding (
    tenant_id          uuid        PRIMARY KEY REFERENCES identity.tenants (id) ON DELETE CASCADE,
    display_name       text        NULL,
    logo_file_id       uuid        NULL,   -- soft reference: file_mgr.files.id
    favicon_file_id    uuid        NULL,   -- soft reference: file_mgr.files.id
    primary_color      text        NULL,
    secondary_color    text        NULL,
    accent_color       text        NULL,
    custom_domain      text        NULL,
    support_email      text        NULL,
    support_url        text        NULL,
    email_from_name    text        NULL,
    email_from_address text        NULL,
    hide_powered_by    boolean     NOT NULL DEFAULT false,
    custom_css         text        NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT tenant_branding_custom_domain_key UNIQUE (custom_domain),
    CONSTRAINT tenant_branding_display_name_check CHECK (display_name IS NULL OR char_length(display_name) BETWEEN 1 AND 200),
    CONSTRAINT tenant_branding_colors_check CHECK (
        (primary_color   IS NULL OR primary_color   ~ '^#[0-9a-fA-F]{6}$') AND
        (secondary_color IS NULL OR secondary_color ~ '^#[0-9a-fA-F]{6}$') AND
        (accent_color    IS NULL OR accent_color    ~ '^#[0-9a-fA-F]{6}$')),
    -- Stored lower case, hostname only (no scheme, no port, no path).
    CONSTRAINT tenant_branding_custom_domain_check CHECK (
        custom_domain IS NULL OR custom_domain ~ '^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$'),
    CONSTRAINT tenant_branding_support_email_check CHECK (support_email IS NULL OR support_email ~ '^[^@\s]+@[^@\s]+$'),
    CONSTRAINT tenant_branding_email_from_address_check CHECK (email_from_address IS NULL OR email_from_address ~ '^[^@\s]+@[^@\s]+$'),
    CONSTRAINT tenant_branding_support_url_check CHECK (support_url IS NULL OR support_url ~ '^https?://'),
    CONSTRAINT tenant_branding_custom_css_check CHECK (custom_css IS NULL OR octet_length(custom_css) <= 65536)
);

CREATE TRIGGER set_updated_at BEFORE UPDATE ON identity.tenant_branding
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE identity.tenant_branding IS 'White-label branding of a tenant.';
COMMENT ON COLUMN identity.tenant_branding.logo_file_id IS 'soft reference: file_mgr.files.id';
COMMENT ON COLUMN identity.tenant_branding.favicon_file_id IS 'soft reference: file_mgr.files.id';
COMMENT ON COLUMN identity.tenant_branding.custom_domain IS 'Lower-case host name served with this branding (unique across tenants).';


-- -----------------------------------------------------------------------------
-- tenant_api_keys: reseller API keys. The secret is shown once and stored only
-- as a hash. Keys are presented as '<prefix>.<secret>': the gateway finds the
-- row by the visible prefix, then compares SHA-256(secret) in constant time.
-- A fast hash is enough because the secret is >= 256 random bits.
-- -----------------------------------------------------------------------------
CREATE TABLE identity.tenant_api_keys (
    id                    uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id             uuid        NOT NULL REFERENCES identity.tenants (id) ON DELETE CASCADE,
    name                  text        NOT NULL,
    prefix                text        NOT NULL,
    secret_hash           bytea       NOT NULL,
    scopes                text[]      NOT NULL DEFAULT '{}',
    -- FK to identity.users added in 02_identity_users.
    created_by_user_id    uuid        NULL,
    rate_limit_per_minute integer     NULL,
    expires_at            timestamptz NULL,
    revoked_at            timestamptz NULL,
    last_used_at          timestamptz NULL,
    last_used_ip          inet        NULL,
    -- CreateApiKey idempotency (the secret itself is never stored, not even
    -- for a retry).
    idempotency_key       text        NULL,
    request_sha256        bytea       NULL,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT tenant_api_keys_prefix_key UNIQUE (prefix),
    CONSTRAINT tenant_api_keys_tenant_idempotency_key UNIQUE (tenant_id, idempotency_key),
    CONSTRAINT tenant_api_keys_name_check CHECK (char_length(btrim(name)) BETWEEN 1 AND 200),
    CONSTRAINT tenant_api_keys_prefix_check CHECK (prefix ~ '^[A-Za-z0-9_]{8,32}$'),
    CONSTRAINT tenant_api_keys_secret_hash_check CHECK (octet_length(secret_hash) = 32),
    CONSTRAINT tenant_api_keys_scopes_check CHECK (
        cardinality(scopes) <= 64 AND array_position(scopes, NULL) IS NULL),
    CONSTRAINT tenant_api_keys_rate_limit_check CHECK (rate_limit_per_minute IS NULL OR rate_limit_per_minute > 0),
    CONSTRAINT tenant_api_keys_expiry_check CHECK (expires_at IS NULL OR expires_at > created_at),
    CONSTRAINT tenant_api_keys_idempotency_key_check CHECK (
        idempotency_key IS NULL OR char_length(idempotency_key) BETWEEN 1 AND 200),
    CONSTRAINT tenant_api_keys_request_sha256_check CHECK (request_sha256 IS NULL OR octet_length(request_sha256) = 32)
);

CREATE INDEX tenant_api_keys_tenant_created_idx ON identity.tenant_api_keys (tenant_id, created_at DESC);

CREATE TRIGGER set_updated_at BEFORE UPDATE ON identity.tenant_api_keys
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE identity.tenant_api_keys IS 'Tenant API keys: visible prefix + SHA-256 of the secret; the secret itself is never stored.';
COMMENT ON COLUMN identity.tenant_api_keys.prefix IS 'Visible, unique key prefix (8..32 of [A-Za-z0-9_]) used to look the key up.';
COMMENT ON COLUMN identity.tenant_api_keys.secret_hash IS 'SHA-256 of the secret part (32 bytes).';
COMMENT ON COLUMN identity.tenant_api_keys.scopes IS 'Granted scopes, e.g. {render:write,files:read}; empty = no access.';


-- -----------------------------------------------------------------------------
-- tenant_webhooks: outbound event subscriptions of a tenant
-- -----------------------------------------------------------------------------
CREATE TABLE identity.tenant_webhooks (
    id                   uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id            uuid        NOT NULL REFERENCES identity.tenants (id) ON DELETE CASCADE,
    url                  text        NOT NULL,
    description          text        NULL,
    -- HMAC-SHA256 signing key. It has to be readable to sign deliveries, so it
    -- cannot be hashed; protect it with storage-level encryption.
    secret               bytea       NOT NULL,
    event_types          text[]      NOT NULL DEFAULT '{}',
    enabled              boolean     NOT NULL DEFAULT true,
    failure_count        integer     NOT NULL DEFAULT 0,   -- consecutive failed deliveries; reset on success
    last_success_at      timestamptz NULL,
    last_failure_at      timestamptz NULL,
    disabled_at          timestamptz NULL,
    disabled_reason      text        NULL,
    -- CreateWebhook idempotency.
    idempotency_key      text        NULL,
    request_sha256       bytea       NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT tenant_webhooks_tenant_idempotency_key UNIQUE (tenant_id, idempotency_key),
    CONSTRAINT tenant_webhooks_url_check CHECK (url ~ '^https?://[^\s]+$' AND char_length(url) <= 2048),
    CONSTRAINT tenant_webhooks_secret_check CHECK (octet_length(secret) BETWEEN 16 AND 256),
    CONSTRAINT tenant_webhooks_event_types_check CHECK (
        cardinality(event_types) <= 256 AND array_position(event_types, NULL) IS NULL),
    CONSTRAINT tenant_webhooks_failure_count_check CHECK (failure_count >= 0),
    CONSTRAINT tenant_webhooks_disabled_check CHECK (NOT enabled OR disabled_at IS NULL),
    CONSTRAINT tenant_webhooks_idempotency_key_check CHECK (
        idempotency_key IS NULL OR char_length(idempotency_key) BETWEEN 1 AND 200),
    CONSTRAINT tenant_webhooks_request_sha256_check CHECK (request_sha256 IS NULL OR octet_length(request_sha256) = 32)
);

CREATE INDEX tenant_webhooks_tenant_created_idx ON identity.tenant_webhooks (tenant_id, created_at DESC);
-- Event fan-out: the enabled webhooks of a tenant.
CREATE INDEX tenant_webhooks_enabled_idx ON identity.tenant_webhooks (tenant_id) WHERE enabled;

CREATE TRIGGER set_updated_at BEFORE UPDATE ON identity.tenant_webhooks
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE identity.tenant_webhooks IS 'Tenant webhooks; deliveries are signed with HMAC-SHA256 over timestamp and body.';
COMMENT ON COLUMN identity.tenant_webhooks.secret IS 'Raw HMAC-SHA256 key (16..256 bytes); must stay readable to sign deliveries.';
COMMENT ON COLUMN identity.tenant_webhooks.event_types IS 'Subscribed event types (full proto names); empty array = every event.';
COMMENT ON COLUMN identity.tenant_webhooks.failure_count IS 'Consecutive failed deliveries; the webhook is disabled after repeated failure.';


-- -----------------------------------------------------------------------------
-- tenant_webhook_deliveries: one row per (webhook, outbox event)
-- -----------------------------------------------------------------------------
-- Created by identity's webhook consumer of the outbox; UNIQUE (webhook_id,
-- outbox_event_id) makes the at-least-once fan-out idempotent. Test events
-- (WebhookService.TestWebhook) are sent directly and not recorded here. The
-- exact body is stored so every retry sends (and signs) the same bytes.
CREATE TABLE identity.tenant_webhook_deliveries (
    id               uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id        uuid        NOT NULL REFERENCES identity.tenants (id) ON DELETE CASCADE,
    webhook_id       uuid        NOT NULL REFERENCES identity.tenant_webhooks (id) ON DELETE CASCADE,
    outbox_event_id  bigint      NOT NULL,   -- soft reference: platform.outbox.id
    event_type       text        NOT NULL,
    body             bytea       NOT NULL,
    status           text        NOT NULL DEFAULT 'pending',
    attempts         integer     NOT NULL DEFAULT 0,
    max_attempts     integer     NOT NULL DEFAULT 10,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    locked_until     timestamptz NULL,       -- lease of the sender currently trying it
    last_attempt_at  timestamptz NULL,
    last_status_code integer     NULL,       -- HTTP status of the last attempt
    last_error       text        NULL,
    last_duration_ms integer     NULL,
    delivered_at     timestamptz NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT tenant_webhook_deliveries_event_key UNIQUE (webhook_id, outbox_event_id),
    CONSTRAINT tenant_webhook_deliveries_status_check CHECK (status IN ('pending', 'succeeded', 'failed', 'canceled')),
    CONSTRAINT tenant_webhook_deliveries_attempts_check CHECK (attempts >= 0 AND max_attempts >= 1),
    CONSTRAINT tenant_webhook_deliveries_status_code_check CHECK (last_status_code IS NULL OR last_status_code BETWEEN 100 AND 599),
    CONSTRAINT tenant_webhook_deliveries_duration_check CHECK (last_duration_ms IS NULL OR last_duration_ms >= 0),
    CONSTRAINT tenant_webhook_deliveries_delivered_check CHECK (status <> 'succeeded' OR delivered_at IS NOT NULL)
);

-- Sender claim: due pending deliveries (FOR UPDATE SKIP LOCKED).
CREATE INDEX tenant_webhook_deliveries_due_idx ON identity.tenant_webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX tenant_webhook_deliveries_webhook_created_idx ON identity.tenant_webhook_deliveries (webhook_id, created_at DESC);
CREATE INDEX tenant_webhook_deliveries_tenant_created_idx ON identity.tenant_webhook_deliveries (tenant_id, created_at DESC);

CREATE TRIGGER set_updated_at BEFORE UPDATE ON identity.tenant_webhook_deliveries
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE identity.tenant_webhook_deliveries IS 'Webhook deliveries with retry state; one per (webhook, outbox event).';
COMMENT ON COLUMN identity.tenant_webhook_deliveries.outbox_event_id IS 'soft reference: platform.outbox.id';
COMMENT ON COLUMN identity.tenant_webhook_deliveries.body IS 'Exact request body sent and signed on every attempt.';


-- -----------------------------------------------------------------------------
-- tenant_usage_daily: metering counters per tenant and UTC day
-- -----------------------------------------------------------------------------
-- Incremented with INSERT ... ON CONFLICT (tenant_id, day) DO UPDATE by the
-- usage consumer, in the same transaction as its outbox cursor (exactly-once
-- counting on top of at-least-once delivery).
CREATE TABLE identity.tenant_usage_daily (
    tenant_id      uuid        NOT NULL REFERENCES identity.tenants (id) ON DELETE CASCADE,
    day            date        NOT NULL,   -- UTC day
    renders        bigint      NOT NULL DEFAULT 0,
    render_seconds bigint      NOT NULL DEFAULT 0,   -- node seconds spent rendering
    render_frames  bigint      NOT NULL DEFAULT 0,
    snapshots      bigint      NOT NULL DEFAULT 0,
    storage_bytes  bigint      NOT NULL DEFAULT 0,   -- stored bytes at the end of the day (gauge)
    egress_bytes   bigint      NOT NULL DEFAULT 0,
    api_calls      bigint      NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, day),
    CONSTRAINT tenant_usage_daily_counters_check CHECK (
        renders >= 0 AND render_seconds >= 0 AND render_frames >= 0 AND snapshots >= 0
        AND storage_bytes >= 0 AND egress_bytes >= 0 AND api_calls >= 0)
);

CREATE TRIGGER set_updated_at BEFORE UPDATE ON identity.tenant_usage_daily
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE identity.tenant_usage_daily IS 'Usage per tenant and UTC day: renders, render seconds, storage bytes, API calls.';


-- -----------------------------------------------------------------------------
-- tenant_api_request_logs: every API call through the gateway (partitioned by
-- month on requested_at; written in batches off the request path)
-- -----------------------------------------------------------------------------
-- No FK to tenants on purpose: a FK check takes a KEY SHARE lock on the tenant
-- row for every logged request, which turns the hottest tenants' rows into
-- multixact hot spots. Logs also outlive a deleted tenant until their
-- partition is dropped.
CREATE TABLE identity.tenant_api_request_logs (
    id             bigint      GENERATED ALWAYS AS IDENTITY,
    requested_at   timestamptz NOT NULL,
    tenant_id      uuid        NOT NULL,
    api_key_id     uuid        NULL,   -- identity.tenant_api_keys.id (no FK: log table)
    user_id        uuid        NULL,   -- identity.users.id (no FK: log table)
    method         text        NOT NULL,   -- full gRPC method, e.g. /flatrender.render.v1.RenderService/SubmitJob
    grpc_status    smallint    NOT NULL,   -- gRPC status code 0..16
    duration_us    bigint      NOT NULL,
    request_bytes  bigint      NOT NULL DEFAULT 0,
    response_bytes bigint      NOT NULL DEFAULT 0,
    client_ip      inet        NULL,
    user_agent     text        NULL,
    trace_id       text        NULL,       -- W3C trace id (32 hex)
    PRIMARY KEY (id, requested_at),
    CONSTRAINT tenant_api_request_logs_grpc_status_check CHECK (grpc_status BETWEEN 0 AND 16),
    CONSTRAINT tenant_api_request_logs_sizes_check CHECK (duration_us >= 0 AND request_bytes >= 0 AND response_bytes >= 0),
    CONSTRAINT tenant_api_request_logs_trace_id_check CHECK (trace_id IS NULL OR trace_id ~ '^[0-9a-f]{32}$')
) PARTITION BY RANGE (requested_at);

CREATE INDEX tenant_api_request_logs_tenant_time_idx ON identity.tenant_api_request_logs (tenant_id, requested_at DESC);
CREATE INDEX tenant_api_request_logs_api_key_time_idx ON identity.tenant_api_request_logs (api_key_id, requested_at DESC)
    WHERE api_key_id IS NOT NULL;

-- Bounds are UTC month starts; timestamptz literals carry +00 so the session
-- time zone cannot shift them.
CREATE TABLE identity.tenant_api_request_logs_2026_01 PARTITION OF identity.tenant_api_request_logs
    FOR VALUES FROM ('2026-01-01 00:00:00+00') TO ('2026-02-01 00:00:00+00');

COMMENT ON TABLE identity.tenant_api_request_logs IS 'API request log, partitioned monthly (tenant_api_request_logs_YYYY_MM, UTC months); partitions are created by identity.ensure_api_request_log_partitions().';
COMMENT ON COLUMN identity.tenant_api_request_logs.tenant_id IS 'identity.tenants.id (no FK: high-volume log)';
COMMENT ON COLUMN identity.tenant_api_request_logs.api_key_id IS 'identity.tenant_api_keys.id (no FK: high-volume log)';
COMMENT ON COLUMN identity.tenant_api_request_logs.user_id IS 'identity.users.id (no FK: high-volume log)';
COMMENT ON COLUMN identity.tenant_api_request_logs.method IS 'Full gRPC method name, e.g. /flatrender.render.v1.RenderService/SubmitJob.';

-- Creates the monthly partitions of identity.tenant_api_request_logs from the
-- current UTC month up to months_ahead months ahead; returns how many it
-- created. Idempotent; concurrent callers serialize on a transaction-level
-- advisory lock, and an existing partition is simply skipped. SECURITY DEFINER
-- because only the table owner may add partitions.
CREATE FUNCTION identity.ensure_api_request_log_partitions(months_ahead integer)
    RETURNS integer
    LANGUAGE sql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT platform.create_monthly_partitions('identity.tenant_api_request_logs'::regclass, months_ahead);
$$;

REVOKE ALL ON FUNCTION identity.ensure_api_request_log_partitions(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION identity.ensure_api_request_log_partitions(integer) TO flatrender_identity;

COMMENT ON FUNCTION identity.ensure_api_request_log_partitions(integer) IS
    'Creates missing monthly partitions of identity.tenant_api_request_logs for the current UTC month .. +months_ahead (0..120); returns the number created. Idempotent and race-safe.';


-- -----------------------------------------------------------------------------
-- Seed: the default FlatRender tenant
-- -----------------------------------------------------------------------------
INSERT INTO identity.tenants (id, slug, name)
VALUES ('00000000-0000-0000-0000-000000000001', 'flatrender', 'FlatRender')
ON CONFLICT (id) DO NOTHING;


-- -----------------------------------------------------------------------------
-- Privileges (also covered by default privileges from 00_setup)
-- -----------------------------------------------------------------------------
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES    IN SCHEMA identity TO flatrender_identity;
GRANT USAGE, SELECT, UPDATE         ON ALL SEQUENCES IN SCHEMA identity TO flatrender_identity;
