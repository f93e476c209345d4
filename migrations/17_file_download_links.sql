-- =============================================================================
-- 17_file_download_links.sql — time-limited download links (FileService.CreateDownloadUrl)
-- =============================================================================
-- A link is a row, not a signature: no secret has to be shared between
-- replicas, a link can be revoked by deleting its row, and deleting the file
-- deletes its links (ON DELETE CASCADE). The URL carries a token of 32 random
-- bytes (base64url); only its SHA-256 is stored, so the table cannot be turned
-- back into working URLs. GET /files/v1/links/<token> serves the file while
-- expires_at is ahead and the file is active.
--   created_by          the person who asked for the link (NULL for a service)
--   created_by_service  the service that asked for it (NULL for a person)
-- Expired rows are deleted by the cleanup scheduler's hourly housekeeping.
-- =============================================================================

CREATE TABLE file_mgr.download_links (
    token_sha256       bytea       PRIMARY KEY,
    file_id            uuid        NOT NULL REFERENCES file_mgr.files (id) ON DELETE CASCADE,
    tenant_id          uuid        NOT NULL,   -- soft reference: identity.tenants.id (the file's)
    attachment         boolean     NOT NULL DEFAULT false,
    created_by         uuid        NULL,       -- soft reference: identity.users.id
    created_by_service text        NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    expires_at         timestamptz NOT NULL,
    CONSTRAINT download_links_token_sha256_check CHECK (octet_length(token_sha256) = 32),
    CONSTRAINT download_links_created_by_check CHECK ((created_by IS NULL) <> (created_by_service IS NULL)),
    CONSTRAINT download_links_created_by_service_check CHECK (
        created_by_service IS NULL
        OR created_by_service IN ('identity', 'content', 'studio', 'render', 'file', 'notification')),
    CONSTRAINT download_links_expiry_check CHECK (expires_at > created_at)
);

-- Deleting expired links.
CREATE INDEX download_links_expires_idx ON file_mgr.download_links (expires_at);
-- The cascade from file_mgr.files.
CREATE INDEX download_links_file_idx ON file_mgr.download_links (file_id);

COMMENT ON TABLE file_mgr.download_links IS 'Time-limited download URLs: the SHA-256 of each URL''s token, its file and expiry.';
COMMENT ON COLUMN file_mgr.download_links.token_sha256 IS 'SHA-256 of the 32 random bytes of the URL''s token (the token itself is never stored).';
COMMENT ON COLUMN file_mgr.download_links.tenant_id IS 'soft reference: identity.tenants.id';
COMMENT ON COLUMN file_mgr.download_links.attachment IS 'Served with Content-Disposition: attachment (save) rather than inline.';
COMMENT ON COLUMN file_mgr.download_links.created_by IS 'soft reference: identity.users.id; the person who created the link.';
COMMENT ON COLUMN file_mgr.download_links.created_by_service IS 'The service that created the link.';

GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES    IN SCHEMA file_mgr TO flatrender_file;
GRANT USAGE, SELECT, UPDATE         ON ALL SEQUENCES IN SCHEMA file_mgr TO flatrender_file;
