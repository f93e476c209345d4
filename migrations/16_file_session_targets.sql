-- =============================================================================
-- 16_file_session_targets.sql — upload_sessions carry what the file will get
-- =============================================================================
-- StartUploadSession accepts the whole UploadTarget, as UploadFile does, so a
-- session keeps until completion what only the file row held before:
--   metadata        the client's metadata (anyone may set it);
--   pinned,         protection set by a service at the start
--   retained_until  (people may not set them);
--   retained_by     the service that set that protection;
--   source_service  the service that started the session ('file' for people),
--                   recorded on the file whoever completes the session.
-- CompleteUploadSession copies them to the file it creates. The CHECKs are
-- those of file_mgr.files.
-- =============================================================================

ALTER TABLE file_mgr.upload_sessions
    ADD COLUMN metadata       jsonb       NOT NULL DEFAULT '{}',
    ADD COLUMN pinned         boolean     NOT NULL DEFAULT false,
    ADD COLUMN retained_until timestamptz NULL,
    ADD COLUMN retained_by    text        NULL,
    ADD COLUMN source_service text        NOT NULL DEFAULT 'file',
    ADD CONSTRAINT upload_sessions_metadata_check CHECK (jsonb_typeof(metadata) = 'object'),
    ADD CONSTRAINT upload_sessions_retained_by_check CHECK (
        retained_by IS NULL OR retained_by IN ('identity', 'content', 'studio', 'render', 'file', 'notification')),
    ADD CONSTRAINT upload_sessions_source_service_check CHECK (
        source_service IN ('identity', 'content', 'studio', 'render', 'file', 'notification'));

COMMENT ON COLUMN file_mgr.upload_sessions.metadata IS
    'Client metadata (a JSON object of strings) the file gets on completion.';
COMMENT ON COLUMN file_mgr.upload_sessions.pinned IS
    'The file is pinned on completion (set by a service only).';
COMMENT ON COLUMN file_mgr.upload_sessions.retained_until IS
    'The file is retained until then on completion (set by a service only).';
COMMENT ON COLUMN file_mgr.upload_sessions.retained_by IS
    'The service that set pinned/retained_until; the file''s retained_by.';
COMMENT ON COLUMN file_mgr.upload_sessions.source_service IS
    'The service that started the session; the file''s source_service.';

GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES    IN SCHEMA file_mgr TO flatrender_file;
GRANT USAGE, SELECT, UPDATE         ON ALL SEQUENCES IN SCHEMA file_mgr TO flatrender_file;
