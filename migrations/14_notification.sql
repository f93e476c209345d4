-- =============================================================================
-- 14_notification.sql — notification: notifications, deliveries, preferences
-- =============================================================================
-- notifications (one logical message to one user, also the in-app inbox
-- entry), notification_deliveries (one per channel and destination, with
-- retry state), notification_preferences (per user and channel, optionally
-- per notification type), notification_templates (per tenant, type, channel
-- and locale), channel_verifications (pending email/SMS codes and Telegram
-- link codes, stored hashed).
-- Channels: in_app, push, email, sms, telegram.
-- Ends with the one hard cross-schema FK:
-- identity.earned_gifts.notification_id -> notification.notifications.id.
-- =============================================================================


-- -----------------------------------------------------------------------------
-- notifications
-- -----------------------------------------------------------------------------
-- Created by the notification service from outbox events (at least once):
-- dedupe_key (e.g. 'event:<outbox id>') makes creation idempotent.
CREATE TABLE notification.notifications (
    id              uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid        NOT NULL,   -- soft reference: identity.tenants.id
    user_id         uuid        NOT NULL,   -- soft reference: identity.users.id
    type            text        NOT NULL,   -- e.g. 'render.completed', 'gift.earned'
    category        text        NOT NULL DEFAULT 'system',
    priority        text        NOT NULL DEFAULT 'normal',
    channels        text[]      NOT NULL DEFAULT '{in_app}',   -- channels it is sent to
    title           text        NOT NULL,
    body            text        NOT NULL,
    data            jsonb       NOT NULL DEFAULT '{}',   -- structured payload for clients (ids, links)
    action_url      text        NULL,
    locale          text        NOT NULL DEFAULT 'en',
    source_event_id bigint      NULL,       -- soft reference: platform.outbox.id
    dedupe_key      text        NULL,
    state           text        NOT NULL DEFAULT 'pending',
    read_at         timestamptz NULL,
    archived_at     timestamptz NULL,
    expires_at      timestamptz NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT notifications_dedupe_key UNIQUE (tenant_id, user_id, dedupe_key),
    CONSTRAINT notifications_type_check CHECK (type ~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$' AND char_length(type) <= 100),
    CONSTRAINT notifications_category_check CHECK (
        category IN ('render', 'account', 'security', 'billing', 'gamification', 'system', 'marketing')),
    CONSTRAINT notifications_priority_check CHECK (priority IN ('low', 'normal', 'high')),
    CONSTRAINT notifications_channels_check CHECK (
        cardinality(channels) >= 1
        AND channels <@ ARRAY['in_app', 'push', 'email', 'sms', 'telegram']::text[]),
    CONSTRAINT notifications_title_check CHECK (char_length(btrim(title)) BETWEEN 1 AND 300),
    CONSTRAINT notifications_body_check CHECK (char_length(body) <= 20000),
    CONSTRAINT notifications_data_check CHECK (jsonb_typeof(data) = 'object'),
    CONSTRAINT notifications_locale_check CHECK (locale ~ '^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$'),
    CONSTRAINT notifications_dedupe_key_check CHECK (dedupe_key IS NULL OR char_length(dedupe_key) BETWEEN 1 AND 200),
    CONSTRAINT notifications_state_check CHECK (state IN ('pending', 'sent', 'partially_failed', 'failed', 'canceled'))
);

-- Inbox: a user's notifications, newest first; unread badge.
CREATE INDEX notifications_user_created_idx ON notification.notifications (tenant_id, user_id, created_at DESC);
CREATE INDEX notifications_user_unread_idx ON notification.notifications (tenant_id, user_id, created_at DESC)
    WHERE read_at IS NULL AND archived_at IS NULL;
-- Expiry cleanup.
CREATE INDEX notifications_expires_idx ON notification.notifications (expires_at) WHERE expires_at IS NOT NULL;

CREATE TRIGGER set_updated_at BEFORE UPDATE ON notification.notifications
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE notification.notifications IS 'Notifications to a user over channels in_app/push/email/sms/telegram; also the in-app inbox.';
COMMENT ON COLUMN notification.notifications.tenant_id IS 'soft reference: identity.tenants.id';
COMMENT ON COLUMN notification.notifications.user_id IS 'soft reference: identity.users.id';
COMMENT ON COLUMN notification.notifications.source_event_id IS 'soft reference: platform.outbox.id';
COMMENT ON COLUMN notification.notifications.channels IS 'Subset of {in_app,push,email,sms,telegram}; one delivery per channel/destination.';


-- -----------------------------------------------------------------------------
-- notification_deliveries: per channel (and destination) attempts
-- -----------------------------------------------------------------------------
-- Senders claim due rows (state 'pending', next_attempt_at <= now(),
-- locked_until passed) with FOR UPDATE SKIP LOCKED and back off on failure.
CREATE TABLE notification.notification_deliveries (
    id                   uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id            uuid        NOT NULL,   -- soft reference: identity.tenants.id
    notification_id      uuid        NOT NULL REFERENCES notification.notifications (id) ON DELETE CASCADE,
    channel              text        NOT NULL,
    -- email address, E.164 phone number, Telegram chat id, push subscription
    -- id; NULL for in_app.
    destination          text        NULL,
    push_subscription_id uuid        NULL,       -- soft reference: identity.push_subscriptions.id
    state                text        NOT NULL DEFAULT 'pending',
    skip_reason          text        NULL,
    attempts             integer     NOT NULL DEFAULT 0,
    max_attempts         integer     NOT NULL DEFAULT 5,
    next_attempt_at      timestamptz NOT NULL DEFAULT now(),
    locked_until         timestamptz NULL,
    last_attempt_at      timestamptz NULL,
    provider             text        NULL,       -- e.g. 'smtp', 'twilio', 'telegram', 'webpush'
    provider_message_id  text        NULL,
    error_code           text        NULL,
    error_message        text        NULL,
    sent_at              timestamptz NULL,
    delivered_at         timestamptz NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT notification_deliveries_destination_key UNIQUE NULLS NOT DISTINCT (notification_id, channel, destination),
    CONSTRAINT notification_deliveries_channel_check CHECK (channel IN ('in_app', 'push', 'email', 'sms', 'telegram')),
    CONSTRAINT notification_deliveries_destination_check CHECK (
        (channel = 'in_app') = (destination IS NULL)
        AND (destination IS NULL OR char_length(destination) BETWEEN 1 AND 2048)),
    CONSTRAINT notification_deliveries_state_check CHECK (
        state IN ('pending', 'sent', 'delivered', 'failed', 'skipped', 'canceled')),
    CONSTRAINT notification_deliveries_skip_reason_check CHECK (
        (state = 'skipped') = (skip_reason IS NOT NULL)
        AND (skip_reason IS NULL OR skip_reason IN
             ('disabled_by_user', 'no_destination', 'quiet_hours', 'unsubscribed', 'expired', 'rate_limited'))),
    CONSTRAINT notification_deliveries_attempts_check CHECK (attempts >= 0 AND max_attempts >= 1),
    CONSTRAINT notification_deliveries_sent_check CHECK (state NOT IN ('sent', 'delivered') OR sent_at IS NOT NULL)
);

CREATE INDEX notification_deliveries_due_idx ON notification.notification_deliveries (next_attempt_at)
    WHERE state = 'pending';
CREATE INDEX notification_deliveries_notification_idx ON notification.notification_deliveries (notification_id);
CREATE INDEX notification_deliveries_tenant_created_idx ON notification.notification_deliveries (tenant_id, created_at DESC);
CREATE INDEX notification_deliveries_provider_ref_idx ON notification.notification_deliveries (provider, provider_message_id)
    WHERE provider_message_id IS NOT NULL;   -- delivery receipts from providers

CREATE TRIGGER set_updated_at BEFORE UPDATE ON notification.notification_deliveries
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE notification.notification_deliveries IS 'Delivery of a notification on one channel to one destination, with retry state.';
COMMENT ON COLUMN notification.notification_deliveries.tenant_id IS 'soft reference: identity.tenants.id';
COMMENT ON COLUMN notification.notification_deliveries.push_subscription_id IS 'soft reference: identity.push_subscriptions.id';


-- -----------------------------------------------------------------------------
-- notification_preferences: per user and channel (and optionally type)
-- -----------------------------------------------------------------------------
-- notification_type '*' is the user's default for the channel; a row with a
-- specific type overrides it. No row = the platform default (enabled, except
-- marketing which needs an explicit opt-in).
CREATE TABLE notification.notification_preferences (
    id                      uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id               uuid        NOT NULL,   -- soft reference: identity.tenants.id
    user_id                 uuid        NOT NULL,   -- soft reference: identity.users.id
    channel                 text        NOT NULL,
    notification_type       text        NOT NULL DEFAULT '*',
    enabled                 boolean     NOT NULL DEFAULT true,
    -- Channel address when it is not the account's: phone number (sms),
    -- chat id (telegram), email address (email). Kept on the channel's '*'
    -- row; destination_verified_at is set when a channel_verifications code
    -- for it is confirmed (or the Telegram link is completed).
    destination             text        NULL,
    -- What the settings page shows when it is not `destination` itself:
    -- '@username' of the linked Telegram chat.
    destination_label       text        NULL,
    destination_verified_at timestamptz NULL,
    digest                  text        NOT NULL DEFAULT 'immediate',
    quiet_hours_start       time        NULL,
    quiet_hours_end         time        NULL,
    time_zone               text        NULL,       -- IANA zone for quiet hours; NULL = the user's
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT notification_preferences_key UNIQUE (tenant_id, user_id, channel, notification_type),
    CONSTRAINT notification_preferences_channel_check CHECK (channel IN ('in_app', 'push', 'email', 'sms', 'telegram')),
    CONSTRAINT notification_preferences_type_check CHECK (
        notification_type = '*'
        OR (notification_type ~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$' AND char_length(notification_type) <= 100)),
    CONSTRAINT notification_preferences_destination_check CHECK (
        destination IS NULL OR (channel <> 'in_app' AND char_length(destination) BETWEEN 1 AND 320)),
    CONSTRAINT notification_preferences_destination_label_check CHECK (
        destination_label IS NULL OR (destination IS NOT NULL AND char_length(destination_label) BETWEEN 1 AND 100)),
    CONSTRAINT notification_preferences_digest_check CHECK (digest IN ('immediate', 'hourly', 'daily')),
    CONSTRAINT notification_preferences_quiet_hours_check CHECK (
        (quiet_hours_start IS NULL) = (quiet_hours_end IS NULL)
        AND (quiet_hours_start IS NULL OR quiet_hours_start <> quiet_hours_end)),
    CONSTRAINT notification_preferences_time_zone_check CHECK (time_zone IS NULL OR char_length(time_zone) BETWEEN 1 AND 64)
);

CREATE INDEX notification_preferences_user_idx ON notification.notification_preferences (user_id);

CREATE TRIGGER set_updated_at BEFORE UPDATE ON notification.notification_preferences
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE notification.notification_preferences IS 'Per user and channel (type ''*'' or a specific type): enabled, destination, digest, quiet hours.';
COMMENT ON COLUMN notification.notification_preferences.tenant_id IS 'soft reference: identity.tenants.id';
COMMENT ON COLUMN notification.notification_preferences.user_id IS 'soft reference: identity.users.id';


-- -----------------------------------------------------------------------------
-- notification_templates: message texts per tenant, type, channel and locale
-- -----------------------------------------------------------------------------
-- Lookup: the tenant's own row, else the default tenant's
-- (00000000-0000-0000-0000-000000000001), else a built-in fallback.
CREATE TABLE notification.notification_templates (
    id                uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id         uuid        NOT NULL,   -- soft reference: identity.tenants.id
    notification_type text        NOT NULL,
    channel           text        NOT NULL,
    locale            text        NOT NULL DEFAULT 'en',
    subject           text        NULL,       -- email subject / push title
    body              text        NOT NULL,   -- with {{placeholders}} filled from notification data
    body_format       text        NOT NULL DEFAULT 'text',
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT notification_templates_key UNIQUE (tenant_id, notification_type, channel, locale),
    CONSTRAINT notification_templates_type_check CHECK (
        notification_type ~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$' AND char_length(notification_type) <= 100),
    CONSTRAINT notification_templates_channel_check CHECK (channel IN ('in_app', 'push', 'email', 'sms', 'telegram')),
    CONSTRAINT notification_templates_locale_check CHECK (locale ~ '^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$'),
    CONSTRAINT notification_templates_body_check CHECK (char_length(body) BETWEEN 1 AND 100000),
    CONSTRAINT notification_templates_body_format_check CHECK (body_format IN ('text', 'markdown', 'html'))
);

CREATE TRIGGER set_updated_at BEFORE UPDATE ON notification.notification_templates
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE notification.notification_templates IS 'Message templates per tenant, notification type, channel and locale.';
COMMENT ON COLUMN notification.notification_templates.tenant_id IS 'soft reference: identity.tenants.id';


-- -----------------------------------------------------------------------------
-- channel_verifications: pending codes of StartChannelVerification
-- -----------------------------------------------------------------------------
-- email/sms: a 6-digit code sent to `destination`, confirmed with
-- ConfirmChannelVerification; telegram: the code in the bot's deep link
-- (t.me/<bot>?start=<code>), redeemed by CompleteTelegramLink, which sets
-- `destination` to the chat id. Codes are valid 10 minutes. Only a hash is
-- stored: HMAC-SHA-256 of the code under the service's secret key (a bare
-- SHA-256 of a 6-digit code could be reversed by trying all million codes).
-- A new start voids the user's open code for the channel (voided_at), so at
-- most one is open; rows are kept for the rate limit (5 starts per hour per
-- user and channel) and removed by cleanup after a day.
-- Confirm checks the open, unexpired row of the user and channel: a match
-- sets consumed_at; a wrong code increments attempts, and the 5th wrong code
-- also sets voided_at.
CREATE TABLE notification.channel_verifications (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid        NOT NULL,   -- soft reference: identity.tenants.id
    user_id     uuid        NOT NULL,   -- soft reference: identity.users.id
    channel     text        NOT NULL,
    -- email address or E.164 number being verified; telegram: NULL until the
    -- link is opened, then the chat id.
    destination text        NULL,
    code_hash   bytea       NOT NULL,
    attempts    integer     NOT NULL DEFAULT 0,   -- wrong codes entered
    expires_at  timestamptz NOT NULL,
    consumed_at timestamptz NULL,       -- confirmed / linked
    voided_at   timestamptz NULL,       -- superseded by a newer code, or too many wrong codes
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT channel_verifications_channel_check CHECK (channel IN ('email', 'sms', 'telegram')),
    CONSTRAINT channel_verifications_destination_check CHECK (
        (destination IS NULL OR char_length(destination) BETWEEN 1 AND 320)
        AND (channel = 'telegram' OR destination IS NOT NULL)
        AND (channel <> 'telegram' OR consumed_at IS NULL OR destination IS NOT NULL)),
    CONSTRAINT channel_verifications_code_hash_check CHECK (octet_length(code_hash) = 32),
    CONSTRAINT channel_verifications_attempts_check CHECK (attempts BETWEEN 0 AND 5),
    CONSTRAINT channel_verifications_expiry_check CHECK (expires_at > created_at),
    CONSTRAINT channel_verifications_closed_check CHECK (consumed_at IS NULL OR voided_at IS NULL)
);

-- At most one open code per user and channel.
CREATE UNIQUE INDEX channel_verifications_open_key ON notification.channel_verifications (tenant_id, user_id, channel)
    WHERE consumed_at IS NULL AND voided_at IS NULL;
-- CompleteTelegramLink finds the code by its hash (link codes are random, so unique).
CREATE UNIQUE INDEX channel_verifications_telegram_code_key ON notification.channel_verifications (code_hash)
    WHERE channel = 'telegram';
-- Rate limit: a user's recent starts per channel.
CREATE INDEX channel_verifications_user_created_idx ON notification.channel_verifications (tenant_id, user_id, channel, created_at DESC);
-- Cleanup of old rows.
CREATE INDEX channel_verifications_expires_idx ON notification.channel_verifications (expires_at);

CREATE TRIGGER set_updated_at BEFORE UPDATE ON notification.channel_verifications
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE notification.channel_verifications IS 'Pending channel verifications: email/SMS codes and Telegram link codes, stored as HMAC-SHA-256 hashes.';
COMMENT ON COLUMN notification.channel_verifications.tenant_id IS 'soft reference: identity.tenants.id';
COMMENT ON COLUMN notification.channel_verifications.user_id IS 'soft reference: identity.users.id';
COMMENT ON COLUMN notification.channel_verifications.code_hash IS 'HMAC-SHA-256 of the code under the notification service''s secret key (32 bytes); never the code.';


-- -----------------------------------------------------------------------------
-- Privileges (also covered by default privileges from 00_setup)
-- -----------------------------------------------------------------------------
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES    IN SCHEMA notification TO flatrender_notification;
GRANT USAGE, SELECT, UPDATE         ON ALL SEQUENCES IN SCHEMA notification TO flatrender_notification;


-- =============================================================================
-- The one hard cross-schema foreign key (DESIGN §5)
-- =============================================================================
-- A gift's announcement may be deleted (inbox cleanup); the gift stays.
-- Referential checks and the SET NULL action run with the table owner's
-- rights, so neither service role needs privileges in the other's schema.
ALTER TABLE identity.earned_gifts
    ADD CONSTRAINT earned_gifts_notification_id_fkey
    FOREIGN KEY (notification_id) REFERENCES notification.notifications (id) ON DELETE SET NULL;
