-- =============================================================================
-- 25_render_queue_fillfactor.sql — render: room on the queue's pages for HOT updates
-- =============================================================================
-- A task's row and its attempt row are updated several times in their short
-- lives (lease, start, progress, frames done, outcome). An update that changes
-- no indexed column can stay on its page as a heap-only tuple (HOT) and write
-- no index entry, but only when the page has room; full pages turn every such
-- update into a new tuple on another page plus one entry in each of the
-- table's indexes (eleven for frame_jobs). Leaving a third of each page free
-- keeps progress, frames-done and attempt-start updates HOT. Existing pages
-- keep their layout until rewritten; new rows get the room.
-- =============================================================================

ALTER TABLE render.frame_jobs SET (fillfactor = 70);
ALTER TABLE render.frame_job_attempts SET (fillfactor = 70);
