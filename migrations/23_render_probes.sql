-- =============================================================================
-- 23_render_probes.sql — render: probe renders for quarantined nodes
-- =============================================================================
-- A node quarantined automatically (crashes) gets a probe render — a small
-- known-good render the platform configures, a frame_jobs row in lane 'probe'
-- pinned to the node (12_render_jobs.sql) — once its probe is due. Success
-- releases the node; a failure keeps it quarantined (cause probe_failed) and
-- the next probe waits longer. An operator's quarantine is never probed.
-- =============================================================================

ALTER TABLE render.nodes
    ADD COLUMN quarantine_cause text    NULL,
    ADD COLUMN probe_due_at     timestamptz NULL,
    ADD COLUMN probe_failures   integer NOT NULL DEFAULT 0,
    ADD CONSTRAINT nodes_quarantine_cause_check CHECK (
        quarantine_cause IS NULL OR quarantine_cause IN ('crashes', 'operator', 'probe_failed')),
    ADD CONSTRAINT nodes_probe_failures_check CHECK (probe_failures >= 0);

-- Nodes quarantined before this migration: by their reason text (the crash rule's
-- "<n> crashes in <window>"), else an operator's; crash quarantines are due now.
UPDATE render.nodes
   SET quarantine_cause = CASE WHEN state_reason ~ '^[0-9]+ crashes in ' THEN 'crashes' ELSE 'operator' END,
       probe_due_at = CASE WHEN state_reason ~ '^[0-9]+ crashes in ' THEN now() END
 WHERE state = 'quarantined';

-- The probe scheduler's scan (a handful of rows at most).
CREATE INDEX nodes_probe_due_idx ON render.nodes (probe_due_at) WHERE probe_due_at IS NOT NULL;

COMMENT ON COLUMN render.nodes.quarantine_cause IS
    'flatrender.render.v1.QuarantineCause while quarantined, lower-case without the prefix; NULL otherwise.';
COMMENT ON COLUMN render.nodes.probe_due_at IS
    'When the next probe render may be sent (automatic quarantines only); NULL: never.';
COMMENT ON COLUMN render.nodes.probe_failures IS
    'Probe renders failed since the node was quarantined (the next probe waits longer).';

-- A probe names its template bundle itself (it has no job or snapshot to take it from).
ALTER TABLE render.frame_jobs
    ADD COLUMN probe_template_file_id uuid NULL,
    ADD CONSTRAINT frame_jobs_probe_template_check CHECK (
        (lane = 'probe') = (probe_template_file_id IS NOT NULL));

COMMENT ON COLUMN render.frame_jobs.probe_template_file_id IS
    'soft reference: file_mgr.files.id — the template bundle of a probe render (lane probe only).';
