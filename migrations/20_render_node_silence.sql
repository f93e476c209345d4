-- =============================================================================
-- 20_render_node_silence.sql — render: a connected node that stopped talking
-- =============================================================================
-- A node's connectivity is derived, not stored per heartbeat: ONLINE while a
-- live replica (render.orchestrators) holds its stream and has not marked it
-- silent; LOST when it has, or when that replica is dead. So an idle farm writes
-- nothing per node: the replica's own heartbeat row vouches for all its nodes.
-- =============================================================================

ALTER TABLE render.nodes ADD COLUMN silent_since timestamptz NULL;

COMMENT ON COLUMN render.nodes.silent_since IS
    'Set by the replica holding the stream when the agent missed 3 heartbeats; cleared by its next Health.';
COMMENT ON COLUMN render.nodes.last_seen_at IS
    'When the node was last heard, written when its stream starts, when it falls silent (its last Health) and when its stream ends; while a live replica holds the stream, that replica''s heartbeat_at stands for it.';
