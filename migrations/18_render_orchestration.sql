-- =============================================================================
-- 18_render_orchestration.sql — render: orchestrator replicas and node commands
-- =============================================================================
-- orchestrators (replica liveness), node_commands (commands for a node's agent
-- that outlive the API call which queued them), and the few columns the
-- orchestrator needs beside the queue of 12_render_jobs.sql.
--
-- Signals (PostgreSQL NOTIFY, sent inside the writing transaction):
--   render_queue  ''        tasks became 'queued'; every replica's dispatcher claims.
--   render_nodes  node id   a connected agent must learn something: a new stream
--                           (the older one is superseded), a task of it changed
--                           outside its replica, its admin state changed, or a
--                           node_commands row was queued.
--   render_jobs   job id    a job's state, progress or chunks changed.
-- =============================================================================


-- -----------------------------------------------------------------------------
-- orchestrators: one row per orchestrator replica (process)
-- -----------------------------------------------------------------------------
-- Each replica refreshes heartbeat_at every few seconds (one write per replica,
-- not per node). A replica whose row is stale for longer than the reconnect
-- grace is dead: another replica requeues the tasks of the nodes it held
-- (nodes.orchestrator_id = its id), fenced by nodes.connection_epoch so a node
-- that reconnected elsewhere keeps its tasks.
CREATE TABLE render.orchestrators (
    id           text        PRIMARY KEY,   -- Settings.orchestrator_id (host or pod name, unique per process)
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT orchestrators_id_check CHECK (char_length(id) BETWEEN 1 AND 200),
    CONSTRAINT orchestrators_heartbeat_check CHECK (heartbeat_at >= started_at)
);

CREATE INDEX orchestrators_heartbeat_idx ON render.orchestrators (heartbeat_at);

COMMENT ON TABLE render.orchestrators IS 'Orchestrator replicas and their last heartbeat (replica liveness).';

-- The dead-replica scan: connected nodes by the replica holding them.
CREATE INDEX nodes_orchestrator_idx ON render.nodes (orchestrator_id) WHERE orchestrator_id IS NOT NULL;


-- -----------------------------------------------------------------------------
-- node_commands: commands for a node's agent, delivered over its stream
-- -----------------------------------------------------------------------------
-- An API call (EvictNodeTemplate) inserts a row and notifies render_nodes; the
-- replica holding the node's stream sends the command and sets delivered_at.
-- A row queued while the node is offline is delivered after its next Hello.
CREATE TABLE render.node_commands (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    node_id      uuid        NOT NULL REFERENCES render.nodes (id) ON DELETE CASCADE,
    kind         text        NOT NULL,
    -- evict_template: {"sha256": "<lower-case hex>", "reason": "..."}
    payload      jsonb       NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz NULL,
    CONSTRAINT node_commands_kind_check CHECK (kind IN ('evict_template')),
    CONSTRAINT node_commands_payload_check CHECK (jsonb_typeof(payload) = 'object'),
    CONSTRAINT node_commands_delivered_check CHECK (delivered_at IS NULL OR delivered_at >= created_at)
);

CREATE INDEX node_commands_pending_idx ON render.node_commands (node_id, id) WHERE delivered_at IS NULL;

COMMENT ON TABLE render.node_commands IS 'Commands for a node''s agent (evict_template), delivered over its stream by the replica holding it.';


-- -----------------------------------------------------------------------------
-- frame_jobs: the phase an agent last reported
-- -----------------------------------------------------------------------------
-- Operators see a task's phase and percent (render.v1.NodeTask) whichever
-- replica they ask, so they are stored with the task's progress (at most one
-- write per task per 2 s).
ALTER TABLE render.frame_jobs
    ADD COLUMN phase   text NULL,
    ADD COLUMN percent real NULL,
    ADD CONSTRAINT frame_jobs_phase_check CHECK (
        phase IS NULL OR phase IN ('accepted', 'preparing', 'downloading', 'rendering', 'encoding', 'verifying', 'uploading')),
    ADD CONSTRAINT frame_jobs_percent_check CHECK (percent IS NULL OR percent BETWEEN 0 AND 100);

COMMENT ON COLUMN render.frame_jobs.phase IS 'flatrender.render.v1.TaskPhase of the current attempt, lower-case without the prefix.';


-- -----------------------------------------------------------------------------
-- render_jobs: when the last RenderJobProgressed event was written
-- -----------------------------------------------------------------------------
-- RenderJobProgressed is emitted when progress crosses a multiple of 10 % and
-- at most once per 10 s per job.
ALTER TABLE render.render_jobs
    ADD COLUMN progress_event_at timestamptz NULL;

COMMENT ON COLUMN render.render_jobs.progress_event_at IS 'When the last RenderJobProgressed event was written (at most one per 10 s).';


-- -----------------------------------------------------------------------------
-- Privileges (also covered by default privileges from 00_setup)
-- -----------------------------------------------------------------------------
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES    IN SCHEMA render TO flatrender_render;
GRANT USAGE, SELECT, UPDATE         ON ALL SEQUENCES IN SCHEMA render TO flatrender_render;
