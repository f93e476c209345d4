-- =============================================================================
-- 30_render_snapshot_history.sql — render: a deleted snapshot keeps its history
-- =============================================================================
-- The retention sweep deletes snapshots past their expiry. Their tasks went
-- with them (ON DELETE CASCADE), and with the tasks every attempt: which node
-- rendered the frame, how long it took, how it failed. That is the operators'
-- record of the farm (a node's failure rate, a slow template), not the
-- customer's data, and it must not shrink because an image expired. The hourly
-- snapshot rate's rows went too, so a caller whose snapshots expired within the
-- hour could render more than the plan allows.
--
-- Now the snapshot's id is cleared instead: its tasks (lane 'snapshot', created
-- with snapshot_id set, NULL once the snapshot is deleted) and their attempts
-- stay, as do the rate's rows. The migrator applies this file in one
-- transaction: frame_jobs is locked while its rows are checked against the
-- (only loosened) constraints, once.
-- =============================================================================

ALTER TABLE render.frame_jobs
    DROP CONSTRAINT frame_jobs_snapshot_id_fkey,
    ADD CONSTRAINT frame_jobs_snapshot_id_fkey
        FOREIGN KEY (snapshot_id) REFERENCES render.snapshots (id) ON DELETE SET NULL,
    DROP CONSTRAINT frame_jobs_lane_refs_check,
    ADD CONSTRAINT frame_jobs_lane_refs_check CHECK (
        (lane = 'snapshot' AND job_id IS NULL AND segment_id IS NULL AND repair_job_id IS NULL)
        OR (lane = 'render' AND job_id IS NOT NULL AND segment_id IS NOT NULL AND snapshot_id IS NULL AND repair_job_id IS NULL)
        OR (lane = 'repair' AND job_id IS NOT NULL AND repair_job_id IS NOT NULL AND snapshot_id IS NULL)
        OR (lane = 'assemble' AND job_id IS NOT NULL AND segment_id IS NULL AND snapshot_id IS NULL AND repair_job_id IS NULL)
        OR (lane = 'probe' AND pinned_node_id IS NOT NULL AND job_id IS NULL AND segment_id IS NULL
            AND snapshot_id IS NULL AND repair_job_id IS NULL));

ALTER TABLE render.snapshot_tasks
    ALTER COLUMN snapshot_id DROP NOT NULL,
    DROP CONSTRAINT snapshot_tasks_snapshot_id_fkey,
    ADD CONSTRAINT snapshot_tasks_snapshot_id_fkey
        FOREIGN KEY (snapshot_id) REFERENCES render.snapshots (id) ON DELETE SET NULL;

COMMENT ON COLUMN render.frame_jobs.snapshot_id IS 'the snapshot of a snapshot-lane task; NULL once the retention sweep deleted it (the task and its attempts stay)';
COMMENT ON COLUMN render.snapshot_tasks.snapshot_id IS 'the snapshot rendered; NULL once deleted (the row still counts toward the hourly rate)';
