-- =============================================================================
-- 26_render_attempt_cancel_reason.sql — render: why the orchestrator ended a lease
-- =============================================================================
-- When an operator (requeue, quarantine with cancel, node deletion) or a drain
-- deadline ends a lease, the agent still running the task must be told why in
-- its CancelTask. The replica holding the agent's stream may not be the one
-- that ended the lease, and the agent may report on the task before that
-- replica hears of it; so the reason is stored with the lease's attempt, in
-- the transaction that ends it, and every replica reads it from there.
-- Reasons that follow from the task's row (its job canceled or failed) and a
-- lapsed lease store nothing.
-- =============================================================================

ALTER TABLE render.frame_job_attempts
    ADD COLUMN cancel_reason text NULL,
    ADD CONSTRAINT frame_job_attempts_cancel_reason_check CHECK (
        cancel_reason IS NULL OR cancel_reason IN ('job_canceled', 'job_failed', 'lease_lost', 'drain_deadline',
                                                   'operator', 'unknown_task'));

COMMENT ON COLUMN render.frame_job_attempts.cancel_reason IS
    'Why the orchestrator ended this lease, as flatrender.agent.v1.CancelReason lower-case without its prefix (stored today: operator, drain_deadline); NULL when the reason follows from the task''s row or the lease lapsed.';
