-- =============================================================================
-- 24_render_unplaceable_snapshots.sql — render: snapshots no node can take
-- =============================================================================
-- A snapshot's task, like a job's (22_render_lifecycle.sql), is marked
-- unplaceable when one replica's periodic check first finds that no enrolled,
-- non-quarantined node could take it; the mark is cleared when one could, and
-- the snapshot fails (NO_ELIGIBLE_NODE) once it was unplaceable for the
-- configured time, instead of waiting forever.
-- =============================================================================

ALTER TABLE render.snapshots ADD COLUMN unplaceable_since timestamptz NULL;

-- Snapshots found unplaceable (a handful at most).
CREATE INDEX snapshots_unplaceable_idx ON render.snapshots (unplaceable_since) WHERE unplaceable_since IS NOT NULL;

COMMENT ON COLUMN render.snapshots.unplaceable_since IS
    'Since when no enrolled, non-quarantined node can take the snapshot''s queued task (the placement check); NULL when one can.';
