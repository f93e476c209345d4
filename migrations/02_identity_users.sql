-- =============================================================================
-- 02_identity_users.sql — identity: users, authentication, sessions, MFA
-- =============================================================================
-- users, email_verification_tokens, password_reset_tokens, sessions,
-- refresh_tokens, signing_keys, login_attempts, login_throttles, mfa_factors,
-- mfa_recovery_codes, push_subscriptions.
--
-- Secrets handed to a client (verification/reset tokens, refresh tokens,
-- recovery codes) are high-entropy random values stored only as SHA-256
-- (bytea, 32 bytes); the client's value is hashed and looked up. Passwords are
-- Argon2id PHC strings.
-- =============================================================================


-- -----------------------------------------------------------------------------
-- users
-- -----------------------------------------------------------------------------
CREATE TABLE identity.users (
    id                  uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id           uuid        NOT NULL REFERENCES identity.tenants (id) ON DELETE RESTRICT,
    -- Stored normalized to lower case; compare with the lower-cased input.
    email               text        NOT NULL,
    -- Argon2id PHC string ($argon2id$v=19$m=19456,t=2,p=1$...). NULL: no
    -- password login (account created by an operator/invite, not yet set).
    password_hash       text        NULL,
    display_name        text        NOT NULL,
    avatar_file_id      uuid        NULL,   -- soft reference: file_mgr.files.id
    role                text        NOT NULL DEFAULT 'user',
    status              text        NOT NULL DEFAULT 'active',
    email_verified_at   timestamptz NULL,
    locale              text        NOT NULL DEFAULT 'en',
    time_zone           text        NOT NULL DEFAULT 'UTC',
    password_changed_at timestamptz NULL,
    last_login_at       timestamptz NULL,
    suspended_at        timestamptz NULL,
    deleted_at          timestamptz NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_tenant_email_key UNIQUE (tenant_id, email),
    CONSTRAINT users_email_check CHECK (
        email = lower(email) AND char_length(email) <= 320 AND email ~ '^[^@\s]+@[^@\s]+$'),
    CONSTRAINT users_password_hash_check CHECK (password_hash IS NULL OR password_hash LIKE '$argon2id$%'),
    CONSTRAINT users_display_name_check CHECK (char_length(btrim(display_name)) BETWEEN 1 AND 200),
    CONSTRAINT users_role_check CHECK (role IN ('user', 'tenant_admin', 'platform_admin')),
    -- Platform admins administer every tenant, so they live in the platform's own tenant.
    CONSTRAINT users_platform_admin_tenant_check CHECK (
        role <> 'platform_admin' OR tenant_id = '00000000-0000-0000-0000-000000000001'),
    CONSTRAINT users_status_check CHECK (status IN ('active', 'suspended', 'deleted')),
    CONSTRAINT users_suspended_check CHECK (status <> 'suspended' OR suspended_at IS NOT NULL),
    CONSTRAINT users_deleted_check CHECK (status <> 'deleted' OR deleted_at IS NOT NULL),
    CONSTRAINT users_locale_check CHECK (locale ~ '^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$'),
    CONSTRAINT users_time_zone_check CHECK (char_length(time_zone) BETWEEN 1 AND 64)
);

CREATE INDEX users_tenant_created_idx ON identity.users (tenant_id, created_at DESC);
CREATE INDEX users_tenant_role_idx ON identity.users (tenant_id, role) WHERE role <> 'user';

CREATE TRIGGER set_updated_at BEFORE UPDATE ON identity.users
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE identity.users IS 'User accounts; email unique per tenant (stored lower case).';
COMMENT ON COLUMN identity.users.password_hash IS 'Argon2id PHC string (m>=19456 KiB, t>=2, p=1); NULL = no password set.';
COMMENT ON COLUMN identity.users.avatar_file_id IS 'soft reference: file_mgr.files.id';

-- tenant_api_keys (01) records who created a key.
ALTER TABLE identity.tenant_api_keys
    ADD CONSTRAINT tenant_api_keys_created_by_user_id_fkey
    FOREIGN KEY (created_by_user_id) REFERENCES identity.users (id) ON DELETE SET NULL;

CREATE INDEX tenant_api_keys_created_by_idx ON identity.tenant_api_keys (created_by_user_id)
    WHERE created_by_user_id IS NOT NULL;


-- -----------------------------------------------------------------------------
-- One-time tokens: email verification and password reset
-- -----------------------------------------------------------------------------
-- Consumed with UPDATE ... SET used_at = now() WHERE token_hash = $1 AND
-- used_at IS NULL AND expires_at > now() RETURNING ... (single use).
CREATE TABLE identity.email_verification_tokens (
    id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id  uuid        NOT NULL REFERENCES identity.tenants (id) ON DELETE CASCADE,
    user_id    uuid        NOT NULL REFERENCES identity.users (id) ON DELETE CASCADE,
    email      text        NOT NULL,   -- the address being verified (lower case)
    token_hash bytea       NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at    timestamptz NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT email_verification_tokens_token_hash_key UNIQUE (token_hash),
    CONSTRAINT email_verification_tokens_token_hash_check CHECK (octet_length(token_hash) = 32),
    CONSTRAINT email_verification_tokens_email_check CHECK (email = lower(email)),
    CONSTRAINT email_verification_tokens_expiry_check CHECK (expires_at > created_at)
);

CREATE INDEX email_verification_tokens_user_idx ON identity.email_verification_tokens (user_id, created_at DESC);
CREATE INDEX email_verification_tokens_expires_idx ON identity.email_verification_tokens (expires_at);

COMMENT ON TABLE identity.email_verification_tokens IS 'Single-use email verification tokens (SHA-256 stored).';

CREATE TABLE identity.password_reset_tokens (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    uuid        NOT NULL REFERENCES identity.tenants (id) ON DELETE CASCADE,
    user_id      uuid        NOT NULL REFERENCES identity.users (id) ON DELETE CASCADE,
    token_hash   bytea       NOT NULL,
    requested_ip inet        NULL,
    expires_at   timestamptz NOT NULL,
    used_at      timestamptz NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT password_reset_tokens_token_hash_key UNIQUE (token_hash),
    CONSTRAINT password_reset_tokens_token_hash_check CHECK (octet_length(token_hash) = 32),
    CONSTRAINT password_reset_tokens_expiry_check CHECK (expires_at > created_at)
);

CREATE INDEX password_reset_tokens_user_idx ON identity.password_reset_tokens (user_id, created_at DESC);
CREATE INDEX password_reset_tokens_expires_idx ON identity.password_reset_tokens (expires_at);

COMMENT ON TABLE identity.password_reset_tokens IS 'Single-use password reset tokens (SHA-256 stored).';


-- -----------------------------------------------------------------------------
-- Sessions and refresh tokens
-- -----------------------------------------------------------------------------
-- A session is one refresh-token family (one login on one device). Every
-- refresh rotates the token: the presented row gets rotated_at and a child row
-- is inserted with parent_id = presented id. Presenting a token that already
-- has rotated_at set is reuse: revoke the whole session (family).
-- The rotation is race-free:
--     UPDATE identity.refresh_tokens SET rotated_at = now()
--      WHERE token_hash = $1 AND rotated_at IS NULL AND revoked_at IS NULL
--        AND expires_at > now() RETURNING ...
-- and refresh_tokens_parent_key allows at most one child per token.
CREATE TABLE identity.sessions (
    id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),   -- the token family id
    tenant_id      uuid        NOT NULL REFERENCES identity.tenants (id) ON DELETE CASCADE,
    user_id        uuid        NOT NULL REFERENCES identity.users (id) ON DELETE CASCADE,
    expires_at     timestamptz NOT NULL,   -- absolute: no refresh extends a session past this
    mfa_verified   boolean     NOT NULL DEFAULT false,
    user_agent     text        NULL,
    ip             inet        NULL,
    last_used_at   timestamptz NOT NULL DEFAULT now(),
    last_used_ip   inet        NULL,
    revoked_at     timestamptz NULL,
    revoked_reason text        NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT sessions_expiry_check CHECK (expires_at > created_at),
    CONSTRAINT sessions_revoked_reason_check CHECK (
        revoked_reason IS NULL
        OR revoked_reason IN ('logout', 'logout_all', 'reuse_detected', 'password_changed', 'admin', 'user_disabled')),
    CONSTRAINT sessions_revoked_check CHECK ((revoked_at IS NULL) = (revoked_reason IS NULL)),
    CONSTRAINT sessions_user_agent_check CHECK (user_agent IS NULL OR char_length(user_agent) <= 1024)
);

-- Sessions list / logout everywhere.
CREATE INDEX sessions_user_active_idx ON identity.sessions (user_id, created_at DESC) WHERE revoked_at IS NULL;
-- Cleanup of expired sessions.
CREATE INDEX sessions_expires_idx ON identity.sessions (expires_at);

CREATE TRIGGER set_updated_at BEFORE UPDATE ON identity.sessions
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE identity.sessions IS 'Login sessions = refresh-token families; revoking the session revokes every token of the family.';
COMMENT ON COLUMN identity.sessions.expires_at IS 'Absolute expiry of the family; rotations never extend it.';

CREATE TABLE identity.refresh_tokens (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid        NOT NULL REFERENCES identity.tenants (id) ON DELETE CASCADE,
    user_id     uuid        NOT NULL REFERENCES identity.users (id) ON DELETE CASCADE,
    family_id   uuid        NOT NULL REFERENCES identity.sessions (id) ON DELETE CASCADE,
    parent_id   uuid        NULL REFERENCES identity.refresh_tokens (id) ON DELETE SET NULL,
    token_hash  bytea       NOT NULL,
    expires_at  timestamptz NOT NULL,   -- copied from the session: absolute
    rotated_at  timestamptz NULL,       -- set when exchanged for its child
    revoked_at  timestamptz NULL,
    user_agent  text        NULL,
    ip          inet        NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT refresh_tokens_token_hash_key UNIQUE (token_hash),
    CONSTRAINT refresh_tokens_token_hash_check CHECK (octet_length(token_hash) = 32),
    CONSTRAINT refresh_tokens_parent_check CHECK (parent_id IS NULL OR parent_id <> id),
    CONSTRAINT refresh_tokens_expiry_check CHECK (expires_at > created_at),
    CONSTRAINT refresh_tokens_user_agent_check CHECK (user_agent IS NULL OR char_length(user_agent) <= 1024)
);

-- A token is rotated at most once: at most one child per parent.
CREATE UNIQUE INDEX refresh_tokens_parent_key ON identity.refresh_tokens (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX refresh_tokens_family_idx ON identity.refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user_active_idx ON identity.refresh_tokens (user_id) WHERE revoked_at IS NULL AND rotated_at IS NULL;
CREATE INDEX refresh_tokens_expires_idx ON identity.refresh_tokens (expires_at);

COMMENT ON TABLE identity.refresh_tokens IS 'Opaque refresh tokens (SHA-256 stored), rotated on every use; reuse of a rotated token revokes its family.';
COMMENT ON COLUMN identity.refresh_tokens.family_id IS 'identity.sessions.id: the family this token belongs to.';


-- -----------------------------------------------------------------------------
-- signing_keys: Ed25519 keys that sign access tokens (published as JWKS)
-- -----------------------------------------------------------------------------
-- Lifecycle: sign with the newest key whose not_before has passed and whose
-- retire_after has not; publish (and accept) every key until expires_at, so
-- tokens signed just before retirement still verify. revoked_at = compromised:
-- stop publishing and reject its tokens at once.
CREATE TABLE identity.signing_keys (
    id                 uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    kid                text        NOT NULL,
    algorithm          text        NOT NULL DEFAULT 'EdDSA',
    curve              text        NOT NULL DEFAULT 'Ed25519',
    public_key         bytea       NOT NULL,   -- raw 32-byte Ed25519 public key
    -- Private key material: the raw 32-byte Ed25519 seed ('raw') or that seed
    -- sealed with a key-encryption key held outside the database ('encrypted').
    -- NULL after the key is retired for signing and the material is wiped.
    private_key        bytea       NULL,
    private_key_format text        NOT NULL DEFAULT 'raw',
    not_before         timestamptz NOT NULL DEFAULT now(),
    retire_after       timestamptz NOT NULL,   -- stop signing with it after this
    expires_at         timestamptz NOT NULL,   -- stop publishing/accepting after this
    revoked_at         timestamptz NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT signing_keys_kid_key UNIQUE (kid),
    -- URL-safe only: a kid can never carry path characters.
    CONSTRAINT signing_keys_kid_check CHECK (kid ~ '^[A-Za-z0-9_-]{1,64}$'),
    CONSTRAINT signing_keys_algorithm_check CHECK (algorithm = 'EdDSA'),
    CONSTRAINT signing_keys_curve_check CHECK (curve = 'Ed25519'),
    CONSTRAINT signing_keys_public_key_check CHECK (octet_length(public_key) = 32),
    CONSTRAINT signing_keys_private_key_format_check CHECK (private_key_format IN ('raw', 'encrypted')),
    CONSTRAINT signing_keys_private_key_check CHECK (
        private_key IS NULL
        OR (private_key_format = 'raw' AND octet_length(private_key) = 32)
        OR (private_key_format = 'encrypted' AND octet_length(private_key) BETWEEN 33 AND 4096)),
    CONSTRAINT signing_keys_lifetime_check CHECK (retire_after > not_before AND expires_at >= retire_after)
);

CREATE INDEX signing_keys_published_idx ON identity.signing_keys (expires_at) WHERE revoked_at IS NULL;

CREATE TRIGGER set_updated_at BEFORE UPDATE ON identity.signing_keys
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE identity.signing_keys IS 'Ed25519 (EdDSA) JWT signing keys, rotated with overlap and published as JWKS.';
COMMENT ON COLUMN identity.signing_keys.private_key IS 'Raw 32-byte seed (private_key_format=raw) or a sealed envelope (encrypted); NULL once wiped.';


-- -----------------------------------------------------------------------------
-- Login throttling
-- -----------------------------------------------------------------------------
-- login_attempts: append-only audit of every attempt (also for unknown emails).
CREATE TABLE identity.login_attempts (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id      uuid        NOT NULL REFERENCES identity.tenants (id) ON DELETE CASCADE,
    email          text        NOT NULL,   -- as submitted, lower-cased
    user_id        uuid        NULL REFERENCES identity.users (id) ON DELETE SET NULL,
    ip             inet        NULL,
    user_agent     text        NULL,
    succeeded      boolean     NOT NULL,
    failure_reason text        NULL,
    attempted_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT login_attempts_failure_reason_check CHECK (
        (succeeded AND failure_reason IS NULL)
        OR (NOT succeeded AND failure_reason IN
            ('bad_credentials', 'unknown_user', 'throttled', 'mfa_required', 'bad_mfa_code',
             'user_suspended', 'tenant_suspended', 'email_unverified'))),
    CONSTRAINT login_attempts_user_agent_check CHECK (user_agent IS NULL OR char_length(user_agent) <= 1024)
);

CREATE INDEX login_attempts_account_idx ON identity.login_attempts (tenant_id, email, attempted_at DESC);
CREATE INDEX login_attempts_ip_idx ON identity.login_attempts (ip, attempted_at DESC) WHERE ip IS NOT NULL;
CREATE INDEX login_attempts_attempted_idx ON identity.login_attempts (attempted_at);   -- retention cleanup

COMMENT ON TABLE identity.login_attempts IS 'Audit of login attempts (append-only; pruned by age).';

-- login_throttles: the current throttle state per account and per address,
-- updated with one UPSERT per failed attempt (cheaper than counting attempts).
CREATE TABLE identity.login_throttles (
    scope             text        NOT NULL,
    -- account: '<tenant_id>:<lower-case email>'; address: the client IP as text
    -- (IPv6 usually truncated to its /64 by the service).
    subject           text        NOT NULL,
    failures          integer     NOT NULL DEFAULT 0,
    window_started_at timestamptz NOT NULL DEFAULT now(),
    locked_until      timestamptz NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, subject),
    CONSTRAINT login_throttles_scope_check CHECK (scope IN ('account', 'address')),
    CONSTRAINT login_throttles_subject_check CHECK (char_length(subject) BETWEEN 1 AND 400),
    CONSTRAINT login_throttles_failures_check CHECK (failures >= 0)
);

CREATE INDEX login_throttles_updated_idx ON identity.login_throttles (updated_at);   -- cleanup of stale rows

CREATE TRIGGER set_updated_at BEFORE UPDATE ON identity.login_throttles
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE identity.login_throttles IS 'Failed-login counters and lockouts per account and per client address (not tenant data: addresses span tenants).';


-- -----------------------------------------------------------------------------
-- MFA: TOTP factors and recovery codes
-- -----------------------------------------------------------------------------
-- A code is accepted once: verification advances last_used_step atomically,
--     UPDATE identity.mfa_factors SET last_used_step = $step, last_used_at = now()
--      WHERE id = $1 AND (last_used_step IS NULL OR last_used_step < $step)
-- so the same (or an older) time step can never be used again.
CREATE TABLE identity.mfa_factors (
    id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id      uuid        NOT NULL REFERENCES identity.tenants (id) ON DELETE CASCADE,
    user_id        uuid        NOT NULL REFERENCES identity.users (id) ON DELETE CASCADE,
    kind           text        NOT NULL DEFAULT 'totp',
    label          text        NULL,
    -- TOTP shared secret: raw bytes, or sealed with a key-encryption key
    -- outside the database when secret_format = 'encrypted'.
    secret         bytea       NOT NULL,
    secret_format  text        NOT NULL DEFAULT 'raw',
    algorithm      text        NOT NULL DEFAULT 'SHA1',
    digits         smallint    NOT NULL DEFAULT 6,
    period_seconds smallint    NOT NULL DEFAULT 30,
    confirmed_at   timestamptz NULL,     -- NULL while enrolment awaits the first code
    last_used_step bigint      NULL,     -- unix_time / period of the last accepted code
    last_used_at   timestamptz NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT mfa_factors_kind_check CHECK (kind IN ('totp')),
    CONSTRAINT mfa_factors_label_check CHECK (label IS NULL OR char_length(label) <= 100),
    CONSTRAINT mfa_factors_secret_format_check CHECK (secret_format IN ('raw', 'encrypted')),
    CONSTRAINT mfa_factors_secret_check CHECK (octet_length(secret) BETWEEN 16 AND 4096),
    CONSTRAINT mfa_factors_algorithm_check CHECK (algorithm IN ('SHA1', 'SHA256', 'SHA512')),
    CONSTRAINT mfa_factors_digits_check CHECK (digits IN (6, 8)),
    CONSTRAINT mfa_factors_period_check CHECK (period_seconds BETWEEN 15 AND 120),
    CONSTRAINT mfa_factors_last_used_step_check CHECK (last_used_step IS NULL OR last_used_step >= 0)
);

-- At most one confirmed factor of each kind per user.
CREATE UNIQUE INDEX mfa_factors_user_kind_confirmed_key ON identity.mfa_factors (user_id, kind)
    WHERE confirmed_at IS NOT NULL;
CREATE INDEX mfa_factors_user_idx ON identity.mfa_factors (user_id);

CREATE TRIGGER set_updated_at BEFORE UPDATE ON identity.mfa_factors
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE identity.mfa_factors IS 'MFA factors (TOTP, RFC 6238); a user has MFA when a confirmed factor exists.';
COMMENT ON COLUMN identity.mfa_factors.last_used_step IS 'Time step of the last accepted code; only larger steps are accepted (single use).';

-- Consumed with UPDATE ... SET used_at = now() WHERE user_id = $1 AND
-- code_hash = $2 AND used_at IS NULL.
CREATE TABLE identity.mfa_recovery_codes (
    id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id  uuid        NOT NULL REFERENCES identity.tenants (id) ON DELETE CASCADE,
    user_id    uuid        NOT NULL REFERENCES identity.users (id) ON DELETE CASCADE,
    code_hash  bytea       NOT NULL,   -- SHA-256 of the normalized code
    used_at    timestamptz NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT mfa_recovery_codes_user_code_key UNIQUE (user_id, code_hash),
    CONSTRAINT mfa_recovery_codes_code_hash_check CHECK (octet_length(code_hash) = 32)
);

COMMENT ON TABLE identity.mfa_recovery_codes IS 'Single-use MFA recovery codes (SHA-256 stored).';


-- -----------------------------------------------------------------------------
-- push_subscriptions: Web Push (PWA) endpoints of a user's browsers
-- -----------------------------------------------------------------------------
CREATE TABLE identity.push_subscriptions (
    id              uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid        NOT NULL REFERENCES identity.tenants (id) ON DELETE CASCADE,
    user_id         uuid        NOT NULL REFERENCES identity.users (id) ON DELETE CASCADE,
    endpoint        text        NOT NULL,
    p256dh          text        NOT NULL,   -- base64url (or base64) client public key, 65 bytes decoded
    auth            text        NOT NULL,   -- base64url (or base64) auth secret, 16 bytes decoded
    user_agent      text        NULL,
    expiration_time timestamptz NULL,       -- from the PushSubscription, if the browser gave one
    failure_count   integer     NOT NULL DEFAULT 0,
    last_success_at timestamptz NULL,
    disabled_at     timestamptz NULL,       -- set on 404/410 from the push service
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    -- An endpoint identifies one browser installation; re-subscribing upserts it.
    CONSTRAINT push_subscriptions_endpoint_key UNIQUE (endpoint),
    CONSTRAINT push_subscriptions_endpoint_check CHECK (endpoint ~ '^https://' AND char_length(endpoint) <= 2048),
    CONSTRAINT push_subscriptions_p256dh_check CHECK (p256dh ~ '^[A-Za-z0-9_+/-]{80,100}={0,2}$'),
    CONSTRAINT push_subscriptions_auth_check CHECK (auth ~ '^[A-Za-z0-9_+/-]{16,32}={0,2}$'),
    CONSTRAINT push_subscriptions_failure_count_check CHECK (failure_count >= 0)
);

CREATE INDEX push_subscriptions_user_active_idx ON identity.push_subscriptions (user_id) WHERE disabled_at IS NULL;

CREATE TRIGGER set_updated_at BEFORE UPDATE ON identity.push_subscriptions
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE identity.push_subscriptions IS 'Web Push subscriptions (endpoint, p256dh, auth) per user browser.';


-- -----------------------------------------------------------------------------
-- Privileges (also covered by default privileges from 00_setup)
-- -----------------------------------------------------------------------------
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES    IN SCHEMA identity TO flatrender_identity;
GRANT USAGE, SELECT, UPDATE         ON ALL SEQUENCES IN SCHEMA identity TO flatrender_identity;
