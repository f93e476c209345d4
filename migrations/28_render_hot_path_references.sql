-- =============================================================================
-- 28_render_hot_path_references.sql — render: no foreign-key checks on the dispatch path
-- =============================================================================
-- Every lease, attempt, accepted frame and recorded upload checked its
-- references with a query per row and a KEY SHARE lock on the referenced row:
-- the node's row (locked by the whole farm's reports at once, so each lock
-- became a multixact) and the job's row (shared by every chunk of the job and
-- updated by each batch's progress). In the dispatch bench these checks were
-- about a tenth of the database's CPU time. The references dropped here
-- protect nothing the row's owner does not already:
--   * job_id of attempts and frames: the row belongs to its task
--     (frame_job_id, kept, ON DELETE CASCADE), whose job_id it copies in the
--     statement that writes it, and a job's tasks go with the job;
--   * source_frame_job_id of frames: a chunk's own id, or a repair task of the
--     same job, deleted with that job (and so with the chunk);
--   * node_id of tasks, attempts, frames and uploads: nodes are never deleted,
--     only marked deleted (nodes.deleted_at), so ON DELETE SET NULL never ran;
--     the ids stay as history, like the tenants' ids (soft references).
-- The task of an attempt, frame or upload keeps its foreign key: that check
-- finds the row the same transaction has just locked.
-- =============================================================================

ALTER TABLE render.frame_jobs DROP CONSTRAINT frame_jobs_node_id_fkey;
ALTER TABLE render.frame_job_attempts
    DROP CONSTRAINT frame_job_attempts_job_id_fkey,
    DROP CONSTRAINT frame_job_attempts_node_id_fkey;
ALTER TABLE render.frame_results
    DROP CONSTRAINT frame_results_job_id_fkey,
    DROP CONSTRAINT frame_results_source_frame_job_id_fkey,
    DROP CONSTRAINT frame_results_node_id_fkey;
ALTER TABLE render.object_uploads DROP CONSTRAINT object_uploads_node_id_fkey;

COMMENT ON COLUMN render.frame_jobs.node_id IS 'soft reference: render.nodes.id (nodes are only marked deleted)';
COMMENT ON COLUMN render.frame_job_attempts.job_id IS 'the task''s job_id, copied when the attempt is written (deleted with the task)';
COMMENT ON COLUMN render.frame_job_attempts.node_id IS 'soft reference: render.nodes.id (nodes are only marked deleted)';
COMMENT ON COLUMN render.frame_results.job_id IS 'the chunk''s job_id, copied when the frame is accepted (deleted with the chunk)';
COMMENT ON COLUMN render.frame_results.source_frame_job_id IS 'the chunk itself or a repair task of the same job (deleted with the job)';
COMMENT ON COLUMN render.frame_results.node_id IS 'soft reference: render.nodes.id (nodes are only marked deleted)';
COMMENT ON COLUMN render.object_uploads.node_id IS 'soft reference: render.nodes.id (nodes are only marked deleted)';
