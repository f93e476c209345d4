-- =============================================================================
-- 22_render_lifecycle.sql — render: drain deadlines that outlive a replica
-- =============================================================================
-- A drain deadline is stored with the node, so whichever replica holds the
-- node's stream (or any replica, when none does) enforces it, also after the
-- replica that took the DrainNode call restarted.
-- =============================================================================

ALTER TABLE render.nodes ADD COLUMN drain_deadline_at timestamptz NULL;

-- Drain deadlines to enforce (a handful at most).
CREATE INDEX nodes_drain_deadline_idx ON render.nodes (drain_deadline_at) WHERE drain_deadline_at IS NOT NULL;

COMMENT ON COLUMN render.nodes.drain_deadline_at IS
    'DrainNode deadline: then the tasks the draining node still runs are requeued without using an attempt (CancelTask DRAIN_DEADLINE); cleared once enforced.';
