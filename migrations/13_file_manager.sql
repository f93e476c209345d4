-- =============================================================================
-- 13_file_manager.sql — file_mgr: files, folders, quotas, uploads, cleanup
-- =============================================================================
-- folders (a tree per owner), files (object metadata; only the file service
-- writes it), quotas (per tenant and per user), upload_sessions and
-- upload_parts (resumable multipart uploads), cleanup_schedules,
-- cleanup_runs and cleanup_run_items (what each run removed).
--
-- Owner: owner_user_id set = a user's file/folder; NULL = owned by the tenant
-- itself or by a service (render chunks, snapshots, exports...).
-- Names (files and folders): 1..255 characters, no '/', no '\', no control
-- characters, no '..', no leading/trailing spaces — the CHECKs below are a
-- backstop for the service's own validation (INVALID_ARGUMENT).
-- =============================================================================


-- -----------------------------------------------------------------------------
-- folders
-- -----------------------------------------------------------------------------
-- Moves are checked for cycles by the service (recursive CTE on parent_id);
-- a non-empty folder cannot be deleted by accident (FKs are RESTRICT): the
-- service deletes contents first when asked to.
CREATE TABLE file_mgr.folders (
    id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid        NOT NULL,   -- soft reference: identity.tenants.id
    owner_user_id uuid        NULL,       -- soft reference: identity.users.id
    parent_id     uuid        NULL REFERENCES file_mgr.folders (id) ON DELETE RESTRICT,
    name          text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    -- Sibling names are unique; NULLS NOT DISTINCT makes root folders
    -- (parent_id NULL) and tenant-owned trees (owner NULL) unique too.
    CONSTRAINT folders_sibling_name_key UNIQUE NULLS NOT DISTINCT (tenant_id, owner_user_id, parent_id, name),
    CONSTRAINT folders_parent_check CHECK (parent_id IS NULL OR parent_id <> id),
    CONSTRAINT folders_name_check CHECK (
        char_length(name) BETWEEN 1 AND 255
        AND name = btrim(name)
        AND name !~ '[[:cntrl:]/\\]'
        AND position('..' IN name) = 0)
);

CREATE INDEX folders_parent_idx ON file_mgr.folders (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX folders_tenant_created_idx ON file_mgr.folders (tenant_id, created_at DESC);

CREATE TRIGGER set_updated_at BEFORE UPDATE ON file_mgr.folders
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE file_mgr.folders IS 'Folder trees, one per owner (user, or tenant/service when owner_user_id is NULL).';
COMMENT ON COLUMN file_mgr.folders.tenant_id IS 'soft reference: identity.tenants.id';
COMMENT ON COLUMN file_mgr.folders.owner_user_id IS 'soft reference: identity.users.id';


-- -----------------------------------------------------------------------------
-- files
-- -----------------------------------------------------------------------------
-- Deletion removes the object and the row together: the row is first marked
-- state = 'deleting' (so a crash in between leaves a findable row), then the
-- object is deleted, then the row.
-- A file is protected from cleanup while pinned or retained_until > now();
-- both are set by the owning service (retained_by).
CREATE TABLE file_mgr.files (
    id                  uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id           uuid        NOT NULL,   -- soft reference: identity.tenants.id
    owner_user_id       uuid        NULL,       -- soft reference: identity.users.id
    folder_id           uuid        NULL REFERENCES file_mgr.folders (id) ON DELETE RESTRICT,
    name                text        NOT NULL,
    kind                text        NOT NULL DEFAULT 'other',
    size_bytes          bigint      NOT NULL,
    sha256              bytea       NOT NULL,
    content_type        text        NOT NULL DEFAULT 'application/octet-stream',   -- sniffed from the bytes
    storage_backend     text        NOT NULL DEFAULT 'local',
    storage_key         text        NOT NULL,   -- object key inside the backend
    state               text        NOT NULL DEFAULT 'active',
    counts_toward_quota boolean     NOT NULL DEFAULT true,
    pinned              boolean     NOT NULL DEFAULT false,
    retained_until      timestamptz NULL,
    retained_by         text        NULL,       -- service that set pinned/retained_until
    source_service      text        NOT NULL DEFAULT 'file',   -- service that created it
    metadata            jsonb       NOT NULL DEFAULT '{}',
    -- UploadFile / CopyFile idempotency: a retry with the same key returns this
    -- file; request_sha256 detects the same key reused for a different request.
    idempotency_key     text        NULL,
    request_sha256      bytea       NULL,
    last_accessed_at    timestamptz NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT files_storage_key_key UNIQUE (storage_backend, storage_key),
    CONSTRAINT files_tenant_idempotency_key UNIQUE (tenant_id, idempotency_key),
    CONSTRAINT files_name_check CHECK (
        char_length(name) BETWEEN 1 AND 255
        AND name = btrim(name)
        AND name !~ '[[:cntrl:]/\\]'
        AND position('..' IN name) = 0),
    CONSTRAINT files_kind_check CHECK (
        kind IN ('template_bundle', 'asset', 'audio', 'voiceover', 'render_chunk', 'snapshot', 'export', 'other')),
    CONSTRAINT files_size_check CHECK (size_bytes >= 0),
    CONSTRAINT files_sha256_check CHECK (octet_length(sha256) = 32),
    CONSTRAINT files_content_type_check CHECK (
        char_length(content_type) <= 255
        AND content_type ~* '^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*(;.*)?$'),
    CONSTRAINT files_storage_backend_check CHECK (storage_backend IN ('local', 's3')),
    CONSTRAINT files_storage_key_check CHECK (
        char_length(storage_key) BETWEEN 1 AND 1024 AND storage_key !~ '(^/|\.\.|[[:cntrl:]])'),
    CONSTRAINT files_state_check CHECK (state IN ('active', 'deleting')),
    CONSTRAINT files_retained_by_check CHECK (
        retained_by IS NULL OR retained_by IN ('identity', 'content', 'studio', 'render', 'file', 'notification')),
    CONSTRAINT files_source_service_check CHECK (
        source_service IN ('identity', 'content', 'studio', 'render', 'file', 'notification')),
    CONSTRAINT files_metadata_check CHECK (jsonb_typeof(metadata) = 'object'),
    CONSTRAINT files_idempotency_key_check CHECK (
        idempotency_key IS NULL OR char_length(idempotency_key) BETWEEN 1 AND 200),
    CONSTRAINT files_request_sha256_check CHECK (request_sha256 IS NULL OR octet_length(request_sha256) = 32)
);

-- Names are unique inside a folder (root-level and service files may repeat).
CREATE UNIQUE INDEX files_folder_name_key ON file_mgr.files (folder_id, name)
    WHERE folder_id IS NOT NULL AND state = 'active';
-- Listing a folder (or an owner's root) sorted by name / date.
CREATE INDEX files_owner_folder_name_idx ON file_mgr.files (tenant_id, owner_user_id, folder_id, name);
CREATE INDEX files_tenant_created_idx ON file_mgr.files (tenant_id, created_at DESC);
-- Name search by prefix (case-insensitive).
CREATE INDEX files_name_search_idx ON file_mgr.files (tenant_id, lower(name) text_pattern_ops);
-- Cleanup: unprotected files of a kind by age.
CREATE INDEX files_cleanup_idx ON file_mgr.files (kind, created_at) WHERE state = 'active' AND NOT pinned;
CREATE INDEX files_retained_until_idx ON file_mgr.files (retained_until) WHERE retained_until IS NOT NULL;
-- Interrupted deletions to finish.
CREATE INDEX files_deleting_idx ON file_mgr.files (updated_at) WHERE state = 'deleting';
CREATE INDEX files_sha256_idx ON file_mgr.files (sha256);

CREATE TRIGGER set_updated_at BEFORE UPDATE ON file_mgr.files
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE file_mgr.files IS 'Stored objects: kind, size, SHA-256, sniffed content type, storage key, retention/pin.';
COMMENT ON COLUMN file_mgr.files.tenant_id IS 'soft reference: identity.tenants.id';
COMMENT ON COLUMN file_mgr.files.owner_user_id IS 'soft reference: identity.users.id';
COMMENT ON COLUMN file_mgr.files.sha256 IS 'SHA-256 of the content (32 raw bytes).';
COMMENT ON COLUMN file_mgr.files.counts_toward_quota IS 'Whether size_bytes is charged to the owner''s and tenant''s quota.';


-- -----------------------------------------------------------------------------
-- quotas: per tenant (user_id NULL) and per user
-- -----------------------------------------------------------------------------
-- used_bytes = SUM(size_bytes) of the scope's files with counts_toward_quota;
-- reserved_bytes = bytes promised to open upload sessions. Changed in the
-- same transaction as the file row, guarded so parallel uploads cannot pass
-- the limit:
--     UPDATE file_mgr.quotas SET reserved_bytes = reserved_bytes + $n
--      WHERE id = $q AND used_bytes + reserved_bytes + $n <= limit_bytes
-- (0 rows -> RESOURCE_EXHAUSTED). The quotas_guard_usage trigger below is the
-- last line of defence: usage may never GROW past the limit.
-- A limit may be set below current usage (plan downgrade, admin override):
-- nothing is deleted, and uploads are refused until usage fits again.
-- limit_source says where limit_bytes comes from (QuotaLimitSource):
--   'plan'    the subscriber's plan (plan_code), kept in step through the
--             SubscriptionChanged and PlanUpdated events;
--   'admin'   an override set with SetQuotaLimit (clearing it goes back to
--             the plan's limit);
--   'default' the configured default (no plan information).
CREATE TABLE file_mgr.quotas (
    id                uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id         uuid        NOT NULL,   -- soft reference: identity.tenants.id
    user_id           uuid        NULL,       -- soft reference: identity.users.id; NULL = the tenant-wide quota
    limit_bytes       bigint      NOT NULL,
    used_bytes        bigint      NOT NULL DEFAULT 0,
    reserved_bytes    bigint      NOT NULL DEFAULT 0,
    file_count        bigint      NOT NULL DEFAULT 0,
    limit_source      text        NOT NULL DEFAULT 'default',
    plan_code         text        NULL,       -- soft reference: identity.plans.code (set iff limit_source = 'plan')
    warned_at         timestamptz NULL,       -- 'quota nearly full' event sent (reset when usage drops)
    exceeded_event_at timestamptz NULL,       -- last 'quota exceeded' event (at most one per hour)
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT quotas_scope_key UNIQUE NULLS NOT DISTINCT (tenant_id, user_id),
    CONSTRAINT quotas_limit_check CHECK (limit_bytes >= 0),
    CONSTRAINT quotas_used_check CHECK (used_bytes >= 0 AND reserved_bytes >= 0 AND file_count >= 0),
    CONSTRAINT quotas_limit_source_check CHECK (limit_source IN ('plan', 'admin', 'default')),
    CONSTRAINT quotas_plan_code_check CHECK (
        (limit_source = 'plan') = (plan_code IS NOT NULL)
        AND (plan_code IS NULL OR plan_code ~ '^[a-z][a-z0-9_-]{0,31}$'))
);

CREATE TRIGGER set_updated_at BEFORE UPDATE ON file_mgr.quotas
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

-- Usage (used + reserved) may not grow past the limit; it may stay above a
-- limit that was lowered below it, and it may shrink.
CREATE FUNCTION file_mgr.quotas_guard_usage()
    RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    IF NEW.used_bytes + NEW.reserved_bytes > NEW.limit_bytes
       AND NEW.used_bytes + NEW.reserved_bytes > OLD.used_bytes + OLD.reserved_bytes THEN
        RAISE EXCEPTION 'quota % exceeded: % + % bytes > limit %',
            NEW.id, NEW.used_bytes, NEW.reserved_bytes, NEW.limit_bytes
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

REVOKE ALL ON FUNCTION file_mgr.quotas_guard_usage() FROM PUBLIC;   -- only ever fired as a trigger

COMMENT ON FUNCTION file_mgr.quotas_guard_usage() IS 'BEFORE UPDATE row trigger on file_mgr.quotas: refuses usage (used + reserved) growing past limit_bytes.';

CREATE TRIGGER quotas_guard_usage BEFORE UPDATE ON file_mgr.quotas
    FOR EACH ROW EXECUTE FUNCTION file_mgr.quotas_guard_usage();

COMMENT ON TABLE file_mgr.quotas IS 'Storage quotas per tenant (user_id NULL) and per user; used + reserved never grows past the limit.';
COMMENT ON COLUMN file_mgr.quotas.limit_source IS 'Where limit_bytes comes from: plan (plan_code), admin (SetQuotaLimit override) or default.';
COMMENT ON COLUMN file_mgr.quotas.tenant_id IS 'soft reference: identity.tenants.id';
COMMENT ON COLUMN file_mgr.quotas.user_id IS 'soft reference: identity.users.id';
COMMENT ON COLUMN file_mgr.quotas.plan_code IS 'soft reference: identity.plans.code';


-- -----------------------------------------------------------------------------
-- upload_sessions / upload_parts: resumable multipart uploads
-- -----------------------------------------------------------------------------
-- start: reserve declared_size on the quotas, insert the session;
-- parts: any order, a retried part with the same checksum is a no-op;
-- complete: verify total size and SHA-256, create the file, move the
-- reservation into used_bytes; abort/expiry: delete parts, release it.
CREATE TABLE file_mgr.upload_sessions (
    id                uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id         uuid        NOT NULL,   -- soft reference: identity.tenants.id
    owner_user_id     uuid        NULL,       -- soft reference: identity.users.id
    folder_id         uuid        NULL REFERENCES file_mgr.folders (id) ON DELETE SET NULL,
    name              text        NOT NULL,
    kind              text        NOT NULL DEFAULT 'other',
    content_type_hint text        NULL,       -- declared by the client; the file gets the sniffed type
    declared_size     bigint      NOT NULL,
    declared_sha256   bytea       NOT NULL,
    part_size         bigint      NOT NULL,   -- every part but the last has exactly this size
    part_count        integer     GENERATED ALWAYS AS (((declared_size + part_size - 1) / part_size)::integer) STORED,
    state             text        NOT NULL DEFAULT 'active',
    reserved_bytes    bigint      NOT NULL DEFAULT 0,   -- quota reservation held by this session
    counts_toward_quota boolean   NOT NULL DEFAULT true,
    storage_backend   text        NOT NULL DEFAULT 'local',
    staging_key       text        NOT NULL,   -- object key prefix of the parts
    backend_upload_id text        NULL,       -- S3 multipart UploadId
    file_id           uuid        NULL,       -- the resulting file; FK added below
    -- StartUploadSession idempotency: a retry with the same key returns this
    -- session while it is active (see the unique index below).
    idempotency_key   text        NULL,
    request_sha256    bytea       NULL,
    error_message     text        NULL,
    expires_at        timestamptz NOT NULL,
    completed_at      timestamptz NULL,
    aborted_at        timestamptz NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT upload_sessions_staging_key_key UNIQUE (storage_backend, staging_key),
    CONSTRAINT upload_sessions_name_check CHECK (
        char_length(name) BETWEEN 1 AND 255
        AND name = btrim(name)
        AND name !~ '[[:cntrl:]/\\]'
        AND position('..' IN name) = 0),
    CONSTRAINT upload_sessions_kind_check CHECK (
        kind IN ('template_bundle', 'asset', 'audio', 'voiceover', 'render_chunk', 'snapshot', 'export', 'other')),
    CONSTRAINT upload_sessions_declared_size_check CHECK (declared_size >= 1),
    CONSTRAINT upload_sessions_declared_sha256_check CHECK (octet_length(declared_sha256) = 32),
    CONSTRAINT upload_sessions_part_size_check CHECK (part_size BETWEEN 1 AND 5368709120),   -- <= 5 GiB (S3)
    CONSTRAINT upload_sessions_part_count_check CHECK ((declared_size + part_size - 1) / part_size <= 10000),   -- S3 limit
    CONSTRAINT upload_sessions_state_check CHECK (state IN ('active', 'completing', 'completed', 'aborted', 'expired')),
    CONSTRAINT upload_sessions_reserved_check CHECK (reserved_bytes >= 0),
    CONSTRAINT upload_sessions_storage_backend_check CHECK (storage_backend IN ('local', 's3')),
    CONSTRAINT upload_sessions_completed_check CHECK (state <> 'completed' OR completed_at IS NOT NULL),
    CONSTRAINT upload_sessions_aborted_check CHECK (state NOT IN ('aborted', 'expired') OR aborted_at IS NOT NULL),
    CONSTRAINT upload_sessions_expiry_check CHECK (expires_at > created_at),
    CONSTRAINT upload_sessions_idempotency_key_check CHECK (
        idempotency_key IS NULL OR char_length(idempotency_key) BETWEEN 1 AND 200),
    CONSTRAINT upload_sessions_request_sha256_check CHECK (request_sha256 IS NULL OR octet_length(request_sha256) = 32)
);

-- Expiry scan of unfinished sessions.
CREATE INDEX upload_sessions_expires_idx ON file_mgr.upload_sessions (expires_at) WHERE state IN ('active', 'completing');
CREATE INDEX upload_sessions_owner_created_idx ON file_mgr.upload_sessions (tenant_id, owner_user_id, created_at DESC);
-- One unfinished session per idempotency key and tenant.
CREATE UNIQUE INDEX upload_sessions_idempotency_key ON file_mgr.upload_sessions (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL AND state IN ('active', 'completing');

ALTER TABLE file_mgr.upload_sessions
    ADD CONSTRAINT upload_sessions_file_id_fkey
    FOREIGN KEY (file_id) REFERENCES file_mgr.files (id) ON DELETE SET NULL;

CREATE TRIGGER set_updated_at BEFORE UPDATE ON file_mgr.upload_sessions
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE file_mgr.upload_sessions IS 'Resumable multipart uploads: declared size and SHA-256, parts, quota reservation, expiry.';
COMMENT ON COLUMN file_mgr.upload_sessions.tenant_id IS 'soft reference: identity.tenants.id';
COMMENT ON COLUMN file_mgr.upload_sessions.owner_user_id IS 'soft reference: identity.users.id';

CREATE TABLE file_mgr.upload_parts (
    session_id  uuid        NOT NULL REFERENCES file_mgr.upload_sessions (id) ON DELETE CASCADE,
    part_number integer     NOT NULL,   -- 1-based
    tenant_id   uuid        NOT NULL,   -- soft reference: identity.tenants.id
    size_bytes  bigint      NOT NULL,
    sha256      bytea       NOT NULL,
    storage_key text        NULL,       -- local backend: object key of the part
    etag        text        NULL,       -- S3 backend: ETag returned by UploadPart
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, part_number),
    CONSTRAINT upload_parts_part_number_check CHECK (part_number BETWEEN 1 AND 10000),
    CONSTRAINT upload_parts_size_check CHECK (size_bytes >= 1),
    CONSTRAINT upload_parts_sha256_check CHECK (octet_length(sha256) = 32),
    CONSTRAINT upload_parts_location_check CHECK (storage_key IS NOT NULL OR etag IS NOT NULL)
);

CREATE TRIGGER set_updated_at BEFORE UPDATE ON file_mgr.upload_parts
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE file_mgr.upload_parts IS 'Received parts of an upload session (idempotent per part_number + checksum).';
COMMENT ON COLUMN file_mgr.upload_parts.tenant_id IS 'soft reference: identity.tenants.id';


-- -----------------------------------------------------------------------------
-- cleanup_schedules: rules the cleanup scheduler runs
-- -----------------------------------------------------------------------------
-- tenant_id NULL = the platform-wide rule; a row with a tenant_id overrides
-- the rule of the same `rule` for that tenant. One replica at a time runs a
-- schedule: it claims the row with
--     UPDATE file_mgr.cleanup_schedules SET locked_by = $me, locked_until = now() + $ttl
--      WHERE id = $1 AND enabled AND next_run_at <= now()
--        AND (locked_until IS NULL OR locked_until < now())
-- Files with pinned or retained_until > now() are never removed.
CREATE TABLE file_mgr.cleanup_schedules (
    id                 uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id          uuid        NULL,       -- soft reference: identity.tenants.id; NULL = all tenants
    name               text        NOT NULL,
    rule               text        NOT NULL,
    max_age_seconds    bigint      NULL,       -- remove what is older than this
    use_plan_retention boolean     NOT NULL DEFAULT false,   -- exports: the owner's plan export_retention_days
    interval_seconds   integer     NOT NULL DEFAULT 3600,
    batch_size         integer     NOT NULL DEFAULT 1000,
    enabled            boolean     NOT NULL DEFAULT true,
    next_run_at        timestamptz NOT NULL DEFAULT now(),
    last_run_at        timestamptz NULL,
    locked_by          text        NULL,       -- replica running it now
    locked_until       timestamptz NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT cleanup_schedules_name_key UNIQUE NULLS NOT DISTINCT (tenant_id, name),
    CONSTRAINT cleanup_schedules_name_check CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    CONSTRAINT cleanup_schedules_rule_check CHECK (
        rule IN ('render_chunks', 'snapshots', 'exports', 'abandoned_uploads', 'orphan_objects', 'deleting_files')),
    CONSTRAINT cleanup_schedules_age_check CHECK (
        (use_plan_retention AND max_age_seconds IS NULL)
        OR (NOT use_plan_retention AND max_age_seconds IS NOT NULL AND max_age_seconds > 0)),
    CONSTRAINT cleanup_schedules_interval_check CHECK (interval_seconds BETWEEN 10 AND 2592000),
    CONSTRAINT cleanup_schedules_batch_size_check CHECK (batch_size BETWEEN 1 AND 100000),
    CONSTRAINT cleanup_schedules_lock_check CHECK ((locked_by IS NULL) = (locked_until IS NULL))
);

CREATE INDEX cleanup_schedules_due_idx ON file_mgr.cleanup_schedules (next_run_at) WHERE enabled;

CREATE TRIGGER set_updated_at BEFORE UPDATE ON file_mgr.cleanup_schedules
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE file_mgr.cleanup_schedules IS 'Cleanup rules (render chunks, snapshots, exports, abandoned uploads, ...) run by one replica at a time.';
COMMENT ON COLUMN file_mgr.cleanup_schedules.tenant_id IS 'soft reference: identity.tenants.id (NULL = platform-wide rule)';

-- Default platform-wide rules (fixed ids: identical on every installation).
INSERT INTO file_mgr.cleanup_schedules (id, name, rule, max_age_seconds, use_plan_retention, interval_seconds)
VALUES
    ('00000000-0000-0000-0013-000000000001', 'render-chunks',     'render_chunks',     86400,  false, 3600),   -- temporary chunks after 24 h
    ('00000000-0000-0000-0013-000000000002', 'snapshots',         'snapshots',         604800, false, 3600),   -- snapshots after 7 days
    ('00000000-0000-0000-0013-000000000003', 'exports',           'exports',           NULL,   true,  3600),   -- exports after the plan's retention
    ('00000000-0000-0000-0013-000000000004', 'abandoned-uploads', 'abandoned_uploads', 86400,  false, 900),    -- unfinished uploads after 24 h
    ('00000000-0000-0000-0013-000000000005', 'deleting-files',    'deleting_files',    600,    false, 300),    -- finish deletions interrupted > 10 min ago
    ('00000000-0000-0000-0013-000000000006', 'orphan-objects',    'orphan_objects',    86400,  false, 86400)   -- objects without a row, daily
ON CONFLICT DO NOTHING;


-- -----------------------------------------------------------------------------
-- cleanup_runs / cleanup_run_items: what each run did and removed
-- -----------------------------------------------------------------------------
CREATE TABLE file_mgr.cleanup_runs (
    id                     uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    schedule_id            uuid        NOT NULL REFERENCES file_mgr.cleanup_schedules (id) ON DELETE CASCADE,
    tenant_id              uuid        NULL,       -- soft reference: identity.tenants.id (the schedule's)
    instance_id            text        NOT NULL,   -- replica that ran it
    state                  text        NOT NULL DEFAULT 'running',
    started_at             timestamptz NOT NULL DEFAULT now(),
    finished_at            timestamptz NULL,
    files_scanned          bigint      NOT NULL DEFAULT 0,
    files_removed          bigint      NOT NULL DEFAULT 0,
    bytes_removed          bigint      NOT NULL DEFAULT 0,
    files_skipped_retained bigint      NOT NULL DEFAULT 0,
    errors                 bigint      NOT NULL DEFAULT 0,
    error_message          text        NULL,
    updated_at             timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT cleanup_runs_state_check CHECK (state IN ('running', 'succeeded', 'failed')),
    CONSTRAINT cleanup_runs_finished_check CHECK ((state = 'running') = (finished_at IS NULL)),
    CONSTRAINT cleanup_runs_counters_check CHECK (
        files_scanned >= 0 AND files_removed >= 0 AND bytes_removed >= 0
        AND files_skipped_retained >= 0 AND errors >= 0)
);

CREATE INDEX cleanup_runs_schedule_started_idx ON file_mgr.cleanup_runs (schedule_id, started_at DESC);
CREATE INDEX cleanup_runs_started_idx ON file_mgr.cleanup_runs (started_at);   -- history pruning

CREATE TRIGGER set_updated_at BEFORE UPDATE ON file_mgr.cleanup_runs
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE file_mgr.cleanup_runs IS 'One row per cleanup run with its counters.';
COMMENT ON COLUMN file_mgr.cleanup_runs.tenant_id IS 'soft reference: identity.tenants.id';

CREATE TABLE file_mgr.cleanup_run_items (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id      uuid        NOT NULL REFERENCES file_mgr.cleanup_runs (id) ON DELETE CASCADE,
    tenant_id   uuid        NULL,       -- soft reference: identity.tenants.id; NULL for an orphan object of unknown tenant
    file_id     uuid        NULL,       -- the removed file's id (its row is gone: no FK); NULL for orphan objects
    kind        text        NULL,
    storage_key text        NOT NULL,
    size_bytes  bigint      NOT NULL DEFAULT 0,
    removed_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT cleanup_run_items_size_check CHECK (size_bytes >= 0)
);

CREATE INDEX cleanup_run_items_run_idx ON file_mgr.cleanup_run_items (run_id);
CREATE INDEX cleanup_run_items_file_idx ON file_mgr.cleanup_run_items (file_id) WHERE file_id IS NOT NULL;

COMMENT ON TABLE file_mgr.cleanup_run_items IS 'What each cleanup run removed (file id, storage key, size).';
COMMENT ON COLUMN file_mgr.cleanup_run_items.file_id IS 'Id the removed file_mgr.files row had (the row is gone, so no FK).';
COMMENT ON COLUMN file_mgr.cleanup_run_items.tenant_id IS 'soft reference: identity.tenants.id';


-- -----------------------------------------------------------------------------
-- Privileges (also covered by default privileges from 00_setup)
-- -----------------------------------------------------------------------------
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES    IN SCHEMA file_mgr TO flatrender_file;
GRANT USAGE, SELECT, UPDATE         ON ALL SEQUENCES IN SCHEMA file_mgr TO flatrender_file;
