-- =============================================================================
-- 27_render_attempt_hot_updates.sql — render: an attempt's start and outcome as HOT updates
-- =============================================================================
-- frame_job_attempts_open_idx (attempts without an outcome, by assignment time)
-- is read by no query: every lookup of an open attempt goes by (task, epoch)
-- through frame_job_attempts_lease_epoch_key. Its predicate names finished_at,
-- so every outcome written changed an indexed column and could not be a
-- heap-only update: each attempt's start and end wrote a new entry into all
-- six indexes of the table. Without it, neither update touches an indexed
-- column, and both stay on the row's page (fillfactor 70, 25_*.sql).
-- =============================================================================

DROP INDEX render.frame_job_attempts_open_idx;

-- An attempt row is updated twice right after it is inserted (start, outcome);
-- at fillfactor 70 only about half the rows of a freshly filled page found room
-- for their first new version. Half a page free leaves room for one new version
-- of every row; the old versions are pruned before the second.
ALTER TABLE render.frame_job_attempts SET (fillfactor = 50);
