-- =============================================================================
-- 29_render_running_hot_update.sql — render: a task's start as a heap-only update
-- =============================================================================
-- A lease's first TaskUpdate turns its task from leased to running. Five
-- indexes named frame_jobs.state (in a key or a predicate), so that update
-- changed an indexed column and wrote a new entry into every index of the
-- row (six WAL records per task in the dispatch bench), although no index
-- tells leased from running. The indexes now name dispatch_state, which is
-- state with running folded into leased; starting a task changes no indexed
-- column and stays on its page.
--
-- frame_jobs_lease_expiry_idx is dropped, not rebuilt: leases are renewed
-- and expired by the replica holding the node's stream (heartbeats write
-- nothing), and no query looks tasks up by lease_expires_at.
--
-- Queries that want these indexes test dispatch_state ('queued', 'leased',
-- 'done', 'failed', 'canceled'); state stays the task's state everywhere else.
-- =============================================================================

ALTER TABLE render.frame_jobs
    ADD COLUMN dispatch_state text GENERATED ALWAYS AS (CASE state WHEN 'running' THEN 'leased' ELSE state END) STORED;

DROP INDEX render.frame_jobs_claim_idx;
DROP INDEX render.frame_jobs_tenant_queue_idx;
DROP INDEX render.frame_jobs_lease_expiry_idx;
DROP INDEX render.frame_jobs_node_active_idx;
DROP INDEX render.frame_jobs_job_state_idx;

-- Claim: the queued tasks in dispatch order.
CREATE INDEX frame_jobs_claim_idx ON render.frame_jobs (lane_rank, priority DESC, submitted_at, id)
    WHERE dispatch_state = 'queued';
-- Fair share: the queued tasks of one tenant in dispatch order.
CREATE INDEX frame_jobs_tenant_queue_idx ON render.frame_jobs (tenant_id, lane_rank, priority DESC, submitted_at, id)
    WHERE dispatch_state = 'queued';
-- A node's current tasks (lost stream, drain, slots).
CREATE INDEX frame_jobs_node_active_idx ON render.frame_jobs (node_id) WHERE dispatch_state = 'leased';
-- Job bookkeeping: chunks of a job by state (progress, completion, cancel).
CREATE INDEX frame_jobs_job_state_idx ON render.frame_jobs (job_id, dispatch_state) WHERE job_id IS NOT NULL;

COMMENT ON COLUMN render.frame_jobs.dispatch_state IS
    'Generated: state with running folded into leased; what the indexes name, so that starting a task is a HOT update.';
