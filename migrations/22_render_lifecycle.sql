-- =============================================================================
-- 22_render_lifecycle.sql — render: drain deadlines and jobs no node can take
-- =============================================================================
-- A drain deadline is stored with the node, so whichever replica holds the
-- node's stream (or any replica, when none does) enforces it, also after the
-- replica that took the DrainNode call restarted.
--
-- A job whose queued tasks no enrolled, non-quarantined node can take (After
-- Effects version, tags, RAM, GPU, ffmpeg, or every such node failed the job)
-- is marked unplaceable when one replica's periodic check first finds it so;
-- the mark is cleared when a node able to take it appears, and the job fails
-- (NO_ELIGIBLE_NODE) once it was unplaceable for the configured time.
-- =============================================================================

ALTER TABLE render.nodes ADD COLUMN drain_deadline_at timestamptz NULL;

-- Drain deadlines to enforce (a handful at most).
CREATE INDEX nodes_drain_deadline_idx ON render.nodes (drain_deadline_at) WHERE drain_deadline_at IS NOT NULL;

COMMENT ON COLUMN render.nodes.drain_deadline_at IS
    'DrainNode deadline: then the tasks the draining node still runs are requeued without using an attempt (CancelTask DRAIN_DEADLINE); cleared once enforced.';

ALTER TABLE render.render_jobs ADD COLUMN unplaceable_since timestamptz NULL;

-- Jobs found unplaceable (a handful at most).
CREATE INDEX render_jobs_unplaceable_idx ON render.render_jobs (unplaceable_since) WHERE unplaceable_since IS NOT NULL;

COMMENT ON COLUMN render.render_jobs.unplaceable_since IS
    'Since when no enrolled, non-quarantined node can take a queued task of the job (the placement check); NULL when one can.';
