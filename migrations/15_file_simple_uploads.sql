-- =============================================================================
-- 15_file_simple_uploads.sql — upload_sessions also hold simple uploads' quota
-- =============================================================================
-- Every quota reservation belongs to an upload_sessions row, so a reservation
-- whose upload died with its process is always found (by expires_at) and
-- released by the abandoned-uploads cleanup. A simple streaming upload
-- (UploadService.UploadFile) therefore records a one-part session too:
--   simple = true    its bytes stream straight to the file's own object key
--                    (the file id is the session id), nothing is staged;
--   declared_sha256  may be NULL for it (the client's checksum is optional).
-- Simple sessions are internal: ListUploadSessions never shows them.
-- =============================================================================

ALTER TABLE file_mgr.upload_sessions
    ADD COLUMN simple boolean NOT NULL DEFAULT false,
    ALTER COLUMN declared_sha256 DROP NOT NULL,
    ADD CONSTRAINT upload_sessions_declared_sha256_required CHECK (simple OR declared_sha256 IS NOT NULL);

COMMENT ON COLUMN file_mgr.upload_sessions.simple IS
    'A simple streaming upload: holds only the quota reservation; the file id is the session id.';

GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES    IN SCHEMA file_mgr TO flatrender_file;
GRANT USAGE, SELECT, UPDATE         ON ALL SEQUENCES IN SCHEMA file_mgr TO flatrender_file;
