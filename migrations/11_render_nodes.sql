-- =============================================================================
-- 11_render_nodes.sql — render: the render farm
-- =============================================================================
-- nodes (render machines running the node agent), node_enrollment_tokens
-- (one-time join tokens), node_health_logs (partitioned monthly, downsampled
-- health), node_crashes (drive auto-quarantine), node_template_cache (what
-- each node's content-addressed template cache holds, for placement) and
-- render.ensure_node_health_log_partitions().
-- The farm is platform-wide: nodes are not tenant data.
-- =============================================================================


-- -----------------------------------------------------------------------------
-- node_enrollment_tokens: one-time join tokens, exchanged for a node credential
-- -----------------------------------------------------------------------------
-- Redeemed with UPDATE ... SET used_at = now(), used_by_node_id = $node
--  WHERE token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL
--    AND expires_at > now() RETURNING ...
CREATE TABLE render.node_enrollment_tokens (
    id                 uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    token_hash         bytea       NOT NULL,   -- SHA-256 of the token; the token is shown once
    description        text        NULL,
    tags               text[]      NOT NULL DEFAULT '{}',   -- tags given to the enrolled node
    expires_at         timestamptz NOT NULL,
    used_at            timestamptz NULL,
    used_by_node_id    uuid        NULL,       -- FK added after render.nodes below
    revoked_at         timestamptz NULL,
    created_by_user_id uuid        NULL,       -- soft reference: identity.users.id
    created_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT node_enrollment_tokens_token_hash_key UNIQUE (token_hash),
    CONSTRAINT node_enrollment_tokens_token_hash_check CHECK (octet_length(token_hash) = 32),
    CONSTRAINT node_enrollment_tokens_expiry_check CHECK (expires_at > created_at),
    CONSTRAINT node_enrollment_tokens_tags_check CHECK (
        cardinality(tags) <= 64 AND array_position(tags, NULL) IS NULL)
);

CREATE INDEX node_enrollment_tokens_created_idx ON render.node_enrollment_tokens (created_at DESC);

COMMENT ON TABLE render.node_enrollment_tokens IS 'One-time node join tokens (SHA-256 stored).';
COMMENT ON COLUMN render.node_enrollment_tokens.created_by_user_id IS 'soft reference: identity.users.id';


-- -----------------------------------------------------------------------------
-- nodes
-- -----------------------------------------------------------------------------
-- Heartbeats are kept in memory by the orchestrator; last_seen_at is written
-- at a bounded rate (not on every heartbeat) so thousands of nodes cost few
-- writes. connection_epoch fences streams: a new stream increments it and an
-- orchestrator replica acts for the node only while it holds the current
-- epoch.
-- DeleteNode keeps the row (and its health, crashes and attempts) for
-- history: deleted_at is set, the credential is cleared so it stops working
-- at once, and the node stays 'offline'.
CREATE TABLE render.nodes (
    id                   uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    name                 text        NOT NULL,
    hostname             text        NOT NULL,
    os                   text        NOT NULL,
    os_version           text        NULL,
    arch                 text        NOT NULL DEFAULT 'x86_64',
    agent_version        text        NOT NULL,
    ae_versions          text[]      NOT NULL DEFAULT '{}',   -- installed After Effects versions, e.g. {24.3,25.0}
    has_ffmpeg           boolean     NOT NULL DEFAULT false,  -- can take assemble tasks
    cpu_cores            integer     NOT NULL,
    ram_bytes            bigint      NOT NULL,
    -- [{"name": "NVIDIA RTX 4090", "memory_bytes": 25757220864, "driver": "550.54"}, ...]
    gpus                 jsonb       NOT NULL DEFAULT '[]',
    slots                integer     NOT NULL DEFAULT 1,      -- concurrent tasks it accepts (Hello.slots 1..64)
    tags                 text[]      NOT NULL DEFAULT '{}',   -- pools / capabilities used for placement
    cache_limit_bytes    bigint      NOT NULL DEFAULT 0,      -- template cache bound reported by the agent
    cache_used_bytes     bigint      NOT NULL DEFAULT 0,
    state                text        NOT NULL DEFAULT 'offline',
    state_reason         text        NULL,
    quarantined_at       timestamptz NULL,
    -- The node credential: SHA-256 of the secret the agent presents.
    credential_hash      bytea       NULL,
    credential_issued_at timestamptz NULL,
    connection_epoch     bigint      NOT NULL DEFAULT 0,
    connected_at         timestamptz NULL,
    orchestrator_id      text        NULL,     -- replica holding the node's stream
    last_seen_at         timestamptz NULL,
    deleted_at           timestamptz NULL,     -- NodeAdminService.DeleteNode; row kept for history
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT nodes_name_key UNIQUE (name),
    CONSTRAINT nodes_credential_hash_key UNIQUE (credential_hash),
    CONSTRAINT nodes_name_check CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$'),
    CONSTRAINT nodes_hostname_check CHECK (char_length(hostname) BETWEEN 1 AND 255),
    CONSTRAINT nodes_os_check CHECK (os IN ('windows', 'macos', 'linux')),
    CONSTRAINT nodes_arch_check CHECK (arch IN ('x86_64', 'aarch64')),
    CONSTRAINT nodes_agent_version_check CHECK (char_length(agent_version) BETWEEN 1 AND 64),
    CONSTRAINT nodes_ae_versions_check CHECK (array_position(ae_versions, NULL) IS NULL),
    CONSTRAINT nodes_cpu_cores_check CHECK (cpu_cores BETWEEN 1 AND 4096),
    CONSTRAINT nodes_ram_bytes_check CHECK (ram_bytes > 0),
    CONSTRAINT nodes_gpus_check CHECK (jsonb_typeof(gpus) = 'array'),
    CONSTRAINT nodes_slots_check CHECK (slots BETWEEN 1 AND 64),
    CONSTRAINT nodes_tags_check CHECK (cardinality(tags) <= 64 AND array_position(tags, NULL) IS NULL),
    CONSTRAINT nodes_cache_check CHECK (cache_limit_bytes >= 0 AND cache_used_bytes >= 0),
    CONSTRAINT nodes_state_check CHECK (state IN ('online', 'offline', 'draining', 'quarantined')),
    CONSTRAINT nodes_quarantined_check CHECK (state <> 'quarantined' OR quarantined_at IS NOT NULL),
    CONSTRAINT nodes_credential_hash_check CHECK (credential_hash IS NULL OR octet_length(credential_hash) = 32),
    CONSTRAINT nodes_connection_epoch_check CHECK (connection_epoch >= 0),
    CONSTRAINT nodes_deleted_check CHECK (
        deleted_at IS NULL OR (state = 'offline' AND credential_hash IS NULL AND orchestrator_id IS NULL))
);

-- Scheduler: nodes that can take work.
CREATE INDEX nodes_online_idx ON render.nodes (id) WHERE state = 'online';
-- Dead-node scan: connected nodes not seen recently.
CREATE INDEX nodes_last_seen_idx ON render.nodes (last_seen_at) WHERE state IN ('online', 'draining');
CREATE INDEX nodes_tags_idx ON render.nodes USING gin (tags);

CREATE TRIGGER set_updated_at BEFORE UPDATE ON render.nodes
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE render.nodes IS 'Render machines running the node agent; state online/offline/draining/quarantined.';
COMMENT ON COLUMN render.nodes.credential_hash IS 'SHA-256 of the node credential issued at enrolment (32 bytes).';
COMMENT ON COLUMN render.nodes.connection_epoch IS 'Incremented on every new agent stream; fences stale streams/replicas.';
COMMENT ON COLUMN render.nodes.deleted_at IS 'Set by DeleteNode: the credential is cleared and the row kept for history (ListNodes include_deleted).';

ALTER TABLE render.node_enrollment_tokens
    ADD CONSTRAINT node_enrollment_tokens_used_by_node_id_fkey
    FOREIGN KEY (used_by_node_id) REFERENCES render.nodes (id) ON DELETE SET NULL;


-- -----------------------------------------------------------------------------
-- node_health_logs: downsampled health history (partitioned by month)
-- -----------------------------------------------------------------------------
CREATE TABLE render.node_health_logs (
    id                    bigint      GENERATED ALWAYS AS IDENTITY,
    recorded_at           timestamptz NOT NULL,
    node_id               uuid        NOT NULL REFERENCES render.nodes (id) ON DELETE CASCADE,
    cpu_percent           real        NOT NULL,   -- whole machine, 0..100
    load_1m               real        NULL,
    memory_used_bytes     bigint      NOT NULL,
    memory_total_bytes    bigint      NOT NULL,
    work_disk_free_bytes  bigint      NULL,
    cache_disk_free_bytes bigint      NULL,
    -- [{"index": 0, "name": ..., "utilization_percent": 87.5, "memory_used_bytes": ..., "memory_total_bytes": ...}]
    gpus                  jsonb       NOT NULL DEFAULT '[]',
    ae_process_count      integer     NOT NULL DEFAULT 0,
    ae_memory_bytes       bigint      NOT NULL DEFAULT 0,
    running_tasks         integer     NOT NULL DEFAULT 0,
    PRIMARY KEY (id, recorded_at),
    CONSTRAINT node_health_logs_cpu_check CHECK (cpu_percent BETWEEN 0 AND 100),
    CONSTRAINT node_health_logs_load_check CHECK (load_1m IS NULL OR load_1m >= 0),
    CONSTRAINT node_health_logs_memory_check CHECK (
        memory_used_bytes >= 0 AND memory_total_bytes >= 0 AND memory_used_bytes <= memory_total_bytes),
    CONSTRAINT node_health_logs_disk_check CHECK (
        (work_disk_free_bytes IS NULL OR work_disk_free_bytes >= 0)
        AND (cache_disk_free_bytes IS NULL OR cache_disk_free_bytes >= 0)),
    CONSTRAINT node_health_logs_gpus_check CHECK (jsonb_typeof(gpus) = 'array'),
    CONSTRAINT node_health_logs_counts_check CHECK (
        ae_process_count >= 0 AND ae_memory_bytes >= 0 AND running_tasks >= 0)
) PARTITION BY RANGE (recorded_at);

CREATE INDEX node_health_logs_node_time_idx ON render.node_health_logs (node_id, recorded_at DESC);

CREATE TABLE render.node_health_logs_2026_01 PARTITION OF render.node_health_logs
    FOR VALUES FROM ('2026-01-01 00:00:00+00') TO ('2026-02-01 00:00:00+00');

COMMENT ON TABLE render.node_health_logs IS 'Downsampled node health, partitioned monthly (node_health_logs_YYYY_MM, UTC months); partitions are created by render.ensure_node_health_log_partitions().';

-- Same contract as identity.ensure_api_request_log_partitions(): creates the
-- partitions for the current UTC month .. +months_ahead, returns how many it
-- created; idempotent and race-safe.
CREATE FUNCTION render.ensure_node_health_log_partitions(months_ahead integer)
    RETURNS integer
    LANGUAGE sql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT platform.create_monthly_partitions('render.node_health_logs'::regclass, months_ahead);
$$;

REVOKE ALL ON FUNCTION render.ensure_node_health_log_partitions(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION render.ensure_node_health_log_partitions(integer) TO flatrender_render;

COMMENT ON FUNCTION render.ensure_node_health_log_partitions(integer) IS
    'Creates missing monthly partitions of render.node_health_logs for the current UTC month .. +months_ahead (0..120); returns the number created. Idempotent and race-safe.';


-- -----------------------------------------------------------------------------
-- node_crashes: After Effects / agent / machine crashes
-- -----------------------------------------------------------------------------
-- Auto-quarantine counts recent rows per node (default: 3 in 10 minutes).
-- FKs to render_jobs / frame_jobs are added in 12_render_jobs.sql.
CREATE TABLE render.node_crashes (
    id                   uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    node_id              uuid        NOT NULL REFERENCES render.nodes (id) ON DELETE CASCADE,
    occurred_at          timestamptz NOT NULL DEFAULT now(),
    kind                 text        NOT NULL,
    job_id               uuid        NULL,
    frame_job_id         uuid        NULL,
    ae_version           text        NULL,
    exit_code            integer     NULL,
    signal               integer     NULL,
    message              text        NULL,
    log_tail             text        NULL,
    crash_report_file_id uuid        NULL,   -- soft reference: file_mgr.files.id
    details              jsonb       NOT NULL DEFAULT '{}',
    created_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT node_crashes_kind_check CHECK (
        kind IN ('ae_crash', 'ae_hang', 'agent_crash', 'out_of_memory', 'disk_full', 'os_crash', 'other')),
    CONSTRAINT node_crashes_log_tail_check CHECK (log_tail IS NULL OR octet_length(log_tail) <= 65536),
    CONSTRAINT node_crashes_details_check CHECK (jsonb_typeof(details) = 'object')
);

CREATE INDEX node_crashes_node_time_idx ON render.node_crashes (node_id, occurred_at DESC);
CREATE INDEX node_crashes_time_idx ON render.node_crashes (occurred_at DESC);

COMMENT ON TABLE render.node_crashes IS 'Crashes reported by agents; repeated crashes quarantine the node.';
COMMENT ON COLUMN render.node_crashes.crash_report_file_id IS 'soft reference: file_mgr.files.id';


-- -----------------------------------------------------------------------------
-- node_template_cache: mirror of each node's template cache
-- -----------------------------------------------------------------------------
-- Keyed by the bundle's SHA-256 (content.template_versions.bundle_sha256).
-- Placement asks "which online nodes hold this digest"; LRU order per node is
-- last_used_at.
CREATE TABLE render.node_template_cache (
    node_id         uuid        NOT NULL REFERENCES render.nodes (id) ON DELETE CASCADE,
    template_sha256 bytea       NOT NULL,
    size_bytes      bigint      NOT NULL,
    last_used_at    timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (node_id, template_sha256),
    CONSTRAINT node_template_cache_sha256_check CHECK (octet_length(template_sha256) = 32),
    CONSTRAINT node_template_cache_size_check CHECK (size_bytes >= 0)
);

CREATE INDEX node_template_cache_sha256_idx ON render.node_template_cache (template_sha256, node_id);
CREATE INDEX node_template_cache_lru_idx ON render.node_template_cache (node_id, last_used_at);

CREATE TRIGGER set_updated_at BEFORE UPDATE ON render.node_template_cache
    FOR EACH ROW EXECUTE FUNCTION platform.set_updated_at();

COMMENT ON TABLE render.node_template_cache IS 'Templates held in each node''s LRU cache (by bundle SHA-256).';
COMMENT ON COLUMN render.node_template_cache.template_sha256 IS 'SHA-256 of the template bundle (32 raw bytes) = content.template_versions.bundle_sha256.';


-- -----------------------------------------------------------------------------
-- Privileges (also covered by default privileges from 00_setup)
-- -----------------------------------------------------------------------------
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES    IN SCHEMA render TO flatrender_render;
GRANT USAGE, SELECT, UPDATE         ON ALL SEQUENCES IN SCHEMA render TO flatrender_render;
